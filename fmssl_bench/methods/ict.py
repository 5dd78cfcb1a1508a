"""ICT: interpolation consistency training (Verma et al., IJCAI 2019), SSL4MIS' medical version.

After HiLab-git/SSL4MIS ``train_interpolation_consistency_training_3D.py`` / ``_2D.py``: a Mean
Teacher whose student sees interpolations of two unlabeled images and must predict the same
interpolation of the teacher's predictions. The unlabeled part of the batch is split in halves
``u1 = u[:P]``, ``u2 = u[P:2P]`` (``P = n_u // 2``); per pair ``lam ~ Beta(0.2, 0.2)``::

    mixed  = lam * u1 + (1 - lam) * u2                             (:func:`interpolate`)
    target = lam * softmax(teacher(u1)) + (1 - lam) * softmax(teacher(u2))
    loss   = 0.5 * (CE + Dice)(student(x_l), y_l) + w(t) * mean((softmax(student(mixed)) - target)^2)

The student runs once on ``[x_l, mixed]`` (it never sees the unmixed unlabeled images), the
teacher once per half without input noise (SSL4MIS; ``noise`` defaults to 0 here), both as in
SSL4MIS. ``w(t) = 0.1 exp(-5 (1 - t/200)^2)``, ``t = iteration // 150`` (200 x 150 = SSL4MIS'
30000 iterations: the ramp spans the run, kept by ``iters_per_epoch: auto``); EMA 0.99. The
supervised term is SSL4MIS' ``(CE + DiceLoss) / 2`` with Dice over all classes
(:func:`~.urpc.ce_dice_all_classes`).

Randomness: ``lam`` comes from ``numpy.random.default_rng([seed, iteration])`` (SSL4MIS draws
``np.random.beta`` from the global generator), so a resumed run draws the same factors.
SSL4MIS writes ``u1 (1 - lam) + u2 lam``; Beta(a, a) is symmetric, so that is the same
distribution of mixes.

Deviations (also in ``deviations``): with an odd number of unlabeled images the last one is not
used (SSL4MIS' batch sizes are even); fewer than two is an error.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..api import Arg, StepOutput
from .losses import ce_dice_all_classes
from .mean_teacher import TeacherStudent, ramp_arguments
from .registry import register_method


def mix_factors(seed: int, iteration: int, n_pairs: int, alpha: float) -> np.ndarray:
    """``n_pairs`` draws of Beta(alpha, alpha), reproducible from ``(seed, iteration)``."""
    return np.random.default_rng([seed, iteration]).beta(alpha, alpha, size=n_pairs)


def interpolate(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """``lam * a + (1 - lam) * b``; a per-sample ``lam`` of shape ``(P,)`` broadcasts over ``(P, ...)``."""
    if isinstance(lam, torch.Tensor) and lam.dim() == 1:
        lam = lam.to(a.dtype).view(-1, *([1] * (a.dim() - 1)))
    return lam * a + (1 - lam) * b


@register_method
class ICT(TeacherStudent):
    name = "ict"
    description = "ICT (Verma et al., IJCAI 2019; SSL4MIS): Mean Teacher on Beta-mixed unlabeled pairs"
    paper_names = (("ICT", ""),)
    arguments = {
        **TeacherStudent.arguments,
        **ramp_arguments(0.1, 200.0, "SSL4MIS ICT"),
        "noise": dataclasses.replace(TeacherStudent.arguments["noise"], default=0.0,
                                     help="std of the Gaussian noise on the teacher's input (SSL4MIS ICT: none, 0)"),
        "ict_alpha": Arg(0.2, float, "Beta(alpha, alpha) of the mix factor (SSL4MIS ict_alpha 0.2)", gt=0),
    }
    deviations = [
        "an odd unlabeled image per batch is left out of the pairs (SSL4MIS batches are even)",
    ]

    min_unlabeled = 2  # it mixes pairs of unlabeled images

    def training_step(self, batch, iteration: int) -> StepOutput:
        n_u = self.unlabeled_images(batch).shape[0]
        n_l, pairs = batch.image_l.shape[0], n_u // 2
        u1, u2 = batch.image_u[:pairs], batch.image_u[pairs:2 * pairs]
        lam_np = mix_factors(self.ctx.seed, iteration, pairs, self.args["ict_alpha"])
        lam = torch.from_numpy(lam_np).to(u1.device, u1.dtype)
        mixed = interpolate(u1, u2, lam)
        logits = self.student(torch.cat([batch.image_l, mixed]))
        loss_sup = ce_dice_all_classes(logits[:n_l], batch.label_l)
        target = interpolate(torch.softmax(self.teacher_logits(u1), 1), torch.softmax(self.teacher_logits(u2), 1), lam)
        loss_cons = torch.mean((torch.softmax(logits[n_l:], 1) - target) ** 2)
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_cons": float(loss_cons.detach()), "w_cons": weight,
                "lam_mean": float(lam_np.mean())}
        return StepOutput(loss_sup + weight * loss_cons, logs)
