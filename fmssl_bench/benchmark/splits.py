"""Train/test splits and label budgets.

- The train/test split is the data set's official one (LA ``train.list``/``test.list``) or, when
  there is none, a seeded split written once to ``<results>/splits/<dataset>.json`` and reused
  (nnU-Net's ``splits_final.json`` idea) so every run of every method sees the same test set.
  :func:`resolve_split` writes nothing: the file is written by :meth:`ResolvedSplit.persist`, which
  the runner (and the oracle and ``evaluate``) call when the record begins, after every check.
- A label budget picks the labeled cases from the train split: LA follows the papers (the first
  N ids of ``train.list``); other data sets take a seeded permutation prefix, so for one seed the
  budgets are nested (5 ⊂ 10 ⊂ 20). Only cases with a label on disk can be labeled or tested.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets.base import DatasetAdapter, Split
from ..errors import ConfigError, DataError
from .records.store import atomic_write_text

SPLIT_SEED = 0


@dataclass(frozen=True)
class Budget:
    """A label budget as asked for: a count, a percentage of the train split, or all."""

    text: str
    count: int | None = None
    percent: float | None = None

    @property
    def is_all(self) -> bool:
        return self.count is None and self.percent is None

    def resolve(self, n_available: int) -> int:
        if self.is_all:
            return n_available
        if self.percent is not None:
            n = max(1, int(math.floor(n_available * self.percent / 100.0 + 1e-9)))
        else:
            n = int(self.count)
        if n < 1:
            raise ConfigError(f"--labeled {self.text}: expected at least 1 labeled case")
        if n > n_available:
            raise ConfigError(
                f"--labeled {self.text}: only {n_available} train cases have labels; expected 1..{n_available}, a percentage or 'all'"
            )
        return n


def parse_budget(value: str | int) -> Budget:
    text = str(value).strip()
    if text.lower() == "all":
        return Budget("all")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if match:
        percent = float(match.group(1))
        if not 0 < percent <= 100:
            raise ConfigError(f"--labeled {text}: a percentage must be in (0, 100]")
        return Budget(text, percent=percent)
    if re.fullmatch(r"-?\d+", text):
        count = int(text)
        if count < 1:
            raise ConfigError(f"--labeled {text}: expected at least 1 labeled case")
        return Budget(text, count=count)
    raise ConfigError(f"--labeled {text!r}: expected a count (4), a percentage (10%) or 'all'")


def seeded_split(adapter: DatasetAdapter, test_fraction: float, seed: int = SPLIT_SEED) -> Split:
    """Test cases drawn from the cases with labels; everything else (incl. unlabeled-only cases) trains."""
    ids = adapter.case_ids()
    labeled = [i for i in ids if adapter.has_label(i)]
    if len(labeled) < 2:
        raise DataError(f"{adapter.root}: {len(labeled)} cases with labels; need at least 2 to make a test split")
    perm = np.random.default_rng(seed).permutation(len(labeled))
    n_test = max(1, int(round(len(labeled) * test_fraction)))
    test = sorted(labeled[k] for k in perm[:n_test])
    test_set = set(test)
    train = [i for i in ids if i not in test_set]
    return Split(train=train, test=test, source=f"seeded split (seed {seed}, test fraction {test_fraction})")


@dataclass(frozen=True)
class ResolvedSplit(Split):
    """A split and, for a seeded split seen for the first time, the file it is to be saved to."""

    pending: Path | None = None
    """The split file :meth:`persist` writes (None: official, in memory only, or already saved)."""
    seeded: str = ""
    """How the pending split was drawn (written into the file as its ``source``)."""

    def persist(self) -> None:
        """Write the seeded split file if it is new (atomic); a no-op for official or saved splits.

        Called right before a record begins, so a run refused during validation writes nothing.
        If a concurrent run wrote the file meanwhile, it must hold this very split.
        """
        if self.pending is None:
            return
        path = self.pending
        if path.is_file():
            saved = _read_split_file(path)
            if (saved.train, saved.test) != (self.train, self.test):
                raise DataError(f"{path}: written meanwhile with another split; delete it and rerun")
            return
        atomic_write_text(path, json.dumps({"train": self.train, "test": self.test, "source": self.seeded}, indent=1))


def _read_split_file(path: Path) -> Split:
    try:
        saved = json.loads(path.read_text())
        return Split(train=list(saved["train"]), test=list(saved["test"]), source=str(path))
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a valid split file ({err}); delete it to regenerate") from None


def resolve_split(adapter: DatasetAdapter, splits_dir: Path | None) -> ResolvedSplit:
    """Official split, else the saved seeded split, else a new seeded split to :meth:`~ResolvedSplit.persist`."""
    official = adapter.official_split()
    if official is not None:
        known = set(adapter.case_ids())
        for part, ids in (("train", official.train), ("test", official.test)):
            missing = [i for i in ids if i not in known]
            if missing:
                raise DataError(f"{official.source}: {part} id {missing[0]!r} has no case on disk ({len(missing)} missing)")
        return ResolvedSplit(train=official.train, test=official.test, source=official.source)
    fraction = float(getattr(adapter, "test_fraction", 0.1))
    if splits_dir is None:
        split = seeded_split(adapter, fraction)
        return ResolvedSplit(train=split.train, test=split.test, source=split.source)
    path = Path(splits_dir) / f"{adapter.name}.json"
    if path.is_file():
        split = _read_split_file(path)
        if set(split.train) | set(split.test) != set(adapter.case_ids()):
            raise DataError(f"{path}: saved split does not match the cases in {adapter.root}; delete it to regenerate")
        return ResolvedSplit(train=split.train, test=split.test, source=split.source)
    split = seeded_split(adapter, fraction)
    return ResolvedSplit(train=split.train, test=split.test, source=str(path), pending=path, seeded=split.source)


def select_labeled(adapter: DatasetAdapter, split: Split, budget: Budget, seed: int) -> list[str]:
    """The labeled cases for a budget; the rest of the train split is unlabeled."""
    candidates = [i for i in split.train if adapter.has_label(i)]
    n = budget.resolve(len(candidates))
    if getattr(adapter, "labeled_convention", "seeded") == "first":
        return candidates[:n]
    perm = np.random.default_rng([seed, 7919]).permutation(len(candidates))
    return [candidates[k] for k in perm[:n]]
