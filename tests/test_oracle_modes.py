"""The oracle modes of the seed papers' zero-shot tables (:mod:`fmssl_bench.benchmark.oracle_modes`).

The click rules are tested on hand-made arrays; each mode then runs on a small synthetic volume
(a bright cylinder on 6 of 8 slices) with the real MobileSAM weights (skipped with a reason when
``$FMSSL_WEIGHTS`` does not hold them), and the box-only LiteMedSAM is refused for click modes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fmssl_bench.benchmark import cli
from fmssl_bench.benchmark.oracle import budget_text, oracle_recipe, predict_case, run_oracle
from fmssl_bench.benchmark.oracle_modes import corrective_click, keyframe_prompts, segment_with_clicks
from fmssl_bench.benchmark.records.leaderboard import aggregate, find_summaries, render
from fmssl_bench.errors import ConfigError
from fmssl_bench.foundation import EmbeddingCache, build_generalist


# --------------------------------------------------------------------------- click rules on arrays


def test_first_click_is_positive_and_deep_inside_the_target():
    target = np.zeros((20, 20), bool)
    target[4:15, 4:15] = True
    (x, y), positive = corrective_click(np.zeros_like(target), target, np.random.default_rng(0))
    assert positive and target[y, x] and 7 <= x <= 11 and 7 <= y <= 11  # more than half the depth from the rim


def test_next_click_goes_to_the_larger_error_with_its_sign():
    target = np.zeros((30, 30), bool)
    target[2:8, 2:8] = True
    current = target.copy()
    current[15:28, 15:28] = True  # a large false positive, nothing missed
    (x, y), positive = corrective_click(current, target, np.random.default_rng(1))
    assert not positive and current[y, x] and not target[y, x]
    current = np.zeros_like(target)
    current[2:8, 2:5] = True  # part of the target missed
    (x, y), positive = corrective_click(current, target, np.random.default_rng(1))
    assert positive and target[y, x] and not current[y, x]
    assert corrective_click(target, target, np.random.default_rng(0)) is None


def test_key_frames_are_every_kth_slice_that_holds_the_target():
    ref = np.zeros((10, 10, 12), np.uint8)
    ref[3:7, 3:7, 2:11] = 1
    prompts = keyframe_prompts(ref, 1, 3, 2, np.random.default_rng(0))
    assert sorted(prompts) == [3, 6, 9]  # slice 0 has no target: no click there
    for k, p in prompts.items():
        cols, rows = p.points[:, 0].astype(int), p.points[:, 1].astype(int)
        assert p.n_points == 2 and (ref[rows, cols, k] == 1).all()


class _Recorder:
    """A fake generalist that answers every prompt with the reference square and records prompts."""

    def __init__(self, answer: np.ndarray):
        self.answer, self.prompts, self.encoded = answer, [], 0

    def encode_normalised(self, image01):
        self.encoded += 1
        return image01

    def segment(self, embedding, prompt):
        self.prompts.append(prompt)
        return self.answer


def test_clicks_feed_the_previous_mask_back_and_stop_when_the_mask_is_right():
    ref = np.zeros((16, 16), np.uint8)
    ref[4:12, 4:12] = 1
    wrong = np.zeros((16, 16), np.float32)
    wrong[4:12, 4:8] = 0.9  # half the target: every click corrects the same miss
    fake = _Recorder(wrong)
    pred, used = segment_with_clicks(fake, np.zeros((3, 16, 16), np.float32), ref, 2, 3, {1: np.random.default_rng(0)})
    assert used == 3 and fake.encoded == 1
    assert fake.prompts[0].mask is None and fake.prompts[1].mask is not None
    assert [p.n_points for p in fake.prompts] == [1, 2, 3]
    assert pred.sum() == 32
    right = _Recorder((ref > 0).astype(np.float32))
    _, used = segment_with_clicks(right, np.zeros((3, 16, 16), np.float32), ref, 2, 5, {1: np.random.default_rng(0)})
    assert used == 1  # after the first click the mask equals the reference: no further click


def test_each_mode_names_its_table_and_keys_its_record():
    assert oracle_recipe("points", 3, 5, 5).startswith("001 Table I 'SAM (kN points)': 3 point(s) on every slice")
    assert "002 Table XIV" in oracle_recipe("clicks", 1, 10, 5) and "10 corrective click(s)" in oracle_recipe("clicks", 1, 10, 5)
    assert oracle_recipe("keyframes", 1, 5, 2).startswith("002 Table XV 'Frequency k'") and "every 2-th" in \
        oracle_recipe("keyframes", 1, 5, 2)
    assert oracle_recipe("box", 1, 5, 5) == ""

    class G:
        name, weights_sha256 = "mobilesam", "x"

    texts = {budget_text(G(), m, 2, False, 4, 4, 3, 5) for m in ("box", "points", "clicks", "keyframes")}
    assert texts == {"oracle-box-mobilesam", "oracle-2pt-mobilesam", "oracle-3clicks-mobilesam",
                     "oracle-every5-2pt-mobilesam"}


def test_mode_errors(tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert cli.main(["oracle", "--generalist", "litemedsam", "--dataset", "synthetic-3d", "--prompt", "clicks",
                     "--out", out]) == 2
    assert "box prompts only" in capsys.readouterr().err
    assert cli.main(["oracle", "--generalist", "mobilesam", "--dataset", "synthetic-2d", "--prompt", "keyframes",
                     "--out", out]) == 2
    assert "key frames are slices of a volume" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--clicks 0"):
        run_oracle("mobilesam", "synthetic-3d", prompt="clicks", n_clicks=0, out=out)
    assert not Path(out, "synthetic-3d").exists()


# --------------------------------------------------------------------------- real MobileSAM


def _mobilesam_weights() -> Path | None:
    root = os.environ.get("FMSSL_WEIGHTS")
    path = Path(root) / "mobile_sam" / "mobile_sam.pt" if root else None
    return path if path is not None and path.is_file() else None


needs_mobilesam = pytest.mark.skipif(_mobilesam_weights() is None,
                                     reason="MobileSAM weights absent: needs $FMSSL_WEIGHTS/mobile_sam/mobile_sam.pt")


@pytest.fixture(scope="module")
def mobilesam():
    """MobileSAM with an in-memory embedding cache shared by the modes (each slice is encoded once)."""
    return build_generalist("mobilesam", cache=EmbeddingCache(max_items=64))


def cylinder() -> tuple[np.ndarray, np.ndarray]:
    """A bright disk (radius 14 px) on slices 1..6 of a dark, noisy 64 x 64 x 8 volume."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 30) ** 2 + (xx - 34) ** 2 <= 14**2
    ref = np.zeros((64, 64, 8), np.uint8)
    ref[..., 1:7] = disk[..., None]
    image = (0.2 + 0.6 * ref + rng.normal(0, 0.05, ref.shape)).astype(np.float32)[None]
    return image, ref


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return 2 * float((pred & ref).sum()) / float(pred.sum() + ref.sum())


@needs_mobilesam
@pytest.mark.parametrize(("mode", "kwargs", "prompts"), [
    ("points", {"n_points": 2}, 6),  # one prompt of 2 points on each of the 6 slices with the target
    ("clicks", {"n_clicks": 3}, None),  # up to 3 corrective clicks per slice
    ("keyframes", {"every": 3}, 2),  # key frames 0 (no target), 3 and 6: one click each, propagated
])
def test_each_mode_segments_a_synthetic_volume_with_real_mobilesam(mobilesam, mode, kwargs, prompts):
    image, ref = cylinder()
    rngs = {1: np.random.default_rng(0)}
    args = {"n_points": 1, "n_clicks": 1, "every": 1, **kwargs}
    pred, used, _ = predict_case(mobilesam, image, ref, 2, mode, args["n_points"], rngs, args["n_clicks"], args["every"])
    assert pred.shape == ref.shape
    if prompts is not None:
        assert used == prompts
    else:
        assert 6 <= used <= 18
    target = slice(1, 7)  # the slices that hold the cylinder
    assert _dice(pred[..., target] > 0, ref[..., target] > 0) > 0.9, (mode, _dice(pred > 0, ref > 0))
    if mode == "keyframes":
        # slices 1, 2, 4, 5 had no click: their masks come from propagation
        assert all(_dice(pred[..., k] > 0, ref[..., k] > 0) > 0.9 for k in (1, 2, 4, 5))
        # a box-propagating 2D generalist walks on past the object (box prompts rarely give an empty
        # mask): the end slices get false positives, which the recipe's numbers include
        assert pred[..., 7].any()
    else:  # slice-wise modes prompt only slices that hold the target
        assert not pred[..., 0].any() and not pred[..., 7].any()


@needs_mobilesam
def test_the_oracle_record_and_leaderboard_name_the_table(tmp_path):
    out = tmp_path / "runs"
    summary = run_oracle("mobilesam", "synthetic-2d", prompt="clicks", n_clicks=2, out=out, max_cases=1, progress=False)
    assert summary["labeled"] == "oracle-2clicks-mobilesam-first1" and summary["oracle"] is True
    assert summary["oracle_recipe"].startswith("001 Table I 'SAM-Med3D (k points)', 002 Table XIV")
    config = json.loads((Path(summary["record"]) / "config.json").read_text())
    assert config["method_args"]["n_clicks"] == 2 and config["method_args"]["mask_feedback"] is True
    table = aggregate(find_summaries(out), dataset="synthetic-2d")
    assert table[0]["paper_dice"].startswith("recipe of 001 Table I 'SAM-Med3D (k points)'")
    assert "(oracle, not comparable)" in render(table, "md")
