"""The uncertainty-aware module (UAM) of IFDL (seed 000, Sec. 2.1-2.3) as small pure functions.

Arrays follow the harness convention: class maps ``(K, *spatial)``, volumes ``(*spatial)``, the
slice axis is a spatial axis (``-1``: the LA/UA-MT slice axis). Nothing here sees a label: every
input is a network's output.

- Eq. 1: ``U = 1/N sum_n (Y_n - mu)^2`` over N MC-dropout passes (:func:`pass_moments`), per class
  of the softmax.
- Confidence ``C = 1 - U`` (:func:`confidence`), literally: the variance of values in [0, 1] is at
  most 0.25, so C is in [0.75, 1]. Normalising U (by 0.25 or by its maximum) changes no key frame
  (Eq. 2's argmax of an affine map of U is the same), only Eq. 4's mask, and there it was too
  strict to leave any mask: MC dropout of the protocols' VNet (Dropout3d p 0.5 before the head)
  gives variances around 0.15 on foreground voxels of mean probability 0.57 (measured on the
  synthetic knees), i.e. a normalised confidence of 0.4.
- Eq. 2 key frames: in every block of M = 3 consecutive slices the slice with the largest
  ``sum C`` (:func:`key_frames`), with C averaged over the classes (:func:`frame_confidence`).
  Without the UAM (ablation, l.134): every M-th slice (:func:`fixed_key_frames`).
- Eq. 3-4: ``C_bar_T = sum_t w_t C_t``, ``w_t = (1 - a) a^(T - t) / (1 - a^T)`` (:func:`history_weights`,
  which sum to 1), mask ``C_bar_T >= 0.5`` per semantic label (l.83). ``1 - U`` alone is >= 0.75
  everywhere, so the mask would be the whole volume; the map accumulated per label l is the
  label's *confident foreground* ``C_{t,l} = mu_{t,l} (1 - U_{t,l})`` (:func:`label_confidence`),
  in [0, 1] and >= 0.5 only where the network predicts l (mu_l >= 0.5 at least) and its passes
  agree.
- Prompts per connected component (l.79, 83): each 3D connected component of a label's mask is one
  object tracked through the volume; on every key frame it crosses it gets a box (bones) or
  positive/negative points (cartilage) (:func:`object_prompts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from ..foundation.base import Prompts, box_from_mask
from ..foundation.prompts import _negative_candidates, _sample

PromptKind = Literal["box", "points"]
PROMPT_KINDS: tuple[str, ...] = ("box", "points")


def pass_moments(samples: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``mu`` and variance ``U`` (Eq. 1, ``1/N``, not ``1/(N-1)``) of N stochastic passes.

    Streamed (sums of values and squares in float64), so N whole-volume softmax maps never need
    to be held at once.
    """
    total = squares = None
    n = 0
    for sample in samples:
        x = np.asarray(sample, dtype=np.float64)
        total = x.copy() if total is None else total + x
        squares = x * x if squares is None else squares + x * x
        n += 1
    if n == 0:
        raise ValueError("Eq. 1 needs at least one pass")
    mean = total / n
    variance = np.maximum(squares / n - mean * mean, 0.0)
    return mean.astype(np.float32), variance.astype(np.float32)


def confidence(variance: np.ndarray) -> np.ndarray:
    """``C = 1 - U`` (Eq. 2's definition; in [0.75, 1] for variances of probabilities, see the module docstring)."""
    return (1.0 - np.asarray(variance, dtype=np.float32)).astype(np.float32)


def frame_confidence(variance: np.ndarray) -> np.ndarray:
    """The voxel confidence of Eq. 2: the class-mean of :func:`confidence` of ``(K, *spatial)`` variances."""
    return confidence(variance).mean(0)


def label_confidence(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Per foreground label l, ``C_l = mu_l (1 - U_l)``: ``(K - 1, *spatial)`` in [0, 1]."""
    return (np.asarray(mean, dtype=np.float32)[1:] * confidence(np.asarray(variance)[1:])).astype(np.float32)


def key_frames(conf: np.ndarray, block: int = 3, axis: int = -1) -> list[int]:
    """Eq. 2: in each block of ``block`` consecutive slices along ``axis``, the slice with the largest sum of ``conf``.

    ``conf`` is ``(*spatial)``; the last block may be shorter; ties go to the first slice of the block.
    """
    if block < 1:
        raise ValueError(f"block size M must be >= 1, got {block}")
    conf = np.asarray(conf, dtype=np.float64)
    sums = np.moveaxis(conf, axis, 0).reshape(conf.shape[axis], -1).sum(1)
    return [start + int(np.argmax(sums[start:start + block])) for start in range(0, len(sums), block)]


def fixed_key_frames(n_slices: int, block: int = 3) -> list[int]:
    """The UAM ablation's rule (l.134, SAM2's usual practice): every ``block``-th slice from the first."""
    if block < 1:
        raise ValueError(f"block size M must be >= 1, got {block}")
    return list(range(0, n_slices, block))


def history_weights(rounds: int, alpha: float = 0.5) -> np.ndarray:
    """``w_t = (1 - a) a^(T - t) / (1 - a^T)`` for t = 1..T (Eq. 3): the latest round weighs most; sums to 1."""
    if rounds < 1:
        raise ValueError(f"Eq. 3 needs at least one round, got {rounds}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    t = np.arange(1, rounds + 1, dtype=np.float64)
    return (1 - alpha) * alpha ** (rounds - t) / (1 - alpha**rounds)


def accumulated_confidence(history: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """``C_bar_T = sum_t w_t C_t`` over the confidence maps of rounds 1..T (oldest first)."""
    weights = history_weights(len(history), alpha)
    out = np.zeros(np.shape(history[0]), dtype=np.float64)
    for w, c in zip(weights, history):
        out += w * np.asarray(c, dtype=np.float64)
    return out.astype(np.float32)


def label_masks(accumulated: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Eq. 4: ``I_mask = C_bar_T >= threshold`` (per label for ``(K - 1, *spatial)`` input)."""
    return np.asarray(accumulated) >= threshold


def deepest_point(piece: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel of a 2D region farthest from its boundary (a click deep inside a thin structure)."""
    distance = ndimage.distance_transform_edt(np.pad(piece, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(col), float(row)


def slice_prompt(mask2d: np.ndarray, kind: PromptKind, n_neg: int = 1, rng: np.random.Generator | None = None,
                 neg_box_margin: float = 0.25, neg_min_distance: int = 2) -> Prompts:
    """The prompt of one object on one key frame, from its 2D cross-section ``mask2d``.

    ``box``: the tight box of the cross-section (all its 2D pieces: one object, one box).
    ``points``: one positive click at the deepest pixel of every 2D piece, and ``n_neg`` negative
    clicks among pixels outside the mask, near its box, at least ``neg_min_distance`` away from it.
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    if not mask2d.any():
        return Prompts()
    if kind == "box":
        return Prompts(box=box_from_mask(mask2d))
    if kind != "points":
        raise ValueError(f"prompt kind {kind!r}; expected one of {', '.join(PROMPT_KINDS)}")
    pieces, count = ndimage.label(mask2d)
    positives = np.array([deepest_point(pieces == i) for i in range(1, count + 1)], dtype=np.float32)
    rng = rng if rng is not None else np.random.default_rng(0)
    candidates = _negative_candidates(~mask2d, mask2d, box_from_mask(mask2d), True, neg_box_margin, neg_min_distance)
    negatives = _sample(candidates, n_neg, rng)
    points = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(len(positives), np.int64), np.zeros(len(negatives), np.int64)])
    return Prompts(points=points, point_labels=labels)


def object_prompts(mask3d: np.ndarray, frames: Sequence[int], kind: PromptKind, axis: int = -1, n_neg: int = 1,
                   rng: np.random.Generator | None = None, min_fraction: float = 0.0) -> list[dict[int, Prompts]]:
    """Per 3D connected component of ``mask3d`` (full connectivity), its prompts on the key ``frames`` it crosses.

    One dict per component (an object to propagate), slice index -> :class:`Prompts`; a component
    that crosses no key frame gets no entry (nothing to prompt it with), nor does one smaller than
    ``min_fraction`` of the largest component (0: every component, the paper's "every connective area").
    """
    mask3d = np.asarray(mask3d, dtype=bool)
    structure = ndimage.generate_binary_structure(3, 3)
    components, count = ndimage.label(mask3d, structure=structure)
    if count == 0:
        return []
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    kept = set(np.flatnonzero(sizes >= max(1, min_fraction * sizes.max())).tolist())
    slices = np.moveaxis(components, axis, 0)
    rng = rng if rng is not None else np.random.default_rng(0)
    per_object: dict[int, dict[int, Prompts]] = {}
    for f in frames:
        for label in np.unique(slices[f]).tolist():  # only the components this key frame crosses
            if label in kept:
                per_object.setdefault(label, {})[int(f)] = slice_prompt(slices[f] == label, kind, n_neg, rng)
    return [per_object[label] for label in sorted(per_object)]


def fuse_label_probabilities(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(K - 1, *spatial)`` per-label foreground probabilities -> a label map (0 = background).

    A voxel takes the label of highest probability when that probability exceeds ``threshold``.
    """
    probs = np.asarray(probs)
    best = probs.argmax(0)
    return np.where(probs.max(0) > threshold, best + 1, 0).astype(np.uint8)


def parse_prompt_kinds(text: str, n_foreground: int) -> list[str]:
    """``'box'`` (every label) or one kind per foreground label, comma-separated (``'box,points,box,points'``)."""
    kinds = [k.strip() for k in str(text).split(",") if k.strip()]
    bad = [k for k in kinds if k not in PROMPT_KINDS]
    if bad or not kinds:
        raise ValueError(f"prompt kinds {text!r}: expected {' or '.join(PROMPT_KINDS)} per foreground label")
    if len(kinds) == 1:
        return kinds * n_foreground
    if len(kinds) != n_foreground:
        raise ValueError(f"prompt kinds {text!r}: {len(kinds)} kinds for {n_foreground} foreground label(s); "
                         "expected one kind, or one per foreground label")
    return kinds


def kinds_from_class_names(names: Sequence[str]) -> list[str]:
    """Prompt kinds of the foreground classes (``names[1:]``) read from their names: ``points`` for a
    cartilage (thin, irregular: l.83), ``box`` for anything else (bones, organs, the LA)."""
    return ["points" if "cartilage" in name.lower() or name.lower().startswith("cart") else "box" for name in names[1:]]
