"""Mean Teacher (Tarvainen & Valpola 2017) with UA-MT's hyper-parameters.

Student and EMA teacher (alpha = min(1 - 1/(step+1), 0.99)); the teacher sees the unlabeled
images with clamp(0.1 N(0,1), -0.2, 0.2) noise; consistency = softmax-MSE on the unlabeled part
weighted by 0.1 * exp(-5 (1 - t/40)^2), t = iteration // iters_per_epoch (UA-MT: 150 iterations
per "epoch", i.e. the ramp spans the 6000-iteration protocol; ``iters_per_epoch: auto`` keeps that
ratio for shorter stages: the stage's real length (``ctx.stage.total``, after ``--iterations``) /
rampup_epochs). Supervised loss 0.5 * (CE + Dice).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from ..api import Arg, Method, StepOutput
from .ema import ema_update, make_teacher
from .losses import softmax_mse, supervised_loss
from .ramps import sigmoid_rampup
from .registry import register_method


class RampedConsistency(Method):
    """Methods whose unsupervised term is weighted by UA-MT's sigmoid ramp-up over "epochs".

    ``w(t) = consistency * exp(-5 (1 - t/R)^2)``, ``t = iteration // iters_per_epoch``;
    ``iters_per_epoch: auto`` = the stage's real length / R, so the ramp spans the run as it does
    in the reference scripts (UA-MT: 40 x 150 = 6000). A subclass with other reference defaults
    declares ``arguments = ramp_arguments(c, R, "source")`` (plus its own).
    """

    arguments = {
        "consistency": Arg(0.1, float, "weight of the consistency loss once ramped up (UA-MT 0.1)", ge=0),
        "rampup_epochs": Arg(40.0, float, "length of the sigmoid ramp-up in 'epochs' (UA-MT 40)", gt=0),
        "iters_per_epoch": Arg("auto", Literal["auto"] | float,
                               "iterations per ramp 'epoch'; auto = stage length / rampup_epochs (UA-MT 150)", gt=0),
    }

    def epoch(self, iteration: int) -> int:
        per = self.args["iters_per_epoch"]
        if per == "auto":
            per = max(1.0, self.ctx.stage.total / self.args["rampup_epochs"])
        return int(iteration // float(per))

    def consistency_weight(self, iteration: int) -> float:
        return self.args["consistency"] * sigmoid_rampup(self.epoch(iteration), self.args["rampup_epochs"])


def ramp_arguments(consistency: float, rampup_epochs: float, source: str) -> dict[str, Arg]:
    """:class:`RampedConsistency`'s ramp arguments with another reference's defaults, named in the help."""
    base = RampedConsistency.arguments
    return {
        "consistency": dataclasses.replace(base["consistency"], default=consistency,
                                           help=f"weight of the consistency loss once ramped up ({source} {consistency:g})"),
        "rampup_epochs": dataclasses.replace(base["rampup_epochs"], default=rampup_epochs,
                                             help=f"length of the sigmoid ramp-up in 'epochs' ({source} {rampup_epochs:g})"),
        "iters_per_epoch": dataclasses.replace(base["iters_per_epoch"],
                                               help=f"iterations per ramp 'epoch'; auto = stage length / rampup_epochs ({source} 150)"),
    }


class TeacherStudent(RampedConsistency):
    """Shared by Mean-Teacher-family methods: a student, an EMA teacher and the ramped weight."""

    arguments = {
        **RampedConsistency.arguments,
        "ema_decay": Arg(0.99, float, "teacher EMA decay (alpha = min(1 - 1/(step+1), ema_decay))", ge=0, lt=1),
        "noise": Arg(0.1, float, "std of the Gaussian noise on the teacher's input", ge=0),
        "noise_clip": Arg(0.2, float, "the teacher's input noise is clipped to +-noise_clip", ge=0),
    }

    def setup(self) -> None:
        super().setup()
        self.teacher = make_teacher(self.student)

    def modules(self):
        return {"student": self.student, "teacher": self.teacher}

    def after_step(self, iteration: int) -> None:
        ema_update(self.teacher, self.student, self.args["ema_decay"], iteration)

    def noisy(self, images: torch.Tensor) -> torch.Tensor:
        noise = torch.clamp(torch.randn_like(images) * self.args["noise"], -self.args["noise_clip"], self.args["noise_clip"])
        return images + noise

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(self.noisy(images))

    def mean_teacher_step(self, batch, iteration: int) -> tuple[torch.Tensor, StepOutput]:
        """Student logits of the whole batch and MT's loss: supervised + ramped consistency."""
        n_l = batch.image_l.shape[0]
        logits = self.student(batch.images)
        loss_sup = supervised_loss(logits[:n_l], batch.label_l)
        loss_cons = softmax_mse(logits[n_l:], self.teacher_logits(batch.image_u))
        weight = self.consistency_weight(iteration)
        logs = {"loss_sup": float(loss_sup.detach()), "loss_cons": float(loss_cons.detach()), "w_cons": weight}
        return logits, StepOutput(loss_sup + weight * loss_cons, logs)


@register_method
class MeanTeacher(TeacherStudent):
    name = "mean_teacher"
    description = "Mean Teacher, UA-MT hyper-parameters (EMA 0.99, softmax-MSE consistency ramped to 0.1)"
    paper_names = (("MT", ""),)

    def training_step(self, batch, iteration: int) -> StepOutput:
        return self.mean_teacher_step(batch, iteration)[1]

    def student_step(self, batch, iteration: int) -> tuple[torch.Tensor, StepOutput]:
        return self.mean_teacher_step(batch, iteration)
