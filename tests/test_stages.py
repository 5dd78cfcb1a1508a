"""Stages: per-stage configuration, artifacts, hashed random streams, kill-and-resume across stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmssl_bench.benchmark.protocol import load_protocol
from fmssl_bench.benchmark.training.artifacts import ArtifactStore
from fmssl_bench.benchmark.training.batches import stage_key
from fmssl_bench.errors import ConfigError, FmsslError
from helpers import kill_after_checkpoint

HERE = Path(__file__).resolve().parent


def test_stage_keys_are_proper_hashes():
    assert stage_key("round12") != stage_key("round21")  # sum(map(ord, ...)) made these collide
    assert stage_key("train") == stage_key("train")


def test_stage_section_overrides_train_fields(make_protocol):
    proto = load_protocol(make_protocol("synthetic-2d", stages={"finetune": {"optimizer": "adamw", "lr": 0.001,
                                                                             "iterations": 7, "batch_size": 2,
                                                                             "labeled_bs": 2}}))
    cfg = proto.stage_config("finetune")
    assert (cfg.optimizer, cfg.lr, cfg.iterations, cfg.batch_size) == ("adamw", 0.001, 7, 2)
    assert cfg.patch == proto.train.patch and proto.stage_config("other") == proto.train


@pytest.mark.parametrize("stages, message", [
    ({"finetune": {"lr_typo": 1}}, "stages.finetune"),
    ({"finetune": {"optimizer": "lion"}}, "optimizer"),
    ({"finetune": {"labeled_bs": 9}}, "labeled_bs"),
])
def test_bad_stage_sections_are_refused(make_protocol, stages, message):
    with pytest.raises(ConfigError, match=message):
        load_protocol(make_protocol("synthetic-2d", stages=stages))


def test_artifacts_round_trip_and_compute_once(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(3, dtype=np.uint8)}

    first = store.cached("round1", "pseudo", "arrays", compute)
    again = store.cached("round1", "pseudo", "arrays", compute)
    assert calls == [1] and np.array_equal(first["a"], again["a"])
    store.save("round1", "accepted", "json", ["x", "y"])
    store.save("finetune", "lora", "state", {"w": torch.ones(2)})
    assert store.load("round1", "accepted", "json") == ["x", "y"]
    assert torch.equal(store.load("finetune", "lora", "state")["w"], torch.ones(2))
    assert store.listing() == {"finetune": ["lora.pt"], "round1": ["accepted.json", "pseudo.npz"]}
    with pytest.raises(FmsslError, match="not found"):
        store.load("round2", "pseudo", "arrays")
    with pytest.raises(ValueError):
        store.path("../escape", "x", "json")


def _cli(args, out: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE / "two_stage_method.py"), *args, "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_kill_during_stage_two_resumes_and_matches_an_uninterrupted_run(tmp_path, make_protocol):
    proto = make_protocol("synthetic-2d", train={"iterations": 6, "checkpoint_every": 2},
                          stages={"stage2": {"iterations": 40, "checkpoint_every": 4, "optimizer": "adam", "lr": 0.001}})
    common = ["--method", "test_two_stage", "--dataset", "synthetic-2d", "--labeled", "4", "--protocol", proto,
              "--no-progress"]
    reference = _cli(common, tmp_path / "ref")
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out

    cut = _cli(common, tmp_path / "cut")
    ckpt, reached = kill_after_checkpoint(cut, tmp_path / "cut", "checkpoint_stage2.pt", 8)
    assert reached < 40 and not (ckpt.parent / "summary.json").exists()
    stage1_mtime = (ckpt.parent / "artifacts" / "stage1" / "pseudo_labels.npz").stat().st_mtime_ns

    resumed = _cli(common, tmp_path / "cut")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert out.splitlines()[0] == f"resuming stage2 from iteration {reached} of 40", out
    assert "stage1: finished earlier" in out
    record = ckpt.parent
    prov = json.loads((record / "provenance.json").read_text())
    stages = {s["stage"]: s for s in prov["stages"]}
    assert stages["stage1"]["skipped"] and stages["stage2"]["resumed_from"] == reached
    assert (record / "artifacts" / "stage1" / "pseudo_labels.npz").stat().st_mtime_ns == stage1_mtime  # reloaded
    (ref_csv,) = (tmp_path / "ref").glob("**/per_case.csv")
    assert (record / "per_case.csv").read_text() == ref_csv.read_text()
    log = (record / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 6 + 40  # no duplicated rows after the resume
