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
