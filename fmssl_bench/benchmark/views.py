"""Data views: where label leakage is made impossible, once, for every method.

- :class:`LabeledView` holds images and labels of the labeled budget;
- :class:`UnlabeledView` holds *images only*. It is filled through the adapter's image reader;
  no label is read from disk for those cases, so a method cannot use them even by accident, and
  unlabeled cases need no label file at all;
- :class:`TestView` is held by the runner/evaluator alone and is never passed to a method.

2D protocols train at a fixed resolution (``protocol.resize``), 3D CPU protocols at a fraction of
it (``protocol.scale``): labeled and unlabeled images are resampled here once (the size comes from
``protocol.training_size``); the test view keeps original images so scores are computed at full
size, after the prediction is resampled back.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..datasets.base import Case, DatasetAdapter
from ..errors import DataError


#: a spatial shape -> the training-frame shape (None: keep it)
Sizer = Callable[[tuple[int, ...]], "tuple[int, ...] | None"]


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(Bi/tri)linear (area when shrinking) resize of a (C, *spatial) image, 2D or 3D."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image))[None]
    linear = "bilinear" if len(size) == 2 else "trilinear"
    mode = "area" if all(s <= o for s, o in zip(size, image.shape[1:])) else linear
    out = F.interpolate(t, size=tuple(size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return out[0].numpy()


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map."""
    if tuple(label.shape) == tuple(size):
        return label
    t = torch.from_numpy(label.astype(np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="nearest-exact")[0, 0].numpy().astype(np.uint8)


@dataclass(frozen=True)
class LabeledView:
    ids: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


class UnlabeledView:
    """Images of unlabeled cases; there is deliberately no label attribute.

    ``images`` may be given, or read on first use through ``load`` (an image-only loader), so a
    method that never touches unlabeled data (``supervised``) does not pay for reading them.
    """

    def __init__(self, ids: list[str], images: list[np.ndarray] | None = None,
                 load: Callable[[], list[np.ndarray]] | None = None) -> None:
        if images is None and load is None:
            raise ValueError("UnlabeledView needs its images or a loader")
        self.ids = list(ids)
        self._images = images
        self._load = load

    @property
    def images(self) -> list[np.ndarray]:
        if self._images is None:
            self._images = self._load()
        return self._images

    @property
    def loaded(self) -> bool:
        return self._images is not None

    def __len__(self) -> int:
        return len(self.ids)


class TestView:
    """Test cases at original resolution; only the runner and the evaluator hold one.

    ``preload=True`` reads and validates every case up front, so bad test data fails the run
    before anything is trained or written.
    """

    def __init__(self, adapter: DatasetAdapter, ids: list[str], preload: bool = False) -> None:
        self._adapter = adapter
        self.ids = list(ids)
        self._cases = [load_labeled_case(adapter, i, "test") for i in _progress(self.ids, "test")] if preload else None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Case]:
        if self._cases is not None:
            yield from self._cases
            return
        for case_id in self.ids:
            yield load_labeled_case(self._adapter, case_id, "test")


def load_labeled_case(adapter: DatasetAdapter, case_id: str, role: str) -> Case:
    case = adapter.load(case_id, with_label=True)
    if case.label is None:
        raise DataError(f"{adapter.label_file(case_id)}: case {case_id!r} is in the {role} set but has no label on disk")
    return case


#: progress lines in logs state the rate and time left once a loop has run this long
TIMING_AFTER_S = 5.0


class _LineProgress:
    """What a pipe or log file gets instead of a bar: a plain line every ``every`` steps, with the rate
    and the time left (a record in a ``nohup`` log may train for hours)."""

    clock = staticmethod(time.monotonic)

    def __init__(self, iterable=None, total=None, initial=0, desc="", every=1, unit="it", **_):
        self.iterable, self.desc, self.every, self.unit = iterable, desc, max(1, every), unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix = initial, ""
        self.initial, self.started = initial, self.clock()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.n % self.every == 0 or self.n == self.total:
            parts = (self.desc, f"{self.n}/{self.total}", self.postfix, self._timing())
            print(" ".join(p for p in parts if p), file=sys.stderr, flush=True)

    def _timing(self) -> str:
        """``(2.1 s per it, ~12 min left)``: the rate since this bar started (a resumed stage counts its own
        steps); nothing for the first seconds, where it would be noise (loading a view, a short test run)."""
        done, elapsed = self.n - self.initial, self.clock() - self.started
        if done <= 0 or not self.total or elapsed < TIMING_AFTER_S:
            return ""
        return f"({rate_text(elapsed, done, self.total - self.n, self.unit)})"

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


def rate_text(seconds: float, done: int, left: int, unit: str) -> str:
    """``41.0 s per case, ~12 min left``: the one way progress lines in logs state speed and time left."""
    rate = seconds / max(done, 1)
    remaining = rate * max(left, 0)
    when = f"~{remaining / 60:.0f} min left" if remaining >= 60 else f"~{remaining:.0f} s left"
    return f"{rate:.{1 if rate >= 1 else 3}f} s per {unit}" + (f", {when}" if left > 0 else "")


def progress_line(what: str, done: int, total: int, started: float, unit: str = "case") -> str:
    """``what: 5/22 cases, 41.0 s per case, ~12 min left`` for the long steps outside a training loop
    (pseudo-labelling rounds, proposal generation), whose lines go to logs where no progress bar shows;
    ``started`` is a ``time.time()``."""
    return f"{what}: {done}/{total} {unit}s, {rate_text(time.time() - started, done, total - done, unit)}"


def progress_bar(enabled: bool = True, iterable=None, every: int = 1, **kwargs):
    """A tqdm bar on a terminal, periodic plain lines in logs, nothing when ``enabled`` is False."""
    if enabled and not sys.stderr.isatty():
        return _LineProgress(iterable, every=every, **kwargs)
    return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kwargs)


def _progress(ids: list[str], what: str) -> Iterator[str]:
    return progress_bar(len(ids) >= 8, ids, desc=f"loading {what}", unit="case", every=max(1, len(ids) // 4))


def build_labeled_view(adapter: DatasetAdapter, ids: list[str], size_for: Sizer | None) -> LabeledView:
    """``size_for`` (``protocol.training_size``) gives each case's training-frame shape; None keeps it."""
    images, labels = [], []
    for case_id in _progress(ids, "labeled"):
        case = load_labeled_case(adapter, case_id, "labeled")
        image, label = case.image, case.label
        size = size_for(tuple(label.shape)) if size_for is not None else None
        if size is not None:
            image, label = resize_image(image, size), resize_label(label, size)
        images.append(image)
        labels.append(label)
    return LabeledView(list(ids), images, labels)


def build_unlabeled_view(read_image: Callable[[str], np.ndarray], ids: list[str],
                         size_for: Sizer | None, lazy: bool = False) -> UnlabeledView:
    """Built from an image reader alone: this function has no way to reach a label.

    ``lazy``: the images are read on first use instead of now (then bad unlabeled files are
    reported when a method first asks for them, not before training starts).
    """
    def load() -> list[np.ndarray]:
        images = []
        for case_id in _progress(ids, "unlabeled"):
            image = read_image(case_id)
            size = size_for(tuple(image.shape[1:])) if size_for is not None else None
            images.append(resize_image(image, size) if size is not None else image)
        return images

    return UnlabeledView(list(ids), load=load) if lazy else UnlabeledView(list(ids), load())
