"""Losses shared by all methods (UA-MT definitions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, include_background: bool = False) -> torch.Tensor:
    """Mean over classes of ``1 - Dice`` between softmax ``probs`` (B, K, ...) and integer ``target`` (B, ...).

    UA-MT computes the Dice loss on the foreground channel only for the binary LA task;
    averaging over the foreground classes generalises that to multi-class data sets.
    """
    n_classes = probs.shape[1]
    onehot = F.one_hot(target.long(), n_classes).movedim(-1, 1).to(probs.dtype)
    start = 0 if include_background or n_classes == 1 else 1
    p, t = probs[:, start:], onehot[:, start:]
    p, t = p.movedim(1, 0).flatten(1), t.movedim(1, 0).flatten(1)
    intersection = (p * t).sum(1)
    dice = (2 * intersection + smooth) / (p.pow(2).sum(1) + t.pow(2).sum(1) + smooth)
    return (1 - dice).mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """UA-MT's supervised loss: 0.5 * (cross-entropy + soft Dice)."""
    ce = F.cross_entropy(logits, target.long())
    dice = soft_dice_loss(torch.softmax(logits, dim=1), target)
    return 0.5 * (ce + dice)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the two softmax maps (UA-MT ``softmax_mse_loss``, averaged)."""
    return F.mse_loss(torch.softmax(student_logits, 1), torch.softmax(teacher_logits, 1))


def soft_target_ce_dice(logits: torch.Tensor, target_probs: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 * (CE + Dice) against soft/probabilistic targets, optionally weighted per voxel.

    Used for pseudo-label supervision (e.g. a generalist's masks), where ``weight`` (B, ...)
    carries a per-voxel confidence.
    """
    probs = torch.softmax(logits, 1)
    logp = torch.log_softmax(logits, 1)
    ce_map = -(target_probs * logp).sum(1)
    if weight is None:
        weight = torch.ones_like(ce_map)
    ce = (weight * ce_map).sum() / weight.sum().clamp_min(1e-6)
    w = weight.unsqueeze(1)
    p, t = (probs * w)[:, 1:], (target_probs * w)[:, 1:]
    inter = (p * t).flatten(2).sum(-1).sum(0)
    denom = (p.pow(2)).flatten(2).sum(-1).sum(0) + (t.pow(2)).flatten(2).sum(-1).sum(0)
    dice = 1 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()
    return 0.5 * (ce + dice)


def binary_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - (2 sum(p t) + eps) / (sum p + sum t + eps)`` over the whole tensors, sums not squared.

    SS-Net's ``Binary_dice_loss`` (ycwu1997/SS-Net ``utils/losses.py``): its 3D supervised loss on
    the foreground probability and its 3D VAT distance between two softmax maps.
    """
    target = target.to(probs.dtype)
    return 1 - (2 * (probs * target).sum() + eps) / (probs.sum() + target.sum() + eps)


def soft_dice_between(probs: torch.Tensor, target_probs: torch.Tensor, smooth: float = 1e-10) -> torch.Tensor:
    """Mean over all classes (background included) of ``1 - Dice`` between two probability maps.

    Squared denominators, sums over batch and space: SS-Net's ``softDiceLoss`` (its 2D VAT distance).
    """
    p = probs.movedim(1, 0).flatten(1)
    t = target_probs.movedim(1, 0).flatten(1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.pow(2).sum(1) + t.pow(2).sum(1) + smooth)
    return (1 - dice).mean()


def ce_dice_all_classes(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 * (CE + Dice over all classes): SSL4MIS' ``(ce_loss + dice_loss) / 2`` per output."""
    return 0.5 * (F.cross_entropy(logits, target.long())
                  + soft_dice_loss(torch.softmax(logits, 1), target, include_background=True))
