"""Specialist -> prompts -> generalist(s) -> pseudo-labels in the frame of the training patch.

The piece every FM-assisted method shares (SemiSAM, SemiSAM+, ...). For each unlabeled sample of
a batch it

1. maps the specialist's patch probabilities back to the case frame (``Transform.invert``),
2. builds prompts per slice and foreground class from the *confident* part of that prediction
   (entropy uncertainty; never from labels: the unlabeled view has none),
3. asks each generalist for masks on the *un-augmented* slice, so every slice is encoded at most
   once per run (embedding cache keyed by content + weights), and
4. maps the generalists' probabilities into the patch frame (``Transform.apply``) with a mask of
   where they are defined (slices that were prompted and voxels the patch covers).

2D images are one slice; 3D volumes are sliced along the last axis (the LA/UA-MT slice axis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..foundation import Prompts, prompts_from_probability, uncertainty_entropy

if TYPE_CHECKING:  # pragma: no cover
    from ..api import Batch
    from ..benchmark.training.context import RunContext

PROMPT_MODES = ("box", "points", "box+points")


@dataclass
class GeneralistTargets:
    """Per generalist soft targets ``(G, B, K, *patch)`` and where they are defined ``(B, *patch)``."""

    probs: torch.Tensor
    defined: torch.Tensor
    pseudo_labels: list[np.ndarray]  # per sample, case frame, argmax of the mean (255 = undefined)


class GeneralistBranch:
    """Turns a batch's unlabeled predictions into generalist pseudo-labels (see module docstring)."""

    def __init__(self, ctx: "RunContext", names: Sequence[str], checkpoints: Sequence[str | None] | None = None,
                 prompt: str = "box", n_points: int = 1, n_neg: int = 0, max_uncertainty: float | None = 0.5,
                 slices_per_sample: int = 0, seed: int = 0) -> None:
        from ..errors import ConfigError

        if prompt not in PROMPT_MODES:
            raise ConfigError(f"prompt {prompt!r}; expected one of {', '.join(PROMPT_MODES)}")
        checkpoints = list(checkpoints or [None] * len(names))
        self.ctx = ctx
        self.generalists = [ctx.generalist(n, c) for n, c in zip(names, checkpoints)]
        self.prompt = prompt
        self.n_points = n_points if "points" in prompt else 0
        self.n_neg = n_neg
        self.max_uncertainty = max_uncertainty
        self.slices_per_sample = slices_per_sample
        self.seed = seed
        self.index = {case_id: i for i, case_id in enumerate(ctx.unlabeled.ids)}

    def _slices(self, known: np.ndarray) -> list[int | None]:
        if known.ndim == 2:
            return [None]
        covered = np.flatnonzero(known.reshape(-1, known.shape[-1]).any(0))
        if self.slices_per_sample and len(covered) > self.slices_per_sample:
            picks = np.linspace(0, len(covered) - 1, self.slices_per_sample).round().astype(int)
            covered = covered[picks]
        return [int(z) for z in covered]

    def _prompts(self, probs: np.ndarray, known: np.ndarray, rng: np.random.Generator) -> list[Prompts]:
        uncertainty = np.where(known, uncertainty_entropy(probs), 1.0)
        return [
            prompts_from_probability(probs[k], uncertainty, n_pos=self.n_points, n_neg=self.n_neg,
                                     box="box" in self.prompt, max_uncertainty=self.max_uncertainty, rng=rng)
            for k in range(1, probs.shape[0])
        ]

    def targets(self, batch: "Batch", probs_u: torch.Tensor, iteration: int) -> GeneralistTargets:
        """Generalist targets for the unlabeled part of ``batch`` given the specialist's softmax ``probs_u``."""
        probs_np = probs_u.detach().float().cpu().numpy()
        n_gen, (b, k) = len(self.generalists), probs_np.shape[:2]
        out = np.zeros((n_gen, b, k) + probs_np.shape[2:], np.float32)
        defined = np.zeros((b,) + probs_np.shape[2:], bool)
        pseudo = []
        for i, (case_id, transform) in enumerate(zip(batch.ids_u, batch.transforms_u)):
            image = self.ctx.unlabeled.images[self.index[case_id]]
            case_probs = transform.invert(probs_np[i])
            known = ~np.isnan(case_probs[0])
            case_probs = np.nan_to_num(case_probs, nan=0.0)
            target = np.full((n_gen, k) + known.shape, np.nan, np.float32)
            rng = np.random.default_rng([self.seed, iteration, i])
            for z in self._slices(known):
                sl = (Ellipsis,) if z is None else (Ellipsis, z)
                prompts = self._prompts(case_probs[sl], known[sl], rng)
                if all(p.is_empty() for p in prompts):
                    continue  # nothing confident to prompt with: no generalist target on this slice
                for g, fm in enumerate(self.generalists):
                    fg = fm.segment(fm.encode(image[sl]), prompts)  # (K-1, H, W)
                    target[(g, slice(1, None)) + sl] = fg
                    target[(g, 0) + sl] = np.clip(1.0 - fg.sum(0), 0.0, 1.0)
            norm = target.sum(1, keepdims=True)
            target = target / np.where(norm > 0, norm, 1.0)
            mean = target.mean(0)
            pseudo.append(np.where(np.isnan(mean[0]), 255, np.nan_to_num(mean).argmax(0)).astype(np.uint8))
            patch_target = transform.apply(target, fill=np.nan)
            defined[i] = ~np.isnan(patch_target[0, 0])
            out[:, i] = np.nan_to_num(patch_target, nan=0.0)
        device = probs_u.device
        return GeneralistTargets(torch.from_numpy(out).to(device), torch.from_numpy(defined).to(device), pseudo)

    def report(self, batch: "Batch", targets: GeneralistTargets, tag: str) -> None:
        """Hand pseudo-labels to the runner, which scores them against labels the method never sees."""
        if self.ctx.score_pseudo_labels is not None:
            self.ctx.score_pseudo_labels(batch.ids_u, targets.pseudo_labels, tag)

    def provenance(self) -> dict[str, Any]:
        return {
            "generalists": [fm.name for fm in self.generalists],
            "prompt": self.prompt, "n_points": self.n_points, "n_neg": self.n_neg,
            "max_uncertainty": self.max_uncertainty, "slices_per_sample": self.slices_per_sample,
        }


def masked_mse(student_probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over weighted voxels of the squared difference of two probability maps (B, K, ...)."""
    w = weight.unsqueeze(1).to(student_probs.dtype)
    denom = (w.sum() * student_probs.shape[1]).clamp_min(1.0)
    return ((student_probs - target) ** 2 * w).sum() / denom
