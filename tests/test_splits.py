import json

import pytest

from fmssl_bench.benchmark.splits import parse_budget, resolve_split, select_labeled
from fmssl_bench.datasets import build_dataset
from fmssl_bench.errors import ConfigError
from helpers import make_folder2d, make_la


def test_parse_budget_forms():
    assert parse_budget("4").count == 4
    assert parse_budget("10%").percent == 10
    assert parse_budget("all").is_all
    assert parse_budget("10%").resolve(80) == 8  # LA: 10% of 80 = 8 labeled cases
    assert parse_budget("all").resolve(30) == 30
    for bad in ("0", "-1", "x", "150%"):
        with pytest.raises(ConfigError):
            parse_budget(bad)
    with pytest.raises(ConfigError, match="only 5"):
        parse_budget("6").resolve(5)


def test_la_labeled_set_is_first_n_of_train_list(tmp_path):
    adapter = build_dataset("la", make_la(tmp_path / "LA"))
    split = resolve_split(adapter, tmp_path / "splits")
    assert split.train == [f"CASE{i:03d}" for i in range(6)]
    assert select_labeled(adapter, split, parse_budget("3"), seed=5) == ["CASE000", "CASE001", "CASE002"]
    assert not (tmp_path / "splits").exists()  # official split: nothing written


def test_seeded_budgets_are_nested_and_seed_dependent():
    adapter = build_dataset("synthetic-2d")
    split = resolve_split(adapter, None)
    five, ten, twenty = (select_labeled(adapter, split, parse_budget(n), seed=1) for n in ("5", "10", "20"))
    assert set(five) < set(ten) < set(twenty)
    assert select_labeled(adapter, split, parse_budget("10"), seed=2) != ten
    assert select_labeled(adapter, split, parse_budget("10"), seed=1) == ten


def test_seeded_split_is_written_once_and_reused(tmp_path):
    root = make_folder2d(tmp_path / "f", n=20)
    adapter = build_dataset("folder2d", root)
    first = resolve_split(adapter, tmp_path / "splits")
    path = tmp_path / "splits" / "folder2d.json"
    assert not path.exists()  # resolving writes nothing: the runner persists the split when the record begins
    first.persist()
    saved = json.loads(path.read_text())
    assert saved["test"] == first.test and len(first.test) == 2 and len(first.train) == 18
    saved["test"], saved["train"] = saved["train"][:2], saved["train"][2:] + saved["test"]
    path.write_text(json.dumps(saved))  # a saved split is authoritative, even if regeneration differs
    assert resolve_split(adapter, tmp_path / "splits").test == saved["test"]


def test_a_run_refused_during_validation_writes_no_split(tmp_path, make_protocol, capsys):
    from fmssl_bench.benchmark.cli import main

    root = make_folder2d(tmp_path / "f", n=12)
    proto = make_protocol("synthetic-2d", resize=[32, 32], train={"iterations": 1, "patch": [32, 32]})
    common = ["--method", "supervised", "--dataset", "folder2d", "--data-root", str(root), "--protocol", proto,
              "--out", str(tmp_path / "runs"), "--no-progress"]
    assert main(common + ["--labeled", "99"]) == 2  # refused after the split was resolved
    assert "--labeled 99" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    assert main(common + ["--labeled", "2"]) == 0  # a run that begins persists it
    assert json.loads((tmp_path / "runs" / "splits" / "folder2d.json").read_text())["source"].startswith("seeded split")
