"""The method API: the one home of the types a method author uses.

A method subclasses :class:`Method`, declares its ``name``, a one-line ``description`` and its
typed hyper-parameters (``arguments``: name -> :class:`Arg`, from which ``defaults`` is derived), builds its networks in :meth:`Method.setup` and implements
:meth:`Method.training_step`. Multi-stage and multi-round methods (SFR, SamDSK, IFDL) override
:meth:`Method.fit` and call ``self.ctx.train(self, stage=..., ...)`` once per stage, each with its
own training configuration (the protocol's ``stages:`` section), batch provider, modules and
trainable parameters; per-stage outputs go through ``self.ctx.artifacts``. A finished stage is
skipped on resume.

This module imports nothing from :mod:`fmssl_bench.benchmark` or :mod:`fmssl_bench.methods`, so
the training loop and the methods both depend on it and never on each other.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - types only
    from .benchmark.protocol import Protocol as BenchmarkProtocol
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


class CheckpointScorer(Protocol):
    """The runner's callback for multi-round methods (``ctx.score_checkpoint``): the test score of
    an intermediate network (SamDSK's model after each round), recorded under ``tag``.

    The runner evaluates ``net`` on the test view, which the method never holds, writes the mean
    Dice per class to the record (``round_evaluation.csv``) and gives nothing back.
    """

    def __call__(self, net: nn.Module, tag: str) -> None: ...


# -- typed values: method arguments (``Arg``) and protocol fields share these checks ----------

_NONE_TEXT = ("none", "null")
_BOOL_TEXT = {"true": True, "false": False, "yes": True, "no": False}
_INT_TEXT = re.compile(r"[+-]?\d+")
_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a text", "texts"),
          bool: ("true or false", "true/false values")}


def _alternatives(hint: Any) -> tuple[Any, ...]:
    """The members of a union (``X | Y``, ``Optional[X]``), else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for member in typing.get_args(hint) for a in _alternatives(member))
    return (type(None),) if hint is None else (hint,)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _match(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether ``value`` is of type ``hint`` (one member of a union), and the value converted.

    Strict: an integer is not a bool and a bool is not an integer; a float field accepts an
    integer (converted to float); a tuple field accepts a list (converted to a tuple).
    """
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None, None
    if origin is Literal:
        return any(type(value) is type(v) and value == v for v in typing.get_args(hint)), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = _is_number(value) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            return False, value
        matched = [_match(v, item) for v in value]
        return all(ok for ok, _ in matched), tuple(v for _, v in matched)
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    raise TypeError(f"unsupported declared type {hint!r}")


def _in_range(x: float, ge: float | None, gt: float | None, le: float | None, lt: float | None) -> bool:
    return not ((ge is not None and x < ge) or (gt is not None and x <= gt)
                or (le is not None and x > le) or (lt is not None and x >= lt))


def _range_text(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    low = (f"[{ge:g}" if ge is not None else f"({gt:g}") if (ge is not None or gt is not None) else None
    high = (f"{le:g}]" if le is not None else f"{lt:g})") if (le is not None or lt is not None) else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" >= {ge:g}" if ge is not None else f" > {gt:g}"
    if high:
        return f" <= {le:g}" if le is not None else f" < {lt:g}"
    return ""


def describe_type(hint: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
                  lt: float | None = None, choices: Sequence[Any] | None = None) -> str:
    """What a value of ``hint`` with these bounds looks like, e.g. ``'auto' or a number > 0``."""
    bounds = _range_text(ge, gt, le, lt)
    parts = []
    for alt in _alternatives(hint):
        origin = typing.get_origin(alt)
        if alt is type(None):
            parts.append("none")
        elif origin is Literal:
            parts.append(" or ".join(repr(v) for v in typing.get_args(alt)))
        elif alt is str and choices:
            parts.append("one of " + ", ".join(map(str, choices)))
        elif origin is tuple:
            item = typing.get_args(alt)[0]
            if item is str and choices:
                parts.append("a list of names from " + ", ".join(map(str, choices)))
            else:
                parts.append("a list of " + _NOUNS.get(item, (None, str(item)))[1] + (bounds if item in (int, float) else ""))
        elif alt in (int, float):
            parts.append(_NOUNS[alt][0] + bounds)
        elif alt in _NOUNS:
            parts.append(_NOUNS[alt][0])
        else:
            parts.append("a mapping" if alt is dict or origin is dict else str(alt))
    return " or ".join(parts)


def check_value(value: Any, hint: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
                lt: float | None = None, choices: Sequence[Any] | None = None) -> Any:
    """``value`` checked against a declared type and bounds, converted (int -> float, list -> tuple).

    Bounds apply to numbers (and to the numbers of a list), ``choices`` to texts (and to the
    texts of a list). Raises :class:`ValueError` whose message is :func:`describe_type`'s phrase.
    """
    rule = dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices)
    for alt in _alternatives(hint):
        ok, converted = _match(value, alt)
        if not ok:
            continue
        items = converted if isinstance(converted, tuple) and typing.get_origin(alt) is tuple else (converted,)
        for item in items:
            if _is_number(item) and not _in_range(item, ge, gt, le, lt):
                raise ValueError(describe_type(hint, **rule))
            if isinstance(item, str) and choices and typing.get_origin(alt) is not Literal and item not in choices:
                raise ValueError(describe_type(hint, **rule))
        return converted
    raise ValueError(describe_type(hint, **rule))


def _parse_one(text: str, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    low = text.strip().lower()
    if hint is type(None):
        return low in _NONE_TEXT, None
    if origin is Literal:
        for v in typing.get_args(hint):
            if text == str(v):
                return True, v
        return False, None
    if hint is bool:
        return low in _BOOL_TEXT, _BOOL_TEXT.get(low)
    if hint is int:
        ok = bool(_INT_TEXT.fullmatch(text.strip()))
        return ok, int(text) if ok else None
    if hint is float:
        try:
            number = float(text)
        except ValueError:
            return False, None
        return math.isfinite(number), number
    if hint is str or hint is Any:
        return True, text
    if origin is tuple:
        item = typing.get_args(hint)[0]
        parsed = [_parse_one(part.strip(), item) for part in text.split(",") if part.strip()]
        return all(ok for ok, _ in parsed), tuple(v for _, v in parsed)
    return False, None


def parse_value(text: str, hint: Any, **rule: Any) -> Any:
    """Text (``--method-arg key=TEXT``) read as the declared type: no guessing.

    Members of a union are tried in order, a plain text last (so ``none`` is None for
    ``str | None``); the value is then checked like :func:`check_value`.
    """
    alternatives = _alternatives(hint)
    for alt in [a for a in alternatives if a is not str] + [a for a in alternatives if a is str]:
        ok, value = _parse_one(text, alt)
        if ok:
            return check_value(value, hint, **rule)
    raise ValueError(describe_type(hint, **rule))


@dataclass(frozen=True)
class Arg:
    """One typed hyper-parameter of a method: default, type, one-line help and bounds.

    ``type`` is a Python type or annotation: ``int``, ``float``, ``bool``, ``str``, ``str | None``,
    ``Literal["auto"] | float``. ``ge``/``gt``/``le``/``lt`` bound numbers; ``choices`` lists the
    valid texts. ``--method-arg`` text is parsed against the type, protocol ``method_args``
    values are checked against it, both before anything is written.
    """

    default: Any
    type: Any
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None

    def _rule(self) -> dict[str, Any]:
        return dict(ge=self.ge, gt=self.gt, le=self.le, lt=self.lt, choices=self.choices)

    def check(self, value: Any) -> Any:
        """A typed value (protocol YAML, Python) checked and converted; ValueError says what was expected."""
        return check_value(value, self.type, **self._rule())

    def parse(self, text: str) -> Any:
        """Command-line text parsed as the declared type and checked."""
        return parse_value(text, self.type, **self._rule())

    def expected(self) -> str:
        """E.g. ``a number in [0, 1)``."""
        return describe_type(self.type, **self._rule())


class Method:
    """The part that is new about a method, on top of the shared loop (see the module docstring)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    arguments: ClassVar[dict[str, Arg]] = {}
    """Typed hyper-parameters, name -> :class:`Arg`; overridable by the protocol's ``method_args``
    and ``--method-arg``, shown by ``fmssl-bench list methods --args``."""
    defaults: ClassVar[dict[str, Any]] = {}
    """Derived from ``arguments`` (name -> default value); declare ``arguments``, not this."""
    dims: ClassVar[tuple[int, ...]] = (2, 3)
    """Spatial dimensionalities the method is defined for; the runner refuses a protocol of another
    one with a clear error before anything is written (MagicNet's magic cubes are 3D only)."""
    uses_unlabeled: ClassVar[bool] = True
    """False: batches carry labeled cases only (batch size = the stage's ``labeled_bs``)."""
    min_unlabeled: ClassVar[int] = 0
    """Unlabeled images every training batch must carry (``batch_size - labeled_bs``): 1 for a
    method whose loss is defined on them, 2 for ICT's pairs. :meth:`check` refuses a protocol with
    fewer before a record begins; :meth:`unlabeled_images` guards a step called directly."""
    deviations: ClassVar[list[str]] = []
    """How this implementation departs from the paper; recorded in every run's provenance."""
    paper_protocols: ClassVar[dict[str, str]] = {}
    """Data set -> the protocol its paper ran it under, where that differs from the data set's own
    default (SemiSAM on LA: ``semisam-la``, 128^3 patches). A run without ``--protocol`` uses it, so
    a method's default protocol is declared by the method, never in a table elsewhere."""
    paper_names: ClassVar[tuple[tuple[str, str], ...]] = ()
    """How the seed papers' tables print this method: (method, base) as in the ``method`` and
    ``base`` columns of ``leaderboards/paper/*.csv``; the leaderboard puts those rows beside it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "defaults" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: declare typed `arguments = {{name: Arg(default, type, help)}}`; "
                            "`defaults` is derived from them")
        defaults = {}
        for key, arg in cls.arguments.items():
            if not isinstance(arg, Arg):
                raise TypeError(f"{cls.__name__}.arguments[{key!r}]: expected an Arg(default, type, help), got {arg!r}")
            try:
                defaults[key] = arg.check(arg.default)
            except ValueError as err:
                raise TypeError(f"{cls.__name__}.arguments[{key!r}]: default {arg.default!r} is not {err}") from None
        cls.defaults = defaults

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

    @classmethod
    def check(cls, args: dict[str, Any], protocol: "BenchmarkProtocol") -> None:
        """Refuse an ``args`` x ``protocol`` combination the method cannot run, before anything is written.

        The runner calls it once the arguments are resolved and before the record begins, so a
        misfit (a batch layout, a dimensionality, an option not implemented) is a ``ConfigError``
        or ``NotImplementedError`` naming the flag or protocol field, never a half-written record.
        Subclasses extend it (``super().check(args, protocol)``) with what they need of
        ``protocol.stage_config(stage)``; the base refuses dimensionalities outside ``dims``.
        """
        if protocol.ndim not in cls.dims:
            raise ConfigError(f"--method {cls.name} is defined for {'/'.join(f'{d}D' for d in cls.dims)} data only; "
                              f"protocol {protocol.name} is {protocol.ndim}D")
        if cls.uses_unlabeled and cls.min_unlabeled:
            train = protocol.stage_config("train")
            if train.batch_size - train.labeled_bs < cls.min_unlabeled:
                raise ConfigError(f"{protocol.where}: train.batch_size {train.batch_size}, labeled_bs {train.labeled_bs}: "
                                  f"{cls.name} needs at least {cls.min_unlabeled} unlabeled image(s) per batch; expected "
                                  f"{cls._unlabeled_rule()}")

    @classmethod
    def _unlabeled_rule(cls) -> str:
        return ("batch_size > labeled_bs" if cls.min_unlabeled == 1
                else f"batch_size - labeled_bs >= {cls.min_unlabeled}")

    def unlabeled_images(self, batch: Batch) -> torch.Tensor:
        """``batch.image_u``, refused with a clear error when it holds fewer than ``min_unlabeled``."""
        n_u = 0 if batch.image_u is None else batch.image_u.shape[0]
        if n_u < max(1, self.min_unlabeled):
            raise ConfigError(f"method {self.name!r} needs at least {max(1, self.min_unlabeled)} unlabeled image(s) per batch "
                              f"({self._unlabeled_rule()}), got {n_u}")
        return batch.image_u

    # -- hooks a method implements ------------------------------------------------------------
    def setup(self) -> None:
        """Build networks (``self.ctx.build_net()``); called once before training or resuming."""
        self.student = self.ctx.build_net()

    def training_step(self, batch: Batch, iteration: int) -> StepOutput:
        raise NotImplementedError(f"method {self.name!r} does not implement training_step")

    def student_step(self, batch: Batch, iteration: int) -> tuple[torch.Tensor, StepOutput]:
        """The step's loss *and* the student's logits of ``batch.images`` (labeled part first).

        The hook through which a wrapper adds supervision to a method without copying it: SFR
        re-trains a base method with its own loss plus a pseudo-label term on these logits.
        Methods that can be such a base implement it and define ``training_step`` as
        ``self.student_step(batch, iteration)[1]``.
        """
        raise NotImplementedError(f"method {self.name!r} does not expose its student's logits (Method.student_step), "
                                  "so it cannot be re-trained with extra pseudo-label supervision")

    @classmethod
    def exposes_student_logits(cls) -> bool:
        """Whether :meth:`student_step` is implemented (the method can be a base of SFR)."""
        return cls.student_step is not Method.student_step

    @classmethod
    def components(cls, args: dict[str, Any]) -> tuple[str, ...]:
        """Registered methods this one runs inside itself (SFR: its base); their resolved arguments
        (``registry.component_args``) enter the run identity beside this method's."""
        return ()

    @classmethod
    def stages_used(cls, args: dict[str, Any]) -> tuple[str, ...]:
        """Names of the loop stages the method trains with ``args``: their ``stages:`` sections of
        the protocol enter its run identity, other stages' sections do not."""
        return ("train",)

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

    def score_round(self, tag: str) -> None:
        """Multi-round methods: the runner scores :meth:`predictor` on the test split now (``round_evaluation.csv``,
        tag e.g. ``round1``), so whether the rounds help shows in the record; a no-op without a scorer."""
        if self.ctx.score_checkpoint is not None:
            self.ctx.score_checkpoint(self.predictor(), tag)

    def fit(self) -> nn.Module:
        """Default: one stage of the shared loop. Multi-stage methods override this."""
        self.ctx.train(self, stage="train")
        return self.predictor()

    def provenance(self) -> dict[str, Any]:
        """Method-specific facts to record (deviations from the paper, generalist stats...)."""
        return {"deviations": list(self.deviations)} if self.deviations else {}
