"""MagicNet: magic-cube partition and recovery (Chen et al., CVPR 2023), after DeepMed-Lab-ECNU/MagicNet.

Follows ``code/train_main_btcv.py`` (the later of the two public scripts; in ``train_main_mact.py``
the pseudo-label blending is unreachable: it needs the ramped weight to *exceed* its maximum).
A Mean Teacher (EMA 0.99, teacher input noise clamp(0.1 N, +-0.2)) whose student also learns:

* **cross-image partition and recovery**: the patch is cut into a grid of ``cube_size`` cubes;
  for every cube position the batch (labeled and unlabeled) is permuted, so each mixed image is
  a mosaic of cubes of all images at their own locations (:func:`partition`); the mixed images
  go through the network, their last decoder features are put back to their images
  (:func:`recover`, the exact inverse) and classified by the segmentation head ("unmixed").
* **magic-cube location reasoning**: every cube of every image of the batch is encoded on its
  own (one forward per image, its cubes as the batch); a classifier (Linear(bottleneck, 4096),
  BN, LeakyReLU(0.2), Linear(4096, n_cubes)) on the flattened bottleneck predicts each cube's
  location (NLL, weight 0.1).
* **within-image partition and recovery**: the decoder features of those cubes are assembled
  back into each image and classified: Dice against the labels (labeled part).
* **cube-wise pseudo-label blending**: from iteration ``blend_after`` (BTCV: 100) the teacher's
  logits on the unlabeled images are blended with the within-image (cube-wise) logits,
  ``(1 - w) teacher + w cubes`` with ``w`` the class frequency of the teacher's class (counts of
  the pseudo-labelled classes, refreshed every 20 iterations, ``^(1/T)`` with T = 1, normalised to
  sum 1 then divided by the maximum); the argmax is the pseudo-label.

Loss: ``(CE + Dice + Dice_unmixed + Dice_within) / 4`` (labeled) ``+ 0.1 L_loc + w(t) Dice(unmixed
unlabeled, pseudo-label)``; Dice is MagicNet's ``DiceLoss`` (all classes, squared sums, smooth
1e-10). ``w(t) = 0.1 exp(-5 (1 - t/200)^2)``, ``t = iteration // 350`` in the BTCV script
(200 x 350 = its 70000 iterations: the ramp spans the run, which ``iters_per_epoch: auto`` keeps).

Deviations (also in ``deviations``): the protocol's VNet (UA-MT: batch norm, dropout) instead of
MagicNet's VNet (instance norm, no dropout); patches need not be cubes nor multiples of the cube:
the grid is ``patch // cube_size`` per axis from the patch origin, voxels beyond it are not mixed
and not part of the within-image terms; the within-image logits of the unlabeled images are
reused (detached) for the blending instead of a second decoder pass (only the dropout mask
differs); MagicNet shuffles the cubes before the location classifier together with their
targets, which changes nothing and is left out; the class counts are kept as counts (the same
numbers) so that they checkpoint compactly. 3D only.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..api import Arg, StepOutput
from ..errors import ConfigError
from .losses import soft_dice_loss
from .mean_teacher import TeacherStudent
from .registry import register_method


def cube_grid(shape: tuple[int, ...], cube: int) -> tuple[int, ...]:
    """Cubes per axis of a patch of ``shape`` (from the origin; the remainder is left out)."""
    return tuple(int(s) // cube for s in shape)


def _voxel_index(perm: torch.Tensor, cube: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """``(B, *spatial)`` source image of every voxel: ``perm`` per cube, identity outside the grid."""
    b = perm.shape[0]
    index = torch.arange(b, device=perm.device).view(b, *([1] * len(spatial))).expand(b, *spatial).clone()
    inner = perm
    for axis in range(1, perm.dim()):
        inner = inner.repeat_interleave(cube, dim=axis)
    index[(slice(None),) + tuple(slice(0, n) for n in inner.shape[1:])] = inner
    return index


def partition(t: torch.Tensor, perm: torch.Tensor, cube: int) -> torch.Tensor:
    """Mix ``t`` ``(B, C, ...)`` across the batch cube by cube: cube ``q`` of image ``b`` comes from image ``perm[b, q]``."""
    index = _voxel_index(perm, cube, tuple(t.shape[2:]))
    return torch.gather(t, 0, index.unsqueeze(1).expand_as(t))


def recover(t: torch.Tensor, perm: torch.Tensor, cube: int) -> torch.Tensor:
    """The inverse of :func:`partition` with the same ``perm`` (MagicNet's ``cube_rec_ind``)."""
    return partition(t, torch.argsort(perm, dim=0), cube)


def to_cubes(t: torch.Tensor, cube: int) -> torch.Tensor:
    """``(C, X, Y, Z)`` -> ``(n, C, cube, cube, cube)``; cube (x, y, z) at location ``x + gx y + gx gy z``."""
    c = t.shape[0]
    gx, gy, gz = cube_grid(tuple(t.shape[1:]), cube)
    t = t[:, : gx * cube, : gy * cube, : gz * cube]
    t = t.reshape(c, gx, cube, gy, cube, gz, cube).permute(5, 3, 1, 0, 2, 4, 6)
    return t.reshape(gx * gy * gz, c, cube, cube, cube)


def from_cubes(cubes: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The inverse of :func:`to_cubes`: ``(n, C, c, c, c)`` -> ``(C, gx c, gy c, gz c)``."""
    gx, gy, gz = grid
    n, c, k = cubes.shape[0], cubes.shape[1], cubes.shape[2]
    t = cubes.reshape(gz, gy, gx, c, k, k, k).permute(3, 2, 4, 1, 5, 0, 6)
    return t.reshape(c, gx * k, gy * k, gz * k)


class LocationClassifier(nn.Module):
    """MagicNet's ``FcLayer``: flattened cube bottleneck -> cube location."""

    def __init__(self, in_features: int, n_locations: int, hidden: int = 4096) -> None:
        super().__init__()
        self.fc_layer = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden),
                                      nn.LeakyReLU(negative_slope=0.2, inplace=True), nn.Linear(hidden, n_locations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_layer(x.flatten(1))


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return soft_dice_loss(torch.softmax(logits, 1), target, smooth=1e-10, include_background=True)


@register_method
class MagicNet(TeacherStudent):
    name = "magicnet"
    description = "MagicNet (Chen et al., CVPR 2023): magic-cube partition/recovery, cube location reasoning, blended pseudo-labels"
    paper_names = (("MagicNet", ""),)
    dims = (3,)
    arguments = {
        **TeacherStudent.arguments,
        "consistency": dataclasses.replace(TeacherStudent.arguments["consistency"],
                                           help="weight of the unmixed pseudo-label Dice once ramped up (MagicNet BTCV 0.1)"),
        "rampup_epochs": dataclasses.replace(TeacherStudent.arguments["rampup_epochs"], default=200.0,
                                             help="length of the sigmoid ramp-up in 'epochs' (MagicNet BTCV 200)"),
        "iters_per_epoch": dataclasses.replace(TeacherStudent.arguments["iters_per_epoch"],
                                               help="iterations per ramp 'epoch'; auto = stage length / rampup_epochs (MagicNet BTCV 350)"),
        "cube_size": Arg(32, int, "edge of a magic cube in voxels, a multiple of 16 (MagicNet 32)", ge=16),
        "loc_weight": Arg(0.1, float, "weight of the cube-location loss (MagicNet 0.1)", ge=0),
        "temperature": Arg(1.0, float, "temperature T of the class distribution in the blending (MagicNet T_dist 1)", gt=0),
        "blend_after": Arg(100, int, "blend pseudo-labels after this many iterations (MagicNet BTCV 100)", ge=0),
        "dist_every": Arg(20, int, "refresh the class distribution every N iterations (MagicNet 20)", ge=1),
    }
    deviations = [
        "protocol's VNet (batch norm, dropout) instead of MagicNet's (instance norm, no dropout)",
        "cube grid = patch // cube_size per axis from the origin; voxels beyond it are neither mixed nor in the within-image terms",
        "within-image logits of the unlabeled images reused (detached) for the blending instead of a second decoder pass",
    ]

    @classmethod
    def check(cls, args, protocol) -> None:
        super().check(args, protocol)  # 3D only: the magic-cube partition of volumes
        if protocol.net.name != "vnet":
            raise ConfigError(f"{protocol.where}: net.name {protocol.net.name!r}: method 'magicnet' "
                              "needs 'vnet'")

    def setup(self) -> None:
        cube = self.args["cube_size"]
        super().setup()
        if cube % self.student.size_divisor:
            raise ConfigError(f"--method-arg cube_size={cube}: magicnet needs a multiple of {self.student.size_divisor} "
                              "(the VNet's 4 down-samplings)")
        patch = tuple(self.ctx.stage_config("train").patch)
        self.grid = cube_grid(patch, cube)
        if math.prod(self.grid) < 2:
            raise ConfigError(f"magicnet: patch {list(patch)} holds {math.prod(self.grid)} cube of {cube}; "
                              "lower --method-arg cube_size (at least 2 cubes are needed)")
        side = cube // self.student.size_divisor
        self.locator = LocationClassifier(self.student.bottleneck_channels * side ** 3, math.prod(self.grid)).to(self.ctx.device)
        self.class_counts = torch.zeros(self.ctx.n_classes, dtype=torch.long)
        self.pending = torch.zeros(self.ctx.n_classes, dtype=torch.long)
        self.pending_batches = 0

    def modules(self):
        return {"student": self.student, "teacher": self.teacher, "locator": self.locator}

    def trainable(self):
        return list(self.student.parameters()) + list(self.locator.parameters())

    def state(self):
        return {"class_counts": self.class_counts.clone(), "pending": self.pending.clone(),
                "pending_batches": self.pending_batches}

    def load_state(self, state) -> None:
        self.class_counts = state["class_counts"].clone()
        self.pending = state["pending"].clone()
        self.pending_batches = int(state["pending_batches"])

    def class_weights(self) -> torch.Tensor:
        dist = self.class_counts.double() ** (1.0 / self.args["temperature"])
        dist = dist / dist.sum()
        return (dist / dist.max()).float()

    def training_step(self, batch, iteration: int) -> StepOutput:
        cube, grid = self.args["cube_size"], self.grid
        if cube_grid(tuple(batch.images.shape[2:]), cube) != grid:
            raise ConfigError(f"magicnet: batch patches {list(batch.images.shape[2:])} do not give the {grid} cube grid "
                              "its location classifier was built for")
        images, labels = batch.images, batch.label_l.long()
        n_l, n = batch.image_l.shape[0], batch.images.shape[0]
        region = (Ellipsis,) + tuple(slice(0, g * cube) for g in grid)
        logits = self.student(images)

        # cross-image partition and recovery
        perm = torch.argsort(torch.rand(n, *grid, device=images.device), dim=0)
        mixed_features = self.student.forward_heads(partition(images, perm, cube)).features
        unmixed = self.student.segment_head(recover(mixed_features, perm, cube))

        teacher_logits = self.teacher_logits(batch.image_u)
        teacher_class = teacher_logits.argmax(1)

        # location reasoning and within-image partition and recovery, one image at a time
        locations = torch.arange(math.prod(grid), device=images.device)
        loss_loc, within = 0.0, []
        for i in range(n):
            out = self.student.forward_heads(to_cubes(images[i], cube))
            loss_loc = loss_loc + F.nll_loss(F.log_softmax(self.locator(out.bottleneck), 1), locations)
            within.append(from_cubes(out.features, grid))
        loss_loc = loss_loc / n
        within_logits = self.student.segment_head(torch.stack(within))

        terms = [F.cross_entropy(logits[:n_l], labels), _dice(logits[:n_l], labels), _dice(unmixed[:n_l], labels),
                 _dice(within_logits[:n_l], labels[region])]
        loss_sup = sum(terms) / len(terms)

        # cube-wise pseudo-label blending
        with torch.no_grad():
            blended = iteration > self.args["blend_after"] and self.class_counts.sum() > 0
            if blended:
                w = self.class_weights().to(teacher_logits.device)[teacher_class].unsqueeze(1)
                mix = teacher_logits.clone()
                mix[region] = (1 - w[region]) * teacher_logits[region] + w[region] * within_logits[n_l:].detach()
                pseudo = mix.argmax(1)
            else:
                pseudo = teacher_class
            self.pending += torch.bincount(pseudo.flatten().cpu(), minlength=self.ctx.n_classes)[: self.ctx.n_classes]
            self.pending_batches += 1
            if iteration % self.args["dist_every"] == 0 and self.pending_batches:
                self.class_counts, self.pending, self.pending_batches = self.pending, torch.zeros_like(self.pending), 0

        loss_cons = _dice(unmixed[n_l:], pseudo)
        weight = self.consistency_weight(iteration)
        loss = loss_sup + self.args["loc_weight"] * loss_loc + weight * loss_cons
        logs = {"loss_sup": float(loss_sup.detach()), "loss_loc": float(loss_loc.detach()),
                "loss_cons": float(loss_cons.detach()), "w_cons": weight, "blended": float(blended)}
        return StepOutput(loss, logs)
