"""Benchmark: fmssl-bench metrics against medpy on the LA test volumes.

Predictions are deterministic perturbations of each reference label (the metrics' cost depends on
how far the surfaces are apart, so the set spans near and far): dilation by 2, erosion by 2, a
shift by (3, -2, 1) voxels, and dilation by 1 plus a shift by (-2, 2, 0). Each pair is scored by
medpy (``dc``, ``jc``, ``sensitivity``; ``hd95`` + ``asd``) and by :func:`evaluate_case` in the same
process, interleaved, so load on the machine hits both alike. Distances are in voxels (no spacing),
the papers' setting.

Gate: medpy ``hd95`` + ``asd`` time / full :func:`evaluate_case` time (all five metrics, label
detection included) >= ``TARGET_SPEEDUP``, median over repeats, and every metric within
``MAX_DELTA`` of medpy.

    fmssl-bench bench metrics --data-root /data/LA [--repeats 3] [--cases N]
    python -m fmssl_bench.benchmark.evaluation.bench_metrics --data-root /data/LA
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from ...paths import data_root
from .metrics import METRICS, MetricConfig, confusion_counts, distance_metrics, evaluate_case, overlap_metrics

TARGET_SPEEDUP = 10.0
MAX_DELTA = 1e-6
CASE_DIR = "2018LA_Seg_Training Set"
CASE_FILE = "mri_norm2.h5"
#: Timed metric groups; the gate divides medpy's "distance" time by fmssl's "all" (evaluate_case).
GROUPS = ("overlap", "distance", "all")
GROUP_TITLES = {
    "overlap": "dice + jaccard + sensitivity",
    "distance": "hd95 + asd",
    "all": "all five (fmssl: evaluate_case)",
}


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="LA folder in the UA-MT layout (holds test.list); default: $FMSSL_DATA/LA",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; medians are reported (default 3)")
    parser.add_argument("--cases", type=int, default=None, help="use the first N ids of test.list (default: all)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 = PASS, 1 = FAIL, 2 = input error (message on stderr)."""
    root = args.data_root if args.data_root is not None else _default_root()
    test_list = None if root is None else Path(root) / "test.list"
    if test_list is None or not test_list.is_file():
        where = test_list if test_list is not None else "--data-root (or $FMSSL_DATA/LA)"
        message = f"error: {where}: LA test.list not found; pass --data-root <LA folder in the UA-MT layout>"
        print(message, file=sys.stderr)
        return 2
    if args.repeats < 1 or (args.cases is not None and args.cases < 1):
        print("error: --repeats and --cases must be >= 1", file=sys.stderr)
        return 2
    ids = read_ids(test_list)[: args.cases]
    try:
        refs = {case_id: load_label(Path(root), case_id) for case_id in ids}
    except (OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pairs = [(f"{cid}/{name}", pred, ref) for cid, ref in refs.items() for name, pred in perturbations(ref).items()]
    report = measure(pairs, args.repeats)
    print(format_report(report, n_cases=len(refs)))
    return 0 if report.passed else 1


def _default_root() -> Path | None:
    base = data_root()
    return None if base is None else base / "LA"


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m fmssl_bench.benchmark.evaluation.bench_metrics"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


# ----------------------------------------------------------------------------- data


def read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_label(root: Path, case_id: str) -> np.ndarray:
    path = root / CASE_DIR / case_id / CASE_FILE
    if not path.is_file():
        raise OSError(f"{path}: file not found (case {case_id!r} of test.list)")
    with h5py.File(path, "r") as handle:
        return np.asarray(handle["label"][...], dtype=np.uint8)


def perturbations(ref: np.ndarray) -> dict[str, np.ndarray]:
    """Four deterministic predictions from one reference, from near (dilate) to far (shift)."""
    mask = ref.astype(bool)
    variants = {
        "dilate2": ndimage.binary_dilation(mask, iterations=2),
        "erode2": ndimage.binary_erosion(mask, iterations=2),
        "shift(3,-2,1)": shift(mask, (3, -2, 1)),
        "dilate1+shift(-2,2,0)": shift(ndimage.binary_dilation(mask), (-2, 2, 0)),
    }
    return {name: pred.astype(np.uint8) for name, pred in variants.items()}


def shift(mask: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """Translate by ``offset`` voxels, filling with background (no wrap-around)."""
    out = np.zeros_like(mask)
    src = tuple(slice(max(-k, 0), n - max(k, 0)) for n, k in zip(mask.shape, offset))
    dst = tuple(slice(max(k, 0), n - max(-k, 0)) for n, k in zip(mask.shape, offset))
    out[dst] = mask[src]
    return out


# ----------------------------------------------------------------------------- timing


@dataclass
class Report:
    n_pairs: int
    repeats: int
    medpy: dict[str, list[float]] = field(default_factory=lambda: {g: [] for g in GROUPS})  # s/pair per repeat
    fmssl: dict[str, list[float]] = field(default_factory=lambda: {g: [] for g in GROUPS})
    max_delta: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))

    def ratio(self, medpy_group: str, fmssl_group: str) -> float:
        """Median over repeats of the per-repeat time ratio medpy / fmssl."""
        return statistics.median(m / f for m, f in zip(self.medpy[medpy_group], self.fmssl[fmssl_group]))

    @property
    def gate_speedup(self) -> float:
        return self.ratio("distance", "all")

    @property
    def passed(self) -> bool:
        return self.gate_speedup >= TARGET_SPEEDUP and max(self.max_delta.values()) <= MAX_DELTA


def measure(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], repeats: int) -> Report:
    """Time both implementations on every (name, pred, ref) pair, ``repeats`` times."""
    report = Report(n_pairs=len(pairs), repeats=repeats)
    for _ in range(repeats):
        totals_m, totals_f = dict.fromkeys(GROUPS, 0.0), dict.fromkeys(GROUPS, 0.0)
        for _name, pred, ref in pairs:
            medpy_values, medpy_times = _medpy(pred, ref)
            fmssl_values, fmssl_times = _fmssl(pred, ref)
            _accumulate(totals_m, medpy_times)
            _accumulate(totals_f, fmssl_times)
            for metric in METRICS:
                delta = abs(fmssl_values[metric] - medpy_values[metric])
                report.max_delta[metric] = max(report.max_delta[metric], delta)
        for group in GROUPS:
            report.medpy[group].append(totals_m[group] / len(pairs))
            report.fmssl[group].append(totals_f[group] / len(pairs))
    return report


def _accumulate(totals: dict[str, float], times: dict[str, float]) -> None:
    for group, seconds in times.items():
        totals[group] += seconds


def _timed(fn: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    values = fn()
    return values, time.perf_counter() - start


def _medpy(pred: np.ndarray, ref: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """The papers' calls: medpy on the label maps, distances in voxels."""
    overlap, t_overlap = _timed(
        lambda: {
            "dice": medpy_binary.dc(pred, ref),
            "jaccard": medpy_binary.jc(pred, ref),
            "sensitivity": medpy_binary.sensitivity(pred, ref),
        }
    )
    distance, t_distance = _timed(lambda: {"hd95": medpy_binary.hd95(pred, ref), "asd": medpy_binary.asd(pred, ref)})
    return {**overlap, **distance}, {"overlap": t_overlap, "distance": t_distance, "all": t_overlap + t_distance}


def _fmssl(pred: np.ndarray, ref: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """Full evaluate_case (the gate), plus its overlap and distance parts timed alone on the masks."""
    config = MetricConfig()
    values, t_all = _timed(lambda: evaluate_case(pred, ref, config=config)[1])
    pmask, rmask = pred == 1, ref == 1
    sizes = (int(np.count_nonzero(pmask)), int(np.count_nonzero(rmask)))
    _, t_overlap = _timed(lambda: overlap_metrics(*confusion_counts(pmask, rmask)))
    _, t_distance = _timed(lambda: distance_metrics(pmask, rmask, *sizes, None, config))
    return values, {"overlap": t_overlap, "distance": t_distance, "all": t_all}


# ----------------------------------------------------------------------------- report


def format_report(report: Report, n_cases: int) -> str:
    per = report.n_pairs // max(n_cases, 1)
    lines = [
        f"metrics benchmark: {n_cases} LA test cases x {per} perturbations = {report.n_pairs} pairs, "
        f"{report.repeats} repeats, distances in voxels, {os.cpu_count()} CPUs",
        f"{'group':<40}{'medpy s/pair':>14}{'fmssl s/pair':>14}{'medpy/fmssl':>13}",
    ]
    for group in GROUPS:
        lines.append(
            f"{GROUP_TITLES[group]:<40}{statistics.median(report.medpy[group]):>14.4f}"
            f"{statistics.median(report.fmssl[group]):>14.4f}{report.ratio(group, group):>12.1f}x"
        )
    lines.append(
        f"{'gate: medpy hd95+asd / evaluate_case':<40}{statistics.median(report.medpy['distance']):>14.4f}"
        f"{statistics.median(report.fmssl['all']):>14.4f}{report.gate_speedup:>12.1f}x"
    )
    lines.append("max |delta| vs medpy: " + ", ".join(f"{m} {report.max_delta[m]:.1e}" for m in METRICS))
    speed_ok = report.gate_speedup >= TARGET_SPEEDUP
    delta_ok = max(report.max_delta.values()) <= MAX_DELTA
    lines.append(
        f"{'PASS' if report.passed else 'FAIL'}: speed-up {report.gate_speedup:.1f}x "
        f"({'>=' if speed_ok else '<'} {TARGET_SPEEDUP:g}x), max |delta| {max(report.max_delta.values()):.1e} "
        f"({'<=' if delta_ok else '>'} {MAX_DELTA:g})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
