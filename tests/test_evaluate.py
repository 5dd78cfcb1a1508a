"""Evaluation apart from training: saved predictions, re-scoring a run, scoring outside predictions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from fmssl_bench.benchmark.evaluation import rescore
from fmssl_bench.benchmark.evaluation.predictions import (
    UnmatchedPredictionWarning,
    encode_case_id,
    load_prediction_folder,
    prediction_path,
    read_prediction,
    save_prediction,
)
from fmssl_bench.benchmark.evaluation.scoring import evaluate_predictor, summarise, write_per_case
from fmssl_bench.benchmark.protocol import load_protocol
from fmssl_bench.benchmark.records.leaderboard import aggregate, find_summaries
from fmssl_bench.benchmark.records.store import atomic_write_json
from fmssl_bench.benchmark.splits import resolve_split
from fmssl_bench.benchmark.views import TestView as CaseView  # (not a test class)
from fmssl_bench.datasets import build_dataset
from fmssl_bench.errors import ConfigError, DataError

from helpers import make_folder2d, make_la

CPU = torch.device("cpu")


class IntensityNet(torch.nn.Module):
    """A fixed 1x1 convolution: logits from intensity alone, so predictions are imperfect but deterministic."""

    def __init__(self, ndim: int, n_classes: int) -> None:
        super().__init__()
        conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
        self.conv = conv(1, n_classes, 1)
        weights = torch.tensor([-2.0, 2.0, 0.5, 1.0][:n_classes])
        bias = torch.tensor([0.0, -1.0, 0.2, -0.5][:n_classes])
        with torch.no_grad():
            self.conv.weight.copy_(weights.view(n_classes, 1, *([1] * ndim)))
            self.conv.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, :1])


def fake_run(directory: Path, dataset: str, protocol_path: str, data_root: Path | None) -> Path:
    """A complete run record made as the runner makes one, with an untrained fixed predictor."""
    protocol = load_protocol(protocol_path)
    adapter = build_dataset(dataset, data_root)
    split = resolve_split(adapter, directory.parent / "splits")
    config = {"method": "supervised", "dataset": dataset, "data_root": str(adapter.root), "labeled": "2",
              "seed": 0, "protocol": protocol.name,
              "protocol_resolved": protocol.to_dict(), "dataset_options": {}}
    atomic_write_json(directory / "config.json", config)
    atomic_write_json(directory / "split.json", {"source": split.source, "labeled": [], "unlabeled": [],
                                                 "test": split.test})
    net = IntensityNet(adapter.ndim, len(adapter.classes))
    rows = evaluate_predictor(net, CaseView(adapter, split.test), protocol, adapter.classes, CPU, progress=False,
                              predictions_dir=directory / "predictions")
    write_per_case(directory / "per_case.csv", rows)
    atomic_write_json(directory / "summary.json", summarise(rows, config, n_test=len(split.test)))
    return directory


def reference_folder(folder: Path, adapter, ids: list[str]) -> Path:
    for case in CaseView(adapter, ids):
        save_prediction(folder, case.case_id, case.label, case.spacing, adapter.ndim)
    return folder


def folder2d_setup(tmp_path: Path, n: int = 30) -> tuple[Path, object, list[str], Path]:
    """folder2d data (48x56 images), its adapter, the harness's test ids and a results root."""
    data = make_folder2d(tmp_path / "data", n=n)
    out = tmp_path / "runs"
    adapter = build_dataset("folder2d", data)
    test_ids = list(resolve_split(adapter, out / "splits").test)
    return data, adapter, test_ids, out


# ----------------------------------------------------------------------------- prediction files


def test_case_ids_map_to_safe_file_names():
    assert encode_case_id("CASE001") == "CASE001" and encode_case_id("img 7-a_b") == "img 7-a_b"
    assert encode_case_id("a/b") == "a%2Fb" and encode_case_id("50%") == "50%25"
    assert encode_case_id(".hidden") == "%2Ehidden" and encode_case_id("a\\b") == "a%5Cb"
    assert prediction_path(Path("p"), "a/b", 3) == Path("p/a%2Fb.nii.gz")
    assert prediction_path(Path("p"), "x", 2) == Path("p/x.png")


def test_saved_predictions_round_trip_with_spacing_and_no_transposition(tmp_path):
    pred = np.random.default_rng(0).integers(0, 3, size=(5, 6, 7)).astype(np.uint8)
    path = save_prediction(tmp_path, "c1", pred, (0.625, 0.7, 2.5), 3)
    assert path.name == "c1.nii.gz"
    back, spacing = read_prediction(path, 3)
    assert back.shape == (5, 6, 7) and np.array_equal(back, pred)
    assert spacing == pytest.approx((0.625, 0.7, 2.5))
    assert np.allclose(nib.load(str(path)).affine, np.diag([0.625, 0.7, 2.5, 1.0]))
    assert path.read_bytes() == save_prediction(tmp_path / "again", "c1", pred, (0.625, 0.7, 2.5), 3).read_bytes()

    mask = np.zeros((4, 9), dtype=np.uint8)
    mask[1:3, 2:7] = 1
    png = save_prediction(tmp_path, "c2", mask, (1.0, 1.0), 2)
    assert Image.open(png).size == (9, 4)  # (width, height): stored at the array's own size
    back2, none = read_prediction(png, 2)
    assert none is None and np.array_equal(back2, mask)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_2d_predictions_are_saved_at_the_original_image_size(tmp_path, make_protocol):
    _, adapter, test_ids, _ = folder2d_setup(tmp_path, n=20)
    protocol = load_protocol(make_protocol("kvasir-smoke", resize=[32, 32]))
    evaluate_predictor(IntensityNet(2, 2), CaseView(adapter, test_ids), protocol, adapter.classes, CPU, progress=False,
                       predictions_dir=tmp_path / "pred")
    for case_id in test_ids:
        labels, _ = read_prediction(prediction_path(tmp_path / "pred", case_id, 2), 2)
        assert labels.shape == (48, 56) == adapter.load_label(case_id).shape
        assert set(np.unique(labels)) <= {0, 1}


# ----------------------------------------------------------------------------- re-scoring a run


def test_rescoring_a_run_reproduces_its_per_case_rows_and_applies_overrides(tmp_path, make_protocol):
    data = make_la(tmp_path / "LA", n_train=2, n_test=2, shape=(40, 36, 24))
    proto = make_protocol("synthetic-3d", train={"patch": [32, 32, 16]},
                          inference={"patch": [32, 32, 16], "stride": [16, 16, 8]})
    run = fake_run(tmp_path / "runs" / "run", "la", proto, data)
    record_files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["CASE002.nii.gz", "CASE003.nii.gz"]
    assert read_prediction(run / "predictions" / "CASE002.nii.gz", 3)[1] == pytest.approx((0.625,) * 3)

    same = rescore.evaluate_run(run)
    out = run / "evaluations" / "hd95-medpy-pooled_asd-directed_empty-worst_voxel"
    assert same["evaluation"] == str(out) and same["matches_record"] is True
    assert (out / "per_case.csv").read_bytes() == (run / "per_case.csv").read_bytes()
    recorded = json.loads((run / "summary.json").read_text())
    assert same["classes"] == recorded["classes"] and same["metric_ids"] == recorded["metric_ids"]
    assert json.loads((out / rescore.EVALUATION_SUMMARY).read_text())["metrics"]["units"] == "voxel"

    other = rescore.evaluate_run(run, {"hd95": "max-directional", "asd": "symmetric", "units": "mm"})
    assert Path(other["evaluation"]).name == "hd95-max-directional_asd-symmetric_empty-worst_mm"
    assert other["matches_record"] is None and other["same_metrics_as_record"] is False
    assert other["metric_ids"]["hd95"] == "hd95@max-directional/mm;empty=worst"
    assert other["metric_ids"]["asd"] == "assd@symmetric/mm;empty=worst"
    mean, old = other["classes"]["mean"], recorded["classes"]["mean"]
    assert mean["dice"] == old["dice"] and mean["hd95"]["mean"] != old["hd95"]["mean"]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == record_files  # the record is untouched
    assert len(find_summaries(tmp_path / "runs")) == 1  # re-scorings are not leaderboard rows

    with pytest.raises(ConfigError, match="hd95"):
        rescore.evaluate_run(run, {"hd95": "mean"})
    with pytest.raises(ConfigError, match="spacing"):
        rescore.evaluate_run(run, {"spacing": "mm"})


def test_rescoring_refuses_incomplete_or_prediction_less_records(tmp_path, make_protocol):
    proto = make_protocol("synthetic-2d")
    run = fake_run(tmp_path / "runs" / "run", "synthetic-2d", proto, None)
    (run / "summary.json").unlink()
    with pytest.raises(DataError, match="not a complete run record"):
        rescore.evaluate_run(run)
    run = fake_run(tmp_path / "runs" / "run2", "synthetic-2d", proto, None)
    for path in (run / "predictions").iterdir():
        path.unlink()
    (run / "predictions").rmdir()
    with pytest.raises(DataError, match="--force"):
        rescore.evaluate_run(run)
    with pytest.raises(DataError, match="config.json: not found"):
        rescore.evaluate_run(tmp_path / "nowhere")


def test_the_runner_saves_predictions_that_rescore_to_its_own_rows(tmp_path, make_protocol, capsys):
    """The real runner (via the CLI) saves its test predictions; `fmssl-bench evaluate RUN_DIR` reproduces its rows."""
    from fmssl_bench.benchmark import cli

    proto = make_protocol("synthetic-2d", train={"iterations": 2, "checkpoint_every": 2})
    out = tmp_path / "runs"
    assert cli.main(["--method", "supervised", "--dataset", "synthetic-2d", "--labeled", "4", "--protocol", proto,
                     "--out", str(out), "--no-progress"]) == 0
    (summary,) = out.glob("synthetic-2d/supervised/labeled-4/seed0/*/summary.json")
    record = summary.parent
    test_ids = json.loads((record / "split.json").read_text())["test"]
    assert sorted(p.name for p in (record / "predictions").iterdir()) == sorted(f"{i}.png" for i in test_ids)
    capsys.readouterr()
    assert cli.main(["evaluate", str(record)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("supervised on synthetic-2d (4, 10 test cases") and "evaluations" in printed
    (csv,) = record.glob("evaluations/*/per_case.csv")
    assert csv.read_bytes() == (record / "per_case.csv").read_bytes()
    assert [s["method"] for s in find_summaries(out)] == ["supervised"]

    assert cli.main(["evaluate", str(record), "--units", "mm", "--asd", "symmetric"]) == 0
    assert (record / "evaluations" / "hd95-medpy-pooled_asd-symmetric_empty-worst_mm" / "evaluation.json").is_file()
    with pytest.raises(SystemExit):
        cli.main(["evaluate", str(record), "--predictions", str(record / "predictions")])
    (record / "predictions" / f"{test_ids[0]}.png").unlink()
    capsys.readouterr()
    assert cli.main(["evaluate", str(record)]) == 2
    assert f"test case {test_ids[0]!r}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- outside predictions


@pytest.mark.filterwarnings("ignore::fmssl_bench.benchmark.evaluation.predictions.UnmatchedPredictionWarning")
def test_reference_labels_as_predictions_score_perfectly_and_form_a_record(tmp_path):
    data, adapter, test_ids, out = folder2d_setup(tmp_path)
    folder = reference_folder(tmp_path / "pred", adapter, test_ids)
    train_case = next(i for i in adapter.case_ids() if i not in test_ids)
    save_prediction(folder, train_case, np.zeros((48, 56), np.uint8), (1.0, 1.0), 2)  # not a test case: ignored
    with pytest.warns(UnmatchedPredictionWarning, match=f"{train_case}.png"):
        summary = rescore.evaluate_folder(folder, "folder2d", "refcopy", data_root=data, out=out)
    assert summary["classes"]["mean"]["dice"]["mean"] == 1.0 and summary["classes"]["mean"]["hd95"]["mean"] == 0.0
    assert summary["external"] is True and summary["n_test"] == len(test_ids) == 3
    record = Path(summary["record"])
    assert record.parent == out / "folder2d" / "refcopy" / "labeled-external" / "seed0"
    config = json.loads((record / "config.json").read_text())
    assert config["external"] is True and config["method"] == "refcopy" and config["seed"] == 0
    assert config["predictions_folder"] == str(folder.resolve()) and config["protocol"] == "kvasir"
    assert config["identity"]["external"] == "refcopy" and len(config["identity"]["predictions"]) == 64
    assert sorted(p.name for p in (record / "predictions").iterdir()) == sorted(f"{i}.png" for i in test_ids)
    assert json.loads((record / "split.json").read_text())["test"] == test_ids
    (row,) = aggregate(find_summaries(out))
    assert row["method"] == "refcopy" and row["labeled"] == "external" and row["dice"] == 100.0

    provenance = (record / "provenance.json").read_text()
    again = rescore.evaluate_folder(folder, "folder2d", "refcopy", data_root=data, out=out)  # cache hit
    assert again["record"] == str(record) and (record / "provenance.json").read_text() == provenance
    assert rescore.evaluate_run(record)["matches_record"] is True  # an external record re-scores like a run

    save_prediction(folder, test_ids[0], np.zeros((48, 56), np.uint8), (1.0, 1.0), 2)  # the folder changed
    changed = rescore.evaluate_folder(folder, "folder2d", "refcopy", data_root=data, out=out)
    assert changed["record"] != str(record) and changed["classes"]["mean"]["dice"]["mean"] < 1.0
    assert len(aggregate(find_summaries(out))) == 2  # two versions of the folder, two rows
    forced = rescore.evaluate_folder(folder, "folder2d", "refcopy", data_root=data, out=out, force=True)
    assert forced["record"] == changed["record"] and forced["classes"] == changed["classes"]


def test_a_missing_case_is_refused_by_name_and_nothing_is_written(tmp_path):
    data, adapter, test_ids, out = folder2d_setup(tmp_path)
    folder = reference_folder(tmp_path / "pred", adapter, test_ids)
    prediction_path(folder, test_ids[1], 2).rename(folder / f"{test_ids[1]}.jpg")
    with pytest.raises(DataError) as err:
        rescore.evaluate_folder(folder, "folder2d", "partial", data_root=data, out=out)
    message = str(err.value)
    assert f"test case {test_ids[1]!r} as {test_ids[1]}.png" in message and f"found {test_ids[1]}.jpg" in message
    assert "1 problem(s)" in message
    assert not (out / "folder2d").exists()


def test_every_problem_of_a_folder_is_reported_at_once(tmp_path):
    data, adapter, test_ids, out = folder2d_setup(tmp_path)
    folder = tmp_path / "pred"
    a, b, c = test_ids
    save_prediction(folder, a, np.zeros((32, 32), np.uint8), (1.0, 1.0), 2)  # resized, not original size
    seven = adapter.load_label(b).copy()
    seven[0, 0] = 7
    save_prediction(folder, b, seven, (1.0, 1.0), 2)
    save_prediction(folder, c, adapter.load_label(c) * 255, (1.0, 1.0), 2)
    with pytest.raises(DataError) as err:
        rescore.evaluate_folder(folder, "folder2d", "broken", data_root=data, out=out)
    lines = str(err.value).splitlines()
    assert "3 problem(s)" in lines[0] and len(lines) == 4
    assert f"{a}.png: shape (32, 32); expected (48, 56), the shape of the reference" in lines[1]
    assert f"{b}.png: label values [0, 1, 7] outside the classes 0..1" in lines[2]
    assert f"{c}.png" in lines[3] and "mask // 255" in lines[3]
    assert not (out / "folder2d").exists()

    Image.fromarray(np.zeros((48, 56, 3), np.uint8)).save(prediction_path(folder, a, 2))  # RGB
    prediction_path(folder, b, 2).write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        load_prediction_folder(folder, adapter, test_ids, adapter.classes)
    assert "PNG mode 'RGB'" in str(err.value) and "unreadable PNG file" in str(err.value)


def test_3d_spacing_orientation_and_unreadable_files_are_reported(tmp_path):
    data = make_la(tmp_path / "LA", n_train=2, n_test=3, shape=(40, 36, 24))
    adapter = build_dataset("la", data)
    ids = list(adapter.official_split().test)
    folder = reference_folder(tmp_path / "pred", adapter, ids)
    label = adapter.load_label(ids[0])
    nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 1.0, 1.0])), prediction_path(folder, ids[0], 3))
    nib.save(nib.Nifti1Image(label[::-1].copy(), np.diag([-0.625, 0.625, 0.625, 1.0])), prediction_path(folder, ids[1], 3))
    prediction_path(folder, ids[2], 3).write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        load_prediction_folder(folder, adapter, ids, adapter.classes)
    lines = str(err.value).splitlines()
    assert "3 problem(s)" in lines[0] and len(lines) == 4
    assert f"{ids[0]}.nii.gz: voxel spacing (1.0, 1.0, 1.0) differs from the data set's (0.625, 0.625, 0.625)" in lines[1]
    assert f"{ids[1]}.nii.gz: orientation LAS" in lines[2]
    assert f"{ids[2]}.nii.gz: unreadable NIfTI file" in lines[3]

    good = reference_folder(tmp_path / "good", adapter, ids)
    loaded = load_prediction_folder(good, adapter, ids, adapter.classes)
    assert [c for c, _, _ in loaded] == ids and all(s == (0.625,) * 3 for _, _, s in loaded)
    assert all(np.array_equal(p, adapter.load_label(c)) for c, p, _ in loaded)


def test_outside_names_and_cli_flags_are_checked(tmp_path, capsys):
    data, adapter, test_ids, out = folder2d_setup(tmp_path)
    folder = reference_folder(tmp_path / "pred", adapter, test_ids)
    for bad in ("mean_teacher", "../up", ""):
        with pytest.raises(ConfigError, match="--name"):
            rescore.evaluate_folder(folder, "folder2d", bad, data_root=data, out=out)
    with pytest.raises(DataError, match="not a folder"):
        rescore.evaluate_folder(tmp_path / "absent", "folder2d", "x", data_root=data, out=out)

    parser = argparse.ArgumentParser()
    rescore.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([str(tmp_path), "--predictions", str(folder)])
    for argv, match in (([], "RUN_DIR"), ([str(tmp_path), "--name", "x"], "--name only apply"),
                        (["--predictions", str(folder), "--name", "x"], "--dataset and --name"),
                        (["--predictions", str(folder), "--dataset", "folder2d", "--name", "x", "--hd95",
                          "max-directional"], "apply to RUN_DIR")):
        with pytest.raises(ConfigError, match=match):
            rescore.run(parser.parse_args(argv))
    args = parser.parse_args(["--predictions", str(folder), "--dataset", "folder2d", "--name", "mine", "--labeled", "10%",
                              "--data-root", str(data), "--out", str(out)])
    assert rescore.run(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("mine on folder2d (10%, 3 test cases") and "Dice 100.00%" in printed
    assert (out / "folder2d" / "mine" / "labeled-10pct" / "seed0").is_dir()


def test_real_kvasir_reference_masks_score_perfectly(kvasir_root, tmp_path):
    adapter = build_dataset("kvasir", kvasir_root)
    out = tmp_path / "runs"
    test_ids = list(resolve_split(adapter, out / "splits").test)
    folder = reference_folder(tmp_path / "pred", adapter, test_ids)
    summary = rescore.evaluate_folder(folder, "kvasir", "refcopy", data_root=kvasir_root, out=out)
    assert summary["classes"]["mean"]["dice"]["mean"] == 1.0 and summary["n_test"] == len(test_ids)
