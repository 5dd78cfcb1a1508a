"""Trainable generalists: a fine-tunable copy of a SAM-family model (LoRA encoder + decoder).

Methods that adapt the generalist to the target data (SAMed, CPC-SAM-style co-training,
pseudo-label refinement with a fine-tuned SAM) need a copy that trains while the frozen original
keeps serving prompts. :func:`make_trainable` builds it: a deep copy of the SAM model, all
frozen, LoRA on the image encoder's attention, the mask decoder trainable, optionally a learned
dense prompt for promptless (semantic) segmentation.

Why a hand-written LoRA and not ``peft``: ``peft`` pulls in transformers / accelerate /
huggingface-hub code for what is ~40 lines here, and it adapts whole ``nn.Linear`` modules picked
by name, while every image encoder of this family computes q, k and v with ONE fused ``qkv``
``nn.Linear``: targeting it would adapt k too. "LoRA on q and v" (SAMed) needs a wrapper of the
fused projection that updates the q and v output channels only, so we would write it anyway.

Where q and v sit in the fused output (verified on the built models):

- SAM ViT (``segment_anything`` ``ImageEncoderViT``, ``blocks[i].attn.qkv``, ``dim -> 3*dim``):
  blocked, ``reshape(B, N, 3, heads, -1)``: ``[q (all heads) | k | v]``.
- TinyViT of MobileSAM and LiteMedSAM (``layers[i].blocks[j].attn.qkv``, 10 modules, e.g.
  ``128 -> 384``): per head, ``view(B, N, heads, -1).split([key_dim, key_dim, d])``:
  ``[q_0 k_0 v_0 | q_1 k_1 v_1 | ...]``, so "the first third" would be wrong there.

Frozen means eval mode: TinyViT is full of BatchNorm. In train mode its running statistics
would drift, changing the "frozen" encoder without touching a trained tensor (and so without
changing the cache identity). :meth:`TrainableGeneralist.train` therefore keeps the image and
prompt encoders in eval mode; only the decoder (which has no BatchNorm or dropout) follows it.

Weights version: :meth:`TrainableGeneralist.weights_version` and ``encoder_version`` are
content hashes of the trained tensors, recomputed on every call (no ``mark_updated`` to forget;
tensor version counters were rejected because fused AdamW and ``.data`` writes do not bump them).
The embedding cache key of :meth:`TrainableGeneralist.as_generalist` includes
``encoder_version`` (a hash of the trained encoder tensors, i.e. LoRA: 29,696 values = 0.12 MB
for LiteMedSAM at rank 4, cheaper than hashing the image for the key), so an embedding computed
by other encoder weights can never be served, while decoder-only fine-tuning (``lora_rank=0``)
keeps sharing the frozen original's embeddings. Being content hashes, they also stay valid
across processes and resumed runs. The trained set is fixed when the copy is made (plus any
parameter unfrozen by hand later), so freezing LoRA for a later phase keeps it in the hash.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Embedding, Prompts, tensors_sha256
from .cache import EmbeddingCache
from .sam import SamGeneralist, low_res_to_original, sam_decode_logits, sam_preprocess

VERSION_CHARS = 16


class LoRAQKV(nn.Module):
    """A frozen fused ``qkv`` Linear plus low-rank updates of its q and v outputs (k untouched).

    ``out[q] = base(x)[q] + scale * B_q A_q x``, ``out[v] = base(x)[v] + scale * B_v A_v x``,
    ``out[k] = base(x)[k]``, with ``A`` (rank x in) kaiming-uniform and ``B`` (out x rank) zero, so
    the wrapped layer starts exactly equal to the base; ``scale = alpha / rank`` (default
    ``alpha = rank``: scale 1, as in SAMed). The fused output is ``heads`` groups of
    ``split = (q, k, v)`` channels: ``heads=1`` with equal thirds for SAM ViT, ``num_heads`` with
    ``(key_dim, key_dim, d)`` for TinyViT.
    """

    def __init__(
        self,
        qkv: nn.Linear,
        rank: int,
        alpha: float | None = None,
        *,
        heads: int = 1,
        split: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        if split is None:
            if qkv.out_features % 3:
                raise ValueError(f"fused qkv output {qkv.out_features} is not divisible by 3")
            split = (qkv.out_features // 3,) * 3
        group = sum(split)
        if heads * group != qkv.out_features:
            raise ValueError(f"{heads} heads x {split} != qkv output {qkv.out_features}")
        self.base = qkv
        self.base.requires_grad_(False)
        self.rank = rank
        self.scale = (rank if alpha is None else alpha) / rank
        starts = torch.arange(heads) * group
        q_index = (starts[:, None] + torch.arange(split[0])).reshape(-1)
        v_index = (starts[:, None] + split[0] + split[1] + torch.arange(split[2])).reshape(-1)
        self.register_buffer("q_index", q_index, persistent=False)
        self.register_buffer("v_index", v_index, persistent=False)
        factory = dict(device=qkv.weight.device, dtype=qkv.weight.dtype)
        self.lora_a_q = nn.Parameter(torch.empty(rank, qkv.in_features, **factory))
        self.lora_b_q = nn.Parameter(torch.zeros(len(q_index), rank, **factory))
        self.lora_a_v = nn.Parameter(torch.empty(rank, qkv.in_features, **factory))
        self.lora_b_v = nn.Parameter(torch.zeros(len(v_index), rank, **factory))
        for a in (self.lora_a_q, self.lora_a_v):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's (and LoRA's) init

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """``scale * B A`` as an ``(out, in)`` matrix whose k rows are exactly zero."""
        r = self.rank
        b = self.lora_b_q.new_zeros(self.out_features, 2 * r)
        b = b.index_copy(0, self.q_index, F.pad(self.lora_b_q, (0, r)))
        b = b.index_copy(0, self.v_index, F.pad(self.lora_b_v, (r, 0)))
        return (b @ torch.cat([self.lora_a_q, self.lora_a_v])) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one Linear with the merged weight: ~the base layer's cost (adding B(Ax) to the fused
        # output by index_add measured 2-3x slower on CPU); B = 0 gives exactly the base output
        return F.linear(x, self.base.weight + self.delta_weight(), self.base.bias)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale}, q={len(self.q_index)}, v={len(self.v_index)}"


def qkv_layout(attention: nn.Module) -> tuple[int, tuple[int, int, int] | None]:
    """(heads, split) of an attention module's fused ``qkv`` output (see :class:`LoRAQKV`)."""
    if all(hasattr(attention, a) for a in ("num_heads", "key_dim", "d")):  # TinyViT
        return int(attention.num_heads), (int(attention.key_dim), int(attention.key_dim), int(attention.d))
    return 1, None  # SAM ViT (and sam2 Hiera): [q | k | v]


def inject_lora(image_encoder: nn.Module, rank: int, alpha: float | None = None) -> int:
    """Replace every attention ``qkv`` Linear in ``image_encoder`` by a :class:`LoRAQKV`.

    Returns how many were wrapped; a ``ValueError`` when there is none (not a SAM-family
    encoder, or already wrapped).
    """
    attentions = [m for m in image_encoder.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]
    if not attentions:
        raise ValueError(
            f"no attention module with a fused `qkv` nn.Linear in {type(image_encoder).__name__} "
            "(not a SAM-family image encoder, or LoRA already injected)"
        )
    for attention in attentions:
        heads, split = qkv_layout(attention)
        attention.qkv = LoRAQKV(attention.qkv, rank, alpha, heads=heads, split=split)
    return len(attentions)


class TrainableGeneralist(nn.Module):
    """A fine-tunable copy of a :class:`SamGeneralist` (build it with :func:`make_trainable`).

    :meth:`forward` is differentiable end to end (input recipe -> LoRA encoder -> decoder) and
    returns logits at the input resolution: ``(B, 1, H, W)`` with one prompt per image, or
    ``(B, n_classes - 1, H, W)`` promptless (one sigmoid map per foreground class). For a
    softmax over ``n_classes``, prepend a zero background logit (with two classes that softmax
    is exactly the sigmoid).
    """

    def __init__(
        self,
        generalist: SamGeneralist,
        lora_rank: int = 4,
        train_decoder: bool = True,
        promptless: bool = False,
        n_classes: int = 2,
        lora_alpha: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(generalist, SamGeneralist):
            raise TypeError(f"make_trainable needs a SamGeneralist, got {type(generalist).__name__}")
        if promptless and n_classes < 2:
            raise ValueError(f"promptless segmentation needs n_classes >= 2, got {n_classes}")
        self.source = generalist  # read only: its model is never modified (we train a deep copy)
        self.recipe = generalist.recipe
        self.img_size = generalist.img_size
        self.lora_rank = lora_rank
        self.promptless = promptless
        self.n_classes = n_classes
        self.sam = copy.deepcopy(generalist.model)
        self.sam.requires_grad_(False)
        self.lora_modules = inject_lora(self.sam.image_encoder, lora_rank, lora_alpha) if lora_rank > 0 else 0
        if train_decoder:
            self.sam.mask_decoder.requires_grad_(True)
        self.dense_prompt: nn.Parameter | None = None
        if promptless:
            # SAMed: no sparse prompt; one learned dense embedding per foreground class, started
            # at SAM's "no mask" embedding so the first forward is SAM without any prompt
            prompt_encoder = self.sam.prompt_encoder
            h, w = prompt_encoder.image_embedding_size
            no_mask = prompt_encoder.no_mask_embed.weight.detach().reshape(1, -1, 1, 1)
            self.dense_prompt = nn.Parameter(no_mask.expand(n_classes - 1, -1, h, w).clone())
        # the trained set, fixed here: freezing a LoRA tensor later must not drop it from the
        # versions (its values still differ from the source's encoder)
        self._trained = frozenset(n for n, p in self.named_parameters() if p.requires_grad)
        self._generalist: TrainedSamGeneralist | None = None
        self.to(generalist.device)
        self.train()

    @property
    def device(self) -> torch.device:
        return self.source.device

    def train(self, mode: bool = True) -> TrainableGeneralist:
        """Train mode for the decoder only: the frozen encoders stay in eval (BatchNorm, drop path)."""
        super().train(mode)
        self.sam.image_encoder.eval()
        self.sam.prompt_encoder.eval()
        return self

    # ----------------------------------------------------------------- forward
    def forward(
        self, images01: torch.Tensor, prompts: Prompts | Sequence[Prompts] | None = None
    ) -> torch.Tensor:
        """``(B, 3, H, W)`` images in [0, 1] (see ``normalise_intensities``) -> logits at (H, W).

        ``prompts``: one :class:`Prompts` per image (coordinates of the input images) -> ``(B, 1,
        H, W)``; ``None`` needs ``promptless=True`` -> ``(B, n_classes - 1, H, W)``.
        """
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(images01.shape)}")
        if prompts is None and self.dense_prompt is None:
            raise ValueError("no prompts given and this copy was not made with promptless=True")
        if isinstance(prompts, Prompts):
            prompts = [prompts]
        if prompts is not None and len(prompts) != images01.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {images01.shape[0]} images (one per image)")
        original = (int(images01.shape[-2]), int(images01.shape[-1]))
        x, size = sam_preprocess(images01, self.img_size, self.recipe)
        features = self.sam.image_encoder(x)
        out = []
        for i in range(features.shape[0]):  # SAM's decoder takes one image with its K prompts
            embedding = Embedding({"image_embed": features[i : i + 1]}, original, size)
            if prompts is None:
                out.append(self._promptless_logits(embedding)[:, 0])
            else:
                if prompts[i].is_empty():
                    raise ValueError(f"prompt {i} is empty")
                out.append(sam_decode_logits(self.sam, self.img_size, embedding, [prompts[i]], False)[:, 0])
        return torch.stack(out)

    def _promptless_logits(self, embedding: Embedding) -> torch.Tensor:
        dense = self.dense_prompt
        image_embed = embedding.features["image_embed"]
        sparse = torch.empty((dense.shape[0], 0, dense.shape[1]), device=dense.device, dtype=dense.dtype)
        low_res, _ = self.sam.mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low_res_to_original(low_res, embedding, self.img_size)

    # ----------------------------------------------------------------- trained state
    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser gets: LoRA A/B, the decoder (``train_decoder``), the dense prompt."""
        return [p for _, p in self._trainable_named()]

    def _trainable_named(self, prefix: str = "") -> list[tuple[str, nn.Parameter]]:
        """The trained set of :meth:`__init__` plus anything unfrozen by hand since."""
        named = self.named_parameters()
        return [(prefix + n, p) for n, p in named if n in self._trained or p.requires_grad]

    def state_dict(
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, torch.Tensor]:
        """Only what is trained (LoRA A/B, decoder, dense prompt): the rest is the source's checkpoint."""
        if args:
            raise TypeError("TrainableGeneralist.state_dict takes keyword arguments only")
        out = OrderedDict() if destination is None else destination
        for name, p in self._trainable_named(prefix):
            out[name] = p if keep_vars else p.detach()
        return out

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`state_dict` (strict: same names and shapes)."""
        own = dict(self._trainable_named())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shapes:
            raise ValueError(
                f"trainable state does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                f"shape mismatches {shapes[:3]}"
            )
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name])

    def weights_version(self) -> str:
        """Content hash of all trained tensors (changes whenever any trained weight changes)."""
        return tensors_sha256(self._trainable_named())[:VERSION_CHARS]

    def encoder_version(self) -> str:
        """Content hash of the image encoder's trained tensors ('' without LoRA): the embedding identity."""
        named = [(n, p) for n, p in self._trainable_named() if n.startswith("sam.image_encoder.")]
        if not named:
            return ""
        # one device->host copy, then hash (cheap: LoRA tensors only)
        flat = torch.cat([p.detach().reshape(-1) for _, p in named]).cpu()
        layout = "|".join(f"{n}:{tuple(p.shape)}" for n, p in named)
        return tensors_sha256([(layout, flat)])[:VERSION_CHARS]

    # ----------------------------------------------------------------- generalist view
    def as_generalist(self, cache: EmbeddingCache | None = None) -> TrainedSamGeneralist:
        """The copy behind the :class:`Generalist` interface (encode / segment / segment_volume),
        sharing its modules (so it always uses the current weights) and, by default, the
        source's embedding cache. Created once; later calls return the same object (and stats)
        unless another ``cache`` is given.
        """
        if self._generalist is None or (cache is not None and cache is not self._generalist.cache):
            self._generalist = TrainedSamGeneralist(self, cache if cache is not None else self.source.cache)
        return self._generalist


class TrainedSamGeneralist(SamGeneralist):
    """:class:`SamGeneralist` over a :class:`TrainableGeneralist`'s current weights.

    Named ``<source>+trained``. Cache identity = the source's identity + the LoRA
    ``encoder_version`` (never the memoised state-dict fingerprint of :class:`Generalist`, which
    would go stale as the copy trains); without LoRA it is the source's identity, so both share
    cache entries.
    """

    def __init__(self, owner: TrainableGeneralist, cache: EmbeddingCache) -> None:
        source = owner.source
        was_training = owner.training
        super().__init__(
            f"{source.name}+trained",
            owner.sam,
            source.recipe,
            device=source.device,
            weights_sha256=source.weights_sha256,
            checkpoint=source.checkpoint,
            cache=cache,
        )
        owner.train(was_training)  # SamGeneralist.__init__ put the shared modules in eval mode
        self.owner = owner

    def __repr__(self) -> str:
        return f"TrainedSamGeneralist(source={self.owner.source!r}, lora_rank={self.owner.lora_rank})"

    def _cache_identity(self) -> str:
        version = self.owner.encoder_version()
        source = self.owner.source._cache_identity()
        return source if not version else f"{source}|encoder:{version}"


def make_trainable(
    generalist: SamGeneralist,
    lora_rank: int = 4,
    train_decoder: bool = True,
    promptless: bool = False,
    n_classes: int = 2,
    lora_alpha: float | None = None,
) -> TrainableGeneralist:
    """A fine-tunable deep copy of ``generalist`` (which stays frozen and untouched).

    ``lora_rank`` 0 means no LoRA (decoder-only fine-tuning, embeddings shared with the source).
    """
    return TrainableGeneralist(generalist, lora_rank, train_decoder, promptless, n_classes, lora_alpha)


__all__ = [
    "LoRAQKV",
    "TrainableGeneralist",
    "TrainedSamGeneralist",
    "inject_lora",
    "make_trainable",
    "qkv_layout",
]
