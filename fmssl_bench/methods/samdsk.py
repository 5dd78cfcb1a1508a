"""SamDSK (seed 003): SAM proposals matched to the specialist's maps; labeled-set expansion over rounds.

The paper has no public code; this is its first public implementation. Per run:

``train`` (stage)
    The specialist M (the protocol's network, trained by ``base=``'s recipe, ``supervised`` by
    default) on the human-labeled set D.
step 0 (once per image, cached)
    SAM's automatic mask generator on every unlabeled image, every threshold 0.5 (Sec. 3.1):
    :mod:`fmssl_bench.foundation.proposals` (``segment_anything``'s own generator, RLE cache).
round r = 1..R: match -> select -> expand -> ``round{r}`` (stage)
    For every image not yet accepted: M's softmax gives p_c per foreground class; the exact optimum
    of Eq. 1-3 (:mod:`.proposal_matching`) with v_lower / v_upper of round r; beta (Eq. 4) > beta*
    (0.9) accepts the image with annotation q_c = tau(sum z* s) (uncovered pixels background).
    Accepted images join the labeled set for good; M is trained again on D plus every accepted
    image (Eq. 5, lambda 1: machine-labeled images are sampled like human-labeled ones). Rounds stop
    early when a round accepts nothing (the paper's stopping rule) or after ``rounds`` (paper: 3).

Per round the run records the images accepted (artifacts ``round{r}/selection.json`` and
``round{r}/annotations``), their pseudo-label Dice against the hidden labels (scored by the
runner: tags ``round{r}`` and ``round{r}_rejected`` for the images not accepted), and the test
Dice of M after each round (``round_evaluation.csv``; ``round0`` is M trained on D alone).

Choices the paper leaves open (also in ``deviations``):
- soft IoU between a probability map and a binary mask: the fuzzy Jaccard sum min / sum max;
- a class may take only proposals overlapping its map (see :mod:`.proposal_matching`);
- M continues from its previous weights each round (``reinit=false``) rather than restarting;
- a pixel claimed by two classes' proposals goes to the lower class index (multi-class only);
- v_lower/v_upper per class come from the data set's declaration (``DatasetAdapter.roi_counts``:
  polyps 1 and 1, 2, 3 by round; BUSI and ISIC 1 and 1); a data set without one matches one to one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import Arg, Method
from ..benchmark.views import LabeledView, UnlabeledView
from ..errors import ConfigError
from .composition import ComposedMethod
from .proposal_matching import optimal_matching
from .registry import method_class, method_names, register_method


@register_method
class SamDSK(ComposedMethod):
    name = "samdsk"
    description = ("SamDSK (seed 003): SAM automatic proposals matched to the specialist's maps under RoI-count "
                   "constraints; images with beta > 0.9 join the labeled set, over rounds")
    paper_names = (("SamDSK", "TransUNet"), ("SamDSK", "HSNet"), ("SamDSK", "PraNet"))
    dims = (2,)
    arguments = {
        "base": Arg("supervised", str, "registered method that trains the specialist M each round (paper: the "
                    "network's supervised recipe); its protocol method_args apply"),
        "generalist": Arg("mobilesam", str, "point-prompt SAM for automatic proposals (paper: SAM; mobilesam or "
                          "sam_vit_b/l/h)"),
        "rounds": Arg(3, int, "rounds of match -> select -> re-train (paper: 3)", ge=1),
        "beta_star": Arg(0.9, float, "selection threshold on beta, the mean matched IoU (Eq. 4; paper 0.9)", ge=0, le=1),
        "v_lower": Arg(None, int | None, "fewest proposals per class (Eq. 3); none = the data set's declaration", ge=0),
        "v_upper": Arg(None, tuple[int, ...] | None, "most proposals per class, per round (last repeats), e.g. 1,2,3; "
                       "none = the data set's declaration", ge=1),
        "points_per_side": Arg(32, int, "automatic mask generator point grid (SAM's default 32)", ge=1),
        "reinit": Arg(False, bool, "re-initialise M before each round instead of continuing its weights"),
    }
    deviations = [
        "soft IoU between probability map and proposal: fuzzy Jaccard sum(min)/sum(max) (the paper does not define it)",
        "a class may take only proposals that overlap its probability map; the matching is solved exactly "
        "(branch and bound) under that rule",
        "M continues from its previous weights each round unless reinit=true (the paper does not say)",
        "SAM's automatic masks are post-processed with one resize of the low-resolution logits to the image size "
        "instead of SamPredictor's resize to the 1024 px canvas and back (the same mapping up to interpolation; "
        "minutes less per image on a CPU)",
        "the specialist is the protocol's network from scratch (paper: TransUNet/HSNet/PraNet with ImageNet-pretrained "
        "encoders, which cannot be downloaded here)",
    ]

    # -- registration-time checks ---------------------------------------------------------------
    @classmethod
    def base_class(cls, args: dict[str, Any]) -> type[Method]:
        base = args["base"]
        if base == cls.name or base not in method_names():
            raise ConfigError(f"--method-arg base={base}: expected a registered training method other than samdsk "
                              f"({', '.join(n for n in method_names() if n != cls.name)})")
        base_cls = method_class(base)
        if base_cls.fit is not Method.fit:
            raise ConfigError(f"--method-arg base={base}: {base} has stages of its own; SamDSK re-trains a "
                              "single-stage method each round")
        return base_cls

    @classmethod
    def stages_used(cls, args: dict[str, Any]) -> tuple[str, ...]:
        return ("train", *(f"round{r}" for r in range(1, args["rounds"] + 1)))

    @classmethod
    def generalists_used(cls, args: dict[str, Any]) -> list[tuple[str, str | None]]:
        from ..foundation.registry import generalist_names, get_spec
        from ..foundation.sam import SAM_RECIPE

        name = args["generalist"]
        if name not in generalist_names():
            raise ConfigError(f"--method-arg generalist={name}: unknown; expected one of {', '.join(generalist_names())}")
        spec = get_spec(name)
        if spec.family != "sam" or spec.recipe != SAM_RECIPE:
            raise ConfigError(f"--method-arg generalist={name}: SamDSK needs SAM's automatic mask generator, i.e. a "
                              "point-prompt SAM with SAM's input recipe (mobilesam, sam_vit_b, sam_vit_l, sam_vit_h)")
        return [(name, None)]

    # -- set-up (the loop's hooks are the base's: ComposedMethod) ---------------------------------------
    def setup(self) -> None:
        self.build_base()
        self.facts: dict[str, Any] = {"rounds": []}
        self.proposals = None

    # -- the rounds ---------------------------------------------------------------------------------
    def bounds(self, round_index: int) -> tuple[list[int], list[int]]:
        """(v_lower, v_upper) per foreground class for round ``round_index`` (1-based)."""
        names = self.ctx.class_names[1:] or tuple(f"class{k}" for k in range(1, self.ctx.n_classes))
        lower, upper = [], []
        for name in names:
            declared_lo, schedule = self.ctx.roi_counts.get(name, (1, (1,)))
            lo = declared_lo if self.args["v_lower"] is None else self.args["v_lower"]
            sched = schedule if self.args["v_upper"] is None else self.args["v_upper"]
            hi = sched[min(round_index, len(sched)) - 1]
            if hi < lo:
                raise ConfigError(f"--method-arg v_upper: round {round_index} allows {hi} proposal(s) for {name}, "
                                  f"fewer than v_lower {lo}")
            lower.append(int(lo))
            upper.append(int(hi))
        return lower, upper

    def fit(self) -> nn.Module:
        unlabeled = self.ctx.unlabeled
        images = dict(zip(unlabeled.ids, unlabeled.images))
        accepted: dict[str, np.ndarray] = {}
        self.ctx.train(self, stage="train", uses_unlabeled=self.base.uses_unlabeled)
        self.score_round("round0")
        for r in range(1, self.args["rounds"] + 1):
            remaining = [i for i in unlabeled.ids if i not in accepted]
            if not remaining:
                self.facts["stopped"] = f"every unlabeled image accepted before round {r}"
                break
            selection = self.select(r, remaining, images)
            self.facts["rounds"].append(selection["facts"])
            if not selection["accepted"]:
                self.facts["stopped"] = f"round {r} accepted no image"
                break
            accepted.update(selection["annotations"])
            if self.args["reinit"]:
                self.setup_fresh_base(r)
            labeled = self.ctx.labeled
            grown = LabeledView(labeled.ids + list(accepted), labeled.images + [images[i] for i in accepted],
                                labeled.labels + list(accepted.values()))
            rest = [i for i in unlabeled.ids if i not in accepted]
            self.ctx.train(self, stage=f"round{r}", labeled=grown,
                           unlabeled=UnlabeledView(rest, [images[i] for i in rest]),
                           uses_unlabeled=self.base.uses_unlabeled and bool(rest))
            self.score_round(f"round{r}")
        return self.predictor()

    def setup_fresh_base(self, r: int) -> None:
        torch.manual_seed(self.ctx.seed * 1009 + r)  # the same initialisation whether or not the run was resumed
        self.base = type(self.base)(self.ctx, **self.base_args)
        self.base.setup()
        self.student = self.base.student

    def select(self, r: int, ids: list[str], images: dict[str, np.ndarray]) -> dict[str, Any]:
        """Match, score and select the images of round ``r`` (an artifact: computed once per run)."""
        lower, upper = self.bounds(r)
        stage = f"round{r}"

        annotations: dict[str, np.ndarray] = {}  # filled by a fresh computation, else read back below

        def compute_selection() -> dict[str, Any]:
            betas, feasible = {}, {}
            self.proposal_cache().fill([images[i] for i in ids], say=self.ctx.say)  # shares the work with other processes
            for case_id, probs in zip(ids, self.foreground_probs([images[i] for i in ids])):
                proposals = self.proposal_cache().masks(images[case_id])
                match = optimal_matching(probs, proposals, lower, upper)
                betas[case_id], feasible[case_id] = match.beta, match.feasible
                annotations[case_id] = match.annotation(proposals, probs.shape[1:])
            self.ctx.artifacts.save(stage, "annotations", "arrays", annotations)
            chosen = [i for i in ids if betas[i] > self.args["beta_star"]]
            return {"ids": ids, "beta": betas, "feasible": feasible, "accepted": chosen}

        fresh = not self.ctx.artifacts.has(stage, "selection", "json")
        selection = self.ctx.artifacts.cached(stage, "selection", "json", compute_selection)
        if not fresh:  # a resumed run: the artifact of the interrupted one
            annotations = self.ctx.artifacts.load(stage, "annotations", "arrays")
        chosen = selection["accepted"]
        accepted = set(chosen)
        rejected = [i for i in ids if i not in accepted]
        if fresh and self.ctx.score_pseudo_labels is not None:
            if chosen:
                self.ctx.score_pseudo_labels(chosen, [annotations[i] for i in chosen], stage)
            if rejected:
                self.ctx.score_pseudo_labels(rejected, [annotations[i] for i in rejected], f"{stage}_rejected")
        betas = np.array([selection["beta"][i] for i in ids], float)
        facts = {"round": r, "v_lower": lower, "v_upper": upper, "candidates": len(ids), "accepted": len(chosen),
                 "infeasible": int(sum(not selection["feasible"][i] for i in ids)),
                 "beta_mean": round(float(betas.mean()), 5) if len(betas) else None,
                 "beta_mean_accepted": round(float(np.mean([selection["beta"][i] for i in chosen])), 5) if chosen else None}
        return {"accepted": chosen, "annotations": {i: annotations[i] for i in chosen}, "facts": facts}

    @torch.no_grad()
    def foreground_probs(self, images: list[np.ndarray]):
        """M's softmax without the background channel, ``(C-1, H, W)`` per image, in the view's frame."""
        from ..benchmark.evaluation.inference import whole_image_probs

        net = self.predictor()
        was_training = net.training
        net.eval()
        try:
            for image in images:
                yield whole_image_probs(net, image, None, self.ctx.device)[1:]
        finally:
            net.train(was_training)

    def proposal_cache(self):
        if self.proposals is None:
            from pathlib import Path

            from ..foundation.proposals import ProposalCache, ProposalSettings
            from ..paths import shared_fm_cache

            fm = self.ctx.generalist(self.args["generalist"])
            root = shared_fm_cache() or Path(self.ctx.run_dir) / "fm_cache"
            self.proposals = ProposalCache(fm, ProposalSettings(points_per_side=self.args["points_per_side"]), root)
        return self.proposals

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        if self.args["generalist"] not in ("sam_vit_h", "sam_vit_b", "sam_vit_l"):
            out.setdefault("deviations", []).insert(0, f"generalist {self.args['generalist']} instead of SAM "
                                                       "(SAM ViT checkpoints take a user file)")
        out["samdsk"] = {"base": self.args["base"], "base_args": self.base_args, **self.facts,
                         "roi_counts": {k: [lo, list(s)] for k, (lo, s) in self.ctx.roi_counts.items()} or
                         "not declared by the data set: one to one",
                         "proposals": self.proposals.provenance() if self.proposals is not None else None}
        return out
