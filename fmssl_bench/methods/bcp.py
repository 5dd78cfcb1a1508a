"""BCP: bidirectional copy-paste (Bai, Chen, Li, Shen & Wang, CVPR 2023), after DeepMed-Lab-ECNU/BCP.

Follows ``code/LA_BCP_train.py`` (3D) and ``code/ACDC_BCP_train.py`` (2D); the box is
:mod:`.mixing`'s (BCP's mask: 1 outside a box of 2/3 of each side at a random corner, 0 inside;
``mix(a, b, m) = a m + b (1 - m)`` pastes ``b``'s box into ``a``). Two stages of the shared loop:

``pretrain`` (supervised, labeled cases only)
    the labeled batch is split in halves ``a``, ``b``; the network learns on ``mix(a, b, m)``
    against ``mix(y_a, y_b, m)``. 3D (LA): ``(CE + Dice) / 2`` on the whole mixed patch; 2D (ACDC):
    BCP's ``mix_loss`` with both regions weighted 1 (the same two terms per region).
``train`` (self-training; the protocol's ``train`` section)
    the student *and* the teacher start from the pre-trained network (BCP loads the pre-trained
    weights into both). With labeled halves ``a, b`` and unlabeled halves ``u_a, u_b``::

        x_l = mix(a, u_a, m)      target y_a outside the box (weight 1), p_a inside (weight 0.5)
        x_u = mix(u_b, b, m)      target p_b outside the box (weight 0.5), y_b inside (weight 1)

    ``p`` = the teacher's pseudo-labels on ``u_a`` and ``u_b`` (separate forwards, as BCP):
    the argmax, each foreground class cut to its largest connected component (LA: the foreground
    ``p >= 0.5`` with ``LargestCC``; ACDC: per class). The loss is ``mix_loss(x_l) + mix_loss(x_u)``,
    ``mix_loss = (Dice + CE) / 2`` where each of Dice and CE is ``w_out * term(outside) + w_in *
    term(inside)`` (CE averaged over the region's voxels, Dice masked to the region); the weight
    of pseudo-labelled voxels is ``u_weight`` = 0.5. The teacher is an EMA of the student with a
    constant decay 0.99 (BCP's ``update_ema_variables``, no warm-up), parameters only (LA).

BCP computes a ramped consistency weight but never uses it in the loss; so neither does this.
The Dice terms are the reference's: 3D LA's ``mask_DiceLoss`` (per image and class, background
included, sums not squared, smooth 1e-5); 2D ACDC's ``DiceLoss`` (per class over the batch,
background included, squared sums, smooth 1e-10).

Stage lengths: the protocol's ``stages.pretrain`` section configures pre-training (iterations,
optimiser, schedule...) over ``train``. Without ``stages.pretrain.iterations`` the pre-training
length is ``pretrain_fraction`` x the self-training length: LA's 2000 / 15000 by default
(ACDC declares 10000 pre-training iterations for 30000, but its ``pre_train`` loop runs
``max_iterations``); ``--stage-iterations pretrain=N`` overrides both.

Deviations (also in ``deviations``): the halves are BCP's ``sub_bs`` split, so each stage needs an
even labeled batch and (self-training) as many unlabeled as labeled cases per batch (BCP: 4 + 4;
every packaged protocol qualifies); the pre-training stage runs on the protocol's train
configuration unless ``stages.pretrain`` says otherwise (BCP pre-trains at a constant lr 0.01 and
self-trains LA with lr x0.1 every 2500 iterations, ACDC at constant lr); the networks are the
protocol's (BCP's VNet/UNet differ in details); both stages end at their last iterate (BCP
selects the best on a validation set, for the pre-trained weights as well); for 2D, ACDC's EMA of
the full state dict (batch-norm statistics too) is the LA parameter-only EMA, and ACDC's masked
``DiceLoss`` leaves its background channel unmasked (its ``_one_hot_mask_encoder`` makes
``mask * 0 == 0`` true everywhere) where here every class is masked; box corners follow BCP's
``randint(0, side - size)`` (the far edge is never reached) generalised to any patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ..api import Arg, Batch, Method, StepOutput
from ..errors import ConfigError
from .ema import make_teacher
from .mixing import BCP_MASK_RATIO, context_mask, mix
from .registry import register_method


def largest_component_per_class(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Each foreground class of each label map ``(B, ...)`` cut to its largest connected component.

    BCP's ``LargestCC_pancreas`` (LA, foreground) / ``get_ACDC_2DLargestCC`` (per class):
    skimage ``label`` connectivity (full: diagonal neighbours count), the other components of that
    class become background; a class that is absent stays absent.
    """
    out = np.zeros_like(labels)
    structure = ndimage.generate_binary_structure(labels.ndim - 1, labels.ndim - 1)
    for i, lab in enumerate(labels):
        for c in range(1, n_classes):
            components, count = ndimage.label(lab == c, structure=structure)
            if count == 0:
                continue
            largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
            out[i][components == largest] = c
    return out


def masked_dice(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, style: str) -> torch.Tensor:
    """``1 - Dice`` of softmax ``probs`` ``(B, K, ...)`` against ``target`` ``(B, ...)`` on the voxels where ``mask`` is 1.

    ``style`` ``"la"``: BCP LA's ``mask_DiceLoss`` (per image and class, ``(2 sum(p t m) + 1e-5) /
    (sum((p + t) m) + 1e-5)``, mean over images and classes). ``"acdc"``: BCP ACDC's ``DiceLoss``
    with a mask (per class over the batch, ``(2 sum(p t m) + 1e-10) / (sum(p^2 m) + sum(t^2 m) +
    1e-10)``, mean over classes). Background is a class in both. ``mask`` covers the spatial axes.
    """
    n_classes = probs.shape[1]
    onehot = F.one_hot(target.long(), n_classes).movedim(-1, 1).to(probs.dtype)
    m = mask.to(probs.dtype).expand(probs.shape[:1] + probs.shape[2:]).unsqueeze(1)
    if style == "la":
        inter = (probs * onehot * m).flatten(2).sum(-1)
        union = ((probs + onehot) * m).flatten(2).sum(-1)
        return 1 - ((2 * inter + 1e-5) / (union + 1e-5)).mean()
    if style == "acdc":
        p, t, w = (x.movedim(1, 0).flatten(1) for x in (probs, onehot, m.expand_as(probs)))
        dice = (2 * (p * t * w).sum(1) + 1e-10) / ((p * p * w).sum(1) + (t * t * w).sum(1) + 1e-10)
        return (1 - dice).mean()
    raise ValueError(f"dice style {style!r}; expected la or acdc")


def mix_loss(logits: torch.Tensor, outside: torch.Tensor, inside: torch.Tensor, mask: torch.Tensor,
             w_outside: float, w_inside: float, style: str) -> torch.Tensor:
    """BCP's ``mix_loss``: ``(Dice + CE) / 2``, each ``w_outside * term(outside, mask) + w_inside * term(inside, 1 - mask)``.

    ``outside`` / ``inside`` are the targets of the voxels outside / inside the pasted box
    (``mask`` 1 / 0); CE is averaged over each region's voxels (``sum(CE m) / (sum(m) + 1e-16)``).
    """
    probs = torch.softmax(logits, 1)
    inner = 1 - mask
    dice = w_outside * masked_dice(probs, outside, mask, style) + w_inside * masked_dice(probs, inside, inner, style)
    m, n = mask.to(logits.dtype), inner.to(logits.dtype)
    ce_out = F.cross_entropy(logits, outside.long(), reduction="none")
    ce_in = F.cross_entropy(logits, inside.long(), reduction="none")
    ce = (w_outside * (ce_out * m).sum() / (m.expand_as(ce_out).sum() + 1e-16)
          + w_inside * (ce_in * n).sum() / (n.expand_as(ce_in).sum() + 1e-16))
    return (dice + ce) / 2


@torch.no_grad()
def constant_ema(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """BCP's ``update_ema_variables``: ``t = alpha t + (1 - alpha) s`` on the parameters, from the first step."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)


def _halves(n: int, what: str) -> int:
    if n < 2 or n % 2:
        raise ConfigError(f"bcp splits the {what} part of each batch in two halves (BCP's sub_bs); it has {n} "
                          f"case(s), expected an even number >= 2")
    return n // 2


@dataclass
class Mixed:
    """One copy-paste image and its targets: ``outside`` the box (mask 1) and ``inside`` it, with their weights."""

    image: torch.Tensor
    outside: torch.Tensor
    inside: torch.Tensor
    w_outside: float
    w_inside: float

    def label(self, mask: torch.Tensor) -> torch.Tensor:
        """The composed label map (what the mixed image shows, labels and pseudo-labels together)."""
        return mix(self.outside, self.inside, mask)

    def weight(self, mask: torch.Tensor) -> torch.Tensor:
        """The per-voxel loss weight map (1 for labels, ``u_weight`` for pseudo-labels)."""
        m = mask.to(torch.float32)
        return self.w_outside * m + self.w_inside * (1 - m)


def bidirectional_copy_paste(image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor,
                             pseudo_u: torch.Tensor, mask: torch.Tensor, u_weight: float) -> tuple[Mixed, Mixed]:
    """BCP's two mixes of labeled halves ``a, b`` and unlabeled halves ``u_a, u_b`` (LA pairing).

    ``x_l = mix(a, u_a)``: labeled outside the box, unlabeled inside; ``x_u = mix(u_b, b)``:
    unlabeled outside, labeled inside. Labeled voxels weigh 1, pseudo-labelled ``u_weight``.
    """
    h = _halves(image_l.shape[0], "labeled")
    if image_u.shape[0] != image_l.shape[0]:
        raise ConfigError(f"bcp pastes labeled and unlabeled halves into each other; the batch has "
                          f"{image_l.shape[0]} labeled and {image_u.shape[0]} unlabeled cases, expected as many of each "
                          "(protocol: batch_size = 2 x labeled_bs)")
    a, b, ya, yb = image_l[:h], image_l[h:], label_l[:h], label_l[h:]
    ua, ub, pa, pb = image_u[:h], image_u[h:], pseudo_u[:h], pseudo_u[h:]
    to_l = Mixed(mix(a, ua, mask), ya, pa, 1.0, u_weight)
    to_u = Mixed(mix(ub, b, mask), pb, yb, u_weight, 1.0)
    return to_l, to_u


@register_method
class BCP(Method):
    name = "bcp"
    description = ("BCP (Bai et al., CVPR 2023): copy-paste pre-training, then bidirectional labeled/unlabeled "
                   "copy-paste self-training with an EMA teacher")
    paper_names = (("BCP", ""),)
    arguments = {
        "u_weight": Arg(0.5, float, "loss weight of the pseudo-labelled voxels of a mixed image (BCP u_weight 0.5)", ge=0),
        "mask_ratio": Arg(BCP_MASK_RATIO, float, "side of the pasted box over the patch side, per axis (BCP mask_ratio 2/3)",
                          gt=0, le=1),
        "ema_decay": Arg(0.99, float, "constant teacher EMA decay from the first step (BCP 0.99)", ge=0, lt=1),
        "pretrain_fraction": Arg(2000 / 15000, float, "pre-training length over the self-training length where the protocol "
                                 "has no stages.pretrain.iterations (BCP LA 2000/15000)", gt=0),
        "largest_component": Arg(True, bool, "cut each pseudo-labelled class to its largest connected component (BCP nms=1)"),
    }
    deviations = [
        "each stage needs an even labeled batch, self-training as many unlabeled as labeled cases (BCP's sub_bs halves)",
        "pre-training runs on the protocol's train configuration unless stages.pretrain overrides it "
        "(BCP: constant lr 0.01), for pretrain_fraction x the self-training length unless stages.pretrain.iterations is set",
        "the last iterate of each stage is kept (BCP selects the best on a validation set, the pre-trained weights too)",
        "2D: parameter-only EMA (BCP ACDC averages the full state dict, batch-norm statistics included)",
        "2D masked Dice masks the background channel too (BCP ACDC's mask encoder leaves it unmasked)",
        "multi-class pseudo-labels: argmax then per-class largest component (BCP LA: foreground p >= 0.5, binary)",
    ]

    @classmethod
    def stages_used(cls, args) -> tuple[str, ...]:
        return ("pretrain", "train")

    @classmethod
    def check(cls, args, protocol) -> None:
        super().check(args, protocol)
        source = protocol.where
        for stage in ("pretrain", "train"):
            cfg = protocol.stage_config(stage)
            where = f"stages.{stage}" if "labeled_bs" in protocol.stages.get(stage, {}) else "train"
            if cfg.labeled_bs < 2 or cfg.labeled_bs % 2:
                raise ConfigError(f"{source}: {where}.labeled_bs {cfg.labeled_bs}: bcp splits the labeled batch "
                                  "in halves; expected an even number >= 2")
        train = protocol.stage_config("train")
        if train.batch_size != 2 * train.labeled_bs:
            raise ConfigError(f"{source}: train.batch_size {train.batch_size}: bcp pastes labeled and unlabeled "
                              f"halves into each other; expected 2 x labeled_bs ({2 * train.labeled_bs})")

    def setup(self) -> None:
        self.student = self.ctx.build_net()
        self.teacher = make_teacher(self.student)
        self.dice_style = "la" if self.ctx.protocol.ndim == 3 else "acdc"

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "teacher": self.teacher}

    def pretrain_iterations(self) -> int | None:
        """The pre-training length the method asks for: None where the protocol sets it (or the CLI overrides it)."""
        if "iterations" in self.ctx.protocol.stages.get("pretrain", {}):
            return None
        return max(1, round(self.args["pretrain_fraction"] * self.ctx.stage_length("train")))

    def fit(self) -> nn.Module:
        config = self.ctx.stage_config("pretrain")
        # labeled cases only, labeled_bs of them: the labeled stream of BCP's two-stream batch
        labeled_only = self.ctx.two_stream(config, self.ctx.labeled, None, uses_unlabeled=True)
        self.ctx.train(self, stage="pretrain", iterations=self.pretrain_iterations(), batches=labeled_only,
                       step=self.pretrain_step, after_step=lambda iteration: None,
                       modules={"student": self.student}, trainable=list(self.student.parameters()))
        self.start_self_training()
        self.ctx.train(self, stage="train")
        return self.predictor()

    def start_self_training(self) -> None:
        """The teacher starts as the pre-trained student (BCP loads the pre-trained weights into both).

        On resume the ``train`` checkpoint then replaces both, so this is right in either case.
        """
        self.teacher.load_state_dict(self.student.state_dict())

    def box_mask(self, images: torch.Tensor) -> torch.Tensor:
        return context_mask(tuple(images.shape[2:]), self.args["mask_ratio"], device=images.device)

    def pretrain_step(self, batch: Batch, iteration: int) -> StepOutput:
        h = _halves(batch.image_l.shape[0], "labeled")
        a, b = batch.image_l[:h], batch.image_l[h:]
        ya, yb = batch.label_l[:h], batch.label_l[h:]
        mask = self.box_mask(a)
        logits = self.student(mix(a, b, mask))
        if self.dice_style == "la":  # LA: (CE + Dice) / 2 on the mixed label, whole patch
            target = mix(ya, yb, mask)
            ce = F.cross_entropy(logits, target.long())
            dice = masked_dice(torch.softmax(logits, 1), target, torch.ones_like(mask), "la")
            loss = (ce + dice) / 2
        else:  # ACDC: mix_loss with weight 1 on both regions
            loss = mix_loss(logits, ya, yb, mask, 1.0, 1.0, "acdc")
        return StepOutput(loss, {"loss_pre": float(loss.detach())})

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's hard labels, each foreground class cut to its largest component (BCP ``nms=1``)."""
        labels = self.teacher(images).argmax(1)
        if self.args["largest_component"]:
            cut = largest_component_per_class(labels.cpu().numpy(), self.ctx.n_classes)
            labels = torch.from_numpy(cut).to(labels.device)
        return labels

    def training_step(self, batch: Batch, iteration: int) -> StepOutput:
        if batch.image_u is None:
            raise ConfigError("bcp self-training needs unlabeled cases in every batch")
        h = _halves(batch.image_u.shape[0], "unlabeled")
        # separate teacher forwards of the two unlabeled halves, as BCP (batch-norm statistics per forward)
        pseudo = torch.cat([self.pseudo_labels(batch.image_u[:h]), self.pseudo_labels(batch.image_u[h:])])
        mask = self.box_mask(batch.image_l)
        to_l, to_u = bidirectional_copy_paste(batch.image_l, batch.label_l, batch.image_u, pseudo, mask,
                                              self.args["u_weight"])
        losses = []
        for mixed in (to_l, to_u):
            logits = self.student(mixed.image)
            losses.append(mix_loss(logits, mixed.outside, mixed.inside, mask, mixed.w_outside, mixed.w_inside,
                                   self.dice_style))
        loss = losses[0] + losses[1]
        logs = {"loss_l": float(losses[0].detach()), "loss_u": float(losses[1].detach()),
                "pseudo_fg": float((pseudo > 0).float().mean())}
        return StepOutput(loss, logs)

    def after_step(self, iteration: int) -> None:
        constant_ema(self.teacher, self.student, self.args["ema_decay"])
