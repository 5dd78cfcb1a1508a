"""nnU-Net v2 raw / Medical Segmentation Decathlon NIfTI folders (BTCV, MACT, AbdomenCT-1K, MSD tasks).

``<root>/dataset.json`` + ``imagesTr/<case>_<channel:04d>.nii.gz`` + ``labelsTr/<case>.nii.gz``
(nnU-Net v2: ``channel_names``, ``labels`` as name -> value, ``file_ending``), or the MSD form
(``modality``, ``labels`` as value -> name, ``training`` list of image/label paths, 4D images for
multi-modal tasks). Voxel spacing comes from the NIfTI header; arrays keep NIfTI axis order, so the
last axis is the slice axis. Cases in ``imagesTr`` without a label are unlabeled; a seeded split is
written once (nnU-Net's raw folder has no test split with labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import DataError
from .base import DatasetAdapter, register_dataset


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _load_nifti(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises several types for broken files
        raise DataError(f"{path}: unreadable NIfTI file ({_one_line(err)})") from None


def _nifti_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, affine) of a NIfTI file; a truncated or damaged file is one error naming it."""
    image = _load_nifti(path)
    try:
        return np.asanyarray(image.dataobj), image.affine
    except Exception as err:  # EOFError (truncated .gz), OSError (short .nii), zlib errors ...
        raise DataError(f"{path}: truncated or damaged NIfTI file ({type(err).__name__}: {_one_line(err)}); "
                        f"its header promises shape {tuple(image.shape)}") from None


def _same_grid(path: Path, affine: np.ndarray, shape: tuple[int, ...], ref: Path, ref_affine: np.ndarray,
               ref_shape: tuple[int, ...], what: str) -> None:
    """A label (or a further channel) must lie in its image's voxel grid: same spatial shape and affine."""
    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        raise DataError(f"{path}: {what} shape {tuple(shape)} does not match {ref} {tuple(ref_shape)}")
    if affine is not None and ref_affine is not None and not np.allclose(affine, ref_affine, rtol=1e-4, atol=1e-3):
        diff = float(np.abs(np.asarray(affine) - np.asarray(ref_affine)).max())
        raise DataError(f"{path}: {what} affine differs from that of {ref} (by up to {diff:.4g}); "
                        "expected both in the same voxel grid (resample or fix the header)")


@register_dataset
class NNUNetRaw(DatasetAdapter):
    name = "nnunet"
    description = "nnU-Net v2 raw / MSD NIfTI folder (dataset.json, imagesTr, labelsTr): BTCV, MACT, AbdomenCT-1K ..."
    ndim = 3
    default_subdir = ""
    default_protocol = "la"
    labeled_convention = "seeded"
    test_fraction = 0.2

    def __init__(self, root: str | Path | None = None, **options: Any):
        super().__init__(root, **options)
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: not found; expected an nnU-Net v2 or MSD dataset.json")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as err:
            raise DataError(f"{meta_path}: invalid JSON ({err})") from None
        labels = meta.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise DataError(f"{meta_path}: no 'labels' mapping; expected e.g. {{\"background\": 0, \"spleen\": 1}}")
        if all(str(k).isdigit() for k in labels):  # MSD: value -> name
            by_value = {int(k): str(v) for k, v in labels.items()}
        else:  # nnU-Net v2: name -> value (region-based labels are not supported)
            by_value = {int(v): str(k) for k, v in labels.items() if isinstance(v, int)}
        if sorted(by_value) != list(range(len(by_value))):
            raise DataError(f"{meta_path}: label values {sorted(by_value)}; expected consecutive 0..N-1")
        self.classes = tuple(by_value[v] for v in range(len(by_value)))
        self.ending = meta.get("file_ending", ".nii.gz")
        channels = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
        self.n_channels = len(channels)
        self.msd = "training" in meta and "channel_names" not in meta
        self._images, self._labels = self._index(meta)

    def _index(self, meta: dict[str, Any]) -> tuple[dict[str, list[Path]], dict[str, Path]]:
        images: dict[str, list[Path]] = {}
        labels: dict[str, Path] = {}
        if self.msd:
            for entry in meta["training"]:
                image = self.root / entry["image"]
                case = image.name[: -len(self.ending)]
                images[case] = [image]
                labels[case] = self.root / entry["label"]
            return images, labels
        folder = self.root / "imagesTr"
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; expected nnU-Net 'imagesTr/<case>_0000{self.ending}'")
        for path in sorted(folder.glob(f"*_0000{self.ending}")):
            case = path.name[: -len(f"_0000{self.ending}")]
            images[case] = [folder / f"{case}_{c:04d}{self.ending}" for c in range(self.n_channels)]
            label = self.root / "labelsTr" / f"{case}{self.ending}"
            if label.is_file():
                labels[case] = label
        return images, labels

    def case_ids(self) -> list[str]:
        return sorted(self._images)

    def source_file(self, case_id: str) -> str:
        return str(self._images[case_id][0])

    def label_file(self, case_id: str) -> str:
        return str(self._labels.get(case_id, self.root / "labelsTr" / f"{case_id}{self.ending}"))

    def has_label(self, case_id: str) -> bool:
        return case_id in self._labels and self._labels[case_id].is_file()

    def _read_image(self, case_id: str) -> np.ndarray:
        arrays = []
        first: tuple[Path, np.ndarray, tuple[int, ...]] | None = None
        for path in self._images[case_id]:
            if not path.is_file():
                raise DataError(f"{path}: file not found (case {case_id!r}, {self.n_channels} channel(s) expected)")
            data, affine = _nifti_array(path)
            data = data.astype(np.float32)
            if data.ndim not in (3, 4):
                raise DataError(f"{path}: image has shape {data.shape}; expected a 3D volume (or 4D: volume x channels)")
            if first is None:
                first = (path, affine, data.shape)
            else:
                _same_grid(path, affine, data.shape, *first, what="channel")
            arrays += [data[..., c] for c in range(data.shape[-1])] if data.ndim == 4 else [data]
        return np.stack(arrays)

    def _read_label(self, case_id: str) -> np.ndarray | None:
        if not self.has_label(case_id):
            return None
        path = self._labels[case_id]
        data, affine = _nifti_array(path)
        image = _load_nifti(self._images[case_id][0])  # the header only: the label must share its grid
        _same_grid(path, affine, data.shape, self._images[case_id][0], image.affine, tuple(image.shape), what="label")
        return np.rint(data).astype(np.int16)

    def spacing(self, case_id: str) -> tuple[float, ...]:
        zooms = _load_nifti(self._images[case_id][0]).header.get_zooms()[:3]
        return tuple(float(z) for z in zooms)
