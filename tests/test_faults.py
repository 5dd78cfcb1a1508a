"""Faults while writing: a full disk or an unwritable results root leaves the previous checkpoint,
no half-written file and no temporary file, is one clean error line naming the file, and the same
command afterwards resumes. The disk is made full by a patched writer raising ``OSError(ENOSPC)``
after it has written part of the file.
"""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch

from fmssl_bench.benchmark.cli import main
from fmssl_bench.benchmark.records import store
from fmssl_bench.errors import FmsslError

ENOSPC = os.strerror(errno.ENOSPC)


class FullDisk(io.RawIOBase):
    """A file stream that takes ``room`` bytes and then fails like a full disk."""

    def __init__(self, inner, room: int) -> None:
        self.inner, self.room = inner, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.inner.write(data[: self.room])  # part of it reached the disk
            self.inner.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, ENOSPC)
        self.room -= len(data)
        return self.inner.write(data)

    def fileno(self) -> int:
        return self.inner.fileno()

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes first
            self.inner.close()


def fill_disk_at(monkeypatch, name: str, after: int = 0, room: int = 64, error: int = errno.ENOSPC) -> list[str]:
    """Make the write of ``name`` fail from its ``after+1``-th write on; returns the temporary files tried."""
    real = store._open_tmp
    seen: list[str] = []

    def opener(fd: int, tmp: str):
        stream = real(fd, tmp)
        if Path(tmp).name.startswith(f".{name}."):
            seen.append(tmp)
            if len(seen) > after:
                if error != errno.ENOSPC:
                    stream.close()
                    raise OSError(error, os.strerror(error))
                return FullDisk(stream, room)
        return stream

    monkeypatch.setattr(store, "_open_tmp", opener)
    return seen


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")]


def test_full_disk_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "record" / "summary.json"
    store.atomic_write_json(path, {"version": 1})
    tried = fill_disk_at(monkeypatch, "summary.json")
    with pytest.raises(FmsslError) as err:
        store.atomic_write_json(path, {"version": 2, "padding": "x" * 1000})
    assert str(err.value) == f"cannot write {path}: {ENOSPC}"
    assert tried and not os.path.exists(tried[0])  # the half-written temporary file is gone
    assert json.loads(path.read_text()) == {"version": 1} and not temporaries(tmp_path)


def test_full_disk_during_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_train.pt"
    store.atomic_torch_save({"iteration": 1, "w": torch.zeros(10)}, path)
    fill_disk_at(monkeypatch, "checkpoint_train.pt", room=200)
    with pytest.raises(FmsslError, match=f"cannot write {path}: {ENOSPC}"):
        store.atomic_torch_save({"iteration": 2, "w": torch.ones(10_000)}, path)
    assert torch.load(path, weights_only=True)["iteration"] == 1 and not temporaries(tmp_path)


def test_unwritable_places_are_one_clean_error(tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(FmsslError, match="cannot write .*blocker.*Not a directory"):
        store.atomic_write_text(blocker / "runs" / "x.json", "{}")
    fill_disk_at(monkeypatch, "x.json", error=errno.EACCES)
    with pytest.raises(FmsslError, match=f"cannot write {tmp_path / 'x.json'}: Permission denied"):
        store.atomic_write_text(tmp_path / "x.json", "{}")
    assert not temporaries(tmp_path)


def _run(tmp_path: Path, make_protocol, capsys) -> tuple[int, str, Path]:
    proto = make_protocol("synthetic-2d", train={"iterations": 3, "checkpoint_every": 1}, eval_workers=1)
    out = tmp_path / "runs"
    rc = main(["--method", "supervised", "--dataset", "synthetic-2d", "--labeled", "4", "--protocol", proto,
               "--out", str(out), "--no-progress"])
    return rc, capsys.readouterr().err.strip(), out


def _record(out: Path) -> Path:
    (config,) = out.glob("synthetic-2d/supervised/labeled-4/seed0/*/config.json")
    return config.parent


def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_the_run_resumes(tmp_path, make_protocol, monkeypatch,
                                                                             capsys):
    fill_disk_at(monkeypatch, "checkpoint_train.pt", after=1, room=500)  # the 2nd checkpoint write fails
    rc, err, out = _run(tmp_path, make_protocol, capsys)
    record = _record(out)
    assert rc == 2 and err.splitlines()[-1] == f"fmssl-bench: error: cannot write {record / 'checkpoint_train.pt'}: {ENOSPC}"
    assert torch.load(record / "checkpoint_train.pt", weights_only=True)["iteration"] == 1  # the previous checkpoint
    assert not (record / "summary.json").exists() and not temporaries(out)
    monkeypatch.undo()  # space freed: the same command resumes from iteration 1
    rc, err, out = _run(tmp_path, make_protocol, capsys)
    assert rc == 0 and "resuming train from iteration 1 of 3" in err
    assert (record / "summary.json").is_file() and not temporaries(out)
    iterations = [line.split(",")[1] for line in (record / "train_log.csv").read_text().splitlines()[1:]]
    assert iterations == ["1", "2", "3"]


def test_disk_full_at_the_summary_leaves_no_half_written_record(tmp_path, make_protocol, monkeypatch, capsys):
    fill_disk_at(monkeypatch, "summary.json")
    rc, err, out = _run(tmp_path, make_protocol, capsys)
    record = _record(out)
    assert rc == 2 and err.splitlines()[-1] == f"fmssl-bench: error: cannot write {record / 'summary.json'}: {ENOSPC}"
    assert not (record / "summary.json").exists() and not temporaries(out)  # not complete, so never a cache hit
    monkeypatch.undo()
    rc, err, out = _run(tmp_path, make_protocol, capsys)
    assert rc == 0 and "resuming after stage train" in err and (record / "summary.json").is_file()


def test_unwritable_split_file_refuses_before_the_record_begins(tmp_path, make_protocol, monkeypatch, capsys):
    from helpers import make_folder2d

    root = make_folder2d(tmp_path / "f", n=12)
    proto = make_protocol("synthetic-2d", resize=[32, 32], train={"iterations": 1, "patch": [32, 32]}, eval_workers=1)
    fill_disk_at(monkeypatch, "folder2d.json")
    out = tmp_path / "runs"
    rc = main(["--method", "supervised", "--dataset", "folder2d", "--data-root", str(root), "--labeled", "2",
               "--protocol", proto, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err == f"fmssl-bench: error: cannot write {out / 'splits' / 'folder2d.json'}: {ENOSPC}"
    assert not list(out.glob("folder2d/*/*/*/*/config.json")) and not temporaries(out)
