"""Per-stage outputs of a run (pseudo-labels, the cases accepted in a round, adapter weights).

``ctx.artifacts`` stores them under ``<record>/artifacts/<stage>/`` atomically, so a killed run
never leaves half an artifact, and a resumed run reloads what a finished stage produced instead
of recomputing it. Three kinds cover what methods need: JSON (ids, thresholds, small tables),
named arrays (``.npz``: pseudo-label maps) and tensor state (``.pt``, read back with
``torch.load(weights_only=True)``: LoRA weights, heads). :meth:`ArtifactStore.cached` is the
"compute once per run" idiom.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ...errors import FmsslError
from ..records.store import atomic_torch_save, atomic_write_bytes, atomic_write_json

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SUFFIX = {"json": ".json", "arrays": ".npz", "state": ".pt"}


class ArtifactStore:
    """Atomic save/load of named per-stage artifacts in one folder per stage."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, name: str, kind: str) -> Path:
        for what, value in (("stage", stage), ("artifact", name)):
            if not _NAME.match(value):
                raise ValueError(f"{what} name {value!r}: use letters, digits, '.', '_' or '-'")
        if kind not in _SUFFIX:
            raise ValueError(f"artifact kind {kind!r}; expected one of {sorted(_SUFFIX)}")
        return self.root / stage / f"{name}{_SUFFIX[kind]}"

    def has(self, stage: str, name: str, kind: str) -> bool:
        return self.path(stage, name, kind).is_file()

    def save(self, stage: str, name: str, kind: str, value: Any) -> Path:
        path = self.path(stage, name, kind)
        if kind == "json":
            atomic_write_json(path, value)
        elif kind == "arrays":
            buf = io.BytesIO()
            np.savez_compressed(buf, **{str(k): np.asarray(v) for k, v in dict(value).items()})
            atomic_write_bytes(path, buf.getvalue())
        else:
            atomic_torch_save(value, path)
        return path

    def load(self, stage: str, name: str, kind: str) -> Any:
        path = self.path(stage, name, kind)
        try:
            if kind == "json":
                return json.loads(path.read_text())
            if kind == "arrays":
                with np.load(path, allow_pickle=False) as data:
                    return {k: data[k] for k in data.files}
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FmsslError(f"{path}: artifact not found (stage {stage!r} has not produced {name!r})") from None
        except Exception as err:  # truncated/foreign file: say which and how to recover
            raise FmsslError(f"{path}: unreadable artifact ({type(err).__name__}); delete it to recompute") from None

    def cached(self, stage: str, name: str, kind: str, compute: Callable[[], Any]) -> Any:
        """Load the artifact if a previous (interrupted) run made it, else compute, save and return it."""
        if self.has(stage, name, kind):
            return self.load(stage, name, kind)
        value = compute()
        self.save(stage, name, kind, value)
        return self.load(stage, name, kind) if kind == "arrays" else value

    def listing(self) -> dict[str, list[str]]:
        """Stage -> artifact file names (for provenance)."""
        if not self.root.is_dir():
            return {}
        return {d.name: sorted(f.name for f in d.iterdir() if not f.name.startswith("."))
                for d in sorted(self.root.iterdir()) if d.is_dir()}

