"""Conformance tests of fmssl_bench.benchmark.evaluation.metrics against medpy and MONAI (``pytest -k metrics``).

Every comparison is a real one: medpy and MONAI compute their own values from the same masks and
ours must agree to ``RTOL`` (relative). Shapes are small so the file runs in seconds.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Iterator

import h5py
import numpy as np
import pytest
from medpy.metric import binary as medpy
from scipy import ndimage

from fmssl_bench.benchmark.evaluation import bench_metrics
from fmssl_bench.benchmark.evaluation import metrics as M
from fmssl_bench.benchmark.evaluation.metrics import METRICS, MetricConfig, evaluate_case, evaluate_many
from fmssl_bench.errors import ConfigError

RTOL = 1e-6
ANISO = {2: (0.7, 1.9), 3: (0.8, 1.3, 2.6)}


# ----------------------------------------------------------------------------- shapes


def blob(shape: tuple[int, ...], seed: int, level: float = 0.52) -> np.ndarray:
    """Random smooth blobs (thresholded Gaussian-filtered noise): several components, holes."""
    noise = np.random.default_rng(seed).random(shape)
    return ndimage.gaussian_filter(noise, 2.0) > level


def single_voxel(shape: tuple[int, ...], at: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[at] = True
    return mask


def thin_line_2d() -> tuple[np.ndarray, np.ndarray]:
    """One-pixel-wide diagonal line and a one-pixel-wide polyline near it: erosion leaves nothing."""
    pred, ref = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    idx = np.arange(5, 35)
    ref[idx, idx] = True
    pred[idx, np.clip(idx + 2, 0, 39)] = True
    pred[20, 10:30] = True
    return pred, ref


def thin_plane_3d() -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.zeros((20, 24, 22), bool), np.zeros((20, 24, 22), bool)
    ref[10, 3:20, 4:18] = True
    pred[12, 5:22, 2:15] = True
    pred[4:16, 8, 8] = True  # a one-voxel-wide rod
    return pred, ref


def touching_border(ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Objects cut by the image border: their surface lies on the border (medpy's erosion)."""
    shape = (30, 34) if ndim == 2 else (18, 22, 20)
    ref = np.zeros(shape, bool)
    ref[(slice(0, 12),) + (slice(None),) * (ndim - 1)] = True  # fills a whole slab at index 0
    pred = blob(shape, 7, level=0.5) | ndimage.binary_dilation(ref, iterations=2)
    pred[(slice(-3, None),) * ndim] = True  # a corner cube
    return pred, ref


def far_apart(ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint objects many voxels apart: exercises the k-d tree path, not offset probing."""
    shape = (60, 60) if ndim == 2 else (40, 40, 40)
    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    ref[(slice(2, 12),) * ndim] = True
    pred[(slice(25, 37),) * ndim] = True
    pred[(slice(3, 5),) * ndim] = True  # plus a small overlapping piece
    return pred, ref


def near(ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Dilated / shifted copy: most distances are 0-3 voxels (offset probing path)."""
    shape = (64, 60) if ndim == 2 else (36, 32, 30)
    ref = blob(shape, 11, level=0.5)
    pred = np.roll(ndimage.binary_dilation(ref), 1, axis=0)
    return pred, ref


def pair_cases() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    yield "blobs-2d", blob((48, 56), 1), blob((48, 56), 2)
    yield "blobs-3d", blob((26, 30, 28), 3), blob((26, 30, 28), 4)
    yield "single-voxels-2d", single_voxel((15, 17), (3, 4)), single_voxel((15, 17), (11, 9))
    yield "single-voxels-3d", single_voxel((9, 10, 11), (1, 2, 3)), single_voxel((9, 10, 11), (7, 1, 9))
    yield "single-voxel-in-blob", single_voxel((26, 30, 28), (13, 15, 14)), blob((26, 30, 28), 5, level=0.5)
    yield "same-single-voxel", single_voxel((8, 8, 8), (0, 7, 3)), single_voxel((8, 8, 8), (0, 7, 3))
    yield "thin-line-2d", *thin_line_2d()
    yield "thin-plane-3d", *thin_plane_3d()
    yield "touching-border-2d", *touching_border(2)
    yield "touching-border-3d", *touching_border(3)
    yield "full-image-vs-blob", np.ones((12, 14, 10), bool), blob((12, 14, 10), 6, level=0.5)
    yield "far-apart-2d", *far_apart(2)
    yield "far-apart-3d", *far_apart(3)
    yield "near-2d", *near(2)
    yield "near-3d", *near(3)
    yield "identical", blob((20, 22, 18), 8), blob((20, 22, 18), 8)


PAIRS = list(pair_cases())
PAIR_IDS = [name for name, _, _ in PAIRS]


def spacing_for(mask: np.ndarray, anisotropic: bool) -> tuple[float, ...] | None:
    return ANISO[mask.ndim] if anisotropic else None


def medpy_values(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...] | None) -> dict[str, float]:
    return {
        "dice": medpy.dc(pred, ref),
        "jaccard": medpy.jc(pred, ref),
        "sensitivity": medpy.sensitivity(pred, ref),
        "hd95": medpy.hd95(pred, ref, voxelspacing=spacing),
        "asd": medpy.asd(pred, ref, voxelspacing=spacing),
        "assd": medpy.assd(pred, ref, voxelspacing=spacing),
    }


def ours(pred: np.ndarray, ref: np.ndarray, spacing, **config: str) -> dict[str, float]:
    """Our label-1 row (label 1 forced, so that both-empty pairs are scored too)."""
    pred, ref = pred.astype(np.uint8), ref.astype(np.uint8)
    return evaluate_case(pred, ref, spacing, labels=[1], config=MetricConfig(**config))[1]


def assert_close(got: float, want: float, what: str) -> None:
    assert math.isclose(got, want, rel_tol=RTOL, abs_tol=1e-12), f"{what}: got {got!r}, want {want!r}"


# ----------------------------------------------------------------------------- medpy conformance


@pytest.mark.parametrize("anisotropic", [False, True], ids=["voxel", "aniso"])
@pytest.mark.parametrize(("name", "pred", "ref"), PAIRS, ids=PAIR_IDS)
def test_metrics_match_medpy(name: str, pred: np.ndarray, ref: np.ndarray, anisotropic: bool) -> None:
    spacing = spacing_for(ref, anisotropic)
    want = medpy_values(pred, ref, spacing)
    directed = ours(pred, ref, spacing)  # defaults: medpy-pooled hd95, directed asd
    symmetric = ours(pred, ref, spacing, asd="symmetric")
    for metric in ("dice", "jaccard", "sensitivity", "hd95", "asd"):
        assert_close(directed[metric], want[metric], f"{name} {metric}")
    assert_close(symmetric["asd"], want["assd"], f"{name} assd")
    assert directed["empty_pred"] == directed["empty_ref"] == 0.0


@pytest.mark.parametrize("query_cost", [0.0, 1e12], ids=["tree-only", "probe-all"])
@pytest.mark.parametrize("radius", [0.0, 1.5, 6.0])
@pytest.mark.parametrize("anisotropic", [False, True], ids=["voxel", "aniso"])
def test_metrics_search_strategy_is_exact(monkeypatch, radius: float, query_cost: float, anisotropic: bool) -> None:
    """Offset probing and the k-d tree must give medpy's numbers whichever resolves a point."""
    monkeypatch.setattr(M, "LOCAL_RADIUS", radius)
    monkeypatch.setattr(M, "QUERY_COST", query_cost)
    M._short_offsets.cache_clear()
    try:
        for name in ("blobs-3d", "near-2d", "far-apart-3d", "thin-plane-3d", "touching-border-2d"):
            _, pred, ref = PAIRS[PAIR_IDS.index(name)]
            spacing = spacing_for(ref, anisotropic)
            want = medpy_values(pred, ref, spacing)
            got = ours(pred, ref, spacing, asd="symmetric")
            assert_close(got["hd95"], want["hd95"], f"{name} hd95")
            assert_close(got["asd"], want["assd"], f"{name} assd")
    finally:
        M._short_offsets.cache_clear()


@pytest.mark.parametrize("ndim", [2, 3])
def test_metrics_surface_equals_medpy_erosion(ndim: int) -> None:
    """Our shifted-AND surface equals ``mask ^ binary_erosion(mask, cross)`` (border_value 0)."""
    footprint = ndimage.generate_binary_structure(ndim, 1)
    shape = (23, 19) if ndim == 2 else (13, 11, 12)
    masks = [blob(shape, s, level=0.48) for s in range(4)] + [np.ones(shape, bool), touching_border(ndim)[0]]
    for mask in masks:
        want = mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)
        np.testing.assert_array_equal(M.surface_voxels(mask), want)


def test_metrics_multiclass_per_label() -> None:
    """Each label is scored as its own binary problem; default labels = nonzero in ref or pred."""
    shape = (24, 26, 22)
    ref = np.zeros(shape, np.int16)
    ref[blob(shape, 21, 0.5)] = 1
    ref[blob(shape, 22, 0.55)] = 2
    ref[2:6, 2:6, 2:6] = 3  # missed by the prediction
    pred = np.zeros(shape, np.int16)
    pred[np.roll(ref == 1, 2, axis=1)] = 1
    pred[ndimage.binary_dilation(ref == 2)] = 2
    pred[18:21, 20:24, 15:19] = 5  # hallucinated label
    spacing = ANISO[3]
    results = evaluate_case(pred, ref, spacing)
    assert sorted(results) == [1, 2, 3, 5]
    for label in (1, 2):
        want = medpy_values(pred == label, ref == label, spacing)
        for metric in METRICS:
            assert_close(results[label][metric], want[metric], f"label {label} {metric}")
    assert results[3]["empty_pred"] == 1.0 and results[3]["dice"] == 0.0
    assert results[5]["empty_ref"] == 1.0 and math.isnan(results[5]["sensitivity"])
    assert list(evaluate_case(pred, ref, spacing, labels=[2, 1])) == [2, 1]


# ----------------------------------------------------------------------------- MONAI conformance


@pytest.fixture(scope="module")
def monai_metrics():
    metrics = pytest.importorskip("monai.metrics")
    import torch

    def onehot(mask: np.ndarray):
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))

    def compute(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
        p, r = onehot(pred), onehot(ref)
        with warnings.catch_warnings():  # MONAI's own deprecation notice about an internal call
            warnings.simplefilter("ignore", FutureWarning)
            return {
                "hd95": metrics.compute_hausdorff_distance(p, r, percentile=95, spacing=spacing).item(),
                "asd": metrics.compute_average_surface_distance(p, r, symmetric=False, spacing=spacing).item(),
                "assd": metrics.compute_average_surface_distance(p, r, symmetric=True, spacing=spacing).item(),
            }

    return compute


MONAI_PAIRS = [p for p in PAIRS if p[0] in {
    "blobs-2d", "blobs-3d", "single-voxels-3d", "single-voxel-in-blob", "thin-line-2d", "thin-plane-3d",
    "touching-border-2d", "touching-border-3d", "far-apart-3d", "near-3d",
}]


@pytest.mark.parametrize("anisotropic", [False, True], ids=["voxel", "aniso"])
@pytest.mark.parametrize(("name", "pred", "ref"), MONAI_PAIRS, ids=[p[0] for p in MONAI_PAIRS])
def test_metrics_match_monai(monai_metrics, name, pred, ref, anisotropic: bool) -> None:
    """MONAI 1.6.1 has medpy's surface; its HD95 is our max-directional one, its ASD ours."""
    spacing = spacing_for(ref, anisotropic)
    want = monai_metrics(pred, ref, spacing)
    assert_close(ours(pred, ref, spacing, hd95="max-directional")["hd95"], want["hd95"], f"{name} hd95")
    assert_close(ours(pred, ref, spacing)["asd"], want["asd"], f"{name} asd")
    assert_close(ours(pred, ref, spacing, asd="symmetric")["asd"], want["assd"], f"{name} assd")


def test_metrics_hd95_modes_differ_and_match_their_sources(monai_metrics) -> None:
    """A small far island (7% of the prediction's surface, 4% of both) separates the two HD95s."""
    ref = np.zeros((50, 50), bool)
    ref[10:30, 10:30] = True
    pred = ref.copy()
    pred[44:46, 44:47] = True
    pooled = ours(pred, ref, None)["hd95"]
    maxdir = ours(pred, ref, None, hd95="max-directional")["hd95"]
    assert_close(pooled, medpy.hd95(pred, ref), "pooled")
    assert_close(maxdir, monai_metrics(pred, ref, None)["hd95"], "max-directional")
    assert pooled == 0.0 and maxdir > 15.0


# ----------------------------------------------------------------------------- empty masks

NAN = math.nan
#: (pred empty?, ref empty?) -> expected values; "D" = image diagonal, "P" = the policy's value.
EMPTY_TABLE = {
    "both-empty": dict(dice=1.0, jaccard=1.0, sensitivity=NAN, hd95=0.0, asd=0.0, empty_pred=1.0, empty_ref=1.0),
    "pred-empty": dict(dice=0.0, jaccard=0.0, sensitivity=0.0, hd95="P", asd="P", empty_pred=1.0, empty_ref=0.0),
    "ref-empty": dict(dice=0.0, jaccard=0.0, sensitivity=NAN, hd95="P", asd="P", empty_pred=0.0, empty_ref=1.0),
}


@pytest.mark.parametrize("asd_mode", ["directed", "symmetric"])
@pytest.mark.parametrize("spacing", [None, (0.5, 2.0, 3.0)], ids=["voxel", "mm"])
@pytest.mark.parametrize("policy", ["worst", "nan", "zero"])
@pytest.mark.parametrize("cell", list(EMPTY_TABLE))
def test_metrics_empty_policy_table(cell: str, policy: str, spacing, asd_mode: str) -> None:
    shape = (10, 12, 14)
    something = blob(shape, 9, level=0.5)
    nothing = np.zeros(shape, bool)
    pred = nothing if cell in ("both-empty", "pred-empty") else something
    ref = nothing if cell in ("both-empty", "ref-empty") else something
    got = ours(pred, ref, spacing, empty_policy=policy, asd=asd_mode, hd="max")
    diagonal = math.sqrt(sum((n * (1.0 if spacing is None else s)) ** 2 for n, s in zip(shape, spacing or shape)))
    policy_value = {"worst": diagonal, "nan": NAN, "zero": 0.0}[policy]
    assert set(got) == set(METRICS) | {"hd", "empty_pred", "empty_ref"}
    for key, want in {**EMPTY_TABLE[cell], "hd": EMPTY_TABLE[cell]["hd95"]}.items():
        want = policy_value if want == "P" else want
        assert math.isnan(got[key]) if math.isnan(want) else got[key] == pytest.approx(want, rel=1e-12), (key, got[key])
    if cell != "both-empty" and policy != "zero":
        assert not got["hd95"] == 0.0, "a missed or hallucinated structure scores HD95 = 0 only under the zero policy"


def test_metrics_worst_distance_exceeds_any_real_distance() -> None:
    shape = (16, 16)
    a, b = single_voxel(shape, (0, 0)), single_voxel(shape, (15, 15))
    worst = ours(a, np.zeros(shape, bool), None)["hd95"]
    assert worst > ours(a, b, None)["hd95"] == pytest.approx(15 * math.sqrt(2))


# ----------------------------------------------------------------------------- config and ids


ALL_CONFIGS = [MetricConfig(h, a, e) for h in M.HD95_MODES for a in M.ASD_MODES for e in M.EMPTY_POLICIES]


def test_metrics_config_defaults_and_ids() -> None:
    config = MetricConfig()
    assert config.to_dict() == {"hd95": "medpy-pooled", "asd": "directed", "empty_policy": "worst"}
    assert config.ids(False) == {
        "dice": "dice",
        "jaccard": "jaccard",
        "hd95": "hd95@medpy-pooled/voxel;empty=worst",
        "asd": "asd@directed/voxel;empty=worst",
        "sensitivity": "sensitivity",
    }
    assert MetricConfig("max-directional", "symmetric", "nan").ids(True)["hd95"] == "hd95@max-directional/mm;empty=nan"
    assert MetricConfig("max-directional", "symmetric", "nan").ids(True)["asd"] == "assd@symmetric/mm;empty=nan"
    assert tuple(config.ids(True)) == METRICS


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: "-".join(c.to_dict().values()))
def test_metrics_config_round_trips(config: MetricConfig) -> None:
    assert MetricConfig.from_dict(config.to_dict()) == config
    for spacing_aware in (False, True):
        assert MetricConfig.from_ids(config.ids(spacing_aware)) == (config, spacing_aware)


@pytest.mark.parametrize("anisotropic", [False, True], ids=["voxel", "aniso"])
@pytest.mark.parametrize(("name", "pred", "ref"), PAIRS[:8], ids=PAIR_IDS[:8])
def test_metrics_full_hausdorff_matches_medpy_hd(name: str, pred: np.ndarray, ref: np.ndarray, anisotropic: bool) -> None:
    spacing = spacing_for(pred, anisotropic)
    if not pred.any() or not ref.any():
        pytest.skip("medpy hd raises on an empty mask (the empty cells are tested with the policy table)")
    got = ours(pred, ref, spacing, hd="max")
    assert_close(got["hd"], medpy.hd(pred, ref, voxelspacing=spacing), f"{name} hd")
    assert got["hd"] >= got["hd95"]
    assert "hd" not in ours(pred, ref, spacing)  # optional: scored only when asked for


def test_metrics_full_hausdorff_id_is_versioned_and_optional() -> None:
    assert "hd" not in MetricConfig().ids(False) and MetricConfig().to_dict() == {
        "hd95": "medpy-pooled", "asd": "directed", "empty_policy": "worst"}
    config = MetricConfig(hd="max", empty_policy="zero")
    assert config.ids(True)["hd"] == "hd@max/mm;empty=zero"
    assert config.metrics == METRICS + ("hd",)
    assert MetricConfig.from_ids(config.ids(False)) == (config, False)
    assert MetricConfig.from_dict(config.to_dict()) == config


def test_metrics_ids_are_distinct_per_semantics() -> None:
    seen = {(c, s): (c.ids(s)["hd95"], c.ids(s)["asd"]) for c in ALL_CONFIGS for s in (False, True)}
    assert len(set(seen.values())) == len(seen)


@pytest.mark.parametrize(
    "bad",
    [{"hd95": "pooled"}, {"asd": "mean"}, {"empty_policy": "zeros"}, {"hd": "95"}, {"spacing": True}],
    ids=["hd95", "asd", "empty", "hd", "unknown-key"],
)
def test_metrics_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ConfigError):
        MetricConfig.from_dict(bad)


def test_metrics_from_ids_rejects_foreign_ids() -> None:
    ids = MetricConfig().ids(False)
    for broken in ({**ids, "hd95": "hd95"}, {**ids, "asd": "asd@directed/mm;empty=worst"}):
        with pytest.raises(ConfigError):
            MetricConfig.from_ids(broken)


# ----------------------------------------------------------------------------- inputs and batches


@pytest.mark.parametrize(
    ("pred", "ref", "spacing"),
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), None),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), None),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0)),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), (1.0, 0.0)),
    ],
    ids=["shape", "float-map", "spacing-length", "spacing-zero"],
)
def test_metrics_rejects_bad_inputs(pred, ref, spacing) -> None:
    with pytest.raises(ValueError):
        evaluate_case(pred, ref, spacing)


def test_metrics_bool_and_label_defaults() -> None:
    pred, ref = blob((20, 20), 1), blob((20, 20), 2)
    assert list(evaluate_case(pred, ref)) == [1]
    assert evaluate_case(np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8)) == {}
    big = np.zeros((6, 6), np.int64)
    big[1, 1], big[2, 2] = 70000, -3
    assert list(evaluate_case(big, np.zeros_like(big))) == [-3, 70000]


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_evaluate_many_keeps_order(workers: int) -> None:
    items = [(f"case{i}", blob((18, 20, 16), i).astype(np.uint8), blob((18, 20, 16), i + 10).astype(np.uint8), sp)
             for i, sp in enumerate([None, (1.0, 2.0, 0.5), None])]
    got = evaluate_many(items, config=MetricConfig(asd="symmetric"), workers=workers)
    assert [row["case"] for row in got] == ["case0", "case1", "case2"]
    for row, (_, pred, ref, spacing) in zip(got, items):
        assert row["results"] == evaluate_case(pred, ref, spacing, config=MetricConfig(asd="symmetric"))


def test_metrics_worker_resolution() -> None:
    assert M.resolve_workers(0, 10) == min(2, M._usable_cpus())
    assert M.resolve_workers(4, 3) == 3
    assert M.resolve_workers(0, 0) == 1
    with pytest.raises(ConfigError):
        M.resolve_workers(-1, 3)


# ----------------------------------------------------------------------------- benchmark


def test_metrics_bench_missing_data_root(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere"
    args = argparse.Namespace(data_root=missing, repeats=1, cases=None)
    assert bench_metrics.run(args) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and len(err.splitlines()) == 1


def write_fake_la(root, cases: dict[str, np.ndarray]) -> None:
    (root / "test.list").write_text("\n".join(cases) + "\n")
    for case_id, label in cases.items():
        folder = root / bench_metrics.CASE_DIR / case_id
        folder.mkdir(parents=True)
        with h5py.File(folder / bench_metrics.CASE_FILE, "w") as handle:
            handle["image"] = label.astype(np.float32)
            handle["label"] = label.astype(np.uint8)


def test_metrics_bench_agrees_with_medpy_on_small_volumes(tmp_path, capsys) -> None:
    write_fake_la(tmp_path, {"A": blob((30, 28, 20), 31, 0.5), "B": blob((26, 30, 22), 32, 0.5)})
    parser = argparse.ArgumentParser()
    bench_metrics.add_arguments(parser)
    code = bench_metrics.run(parser.parse_args(["--data-root", str(tmp_path), "--repeats", "1"]))
    out = capsys.readouterr().out
    assert code in (0, 1)  # speed on toy volumes is not the point here
    refs = [bench_metrics.load_label(tmp_path, c) for c in ("A", "B")]
    pairs = [(n, p, r) for r in refs for n, p in bench_metrics.perturbations(r).items()]
    report = bench_metrics.measure(pairs, repeats=1)
    assert report.n_pairs == 8 and max(report.max_delta.values()) <= bench_metrics.MAX_DELTA
    assert "max |delta|" in out and ("PASS" in out or "FAIL" in out)


def test_metrics_bench_perturbations_are_deterministic_and_distinct() -> None:
    ref = blob((20, 22, 18), 33, 0.5).astype(np.uint8)
    first, second = bench_metrics.perturbations(ref), bench_metrics.perturbations(ref)
    assert list(first) == list(second) and len(first) == 4
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert all(not np.array_equal(first[k], ref) for k in first)
