"""The evaluator: predictions on the test view, metrics per case x class, tidy rows, summaries.

Kept apart from training (nnU-Net's separate evaluation module): it needs only a predictor, the
test view and the protocol, so any method, a run's saved predictions or an outside method's
prediction folder (:mod:`.rescore`) is scored the same way.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .inference import predict
from .metrics import METRICS, OPTIONAL_METRICS, MetricConfig, evaluate_many
from .predictions import save_prediction
from ..protocol import Protocol
from ..records.store import atomic_write_text
from ..views import TestView, progress_bar

FIELDS = ("case", "class", "metric", "metric_id", "value")


def metric_settings(protocol: Protocol) -> tuple[MetricConfig, bool]:
    """The protocol's metric definitions; ``units: mm`` makes distances spacing-aware."""
    options = dict(protocol.metrics)
    units = options.pop("units", "voxel")
    if units not in ("voxel", "mm"):
        from ...errors import ConfigError

        raise ConfigError(f"{protocol.source}: metrics.units {units!r}; expected voxel or mm")
    return MetricConfig.from_dict(options), units == "mm"


def metric_definitions(protocol: Protocol) -> dict[str, str]:
    """The protocol's metric definitions with every default filled in (hd95, asd, empty_policy, units; hd when scored)."""
    config, spacing_aware = metric_settings(protocol)
    return {**config.to_dict(), "units": "mm" if spacing_aware else "voxel"}


def metric_ids(protocol: Protocol) -> dict[str, str]:
    """The versioned id of every metric a run under ``protocol`` writes: the metric definitions'
    ids (:meth:`MetricConfig.ids`), each suffixed ``;lcc=<connectivity>`` when the protocol keeps only
    the largest connected component before scoring (the numbers then describe post-processed
    predictions, Dice included)."""
    config, spacing_aware = metric_settings(protocol)
    ids = config.ids(spacing_aware)
    connectivity = protocol.largest_component_connectivity()
    if connectivity is None:
        return ids
    return {name: f"{metric_id};lcc={connectivity}" for name, metric_id in ids.items()}


def score_predictions(items: list[tuple[str, np.ndarray, np.ndarray, Any]], classes: tuple[str, ...],
                      protocol: Protocol) -> list[dict[str, Any]]:
    """Tidy rows (case, class, metric, metric_id, value) for ``(case, pred, ref, spacing)`` items."""
    config, spacing_aware = metric_settings(protocol)
    ids = metric_ids(protocol)
    labels = list(range(1, len(classes)))
    items = [(c, p, r, s if spacing_aware else None) for c, p, r, s in items]
    rows = []
    for result in evaluate_many(items, labels=labels, config=config, workers=protocol.eval_workers):
        for label, values in result["results"].items():
            for metric in (*config.metrics, "empty_pred", "empty_ref"):
                rows.append({"case": result["case"], "class": classes[label], "metric": metric,
                             "metric_id": ids.get(metric, metric), "value": float(values[metric])})
    return rows


def evaluate_predictor(net: torch.nn.Module, test: TestView, protocol: Protocol, classes: tuple[str, ...],
                       device: torch.device, progress: bool = True,
                       predictions_dir: Path | None = None) -> list[dict[str, Any]]:
    """Predict every test case and score it; tidy rows as :func:`score_predictions`.

    With ``predictions_dir`` each prediction is also saved there (:func:`.predictions.save_prediction`)
    as soon as it is made, so the run can be re-scored later under other metric definitions
    (``fmssl-bench evaluate RUN_DIR``) without retraining.
    """
    items = []
    for case in progress_bar(progress, test, total=len(test), desc="inference", unit="case", every=max(1, len(test) // 10)):
        pred = predict(net, case.image, protocol, device)
        if predictions_dir is not None:
            save_prediction(predictions_dir, case.case_id, pred, case.spacing, protocol.ndim)
        items.append((case.case_id, pred, case.label, case.spacing))
    return score_predictions(items, classes, protocol)


def per_case_csv(rows: Iterable[dict[str, Any]]) -> str:
    """The text of a ``per_case.csv`` (floats as ``repr``: re-scoring reproduces it byte for byte)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_per_case(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, per_case_csv(rows))


def _stats(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "n": 0, "n_nan": len(values)}
    arr = np.asarray(finite)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(finite), "n_nan": len(values) - len(finite)}


def summarise(rows: list[dict[str, Any]], config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Per class and over classes ("mean": per-case mean over classes first): mean, std, n per metric."""
    by_class: dict[str, dict[str, list[float]]] = {}
    per_case: dict[tuple[str, str], list[float]] = {}
    metric_ids = {}
    for r in rows:
        by_class.setdefault(r["class"], {}).setdefault(r["metric"], []).append(r["value"])
        if r["metric"] in (*METRICS, *OPTIONAL_METRICS):
            per_case.setdefault((r["case"], r["metric"]), []).append(r["value"])
            metric_ids[r["metric"]] = r["metric_id"]
    classes = {c: {m: _stats(v) for m, v in ms.items() if m in (*METRICS, *OPTIONAL_METRICS)} for c, ms in by_class.items()}
    mean_rows: dict[str, list[float]] = {}
    for (_, metric), values in per_case.items():
        finite = [v for v in values if not math.isnan(v)]
        mean_rows.setdefault(metric, []).append(float(np.mean(finite)) if finite else float("nan"))
    classes["mean"] = {m: _stats(v) for m, v in mean_rows.items()}
    empty = {c: int(sum(ms.get("empty_pred", []))) for c, ms in by_class.items()}
    empty_ref = {c: int(sum(ms.get("empty_ref", []))) for c, ms in by_class.items()}
    return {
        **{k: config[k] for k in ("method", "dataset", "labeled", "seed", "protocol")},
        **extra,
        "metric_ids": metric_ids,
        "classes": classes,
        "empty_predictions": empty,
        "empty_references": empty_ref,
    }
