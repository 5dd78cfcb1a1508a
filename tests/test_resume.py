"""Killing a run mid-training and rerunning the same command resumes and gives the same result."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import kill_after_checkpoint


def cli(args):
    cmd = [sys.executable, "-m", "fmssl_bench.benchmark.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: no oversubscription, same numerics in every run
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, make_protocol):
    proto = make_protocol("synthetic-2d", train={"iterations": 40, "checkpoint_every": 5})
    common = ["--method", "mean_teacher", "--dataset", "synthetic-2d", "--labeled", "4", "--protocol", proto, "--no-progress"]

    reference = cli(common + ["--out", str(tmp_path / "ref")])
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out
    interrupted = cli(common + ["--out", str(tmp_path / "cut")])
    ckpt, iteration_at_kill = kill_after_checkpoint(interrupted, tmp_path / "cut", "checkpoint_train.pt", 10)
    assert iteration_at_kill < 40 and not (ckpt.parent / "summary.json").exists()

    resumed = cli(common + ["--out", str(tmp_path / "cut")])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out

    (ref_csv,) = (tmp_path / "ref").glob("**/per_case.csv")
    (cut_csv,) = (tmp_path / "cut").glob("**/per_case.csv")
    assert ref_csv.read_text() == cut_csv.read_text()
    import json

    prov = json.loads((cut_csv.parent / "provenance.json").read_text())
    assert prov["stages"][0]["resumed_from"] == iteration_at_kill > 0

    # a complete record is a cache hit: rerunning does not retrain
    again = cli(common + ["--out", str(tmp_path / "cut")])
    again.communicate(timeout=120)
    assert json.loads((cut_csv.parent / "provenance.json").read_text()) == prov
