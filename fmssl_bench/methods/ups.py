"""UPS: uncertainty-aware pseudo-label selection (Rizve, Duarte, Rawat & Shah, ICLR 2021), voxel-wise.

After nayeemrizve/ups (``utils/pseudo_labeling_util.py``, ``utils/train_util.py``), adapted from
image classification to segmentation by applying every rule per voxel:

- the pseudo-labeller runs ``T = 10`` stochastic passes (dropout on; UPS' ``f_pass``) and keeps
  the mean and standard deviation over the passes of the softmax and of the softmax at
  temperature ``temp_nl = 2`` (used for the negatives; :func:`mc_dropout_moments`);
- **positive** pseudo-label = the argmax class where its mean probability ``>= tau_p = 0.7`` and
  its std ``< kappa_p = 0.05``; **negative** labels = the classes with tempered probability
  ``< tau_n = 0.05`` and tempered std ``< kappa_n = 0.005`` (never the argmax class), on voxels
  without a positive label (:func:`~.thresholds.ups_selection`);
- loss on the unlabeled part: cross-entropy averaged over the positive voxels plus negative
  learning ``-log(1 - p_c)`` averaged over each voxel's negative classes and over the voxels
  with any (:func:`~.thresholds.masked_cross_entropy` with ``normalise="selected"``,
  :func:`~.thresholds.negative_learning_loss`): UPS' ``loss_ce + loss_nl``.

Total: ``0.5 * (CE + Dice)`` on the labeled part ``+ w(t) * (CE_pos + NL)``, ``w(t) = 1.0
exp(-5 (1 - t/40)^2)`` (UPS weighs pseudo-labeled and labeled samples alike; the ramp stands in
for UPS' first, labeled-only training round).

Deviations (also in ``deviations``):

- **single stage, online**: UPS trains on the labeled set, then alternates pseudo-labelling all
  unlabeled data with retraining from scratch (10 rounds on CIFAR). Here the pseudo-labeller is
  the EMA teacher (alpha 0.99), selecting afresh on each unlabeled batch: one stage of the
  protocol's length, like the other baselines, instead of ~10 times its cost.
- UPS' class balancing of the positive pseudo-labels in early rounds (per-class counts of
  images) is not applied: per-voxel class counts in segmentation are dominated by background by
  nature, and balancing them would discard most foreground-free patches.
- the passes run with the teacher in train mode (BatchNorm on batch statistics, as the harness's
  teacher always runs, :func:`~.uncertainty.mc_dropout_probs`) and with the Mean-Teacher input
  noise clamp(0.1 N(0,1), +-0.2) on each pass; UPS uses eval-mode BatchNorm and dropout only. On
  a network without dropout (the synthetic 2D UNet) the passes differ by the noise only.
- the supervised term is the harness's ``0.5 * (CE + Dice)`` (UPS: CE).
"""

from __future__ import annotations

from ..api import Arg, StepOutput
from .losses import supervised_loss
from .mean_teacher import TeacherStudent
from .registry import register_method
from .self_training import pl_ramp_arguments
from .thresholds import masked_cross_entropy, negative_learning_loss, ups_selection
from .uncertainty import mc_dropout_moments


@register_method
class UPS(TeacherStudent):
    name = "ups"
    description = "UPS (Rizve et al., ICLR 2021): pseudo-labels by confidence and MC-dropout std, negative learning"
    paper_names = (("UPS", "TransUNet"), ("UPS", "PraNet"), ("UPS", "HSNet"))
    arguments = {
        **TeacherStudent.arguments,
        **pl_ramp_arguments("UPS weighs pseudo-labels as labels: 1"),
        "tau_p": Arg(0.7, float, "confidence a positive pseudo-label needs, >= (UPS tau_p 0.7)", ge=0, le=1),
        "kappa_p": Arg(0.05, float, "largest MC-dropout std of a positive label, < (UPS kappa_p 0.05)", ge=0),
        "tau_n": Arg(0.05, float, "tempered probability below which a class is a negative label (UPS tau_n 0.05)",
                     ge=0, le=1),
        "kappa_n": Arg(0.005, float, "largest tempered MC-dropout std of a negative label, < (UPS kappa_n 0.005)",
                       ge=0),
        "temp_nl": Arg(2.0, float, "softmax temperature for selecting negative labels (UPS temp_nl 2)", gt=0),
        "mc_passes": Arg(10, int, "stochastic pseudo-labeller passes (UPS f_pass 10)", ge=2),
        "mc_chunk": Arg(2, int, "passes per teacher forward, bounds memory", ge=1),
    }
    min_unlabeled = 1
    deviations = [
        "single online stage: EMA-teacher pseudo-labels selected per batch, not UPS' rounds of pseudo-labelling "
        "and retraining from scratch",
        "no class balancing of positive pseudo-labels (UPS' early rounds)",
        "MC passes in train mode (BatchNorm batch statistics) with Mean-Teacher input noise "
        "(UPS: eval-mode BN, dropout only)",
        "supervised term 0.5*(CE+Dice) (UPS: CE)",
    ]

    def training_step(self, batch, iteration: int) -> StepOutput:
        self.unlabeled_images(batch)
        n_l = batch.image_l.shape[0]
        logits = self.student(batch.images)
        loss_sup = supervised_loss(logits[:n_l], batch.label_l)
        a = self.args
        (probs, std), (probs_nl, std_nl) = mc_dropout_moments(
            self.teacher, batch.image_u, passes=a["mc_passes"], temperatures=(1.0, a["temp_nl"]),
            perturb=self.noisy, chunk=a["mc_chunk"])
        sel = ups_selection(probs, std, probs_nl, std_nl, a["tau_p"], a["kappa_p"], a["tau_n"], a["kappa_n"])
        logits_u = logits[n_l:]
        loss_pos = masked_cross_entropy(logits_u, sel.labels, sel.positive, normalise="selected")
        loss_neg = negative_learning_loss(logits_u, sel.negative)
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_pos": float(loss_pos.detach()),
                "loss_neg": float(loss_neg.detach()), "w_pl": weight,
                "pos_frac": float(sel.positive.float().mean()), "neg_frac": float(sel.negative.any(1).float().mean())}
        return StepOutput(loss_sup + weight * (loss_pos + loss_neg), logs)
