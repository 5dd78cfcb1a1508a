"""The zero-shot prompt recipes of the seed papers' tables, for the oracle (:mod:`.oracle`).

Each mode prompts a generalist from the *test reference* the way one table of a seed paper did,
and names that table (:data:`RECIPES`), which the oracle records in its summary and the
leaderboard prints beside the row:

- ``points`` (``--per-slice k``): 001 Table I "SAM (kN points)": k positive clicks on every slice
  that contains the target (N = the number of such slices), each slice segmented on its own.
- ``clicks`` (``--clicks k``): 001 Table I "SAM-Med3D (k points)" and 002 Table XIV "SAM-Med3D
  (k clicks)": k corrective clicks, each placed in the larger error region of the current mask
  (:func:`corrective_click`), with the previous mask fed back as the dense mask prompt. The papers
  click in 3D with SAM-Med3D once per volume; no 3D generalist is available here, so a 2D
  generalist gets k clicks per slice that contains the target (per image for 2D data): a
  deviation that gives it more clicks than the table's model, named in the recipe.
- ``keyframes`` (``--every k``): 002 Table XV "SAM 2 / Medical SAM 2, Frequency k", read as
  Medical-SAM2's code does (``prompt_freq``): a click on every k-th slice (slices 0, k, 2k, ...;
  those without the target get none) and propagation to the other slices. SAM 2 generalists
  propagate with their video memory (:meth:`.foundation.sam2.Sam2Generalist.segment_volume`); 2D
  generalists with the MedSAM recipe (a box from the neighbouring slice's mask). The table's text
  says "2, 5 and 10 clicks" instead: the ambiguity is in ``leaderboards/paper/002.csv``.

Clicks are drawn from the reference with a seeded generator per (seed, case, class), as the
``points`` mode's are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..foundation import Generalist, Prompts

THRESHOLD = 0.5


@dataclass(frozen=True)
class Recipe:
    """A zero-shot table's prompting, as a leaderboard note (``{k}``: the mode's count)."""

    table: str
    text: str

    def describe(self, k: int) -> str:
        return f"{self.table}: {self.text.format(k=k)}"


RECIPES: dict[str, Recipe] = {
    "points": Recipe("001 Table I 'SAM (kN points)'", "{k} point(s) on every slice containing the target"),
    "clicks": Recipe("001 Table I 'SAM-Med3D (k points)', 002 Table XIV 'SAM-Med3D (k clicks)'",
                     "{k} corrective click(s) with the previous mask fed back, per slice with a 2D generalist "
                     "(the papers: per volume with SAM-Med3D)"),
    "keyframes": Recipe("002 Table XV 'Frequency k' (Medical-SAM2 reading)",
                        "a click on every {k}-th slice, propagated to the others"),
}


def corrective_click(current: np.ndarray, target: np.ndarray,
                     rng: np.random.Generator) -> tuple[tuple[int, int], bool] | None:
    """The next click for a 2D mask ``current`` against ``target``: ``((x, y), positive)``, None when
    they agree.

    RITM / SAM-Med3D style (``get_next_click3D_torch_2``, our reading): the error regions are the
    missed (false negative) and the extra (false positive) pixels; the one reaching deeper from
    its border (largest Euclidean distance transform, the image border counting as border) gets
    the click, positive for a missed region; the click is a random pixel of it at more than half
    that depth, so it lands inside the error rather than on its rim.
    """
    current, target = np.asarray(current, bool), np.asarray(target, bool)
    missed, extra = target & ~current, current & ~target
    if not missed.any() and not extra.any():
        return None
    depth_missed, depth_extra = _depth(missed), _depth(extra)
    positive = depth_missed.max() >= depth_extra.max()
    depth = depth_missed if positive else depth_extra
    rows, cols = np.nonzero(depth > depth.max() / 2)
    i = int(rng.integers(rows.size))
    return (int(cols[i]), int(rows[i])), bool(positive)


def _depth(region: np.ndarray) -> np.ndarray:
    """Distance of each pixel of ``region`` to the nearest pixel outside it (outside the image too)."""
    if not region.any():
        return np.zeros(region.shape)
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def segment_with_clicks(generalist: Generalist, image01: np.ndarray, ref2d: np.ndarray, n_classes: int,
                        n_clicks: int, rngs: dict[int, np.random.Generator]) -> tuple[np.ndarray, int]:
    """Label map of one normalised ``(3, H, W)`` image after up to ``n_clicks`` corrective clicks per
    class present in ``ref2d``, and the clicks used (fewer when the mask already equals the reference).

    Every click re-decodes with all clicks so far and the previous probabilities as the mask prompt
    (SAM's interactive protocol); the image is encoded once.
    """
    pred = np.zeros(ref2d.shape, dtype=np.uint8)
    present = [label for label in range(1, n_classes) if (ref2d == label).any()]
    if not present:
        return pred, 0
    embedding = generalist.encode_normalised(image01)
    best = np.zeros(ref2d.shape, dtype=np.float32)
    used = 0
    for label in present:
        target = ref2d == label
        points: list[tuple[int, int]] = []
        positives: list[int] = []
        prob = np.zeros(ref2d.shape, dtype=np.float32)
        for _ in range(n_clicks):
            click = corrective_click(prob > THRESHOLD, target, rngs[label])
            if click is None:
                break
            points.append(click[0])
            positives.append(int(click[1]))
            feedback = prob if len(points) > 1 else None  # the first click has no previous mask
            prob = generalist.segment(embedding, Prompts(points=np.asarray(points), point_labels=np.asarray(positives),
                                                         mask=feedback))
            used += 1
        take = (prob > THRESHOLD) & (prob > best)
        pred[take] = label
        best[take] = prob[take]
    return pred, used


def keyframe_prompts(ref3d: np.ndarray, label: int, every: int, n_points: int,
                     rng: np.random.Generator) -> dict[int, Prompts]:
    """Clicks on slices 0, k, 2k, ... (last axis) that contain ``label``: ``n_points`` random positive
    pixels of the reference each (Medical-SAM2's ``random_click``), keyed by slice index."""
    prompts = {}
    for k in range(0, ref3d.shape[-1], every):
        mask = ref3d[..., k] == label
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask)
        chosen = rng.choice(rows.size, size=min(n_points, rows.size), replace=False)
        prompts[k] = Prompts(points=np.stack([cols[chosen], rows[chosen]], axis=1))
    return prompts


def predict_keyframes(generalist: Generalist, image: np.ndarray, ref: np.ndarray, n_classes: int, every: int,
                      n_points: int, rngs: dict[int, np.random.Generator]) -> tuple[np.ndarray, int]:
    """Label map of a ``(C, *spatial)`` volume from key-frame clicks and propagation, and the key frames prompted."""
    pred = np.zeros(ref.shape, dtype=np.uint8)
    best = np.zeros(ref.shape, dtype=np.float32)
    used = 0
    for label in range(1, n_classes):
        prompts = keyframe_prompts(ref, label, every, n_points, rngs[label])
        if not prompts:
            continue
        used += len(prompts)
        prob = generalist.segment_volume(image, prompts, axis=-1, propagate=True)
        take = (prob > THRESHOLD) & (prob > best)
        pred[take] = label
        best[take] = prob[take]
    return pred, used
