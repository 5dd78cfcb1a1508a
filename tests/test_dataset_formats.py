"""Adapters for the other on-disk formats, on tiny data written in those exact layouts."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from fmssl_bench.benchmark.cli import main
from fmssl_bench.datasets import build_dataset
from fmssl_bench.datasets.synthetic import synthetic_case
from fmssl_bench.errors import DataError


def make_nnunet(root, n=6, unlabeled=1, msd=False):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for k in range(n):
        image, label = synthetic_case((24, 20, 12), seed=9, index=k)
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        name = f"case_{k:03d}"
        image_path = root / "imagesTr" / (f"{name}.nii.gz" if msd else f"{name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(image[0], affine), str(image_path))
        if k < n - unlabeled:
            nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(root / "labelsTr" / f"{name}.nii.gz"))
            training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    if msd:
        meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"}, "training": training}
    else:
        meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
                "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("msd", [False, True])
def test_nnunet_and_msd_layouts(tmp_path, msd):
    ds = build_dataset("nnunet", make_nnunet(tmp_path / "ds", msd=msd))
    assert ds.classes == ("background", "organ", "lesion")
    case = ds.load("case_000")
    assert case.image.shape == (1, 24, 20, 12) and case.label.shape == (24, 20, 12)
    np.testing.assert_allclose(case.spacing, (0.8, 0.8, 2.5))
    assert ds.has_label("case_000")
    assert ds.check() == []
    if not msd:
        assert not ds.has_label("case_005")  # image without label: an unlabeled case


def test_nnunet_runs_end_to_end(tmp_path, make_protocol):
    root = make_nnunet(tmp_path / "ds", n=8)
    proto = make_protocol("synthetic-3d", train={"iterations": 2, "patch": [16, 16, 16], "checkpoint_every": 2},
                          inference={"patch": [16, 16, 16], "stride": [16, 16, 16]})
    assert main(["--method", "mean_teacher", "--dataset", "nnunet", "--data-root", str(root), "--labeled", "2",
                 "--protocol", proto, "--out", str(tmp_path / "runs"), "--no-progress"]) == 0


def test_nnunet_bad_dataset_json(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match="dataset.json"):
        build_dataset("nnunet", tmp_path / "ds")
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 3}}))
    with pytest.raises(DataError, match="consecutive"):
        build_dataset("nnunet", tmp_path / "ds")


def test_brats2019_ssl4mis_layout(tmp_path):
    root = tmp_path / "BraTS2019"
    (root / "data").mkdir(parents=True)
    ids = [f"BraTS19_{k}" for k in range(5)]
    for k, case_id in enumerate(ids):
        image, label = synthetic_case((20, 20, 20), seed=2, index=k)
        with h5py.File(root / "data" / f"{case_id}.h5", "w") as f:
            f["image"], f["label"] = image[0], (label > 0).astype(np.uint8)
    (root / "train.txt").write_text("\n".join(ids[:3]))
    (root / "test.txt").write_text("\n".join(ids[3:]))
    ds = build_dataset("brats2019", root)
    assert ds.case_ids() == sorted(ids)
    assert ds.official_split().test == ids[3:]
    assert ds.load(ids[0]).image.shape == (1, 20, 20, 20)
    assert ds.check() == []
