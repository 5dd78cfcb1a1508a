"""Builders of small on-disk data sets in the real formats (UA-MT h5 layout, image/mask folders)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from fmssl_bench.datasets.synthetic import synthetic_case


def make_la(root: Path, n_train: int = 6, n_test: int = 2, shape=(40, 36, 24), unlabeled_without_label: int = 0) -> Path:
    """A tiny data set in the exact UA-MT LA layout (blob volumes, labels 0/1)."""
    ids = [f"CASE{i:03d}" for i in range(n_train + n_test)]
    for k, case_id in enumerate(ids):
        image, label = synthetic_case(shape, seed=3, index=k)
        folder = root / "2018LA_Seg_Training Set" / case_id
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / "mri_norm2.h5", "w") as f:
            f["image"] = image[0]
            skip = n_train - unlabeled_without_label <= k < n_train
            if not skip:
                f["label"] = (label > 0).astype(np.uint8)
    (root / "train.list").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "test.list").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def make_folder2d(root: Path, n: int = 24, without_mask: int = 0, shape=(48, 56)) -> Path:
    """images/ + masks/ PNGs; the last ``without_mask`` images have no mask (unlabeled-only cases)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        image, label = synthetic_case(shape, seed=5, index=k)
        gray = np.clip((image[0] - image.min()) / (np.ptp(image) + 1e-6) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([gray] * 3, -1)).save(root / "images" / f"img{k:03d}.png")
        if k < n - without_mask:
            Image.fromarray(((label > 0) * 255).astype(np.uint8)).save(root / "masks" / f"img{k:03d}.png")
    return root


def kill_after_checkpoint(proc, root: Path, name: str, min_iteration: int, timeout: float = 240) -> tuple[Path, int]:
    """SIGKILL ``proc`` once ``root/**/<name>`` holds an iteration >= ``min_iteration``; (path, iteration)."""
    import signal
    import time

    import torch

    deadline, ckpt = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        found = list(Path(root).glob(f"**/{name}"))
        if found:
            try:
                if torch.load(found[0], weights_only=True)["iteration"] >= min_iteration:
                    ckpt = found[0]
                    break
            except Exception:  # being replaced at this moment (atomic rename): look again
                pass
        time.sleep(0.1)
    assert ckpt is not None, f"no {name} with iteration >= {min_iteration} appeared before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ckpt, int(torch.load(ckpt, weights_only=True)["iteration"])


def tiny_sam(seed: int = 0) -> "torch.nn.Module":
    """segment_anything's real Sam (tests only) with a 2-block ViT encoder (128 px, dim 32), random init."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    dim, size, patch = 32, 128, 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=size, patch_size=patch, embed_dim=dim, depth=2, num_heads=2, mlp_ratio=2.0,
            out_chans=dim, qkv_bias=True, use_rel_pos=True, window_size=4, global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(size // patch, size // patch),
            input_image_size=(size, size), mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def tiny_method(cls, ndim: int, run_dir: Path, *, total: int = 40, n_classes: int = 3, protocol: str | None = None,
                **args):
    """A method on a real RunContext of the synthetic protocol of ``ndim`` (tiny real networks), set up.

    Only what ``training_step`` reads is filled: no data views (a step gets its batch from
    :func:`synthetic_batch`), the stage ``train`` of length ``total`` (what ramps read).
    """
    import torch

    from fmssl_bench.benchmark.protocol import load_protocol
    from fmssl_bench.benchmark.training.context import RunContext
    from fmssl_bench.benchmark.training.loop import StageState

    proto = load_protocol(protocol or f"synthetic-{ndim}d")
    ctx = RunContext(proto, labeled=None, unlabeled=None, n_classes=n_classes, in_channels=1, seed=0, run_dir=run_dir)
    ctx.stage = StageState("train", proto.train, total)
    torch.manual_seed(0)
    cls.check({**cls.defaults, **args}, proto)  # as the runner does before a record begins
    method = cls(ctx, **{**cls.defaults, **args})
    method.setup()
    return method


def synthetic_batch(ndim: int, n_l: int = 2, n_u: int = 2, size: int = 32, seed: int = 0, n_classes: int = 3):
    """A fixed batch of synthetic blob images with their labels (labeled part first)."""
    import torch

    from fmssl_bench.api import Batch

    shape = (size,) * ndim
    images, labels = [], []
    for k in range(n_l + n_u):
        image, label = synthetic_case(shape, seed=seed, index=k)
        images.append(torch.from_numpy(np.ascontiguousarray(image)).float())
        labels.append(torch.from_numpy(np.minimum(label, n_classes - 1).astype(np.int64)))
    images_t = torch.stack(images)
    return Batch(images_t[:n_l], torch.stack(labels[:n_l]), images_t[n_l:] if n_u else None,
                 [f"l{k}" for k in range(n_l)], [f"u{k}" for k in range(n_u)])


def losses_after_steps(method, batch, steps: int = 8, lr: float = 0.01) -> list[float]:
    """The loss of ``steps`` SGD steps on one fixed batch (``method.trainable()``), after_step hooks run."""
    import torch

    params = method.trainable()
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    out = []
    for it in range(steps):
        opt.zero_grad()
        step = method.training_step(batch, it)
        step.loss.backward()
        opt.step()
        method.after_step(it)
        out.append(float(step.loss.detach()))
    return out
