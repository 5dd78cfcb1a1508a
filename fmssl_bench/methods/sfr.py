"""SFR and SFR+ (Li et al., seed 002): stitch, fine-tune a SAM with LoRA, re-train an SSL method.

SFR turns a 2D SAM into a source of 3D pseudo-labels and puts it in front of any semi-supervised
method (its public code, ShumengLI/SFR, covers the fine-tuning and Mean-Teacher re-training).
Stages of the shared loop, each resumable:

``finetune``
    The labeled patches, stitched slice by slice into a d x d canvas (F_C, Eq. 1, d = ceil(sqrt(D)):
    LA's 112x112x80 patch -> 9x9 -> 1008 px, SAM's input size) fine-tune a promptless SAM: LoRA
    of rank 4 on q and v of every encoder attention, the mask decoder trained, one learned dense
    prompt and one mask per foreground class (SAMed-style, l.151, 168); loss 1/2 (Dice + CE)
    (Eq. 5). Optimiser, schedule, batch and length come from the protocol's ``stages.finetune``
    (public code: AdamW lr 1e-3, weight decay 0.1, poly, batch 2, 6000 iterations).
``pseudo_label`` (not a loop stage: an artifact)
    Y^u = F_C^-1(F_FT(F_C(X^u))) (Eq. 3) for every unlabeled case, as a sliding window of the
    training patch (half-patch strides; ``pl_stride=patch``: a tiling) stitched like the fine-tuning patches;
    the argmax map and the confidence C_j (mean over voxels of the max softmax) are saved.
``train``
    The base method (``base=``, any registered method exposing ``Method.student_step``:
    ``mean_teacher``, ``self_training``, ``acmt``) with its own loss (its protocol ``method_args``
    apply) plus lambda 1/2 (Dice + CE) of the student against the pseudo-labels on the unlabeled
    part of each batch (Eq. 4, 7; public code: weight 1, no ramp, hard labels). Only this network
    is tested.

Pseudo-label quality is scored by the runner (never seen by the method): ``zero_shot`` (the
promptless SAM before fine-tuning, i.e. SAM without any prompt), ``finetuned`` and, for SFR+,
``plus_finetuned``.

SFR+ (Eq. 8, l.214-223) splits the unlabeled cases by confidence: C_j >= tau (0.985) joins the
fine-tuning set with its pseudo-label; C_j < tau is what the re-training's pseudo-label term
uses. The paper gives no schedule; ours is one round: ``finetune`` -> pseudo-labels and C_j ->
``finetune_plus`` (the same adapter fine-tuned further on labeled + confident cases, with
``stages.finetune``'s configuration unless ``stages.finetune_plus`` is given) -> pseudo-labels of
the uncertain cases by the re-fine-tuned SAM -> ``train``.

2D data sets (an extension of the paper, which stitches volumes): ``group x group`` images of one
size share a canvas (default 2x2: four 96 px Kvasir images -> 192 px).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ..api import Arg, Batch, Method, StepOutput
from ..benchmark.protocol import InferenceConfig
from ..benchmark.views import LabeledView
from ..errors import ConfigError
from .composition import ComposedMethod
from .losses import supervised_loss
from .registry import method_class, method_names, register_method

#: the public SFR code's fine-tuning (ShumengLI/SFR), named where a protocol lacks ``stages.finetune``
PUBLIC_FINETUNE = "AdamW lr 1e-3, weight decay 0.1, poly schedule, batch 2, 6000 iterations"


@register_method
class SFR(ComposedMethod):
    name = "sfr"
    description = ("SFR (Li et al., seed 002): stitched slices fine-tune SAM with LoRA; a base SSL method "
                   "re-trains on its pseudo-labels")
    paper_names = (("SFR", "MT"), ("SFR", "ACMT"), ("SFR", "MagicNet"))
    arguments = {
        "base": Arg("mean_teacher", str, "registered SSL method re-trained with the pseudo-labels (paper: "
                    "self-training, MT, ACMT, MagicNet); its protocol method_args apply"),
        "generalist": Arg("mobilesam", str, "SAM-family generalist fine-tuned with LoRA (paper: SAM ViT-B; "
                          "MobileSAM keeps SAM's 1024 px input a 9x9 canvas of 112 px slices needs)"),
        "lora_rank": Arg(4, int, "LoRA rank on q and v of every encoder attention (paper 4; 0 = decoder only)", ge=0),
        "group": Arg(2, int, "2D data: images per canvas side (group x group per canvas; extends the paper)", ge=1),
        "pl_weight": Arg(1.0, float, "lambda of Eq. 4: weight of the pseudo-label term (public code 1, no ramp)",
                         ge=0),
        "pl_stride": Arg("half", Literal["half", "patch"], "3D pseudo-label windows: half-patch strides (overlap "
                         "averaged) or a non-overlapping tiling (8x fewer SAM calls; smoke protocols)"),
        "score_zero_shot": Arg(True, bool, "pseudo-label once with the promptless SAM before fine-tuning "
                               "(scored by the runner as 'zero_shot')"),
    }
    deviations = [
        "pseudo-labels computed once per unlabeled case (sliding windows of the training patch, half-patch "
        "strides) and cropped with each augmented patch, not recomputed on every augmented crop as the public code",
        "augmentation is the protocol's (rot90/flip of the patch, i.e. of every slice alike, and random crops), "
        "not rotation/flip of the whole stitched canvas",
        "the fine-tuning loss is taken after un-stitching (the zero filler cells carry no loss)",
        "fine-tuning and re-training end at their last iterate (no validation-based selection)",
    ]

    # -- registration-time checks ---------------------------------------------------------------
    @classmethod
    def base_class(cls, args: dict[str, Any]) -> type[Method]:
        base = args["base"]
        if base in ("sfr", "sfr_plus"):
            raise ConfigError(f"--method-arg base={base}: the base must be a semi-supervised method, not SFR itself")
        if base not in method_names():
            raise ConfigError(f"--method-arg base={base}: unknown method; expected one of {', '.join(method_names())}")
        base_cls = method_class(base)
        if not base_cls.exposes_student_logits():
            bases = [n for n in method_names() if method_class(n).exposes_student_logits() and n not in ("sfr", "sfr_plus")]
            raise ConfigError(f"--method-arg base={base}: {base} does not expose its student's logits "
                              f"(Method.student_step), so SFR cannot add its pseudo-label term; bases: {', '.join(bases)}")
        return base_cls

    @classmethod
    def stages_used(cls, args: dict[str, Any]) -> tuple[str, ...]:
        return ("finetune", "train")

    @classmethod
    def generalists_used(cls, args: dict[str, Any]) -> list[tuple[str, str | None]]:
        from ..foundation.registry import generalist_names, get_spec

        name = args["generalist"]
        if name not in generalist_names():
            raise ConfigError(f"--method-arg generalist={name}: unknown; expected one of {', '.join(generalist_names())}")
        if get_spec(name).family != "sam":
            raise ConfigError(f"--method-arg generalist={name}: SFR fine-tunes a SAM-family model (LoRA on its "
                              "fused qkv attention, SAM's mask decoder); SAM 2 is not supported")
        return [(name, None)]

    @classmethod
    def check(cls, args, protocol) -> None:
        super().check(args, protocol)
        if "finetune" not in protocol.stages:
            raise ConfigError(f"{protocol.where}: no stages.finetune section; {cls.name} fine-tunes SAM with its own "
                              f"optimiser and length there (public SFR code: {PUBLIC_FINETUNE})")

    # -- set-up and hooks -------------------------------------------------------------------------
    def setup(self) -> None:
        from ..foundation import SamGeneralist, make_trainable
        from ..foundation.stitching import StitchedSegmenter

        self.build_base()
        fm = self.ctx.generalist(self.args["generalist"])
        if not isinstance(fm, SamGeneralist):
            raise ConfigError(f"--method-arg generalist={self.args['generalist']}: not a SAM-family generalist")
        self.sam = make_trainable(fm, lora_rank=self.args["lora_rank"], train_decoder=True, promptless=True,
                                  n_classes=self.ctx.n_classes)
        self.segmenter = StitchedSegmenter(self.sam, self.ctx.protocol.ndim, self.args["group"])
        self.targets: dict[str, np.ndarray] = {}
        self.index = {case_id: i for i, case_id in enumerate(self.ctx.unlabeled.ids)}
        self.facts: dict[str, Any] = {}

    # -- the stages -------------------------------------------------------------------------------
    def fit(self) -> nn.Module:
        unlabeled = self.ctx.unlabeled.ids
        if self.args["score_zero_shot"]:
            self.pseudo_labels("zero_shot", unlabeled, tag="zero_shot")
        self.finetune("finetune", self.ctx.labeled)
        labels, _ = self.pseudo_labels("pseudo_label", unlabeled, tag="finetuned")
        self.targets = labels  # SFR: every unlabeled case gets its pseudo-label term
        self.ctx.train(self, stage="train")
        return self.predictor()

    def finetune(self, stage: str, view: LabeledView, config_stage: str | None = None) -> None:
        """One fine-tuning stage of the stitched SAM on ``view`` (labeled patches, or canvases of images)."""
        config = self.ctx.stage_config(config_stage or stage)
        per = 1 if self.ctx.protocol.ndim == 3 else self.args["group"] ** 2
        images = config.batch_size * per  # the stage's batch counts canvases; 2D canvases hold `per` images
        batches = self.ctx.two_stream(dataclasses.replace(config, batch_size=images, labeled_bs=images), view, None,
                                      uses_unlabeled=False)
        self.ctx.train(self, stage=stage, config=config, batches=batches, step=self.finetune_step,
                       after_step=lambda iteration: None, modules={"sam": self.segmenter},
                       trainable=self.sam.trainable_parameters())

    def finetune_step(self, batch: Batch, iteration: int) -> StepOutput:
        loss = supervised_loss(self.segmenter(batch.image_l), batch.label_l)
        return StepOutput(loss, {"loss_ft": float(loss.detach())})

    def training_step(self, batch: Batch, iteration: int) -> StepOutput:
        logits, out = self.base.student_step(batch, iteration)
        n_l = batch.image_l.shape[0]
        rows, targets = [], []
        for i, (case_id, transform) in enumerate(zip(batch.ids_u, batch.transforms_u)):
            if case_id in self.targets:
                rows.append(n_l + i)
                targets.append(transform.apply(self.targets[case_id], fill=0))
        if rows:
            target = torch.from_numpy(np.stack(targets).astype(np.int64)).to(logits.device)
            loss_pl = supervised_loss(logits[rows], target)
        else:  # SFR+: a batch of confident cases only has no pseudo-label term
            loss_pl = logits.sum() * 0.0
        weight = self.args["pl_weight"]
        logs = {**out.logs, "loss_pl": float(loss_pl.detach()), "w_pl": weight}
        return StepOutput(out.loss + weight * loss_pl, logs)

    # -- pseudo-labels ----------------------------------------------------------------------------
    def pseudo_labels(self, stage: str, ids: Sequence[str], tag: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Argmax pseudo-labels and confidences C_j of ``ids`` by the current SAM (an artifact of ``stage``)."""
        def compute() -> dict[str, np.ndarray]:
            images = self.ctx.unlabeled.images
            out: dict[str, np.ndarray] = {}
            for case_id, probs in zip(ids, self.predict_probs([images[self.index[i]] for i in ids])):
                out[case_id] = probs.argmax(0).astype(np.uint8)
                out[f"{case_id}::confidence"] = np.float32(probs.max(0).mean())
            return out

        fresh = not self.ctx.artifacts.has(stage, "pseudo_labels", "arrays")
        stored = self.ctx.artifacts.cached(stage, "pseudo_labels", "arrays", compute)
        labels = {i: stored[i] for i in ids}
        confidence = {i: float(stored[f"{i}::confidence"]) for i in ids}
        if fresh and self.ctx.score_pseudo_labels is not None:
            self.ctx.score_pseudo_labels(list(ids), [labels[i] for i in ids], tag)
        values = np.array(list(confidence.values()), float)
        self.facts[tag] = {"cases": len(ids), "confidence_mean": round(float(values.mean()), 5) if len(values) else None,
                           "confidence_min": round(float(values.min()), 5) if len(values) else None}
        return labels, confidence

    @torch.no_grad()
    def predict_probs(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """Softmax ``(K, *spatial)`` of the stitched SAM per image, in the training frame."""
        from ..benchmark.evaluation.inference import sliding_window_probs

        self.segmenter.eval()
        device = self.ctx.device
        if self.ctx.protocol.ndim == 3:
            patch = tuple(self.ctx.stage_config("train").patch)
            cfg = InferenceConfig(mode="sliding_window", patch=patch, stride=patch if self.args["pl_stride"] == "patch" else tuple(max(1, p // 2) for p in patch),
                                  sw_batch_size=1)
            for image in images:
                yield sliding_window_probs(self.segmenter, image, cfg, device)
            return
        per = self.args["group"] ** 2
        done: dict[int, np.ndarray] = {}
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(i)
        for members in by_shape.values():  # one canvas holds images of one size
            for start in range(0, len(members), per):
                chunk = members[start:start + per]
                x = torch.from_numpy(np.stack([np.ascontiguousarray(images[i], dtype=np.float32) for i in chunk]))
                probs = torch.softmax(self.segmenter(x.to(device)), 1).cpu().numpy()
                done.update(zip(chunk, probs))
        for i in range(len(images)):
            yield done.pop(i)

    def provenance(self) -> dict[str, Any]:
        from ..foundation.stitching import grid_side

        out = super().provenance()
        if self.args["generalist"] != "sam_vit_b":  # the paper's model; its weights are not shipped here
            out.setdefault("deviations", []).insert(0, f"generalist {self.args['generalist']} instead of SAM ViT-B "
                                                       "(sam_vit_b takes a user checkpoint)")
        patch = tuple(self.ctx.stage_config("train").patch)
        if self.ctx.protocol.ndim == 3:
            side, cell = grid_side(patch[-1]), patch[:2]
        else:
            side, cell = self.args["group"], patch
        named = dict(self.sam.named_parameters())
        trained = self.sam.trainable_parameters()
        lora = sum(p.numel() for n, p in named.items() if "lora_" in n)
        decoder = sum(p.numel() for n, p in named.items() if n.startswith("sam.mask_decoder.") and p.requires_grad)
        out["sfr"] = {
            "base": self.args["base"], "base_args": self.base_args, "generalist": self.args["generalist"],
            "canvas": {"grid": f"{side}x{side}", "cell": list(cell), "pixels": [side * cell[0], side * cell[1]],
                       "sam_input": self.sam.img_size},
            "trainable_parameters": {"total": sum(p.numel() for p in trained), "lora": lora, "mask_decoder": decoder,
                                     "dense_prompt": self.sam.dense_prompt.numel(), "lora_modules": self.sam.lora_modules},
            "pseudo_labels": self.facts, "pseudo_labelled_cases": len(self.targets),
        }
        return out


@register_method
class SFRPlus(SFR):
    name = "sfr_plus"
    description = ("SFR+ (Li et al., seed 002): SFR with a confidence split; confident unlabeled cases fine-tune SAM "
                   "again, uncertain ones get pseudo-label terms")
    paper_names = (("SFR+", "MT"), ("SFR+", "ACMT"), ("SFR+", "MagicNet"))
    arguments = {
        **SFR.arguments,
        "tau": Arg(0.985, float, "confidence threshold of Eq. 8 (paper 0.985)", ge=0, le=1),
        "confidence": Arg("sam", Literal["sam", "ssl"], "network whose softmax gives C_j: the fine-tuned SAM, or "
                          "the SSL network as Eq. 8 writes F_S (not implemented)"),
    }
    deviations = SFR.deviations + [
        "C_j from the fine-tuned SAM's softmax (Eq. 8 writes F_S, the SSL network, which would need a re-training "
        "before the split); one round: finetune -> split -> finetune_plus on labeled + confident -> re-train",
        "the second fine-tuning continues the first adapter (stages.finetune's configuration unless "
        "stages.finetune_plus is given)",
    ]

    @classmethod
    def stages_used(cls, args: dict[str, Any]) -> tuple[str, ...]:
        return ("finetune", "finetune_plus", "train")

    @classmethod
    def check(cls, args, protocol) -> None:
        super().check(args, protocol)
        if args["confidence"] == "ssl":
            raise NotImplementedError("--method-arg confidence=ssl: C_j from the SSL network (Eq. 8's F_S) needs a "
                                      "re-training before the split; only confidence=sam is implemented")

    def fit(self) -> nn.Module:
        unlabeled = self.ctx.unlabeled.ids
        if self.args["score_zero_shot"]:
            self.pseudo_labels("zero_shot", unlabeled, tag="zero_shot")
        self.finetune("finetune", self.ctx.labeled)
        labels, confidence = self.pseudo_labels("pseudo_label", unlabeled, tag="finetuned")
        confident = [i for i in unlabeled if confidence[i] >= self.args["tau"]]
        uncertain = [i for i in unlabeled if confidence[i] < self.args["tau"]]
        self.facts["split"] = {"tau": self.args["tau"], "confident": len(confident), "uncertain": len(uncertain)}
        if confident and uncertain:
            images = self.ctx.unlabeled.images
            labeled = self.ctx.labeled
            grown = LabeledView(labeled.ids + confident, labeled.images + [images[self.index[i]] for i in confident],
                                labeled.labels + [labels[i] for i in confident])
            config_stage = "finetune_plus" if "finetune_plus" in self.ctx.protocol.stages else "finetune"
            self.finetune("finetune_plus", grown, config_stage=config_stage)
            labels, _ = self.pseudo_labels("pseudo_label_plus", uncertain, tag="plus_finetuned")
        self.targets = {i: labels[i] for i in uncertain}
        self.ctx.train(self, stage="train")
        return self.predictor()
