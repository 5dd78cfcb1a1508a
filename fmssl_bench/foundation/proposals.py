"""SAM's automatic segmentation proposals ("segment everything"), computed once per image and cached.

SamDSK (seed 003, Sec. 3.1) runs SAM's automatic mask generator on every unlabeled image with low
thresholds so that every potential region of interest is among the proposals. This is
``segment_anything``'s own :class:`~segment_anything.SamAutomaticMaskGenerator` (a point grid,
multimask decoding, quality/stability filtering, NMS), run on the generalist's model; nothing of
it is re-implemented here.

Only generalists trained for point prompts with SAM's input recipe can do this (SAM ViT-B/L/H,
MobileSAM): the generator feeds ``SamPredictor``'s preprocessing (SAM's pixel mean/std), which is
not LiteMedSAM's or MedSAM's, and those were trained on boxes only.

Post-processing (a recorded deviation, for CPU cost): ``SamPredictor`` upsamples every low-resolution
mask logit (256 px) to the 1024 px input canvas, crops the image's part and resizes that to the
image size; with 3 masks per point and a 32 x 32 grid that is ~3000 bilinear resizes to 1024 px
per image, minutes on a CPU. :class:`_DirectResize` resizes the logits once, straight to the image
size on the canvas (the canvas scaled back to the image's resolution), then crops: the same
mapping up to interpolation rounding (tests/test_samdsk.py compares both paths on a real image).

Batch size (``points_per_batch``): how many grid points the decoder takes at once changes the speed,
not the proposals: the same masks, with IoU and stability scores that differ in the 7th digit (the
float rounding of batched matrix products, as between two BLAS builds; tests/test_samdsk.py), so it
is not part of the settings or the cache key. On a CPU core small batches are faster: the decoder
repeats the 64 x 64 image embedding once per point, and with 64 points those copies and additions
(268 MB tensors) are bound by memory bandwidth. Measured on this project's 2-core VM, MobileSAM, an
8 x 8 grid on two 96 px Kvasir images, one thread with two other processes busy: 64 points per batch
19.4-21.1 s per image, 16: 19.4-19.9 s, 4: 14.7-15.5 s, 2: 13.2-13.9 s, 1: 16.6 s. Default: 2 on a
CPU, SAM's 64 on a GPU (docs/cpu-tier.md).

Cache: proposals are stored as SAM's uncompressed RLE (``segment_anything.utils.amg``) in one JSON
file per image under ``<cache>/proposals/``, keyed by a content address (image bytes, weights
sha256, generator settings), so they survive rounds, resumes and, with ``$FMSSL_FM_CACHE``, runs.
A hit returns exactly what the generator computed for that key. Processes sharing the cache split
the computation (:meth:`ProposalCache.fill`): each image is claimed with a file lock, and an image
another process holds is read back once it is written, never computed twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .base import normalise_intensities
from .cache import claim_file, claim_lock
from .sam import SAM_RECIPE, SamGeneralist


@dataclass(frozen=True)
class ProposalSettings:
    """Arguments of ``SamAutomaticMaskGenerator``; defaults are SamDSK's (Sec. 3.1: every threshold 0.5)."""

    points_per_side: int = 32
    pred_iou_thresh: float = 0.5
    stability_score_thresh: float = 0.5
    box_nms_thresh: float = 0.5
    crop_nms_thresh: float = 0.5
    crop_n_layers: int = 0
    min_mask_region_area: int = 0

    def signature(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def supports_automatic_masks(fm: Any) -> bool:
    """Whether ``fm`` can run SAM's automatic mask generator faithfully (see the module docstring)."""
    return isinstance(fm, SamGeneralist) and fm.recipe == SAM_RECIPE


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` view image (any intensities) -> ``(H, W, 3)`` uint8, what ``SamPredictor`` takes."""
    scaled = normalise_intensities(image)  # (3, H, W) in [0, 1]
    return np.ascontiguousarray((scaled.transpose(1, 2, 0) * 255.0 + 0.5).clip(0, 255).astype(np.uint8))


class _DirectResize:
    """The SAM model as ``SamPredictor`` sees it, with a single-resize ``postprocess_masks``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, ...],
                          original_size: tuple[int, ...]) -> torch.Tensor:
        import torch.nn.functional as F

        side = self._model.image_encoder.img_size
        canvas = (round(side * original_size[0] / input_size[0]), round(side * original_size[1] / input_size[1]))
        masks = F.interpolate(masks, canvas, mode="bilinear", align_corners=False)
        return masks[..., : original_size[0], : original_size[1]]


class ProposalCache:
    """Automatic-mask proposals per image: computed on a miss, read back as boolean masks."""

    def __init__(self, fm: SamGeneralist, settings: ProposalSettings, root: Path, direct_resize: bool = True,
                 points_per_batch: int | None = None) -> None:
        if not supports_automatic_masks(fm):
            raise ValueError(f"generalist {fm.name!r} cannot run SAM's automatic mask generator "
                             "(needs a point-prompt SAM with SAM's input recipe: mobilesam, sam_vit_b/l/h)")
        from segment_anything import SamAutomaticMaskGenerator

        self.fm, self.settings = fm, settings
        self.root = Path(root) / "proposals"
        model = _DirectResize(fm.model) if direct_resize else fm.model
        self.direct_resize = direct_resize
        if points_per_batch is None:  # speed only (module docstring)
            points_per_batch = 64 if fm.device.type == "cuda" else 2
        self.points_per_batch = points_per_batch
        self.generator = SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle",
                                                   points_per_batch=points_per_batch, **asdict(settings))
        self.stats = {"computed": 0, "hits": 0, "by_others": 0, "seconds": 0.0, "proposals": 0}
        self._seen: set[str] = set()

    def key(self, rgb: np.ndarray) -> str:
        digest = hashlib.sha256()
        for part in (rgb.tobytes(), str(rgb.shape).encode(), (self.fm.weights_sha256 or self.fm.name).encode(),
                     self.settings.signature().encode(), b"direct" if self.direct_resize else b"canvas"):
            digest.update(part)
        return digest.hexdigest()

    def claim_path(self, key: str) -> Path:
        """The lock a process holds while it computes ``key`` (:func:`.cache.claim_file`)."""
        return claim_file(self.root, key)

    def fill(self, images: Sequence[np.ndarray], say: Callable[[str], None] | None = None, every: int = 25) -> None:
        """Compute the proposals of every image of ``images`` not in the cache yet.

        Why claims: the proposals of a 10 % Kvasir grid are ~900 images x 10-17 s of SAM's decoder on a
        CPU core, the same images for every seed. Two processes sharing ``$FMSSL_FM_CACHE`` (two grid
        shells, Ray tasks) would compute them twice; instead each image is claimed with an OS file lock
        (``filelock``, released by the kernel if its holder dies) and an image another process holds is
        left for the end, then read back once written (or computed, if that process died first).
        """
        from filelock import Timeout

        from ..benchmark.views import progress_line

        rgbs = [to_uint8_rgb(image) for image in images]
        todo = [(self.key(rgb), rgb) for rgb in rgbs]
        todo = [(key, rgb) for key, rgb in todo if not self._path(key).exists()]
        if not todo:
            return
        deferred, t0, done = [], time.time(), 0

        def report(force: bool = False) -> None:
            if say is not None and (force or done % every == 0):
                say(progress_line(f"SAM proposals ({self.stats['computed']} computed here)", done, len(todo), t0,
                                  unit="image"))

        for key, rgb in todo:
            claim = claim_lock(self.root, key)
            try:
                claim.acquire(timeout=0)
            except Timeout:
                deferred.append((key, rgb, claim))
                continue
            try:
                self._ensure(key, rgb)
            finally:
                claim.release()
            done += 1
            report()
        for key, rgb, claim in deferred:  # held by another process: wait for it (its entry is then there)
            with claim:
                if self._ensure(key, rgb) is None:
                    self.stats["by_others"] += 1
            done += 1
        report(force=True)

    def masks(self, image: np.ndarray) -> np.ndarray:
        """``(K, H, W)`` boolean proposals of a ``(C, H, W)`` image (K may be 0)."""
        from segment_anything.utils.amg import rle_to_mask

        rgb = to_uint8_rgb(image)
        key = self.key(rgb)
        records = self._ensure(key, rgb)
        if records is None:
            records = json.loads(self._path(key).read_text())
        self.stats["proposals"] += len(records)
        if not records:
            return np.zeros((0, *rgb.shape[:2]), bool)
        return np.stack([rle_to_mask(r["segmentation"]).astype(bool) for r in records])

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def _ensure(self, key: str, rgb: np.ndarray) -> list[dict[str, Any]] | None:
        """Make sure ``key``'s entry is on disk: the records when computed here now, None when it was there
        (written by another run or process; the caller reads it only if it needs it). Each key counts once
        in the stats: ``computed`` here, or a ``hits``."""
        from ..benchmark.records.store import atomic_write_text  # one home of atomic writes

        path = self._path(key)
        if path.exists():
            if key not in self._seen:
                self.stats["hits"] += 1
            self._seen.add(key)
            return None
        t0 = time.time()
        with torch.no_grad():
            found = self.generator.generate(rgb)
        records = [{"segmentation": r["segmentation"], "predicted_iou": float(r["predicted_iou"]),
                    "stability_score": float(r["stability_score"])} for r in found]
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(records))
        self.stats["computed"] += 1
        self.stats["seconds"] += time.time() - t0
        self._seen.add(key)
        return records

    def provenance(self) -> dict[str, Any]:
        out = dict(self.stats)
        out["seconds"] = round(out["seconds"], 2)
        return {"settings": asdict(self.settings), "points_per_batch": self.points_per_batch,
                "postprocess": "direct resize" if self.direct_resize else "sam", **out}
