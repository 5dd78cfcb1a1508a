"""SS-Net: exploring smoothness and class-separation (Wu et al., MICCAI 2022), after ycwu1997/SS-Net.

``train_ss_3d.py`` (LA, VNet) and ``train_ss_2d.py`` (ACDC, UNet). On top of the segmentation
network (its ``features`` tap: the last decoder features, SS-Net's "embedding"):

* **smoothness**: virtual adversarial training on the whole batch
  (:func:`~fmssl_bench.methods.perturbations.vat_loss`, xi = 10, one power iteration,
  eps = ``magnitude``: 10 in 3D, 6 in 2D); the distance is ``Binary_dice_loss`` between the two
  softmax maps in 3D and the class-mean soft Dice (``softDiceLoss``) in 2D.
* **class separation**: a projection head (Linear(C, 32), BN, ReLU, Linear(32, 32)) and a
  prediction head (same, 32 -> 32) on every voxel's feature; per class a prototype memory of at
  most 32 projected features of *correctly predicted foreground* labeled voxels (projected with
  the heads in eval mode, rebuilt every iteration, ranked by a learned per-class selector when
  there are more: SS-Net's ``FeatureMemory``); the loss pulls the predicted features of labeled
  voxels (true labels) and unlabeled voxels (argmax pseudo-labels) towards their class memory:
  ``mean((1 - cos) * w)`` with ``w`` the sigmoid of a second learned selector, rescaled to mean 1
  (``contrastive_class_to_class_learned_memory``), summed over classes / K.

Loss: ``Dice + w(t) * (L_vat + 0.1 * (L_cl_labeled + L_cl_unlabeled))``; the supervised Dice is
``Binary_dice_loss`` of the foreground probability in 3D (averaged over foreground classes when
there are several) and the 4-class ``DiceLoss`` (all classes, squared sums) in 2D: SS-Net uses no
cross-entropy. ``w(t) = c * exp(-5 (1 - t/R)^2)``: 3D c = 1, R = 40 epochs of 150 iterations
in a 15000-iteration run (the ramp ends at 40 % of the run: ``rampup_span`` 0.4), 2D c = 0.1,
R = 200 x 150 of 30000 (span 1). ``iters_per_epoch: auto`` = stage length x span / rampup_epochs.

Kept from the public code: the memory keeps the 32 features *lowest* ranked by the selector
(``torch.sort`` ascending, although its comment says highest); the memory-side selector weights
are rescaled to exactly 1 (the code divides a (1, N) tensor by its sum over the first axis), so
only the feature-side selector matters; the background never enters the memory, so only
foreground classes are pulled together.

Deviations (also in ``deviations``): on the MONAI UNet the ``features`` tap is the input of its
top block at half resolution, bilinearly up-sampled to the labels; the number of selectors is the
data set's class count (SS-Net's 2D UNet has 4); optimiser, schedule and run length are the
protocol's (SS-Net 3D: SGD 0.01, x0.1 every 2500, 15000 iterations).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..api import Arg, Method, StepOutput
from .losses import binary_dice_loss, soft_dice_between, soft_dice_loss
from .perturbations import vat_loss
from .ramps import sigmoid_rampup
from .registry import register_method

_BY_DIM = {"consistency": {3: 1.0, 2: 0.1}, "magnitude": {3: 10.0, 2: 6.0}, "rampup_span": {3: 0.4, 2: 1.0}}


def _mlp(dim_in: int, dim: int, out: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim), nn.BatchNorm1d(dim), act, nn.Linear(dim, out))


class ContrastHeads(nn.Module):
    """SS-Net's projection / prediction heads and the per-class selectors (trained with the net)."""

    def __init__(self, dim_in: int, n_classes: int, feat_dim: int = 32) -> None:
        super().__init__()
        self.projection = _mlp(dim_in, feat_dim, feat_dim, nn.ReLU(inplace=True))
        self.prediction = _mlp(feat_dim, feat_dim, feat_dim, nn.ReLU(inplace=True))
        self.selectors = nn.ModuleList(_mlp(feat_dim, feat_dim, 1, nn.LeakyReLU(0.2, inplace=True)) for _ in range(n_classes))
        self.memory_selectors = nn.ModuleList(_mlp(feat_dim, feat_dim, 1, nn.LeakyReLU(0.2, inplace=True))
                                              for _ in range(n_classes))


@torch.no_grad()
def build_memory(heads: ContrastHeads, projected: torch.Tensor, labels: torch.Tensor, per_class: int) -> list[torch.Tensor | None]:
    """Per class at most ``per_class`` projected features (SS-Net's ``add_features_from_sample_learned``)."""
    memory: list[torch.Tensor | None] = [None] * len(heads.selectors)
    for c, selector in enumerate(heads.selectors):
        features = projected[labels == c]
        if features.shape[0] == 0:
            continue
        if features.shape[0] > per_class:
            rank = torch.sigmoid(selector(features))[:, 0]
            features = features[torch.argsort(rank)[:per_class]]  # ascending, as the public code
        memory[c] = features.detach()
    return memory


def class_contrast(heads: ContrastHeads, features: torch.Tensor, labels: torch.Tensor,
                   memory: list[torch.Tensor | None]) -> torch.Tensor:
    """SS-Net's ``contrastive_class_to_class_learned_memory`` (see the module docstring)."""
    n_classes = len(memory)
    loss = features.new_zeros(())
    for c in range(n_classes):
        fc, mc = features[labels == c], memory[c]
        if mc is None or fc.shape[0] <= 1 or mc.shape[0] <= 1:
            continue
        distances = 1 - F.normalize(fc, dim=1) @ F.normalize(mc, dim=1).t()
        w = torch.sigmoid(heads.selectors[c](fc.detach()))  # (M, 1)
        distances = distances * (w.shape[0] / w.sum(0)) * w
        wm = torch.sigmoid(heads.memory_selectors[c](F.normalize(mc, dim=1))).permute(1, 0)  # (1, N)
        distances = distances * (wm.shape[0] / wm.sum(0)) * wm  # == 1: the public code's rescaling
        loss = loss + distances.mean()
    return loss / n_classes


@register_method
class SSNet(Method):
    name = "ssnet"
    description = "SS-Net (Wu et al., MICCAI 2022): VAT smoothness + prototype class separation on decoder features"
    paper_names = (("SS-Net", ""),)
    arguments = {
        "consistency": Arg("auto", Literal["auto"] | float,
                           "weight of VAT + separation once ramped up; auto = 1.0 in 3D, 0.1 in 2D (SS-Net)", ge=0),
        "rampup_epochs": Arg(40.0, float, "length of the sigmoid ramp-up in 'epochs' (SS-Net 3D 40)", gt=0),
        "rampup_span": Arg("auto", Literal["auto"] | float,
                           "fraction of the stage the ramp spans under iters_per_epoch auto; auto = 0.4 in 3D "
                           "(40 x 150 of 15000 iterations), 1.0 in 2D (200 x 150 of 30000)", gt=0, le=1),
        "iters_per_epoch": Arg("auto", Literal["auto"] | float,
                               "iterations per ramp 'epoch'; auto = stage length x rampup_span / rampup_epochs (SS-Net 150)", gt=0),
        "magnitude": Arg("auto", Literal["auto"] | float, "VAT perturbation norm eps; auto = 10 in 3D, 6 in 2D (SS-Net)", gt=0),
        "xi": Arg(10.0, float, "VAT finite-difference step (SS-Net 10)", gt=0),
        "vat_iterations": Arg(1, int, "VAT power iterations (SS-Net 1)", ge=1),
        "contrast_weight": Arg(0.1, float, "weight of the class-separation terms inside the ramped sum (SS-Net 0.1)", ge=0),
        "memory_per_class": Arg(32, int, "prototype features kept per class (SS-Net 32)", ge=2),
        "feat_dim": Arg(32, int, "projection / prediction head width (SS-Net 32)", ge=1),
    }
    deviations = [
        "MONAI UNet (2D): features = input of its top block (half resolution), bilinearly up-sampled to the labels",
        "one selector pair per class of the data set (SS-Net's 2D UNet hard-codes 4)",
    ]

    def resolved(self, key: str) -> float:
        value = self.args[key]
        return _BY_DIM[key][self.ctx.protocol.ndim] if value == "auto" else float(value)

    def setup(self) -> None:
        self.student = self.ctx.build_net()
        with torch.no_grad():
            was = self.student.training
            self.student.eval()
            shape = (1, self.ctx.in_channels) + (self.student.size_divisor * 2,) * self.ctx.protocol.ndim
            dim = self.student.forward_heads(torch.zeros(shape, device=self.ctx.device)).features.shape[1]
            self.student.train(was)
        self.heads = ContrastHeads(dim, self.ctx.n_classes, self.args["feat_dim"]).to(self.ctx.device)

    def modules(self):
        return {"student": self.student, "heads": self.heads}

    def trainable(self):
        return list(self.student.parameters()) + list(self.heads.parameters())

    def epoch(self, iteration: int) -> int:
        per = self.args["iters_per_epoch"]
        if per == "auto":
            per = max(1.0, self.ctx.stage.total * self.resolved("rampup_span") / self.args["rampup_epochs"])
        return int(iteration // float(per))

    def consistency_weight(self, iteration: int) -> float:
        return self.resolved("consistency") * sigmoid_rampup(self.epoch(iteration), self.args["rampup_epochs"])

    def supervised(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.ctx.protocol.ndim == 2:
            return soft_dice_loss(probs, labels, smooth=1e-10, include_background=True)
        classes = range(1, probs.shape[1])
        return sum(binary_dice_loss(probs[:, c], labels == c) for c in classes) / len(classes)

    def vat_distance(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return soft_dice_between(p, q) if self.ctx.protocol.ndim == 2 else binary_dice_loss(p, q)

    def training_step(self, batch, iteration: int) -> StepOutput:
        n_l = batch.image_l.shape[0]
        images = batch.images
        out = self.student.forward_heads(images)
        probs = torch.softmax(out.logits, 1)
        features = out.features
        if features.shape[2:] != out.logits.shape[2:]:
            mode = "trilinear" if features.dim() == 5 else "bilinear"
            features = F.interpolate(features, size=out.logits.shape[2:], mode=mode, align_corners=False)
        features = features.movedim(1, -1)  # (B, ..., C)
        labels = batch.label_l.long()
        pred = probs.argmax(1)
        correct = (pred[:n_l] == labels) & (pred[:n_l] > 0)
        feat_l = features[:n_l]
        self.heads.eval()
        with torch.no_grad():
            projected = self.heads.projection(feat_l[correct])
        self.heads.train()
        memory = build_memory(self.heads, projected, labels[correct], self.args["memory_per_class"])
        dim = features.shape[-1]
        pred_l = self.heads.prediction(self.heads.projection(feat_l.reshape(-1, dim)))
        loss_cl_l = class_contrast(self.heads, pred_l, labels.reshape(-1), memory)
        pred_u = self.heads.prediction(self.heads.projection(features[n_l:].reshape(-1, dim)))
        loss_cl_u = class_contrast(self.heads, pred_u, pred[n_l:].reshape(-1), memory)
        loss_seg = self.supervised(probs[:n_l], labels)
        loss_vat = vat_loss(self.student, images, self.vat_distance, xi=self.args["xi"], eps=self.resolved("magnitude"),
                            iterations=self.args["vat_iterations"])
        weight = self.consistency_weight(iteration)
        loss = loss_seg + weight * (loss_vat + self.args["contrast_weight"] * (loss_cl_l + loss_cl_u))
        logs = {"loss_dice": float(loss_seg.detach()), "loss_vat": float(loss_vat.detach()),
                "loss_cl_l": float(loss_cl_l.detach()), "loss_cl_u": float(loss_cl_u.detach()), "w_cons": weight}
        return StepOutput(loss, logs)
