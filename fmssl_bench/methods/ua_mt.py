"""UA-MT: uncertainty-aware Mean Teacher (Yu, Wang, Li, Fu & Heng, MICCAI 2019).

After yulequan/UA-MT ``code/train_LA_meanteacher_certainty_unlabel.py`` (that repository's
``train_LA.py`` is its supervised-only V-Net baseline): Mean Teacher
(:class:`~.mean_teacher.TeacherStudent`: EMA 0.99, teacher input noise clamp(0.1 N(0,1), +-0.2),
consistency weight ``0.1 exp(-5 (1 - t/40)^2)``) whose consistency only counts the voxels where
the teacher is certain:

- uncertainty = entropy of the mean softmax of T = 8 teacher passes, each on a freshly noised
  input, dropout active (:func:`~.uncertainty.mc_dropout_probs`, 2 passes per forward as UA-MT
  stacks the unlabeled batch twice);
- threshold ``(0.75 + 0.25 * sigmoid_rampup(iteration, max_iterations)) * ln K``
  (:func:`~.thresholds.uncertainty_threshold`; max_iterations = the stage's length), mask =
  uncertainty < threshold: the most uncertain voxels are left out early, ever fewer later;
- consistency ``sum(mask * (p_s - p_t)^2) / (2 * sum(mask) + 1e-16)`` (:func:`masked_consistency`)
  between the student's softmax on the clean unlabeled images and the teacher's on one more
  noised copy (UA-MT's ``ema_output``), the squared difference summed over classes.

Loss ``0.5 * (CE + Dice) + w(t) * consistency`` (UA-MT's supervised loss, the harness's
:func:`~.losses.supervised_loss`).

Deviations (also in ``deviations``): UA-MT is binary and multiplies by ``ln 2``; here the
threshold is scaled by ``ln K`` (the largest entropy of K classes), so for K = 2 it is UA-MT's
and for more classes the ramp still runs from 75 % to 100 % of the largest uncertainty (SSL4MIS'
4-class 2D script keeps ``ln 2``, where the mask is tighter). The denominator keeps UA-MT's
constant 2 for every K, as UA-MT and SSL4MIS' 4-class script both do. On a network without
dropout (the synthetic 2D UNet) the T passes differ by their input noise only.
"""

from __future__ import annotations

import torch

from ..api import Arg, StepOutput
from .losses import supervised_loss
from .mean_teacher import TeacherStudent
from .registry import register_method
from .thresholds import certain_mask, uncertainty_threshold
from .uncertainty import entropy_map, mc_dropout_probs


def masked_consistency(student_probs: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """UA-MT's ``sum(mask * (p_s - p_t)^2) / (2 * sum(mask) + 1e-16)``.

    ``mask`` ``(B, 1, ...)`` broadcasts over the K class channels of the probability maps
    ``(B, K, ...)``; the 2 is UA-MT's (its number of classes, kept constant as in SSL4MIS). An
    empty mask gives 0.
    """
    return torch.sum(mask * (student_probs - teacher_probs) ** 2) / (2 * torch.sum(mask) + 1e-16)


@register_method
class UAMT(TeacherStudent):
    name = "ua_mt"
    description = "UA-MT (Yu et al., MICCAI 2019): Mean Teacher, consistency on MC-dropout-certain voxels only"
    paper_names = (("UA-MT", ""),)
    arguments = {
        **TeacherStudent.arguments,
        "mc_passes": Arg(8, int, "stochastic teacher passes for the uncertainty (UA-MT T=8)", ge=2),
        "mc_chunk": Arg(2, int, "passes per teacher forward, bounds memory (UA-MT 2: the batch stacked twice)", ge=1),
    }
    min_unlabeled = 1
    deviations = [
        "uncertainty threshold scaled by ln K (UA-MT: ln 2, binary; SSL4MIS keeps ln 2 for 4 classes); "
        "the consistency denominator keeps UA-MT's constant 2 for every K",
    ]

    def training_step(self, batch, iteration: int) -> StepOutput:
        self.unlabeled_images(batch)
        n_l = batch.image_l.shape[0]
        logits = self.student(batch.images)
        loss_sup = supervised_loss(logits[:n_l], batch.label_l)
        teacher_probs = torch.softmax(self.teacher_logits(batch.image_u), 1)
        mean_probs = mc_dropout_probs(self.teacher, batch.image_u, passes=self.args["mc_passes"],
                                      perturb=self.noisy, chunk=self.args["mc_chunk"])
        uncertainty = entropy_map(mean_probs)
        threshold = uncertainty_threshold(iteration, self.ctx.stage.total, logits.shape[1])
        mask = certain_mask(uncertainty, threshold)
        loss_cons = masked_consistency(torch.softmax(logits[n_l:], 1), teacher_probs, mask)
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_cons": float(loss_cons.detach()), "w_cons": weight,
                "threshold": threshold, "mask_frac": float(mask.mean()), "uncertainty_mean": float(uncertainty.mean())}
        return StepOutput(loss_sup + weight * loss_cons, logs)
