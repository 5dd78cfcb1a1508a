"""Paired statistics between leaderboard rows: is a method's Dice different from the baseline's?

Seeds vary the labeled cases and the initialisation, but the test cases are the same for every
row of a data set, so the honest comparison of two rows is *paired by test case*:

- per-case Dice of a row: from each record's ``per_case.csv``, the mean over the foreground
  classes of the case (NaN classes excluded), then the mean over the row's seeds
  (:func:`case_dice`);
- the pairs: test cases present in both rows with a finite value in both (NaN excluded pairwise);
- the difference: ``a - b`` in percentage points (Dice %, as the leaderboard prints it);
- p: two-sided Wilcoxon signed-rank test over the paired differences (``scipy.stats.wilcoxon``,
  zero differences dropped as in Wilcoxon's convention, exact for small samples without ties);
- 95 % CI of the mean difference: ``scipy.stats.bootstrap`` of the mean over the paired
  differences (resampling cases, which is the paired bootstrap), 10 000 resamples, BCa,
  seeded (seed 0) so a leaderboard is reproducible; percentile where BCa is undefined.

Fewer than :data:`MIN_PAIRS` pairs, or only zero differences, give no statistic and a reason.
Each method row is compared with the ``supervised`` row of the same data set, protocol, labeled
count and setting (:func:`baseline_keys`); any two rows with :func:`compare_rows`.
"""

from __future__ import annotations

import csv
import inspect
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from .compute import computes_differ
from .identity import digest

#: below this many paired cases neither the test nor the interval means much
MIN_PAIRS = 6
RESAMPLES = 10_000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
ALPHA = 0.05
BASELINE_METHOD = "supervised"
#: identity parts that belong to the method, not to the setting a baseline must share (``components``:
#: the arguments of a method run inside it, e.g. SFR's base)
METHOD_PARTS = ("method", "method_args", "generalists", "components")
METHOD_TEXT = (f"paired over test cases (per-case Dice averaged over seeds and foreground classes); "
               f"p: two-sided Wilcoxon signed-rank; [95% CI]: bootstrap of the mean difference, BCa, "
               f"{RESAMPLES} resamples, seed {BOOTSTRAP_SEED}; * p < {ALPHA:g}; n/a below {MIN_PAIRS} paired cases")


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of two rows; ``reason`` (and NaN numbers) when there is none."""

    n: int
    mean_diff: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    ci_method: str = ""
    reason: str = ""

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p) and self.p < ALPHA

    def text(self) -> str:
        """Cell text: ``+2.31 [+0.84, +3.90] p=0.012 *`` or ``n/a: <reason>``."""
        if self.reason:
            return f"n/a: {self.reason}"
        star = " *" if self.significant else ""
        return f"{self.mean_diff:+.2f} [{self.ci_low:+.2f}, {self.ci_high:+.2f}] p={_p_text(self.p)}{star}"

    def columns(self) -> dict[str, Any]:
        """The flat fields a table row (and the CSV) carries."""
        return {"delta_dice": self.mean_diff, "delta_ci_low": self.ci_low, "delta_ci_high": self.ci_high,
                "p_wilcoxon": self.p, "n_paired": self.n, "stat_note": self.reason or self.ci_method}


def _p_text(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# --------------------------------------------------------------------------- per-case values


def record_case_dice(record_dir: Path | None) -> dict[str, float]:
    """case id -> Dice of one record (mean over the case's foreground classes, NaN excluded).

    ``per_case.csv`` holds foreground classes only (the scorer skips the background). A record
    without the file (moved without it, or an old one) gives no values.
    """
    if record_dir is None:
        return {}
    path = Path(record_dir) / "per_case.csv"
    if not path.is_file():
        return {}
    values: dict[str, list[float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("metric") == "dice":
                values.setdefault(row["case"], []).append(float(row["value"]))
    return {case: _finite_mean(v) for case, v in values.items()}


def case_dice(record_dirs: Iterable[Path | None]) -> dict[str, float]:
    """case id -> Dice of a row: :func:`record_case_dice` averaged over its seeds (NaN excluded)."""
    values: dict[str, list[float]] = {}
    for directory in record_dirs:
        for case, value in record_case_dice(directory).items():
            values.setdefault(case, []).append(value)
    return {case: _finite_mean(v) for case, v in values.items()}


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


# --------------------------------------------------------------------------- the test


def _bootstrap_kwargs() -> dict[str, Any]:
    """The seed keyword of this SciPy (``rng`` from 1.15; ``random_state`` before)."""
    name = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(BOOTSTRAP_SEED)}


def _mean_ci(diff: np.ndarray) -> tuple[float, float, str]:
    """Bootstrap CI of the mean of ``diff`` (BCa; percentile where BCa is undefined)."""
    if np.ptp(diff) == 0:  # every case moved by the same amount: no spread to resample
        return float(diff[0]), float(diff[0]), "constant difference"
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the fallback
            res = stats.bootstrap((diff,), np.mean, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                                  method=method, vectorized=True, **_bootstrap_kwargs())
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, method
    return math.nan, math.nan, "bootstrap undefined"


def paired_test(a: Mapping[str, float], b: Mapping[str, float]) -> PairedTest:
    """Wilcoxon p and bootstrap CI of ``a - b`` (Dice fractions in, percentage points out)."""
    cases = sorted(c for c in set(a) & set(b) if not (math.isnan(a[c]) or math.isnan(b[c])))
    n = len(cases)
    if n < MIN_PAIRS:
        return PairedTest(n, reason=f"{n} paired case{'s' * (n != 1)} (< {MIN_PAIRS})")
    diff = 100.0 * (np.array([a[c] for c in cases]) - np.array([b[c] for c in cases]))
    if not np.any(diff):
        return PairedTest(n, mean_diff=0.0, reason="all paired differences are zero")
    p = float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    low, high, method = _mean_ci(diff)
    return PairedTest(n, float(diff.mean()), low, high, p, method)


def compare_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> PairedTest:
    """Row ``a`` against row ``b`` of :func:`.leaderboard.aggregate` (any two rows, on request)."""
    return paired_test(a.get("_case_dice") or {}, b.get("_case_dice") or {})


def _setting_of(row: Mapping[str, Any]) -> str:
    """The key a row is paired under: its setting, or (old records, outside predictions) the coarse key."""
    setting, coarse = row["_baseline_keys"]
    return setting or coarse


def compare_methods(table: list[dict[str, Any]], method_a: str, method_b: str) -> list[tuple[dict[str, Any], dict[str, Any], PairedTest]]:
    """Every pair of rows (``method_a``, ``method_b``) of one setting (:func:`baseline_keys`: same data
    set, protocol, budget, test set and shared protocol fields), each with its paired test."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for row in table:
        if row["method"] == method_b and not row.get("oracle"):
            by_setting.setdefault(_setting_of(row), []).append(row)
    pairs = []
    for row in table:
        if row["method"] != method_a or row.get("oracle"):
            continue
        for other in by_setting.get(_setting_of(row), []):
            pairs.append((row, other, compare_rows(row, other)))
    return pairs


# --------------------------------------------------------------------------- baselines


def baseline_keys(summary: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(setting, coarse)``: what a row and its supervised baseline share.

    ``setting`` (records with an identity): the row identity without its method parts (method,
    arguments, generalists, components) and without the protocol's ``stages:`` sections (the extra
    stages a method trains, such as SFR's fine-tuning, are part of the method: the baseline trains
    none), i.e. every other protocol field, override, data-set option, the budget and the test
    set, plus the protocol name. ``coarse``: (data set, protocol, labeled) only, the
    key of old records and outside predictions, whose identities say nothing about training.
    """
    coarse = [summary["dataset"], str(summary.get("protocol", "")), str(summary["labeled"])]
    identity = summary.get("row_identity")
    if isinstance(identity, Mapping) and "protocol" in identity:
        setting = {k: v for k, v in identity.items() if k not in METHOD_PARTS}
        setting["protocol"] = {k: v for k, v in setting["protocol"].items() if k != "stages"}
        return digest([*coarse, setting]), digest(coarse)
    return None, digest(coarse)


def attach_baseline_tests(table: list[dict[str, Any]]) -> None:
    """Compare every row with its supervised baseline, in place.

    The baseline is the supervised row of the same setting; a row without a setting (old
    record, outside predictions) takes the supervised row of its (data set, protocol, labeled),
    preferring one without args text (the protocol as written). Sets ``vs_supervised`` (cell
    text; ``baseline`` on the baseline itself), the flat :meth:`PairedTest.columns`,
    ``_has_baseline`` (compared with another row) and ``compute_differs``: the two rows (or either
    row's seeds) ran on different compute (:mod:`.compute`), marked ``‡`` in the cell text.
    """
    baselines: dict[str, dict[str, Any]] = {}
    for row in table:
        if row["method"] == BASELINE_METHOD and not row.get("oracle"):
            for key in filter(None, row["_baseline_keys"]):
                if key not in baselines or (row["args"] == "" and baselines[key]["args"] != ""):
                    baselines[key] = row
    for row in table:
        base = baselines.get(_setting_of(row))
        if base is row:
            test, text = PairedTest(0, reason="baseline"), "baseline"
        else:
            test = (compare_rows(row, base) if base is not None
                    else PairedTest(0, reason=f"no {BASELINE_METHOD} row of this protocol and budget"))
            text = test.text()
        differ = base is not None and base is not row and rows_compute_differ(row, base)
        row.update(test.columns(), vs_supervised=text + (" ‡" if differ else ""), compute_differs=differ,
                   _has_baseline=base is not None and base is not row)


def rows_compute_differ(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether comparing leaderboard rows ``a`` and ``b`` mixes computes (:func:`.compute.computes_differ`)."""
    return computes_differ(a.get("_compute") or frozenset(), b.get("_compute") or frozenset())
