"""Uncertainty of a network's prediction: the one home of entropy maps and MC-dropout estimates.

UA-MT (yulequan/UA-MT ``train_LA_meanteacher_certainty_unlabel.py``) estimates the teacher's
uncertainty with T stochastic forward passes (dropout active, input noise
clamp(0.1 N(0,1), -0.2, 0.2)) and takes the entropy of the mean softmax; ACMT, UPS and the
pseudo-label methods reuse the same two pieces.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


def entropy_map(probs: torch.Tensor, normalise: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Per-voxel entropy ``-sum_k p_k log p_k`` of class probabilities ``(B, K, ...)`` -> ``(B, 1, ...)``.

    ``normalise`` divides by ``ln K`` so the map lies in [0, 1] whatever the number of classes
    (UA-MT's threshold 0.75..1 x ln 2 is on the unnormalised scale of a 2-class task).
    """
    ent = -(probs * torch.log(probs + eps)).sum(1, keepdim=True)
    return ent / math.log(probs.shape[1]) if normalise else ent


def gaussian_input_noise(images: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """UA-MT's input perturbation: ``images + clamp(std N(0,1), -clip, clip)``."""
    return images + torch.clamp(torch.randn_like(images) * std, -clip, clip)


def _mc_dropout_passes(net: nn.Module, images: torch.Tensor, passes: int,
                       perturb: Callable[[torch.Tensor], torch.Tensor], chunk: int) -> Iterator[torch.Tensor]:
    """Logits of ``passes`` stochastic forward passes, ``chunk`` at a time, shape ``(k, B, C, ...)``.

    The network is put in train mode for the passes (dropout active, as UA-MT's teacher, which
    is never switched to eval) and restored to its previous mode afterwards, also when the caller
    stops early. UA-MT stacks the T copies in batches of 2 x batch; ``chunk`` passes share one
    forward to bound memory the same way.
    """
    was_training = net.training
    net.train()
    try:
        done = 0
        while done < passes:
            k = min(chunk, passes - done)
            logits = net(torch.cat([perturb(images) for _ in range(k)]))
            yield logits.reshape(k, images.shape[0], *logits.shape[1:])
            done += k
    finally:
        net.train(was_training)


@torch.no_grad()
def mc_dropout_probs(net: nn.Module, images: torch.Tensor, passes: int = 8,
                     perturb: Callable[[torch.Tensor], torch.Tensor] = gaussian_input_noise,
                     chunk: int = 2) -> torch.Tensor:
    """Mean softmax of ``passes`` stochastic forward passes (dropout on, perturbed input)."""
    total = sum(torch.softmax(logits, 2).sum(0) for logits in _mc_dropout_passes(net, images, passes, perturb, chunk))
    return total / passes


@torch.no_grad()
def mc_dropout_moments(net: nn.Module, images: torch.Tensor, passes: int = 10,
                       temperatures: Sequence[float] = (1.0,),
                       perturb: Callable[[torch.Tensor], torch.Tensor] = gaussian_input_noise,
                       chunk: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per temperature, ``(mean, std)`` over ``passes`` stochastic passes of ``softmax(logits / T)``.

    UPS needs the spread of the passes, not only their mean (:func:`mc_dropout_probs`), and of
    two temperatures of the same passes. The std is ``torch.std``'s (unbiased), as UPS'. All
    passes' probabilities are kept (``passes`` x the batch's softmax size) so the std is exact.
    """
    if passes < 2:
        raise ValueError(f"the spread of MC-dropout passes needs at least 2 passes, got {passes}")
    per_temperature: list[list[torch.Tensor]] = [[] for _ in temperatures]
    for logits in _mc_dropout_passes(net, images, passes, perturb, chunk):
        for store, t in zip(per_temperature, temperatures):
            store.append(torch.softmax(logits / t, 2))
    out = []
    for store in per_temperature:
        std, mean = torch.std_mean(torch.cat(store), dim=0)
        out.append((mean, std))
    return out


def pyramid_rectified_consistency(probs: list[torch.Tensor], eps: float = 1e-8) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """URPC's uncertainty-rectified pyramid consistency of per-level softmax maps ``(B, K, ...)``.

    SSL4MIS ``train_uncertainty_rectified_pyramid_consistency_3D.py``: the mean prediction
    ``p_bar`` of all levels; per level the uncertainty ``v = sum_k p_bar log(p_bar / p)`` (the KL
    divergence of the level from the mean, ``KLDivLoss(log p, p_bar)`` summed over classes), the
    weight ``w = exp(-v)`` and the loss ``mean(w (p_bar - p)^2) / (mean(w) + eps) + mean(v)``;
    the result is the mean over levels. Gradients flow through ``p_bar`` too, as in SSL4MIS.
    Returns the loss and the per-level weights ``w`` ``(B, 1, ...)``.
    """
    mean = torch.stack(probs).mean(0)
    total, weights = 0.0, []
    for p in probs:
        variance = torch.nn.functional.kl_div(torch.log(p.clamp_min(1e-30)), mean, reduction="none").sum(1, keepdim=True)
        weight = torch.exp(-variance)
        total = total + (weight * (mean - p) ** 2).mean() / (weight.mean() + eps) + variance.mean()
        weights.append(weight)
    return total / len(probs), weights


@contextmanager
def dropout_only(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode except its dropout layers, which stay stochastic (MC-dropout inference).

    UA-MT's teacher runs its MC passes in train mode on training batches; for whole-volume
    inference (sliding windows of one or two patches) batch-norm must use its running statistics
    instead, so only the dropout layers are switched on. The previous modes are restored.
    """
    modes = {m: m.training for m in net.modules()}
    net.eval()
    for module in net.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    try:
        yield net
    finally:
        for module, mode in modes.items():
            module.training = mode
