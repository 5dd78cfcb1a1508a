"""Seed 000's semantic-aware memory bank (SA-MB, Sec. 2.3, Eq. 5) on sam2's real ``SAM2Base``.

SAM2 writes one memory per tracked object and frame with its ``MemoryEncoder``
(``mask_downsampler``: Conv on the mask, ``pix_feat_proj``: Conv on the image features,
``fuser``: CxBlocks) and each object's memory attention reads its own last ``num_maskmem - 1``
frames plus its prompted (conditioning) frames. SA-MB divides the memories into semantic groups:

    F_bone = CxBlock(Conv(I_seg,bone) + Conv(F_I))
    F_cart = CxBlock(Conv(dil(I_seg,bone) & dil(I_seg,cart) | I_seg,cart) + Conv(F_I))

Here that is :class:`SemanticSam2`: a copy of a :class:`~.sam2.Sam2Generalist`'s model with one
memory-encoder branch per group (``bone``, ``cart``), each a copy of SAM2's own pretrained
``memory_encoder`` (so a user checkpoint starts exactly from SAM2's memories), driven by sam2's own
``_track_step`` (image features -> memory attention over the bank -> prompt encoder + mask
decoder), the loop of ``SAM2VideoPredictor`` for one object, with the memory written by the
object's group branch instead of ``SAM2Base._encode_new_memory``.

Choices the paper leaves open (also in ``SAMB_CHOICES``, recorded in the run's provenance):

- Group of an object: its prompt kind (seed 000: bones get boxes, cartilage gets points), so
  ``box`` -> ``bone``, ``points`` -> ``cart`` (:data:`GROUP_OF_KIND`).
- Memories stay per object, as in SAM2 (the bank is ``group -> objects -> frames``): an object's
  memory attention reads only memories of its own group, namely its own. Sharing one memory across
  the objects of a group would make every femur object also track the tibia (both "bone"), mixing
  the labels the pseudo-labels keep apart.
- I_seg,bone of a frame (the input of the cartilage mask) is the union of every bone object's
  prediction of that frame: the maximum of their mask logits (the union in logit space, sigmoid
  being monotonic), kept at SAM2's low resolution and up-sampled bilinearly like SAM2's own
  high-resolution masks.
- Order: a volume's bone objects are all tracked (every frame) before any cartilage object, so
  the bone segmentation of every frame exists when a cartilage memory is encoded
  (:class:`VolumeSession` refuses a bone object after a cartilage one).
- Dilation: grey dilation (max-pooling) with a square of side ``2 * dilation + 1`` pixels of SAM2's
  input grid (``image_size``), ``&`` = minimum, ``|`` = maximum, on mask probabilities: exactly the
  set formula for binary masks, differentiable for fine-tuning. Eq. 5 acts on the probabilities,
  before SAM2's ``sigmoid_scale/bias_for_mem_enc`` and its no-object embedding.
- FIFO: SAM2's own (``_prepare_memory_conditioned_features``: the conditioning frames plus the last
  ``num_maskmem - 1`` frames in the tracking direction), per object and group.
- Fine-tuning trains the two branches, the memory attention and the mask decoder (not its
  ``conv_s0/conv_s1`` projections of the image features); the image encoder and the prompt encoder
  stay frozen, so a clip's image features are computed once without gradients. The paper only
  says "SAM2 with SA-MB is fine tuned".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Prompts, check_slice_keys
from .sam2 import Sam2Generalist, sam2_point_prompts

GROUPS = ("bone", "cart")
GROUP_OF_KIND = {"box": "bone", "points": "cart"}
NO_MASK_LOGIT = -1024.0
"""Bone logit of a frame no bone object reached (sam2's NO_OBJ_SCORE): sigmoid 0, no bone there."""

SAMB_CHOICES = [
    "SA-MB groups: box-prompted labels are 'bone', point-prompted labels 'cart' (prompt_kinds)",
    "SA-MB memories stay per object as in SAM2 (group -> objects -> frames); an object reads only its own group's "
    "(its own) memories; the bone branch and the cartilage branch are copies of SAM2's pretrained memory encoder",
    "SA-MB I_seg,bone of a frame = union (max logit) of all bone objects' predictions of that frame; every bone "
    "object of a volume is tracked before any cartilage object",
    "SA-MB dilation: max-pooling with a (2 samb_dilation + 1)^2 square on SAM2's input grid, on probabilities "
    "(min = intersection, max = union), before SAM2's sigmoid scale/bias for the memory encoder",
    "SA-MB FIFO: SAM2's own window (conditioning frames + last num_maskmem - 1 frames), per object",
    "SA-MB fine-tuning trains the two memory branches, memory attention and mask decoder (image and prompt encoders "
    "and the decoder's conv_s0/conv_s1 frozen), on clips of samb_clip slices of the labeled volumes, one clip per "
    "iteration, one object per label present on the clip's first slice, prompted there only (box or points), "
    "loss 0.5 (CE + Dice) per object over the clip",
]


def cartilage_memory_mask(bone: torch.Tensor, cart: torch.Tensor, radius: int) -> torch.Tensor:
    """Eq. 5's cartilage mask input ``dil(bone) & dil(cart) | cart`` on ``(B, 1, H, W)`` probabilities.

    The contact band of cartilage and bone (cartilage is a thin sheet on the bone surface) is added
    to the cartilage mask, so the cartilage memory also says where the bone it sits on is.
    """
    if radius <= 0:
        return torch.maximum(torch.minimum(bone, cart), cart)

    def dilate(m: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius)

    return torch.maximum(torch.minimum(dilate(bone), dilate(cart)), cart)


@dataclass
class FrameFeatures:
    """sam2's prepared backbone features of one frame (``_prepare_backbone_features``)."""

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]


@dataclass
class SemanticMemoryBank:
    """The SA-MB: group -> tracked objects, each with sam2's ``output_dict`` (its memories per frame).

    ``_prepare_memory_conditioned_features`` reads one object's dict, so an object only ever sees
    memories of its own group; the FIFO window is sam2's (``num_maskmem``).
    """

    num_maskmem: int
    groups: dict[str, list[dict[str, dict[int, dict[str, Any]]]]] = field(
        default_factory=lambda: {g: [] for g in GROUPS})

    def new_object(self, group: str) -> dict[str, dict[int, dict[str, Any]]]:
        if group not in self.groups:
            raise ValueError(f"memory group {group!r}; expected one of {', '.join(GROUPS)}")
        output: dict[str, dict[int, dict[str, Any]]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self.groups[group].append(output)
        return output

    def counts(self) -> dict[str, int]:
        """Memories written per group (frames x objects)."""
        return {g: sum(len(o["cond_frame_outputs"]) + len(o["non_cond_frame_outputs"]) for o in objs)
                for g, objs in self.groups.items()}


class SemanticSam2(nn.Module):
    """A fine-tunable copy of a sam2 generalist's model with SA-MB (see the module docstring).

    The source generalist is never modified: its image encoder is shared (frozen, eval mode) and
    everything else is deep-copied. :attr:`trained` holds what the fine-tuning changes (a stage
    checkpoints exactly that).
    """

    def __init__(self, generalist: Sam2Generalist, dilation: int = 8) -> None:
        super().__init__()
        if not isinstance(generalist, Sam2Generalist):
            raise TypeError(f"SA-MB needs a Sam2Generalist, got {type(generalist).__name__}")
        source = generalist.model
        self.generalist = generalist  # its input recipe (resize, ImageNet normalisation)
        self.dilation = int(dilation)
        self.image_size = int(source.image_size)
        self.sam = copy.deepcopy(source, {id(source.image_encoder): source.image_encoder})
        self.sam.requires_grad_(False)
        self.branches = nn.ModuleDict({g: copy.deepcopy(source.memory_encoder) for g in GROUPS})
        self.trained = nn.ModuleDict({"branches": self.branches, "memory_attention": self.sam.memory_attention,
                                      "mask_decoder": self.sam.sam_mask_decoder})
        self.trained.requires_grad_(True)
        for name in ("conv_s0", "conv_s1"):  # applied to the image features, computed once per frame without gradients
            projection = getattr(self.sam.sam_mask_decoder, name, None)
            if isinstance(projection, nn.Module):
                projection.requires_grad_(False)
        self.to(generalist.device)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.generalist.device

    def train(self, mode: bool = True) -> SemanticSam2:
        """The frozen image encoder stays in eval mode; sam2's own ``training`` flag follows ``mode``."""
        super().train(mode)
        self.sam.image_encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trained.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- frames and prompts
    @torch.no_grad()
    def encode_frames(self, slices01: np.ndarray) -> list[FrameFeatures]:
        """``(3, n, rows, cols)`` slices in [0, 1] -> sam2 backbone features per slice (no gradients)."""
        out = []
        for i in range(slices01.shape[1]):
            x = self.generalist._model_input(slices01[:, i], self.device)
            _, feats, pos, sizes = self.sam._prepare_backbone_features(self.sam.forward_image(x))
            out.append(FrameFeatures(feats, pos, sizes))
        self.generalist.stats.encoder_calls += len(out)
        return out

    def point_inputs(self, prompt: Prompts, rows: int, cols: int) -> dict[str, torch.Tensor]:
        """sam2's ``point_inputs`` for one prompt: box corners (labels 2, 3) first, then the clicks, on sam2's grid."""
        found = sam2_point_prompts([prompt], rows, cols, self.image_size)
        if found is None:
            raise ValueError("SA-MB tracking takes box or point prompts (a mask-only prompt has neither)")
        xy, labels = found
        return {"point_coords": torch.as_tensor(xy, dtype=torch.float32, device=self.device),
                "point_labels": torch.as_tensor(labels, dtype=torch.int32, device=self.device)}

    # ----------------------------------------------------------------- tracking one object
    def track(self, frames: list[FrameFeatures], prompts: dict[int, dict[str, torch.Tensor]], group: str,
              bank: SemanticMemoryBank, bone_logits: torch.Tensor | None = None,
              max_distance: int | None = None) -> dict[int, torch.Tensor]:
        """Track one object of ``group`` from its prompted frames; frame -> low-res mask logits ``(1, 1, h, w)``.

        sam2's video recipe for one object: every prompted frame is a conditioning frame decoded
        from its prompt alone, then the tracker runs forward from the first prompted frame past the
        last one and backward from the first one, at most ``max_distance`` frames beyond the prompted
        range. ``bone_logits`` ``(n, 1, h, w)``: the union of the bone objects per frame, needed
        by a ``cart`` object's memories (None: no bone anywhere).
        """
        if not prompts:
            raise ValueError("an object needs at least one prompted frame")
        output = bank.new_object(group)
        n = len(frames)

        def step(f: int, cond: bool, points: dict[str, torch.Tensor] | None, reverse: bool) -> dict[str, Any]:
            return self._step(frames[f], f, cond, points, output, n, reverse, group, bone_logits)

        for f in sorted(prompts):
            output["cond_frame_outputs"][f] = step(f, True, prompts[f], False)
        first, last = min(prompts), max(prompts)
        limit = n if max_distance is None else max_distance
        runs = ((False, range(first + 1, min(n, last + limit + 1))), (True, range(first - 1, max(-1, first - limit - 1), -1)))
        for reverse, order in runs:
            for f in order:
                if f not in output["cond_frame_outputs"]:
                    output["non_cond_frame_outputs"][f] = step(f, False, None, reverse)
        return {f: o["pred_masks"] for part in output.values() for f, o in part.items()}

    def _step(self, feats: FrameFeatures, frame: int, is_cond: bool, points: dict[str, torch.Tensor] | None,
              output: dict, n: int, reverse: bool, group: str, bone_logits: torch.Tensor | None) -> dict[str, Any]:
        """sam2's ``track_step`` with the memory written by the group's branch (Eq. 5)."""
        sam = self.sam
        _, sam_outputs, _, _ = sam._track_step(frame, is_cond, feats.vision_feats, feats.vision_pos, feats.feat_sizes,
                                               points, None, output, n, reverse, None)
        _, _, _, low_res, high_res, obj_ptr, score = sam_outputs
        # as SAM2Base._encode_new_memory: binarised masks from clicks at inference, else probabilities
        if sam.binarize_mask_from_pts_for_mem_enc and points is not None and not self.training:
            mask = (high_res > 0).to(high_res.dtype)
        else:
            mask = torch.sigmoid(high_res)
        if group == "cart":
            bone = torch.full_like(high_res, 0.0) if bone_logits is None else torch.sigmoid(
                F.interpolate(bone_logits[frame:frame + 1].to(high_res), high_res.shape[-2:], mode="bilinear",
                              align_corners=False))
            mask = cartilage_memory_mask(bone, mask, self.dilation)
        memory, pos = self.encode_memory(group, feats, mask, score)
        return {"maskmem_features": memory, "maskmem_pos_enc": pos, "pred_masks": low_res, "obj_ptr": obj_ptr,
                "object_score_logits": score}

    def encode_memory(self, group: str, feats: FrameFeatures, mask: torch.Tensor,
                      object_score_logits: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``SAM2Base._encode_new_memory`` after its mask step, with the ``group`` branch as the memory encoder."""
        sam = self.sam
        B, C = feats.vision_feats[-1].size(1), sam.hidden_dim
        H, W = feats.feat_sizes[-1]
        pix_feat = feats.vision_feats[-1].permute(1, 2, 0).reshape(B, C, H, W)
        mask = mask * sam.sigmoid_scale_for_mem_enc + sam.sigmoid_bias_for_mem_enc
        out = self.branches[group](pix_feat, mask, skip_mask_sigmoid=True)
        memory = out["vision_features"]
        if sam.no_obj_embed_spatial is not None:
            absent = 1 - (object_score_logits > 0).to(memory.dtype)
            memory = memory + absent[..., None, None] * sam.no_obj_embed_spatial[..., None, None].expand(*memory.shape)
        return memory, out["vision_pos_enc"]

    def volume(self, volume: np.ndarray, axis: int = -1) -> VolumeSession:
        """A tracking session over one volume (features computed once, shared by its objects)."""
        return VolumeSession(self, volume, axis)


class VolumeSession:
    """All objects of one volume under SA-MB: bone objects first, then cartilage objects.

    Each :meth:`segment` tracks one object and returns its foreground probabilities at the
    volume's resolution; bone results accumulate into the per-frame bone union the cartilage
    memories read. :attr:`bank` holds every object's memories by group.

    The slices' sam2 features are computed once and kept on the model's device for the session
    (all objects read them; about 16 MB per slice at SAM2's 1024 px input), instead of once per
    object as the plain video predictor does. A session is inference: the model is put in eval mode.
    """

    def __init__(self, owner: SemanticSam2, volume: np.ndarray, axis: int = -1) -> None:
        self.owner = owner.eval()
        slices01, self.slice_axis = Sam2Generalist._volume_slices(volume, axis)
        self.n, self.rows, self.cols = slices01.shape[1:]
        self.frames = owner.encode_frames(slices01)
        self.bank = SemanticMemoryBank(int(owner.sam.num_maskmem))
        self.bone_logits: torch.Tensor | None = None
        self.cartilage_started = False

    def segment(self, prompts: dict[int, Prompts], kind: str, max_distance: int | None = None) -> np.ndarray:
        group = GROUP_OF_KIND[kind]
        if group == "bone" and self.cartilage_started:
            raise ValueError("SA-MB: every bone object of a volume must be tracked before its cartilage objects "
                             "(their memories read the bone segmentation of the same frame)")
        check_slice_keys(prompts, self.n)
        active = {int(i): p for i, p in prompts.items() if not p.is_empty()}
        out = np.zeros((self.n, self.rows, self.cols), np.float32)
        if not active:
            return np.moveaxis(out, 0, self.slice_axis)
        self.cartilage_started |= group == "cart"
        owner = self.owner
        with torch.no_grad():
            points = {f: owner.point_inputs(p, self.rows, self.cols) for f, p in active.items()}
            logits = owner.track(self.frames, points, group, self.bank, self.bone_logits, max_distance)
            if group == "bone":
                if self.bone_logits is None:
                    low = next(iter(logits.values()))
                    self.bone_logits = torch.full((self.n, *low.shape[1:]), NO_MASK_LOGIT, device=low.device)
                for f, value in logits.items():
                    self.bone_logits[f] = torch.maximum(self.bone_logits[f], value[0])
            for f, value in logits.items():
                up = F.interpolate(value.float(), (self.rows, self.cols), mode="bilinear", align_corners=False)
                out[f] = torch.sigmoid(up[0, 0]).cpu().numpy()
        return np.moveaxis(out, 0, self.slice_axis)


__all__ = [
    "GROUPS",
    "GROUP_OF_KIND",
    "SAMB_CHOICES",
    "FrameFeatures",
    "SemanticMemoryBank",
    "SemanticSam2",
    "VolumeSession",
    "cartilage_memory_mask",
]
