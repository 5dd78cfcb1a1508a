"""SFR / SFR+ (seed 002): stitching round trips, LoRA parameter counts, stages and their resume.

The stage tests run the real pipeline (fine-tune -> pseudo-label -> re-train) on synthetic views
with a tiny *randomly initialised* real SAM (segment_anything's Sam, 128 px, helpers.tiny_sam),
put into the run context under the name ``sam_tiny_random_init``; the LoRA counts use the real
MobileSAM architecture (random init, no weights needed). Real-weights runs are the la-smoke and
kvasir-smoke records of the closing note.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fmssl_bench.benchmark.protocol import load_protocol
from fmssl_bench.benchmark.training.context import RunContext
from fmssl_bench.benchmark.views import LabeledView, UnlabeledView
from fmssl_bench.datasets.synthetic import synthetic_case
from fmssl_bench.errors import ConfigError
from fmssl_bench.foundation import SamGeneralist, make_trainable
from fmssl_bench.foundation.stitching import (
    StitchedSegmenter,
    grid_side,
    stitch,
    stitch_images,
    unstitch,
    unstitch_images,
)
from fmssl_bench.foundation.trainable import LoRAQKV
from fmssl_bench.methods.registry import method_class
from helpers import tiny_sam

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "sam_tiny_random_init"


# --------------------------------------------------------------------------- stitching F_C
@pytest.mark.parametrize("depth", [1, 2, 5, 9, 10, 17, 80])
def test_stitch_round_trip_keeps_slice_order_and_zero_fills(depth):
    volume = torch.randn(2, 3, 7, 5, depth)  # non-square slices, D square or not
    side = grid_side(depth)
    assert side == math.ceil(math.sqrt(depth)) and (side - 1) ** 2 < depth <= side**2
    canvas = stitch(volume)
    assert canvas.shape == (2, 3, 7 * side, 5 * side)
    assert torch.equal(unstitch(canvas, depth), volume)
    for z in range(side * side):  # slice z at row z // d, column z % d; zeros after the last
        cell = canvas[..., (z // side) * 7:(z // side + 1) * 7, (z % side) * 5:(z % side + 1) * 5]
        assert torch.equal(cell, volume[..., z] if z < depth else torch.zeros_like(cell))


def test_paper_grids():
    assert grid_side(80) == 9 and grid_side(96) == 10  # LA 112x112x80 -> 9x9; BraTS / abdomen 96^3 -> 10x10


def test_image_grouping_round_trip_with_a_partial_canvas():
    images = torch.randn(3, 3, 6, 4)
    canvas = stitch_images(images, side=2)
    assert canvas.shape == (3, 12, 8) and torch.count_nonzero(canvas[:, 6:, 4:]) == 0
    assert torch.equal(unstitch_images(canvas, 3, side=2), images)
    with pytest.raises(ValueError, match="do not fit"):
        stitch_images(torch.zeros(5, 1, 2, 2), side=2)


# --------------------------------------------------------------------------- LoRA counts
def test_lora_rank_4_on_q_and_v_only_of_mobilesam():
    from fmssl_bench.foundation.registry import get_spec

    pytest.importorskip("mobile_sam")
    model = get_spec("mobilesam").build_model()  # the real architecture, randomly initialised
    fm = SamGeneralist("mobilesam_random_init", model)
    sam = make_trainable(fm, lora_rank=4, promptless=True, n_classes=2)
    wrapped = [m for m in sam.sam.image_encoder.modules() if isinstance(m, LoRAQKV)]
    assert len(wrapped) == sam.lora_modules == 10
    expected = 0
    for m in wrapped:  # A: rank x in for q and v; B: q outputs x rank and v outputs x rank; none for k
        third = m.out_features - len(m.q_index) - len(m.v_index)
        assert third == len(m.q_index) and m.rank == 4  # TinyViT: key_dim for q and k
        expected += 4 * m.in_features * 2 + 4 * (len(m.q_index) + len(m.v_index))
        delta = m.delta_weight()
        k_rows = sorted(set(range(m.out_features)) - set(m.q_index.tolist()) - set(m.v_index.tolist()))
        assert torch.count_nonzero(delta[k_rows]) == 0
    lora = sum(p.numel() for n, p in sam.named_parameters() if "lora_" in n)
    assert lora == expected == 29_696
    trained = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("sam.mask_decoder.") or n == "dense_prompt" for n in trained)


# --------------------------------------------------------------------------- the segmenter
@pytest.mark.parametrize("ndim, shape", [(3, (2, 1, 16, 12, 5)), (2, (5, 1, 16, 16))])
def test_stitched_segmenter_returns_class_logits_of_the_input_shape(ndim, shape):
    fm = SamGeneralist(TINY, tiny_sam())
    seg = StitchedSegmenter(make_trainable(fm, lora_rank=2, promptless=True, n_classes=3), ndim, group=2)
    logits = seg(torch.randn(shape))
    assert logits.shape == (shape[0], 3, *shape[2:])
    assert torch.equal(logits[:, 0], torch.zeros_like(logits[:, 0]))  # the zero background logit
    logits.sum().backward()
    assert seg.sam.dense_prompt.grad is not None


# --------------------------------------------------------------------------- stages
def _context(run_dir: Path, ndim: int, protocol_path: str) -> RunContext:
    proto = load_protocol(protocol_path)
    shape = (32,) * ndim
    cases = [synthetic_case(shape, seed=1, index=k) for k in range(6)]
    labeled = LabeledView(["l0", "l1"], [c[0] for c in cases[:2]], [np.minimum(c[1], 1) for c in cases[:2]])
    unlabeled = UnlabeledView(["u0", "u1", "u2", "u3"], [c[0] for c in cases[2:]])
    ctx = RunContext(proto, labeled=labeled, unlabeled=unlabeled, n_classes=2, in_channels=1, seed=0,
                     run_dir=run_dir, progress=False)
    ctx.generalists[(TINY, None)] = SamGeneralist(TINY, tiny_sam())
    return ctx


def _method(name: str, ctx: RunContext, **args):
    cls = method_class(name)
    method = cls(ctx, **{**cls.defaults, "generalist": TINY, "lora_rank": 2, **args})
    method.setup()
    return method


@pytest.fixture
def tiny_protocol(make_protocol):
    def make(ndim: int) -> str:
        net = {"n_filters": 2} if ndim == 3 else {}
        patch = [32] * ndim
        return make_protocol(f"synthetic-{ndim}d", net=net,
                             train={"iterations": 4, "checkpoint_every": 2, "patch": patch},
                             inference={"patch": patch, "stride": [16] * ndim},
                             stages={"finetune": {"iterations": 3, "batch_size": 1, "labeled_bs": 1, "optimizer": "adamw",
                                                  "lr": 0.001, "weight_decay": 0.1, "schedule": "poly",
                                                  "checkpoint_every": 1}})
    return make


@pytest.mark.parametrize("ndim", [2, 3])
def test_sfr_stages_run_and_resume_after_fine_tuning(tmp_path, tiny_protocol, monkeypatch, ndim):
    proto = tiny_protocol(ndim)
    scored: list[str] = []
    # uninterrupted
    ctx = _context(tmp_path / "a", ndim, proto)
    ctx.score_pseudo_labels = lambda ids, labels, tag: scored.append(tag)
    full = _method("sfr", ctx)
    full.fit()
    assert scored == ["zero_shot", "finetuned"]
    assert [s["stage"] for s in ctx.stage_log] == ["finetune", "train"]
    assert set(full.targets) == {"u0", "u1", "u2", "u3"}
    assert all(t.shape == (32,) * ndim and t.dtype == np.uint8 for t in full.targets.values())
    # killed right after the fine-tuning (its checkpoint and the pseudo-labels exist), then resumed
    ctx_b = _context(tmp_path / "b", ndim, proto)
    first = _method("sfr", ctx_b)
    real_train = RunContext.train

    def die_at_retraining(self, method, stage="train", **kw):
        if stage == "train":
            raise KeyboardInterrupt
        return real_train(self, method, stage, **kw)

    monkeypatch.setattr(RunContext, "train", die_at_retraining)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    monkeypatch.setattr(RunContext, "train", real_train)
    ctx_c = _context(tmp_path / "b", ndim, proto)
    resumed = _method("sfr", ctx_c)
    calls = []
    monkeypatch.setattr(resumed, "predict_probs", lambda images: calls.append(1) or iter(()))
    resumed.fit()
    assert calls == []  # pseudo-labels came from the artifacts, not recomputed
    assert [(s["stage"], s["skipped"]) for s in ctx_c.stage_log] == [("finetune", True), ("train", False)]
    for (name, a), (_, b) in zip(full.predictor().state_dict().items(), resumed.predictor().state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_sfr_plus_splits_by_confidence(tmp_path, tiny_protocol):
    ctx = _context(tmp_path, 3, tiny_protocol(3))
    tags: list[str] = []
    ctx.score_pseudo_labels = lambda ids, labels, tag: tags.append(tag)
    method = _method("sfr_plus", ctx, tau=0.0)  # every case is confident: no second round, no targets
    method.fit()
    assert method.facts["split"] == {"tau": 0.0, "confident": 4, "uncertain": 0} and method.targets == {}
    stored = ctx.artifacts.load("pseudo_label", "pseudo_labels", "arrays")  # C_j after the (deterministic) fine-tuning
    confidence = {i: float(stored[f"{i}::confidence"]) for i in ctx.unlabeled.ids}
    tau = float(np.median(list(confidence.values())))  # half confident, half uncertain
    ctx2 = _context(tmp_path / "half", 3, tiny_protocol(3))
    ctx2.score_pseudo_labels = lambda ids, labels, tag: tags.append(tag)
    method = _method("sfr_plus", ctx2, tau=tau, score_zero_shot=False)
    method.fit()
    split = method.facts["split"]
    assert split["confident"] == split["uncertain"] == 2
    assert set(method.targets) == {i for i, c in confidence.items() if c < tau}
    assert [s["stage"] for s in ctx2.stage_log][-1] == "train"
    if split["confident"]:
        assert "finetune_plus" in [s["stage"] for s in ctx2.stage_log] and "plus_finetuned" in tags


# --------------------------------------------------------------------------- refusals
def test_refusals_name_the_flag(make_protocol):
    cls = method_class("sfr")
    proto = load_protocol(make_protocol("synthetic-3d"))
    for base, message in [("supervised", "does not expose its student"), ("sfr", "not SFR itself"),
                          ("nope", "unknown method")]:
        with pytest.raises(ConfigError, match=f"base={base}.*{message}"):
            cls.check({**cls.defaults, "base": base}, proto)
    with pytest.raises(ConfigError, match="SAM 2 is not supported"):
        cls.check({**cls.defaults, "generalist": "sam2_hiera_t"}, proto)
    bare = dataclasses.replace(proto, stages={})
    with pytest.raises(ConfigError, match="stages.finetune"):
        cls.check(dict(cls.defaults), bare)
    plus = method_class("sfr_plus")
    with pytest.raises(NotImplementedError, match="confidence=ssl"):
        plus.check({**plus.defaults, "confidence": "ssl"}, proto)


def test_identity_holds_the_base_arguments_and_only_the_stages_trained():
    from fmssl_bench.benchmark.records.identity import protocol_for_identity

    proto = load_protocol("la")
    assert "finetune" in protocol_for_identity(proto.to_dict(), method_class("sfr").stages_used({}))["stages"]
    assert protocol_for_identity(proto.to_dict(), method_class("mean_teacher").stages_used({}))["stages"] == {}
    assert method_class("sfr").components({"base": "acmt"}) == ("acmt",)
