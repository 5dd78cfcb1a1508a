"""Methods that train another registered method inside themselves (SFR, SamDSK).

SFR re-trains a base SSL method with an extra pseudo-label term; SamDSK re-trains its specialist's
recipe on a growing labeled set. Both take the base as ``--method-arg base=NAME`` with the base's
own protocol ``method_args``, and what the shared loop checkpoints, trains and tests is the base's
networks. This class is that common part, so each composed method adds only its own stages.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..api import Batch, Method, StepOutput
from .registry import component_args


class ComposedMethod(Method):
    """A method with a ``base`` argument naming the registered method it runs inside itself."""

    @classmethod
    def base_class(cls, args: dict[str, Any]) -> type[Method]:
        """The base's class, validated for this composition (a ConfigError naming ``--method-arg base``)."""
        raise NotImplementedError(f"{cls.__name__} must say which bases it accepts (base_class)")

    @classmethod
    def components(cls, args: dict[str, Any]) -> tuple[str, ...]:
        return (args["base"],)

    @classmethod
    def check(cls, args, protocol) -> None:
        super().check(args, protocol)
        base_cls = cls.base_class(args)
        base_cls.check(component_args(base_cls, protocol), protocol)
        cls.generalists_used(args)

    def build_base(self) -> None:
        """Instantiate and set up the base with its resolved arguments; its student is this method's."""
        base_cls = self.base_class(self.args)
        self.base_args = component_args(base_cls, self.ctx.protocol)
        self.base = base_cls(self.ctx, **self.base_args)
        self.base.setup()
        self.student = self.base.student

    # -- the loop's hooks are the base's ------------------------------------------------------------
    def training_step(self, batch: Batch, iteration: int) -> StepOutput:
        return self.base.training_step(batch, iteration)

    def after_step(self, iteration: int) -> None:
        self.base.after_step(iteration)

    def modules(self) -> dict[str, nn.Module]:
        return self.base.modules()

    def trainable(self) -> list[nn.Parameter]:
        return self.base.trainable()

    def state(self) -> dict[str, Any] | None:
        return self.base.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.base.load_state(state)

    def predictor(self) -> nn.Module:
        return self.base.predictor()
