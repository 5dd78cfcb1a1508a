"""Protocols: everything that defines comparability, in one YAML file.

Patch, iterations, batch split, optimiser, schedule, network, preprocessing, inference grid,
metric definitions and the checkpoint rule. Paper protocols and CPU smoke protocols are both just
protocol files. The protocol's result-determining fields (everything but its name, description
and run-time settings; see :mod:`.records.identity`) are part of every run's identity.

``train:`` is the configuration of a method's default stage; the optional ``stages:`` section
overrides any of its fields per named stage (e.g. SFR's ``finetune`` stage with AdamW on stitched
canvases), so one protocol file describes every stage of a multi-stage method. Whether a run can
be set beside a paper's number is computed from these fields, never declared here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..api import check_value
from ..errors import ConfigError, unknown_name
from .training.augment import KNOWN_AUGMENTATIONS

PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "protocols"


NETS = ("vnet", "unet2d", "unet3d")
NET_DIMS = {"vnet": 3, "unet2d": 2, "unet3d": 3}
NORMALIZATIONS = ("batchnorm", "groupnorm", "instancenorm", "none")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "poly", "constant")
INFERENCE_MODES = ("sliding_window", "whole_image")
CHECKPOINT_RULES = ("last",)
SHORT_LABELED_RULES = ("repeat", "shrink", "refuse")
#: connectivities of ``inference.lcc_connectivity`` per dimensionality (neighbours sharing a face,
#: an edge or a corner in 3D; an edge or a corner in 2D); the first is the face connectivity
LCC_CONNECTIVITIES = {3: (6, 18, 26), 2: (4, 8)}


def _f(default: Any, **rule: Any) -> Any:
    """A field with the bounds / choices its values are checked against when a protocol is loaded."""
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class NetConfig:
    name: str = _f("vnet", choices=NETS)
    n_filters: int = _f(16, ge=1)
    normalization: str = _f("batchnorm", choices=NORMALIZATIONS)
    dropout: bool = _f(True)
    channels: tuple[int, ...] = _f((16, 32, 64, 128, 256), ge=1)  # unet only


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = _f(6000, ge=1)
    batch_size: int = _f(4, ge=1)
    labeled_bs: int = _f(2, ge=1)
    patch: tuple[int, ...] = _f((112, 112, 80), ge=1)
    optimizer: str = _f("sgd", choices=OPTIMIZERS)
    lr: float = _f(0.01, gt=0)
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(1e-4, ge=0)
    schedule: str = _f("step", choices=SCHEDULES)
    step_size: int = _f(2500, ge=1)
    gamma: float = _f(0.1, gt=0, le=1)
    poly_power: float = _f(0.9, gt=0)
    augment: tuple[str, ...] = _f(("random_crop", "rot_flip"), choices=KNOWN_AUGMENTATIONS)
    short_labeled: str | None = _f(None, choices=SHORT_LABELED_RULES)
    """What a semi-supervised batch does when the labeled cases are fewer than ``labeled_bs``
    (:func:`.training.batches.batch_split`): ``repeat`` (the labeled stream repeats a case within
    the batch), ``shrink`` (labeled_bs becomes the labeled count, the freed slots take unlabeled
    cases) or ``refuse`` (the run is refused before anything is written). Unset: ``repeat``, said
    aloud when it happens; an unset field stays out of the run identity."""
    checkpoint_every: int = _f(1000, ge=1)
    checkpoint_rule: str = _f("last", choices=CHECKPOINT_RULES)  # the final iterate; never selected on the test set
    log_every: int = _f(50, ge=1)


@dataclass(frozen=True)
class InferenceConfig:
    mode: str = _f("sliding_window", choices=INFERENCE_MODES)
    patch: tuple[int, ...] = _f((112, 112, 80), ge=1)
    stride: tuple[int, ...] = _f((18, 18, 4), ge=1)
    sw_batch_size: int = _f(1, ge=1)
    largest_component: bool = _f(False)
    lcc_connectivity: int | None = _f(None, ge=1)
    """The connectivity of the largest-component step: 6, 18 or 26 (3D), 4 or 8 (2D); unset = the
    face connectivity (6 / 4), scipy's default. SemiSAM's test code (``getLargestCC``, scikit-image
    ``label``) uses the full connectivity, 26 in 3D."""


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str = ""
    ndim: int = _f(3, ge=2, le=3)
    resize: tuple[int, ...] | None = _f(None, ge=1)  # 2D: training/inference resolution; predictions resized back
    scale: float | None = _f(None, gt=0, le=1)
    """3D CPU tiers: train and infer on volumes resampled by this factor; predictions resampled back."""
    net: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    metrics: dict[str, Any] = field(default_factory=dict)
    eval_workers: int = _f(2, ge=1)
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-stage overrides of ``train`` fields, by stage name."""
    source: str = ""

    @property
    def where(self) -> str:
        """What an error names as the protocol: its file when it came from one, else its name."""
        return self.source or self.name

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    def training_size(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The spatial size a case of ``shape`` is trained and inferred at (None: its own)."""
        if self.resize is not None:
            return tuple(self.resize)
        if self.scale is not None and self.scale != 1:
            return tuple(max(1, int(round(d * self.scale))) for d in shape)
        return None

    def largest_component_connectivity(self) -> int | None:
        """The connectivity of the largest-component post-processing, None when there is none."""
        if not self.inference.largest_component:
            return None
        return self.inference.lcc_connectivity or LCC_CONNECTIVITIES[self.ndim][0]

    def stage_config(self, stage: str) -> TrainConfig:
        """``train`` with the stage's overrides from the ``stages:`` section applied."""
        return dataclasses.replace(self.train, **self.stages.get(stage, {}))


_SECTIONS = {"net": NetConfig, "train": TrainConfig, "inference": InferenceConfig}
_SCALARS = (str, int, float, bool, type(None))


def _shown(value: Any) -> str:
    """A value as the user wrote it: texts quoted, lists as lists."""
    if isinstance(value, tuple):
        value = list(value)
    return repr(value) if isinstance(value, (str, list)) or isinstance(value, _SCALARS) else type(value).__name__


def _yaml_hint(value: Any, hint: Any) -> str:
    """PyYAML reads ``1e-3`` as text (YAML 1.1 wants ``1.0e-3``): say so instead of a bare 'expected a number'."""
    if isinstance(value, str) and float in typing.get_args(hint) + (hint,):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (YAML reads {value} as text; write it with a decimal point, e.g. {float(value)!r})"
    return ""


def _check_field(cls: type, name: str, value: Any, source: str, section: str = "") -> Any:
    """One field checked against its annotation and bounds; the error names the file and the field."""
    hint = typing.get_type_hints(cls)[name]
    rule = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("rule", {})
    try:
        return check_value(value, hint, **rule)
    except ValueError as err:
        label = f"{section}.{name}" if section else name
        raise ConfigError(f"{source}: {label} {_shown(value)}: expected {err}{_yaml_hint(value, hint)}") from None


def _mapping(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} {_shown(data)}: expected a mapping of field names to values")
    return dict(data)


def _fields(cls: type, data: Any, source: str, where: str) -> dict[str, Any]:
    """A section's given fields, known and type/range checked (not yet built into ``cls``)."""
    data = _mapping(data, f"{source}: {where}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, data)) - set(names))
    if unknown:
        raise ConfigError(f"{source}: section '{where}': unknown key(s) {unknown}; expected some of {sorted(names)}")
    return {key: _check_field(cls, key, value, source, where) for key, value in data.items()}


def _section(cls: type, data: dict[str, Any] | None, where: str, source: str = "") -> Any:
    return cls(**_fields(cls, data, source, where))


def _check_metrics(data: Any, source: str) -> dict[str, Any]:
    from .evaluation.metrics import ASD_MODES, EMPTY_POLICIES, HD95_MODES, HD_MODES

    valid = {"hd95": HD95_MODES, "asd": ASD_MODES, "empty_policy": EMPTY_POLICIES, "units": ("voxel", "mm"),
             "hd": HD_MODES}
    data = _mapping(data, f"{source}: metrics")
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(f"{source}: metrics: unknown key {key!r}; expected some of {', '.join(valid)}")
        if value not in valid[key] or not isinstance(value, str):
            raise ConfigError(f"{source}: metrics.{key} {_shown(value)}: expected one of {', '.join(valid[key])}")
    return data


def protocol_from_dict(data: dict[str, Any], source: str = "<dict>") -> Protocol:
    """A protocol from its YAML mapping; every field is checked (type, range, consistency) with its name."""
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{source}: a protocol must be a YAML mapping with at least a 'name'")
    data = dict(data)
    known = [f.name for f in dataclasses.fields(Protocol) if f.name != "source"]
    unknown = sorted(set(map(str, data)) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; expected some of {known}")
    if not isinstance(data["name"], str) or not data["name"].strip():
        raise ConfigError(f"{source}: name {_shown(data['name'])}: expected a non-empty text")
    if not isinstance(data.get("description", ""), str):
        raise ConfigError(f"{source}: description {_shown(data['description'])}: expected a text")
    for key in ("ndim", "resize", "scale", "eval_workers"):
        if key in data:
            data[key] = _check_field(Protocol, key, data[key], source)
    for key, cls in _SECTIONS.items():
        data[key] = _section(cls, data.get(key), key, source)
    data["metrics"] = _check_metrics(data.get("metrics"), source)
    method_args = _mapping(data.get("method_args"), f"{source}: method_args")
    for method, args in method_args.items():  # the values are checked against the run's method only
        _mapping(args, f"{source}: method_args.{method}")
    data["method_args"] = {str(m): dict(a or {}) for m, a in method_args.items()}
    stages = _mapping(data.get("stages"), f"{source}: stages")
    data["stages"] = {str(stage): _fields(TrainConfig, overrides, source, f"stages.{stage}")
                      for stage, overrides in stages.items()}
    data["source"] = source
    protocol = Protocol(**data)
    _validate(protocol, source)
    return protocol


def _validate_train(t: TrainConfig, where: str, ndim: int, vnet: bool) -> None:
    """What one field alone cannot say: the patch's dimensionality, the batch split, the VNet grid."""
    if len(t.patch) != ndim:
        raise ConfigError(f"{where}.patch {list(t.patch)} has {len(t.patch)} dims; expected {ndim}")
    if t.labeled_bs > t.batch_size:
        raise ConfigError(f"{where}.labeled_bs {t.labeled_bs}: expected 1..batch_size ({t.batch_size})")
    if vnet and any(d % 16 for d in t.patch):
        raise ConfigError(f"{where}.patch {list(t.patch)}: the VNet down-samples 4 times; expected multiples of 16")


def _validate(p: Protocol, source: str) -> None:
    if p.net.name in NET_DIMS and NET_DIMS[p.net.name] != p.ndim:
        raise ConfigError(f"{source}: net.name {p.net.name!r} is a {NET_DIMS[p.net.name]}D network; the protocol's "
                          f"ndim is {p.ndim} (use {'unet2d' if p.ndim == 2 else 'vnet or unet3d'})")
    if p.net.name != "vnet" and len(p.net.channels) < 2:
        raise ConfigError(f"{source}: net.channels {list(p.net.channels)}: expected at least 2 levels")
    if p.resize is not None:
        if p.ndim != 2:
            raise ConfigError(f"{source}: resize {list(p.resize)}: only 2D protocols resize; remove it (ndim is {p.ndim})")
        if len(p.resize) != p.ndim:
            raise ConfigError(f"{source}: resize {list(p.resize)} has {len(p.resize)} dims; expected {p.ndim}")
    if p.scale is not None and p.ndim != 3:
        raise ConfigError(f"{source}: scale {p.scale}: only 3D protocols scale; 2D protocols use resize")
    vnet = p.net.name == "vnet"
    _validate_train(p.train, f"{source}: train", p.ndim, vnet)
    for stage, overrides in p.stages.items():
        # a stage with its own patch may train another network (SFR: a 2D SAM on stitched canvases),
        # so the patch's dimensionality and the VNet rule are checked only for inherited patches
        cfg = p.stage_config(stage)
        own_patch = "patch" in overrides
        _validate_train(cfg, f"{source}: stages.{stage}", len(cfg.patch) if own_patch else p.ndim, vnet and not own_patch)
    inf = p.inference
    if len(inf.patch) != p.ndim:
        raise ConfigError(f"{source}: inference.patch {list(inf.patch)} has {len(inf.patch)} dims; expected {p.ndim}")
    if len(inf.stride) != len(inf.patch) or any(s > q for s, q in zip(inf.stride, inf.patch)):
        raise ConfigError(f"{source}: inference.stride {list(inf.stride)}: expected {len(inf.patch)} values, each in "
                          f"1..the patch {list(inf.patch)}")
    if vnet and any(d % 16 for d in inf.patch):
        raise ConfigError(f"{source}: inference.patch {list(inf.patch)}: the VNet down-samples 4 times; expected multiples of 16")
    if inf.lcc_connectivity is not None:
        valid = LCC_CONNECTIVITIES[p.ndim]
        if not inf.largest_component:
            raise ConfigError(f"{source}: inference.lcc_connectivity {inf.lcc_connectivity}: set only with "
                              "largest_component: true (it is the connectivity of that step)")
        if inf.lcc_connectivity not in valid:
            raise ConfigError(f"{source}: inference.lcc_connectivity {inf.lcc_connectivity}: expected one of "
                              f"{', '.join(map(str, valid))} for a {p.ndim}D protocol")


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A protocol by packaged name (``la-smoke``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROTOCOL_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise unknown_name("protocol", str(name_or_path), protocol_names())
    elif not path.is_file():
        raise ConfigError(f"--protocol {path}: file not found; expected a protocol YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    return protocol_from_dict(data, str(path))
