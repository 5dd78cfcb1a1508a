"""Feature perturbations (CCT's auxiliary decoders) and virtual adversarial training (SS-Net).

Feature perturbations follow SSL4MIS ``networks/unet.py`` (``UNet_CCT``: aux decoder 1 gets
``FeatureNoise``, 2 ``Dropout``, 3 ``FeatureDropout``), which is Ouali et al.'s CCT reduced to
the three perturbations used for medical images:

* :func:`feature_noise`: ``x + x * n`` with ``n ~ U(-0.3, 0.3)`` of shape ``x.shape[1:]``, one
  draw shared by the whole batch (as ``Uniform.sample(x.shape[1:])`` in SSL4MIS).
* :func:`feature_dropout_random`: element-wise dropout p = 0.3, active in train and eval mode
  (``torch.nn.functional.dropout`` with its default ``training=True``, as SSL4MIS calls it).
* :func:`feature_dropout`: drops the most activated region: the channel-mean attention map of
  each sample is thresholded at ``u * max`` with one ``u ~ U(0.7, 0.9)`` per call, and positions
  at or above the threshold are zeroed.

Random numbers come from torch (the loop seeds it per iteration), not NumPy as in SSL4MIS.

:func:`vat_loss` is SS-Net's ``VAT2d``/``VAT3d`` (ycwu1997/SS-Net ``utils/losses.py``): a random
unit direction ``d ~ U(-0.5, 0.5)`` (L2-normalised per sample), ``ip`` power iterations of
``d <- normalise(grad_d D(p(x + xi d), p(x)))``, and the loss ``D(p(x + eps d), p(x))`` with the
target ``p(x)`` from a separate no-grad forward pass; batch-norm running statistics are frozen
for the perturbed passes (SS-Net's ``_disable_tracking_bn_stats``). The adversarial direction is
taken with ``torch.autograd.grad`` on ``d`` only, so the network's gradients are never touched
(SS-Net back-propagates and then zeroes them: the same result).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def feature_noise(x: torch.Tensor, uniform_range: float = 0.3) -> torch.Tensor:
    """``x + x * n``, ``n ~ U(-r, r)`` of shape ``x.shape[1:]`` shared across the batch."""
    noise = (torch.rand(x.shape[1:], device=x.device, dtype=x.dtype) * 2 - 1) * uniform_range
    return x + x * noise.unsqueeze(0)


def feature_dropout_random(x: torch.Tensor, p: float = 0.3) -> torch.Tensor:
    """Element-wise dropout, always active (SSL4MIS ``Dropout``)."""
    return F.dropout(x, p, training=True)


def feature_dropout(x: torch.Tensor, low: float = 0.7, high: float = 0.9) -> torch.Tensor:
    """Zero the positions whose channel-mean activation is >= ``u * max`` (u ~ U(low, high))."""
    attention = x.mean(dim=1, keepdim=True)
    peak = attention.flatten(1).max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    u = low + (high - low) * torch.rand((), device=x.device, dtype=x.dtype)
    return x * (attention < peak * u).to(x.dtype)


PERTURBATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "noise": feature_noise,
    "dropout": feature_dropout_random,
    "feature_dropout": feature_dropout,
}
"""name -> perturbation of one feature map (what ``build_net(..., aux_perturbations=...)`` accepts)."""


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Batch norm uses batch statistics but does not update its running ones inside the block."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def l2_normalise(d: torch.Tensor) -> torch.Tensor:
    """Each sample scaled to unit L2 norm (SS-Net ``_l2_normalize``: ``d / (||d|| + 1e-8)``)."""
    norm = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
    return d / (norm + 1e-8)


def vat_loss(net: nn.Module, x: torch.Tensor, distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             xi: float = 10.0, eps: float = 6.0, iterations: int = 1) -> torch.Tensor:
    """SS-Net's local distributional smoothness loss (see the module docstring).

    ``distance(probs_perturbed, probs_clean)`` compares softmax maps; ``net(x)`` returns logits.
    """
    with torch.no_grad():
        target = torch.softmax(net(x), dim=1)
    d = l2_normalise(torch.rand_like(x) - 0.5)
    with frozen_batchnorm_stats(net):
        for _ in range(iterations):
            d.requires_grad_(True)
            adv = distance(torch.softmax(net(x + xi * d), dim=1), target)
            (grad,) = torch.autograd.grad(adv, d)
            d = l2_normalise(grad.detach())
        return distance(torch.softmax(net(x + eps * d), dim=1), target)
