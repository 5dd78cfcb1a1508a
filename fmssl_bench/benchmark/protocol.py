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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, unknown_name

PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "protocols"


@dataclass(frozen=True)
class NetConfig:
    name: str = "vnet"  # vnet | unet2d | unet3d
    n_filters: int = 16
    normalization: str = "batchnorm"
    dropout: bool = True
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)  # unet only


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 6000
    batch_size: int = 4
    labeled_bs: int = 2
    patch: tuple[int, ...] = (112, 112, 80)
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # step | poly | constant
    step_size: int = 2500
    gamma: float = 0.1
    poly_power: float = 0.9
    augment: tuple[str, ...] = ("random_crop", "rot_flip")
    checkpoint_every: int = 1000
    checkpoint_rule: str = "last"  # the final iterate; never selected on the test set
    log_every: int = 50


@dataclass(frozen=True)
class InferenceConfig:
    mode: str = "sliding_window"  # sliding_window | whole_image
    patch: tuple[int, ...] = (112, 112, 80)
    stride: tuple[int, ...] = (18, 18, 4)
    sw_batch_size: int = 1
    largest_component: bool = False


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str = ""
    ndim: int = 3
    resize: tuple[int, ...] | None = None  # 2D: training/inference resolution; predictions resized back
    net: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    metrics: dict[str, Any] = field(default_factory=dict)
    eval_workers: int = 2
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-stage overrides of ``train`` fields, by stage name."""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    def stage_config(self, stage: str) -> TrainConfig:
        """``train`` with the stage's overrides from the ``stages:`` section applied."""
        return dataclasses.replace(self.train, **self.stages.get(stage, {}))


def _section(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value)
    return cls(**data)


def protocol_from_dict(data: dict[str, Any], source: str = "<dict>") -> Protocol:
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{source}: a protocol must be a YAML mapping with at least a 'name'")
    data = dict(data)
    sections = {
        "net": NetConfig,
        "train": TrainConfig,
        "inference": InferenceConfig,
    }
    for key, cls in sections.items():
        data[key] = _section(cls, data.get(key), f"{source}: section '{key}'")
    stages = data.get("stages") or {}
    if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
        raise ConfigError(f"{source}: section 'stages' must map stage names to mappings of train fields")
    data["stages"] = {}
    for stage, overrides in stages.items():
        _section(TrainConfig, overrides, f"{source}: section 'stages.{stage}'")  # unknown keys are an error
        data["stages"][str(stage)] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if data.get("resize") is not None:
        data["resize"] = tuple(data["resize"])
    data["source"] = source
    try:
        protocol = Protocol(**data)
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None
    _validate(protocol, source)
    return protocol


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "poly", "constant")


def _validate_train(t: TrainConfig, where: str, ndim: int, vnet: bool) -> None:
    if len(t.patch) != ndim:
        raise ConfigError(f"{where}.patch {list(t.patch)} has {len(t.patch)} dims; expected {ndim}")
    if not 0 < t.labeled_bs <= t.batch_size:
        raise ConfigError(f"{where}.labeled_bs must be in 1..batch_size ({t.batch_size})")
    if t.iterations < 1:
        raise ConfigError(f"{where}.iterations must be >= 1")
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"{where}.schedule {t.schedule!r}; expected step, poly or constant")
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"{where}.optimizer {t.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if vnet and any(d % 16 for d in t.patch):
        raise ConfigError(f"{where}.patch {list(t.patch)}: the VNet down-samples 4 times; expected multiples of 16")
    if t.checkpoint_rule != "last":
        raise ConfigError(f"{where}.checkpoint_rule {t.checkpoint_rule!r}; only 'last' is supported (no test-set selection)")


def _validate(p: Protocol, source: str) -> None:
    vnet = p.net.name == "vnet"
    _validate_train(p.train, f"{source}: train", p.ndim, vnet)
    for stage, overrides in p.stages.items():
        # a stage with its own patch may train another network (SFR: a 2D SAM on stitched canvases),
        # so the patch's dimensionality and the VNet rule are checked only for inherited patches
        cfg = p.stage_config(stage)
        own_patch = "patch" in overrides
        _validate_train(cfg, f"{source}: stages.{stage}", len(cfg.patch) if own_patch else p.ndim, vnet and not own_patch)
    if p.inference.mode not in ("sliding_window", "whole_image"):
        raise ConfigError(f"{source}: inference.mode {p.inference.mode!r}; expected sliding_window or whole_image")
    if vnet and any(d % 16 for d in p.inference.patch):
        raise ConfigError(f"{source}: inference.patch {list(p.inference.patch)}: the VNet down-samples 4 times; expected multiples of 16")


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
