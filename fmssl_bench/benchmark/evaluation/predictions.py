"""Prediction files: how a test prediction is stored, read back and checked before it is scored.

Evaluation is kept apart from training (nnU-Net's ``nnUNetv2_evaluate_folder`` idea): a run saves
its test predictions, so the same files can be re-scored under other metric definitions without
retraining, and an outside method's predictions are scored by the very same code on the very
same test split.

File format (one file per test case, named by :func:`prediction_name`):

- 3D: ``<case_id>.nii.gz``, uint8 labels. The array is stored in the harness's axis order
  ``(D0, D1, D2)`` = NIfTI ``(i, j, k)``, *without* transposition, and the affine is
  ``diag(spacing)``: the voxel size is kept, the origin is 0 and the orientation is "RAS" by
  construction. For NIfTI data sets (the ``nnunet`` adapter) the harness's arrays are the
  reference file's storage order, so a prediction carrying the reference's own affine (what
  nnU-Net writes) is accepted as well; any other direction is an orientation error.
- 2D: ``<case_id>.png``, a single-channel 8-bit image whose values are the class indices
  ``0..K-1`` (not 0/255), at the image's original size.

Case ids become file names unchanged. None of the adapters can produce a ``/`` in an id (they
are file or folder names), but an id is encoded defensively: ``%`` -> ``%25``, ``/`` -> ``%2F``,
``\\`` -> ``%5C`` and a leading ``.`` -> ``%2E`` (hidden files are ignored when a folder is read,
and the atomic writer's temporary files are hidden). Ids without those characters map to
themselves.

Reading a folder (:func:`load_prediction_folder`) validates every file before anything is
scored and reports every problem at once. Files that match no test case are *ignored with a
warning* (:class:`UnmatchedPredictionWarning`), as nnU-Net's evaluator does: an outside method
may well have predicted the train cases too. Values must be class indices; a 0/255 mask is
refused with a hint rather than silently divided (a 0/255 file for K = 2 is far more often a
wrong export than a deliberate format).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
from PIL import Image

from ...errors import DataError
from ..records.store import atomic_write_bytes

SUFFIX = {2: ".png", 3: ".nii.gz"}
#: relative tolerance between a prediction's voxel size and the data set's
SPACING_RTOL = 1e-3
#: absolute tolerance on the affine's direction cosines
DIRECTION_ATOL = 1e-3
#: single-channel PNG modes whose pixel values are read as class indices
PNG_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
_ESCAPES = (("%", "%25"), ("/", "%2F"), ("\\", "%5C"))


class UnmatchedPredictionWarning(UserWarning):
    """Files in a prediction folder that belong to no test case (they are ignored)."""


def _suffix(ndim: int) -> str:
    if ndim not in SUFFIX:
        raise ValueError(f"predictions are 2D or 3D, got ndim={ndim}")
    return SUFFIX[ndim]


def encode_case_id(case_id: str) -> str:
    """The file-name stem of a case id (identity for ids without ``% / \\`` or a leading dot)."""
    if not case_id:
        raise ValueError("empty case id")
    stem = case_id
    for char, code in _ESCAPES:
        stem = stem.replace(char, code)
    return "%2E" + stem[1:] if stem.startswith(".") else stem


def prediction_name(case_id: str, ndim: int) -> str:
    return encode_case_id(case_id) + _suffix(ndim)


def prediction_path(folder: Path, case_id: str, ndim: int) -> Path:
    """Where the prediction of ``case_id`` lives in ``folder``."""
    return Path(folder) / prediction_name(case_id, ndim)


# ----------------------------------------------------------------------------- writing


def save_prediction(folder: Path, case_id: str, pred: np.ndarray, spacing: Sequence[float], ndim: int) -> Path:
    """Write one label map atomically (temporary file + ``os.replace``); returns its path.

    The bytes depend only on the labels and the spacing (the gzip header carries no time stamp),
    so the same prediction always hashes the same.
    """
    pred = np.asarray(pred)
    if pred.ndim != ndim:
        raise ValueError(f"prediction of case {case_id!r} has shape {pred.shape}; expected {ndim} spatial dims")
    if pred.size and (pred.min() < 0 or pred.max() > 255):
        raise ValueError(f"prediction of case {case_id!r} has labels outside 0..255; uint8 files cannot hold them")
    labels = np.ascontiguousarray(pred, dtype=np.uint8)
    path = prediction_path(folder, case_id, ndim)
    if ndim == 3:
        if len(spacing) != 3:
            raise ValueError(f"spacing {tuple(spacing)} of case {case_id!r}: expected 3 values")
        image = nib.Nifti1Image(labels, affine=np.diag([*map(float, spacing), 1.0]))
        image.header.set_xyzt_units("mm")
        data = gzip.compress(image.to_bytes(), mtime=0)
    else:
        buf = io.BytesIO()
        Image.fromarray(labels).save(buf, format="PNG")
        data = buf.getvalue()
    atomic_write_bytes(path, data)
    return path


# ----------------------------------------------------------------------------- reading


def _read(path: Path, ndim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw array and (3D) the 4x4 affine; raises :class:`DataError` for unreadable files."""
    if ndim == 3:
        try:
            image = nib.load(str(path))
            return np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)
        except Exception as err:  # nibabel raises several types for broken files
            raise DataError(f"{path}: unreadable NIfTI file ({type(err).__name__}: {err})") from None
    _suffix(ndim)
    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.asarray(image)
    except Exception as err:  # PIL raises several types for broken files
        raise DataError(f"{path}: unreadable PNG file ({type(err).__name__}: {err})") from None
    if mode not in PNG_MODES:
        raise DataError(f"{path}: PNG mode {mode!r} with shape {array.shape}; expected a single-channel label "
                        f"image (mode L, P or I) whose values are class indices")
    return array, None


def affine_spacing(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel size encoded in an affine: the lengths of its first three columns."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def read_prediction(path: Path, ndim: int) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """``(labels, spacing)``: spacing from the NIfTI affine in 3D, ``None`` in 2D (PNG keeps none)."""
    array, affine = _read(Path(path), ndim)
    return array, (affine_spacing(affine) if affine is not None else None)


def _reference_direction(adapter, case_id: str) -> np.ndarray | None:
    """Direction cosines of the reference label when it is itself a NIfTI file (``nnunet``), else None."""
    label = str(adapter.label_file(case_id))
    if not label.endswith((".nii", ".nii.gz")) or not Path(label).is_file():
        return None
    try:
        affine = np.asarray(nib.load(label).affine, dtype=np.float64)
    except Exception:  # the reference itself is checked where it is loaded
        return None
    return _direction(affine)


def _direction(affine: np.ndarray) -> np.ndarray | None:
    zooms = np.asarray(affine_spacing(affine))
    if not np.all(zooms > 0):
        return None
    return affine[:3, :3] / zooms


def _check_geometry(path: Path, affine: np.ndarray, spacing: Sequence[float], reference: np.ndarray | None) -> list[str]:
    """Spacing and orientation of a 3D prediction against the data set's voxel grid."""
    problems = []
    found = np.asarray(affine_spacing(affine))
    expected = np.asarray(spacing, dtype=np.float64)
    if found.shape != expected.shape or not np.allclose(found, expected, rtol=SPACING_RTOL, atol=0.0):
        problems.append(f"{path}: voxel spacing {tuple(round(float(v), 6) for v in found)} differs from the data set's "
                        f"{tuple(float(v) for v in expected)} (beyond {SPACING_RTOL:g} relative); "
                        "expected the prediction on the reference voxel grid")
    direction = _direction(affine)
    accepted = [np.eye(3)] + ([reference] if reference is not None else [])
    if direction is None or not any(np.allclose(direction, d, atol=DIRECTION_ATOL) for d in accepted):
        try:
            codes = "".join(nib.aff2axcodes(affine))
        except Exception:  # degenerate affine
            codes = "undefined"
        problems.append(f"{path}: orientation {codes} (affine direction {np.round(affine[:3, :3], 4).tolist()}); "
                        "expected the array in the harness's axis order with affine diag(spacing) (RAS, diagonal "
                        "positive)" + (" or the reference label's own affine" if reference is not None else ""))
    return problems


def _check_labels(path: Path, array: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray | None, list[str]]:
    """Integer class indices in ``0..K-1`` -> uint8 array, or the problems found."""
    k = len(classes)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            return None, [f"{path}: non-integer values (dtype {array.dtype}); expected class indices 0..{k - 1}"]
    elif array.dtype.kind not in "biu":
        return None, [f"{path}: dtype {array.dtype}; expected integer class indices 0..{k - 1}"]
    if array.size and (array.min() < 0 or array.max() >= k):
        found = [int(v) for v in np.unique(array)]
        shown = ", ".join(map(str, found[:10])) + (f", ... ({len(found)} values)" if len(found) > 10 else "")
        hint = "; a 0/255 mask? store class indices (mask // 255)" if k == 2 and set(found) <= {0, 255} else ""
        return None, [f"{path}: label values [{shown}] outside the classes 0..{k - 1} ({', '.join(classes)}){hint}"]
    return np.ascontiguousarray(array, dtype=np.uint8), []


def _missing(folder: Path, case_id: str, ndim: int) -> str:
    expected = prediction_path(folder, case_id, ndim)
    stem = encode_case_id(case_id)
    others = sorted(p.name for p in folder.glob(f"{glob_escape(stem)}.*") if p.name != expected.name)
    hint = f" (found {', '.join(others)}; expected exactly that name)" if others else ""
    return f"{expected}: missing; expected the prediction of test case {case_id!r} as {expected.name}{hint}"


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters quoted, for matching a literal file-name prefix."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def load_prediction_folder(
    folder: Path,
    adapter,
    test_ids: Sequence[str],
    classes: Sequence[str],
    references: Mapping[str, np.ndarray] | None = None,
) -> list[tuple[str, np.ndarray, tuple[float, ...]]]:
    """Every test prediction of ``folder`` as ``(case_id, labels uint8, spacing)``, in ``test_ids`` order.

    All files are checked before anything is returned, and every problem is reported in one
    :class:`DataError`, one line per problem: a missing case, an unreadable file, a shape that
    differs from the reference label's, (3D) a voxel spacing or orientation that differs from
    the data set's grid, labels outside ``0..K-1``. ``references`` are the reference label
    arrays by case id (read through ``adapter.load_label`` when not given); the spacing
    returned is the data set's (``adapter.spacing``), the one the harness scores with. Files
    that match no test case are ignored with an :class:`UnmatchedPredictionWarning`.
    """
    folder = Path(folder)
    ndim = int(adapter.ndim)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected one {_suffix(ndim)} prediction per test case")
    problems: list[str] = []
    out: list[tuple[str, np.ndarray, tuple[float, ...]]] = []
    for case_id in test_ids:
        path = prediction_path(folder, case_id, ndim)
        if not path.is_file():
            problems.append(_missing(folder, case_id, ndim))
            continue
        try:
            array, affine = _read(path, ndim)
        except DataError as err:
            problems.append(str(err))
            continue
        ref = references[case_id] if references is not None else adapter.load_label(case_id)
        if ref is None:
            raise DataError(f"{adapter.label_file(case_id)}: test case {case_id!r} has no reference label on disk")
        spacing = tuple(float(s) for s in adapter.spacing(case_id))
        case_problems = []
        if tuple(array.shape) != tuple(ref.shape):
            case_problems.append(f"{path}: shape {tuple(array.shape)}; expected {tuple(ref.shape)}, the shape of the "
                                 f"reference {adapter.label_file(case_id)}")
        if affine is not None:
            case_problems += _check_geometry(path, affine, spacing, _reference_direction(adapter, case_id))
        labels, value_problems = _check_labels(path, array, classes)
        case_problems += value_problems
        problems += case_problems
        if not case_problems:
            out.append((case_id, labels, spacing))
    if problems:
        raise DataError(f"{folder}: {len(problems)} problem(s) with the predictions of the {len(test_ids)} test "
                        f"cases of {adapter.name!r} (expected one <case_id>{_suffix(ndim)} each):\n  - "
                        + "\n  - ".join(problems))
    _warn_unmatched(folder, {prediction_name(c, ndim) for c in test_ids})
    return out


def _warn_unmatched(folder: Path, expected: set[str]) -> None:
    """One warning naming the (non-hidden) files that belong to no test case."""
    extra = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name not in expected)
    if extra:
        shown = ", ".join(extra[:5]) + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
        warnings.warn(f"{folder}: {len(extra)} file(s) match no test case and are ignored: {shown}",
                      UnmatchedPredictionWarning, stacklevel=3)


def predictions_digest(paths: Iterable[Path]) -> str:
    """sha256 over the sorted ``(file name, bytes)`` of prediction files: what identifies them."""
    h = hashlib.sha256()
    for path in sorted((Path(p) for p in paths), key=lambda p: p.name):
        data = path.read_bytes()
        h.update(f"{path.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()
