"""Exponential moving average of a network's weights (the Mean Teacher's teacher)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` whose weights only change through :func:`ema_update`."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.detach_()
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float, step: int) -> None:
    """UA-MT's update: alpha_eff = min(1 - 1 / (step + 1), alpha); buffers (BN running
    statistics) are not averaged: the teacher keeps its own, updated by its own forward passes, as in UA-MT."""
    a = min(1.0 - 1.0 / (step + 1), alpha)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(a).add_(s.detach(), alpha=1.0 - a)
