"""End-to-end on the real LA and Kvasir-SEG data (skip with a reason when FMSSL_DATA lacks them).

Tiny networks and two iterations: these check formats, splits and the 20/100-case evaluation,
not accuracy.
"""

from __future__ import annotations

import csv
import json

import numpy as np

from fmssl_bench.benchmark.cli import main
from fmssl_bench.datasets import build_dataset


def test_la_adapter_reads_the_ua_mt_layout(la_root):
    la = build_dataset("la", la_root)
    split = la.official_split()
    assert len(split.train) == 30 and len(split.test) == 20
    case = la.load(split.test[0])
    assert case.image.shape[0] == 1 and case.image.shape[1:] == case.label.shape
    assert set(np.unique(case.label)) == {0, 1}
    assert case.spacing == (0.625, 0.625, 0.625)


def test_la_mean_teacher_tiny_run_scores_all_20_test_volumes(la_root, tmp_path, make_protocol):
    proto = make_protocol("la-smoke", net={"n_filters": 2}, train={"iterations": 2, "patch": [32, 32, 16], "checkpoint_every": 2},
                          inference={"patch": [64, 64, 48], "stride": [64, 64, 48], "sw_batch_size": 4, "largest_component": True})
    out = tmp_path / "runs"
    rc = main(["--method", "mean_teacher", "--dataset", "la", "--data-root", str(la_root), "--labeled", "4",
               "--protocol", proto, "--out", str(out), "--no-progress"])
    assert rc == 0
    (per_case,) = out.glob("la/mean_teacher/labeled-4/seed0/*/per_case.csv")
    rows = list(csv.DictReader(per_case.open()))
    assert len({r["case"] for r in rows}) == 20
    assert {r["metric"] for r in rows} >= {"dice", "jaccard", "hd95", "asd", "sensitivity"}
    split = json.loads((per_case.parent / "split.json").read_text())
    la = build_dataset("la", la_root)
    assert split["labeled"] == la.official_split().train[:4] and len(split["unlabeled"]) == 26


def test_kvasir_supervised_tiny_run(kvasir_root, tmp_path, make_protocol):
    proto = make_protocol("kvasir-smoke", resize=[32, 32], net={"channels": [4, 8]},
                          train={"iterations": 2, "patch": [32, 32], "checkpoint_every": 2})
    out = tmp_path / "runs"
    rc = main(["--method", "supervised", "--dataset", "kvasir", "--data-root", str(kvasir_root), "--labeled", "50",
               "--protocol", proto, "--out", str(out), "--no-progress"])
    assert rc == 0
    split = json.loads((out / "splits" / "kvasir.json").read_text())
    assert len(split["train"]) == 900 and len(split["test"]) == 100
    (summary,) = out.glob("kvasir/supervised/labeled-50/seed0/*/summary.json")
    assert json.loads(summary.read_text())["n_test"] == 100
