"""Training-time sampling and augmentation with UA-MT semantics, stateless per iteration.

Every random choice at iteration ``i`` derives from ``(seed, i)``, so a resumed run draws exactly
the batches an uninterrupted run would have drawn, without saving sampler state.

- Two streams (UA-MT's ``TwoStreamBatchSampler``): the labeled stream walks through per-epoch
  permutations of the labeled cases, the unlabeled stream through permutations of the unlabeled
  ones, ``labeled_bs`` and ``batch_size - labeled_bs`` cases per batch. Unlike UA-MT the streams are
  treated as endless (no dropped remainder), so a budget smaller than ``labeled_bs`` still works.
- ``rot_flip``: random ``rot90`` (k in 0..3) in the first two spatial axes, then a flip along one of
  them (UA-MT ``RandomRotFlip``).
- ``random_crop``: UA-MT ``RandomCrop``: zero-pad by ``(patch - size) // 2 + 3`` where a side is not
  larger than the patch, then crop at a uniform start in ``[0, size - patch)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def stream_indices(n: int, count: int, start: int, rng_key: Sequence[int]) -> list[int]:
    """Items ``start .. start+count-1`` of an endless concatenation of seeded permutations of ``range(n)``."""
    out = []
    for position in range(start, start + count):
        epoch, offset = divmod(position, n)
        out.append(int(np.random.default_rng([*rng_key, epoch]).permutation(n)[offset]))
    return out


def rot_flip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k, axes=(1, 2)), axis=axis + 1)
    if label is not None:
        label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis)
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray | None, patch: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    spatial = image.shape[1:]
    if any(s <= p for s, p in zip(spatial, patch)):
        pads = [max((p - s) // 2 + 3, 0) for s, p in zip(spatial, patch)]
        image = np.pad(image, [(0, 0)] + [(q, q) for q in pads])
        if label is not None:
            label = np.pad(label, [(q, q) for q in pads])
        spatial = image.shape[1:]
    starts = [int(rng.integers(0, s - p)) if s > p else 0 for s, p in zip(spatial, patch)]
    region = tuple(slice(a, a + p) for a, p in zip(starts, patch))
    image = image[(slice(None),) + region]
    return image, (label[region] if label is not None else None)


def augment(image: np.ndarray, label: np.ndarray | None, ops: Sequence[str], patch: Sequence[int],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply the protocol's augmentation list in order (unknown names are rejected by the loop)."""
    for op in ops:
        if op == "rot_flip":
            image, label = rot_flip(image, label, rng)
        elif op == "random_crop":
            image, label = random_crop(image, label, patch, rng)
    image = np.ascontiguousarray(image, dtype=np.float32)
    return image, (np.ascontiguousarray(label) if label is not None else None)


KNOWN_AUGMENTATIONS = ("rot_flip", "random_crop")
