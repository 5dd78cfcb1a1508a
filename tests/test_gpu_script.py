"""scripts/gpu_la_paper.sh: its command lines, and one real (tiny) run of it on the CPU.

The script is for a GPU; here it runs with ``--iterations 2`` on synthetic 3D data so the test
costs seconds, and its LA command lines are checked with ``--dry-run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_la_paper.sh"


def run_script(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "FMSSL_RESULTS": str(tmp_path / "results")}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_names_both_methods_at_4_labels_under_their_paper_protocols(tmp_path):
    out = run_script("--dry-run", "--iterations", "2", "--to", str(tmp_path / "gpu"), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert len(lines) == 4
    assert "--method mean_teacher --dataset la --labeled 4 --seed 0" in lines[0] and "--iterations 2" in lines[0]
    assert "--method semisam --dataset la --labeled 4 --seed 0" in lines[1]
    assert all("--protocol" not in line for line in lines[:2])  # each method's paper protocol (semisam -> semisam-la)
    assert f"export --runs {tmp_path / 'results'}/gpu-la-paper --to {tmp_path / 'gpu'} --dataset la" in lines[2]
    assert "leaderboard --runs" in lines[3]


def test_default_destination_is_the_committed_gpu_folder_and_bad_flags_are_refused(tmp_path):
    out = run_script("--dry-run", tmp_path=tmp_path)
    assert "--to leaderboards/measured/gpu" in out.stdout
    bad = run_script("--iterations", "two", tmp_path=tmp_path)
    assert bad.returncode == 2 and "--iterations 'two': expected a positive integer" in bad.stderr
    bad = run_script("--labelled", "4", tmp_path=tmp_path)
    assert bad.returncode == 2 and "unknown argument '--labelled'" in bad.stderr


def test_the_script_runs_end_to_end_on_the_cpu_with_two_iterations(tmp_path):
    to = tmp_path / "gpu"
    out = run_script("--iterations", "2", "--dataset", "synthetic-3d", "--methods", "mean_teacher", "--runs",
                     str(tmp_path / "runs"), "--to", str(to), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (summary,) = list(to.glob("synthetic-3d/mean_teacher/labeled-4/seed0/*/summary.json"))
    assert json.loads(summary.read_text())["protocol"] == "synthetic-3d"
    provenance = json.loads((summary.parent / "provenance.json").read_text())
    assert provenance["hardware"]["cpu_cores"] >= 1 and "device" in provenance
    assert not list(to.glob("**/checkpoint_*.pt"))  # exported: small files only
    assert "| mean_teacher |" in out.stdout and "iterations=2" in out.stdout  # the printed leaderboard names the override
