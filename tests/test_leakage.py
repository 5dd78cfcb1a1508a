"""No label leakage, by construction: unlabeled views carry no labels and never read them."""

from __future__ import annotations

import json

import numpy as np

from fmssl_bench.benchmark.cli import main
from fmssl_bench.benchmark.runner import RunSpec, execute, prepare
from fmssl_bench.benchmark.views import UnlabeledView, build_unlabeled_view
from fmssl_bench.datasets.base import register_dataset
from fmssl_bench.datasets.synthetic import Synthetic2D
from helpers import make_folder2d, make_la


@register_dataset
class SpySynthetic2D(Synthetic2D):
    """synthetic-2d that records which cases had their label read (test-only adapter)."""

    name = "spy-synthetic-2d"
    description = "test adapter"
    label_reads: list[str] = []

    def _read_label(self, case_id):
        SpySynthetic2D.label_reads.append(case_id)
        return super()._read_label(case_id)


def test_unlabeled_view_has_no_labels_and_is_built_from_images_only():
    assert not hasattr(UnlabeledView(["a"], [np.zeros((1, 2, 2), np.float32)]), "labels")
    calls = []
    view = build_unlabeled_view(lambda case_id: calls.append(case_id) or np.ones((1, 4, 4), np.float32), ["x", "y"], None)
    assert calls == ["x", "y"] and view.ids == ["x", "y"] and len(view.images) == 2


def test_training_never_reads_labels_of_unlabeled_cases(tmp_path, make_protocol):
    proto = make_protocol("synthetic-2d", train={"iterations": 3, "checkpoint_every": 3})
    SpySynthetic2D.label_reads.clear()
    prep = prepare(RunSpec(method="mean_teacher", dataset="spy-synthetic-2d", labeled="4", protocol=proto,
                           out=str(tmp_path / "runs"), progress=False))
    execute(prep)
    read = set(SpySynthetic2D.label_reads)
    assert read, "the spy must see labeled/test reads"
    assert read <= set(prep.labeled_ids) | set(prep.test_ids)
    assert not read & set(prep.unlabeled_ids)
    assert len(prep.unlabeled_ids) == 36


def test_folder_dataset_whose_unlabeled_cases_have_no_masks_still_trains(tmp_path, make_protocol):
    root = make_folder2d(tmp_path / "folder", n=30, without_mask=10)
    proto = make_protocol("synthetic-2d", resize=[32, 32], train={"iterations": 3, "patch": [32, 32], "checkpoint_every": 3})
    out = tmp_path / "runs"
    rc = main(["--method", "mean_teacher", "--dataset", "folder2d", "--data-root", str(root), "--labeled", "4",
               "--protocol", proto, "--out", str(out), "--no-progress"])
    assert rc == 0
    (split_file,) = out.glob("folder2d/mean_teacher/*/*/*/split.json")
    split = json.loads(split_file.read_text())
    maskless = {f"img{k:03d}" for k in range(20, 30)}
    assert maskless <= set(split["unlabeled"])  # all mask-less cases are unlabeled ...
    assert not maskless & (set(split["labeled"]) | set(split["test"]))  # ... never labeled or test
    assert (split_file.parent / "summary.json").is_file()


def test_la_cases_without_label_dataset_are_usable_as_unlabeled(tmp_path, make_protocol):
    root = make_la(tmp_path / "LA", n_train=6, n_test=2, unlabeled_without_label=3)
    proto = make_protocol("la-smoke", net={"n_filters": 2}, train={"iterations": 2, "patch": [16, 16, 16], "checkpoint_every": 2},
                          inference={"patch": [16, 16, 16], "stride": [16, 16, 16]}, eval_workers=1)
    rc = main(["--method", "mean_teacher", "--dataset", "la", "--data-root", str(root), "--labeled", "2",
               "--protocol", proto, "--out", str(tmp_path / "runs"), "--no-progress"])
    assert rc == 0


def test_supervised_never_reads_unlabeled_images_but_semi_supervised_methods_do_up_front(tmp_path):
    from fmssl_bench.benchmark.runner import RunSpec, load_views, needs_unlabeled, prepare
    from fmssl_bench.methods.registry import method_class

    assert not needs_unlabeled(method_class("supervised"))
    assert needs_unlabeled(method_class("mean_teacher"))
    views = load_views(prepare(RunSpec(method="supervised", dataset="synthetic-2d", labeled="4", out=str(tmp_path))))
    assert not views.unlabeled.loaded and len(views.unlabeled) > 0
    assert len(views.unlabeled.images) == len(views.unlabeled)  # still readable on demand
    views = load_views(prepare(RunSpec(method="mean_teacher", dataset="synthetic-2d", labeled="4", out=str(tmp_path))))
    assert views.unlabeled.loaded
