"""Ramp functions for loss weights (Laine & Aila; as used by UA-MT, SemiSAM)."""

from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = current / length clipped to [0, 1]."""
    if length == 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def sigmoid_rampdown(current: float, length: float) -> float:
    """exp(-5 t) with t = current / length clipped to [0, 1] (SemiSAM's weight for SAM supervision)."""
    if length == 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * t))


def linear_rampup(current: float, length: float) -> float:
    if length == 0:
        return 1.0
    return float(min(max(current, 0.0), length) / length)


def cosine_rampdown(current: float, length: float) -> float:
    current = min(max(current, 0.0), length)
    return float(0.5 * (math.cos(math.pi * current / length) + 1))
