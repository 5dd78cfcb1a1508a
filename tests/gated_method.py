"""A test method (not shipped) that holds its first iteration until a gate file exists.

Run as a script it registers the method and calls the CLI, so the lock tests can start two real
processes on one record and decide when the first one may finish.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fmssl_bench.api import Arg, Method, StepOutput
from fmssl_bench.methods.losses import supervised_loss
from fmssl_bench.methods.registry import register_method


@register_method
class Gated(Method):
    name = "test_gated"
    description = "test only: supervised, waits at iteration 0 until $FMSSL_TEST_GATE exists"
    uses_unlabeled = False
    arguments = {"timeout": Arg(300.0, float, "seconds to wait for the gate", gt=0)}

    def training_step(self, batch, iteration):
        if iteration == 0:
            gate, deadline = Path(os.environ["FMSSL_TEST_GATE"]), time.time() + self.args["timeout"]
            while not gate.exists() and time.time() < deadline:
                time.sleep(0.05)
        loss = supervised_loss(self.student(batch.image_l), batch.label_l)
        return StepOutput(loss, {"loss_sup": float(loss.detach())})


if __name__ == "__main__":
    from fmssl_bench.benchmark.cli import main

    sys.exit(main(sys.argv[1:]))
