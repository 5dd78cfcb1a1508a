"""`fmssl-bench regress`: passes on an unchanged harness, fails on a planted regression (a broken loss)."""

from __future__ import annotations

import pytest
import torch

from fmssl_bench.benchmark.cli import main
from fmssl_bench.benchmark.records.regress import Check, against_measured


def _run(make_protocol, out, seed="0"):
    proto = make_protocol("synthetic-2d", train={"iterations": 30, "checkpoint_every": 30})
    return main(["--method", "supervised", "--dataset", "synthetic-2d", "--labeled", "8", "--seed", seed,
                 "--protocol", proto, "--out", str(out), "--no-progress"])


@pytest.mark.slow
def test_regress_passes_unchanged_and_fails_on_a_planted_regression(tmp_path, make_protocol, monkeypatch, capsys):
    golden, fresh, broken = tmp_path / "golden", tmp_path / "fresh", tmp_path / "broken"
    assert _run(make_protocol, golden) == 0
    assert _run(make_protocol, fresh) == 0
    capsys.readouterr()
    assert main(["regress", "--runs", str(fresh), "--golden", str(golden)]) == 0
    out = capsys.readouterr().out
    assert "1 row(s) with a reference, 0 regressed" in out and "| ok" in out

    import fmssl_bench.methods.supervised as supervised

    original = supervised.supervised_loss
    # the planted bug: the loss sees all-background labels, so the network learns to predict nothing
    monkeypatch.setattr(supervised, "supervised_loss", lambda logits, labels: original(logits, torch.zeros_like(labels)))
    assert _run(make_protocol, broken) == 0
    capsys.readouterr()
    assert main(["regress", "--runs", str(broken), "--golden", str(golden)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "1 regressed" in out


def test_tolerance_comes_from_the_golden_spread():
    def summary(seed, dice):
        return {"row_key": "r", "seed": seed, "dataset": "d", "protocol": "p", "method": "m", "labeled": "4",
                "classes": {"mean": {"dice": {"mean": dice}}}}

    golden = [summary(0, 0.80), summary(1, 0.82), summary(2, 0.84)]  # std 2 points
    (check,) = against_measured([summary(0, 0.75)], golden)  # seed 0 only: compared with golden seed 0
    assert isinstance(check, Check) and check.reference == pytest.approx(80.0)
    assert check.tolerance == pytest.approx(6.0) and check.status == "ok"  # -5 within 3 x 2
    (check,) = against_measured([summary(0, 0.73)], golden)
    assert check.status == "REGRESSED"
    (check,) = against_measured([summary(0, 0.795)], golden, tolerance=0.2)
    assert check.status == "REGRESSED" and "tolerance 0.20" in check.source
    (check,) = against_measured([summary(5, 0.1)], golden)
    assert check.status == "no reference"


def test_require_reference_fails_a_row_whose_identity_matches_no_golden_row(tmp_path, monkeypatch, capsys):
    import fmssl_bench.benchmark.records.regress as regress

    checks = [Check("synthetic-2d/p/supervised/labeled 4", [0], 70.0, None, None, "no golden row")]
    monkeypatch.setattr(regress, "run_regress", lambda *a, **k: (checks, regress.render(checks)))
    (tmp_path / "runs").mkdir()
    assert main(["regress", "--runs", str(tmp_path / "runs")]) == 0  # informative by default
    assert main(["regress", "--runs", str(tmp_path / "runs"), "--require-reference"]) == 1
    assert "1 row(s) without a reference" in capsys.readouterr().out
