"""`fmssl-bench grid`: the missing records of a cross product, locally and on a local Ray cluster."""

from __future__ import annotations

import json

import pytest

from fmssl_bench.benchmark.cli import main


def _grid(make_protocol, out, *extra, methods="supervised,mean_teacher"):
    proto = make_protocol("synthetic-2d", train={"iterations": 2, "checkpoint_every": 2})
    return ["grid", "--methods", methods, "--datasets", "synthetic-2d", "--budgets", "4",
            "--seeds", "0,1", "--protocol", proto, "--out", str(out), *extra]


def test_local_grid_runs_missing_records_then_skips_them(tmp_path, make_protocol, capsys):
    out = tmp_path / "runs"
    args = _grid(make_protocol, out)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 records, 0 complete, 4 to run" in printed and "grid 4/4 done" in printed
    summaries = sorted(out.glob("synthetic-2d/*/labeled-4/seed*/*/summary.json"))
    assert len(summaries) == 4
    stamps = [p.stat().st_mtime_ns for p in summaries]
    assert main(args) == 0
    assert "4 records, 4 complete, 0 to run" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in summaries] == stamps


def test_a_bad_cell_fails_the_grid_before_anything_trains(tmp_path, make_protocol, capsys):
    out = tmp_path / "runs"
    args = _grid(make_protocol, out)
    args[args.index("supervised,mean_teacher")] = "supervised,no_such_method"
    assert main(args) == 2
    assert "no_such_method" in capsys.readouterr().err
    assert not list(out.glob("synthetic-2d/*"))


@pytest.mark.slow
def test_ray_grid_with_two_workers_writes_the_same_records(tmp_path, make_protocol, capsys):
    pytest.importorskip("ray")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert main(_grid(make_protocol, local, methods="supervised")) == 0
    assert main(_grid(make_protocol, distributed, "--executor", "ray", "--workers", "2", methods="supervised")) == 0
    assert "grid 2/2 done" in capsys.readouterr().out
    names = lambda root: sorted(p.parent.relative_to(root) for p in root.glob("**/summary.json"))  # noqa: E731
    assert names(local) == names(distributed) and len(names(local)) == 2  # same identities
    for path in distributed.glob("**/provenance.json"):
        assert json.loads(path.read_text())["torch_threads"] == 1  # --cpus-per-run 1


HOLDER = """
import pathlib, sys, time
from filelock import FileLock
lock_path, ready, root = map(pathlib.Path, sys.argv[1:4])
lock_path.parent.mkdir(parents=True, exist_ok=True)
lock = FileLock(str(lock_path))
lock.acquire()
ready.write_text("held")
deadline = time.time() + 120
while not list(root.glob("synthetic-2d/supervised/labeled-4/seed1/*/summary.json")) and time.time() < deadline:
    time.sleep(0.05)
lock.release()
"""


def test_local_grid_leaves_a_record_another_process_holds_for_the_end(tmp_path, make_protocol, capsys):
    """Two grid processes on one list share the work: a held record is skipped, then revisited."""
    import subprocess
    import sys
    import time

    from fmssl_bench.benchmark.runner import RunSpec, prepare

    out, ready = tmp_path / "runs", tmp_path / "ready"
    args = _grid(make_protocol, out, methods="supervised")
    proto = args[args.index("--protocol") + 1]
    held = prepare(RunSpec(method="supervised", dataset="synthetic-2d", labeled="4", seed=0, protocol=proto,
                           out=str(out))).record
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(held.lock_path), str(ready), str(out)])
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the holder process did not take the lock"
        assert main(args) == 0
    finally:
        holder.wait(timeout=120)
    printed = capsys.readouterr().out
    skipped = printed.index("supervised synthetic-2d labeled=4 seed=0 is being computed by another process")
    seed1 = printed.index("done: supervised synthetic-2d labeled=4 seed=1")
    seed0 = printed.index("done: supervised synthetic-2d labeled=4 seed=0")
    assert skipped < seed1 < seed0  # the free record first, the held one once released
    assert "2/2 records complete" in printed and held.complete


def test_grid_warns_before_running_beside_records_of_other_compute(tmp_path, make_protocol, capsys):
    """Records computed with another torch thread count are not reproducible here: the grid says so up
    front (their Δ would be marked ‡ in the leaderboard)."""
    import torch

    out = tmp_path / "runs"
    args = _grid(make_protocol, out, methods="supervised")
    args[args.index("0,1")] = "0"
    assert main(args) == 0
    assert "computed on" not in capsys.readouterr().out  # one compute: nothing to say
    (provenance,) = out.glob("synthetic-2d/supervised/labeled-4/seed0/*/provenance.json")
    data = json.loads(provenance.read_text())
    data.update(device="cpu (2 cores)", torch_threads=torch.get_num_threads() + 6)  # another count, on any machine
    provenance.write_text(json.dumps(data))
    args[args.index("0")] = "0,1"
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (f"grid: 1 complete record(s) of these data sets were computed on 'cpu, {data['torch_threads']} threads'"
            in printed) and "marked ‡" in printed


def test_progress_lines_in_logs_state_the_rate_and_the_time_left(capsys, monkeypatch):
    """A record in a nohup log trains for hours: its lines say how fast and how long still (not in the
    first seconds, where that is noise)."""
    from fmssl_bench.benchmark import views

    clock = iter([0.0, 20.0, 40.0, 100.0, 101.0])
    monkeypatch.setattr(views._LineProgress, "clock", staticmethod(lambda: next(clock)))
    bar = views._LineProgress(total=4, desc="m:train", every=2)
    bar.set_postfix(loss="0.5")
    bar.update(2)
    bar.update(2)
    quick = views._LineProgress(total=2, desc="loading test", unit="case")
    quick.update(1)
    assert capsys.readouterr().err.splitlines() == ["m:train 2/4 loss=0.5 (10.0 s per it, ~20 s left)",
                                                    "m:train 4/4 loss=0.5 (10.0 s per it)", "loading test 1/2"]
    assert views.progress_line("round 1", 5, 22, started=views.time.time() - 200.0).startswith(
        "round 1: 5/22 cases, 40.0 s per case, ~11 min left")
