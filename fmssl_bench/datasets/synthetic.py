"""Procedural data sets: deterministic smooth-blob "organs" with noise and an intensity bias field.

Small enough for unit tests and the default demo, hard enough that unlabeled data helps a little:
two foreground classes of different mean intensity, a random smooth multiplicative bias field and
Gaussian noise. Every case is a pure function of ``(seed, case index)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .base import DatasetAdapter, Split, register_dataset


def _blob(shape: tuple[int, ...], rng: np.random.Generator, radius: tuple[float, float]) -> np.ndarray:
    """A smooth random ellipsoid occupancy in [0, 1]."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = [rng.uniform(0.3 * s, 0.7 * s) for s in shape]
    radii = [rng.uniform(*radius) * s for s in shape]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    wobble = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=max(shape) / 8)
    return (dist + 2.0 * wobble < 1.0).astype(np.float32)


def synthetic_case(shape: tuple[int, ...], seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(1, *shape)`` float32 and label ``shape`` uint8 with classes 0, 1, 2."""
    rng = np.random.default_rng([seed, index])
    label = np.zeros(shape, dtype=np.uint8)
    label[_blob(shape, rng, (0.18, 0.28)) > 0] = 1
    label[_blob(shape, rng, (0.08, 0.14)) > 0] = 2
    means = np.array([0.2, 0.75, 0.45], dtype=np.float32)
    image = means[label]
    bias = 1.0 + 0.5 * ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=max(shape) / 4) * max(shape) / 4
    image = image * np.clip(bias, 0.6, 1.4) + rng.normal(0.0, 0.12, size=shape).astype(np.float32)
    image = ndimage.gaussian_filter(image, sigma=0.7)
    image = (image - image.mean()) / (image.std() + 1e-6)
    return image[None].astype(np.float32), label


def _ellipsoid(shape: tuple[int, ...], centre: list[float], radii: list[float], rng: np.random.Generator) -> np.ndarray:
    """A smooth random ellipsoid (boolean) with a low-frequency wobble of its surface."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    wobble = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=max(shape) / 6)
    return dist + 1.5 * wobble < 1.0


KNEE_CLASSES = ("background", "femur", "femoral_cartilage", "tibia", "tibial_cartilage")


def knee_case(shape: tuple[int, int, int], seed: int, index: int, shell: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A procedural knee: image ``(1, *shape)`` and label with the classes of :data:`KNEE_CLASSES`.

    Two "bones" (ellipsoids above and below a joint line along axis 0, a gap of a few voxels
    between them) each carry a thin "cartilage" shell (``shell`` voxels) on the surface facing the
    joint, as cartilage sits on the articular surfaces of femur and tibia (SKI10's four labels).
    Cartilage is bright, bone mid-grey (a PD-weighted look), with the bias field and noise of
    :func:`synthetic_case`. Bones end inside the volume along the last (slice) axis, so some slices
    hold no object.
    """
    rng = np.random.default_rng([seed, index, 7])
    rows = np.arange(shape[0], dtype=np.float32).reshape(-1, 1, 1)
    joint = rng.uniform(0.45, 0.55) * shape[0]
    gap = rng.uniform(1.5, 2.5) + shell
    label = np.zeros(shape, dtype=np.uint8)
    for bone, cart, side in ((1, 2, -1), (3, 4, 1)):
        ry = rng.uniform(0.28, 0.36) * shape[0]
        centre = [joint + side * (gap + ry), rng.uniform(0.42, 0.58) * shape[1], rng.uniform(0.42, 0.58) * shape[2]]
        radii = [ry, rng.uniform(0.28, 0.36) * shape[1], rng.uniform(0.25, 0.33) * shape[2]]
        body = _ellipsoid(shape, centre, radii, rng)
        near = ndimage.binary_dilation(body, iterations=shell) & ~body
        facing = (rows - centre[0]) * -side > 0  # the half of the shell towards the joint line
        label[body] = bone
        label[near & facing & (label == 0)] = cart
    means = np.array([0.15, 0.45, 0.9, 0.5, 0.85], dtype=np.float32)
    image = means[label]
    bias = 1.0 + 0.3 * ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=max(shape) / 4) * max(shape) / 4
    image = image * np.clip(bias, 0.7, 1.3) + rng.normal(0.0, 0.08, size=shape).astype(np.float32)
    image = ndimage.gaussian_filter(image, sigma=0.6)
    image = (image - image.mean()) / (image.std() + 1e-6)
    return image[None].astype(np.float32), label


class Synthetic(DatasetAdapter):
    needs_root = False
    classes = ("background", "organ", "lesion")
    shape: tuple[int, ...] = ()
    n_train = 40
    n_test = 10
    labeled_convention = "seeded"

    def __init__(self, root: Any = None, seed: int = 0, n_train: int | None = None, n_test: int | None = None, **options: Any):
        super().__init__(None, **options)
        self.seed = int(seed)
        self.n_train = int(n_train or self.n_train)
        self.n_test = int(n_test or self.n_test)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def case_ids(self) -> list[str]:
        return [f"case_{i:03d}" for i in range(self.n_train + self.n_test)]

    def _case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id not in self._cache:
            self._cache[case_id] = synthetic_case(self.shape, self.seed, int(case_id.split("_")[1]))
        return self._cache[case_id]

    def _read_image(self, case_id: str) -> np.ndarray:
        return self._case(case_id)[0]

    def _read_label(self, case_id: str) -> np.ndarray:
        return self._case(case_id)[1]

    def official_split(self) -> Split:
        ids = self.case_ids()
        return Split(train=ids[: self.n_train], test=ids[self.n_train :], source=f"{self.name} (procedural, seed {self.seed})")


@register_dataset
class Synthetic2D(Synthetic):
    name = "synthetic-2d"
    description = "procedural 2D blobs, 64x64, 2 foreground classes, 40 train / 10 test (no files needed)"
    ndim = 2
    shape = (64, 64)
    default_protocol = "synthetic-2d"


@register_dataset
class Synthetic3D(Synthetic):
    name = "synthetic-3d"
    description = "procedural 3D blobs, 32^3, 2 foreground classes, 16 train / 4 test (no files needed)"
    ndim = 3
    shape = (32, 32, 32)
    n_train = 16
    n_test = 4
    default_protocol = "synthetic-3d"


@register_dataset
class SyntheticKnee3D(Synthetic):
    name = "synthetic-knee-3d"
    description = ("procedural 3D knees, 32^3: femur and tibia with thin cartilage shells facing the joint "
                   "(SKI10's 4 labels), 16 train / 4 test (no files needed)")
    ndim = 3
    shape = (32, 32, 32)
    classes = KNEE_CLASSES
    n_train = 16
    n_test = 4
    default_protocol = "synthetic-knee-3d"

    def _case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id not in self._cache:
            self._cache[case_id] = knee_case(self.shape, self.seed, int(case_id.split("_")[1]))
        return self._cache[case_id]
