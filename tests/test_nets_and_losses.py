import math

import torch

from fmssl_bench.methods.ema import ema_update, make_teacher
from fmssl_bench.methods.losses import soft_dice_loss, supervised_loss
from fmssl_bench.methods.nets import VNet, count_parameters
from fmssl_bench.methods.ramps import sigmoid_rampdown, sigmoid_rampup


def test_vnet_matches_ua_mt_parameter_count_and_shapes():
    net = VNet(in_channels=1, n_classes=2, n_filters=16)
    assert count_parameters(net) == 9_448_866  # UA-MT's VNet: 9.45 M
    small = VNet(1, 3, n_filters=2).eval()
    out = small(torch.randn(1, 1, 32, 32, 16))
    assert out.shape == (1, 3, 32, 32, 16)


def test_ramps_follow_ua_mt_formulas():
    assert sigmoid_rampup(0, 40) == math.exp(-5.0)
    assert sigmoid_rampup(40, 40) == 1.0
    assert abs(sigmoid_rampup(20, 40) - math.exp(-5 * 0.25)) < 1e-12
    assert sigmoid_rampdown(0, 10) == 1.0
    assert abs(sigmoid_rampdown(10, 10) - math.exp(-5)) < 1e-12


def test_ema_update_uses_min_of_warmup_and_alpha():
    student = torch.nn.Linear(2, 2)
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.zero_()
        for p in student.parameters():
            p.fill_(1.0)
    ema_update(teacher, student, alpha=0.99, step=0)  # alpha_eff = min(0, 0.99) = 0 -> copy
    assert all(torch.allclose(p, torch.ones_like(p)) for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(3.0)
    ema_update(teacher, student, alpha=0.99, step=1000)  # 0.99 * 1 + 0.01 * 3
    assert all(torch.allclose(p, torch.full_like(p, 1.02)) for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_supervised_loss_is_zero_for_perfect_confident_prediction_and_positive_otherwise():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    logits = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 50
    assert supervised_loss(logits, target).item() < 1e-3
    assert supervised_loss(-logits, target).item() > 0.9
    assert soft_dice_loss(torch.softmax(logits, 1), target).item() < 1e-3
