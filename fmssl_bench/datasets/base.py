"""The dataset-adapter interface: a file format, nothing about training.

An adapter lists case ids, reads an image or a label of one case, and knows the class names,
the dimensionality and the official split. Images and labels are read by *separate* calls so
that code which must never see labels (the unlabeled view) can be built from ``load_image``
alone; labels may be missing on disk for unlabeled cases.

Array conventions (used everywhere in the harness):
- image: ``float32`` array ``(C, *spatial)`` with no NaN/inf;
- label: integer array ``(*spatial)`` with values in ``range(len(classes))``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class Case:
    """One case as read from disk (label is ``None`` where none exists or none was asked for)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    """Train and test case ids; ``source`` says where the split came from (official file, seeded...)."""

    train: list[str]
    test: list[str]
    source: str


class DatasetAdapter(ABC):
    """Base class of every data set; subclasses register themselves with :func:`register_dataset`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    ndim: ClassVar[int] = 3
    classes: tuple[str, ...] = ("background", "foreground")
    needs_root: ClassVar[bool] = True
    default_protocol: ClassVar[str] = ""
    roi_counts: ClassVar[dict[str, tuple[int, tuple[int, ...]]]] = {}
    """Image-level domain knowledge: per foreground class, the fewest regions of interest an image
    holds and the most, as a schedule over SamDSK's rounds (the last value repeats), e.g. polyps
    ``{"polyp": (1, (1, 2, 3))}`` (seed 003 l.256). Empty: not declared (SamDSK then matches one
    to one, the paper's first-round and BUSI/ISIC setting)."""

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        if self.needs_root:
            if root is None:
                raise DataError(
                    f"dataset {self.name!r} needs --data-root (or FMSSL_DATA); none was given"
                )
            root = Path(root)
            if not root.is_dir():
                raise DataError(f"--data-root {root}: not a directory (dataset {self.name!r})")
        self.root = Path(root) if root is not None else None
        self.options = options

    # -- what subclasses implement ------------------------------------------------------------
    @abstractmethod
    def case_ids(self) -> list[str]:
        """All case ids, sorted, whether labeled or not."""

    @abstractmethod
    def _read_image(self, case_id: str) -> np.ndarray:
        """Raw image ``(C, *spatial)``; validation happens in :meth:`load_image`."""

    @abstractmethod
    def _read_label(self, case_id: str) -> np.ndarray | None:
        """Raw label, or ``None`` when the case has no label on disk."""

    def has_label(self, case_id: str) -> bool:
        """Whether a label exists on disk (cheap check, must not read the label)."""
        return True

    def spacing(self, case_id: str) -> tuple[float, ...]:
        return (1.0,) * self.ndim

    def official_split(self) -> Split | None:
        return None

    def source_file(self, case_id: str) -> str:
        """The path to name in error messages about this case's image."""
        return f"{self.name}:{case_id}"

    def label_file(self, case_id: str) -> str:
        """The path to name in error messages about this case's label."""
        return self.source_file(case_id)

    # -- validated access ---------------------------------------------------------------------
    def load_image(self, case_id: str) -> np.ndarray:
        image = self._read_image(case_id)
        where = self.source_file(case_id)
        if image.ndim != self.ndim + 1:
            raise DataError(
                f"{where}: image has shape {image.shape}; expected (channels, {self.ndim} spatial dims)"
            )
        image = np.ascontiguousarray(image, dtype=np.float32)
        if not np.isfinite(image).all():
            raise DataError(f"{where}: image contains NaN or inf values; expected finite intensities")
        return image

    def load_label(self, case_id: str, image_shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        label = self._read_label(case_id)
        if label is None:
            return None
        where = self.label_file(case_id)
        if image_shape is not None and tuple(label.shape) != tuple(image_shape):
            raise DataError(
                f"{where}: label shape {tuple(label.shape)} does not match image shape {tuple(image_shape)}"
            )
        if label.size and (label.min() < 0 or label.max() >= len(self.classes)):
            found = sorted(int(v) for v in np.unique(label))[:10]
            raise DataError(
                f"{where}: label values {found} outside the classes of {self.name!r}; "
                f"expected 0..{len(self.classes) - 1} ({', '.join(self.classes)})"
            )
        return np.ascontiguousarray(label, dtype=np.uint8)

    def load(self, case_id: str, with_label: bool = True) -> Case:
        image = self.load_image(case_id)
        label = self.load_label(case_id, image.shape[1:]) if with_label else None
        return Case(case_id, image, label, self.spacing(case_id), {"source": self.source_file(case_id)})

    def image_reader(self) -> Callable[[str], np.ndarray]:
        """A function that reads images only: what unlabeled views are built from."""
        return self.load_image

    def check(self) -> list[str]:
        """Integrity check of every case; returns all problems found (empty list = healthy)."""
        problems: list[str] = []
        try:
            ids = self.case_ids()
        except DataError as err:
            return [str(err)]
        if not ids:
            return [f"{self.root}: no cases found for dataset {self.name!r}"]
        for case_id in ids:
            try:
                image = self.load_image(case_id)
                if self.has_label(case_id):
                    self.load_label(case_id, image.shape[1:])
            except DataError as err:
                problems.append(str(err))
            except Exception as err:  # unreadable file etc.: report, keep going
                problems.append(f"{self.source_file(case_id)}: cannot be read ({type(err).__name__}: {err})")
        split = self.official_split()
        if split is not None:
            known = set(ids)
            for part, part_ids in (("train", split.train), ("test", split.test)):
                missing = [i for i in part_ids if i not in known]
                if missing:
                    problems.append(
                        f"{split.source}: {len(missing)} {part} ids have no case on disk (first: {missing[0]})"
                    )
        return problems


_DATASETS: dict[str, type[DatasetAdapter]] = {}


def register_dataset(cls: type[DatasetAdapter]) -> type[DatasetAdapter]:
    """Class decorator: make an adapter available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _DATASETS[cls.name] = cls
    return cls


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def dataset_class(name: str) -> type[DatasetAdapter]:
    from ..errors import unknown_name

    if name not in _DATASETS:
        raise unknown_name("dataset", name, dataset_names())
    return _DATASETS[name]


def build_dataset(name: str, root: str | Path | None = None, **options: Any) -> DatasetAdapter:
    return dataset_class(name)(root, **options)
