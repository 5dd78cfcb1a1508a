"""Paper protocols as each paper ran them (issue 14): the files, the batch rule at few labeled
cases, the largest-component connectivity and the method-level default protocol.

All tiny: no training, hand-made arrays only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmssl_bench.benchmark.evaluation.inference import largest_component, predict
from fmssl_bench.benchmark.evaluation.scoring import metric_ids
from fmssl_bench.benchmark.protocol import load_protocol, protocol_from_dict, protocol_names
from fmssl_bench.benchmark.records.identity import digest, protocol_for_identity, result_fields
from fmssl_bench.benchmark.runner import check_batch_split, default_protocol
from fmssl_bench.benchmark.training.batches import TwoStreamPatches, batch_split
from fmssl_bench.benchmark.views import LabeledView, UnlabeledView
from fmssl_bench.errors import ConfigError
from fmssl_bench.methods.registry import method_class

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the files


def test_every_protocol_file_loads_and_hashes_distinctly():
    hashes = {name: digest(result_fields(load_protocol(name).to_dict())) for name in protocol_names()}
    assert {"la", "semisam-la"} <= set(hashes)
    assert len(set(hashes.values())) == len(hashes), hashes


def test_semisam_la_is_the_papers_setting_and_cites_its_sources():
    p = load_protocol("semisam-la")
    assert p.train.patch == (128, 128, 128) and p.inference.patch == (128, 128, 128)
    assert (p.train.batch_size, p.train.labeled_bs) == (4, 1)
    assert p.inference.stride == (18, 18, 4)
    assert p.largest_component_connectivity() == 26
    assert "line 64" in p.description and "train_LA_semisam_mt.py" in p.description and "getLargestCC" in p.description
    la = load_protocol("la")
    assert la.train.patch == (112, 112, 80) and la.largest_component_connectivity() is None
    assert la.train.short_labeled == "repeat" and "TwoStreamBatchSampler" in la.description


def test_committed_records_keep_their_protocol_identity():
    """New optional fields that are off stay out of the identity: every committed measured record's
    protocol section is still what its packaged protocol gives (so its hash is unchanged)."""
    configs = sorted((ROOT / "leaderboards" / "measured").glob("**/config.json"))
    assert configs
    for path in configs:
        config = json.loads(path.read_text())
        cls = method_class(config["method"])
        stages = cls.stages_used({**cls.defaults, **config["method_args"]})
        now = result_fields(protocol_for_identity(load_protocol(config["protocol"]).to_dict(), stages))
        assert now == config["identity"]["protocol"], path


def test_a_run_without_protocol_uses_its_methods_paper_protocol(tmp_path):
    from helpers import make_la

    from fmssl_bench.benchmark.runner import RunSpec, prepare

    la = make_la(tmp_path / "LA")
    out = tmp_path / "runs"
    semisam = prepare(RunSpec(method="semisam", dataset="la", labeled="1", data_root=str(la), out=str(out)))
    teacher = prepare(RunSpec(method="mean_teacher", dataset="la", labeled="1", data_root=str(la), out=str(out)))
    assert (semisam.protocol.name, teacher.protocol.name) == ("semisam-la", "la")
    assert not out.exists()  # prepare writes nothing
    refuse = tmp_path / "refuse.yaml"
    refuse.write_text((ROOT / "fmssl_bench" / "protocols" / "la.yaml").read_text()
                      .replace("short_labeled: repeat", "short_labeled: refuse"))
    with pytest.raises(ConfigError, match="refuse.yaml: train.labeled_bs 2 > 1 labeled case"):
        prepare(RunSpec(method="mean_teacher", dataset="la", labeled="1", data_root=str(la), out=str(out),
                        protocol=str(refuse)))
    assert not out.exists()


def test_a_methods_default_protocol_is_its_papers():
    assert default_protocol(method_class("semisam"), "la") == "semisam-la"
    assert default_protocol(method_class("mean_teacher"), "la") == "la"
    assert default_protocol(method_class("sfr"), "la") == "la"
    assert default_protocol(method_class("semisam"), "kvasir") == "kvasir"


# --------------------------------------------------------------------------- batches at few labeled cases


def _la_train(**changes):
    return load_protocol("la").stage_config("train").__class__(**{**load_protocol("la").train.__dict__, **changes})


def test_one_labeled_case_batch_rule():
    assert batch_split(_la_train(short_labeled="repeat"), 1) == (2, 2, "")  # the same case twice + 2 unlabeled
    assert batch_split(_la_train(short_labeled="shrink"), 1) == (1, 3, "")  # SemiSAM's 1 + 3
    labeled, unlabeled, note = batch_split(_la_train(short_labeled=None), 1)
    assert (labeled, unlabeled) == (2, 2) and "labeled_bs 2 > 1 labeled case(s)" in note
    with pytest.raises(ConfigError, match="short_labeled is refuse"):
        batch_split(_la_train(short_labeled="refuse"), 1)
    # enough labeled cases: the protocol's split, whatever the rule; labeled-only methods fill the batch
    assert batch_split(_la_train(short_labeled="shrink"), 4) == (2, 2, "")
    assert batch_split(_la_train(short_labeled="shrink"), 1, uses_unlabeled=False) == (4, 0, "")
    # SemiSAM's protocol is 1 + 3 at every budget
    assert batch_split(load_protocol("semisam-la").train, 1) == (1, 3, "")


def test_the_batch_provider_follows_the_rule():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(1, 20, 20, 20)).astype(np.float32) for _ in range(4)]
    labeled = LabeledView(["a"], images[:1], [np.zeros((20, 20, 20), np.uint8)])
    unlabeled = UnlabeledView(["b", "c", "d"], images[1:])
    cfg = _la_train(patch=(16, 16, 16), short_labeled="shrink")
    n_l, n_u, _ = batch_split(cfg, len(labeled))
    batch = TwoStreamPatches(labeled, unlabeled, cfg, n_l, n_u, device=__import__("torch").device("cpu"))(0, [0, 1])
    assert batch.ids_l == ["a"] and len(batch.ids_u) == 3
    cfg = _la_train(patch=(16, 16, 16), short_labeled="repeat")
    n_l, n_u, _ = batch_split(cfg, len(labeled))
    batch = TwoStreamPatches(labeled, unlabeled, cfg, n_l, n_u, device=__import__("torch").device("cpu"))(0, [0, 1])
    assert batch.ids_l == ["a", "a"] and len(batch.ids_u) == 2


def test_refuse_is_refused_before_a_record_begins():
    data = {"name": "x", "train": {"short_labeled": "refuse"}}
    protocol = protocol_from_dict(data, "x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: train.labeled_bs 2 > 1 labeled case\(s\)"):
        check_batch_split(protocol, method_class("mean_teacher"), dict(method_class("mean_teacher").defaults), 1)
    check_batch_split(protocol, method_class("supervised"), {}, 1)  # labeled-only batches have no rule to break
    with pytest.raises(ConfigError, match="short_labeled 'sometimes': expected one of repeat, shrink, refuse"):
        protocol_from_dict({"name": "x", "train": {"short_labeled": "sometimes"}}, "x.yaml")


# --------------------------------------------------------------------------- largest component


def diagonal_volume() -> np.ndarray:
    """A 3x3x3 cube, a 2x2x2 cube touching it only at one corner, and a single voxel touching that
    cube only along an edge: 6-connectivity sees three components, 18 two, 26 one."""
    v = np.zeros((10, 10, 10), np.uint8)
    v[0:3, 0:3, 0:3] = 1
    v[3:5, 3:5, 3:5] = 1  # corner contact with the first cube at (2,2,2)-(3,3,3)
    v[5, 5, 4] = 1  # edge contact with the second cube: (4,4,4)-(5,5,4) differ in two axes
    return v


def test_lcc_connectivity_changes_the_result_on_diagonal_touching_components():
    v = diagonal_volume()
    # 6 and 18: the 3x3x3 cube alone (corner contact does not connect); 26: all three parts
    assert largest_component(v, 6).sum() == 27 and largest_component(v, 18).sum() == 27
    assert largest_component(v, 26).sum() == 27 + 8 + 1
    assert largest_component(v).sum() == 27  # unset: faces, the harness's previous LCC
    pair = np.zeros((5, 5, 5), np.uint8)  # 2x2x2 cube + 1 voxel sharing an edge with it: 18 joins, 6 does not
    pair[0:2, 0:2, 0:2] = 1
    pair[2, 2, 1] = 1
    pair[4, 4, 4] = 1  # a far single voxel, so the kept component is visible in the count
    assert largest_component(pair, 6).sum() == 8 and largest_component(pair, 18).sum() == 9
    corner = np.zeros((5, 5, 5), np.uint8)  # + 1 voxel sharing only a corner: 26 joins, 18 does not
    corner[0:2, 0:2, 0:2] = 1
    corner[2, 2, 2] = 1
    assert largest_component(corner, 18).sum() == 8 and largest_component(corner, 26).sum() == 9
    square = np.zeros((6, 6), np.uint8)  # 2D: 4 vs 8
    square[0:2, 0:2] = 1
    square[2, 2] = 1
    assert largest_component(square, 4).sum() == 4 and largest_component(square, 8).sum() == 5
    with pytest.raises(ValueError, match="connectivity 8: expected one of"):
        largest_component(v, 8)


def test_lcc_connectivity_is_a_checked_protocol_field_in_the_identity_and_the_metric_ids():
    base = {"name": "x", "inference": {"largest_component": True}}
    face = protocol_from_dict(base, "x.yaml")
    full = protocol_from_dict({**base, "inference": {"largest_component": True, "lcc_connectivity": 26}}, "x.yaml")
    assert face.largest_component_connectivity() == 6 and full.largest_component_connectivity() == 26
    assert result_fields(full.to_dict())["inference"]["lcc_connectivity"] == 26
    assert "lcc_connectivity" not in result_fields(face.to_dict())["inference"]
    assert metric_ids(full)["dice"] == "dice;lcc=26" and metric_ids(face)["hd95"].endswith(";lcc=6")
    assert metric_ids(protocol_from_dict({"name": "x"}, "x.yaml"))["dice"] == "dice"
    with pytest.raises(ConfigError, match="x.yaml: inference.lcc_connectivity 8: expected one of 6, 18, 26"):
        protocol_from_dict({**base, "inference": {"largest_component": True, "lcc_connectivity": 8}}, "x.yaml")
    with pytest.raises(ConfigError, match="set only with largest_component: true"):
        protocol_from_dict({"name": "x", "inference": {"lcc_connectivity": 26}}, "x.yaml")


def test_predict_applies_the_protocols_connectivity():
    import torch

    v = diagonal_volume()
    protocol = {"name": "x", "net": {"name": "unet3d"},
                "inference": {"mode": "sliding_window", "patch": [10, 10, 10], "stride": [10, 10, 10],
                              "largest_component": True, "lcc_connectivity": 26}}
    proto26 = protocol_from_dict(protocol, "x.yaml")
    proto6 = protocol_from_dict({**protocol, "inference": {**protocol["inference"], "lcc_connectivity": 6}}, "x.yaml")

    class Volume(torch.nn.Module):
        """Logits whose argmax is the hand-made volume (one window covers the image)."""

        def forward(self, x):
            fg = torch.from_numpy(v.astype(np.float32))[None, None].expand(x.shape[0], 1, *v.shape)
            return torch.cat([1 - fg, fg], 1) * 10

    image = np.zeros((1, 10, 10, 10), np.float32)
    assert predict(Volume(), image, proto6, torch.device("cpu")).sum() == 27
    assert predict(Volume(), image, proto26, torch.device("cpu")).sum() == 36
