"""Method registry (USB style): ``@register_method`` on a :class:`Method` subclass."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError, unknown_name
from ..api import Method

_METHODS: dict[str, type[Method]] = {}
_MODULES = ("supervised", "mean_teacher", "semisam", "sam_zero_shot")
_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name or not cls.description:
        raise ValueError(f"{cls.__name__} needs a name and a one-line description")
    _METHODS[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(f"{__package__}.{module}")
        _loaded = True


def method_names() -> list[str]:
    _load()
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    _load()
    if name not in _METHODS:
        raise unknown_name("method", name, list(_METHODS))
    return _METHODS[name]


def describe_methods() -> dict[str, str]:
    _load()
    return {n: _METHODS[n].description for n in sorted(_METHODS)}


def coerce_value(text: str) -> Any:
    """``--method-arg`` values: int, float, bool, none or string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_method_args(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--method-arg {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = coerce_value(value.strip())
    return out


def resolve_method_args(cls: type[Method], protocol_args: dict[str, Any], cli_args: dict[str, Any]) -> dict[str, Any]:
    """defaults < protocol ``method_args[<name>]`` < CLI; unknown keys are an error."""
    merged = {**cls.defaults, **protocol_args, **cli_args}
    unknown = sorted(set(merged) - set(cls.defaults))
    if unknown:
        raise ConfigError(
            f"method {cls.name!r}: unknown argument(s) {unknown}; expected some of {sorted(cls.defaults) or 'none'}"
        )
    return merged
