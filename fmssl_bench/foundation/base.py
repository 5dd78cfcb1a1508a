"""The generalist (promptable foundation model) interface shared by every method.

Conventions
-----------
- An image is ``(C, H, W)`` float32 with ``C`` in {1, 3} and arbitrary intensities; a volume is
  ``(C, *spatial)`` with three spatial axes (the harness-wide array convention).
- :func:`normalise_intensities` maps either to three channels in [0, 1] *before* a model sees it:
  grayscale (medical) data is clipped to its 0.5-99.5 percentiles and rescaled (the MedSAM recipe
  for MR; it is harmless for CT that was already windowed), RGB data already in [0, 1] is kept,
  RGB in [0, 255] is divided by 255, anything else is percentile-rescaled like grayscale.
  Each model then applies its own input recipe on top (resize, pad, mean/std).
- Prompts are given in pixel coordinates of the *original* image: ``(x, y)`` = (column, row).
- Every output is a foreground probability map in [0, 1] at the original resolution.
"""

from __future__ import annotations

import hashlib
import resource
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .cache import EmbeddingCache

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


@dataclass
class Prompts:
    """Prompts for one object on one 2D image (all optional; coordinates of the original image).

    ``points`` (N, 2) as (x, y); ``point_labels`` (N,) with 1 = positive, 0 = negative (all positive
    when omitted); ``box`` (4,) as x0, y0, x1, y1 (inclusive pixel indices, like MedSAM);
    ``mask`` (H, W) foreground probabilities at the original resolution, used as SAM's dense
    mask prompt.
    """

    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
            if len(self.points) == 0:
                self.points = None
        if self.points is None:
            self.point_labels = None
        elif self.point_labels is None:
            self.point_labels = np.ones(len(self.points), dtype=np.int64)
        else:
            self.point_labels = np.asarray(self.point_labels, dtype=np.int64).reshape(-1)
            if self.point_labels.shape[0] != self.points.shape[0]:
                raise ValueError(f"{len(self.points)} points but {len(self.point_labels)} point labels")
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=np.float32)
            if self.mask.ndim != 2:
                raise ValueError(f"a mask prompt must be 2D (H, W), got shape {self.mask.shape}")

    @property
    def n_points(self) -> int:
        return 0 if self.points is None else len(self.points)

    def is_empty(self) -> bool:
        return self.points is None and self.box is None and self.mask is None

    def layout(self) -> tuple[int, bool, bool]:
        """(number of points, has box, has mask): prompts of equal layout share one decoder call.

        Grouping by the exact point count (instead of padding) keeps every prompt's output
        independent of what else is in the batch.
        """
        return (self.n_points, self.box is not None, self.mask is not None)


@dataclass
class Embedding:
    """An encoded image: model features plus the geometry needed to map outputs back.

    ``input_size`` is the (h, w) the image occupies inside the model's input frame (before
    padding); ``key`` is the cache key it was stored under.
    """

    features: dict[str, Any]
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    key: str | None = None

    def to_state(self) -> dict[str, Any]:
        """Plain containers of CPU tensors, loadable with ``torch.load(weights_only=True)``."""
        return {
            "features": _map_tensors(self.features, lambda t: t.detach().cpu()),
            "original_size": list(self.original_size),
            "input_size": list(self.input_size),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str, key: str | None) -> Embedding:
        return cls(
            features=_map_tensors(state["features"], lambda t: t.to(device)),
            original_size=tuple(state["original_size"]),
            input_size=tuple(state["input_size"]),
            key=key,
        )


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


@dataclass
class GeneralistStats:
    """Cost counters reported with every run (encoder passes dominate the cost of a generalist).

    ``distinct_items`` counts the distinct cache keys (image x model identity) requested, so
    ``encoder_calls == distinct_items`` is the proof that nothing was encoded twice;
    ``cache_hits == memory_hits + disk_hits``. The sam2 video tracker encodes frames itself,
    outside the cache: it adds to ``encoder_calls`` only.
    """

    encoder_calls: int = 0
    cache_hits: int = 0
    decoder_calls: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    peak_memory_bytes: int = 0
    distinct_items: int = 0
    memory_hits: int = 0
    disk_hits: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tensors_sha256(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of named tensors, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA max allocated on CUDA devices, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def normalise_intensities(array: np.ndarray) -> np.ndarray:
    """``(C, ...)`` with C in {1, 3} and any intensities -> ``(3, ...)`` float32 in [0, 1].

    Works on an image or on a whole volume (percentiles then come from the whole volume, so
    all slices share one intensity mapping).
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim < 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"expected (C, *spatial) with C in {{1, 3}}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("image contains NaN or inf")
    lo, hi = float(array.min()), float(array.max())
    if array.shape[0] == 3 and lo >= 0.0 and hi <= 1.0:
        return array
    if array.shape[0] == 3 and lo >= 0.0 and hi <= 255.0 and hi > 1.0:
        return array / np.float32(255.0)
    lo, hi = np.percentile(array, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scaled = (np.clip(array, lo, hi) - lo) / max(float(hi - lo), 1e-8)
    scaled = scaled.astype(np.float32)
    return np.repeat(scaled, 3, axis=0) if scaled.shape[0] == 1 else scaled


def box_from_mask(mask: np.ndarray, margin: int = 0) -> np.ndarray | None:
    """Tight x0, y0, x1, y1 box (inclusive indices) of a 2D mask, grown by ``margin`` pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return np.array(
        [
            max(cols[0] - margin, 0),
            max(rows[0] - margin, 0),
            min(cols[-1] + margin, w - 1),
            min(rows[-1] + margin, h - 1),
        ],
        dtype=np.float32,
    )


def group_by_layout(prompts: Sequence[Prompts]) -> list[list[int]]:
    """Indices of non-empty prompts grouped so that each group fits one batched decoder call."""
    groups: dict[tuple[int, bool, bool], list[int]] = {}
    for i, prompt in enumerate(prompts):
        if not prompt.is_empty():
            groups.setdefault(prompt.layout(), []).append(i)
    return list(groups.values())


def stacked_points(prompts: Sequence[Prompts]) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts of one layout group as (B, N, 2) coordinates and (B, N) labels."""
    return np.stack([p.points for p in prompts]), np.stack([p.point_labels for p in prompts])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Generalist(ABC):
    """A frozen promptable segmentation model: encode an image once, decode many prompts.

    Subclasses implement :meth:`_encode` (normalised image -> :class:`Embedding`) and
    :meth:`_decode` (one batch of same-layout prompts -> probabilities); caching, stats, input
    checks and the slice-wise 3D recipe live here.
    """

    name: str
    weights_sha256: str | None
    checkpoint: str | None
    stats: GeneralistStats

    #: growth (pixels) of the box propagated from a neighbouring slice's mask (LiteMedSAM: 3)
    propagation_margin: int = 3
    #: a propagated mask smaller than this many pixels counts as vanished
    propagation_min_area: int = 1

    def __init__(
        self,
        name: str,
        *,
        device: str | torch.device = "cpu",
        weights_sha256: str | None = None,
        checkpoint: str | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self.weights_sha256 = weights_sha256
        self.checkpoint = checkpoint
        self.cache = cache if cache is not None else EmbeddingCache()
        self.stats = GeneralistStats()
        self._fingerprint: str | None = None
        self._seen_keys: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, checkpoint={self.checkpoint!r}, device={self.device})"
        )

    # ----------------------------------------------------------------- subclass hooks
    @property
    @abstractmethod
    def model(self) -> torch.nn.Module:
        """The underlying torch module (used for the weights fingerprint)."""

    @abstractmethod
    def _encode(self, image01: np.ndarray) -> Embedding:
        """Encode a ``(3, H, W)`` float32 image in [0, 1]."""

    @abstractmethod
    def _decode(self, embedding: Embedding, prompts: list[Prompts], multimask: bool) -> torch.Tensor:
        """Decode prompts that share one :meth:`Prompts.layout`; returns (K, H, W) probabilities."""

    def input_signature(self) -> str:
        """What besides the weights decides the embedding (input size, normalisation)."""
        return ""

    # ----------------------------------------------------------------- encode
    def encode(self, image: np.ndarray) -> Embedding:
        """Encode a ``(C, H, W)`` image with any intensities (see :func:`normalise_intensities`)."""
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"expected an image (C, H, W), got shape {image.shape}")
        return self.encode_normalised(normalise_intensities(image))

    def encode_normalised(self, image01: np.ndarray) -> Embedding:
        """Encode an already normalised ``(3, H, W)`` image, through the embedding cache."""
        key = self.cache.key(image01, self._cache_identity())
        if key not in self._seen_keys:
            self._seen_keys.add(key)
            self.stats.distinct_items += 1
        state, source = self.cache.lookup(key)
        if state is None:
            with self.cache.claim(key):  # another process encoding this image: wait for it, then read its entry
                state, source = self.cache.lookup(key)
                if state is None:
                    return self._encode_and_store(image01, key)
        self.stats.cache_hits += 1
        if source == "memory":
            self.stats.memory_hits += 1
        else:
            self.stats.disk_hits += 1
        return Embedding.from_state(state, self.device, key)

    def _encode_and_store(self, image01: np.ndarray, key: str) -> Embedding:
        start = time.perf_counter()
        with torch.inference_mode():
            embedding = self._encode(np.ascontiguousarray(image01, dtype=np.float32))
        _sync(self.device)
        self.stats.encode_seconds += time.perf_counter() - start
        self.stats.encoder_calls += 1
        self._update_peak_memory()
        stored = self.cache.put(key, embedding.to_state())
        if self.cache.lossy:  # hand out what later hits will return, so results never depend on hits
            embedding = Embedding.from_state(stored, self.device, key)
        embedding.key = key
        return embedding

    def _cache_identity(self) -> str:
        return f"{self.name}|{self.weights_sha256 or self._weights_fingerprint()}|{self.input_signature()}"

    def _weights_fingerprint(self) -> str:
        """sha256 over the state dict, for models that did not come from a checkpoint file."""
        if self._fingerprint is None:
            self._fingerprint = "state:" + tensors_sha256(self.model.state_dict().items())
        return self._fingerprint

    # ----------------------------------------------------------------- decode
    def segment(
        self, embedding: Embedding, prompts: Prompts | Sequence[Prompts], multimask: bool = False
    ) -> np.ndarray:
        """Foreground probabilities (H, W) for one prompt, (K, H, W) for a list of K prompts.

        Prompts of equal :meth:`Prompts.layout` go through the decoder in one batched call; empty prompts give
        all-zero maps without a decoder call. ``multimask`` asks for SAM's three candidates and
        keeps, per prompt, the one with the highest predicted IoU.
        """
        single = isinstance(prompts, Prompts)
        prompt_list = [prompts] if single else list(prompts)
        h, w = embedding.original_size
        out = np.zeros((len(prompt_list), h, w), dtype=np.float32)
        for indices in group_by_layout(prompt_list):
            start = time.perf_counter()
            with torch.inference_mode():
                probs = self._decode(embedding, [prompt_list[i] for i in indices], multimask)
            out[indices] = probs.float().cpu().numpy()
            self.stats.decode_seconds += time.perf_counter() - start
            self.stats.decoder_calls += 1
        self._update_peak_memory()
        return out[0] if single else out

    def segment_image(
        self, image: np.ndarray, prompts: Prompts | Sequence[Prompts], multimask: bool = False
    ) -> np.ndarray:
        return self.segment(self.encode(image), prompts, multimask=multimask)

    # ----------------------------------------------------------------- 3D
    def segment_volume(
        self,
        volume: np.ndarray,
        prompts: dict[int, Prompts],
        axis: int = -1,
        propagate: bool = True,
        *,
        max_distance: int | None = None,
    ) -> np.ndarray:
        """Slice-wise segmentation of a ``(C, *spatial)`` volume; returns ``spatial``-shaped probabilities.

        ``axis`` is a *spatial* axis (0, 1, 2 or negative; the channel axis does not count) and the
        keys of ``prompts`` index slices along it; each slice is the 2D array left after taking
        that index, so prompt (x, y) = (column, row) of it. The volume is intensity-normalised
        once as a whole. With ``propagate`` (the MedSAM/LiteMedSAM 3D recipe) the neighbours of
        every prompted slice are segmented with the box of the previous slice's mask (grown by
        :attr:`propagation_margin`), walking outward until the mask vanishes, the volume ends,
        another prompted slice is reached or ``max_distance`` slices were walked; where two
        walks overlap the larger probability wins. Box-prompted models rarely return an empty
        mask, so without ``max_distance`` a walk usually runs to the end of the volume.
        """
        volume01, slice_axis = self._volume_slices(volume, axis)
        n = volume01.shape[1]
        check_slice_keys(prompts, n)
        out = np.zeros(volume01.shape[1:], dtype=np.float32)
        seeds = sorted(int(i) for i, p in prompts.items() if not p.is_empty())
        for index in seeds:
            out[index] = self.segment(self.encode_normalised(volume01[:, index]), prompts[index])
        if propagate:
            limit = n if max_distance is None else max_distance
            for index in seeds:
                for step in (-1, 1):
                    self._propagate(volume01, out, set(prompts), index, step, limit)
        return np.moveaxis(out, 0, slice_axis)

    def _propagate(
        self, volume01: np.ndarray, out: np.ndarray, prompted: set[int], start: int, step: int, limit: int
    ) -> None:
        previous = out[start] > 0.5
        index = start + step
        while 0 <= index < out.shape[0] and index not in prompted and abs(index - start) <= limit:
            if previous.sum() < self.propagation_min_area:
                return
            box = box_from_mask(previous, self.propagation_margin)
            probs = self.segment(self.encode_normalised(volume01[:, index]), Prompts(box=box))
            out[index] = np.maximum(out[index], probs)
            previous = probs > 0.5
            index += step

    @staticmethod
    def _volume_slices(volume: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
        """Normalise a volume once and move the slice axis first: (3, n_slices, rows, cols)."""
        volume = np.asarray(volume)
        if volume.ndim != 4:
            raise ValueError(f"expected a volume (C, D0, D1, D2), got shape {volume.shape}")
        if not -3 <= axis <= 2:
            raise ValueError(f"axis must be a spatial axis in -3..2, got {axis}")
        slice_axis = axis % 3
        volume01 = normalise_intensities(volume)
        return np.ascontiguousarray(np.moveaxis(volume01, 1 + slice_axis, 1)), slice_axis

    def _update_peak_memory(self) -> None:
        self.stats.peak_memory_bytes = max(self.stats.peak_memory_bytes, peak_memory_bytes(self.device))


def check_slice_keys(prompts: dict[int, Prompts], n_slices: int) -> None:
    bad = [k for k in prompts if not 0 <= int(k) < n_slices]
    if bad:
        raise ValueError(f"prompt slice indices {bad} outside 0..{n_slices - 1}")


__all__ = [
    "Embedding",
    "Generalist",
    "GeneralistStats",
    "Prompts",
    "box_from_mask",
    "normalise_intensities",
    "peak_memory_bytes",
    "tensors_sha256",
]
