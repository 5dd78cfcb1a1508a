"""The method API: the one home of the types a method author uses.

A method subclasses :class:`Method`, declares its ``name``, a one-line ``description`` and its
``defaults``, builds its networks in :meth:`Method.setup` and implements
:meth:`Method.training_step`. Multi-stage and multi-round methods (SFR, SamDSK, IFDL) override
:meth:`Method.fit` and call ``self.ctx.train(self, stage=..., ...)`` once per stage, each with its
own training configuration (the protocol's ``stages:`` section), batch provider, modules and
trainable parameters; per-stage outputs go through ``self.ctx.artifacts``. A finished stage is
skipped on resume.

This module imports nothing from :mod:`fmssl_bench.benchmark` or :mod:`fmssl_bench.methods`, so
the training loop and the methods both depend on it and never on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover - types only
    from .benchmark.training.augment import Transform
    from .benchmark.training.context import RunContext


@dataclass
class Batch:
    """One training batch, already on the device (labeled part first, as UA-MT indexes it)."""

    image_l: torch.Tensor
    label_l: torch.Tensor
    image_u: torch.Tensor | None
    ids_l: list[str]
    ids_u: list[str]
    transforms_l: list["Transform"] = field(default_factory=list)
    transforms_u: list["Transform"] = field(default_factory=list)
    """How each sample was cut from its case (see :class:`~fmssl_bench.benchmark.training.augment.Transform`)."""

    @property
    def images(self) -> torch.Tensor:
        """Labeled then unlabeled images, the order UA-MT's loss indexing assumes."""
        return self.image_l if self.image_u is None else torch.cat([self.image_l, self.image_u])


@dataclass
class StepOutput:
    """The loss to back-propagate and named scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float]


class BatchProvider(Protocol):
    """Makes the batch of one iteration; every random draw derives from ``key`` and ``iteration``.

    The default is the two-stream patch sampler of the protocol's stage configuration; a method
    passes its own (a stitched 2D canvas inside a 3D protocol, a labeled view grown per round).
    """

    def __call__(self, iteration: int, key: Sequence[int]) -> Batch: ...


class PseudoLabelScorer(Protocol):
    """The runner's callback for methods that make pseudo-labels (``ctx.score_pseudo_labels``).

    ``labels`` are in the frame of the training views (255 = no pseudo-label at that voxel); the
    runner scores them against labels the method never sees and gives nothing back.
    """

    def __call__(self, ids: Sequence[str], labels: Sequence[np.ndarray], tag: str) -> None: ...


class Method:
    """The part that is new about a method, on top of the shared loop (see the module docstring)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    uses_unlabeled: ClassVar[bool] = True
    """False: batches carry labeled cases only (batch size = the stage's ``labeled_bs``)."""
    deviations: ClassVar[list[str]] = []
    """How this implementation departs from the paper; recorded in every run's provenance."""

    def __init__(self, ctx: "RunContext", **args: Any) -> None:
        self.ctx = ctx
        self.args = {**self.defaults, **args}
        self.student: nn.Module | None = None

    @classmethod
    def generalists_used(cls, args: dict[str, Any]) -> list[tuple[str, str | None]]:
        """(name, checkpoint) of every foundation model the method will load with ``args``.

        Their weights' sha256 enters the run identity, so other weights make another record.
        """
        return []

    # -- hooks a method implements ------------------------------------------------------------
    def setup(self) -> None:
        """Build networks (``self.ctx.build_net()``); called once before training or resuming."""
        self.student = self.ctx.build_net()

    def training_step(self, batch: Batch, iteration: int) -> StepOutput:
        raise NotImplementedError(f"method {self.name!r} does not implement training_step")

    def after_step(self, iteration: int) -> None:
        """Called after each optimiser step (e.g. the EMA update)."""

    def trainable(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def modules(self) -> dict[str, nn.Module]:
        """Everything saved in the checkpoints of the default stage."""
        return {"student": self.student}

    def state(self) -> dict[str, Any] | None:
        """Extra non-module state to checkpoint (plain containers of tensors/numbers)."""
        return None

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    def predictor(self) -> nn.Module:
        """The network used at test time (logits out)."""
        return self.student

    def fit(self) -> nn.Module:
        """Default: one stage of the shared loop. Multi-stage methods override this."""
        self.ctx.train(self, stage="train")
        return self.predictor()

    def provenance(self) -> dict[str, Any]:
        """Method-specific facts to record (deviations from the paper, generalist stats...)."""
        return {"deviations": list(self.deviations)} if self.deviations else {}
