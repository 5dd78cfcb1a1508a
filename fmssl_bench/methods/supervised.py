"""Supervised baseline: the labeled cases only (``--labeled all`` gives the upper bound)."""

from __future__ import annotations

from ..api import Method, StepOutput
from .losses import supervised_loss
from .registry import register_method


@register_method
class Supervised(Method):
    name = "supervised"
    description = "labeled cases only, 0.5*(CE+Dice) (lower bound; upper bound with --labeled all)"
    uses_unlabeled = False

    def training_step(self, batch, iteration: int) -> StepOutput:
        loss = supervised_loss(self.student(batch.image_l), batch.label_l)
        return StepOutput(loss, {"loss_sup": float(loss.detach())})
