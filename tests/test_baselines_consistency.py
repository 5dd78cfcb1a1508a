"""Classic consistency / pseudo-label baselines: UA-MT, entropy minimisation, ICT, self-training, UPS.

Each method's special part is checked directly on hand-made tensors; each method's step runs
with a finite loss on the tiny synthetic networks (VNet with 4 filters in 3D, MONAI UNet 8..64 in
2D) and a few steps on a fixed batch lower it; each runs end to end through the CLI on a tiny
synthetic-2d protocol.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fmssl_bench.errors import ConfigError
from fmssl_bench.methods.entropy_min import EntropyMinimization, mean_entropy
from fmssl_bench.methods.ict import ICT, interpolate, mix_factors
from fmssl_bench.methods.self_training import SelfTraining
from fmssl_bench.methods.thresholds import (certain_mask, confident_pseudo_labels, masked_cross_entropy,
                                            negative_learning_loss, uncertainty_threshold, ups_selection)
from fmssl_bench.methods.ua_mt import UAMT, masked_consistency
from fmssl_bench.methods.ups import UPS
from fmssl_bench.methods.uncertainty import mc_dropout_moments
from helpers import losses_after_steps, synthetic_batch, tiny_method

LN2 = math.log(2)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- UA-MT


def test_ua_mt_threshold_ramps_from_three_quarters_to_ln_k_and_the_mask_grows():
    total = 100
    assert uncertainty_threshold(0, total) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * LN2)
    assert uncertainty_threshold(total, total) == pytest.approx(LN2)
    assert uncertainty_threshold(2 * total, total) == pytest.approx(LN2)  # clipped after the ramp
    assert uncertainty_threshold(total, total, n_classes=3) == pytest.approx(math.log(3))
    # a fixed uncertainty map spread evenly over [0, ln 2)
    uncertainty = torch.linspace(0, LN2, 1001)[:-1].view(1, 1, 40, 25)
    fractions = [float(certain_mask(uncertainty, uncertainty_threshold(it, total)).mean())
                 for it in range(0, total + 1, 10)]
    assert all(b >= a for a, b in zip(fractions, fractions[1:])) and fractions[-1] > fractions[0]
    assert fractions[0] == pytest.approx(0.75 + 0.25 * math.exp(-5), abs=2e-3)
    assert fractions[-1] == 1.0
    # strict: a voxel exactly at the threshold is uncertain (UA-MT's `uncertainty < threshold`)
    assert float(certain_mask(torch.tensor([0.5]), 0.5)) == 0.0
    assert float(certain_mask(torch.tensor([0.49]), 0.5)) == 1.0


def test_ua_mt_consistency_is_uamt_formula_on_a_hand_made_case():
    # two voxels, 2 classes: the first certain, the second not
    p_s = torch.tensor([[0.9, 0.5], [0.1, 0.5]]).view(1, 2, 2)
    p_t = torch.tensor([[0.6, 0.0], [0.4, 1.0]]).view(1, 2, 2)
    mask = torch.tensor([1.0, 0.0]).view(1, 1, 2)
    expected = ((0.9 - 0.6) ** 2 + (0.1 - 0.4) ** 2) / (2 * 1 + 1e-16)
    assert float(masked_consistency(p_s, p_t, mask)) == pytest.approx(expected)
    assert float(masked_consistency(p_s, p_t, torch.ones(1, 1, 2))) == pytest.approx(
        float(((p_s - p_t) ** 2).sum()) / 4)
    assert float(masked_consistency(p_s, p_t, torch.zeros(1, 1, 2))) == 0.0


def test_ua_mt_step_logs_its_threshold_and_mask(tmp_path):
    method = tiny_method(UAMT, 2, tmp_path, total=10, n_classes=2)
    out = method.training_step(synthetic_batch(2, n_classes=2), 0)
    assert out.logs["threshold"] == pytest.approx(uncertainty_threshold(0, 10, 2))
    assert 0.0 <= out.logs["mask_frac"] <= 1.0


# ----------------------------------------------------------------------------- entropy minimisation


def test_entropy_term_is_the_normalised_mean_pixel_entropy():
    # 3 classes, two pixels: uniform (entropy ln 3 -> 1 after / ln 3) and (0.7, 0.2, 0.1)
    probs = torch.tensor([[1 / 3, 0.7], [1 / 3, 0.2], [1 / 3, 0.1]]).view(1, 3, 2)
    second = -(0.7 * math.log(0.7 + 1e-6) + 0.2 * math.log(0.2 + 1e-6) + 0.1 * math.log(0.1 + 1e-6)) / math.log(3)
    first = -3 * (1 / 3) * math.log(1 / 3 + 1e-6) / math.log(3)
    assert float(mean_entropy(probs)) == pytest.approx((first + second) / 2, rel=1e-5)


@pytest.mark.parametrize("entropy_on", ["all", "unlabeled"])
def test_entropy_min_step_minimises_the_entropy_of_the_chosen_images(tmp_path, entropy_on):
    method = tiny_method(EntropyMinimization, 2, tmp_path, total=10, entropy_on=entropy_on)
    batch = synthetic_batch(2)
    out = method.training_step(batch, 9)
    with torch.no_grad():  # the 2D UNet has no dropout: the same batch gives the same logits
        probs = torch.softmax(method.student(batch.images), 1)
    chosen = probs if entropy_on == "all" else probs[batch.image_l.shape[0]:]
    assert out.logs["loss_ent"] == pytest.approx(float(mean_entropy(chosen)), rel=1e-4)


# ----------------------------------------------------------------------------- ICT


def test_ict_mix_and_target_interpolation_with_a_fixed_lambda():
    a, b = torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 4, 4), -1.0)
    lam = torch.tensor([0.25, 1.0])
    mixed = interpolate(a, b, lam)
    assert torch.allclose(mixed[0], torch.full((1, 4, 4), 0.25 * 2 - 0.75))
    assert torch.equal(mixed[1], a[1])
    pa = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(2, 2, 4, 4)
    pb = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(2, 2, 4, 4)
    target = interpolate(pa, pb, lam)
    assert torch.allclose(target[0, :, 0, 0], torch.tensor([0.25, 0.75]))
    assert torch.allclose(target.sum(1), torch.ones(2, 4, 4))  # still a distribution
    assert float(interpolate(torch.tensor(3.0), torch.tensor(1.0), 0.5)) == 2.0
    # the factors: Beta(0.2, 0.2), reproducible from (seed, iteration), different across iterations
    draws = mix_factors(0, 5, 1000, 0.2)
    assert ((draws >= 0) & (draws <= 1)).all() and np.array_equal(draws, mix_factors(0, 5, 1000, 0.2))
    assert not np.array_equal(draws, mix_factors(0, 6, 1000, 0.2))
    assert ((draws < 0.1) | (draws > 0.9)).mean() > 0.5  # U-shaped: mostly near one of the two images


def test_ict_student_sees_the_mixed_unlabeled_pairs(tmp_path):
    method = tiny_method(ICT, 2, tmp_path, total=10)
    batch = synthetic_batch(2, n_u=4)
    seen = []
    hook = method.student.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    try:
        method.training_step(batch, 3)
    finally:
        hook.remove()
    (inputs,) = seen
    lam = torch.from_numpy(mix_factors(method.ctx.seed, 3, 2, 0.2)).float()
    assert inputs.shape[0] == 2 + 2  # labeled + one mix per pair
    assert torch.equal(inputs[:2], batch.image_l)
    assert torch.allclose(inputs[2:], interpolate(batch.image_u[:2], batch.image_u[2:], lam))


def test_ict_needs_two_unlabeled_images(tmp_path):
    method = tiny_method(ICT, 2, tmp_path)
    with pytest.raises(ConfigError, match="at least 2"):
        method.training_step(synthetic_batch(2, n_u=1), 0)


# ----------------------------------------------------------------------------- self-training


def test_self_training_threshold_mask_and_loss():
    probs = torch.tensor([[0.96, 0.5, 0.02, 0.95], [0.03, 0.3, 0.97, 0.04], [0.01, 0.2, 0.01, 0.01]]).view(1, 3, 4)
    labels, mask = confident_pseudo_labels(probs, 0.95)
    assert labels.tolist() == [[0, 0, 1, 0]] and mask.tolist() == [[True, False, True, True]]  # >= 0.95
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.1, 0.6], [0.25, 0.7, 0.8, 0.3], [0.25, 0.1, 0.1, 0.1]])).view(1, 3, 4)
    ce = [-math.log(0.5), -math.log(0.8), -math.log(0.6)]  # the confident voxels' labels 0, 1, 0
    assert float(masked_cross_entropy(logits, labels, mask, "all")) == pytest.approx(sum(ce) / 4, rel=1e-6)
    assert float(masked_cross_entropy(logits, labels, mask, "selected")) == pytest.approx(sum(ce) / 3, rel=1e-6)
    none = torch.zeros_like(mask)
    assert float(masked_cross_entropy(logits, labels, none, "all")) == 0.0
    assert float(masked_cross_entropy(logits, labels, none, "selected")) == 0.0


def test_self_training_uses_only_confident_teacher_voxels(tmp_path):
    method = tiny_method(SelfTraining, 2, tmp_path, total=10, threshold=0.0)
    out = method.training_step(synthetic_batch(2), 9)
    assert out.logs["pl_frac"] == 1.0 and out.logs["loss_pl"] > 0
    method = tiny_method(SelfTraining, 2, tmp_path, total=10, threshold=1.0)
    out = method.training_step(synthetic_batch(2), 9)
    assert out.logs["pl_frac"] == 0.0 and out.logs["loss_pl"] == 0.0


# ----------------------------------------------------------------------------- UPS


def test_ups_positive_and_negative_selection_on_a_hand_made_case():
    # 3 classes, 4 voxels (columns)
    probs = torch.tensor([[0.80, 0.80, 0.40, 0.90],
                          [0.15, 0.15, 0.35, 0.09],
                          [0.05, 0.05, 0.25, 0.01]]).view(1, 3, 4)
    std = torch.tensor([[0.01, 0.10, 0.01, 0.01],
                        [0.01, 0.01, 0.01, 0.01],
                        [0.01, 0.01, 0.01, 0.01]]).view(1, 3, 4)
    probs_nl = torch.tensor([[0.60, 0.60, 0.40, 0.01],
                             [0.37, 0.36, 0.58, 0.01],
                             [0.03, 0.04, 0.02, 0.98]]).view(1, 3, 4)
    std_nl = torch.tensor([[0.001, 0.001, 0.001, 0.001],
                           [0.001, 0.001, 0.001, 0.001],
                           [0.001, 0.010, 0.001, 0.001]]).view(1, 3, 4)
    sel = ups_selection(probs, std, probs_nl, std_nl, tau_p=0.7, kappa_p=0.05, tau_n=0.05, kappa_n=0.005)
    assert sel.labels.tolist() == [[0, 0, 0, 0]]
    # voxel 0: confident and certain; 1: too uncertain; 2: not confident; 3: confident and certain
    assert sel.positive.tolist() == [[True, False, False, True]]
    neg = sel.negative[0].T.tolist()  # per voxel, per class
    assert neg[0] == [False, False, False]  # positive voxels get no negatives
    assert neg[1] == [False, False, False]  # class 2 is unlikely but its tempered std is too large
    assert neg[2] == [False, False, True]   # class 2: tempered 0.02 < 0.05 and std 0.001 < 0.005
    assert neg[3] == [False, False, False]
    # the argmax class is never a negative label, even when its tempered probability is small
    sel = ups_selection(probs, std, torch.zeros_like(probs), torch.zeros_like(probs), 0.99, 0.05, 0.05, 0.005)
    assert not sel.positive.any() and not sel.negative[:, 0].any() and sel.negative[:, 1:].all()


def test_ups_negative_learning_loss_and_mc_moments():
    logits = torch.log(torch.tensor([[0.6, 0.5], [0.3, 0.25], [0.1, 0.25]])).view(1, 3, 2)
    negative = torch.tensor([[False, False], [True, False], [True, False]]).view(1, 3, 2)
    expected = (-math.log(1 - 0.3) - math.log(1 - 0.1)) / 2  # voxel 0 only; voxel 1 has no negatives
    assert float(negative_learning_loss(logits, negative)) == pytest.approx(expected, rel=1e-5)
    assert float(negative_learning_loss(logits, torch.zeros_like(negative))) == 0.0

    class Noisy(nn.Module):  # logits = the input, plus dropout-like noise in train mode
        def forward(self, x):
            return x + (torch.randn_like(x) if self.training else 0)

    x = torch.randn(2, 3, 5, 5)
    net = Noisy().eval()
    (mean1, std1), (mean2, std2) = mc_dropout_moments(net, x, passes=5, temperatures=(1.0, 2.0),
                                                      perturb=lambda t: t, chunk=2)
    assert not net.training  # mode restored
    assert mean1.shape == std1.shape == x.shape and (std1 > 0).all() and (std2 > 0).all()
    torch.manual_seed(0)  # one forward of the 4 stacked copies: the same noise as this
    passes = torch.softmax((x.repeat(4, 1, 1, 1) + torch.randn(8, 3, 5, 5)).view(4, 2, 3, 5, 5), 2)
    torch.manual_seed(0)
    ((mean, std),) = mc_dropout_moments(net, x, passes=4, perturb=lambda t: t, chunk=4)
    assert torch.allclose(mean, passes.mean(0), atol=1e-6) and torch.allclose(std, passes.std(0), atol=1e-6)


# ----------------------------------------------------------------------------- every method trains


CASES = [(cls, ndim) for cls in (UAMT, EntropyMinimization, ICT, SelfTraining, UPS) for ndim in (2, 3)]


@pytest.mark.parametrize("cls, ndim", CASES, ids=[f"{c.name}-{d}d" for c, d in CASES])
def test_method_steps_are_finite_and_lower_the_loss(cls, ndim, tmp_path):
    torch.manual_seed(0)
    # iters_per_epoch 0.01: every ramp is at its end from the second step on, so the unsupervised terms count
    method = tiny_method(cls, ndim, tmp_path, total=8, iters_per_epoch=0.01)
    # 16^3 keeps the 3D cases fast; ICT's teacher runs per half, so its 3D halves need 2 images for BatchNorm there
    batch = synthetic_batch(ndim, size=32 if ndim == 2 else 16, n_u=4 if cls is ICT and ndim == 3 else 2)
    first = method.training_step(batch, 7)
    assert torch.isfinite(first.loss) and all(math.isfinite(v) for v in first.logs.values())
    losses = losses_after_steps(method, batch, steps=8, lr=0.05)
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0], losses


@pytest.mark.parametrize("method", ["ua_mt", "entropy_min", "ict", "self_training", "ups"])
def test_runs_end_to_end_through_the_cli(method, tmp_path, make_protocol):
    from fmssl_bench.benchmark.cli import main

    proto = make_protocol("synthetic-2d", resize=[32, 32],
                          train={"iterations": 2, "checkpoint_every": 2, "patch": [32, 32]},
                          inference={"patch": [32, 32], "stride": [32, 32]})
    out = tmp_path / "runs"
    assert main(["--method", method, "--dataset", "synthetic-2d", "--labeled", "4", "--protocol", proto,
                 "--out", str(out), "--no-progress", "--leaderboard-dir", str(tmp_path / "lb")]) == 0
    (summary,) = out.glob(f"synthetic-2d/{method}/labeled-4/seed0/*/summary.json")
    log = (summary.parent / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 2 and "loss_sup" in log[0]
