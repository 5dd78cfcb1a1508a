"""SamDSK (seed 003): the optimal-matching solver, the selection rule, the rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmssl_bench.methods.proposal_matching import brute_force_matching, optimal_matching, soft_iou


def random_problem(rng: np.random.Generator, n_classes: int, k: int, size: int = 10):
    """Random rectangles as proposals and blurred rectangles as probability maps."""
    proposals = np.zeros((k, size, size), bool)
    for i in range(k):
        y0, x0 = rng.integers(0, size - 2, 2)
        h, w = rng.integers(1, size - max(y0, x0) + 1, 2)
        proposals[i, y0:y0 + h, x0:x0 + w] = True
    probs = np.zeros((n_classes, size, size))
    for c in range(n_classes):
        y0, x0 = rng.integers(0, size - 3, 2)
        probs[c, y0:y0 + 4, x0:x0 + 4] = rng.uniform(0.5, 1.0)
        probs[c] += rng.uniform(0, 0.2, (size, size)) * (rng.random((size, size)) < 0.3)
    return probs.clip(0, 1), proposals


@pytest.mark.parametrize("n_classes,k,v_lower,v_upper", [
    (1, 6, (1,), (1,)), (1, 7, (1,), (2,)), (1, 7, (1,), (3,)), (1, 6, (2,), (3,)), (1, 6, (0,), (2,)),
    (2, 6, (1, 1), (1, 1)), (2, 6, (1, 1), (2, 2)), (2, 7, (1, 0), (3, 2)), (3, 6, (1, 1, 1), (2, 1, 2)),
])
def test_solver_equals_brute_force_on_random_small_problems(n_classes, k, v_lower, v_upper):
    rng = np.random.default_rng([n_classes, k, *v_lower, *v_upper])
    for _ in range(12):
        probs, proposals = random_problem(rng, n_classes, k)
        found = optimal_matching(probs, proposals, v_lower, v_upper)
        best, feasible = brute_force_matching(probs, proposals, v_lower, v_upper)
        assert found.feasible == feasible
        if feasible:
            assert sum(found.ious) == pytest.approx(best, abs=1e-12)
            for c, chosen in enumerate(found.chosen):  # the reported IoUs are those of the chosen unions
                union = proposals[list(chosen)].any(0) if chosen else np.zeros(probs.shape[1:], bool)
                assert found.ious[c] == pytest.approx(soft_iou(probs[c], union))
                assert v_lower[c] <= len(chosen) <= v_upper[c]
            used = [i for chosen in found.chosen for i in chosen]
            assert len(used) == len(set(used))  # Eq. 2: a proposal serves one class


def test_soft_iou_is_the_ordinary_iou_for_binary_maps_and_fuzzy_otherwise():
    a = np.zeros((6, 6)); a[:3, :3] = 1
    b = np.zeros((6, 6), bool); b[1:4, 1:4] = True
    assert soft_iou(a, b) == pytest.approx(4 / 14)
    assert soft_iou(a * 0.5, a.astype(bool)) == pytest.approx(4.5 / 9)  # sum min / sum max
    assert soft_iou(np.zeros((3, 3)), np.zeros((3, 3), bool)) == 1.0


def test_unions_need_v_upper_above_one():
    """Two halves of the object: one-to-one matching gets half of it, v_upper 2 gets all of it."""
    prob = np.zeros((1, 8, 8)); prob[0, 2:6, 2:6] = 1.0
    left = np.zeros((8, 8), bool); left[2:6, 2:4] = True
    right = np.zeros((8, 8), bool); right[2:6, 4:6] = True
    far = np.zeros((8, 8), bool); far[7, 7] = True
    proposals = np.stack([far, left, right])
    one = optimal_matching(prob, proposals, (1,), (1,))
    two = optimal_matching(prob, proposals, (1,), (2,))
    assert one.beta == pytest.approx(0.5)
    assert two.beta == pytest.approx(1.0) and sorted(two.chosen[0]) == [1, 2]
    assert (two.annotation(proposals, (8, 8)) == prob[0].astype(np.uint8)).all()


def test_exact_proposal_is_accepted_and_no_match_is_not():
    prob = np.zeros((1, 16, 16)); prob[0, 4:10, 4:10] = 0.95
    exact = np.zeros((16, 16), bool); exact[4:10, 4:10] = True
    elsewhere = np.zeros((16, 16), bool); elsewhere[12:16, 0:4] = True
    hit = optimal_matching(prob, np.stack([elsewhere, exact]), (1,), (1,))
    miss = optimal_matching(prob, np.stack([elsewhere]), (1,), (1,))
    assert hit.beta == pytest.approx(0.95) and hit.beta > 0.9  # beta* = 0.9: selected
    assert not miss.feasible and miss.beta == 0.0  # no overlapping proposal: never selected


# --------------------------------------------------------------------------- the method, real MobileSAM

def _mobilesam_or_skip():
    from fmssl_bench.errors import FmsslError
    from fmssl_bench.foundation import build_generalist

    try:
        return build_generalist("mobilesam")
    except FmsslError as err:
        pytest.skip(f"MobileSAM weights unavailable (set FMSSL_WEIGHTS): {err}")


def make_disks(root, n: int = 12, size: int = 64):
    """Bright disks on a dark noisy background: SAM's automatic masks find them."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        cy, cx = rng.integers(22, 42, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(9, 15) ** 2).astype(np.uint8)
        image = 0.15 + 0.7 * mask + rng.normal(0, 0.03, mask.shape)
        rgb = (np.clip(np.stack([image] * 3, -1), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"d{k:02d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"d{k:02d}.png")
    return root


def _run(tmp_path, make_protocol, *extra):
    from fmssl_bench.benchmark.cli import main

    root = tmp_path / "disks"
    if not root.exists():
        make_disks(root)
    proto = make_protocol("synthetic-2d", resize=[64, 64], train={"iterations": 4, "patch": [64, 64],
                          "checkpoint_every": 2, "optimizer": "adam", "lr": 0.01}, net={"channels": [4, 8, 16]})
    out = tmp_path / "runs"
    rc = main(["--method", "samdsk", "--dataset", "folder2d", "--data-root", str(root), "--labeled", "3",
               "--protocol", proto, "--out", str(out), "--no-progress", "--method-arg", "points_per_side=2",
               "--method-arg", "rounds=2", "--method-arg", "beta_star=0.0", *extra])
    assert rc == 0
    (record,) = out.glob("folder2d/samdsk/*/*/*")
    return record


@pytest.mark.usefixtures("one_thread")
def test_samdsk_with_real_mobilesam_records_rounds_and_resumes_a_killed_round(tmp_path, make_protocol, monkeypatch):
    """Real MobileSAM proposals (a 2 x 2 point grid keeps it CPU-cheap); a kill in the last round resumes
    to the same per-case numbers, with the proposals read back from the shared cache."""
    _mobilesam_or_skip()
    monkeypatch.setenv("FMSSL_FM_CACHE", str(tmp_path / "fm-cache"))
    record = _run(tmp_path, make_protocol)
    prov = json.loads((record / "provenance.json").read_text())
    samdsk = prov["method"]["samdsk"]
    rounds = samdsk["rounds"]
    n_unlabeled = len(json.loads((record / "split.json").read_text())["unlabeled"])
    assert rounds[0]["round"] == 1 and rounds[0]["candidates"] == n_unlabeled
    assert rounds[0]["accepted"] > 0  # beta* = 0: every feasible image is accepted
    trained = ["train"] + [f"round{r['round']}" for r in rounds if r["accepted"]]
    assert [s["stage"] for s in prov["stages"]] == trained
    if len(rounds) == 1:  # round 1 took every image: nothing left for round 2
        assert rounds[0]["accepted"] == n_unlabeled and samdsk["stopped"].startswith("every unlabeled image")
    assert set(prov["round_evaluation"]) == {"round0", *trained[1:]}
    assert "round1" in prov["pseudo_label_quality"]["mean_dice_by_tag"]
    assert samdsk["proposals"]["computed"] == n_unlabeled and samdsk["proposals"]["hits"] >= 0
    assert prov["method"]["deviations"][0].startswith("generalist mobilesam")
    selection = json.loads((record / "artifacts" / "round1" / "selection.json").read_text())
    assert set(selection["accepted"]) <= set(selection["ids"]) and len(selection["ids"]) == n_unlabeled
    identity = json.loads((record / "config.json").read_text())["identity"]
    assert "supervised" in identity["components"] and identity["generalists"]["mobilesam"]

    expected = (record / "per_case.csv").read_text()
    for name in ("summary.json", "per_case.csv", f"checkpoint_{trained[-1]}.pt"):  # a kill in the last stage
        (record / name).unlink()
    assert _run(tmp_path, make_protocol) == record
    assert (record / "per_case.csv").read_text() == expected
    again = json.loads((record / "provenance.json").read_text())["method"]["samdsk"]["proposals"]
    assert again is None  # the resumed run read round 1's selection back from its artifact: no SAM call


@pytest.mark.usefixtures("one_thread")
def test_processes_sharing_the_proposal_cache_never_compute_an_image_twice(tmp_path):
    """Real MobileSAM (2 x 2 point grid). Another holder of an image's claim (a second lock on the file,
    as another process would hold it) makes ``fill`` leave that image for the end: one holder writes its
    entry (read back here, not recomputed), the other releases without one (it died: computed here)."""
    import threading
    import time

    from filelock import FileLock

    from fmssl_bench.foundation.proposals import ProposalCache, ProposalSettings, to_uint8_rgb

    fm = _mobilesam_or_skip()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    images = [np.stack([0.2 + 0.6 * (((yy - 32) ** 2 + (xx - 20 - 6 * k) ** 2) <= 100) + rng.normal(0, 0.02, (64, 64))] * 3)
              for k in range(4)]
    ours = ProposalCache(fm, ProposalSettings(points_per_side=2), tmp_path)
    other = ProposalCache(fm, ProposalSettings(points_per_side=2), tmp_path)
    keys = [ours.key(to_uint8_rgb(image)) for image in images]
    ours.claim_path(keys[0]).parent.mkdir(parents=True)
    claimed = threading.Event()

    def other_processes():
        writes, dies = FileLock(str(ours.claim_path(keys[0]))), FileLock(str(ours.claim_path(keys[1])))
        writes.acquire()
        dies.acquire()
        claimed.set()
        deadline = time.time() + 120
        while ours.stats["computed"] < 2 and time.time() < deadline:  # fill went past both claimed images
            time.sleep(0.05)
        other.masks(images[0])
        writes.release()
        dies.release()

    helper = threading.Thread(target=other_processes)
    helper.start()
    assert claimed.wait(30)
    lines: list[str] = []
    ours.fill(images, say=lines.append, every=1)
    helper.join()
    assert ours.stats["computed"] == 3 and ours.stats["by_others"] == 1 and ours.stats["hits"] == 1
    assert other.stats["computed"] == 1
    assert lines and lines[-1].startswith("SAM proposals (3 computed here): 4/4 images")
    assert all((tmp_path / "proposals" / f"{key}.json").is_file() for key in keys)
    np.testing.assert_array_equal(ours.masks(images[0]), other.masks(images[0]))
    ours.fill(images)  # all cached: nothing computed again
    assert ours.stats["computed"] == 3


@pytest.mark.usefixtures("one_thread")
def test_points_per_batch_changes_neither_the_proposals_nor_the_cache_key(tmp_path):
    """Real MobileSAM (4 x 4 point grid). The decoder's batch size is a speed setting only: one point at a
    time and all 16 at once give the same masks (RLE) with scores equal up to float rounding, so entries
    computed with either are one cache entry (the key has no batch size)."""
    from segment_anything.utils.amg import rle_to_mask

    from fmssl_bench.foundation.proposals import ProposalCache, ProposalSettings, to_uint8_rgb

    fm = _mobilesam_or_skip()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    disks = (((yy - 30) ** 2 + (xx - 24) ** 2) <= 120) | (((yy - 44) ** 2 + (xx - 46) ** 2) <= 40)
    image = np.stack([0.15 + 0.7 * disks + rng.normal(0, 0.03, (64, 64))] * 3)
    rgb = to_uint8_rgb(image)
    one = ProposalCache(fm, ProposalSettings(points_per_side=4), tmp_path / "one", points_per_batch=1)
    many = ProposalCache(fm, ProposalSettings(points_per_side=4), tmp_path / "many", points_per_batch=16)
    assert one.key(rgb) == many.key(rgb)
    one.fill([image])
    many.fill([image])
    entry = f"proposals/{one.key(rgb)}.json"
    found, other = (json.loads((tmp_path / run / entry).read_text()) for run in ("one", "many"))
    assert found and [r["segmentation"] for r in found] == [r["segmentation"] for r in other]  # the same masks
    for name in ("predicted_iou", "stability_score"):  # scores equal up to float rounding of the batched products
        np.testing.assert_allclose([r[name] for r in found], [r[name] for r in other], rtol=1e-5)
    assert any(rle_to_mask(r["segmentation"])[30, 24] for r in found)  # the big disk is among them
    assert one.provenance()["points_per_batch"] == 1 and "points_per_batch" not in one.provenance()["settings"]


def test_samdsk_refuses_a_generalist_without_automatic_masks_and_3d(tmp_path, make_protocol, capsys):
    from fmssl_bench.benchmark.cli import main

    out = tmp_path / "runs"
    rc = main(["--method", "samdsk", "--dataset", "synthetic-2d", "--labeled", "4", "--no-progress", "--out", str(out),
               "--method-arg", "generalist=litemedsam"])
    assert rc == 2 and "automatic mask generator" in capsys.readouterr().err
    rc = main(["--method", "samdsk", "--dataset", "synthetic-3d", "--labeled", "4", "--no-progress", "--out", str(out)])
    assert rc == 2 and "2D data only" in capsys.readouterr().err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_roi_counts_come_from_the_data_set_and_the_schedule_repeats_its_last_value():
    from types import SimpleNamespace

    from fmssl_bench.datasets import dataset_class
    from fmssl_bench.methods.samdsk import SamDSK

    assert dataset_class("kvasir").roi_counts == {"polyp": (1, (1, 2, 3))}
    assert dataset_class("isic").roi_counts == {"lesion": (1, (1,))}
    method = SamDSK.__new__(SamDSK)
    method.args = dict(SamDSK.defaults)
    method.ctx = SimpleNamespace(class_names=("background", "polyp"), n_classes=2,
                                 roi_counts=dataset_class("kvasir").roi_counts)
    assert [method.bounds(r) for r in (1, 2, 3, 4)] == [([1], [1]), ([1], [2]), ([1], [3]), ([1], [3])]
    method.args["v_upper"] = (2,)
    assert method.bounds(1) == ([1], [2])
