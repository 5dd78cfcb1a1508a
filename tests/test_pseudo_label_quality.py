"""The runner's pseudo-label scorer appends, never duplicates after a resume, survives a torn line."""

from __future__ import annotations

import numpy as np

from fmssl_bench.benchmark.evaluation.pseudo_labels import PseudoLabelQuality, pseudo_label_summary
from fmssl_bench.datasets import build_dataset


def test_appends_and_does_not_duplicate_rows_after_a_resume(tmp_path):
    adapter = build_dataset("synthetic-2d")
    ids = adapter.case_ids()[:2]
    labels = [adapter.load_label(i) for i in ids]
    path = tmp_path / "pseudo_label_quality.csv"
    score = PseudoLabelQuality(adapter, path)
    score(ids, labels, "iter1")
    first = path.read_text()
    score(ids, labels, "iter2")
    assert path.read_text().startswith(first)  # appended, not rewritten
    # a resumed run re-reports iteration 2 and continues with 3
    resumed = PseudoLabelQuality(adapter, path)
    resumed(ids, labels, "iter2")
    resumed(ids, labels, "iter3")
    lines = path.read_text().splitlines()
    n_fg = len(adapter.classes) - 1
    assert len(lines) == 1 + 3 * 2 * n_fg
    assert len(set(lines)) == len(lines)
    assert all(line.split(",")[3] == "1.000000" for line in lines[1:])  # the reference scored against itself
    assert pseudo_label_summary(path)["reports"] == 3


def test_a_line_cut_by_a_kill_is_dropped(tmp_path):
    adapter = build_dataset("synthetic-2d")
    ids = adapter.case_ids()[:1]
    label = adapter.load_label(ids[0])
    path = tmp_path / "q.csv"
    PseudoLabelQuality(adapter, path)(ids, [label], "iter1")
    with path.open("a") as f:
        f.write("iter2,case_000,org")  # torn write
    PseudoLabelQuality(adapter, path)(ids, [np.full_like(label, 255)], "iter2")
    lines = path.read_text().splitlines()
    assert all(len(line.split(",")) == 5 for line in lines)
    assert [line.split(",")[0] for line in lines[1:]].count("iter2") == len(adapter.classes) - 1
