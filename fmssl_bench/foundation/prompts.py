"""Prompts for a generalist built from a specialist's *predictions* (never from ground truth).

Every function takes probabilities (and optionally an uncertainty map), so labels cannot leak
into the prompts of unlabeled images.

Recipe for one 2D foreground-probability map (:func:`prompts_from_probability`):

- foreground = ``prob > threshold``; "confident" = ``uncertainty <= max_uncertainty`` (all pixels
  when either is ``None``);
- target region = the largest connected foreground component (``region="largest"``, the usual
  single-object SAM prompt) or all foreground (``region="union"``, for fragmented structures);
- positive points: random among the *core* of the confident target, i.e. pixels whose distance
  to the region boundary is at least ``core_fraction`` of the largest such distance, so clicks
  sit deep inside the object rather than on its uncertain rim;
- negative points: random among confident background pixels (``prob <= 1 - threshold``) at least
  ``neg_min_distance`` pixels away from the foreground; with ``neg_near=True`` they are drawn
  from the box grown by ``neg_box_margin`` of its size first (hard negatives next to the object);
- box: tight bounding box of the target region grown by ``box_margin`` pixels;
- empty :class:`Prompts` when no confident foreground exists.

Sampling is deterministic: ``rng=None`` means ``np.random.default_rng(0)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .base import Prompts, box_from_mask

EPS = 1e-8


def uncertainty_entropy(probs: np.ndarray) -> np.ndarray:
    """Normalised predictive entropy in [0, 1] of ``(K, *spatial)`` class probabilities.

    ``K == 1`` is read as a foreground probability map (binary entropy of ``[1 - p, p]``).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[0] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=0)
    k = probs.shape[0]
    p = np.clip(probs, EPS, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0) / np.log(k)
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)


def mc_dropout_uncertainty(samples: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities and their normalised entropy from T stochastic passes (UA-MT style).

    ``samples``: T arrays ``(K, *spatial)`` (softmax outputs with dropout active).
    Returns ``(mean_probs (K, *spatial), uncertainty (*spatial) in [0, 1])``.
    """
    if len(samples) == 0:
        raise ValueError("mc_dropout_uncertainty needs at least one sample")
    mean = np.mean(np.stack([np.asarray(s, dtype=np.float32) for s in samples]), axis=0)
    return mean, uncertainty_entropy(mean)


def _target_region(foreground: np.ndarray, region: str) -> np.ndarray:
    if region == "union":
        return foreground
    if region != "largest":
        raise ValueError(f"region must be 'largest' or 'union', got {region!r}")
    labels, count = ndimage.label(foreground)
    if count <= 1:
        return foreground
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _sample(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct (x, y) points from a boolean map (fewer if it has fewer pixels)."""
    rows, cols = np.nonzero(candidates)
    if n <= 0 or rows.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    chosen = rng.choice(rows.size, size=min(n, rows.size), replace=False)
    return np.stack([cols[chosen], rows[chosen]], axis=1).astype(np.float32)


def _core(region: np.ndarray, core_fraction: float) -> np.ndarray:
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return region & (distance >= core_fraction * distance.max())


def _negative_candidates(
    background: np.ndarray,
    foreground: np.ndarray,
    box: np.ndarray,
    near: bool,
    margin: float,
    min_distance: int,
) -> np.ndarray:
    away = ndimage.distance_transform_edt(~foreground) >= min_distance
    candidates = background & away
    if not near:
        return candidates
    x0, y0, x1, y1 = box.astype(int)
    gy = round(margin * (y1 - y0 + 1)) + min_distance
    gx = round(margin * (x1 - x0 + 1)) + min_distance
    window = np.zeros_like(candidates)
    window[max(y0 - gy, 0) : y1 + gy + 1, max(x0 - gx, 0) : x1 + gx + 1] = True
    near_candidates = candidates & window
    return near_candidates if near_candidates.any() else candidates


def prompts_from_probability(
    prob: np.ndarray,
    uncertainty: np.ndarray | None = None,
    n_pos: int = 1,
    n_neg: int = 0,
    box: bool = False,
    threshold: float = 0.5,
    max_uncertainty: float | None = None,
    rng: np.random.Generator | None = None,
    *,
    region: str = "largest",
    core_fraction: float = 0.5,
    box_margin: int = 0,
    neg_near: bool = True,
    neg_box_margin: float = 0.25,
    neg_min_distance: int = 3,
) -> Prompts:
    """Prompts for one 2D foreground-probability map (recipe in the module docstring)."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2D probability map, got shape {prob.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    confident = np.ones(prob.shape, dtype=bool)
    if uncertainty is not None and max_uncertainty is not None:
        confident = np.asarray(uncertainty) <= max_uncertainty
    foreground = prob > threshold
    target = _target_region(foreground, region)
    positives_from = target & confident
    if not positives_from.any():
        return Prompts()
    bbox = box_from_mask(target, box_margin)
    positives = _sample(_core(positives_from, core_fraction), n_pos, rng)
    background = (prob <= 1.0 - threshold) & ~foreground & confident
    negatives = _sample(
        _negative_candidates(background, foreground, bbox, neg_near, neg_box_margin, neg_min_distance),
        n_neg,
        rng,
    )
    points = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(len(positives), np.int64), np.zeros(len(negatives), np.int64)])
    return Prompts(
        points=points if len(points) else None,
        point_labels=labels if len(points) else None,
        box=bbox if box else None,
    )


def _select_slices(
    areas: np.ndarray,
    mean_uncertainty: np.ndarray | None,
    slices: str | Iterable[int],
    every_k: int,
    n_slices: int,
) -> list[int]:
    """Which slices get prompts; only slices with confident foreground are eligible."""
    eligible = np.flatnonzero(areas > 0)
    if not isinstance(slices, str):
        return [int(i) for i in slices]
    if eligible.size == 0:
        return []
    if slices == "all":
        return eligible.tolist()
    if slices == "every_k":
        return eligible[:: max(every_k, 1)].tolist()
    if slices == "largest":
        return [int(np.argmax(areas))]
    if slices == "middle":
        return [int(eligible[len(eligible) // 2])]
    if slices == "least_uncertain":
        if mean_uncertainty is None:
            raise ValueError("slices='least_uncertain' needs an uncertainty map")
        order = eligible[np.argsort(mean_uncertainty[eligible], kind="stable")]
        return sorted(order[:n_slices].tolist())
    raise ValueError(
        f"slices must be 'all', 'every_k', 'largest', 'middle', 'least_uncertain' or indices, got {slices!r}"
    )


def volume_prompts(
    prob3d: np.ndarray,
    uncertainty3d: np.ndarray | None = None,
    axis: int = -1,
    slices: str | Iterable[int] = "all",
    *,
    every_k: int = 5,
    n_slices: int = 1,
    rng: np.random.Generator | None = None,
    **kwargs,
) -> dict[int, Prompts]:
    """Prompts per slice of a 3D foreground-probability map ``(*spatial)``, keyed by slice index.

    ``axis`` is the slicing axis (same convention as :meth:`Generalist.segment_volume`).
    ``slices``: ``"all"`` slices with confident foreground, ``"every_k"`` (every ``every_k``-th
    of those), ``"largest"`` (the slice with most foreground: the MedSAM key slice),
    ``"middle"`` (middle of the foreground range), ``"least_uncertain"`` (the ``n_slices``
    slices with the lowest mean uncertainty inside the foreground: the uncertainty-aware key
    frames), or explicit indices. Other keyword arguments go to :func:`prompts_from_probability`;
    slices whose prompts come out empty are left out.
    """
    prob3d = np.asarray(prob3d, dtype=np.float32)
    if prob3d.ndim != 3:
        raise ValueError(f"expected a 3D probability map, got shape {prob3d.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    prob = np.moveaxis(prob3d, axis, 0)
    unc = None if uncertainty3d is None else np.moveaxis(np.asarray(uncertainty3d, dtype=np.float32), axis, 0)
    threshold = kwargs.get("threshold", 0.5)
    foreground = prob > threshold
    if unc is not None and kwargs.get("max_uncertainty") is not None:
        foreground &= unc <= kwargs["max_uncertainty"]
    areas = foreground.reshape(len(prob), -1).sum(axis=1)
    mean_unc = None
    if unc is not None:
        pairs = zip(unc, foreground, strict=True)
        mean_unc = np.array([u[f].mean() if f.any() else np.inf for u, f in pairs])
    result: dict[int, Prompts] = {}
    for index in _select_slices(areas, mean_unc, slices, every_k, n_slices):
        prompts = prompts_from_probability(
            prob[index], None if unc is None else unc[index], rng=rng, **kwargs
        )
        if not prompts.is_empty():
            result[index] = prompts
    return result
