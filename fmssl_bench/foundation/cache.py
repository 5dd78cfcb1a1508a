"""Embedding cache: the image encoder is the expensive part, so each image is encoded once per run.

Key = sha256 over a format version, the model identity (name, weights sha256, input recipe and,
for fine-tuned copies, a hash of the trained encoder tensors) and the normalised image's shape,
dtype and bytes. Entries live in an in-memory LRU bounded by count and bytes and, when a
directory is given, on disk as ``<key>.pt`` (``torch.save`` / ``torch.load(weights_only=True)``)
so that later runs and other processes reuse them. Processes sharing a directory never encode
the same image at once: a miss is computed holding the key's claim (:meth:`EmbeddingCache.claim`),
and another process missing the same key waits for it and reads the entry.

Why a disk level for a run: the in-memory LRU alone cannot keep the promise "each unlabeled
image is encoded at most once per run". LA has ~26 unlabeled volumes x 88 slices (~2300 images)
and one LiteMedSAM embedding (256 x 64 x 64 fp32) is 4 MiB, i.e. ~9 GiB per pass, far above
any sensible memory bound; an evicted slice would be re-encoded every epoch.
:func:`run_embedding_cache` therefore builds a run-scoped cache: every entry goes to
``<run_dir>/fm_cache`` and a small LRU sits in front of it, so a second pass over the set is
all hits (memory or disk) whatever the memory bound.

fp16 storage (``fp16=True``) halves disk and memory (LA with LiteMedSAM: ~4.6 instead of
~9.2 GiB). Floating tensors are stored as float16 and handed back as float32; a tensor that
would overflow float16 is kept in float32. Within one cache every request for a key, the first
(the miss) included, returns the same rounded values (see ``Generalist.encode_normalised``), so
results never depend on whether an entry was a hit. fp16 and fp32 entries live in different
files (``<key>.f16.pt`` vs ``<key>.pt``): a cache never reads the other precision's entries.

Measured (real LiteMedSAM, bundled weights, CPU; box prompt = ground-truth box + 3 px; the
decoder run on the fp32 embedding vs on its fp16 round trip):

============  ========  ===========  ===========  ================  ============  ===============
data          images    max |dp|     mean |dp|    mask Dice 32/16   max flipped   max |dDice GT|
============  ========  ===========  ===========  ================  ============  ===============
Kvasir-SEG    8         3.7e-4       3.7e-6       >= 0.99996        6 px          4e-5
LA (slices)   8         3.0e-4       3.7e-6       >= 0.99978        2 px          2e-4
============  ========  ===========  ===========  ================  ============  ===============

(the first 8 Kvasir-SEG images, 528 x 617 to 1070 x 1348 px; 2 labelled slices from each of
4 LA cases, ~200 x 140 px; dp = probability difference, mask = p > 0.5, "Dice GT" = Dice with
the ground truth). Embedding values stay within |x| <= 0.94, where float16's relative
rounding error is <= 3.1e-4 of the maximum. At most 6 flipped pixels per image is far below
any effect on a benchmark number, so run caches default to fp16 (:data:`RUN_CACHE_FP16`);
pass ``fp16=False`` for bit-exact fp32 reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

#: bump when the stored layout or the preprocessing changes, so stale disk entries are never read
CACHE_FORMAT = 1

DEFAULT_MAX_ITEMS = 512
DEFAULT_MAX_BYTES = 2 * 1024**3
#: memory layer of a run-scoped cache: the disk holds the run, memory only the recent entries
RUN_MEMORY_ITEMS = 64
RUN_MEMORY_BYTES = 512 * 1024**2
#: default precision of run-scoped caches on disk, chosen from the measurement above
RUN_CACHE_FP16 = True

HitSource = Literal["memory", "disk", "miss"]


def state_nbytes(obj: Any) -> int:
    """Bytes held by the tensors of a (nested) embedding state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def _map_floats(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _map_floats(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_floats(v, fn) for v in obj)
    return obj


def _to_fp16(tensor: torch.Tensor) -> torch.Tensor:
    """float32 -> float16, unless a value would overflow (then the tensor stays float32)."""
    if tensor.dtype != torch.float32:
        return tensor
    half = tensor.half()
    return half if bool(torch.isfinite(half).all()) or not bool(torch.isfinite(tensor).all()) else tensor


def _from_fp16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype == torch.float16 else tensor


class EmbeddingCache:
    """In-memory LRU (``max_items`` entries, ``max_bytes`` bytes) plus an optional disk directory.

    ``fp16`` stores floating tensors as float16 (in memory and on disk) and returns them as
    float32. :meth:`lookup` says where a hit came from, for the generalist's stats.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        fp16: bool = False,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.fp16 = fp16
        self._entries: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._bytes = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache(directory={self.directory}, max_items={self.max_items}, "
            f"max_bytes={self.max_bytes}, fp16={self.fp16})"
        )

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def lossy(self) -> bool:
        """Whether a stored state differs from what was put (fp16 rounding)."""
        return self.fp16

    @staticmethod
    def key(image: np.ndarray, identity: str) -> str:
        digest = hashlib.sha256()
        digest.update(f"fmssl-embedding-v{CACHE_FORMAT}|{identity}|".encode())
        digest.update(f"{image.shape}|{image.dtype}|".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def lookup(self, key: str) -> tuple[dict[str, Any] | None, HitSource]:
        """The stored state (CPU tensors, float32) and where it came from; a disk hit is promoted."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._expand(self._entries[key][0]), "memory"
        path = self._path(key)
        if path is None or not path.is_file():
            return None, "miss"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file is a miss, and gets rewritten
            return None, "miss"
        self._remember(key, state)
        return self._expand(state), "disk"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored state (CPU tensors) or ``None``; a disk hit is promoted to memory."""
        return self.lookup(key)[0]

    def put(self, key: str, state: dict[str, Any]) -> dict[str, Any]:
        """Store ``state``; returns it as later lookups will (fp16-rounded when ``fp16``)."""
        stored = _map_floats(state, _to_fp16) if self.fp16 else state
        self._remember(key, stored)
        path = self._path(key)
        if path is not None and not path.exists():
            _atomic_save(stored, path)
        return self._expand(stored)

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        """Hold ``key``'s claim while computing it: a process sharing the directory that misses the same key
        waits here, then finds the entry (:meth:`lookup` again) instead of encoding it a second time.

        Why: two records encoding the same images at once (two grid shells or Ray tasks over one
        ``$FMSSL_FM_CACHE``, e.g. IFDL seeds reaching their first round together) would otherwise each pay
        the encoder for every image. An OS file lock (``filelock``) is released by the kernel if its
        holder dies, so a killed process never blocks the others. Without a directory: nothing to share.
        """
        if self.directory is None:
            yield
            return
        with claim_lock(self.directory, key):
            yield

    def clear_memory(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _expand(self, state: dict[str, Any]) -> dict[str, Any]:
        return _map_floats(state, _from_fp16) if self.fp16 else state

    def _remember(self, key: str, state: dict[str, Any]) -> None:
        size = state_nbytes(state)
        if size > self.max_bytes or self.max_items <= 0:
            return
        if key in self._entries:
            self._bytes -= self._entries.pop(key)[1]
        self._entries[key] = (state, size)
        self._bytes += size
        while len(self._entries) > self.max_items or self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    def _path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / (f"{key}.f16.pt" if self.fp16 else f"{key}.pt")


def claim_file(directory: Path, key: str) -> Path:
    """Where the claim of ``key`` lives for a cache in ``directory``: ``<directory>/.claims/<key>.lock``,
    out of the entries' way (shared by the embedding and proposal caches)."""
    return Path(directory) / ".claims" / f"{key}.lock"


def claim_lock(directory: Path, key: str):
    """The file lock a process holds while it computes ``key`` (:func:`claim_file`, its folder created)."""
    from filelock import FileLock

    path = claim_file(directory, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def run_embedding_cache(
    directory: str | Path,
    fp16: bool = RUN_CACHE_FP16,
    *,
    max_items: int = RUN_MEMORY_ITEMS,
    max_bytes: int = RUN_MEMORY_BYTES,
) -> EmbeddingCache:
    """A cache that holds a whole run's images: every entry on disk under ``directory``
    (e.g. ``<run_dir>/fm_cache``), a bounded LRU in memory in front of it.

    The disk is not bounded: budget ~2 (fp16) or ~4 (fp32) MiB per image for every SAM-family
    model here (their embeddings are all 256 x 64 x 64).
    """
    return EmbeddingCache(directory, max_items=max_items, max_bytes=max_bytes, fp16=fp16)


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file and rename, so concurrent readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
