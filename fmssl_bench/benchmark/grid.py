"""Grids: many records (methods x datasets x budgets x seeds) under one protocol, run or resumed.

Every cell is an ordinary run spec; its identity decides what is left to do, so a grid can be
stopped at any time and rerun to fill in what is missing: complete records are skipped, killed
ones resume from their checkpoints. All cells are prepared (every name, flag, file and split
checked) before the first one trains, so a typo in the last cell does not waste the first hours.

Executors:

- ``local``: one cell after the other in this process.
- ``ray``: one Ray task per missing record, on a local Ray cluster (``--workers`` processes) or
  an existing one (``--address``). Each task asks for the record's resources (``--cpus-per-run``
  CPUs, one GPU when the device is CUDA), uses that many torch threads, and writes its record
  into the shared results root, exactly as a local run would; the per-record lock keeps two tasks
  from training the same record.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, FmsslError, RecordBusy
from .records.compute import current_compute, record_compute
from .records.leaderboard import find_summaries, record_dir
from .records.store import dataset_dir
from .runner import Prepared, RunSpec, execute, prepare, resolve_device

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Cell:
    """One grid cell's outcome."""

    spec: RunSpec
    status: str  # "cached" | "done" | "failed"
    record: str
    dice: float | None = None
    seconds: float = 0.0
    error: str | None = None


def grid_specs(methods: Sequence[str], datasets: Sequence[str], budgets: Sequence[str], seeds: Sequence[int],
               **common: Any) -> list[RunSpec]:
    """The cross product, datasets outermost and seeds innermost (a partial grid is useful early)."""
    for name, values in (("--methods", methods), ("--datasets", datasets), ("--budgets", budgets), ("--seeds", seeds)):
        if not values:
            raise ConfigError(f"grid: {name} is empty; expected a comma-separated list")
    return [RunSpec(method=m, dataset=d, labeled=str(b), seed=int(s), **common)
            for d in datasets for b in budgets for m in methods for s in seeds]


def _dice(summary: dict[str, Any]) -> float | None:
    try:
        return float(summary["classes"]["mean"]["dice"]["mean"])
    except (KeyError, TypeError, ValueError):
        return None


def _label(spec: RunSpec) -> str:
    return f"{spec.method} {spec.dataset} labeled={spec.labeled} seed={spec.seed}"


def run_cell(spec: RunSpec, threads: int | None = None) -> dict[str, Any]:
    """Prepare and execute one cell (the unit a Ray task runs); returns the summary."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return execute(prepare(spec))


def report_line(line: str) -> None:
    """Grid progress on stdout, flushed: a grid usually runs for hours into a log file (``nohup ... > log``),
    where block buffering would hold its progress lines back behind the runs' unbuffered stderr."""
    print(line, flush=True)


def run_grid(specs: Sequence[RunSpec], executor: str = "local", address: str | None = None, workers: int | None = None,
             cpus_per_run: int = 1, report: Callable[[str], None] = report_line) -> list[Cell]:
    """Run every missing record of ``specs``; see the module docstring."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if cpus_per_run < 1:
        raise ConfigError(f"--cpus-per-run {cpus_per_run}: expected at least 1")
    prepared: list[Prepared] = [prepare(spec) for spec in specs]  # every cell checked before any trains
    seen: dict[str, RunSpec] = {}
    for prep in prepared:
        other = seen.setdefault(prep.record.key, prep.spec)
        if other is not prep.spec:
            raise ConfigError(f"grid: cells {_label(other)!r} and {_label(prep.spec)!r} are the same record")
    cells = [Cell(p.spec, "cached", str(p.directory), _dice(p.record.summary())) for p in prepared if p.record.complete]
    todo = [p for p in prepared if not p.record.complete]
    report(f"grid: {len(prepared)} records, {len(cells)} complete, {len(todo)} to run ({executor})")
    if executor == "local" and todo:
        for line in compute_warnings(prepared, current_compute(resolve_device(todo[0].spec.device))):  # one --device per grid
            report(line)
    if executor == "local":
        cells += _run_local(todo, report, len(cells), len(prepared))
    else:
        cells += _run_ray(todo, address, workers, cpus_per_run, report, len(cells), len(prepared))
    failed = [c for c in cells if c.status == "failed"]
    report(f"grid: {len(cells) - len(failed)}/{len(cells)} records complete" + (f", {len(failed)} failed" if failed else ""))
    return cells


def compute_warnings(prepared: Sequence[Prepared], here: str) -> list[str]:
    """Where complete records of the grid's data sets and protocols (the grid's own and the rest of the
    results root, e.g. the supervised baselines) were computed on other compute than this process.

    Why: a run is reproducible only on the same compute (on a CPU, the same torch thread count), and
    the leaderboard marks every Δ across computes (:mod:`.records.compute`); better to hear it before
    hours of runs than from a ‡ after them.
    """
    settings = {(p.spec.dataset, dataset_dir(p.record.results_root, p.spec.dataset)) for p in prepared}
    protocols = {p.protocol.name for p in prepared}
    other: dict[str, int] = {}
    for dataset, root in sorted(settings, key=str):
        for summary in find_summaries(Path(root)):
            if summary.get("dataset") != dataset or summary.get("protocol") not in protocols:
                continue
            compute = record_compute(record_dir(summary))
            if compute is not None and compute != here:
                other[compute] = other.get(compute, 0) + 1
    return [f"grid: {n} complete record(s) of these data sets were computed on {compute!r}, this process runs on "
            f"{here!r}: a Δ between them is marked ‡ (runs are reproducible only on the same compute; on a CPU "
            f"match the torch threads, e.g. OMP_NUM_THREADS)" for compute, n in sorted(other.items())]


def _progress(report: Callable[[str], None], done: int, total: int, cell: Cell) -> None:
    dice = "" if cell.dice is None else f" Dice {100 * cell.dice:.2f}%"
    what = cell.error if cell.status == "failed" else f"{cell.seconds:.0f} s{dice}"
    report(f"grid {done}/{total} {cell.status}: {_label(cell.spec)}: {what}")


def _run_local(todo: list[Prepared], report, done: int, total: int) -> list[Cell]:
    """One record after the other; a record another process is computing is left for the end.

    Why: the way to use two cores without Ray is two ``grid`` processes over the same cells. Each
    one skips the records the other holds (instead of idling on their locks) and comes back to
    them once its own work is done, waiting then if they are still running (they are then cache
    hits, or resumed where a killed holder left them).
    """
    cells, busy = [], []
    for prep in todo:
        cell = _run_local_cell(prep, wait=False)
        if cell is None:
            report(f"grid: {_label(prep.spec)} is being computed by another process; back to it at the end")
            busy.append(prep)
            continue
        cells.append(cell)
        done += 1
        _progress(report, done, total, cell)
    for prep in busy:
        cell = _run_local_cell(prep, wait=prep.spec.wait)
        assert cell is not None
        cells.append(cell)
        done += 1
        _progress(report, done, total, cell)
    return cells


def _run_local_cell(prep: Prepared, wait: bool) -> Cell | None:
    """Execute one record; None when another process holds it and ``wait`` is False."""
    start = time.time()
    finished_elsewhere = prep.record.complete and not prep.spec.force  # by another process since the plan
    try:
        summary = execute(dataclasses.replace(prep, spec=dataclasses.replace(prep.spec, wait=wait)))
    except RecordBusy as err:
        if not wait and prep.spec.wait:
            return None
        return Cell(prep.spec, "failed", str(prep.directory), None, time.time() - start, str(err))
    except FmsslError as err:
        return Cell(prep.spec, "failed", str(prep.directory), None, time.time() - start, str(err))
    return Cell(prep.spec, "cached" if finished_elsewhere else "done", str(prep.directory), _dice(summary),
                time.time() - start)


def _run_ray(todo: list[Prepared], address: str | None, workers: int | None, cpus_per_run: int, report,
             done: int, total: int) -> list[Cell]:
    try:
        import ray
    except ImportError:
        raise FmsslError("--executor ray needs the ray package: pip install 'ray>=2.9'") from None
    if not todo:
        return []
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=(workers or 1) * cpus_per_run, **options)
    try:
        remote = ray.remote(_ray_task)
        futures = {}
        for prep in todo:
            gpus = 1 if prep.spec.device.startswith("cuda") else 0
            spec = dataclasses.replace(prep.spec, progress=False)
            futures[remote.options(num_cpus=cpus_per_run, num_gpus=gpus).remote(spec, cpus_per_run)] = prep
        cells = []
        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            prep = futures[ready[0]]
            status, payload, seconds = ray.get(ready[0])
            cell = (Cell(prep.spec, "done", str(prep.directory), _dice(payload), seconds) if status == "done"
                    else Cell(prep.spec, "failed", str(prep.directory), None, seconds, payload))
            cells.append(cell)
            done += 1
            _progress(report, done, total, cell)
        return cells
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(spec: RunSpec, threads: int) -> tuple[str, Any, float]:
    """What one Ray worker runs: a whole record; errors come back as text, not as a lost grid."""
    start = time.time()
    try:
        return "done", run_cell(spec, threads), time.time() - start
    except FmsslError as err:
        return "failed", str(err), time.time() - start


def parse_list(text: str | None, what: str) -> list[str]:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise ConfigError(f"grid: {what} is empty; expected a comma-separated list")
    return items


def parse_seeds(text: str | None) -> list[int]:
    seeds = []
    for item in parse_list(text, "--seeds"):
        if not item.isdigit():
            raise ConfigError(f"--seeds {text!r}: {item!r} is not a non-negative integer")
        seeds.append(int(item))
    return seeds
