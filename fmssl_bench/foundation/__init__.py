"""Foundation-model ("generalist") layer: promptable SAM-family models behind one interface.

Typical use::

    fm = build_generalist("litemedsam")
    emb = fm.encode(image)                       # (C, H, W), any intensities
    prompts = prompts_from_probability(prob, box=True)
    prob_fm = fm.segment(emb, prompts)           # (H, W) foreground probabilities
"""

from .base import (
    Embedding,
    Generalist,
    GeneralistStats,
    Prompts,
    box_from_mask,
    normalise_intensities,
)
from .cache import EmbeddingCache
from .prompts import (
    mc_dropout_uncertainty,
    prompts_from_probability,
    uncertainty_entropy,
    volume_prompts,
)
from .registry import (
    GeneralistSpec,
    build_generalist,
    describe_generalists,
    file_sha256,
    generalist_names,
    get_spec,
)
from .sam import LITEMEDSAM_RECIPE, MEDSAM_RECIPE, SAM_RECIPE, SamGeneralist, SamInputRecipe
from .sam2 import Sam2Generalist, build_sam2_model

__all__ = [
    "LITEMEDSAM_RECIPE",
    "MEDSAM_RECIPE",
    "SAM_RECIPE",
    "Embedding",
    "EmbeddingCache",
    "Generalist",
    "GeneralistSpec",
    "GeneralistStats",
    "Prompts",
    "Sam2Generalist",
    "SamGeneralist",
    "SamInputRecipe",
    "box_from_mask",
    "build_generalist",
    "build_sam2_model",
    "describe_generalists",
    "file_sha256",
    "generalist_names",
    "get_spec",
    "mc_dropout_uncertainty",
    "normalise_intensities",
    "prompts_from_probability",
    "uncertainty_entropy",
    "volume_prompts",
]
