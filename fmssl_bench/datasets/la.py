"""HDF5 volume data sets in the layouts the SSL literature uses (one ``image``/``label`` file per case).

- ``la``: 2018 Left Atrium, UA-MT layout: ``<root>/2018LA_Seg_Training Set/<ID>/mri_norm2.h5``
  plus ``train.list`` / ``test.list``. The standard labeled sets are the first N ids of
  ``train.list`` (UA-MT / SemiSAM / SFR). 0.625 mm isotropic; no spacing is stored in the files.
- ``brats2019``: SSL4MIS / SFR layout: ``<root>/data/<ID>.h5`` plus ``train.txt`` / ``test.txt``
  (whole tumour, binary; 1 mm isotropic).
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


class H5Volumes(DatasetAdapter):
    """One HDF5 file per case with datasets ``image`` and (optionally) ``label``; id lists for the split."""

    ndim = 3
    labeled_convention = "first"  # first N ids of the train list, as the papers do
    case_glob = ""
    layout = ""
    lists = ("train.list", "test.list")
    default_spacing = 1.0

    def __init__(self, root: str | Path | None = None, spacing: float | tuple[float, ...] | None = None, **options: Any):
        super().__init__(root, **options)
        spacing = self.default_spacing if spacing is None else spacing
        self._spacing = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
        folder = self.root / self.case_glob.split("/")[0]
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; expected the layout '{self.layout}'")

    def path(self, case_id: str) -> Path:
        return self.root / self.case_glob.replace("*", case_id)

    def source_file(self, case_id: str) -> str:
        return str(self.path(case_id))

    def case_ids(self) -> list[str]:
        prefix, suffix = self.case_glob.split("*")
        return sorted(str(p.relative_to(self.root))[len(prefix): -len(suffix)] for p in self.root.glob(self.case_glob))

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
        train = read_list(self.root / self.lists[0])
        test = read_list(self.root / self.lists[1])
        return Split(train=train, test=test, source=str(self.root / self.lists[0]))


@register_dataset
class LeftAtrium(H5Volumes):
    name = "la"
    description = "2018 Left Atrium GE-MRI, UA-MT h5 layout (train.list / test.list)"
    classes = ("background", "left atrium")
    default_subdir = "LA"
    default_protocol = "la"
    case_glob = f"{CASE_DIR}/*/{CASE_FILE}"
    layout = f"<root>/{CASE_DIR}/<ID>/{CASE_FILE}"
    default_spacing = 0.625


@register_dataset
class BraTS2019(H5Volumes):
    name = "brats2019"
    description = "BraTS 2019 whole tumour, SSL4MIS h5 layout (data/<ID>.h5, train.txt / test.txt)"
    classes = ("background", "tumour")
    default_subdir = "BraTS2019"
    default_protocol = "brats2019"
    case_glob = "data/*.h5"
    layout = "<root>/data/<ID>.h5 with train.txt and test.txt"
    lists = ("train.txt", "test.txt")
