"""3D CPU tiers: ``scale`` trains and infers on resampled volumes, predictions come back at full size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmssl_bench.benchmark.cli import main
from fmssl_bench.benchmark.evaluation.predictions import prediction_path, read_prediction
from fmssl_bench.benchmark.protocol import load_protocol
from fmssl_bench.errors import ConfigError


def test_training_size_follows_scale_and_resize(make_protocol):
    proto = load_protocol(make_protocol("synthetic-3d", scale=0.5))
    assert proto.training_size((40, 36, 23)) == (20, 18, 12)
    assert load_protocol(make_protocol("synthetic-3d")).training_size((40, 36, 23)) is None
    assert load_protocol(make_protocol("synthetic-2d", resize=[32, 32])).training_size((64, 48)) == (32, 32)
    with pytest.raises(ConfigError, match="scale"):
        load_protocol(make_protocol("synthetic-2d", scale=0.5))
    with pytest.raises(ConfigError, match="scale"):
        load_protocol(make_protocol("synthetic-3d", scale=1.5))


def test_a_scaled_3d_run_scores_full_size_predictions(tmp_path, make_protocol):
    proto = make_protocol("synthetic-3d", scale=0.5, train={"iterations": 2, "checkpoint_every": 2, "patch": [16, 16, 16]},
                          inference={"patch": [16, 16, 16], "stride": [8, 8, 8]})
    out = tmp_path / "runs"
    assert main(["--method", "supervised", "--dataset", "synthetic-3d", "--labeled", "4", "--protocol", proto,
                 "--out", str(out), "--no-progress"]) == 0
    (record,) = [p.parent for p in out.glob("synthetic-3d/supervised/*/*/*/summary.json")]
    test_ids = json.loads((record / "split.json").read_text())["test"]
    pred, _ = read_prediction(prediction_path(record / "predictions", test_ids[0], 3), 3)
    assert pred.shape == (32, 32, 32)  # the synthetic-3d volume size, not the half-size training frame
    assert json.loads((record / "config.json").read_text())["identity"]["protocol"]["scale"] == 0.5
    assert np.isin(pred, [0, 1, 2]).all()
