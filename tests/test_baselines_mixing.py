"""Classic baselines CPS, BCP and ACMT, and the copy-paste operators of ``methods/mixing.py``.

Tiny randomly initialised real networks (the synthetic protocols' VNet with 4 filters, MONAI UNet
with channels 8..64): each method's step runs with a finite loss, a few steps on a fixed batch
lower it, each method's special part is checked directly on hand-made inputs, and one tiny run of
each goes through the runner end to end (BCP in 2D and 3D, its two stages in order).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmssl_bench.benchmark.runner import RunSpec, run
from fmssl_bench.errors import ConfigError
from fmssl_bench.methods.acmt import (ACMT, ambiguous_by_entropy, class_prototypes, entropy_threshold,
                                      nearest_prototype, selective_consistency)
from fmssl_bench.methods.bcp import BCP, bidirectional_copy_paste, largest_component_per_class, masked_dice, mix_loss
from fmssl_bench.methods.cps import CPS, cross_pseudo_labels
from fmssl_bench.methods.mixing import box_mask, box_size, context_mask, mix, random_box, unmix
from helpers import losses_after_steps, synthetic_batch, tiny_method


@pytest.fixture(autouse=True, scope="module")
def _one_thread_no_denormals():
    """CPU speed only, restored afterwards: one intra-op thread and denormals flushed to zero.

    Two torch threads on the shared 2-core machine oversubscribe it (10-100x slower under load,
    measured here); CPS' kaiming-initialised nets saturate, and denormal gradients slow CPU
    kernels ~15x. Neither changes what is tested.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- mixing


@pytest.mark.parametrize("shape", [(64, 64), (32, 48), (112, 112, 80), (32, 32, 32)])
def test_paste_box_is_two_thirds_of_each_side_and_inside_the_patch(shape):
    sizes = box_size(shape)
    assert sizes == tuple(int(s * 2 / 3) for s in shape)
    generator = torch.Generator().manual_seed(0)
    corners = set()
    for k in range(100):
        box = random_box(shape, generator=generator)
        assert tuple(b.stop - b.start for b in box) == sizes
        assert all(0 <= b.start and b.stop <= s - 1 for b, s in zip(box, shape))  # BCP never reaches the far edge
        corners.add(tuple(b.start for b in box))
        if k < 5:
            mask = box_mask(shape, box)
            assert mask.dtype == torch.long and int((mask == 0).sum()) == math.prod(sizes)
            assert bool((mask[box] == 0).all())
    assert len(corners) > 30  # positions vary
    # the global generator (seeded per iteration by the loop) makes the same boxes again
    torch.manual_seed(3)
    first = context_mask(shape)
    torch.manual_seed(3)
    assert torch.equal(first, context_mask(shape))


def test_mix_and_unmix_are_exact_for_images_and_labels():
    torch.manual_seed(0)
    a, b = torch.randn(2, 1, 16, 12), torch.randn(2, 1, 16, 12)
    ya, yb = torch.randint(0, 3, (2, 16, 12)), torch.randint(0, 3, (2, 16, 12))
    mask = box_mask((16, 12), (slice(2, 12), slice(3, 11)))
    ab, ba = mix(a, b, mask), mix(b, a, mask)
    assert torch.equal(ab[..., 0, 0], a[..., 0, 0]) and torch.equal(ab[..., 5, 5], b[..., 5, 5])
    assert torch.equal(ab, a * mask + b * (1 - mask))  # BCP's formula, exactly
    ra, rb = unmix(ab, ba, mask)
    assert torch.equal(ra, a) and torch.equal(rb, b)
    yab = mix(ya, yb, mask)
    assert yab.dtype == torch.long and torch.equal(unmix(yab, mix(yb, ya, mask), mask)[0], ya)
    with pytest.raises(ValueError, match="mask"):
        mix(a, b, mask[:, :5])


# ----------------------------------------------------------------------------- BCP parts


def _constant_batch():
    """Labeled a=1, b=2; unlabeled u_a=3, u_b=4 (8x8 images); labels 1 (a) and 2 (b); pseudo 5, 6."""
    images_l = torch.stack([torch.full((1, 8, 8), 1.0), torch.full((1, 8, 8), 2.0)])
    images_u = torch.stack([torch.full((1, 8, 8), 3.0), torch.full((1, 8, 8), 4.0)])
    labels = torch.stack([torch.full((8, 8), 1), torch.full((8, 8), 2)])
    pseudo = torch.stack([torch.full((8, 8), 5), torch.full((8, 8), 6)])
    return images_l, labels, images_u, pseudo


def test_bcp_bidirectional_images_labels_and_weights_on_a_hand_made_case():
    images_l, labels, images_u, pseudo = _constant_batch()
    box = (slice(1, 6), slice(2, 7))
    mask = box_mask((8, 8), box)
    inside = mask == 0
    to_l, to_u = bidirectional_copy_paste(images_l, labels, images_u, pseudo, mask, u_weight=0.5)
    # x_l: labeled a outside, unlabeled u_a pasted inside; its label: y_a outside, the pseudo-label of u_a inside
    assert torch.equal(to_l.image[0, 0][~inside], torch.full((64 - 25,), 1.0))
    assert torch.equal(to_l.image[0, 0][inside], torch.full((25,), 3.0))
    assert torch.equal(to_l.label(mask)[0], torch.where(inside, 5, 1))
    assert torch.equal(to_l.weight(mask), torch.where(inside, 0.5, 1.0))
    # x_u: unlabeled u_b outside, labeled b pasted inside; its label: pseudo of u_b outside, y_b inside
    assert torch.equal(to_u.image[0, 0][~inside], torch.full((39,), 4.0))
    assert torch.equal(to_u.image[0, 0][inside], torch.full((25,), 2.0))
    assert torch.equal(to_u.label(mask)[0], torch.where(inside, 2, 6))
    assert torch.equal(to_u.weight(mask), torch.where(inside, 1.0, 0.5))
    with pytest.raises(ConfigError, match="as many of each"):
        bidirectional_copy_paste(images_l, labels, images_u[:1].repeat(4, 1, 1, 1), pseudo[:1].repeat(4, 1, 1), mask, 0.5)


@pytest.mark.parametrize("style", ["la", "acdc"])
def test_bcp_mix_loss_weights_the_pseudo_labelled_region(style):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    outside, inside = torch.randint(0, 3, (2, 8, 8)), torch.randint(0, 3, (2, 8, 8))
    mask = box_mask((8, 8), (slice(2, 7), slice(1, 6)))
    other = (inside + 1) % 3
    # with weight 0 inside, the inside target does not matter; with weight 0.5 it does, linearly
    zero = mix_loss(logits, outside, inside, mask, 1.0, 0.0, style)
    assert float(zero) == pytest.approx(float(mix_loss(logits, outside, other, mask, 1.0, 0.0, style)))
    half = mix_loss(logits, outside, inside, mask, 1.0, 0.5, style)
    full = mix_loss(logits, outside, inside, mask, 1.0, 1.0, style)
    assert float(half - zero) == pytest.approx(0.5 * float(full - zero), rel=1e-5)
    # a confident correct prediction of the composed label costs almost nothing
    target = mix(outside, inside, mask)
    perfect = 50.0 * F.one_hot(target, 3).movedim(-1, 1).float()
    assert float(mix_loss(perfect, outside, inside, mask, 1.0, 0.5, style)) < 1e-3
    assert float(masked_dice(torch.softmax(perfect, 1), target, torch.ones_like(mask), style)) < 1e-3


def test_bcp_pseudo_labels_keep_the_largest_component_of_each_class():
    lab = np.zeros((1, 10, 10), dtype=np.int64)
    lab[0, 0:4, 0:4] = 1  # 16 voxels: kept
    lab[0, 7:9, 7:9] = 1  # 4 voxels: dropped
    lab[0, 5, 5] = 1  # 1 voxel, two steps from the big class-1 blob: dropped
    lab[0, 0:2, 7:10] = 2  # 6 voxels: kept
    lab[0, 4, 4] = 2  # 1 voxel touching only class 1: its own class-2 component, dropped
    out = largest_component_per_class(lab, 3)
    expected = np.zeros_like(lab)
    expected[0, 0:4, 0:4] = 1
    expected[0, 0:2, 7:10] = 2
    assert np.array_equal(out, expected)
    diagonal = np.zeros((1, 4, 4), dtype=np.int64)
    diagonal[0, 0, 0] = diagonal[0, 1, 1] = diagonal[0, 3, 3] = 1  # skimage connectivity: (0,0)-(1,1) is one component
    kept = largest_component_per_class(diagonal, 2)
    assert kept[0, 0, 0] == kept[0, 1, 1] == 1 and kept[0, 3, 3] == 0


def test_bcp_pretrains_first_and_self_training_starts_from_the_pretrained_weights(tmp_path):
    method = tiny_method(BCP, 2, tmp_path)
    calls = []
    pretrained = {}

    def fake_train(m, stage="train", **kwargs):
        calls.append((stage, kwargs.get("iterations"), sorted((kwargs.get("modules") or m.modules()))))
        if stage == "pretrain":
            batch = kwargs["batches"](0, [0, 1])
            assert batch.image_u is None and batch.image_l.shape[0] == 4  # labeled_bs labeled cases only
            out = kwargs["step"](batch, 0)
            assert torch.isfinite(out.loss)
            with torch.no_grad():  # stands for the optimiser's updates
                for p in m.student.parameters():
                    p.add_(0.5)
            pretrained.update({k: v.clone() for k, v in m.student.state_dict().items()})
        else:
            student, teacher = m.student.state_dict(), m.teacher.state_dict()
            assert all(torch.equal(student[k], pretrained[k]) for k in pretrained)
            assert all(torch.equal(teacher[k], pretrained[k]) for k in pretrained)

    method.ctx.train = fake_train
    method.ctx.labeled = _labeled_view()
    assert method.fit() is method.student
    # synthetic-2d trains 120 iterations: pre-training asks for round(120 * 2000 / 15000) = 16
    assert calls == [("pretrain", 16, ["student"]), ("train", None, ["student", "teacher"])]


def _labeled_view():
    from fmssl_bench.benchmark.views import LabeledView
    from fmssl_bench.datasets.synthetic import synthetic_case

    cases = [synthetic_case((64, 64), seed=0, index=k) for k in range(4)]
    return LabeledView([f"c{k}" for k in range(4)], [c[0] for c in cases], [c[1] for c in cases])


def test_bcp_takes_the_pretrain_length_from_the_protocol_when_it_has_one(tmp_path, make_protocol):
    method = tiny_method(BCP, 2, tmp_path, protocol=make_protocol("synthetic-2d", stages={"pretrain": {"iterations": 7}}))
    assert method.pretrain_iterations() is None  # the loop then reads stages.pretrain.iterations
    with pytest.raises(ConfigError, match="labeled_bs"):
        tiny_method(BCP, 2, tmp_path, protocol=make_protocol("synthetic-2d", train={"labeled_bs": 3}))
    with pytest.raises(ConfigError, match="batch_size"):
        tiny_method(BCP, 2, tmp_path, protocol=make_protocol("synthetic-2d", train={"batch_size": 6}))


@pytest.mark.parametrize("ndim", [2, 3])
def test_bcp_pretrain_steps_lower_the_loss(ndim, tmp_path):
    method = tiny_method(BCP, ndim, tmp_path)
    # BCP forwards one half-batch at a time: 2 images per forward keep 3D batch norm defined at 16^3
    batch = synthetic_batch(ndim, n_l=2 if ndim == 2 else 4, n_u=0, size=32 if ndim == 2 else 16)
    opt = torch.optim.SGD(method.student.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for it in range(8):
        torch.manual_seed(0)  # the same box (and dropout) every step: a fixed objective on the fixed batch
        opt.zero_grad()
        out = method.pretrain_step(batch, it)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert all(math.isfinite(v) for v in losses) and min(losses[-3:]) < losses[0], losses


# ----------------------------------------------------------------------------- CPS parts


def test_cps_nets_differ_at_init_and_each_target_is_the_others_argmax(tmp_path):
    method = tiny_method(CPS, 2, tmp_path)
    p1, p2 = dict(method.student.named_parameters()), dict(method.net2.named_parameters())
    assert p1.keys() == p2.keys()
    convs = [k for k, v in p1.items() if v.dim() == 4]
    assert convs and all(not torch.equal(p1[k], p2[k]) for k in convs)
    assert len(method.trainable()) == len(p1) + len(p2) and sorted(method.modules()) == ["net2", "student"]
    assert method.predictor() is method.student
    batch = synthetic_batch(2)
    with torch.no_grad():
        out1, out2 = method.student(batch.images), method.net2(batch.images)
    assert not torch.allclose(out1, out2)
    t1, t2 = cross_pseudo_labels(out1[2:], out2[2:])
    assert torch.equal(t1, out2[2:].argmax(1)) and torch.equal(t2, out1[2:].argmax(1))
    # the step's cross terms are CE of each net's unlabeled logits against the other's argmax
    step = method.training_step(batch, 0)
    assert step.logs["loss_cps1"] == pytest.approx(float(F.cross_entropy(out1[2:], t1)), rel=1e-4)
    assert step.logs["loss_cps2"] == pytest.approx(float(F.cross_entropy(out2[2:], t2)), rel=1e-4)
    # targets carry no gradient: net 1's cross term does not train net 2
    logits1, logits2 = method.student(batch.images), method.net2(batch.images)
    target1, _ = cross_pseudo_labels(logits1[2:], logits2[2:])
    F.cross_entropy(logits1[2:], target1).backward()
    assert all(p.grad is None for p in method.net2.parameters())


# ----------------------------------------------------------------------------- ACMT parts


def test_acmt_entropy_selects_exactly_the_ambiguous_voxels():
    # 2 classes on a 2x3 map: normalised entropies 1, 0.88, 0.47, 0.08, 0.99, ~0
    p = torch.tensor([[0.5, 0.7, 0.9, 0.99, 0.55, 1.0], [0.5, 0.3, 0.1, 0.01, 0.45, 0.0]]).reshape(1, 2, 2, 3)
    ent = -(p * torch.log(p + 1e-6)).sum(1) / math.log(2)
    mask = ambiguous_by_entropy(p, 0.75)
    assert mask.shape == (1, 1, 2, 3)
    assert mask.flatten().tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert torch.equal(mask[:, 0].bool(), ent >= 0.75)
    assert ambiguous_by_entropy(p, 0.95).flatten().tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dist = torch.arange(12, dtype=torch.float32).reshape(1, 2, 2, 3)
    # mean over the selected voxel-classes (Ent.) / per-voxel sum over classes averaged over selected voxels (MU)
    selected = dist[:, :, mask[0, 0].bool()]
    assert float(selective_consistency(dist, mask)) == pytest.approx(float(selected.mean()))
    assert float(selective_consistency(dist, mask, per_class=False)) == pytest.approx(float(selected.sum(1).mean()))
    assert float(selective_consistency(dist, torch.zeros_like(mask))) == 0.0
    # the "strict" ramp: 0.75 at the start, 0.95 at the end of the stage
    assert entropy_threshold(0, 100) == pytest.approx(0.75 + 0.2 * math.exp(-5))
    assert entropy_threshold(100, 100) == pytest.approx(0.95)


def test_acmt_prototypes_and_nearest_prototype_labels():
    features = torch.tensor([[0.0, 0.1, 1.0, 0.9]]).reshape(1, 1, 2, 2)  # two clusters
    labels = torch.tensor([[0, 0], [1, 1]]).reshape(1, 2, 2)
    confidence = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).reshape(1, 2, 2, 2)
    protos = class_prototypes(features, labels, confidence)
    assert protos.shape == (1, 2, 1)
    assert protos[0, :, 0].tolist() == pytest.approx([0.05, 0.95], abs=1e-4)
    assert torch.equal(nearest_prototype(features, protos), labels)


def test_acmt_self_error_strategy_is_refused_with_a_reason(tmp_path):
    with pytest.raises(NotImplementedError, match="cleanlab"):
        tiny_method(ACMT, 2, tmp_path, strategy="self_error")


# ----------------------------------------------------------------------------- every method trains


CASES = [(CPS, 2, {}), (CPS, 3, {}), (ACMT, 2, {}), (ACMT, 3, {}), (ACMT, 3, {"strategy": "mc_dropout", "mc_passes": 2}),
         (ACMT, 2, {"strategy": "prototype", "prototype_passes": 2}), (BCP, 2, {}), (BCP, 3, {})]


@pytest.mark.parametrize("cls, ndim, args", CASES,
                         ids=[f"{c.name}-{d}d-{a.get('strategy', 'default')}" for c, d, a in CASES])
def test_method_steps_are_finite_and_lower_the_loss(cls, ndim, args, tmp_path):
    torch.manual_seed(0)
    # far enough into the ramp that the unsupervised terms count
    method = tiny_method(cls, ndim, tmp_path, total=8, **args)
    n = 4 if cls is BCP and ndim == 3 else 2  # BCP forwards half-batches (see the pretrain test)
    batch = synthetic_batch(ndim, n_l=n, n_u=n, size=32 if ndim == 2 else 16)
    first = method.training_step(batch, 7)
    assert torch.isfinite(first.loss) and all(math.isfinite(v) for v in first.logs.values())
    if cls is BCP:  # one box for all steps: a fixed objective on the fixed batch
        fixed = method.box_mask(batch.image_l)
        method.box_mask = lambda images: fixed
    torch.manual_seed(1)
    losses = losses_after_steps(method, batch, steps=8)
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0], losses


# ----------------------------------------------------------------------------- end to end


TINY_RUN = {
    # 32x32 instead of 64x64 (the cases are resized)
    "synthetic-2d": dict(resize=[32, 32], train={"patch": [32, 32], "checkpoint_every": 2},
                         inference={"patch": [32, 32], "stride": [32, 32]}),
    # 16^3 patches of a 2-filter VNet; BCP forwards half-batches, so 4 + 4 keeps 2 images per forward
    "synthetic-3d": dict(net={"n_filters": 2}, train={"patch": [16, 16, 16], "batch_size": 8, "labeled_bs": 4,
                                                      "checkpoint_every": 2},
                         inference={"patch": [16, 16, 16], "stride": [16, 16, 16]}),
}


@pytest.mark.parametrize("method, dataset", [("cps", "synthetic-2d"), ("acmt", "synthetic-2d"),
                                             ("bcp", "synthetic-2d"), ("bcp", "synthetic-3d")])
def test_tiny_run_through_the_runner(method, dataset, tmp_path, make_protocol):
    protocol = make_protocol(dataset, **TINY_RUN[dataset])
    summary = run(RunSpec(method=method, dataset=dataset, labeled="4", protocol=protocol, out=str(tmp_path / "runs"),
                          iterations=2, progress=False, device="cpu"))
    assert summary["method"] == method
    (prov_file,) = (tmp_path / "runs").glob("**/provenance.json")
    prov = json.loads(prov_file.read_text())
    stages = [s["stage"] for s in prov["stages"]]
    assert stages == (["pretrain", "train"] if method == "bcp" else ["train"])
    log = (prov_file.parent / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 2 * len(stages)
    assert [row.split(",")[0] for row in log[1:]] == [stage for stage in stages for _ in range(2)]
    assert (prov_file.parent / "checkpoint_train.pt").is_file()
    assert prov["method"]["deviations"]
