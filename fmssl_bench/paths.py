"""Where data, weights and results live (environment variables with sensible defaults).

``FMSSL_DATA``     root holding one folder per data set (``LA``, ``Kvasir-SEG``, ...)
``FMSSL_WEIGHTS``  root holding foundation-model checkpoints (``mobile_sam/mobile_sam.pt``, ...)
``FMSSL_RESULTS``  where run records go (default ``./runs``)
``FMSSL_FM_CACHE`` a foundation-model embedding cache shared by runs (default: none, each run
                   keeps its own under ``<record>/fm_cache`` and deletes it when it finishes)

A shared embedding cache is safe because its keys are content addresses (image bytes, model
weights sha256, input recipe): an entry is what the encoder computes for that key, and a run
hands out the stored (fp16-rounded) value on a miss too, so numbers never depend on whether an
earlier run filled it. A grid of FM-assisted runs over one data set then encodes each image once
per generalist instead of once per record (Kvasir-SEG: ~850 images x ~1.3 s per generalist).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "FMSSL_DATA"
WEIGHTS_ENV = "FMSSL_WEIGHTS"
RESULTS_ENV = "FMSSL_RESULTS"
FM_CACHE_ENV = "FMSSL_FM_CACHE"


def data_root() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def weights_root() -> Path | None:
    value = os.environ.get(WEIGHTS_ENV)
    return Path(value) if value else None


def results_root() -> Path:
    return Path(os.environ.get(RESULTS_ENV, "runs"))


def shared_fm_cache() -> Path | None:
    """The embedding cache shared by runs (``$FMSSL_FM_CACHE``), or None."""
    value = os.environ.get(FM_CACHE_ENV)
    return Path(value) if value else None
