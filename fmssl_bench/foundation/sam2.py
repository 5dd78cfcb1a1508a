"""SAM 2 / SAM 2.1 generalists: the image predictor for 2D and the video predictor over slices for 3D.

One model instance serves both uses: it is built as sam2's ``SAM2VideoPredictor`` (a ``SAM2Base``
subclass), whose image path (``forward_image`` + prompt encoder + mask decoder) is what
``SAM2ImagePredictor`` runs. Input recipe (``SAM2Transforms``): resize to an ``image_size``
square (aspect not kept), ImageNet mean/std on [0, 1]; prompt coordinates are scaled per axis;
a box is two corner points with labels 2 and 3, placed before the clicks.

3D (``segment_volume`` with ``propagate=True``) follows sam2's video recipe, as MedSAM2 does:
slices are frames, every prompted slice is a conditioning frame, and the memory-attention
tracker propagates forward and backward from the first prompted slice over the whole volume
(or ``max_distance`` slices beyond the prompted range).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Embedding, Generalist, Prompts, check_slice_keys, stacked_points
from .cache import EmbeddingCache
from .sam import best_of_multimask, mask_prompt_logits

SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
BOX_CORNER_LABELS = (2, 3)
OBJECT_ID = 1


def has_sam2_extension() -> bool:
    """sam2's CUDA extension (hole filling); without it sam2 skips that step with a warning per frame."""
    return importlib.util.find_spec("sam2._C") is not None


def build_sam2_model(
    config: str, device: str | torch.device = "cpu", hydra_overrides: Sequence[str] = ()
) -> nn.Module:
    """A randomly initialised sam2 video predictor from one of the package's config files."""
    from sam2.build_sam import build_sam2_video_predictor

    model = build_sam2_video_predictor(
        config, ckpt_path=None, device=str(device), mode="eval", hydra_overrides_extra=list(hydra_overrides)
    )
    if not has_sam2_extension():
        model.fill_hole_area = 0  # sam2 would skip it anyway, warning once per frame
    return model


def sam2_point_prompts(
    prompts: Sequence[Prompts], rows: int, cols: int, image_size: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """sam2's point inputs of same-layout prompts: ``(B, N, 2)`` coordinates on the model's square
    input grid (scaled per axis, as ``SAM2Transforms``) and ``(B, N)`` labels, the box as two
    corner points (labels 2, 3) before the clicks; None when the prompts have neither."""
    first = prompts[0]
    coords: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    if first.box is not None:
        coords.append(np.stack([p.box.reshape(2, 2) for p in prompts]))
        labels.append(np.tile(np.array(BOX_CORNER_LABELS), (len(prompts), 1)))
    if first.points is not None:
        point_coords, point_labels = stacked_points(prompts)
        coords.append(point_coords)
        labels.append(point_labels)
    if not coords:
        return None
    scale = np.array([image_size / cols, image_size / rows], dtype=np.float32)
    return np.concatenate(coords, axis=1) * scale, np.concatenate(labels, axis=1)


@contextmanager
def _frames_as_video(frames: torch.Tensor, height: int, width: int) -> Iterator[None]:
    """``init_state`` only reads JPEG folders or MP4 files; hand it in-memory slices instead."""
    import sam2.sam2_video_predictor as video_module

    original = video_module.load_video_frames
    video_module.load_video_frames = lambda **_: (frames, height, width)
    try:
        yield
    finally:
        video_module.load_video_frames = original


@contextmanager
def _timed_calls(module: nn.Module, record) -> Iterator[None]:
    """Report each forward pass of ``module`` (seconds) to ``record`` while the context is open."""
    starts: list[float] = []
    handles = [
        module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter())),
        module.register_forward_hook(lambda *_: record(time.perf_counter() - starts.pop())),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Sam2Generalist(Generalist):
    """A sam2 model (``SAM2Base`` / ``SAM2VideoPredictor``) behind the generalist interface."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
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
        self.image_size = int(model.image_size)
        self._mean = torch.tensor(SAM2_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(SAM2_STD, device=self.device).view(1, 3, 1, 1)

    @property
    def model(self) -> nn.Module:
        return self._model

    def input_signature(self) -> str:
        return f"sam2;img={self.image_size}"

    # ----------------------------------------------------------------- 2D
    def _model_input(self, image01: np.ndarray, device: torch.device) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image01)).to(device)[None]
        x = F.interpolate(
            x, (self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
        )
        return (x - self._mean.to(device)) / self._std.to(device)

    def _encode(self, image01: np.ndarray) -> Embedding:
        model = self._model
        backbone_out = model.forward_image(self._model_input(image01, self.device))
        _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        maps = [
            f.permute(1, 2, 0).reshape(1, -1, *size) for f, size in zip(vision_feats, feat_sizes, strict=True)
        ]
        original = (int(image01.shape[1]), int(image01.shape[2]))
        features = {"image_embed": maps[-1], "high_res_feats": maps[:-1]}
        return Embedding(features, original, (self.image_size, self.image_size))

    def _decode(self, embedding: Embedding, prompts: list[Prompts], multimask: bool) -> torch.Tensor:
        model, first = self._model, prompts[0]
        points = None
        found = sam2_point_prompts(prompts, *embedding.original_size, self.image_size)
        if found is not None:
            points = (
                torch.as_tensor(found[0], device=self.device),
                torch.as_tensor(found[1], dtype=torch.int32, device=self.device),
            )
        masks = None
        if first.mask is not None:
            low_res_size = model.sam_prompt_encoder.mask_input_size
            masks = mask_prompt_logits(prompts, embedding, self.image_size, low_res_size, self.device)
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=masks)
        low_res, scores, _, _ = model.sam_mask_decoder(
            image_embeddings=embedding.features["image_embed"],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=len(prompts) > 1,
            high_res_features=embedding.features["high_res_feats"]
            if model.use_high_res_features_in_sam
            else None,
        )
        if multimask:
            low_res = best_of_multimask(low_res, scores)
        logits = F.interpolate(low_res, embedding.original_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[:, 0]

    # ----------------------------------------------------------------- 3D
    def segment_volume(
        self,
        volume: np.ndarray,
        prompts: dict[int, Prompts],
        axis: int = -1,
        propagate: bool = True,
        *,
        max_distance: int | None = None,
    ) -> np.ndarray:
        """As :meth:`Generalist.segment_volume`, but propagation uses sam2's memory-based video tracker.

        The tracker runs forward from the first prompted slice past the last one and backward
        from the first one, at most ``max_distance`` slices beyond the prompted range. With
        ``propagate=False`` only the prompted slices are segmented (image predictor). A slice
        whose prompts hold only a mask is added with ``add_new_mask``; otherwise its points and
        box are used and a mask prompt is ignored (sam2 takes one or the other).
        """
        if not propagate:
            return super().segment_volume(volume, prompts, axis=axis, propagate=False)
        volume01, slice_axis = self._volume_slices(volume, axis)
        n, rows, cols = volume01.shape[1:]
        check_slice_keys(prompts, n)
        out = np.zeros((n, rows, cols), dtype=np.float32)
        active = {int(i): p for i, p in prompts.items() if not p.is_empty()}
        if active:
            self._track(volume01, active, out, n if max_distance is None else max_distance)
        return np.moveaxis(out, 0, slice_axis)

    def _track(self, volume01: np.ndarray, prompts: dict[int, Prompts], out: np.ndarray, limit: int) -> None:
        model, stats = self._model, self.stats
        frame_device = torch.device(
            "cpu"
        )  # like offload_video_to_cpu: frames move to the model one at a time
        with torch.inference_mode():
            frames = torch.cat([self._model_input(volume01[:, i], frame_device) for i in range(out.shape[0])])

        def encoder_done(seconds: float) -> None:
            stats.encoder_calls += 1
            stats.encode_seconds += seconds

        def decoder_done(seconds: float) -> None:
            stats.decoder_calls += 1
            stats.decode_seconds += seconds

        first, last = min(prompts), max(prompts)
        runs = [(False, last - first + limit), (True, limit)]
        with (
            _timed_calls(model.image_encoder, encoder_done),
            _timed_calls(model.sam_mask_decoder, decoder_done),
        ):
            with _frames_as_video(frames, out.shape[1], out.shape[2]):
                state = model.init_state(video_path="<in-memory slices>", offload_video_to_cpu=True)
            for index, prompt in sorted(prompts.items()):
                self._add_prompt(state, index, prompt)
            for reverse, frames_to_track in runs:
                tracked = model.propagate_in_video(
                    state, start_frame_idx=first, max_frame_num_to_track=frames_to_track, reverse=reverse
                )
                for index, _, logits in tracked:
                    out[index] = torch.sigmoid(logits[0, 0].float()).cpu().numpy()
        self._update_peak_memory()

    def _add_prompt(self, state: dict, index: int, prompt: Prompts) -> None:
        if prompt.points is None and prompt.box is None:
            self._model.add_new_mask(state, index, OBJECT_ID, torch.as_tensor(prompt.mask > 0.5))
            return
        self._model.add_new_points_or_box(
            state,
            index,
            OBJECT_ID,
            points=prompt.points,
            labels=None if prompt.points is None else prompt.point_labels.astype(np.int32),
            box=prompt.box,
        )
