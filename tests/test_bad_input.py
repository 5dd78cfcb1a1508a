"""Every bad input: exit code 2, one line naming the flag/file and what was expected, no run directory."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from fmssl_bench.benchmark.cli import main
from helpers import make_folder2d, make_la

TINY3D = dict(net={"n_filters": 2}, train={"iterations": 2, "patch": [16, 16, 16], "checkpoint_every": 1},
              inference={"patch": [16, 16, 16], "stride": [16, 16, 16]}, eval_workers=1)


def run_cli(args, capsys) -> tuple[int, str]:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_clean_failure(rc: int, err: str, *fragments: str, out: Path | None = None) -> None:
    assert rc == 2, err
    assert len(err.splitlines()) == 1, f"expected a one-line error, got:\n{err}"
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    if out is not None:
        made = [p for p in out.glob("*/*") if p.parent.name != "splits"] if out.exists() else []
        assert not made, f"partial run directory left behind: {made}"


@pytest.fixture
def la_dir(tmp_path):
    return make_la(tmp_path / "LA")


@pytest.fixture
def proto3d(make_protocol):
    return make_protocol("la-smoke", **TINY3D)


def la_args(root, out, protocol, labeled="2", method="supervised"):
    return ["--method", method, "--dataset", "la", "--data-root", str(root), "--labeled", labeled,
            "--protocol", protocol, "--out", str(out), "--no-progress"]


@pytest.mark.parametrize("flag,value,expected", [
    ("--method", "no_such_method", "mean_teacher"),
    ("--dataset", "no_such_dataset", "synthetic-2d"),
    ("--protocol", "no_such_protocol", "la-smoke"),
])
def test_unknown_names_list_valid_ones(flag, value, expected, capsys, tmp_path):
    args = {"--method": "supervised", "--dataset": "synthetic-2d", "--protocol": "synthetic-2d"}
    args[flag] = value
    flat = [x for kv in args.items() for x in kv] + ["--out", str(tmp_path / "runs")]
    rc, err = run_cli(flat, capsys)
    assert_clean_failure(rc, err, value, expected, out=tmp_path / "runs")


def test_missing_data_root(capsys, tmp_path, proto3d):
    rc, err = run_cli(la_args(tmp_path / "nowhere", tmp_path / "runs", proto3d), capsys)
    assert_clean_failure(rc, err, "--data-root", "nowhere", out=tmp_path / "runs")


def test_no_data_root_and_no_env(capsys, tmp_path, proto3d, monkeypatch):
    monkeypatch.delenv("FMSSL_DATA", raising=False)
    rc, err = run_cli(["--method", "supervised", "--dataset", "la", "--protocol", proto3d, "--out", str(tmp_path)], capsys)
    assert_clean_failure(rc, err, "--data-root", "FMSSL_DATA")


def test_missing_train_list(capsys, tmp_path, la_dir, proto3d):
    (la_dir / "train.list").unlink()
    rc, err = run_cli(la_args(la_dir, tmp_path / "runs", proto3d), capsys)
    assert_clean_failure(rc, err, "train.list", out=tmp_path / "runs")


@pytest.mark.parametrize("key,case", [("image", "CASE000"), ("label", "CASE006")])  # a labeled, a test case
def test_h5_without_dataset(key, case, capsys, tmp_path, la_dir, proto3d):
    path = la_dir / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"
    with h5py.File(path, "a") as f:
        del f[key]
    rc, err = run_cli(la_args(la_dir, tmp_path / "runs", proto3d), capsys)
    assert_clean_failure(rc, err, str(path), out=tmp_path / "runs")
    assert repr(key) in err or "no label" in err


def _rewrite(path: Path, **datasets) -> None:
    with h5py.File(path, "a") as f:
        for key, value in datasets.items():
            del f[key]
            f[key] = value


def test_shape_mismatch(capsys, tmp_path, la_dir, proto3d):
    path = la_dir / "2018LA_Seg_Training Set" / "CASE001" / "mri_norm2.h5"
    _rewrite(path, label=np.zeros((10, 10, 10), np.uint8))
    rc, err = run_cli(la_args(la_dir, tmp_path / "runs", proto3d), capsys)
    assert_clean_failure(rc, err, str(path), "does not match", out=tmp_path / "runs")


def test_label_values_outside_classes(capsys, tmp_path, la_dir, proto3d):
    path = la_dir / "2018LA_Seg_Training Set" / "CASE007" / "mri_norm2.h5"  # a test case
    with h5py.File(path, "r") as f:
        label = f["label"][()]
    label[0, 0, 0] = 3
    _rewrite(path, label=label)
    rc, err = run_cli(la_args(la_dir, tmp_path / "runs", proto3d), capsys)
    assert_clean_failure(rc, err, str(path), "label values", "0..1", out=tmp_path / "runs")


def test_nan_in_image(capsys, tmp_path, la_dir, proto3d):
    path = la_dir / "2018LA_Seg_Training Set" / "CASE004" / "mri_norm2.h5"  # an unlabeled case
    with h5py.File(path, "r") as f:
        image = f["image"][()]
    image[1, 2, 3] = np.nan
    _rewrite(path, image=image)
    rc, err = run_cli(la_args(la_dir, tmp_path / "runs", proto3d, method="mean_teacher"), capsys)
    assert_clean_failure(rc, err, str(path), "NaN", out=tmp_path / "runs")


@pytest.mark.parametrize("labeled,fragment", [("7", "only 6"), ("0", "at least 1"), ("-3", "at least 1"), ("abc", "expected a count")])
def test_bad_budget(labeled, fragment, capsys, tmp_path, la_dir, proto3d):
    rc, err = run_cli(la_args(la_dir, tmp_path / "runs", proto3d, labeled=labeled), capsys)
    assert_clean_failure(rc, err, "--labeled", fragment, out=tmp_path / "runs")


def test_unreadable_image_file(capsys, tmp_path, make_protocol):
    root = make_folder2d(tmp_path / "folder", n=12)
    (root / "images" / "img003.png").write_bytes(b"this is not a png")
    proto = make_protocol("synthetic-2d", resize=[32, 32], train={"iterations": 2, "patch": [32, 32]})
    rc, err = run_cli(["--method", "supervised", "--dataset", "folder2d", "--data-root", str(root), "--labeled", "4",
                       "--protocol", proto, "--out", str(tmp_path / "runs")], capsys)
    assert_clean_failure(rc, err, "img003.png", "unreadable", out=tmp_path / "runs")


def test_corrupt_checkpoint_on_resume(capsys, tmp_path, la_dir, proto3d):
    out = tmp_path / "runs"
    assert main(la_args(la_dir, out, proto3d, labeled="2")) == 0
    capsys.readouterr()
    (ckpt,) = out.glob("la/supervised/*/*/*/checkpoint_train.pt")
    (ckpt.parent / "summary.json").unlink()  # make the record incomplete so the run resumes
    ckpt.write_bytes(b"\x00garbage")
    rc, err = run_cli(la_args(la_dir, out, proto3d, labeled="2"), capsys)
    assert_clean_failure(rc, err, str(ckpt), "corrupt")


def test_check_data_reports_every_problem(capsys, tmp_path, la_dir):
    bad_image = la_dir / "2018LA_Seg_Training Set" / "CASE002" / "mri_norm2.h5"
    bad_label = la_dir / "2018LA_Seg_Training Set" / "CASE006" / "mri_norm2.h5"
    with h5py.File(bad_image, "r") as f:
        image = f["image"][()]
    image[0, 0, 0] = np.inf
    _rewrite(bad_image, image=image)
    _rewrite(bad_label, label=np.full((40, 36, 24), 5, np.uint8))
    (la_dir / "test.list").write_text("CASE006\nCASE007\nGHOST\n")
    rc = main(["check-data", "--dataset", "la", "--data-root", str(la_dir)])
    out = capsys.readouterr().out
    assert rc == 1
    assert str(bad_image) in out and str(bad_label) in out and "GHOST" in out
    assert "3 problem(s)" in out


def test_check_data_healthy(capsys, tmp_path, la_dir):
    assert main(["check-data", "--dataset", "la", "--data-root", str(la_dir)]) == 0
    assert "8 cases OK" in capsys.readouterr().out
