"""SamDSK's optimal matching of segmentation proposals to probability maps (seed 003, Eq. 1-4).

For one image: ``K`` binary proposals ``s_k`` (SAM's automatic masks) and one probability map
``p_c`` per foreground class of the specialist. Find binary ``z_{c,k}`` maximising

    sum_c IoU(p_c, tau(sum_k z_{c,k} s_k))                         (Eq. 1)
    s.t. sum_c z_{c,k} <= 1                                        (Eq. 2: a proposal serves one class)
         v_lower_c <= sum_k z_{c,k} <= v_upper_c                   (Eq. 3: image-level RoI counts)

``tau`` clips at 1, so a class's annotation is the *union* of its proposals. The paper calls Eq. 1-2
a bipartite matching, which it is only when every ``v_upper_c = 1``; with unions (``v_upper > 1``)
the objective is not a sum over edges, so this module solves it exactly by branch and bound.

Soft IoU (the paper does not define IoU between a probability map and a binary mask): the fuzzy
Jaccard index ``sum min(p, s) / sum max(p, s)``, which for binary ``s`` is
``I / (sum p + |s| - I)`` with ``I = sum_{s=1} p``. It equals the ordinary IoU when ``p`` is binary.

Which proposals a class may take (a modelling choice the paper leaves open): only those that
overlap its map (``sum_{s=1} p_c > 0``). A proposal with no overlap can only lower the class's IoU;
allowing it would serve merely to meet ``v_lower`` with a region the specialist gives zero
probability. A class with fewer overlapping proposals than ``v_lower`` makes the image infeasible
(beta 0: never selected). The solver is exact for this problem (tested against brute force with
the same rule, tests/test_samdsk.py); with ``v_lower <= 1`` and one class it is also the optimum of
the unrestricted Eq. 1-3 whenever any proposal overlaps.

Pruning (why it is fast): for a partial union ``U`` and the candidates still to decide ``R``,
every completion has IoU <= ``sum_{U u R} p / (sum p + sum_U (1 - p))`` (the intersection can only
reach the mass under ``U u R``; the false-positive mass ``sum_U (1 - p)`` only grows), which bounds
a depth-first search over candidates sorted by their own IoU; classes are combined disjointly
with the sum of each remaining class's unconstrained best as the bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def soft_iou(prob: np.ndarray, mask: np.ndarray) -> float:
    """Fuzzy Jaccard index of a probability map and a binary mask (1.0 when both are empty)."""
    p = prob.astype(np.float64, copy=False).ravel()
    s = mask.astype(bool, copy=False).ravel()
    inter = float(p[s].sum())
    union = float(p.sum()) + float(s.sum()) - inter
    return 1.0 if union <= 0 else inter / union


@dataclass(frozen=True)
class Matching:
    """The optimum: chosen proposal indices per foreground class and each class's IoU; ``beta`` is Eq. 4."""

    chosen: tuple[tuple[int, ...], ...]
    ious: tuple[float, ...]
    feasible: bool

    @property
    def beta(self) -> float:
        """Mean IoU over foreground classes (0 when the constraints cannot be met)."""
        return float(np.mean(self.ious)) if self.feasible and self.ious else 0.0

    def annotation(self, proposals: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """``q_c = tau(sum_k z*_{c,k} s_k)`` as a label map: class ``c + 1`` where chosen, 0 (background) elsewhere.

        Proposals of different classes are disjoint choices but may overlap in pixels; a pixel
        claimed by two classes goes to the class listed first (the paper leaves this open).
        """
        label = np.zeros(tuple(shape), np.uint8)
        for c in reversed(range(len(self.chosen))):
            if self.chosen[c]:
                union = proposals[list(self.chosen[c])].any(0).reshape(shape)
                label[union] = c + 1
        return label


class _ClassSearch:
    """Subsets of one class's candidates with ``lo <= size <= hi``, best first by branch and bound."""

    def __init__(self, prob: np.ndarray, proposals: np.ndarray, lo: int, hi: int) -> None:
        self.p = prob.astype(np.float64).ravel()
        self.s = proposals.reshape(len(proposals), -1).astype(bool)
        self.sum_p = float(self.p.sum())
        self.lo, self.hi = lo, hi
        overlap = self.s @ self.p
        candidates = np.flatnonzero(overlap > 0)  # see the module docstring: only overlapping proposals
        single = [soft_iou(self.p, self.s[k]) for k in candidates]
        self.candidates = [int(k) for _, k in sorted(zip(single, candidates), key=lambda t: -t[0])]

    def _iou(self, union: np.ndarray) -> float:
        inter = float(self.p[union].sum())
        denominator = self.sum_p + float(union.sum()) - inter
        return 1.0 if denominator <= 0 else inter / denominator

    def subsets(self, allowed: frozenset[int] | None = None) -> list[tuple[float, tuple[int, ...]]]:
        """Every feasible subset whose IoU could matter, as (IoU, indices), best first.

        With ``allowed`` (proposals not used by other classes) only those candidates are used.
        """
        cands = [k for k in self.candidates if allowed is None or k in allowed]
        out: list[tuple[float, tuple[int, ...]]] = []
        n = len(self.p)
        if self.lo == 0:
            out.append((self._iou(np.zeros(n, bool)), ()))

        def walk(start: int, chosen: tuple[int, ...], union: np.ndarray) -> None:
            for j in range(start, len(cands)):
                k = cands[j]
                new = union | self.s[k]
                picked = chosen + (k,)
                if len(picked) >= self.lo:
                    out.append((self._iou(new), picked))
                if len(picked) < self.hi:
                    walk(j + 1, picked, new)

        walk(0, (), np.zeros(n, bool))
        out.sort(key=lambda t: -t[0])
        return out

    def best(self, allowed: frozenset[int] | None = None) -> tuple[float, tuple[int, ...]] | None:
        """The single best feasible subset, by branch and bound (no enumeration of all subsets)."""
        cands = [k for k in self.candidates if allowed is None or k in allowed]
        if len(cands) < self.lo:
            return None
        n = len(self.p)
        best: list = [-1.0, None]
        if self.lo == 0:
            best[:] = [self._iou(np.zeros(n, bool)), ()]
        # mass of p reachable from position j onwards (union of the remaining candidates)
        reach = [np.zeros(n, bool) for _ in range(len(cands) + 1)]
        for j in range(len(cands) - 1, -1, -1):
            reach[j] = reach[j + 1] | self.s[cands[j]]

        def walk(start: int, chosen: tuple[int, ...], union: np.ndarray, false_mass: float) -> None:
            for j in range(start, len(cands)):
                if len(chosen) + (len(cands) - j) < self.lo:
                    return  # too few candidates left to reach v_lower
                bound_inter = float(self.p[union | reach[j]].sum())
                if bound_inter / max(self.sum_p + false_mass, 1e-12) <= best[0]:
                    return  # no completion from here (or later) beats the best found
                k = cands[j]
                new = union | self.s[k]
                picked = chosen + (k,)
                new_false = float((1.0 - self.p)[new].sum())
                if len(picked) >= self.lo:
                    value = self._iou(new)
                    if value > best[0]:
                        best[:] = [value, picked]
                if len(picked) < self.hi:
                    walk(j + 1, picked, new, new_false)

        walk(0, (), np.zeros(n, bool), 0.0)
        return None if best[1] is None else (best[0], best[1])


def optimal_matching(probs: np.ndarray, proposals: np.ndarray, v_lower: Sequence[int], v_upper: Sequence[int]) -> Matching:
    """Exact optimum of Eq. 1-3 for one image.

    ``probs``: ``(C-1, *spatial)`` foreground probability maps; ``proposals``: ``(K, *spatial)``
    binary masks; ``v_lower``/``v_upper``: per foreground class. Infeasible (a class whose
    ``v_lower`` cannot be met with disjoint proposals) gives ``feasible=False`` and beta 0.
    """
    n_classes = len(probs)
    if len(v_lower) != n_classes or len(v_upper) != n_classes:
        raise ValueError(f"v_lower/v_upper need one value per foreground class ({n_classes}), "
                         f"got {list(v_lower)} / {list(v_upper)}")
    proposals = np.asarray(proposals, bool).reshape(len(proposals), *probs.shape[1:])
    searches = [_ClassSearch(probs[c], proposals, int(v_lower[c]), int(v_upper[c])) for c in range(n_classes)]
    if n_classes == 1:
        found = searches[0].best()
        if found is None:
            return Matching(((),), (0.0,), False)
        return Matching((found[1],), (found[0],), True)
    # several classes: per-class candidate subsets best first, combined disjointly by branch and bound
    options = [s.subsets() for s in searches]
    tops = [o[0][0] if o else -np.inf for o in options]
    if any(t == -np.inf for t in tops):
        return Matching(tuple(() for _ in range(n_classes)), tuple(0.0 for _ in range(n_classes)), False)
    rest = [sum(tops[c:]) for c in range(n_classes)] + [0.0]
    best: list = [-np.inf, None]

    def walk(c: int, used: frozenset[int], total: float, picks: tuple) -> None:
        if c == n_classes:
            if total > best[0]:
                best[:] = [total, picks]
            return
        for value, subset in options[c]:
            if total + value + rest[c + 1] <= best[0]:
                break  # sorted: no later subset of this class can do better
            if used.isdisjoint(subset):
                walk(c + 1, used | frozenset(subset), total + value, picks + ((subset, value),))

    walk(0, frozenset(), 0.0, ())
    if best[1] is None:
        return Matching(tuple(() for _ in range(n_classes)), tuple(0.0 for _ in range(n_classes)), False)
    return Matching(tuple(s for s, _ in best[1]), tuple(v for _, v in best[1]), True)


def brute_force_matching(probs: np.ndarray, proposals: np.ndarray, v_lower: Sequence[int],
                         v_upper: Sequence[int]) -> tuple[float, bool]:
    """Sum of IoUs of the optimum by enumerating every assignment (tests only: ``(C+1)^K`` cases).

    Same rule as :func:`optimal_matching`: a class may take only proposals that overlap its map."""
    from itertools import product

    k = len(proposals)
    n_classes = len(probs)
    best, feasible = -np.inf, False
    for assign in product(range(n_classes + 1), repeat=k):  # n_classes = unused
        if any(a < n_classes and not (probs[a].ravel()[proposals[i].ravel().astype(bool)] > 0).any()
               for i, a in enumerate(assign)):
            continue
        counts = [assign.count(c) for c in range(n_classes)]
        if any(not (v_lower[c] <= counts[c] <= v_upper[c]) for c in range(n_classes)):
            continue
        total = 0.0
        for c in range(n_classes):
            members = [i for i in range(k) if assign[i] == c]
            union = proposals[members].any(0) if members else np.zeros(probs.shape[1:], bool)
            total += soft_iou(probs[c], union)
        feasible = True
        best = max(best, total)
    return best, feasible


__all__ = ["Matching", "brute_force_matching", "optimal_matching", "soft_iou"]
