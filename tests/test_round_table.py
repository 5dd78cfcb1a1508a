"""The per-round table of iterative methods, from hand-written provenance of two made-up records."""

from __future__ import annotations

import json

from fmssl_bench.benchmark.records.round_table import parse_tag, render_rounds, round_rows


def write_record(root, method, seed, provenance):
    where = root / "kvasir" / method / "labeled-10pct" / f"seed{seed}" / "abc"
    where.mkdir(parents=True)
    summary = {"dataset": "kvasir", "protocol": "kvasir-cpu", "method": method, "labeled": "10%", "seed": seed}
    (where / "summary.json").write_text(json.dumps(summary))
    (where / "provenance.json").write_text(json.dumps(provenance))


SAMDSK = {"round_evaluation": {"round0": {"polyp": 0.5}, "round1": {"polyp": 0.6}},
          "pseudo_label_quality": {"mean_dice_by_tag": {"round1": 0.9, "round1_rejected": 0.4}},
          "method": {"samdsk": {"rounds": [{"round": 1, "accepted": 12, "candidates": 810, "v_upper": [1],
                                            "ids": ["a", "b"], "stopped": "text"}]}}}
IFDL = {"pseudo_label_quality": {"mean_dice_by_tag": {"unet_round1": 0.3, "round1": 0.35, "round2": 0.5, "finetuned": 1}},
        "method": {"ifdl": {"rounds": {"round1": {"cases": 22, "objects": {"box": 3}, "prompted_cases": ["x"]},
                                       "round2": {"cases": 22}}}}}


def test_tags_name_their_round_and_variant():
    assert parse_tag("round2") == (2, "")
    assert parse_tag("unet_round1") == (1, "unet")
    assert parse_tag("round1_rejected") == (1, "rejected")
    assert parse_tag("finetuned") is None and parse_tag("rounds") is None


def test_rows_join_test_dice_pseudo_label_dice_and_the_methods_own_facts(tmp_path):
    from fmssl_bench.benchmark.records.leaderboard import find_summaries

    write_record(tmp_path, "samdsk", 1, SAMDSK)
    write_record(tmp_path, "samdsk", 0, SAMDSK)
    write_record(tmp_path, "ifdl", 0, IFDL)
    write_record(tmp_path, "supervised", 0, {"method": {}})  # no rounds: no rows
    rows = round_rows(find_summaries(tmp_path))
    assert [(r["method"], r["seed"], r["round"]) for r in rows] == [
        ("ifdl", 0, 1), ("ifdl", 0, 2), ("samdsk", 0, 0), ("samdsk", 0, 1), ("samdsk", 1, 0), ("samdsk", 1, 1)]
    ifdl1, ifdl2, sam0, sam1 = rows[:4]
    assert sam0 == {"dataset": "kvasir", "protocol": "kvasir-cpu", "method": "samdsk", "labeled": "10%", "seed": 0,
                    "round": 0, "test Dice %": 50.0}
    assert sam1["test Dice %"] == 60.0 and sam1["PL Dice %"] == 90.0 and sam1["PL Dice % (rejected)"] == 40.0
    assert sam1["accepted"] == 12 and sam1["v_upper"] == "1" and "ids" not in sam1 and "stopped" not in sam1
    assert ifdl1["PL Dice % (unet)"] == 30.0 and ifdl1["objects.box"] == 3 and "prompted_cases" not in ifdl1
    assert ifdl2 == {**{k: ifdl2[k] for k in ("dataset", "protocol", "method", "labeled", "seed")}, "round": 2,
                     "PL Dice %": 50.0, "cases": 22}
    assert round_rows(find_summaries(tmp_path), method="ifdl") == [ifdl1, ifdl2]

    md = render_rounds(rows)
    assert md.index("#### ifdl") < md.index("#### samdsk") and "beta" not in md
    assert "objects.box" not in md.split("#### samdsk")[1]  # a method's table has only its own columns
    csv_text = render_rounds(rows, "csv")
    assert csv_text.splitlines()[0].startswith("dataset,protocol,method,labeled,seed,round,")
    assert len(csv_text.splitlines()) == 7


def test_cli_prints_the_round_table_and_refuses_html(tmp_path, capsys):
    from fmssl_bench.benchmark.cli import main

    write_record(tmp_path, "samdsk", 0, SAMDSK)
    assert main(["leaderboard", "--runs", str(tmp_path), "--rounds", "--write", ""]) == 0
    assert "| kvasir-cpu | samdsk" in capsys.readouterr().out.replace("  ", " ").replace("  ", " ")
    assert main(["leaderboard", "--runs", str(tmp_path), "--rounds", "--format", "html"]) == 2
    assert "--format md or csv" in capsys.readouterr().err
    assert main(["leaderboard", "--runs", str(tmp_path), "--method", "samdsk", "--write", ""]) == 2


def test_the_html_page_has_a_rounds_section_only_when_records_have_rounds(tmp_path):
    from fmssl_bench.benchmark.records.html_page import write_html_page
    from fmssl_bench.benchmark.records.leaderboard import find_summaries

    def summaries():
        found = find_summaries(tmp_path)
        for s in found:  # what the leaderboard needs of a summary beyond the round facts
            s.update({"row_key": s["method"], "row_identity": {},
                      "classes": {"mean": {"dice": {"mean": 0.6, "std": 0.1, "n": 5}}}})
        return found

    write_record(tmp_path, "supervised", 0, {"method": {}})
    assert "Rounds of iterative methods" not in write_html_page(summaries(), None, tmp_path / "page.html").read_text()
    write_record(tmp_path, "samdsk", 0, SAMDSK)
    page = write_html_page(summaries(), None, tmp_path / "page.html").read_text()
    section = page.split("<h2>Rounds of iterative methods</h2>", 1)[1]
    assert "<h3>samdsk</h3>" in section and "<td>60.0</td>" in section and "<th>PL Dice % (rejected)</th>" in section


def test_a_summary_among_a_records_artifacts_is_neither_a_record_nor_exported(tmp_path):
    from fmssl_bench.benchmark.records.export import export_records
    from fmssl_bench.benchmark.records.leaderboard import find_summaries

    write_record(tmp_path / "runs", "ifdl", 0, IFDL)
    (record,) = (tmp_path / "runs").glob("kvasir/ifdl/*/*/*")
    (record / "artifacts" / "round1").mkdir(parents=True)
    (record / "artifacts" / "round1" / "summary.json").write_text(json.dumps({"cases": 22}))  # IFDL's round facts
    assert [s["method"] for s in find_summaries(tmp_path / "runs")] == ["ifdl"]
    (copied,) = export_records(tmp_path / "runs", tmp_path / "measured")
    assert sorted(p.name for p in copied.iterdir()) == ["provenance.json", "summary.json"]


def test_leaderboard_rows_read_each_provenance_once_for_compute_and_rounds(tmp_path, monkeypatch):
    """The leaderboard reads a record's provenance.json once; the round table of the HTML page uses
    the rows' copies (same rows as reading the records again)."""
    from fmssl_bench.benchmark.records import leaderboard, store
    from fmssl_bench.benchmark.records.leaderboard import find_summaries
    from fmssl_bench.benchmark.records.round_table import leaderboard_round_rows

    write_record(tmp_path, "samdsk", 0, {**SAMDSK, "device": "cpu (2 cores)", "torch_threads": 1})
    write_record(tmp_path, "samdsk", 1, SAMDSK)
    found = find_summaries(tmp_path)
    for s in found:
        s.update({"row_key": "samdsk", "row_identity": {}, "classes": {"mean": {"dice": {"mean": 0.6, "std": 0.1, "n": 5}}}})
    reads: list = []
    real = store.read_provenance
    monkeypatch.setattr(leaderboard, "read_provenance", lambda d: reads.append(d) or real(d))
    table = leaderboard.aggregate(found)
    assert len(reads) == 2 and table[0]["compute"] == "cpu, 1 thread"
    assert leaderboard_round_rows(table) == round_rows(find_summaries(tmp_path))
