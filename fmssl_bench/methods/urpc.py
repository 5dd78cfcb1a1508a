"""URPC: uncertainty-rectified pyramid consistency (Luo et al., MICCAI 2021 / MedIA 2022).

After HiLab-git/SSL4MIS ``train_uncertainty_rectified_pyramid_consistency_3D.py``: the network
gives one prediction per decoder level, each up-sampled to the input size
(``build_net(heads=("pyramid",))``; the finest level is the main head, the one used at test time,
as in SSL4MIS' ``test_urpc``). Loss::

    mean over levels of 0.5 * (CE + Dice)                          (labeled part)
    + w(t) * mean over levels of [ mean(e^{-v} (p_bar - p)^2) / (mean(e^{-v}) + 1e-8) + mean(v) ]

on the unlabeled part, with ``p_bar`` the mean of the levels' softmax maps and ``v`` the KL
divergence of a level from it (:func:`~fmssl_bench.methods.uncertainty.pyramid_rectified_consistency`).
The Dice term is SSL4MIS' ``DiceLoss``: all classes, background included, squared sums, smooth
1e-5. ``w(t) = 0.1 exp(-5 (1 - t/400)^2)``, ``t = iteration // 150`` in SSL4MIS (400 x 150 = its
60000 iterations: the ramp spans the run, which ``iters_per_epoch: auto`` keeps for any stage
length; the 2D script's 200 x 150 = 30000 spans its run likewise).

Deviations (also in ``deviations``): the levels come from the protocol's network (UA-MT's VNet:
1/2, 1/4 and 1/8 resolution decoder outputs; MONAI UNet in 2D: the up blocks below the top)
instead of SSL4MIS' ``unet_3D_dv_semi``; that network's per-level dropout (0.5, 0.3, 0.2 from the
deepest level) is applied on the pyramid head branches only, so the main path stays the plain
network (with its own bottleneck/last-layer dropout). Optimiser, learning rate and schedule are
the protocol's (SSL4MIS 3D: SGD lr 0.1, poly 0.9).
"""

from __future__ import annotations

import torch

from ..api import StepOutput
from .losses import ce_dice_all_classes
from .mean_teacher import RampedConsistency, ramp_arguments
from .registry import register_method
from .uncertainty import pyramid_rectified_consistency


@register_method
class URPC(RampedConsistency):
    name = "urpc"
    description = "URPC (Luo et al., MICCAI 2021): pyramid predictions, uncertainty-rectified consistency"
    paper_names = (("URPC", ""),)
    arguments = ramp_arguments(0.1, 400.0, "SSL4MIS URPC 3D")
    deviations = [
        "pyramid levels taken from the protocol's network (UA-MT VNet / MONAI UNet decoder levels) instead of "
        "unet_3D_dv_semi; its per-level dropout (0.5/0.3/0.2) applied on the head branches only",
    ]

    def setup(self) -> None:
        self.student = self.ctx.build_net(heads=("pyramid",))

    def training_step(self, batch, iteration: int) -> StepOutput:
        n_l = batch.image_l.shape[0]
        pyramid = self.student.forward_heads(batch.images).pyramid
        loss_sup = sum(ce_dice_all_classes(level[:n_l], batch.label_l) for level in pyramid) / len(pyramid)
        loss_cons, _ = pyramid_rectified_consistency([torch.softmax(level[n_l:], 1) for level in pyramid])
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_cons": float(loss_cons.detach()), "w_cons": weight}
        return StepOutput(loss_sup + weight * loss_cons, logs)
