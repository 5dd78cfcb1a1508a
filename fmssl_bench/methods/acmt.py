"""AC-MT: ambiguity-selective consistency for the Mean Teacher (Xu et al., MedIA 2023), after lemoshu/AC-MT.

A Mean Teacher (EMA 0.99, teacher input noise clamp(0.1 N, +-0.2), supervised ``0.5 (CE + Dice)``,
``w(t) = 0.1 exp(-5 (1 - t/40)^2)``, ``t = iteration // 150``) whose softmax-MSE consistency is
averaged over the *ambiguous* voxels of the unlabeled images only. AC-MT ships one script per
selection strategy (``code/train_ACMT_{Ent,MU,PErr,SErr_3D_cl2}.py``) and no default; the
entropy strategy (``train_ACMT_Ent_3D.py``, the first of the paper's family) is the default here:

``entropy`` (Ent.)
    the normalised entropy ``H(p) / ln K`` of the *student's* softmax on the unlabeled images;
    ambiguous where ``H >= tau(t)``, ``tau(t) = 0.75 + (0.95 - 0.75) r(t)`` with ``r(t) =
    exp(-5 (1 - iteration/T)^2)`` over the stage's ``T`` iterations (the script's "strict" option,
    the one it runs). The loss is the mean of the squared softmax difference over the selected
    voxels and classes.
``mc_dropout`` (MU)
    the entropy of the mean softmax of 8 stochastic passes of the *student* (dropout on, input
    noise clamp(0.1 N, +-0.2), 2 passes per forward, as the script), ambiguous where
    ``H >= (0.75 + 0.15 r(t)) ln 2``; the script divides the summed squared difference by the
    number of selected *voxels* (not voxel-classes), kept. For K classes the threshold is taken on
    ``H / ln K`` (the same numbers for K = 2).
``prototype`` (P-Err.)
    10 stochastic teacher passes on the clean unlabeled images; voxels whose per-class
    ``std(sigmoid(logit / 2)) >= 0.1`` are zeroed in the teacher's softmax before its argmax (the
    "rectified" label); per image and class a prototype is the teacher-confidence-weighted mean of
    the teacher's mean features over that class's rectified voxels; each voxel's nearest
    prototype (squared distance) is its "feature label". Voxels where the student's argmax
    disagrees with it are ambiguous ("noisy"): consistency there, plus the mean over all voxels of
    the student's normalised entropy on the agreeing ("clean") voxels.
``self_error`` (S-Err.)
    Confident Learning on the voxels (cleanlab ``find_label_issues``); not implemented: it needs
    cleanlab, which the harness does not depend on. Choosing it raises ``NotImplementedError``.

The supervised Dice is AC-MT's ``DiceLoss`` (SSL4MIS': every class, squared sums over the batch;
:func:`~.urpc.ce_dice_all_classes`). Deviations (also in ``deviations``): the mc_dropout threshold
is taken on ``H / ln K``; P-Err's features are the network's ``features`` tap
(VNet: last decoder features at full resolution; MONAI UNet: the top block's input at half
resolution, interpolated) instead of AC-MT's ``VNet_MTPD.featuremap_center``; a voxel is "clean"
when the two labels agree (AC-MT compares the one-hot maps channel by channel, which differs only
on exact distance ties); its entropy regulariser averages the clean voxels' entropy over all
voxels (AC-MT's broadcast of a ``(B, ...)`` map against ``(B, 2, ...)`` does that for B = 2 only);
the checkpoint is the last iterate.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from ..api import Arg, StepOutput
from .losses import ce_dice_all_classes
from .mean_teacher import TeacherStudent
from .ramps import sigmoid_rampup
from .registry import register_method
from .uncertainty import entropy_map, gaussian_input_noise, mc_dropout_probs

STRATEGIES = ("entropy", "mc_dropout", "prototype", "self_error")


def ambiguous_by_entropy(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(B, 1, ...)`` float mask: 1 where the normalised entropy ``H(p) / ln K`` is at least ``threshold``."""
    return (entropy_map(probs, normalise=True) >= threshold).to(probs.dtype)


def selective_consistency(dist: torch.Tensor, mask: torch.Tensor, per_class: bool = True) -> torch.Tensor:
    """``sum(mask * dist) / sum(mask)``: the consistency on the selected voxels only.

    ``dist`` is ``(B, K, ...)``, ``mask`` ``(B, 1, ...)``. ``per_class`` (Ent., P-Err.) expands
    the mask over the K channels before counting, i.e. the mean over selected voxel-classes; off
    (MU) counts selected voxels, i.e. the per-voxel sum over classes averaged over them. Zero when
    nothing is selected (AC-MT's ``+ 1e-16``).
    """
    weight = mask.expand_as(dist) if per_class else mask
    return (mask * dist).sum() / (weight.sum() + 1e-16)


def entropy_threshold(iteration: int, total: int, start: float = 0.75, end: float = 0.95) -> float:
    """AC-MT's ramped selection threshold ``start + (end - start) exp(-5 (1 - iteration/total)^2)``."""
    return start + (end - start) * sigmoid_rampup(iteration, total)


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """``(B, K, F)``: per image and class the confidence-weighted mean feature over that class's voxels.

    AC-MT's ``getPrototype``: ``sum(f * 1[label = k] * p_k) / (sum(1[label = k] * p_k) + 1e-5)``
    with ``features`` ``(B, F, ...)``, ``labels`` ``(B, ...)`` and ``confidence`` (the softmax,
    ``(B, K, ...)``) on the same grid.
    """
    n_classes = confidence.shape[1]
    onehot = F.one_hot(labels.long(), n_classes).movedim(-1, 1).to(confidence.dtype)
    weight = (onehot * confidence).flatten(2)  # B, K, V
    summed = torch.einsum("bkv,bfv->bkf", weight, features.flatten(2))
    return summed / (weight.sum(-1, keepdim=True) + 1e-5)


def nearest_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``(B, ...)``: the class of each voxel's nearest prototype (squared Euclidean distance, AC-MT ``calDist``)."""
    flat = features.flatten(2)  # B, F, V
    # |f - p|^2 = |f|^2 - 2 f.p + |p|^2, without a (B, K, F, V) difference tensor
    dist = (flat.pow(2).sum(1, keepdim=True) - 2 * torch.einsum("bkf,bfv->bkv", prototypes, flat)
            + prototypes.pow(2).sum(-1, keepdim=True))  # B, K, V
    return dist.argmin(1).reshape(features.shape[:1] + features.shape[2:])


@register_method
class ACMT(TeacherStudent):
    name = "acmt"
    description = "ACMT (Xu et al., MedIA 2023): Mean Teacher with consistency on ambiguous voxels only (entropy selection)"
    paper_names = (("ACMT", ""),)
    arguments = {
        **TeacherStudent.arguments,
        "consistency": dataclasses.replace(TeacherStudent.arguments["consistency"],
                                           help="weight of the selective consistency once ramped up (AC-MT 0.1)"),
        "rampup_epochs": dataclasses.replace(TeacherStudent.arguments["rampup_epochs"],
                                             help="length of the sigmoid ramp-up in 'epochs' (AC-MT 40)"),
        "iters_per_epoch": dataclasses.replace(TeacherStudent.arguments["iters_per_epoch"],
                                               help="iterations per ramp 'epoch'; auto = stage length / rampup_epochs (AC-MT 150)"),
        "strategy": Arg("entropy", str, "ambiguity selection: entropy (AC-MT Ent.), mc_dropout (MU), prototype (P-Err.); "
                        "self_error (S-Err.) is not implemented", choices=STRATEGIES),
        "threshold_start": Arg(0.75, float, "normalised-entropy threshold at the start (AC-MT Ent_th 0.75; MU 0.75)", ge=0, le=1),
        "threshold_end": Arg("auto", Literal["auto"] | float, "threshold reached at the end of the stage; auto = 0.95 "
                             "for entropy (AC-MT Ent.), 0.90 for mc_dropout (AC-MT MU)", ge=0, le=1),
        "mc_passes": Arg(8, int, "stochastic passes of the mc_dropout strategy (AC-MT MU T = 8)", ge=1),
        "prototype_passes": Arg(10, int, "stochastic teacher passes of the prototype strategy (AC-MT P-Err. 10)", ge=1),
        "prototype_certainty": Arg(0.1, float, "prototype strategy: a class is certain where std(sigmoid(logit/2)) < this "
                                   "(AC-MT uncertainty_th 0.1)", gt=0),
    }
    deviations = [
        "mc_dropout threshold on the entropy normalised by ln K (AC-MT: ln 2 scale of its 2-class task; equal for K = 2)",
        "prototype strategy: features from the network's 'features' tap instead of VNet_MTPD.featuremap_center; "
        "clean = voxel labels agree (AC-MT compares one-hot channels: differs on exact distance ties only); "
        "its entropy term averages over all unlabeled voxels (AC-MT's broadcast does so for batch 2 only)",
        "last iterate evaluated (AC-MT keeps the best on its validation/test list)",
    ]

    @classmethod
    def check(cls, args, protocol) -> None:
        super().check(args, protocol)
        if args["strategy"] == "self_error":
            raise NotImplementedError(
                "--method-arg strategy=self_error: acmt's S-Err. strategy needs cleanlab's Confident Learning "
                "(find_label_issues) on every batch, which the harness does not depend on; use "
                "--method-arg strategy=entropy, mc_dropout or prototype")

    def setup(self) -> None:
        end = self.args["threshold_end"]
        self.threshold_end = {"entropy": 0.95, "mc_dropout": 0.90}.get(self.args["strategy"], 0.0) if end == "auto" else end
        super().setup()

    def threshold(self, iteration: int) -> float:
        """The ramped ambiguity threshold at ``iteration`` of the running stage."""
        return entropy_threshold(iteration, self.ctx.stage.total, self.args["threshold_start"], self.threshold_end)

    # -- the selection strategies: each gives the consistency term on the unlabeled part ----------
    def _entropy(self, student_u: torch.Tensor, teacher_u: torch.Tensor, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ambiguous_by_entropy(torch.softmax(student_u, 1).detach(), self.threshold(iteration))
        dist = (torch.softmax(student_u, 1) - torch.softmax(teacher_u, 1)) ** 2
        return selective_consistency(dist, mask, per_class=True), mask

    def _mc_dropout(self, student_u: torch.Tensor, teacher_u: torch.Tensor, image_u: torch.Tensor,
                    iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        probs = mc_dropout_probs(self.student, image_u, passes=self.args["mc_passes"],
                                 perturb=lambda x: gaussian_input_noise(x, self.args["noise"], self.args["noise_clip"]))
        mask = ambiguous_by_entropy(probs, self.threshold(iteration))
        dist = (torch.softmax(student_u, 1) - torch.softmax(teacher_u, 1)) ** 2
        return selective_consistency(dist, mask, per_class=False), mask

    @torch.no_grad()
    def prototype_labels(self, image_u: torch.Tensor) -> torch.Tensor:
        """P-Err.'s feature label of every unlabeled voxel (see the module docstring)."""
        clean = self.teacher.forward_heads(image_u)
        soft = torch.softmax(clean.logits, 1)
        passes = self.args["prototype_passes"]
        sig, sig_sq, feats = 0.0, 0.0, 0.0
        for _ in range(passes):
            out = self.teacher.forward_heads(image_u)
            s = torch.sigmoid(out.logits / 2.0)
            sig, sig_sq, feats = sig + s, sig_sq + s * s, feats + out.features
        mean = sig / passes
        # torch.std over the passes (unbiased, as AC-MT's torch.std(dim=0))
        var = (sig_sq - passes * mean * mean) / max(passes - 1, 1)
        std = var.clamp_min(0).sqrt()
        rectified = ((std < self.args["prototype_certainty"]).to(soft.dtype) * soft).argmax(1)
        features = feats / passes
        if features.shape[2:] != soft.shape[2:]:
            mode = "trilinear" if features.dim() == 5 else "bilinear"
            features = F.interpolate(features, size=soft.shape[2:], mode=mode)
        return nearest_prototype(features, class_prototypes(features, rectified, soft))

    def _prototype(self, student_u: torch.Tensor, teacher_u: torch.Tensor, image_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_label = self.prototype_labels(image_u)
        student_soft = torch.softmax(student_u, 1)
        clean = (student_soft.detach().argmax(1) == feature_label).unsqueeze(1).to(student_soft.dtype)
        noisy = 1 - clean
        dist = (student_soft - torch.softmax(teacher_u, 1)) ** 2
        entropy = entropy_map(student_soft, normalise=True)
        return selective_consistency(dist, noisy, per_class=True) + (entropy * clean).mean(), noisy

    def training_step(self, batch, iteration: int) -> StepOutput:
        return self.student_step(batch, iteration)[1]

    def student_step(self, batch, iteration: int) -> tuple[torch.Tensor, StepOutput]:
        n_l = batch.image_l.shape[0]
        logits = self.student(batch.images)
        loss_sup = ce_dice_all_classes(logits[:n_l], batch.label_l)
        student_u = logits[n_l:]
        teacher_u = self.teacher_logits(batch.image_u)
        strategy = self.args["strategy"]
        if strategy == "entropy":
            loss_cons, mask = self._entropy(student_u, teacher_u, iteration)
        elif strategy == "mc_dropout":
            loss_cons, mask = self._mc_dropout(student_u, teacher_u, batch.image_u, iteration)
        elif strategy == "prototype":
            loss_cons, mask = self._prototype(student_u, teacher_u, batch.image_u)
        else:  # setup refused it already
            raise NotImplementedError(f"acmt strategy {strategy!r}")
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_cons": float(loss_cons.detach()), "w_cons": weight,
                "ambiguous": float(mask.mean())}
        if strategy != "prototype":
            logs["threshold"] = self.threshold(iteration)
        return logits, StepOutput(loss_sup + weight * loss_cons, logs)
