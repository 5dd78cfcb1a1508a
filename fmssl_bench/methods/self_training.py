"""Self-training / pseudo-labelling baseline (Lee 2013; FixMatch's confidence threshold, Sohn et al. 2020).

The row the seed tables print as "PL" (003, under TransUNet / PraNet / HSNet) or describe as
self-training: the model's own confident hard predictions on unlabeled images are used as
labels. What is chosen here, and why:

- **Pseudo-labeller: the EMA teacher** (:class:`~.mean_teacher.TeacherStudent`, alpha 0.99, the
  teacher's input noised by clamp(0.1 N(0,1), +-0.2)), re-labelling every iteration. An EMA of
  the student is the stable online labeller SSL4MIS' FixMatch scripts and most segmentation
  pseudo-labelling baselines use; labelling with the student itself (Lee 2013) lets its errors
  reinforce themselves within one step. The input noise is the harness's teacher perturbation,
  the role of FixMatch's weak view (set ``noise: 0`` for clean teacher inputs).
- **Hard argmax labels, confidence threshold 0.95** (FixMatch's tau; ``>=``): only voxels whose
  teacher top probability reaches it get a label (:func:`~.thresholds.confident_pseudo_labels`).
- **Loss on confident voxels: cross-entropy averaged over all unlabeled voxels**
  (``(CE * mask).mean()``, FixMatch's normalisation, :func:`~.thresholds.masked_cross_entropy`):
  while the teacher is unsure few voxels count and the term is small, so no separate warm-up is
  needed beyond the ramp; dividing by the selected voxels would give a handful of confident
  voxels the full weight early on.
- **Weight** ``w(t) = 1.0 exp(-5 (1 - t/40)^2)`` (FixMatch's lambda_u = 1, reached through UA-MT's
  sigmoid ramp over 40 "epochs" spanning the run; Lee 2013 ramps its weight up likewise).
  Supervised loss ``0.5 * (CE + Dice)`` (the harness's UA-MT loss, as the MT family here).

Deviations (also in ``deviations``): FixMatch's strong augmentation of the student's view is not
used (the student sees the clean image, the teacher a noised one); the pseudo-labels are online
(every iteration), not offline rounds of labelling and retraining.
"""

from __future__ import annotations

import dataclasses

import torch

from ..api import Arg, StepOutput
from .losses import supervised_loss
from .mean_teacher import TeacherStudent
from .registry import register_method
from .thresholds import confident_pseudo_labels, masked_cross_entropy


def pl_ramp_arguments(reference: str) -> dict[str, Arg]:
    """Ramp arguments of the pseudo-label methods: weight 1 (``reference`` says whose) over UA-MT's 40-"epoch" ramp."""
    base = TeacherStudent.arguments
    return {
        "consistency": dataclasses.replace(base["consistency"], default=1.0,
                                           help=f"weight of the pseudo-label loss once ramped up ({reference})"),
        "rampup_epochs": dataclasses.replace(base["rampup_epochs"],
                                             help="length of the sigmoid ramp-up in 'epochs' (UA-MT 40)"),
    }


@register_method
class SelfTraining(TeacherStudent):
    name = "self_training"
    description = "Self-training / pseudo-labelling (Lee 2013; FixMatch threshold): EMA-teacher hard labels >= 0.95, CE"
    paper_names = (("PL", "TransUNet"), ("PL", "PraNet"), ("PL", "HSNet"))
    arguments = {
        **TeacherStudent.arguments,
        **pl_ramp_arguments("FixMatch lambda_u 1"),
        "threshold": Arg(0.95, float, "teacher confidence a voxel needs for a pseudo-label (FixMatch tau 0.95)",
                         ge=0, le=1),
    }
    deviations = [
        "EMA-teacher pseudo-labels renewed every iteration (not offline label-and-retrain rounds)",
        "no strong augmentation of the student's view (FixMatch); the teacher sees the input noise of Mean Teacher",
    ]

    min_unlabeled = 1

    def training_step(self, batch, iteration: int) -> StepOutput:
        return self.student_step(batch, iteration)[1]

    def student_step(self, batch, iteration: int) -> tuple[torch.Tensor, StepOutput]:
        self.unlabeled_images(batch)
        n_l = batch.image_l.shape[0]
        logits = self.student(batch.images)
        loss_sup = supervised_loss(logits[:n_l], batch.label_l)
        teacher_probs = torch.softmax(self.teacher_logits(batch.image_u), 1)
        labels, mask = confident_pseudo_labels(teacher_probs, self.args["threshold"])
        loss_pl = masked_cross_entropy(logits[n_l:], labels, mask, normalise="all")
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_pl": float(loss_pl.detach()), "w_pl": weight,
                "pl_frac": float(mask.float().mean())}
        return logits, StepOutput(loss_sup + weight * loss_pl, logs)
