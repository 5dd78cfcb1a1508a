"""Copy the small files of complete records into a folder that is committed (``leaderboards/measured``).

A measured leaderboard in the repository is rebuilt from records, never typed: this keeps of each
complete record exactly what the leaderboard, the statistics and ``regress`` read, and what a
reader needs to trust a number (config with the identity, split, summary, per-case metrics,
provenance, training log, pseudo-label quality, pictures) — never checkpoints, predictions,
artifacts or embedding caches. The folder layout is the results root's, so the copy is itself a
results root (``fmssl-bench leaderboard --runs leaderboards/measured``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ...errors import FmsslError
from .store import summary_paths

SMALL_FILES = ("config.json", "split.json", "summary.json", "per_case.csv", "provenance.json", "train_log.csv",
               "pseudo_label_quality.csv", "round_evaluation.csv", "progress.png", "overlays.png")
#: the largest file copied; anything bigger is a sign something else landed in a record
MAX_BYTES = 2 * 1024 * 1024


def export_records(runs: Path, target: Path, dataset: str | None = None) -> list[Path]:
    """Copy the small files of every complete record under ``runs`` (summary last); returns the folders."""
    runs, target = Path(runs), Path(target)
    if not runs.is_dir():
        raise FmsslError(f"--runs {runs}: no such folder")
    copied = []
    for summary in summary_paths(runs):
        record = summary.parent
        relative = record.relative_to(runs)
        if dataset and relative.parts[0] != dataset:
            continue
        destination = target / relative
        destination.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:  # summary.json is in the middle of the list: copy it last below
            source = record / name
            if name == "summary.json" or not source.is_file():
                continue
            if source.stat().st_size > MAX_BYTES:
                raise FmsslError(f"{source}: {source.stat().st_size} bytes; refusing to export a file over {MAX_BYTES}")
            shutil.copy2(source, destination / name)
        shutil.copy2(summary, destination / "summary.json")
        copied.append(destination)
    return copied
