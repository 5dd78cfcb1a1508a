"""The one training loop every method and every stage runs through.

It owns what is the same for all methods: the stage's optimiser and learning-rate schedule (from
the protocol's ``train`` or ``stages.<name>`` section), per-iteration seeding, progress bar,
training log, periodic checkpoints of the stage's modules and resuming. A method contributes a
step function (``training_step`` by default) and optionally a batch provider, modules and
trainable parameters of its own per stage (see :meth:`RunContext.train`).

Resume rules: ``checkpoint_<stage>.pt`` holds the stage's modules, optimiser, method state, the
iteration reached and the stage length. A finished stage is skipped (its modules reloaded); an
unfinished one continues from its last checkpoint and says so (``resuming <stage> from iteration
N of M``). Every random draw of iteration ``i`` of stage ``s`` derives from ``(seed, hash(s), i)``,
so a resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ...api import Batch, BatchProvider, StepOutput
from ...errors import ConfigError, FmsslError
from ..protocol import OPTIMIZERS, TrainConfig
from ..records.store import atomic_torch_save, atomic_write_text
from ..views import progress_bar
from .augment import KNOWN_AUGMENTATIONS
from .batches import stage_key

if TYPE_CHECKING:  # pragma: no cover
    from ...api import Method
    from .context import RunContext


@dataclass(frozen=True)
class StageState:
    """The stage being trained: what ramps and schedules read (one source of truth for its length)."""

    name: str
    config: TrainConfig
    total: int


def learning_rate(cfg: TrainConfig, iteration: int, total: int) -> float:
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (iteration // cfg.step_size)
    if cfg.schedule == "poly":
        return cfg.lr * (1.0 - iteration / total) ** cfg.poly_power
    return cfg.lr


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if not params:
        raise FmsslError("this stage has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"train.optimizer {cfg.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely; a corrupt file is a clear error, not a traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt files
        raise FmsslError(
            f"{path}: corrupt or unreadable checkpoint ({type(err).__name__}); delete it or rerun with --force"
        ) from None


def checkpoint_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / f"checkpoint_{stage}.pt"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_stage(ctx: "RunContext", method: "Method", stage: StageState, batches: BatchProvider,
              step: Callable[[Batch, int], StepOutput], after_step: Callable[[int], None],
              modules: dict[str, nn.Module], trainable: list[nn.Parameter]) -> None:
    """Run (or resume, or skip if finished) one stage; see the module docstring."""
    cfg, total = stage.config, stage.total
    unknown = [a for a in cfg.augment if a not in KNOWN_AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"{ctx.protocol.source}: {stage.name} augment {unknown}; expected some of {list(KNOWN_AUGMENTATIONS)}")
    optimizer = make_optimizer(cfg, trainable)
    ckpt = checkpoint_path(ctx.run_dir, stage.name)
    start = _restore(ckpt, method, modules, optimizer, total)
    if start >= total:
        say(f"{stage.name}: finished earlier ({total} iterations); skipped, modules reloaded")
        ctx.stage_log.append({"stage": stage.name, "iterations": total, "resumed_from": start, "skipped": True, "seconds": 0.0})
        return
    if start > 0:
        say(f"resuming {stage.name} from iteration {start} of {total}")
    key = [ctx.seed, stage_key(stage.name)]
    log_rows: list[dict[str, Any]] = []
    started = time.time()
    # a line every log_every iterations, at most 20 per stage: a grid's log holds many records
    bar = progress_bar(ctx.progress, total=total, initial=start, desc=f"{method.name}:{stage.name}", unit="it",
                       every=max(cfg.log_every, total // 20))
    for it in range(start, total):
        lr = learning_rate(cfg, it, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed((ctx.seed * 1_000_003 + key[1] * 10_007 + it) % 2**31)
        for module in modules.values():
            module.train()
        out = step(batches(it, key), it)
        if not torch.isfinite(out.loss):
            raise FmsslError(f"{method.name}:{stage.name}: loss became {out.loss.item()} at iteration {it}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        after_step(it)
        row = {"stage": stage.name, "iteration": it + 1, "lr": lr, "loss": float(out.loss.detach()), **out.logs}
        log_rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        done = it + 1
        if done % cfg.checkpoint_every == 0 or done == total:
            _save(ckpt, method, modules, optimizer, done, total)
            append_log(ctx.run_dir / "train_log.csv", log_rows)
            log_rows = []
    bar.close()
    ctx.stage_log.append({"stage": stage.name, "iterations": total, "resumed_from": start, "skipped": False,
                          "seconds": round(time.time() - started, 2)})


def _restore(path: Path, method: "Method", modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
             total: int) -> int:
    """Load the stage's checkpoint if there is one; returns the iteration to continue from."""
    if not path.is_file():
        return 0
    state = load_checkpoint(path)
    try:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise FmsslError(f"{path}: checkpoint does not match this method/protocol ({err}); delete it or use --force") from None
    if int(state.get("total", total)) != total:
        raise FmsslError(f"{path}: checkpoint of a {state['total']}-iteration stage, this stage has {total}; use --force")
    if state.get("method_state") is not None:
        method.load_state(state["method_state"])
    return start


def _save(path: Path, method: "Method", modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
          iteration: int, total: int) -> None:
    atomic_torch_save({
        "iteration": iteration,
        "total": total,
        "modules": {n: m.state_dict() for n, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "method_state": method.state(),
    }, path)


def checkpoint_progress(run_dir: Path) -> list[tuple[str, int, int]]:
    """(stage, iteration reached, stage length) of every checkpoint in a run folder, oldest first.

    A corrupt checkpoint is an error here already, before anything else is loaded.
    """
    found = []
    for path in sorted(Path(run_dir).glob("checkpoint_*.pt"), key=lambda p: p.stat().st_mtime):
        state = load_checkpoint(path)
        found.append((path.stem[len("checkpoint_"):], int(state.get("iteration", 0)), int(state.get("total", 0))))
    return found


def append_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows to ``train_log.csv``; a later stage that logs new columns widens the header."""
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    existing = path.read_text() if path.is_file() else ""
    buf = io.StringIO()
    if existing:
        header = existing.splitlines()[0].split(",")
        keys = header + [k for k in keys if k not in header]
        if keys != header:  # new columns: rewrite with the wider header
            rows = list(csv.DictReader(io.StringIO(existing))) + rows
            existing = ""
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    if not existing:
        writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, existing + buf.getvalue())
