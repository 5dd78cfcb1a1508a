"""A two-stage test method (not shipped): stage 1 trains, makes an artifact; stage 2 trains on it.

Run as a script it registers the method and calls the CLI, so subprocess tests can kill it.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from fmssl_bench.api import Method, StepOutput
from fmssl_bench.methods.losses import supervised_loss
from fmssl_bench.methods.registry import register_method


@register_method
class TwoStage(Method):
    name = "test_two_stage"
    description = "test only: supervised stage, pseudo-label artifact, second stage with its own config"
    uses_unlabeled = False

    def training_step(self, batch, iteration):
        loss = supervised_loss(self.student(batch.image_l), batch.label_l)
        return StepOutput(loss, {"loss_sup": float(loss.detach())})

    def pseudo_labels(self) -> dict[str, np.ndarray]:
        self.student.eval()
        with torch.no_grad():
            images = torch.from_numpy(np.stack(self.ctx.unlabeled.images[:4]))
            labels = self.student(images).argmax(1).numpy().astype(np.uint8)
        return {case_id: label for case_id, label in zip(self.ctx.unlabeled.ids[:4], labels)}

    def fit(self):
        self.ctx.train(self, stage="stage1")
        pseudo = self.ctx.artifacts.cached("stage1", "pseudo_labels", "arrays", self.pseudo_labels)
        self.ctx.artifacts.save("stage1", "accepted", "json", sorted(pseudo))
        from fmssl_bench.benchmark.views import LabeledView

        grown = LabeledView(list(self.ctx.labeled.ids) + sorted(pseudo),
                            list(self.ctx.labeled.images) + [self.ctx.unlabeled.images[self.ctx.unlabeled.ids.index(i)]
                                                             for i in sorted(pseudo)],
                            list(self.ctx.labeled.labels) + [pseudo[i] for i in sorted(pseudo)])
        self.ctx.train(self, stage="stage2", labeled=grown)
        return self.predictor()


if __name__ == "__main__":
    from fmssl_bench.benchmark.cli import main

    sys.exit(main(sys.argv[1:]))
