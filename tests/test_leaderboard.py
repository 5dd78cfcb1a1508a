"""Leaderboard rows are run identities; paper comparability is computed from them.

Summaries are built as dicts in the runner's schema (no training), so every rule is checked with
exact strings: seeds and their sample std, the args column, each not-comparable reason, and the
packaged paper numbers.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fmssl_bench.benchmark.evaluation.scoring import metric_ids
from fmssl_bench.benchmark.protocol import load_protocol
from fmssl_bench.benchmark.records import comparability
from fmssl_bench.benchmark.records.identity import digest, flatten, protocol_for_identity, result_fields, unflatten
from fmssl_bench.benchmark.records.leaderboard import (STAT_HEADER, aggregate, find_summaries, paper_dir,
                                                       paper_numbers, paper_value, render)
from fmssl_bench.benchmark.records.statistics import MIN_PAIRS, compare_rows, paired_test
from fmssl_bench.methods.registry import method_class

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_PAPERS = ROOT / "fmssl_bench" / "paper_numbers"
REPO_PAPERS = ROOT / "leaderboards" / "paper"
N_PAPER_ROWS = 1354  # 000: 176, 001: 157, 002: 894, 003: 127


def make_summary(method: str = "mean_teacher", dataset: str = "la", labeled: str = "16", seed: int = 0,
                 protocol: str = "la", n: tuple[int, int, int] = (16, 64, 20), dice: float = 0.88,
                 dice_std: float = 0.05, protocol_changes: dict[str, Any] | None = None,
                 method_args: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
    """A summary.json as the runner writes it (identity fields included), for a run that never happened."""
    proto = load_protocol(protocol)
    defaults = dict(method_class(method).defaults)
    stages = method_class(method).stages_used({**defaults, **(method_args or {})})  # the runner keeps only these
    fields = {k: v for k, v in flatten(result_fields(protocol_for_identity(proto.to_dict(), stages))).items()
              if k != "paper_comparable"}
    fields.update(protocol_changes or {})
    n_labeled, n_unlabeled, n_test = n
    row_identity = json.loads(json.dumps({
        "record_format": 2, "dataset": dataset, "dataset_options": {}, "method": method,
        "method_args": {**defaults, **(method_args or {})}, "protocol": unflatten(fields),
        "overrides": overrides or {}, "budget": labeled,
        "split": {"n_labeled": n_labeled, "n_unlabeled": n_unlabeled, "n_test": n_test, "test": "0123456789abcdef"},
        "generalists": {},
    }))
    return {
        "method": method, "dataset": dataset, "labeled": labeled, "seed": seed, "protocol": proto.name,
        "identity_hash": digest({**row_identity, "seed": seed}), "row_key": digest(row_identity),
        "row_identity": row_identity, "n_labeled": n_labeled, "n_unlabeled": n_unlabeled, "n_test": n_test,
        "metric_ids": metric_ids(proto),
        "classes": {"mean": {"dice": {"mean": dice, "std": dice_std, "n": n_test, "n_nan": 0}}},
        "empty_predictions": {"LA": 0}, "oracle": False, "external": False, "record": f"/runs/seed{seed}",
        "method_defaults": defaults, **extra,
    }


def write_record(root: Path, summary: dict[str, Any], dice: dict[str, float], classes: tuple[str, ...] = ("LA",),
                 provenance: dict[str, Any] | None = None) -> Path:
    """A record folder as the runner lays it out (summary.json, per_case.csv, provenance.json), for a fake run.

    ``summary["record"]`` is left pointing elsewhere: the leaderboard must read beside the file it found.
    """
    folder = (root / summary["dataset"] / summary["method"] / f"labeled-{summary['labeled']}" / f"seed{summary['seed']}"
              / summary["identity_hash"])
    folder.mkdir(parents=True)
    rows = ["case,class,metric,metric_id,value"]
    for case, value in dice.items():
        for cls in classes:
            rows += [f"{case},{cls},dice,dice,{value!r}", f"{case},{cls},hd95,hd95@x,1.0"]
    (folder / "per_case.csv").write_text("\n".join(rows) + "\n")
    (folder / "provenance.json").write_text(json.dumps(provenance or {}) + "\n")
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def only_row(*summaries: dict[str, Any]) -> dict[str, Any]:
    table = aggregate(list(summaries))
    assert len(table) == 1, table
    return table[0]


# --------------------------------------------------------------------------- rows and seeds


def test_two_seeds_of_one_identity_are_one_row_with_sample_std():
    row = only_row(make_summary(seed=0, dice=0.80), make_summary(seed=1, dice=0.90))
    assert row["seeds"] == 2
    assert row["dice"] == pytest.approx(85.0)
    assert row["dice_std_seeds"] == pytest.approx(math.sqrt(50.0))  # ddof=1: sqrt((5² + 5²) / 1)
    assert row["args"] == ""
    assert "| 85.00 ± 7.07 (±5.0) |" in render([row], "md")


def test_one_seed_shows_no_std_over_seeds():
    row = only_row(make_summary(dice=0.88))
    assert row["seeds"] == 1 and math.isnan(row["dice_std_seeds"])
    assert "| 88.00 (±5.0) |" in render([row], "md")
    assert ",88.0000,," in render([row], "csv")  # the std over seeds is an empty cell, not 0


def test_a_record_found_twice_counts_once():
    s = make_summary()
    assert only_row(s, dict(s))["seeds"] == 1


def test_records_differing_in_lr_are_two_rows_named_by_args():
    base = dict(method="supervised", dataset="synthetic-2d", protocol="synthetic-2d", labeled="4", n=(4, 20, 10))
    table = aggregate([make_summary(**base), make_summary(**base, protocol_changes={"train.lr": 0.3}),
                       make_summary(**base, seed=1, protocol_changes={"train.lr": 0.3})])
    assert [(r["args"], r["seeds"]) for r in table] == [("train.lr=0.03", 1), ("train.lr=0.3", 2)]
    assert "train.lr=0.3" in render(table, "md")


def test_an_override_beside_the_plain_run_names_only_the_override():
    table = aggregate([make_summary(), make_summary(overrides={"iterations": 10})])
    assert [r["args"] for r in table] == ["", "iterations=10"]


def test_changed_method_args_and_overrides_show_alone():
    (mt,) = aggregate([make_summary(method_args={"consistency": 50})])
    assert mt["args"] == "consistency=50"
    (short,) = aggregate([make_summary(overrides={"iterations": 10})])
    assert short["args"] == "iterations=10"


def test_columns_of_every_format():
    table = aggregate([make_summary()])
    md = render(table, "md")
    assert [h.strip() for h in md.splitlines()[0].split("|")[1:-1]] == [
        "dataset", "protocol", "method", "labeled", "args", "L/U/test", "seeds", "Dice %", "Jaccard %", "HD95",
        "ASD", "Sen %", "empty pred", "paper Dice %"]
    assert [c.strip() for c in md.splitlines()[2].split("|")[1:8]] == [
        "la", "la", "mean_teacher", "16", "", "16/64/20", "1"]
    assert render(table, "csv").startswith("dataset,protocol,method,labeled,args,seeds,n_labeled,n_unlabeled,n_test,")
    assert re.search(r"<th>args *</th>", render(table, "html"))


def test_old_format_records_are_shown_with_a_warning_and_never_compared():
    old = make_summary(labeled="16")
    for key in ("row_key", "row_identity", "identity_hash", "method_defaults"):
        old.pop(key)
    with pytest.warns(UserWarning) as caught:
        row = only_row(old, {"not": "a summary"})
    assert sorted(str(w.message).split(" (")[0] for w in caught) == [
        "leaderboard: 1 record(s) in the old format",
        "leaderboard: skipped 1 summary file(s) without dataset/method/labeled"]
    assert row["args"] == "old record format"
    assert row["paper_dice"] == "not comparable: old record format (no run identity)"


# --------------------------------------------------------------------------- comparability


VI_UNKNOWN = "87.47 (002 VI): paper setting unknown: 002 Table VI uses 96³ patches with LA interpolated to 96 slices"


def test_exact_la_protocol_with_the_paper_split_shows_the_paper_value():
    # MT 16/64, SFR Table I; the other paper row of MT at 16 labels is named with why it is not comparable
    assert only_row(make_summary())["paper_dice"] == f"88.12 (002 I); not comparable: {VI_UNKNOWN}"
    # a supervised lower bound uses no unlabeled case: the paper's "16 / 0" matches a 16/64 split
    assert only_row(make_summary(method="supervised"))["paper_dice"] == "86.03 (002 I)"


def test_la_subset_train_pool_is_a_reason():
    row = only_row(make_summary(labeled="4", n=(4, 26, 20)))
    # 001 (SemiSAM) ran its protocol semisam-la: 128³ patches, 1 + 3 batches, LCC with 26-connectivity
    assert row["paper_dice"] == ("not comparable: train pool 30 ≠ 80; inference.largest_component False ≠ True; "
                                 "inference.lcc_connectivity — ≠ 26; inference.patch 112×112×80 ≠ 128×128×128; "
                                 "train.labeled_bs 2 ≠ 1; train.patch 112×112×80 ≠ 128×128×128; "
                                 "train.short_labeled repeat ≠ —")


def test_protocol_iterations_are_a_reason():
    row = only_row(make_summary(protocol_changes={"train.iterations": 24}))
    assert row["paper_dice"] == "not comparable: train.iterations 24 ≠ 6000"


def test_an_iterations_override_is_a_reason():
    row = only_row(make_summary(overrides={"iterations": 10}))
    assert row["paper_dice"] == "not comparable: override iterations=10"


def test_text_tables_give_each_distinct_reason_once_below_the_table():
    import re

    table = aggregate([make_summary(protocol_changes={"train.iterations": 24}),
                       make_summary(method="supervised", labeled="4", n=(4, 26, 20), protocol_changes={"train.iterations": 24}),
                       make_summary(labeled="4", n=(4, 26, 20), protocol_changes={"train.iterations": 24}),
                       make_summary()])
    md = render(table, "md")
    notes = dict(re.findall(r"^- \[(\d+)\] (.*)$", md, flags=re.M))
    assert len(notes) == len({r["paper_dice"].partition("not comparable: ")[2] for r in table}) == 3
    for r in table:  # each row's cell points at its own reasons, given once below the table
        head, _, why = r["paper_dice"].partition("not comparable: ")
        (k,) = [k for k, text in notes.items() if text == why]
        assert f"| {head}not comparable [{k}]" in md
    assert md.count("not comparable [") == 4 and "not comparable:" not in md.split("why not comparable")[0]
    assert all(r["paper_dice"] in render(table, "csv") for r in table)  # the CSV keeps every row's own text


def test_the_full_hausdorff_distance_gets_a_column_where_a_row_has_it():
    with_hd = make_summary(method="supervised")
    with_hd["classes"]["mean"]["hd"] = {"mean": 41.5, "std": 3.0, "n": 20, "n_nan": 0}
    table = aggregate([make_summary(), with_hd])
    md = render(table, "md")
    header = [h.strip() for h in md.splitlines()[0].split("|")[1:-1]]
    assert header[header.index("HD95") + 1] == "HD"
    cells = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines()[2:4]}
    assert cells["supervised"][header.index("HD")] == "41.50 (±3.0)" and cells["mean_teacher"][header.index("HD")] == ""
    assert "hd,hd_std_seeds,hd_std_cases" in render(table, "csv").splitlines()[0]
    assert "HD" not in [h.strip() for h in render([table[0]], "md").splitlines()[0].split("|")]  # no row has it


def test_changed_method_args_and_metric_definitions_are_reasons():
    assert only_row(make_summary(method_args={"consistency": 50}))["paper_dice"] == \
        "not comparable: consistency 50 ≠ 0.1"
    s = make_summary()
    s["metric_ids"] = {**s["metric_ids"], "hd95": "hd95@max-directional/voxel;empty=worst"}
    assert only_row(s)["paper_dice"] == \
        "not comparable: hd95 hd95@max-directional/voxel;empty=worst ≠ hd95@medpy-pooled/voxel;empty=worst"


def test_reasons_of_some_candidates_name_their_tables():
    # 1 labeled MT: 001 I/II (128³ patches) and 002 VII (112×112×80); a 20-case test set of 10 fails both
    row = only_row(make_summary(labeled="1", n=(1, 79, 10)))
    tables = "001 I, 001 II: "
    assert row["paper_dice"] == ("not comparable: test set 10 ≠ 20; " + "; ".join(tables + r for r in (
        "inference.largest_component False ≠ True", "inference.lcc_connectivity — ≠ 26",
        "inference.patch 112×112×80 ≠ 128×128×128", "train.labeled_bs 2 ≠ 1", "train.patch 112×112×80 ≠ 128×128×128",
        "train.short_labeled repeat ≠ —")))


def test_unknown_paper_setting_is_never_comparable():
    row = only_row(make_summary(method="supervised", dataset="brats2019", protocol="brats2019", labeled="50",
                                n=(50, 200, 60)))
    assert row["paper_dice"] == ("not comparable: paper setting unknown: 002 prints 3D U-Net bounds for BraTS "
                                 "(protocol brats2019: VNet) and no test-set size")


def test_oracle_and_outside_predictions_are_never_comparable():
    papers = paper_numbers()
    oracle = comparability.compare(make_summary(oracle=True), papers)
    assert [c.text for c in oracle] == ["88.12 (002 I)", "87.47 (002 VI)"]
    assert all(c.reasons == ["oracle prompts from the test reference"] for c in oracle)
    external = comparability.compare(make_summary(external=True), papers)
    assert [c.reasons for c in external] == [["outside predictions (no training record)"]] * 2
    assert only_row(make_summary(external=True))["paper_dice"] == \
        "not comparable: outside predictions (no training record)"


def test_semisam_is_compared_with_the_papers_generalist():
    s = make_summary(method="semisam", labeled="4", n=(4, 76, 20), protocol="semisam-la")
    assert only_row(s)["paper_dice"] == "not comparable: generalist litemedsam ≠ sam-med3d"
    comparable = make_summary(method="semisam", labeled="4", n=(4, 76, 20), protocol="semisam-la",
                              method_args={"generalist": "sam-med3d"})
    assert only_row(comparable)["paper_dice"].startswith("80.42 (001 I)")


def test_an_la_record_names_the_paper_rows_it_may_be_compared_with_and_why_not_the_others():
    # mean teacher at 1 labeled case: SFR's Table VII ran the la protocol; SemiSAM's Tables I/II ran semisam-la
    row = only_row(make_summary(labeled="1", n=(1, 79, 20)))
    cell = row["paper_dice"]
    assert cell.startswith("29.68 (002 VII); not comparable: ")
    assert "(001 I): inference.largest_component False ≠ True;" in cell and "train.labeled_bs 2 ≠ 1" in cell
    assert "44.89 (002 VI): paper setting unknown" in cell


def test_the_empty_policy_matters_only_where_a_mask_was_empty():
    # the papers' code scores an empty prediction HD95 = ASD = 0; with no empty mask the policy changed nothing
    assert only_row(make_summary(labeled="1", n=(1, 79, 20)))["paper_dice"].startswith("29.68 (002 VII)")
    empty = make_summary(labeled="1", n=(1, 79, 20), empty_predictions={"LA": 2})
    cell = only_row(empty)["paper_dice"]
    assert cell.startswith("not comparable: ")
    assert "hd95 hd95@medpy-pooled/voxel;empty=worst ≠ hd95@medpy-pooled/voxel;empty=zero (2 empty mask(s))" in cell
    # under the papers' convention the same record is comparable, and the row says it uses it
    zero = make_summary(labeled="1", n=(1, 79, 20), empty_predictions={"LA": 2},
                        protocol_changes={"metrics.empty_policy": "zero"})
    zero["metric_ids"] = {k: v.replace("empty=worst", "empty=zero") for k, v in zero["metric_ids"].items()}
    row = only_row(zero)
    assert row["paper_dice"].startswith("29.68 (002 VII)")
    assert row["empty_policy_zero"] and not only_row(empty)["empty_policy_zero"]
    md = render([row], "md")
    assert "| 2 (HD95 0 for empty predictions, as in UA-MT) |" in md
    assert "1 row(s) score an empty prediction HD95 = ASD = 0" in md
    assert "HD95 0 for empty predictions" not in render([only_row(empty)], "md")


# --------------------------------------------------------------------------- paper numbers


def test_paper_numbers_ship_in_the_package_and_equal_the_repository_copy():
    packaged = sorted(p.name for p in PACKAGE_PAPERS.iterdir() if p.suffix in (".csv", ".md"))
    assert packaged == ["000.csv", "001.csv", "002.csv", "003.csv", "NOTES-000-001-003.md", "NOTES-002.md"]
    for name in packaged:
        assert (PACKAGE_PAPERS / name).read_bytes() == (REPO_PAPERS / name).read_bytes(), name
    assert Path(str(paper_dir())) == PACKAGE_PAPERS
    assert len(paper_numbers()) == N_PAPER_ROWS


def test_paper_numbers_are_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fmssl_bench"]
    assert "paper_numbers/*.csv" in data  # else a non-editable install (and the image) lacks them


def test_paper_numbers_env_override(tmp_path, monkeypatch):
    (tmp_path / "x.csv").write_text("paper,table,dataset,labeled,unlabeled,labeled_pct,method,base,structure,"
                                    "metric,value,std,unit,note\n999,T,LA,4,,,MT,,,dice,12.34,,%,\n")
    monkeypatch.setenv("FMSSL_PAPER_NUMBERS", str(tmp_path))
    papers = paper_numbers()
    assert paper_value(papers, "la", "mean_teacher", "4") == "12.34 (999 T)"
    assert only_row(make_summary(labeled="4", n=(4, 76, 20)))["paper_dice"] == \
        "not comparable: paper setting unknown"


# --------------------------------------------------------------------------- paired statistics


def test_paired_test_matches_scipy_and_excludes_nan_pairwise():
    from scipy import stats

    a = {f"c{i}": 0.80 + 0.01 * i for i in range(12)}
    b = {f"c{i}": 0.78 + 0.005 * i for i in range(12)}
    a["c0"], b["c1"], b["only_b"] = float("nan"), float("nan"), 0.5  # two pairs dropped, one case unpaired
    test = paired_test(a, b)
    diff = [100 * (a[c] - b[c]) for c in sorted(a) if c not in ("c0", "c1")]
    assert test.n == 10 and test.mean_diff == pytest.approx(sum(diff) / 10)
    assert test.p == pytest.approx(stats.wilcoxon(diff).pvalue)
    assert test.ci_low < test.mean_diff < test.ci_high and test.ci_method == "BCa"
    assert test.significant and test.text().endswith(" *") and test.text().startswith("+")
    assert paired_test(a, b) == test  # seeded: the same leaderboard every time


def test_paired_test_says_why_not():
    few = {f"c{i}": 0.5 + 0.01 * i for i in range(MIN_PAIRS - 1)}
    assert paired_test(few, {c: 0.4 for c in few}).text() == f"n/a: {MIN_PAIRS - 1} paired cases (< {MIN_PAIRS})"
    same = {f"c{i}": 0.5 + 0.01 * i for i in range(10)}
    assert paired_test(same, dict(same)).text() == "n/a: all paired differences are zero"
    shifted = paired_test({c: v + 0.02 for c, v in same.items()}, same)  # no spread: a point interval
    assert (shifted.ci_low, shifted.ci_high) == pytest.approx((2.0, 2.0)) and shifted.ci_method == "constant difference"


def test_methods_are_compared_with_the_supervised_row_of_their_budget(tmp_path):
    cases = [f"case{i:02d}" for i in range(20)]
    for seed in (0, 1):
        write_record(tmp_path, make_summary(method="supervised", seed=seed, dice=0.80),
                     {c: 0.70 + 0.01 * i + 0.002 * seed for i, c in enumerate(cases)})
        write_record(tmp_path, make_summary(seed=seed, dice=0.85),
                     {c: 0.75 + 0.012 * i - 0.002 * seed for i, c in enumerate(cases)})
    write_record(tmp_path, make_summary(overrides={"iterations": 10}), {c: 0.5 for c in cases})  # another setting
    table = aggregate(find_summaries(tmp_path))
    mt, short, sup = table
    assert (mt["method"], sup["method"], short["args"]) == ("mean_teacher", "supervised", "iterations=10")
    assert sup["vs_supervised"] == "baseline"
    assert short["vs_supervised"] == "n/a: no supervised row of this protocol and budget"
    # per case: (0.75 + 0.012 i - 0.001) - (0.70 + 0.01 i + 0.001) averaged over seeds, in points
    assert mt["delta_dice"] == pytest.approx(100 * (0.05 - 0.002 + 0.002 * 9.5))
    assert mt["n_paired"] == 20 and mt["p_wilcoxon"] < 0.001 and mt["vs_supervised"].endswith("*")
    assert compare_rows(mt, sup).mean_diff == pytest.approx(mt["delta_dice"])
    md = render(table, "md")
    assert STAT_HEADER in md.splitlines()[0] and "| baseline " in md and "BCa, 10000 resamples" in md
    header = render(table, "csv").splitlines()[0].split(",")
    assert {"delta_dice", "delta_ci_low", "delta_ci_high", "p_wilcoxon", "n_paired"} <= set(header)
    assert not any(h.startswith("_") for h in header)


def test_a_method_with_its_own_stages_and_components_is_compared_with_the_supervised_row(tmp_path):
    """SFR's fine-tuning stage (protocol stages.finetune) and its base's arguments belong to the method:
    its row pairs with the supervised row of the same protocol and budget, which trains neither."""
    cases = [f"case{i:02d}" for i in range(12)]
    write_record(tmp_path, make_summary(method="supervised", dice=0.8), {c: 0.7 + 0.01 * i for i, c in enumerate(cases)})
    sfr = make_summary(method="sfr", dice=0.85)
    assert "finetune" in sfr["row_identity"]["protocol"]["stages"]  # as the runner writes it
    sfr["row_identity"]["components"] = {"mean_teacher": {"consistency": 0.1}}
    write_record(tmp_path, sfr, {c: 0.75 + 0.012 * i for i, c in enumerate(cases)})
    by_method = {row["method"]: row for row in aggregate(find_summaries(tmp_path))}
    assert by_method["sfr"]["n_paired"] == 12
    assert by_method["sfr"]["delta_dice"] == pytest.approx(100 * (0.05 + 0.002 * 5.5))


def test_any_two_methods_are_compared_on_request(tmp_path, capsys):
    from fmssl_bench.benchmark.cli import main

    cases = [f"case{i:02d}" for i in range(12)]
    write_record(tmp_path, make_summary(method="supervised", dice=0.8), {c: 0.7 + 0.01 * i for i, c in enumerate(cases)})
    write_record(tmp_path, make_summary(dice=0.85), {c: 0.74 + 0.011 * i for i, c in enumerate(cases)})
    assert main(["leaderboard", "--runs", str(tmp_path), "--write", "", "--compare", "mean_teacher,supervised"]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = paired_test({c: 0.74 + 0.011 * i for i, c in enumerate(cases)}, {c: 0.7 + 0.01 * i for i, c in enumerate(cases)})
    assert out[0] == ("la la labeled 16: mean_teacher (1 seed(s)) vs supervised (1 seed(s)): Δ Dice " + expected.text())
    assert main(["leaderboard", "--runs", str(tmp_path), "--write", "", "--compare", "mean_teacher,ua_mt"]) == 2
    assert "no setting" in capsys.readouterr().err


def test_outside_predictions_are_compared_with_the_supervised_row_of_their_budget(tmp_path):
    cases = [f"case{i:02d}" for i in range(10)]
    write_record(tmp_path, make_summary(method="supervised", dice=0.8), {c: 0.7 + 0.01 * i for i, c in enumerate(cases)})
    write_record(tmp_path, make_summary(method="supervised", dice=0.8, overrides={"iterations": 10}),
                 {c: 0.1 for c in cases})  # a shortened baseline is not the one
    identity = {"record_format": 2, "dataset": "la", "external": "my_method", "predictions": "ab12",
                "split": {"test": "0123456789abcdef", "n_test": 20}}
    outside = {**make_summary(external=True, dice=0.8), "method": "my_method", "row_identity": identity,
               "row_key": digest(identity), "identity_hash": digest({**identity, "seed": 0})}
    write_record(tmp_path, outside, {c: 0.72 + 0.01 * i for i, c in enumerate(cases)})
    (row,) = [r for r in aggregate(find_summaries(tmp_path)) if r["method"] == "my_method"]
    assert row["delta_dice"] == pytest.approx(2.0) and row["n_paired"] == 10


# --------------------------------------------------------------------------- compute


def cpu(threads: int) -> dict[str, Any]:
    return {"device": "cpu (2 cores)", "torch_threads": threads}


def test_compute_of_a_record_reads_its_provenance(tmp_path):
    from fmssl_bench.benchmark.records.compute import compute_of, computes_differ, record_compute

    assert compute_of(cpu(1)) == "cpu, 1 thread" and compute_of(cpu(2)) == "cpu, 2 threads"
    assert compute_of({"device": "NVIDIA H100 80GB HBM3", "torch_threads": 8}) == "NVIDIA H100 80GB HBM3"
    assert compute_of({}) is None and record_compute(tmp_path) is None  # no provenance: unknown
    (tmp_path / "provenance.json").write_text("not json")
    assert record_compute(tmp_path) is None
    one, two = frozenset({"cpu, 1 thread"}), frozenset({"cpu, 2 threads"})
    assert computes_differ(one, two) and computes_differ(one | two, one) and not computes_differ(one, one)
    assert not computes_differ(frozenset(), two)  # unknown is not a difference


def test_a_comparison_across_thread_counts_is_marked(tmp_path, capsys):
    """On a CPU a run is reproducible only for one torch thread count: a Δ against a baseline that ran
    with another count gets a ‡ and a legend line, in every format and in --compare."""
    from fmssl_bench.benchmark.cli import main

    cases = [f"case{i:02d}" for i in range(12)]
    write_record(tmp_path, make_summary(method="supervised", dice=0.8), {c: 0.7 + 0.01 * i for i, c in enumerate(cases)},
                 provenance=cpu(1))
    write_record(tmp_path, make_summary(dice=0.85), {c: 0.74 + 0.011 * i for i, c in enumerate(cases)},
                 provenance=cpu(2))
    write_record(tmp_path, make_summary(method="ua_mt", dice=0.85), {c: 0.73 + 0.011 * i for i, c in enumerate(cases)},
                 provenance=cpu(1))
    by_method = {row["method"]: row for row in aggregate(find_summaries(tmp_path))}
    mt, ua, sup = by_method["mean_teacher"], by_method["ua_mt"], by_method["supervised"]
    assert mt["vs_supervised"].endswith(" ‡") and mt["compute_differs"] and mt["compute"] == "cpu, 2 threads"
    assert not ua["vs_supervised"].endswith("‡") and not ua["compute_differs"]
    assert sup["vs_supervised"] == "baseline" and not sup["compute_differs"]
    table = list(by_method.values())
    md = render(table, "md")
    assert "‡ the two rows compared" in md and "(cpu, 1 thread; cpu, 2 threads)" in md
    header = render(table, "csv").splitlines()[0].split(",")
    assert {"compute", "compute_differs"} <= set(header)
    assert main(["leaderboard", "--runs", str(tmp_path), "--write", "", "--compare", "mean_teacher,ua_mt"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(" ‡") and out[-1].startswith("‡ the two rows compared")


def test_seeds_of_one_row_on_different_compute_are_marked(tmp_path):
    cases = [f"case{i:02d}" for i in range(12)]
    write_record(tmp_path, make_summary(method="supervised", dice=0.8), {c: 0.7 + 0.01 * i for i, c in enumerate(cases)},
                 provenance=cpu(1))
    for seed, threads in ((0, 1), (1, 2)):
        write_record(tmp_path, make_summary(seed=seed, dice=0.85), {c: 0.74 + 0.011 * i for i, c in enumerate(cases)},
                     provenance=cpu(threads))
    (mt,) = [r for r in aggregate(find_summaries(tmp_path)) if r["method"] == "mean_teacher"]
    assert mt["compute"] == "cpu, 1 thread + cpu, 2 threads" and mt["vs_supervised"].endswith(" ‡")


def test_a_cpu_run_records_the_cpu_even_on_a_gpu_machine(monkeypatch):
    """provenance's device is the run's device: a --device cpu run on a GPU machine computes in the
    CPU's floating-point order, so its compute must not be the GPU's name."""
    import torch

    from fmssl_bench.benchmark.records import store
    from fmssl_bench.benchmark.records.compute import current_compute

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"Some GPU {index}")
    assert store.device_name("cpu").startswith("cpu (") and store.device_name(torch.device("cpu")).startswith("cpu (")
    assert store.device_name("cuda:1") == "Some GPU 1" and store.device_name() == "Some GPU 0"
    assert current_compute("cpu").startswith("cpu, ") and current_compute("cuda") == "Some GPU 0"
