"""Segmentation metrics with every convention explicit, recorded and tested.

Papers disagree silently on metric definitions: medpy's ``hd95`` pools both directions into one
percentile while MONAI takes the larger of the two directional 95th percentiles; medpy's ``asd`` is
directed (prediction -> reference) and is what semi-supervised papers report as "ASD"; most SSL code
passes no spacing, so distances are in voxels; UA-MT/SFR report HD95 = ASD = 0 for an empty
prediction, MONAI gives NaN/inf and medpy raises. Here each choice is a field of
:class:`MetricConfig` and is written into every result through :meth:`MetricConfig.ids`.

Definitions (``P`` = prediction mask, ``R`` = reference mask of one label):

* ``dice`` = 2|P∩R| / (|P|+|R|), ``jaccard`` = |P∩R| / |P∪R|, ``sensitivity`` = |P∩R| / |R|
  (fractions in [0, 1]; the three share one set of confusion counts).
* Surface of a mask = ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, 1))`` with
  everything outside the image treated as background, exactly medpy's ``__surface_distances``
  (so an object touching the image border has a surface on that border). MONAI 1.6.1's
  ``get_mask_edges`` (no sub-voxel areas) yields the same voxels.
* ``d(P->R)``: for each surface voxel of P the Euclidean distance to the nearest surface voxel of
  R, in voxels (``spacing=None``) or in the units of ``spacing`` (mm).
* ``hd95``: ``medpy-pooled`` = ``np.percentile(concat(d(P->R), d(R->P)), 95)`` (medpy ``hd95``);
  ``max-directional`` = ``max(q95(d(P->R)), q95(d(R->P)))`` (MONAI ``compute_hausdorff_distance``
  with ``percentile=95``); both use NumPy's default linear interpolation, as do medpy and MONAI.
* ``asd``: ``directed`` = ``mean(d(P->R))`` (medpy ``asd(pred, ref)``, MONAI symmetric=False);
  ``symmetric`` = ``mean(concat(d(P->R), d(R->P)))`` (medpy ``assd``, MONAI symmetric=True).
  The metric keeps the key ``asd`` in results; its id says ``assd@symmetric`` when symmetric.

Empty masks (per label; ``D`` = the diagonal of the image extent ``sqrt(sum((shape_i * spacing_i)^2))``
in the active units, strictly larger than any distance between two voxels of the image; ``W`` =
``D`` under ``empty_policy="worst"`` (the default), NaN under ``"nan"`` and 0 under ``"zero"``):

| case             | dice | jaccard | sensitivity | hd95, hd | asd | empty_pred | empty_ref |
|------------------|------|---------|-------------|----------|-----|------------|-----------|
| both empty       | 1    | 1       | NaN         | 0        | 0   | 1          | 1         |
| prediction empty | 0    | 0       | 0           | W        | W   | 1          | 0         |
| reference empty  | 0    | 0       | NaN         | W        | W   | 0          | 1         |

The policy changes only the ``W`` cells. The flags count NaN-excluded structures. ``zero`` is the
convention of the UA-MT, SemiSAM and SFR test code (an empty prediction scores HD95 = ASD = 0, a
missed structure then looks perfect on distances): it exists only to compare with those papers
under their own convention, is never a default, and the leaderboard flags and counts every row
that uses it. Sensitivity is NaN whenever the reference is empty because
|P∩R| / |R| is 0/0 there (medpy returns 0.0); a hallucinated structure is already penalised by dice,
jaccard and the distances. See docs/metrics.md for the reasoning and the other libraries' values.

``hd`` (optional, ``hd="max"``): the full Hausdorff distance ``max(max d(P->R), max d(R->P))``,
medpy's ``hd``; scored only when asked for, with the same empty-mask policy.

Speed: distances use surface voxels only (2*ndim shifted ANDs), cropped to the joint bounding box
of both masks plus a margin of 1. Per direction, nearby surface points are resolved by probing
integer offsets sorted by length in the target surface (the first hit is the nearest voxel, exact),
the rest by a ``scipy.spatial.cKDTree`` query on coordinates scaled by spacing; a 256-point sample
decides how far probing pays. Both directional arrays feed HD95 and ASD. The values equal medpy's
``hd95``, ``asd`` and ``assd`` up to float64 round-off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from itertools import repeat
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ...errors import ConfigError, unknown_name

METRICS = ("dice", "jaccard", "hd95", "asd", "sensitivity")
FLAGS = ("empty_pred", "empty_ref")  # 0.0 / 1.0 next to the metrics in every result row
HD95_MODES = ("medpy-pooled", "max-directional")
ASD_MODES = ("directed", "symmetric")
EMPTY_POLICIES = ("worst", "nan", "zero")
#: the paper-convention policy: never a default, flagged in every leaderboard row that uses it
PAPER_EMPTY_POLICY = "zero"
HD_MODES = ("off", "max")
#: metrics computed only when a configuration asks for them (``hd``: the full Hausdorff distance), each
#: with the metric its leaderboard column follows: one declaration for what is read and where it is shown
OPTIONAL_METRICS: dict[str, str] = {"hd": "hd95"}
#: Surface distances up to this many (smallest) voxel spacings are found by probing offsets.
LOCAL_RADIUS = 4.0
#: Cost of one k-d tree query in offset probes (measured ~200-600 on LA surfaces; low = favour the tree).
QUERY_COST = 200.0
#: Surface points sampled to choose how far to probe.
SAMPLE_SIZE = 256

#: One unit of work for evaluate_many: (case_id, pred, ref, spacing or None).
Item = tuple[Any, np.ndarray, np.ndarray, "Sequence[float] | None"]


@dataclass(frozen=True)
class MetricConfig:
    """The metric conventions that make two result tables comparable (see the module docstring)."""

    hd95: str = "medpy-pooled"
    asd: str = "directed"
    empty_policy: str = "worst"
    hd: str = "off"
    """``max``: also score the full (100th percentile) Hausdorff distance, medpy's ``hd``."""

    def __post_init__(self) -> None:
        for name, valid in (("hd95", HD95_MODES), ("asd", ASD_MODES), ("empty_policy", EMPTY_POLICIES),
                            ("hd", HD_MODES)):
            if getattr(self, name) not in valid:
                raise unknown_name(f"metrics.{name}", getattr(self, name), valid)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MetricConfig:
        """Build from a protocol's ``metrics:`` mapping; unknown keys are errors, not ignored."""
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        extra = sorted(set(data) - set(known))
        if extra:
            raise ConfigError(f"unknown metrics key(s) {', '.join(map(repr, extra))}; expected: {', '.join(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, str]:
        """The definitions; ``hd`` only when it is scored, so existing definitions keep their keys."""
        data = asdict(self)
        if self.hd == "off":
            data.pop("hd")
        return data

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric names this configuration scores: :data:`METRICS` plus the optional ones asked for."""
        return METRICS + (("hd",) if self.hd != "off" else ())

    def ids(self, spacing_aware: bool) -> dict[str, str]:
        """Versioned id per metric name; an id changes exactly when the numbers it names could."""
        unit = "mm" if spacing_aware else "voxel"
        empty = f";empty={self.empty_policy}"
        asd_name = "asd" if self.asd == "directed" else "assd"
        ids = {
            "dice": "dice",
            "jaccard": "jaccard",
            "hd95": f"hd95@{self.hd95}/{unit}{empty}",
            "asd": f"{asd_name}@{self.asd}/{unit}{empty}",
            "sensitivity": "sensitivity",
        }
        if self.hd != "off":
            ids["hd"] = f"hd@{self.hd}/{unit}{empty}"
        return ids

    @classmethod
    def from_ids(cls, ids: Mapping[str, str]) -> tuple[MetricConfig, bool]:
        """Inverse of :meth:`ids`: recover ``(config, spacing_aware)`` from recorded ids."""
        try:
            parts = {key: _parse_distance_id(ids[key]) for key in ("hd95", "asd")}
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"not metric ids written by MetricConfig.ids: {dict(ids)!r}") from exc
        (hd_mode, hd_unit, hd_empty), (asd_mode, asd_unit, asd_empty) = parts["hd95"], parts["asd"]
        if hd_unit != asd_unit or hd_empty != asd_empty:
            raise ConfigError(f"inconsistent metric ids: {dict(ids)!r}")
        hd = _parse_distance_id(ids["hd"])[0] if "hd" in ids else "off"
        config = cls(hd95=hd_mode, asd=asd_mode, empty_policy=hd_empty, hd=hd)
        if config.ids(hd_unit == "mm") != {key: ids.get(key) for key in config.metrics}:
            raise ConfigError(f"not metric ids written by MetricConfig.ids: {dict(ids)!r}")
        return config, hd_unit == "mm"


def _parse_distance_id(metric_id: str) -> tuple[str, str, str]:
    """``name@mode/unit;empty=policy`` -> (mode, unit, policy)."""
    head, empty = metric_id.split(";empty=")
    mode_unit = head.split("@")[1]
    mode, unit = mode_unit.split("/")
    return mode, unit, empty


# ----------------------------------------------------------------------------- public entry points


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    config: MetricConfig | None = None,
) -> dict[int, dict[str, float]]:
    """Score each foreground label of one case: ``{label: {metric or flag: float}}``.

    ``labels`` defaults to the sorted nonzero labels found in ``ref`` or ``pred``. Distances are in
    voxels without ``spacing`` (the papers' medpy usage) and in the units of ``spacing`` with it.
    """
    return _evaluate(pred, ref, spacing, labels, config or MetricConfig(), kd_workers=-1)


def evaluate_many(
    items: Iterable[Item],
    labels: Sequence[int] | None = None,
    config: MetricConfig | None = None,
    workers: int = 0,
) -> list[dict[str, Any]]:
    """:func:`evaluate_case` over ``(case_id, pred, ref, spacing)`` items, results in input order.

    ``workers``: 0 = auto = ``min(2, usable CPUs, len(items))``; 1 = in this process (the k-d tree
    queries then use all cores); >1 = that many processes, each querying single-threaded so the
    machine is not oversubscribed.
    """
    items = list(items)
    config = config or MetricConfig()
    n_proc = resolve_workers(workers, len(items))
    if n_proc <= 1:
        return [_evaluate_item(item, labels, config, -1) for item in items]
    with ProcessPoolExecutor(max_workers=n_proc) as pool:
        return list(pool.map(_evaluate_item, items, repeat(labels), repeat(config), repeat(1)))


def resolve_workers(workers: int, n_items: int) -> int:
    """Number of processes :func:`evaluate_many` uses (see there)."""
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        workers = min(2, _usable_cpus())
    return max(1, min(workers, n_items))


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _evaluate_item(item: Item, labels: Sequence[int] | None, config: MetricConfig, kd_workers: int) -> dict[str, Any]:
    """Top-level (picklable) worker for :func:`evaluate_many`."""
    case_id, pred, ref, spacing = item
    return {"case": case_id, "results": _evaluate(pred, ref, spacing, labels, config, kd_workers)}


def _evaluate(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None,
    labels: Sequence[int] | None,
    config: MetricConfig,
    kd_workers: int,
) -> dict[int, dict[str, float]]:
    pred, ref = _check_pair(pred, ref)
    scale = _check_spacing(spacing, pred.ndim)
    chosen = default_labels(pred, ref) if labels is None else [int(label) for label in labels]
    return {label: score_masks(pred == label, ref == label, scale, config, kd_workers) for label in chosen}


# ----------------------------------------------------------------------------- input checks


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refuse what would be silently mis-scored: shape mismatch, float maps, 0-d input."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref shapes differ: {pred.shape} vs {ref.shape}")
    if pred.ndim < 1:
        raise ValueError("pred and ref must be label maps with at least one axis")
    for name, arr in (("pred", pred), ("ref", ref)):
        if arr.dtype.kind not in "biu":
            raise ValueError(f"{name} must be an integer or bool label map, got dtype {arr.dtype}")
    return pred, ref


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    scale = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if scale.size != ndim or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"spacing must be {ndim} positive finite numbers, got {spacing!r}")
    return scale


def default_labels(pred: np.ndarray, ref: np.ndarray) -> list[int]:
    """Sorted nonzero labels present in ``ref`` or ``pred``."""
    return sorted(_present_labels(ref) | _present_labels(pred))


def _present_labels(arr: np.ndarray) -> set[int]:
    """Nonzero values of ``arr``; avoids a full sort for the common binary / small-label maps."""
    if arr.size == 0:
        return set()
    if arr.dtype.kind in "bu":
        top = int(arr.max())
        if top <= 1:
            return {top} - {0}
        if top < 1 << 16:
            return set(np.flatnonzero(np.bincount(arr.ravel())).tolist()) - {0}
    return {int(v) for v in np.unique(arr)} - {0}


# ----------------------------------------------------------------------------- one label


def score_masks(
    pmask: np.ndarray,
    rmask: np.ndarray,
    scale: np.ndarray | None = None,
    config: MetricConfig | None = None,
    kd_workers: int = -1,
) -> dict[str, float]:
    """All metrics and flags of one label from its two boolean masks."""
    config = config or MetricConfig()
    tp, n_pred, n_ref = confusion_counts(pmask, rmask)
    out = overlap_metrics(tp, n_pred, n_ref)
    out.update(distance_metrics(pmask, rmask, n_pred, n_ref, scale, config, kd_workers))
    out["empty_pred"] = float(n_pred == 0)
    out["empty_ref"] = float(n_ref == 0)
    return out


def confusion_counts(pmask: np.ndarray, rmask: np.ndarray) -> tuple[int, int, int]:
    """(true positives, |P|, |R|): computed once, shared by dice, jaccard and sensitivity."""
    return int(np.count_nonzero(pmask & rmask)), int(np.count_nonzero(pmask)), int(np.count_nonzero(rmask))


def overlap_metrics(tp: int, n_pred: int, n_ref: int) -> dict[str, float]:
    """Dice, Jaccard, sensitivity from counts, with the empty-mask cells of the table."""
    total = n_pred + n_ref
    return {
        "dice": 2.0 * tp / total if total else 1.0,
        "jaccard": tp / (total - tp) if total else 1.0,
        "sensitivity": tp / n_ref if n_ref else math.nan,
    }


def distance_metrics(
    pmask: np.ndarray,
    rmask: np.ndarray,
    n_pred: int,
    n_ref: int,
    scale: np.ndarray | None = None,
    config: MetricConfig | None = None,
    kd_workers: int = -1,
) -> dict[str, float]:
    """HD95 and ASD of one label (``n_pred``/``n_ref``: mask sizes, for the empty-mask cells)."""
    config = config or MetricConfig()
    names = [m for m in config.metrics if m in ("hd95", "asd", "hd")]
    if n_pred == 0 and n_ref == 0:
        return dict.fromkeys(names, 0.0)
    if n_pred == 0 or n_ref == 0:
        return dict.fromkeys(names, empty_value(config.empty_policy, pmask.shape, scale))
    d_pr, d_rp = surface_distances(pmask, rmask, scale, kd_workers)
    out = {"hd95": hd95_from(d_pr, d_rp, config.hd95), "asd": asd_from(d_pr, d_rp, config.asd)}
    if config.hd != "off":
        out["hd"] = hd_from(d_pr, d_rp)
    return out


def empty_value(policy: str, shape: Sequence[int], scale: np.ndarray | None = None) -> float:
    """A distance where exactly one mask is empty: ``worst`` = the image diagonal, ``nan`` = NaN,
    ``zero`` = 0 (UA-MT/SemiSAM/SFR test code: ``if np.sum(prediction) == 0: (0, 0, 0, 0)``)."""
    if policy == "worst":
        return image_diagonal(shape, scale)
    return math.nan if policy == "nan" else 0.0


def image_diagonal(shape: Sequence[int], scale: np.ndarray | None = None) -> float:
    """Worst-case distance: the image extent's diagonal, larger than any voxel-to-voxel distance."""
    extent = np.asarray(shape, dtype=np.float64) * (1.0 if scale is None else scale)
    return float(np.sqrt(np.sum(extent**2)))


def hd95_from(d_pr: np.ndarray, d_rp: np.ndarray, mode: str) -> float:
    """95th percentile Hausdorff distance from the two directional surface-distance arrays."""
    if mode == "medpy-pooled":
        return float(np.percentile(np.concatenate((d_pr, d_rp)), 95))
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def hd_from(d_pr: np.ndarray, d_rp: np.ndarray) -> float:
    """The full Hausdorff distance: the largest surface distance either way (medpy ``hd``)."""
    return float(max(d_pr.max(), d_rp.max()))


def asd_from(d_pr: np.ndarray, d_rp: np.ndarray, mode: str) -> float:
    """Average surface distance: directed P->R (medpy ``asd``) or pooled both ways (``assd``)."""
    if mode == "directed":
        return float(d_pr.mean())
    return float(np.concatenate((d_pr, d_rp)).mean())


# ----------------------------------------------------------------------------- surface distances


def surface_distances(
    pmask: np.ndarray, rmask: np.ndarray, scale: np.ndarray | None = None, kd_workers: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """(d(P->R), d(R->P)) over surface voxels, as medpy's ``__surface_distances`` both ways.

    Both masks must be non-empty. Distances come in ``np.argwhere`` order of each surface.
    """
    box = joint_bounding_box(pmask, rmask, margin=1)
    pborder, rborder = surface_voxels(pmask[box]), surface_voxels(rmask[box])
    ppts, rpts = _points(pborder), _points(rborder)
    return _directed(ppts, rborder, rpts, scale, kd_workers), _directed(rpts, pborder, ppts, scale, kd_workers)


def _directed(
    src_pts: np.ndarray, dst: np.ndarray, dst_pts: np.ndarray, scale: np.ndarray | None, kd_workers: int
) -> np.ndarray:
    """Distance from each ``src_pts`` voxel to the nearest ``dst`` voxel: offset probing, then k-d tree."""
    tree = _tree(_scaled(dst_pts, scale))
    table = _short_offsets(dst.ndim, _scale_key(scale))
    n_probe = _probe_budget(src_pts, tree, scale, table, kd_workers)
    dist, todo = _local_search(src_pts, dst, table, n_probe)
    if todo.size:
        dist[todo] = tree.query(_scaled(src_pts[todo], scale), k=1, workers=kd_workers)[0]
    return dist


def _probe_budget(
    src_pts: np.ndarray, tree: cKDTree, scale: np.ndarray | None, table: _OffsetTable, kd_workers: int
) -> int:
    """Number of offsets worth probing, from the distances of a small strided sample.

    Probing shell k costs one cheap look-up per offset for each point still open; a k-d tree
    query costs ``QUERY_COST`` look-ups. Picks the shell count minimising the estimated total, so
    near-perfect predictions are resolved by probing and far-off ones go straight to the tree.
    """
    sample = src_pts[:: max(1, len(src_pts) // SAMPLE_SIZE)]
    d = tree.query(_scaled(sample, scale), k=1, workers=kd_workers)[0] / table.unit
    shells = np.arange(len(table.shells))  # k = 0 (no probing) .. K
    open_after = np.mean(d[:, None] > shells[None, :] + 1e-9, axis=0)  # open after shell k
    probes = np.concatenate(([0.0], np.cumsum(np.diff(table.shells) * open_after[:-1])))
    best = int(np.argmin(probes + QUERY_COST * open_after))
    return table.shells[best]


def _local_search(
    src_pts: np.ndarray, dst: np.ndarray, table: _OffsetTable, n_probe: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest distances for nearby points by probing the first ``n_probe`` offsets.

    Offsets are sorted by length, so every offset shorter than a hit has been probed before it:
    the first hit is the nearest ``dst`` voxel, for any prefix of the table. Returns the
    distances and the indices of the points without a hit (for the k-d tree).
    """
    todo = np.arange(len(src_pts))
    dist = np.empty(len(src_pts))
    if not n_probe:
        return dist, todo
    padded = np.pad(dst, [(r, r) for r in table.radius]).ravel()
    shape = tuple(n + 2 * r for n, r in zip(dst.shape, table.radius))
    flat = np.ravel_multi_index(tuple((src_pts + table.radius).T), shape)
    deltas = table.offsets[:n_probe] @ _flat_strides(shape)
    for delta, length in zip(deltas, table.lengths[:n_probe]):
        hit = padded[flat[todo] + delta]
        dist[todo[hit]] = length
        todo = todo[~hit]
        if not todo.size:
            break
    return dist, todo


def joint_bounding_box(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the bounding box of ``a | b`` grown by ``margin`` and clipped to the image.

    Axes are narrowed one after another so later reductions only scan the slab found so far.
    """
    union = a | b
    box = [slice(None)] * union.ndim
    for axis in range(union.ndim):
        others = tuple(i for i in range(union.ndim) if i != axis)
        hits = np.flatnonzero(np.any(union[tuple(box)], axis=others))
        box[axis] = slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, union.shape[axis]))
    return tuple(box)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """``mask XOR binary_erosion(mask, connectivity-1 cross)`` with zero outside the array.

    Equal to scipy's ``binary_erosion`` with ``border_value=0`` (what medpy calls), done with
    2*ndim shifted ANDs, which is several times faster than the generic erosion.
    """
    padded = np.pad(mask, 1)
    core = [slice(1, -1)] * mask.ndim
    interior = mask.copy()
    for axis in range(mask.ndim):
        for step in (-1, 1):
            window = list(core)
            window[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            interior &= padded[tuple(window)]
    return mask & ~interior


@dataclass(frozen=True)
class _OffsetTable:
    """Integer offsets within ``LOCAL_RADIUS`` minimal spacings, shortest first (zero included)."""

    offsets: np.ndarray  # (m, ndim) int
    lengths: np.ndarray  # (m,) physical length of each offset
    radius: tuple[int, ...]  # per-axis reach of the offsets, in voxels
    unit: float  # the smallest spacing: shells are measured in it
    shells: tuple[int, ...]  # offsets[shells[k-1]:shells[k]]: lengths in (k-1, k] minimal spacings


def _scale_key(scale: np.ndarray | None) -> tuple[float, ...] | None:
    return None if scale is None else tuple(float(s) for s in scale)


@lru_cache(maxsize=64)
def _short_offsets(ndim: int, scale: tuple[float, ...] | None) -> _OffsetTable:
    unit = np.ones(ndim) if scale is None else np.asarray(scale)
    reach = LOCAL_RADIUS * unit.min() * (1 + 1e-9)  # tolerance keeps offsets of length exactly R
    radius = tuple(int(r) for r in np.floor(reach / unit))
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij"), -1).reshape(-1, ndim)
    lengths = np.sqrt(np.sum((grid * unit) ** 2, axis=1))
    keep = np.flatnonzero(lengths <= reach)
    order = keep[np.argsort(lengths[keep], kind="stable")]
    shell_of = np.maximum(np.ceil(lengths[order] / unit.min() - 1e-9), 1).astype(int)  # zero joins shell 1
    shells = tuple(int(i) for i in np.searchsorted(shell_of, np.arange(1, shell_of[-1] + 1), side="right"))
    return _OffsetTable(grid[order].astype(np.intp), lengths[order], radius, float(unit.min()), (0,) + shells)


def _flat_strides(shape: tuple[int, ...]) -> np.ndarray:
    """Element strides of a C-ordered array of ``shape``."""
    return np.cumprod((shape[1:] + (1,))[::-1])[::-1].astype(np.intp)


def _points(mask: np.ndarray) -> np.ndarray:
    """``np.argwhere(mask)``, 4x faster for 3D masks via flat indices."""
    return np.stack(np.unravel_index(np.flatnonzero(mask), mask.shape), axis=-1)


def _scaled(points: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    points = points.astype(np.float64)
    return points if scale is None else points * scale


def _tree(points: np.ndarray) -> cKDTree:
    # Unbalanced, non-compact trees build ~2x faster and query no slower on surface point clouds.
    return cKDTree(points, leafsize=32, balanced_tree=False, compact_nodes=False)
