"""SemiSAM's loss terms weighted as its public code weights them (train_LA_semisam_mt.py), pinned on a fixed batch."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fmssl_bench.api import Batch
from fmssl_bench.methods.ema import make_teacher
from fmssl_bench.methods.losses import soft_dice_loss, supervised_loss
from fmssl_bench.methods.semisam import SemiSAM


def _method(loss_weights: str, total: int = 6000) -> SemiSAM:
    torch.manual_seed(0)
    ctx = SimpleNamespace(stage=SimpleNamespace(total=total), seed=0)
    m = SemiSAM(ctx, **{**SemiSAM.defaults, "loss_weights": loss_weights, "noise": 0.0})
    m.student = torch.nn.Conv2d(1, 2, 3, padding=1)
    m.teacher = make_teacher(m.student)
    with torch.no_grad():  # a teacher that disagrees with the student, so the consistency is not 0
        for p in m.teacher.parameters():
            p.add_(0.3)
    return m


def _batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    image = torch.rand(4, 1, 12, 12, generator=g)
    label = (torch.rand(1, 12, 12, generator=g) > 0.5).long()
    return Batch(image[:1], label, image[1:], ["l0"], ["u0", "u1", "u2"])


def test_code_weights_reproduce_the_public_code_terms_on_a_fixed_batch():
    batch = _batch()
    code, paper = _method("code"), _method("paper")
    it = 3000  # halfway: consistency ramp exp(-5 (1 - 20/40)^2), SAM ramp-down

    logits, out = code.mean_teacher_step(batch, it)
    _, out_paper = paper.mean_teacher_step(batch, it)
    logits = logits.detach()  # the checks below only read values
    with torch.no_grad():
        student = torch.softmax(code.student(batch.images), 1)
        teacher = torch.softmax(code.teacher(batch.images), 1)
    # the code: loss_seg + loss_seg_dice, no 1/2
    sup = F.cross_entropy(logits[:1], batch.label_l) + soft_dice_loss(student[:1], batch.label_l)
    assert out.logs["loss_sup"] == pytest.approx(float(sup), rel=1e-5)
    paper_sup = float(supervised_loss(logits[:1], batch.label_l))
    assert out.logs["loss_sup"] == pytest.approx(2 * paper_sup, rel=1e-5)
    assert out_paper.logs["loss_sup"] == pytest.approx(paper_sup, rel=1e-5)
    # the code: sum over the whole batch / (2 numel); the paper mode: mean over the unlabeled part
    assert out.logs["loss_cons"] == pytest.approx(float(((student - teacher) ** 2).mean() / 2), rel=1e-5)
    assert out_paper.logs["loss_cons"] == pytest.approx(float(((student[1:] - teacher[1:]) ** 2).mean()), rel=1e-5)
    assert out.logs["w_cons"] == pytest.approx(0.1 * math.exp(-5 * 0.5 ** 2))

    # SAM term: 0.5 x mean over every voxel of the unlabeled patches (undefined voxels count as 0)
    probs_u = student[1:]
    target = torch.zeros_like(probs_u)
    target[:, 1] = 1.0
    defined = torch.zeros(3, 12, 12, dtype=torch.bool)
    defined[:, :6] = True
    targets = SimpleNamespace(probs=target[None], defined=defined)
    diff = (probs_u - target) ** 2
    expected_code = 0.5 * float((diff * defined[:, None]).sum() / diff.numel())
    expected_paper = float((diff * defined[:, None]).sum() / (defined.sum() * 2))
    assert float(code.generalist_loss(probs_u, None, targets)) == pytest.approx(expected_code, rel=1e-5)
    assert float(paper.generalist_loss(probs_u, None, targets)) == pytest.approx(expected_paper, rel=1e-5)
    # the ratio the issue names: the code's SAM term is 1/4 of the covered-voxel mean when half is covered
    assert expected_code / expected_paper == pytest.approx(0.25, rel=1e-5)

    # ramp-down: the code's 0.1 exp(-5 (t/T)^2) in 150-iteration steps; the text's 0.1 exp(-5 t/T)
    assert code.sam_weight(0) == pytest.approx(0.1)
    assert code.sam_weight(3000) == pytest.approx(0.1 * math.exp(-5 * 0.5 ** 2))
    assert code.sam_weight(3100) == pytest.approx(0.1 * math.exp(-5 * (1 - 19 / 40) ** 2))  # (6000-3100)//150 = 19
    assert paper.sam_weight(3000) == pytest.approx(0.1 * math.exp(-5 * 0.5))


def test_loss_weights_is_part_of_the_identity_and_rejects_other_values():
    from fmssl_bench.methods.registry import resolve_method_args
    from fmssl_bench.errors import ConfigError

    assert resolve_method_args(SemiSAM, {}, {})["loss_weights"] == "code"
    assert resolve_method_args(SemiSAM, {}, {"loss_weights": "paper"})["loss_weights"] == "paper"
    with pytest.raises(ConfigError, match="loss_weights"):
        resolve_method_args(SemiSAM, {}, {"loss_weights": "both"})
