"""Killing a run mid-training and rerunning the same command resumes and gives the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


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
    deadline = time.time() + 240
    ckpt = None
    while time.time() < deadline and interrupted.poll() is None:
        found = list((tmp_path / "cut").glob("**/checkpoint_train.pt"))
        if found and torch.load(found[0], weights_only=True)["iteration"] >= 10:
            ckpt = found[0]
            break
        time.sleep(0.2)
    assert ckpt is not None, "no checkpoint appeared before the run ended"
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    iteration_at_kill = torch.load(ckpt, weights_only=True)["iteration"]
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
