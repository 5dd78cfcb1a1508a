"""``sam_zero_shot``: listed with the methods, but an oracle evaluation mode, not a training method.

The papers' zero-shot SAM rows prompt the foundation model from the *test reference*; that is
run by ``fmssl-bench oracle`` (:mod:`fmssl_bench.benchmark.oracle`). The class exists so that
``fmssl-bench list methods`` shows the name and ``fmssl-bench run --method sam_zero_shot`` is
refused (``oracle = True``) with a pointer to the right command.
"""

from __future__ import annotations

from typing import ClassVar

from ..api import Method, StepOutput
from .registry import register_method


@register_method
class SamZeroShot(Method):
    name = "sam_zero_shot"
    description = "oracle-prompt zero-shot foundation-model evaluation (prompts from the test labels; run by `fmssl-bench oracle`)"
    oracle: ClassVar[bool] = True
    uses_unlabeled = False

    def training_step(self, batch, iteration: int) -> StepOutput:
        raise NotImplementedError("sam_zero_shot is an oracle evaluation, not a training method; use `fmssl-bench oracle`")
