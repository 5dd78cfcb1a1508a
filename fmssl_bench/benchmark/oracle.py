"""Oracle zero-shot evaluation of a promptable foundation model (``sam_zero_shot``).

The seed papers' zero-shot rows (SemiSAM Table I "SAM (N points)", "SAM-Med3D (k points)"; SFR
Tables XIV-XV "SAM 2 (k clicks)") prompt a generalist with prompts derived from the *test
reference*. That is an upper bound on what prompting can give, not a method that could be
trained or deployed, so it lives on the evaluator side: it holds a :class:`TestView` (labels of
test cases only, never of train cases), makes prompts from those labels, segments and scores
exactly like a trained method, and writes an ordinary run record marked ``oracle: true`` (the
leaderboard shows ``[oracle]``).

Prompt recipe (:func:`oracle_prompts`), per 2D image or per slice along the last axis of a volume,
per foreground class present there:

- ``box``: one box per 8-connected component of the class (SAM/MedSAM convention: one box per
  object; a single box around several polyps would also cover the gap between them). The
  class's probability is the pixel-wise maximum over its components' masks.
- ``points``: ``n_points`` positive clicks drawn uniformly, without replacement, from all of the
  class's pixels, given to the model as one prompt.

The model's single-mask output is used for every prompt (SAM's best-of-three "multimask" output
for one click scored lower on Kvasir: 41 vs 55 Dice, MobileSAM, 20 images). Probabilities are
thresholded at 0.5; where several classes pass, the highest probability wins.
Images or slices where the reference has no foreground get no prompt and an empty prediction.
Every slice that has foreground gets its own oracle prompt, so no propagation is involved.
Point sampling is seeded per (seed, case, class), independent of which other cases are run.

The ``points`` mode is the recipe of 001 Table I "SAM (kN points)"; ``clicks`` (iterative
corrective clicks with mask feedback) and ``keyframes`` (clicks on every k-th slice, propagated)
reproduce the other zero-shot tables: :mod:`.oracle_modes`. Each record names the table its
recipe follows (``oracle_recipe`` in the summary), which the leaderboard prints.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .. import paths
from ..datasets import build_dataset, dataset_class
from ..errors import ConfigError
from ..foundation import EmbeddingCache, Generalist, Prompts, build_generalist, get_spec, normalise_intensities
from .records import store as records
from .evaluation.predictions import save_prediction
from .evaluation.scoring import score_predictions, summarise, write_per_case
from .protocol import load_protocol
from .oracle_modes import RECIPES, predict_keyframes, segment_with_clicks
from .records.identity import run_identity, split_identity
from .runner import resolve_data_root, resolve_device
from .splits import resolve_split
from .views import TestView, progress_bar

METHOD = "sam_zero_shot"
PROMPT_MODES = ("box", "points", "clicks", "keyframes")
#: modes whose prompts are clicks (refused for box-only generalists)
CLICK_MODES = frozenset({"points", "clicks", "keyframes"})
THRESHOLD = 0.5
SLICE_AXIS = -1  # 3D: slices along the last spatial axis (the papers' axial slices for LA)
#: generalists trained on box prompts only; points give empty masks, so an oracle row would be meaningless
BOX_ONLY = frozenset({"litemedsam"})
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def oracle_prompts(ref2d: np.ndarray, label: int, mode: str = "box", n_points: int = 1,
                   rng: np.random.Generator | None = None) -> list[Prompts] | None:
    """Prompts for one class of a 2D reference: one per object (box) or one with ``n_points`` clicks.

    Returns ``None`` when the class is absent. Boxes are ``x0, y0, x1, y1`` inclusive pixel
    indices of each 8-connected component; points are ``(x, y)`` = (column, row).
    """
    _check_prompt(mode, n_points)
    mask = np.asarray(ref2d) == label
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D reference, got shape {mask.shape}")
    if not mask.any():
        return None
    if mode == "box":
        components, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        return [Prompts(box=[sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1])
                for sl in ndimage.find_objects(components)]
    rng = rng if rng is not None else np.random.default_rng(0)
    rows, cols = np.nonzero(mask)
    chosen = rng.choice(rows.size, size=min(n_points, rows.size), replace=False)
    return [Prompts(points=np.stack([cols[chosen], rows[chosen]], axis=1))]


def _check_prompt(mode: str, n_points: int, n_clicks: int = 1, every: int = 1) -> None:
    if mode not in PROMPT_MODES:
        raise ConfigError(f"--prompt {mode!r}: expected one of {', '.join(PROMPT_MODES)}")
    if mode in ("points", "keyframes") and n_points < 1:
        raise ConfigError(f"--points/--per-slice {n_points}: expected at least 1 point")
    if mode == "clicks" and n_clicks < 1:
        raise ConfigError(f"--clicks {n_clicks}: expected at least 1 click")
    if mode == "keyframes" and every < 1:
        raise ConfigError(f"--every {every}: expected at least 1 (a key frame every N slices)")


def oracle_recipe(mode: str, n_points: int, n_clicks: int, every: int) -> str:
    """The seed table a mode reproduces, with its count (empty for ``box``, the harness's own)."""
    if mode not in RECIPES:
        return ""
    return RECIPES[mode].describe({"points": n_points, "clicks": n_clicks, "keyframes": every}[mode])


def segment_with_oracle(generalist: Generalist, image01: np.ndarray, ref2d: np.ndarray, n_classes: int,
                        mode: str, n_points: int, rngs: dict[int, np.random.Generator]) -> tuple[np.ndarray, int]:
    """Label map (H, W) of one normalised ``(3, H, W)`` image and the number of prompts used.

    The image is encoded once (only if some class is present); all classes' prompts go through
    the decoder together.
    """
    prompts: list[Prompts] = []
    owners: list[int] = []
    for label in range(1, n_classes):
        found = oracle_prompts(ref2d, label, mode, n_points, rngs[label])
        for p in found or []:
            prompts.append(p)
            owners.append(label)
    pred = np.zeros(ref2d.shape, dtype=np.uint8)
    if not prompts:
        return pred, 0
    probs = generalist.segment(generalist.encode_normalised(image01), prompts)
    best = np.zeros(ref2d.shape, dtype=np.float32)
    owners_arr = np.asarray(owners)
    for label in np.unique(owners_arr):
        prob = probs[owners_arr == label].max(axis=0)
        take = (prob > THRESHOLD) & (prob > best)
        pred[take] = label
        best[take] = prob[take]
    return pred, len(prompts)


def predict_case(generalist: Generalist, image: np.ndarray, ref: np.ndarray, n_classes: int, mode: str,
                 n_points: int, rngs: dict[int, np.random.Generator], n_clicks: int = 1,
                 every: int = 1) -> tuple[np.ndarray, int, int]:
    """Oracle prediction of one case (2D image or 3D volume): (labels, prompts used, images encoded).

    ``keyframes``: images encoded = the generalist's encoder calls and cache hits of the case.
    """
    if mode == "keyframes":
        if ref.ndim != 3:
            raise ConfigError("--prompt keyframes: key frames are slices of a volume; expected a 3D data set")
        stats = getattr(generalist, "stats", None)
        before = 0 if stats is None else stats.encoder_calls + stats.cache_hits
        pred, n = predict_keyframes(generalist, image, ref, n_classes, every, n_points, rngs)
        return pred, n, 0 if stats is None else stats.encoder_calls + stats.cache_hits - before
    image01 = normalise_intensities(image)  # a volume is normalised once as a whole (segment_volume's recipe)

    def one(img01: np.ndarray, ref2d: np.ndarray) -> tuple[np.ndarray, int]:
        if mode == "clicks":
            return segment_with_clicks(generalist, img01, ref2d, n_classes, n_clicks, rngs)
        return segment_with_oracle(generalist, img01, ref2d, n_classes, mode, n_points, rngs)

    if ref.ndim == 2:
        pred, n = one(image01, ref)
        return pred, n, int(n > 0)
    pred = np.zeros(ref.shape, dtype=np.uint8)
    n_prompts = n_images = 0
    for k in np.flatnonzero(ref.reshape(-1, ref.shape[-1]).any(axis=0)):  # slices along SLICE_AXIS = -1
        slice01 = np.ascontiguousarray(image01[..., k])
        pred[..., k], n = one(slice01, ref[..., k])
        n_prompts += n
        n_images += int(n > 0)
    return pred, n_prompts, n_images


def budget_text(generalist: Generalist, prompt: str, n_points: int, explicit_checkpoint: bool,
                n_cases: int, n_test: int, n_clicks: int = 1, every: int = 1) -> str:
    """What keys the record besides protocol and seed: prompt, generalist, non-official weights, subset."""
    recipe = {"box": "box", "points": f"{n_points}pt", "clicks": f"{n_clicks}clicks",
              "keyframes": f"every{every}-{n_points}pt"}[prompt]
    text = f"oracle-{recipe}-{generalist.name}"
    if explicit_checkpoint and generalist.weights_sha256 != get_spec(generalist.name).sha256:
        text += f"-w{(generalist.weights_sha256 or 'unknown')[:8]}"
    if n_cases < n_test:
        text += f"-first{n_cases}"
    return text


def run_oracle(generalist: str, dataset: str, data_root: str | Path | None = None, prompt: str = "box",
               n_points: int = 1, protocol: str | None = None, out: str | Path | None = None,
               checkpoint: str | Path | None = None, max_cases: int | None = None, seed: int = 0,
               force: bool = False, progress: bool = True, device: str = "auto",
               dataset_options: dict[str, Any] | None = None, cache_dir: str | Path | None = None,
               n_clicks: int = 5, every: int = 5) -> dict[str, Any]:
    """Oracle-prompted zero-shot evaluation of ``generalist`` on the test split; returns the summary.

    Everything is resolved (names, data, split, weights, test cases) before the record directory
    is created; a complete record is reused unless ``force``. ``max_cases`` keeps the first N test
    cases of the split (for CPU smoke runs; the subset is part of the record key). ``cache_dir``
    keeps image embeddings on disk, so box and point runs on the same images encode them once.
    """
    _check_prompt(prompt, n_points, n_clicks, every)
    get_spec(generalist)  # an unknown name fails before the split file is written
    if prompt in CLICK_MODES and generalist in BOX_ONLY:
        raise ConfigError(f"--generalist {generalist} was trained on box prompts only (points give empty masks); "
                          f"--prompt {prompt} clicks: use --prompt box or a SAM/MobileSAM generalist")
    if max_cases is not None and max_cases < 1:
        raise ConfigError(f"--max-cases {max_cases}: expected at least 1")
    cls = dataset_class(dataset)
    if prompt == "keyframes" and cls.ndim != 3:
        raise ConfigError(f"--prompt keyframes: key frames are slices of a volume; dataset {dataset!r} is {cls.ndim}D")
    proto = load_protocol(protocol or cls.default_protocol)
    if proto.ndim != cls.ndim:
        raise ConfigError(f"--protocol {proto.name}: a {proto.ndim}D protocol; dataset {dataset!r} is {cls.ndim}D")
    adapter = build_dataset(dataset, resolve_data_root(dataset, None if data_root is None else str(data_root)),
                            **(dataset_options or {}))
    root = Path(out) if out else paths.results_root()
    split = resolve_split(adapter, root / "splits")
    test_ids = list(split.test)[:max_cases] if max_cases else list(split.test)
    torch_device = resolve_device(device)
    # each image is encoded once per run: an in-memory embedding cache would only hold memory
    cache = EmbeddingCache(directory=cache_dir, max_items=0)
    fm = build_generalist(generalist, checkpoint=checkpoint, device=str(torch_device), cache=cache)
    labeled = budget_text(fm, prompt, n_points, checkpoint is not None, len(test_ids), len(split.test), n_clicks, every)
    method_args = {"generalist": fm.name, "prompt": prompt,
                   "n_points": n_points if prompt in ("points", "keyframes") else None,
                   "box": "one per 8-connected component" if prompt == "box" else None,
                   "multimask": False, "threshold": THRESHOLD, "slice_axis": SLICE_AXIS if cls.ndim == 3 else None}
    if prompt == "clicks":  # keys of the new modes only: the box and points records keep their identities
        method_args.update(n_clicks=n_clicks, click_rule="largest error, deeper than half its depth", mask_feedback=True)
    if prompt == "keyframes":
        method_args.update(every=every, propagation="segment_volume")
    recipe = oracle_recipe(prompt, n_points, n_clicks, every)
    identity = run_identity(
        dataset=dataset, dataset_options=dataset_options or {}, method=METHOD, method_args=method_args,
        protocol=proto.to_dict(), overrides={"max_cases": max_cases}, split=split_identity([], [], test_ids),
        generalists={fm.name: fm.weights_sha256}, seed=seed, budget=labeled)
    record = records.Record.locate(root, dataset, METHOD, labeled, seed, identity)
    if record.complete and not force:
        return record.summary()
    test_view = TestView(adapter, test_ids, preload=True)  # bad test data fails before anything is written
    with record.lock():  # one process computes a record; the others wait, then find it complete
        if force:
            record.reset()
        elif record.complete:
            return record.summary()
        generalist_info = {"name": fm.name, "checkpoint": fm.checkpoint, "weights_sha256": fm.weights_sha256}
        config = {
            "method": METHOD, "oracle": True, "dataset": dataset, "data_root": str(adapter.root),
            "dataset_options": dataset_options or {}, "labeled": labeled, "seed": seed, "protocol": proto.name,
            "protocol_resolved": proto.to_dict(), "device": str(torch_device), "generalist": generalist_info,
            "method_args": method_args, "max_cases": max_cases, "n_test_split": len(split.test),
        }
        split.persist()
        record.begin(config, {"source": split.source, "labeled": [], "unlabeled": [], "test": test_ids})

        items, n_prompts, n_images = [], 0, 0
        t0 = time.time()
        bar = progress_bar(progress, test_view, total=len(test_view), desc=f"oracle {fm.name}", unit="case",
                           every=max(1, len(test_view) // 10))
        for case in bar:
            crc = zlib.crc32(case.case_id.encode())
            rngs = {c: np.random.default_rng([seed, crc, c]) for c in range(1, len(adapter.classes))}
            pred, n, m = predict_case(fm, case.image, case.label, len(adapter.classes), prompt, n_points, rngs,
                                      n_clicks, every)
            items.append((case.case_id, pred, case.label, case.spacing))
            n_prompts, n_images = n_prompts + n, n_images + m
        segment_seconds = time.time() - t0
        t0 = time.time()
        rows = score_predictions(items, adapter.classes, proto)
        score_seconds = time.time() - t0
        write_per_case(record.path("per_case.csv"), rows)
        for case_id, pred, _, spacing in items:
            save_prediction(record.predictions_dir, case_id, pred, spacing, cls.ndim)
        provenance = {
            **records.environment(fm.device),
            "segment_seconds": round(segment_seconds, 2),
            "score_seconds": round(score_seconds, 2),
            "eval_seconds": round(segment_seconds + score_seconds, 2),
            "protocol_source": proto.source,
            "split_source": split.source,
            "generalist": {**generalist_info, "device": str(fm.device), "stats": fm.stats.to_dict()},
            "prompts": n_prompts,
            "images_encoded": n_images,
        }
        summary = summarise(rows, config, n_labeled=0, n_unlabeled=0, n_test=len(test_ids), oracle=True, external=False,
                            **({"oracle_recipe": recipe} if recipe else {}))
        return record.finish(provenance, summary)
