"""Concurrent runs on one results root: one record is computed by one process at a time.

Two real processes ask for the same record; the first holds its first iteration until the test
opens a gate (``tests/gated_method.py``), so the second arrives while the record is being computed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ITERATIONS = 3


def _command(out: Path, proto: str, *extra: str) -> list[str]:
    return [sys.executable, str(HERE / "gated_method.py"), "--method", "test_gated", "--dataset", "synthetic-2d",
            "--labeled", "4", "--protocol", proto, "--out", str(out), "--no-progress", *extra]


def _start(command: list[str], gate: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FMSSL_TEST_GATE": str(gate)}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _owner_files(out: Path) -> list[Path]:
    return list(out.glob(".locks/synthetic-2d__test_gated__*.owner.json"))


@pytest.fixture
def proto(make_protocol):
    return make_protocol("synthetic-2d", train={"iterations": ITERATIONS, "checkpoint_every": 1}, eval_workers=1)


@pytest.mark.slow
def test_two_processes_on_one_record_train_it_once(tmp_path, proto):
    out, gate = tmp_path / "runs", tmp_path / "gate"
    first = _start(_command(out, proto), gate, tmp_path / "first.log")
    _wait_for(lambda: _owner_files(out), "the first process to hold the record's lock", first)
    owner = json.loads(_owner_files(out)[0].read_text())
    assert owner["pid"] == first.pid

    refused = subprocess.run(_command(out, proto, "--no-wait"), capture_output=True, text=True,
                             env={**os.environ, "FMSSL_TEST_GATE": str(gate)}, timeout=240)
    assert refused.returncode == 2
    said = [line for line in refused.stderr.strip().splitlines() if not line.startswith("loading ")]  # data progress
    assert len(said) == 1 and said[0].startswith("fmssl-bench: error: "), refused.stderr
    assert f"being computed by pid {first.pid} on host {owner['host']}" in refused.stderr

    second_log = tmp_path / "second.log"
    second = _start(_command(out, proto), gate, second_log)
    _wait_for(lambda: "waiting for" in second_log.read_text(), "the second process to wait", second)
    assert f"(held by pid {first.pid} on host {owner['host']} since {owner['since']})" in second_log.read_text()
    gate.touch()  # the first may finish now
    assert first.wait(timeout=240) == 0, (tmp_path / "first.log").read_text()
    assert second.wait(timeout=240) == 0, second_log.read_text()

    first_text, second_text = (tmp_path / "first.log").read_text(), second_log.read_text()
    assert "waiting for" not in first_text and "cached" not in first_text
    assert "resuming" not in second_text  # it never announced a resume of a record another process computes
    assert "was completed by another process meanwhile" in second_text
    (record,) = [p.parent for p in out.glob("synthetic-2d/test_gated/*/*/*/summary.json")]
    rows = (record / "train_log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == [str(i) for i in range(1, ITERATIONS + 1)]  # trained once
    assert json.loads((record / "provenance.json").read_text())["computed_by"]["pid"] == first.pid
    assert not _owner_files(out)  # released


@pytest.mark.slow
def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path, proto):
    out, gate = tmp_path / "runs", tmp_path / "gate"
    killed = _start(_command(out, proto), gate, tmp_path / "killed.log")
    _wait_for(lambda: _owner_files(out) and list(out.glob("synthetic-2d/test_gated/*/*/*/config.json")),
              "the first process to hold the lock and begin the record", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert _owner_files(out)  # the dead holder's name is still there

    gate.touch()
    log = tmp_path / "next.log"
    nxt = _start(_command(out, proto), gate, log)
    assert nxt.wait(timeout=240) == 0, log.read_text()
    text = log.read_text()
    assert "taking over the stale lock" in text and f"pid {killed.pid}" in text and "no longer running" in text
    lines = [line for line in text.splitlines() if not line.startswith("loading ")]
    assert lines[0].startswith("resuming an interrupted run")  # the first line, as after any kill
    assert lines[1].startswith("taking over the stale lock")
    (record,) = [p.parent for p in out.glob("synthetic-2d/test_gated/*/*/*/summary.json")]
    assert json.loads((record / "provenance.json").read_text())["computed_by"]["pid"] == nxt.pid
    assert not _owner_files(out)
