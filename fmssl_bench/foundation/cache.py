"""Embedding cache: the image encoder is the expensive part, so each image is encoded once per run.

Key = sha256 over a format version, the model identity (name, weights sha256, input recipe) and
the normalised image's shape, dtype and bytes. Entries live in an in-memory LRU bounded by count
and bytes and, when a directory is given, on disk as ``<key>.pt`` (``torch.save`` /
``torch.load(weights_only=True)``) so that later runs and other processes reuse them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: bump when the stored layout or the preprocessing changes, so stale disk entries are never read
CACHE_FORMAT = 1

DEFAULT_MAX_ITEMS = 512
DEFAULT_MAX_BYTES = 2 * 1024**3


def state_nbytes(obj: Any) -> int:
    """Bytes held by the tensors of a (nested) embedding state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


class EmbeddingCache:
    """In-memory LRU (``max_items`` entries, ``max_bytes`` bytes) plus an optional disk directory."""

    def __init__(
        self,
        directory: str | Path | None = None,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._bytes = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @staticmethod
    def key(image: np.ndarray, identity: str) -> str:
        digest = hashlib.sha256()
        digest.update(f"fmssl-embedding-v{CACHE_FORMAT}|{identity}|".encode())
        digest.update(f"{image.shape}|{image.dtype}|".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored state (CPU tensors) or ``None``; a disk hit is promoted to memory."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file is a miss, and gets rewritten
            return None
        self._remember(key, state)
        return state

    def put(self, key: str, state: dict[str, Any]) -> None:
        self._remember(key, state)
        path = self._path(key)
        if path is not None and not path.exists():
            _atomic_save(state, path)

    def clear_memory(self) -> None:
        self._entries.clear()
        self._bytes = 0

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
        return None if self.directory is None else self.directory / f"{key}.pt"


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
