"""Generic 2D image/mask folders: Kvasir-SEG, CVC-ClinicDB, ISIC, BUSI, PH2 ...

``<root>/images/<stem>.<ext>`` and ``<root>/masks/<stem>.<ext>`` matched by file stem (an optional
``mask_suffix`` such as ``_segmentation`` for ISIC is stripped). Masks are thresholded at
``mask_threshold`` after conversion to grayscale, so RGB JPEG masks (Kvasir) work. Images are
returned as float32 in [0, 1] with 3 channels (RGB) or 1 (``channels=1``). An image without a
mask is an unlabeled case. These data sets have no official split: the harness writes a seeded
split file once and reuses it (:mod:`fmssl_bench.benchmark.splits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import DatasetAdapter, register_dataset

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def read_image_file(path: Path, mode: str) -> np.ndarray:
    """Decode an image fully; a truncated file or one that decodes to another size than its header says is an error."""
    try:
        with Image.open(path) as im:
            header = (im.height, im.width)
            array = np.asarray(im.convert(mode))
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: unreadable or truncated image file ({detail}); expected a complete "
                        f"{', '.join(IMAGE_EXTS)} file") from None
    if tuple(array.shape[:2]) != header:
        raise DataError(f"{path}: decodes to {array.shape[0]}x{array.shape[1]} pixels but its header says "
                        f"{header[0]}x{header[1]}; expected a consistent image file")
    return array


class Folder2D(DatasetAdapter):
    """Base for image/mask folder data sets; subclasses set name, classes and defaults."""

    ndim = 2
    classes = ("background", "foreground")
    image_dir = "images"
    mask_dir = "masks"
    mask_suffix = ""
    mask_threshold = 127
    channels = 3
    labeled_convention = "seeded"
    test_fraction = 0.1

    def __init__(self, root: str | Path | None = None, **options: Any):
        super().__init__(root, **options)
        for key in ("image_dir", "mask_dir", "mask_suffix", "mask_threshold", "channels"):
            if key in options:
                setattr(self, key, options[key])
        self.images = self.root / self.image_dir
        self.masks = self.root / self.mask_dir
        if not self.images.is_dir():
            raise DataError(f"{self.images}: folder not found; expected '<root>/{self.image_dir}/' with the images")
        self._image_files = self._index(self.images, "")
        self._mask_files = self._index(self.masks, self.mask_suffix) if self.masks.is_dir() else {}

    @staticmethod
    def _index(folder: Path, suffix: str) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTS:
                continue
            stem = path.stem
            if suffix and stem.endswith(suffix):
                stem = stem[: -len(suffix)]
            files[stem] = path
        return files

    def case_ids(self) -> list[str]:
        return sorted(self._image_files)

    def source_file(self, case_id: str) -> str:
        return str(self._image_files.get(case_id, self.images / case_id))

    def _read_image(self, case_id: str) -> np.ndarray:
        if case_id not in self._image_files:
            raise DataError(f"{self.images}: no image for case {case_id!r}")
        rgb = read_image_file(self._image_files[case_id], "RGB" if self.channels == 3 else "L")
        rgb = rgb.astype(np.float32) / 255.0
        return np.moveaxis(rgb, -1, 0) if rgb.ndim == 3 else rgb[None]

    def has_label(self, case_id: str) -> bool:
        return case_id in self._mask_files

    def _read_label(self, case_id: str) -> np.ndarray | None:
        path = self._mask_files.get(case_id)
        if path is None:
            return None
        gray = read_image_file(path, "L")
        return (gray > self.mask_threshold).astype(np.uint8)

    def label_file(self, case_id: str) -> str:
        return str(self._mask_files.get(case_id, self.masks / case_id))


@register_dataset
class KvasirSEG(Folder2D):
    name = "kvasir"
    description = "Kvasir-SEG colonoscopy polyps (images/*.jpg, masks/*.jpg), seeded 90/10 split"
    classes = ("background", "polyp")
    default_subdir = "Kvasir-SEG"
    default_protocol = "kvasir"
    roi_counts = {"polyp": (1, (1, 2, 3))}  # seed 003 l.256: polyps, v_upper 1, 2, 3 by round


@register_dataset
class CVCClinicDB(Folder2D):
    name = "cvc-clinicdb"
    description = "CVC-ClinicDB polyps (images/, masks/), seeded 90/10 split"
    classes = ("background", "polyp")
    default_subdir = "CVC-ClinicDB"
    default_protocol = "kvasir"
    roi_counts = {"polyp": (1, (1, 2, 3))}  # seed 003 l.256


@register_dataset
class ISIC(Folder2D):
    name = "isic"
    description = "ISIC skin lesions (images/, masks/ with '_segmentation' suffix), seeded 90/10 split"
    classes = ("background", "lesion")
    default_subdir = "ISIC"
    mask_suffix = "_segmentation"
    default_protocol = "kvasir"
    roi_counts = {"lesion": (1, (1,))}  # seed 003 l.262: one lesion per image in every round


@register_dataset
class BUSI(Folder2D):
    name = "busi"
    description = "BUSI breast ultrasound (grayscale images/, masks/), seeded 90/10 split"
    classes = ("background", "lesion")
    default_subdir = "BUSI"
    channels = 1
    default_protocol = "kvasir"
    roi_counts = {"lesion": (1, (1,))}  # seed 003 l.236: v_lower = v_upper = 1


@register_dataset
class Folder(Folder2D):
    name = "folder2d"
    description = "any 2D images/ + masks/ folder (binary masks, options via --dataset-option)"
    default_subdir = ""
    default_protocol = "kvasir"
