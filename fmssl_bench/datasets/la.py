"""2018 Left Atrium (LA) in the UA-MT layout.

``<root>/2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` with datasets ``image`` (float32, z-scored)
and ``label`` (0/1), plus ``<root>/train.list`` and ``<root>/test.list``. The standard labeled
sets are the first N ids of ``train.list`` (UA-MT / SemiSAM / SFR convention). The challenge data
is 0.625 mm isotropic; no spacing is stored in the files (override with ``spacing=``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError
from .base import DatasetAdapter, Split, register_dataset

CASE_DIR = "2018LA_Seg_Training Set"
CASE_FILE = "mri_norm2.h5"


def read_list(path: Path) -> list[str]:
    """Read an id list file (one id per line, blank lines ignored)."""
    if not path.is_file():
        raise DataError(f"{path}: split list not found; expected one case id per line")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@register_dataset
class LeftAtrium(DatasetAdapter):
    name = "la"
    description = "2018 Left Atrium GE-MRI, UA-MT h5 layout (train.list / test.list)"
    ndim = 3
    classes = ("background", "left atrium")
    default_subdir = "LA"
    default_protocol = "la"
    labeled_convention = "first"  # first N ids of train.list, as every LA paper does

    def __init__(self, root: str | Path | None = None, spacing: float | tuple[float, ...] = 0.625, **options: Any):
        super().__init__(root, **options)
        self._spacing = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
        self.case_dir = self.root / CASE_DIR
        if not self.case_dir.is_dir():
            raise DataError(f"{self.case_dir}: folder not found; expected the UA-MT layout '<root>/{CASE_DIR}/<ID>/{CASE_FILE}'")

    def path(self, case_id: str) -> Path:
        return self.case_dir / case_id / CASE_FILE

    def source_file(self, case_id: str) -> str:
        return str(self.path(case_id))

    def case_ids(self) -> list[str]:
        return sorted(p.parent.name for p in self.case_dir.glob(f"*/{CASE_FILE}"))

    def _dataset(self, case_id: str, key: str) -> np.ndarray:
        path = self.path(case_id)
        if not path.is_file():
            raise DataError(f"{path}: file not found (case {case_id!r})")
        try:
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise DataError(f"{path}: no dataset {key!r}; expected datasets 'image' and 'label'")
                return f[key][()]
        except OSError as err:
            raise DataError(f"{path}: unreadable HDF5 file ({err})") from err

    def _read_image(self, case_id: str) -> np.ndarray:
        return self._dataset(case_id, "image")[None]

    def _read_label(self, case_id: str) -> np.ndarray | None:
        if not self.has_label(case_id):
            return None
        return self._dataset(case_id, "label")

    def has_label(self, case_id: str) -> bool:
        path = self.path(case_id)
        try:
            with h5py.File(path, "r") as f:
                return "label" in f
        except OSError:
            return True  # let the read report the real problem

    def spacing(self, case_id: str) -> tuple[float, ...]:
        return self._spacing

    def official_split(self) -> Split:
        train = read_list(self.root / "train.list")
        test = read_list(self.root / "test.list")
        return Split(train=train, test=test, source=str(self.root / "train.list"))
