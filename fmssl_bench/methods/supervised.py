"""Supervised baseline: the labeled cases only (``--labeled all`` gives the upper bound).

Its batches hold ``batch_size`` labeled cases (UA-MT's supervised ``train_LA.py``: 4 labeled per
batch), not only the ``labeled_bs`` of a semi-supervised batch.
"""

from __future__ import annotations

from ..api import Method, StepOutput
from .losses import supervised_loss
from .registry import register_method


@register_method
class Supervised(Method):
    name = "supervised"
    description = "labeled cases only, 0.5*(CE+Dice) (lower bound; upper bound with --labeled all)"
    paper_names = (("Supervised", ""), ("FS Baseline", ""), ("FS Upperbound", ""), ("V-Net", ""), ("3D U-Net", ""))
    uses_unlabeled = False

    def training_step(self, batch, iteration: int) -> StepOutput:
        loss = supervised_loss(self.student(batch.image_l), batch.label_l)
        return StepOutput(loss, {"loss_sup": float(loss.detach())})
