"""CCT: cross-consistency training (Ouali, Hudelot & Tami, CVPR 2020), SSL4MIS' medical version.

After HiLab-git/SSL4MIS ``train_cross_consistency_training_2D.py`` with ``UNet_CCT``: one shared
encoder, the main decoder and three auxiliary decoders fed the encoder features perturbed by
feature noise, dropout and feature dropout (``build_net(heads=("aux",))``, see
:mod:`.perturbations`). Loss::

    mean over the 4 decoders of 0.5 * (CE + Dice)                        (labeled part)
    + w(t) * mean over the aux decoders of mean((p_main - p_aux)^2)     (unlabeled part)

both softmax maps keep their gradients (as in SSL4MIS). Dice is SSL4MIS' ``DiceLoss`` (all
classes, squared sums, smooth 1e-5). ``w(t) = 0.1 exp(-5 (1 - t/200)^2)``, ``t = iteration //
150`` in SSL4MIS (200 x 150 = its 30000 iterations: the ramp spans the run, which
``iters_per_epoch: auto`` keeps). Only the main decoder is used at test time.

Deviations (also in ``deviations``): the decoders are the protocol network's (MONAI UNet in 2D,
UA-MT's VNet in 3D, where SSL4MIS has no CCT script) instead of SSL4MIS' UNet; on the VNet each
aux decoder ends with the VNet's dropout like the main one. Optimiser and schedule are the
protocol's (SSL4MIS: SGD 0.01 poly 0.9, batch 24 with 12 labeled).
"""

from __future__ import annotations

import torch

from ..api import Arg, StepOutput
from .losses import ce_dice_all_classes
from .mean_teacher import RampedConsistency, ramp_arguments
from .nets import AUX_PERTURBATIONS
from .perturbations import PERTURBATIONS
from .registry import register_method


@register_method
class CCT(RampedConsistency):
    name = "cct"
    description = "CCT (Ouali et al., CVPR 2020): aux decoders on perturbed encoder features, main/aux consistency"
    paper_names = (("CCT", ""),)
    arguments = {
        **ramp_arguments(0.1, 200.0, "SSL4MIS CCT"),
        "perturbations": Arg(AUX_PERTURBATIONS, tuple[str, ...],
                             "one auxiliary decoder per perturbation (SSL4MIS UNet_CCT: noise, dropout, feature_dropout)",
                             choices=tuple(PERTURBATIONS)),
    }
    deviations = [
        "decoders of the protocol's network (MONAI UNet / UA-MT VNet) instead of SSL4MIS' UNet_CCT; "
        "3D (VNet) is not in SSL4MIS",
    ]

    def setup(self) -> None:
        self.student = self.ctx.build_net(heads=("aux",), aux_perturbations=self.args["perturbations"])

    def training_step(self, batch, iteration: int) -> StepOutput:
        n_l = batch.image_l.shape[0]
        out = self.student.forward_heads(batch.images)
        decoders = [out.logits, *out.aux]
        loss_sup = sum(ce_dice_all_classes(d[:n_l], batch.label_l) for d in decoders) / len(decoders)
        p_main = torch.softmax(out.logits[n_l:], 1)
        loss_cons = sum(torch.mean((p_main - torch.softmax(a[n_l:], 1)) ** 2) for a in out.aux) / len(out.aux)
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_cons": float(loss_cons.detach()), "w_cons": weight}
        return StepOutput(loss_sup + weight * loss_cons, logs)
