"""Selection rules for pseudo-labels and certain voxels, shared by UA-MT, self-training and UPS.

Pure tensor functions (no networks, no state), so each rule is checked directly on hand-made
probability and uncertainty maps:

- :func:`uncertainty_threshold` / :func:`certain_mask`: UA-MT's ramped entropy threshold and the
  voxels whose teacher uncertainty lies below it (yulequan/UA-MT
  ``train_LA_meanteacher_certainty_unlabel.py``);
- :func:`confident_pseudo_labels`: hard argmax labels and the voxels whose top probability
  reaches a confidence threshold (FixMatch / pseudo-labelling);
- :func:`ups_selection`: UPS' positive and negative pseudo-labels from confidence and MC-dropout
  standard deviation (nayeemrizve/ups ``utils/pseudo_labeling_util.py``), per voxel;
- :func:`masked_cross_entropy` and :func:`negative_learning_loss`: the losses on the selections.

Probability maps are ``(B, K, ...)``; masks and labels are ``(B, ...)`` (one value per voxel)
unless stated otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .ramps import sigmoid_rampup


# -- UA-MT: certain voxels ------------------------------------------------------------------

def uncertainty_threshold(iteration: int, total: int, n_classes: int = 2) -> float:
    """UA-MT's threshold ``(0.75 + 0.25 * sigmoid_rampup(iteration, total)) * ln K``.

    UA-MT (2 classes) multiplies by ``ln 2``, the largest entropy of a 2-class distribution, so
    the threshold rises from 75 % to 100 % of the maximum uncertainty over the run. For K classes
    ``ln K`` keeps that meaning (SSL4MIS' 4-class 2D script keeps ``ln 2``; see ua_mt.py).
    """
    if n_classes < 2:
        raise ValueError(f"uncertainty threshold needs at least 2 classes, got {n_classes}")
    return (0.75 + 0.25 * sigmoid_rampup(iteration, total)) * math.log(n_classes)


def certain_mask(uncertainty: torch.Tensor, threshold: float) -> torch.Tensor:
    """``1.0`` where ``uncertainty < threshold`` (UA-MT's strict comparison), else ``0.0``; same shape."""
    return (uncertainty < threshold).to(uncertainty.dtype)


# -- confidence-thresholded hard pseudo-labels ----------------------------------------------

def confident_pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, mask)``: argmax class per voxel and ``max_k p_k >= threshold`` (bool), both ``(B, ...)``.

    ``>=`` as in FixMatch (``max_probs.ge(threshold)``) and UPS' positive rule.
    """
    confidence, labels = probs.max(1)
    return labels, confidence >= threshold


# -- UPS: positive and negative selection ---------------------------------------------------

@dataclass
class UPSSelection:
    """UPS' pseudo-labels of one batch: ``labels`` (argmax), ``positive`` ``(B, ...)``, ``negative`` ``(B, K, ...)``."""

    labels: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


def ups_selection(probs: torch.Tensor, std: torch.Tensor, probs_nl: torch.Tensor, std_nl: torch.Tensor,
                  tau_p: float = 0.7, kappa_p: float = 0.05, tau_n: float = 0.05,
                  kappa_n: float = 0.005) -> UPSSelection:
    """UPS' selection, applied to every voxel as UPS applies it to every image.

    ``probs``/``std``: mean and standard deviation over the MC-dropout passes of the softmax;
    ``probs_nl``/``std_nl``: the same of the temperature-scaled softmax used for negatives
    (UPS ``temp_nl``). As in UPS' ``pseudo_labeling``:

    - positive where ``max_k probs >= tau_p`` and the std of the argmax class ``< kappa_p``;
    - negative for class c where ``probs_nl_c < tau_n`` and ``std_nl_c < kappa_n``, never for
      the argmax class, and only on voxels without a positive label (UPS trains a sample either
      positively or negatively, never both).

    The strict ``<`` on the uncertainties and ``tau_n`` and the ``>=`` on ``tau_p`` are UPS' code.
    """
    confidence, labels = probs.max(1)
    label_std = std.gather(1, labels.unsqueeze(1)).squeeze(1)
    positive = (confidence >= tau_p) & (label_std < kappa_p)
    is_label = F.one_hot(labels, probs.shape[1]).movedim(-1, 1).bool()
    negative = (probs_nl < tau_n) & (std_nl < kappa_n) & ~is_label & ~positive.unsqueeze(1)
    return UPSSelection(labels, positive, negative)


# -- losses on selections -------------------------------------------------------------------

def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                         normalise: Literal["all", "selected"] = "all") -> torch.Tensor:
    """Cross-entropy of ``logits`` against hard ``labels`` on the voxels of ``mask``.

    ``normalise="all"`` divides by every voxel (FixMatch's ``(CE * mask).mean()``: few selected
    voxels give a small loss, so the term grows as the teacher becomes confident);
    ``"selected"`` divides by the selected voxels (UPS' ``cross_entropy`` over the selected
    samples). No selected voxel gives 0 (still part of the graph).
    """
    ce = F.cross_entropy(logits, labels.long(), reduction="none")
    m = mask.to(ce.dtype)
    denom = torch.tensor(float(ce.numel()), dtype=ce.dtype, device=ce.device) if normalise == "all" else m.sum()
    return (ce * m).sum() / denom.clamp_min(1.0)


def negative_learning_loss(logits: torch.Tensor, negative: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """UPS' negative learning: ``-log(1 - p_c)`` on the negative classes ``negative`` ``(B, K, ...)``.

    Per voxel the sum over its negative classes divided by their number (+1e-7), averaged over the
    voxels with at least one negative class (UPS ``train_regular``; ``1 - p`` clamped to
    ``[1e-7, 1]``). No negative label gives 0.
    """
    probs = torch.softmax(logits, 1)
    neg = negative.to(probs.dtype)
    per_class = -torch.log(torch.clamp(1.0 - probs, eps, 1.0)) * neg
    count = neg.sum(1)
    per_voxel = per_class.sum(1) / (count + 1e-7)
    has = (count > 0).to(probs.dtype)
    return (per_voxel * has).sum() / has.sum().clamp_min(1.0)
