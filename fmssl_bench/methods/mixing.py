"""Copy-paste mixing shared by the mixing methods (BCP; any CutMix-style method).

BCP (Bai et al., CVPR 2023; DeepMed-Lab-ECNU/BCP ``context_mask`` in ``BCP_utils.py`` for 3D,
``generate_mask`` in ``ACDC_BCP_train.py`` for 2D) pastes one cuboid (rectangle in 2D) whose sides
are ``int(side * 2/3)`` of the patch, at a random corner, from one image into another. Its mask is
1 *outside* the box and 0 inside, and a mix is ``a * mask + b * (1 - mask)``: ``b``'s box pasted
into ``a``. This module keeps that convention so the formulas read as in the reference:

* :func:`random_box` draws the box (the corner per axis uniform in ``[0, side - size)``, as BCP's
  ``np.random.randint(0, side - size)``; ``[0, 1)`` when the box fills the axis, where BCP fails);
* :func:`box_mask` / :func:`context_mask` make the mask over the spatial axes only (one box for
  the whole batch, as BCP), which broadcasts over images ``(B, C, ...)``, labels ``(B, ...)`` and
  logits alike;
* :func:`mix` composes, exactly (``torch.where``, so integer labels stay integers and no rounding
  enters), and :func:`unmix` recovers both sources from the two complementary mixes.

Randomness comes from the global torch generator unless a ``generator`` is given: the training
loop seeds the global generator per (seed, stage, iteration), so a resumed run redraws the same
boxes.
"""

from __future__ import annotations

from typing import Sequence

import torch

BCP_MASK_RATIO = 2.0 / 3.0
"""BCP's ``mask_ratio``: the pasted box's side over the patch's side, per axis."""


def box_size(shape: Sequence[int], ratio: float = BCP_MASK_RATIO) -> tuple[int, ...]:
    """The box's side per axis: ``int(side * ratio)`` as BCP, at least 1 voxel and at most the side."""
    if not 0 < ratio <= 1:
        raise ValueError(f"box ratio {ratio}: expected a number in (0, 1]")
    return tuple(min(int(s), max(1, int(int(s) * ratio))) for s in shape)


def random_box(shape: Sequence[int], ratio: float = BCP_MASK_RATIO,
               generator: torch.Generator | None = None) -> tuple[slice, ...]:
    """A box of :func:`box_size` at a random position inside a patch of spatial ``shape``.

    The corner along each axis is uniform in ``[0, side - size)`` (BCP's ``randint(0, side -
    size)``), so the box always lies inside the patch.
    """
    sizes = box_size(shape, ratio)
    box = []
    for side, size in zip(shape, sizes):
        corner = int(torch.randint(0, max(int(side) - size, 1), (1,), generator=generator))
        box.append(slice(corner, corner + size))
    return tuple(box)


def box_mask(shape: Sequence[int], box: Sequence[slice], device: torch.device | str | None = None) -> torch.Tensor:
    """BCP's mask over the spatial ``shape``: 1 outside ``box``, 0 inside (``torch.long``)."""
    mask = torch.ones(tuple(int(s) for s in shape), dtype=torch.long, device=device)
    mask[tuple(box)] = 0
    return mask


def context_mask(shape: Sequence[int], ratio: float = BCP_MASK_RATIO, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """BCP's ``context_mask`` (3D) / ``generate_mask`` (2D): :func:`box_mask` of a :func:`random_box`."""
    return box_mask(shape, random_box(shape, ratio, generator), device)


def mix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``a * mask + b * (1 - mask)``: ``a`` where ``mask`` is 1, ``b`` where it is 0 (``b``'s box pasted into ``a``).

    ``mask`` covers the trailing (spatial) axes of ``a`` and ``b`` and broadcasts over the
    leading ones; the result keeps the inputs' dtype, exactly.
    """
    if a.shape != b.shape:
        raise ValueError(f"mix: the two sources differ in shape, {tuple(a.shape)} and {tuple(b.shape)}")
    if tuple(a.shape[a.dim() - mask.dim():]) != tuple(mask.shape):
        raise ValueError(f"mix: mask {tuple(mask.shape)} does not cover the trailing axes of {tuple(a.shape)}")
    return torch.where(mask.bool(), a, b)


def unmix(ab: torch.Tensor, ba: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` from ``ab = mix(a, b, mask)`` and ``ba = mix(b, a, mask)``: the exact inverse of the pair.

    What bidirectional copy-paste relies on: the two mixed images hold every voxel of both
    sources once, so any per-voxel map of the mixes (logits, losses) can be put back per source.
    """
    return mix(ab, ba, mask), mix(ba, ab, mask)
