"""What a method is: the part that is new about it, on top of one shared training loop.

A method subclasses :class:`Method`, declares its ``name``, a one-line ``description`` and its
``defaults`` (hyper-parameters, overridable by the protocol's ``method_args`` and by
``--method-arg key=value``), builds its networks in :meth:`setup` and implements
:meth:`training_step`. Multi-stage or multi-round methods (SFR, SamDSK, iterative UNet+SAM2)
override :meth:`fit` and call ``ctx.train(...)`` once per stage; every stage reuses the same loop,
checkpointing and progress reporting, and a resumed run skips finished stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ..benchmark.loop import Batch, RunContext


@dataclass
class StepOutput:
    """The loss to back-propagate and named scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float]


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    uses_unlabeled: ClassVar[bool] = True
    """False: batches carry labeled cases only (batch size = the protocol's ``labeled_bs``)."""

    def __init__(self, ctx: "RunContext", **args: Any) -> None:
        self.ctx = ctx
        self.args = {**self.defaults, **args}
        self.student: nn.Module | None = None

    # -- hooks a method implements ------------------------------------------------------------
    def setup(self) -> None:
        """Build networks (``self.ctx.build_net()``); called once before training or resuming."""
        self.student = self.ctx.build_net()

    def training_step(self, batch: "Batch", iteration: int) -> StepOutput:
        raise NotImplementedError(f"method {self.name!r} does not implement training_step")

    def after_step(self, iteration: int) -> None:
        """Called after each optimiser step (e.g. the EMA update)."""

    def trainable(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def modules(self) -> dict[str, nn.Module]:
        """Everything saved in checkpoints."""
        return {"student": self.student}

    def predictor(self) -> nn.Module:
        """The network used at test time (logits out)."""
        return self.student

    def fit(self) -> nn.Module:
        """Default: one stage of the shared loop. Multi-stage methods override this."""
        self.ctx.train(self, stage="train")
        return self.predictor()

    def provenance(self) -> dict[str, Any]:
        """Method-specific facts to record (deviations from the paper, generalist stats...)."""
        return {}
