"""IFDL: iterative foundation-dedicated learning (seed 000): a UNet and SAM2 teach each other in rounds.

Stages of the shared loop and per-round artifacts, each resumable (a finished stage is skipped and
its network reloaded; an artifact made before a kill is reloaded, not recomputed):

``pretrain``
    The dedicated model (the protocol's network, MC dropout on) trained on the labeled cases only
    (Fig. 1a); configuration ``stages.pretrain`` over ``train``.
round r = 1..K (``rounds``, paper 4: "convergent after four iterations", l.109)
    1. ``artifacts/round{r}/confidence``: N MC-dropout passes of the current network over every
       unlabeled volume (sliding windows of the protocol's inference grid, dropout layers active,
       batch-norm in eval) -> Eq. 1 variance -> the per-label confidence maps C_{r,l} (the history,
       uint8-quantised) and the key frames of Eq. 2 (:mod:`.ifdl_uam`).
    2. ``artifacts/round{r}/pseudo_labels``: accumulated confidence C_bar_r of rounds 1..r (Eq. 3,
       alpha 0.5) -> per-label mask (Eq. 4) -> per 3D component a box (bones) or positive/negative
       points (cartilage) on each key frame it crosses -> the generalist propagates each object
       through the volume -> per-label maximum over objects -> label map. Scored by the runner as
       ``round{r}`` (and the UNet's own MC-mean argmax as ``unet_round{r}``, for comparison).
    3. stage ``round{r}``: the network continues training on labeled + pseudo-labelled cases
       (one pool, uniform sampling, 0.5 (CE + Dice)); configuration ``stages.round{r}``, else
       ``stages.round``, else ``train``.
The network after the last round is the test-time model (l.94).

Generalists: ``litemedsam`` (default; bundled weights, runs on a CPU) and ``mobilesam`` propagate
slice to slice (the MedSAM recipe of :meth:`Generalist.segment_volume`: the box of the previous
slice's mask, from each key frame outward, at most ``max_distance`` slices); ``sam2_hiera_*``
propagate with sam2's video predictor (slices as frames, its memory attention) from a user
checkpoint.

Choices the paper leaves open (also in ``deviations``, recorded with every run):
- N = ``mc_passes`` = 8 (UA-MT's T); the dropout is the protocol network's (VNet: Dropout3d p 0.5
  at the bottleneck and before the head; MONAI UNet: p 0.1); 3D network (the protocol's: VNet for
  the LA protocols, a 3D UNet with ``net.name: unet3d``), no input noise in the MC passes.
- C = 1 - U with U not normalised (normalising changes no key frame and left no mask: see
  :mod:`.ifdl_uam`); Eq. 2 sums the class-mean confidence; Eq. 4 thresholds the accumulated
  *label* confidence mu_l (1 - U_l) (a literal 1 - U is >= 0.75 everywhere).
- Which labels are "bones" (boxes) and which "cartilage" (points): ``prompt_kinds``, by default
  read from the data set's class names (``*cartilage*`` -> points, anything else -> box).
- "Prompts for every connective area": connected components in 3D (one tracked object each), those
  under ``min_component`` (1 %) of their label's largest left out (a VNet after a smoke protocol's
  24 iterations gave 1627 components on an LA volume, 1600 under 50 voxels: 316 would have been
  prompted and propagated, almost all speckle); an
  object whose key-frame cross-section has several 2D pieces gets one box around them all, or one
  positive click per piece; negatives are ``n_neg`` random clicks near, not on, the object.
- Re-training continues from the current weights each round (the paper does not say whether the
  UNet restarts); pseudo-labelled cases weigh as labeled ones; stage lengths come from the
  protocol (paper: 100 epochs per round, batch 4, Adam 1e-4), as do the pre-training's.
- A label with no prompted object in a case says nothing about that label there: the voxels the
  network predicts as that label (MC-mean argmax) and the generalist left as background are marked
  unknown (255: skipped by the re-training loss and by the runner's scoring) instead of teaching
  "no such label" (measured on the synthetic knees: with the tibia unprompted, its pseudo-label
  Dice was 0 and the re-trained network's tibia fell from 0.65 to 0.15). A case with no prompted
  object at all is left out of that round's re-training.
- Voxels of a label where two objects overlap take the larger probability; a voxel is foreground
  when its best label's probability exceeds 0.5.
``memory_bank=semantic`` (seed 000's SA-MB, Sec. 2.3, Eq. 5; needs ``generalist=sam2_hiera_*``):
``samb_finetune``
    Once, after ``pretrain``: a copy of the SAM2 generalist with one memory-encoder branch per
    semantic group (bone, cartilage; copies of SAM2's pretrained memory encoder) is fine-tuned on
    clips of ``samb_clip`` consecutive slices of the labeled volumes (l.109: "the training data
    are the same as used in the pre-training of UNet"): one object per label present on the clip's
    first slice, prompted there only (bones a box, cartilage points), propagated through the clip
    with memory as sam2 trains, loss 0.5 (CE + Dice) of every object over the clip. Length
    ``samb_epochs`` (paper 40) x labeled cases iterations of one clip, unless
    ``stages.samb_finetune.iterations`` says otherwise; optimiser from ``stages.samb_finetune``, by
    default the paper's AdamW lr 5e-5 (constant, weight decay 0.01: not stated). The trained
    tensors are the artifact ``artifacts/samb_finetune/weights.pt`` (reloaded on resume).
    Each round's propagation then tracks every bone object of a volume, then every cartilage
    object, with SA-MB memories (:mod:`fmssl_bench.foundation.sam2_memory` states its open choices:
    per-object memories in groups, the bone union of a frame, the dilation, SAM2's FIFO).
``memory_bank=plain`` (default): the generalist is used frozen and each object is tracked by sam2's
own memory bank (or slice-to-slice box propagation for SAM-family models, which have no memory
attention).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..api import Arg, Batch, Method, StepOutput
from ..benchmark.protocol import TrainConfig
from ..benchmark.views import progress_line
from ..benchmark.views import LabeledView
from ..errors import ConfigError
from ..foundation.base import normalise_intensities
from ..foundation.sam2_memory import GROUP_OF_KIND, SAMB_CHOICES, SemanticMemoryBank, SemanticSam2
from .ifdl_uam import (
    accumulated_confidence,
    fixed_key_frames,
    frame_confidence,
    fuse_label_probabilities,
    key_frames,
    kinds_from_class_names,
    label_confidence,
    label_masks,
    object_prompts,
    parse_prompt_kinds,
    pass_moments,
    slice_prompt,
)
from .losses import soft_target_ce_dice, supervised_loss
from .registry import register_method
from .uncertainty import dropout_only

SLICE_AXIS = -1
"""Slices (frames) along the last spatial axis, the LA/UA-MT slice axis (as the other FM methods)."""
UNKNOWN = 255
"""Pseudo-label value of voxels nobody answered for (the runner's scorer and the re-training skip them)."""
QUANT = 255.0
"""Confidence maps are stored as uint8 (1/255 steps): a round's history of a full LA set stays small."""

SA_MB_NEEDS_SAM2 = (
    "--method-arg memory_bank=semantic: the semantic-aware memory bank of seed 000 (Eq. 5) adds semantic branches to "
    "SAM2's memory encoder and groups SAM2's memories by label; generalist={name} has no memory bank (SAM-family "
    "models propagate slice to slice). Use --method-arg generalist=sam2_hiera_t/s/b+/l with "
    "--method-arg fm_checkpoint=<a SAM2.1 checkpoint> (or $FMSSL_WEIGHTS/sam2/), or memory_bank=plain")
SAMB_STAGE = "samb_finetune"
SAMB_PAPER_STAGE = dict(optimizer="adamw", lr=5e-5, weight_decay=0.01, schedule="constant", batch_size=1,
                        labeled_bs=1, augment=())
"""Seed 000 l.109: AdamW, lr 5e-5 (weight decay and schedule not stated: AdamW's usual 0.01, constant); one clip
per iteration. Used where the protocol has no ``stages.samb_finetune``."""


def propagate_objects(fm: Any, image: np.ndarray, masks: np.ndarray, frames: Sequence[int], kinds: Sequence[str],
                      n_neg: int, rng: np.random.Generator, max_distance: int | None,
                      objects: dict[str, int] | None = None, prompts_given: dict[str, int] | None = None,
                      min_fraction: float = 0.0, label_objects: list[int] | None = None,
                      memories: dict[str, int] | None = None) -> np.ndarray:
    """Per-label foreground probabilities ``(K - 1, *spatial)`` of one volume from its UAM masks.

    Each 3D component of each label's mask (``masks``: ``(K - 1, *spatial)``) is prompted on the
    key ``frames`` it crosses (``kinds[l]``: box or points) and propagated through the volume by
    the generalist ``fm`` (``segment_volume``: slice-to-slice boxes, or sam2's video predictor);
    a label's map is the maximum over its objects. ``objects`` / ``prompts_given`` count per kind,
    ``label_objects`` per label; components under ``min_fraction`` of a label's largest get no prompt.

    With ``fm`` a :class:`SemanticSam2` (SA-MB) the volume is one session: the box (bone) labels'
    objects are tracked first, so the cartilage memories can read the bone segmentation of each
    frame; ``memories`` counts the memories written per group.
    """
    probs = np.zeros(masks.shape, np.float32)
    volume01 = normalise_intensities(image)  # once per volume: segment_volume keeps [0, 1] RGB as it is
    session = fm.volume(volume01, SLICE_AXIS) if isinstance(fm, SemanticSam2) else None
    order = sorted(range(len(kinds)), key=lambda l: GROUP_OF_KIND[kinds[l]] != "bone") if session else range(len(kinds))
    for label in order:
        kind = kinds[label]
        for prompts in object_prompts(masks[label], frames, kind, SLICE_AXIS, n_neg, rng, min_fraction):
            if objects is not None:
                objects[kind] += 1
            if label_objects is not None:
                label_objects[label] += 1
            if prompts_given is not None:
                prompts_given[kind] += len(prompts)
            found = (session.segment(prompts, kind, max_distance) if session is not None else
                     fm.segment_volume(volume01, prompts, axis=SLICE_AXIS, max_distance=max_distance))
            probs[label] = np.maximum(probs[label], found)
    if session is not None and memories is not None:
        for group, n in session.bank.counts().items():
            memories[group] = memories.get(group, 0) + n
    return probs


class ClipBatches:
    """SA-MB fine-tuning batches: one clip of ``frames`` consecutive slices of a labeled volume per iteration.

    The case is drawn uniformly; the clip starts on a slice with foreground (its first slice holds
    the prompts) when there is one. Every draw derives from ``(key, iteration)``, so a resumed stage
    sees the clips an uninterrupted one would.
    """

    def __init__(self, view: LabeledView, frames: int) -> None:
        self.view, self.frames = view, frames

    def __call__(self, iteration: int, key: Sequence[int]) -> Batch:
        rng = np.random.default_rng([*key, iteration])
        k = int(rng.integers(len(self.view)))
        image, label = self.view.images[k], self.view.labels[k]
        n = label.shape[SLICE_AXIS]
        length = min(self.frames, n)
        starts = np.arange(n - length + 1)
        with_fg = [s for s in starts if np.take(label, s, axis=SLICE_AXIS).any()]
        start = int(rng.choice(with_fg if with_fg else starts))
        clip = slice(start, start + length)
        return Batch(torch.from_numpy(np.ascontiguousarray(image[..., clip]))[None],
                     torch.from_numpy(np.ascontiguousarray(label[..., clip]).astype(np.int64))[None], None,
                     [self.view.ids[k]], [])


@register_method
class IFDL(Method):
    name = "ifdl"
    description = ("IFDL (seed 000): UNet + SAM2 rounds; MC-dropout uncertainty picks key frames and prompts "
                   "(accumulated confidence), the generalist propagates pseudo-labels, the UNet re-trains")
    dims = (3,)
    paper_names = (("Ours", ""),)  # seed 000 Table 1 prints IFDL as "Ours" (per structure: bone / cart)
    arguments = {
        "rounds": Arg(4, int, "iterations of [MC inference -> key frames/prompts -> propagation -> re-training] "
                      "(paper 4)", ge=1),
        "generalist": Arg("litemedsam", str, "propagating generalist: litemedsam/mobilesam (slice-to-slice boxes) or "
                          "sam2_hiera_* (video predictor; paper: SAM2)"),
        "fm_checkpoint": Arg(None, str | None, "generalist checkpoint (default: bundled or $FMSSL_WEIGHTS)"),
        "uam": Arg(True, bool, "uncertainty-aware key frames and accumulated-confidence prompts; false: every "
                   "M-th slice and the current round's confidence only (ablation, l.134)"),
        "mc_passes": Arg(8, int, "N stochastic passes of Eq. 1 (not stated; UA-MT's 8)", ge=2),
        "block": Arg(3, int, "M: one key frame per block of M slices (paper 3)", ge=1),
        "alpha": Arg(0.5, float, "history decay of Eq. 3 (paper 0.5)", gt=0, lt=1),
        "threshold": Arg(0.5, float, "mask threshold of Eq. 4 on the accumulated confidence (paper 0.5)", gt=0, lt=1),
        "prompt_kinds": Arg("auto", str, "per foreground label, comma-separated: box (bones) or points (cartilage); "
                            "one value applies to every label; auto: points for classes named *cartilage*, else box"),
        "n_neg": Arg(1, int, "negative clicks per point-prompted object and key frame", ge=0),
        "min_component": Arg(0.01, float, "components smaller than this fraction of their label's largest get no "
                             "prompt (0: every connected area, the paper's text; speckle of an under-trained network "
                             "otherwise makes hundreds of tiny objects)", ge=0, le=1),
        "max_distance": Arg(3, int, "slices a propagation walks beyond a key frame (0: to the volume's end)", ge=0),
        "pl_cases": Arg(0, int, "unlabeled cases pseudo-labelled per round, a fixed seeded subset (0: all, the paper; "
                        "smoke protocols thin it)", ge=0),
        "memory_bank": Arg("plain", Literal["plain", "semantic"], "plain: the generalist's own propagation; "
                           "semantic: seed 000's SA-MB (Eq. 5; needs generalist=sam2_hiera_*), fine-tuned once in "
                           "stage samb_finetune"),
        "samb_dilation": Arg(8, int, "SA-MB: dilation radius of Eq. 5 in pixels of SAM2's input grid (image_size; "
                             "not stated)", ge=0),
        "samb_epochs": Arg(40, int, "SA-MB fine-tuning epochs (paper 40); an epoch is one clip per labeled case, "
                           "unless stages.samb_finetune.iterations is set", ge=1),
        "samb_clip": Arg(8, int, "SA-MB fine-tuning clip length in slices (not stated; sam2's training clips "
                         "have 8 frames)", ge=1),
    }
    deviations = [
        "memory_bank=plain (default): the generalist is frozen and objects are propagated by its own mechanism; "
        "memory_bank=semantic: the SA-MB of Eq. 5 fine-tuned once (stage samb_finetune), see the SA-MB entries",
        "SAM-family generalists (litemedsam, mobilesam) propagate slice to slice with the previous slice's box and have "
        "no memory attention; sam2_hiera_* use sam2's video predictor",
        "open choices: N=mc_passes MC-dropout passes with the protocol network's dropout (no input noise), C = 1 - U with "
        "U not normalised, Eq. 4 on the label confidence mu_l (1 - U_l), prompts per 3D connected component (those under "
        "min_component of the label's largest left out), re-training "
        "continues from the current weights on labeled + pseudo-labelled cases weighted alike (cases without any prompt left out; voxels of a label without any prompted object unknown, not background); stage lengths from the "
        "protocol (paper: 100 epochs per round, batch 4, Adam 1e-4)",
        "the dedicated model is the protocol's network (VNet on the LA protocols, the paper's UNet with net.name unet3d)",
        "each stage ends at its last iterate (no validation-based selection)",
    ]

    # -- registration-time checks ---------------------------------------------------------------
    @classmethod
    def generalists_used(cls, args: dict[str, Any]) -> list[tuple[str, str | None]]:
        from ..foundation.registry import generalist_names

        name = args["generalist"]
        if name not in generalist_names():
            raise ConfigError(f"--method-arg generalist={name}: unknown; expected one of {', '.join(generalist_names())}")
        return [(name, args["fm_checkpoint"])]

    @classmethod
    def stages_used(cls, args: dict[str, Any]) -> tuple[str, ...]:
        samb = (SAMB_STAGE,) if args["memory_bank"] == "semantic" else ()
        return ("pretrain", "round") + samb + tuple(f"round{r}" for r in range(1, args["rounds"] + 1))

    @classmethod
    def samb_config(cls, protocol) -> TrainConfig:
        """``stages.samb_finetune`` over ``train``, else the paper's fine-tuning (:data:`SAMB_PAPER_STAGE`)."""
        if SAMB_STAGE in protocol.stages:
            return protocol.stage_config(SAMB_STAGE)
        return dataclasses.replace(protocol.train, **SAMB_PAPER_STAGE)

    @classmethod
    def check(cls, args: dict[str, Any], protocol) -> None:
        super().check(args, protocol)
        cls.generalists_used(args)
        if args["memory_bank"] == "semantic":
            from ..foundation.registry import get_spec

            if get_spec(args["generalist"]).family != "sam2":
                raise ConfigError(SA_MB_NEEDS_SAM2.format(name=args["generalist"]))
            config = cls.samb_config(protocol)
            if config.batch_size != 1:
                raise ConfigError(f"{protocol.where}: stages.{SAMB_STAGE}.batch_size {config.batch_size}: SA-MB "
                                  "fine-tuning takes one clip per iteration (sam2 trains one video at a time); "
                                  "expected 1")
        if not protocol.net.dropout:
            raise ConfigError(f"{protocol.where}: net.dropout false: ifdl's uncertainty is the variance of MC-dropout "
                              "passes (Eq. 1); expected net.dropout: true")
        if args["prompt_kinds"] != "auto":
            try:  # the count per foreground label is checked in setup, where the data set's classes are known
                parse_prompt_kinds(args["prompt_kinds"], len(args["prompt_kinds"].split(",")))
            except ValueError as err:
                raise ConfigError(f"--method-arg {err}") from None

    # -- set-up ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.student = self.ctx.build_net()
        self.kinds = self.prompt_kinds()
        self.index = {case_id: i for i, case_id in enumerate(self.ctx.unlabeled.ids)}
        self.cases = self.pseudo_label_cases()
        self.facts: dict[str, Any] = {}
        self.samb: SemanticSam2 | None = None
        if self.args["memory_bank"] == "semantic":
            from ..foundation.sam2 import Sam2Generalist

            fm = self.ctx.generalist(self.args["generalist"], self.args["fm_checkpoint"])
            if not isinstance(fm, Sam2Generalist):
                raise ConfigError(SA_MB_NEEDS_SAM2.format(name=self.args["generalist"]))
            self.samb = SemanticSam2(fm, dilation=self.args["samb_dilation"])

    def prompt_kinds(self) -> list[str]:
        """Box or points per foreground label: the argument, or (auto) read from the data set's class names."""
        text, n = self.args["prompt_kinds"], self.ctx.n_classes - 1
        if text == "auto":
            names = self.ctx.class_names
            return kinds_from_class_names(names) if len(names) == n + 1 else ["box"] * n
        try:
            return parse_prompt_kinds(text, n)
        except ValueError as err:
            raise ConfigError(f"--method-arg {err}") from None

    def pseudo_label_cases(self) -> list[str]:
        """The unlabeled cases of every round: all, or ``pl_cases`` of them drawn once from the seed."""
        ids = list(self.ctx.unlabeled.ids)
        n = self.args["pl_cases"]
        if n == 0 or n >= len(ids):
            return ids
        chosen = np.random.default_rng([self.ctx.seed, 13]).choice(len(ids), size=n, replace=False)
        return [ids[i] for i in sorted(chosen)]

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def training_step(self, batch: Batch, iteration: int) -> StepOutput:
        loss = supervised_loss(self.student(batch.image_l), batch.label_l)
        return StepOutput(loss, {"loss_sup": float(loss.detach())})

    def round_step(self, batch: Batch, iteration: int) -> StepOutput:
        """0.5 (CE + Dice) as in pre-training, over the voxels with a (pseudo-)label (UNKNOWN ones skipped).

        With no UNKNOWN voxel in the batch this is exactly :func:`supervised_loss`.
        """
        logits = self.student(batch.image_l)
        known = batch.label_l != UNKNOWN
        target = torch.where(known, batch.label_l, torch.zeros_like(batch.label_l))
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        loss = soft_target_ce_dice(logits, onehot, known.to(logits.dtype))
        return StepOutput(loss, {"loss_sup": float(loss.detach()), "known": float(known.float().mean())})

    def round_config(self, r: int) -> TrainConfig:
        stages = self.ctx.protocol.stages
        name = f"round{r}" if f"round{r}" in stages else "round" if "round" in stages else "train"
        return self.ctx.stage_config(name)

    # -- the rounds -----------------------------------------------------------------------------------
    def fit(self) -> nn.Module:
        self.train_on("pretrain", self.ctx.labeled, self.ctx.stage_config("pretrain"))
        self.score_round("round0")  # the dedicated model before any pseudo-label
        if self.samb is not None:
            self.finetune_samb()
        for r in range(1, self.args["rounds"] + 1):
            confidence = self.ctx.artifacts.cached(f"round{r}", "confidence", "arrays", lambda: self.confidence_maps(r))
            if self.ctx.score_pseudo_labels is not None:  # the runner drops rows it already has (resume)
                self.ctx.score_pseudo_labels(self.cases, [confidence[f"{i}::unet"] for i in self.cases], f"unet_round{r}")
            pseudo = self.ctx.artifacts.cached(f"round{r}", "pseudo_labels", "arrays", lambda: self.pseudo_labels(r))
            if self.ctx.score_pseudo_labels is not None:
                self.ctx.score_pseudo_labels(self.cases, [pseudo[i] for i in self.cases], f"round{r}")
            self.facts[f"round{r}"] = self.ctx.artifacts.load(f"round{r}", "summary", "json")
            # a case whose masks gave no prompt has an all-background pseudo-label that only says the network
            # was unsure: it stays out of this round's re-training
            used = self.facts[f"round{r}"]["prompted_cases"]
            images = self.ctx.unlabeled.images
            grown = LabeledView(list(self.ctx.labeled.ids) + used,
                                list(self.ctx.labeled.images) + [images[self.index[i]] for i in used],
                                list(self.ctx.labeled.labels) + [pseudo[i] for i in used])
            self.train_on(f"round{r}", grown, self.round_config(r), step=self.round_step)
            self.score_round(f"round{r}")
        return self.predictor()

    def train_on(self, stage: str, view: LabeledView, config: TrainConfig, step=None) -> None:
        """One stage of the dedicated model on ``view`` alone (the whole batch from it)."""
        batches = self.ctx.two_stream(config, view, None, uses_unlabeled=False)
        # config may be another section's (stages.round): its length is the request; the CLI still overrides it
        self.ctx.train(self, stage=stage, config=config, batches=batches, iterations=config.iterations,
                       uses_unlabeled=False, step=step)

    # -- SA-MB fine-tuning (seed 000 l.109) --------------------------------------------------------------
    def finetune_samb(self) -> None:
        """Stage ``samb_finetune`` on clips of the labeled cases; its trained tensors become an artifact.

        The loop skips a finished stage and reloads its checkpoint; the artifact (saved once, read
        back with ``torch.load(weights_only=True)``) is then loaded, so later rounds use exactly the
        stored weights.
        """
        assert self.samb is not None
        protocol = self.ctx.protocol
        config = self.samb_config(protocol)
        given = "iterations" in protocol.stages.get(SAMB_STAGE, {})
        request = None if given else self.args["samb_epochs"] * len(self.ctx.labeled)
        self.ctx.train(self, stage=SAMB_STAGE, config=config, iterations=request,
                       batches=ClipBatches(self.ctx.labeled, self.args["samb_clip"]), step=self.samb_step,
                       after_step=lambda iteration: None, modules={"samb": self.samb.trained},
                       trainable=self.samb.trainable_parameters(), uses_unlabeled=False)
        state = self.ctx.artifacts.cached(SAMB_STAGE, "weights", "state", lambda: self.samb.trained.state_dict())
        self.samb.trained.load_state_dict(state)
        self.samb.eval()

    def samb_step(self, batch: Batch, iteration: int) -> StepOutput:
        """One clip: every label on its first slice is an object prompted there (box or points), tracked with
        SA-MB through the clip (bones first, so the cartilage memories see them); 0.5 (CE + Dice) per object."""
        samb = self.samb
        assert samb is not None
        samb.train()
        image, label = batch.image_l[0].cpu().numpy(), batch.label_l[0].cpu().numpy()
        slices01, _ = samb.generalist._volume_slices(image, SLICE_AXIS)
        frames = samb.encode_frames(slices01)
        rows, cols, n = label.shape
        rng = np.random.default_rng([self.ctx.seed, 29, iteration])
        bank = SemanticMemoryBank(int(samb.sam.num_maskmem))
        bone: torch.Tensor | None = None
        losses = []
        for index in sorted(range(len(self.kinds)), key=lambda l: GROUP_OF_KIND[self.kinds[l]] != "bone"):
            target = label == index + 1
            if not target[..., 0].any():
                continue
            group = GROUP_OF_KIND[self.kinds[index]]
            prompt = slice_prompt(target[..., 0], self.kinds[index], self.args["n_neg"], rng)
            logits = samb.track(frames, {0: samb.point_inputs(prompt, rows, cols)}, group, bank, bone)
            low = torch.cat([logits[f] for f in range(n)])  # (n, 1, h, w), sam2's low-resolution logits
            if group == "bone":
                bone = low if bone is None else torch.maximum(bone, low)
            up = F.interpolate(low, (rows, cols), mode="bilinear", align_corners=False)
            two_class = torch.cat([torch.zeros_like(up), up], 1)  # softmax over (0, z) is sigmoid(z)
            truth = torch.from_numpy(np.moveaxis(target, -1, 0).astype(np.int64)).to(up.device)
            losses.append(supervised_loss(two_class, truth))
        if not losses:  # no label on the first slice (a clip of background): nothing to learn from
            zero = torch.zeros((), device=samb.device, requires_grad=True)
            return StepOutput(zero, {"loss_samb": 0.0, "samb_objects": 0.0})
        loss = torch.stack(losses).mean()
        return StepOutput(loss, {"loss_samb": float(loss.detach()), "samb_objects": float(len(losses))})

    @torch.no_grad()
    def mc_moments(self, image: np.ndarray, r: int, case: int) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 1 over ``mc_passes`` sliding-window passes with dropout active; seeded per (seed, round, case)."""
        from ..benchmark.evaluation.inference import sliding_window_probs

        cfg, device = self.ctx.protocol.inference, self.ctx.device
        torch.manual_seed(int(np.random.default_rng([self.ctx.seed, r, case]).integers(2**31)))
        with dropout_only(self.student) as net:
            return pass_moments(sliding_window_probs(net, image, cfg, device) for _ in range(self.args["mc_passes"]))

    def confidence_maps(self, r: int) -> dict[str, np.ndarray]:
        """Round ``r``'s history entry: per case the label confidence (uint8), key frames and the UNet's argmax."""
        out: dict[str, np.ndarray] = {}
        started = time.time()
        for done, case_id in enumerate(self.cases, 1):
            k = self.index[case_id]
            mean, variance = self.mc_moments(self.ctx.unlabeled.images[k], r, k)
            out[f"{case_id}::label"] = np.round(label_confidence(mean, variance) * QUANT).astype(np.uint8)
            n_slices = mean.shape[SLICE_AXIS]
            frames = (key_frames(frame_confidence(variance), self.args["block"], SLICE_AXIS) if self.args["uam"]
                      else fixed_key_frames(n_slices, self.args["block"]))
            out[f"{case_id}::key_frames"] = np.asarray(frames, dtype=np.int32)
            out[f"{case_id}::unet"] = mean.argmax(0).astype(np.uint8)
            self.ctx.say(progress_line(f"ifdl round{r} MC dropout ({self.args['mc_passes']} passes)", done,
                                       len(self.cases), started))
        return out

    def history(self, r: int) -> dict[str, list[np.ndarray]]:
        """Per case, C_{t,l} of rounds 1..r (UAM) or of round r only (ablation), uint8 as stored.

        Each round's artifact is read once (it holds every case), and only the label maps are kept.
        """
        first = 1 if self.args["uam"] else r
        out: dict[str, list[np.ndarray]] = {case_id: [] for case_id in self.cases}
        for t in range(first, r + 1):
            stored = self.ctx.artifacts.load(f"round{t}", "confidence", "arrays")
            for case_id in self.cases:
                out[case_id].append(stored[f"{case_id}::label"])
        return out

    def pseudo_labels(self, r: int) -> dict[str, np.ndarray]:
        """Accumulated confidence -> masks -> prompts on key frames -> generalist propagation -> label maps."""
        fm = self.samb if self.samb is not None else self.ctx.generalist(self.args["generalist"],
                                                                         self.args["fm_checkpoint"])
        memories: dict[str, int] = {}
        current = self.ctx.artifacts.load(f"round{r}", "confidence", "arrays")
        history = self.history(r)
        distance = self.args["max_distance"] or None
        out: dict[str, np.ndarray] = {}
        objects = {kind: 0 for kind in ("box", "points")}
        prompts_given = {kind: 0 for kind in ("box", "points")}
        frames_per_case, prompted = [], []
        started = time.time()
        for done, case_id in enumerate(self.cases, 1):
            k = self.index[case_id]
            image = self.ctx.unlabeled.images[k]
            confidences = [c.astype(np.float32) / QUANT for c in history.pop(case_id)]
            masks = label_masks(accumulated_confidence(confidences, self.args["alpha"]), self.args["threshold"])
            frames = current[f"{case_id}::key_frames"].tolist()
            frames_per_case.append(len(frames))
            rng = np.random.default_rng([self.ctx.seed, r, k])
            per_label = [0] * len(self.kinds)
            probs = propagate_objects(fm, image, masks, frames, self.kinds, self.args["n_neg"], rng, distance,
                                      objects, prompts_given, self.args["min_component"], per_label, memories)
            pseudo = fuse_label_probabilities(probs)
            unet = current[f"{case_id}::unet"]
            for label, n in enumerate(per_label):  # no object of this label: its voxels are unknown, not background
                if n == 0:
                    pseudo[(unet == label + 1) & (pseudo == 0)] = UNKNOWN
            out[case_id] = pseudo
            if sum(per_label) > 0:
                prompted.append(case_id)
            self.ctx.say(progress_line(f"ifdl round{r} propagation ({self.args['generalist']})", done, len(self.cases),
                                       started))
        self.ctx.artifacts.save(f"round{r}", "summary", "json", {
            "cases": len(self.cases), "prompted_cases": prompted, "key_frames_per_case": float(np.mean(frames_per_case)) if frames_per_case else 0.0,
            "objects": objects, "key_frame_prompts": prompts_given,
            "history_rounds": r if self.args["uam"] else 1,
            **({"samb_memories": memories} if self.samb is not None else {}),
            "pseudo_foreground_fraction": float(np.mean([((out[i] > 0) & (out[i] != UNKNOWN)).mean() for i in self.cases]))
            if out else 0.0,
            "unknown_fraction": float(np.mean([(out[i] == UNKNOWN).mean() for i in self.cases])) if out else 0.0,
        })
        return out

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        if not self.args["generalist"].startswith("sam2"):
            out.setdefault("deviations", []).insert(0, f"generalist {self.args['generalist']} instead of SAM2 (SAM2 "
                                                       "weights take a user checkpoint: generalist=sam2_hiera_*)")
        if self.samb is not None:
            out.setdefault("deviations", []).extend(SAMB_CHOICES + [
                f"SA-MB fine-tuning: one epoch = one clip per labeled case (samb_epochs x labeled iterations unless "
                f"stages.{SAMB_STAGE}.iterations is set); without stages.{SAMB_STAGE} the paper's AdamW lr 5e-5 with "
                "weight decay 0.01 and a constant rate (neither stated); once, after the UNet's pre-training"])
        out["ifdl"] = {"generalist": self.args["generalist"], "prompt_kinds": self.kinds, "cases_per_round": len(self.cases),
                       "memory_bank": self.args["memory_bank"], "rounds": self.facts}
        return out
