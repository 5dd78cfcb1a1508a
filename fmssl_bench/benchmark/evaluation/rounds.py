"""Test scores of a multi-round method's intermediate networks, kept by the runner.

SamDSK's Fig. 7 plots the specialist's test Dice after each round. A method hands its network to
``ctx.score_checkpoint(net, tag)`` (a :class:`~fmssl_bench.api.CheckpointScorer`); this module's
:class:`RoundEvaluation` is the runner's implementation: it predicts the test view (which the method
never holds) exactly as the final evaluation does, appends the mean per class of every metric to
``round_evaluation.csv`` and returns nothing. A tag already written (a resumed run re-reporting a
finished round) is not evaluated twice.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import FmsslError
from ..protocol import Protocol
from ..views import TestView
from .scoring import evaluate_predictor

HEADER = ("tag", "class", "metric", "mean", "n")


class RoundEvaluation:
    """Appends ``tag,class,metric,mean,n`` rows for each intermediate network; see the module docstring."""

    def __init__(self, test: TestView, protocol: Protocol, classes: tuple[str, ...], device: torch.device,
                 path: Path) -> None:
        self.test, self.protocol, self.classes, self.device = test, protocol, classes, device
        self.path = Path(path)

    def tags(self) -> set[str]:
        if not self.path.is_file():
            return set()
        return {row["tag"] for row in csv.DictReader(io.StringIO(self.path.read_text()))}

    def __call__(self, net: torch.nn.Module, tag: str) -> None:
        if tag in self.tags():
            return
        was_training = net.training
        try:
            rows = evaluate_predictor(net, self.test, self.protocol, self.classes, self.device, progress=False)
        finally:
            net.train(was_training)
        values: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            values.setdefault((row["class"], row["metric"]), []).append(row["value"])
        lines = []
        for (cls, metric), vals in values.items():
            finite = [v for v in vals if not math.isnan(v)]
            mean = float(np.mean(finite)) if finite else float("nan")
            lines.append(f"{tag},{cls},{metric},{mean!r},{len(finite)}\n")
        new = not self.path.is_file()
        try:
            with self.path.open("a") as f:
                f.write((",".join(HEADER) + "\n" if new else "") + "".join(lines))
        except OSError as err:
            raise FmsslError(f"cannot write {self.path}: {err.strerror or err}") from None


def round_evaluation_summary(path: Path) -> dict[str, dict[str, float]] | None:
    """``{tag: {class: mean Dice}}`` from ``round_evaluation.csv`` (None when there is none)."""
    if not Path(path).is_file():
        return None
    out: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(Path(path).read_text())):
        if row["metric"] == "dice":
            out.setdefault(row["tag"], {})[row["class"]] = round(float(row["mean"]), 6)
    return out
