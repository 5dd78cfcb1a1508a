"""Every registered training method completes a tiny synthetic-2d and synthetic-3d run through the CLI.

A new method file is picked up by the registry and therefore by this test: it must finish a run
(training, inference, metrics, record) in each dimensionality it declares (``Method.dims``) and be
refused with a clear error in the others. Tiny randomly initialised real networks, 3 iterations:
what is under test is that the pieces fit, not the numbers. Methods that need a foundation model
are run by tests/test_fm_methods.py with the real generalists.
"""

from __future__ import annotations

import json

import pytest

from fmssl_bench.benchmark.cli import main
from fmssl_bench.methods.registry import method_class, method_names

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {2: dict(train={"iterations": 3, "checkpoint_every": 2}, eval_workers=1),
        3: dict(net={"n_filters": 2}, train={"iterations": 3, "checkpoint_every": 2}, eval_workers=1)}
"""Per dimensionality: the synthetic protocol's overrides (3 iterations, a 2-filter VNet in 3D)."""

METHOD_ARGS = {"magicnet": ["cube_size=16"]}
"""What a method needs to fit the tiny 32^3 patch (MagicNet: at least two cubes)."""


def _trainable() -> list[str]:
    out = []
    for name in method_names():
        cls = method_class(name)
        if getattr(cls, "oracle", False) or cls.generalists_used(dict(cls.defaults)):
            continue
        out.append(name)
    return out


CASES = [(name, ndim) for name in _trainable() for ndim in (2, 3)]


@pytest.mark.parametrize("name, ndim", CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_method_completes_a_synthetic_run_or_refuses_its_dimensionality(name, ndim, make_protocol, tmp_path, capsys):
    cls = method_class(name)
    out = tmp_path / "runs"
    argv = ["--method", name, "--dataset", f"synthetic-{ndim}d", "--labeled", "4", "--no-progress", "--out", str(out),
            "--protocol", make_protocol(f"synthetic-{ndim}d", **TINY[ndim])]
    for arg in METHOD_ARGS.get(name, []):
        argv += ["--method-arg", arg]
    rc = main(argv)
    err = capsys.readouterr().err
    if ndim not in cls.dims:
        assert rc == 2 and f"--method {name}" in err and f"{ndim}D" in err, err
        assert not out.exists() or not list(out.rglob("summary.json"))
        return
    assert rc == 0, err
    (summary_path,) = out.rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["method"] == name and summary["n_test"] > 0


@pytest.mark.parametrize("name, protocol_overrides, method_args, expected", [
    ("bcp", {"train": {"labeled_bs": 3, "batch_size": 6}}, [], "labeled_bs 3"),
    ("bcp", {"train": {"labeled_bs": 2, "batch_size": 6}}, [], "train.batch_size 6"),
    ("ict", {"train": {"labeled_bs": 2, "batch_size": 3}}, [], "batch_size - labeled_bs >= 2"),
    ("self_training", {"train": {"labeled_bs": 2, "batch_size": 2}}, [], "batch_size > labeled_bs"),
    ("acmt", {}, ["strategy=self_error"], "cleanlab"),
], ids=["bcp-odd-labeled", "bcp-batch", "ict-pairs", "self-training-no-unlabeled", "acmt-self-error"])
def test_a_misfit_of_method_and_protocol_is_refused_before_anything_is_written(
        name, protocol_overrides, method_args, expected, make_protocol, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--method", name, "--dataset", "synthetic-2d", "--labeled", "4", "--no-progress", "--out", str(out),
            "--protocol", make_protocol("synthetic-2d", **protocol_overrides)]
    for arg in method_args:
        argv += ["--method-arg", arg]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and expected in err, err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), "a refused run wrote files"
