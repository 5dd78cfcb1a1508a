"""SFR's stitching F_C (Li et al., seed 002, Eq. 1): the slices of a volume as one large 2D image.

A volume ``(..., H, W, D)`` becomes a canvas ``(..., d*H, d*W)`` with ``d = ceil(sqrt(D))``: slice
``z`` goes to grid row ``z // d`` and column ``z % d`` (row-major, slice order kept: the paper's
Fig. 4 shows shuffling hurts), and the ``d*d - D`` cells after the last slice are zeros.
:func:`unstitch` (F_C^-1) takes the cells back in the same order and drops the filler, so
``unstitch(stitch(v), D) == v`` exactly, for any H, W and any D (square or not).

2D data sets have no slices; :func:`stitch_images` groups ``g*g`` images of one size into a
canvas the same way (stacked as the "slices" of a pseudo-volume). That grouping extends the
paper, which stitches 3D volumes only.

:class:`StitchedSegmenter` wraps a promptless fine-tunable SAM (:mod:`.trainable`) as a network of
the harness: 3D patches ``(B, C, H, W, D)`` or 2D images ``(B, C, H, W)`` in, class logits of the
same spatial shape out, so the shared loop trains it and the shared sliding window infers with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .trainable import TrainableGeneralist


def grid_side(depth: int) -> int:
    """``d = ceil(sqrt(D))``: the side of the smallest square grid holding ``D`` slices."""
    if depth < 1:
        raise ValueError(f"cannot stitch {depth} slices")
    return math.isqrt(depth - 1) + 1


def stitch(volume: torch.Tensor, side: int | None = None) -> torch.Tensor:
    """F_C: ``(..., H, W, D)`` -> ``(..., side*H, side*W)`` (default side ``grid_side(D)``), zero-filled."""
    *lead, h, w, depth = volume.shape
    side = grid_side(depth) if side is None else side
    if side * side < depth:
        raise ValueError(f"a {side}x{side} grid cannot hold {depth} slices")
    padded = F.pad(volume, (0, side * side - depth))  # zeros after the last slice
    cells = padded.reshape(*lead, h, w, side, side)  # (..., H, W, row, col): slice z = row * side + col
    n = len(lead)
    order = list(range(n)) + [n + 2, n, n + 3, n + 1]  # (..., row, H, col, W)
    return cells.permute(order).reshape(*lead, side * h, side * w)


def unstitch(canvas: torch.Tensor, depth: int, side: int | None = None) -> torch.Tensor:
    """F_C^-1: ``(..., side*H, side*W)`` -> ``(..., H, W, depth)``; the filler cells are dropped."""
    side = grid_side(depth) if side is None else side
    *lead, big_h, big_w = canvas.shape
    if big_h % side or big_w % side:
        raise ValueError(f"canvas {big_h}x{big_w} is not a {side}x{side} grid")
    h, w = big_h // side, big_w // side
    n = len(lead)
    cells = canvas.reshape(*lead, side, h, side, w)
    order = list(range(n)) + [n + 1, n + 3, n, n + 2]  # (..., H, W, row, col)
    return cells.permute(order).reshape(*lead, h, w, side * side)[..., :depth]


def stitch_images(images: torch.Tensor, side: int) -> torch.Tensor:
    """2D grouping: ``(N, C, H, W)`` with ``N <= side*side`` -> one canvas ``(C, side*H, side*W)``."""
    if images.shape[0] > side * side:
        raise ValueError(f"{images.shape[0]} images do not fit a {side}x{side} grid")
    return stitch(images.movedim(0, -1), side)


def unstitch_images(canvas: torch.Tensor, count: int, side: int) -> torch.Tensor:
    """Inverse of :func:`stitch_images`: ``(C, side*H, side*W)`` -> ``(count, C, H, W)``."""
    return unstitch(canvas, count, side).movedim(-1, 0)


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max to [0, 1] over channels and space; 1 channel repeated to SAM's 3."""
    lo = x.flatten(1).amin(1).view(-1, *[1] * (x.ndim - 1))
    hi = x.flatten(1).amax(1).view(-1, *[1] * (x.ndim - 1))
    x = (x - lo) / (hi - lo).clamp_min(1e-8)
    if x.shape[1] == 1:
        return x.expand(-1, 3, *x.shape[2:])
    if x.shape[1] != 3:
        raise ValueError(f"SAM takes 1- or 3-channel images, got {x.shape[1]} channels")
    return x


class StitchedSegmenter(nn.Module):
    """A promptless :class:`TrainableGeneralist` behind the network interface of the harness.

    3D: each patch ``(C, H, W, D)`` is stitched into one canvas (``d = ceil(sqrt(D))``). 2D: the
    batch is cut into groups of ``group*group`` images, each group one canvas (the last group
    may hold fewer). The canvas goes through SAM's input recipe (resized to its input size,
    normalised) and the promptless decoder; the logits at canvas resolution are unstitched.
    The intensities of each patch (3D: one mapping for all its slices) or image (2D) are min-max
    scaled to [0, 1] before stitching, so the zero filler cells are black. Output: ``n_classes`` logits per voxel, a zero background logit
    before SAM's per-class foreground logits (with two classes the softmax is SAM's sigmoid).
    """

    def __init__(self, sam: TrainableGeneralist, ndim: int, group: int = 2) -> None:
        super().__init__()
        if not sam.promptless:
            raise ValueError("StitchedSegmenter needs a promptless TrainableGeneralist (make_trainable(promptless=True))")
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if group < 1:
            raise ValueError(f"group must be >= 1, got {group}")
        self.sam = sam
        self.ndim = ndim
        self.group = group

    def canvas_side(self, depth: int) -> int:
        """Grid side of a canvas: ``ceil(sqrt(D))`` slices in 3D, ``group`` images in 2D."""
        return grid_side(depth) if self.ndim == 3 else self.group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.ndim + 2:
            raise ValueError(f"expected a {self.ndim}D batch (B, C, *spatial), got shape {tuple(x.shape)}")
        if self.ndim == 3:
            canvases = stitch(unit_range(x))  # scaled first: the filler cells stay black (0)
            fg = self.sam(canvases)  # (B, K-1, d*H, d*W)
            fg = unstitch(fg, x.shape[-1])
        else:
            per = self.group * self.group
            parts = []
            for start in range(0, x.shape[0], per):
                chunk = x[start:start + per]
                canvas = stitch_images(unit_range(chunk), self.group)[None]
                parts.append(unstitch_images(self.sam(canvas)[0], chunk.shape[0], self.group))
            fg = torch.cat(parts)
        return torch.cat([torch.zeros_like(fg[:, :1]), fg], 1)

    def train(self, mode: bool = True) -> StitchedSegmenter:
        super().train(mode)
        self.sam.train(mode)  # keeps the frozen encoders in eval mode
        return self

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """What is trained only (the source SAM checkpoint is not copied into every checkpoint)."""
        return self.sam.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        self.sam.load_trainable_state(state)
        return torch.nn.modules.module._IncompatibleKeys([], [])


__all__ = ["StitchedSegmenter", "grid_side", "stitch", "stitch_images", "unit_range", "unstitch", "unstitch_images"]
