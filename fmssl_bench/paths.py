"""Where data, weights and results live (environment variables with sensible defaults).

``FMSSL_DATA``     root holding one folder per data set (``LA``, ``Kvasir-SEG``, ...)
``FMSSL_WEIGHTS``  root holding foundation-model checkpoints (``mobile_sam/mobile_sam.pt``, ...)
``FMSSL_RESULTS``  where run records go (default ``./runs``)
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "FMSSL_DATA"
WEIGHTS_ENV = "FMSSL_WEIGHTS"
RESULTS_ENV = "FMSSL_RESULTS"


def data_root() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def weights_root() -> Path | None:
    value = os.environ.get(WEIGHTS_ENV)
    return Path(value) if value else None


def results_root() -> Path:
    return Path(os.environ.get(RESULTS_ENV, "runs"))
