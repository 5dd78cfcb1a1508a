"""The one training loop every method runs through.

It owns what is the same for all methods: the two-stream batches, augmentation, optimiser and
learning-rate schedule from the protocol, per-iteration seeding, progress bar, training log,
periodic checkpoints and resuming. A method contributes ``training_step`` (and optionally
``after_step``); multi-stage methods call :meth:`RunContext.train` once per stage.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, FmsslError
from ..methods.nets import build_net
from .augment import KNOWN_AUGMENTATIONS, Transform, augment, stream_indices
from .protocol import Protocol, TrainConfig
from .records import atomic_torch_save, atomic_write_text
from .views import LabeledView, UnlabeledView, progress_bar

if TYPE_CHECKING:  # pragma: no cover
    from ..methods.base import Method


@dataclass
class Batch:
    """One training batch, already on the device."""

    image_l: torch.Tensor
    label_l: torch.Tensor
    image_u: torch.Tensor | None
    ids_l: list[str]
    ids_u: list[str]
    transforms_l: list[Transform] = field(default_factory=list)
    transforms_u: list[Transform] = field(default_factory=list)
    """How each sample was cut from its case (see :class:`~fmssl_bench.benchmark.augment.Transform`)."""

    @property
    def images(self) -> torch.Tensor:
        """Labeled then unlabeled images, the order UA-MT's loss indexing assumes."""
        return self.image_l if self.image_u is None else torch.cat([self.image_l, self.image_u])


def learning_rate(cfg: TrainConfig, iteration: int, total: int) -> float:
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (iteration // cfg.step_size)
    if cfg.schedule == "poly":
        return cfg.lr * (1.0 - iteration / total) ** cfg.poly_power
    return cfg.lr


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"train.optimizer {cfg.optimizer!r}; expected sgd, adam or adamw")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely; a corrupt file is a clear error, not a traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt files
        raise FmsslError(
            f"{path}: corrupt or unreadable checkpoint ({type(err).__name__}); delete it or rerun with --force"
        ) from None


@dataclass
class RunContext:
    """What a method may use: the data views, the protocol, the device and the loop."""

    protocol: Protocol
    labeled: LabeledView
    unlabeled: UnlabeledView
    n_classes: int
    in_channels: int
    seed: int
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    iterations: int | None = None  # override of protocol.train.iterations (tests)
    progress: bool = True
    hooks: dict[str, Any] = field(default_factory=dict)
    stage_log: list[dict[str, Any]] = field(default_factory=list)
    generalists: dict[tuple[str, str | None], Any] = field(default_factory=dict)

    def generalist(self, name: str, checkpoint: str | None = None):
        """A frozen foundation model, built once per run; the runner records its accounting."""
        key = (name, checkpoint)
        if key not in self.generalists:
            from ..foundation import build_generalist

            self.generalists[key] = build_generalist(name, checkpoint, device=str(self.device))
        return self.generalists[key]

    def generalist_provenance(self) -> dict[str, Any]:
        return {name: {"checkpoint": fm.checkpoint, "weights_sha256": fm.weights_sha256, **fm.stats.to_dict()}
                for (name, _), fm in self.generalists.items()}

    def build_net(self) -> nn.Module:
        return build_net(self.protocol.net, self.in_channels, self.n_classes, self.protocol.ndim).to(self.device)

    # -- batches ------------------------------------------------------------------------------
    def batch(self, iteration: int, labeled: LabeledView, unlabeled: UnlabeledView | None, labeled_bs: int,
              unlabeled_bs: int, stage: str) -> Batch:
        cfg = self.protocol.train
        key = [self.seed, sum(map(ord, stage))]
        li = stream_indices(len(labeled), labeled_bs, iteration * labeled_bs, key + [1])
        images_l, labels_l, transforms_l = [], [], []
        for slot, i in enumerate(li):
            rng = np.random.default_rng(key + [iteration, slot])
            image, label, transform = augment(labeled.images[i], labeled.labels[i], cfg.augment, cfg.patch, rng)
            images_l.append(image)
            labels_l.append(label)
            transforms_l.append(transform)
        images_u, ids_u, transforms_u = [], [], []
        if unlabeled is not None and unlabeled_bs > 0 and len(unlabeled):
            ui = stream_indices(len(unlabeled), unlabeled_bs, iteration * unlabeled_bs, key + [2])
            for slot, i in enumerate(ui):
                rng = np.random.default_rng(key + [iteration, 1000 + slot])
                image, _, transform = augment(unlabeled.images[i], None, cfg.augment, cfg.patch, rng)
                images_u.append(image)
                transforms_u.append(transform)
                ids_u.append(unlabeled.ids[i])
        to = lambda arrays, dtype: torch.from_numpy(np.stack(arrays)).to(self.device, dtype)  # noqa: E731
        return Batch(
            image_l=to(images_l, torch.float32),
            label_l=to(labels_l, torch.long),
            image_u=to(images_u, torch.float32) if images_u else None,
            ids_l=[labeled.ids[i] for i in li],
            ids_u=ids_u,
            transforms_l=transforms_l,
            transforms_u=transforms_u,
        )

    # -- the loop -----------------------------------------------------------------------------
    def train(self, method: "Method", stage: str = "train", iterations: int | None = None,
              labeled: LabeledView | None = None, unlabeled: UnlabeledView | None = None) -> None:
        """Run (or resume, or skip if finished) one stage of the shared loop for ``method``."""
        cfg = self.protocol.train
        unknown = [a for a in cfg.augment if a not in KNOWN_AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"{self.protocol.source}: train.augment {unknown}; expected some of {list(KNOWN_AUGMENTATIONS)}")
        total = int(iterations or self.iterations or cfg.iterations)
        labeled = labeled if labeled is not None else self.labeled
        unlabeled = unlabeled if unlabeled is not None else self.unlabeled
        if method.uses_unlabeled and len(unlabeled) == 0:
            raise ConfigError(f"method {method.name!r} needs unlabeled cases, but every train case is labeled; lower --labeled")
        labeled_bs = cfg.labeled_bs
        unlabeled_bs = cfg.batch_size - cfg.labeled_bs if method.uses_unlabeled else 0
        optimizer = make_optimizer(cfg, method.trainable())
        ckpt_path = self.run_dir / f"checkpoint_{stage}.pt"
        start = 0
        if ckpt_path.is_file():
            state = load_checkpoint(ckpt_path)
            try:
                for name, module in method.modules().items():
                    module.load_state_dict(state["modules"][name])
                optimizer.load_state_dict(state["optimizer"])
                start = int(state["iteration"])
            except (KeyError, RuntimeError, ValueError) as err:
                raise FmsslError(f"{ckpt_path}: checkpoint does not match this method/protocol ({err}); delete it or use --force") from None
            method_state = state.get("method_state")
            if method_state and hasattr(method, "load_state"):
                method.load_state(method_state)
        log_rows: list[dict[str, Any]] = []
        started = time.time()
        bar = progress_bar(self.progress, total=total, initial=start, desc=f"{method.name}:{stage}", unit="it", every=cfg.log_every)
        for it in range(start, total):
            lr = learning_rate(cfg, it, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed((self.seed * 1_000_003 + sum(map(ord, stage)) * 10_007 + it) % 2**31)
            for module in method.modules().values():
                module.train()
            batch = self.batch(it, labeled, unlabeled, labeled_bs, unlabeled_bs, stage)
            out = method.training_step(batch, it)
            if not torch.isfinite(out.loss):
                raise FmsslError(f"{method.name}:{stage}: loss became {out.loss.item()} at iteration {it}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            method.after_step(it)
            row = {"stage": stage, "iteration": it + 1, "lr": lr, "loss": float(out.loss.detach()), **out.logs}
            log_rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            done = it + 1
            if done % cfg.checkpoint_every == 0 or done == total:
                self._save(ckpt_path, method, optimizer, done)
                self._append_log(log_rows)
                log_rows = []
        bar.close()
        if log_rows:
            self._append_log(log_rows)
        self.stage_log.append({"stage": stage, "iterations": total, "resumed_from": start, "seconds": time.time() - started})

    def _save(self, path: Path, method: "Method", optimizer: torch.optim.Optimizer, iteration: int) -> None:
        state = {
            "iteration": iteration,
            "modules": {n: m.state_dict() for n, m in method.modules().items()},
            "optimizer": optimizer.state_dict(),
            "method_state": method.state() if hasattr(method, "state") else None,
        }
        atomic_torch_save(state, path)

    def _append_log(self, rows: list[dict[str, Any]]) -> None:
        path = self.run_dir / "train_log.csv"
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        existing = path.read_text() if path.is_file() else ""
        buf = io.StringIO()
        if existing:
            header = existing.splitlines()[0].split(",")
            keys = header + [k for k in keys if k not in header]
            if keys != header:  # new columns (a later stage logs more): rewrite with the wider header
                old = list(csv.DictReader(io.StringIO(existing)))
                rows = old + rows
                existing = ""
        writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        if not existing:
            writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, existing + buf.getvalue())
