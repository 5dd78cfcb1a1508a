"""``fmssl-bench regress``: do today's records still reach the committed (or the papers') numbers?

Against ``measured`` (default): the golden values are the committed measured leaderboard
(``leaderboards/measured/``, a results root of small record files). A candidate row (the records
under ``--runs`` that share one identity but for the seed) is matched to the golden row with the
same row key. It regresses when its mean Dice over seeds is below the golden mean by more than the
tolerance: ``max(k * s, floor)`` where ``s`` is the golden row's standard deviation over seeds
(ddof 1; for a single golden seed the floor alone), ``k`` = 3 and ``floor`` = 1 Dice point by
default (``--k``, ``--floor``), or a fixed ``--tolerance`` in Dice points. Only seeds present on
both sides are compared, so a one-seed CI cell is held against the same seed's golden value.

Against ``paper``: every candidate row that the comparability rules allow beside a paper number
(see :mod:`.comparability`) regresses when its Dice is more than the tolerance (default 2 points)
below the paper's. Rows with no golden or comparable paper value are listed as ``no reference``
and never fail the check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tabulate import tabulate

from ...errors import FmsslError
from .comparability import compare
from .leaderboard import find_summaries, paper_numbers

DEFAULT_K = 3.0
DEFAULT_FLOOR = 1.0
DEFAULT_PAPER_TOLERANCE = 2.0


@dataclass(frozen=True)
class Check:
    row: str
    seeds: list[int]
    measured: float
    reference: float | None
    tolerance: float | None
    source: str

    @property
    def delta(self) -> float | None:
        return None if self.reference is None else self.measured - self.reference

    @property
    def status(self) -> str:
        if self.reference is None:
            return "no reference"
        return "REGRESSED" if self.delta < -self.tolerance else "ok"


def _dice(summary: dict[str, Any]) -> float:
    try:
        return 100.0 * float(summary["classes"]["mean"]["dice"]["mean"])
    except (KeyError, TypeError, ValueError):
        return math.nan


def _rows(summaries: Iterable[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """row key -> seed -> summary (old-format records without a row key are left out)."""
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for s in summaries:
        if "row_key" in s:
            rows.setdefault(s["row_key"], {})[int(s["seed"])] = s
    return rows


def _name(summary: dict[str, Any]) -> str:
    return f"{summary['dataset']}/{summary.get('protocol', '?')}/{summary['method']}/labeled {summary['labeled']}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def against_measured(candidates: list[dict[str, Any]], golden: list[dict[str, Any]], k: float = DEFAULT_K,
                     floor: float = DEFAULT_FLOOR, tolerance: float | None = None) -> list[Check]:
    gold = _rows(golden)
    checks = []
    for key, by_seed in sorted(_rows(candidates).items()):
        first = next(iter(by_seed.values()))
        ref = gold.get(key, {})
        seeds = sorted(set(by_seed) & set(ref))
        measured = _mean([_dice(by_seed[s]) for s in sorted(by_seed)])
        if not seeds:
            checks.append(Check(_name(first), sorted(by_seed), measured, None, None, "no golden row"))
            continue
        spread = _std([_dice(s) for s in ref.values()])
        tol = tolerance if tolerance is not None else max(k * spread, floor)
        source = (f"golden {len(ref)} seed(s), tolerance {tol:.2f}" +
                  ("" if tolerance is not None else f" = max({k:g} x std {spread:.2f}, {floor:g})"))
        checks.append(Check(_name(first), seeds, _mean([_dice(by_seed[s]) for s in seeds]),
                            _mean([_dice(ref[s]) for s in seeds]), tol, source))
    return checks


def against_paper(candidates: list[dict[str, Any]], tolerance: float | None = None) -> list[Check]:
    tol = DEFAULT_PAPER_TOLERANCE if tolerance is None else tolerance
    papers = paper_numbers()
    checks = []
    for key, by_seed in sorted(_rows(candidates).items()):
        first = next(iter(by_seed.values()))
        measured = _mean([_dice(s) for s in by_seed.values()])
        fair = [c for c in compare(first, papers) if c.comparable]
        if not fair:
            checks.append(Check(_name(first), sorted(by_seed), measured, None, None, "no comparable paper row"))
        for c in fair:
            checks.append(Check(_name(first), sorted(by_seed), measured, float(c.value), tol, f"paper {c.paper} {c.table}"))
    return checks


def render(checks: list[Check]) -> str:
    rows = [[c.row, ",".join(map(str, c.seeds)), f"{c.measured:.2f}",
             "" if c.reference is None else f"{c.reference:.2f}",
             "" if c.delta is None else f"{c.delta:+.2f}", c.status, c.source] for c in checks]
    return tabulate(rows, headers=["row", "seeds", "Dice %", "reference %", "Δ", "status", "reference / tolerance"],
                    tablefmt="github")


def run_regress(runs: Path, against: str = "measured", golden: Path | None = None, k: float = DEFAULT_K,
                floor: float = DEFAULT_FLOOR, tolerance: float | None = None) -> tuple[list[Check], str]:
    if not Path(runs).is_dir():
        raise FmsslError(f"--runs {runs}: no such folder; run something first")
    candidates = find_summaries(Path(runs))
    if not candidates:
        raise FmsslError(f"--runs {runs}: no complete records (summary.json) found")
    if against == "measured":
        if golden is None or not Path(golden).is_dir():
            raise FmsslError(f"--golden {golden}: no such folder; expected the committed leaderboards/measured/")
        checks = against_measured(candidates, find_summaries(Path(golden)), k, floor, tolerance)
    elif against == "paper":
        checks = against_paper(candidates, tolerance)
    else:
        raise FmsslError(f"--against {against!r}: expected measured or paper")
    return checks, render(checks)
