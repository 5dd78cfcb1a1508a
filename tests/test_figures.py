"""Pictures per run: progress.png from train_log.csv, overlays.png of the best/median/worst test cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from fmssl_bench.benchmark.cli import main
from fmssl_bench.benchmark.evaluation.figures import (display_slice, log_kind, pick_cases, write_overlays_png,
                                                      write_progress_png)
from fmssl_bench.benchmark.evaluation.predictions import save_prediction
from fmssl_bench.benchmark.evaluation.scoring import write_per_case
from fmssl_bench.datasets import build_dataset


def assert_png(path: Path | None, min_size: tuple[int, int]) -> None:
    assert path is not None and path.is_file()
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
        assert image.size[0] <= 4000 and image.size[1] <= 4000, image.size
        assert len(set(np.asarray(image.convert("L")).ravel().tolist())) > 10  # something was drawn


def test_pictures_of_a_tiny_2d_run(tmp_path, make_protocol):
    proto = make_protocol("synthetic-2d", train={"iterations": 2, "checkpoint_every": 2})
    out = tmp_path / "runs"
    assert main(["--method", "mean_teacher", "--dataset", "synthetic-2d", "--labeled", "4", "--protocol", proto,
                 "--out", str(out), "--no-progress", "--leaderboard-dir", str(tmp_path / "lb")]) == 0
    (summary,) = out.glob("synthetic-2d/mean_teacher/labeled-4/seed0/*/summary.json")
    record = summary.parent
    assert_png(write_progress_png(record), (600, 500))  # three panels: losses, learning rate, ramp weights
    adapter = build_dataset("synthetic-2d", None)
    test_ids = adapter.official_split().test
    overlays = write_overlays_png(record, adapter, test_ids)
    assert_png(overlays, (900, 300))  # best, median, worst
    with Image.open(overlays) as image:  # a palette image, so committed records stay small
        assert image.mode == "P" and len(image.getcolors(1024) or []) <= 128


def test_overlays_of_a_3d_record_show_the_slice_with_most_reference(tmp_path):
    adapter = build_dataset("synthetic-3d", None)
    test_ids = adapter.official_split().test
    record = tmp_path / "record"
    rows = []
    for k, case_id in enumerate(test_ids):
        case = adapter.load(case_id)
        pred = case.label.copy()
        pred[: 4 * k] = 0  # increasingly wrong predictions
        save_prediction(record / "predictions", case_id, pred, case.spacing, 3)
        for cls in ("organ", "lesion"):
            rows.append({"case": case_id, "class": cls, "metric": "dice", "metric_id": "dice", "value": 0.9 - 0.1 * k})
    write_per_case(record / "per_case.csv", rows)
    assert write_progress_png(record) is None  # no train_log.csv: nothing to draw, no error
    assert_png(write_overlays_png(record, adapter, test_ids), (900, 300))


def test_case_picks_slices_and_kinds():
    dice = {"a": 0.5, "b": 0.9, "c": float("nan"), "d": 0.1, "e": 0.7}
    assert pick_cases(dice) == [("best", "b"), ("median", "a"), ("worst", "d")]
    assert pick_cases({"a": 0.5}) == [("best", "a")]
    label = np.zeros((8, 8, 6), np.uint8)
    label[2:6, 2:6, 4] = 1
    label[3, 3, 1] = 1
    view, ref, pred, note = display_slice(np.random.rand(1, 8, 8, 6).astype(np.float32), label, label)
    assert ref.shape == (8, 8) and ref.sum() == 16 and note == ", slice 4/6"
    assert 0.0 <= view.min() and view.max() <= 1.0
    assert [log_kind(c) for c in ("loss", "loss_cons", "lr", "w_cons", "sam_defined")] == [
        "losses", "losses", "learning rate", "ramp weights", "other logs"]
