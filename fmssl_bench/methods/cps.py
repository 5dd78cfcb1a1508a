"""CPS: cross pseudo supervision (Chen, Yuan, Zeng & Wang, CVPR 2021), after SSL4MIS.

Follows HiLab-git/SSL4MIS ``train_cross_pseudo_supervision_2D.py`` / ``_3D.py`` (the
implementation the medical seed papers compare with). Two networks of the protocol's architecture
with different initialisations (SSL4MIS: ``kaiming_normal_`` on every convolution of net 1,
``xavier_normal_`` on every convolution of net 2, batch-norm weight 1 and bias 0 in both;
transposed convolutions keep their default initialisation there too) see the same batch. Each is
supervised on the labeled part by ``0.5 * (CE + Dice)`` and, on the unlabeled part, by the
cross-entropy against the other network's hard pseudo-label (argmax, detached)::

    L = sup(net1) + w(t) CE(net1_u, argmax net2_u) + sup(net2) + w(t) CE(net2_u, argmax net1_u)

``w(t) = 0.1 exp(-5 (1 - t/200)^2)``, ``t = iteration // 150`` in SSL4MIS (200 x 150 = its 30000
iterations, so the ramp spans the run; ``iters_per_epoch: auto`` keeps that for the stage's real
length). The pseudo-supervision uses the unlabeled part of the batch only (SSL4MIS slices
``[labeled_bs:]``), not the whole batch.

SSL4MIS steps two SGD optimisers with identical settings; the shared loop steps one optimiser over
both parameter sets, which is the same update (SGD, Adam and AdamW act per parameter). Both
networks are checkpointed; net 1 (``student``) is the network evaluated at test time (SSL4MIS
validates both and keeps each one's best; the harness keeps the last iterate of net 1).

The supervised Dice is SSL4MIS' ``DiceLoss`` (every class, background included, squared sums over
the batch, smooth 1e-5; :func:`~.urpc.ce_dice_all_classes`). Deviation (also in ``deviations``):
the checkpoint is the last iterate, not the best on a validation set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import StepOutput
from .losses import ce_dice_all_classes
from .mean_teacher import RampedConsistency, ramp_arguments
from .registry import register_method

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def initialise(net: nn.Module, scheme: str) -> nn.Module:
    """SSL4MIS' ``kaiming_normal_init_weight`` / ``xavier_normal_init_weight``, in place.

    Convolution weights (not transposed convolutions, not biases) drawn from the scheme's normal
    distribution; batch-norm weight 1, bias 0. This is what makes CPS' two networks disagree at
    the start, which its cross supervision needs.
    """
    init = {"kaiming": nn.init.kaiming_normal_, "xavier": nn.init.xavier_normal_}
    if scheme not in init:
        raise ValueError(f"initialisation {scheme!r}; expected kaiming or xavier")
    for m in net.modules():
        if isinstance(m, _CONV):
            init[scheme](m.weight)
        elif isinstance(m, _NORM) and m.affine:
            with torch.no_grad():
                m.weight.fill_(1)
                m.bias.zero_()
    return net


def cross_pseudo_labels(logits1: torch.Tensor, logits2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target of net 1, target of net 2): the *other* network's argmax, detached."""
    return logits2.detach().argmax(1), logits1.detach().argmax(1)


@register_method
class CPS(RampedConsistency):
    name = "cps"
    description = "CPS (Chen et al., CVPR 2021): two differently initialised nets, each trained on the other's argmax"
    paper_names = (("CPS", ""),)
    arguments = ramp_arguments(0.1, 200.0, "SSL4MIS CPS")
    deviations = [
        "net 1 is evaluated at its last iterate (SSL4MIS keeps each net's best on a validation set)",
    ]

    def setup(self) -> None:
        self.student = initialise(self.ctx.build_net(), "kaiming")
        self.net2 = initialise(self.ctx.build_net(), "xavier")

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "net2": self.net2}

    def trainable(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) + list(self.net2.parameters())

    def training_step(self, batch, iteration: int) -> StepOutput:
        n_l = batch.image_l.shape[0]
        logits1 = self.student(batch.images)
        logits2 = self.net2(batch.images)
        sup1 = ce_dice_all_classes(logits1[:n_l], batch.label_l)
        sup2 = ce_dice_all_classes(logits2[:n_l], batch.label_l)
        target1, target2 = cross_pseudo_labels(logits1[n_l:], logits2[n_l:])
        cps1 = F.cross_entropy(logits1[n_l:], target1)
        cps2 = F.cross_entropy(logits2[n_l:], target2)
        weight = self.consistency_weight(iteration)
        loss = (sup1 + weight * cps1) + (sup2 + weight * cps2)
        logs = {"loss_sup1": float(sup1.detach()), "loss_sup2": float(sup2.detach()),
                "loss_cps1": float(cps1.detach()), "loss_cps2": float(cps2.detach()), "w_cons": weight}
        return StepOutput(loss, logs)
