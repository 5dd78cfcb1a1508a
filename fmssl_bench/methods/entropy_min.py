"""Entropy minimisation (Vu et al., ADVENT, CVPR 2019; Grandvalet & Bengio 2005) as in SSL4MIS.

After HiLab-git/SSL4MIS ``train_entropy_minimization_3D.py`` / ``_2D.py``: one network, no
teacher; its own predictions are pushed to be confident. Loss::

    0.5 * (CE + Dice)                                    (labeled part)
    + w(t) * mean over voxels of  -sum_k p_k log(p_k + 1e-6) / ln K

with ``w(t) = 0.1 exp(-5 (1 - t/200)^2)``, ``t = iteration // 150`` in SSL4MIS (200 x 150 = its
30000 iterations, so the ramp spans the run; ``iters_per_epoch: auto`` keeps that for any stage
length). The entropy is SSL4MIS' ``entropy_loss`` (normalised by ``ln C``, so it lies in [0, 1]
for any number of classes: :func:`~.uncertainty.entropy_map` with ``normalise=True``, eps 1e-6).
SSL4MIS takes it over the *whole* batch, labeled images included (``entropy_loss(outputs_soft)``),
which is the default here (``entropy_on: all``); ``entropy_on: unlabeled`` restricts it to the
unlabeled part (ADVENT's target-domain-only entropy). The supervised term is SSL4MIS'
``(CE + DiceLoss) / 2`` with its Dice over all classes, background included
(:func:`~.urpc.ce_dice_all_classes`, as CCT and URPC here).

Deviations (also in ``deviations``): none in the losses; the network, optimiser and schedule are
the protocol's (SSL4MIS: unet_3D / UNet, SGD 0.01, poly 0.9).
"""

from __future__ import annotations

from typing import Literal

import torch

from ..api import Arg, StepOutput
from .losses import ce_dice_all_classes
from .mean_teacher import RampedConsistency, ramp_arguments
from .registry import register_method
from .uncertainty import entropy_map


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """SSL4MIS' ``entropy_loss``: mean over voxels of ``-sum_k p_k log(p_k + 1e-6) / ln K`` of ``(B, K, ...)``."""
    return entropy_map(probs, normalise=True).mean()


@register_method
class EntropyMinimization(RampedConsistency):
    name = "entropy_min"
    description = "Entropy minimisation (Vu et al., CVPR 2019 ADVENT; SSL4MIS): supervised + ramped mean pixel entropy"
    paper_names = (("Ent-Mini", ""),)
    arguments = {
        **ramp_arguments(0.1, 200.0, "SSL4MIS entropy minimisation"),
        "entropy_on": Arg("all", Literal["all", "unlabeled"],
                          "images whose entropy is minimised: all = the whole batch (SSL4MIS), "
                          "unlabeled = the unlabeled part only"),
    }
    deviations = [
        "network, optimiser and schedule are the protocol's (SSL4MIS: unet_3D / UNet, SGD 0.01 poly)",
    ]

    def training_step(self, batch, iteration: int) -> StepOutput:
        n_l = batch.image_l.shape[0]
        logits = self.student(batch.images)
        loss_sup = ce_dice_all_classes(logits[:n_l], batch.label_l)
        probs = torch.softmax(logits, 1)
        if self.args["entropy_on"] == "unlabeled":
            probs = probs[n_l:]
        loss_ent = mean_entropy(probs) if probs.shape[0] else logits.sum() * 0.0
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_ent": float(loss_ent.detach()), "w_ent": weight}
        return StepOutput(loss_sup + weight * loss_ent, logs)
