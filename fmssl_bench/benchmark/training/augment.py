"""Training-time sampling and augmentation with UA-MT semantics, stateless per iteration.

Every random choice at iteration ``i`` derives from ``(seed, i)``, so a resumed run draws exactly
the batches an uninterrupted run would have drawn, without saving sampler state.

- Two streams (UA-MT's ``TwoStreamBatchSampler``): the labeled stream walks through per-epoch
  permutations of the labeled cases, the unlabeled stream through permutations of the unlabeled
  ones, ``labeled_bs`` and ``batch_size - labeled_bs`` cases per batch. Unlike UA-MT the streams are
  treated as endless (no dropped remainder; at an epoch boundary a batch may hold one case twice);
  with fewer labeled cases than ``labeled_bs`` the protocol's ``train.short_labeled`` decides
  (:func:`.batches.batch_split`).
- ``rot_flip``: random ``rot90`` (k in 0..3) in the first two spatial axes, then a flip along one of
  them (UA-MT ``RandomRotFlip``).
- ``random_crop``: UA-MT ``RandomCrop``: zero-pad by ``(patch - size) // 2 + 3`` where a side is not
  larger than the patch, then crop at a uniform start in ``[0, size - patch)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def stream_indices(n: int, count: int, start: int, rng_key: Sequence[int]) -> list[int]:
    """Items ``start .. start+count-1`` of an endless concatenation of seeded permutations of ``range(n)``."""
    out = []
    for position in range(start, start + count):
        epoch, offset = divmod(position, n)
        out.append(int(np.random.default_rng([*rng_key, epoch]).permutation(n)[offset]))
    return out


@dataclass
class Transform:
    """The spatial operations applied to one sample, replayable on other maps and invertible.

    Methods that compute something per *case* (a foundation model's mask of the un-augmented
    image, a pseudo-label) bring it into the frame of the augmented patch with :meth:`apply`, and
    bring patch predictions back to the case frame with :meth:`invert`.
    """

    shape: tuple[int, ...]
    ops: list[tuple] = field(default_factory=list)

    def apply(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """Apply to ``array`` whose last ``len(shape)`` axes are the case's spatial axes."""
        nd = len(self.shape)
        lead = array.ndim - nd
        for op, arg in self.ops:
            if op == "rot":
                array = np.rot90(array, arg, axes=(lead, lead + 1))
            elif op == "flip":
                array = np.flip(array, axis=lead + arg)
            elif op == "pad":
                array = np.pad(array, [(0, 0)] * lead + [(q, q) for q in arg], constant_values=fill)
            elif op == "crop":
                starts, size = arg
                array = array[(Ellipsis,) + tuple(slice(a, a + p) for a, p in zip(starts, size))]
        return np.ascontiguousarray(array)

    def invert(self, array: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Map a patch-frame ``array`` back to the case frame; voxels the patch did not cover get ``fill``."""
        nd = len(self.shape)
        lead = array.ndim - nd
        shapes = [self.shape]
        for op, arg in self.ops:  # spatial shape before each op, to undo crops
            shape = shapes[-1]
            if op == "rot" and arg % 2:
                shape = (shape[1], shape[0], *shape[2:])
            elif op == "pad":
                shape = tuple(s + 2 * q for s, q in zip(shape, arg))
            elif op == "crop":
                shape = tuple(arg[1])
            shapes.append(shape)
        array = array.astype(np.float32, copy=False)
        for (op, arg), before in zip(reversed(self.ops), reversed(shapes[:-1])):
            if op == "rot":
                array = np.rot90(array, -arg, axes=(lead, lead + 1))
            elif op == "flip":
                array = np.flip(array, axis=lead + arg)
            elif op == "pad":
                array = array[(Ellipsis,) + tuple(slice(q, s - q) for q, s in zip(arg, array.shape[lead:]))]
            elif op == "crop":
                canvas = np.full(array.shape[:lead] + tuple(before), fill, dtype=np.float32)
                canvas[(Ellipsis,) + tuple(slice(a, a + p) for a, p in zip(arg[0], arg[1]))] = array
                array = canvas
        return np.ascontiguousarray(array)


def rot_flip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator,
             record: Transform | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    if record is not None:
        record.ops += [("rot", k), ("flip", axis)]
    image = np.flip(np.rot90(image, k, axes=(1, 2)), axis=axis + 1)
    if label is not None:
        label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis)
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray | None, patch: Sequence[int], rng: np.random.Generator,
                record: Transform | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    spatial = image.shape[1:]
    if any(s <= p for s, p in zip(spatial, patch)):
        pads = [max((p - s) // 2 + 3, 0) for s, p in zip(spatial, patch)]
        image = np.pad(image, [(0, 0)] + [(q, q) for q in pads])
        if label is not None:
            label = np.pad(label, [(q, q) for q in pads])
        spatial = image.shape[1:]
        if record is not None:
            record.ops.append(("pad", tuple(pads)))
    starts = [int(rng.integers(0, s - p)) if s > p else 0 for s, p in zip(spatial, patch)]
    if record is not None:
        record.ops.append(("crop", (tuple(starts), tuple(patch))))
    region = tuple(slice(a, a + p) for a, p in zip(starts, patch))
    image = image[(slice(None),) + region]
    return image, (label[region] if label is not None else None)


def augment(image: np.ndarray, label: np.ndarray | None, ops: Sequence[str], patch: Sequence[int],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, Transform]:
    """Apply the protocol's augmentation list in order; returns the replayable transform too."""
    record = Transform(shape=tuple(image.shape[1:]))
    for op in ops:
        if op == "rot_flip":
            image, label = rot_flip(image, label, rng, record)
        elif op == "random_crop":
            image, label = random_crop(image, label, patch, rng, record)
    image = np.ascontiguousarray(image, dtype=np.float32)
    return image, (np.ascontiguousarray(label) if label is not None else None), record


KNOWN_AUGMENTATIONS = ("rot_flip", "random_crop")
