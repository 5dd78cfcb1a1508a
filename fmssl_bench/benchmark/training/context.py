"""What a method may use: the data views, the protocol, the device, the loop, artifacts, generalists.

The runner builds one :class:`RunContext` per run and hands it to the method; the test view is
never part of it. Multi-stage methods call :meth:`RunContext.train` once per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ...api import Batch, BatchProvider, CheckpointScorer, PseudoLabelScorer, StepOutput
from ...errors import ConfigError
from ...methods.nets import build_net
from ..protocol import Protocol, TrainConfig
from ..records.store import ARTIFACTS
from ..views import LabeledView, UnlabeledView
from .artifacts import ArtifactStore
from .batches import TwoStreamPatches, batch_split
from .loop import StageState, run_stage, say

if TYPE_CHECKING:  # pragma: no cover
    from ...api import Method


@dataclass(frozen=True)
class Overrides:
    """Command-line overrides of stage lengths (part of the run identity, never silent)."""

    iterations: int | None = None
    stage_iterations: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "stages": {k: {"iterations": v} for k, v in sorted(self.stage_iterations.items())}}


@dataclass
class RunContext:
    """See the module docstring. ``stage`` is the stage being trained (None between stages)."""

    protocol: Protocol
    labeled: LabeledView
    unlabeled: UnlabeledView
    n_classes: int
    in_channels: int
    seed: int
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    overrides: Overrides = field(default_factory=Overrides)
    progress: bool = True
    score_pseudo_labels: PseudoLabelScorer | None = None
    score_checkpoint: CheckpointScorer | None = None
    roi_counts: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    """The data set's image-level knowledge (``DatasetAdapter.roi_counts``), keyed by class name."""
    stage_log: list[dict[str, Any]] = field(default_factory=list)
    generalists: dict[tuple[str, str | None], Any] = field(default_factory=dict)
    stage: StageState | None = None
    class_names: tuple[str, ...] = ()
    """The data set's class names in label order (empty where unknown): for methods whose prompts depend
    on what a class is (IFDL: boxes for bones, points for cartilage; SamDSK: RoI counts per class)."""

    def __post_init__(self) -> None:
        self.artifacts = ArtifactStore(Path(self.run_dir) / ARTIFACTS)

    @staticmethod
    def say(message: str) -> None:
        """A progress or note line on stderr, flushed (methods' long non-training steps report through it)."""
        say(message)

    # -- foundation models --------------------------------------------------------------------
    def generalist(self, name: str, checkpoint: str | None = None):
        """A frozen foundation model, built once per run; embeddings cached on disk in the record."""
        key = (name, checkpoint)
        if key not in self.generalists:
            from ...foundation import build_generalist, run_embedding_cache
            from ...paths import shared_fm_cache

            cache = run_embedding_cache(shared_fm_cache() or Path(self.run_dir) / "fm_cache")
            self.generalists[key] = build_generalist(name, checkpoint, device=str(self.device), cache=cache)
        return self.generalists[key]

    def generalist_provenance(self) -> dict[str, Any]:
        return {name: {"checkpoint": fm.checkpoint, "weights_sha256": fm.weights_sha256, **fm.stats.to_dict()}
                for (name, _), fm in self.generalists.items()}

    # -- networks and stages ------------------------------------------------------------------
    def build_net(self, **options: Any) -> nn.Module:
        """The protocol's network; ``options`` (e.g. ``heads=("sdf",)``) go to :func:`~fmssl_bench.methods.nets.build_net`."""
        return build_net(self.protocol.net, self.in_channels, self.n_classes, self.protocol.ndim, **options).to(self.device)

    def stage_config(self, stage: str) -> TrainConfig:
        return self.protocol.stage_config(stage)

    def stage_length(self, stage: str, requested: int | None = None) -> int:
        """The stage's real length: CLI override > the method's request > the protocol's value."""
        override = self.overrides.stage_iterations.get(stage) or self.overrides.iterations
        return int(override or requested or self.stage_config(stage).iterations)

    def two_stream(self, config: TrainConfig, labeled: LabeledView, unlabeled: UnlabeledView | None,
                   uses_unlabeled: bool) -> TwoStreamPatches:
        """The default batch provider: UA-MT's labeled + unlabeled patch streams.

        A method that uses no unlabeled data fills the whole batch with labeled cases, as UA-MT's
        supervised baseline does (``train_LA.py``: batch 4, all labeled), so the lower bound is
        not starved of gradient signal relative to the semi-supervised methods it is compared to.
        """
        n_labeled, n_unlabeled, note = batch_split(config, len(labeled), uses_unlabeled)
        if note:
            say(f"note: {note}")
        if not uses_unlabeled:
            return TwoStreamPatches(labeled, None, config, n_labeled, 0, self.device)
        return TwoStreamPatches(labeled, unlabeled, config, n_labeled, n_unlabeled, self.device)

    def train(self, method: "Method", stage: str = "train", *, iterations: int | None = None,
              labeled: LabeledView | None = None, unlabeled: UnlabeledView | None = None,
              batches: BatchProvider | None = None, step: Callable[[Batch, int], StepOutput] | None = None,
              after_step: Callable[[int], None] | None = None, modules: dict[str, nn.Module] | None = None,
              trainable: list[nn.Parameter] | None = None, uses_unlabeled: bool | None = None,
              config: TrainConfig | None = None) -> None:
        """Run (or resume, or skip if finished) one stage of the shared loop.

        Defaults are the method's: ``training_step``, ``after_step``, ``modules()`` (what the
        stage checkpoints), ``trainable()`` and UA-MT two-stream patches of ``labeled`` /
        ``unlabeled`` (default: the run's views) under the stage's configuration
        (``protocol.stages[stage]`` over ``protocol.train``). ``iterations`` is the method's
        request for the stage length (e.g. epochs x cases / batch); ``--iterations`` and
        ``--stage-iterations`` override it. While the stage runs, ``ctx.stage`` says its name,
        configuration and real length: what ramps must read. ``config`` replaces the stage's own
        configuration where a stage repeats another one's (SFR+'s second fine-tuning).
        """
        config = config if config is not None else self.stage_config(stage)
        uses_unlabeled = method.uses_unlabeled if uses_unlabeled is None else uses_unlabeled
        labeled = labeled if labeled is not None else self.labeled
        unlabeled = unlabeled if unlabeled is not None else self.unlabeled
        if batches is None:
            if uses_unlabeled and len(unlabeled) == 0:
                raise ConfigError(f"method {method.name!r} needs unlabeled cases, but every train case is labeled; lower --labeled")
            batches = self.two_stream(config, labeled, unlabeled, uses_unlabeled)
        self.stage = StageState(stage, config, self.stage_length(stage, iterations))
        try:
            run_stage(self, method, self.stage, batches, step or method.training_step, after_step or method.after_step,
                      modules if modules is not None else method.modules(),
                      trainable if trainable is not None else method.trainable())
        finally:
            self.stage = None
