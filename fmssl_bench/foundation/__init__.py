"""Foundation-model ("generalist") layer: promptable SAM-family models behind one interface.

Typical use::

    fm = build_generalist("litemedsam")
    emb = fm.encode(image)                       # (C, H, W), any intensities
    prompts = prompts_from_probability(prob, box=True)
    prob_fm = fm.segment(emb, prompts)           # (H, W) foreground probabilities

A run that encodes its whole unlabeled set passes ``cache=run_embedding_cache(run_dir / "fm_cache")``;
a method that fine-tunes the generalist trains ``make_trainable(fm)`` and pseudo-labels with its
``as_generalist()`` view, while ``fm`` itself stays frozen.
"""

from .base import (
    Embedding,
    Generalist,
    GeneralistStats,
    Prompts,
    box_from_mask,
    normalise_intensities,
    tensors_sha256,
)
from .cache import EmbeddingCache, run_embedding_cache
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
from .sam import (
    LITEMEDSAM_RECIPE,
    MEDSAM_RECIPE,
    SAM_RECIPE,
    SamGeneralist,
    SamInputRecipe,
    sam_decode_logits,
    sam_preprocess,
)
from .sam2 import Sam2Generalist, build_sam2_model
from .trainable import LoRAQKV, TrainableGeneralist, TrainedSamGeneralist, inject_lora, make_trainable

__all__ = [
    "LITEMEDSAM_RECIPE",
    "MEDSAM_RECIPE",
    "SAM_RECIPE",
    "Embedding",
    "EmbeddingCache",
    "Generalist",
    "GeneralistSpec",
    "GeneralistStats",
    "LoRAQKV",
    "Prompts",
    "Sam2Generalist",
    "SamGeneralist",
    "SamInputRecipe",
    "TrainableGeneralist",
    "TrainedSamGeneralist",
    "box_from_mask",
    "build_generalist",
    "build_sam2_model",
    "describe_generalists",
    "file_sha256",
    "generalist_names",
    "get_spec",
    "inject_lora",
    "make_trainable",
    "mc_dropout_uncertainty",
    "normalise_intensities",
    "prompts_from_probability",
    "run_embedding_cache",
    "sam_decode_logits",
    "sam_preprocess",
    "tensors_sha256",
    "uncertainty_entropy",
    "volume_prompts",
]
