"""DTC: dual-task consistency (Luo, Chen, Song & Wang, AAAI 2021), after HiLab-git/DTC ``train_la_dtc.py``.

One network, two task heads on the same last decoder features (``build_net(heads=("sdf",))``):
the segmentation logits and a ``tanh`` signed-distance regression. The SDF target of each labeled
patch is DTC's ``compute_sdf`` (:func:`signed_distance_target`): ``(d_out - min)/(max - min) -
(d_in - min)/(max - min)``, negative inside, positive outside, 0 on the inner boundary, in
[-1, 1]. The loss (``train_la_dtc.py``)::

    Dice(seg, y) + beta * MSE(sdf, SDF(y))              (labeled part; beta = 0.3)
    + w(t) * mean((sigmoid(-k * sdf) - p_seg)^2)        (all of the batch; k = 1500)

with ``w(t) = 1.0 * exp(-5 (1 - t/40)^2)``, ``t = iteration // 150`` in DTC (40 x 150 = its 6000
iterations, so the ramp spans the run; ``iters_per_epoch: auto`` keeps that: the stage length /
``rampup_epochs``). DTC computes a BCE term too but only logs it: the supervised loss is Dice
(squared sums, smooth 1e-5, the harness's ``soft_dice_loss``) plus the SDF term, as here. SGD
0.01, momentum 0.9, weight decay 1e-4, lr x0.1 every 2500 iterations, batch 4 with 2 labeled:
the protocol's ``train`` section (the LA protocol has these values).

Deviations (also in ``deviations``): DTC's binary network has one sigmoid channel; here the
segmentation is a K-class softmax and the SDF head has one channel per foreground class, the
Dice term averages the foreground classes and the consistency compares ``sigmoid(-k sdf_c)``
with the softmax probability of class c (for 2 classes these are DTC's formulas). The inner
boundary is computed with SciPy's grey erosion/dilation (skimage ``find_boundaries(mode='inner')``
without the skimage dependency). A patch that a class fills completely gets SDF -1 (DTC would
divide by zero); a patch without the class keeps 0, as in DTC. The DTC paper is 3D only; 2D
(MONAI UNet, whose SDF head is a second top up-sampling block) uses the same losses.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..api import Arg, StepOutput
from .losses import soft_dice_loss
from .mean_teacher import RampedConsistency, ramp_arguments
from .registry import register_method


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background neighbour (face connectivity; skimage ``find_boundaries(mode='inner')``)."""
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    m = mask.astype(np.uint8)
    return (ndimage.grey_dilation(m, footprint=footprint) != ndimage.grey_erosion(m, footprint=footprint)) & mask


def _minmax(d: np.ndarray) -> np.ndarray:
    span = d.max() - d.min()
    return (d - d.min()) / span if span > 0 else np.zeros_like(d)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """DTC's normalised signed distance map of one binary mask (see the module docstring)."""
    mask = mask.astype(bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    if mask.all():
        return -np.ones(mask.shape, dtype=np.float32)
    sdf = _minmax(ndimage.distance_transform_edt(~mask)) - _minmax(ndimage.distance_transform_edt(mask))
    sdf[inner_boundary(mask)] = 0
    return sdf.astype(np.float32)


def signed_distance_target(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(B, max(1, K-1), ...)``: one SDF per sample and foreground class of integer ``labels`` ``(B, ...)``."""
    classes = range(1, n_classes) if n_classes > 1 else [1]
    return np.stack([np.stack([signed_distance(lab == c) for c in classes]) for lab in labels])


@register_method
class DTC(RampedConsistency):
    name = "dtc"
    description = "DTC (Luo et al., AAAI 2021): dual-task network, SDF head + seg/SDF task consistency"
    paper_names = (("DTC", ""),)
    arguments = {
        **ramp_arguments(1.0, 40.0, "DTC"),
        "beta": Arg(0.3, float, "weight of the SDF regression loss (DTC 0.3)", ge=0),
        "k": Arg(1500.0, float, "sharpness of the SDF-to-mask transform sigmoid(-k sdf) (DTC 1500)", gt=0),
    }
    deviations = [
        "K-class softmax segmentation with one SDF channel per foreground class (DTC: one sigmoid channel); "
        "Dice over foreground classes, consistency per foreground class (DTC's formulas for 2 classes)",
        "inner boundary by SciPy grey erosion/dilation (= skimage find_boundaries mode='inner')",
        "a patch filled by a class gets SDF -1 (DTC divides by zero there)",
        "2D runs (not in the DTC paper) use the same losses on the MONAI UNet with a second top block as SDF head",
    ]

    def setup(self) -> None:
        self.student = self.ctx.build_net(heads=("sdf",))

    def training_step(self, batch, iteration: int) -> StepOutput:
        n_l = batch.image_l.shape[0]
        out = self.student.forward_heads(batch.images)
        probs = torch.softmax(out.logits, 1)
        n_classes = out.logits.shape[1]
        with torch.no_grad():
            target = signed_distance_target(batch.label_l.cpu().numpy(), n_classes)
            target = torch.from_numpy(target).to(out.sdf.device, out.sdf.dtype)
        loss_sdf = torch.mean((out.sdf[:n_l] - target) ** 2)
        loss_dice = soft_dice_loss(probs[:n_l], batch.label_l)
        foreground = probs[:, 1:] if n_classes > 1 else probs
        loss_cons = torch.mean((torch.sigmoid(-self.args["k"] * out.sdf) - foreground) ** 2)
        weight = self.consistency_weight(iteration)
        loss = loss_dice + self.args["beta"] * loss_sdf + weight * loss_cons
        logs = {"loss_dice": float(loss_dice.detach()), "loss_sdf": float(loss_sdf.detach()),
                "loss_cons": float(loss_cons.detach()), "w_cons": weight}
        return StepOutput(loss, logs)
