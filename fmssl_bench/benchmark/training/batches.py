"""Batch providers: what one training iteration sees.

:class:`TwoStreamPatches` is the default (UA-MT semantics, see :mod:`.augment`); methods pass
another provider to ``ctx.train(..., batches=...)`` when a stage trains on something else (a
stitched canvas, a view grown per round). Every provider draws its randomness from the ``key``
the loop gives it (seed + a hash of the stage name) and the iteration, so resumed stages redraw
exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ...api import Batch
from ..protocol import TrainConfig
from ..views import LabeledView, UnlabeledView
from .augment import augment, stream_indices


def stage_key(stage: str) -> int:
    """A stable 32-bit number for a stage name (sha256; ``round12`` and ``round21`` differ)."""
    return int.from_bytes(hashlib.sha256(stage.encode()).digest()[:4], "little")


def to_device(arrays: Sequence[np.ndarray], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).to(device, dtype)


@dataclass
class TwoStreamPatches:
    """Labeled and unlabeled streams of augmented patches (``labeled_bs`` + the rest of the batch)."""

    labeled: LabeledView
    unlabeled: UnlabeledView | None
    config: TrainConfig
    labeled_bs: int
    unlabeled_bs: int
    device: torch.device

    def __call__(self, iteration: int, key: Sequence[int]) -> Batch:
        cfg, key = self.config, list(key)
        li = stream_indices(len(self.labeled), self.labeled_bs, iteration * self.labeled_bs, key + [1])
        images_l, labels_l, transforms_l = [], [], []
        for slot, i in enumerate(li):
            rng = np.random.default_rng(key + [iteration, slot])
            image, label, transform = augment(self.labeled.images[i], self.labeled.labels[i], cfg.augment, cfg.patch, rng)
            images_l.append(image)
            labels_l.append(label)
            transforms_l.append(transform)
        images_u, ids_u, transforms_u = [], [], []
        if self.unlabeled is not None and self.unlabeled_bs > 0 and len(self.unlabeled):
            ui = stream_indices(len(self.unlabeled), self.unlabeled_bs, iteration * self.unlabeled_bs, key + [2])
            for slot, i in enumerate(ui):
                rng = np.random.default_rng(key + [iteration, 1000 + slot])
                image, _, transform = augment(self.unlabeled.images[i], None, cfg.augment, cfg.patch, rng)
                images_u.append(image)
                transforms_u.append(transform)
                ids_u.append(self.unlabeled.ids[i])
        return Batch(
            image_l=to_device(images_l, torch.float32, self.device),
            label_l=to_device(labels_l, torch.long, self.device),
            image_u=to_device(images_u, torch.float32, self.device) if images_u else None,
            ids_l=[self.labeled.ids[i] for i in li],
            ids_u=ids_u,
            transforms_l=transforms_l,
            transforms_u=transforms_u,
        )
