"""Method registry (USB style): ``@register_method`` on a :class:`Method` subclass."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ..errors import ConfigError, unknown_name
from ..api import Method

_METHODS: dict[str, type[Method]] = {}
_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name or not cls.description:
        raise ValueError(f"{cls.__name__} needs a name and a one-line description")
    _METHODS[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        # every module of the package is imported once; a module registers what it defines, so a
        # new method is one new file (helpers such as losses.py simply register nothing)
        for module in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
            importlib.import_module(f"{__package__}.{module.name}")
        _loaded = True


def method_names() -> list[str]:
    _load()
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    _load()
    if name not in _METHODS:
        raise unknown_name("method", name, list(_METHODS))
    return _METHODS[name]


def paper_names() -> dict[str, list[tuple[str, str]]]:
    """harness method -> how the seed papers print it, from each method's own registration."""
    _load()
    return {n: list(cls.paper_names) for n, cls in sorted(_METHODS.items()) if cls.paper_names}


def describe_methods() -> dict[str, str]:
    _load()
    return {n: _METHODS[n].description for n in sorted(_METHODS)}


def describe_arguments(cls: type[Method]) -> list[tuple[str, str, str, str]]:
    """(name, default, expected, help) of each declared argument (``fmssl-bench list methods --args``)."""
    def shown(value: Any) -> str:
        return "none" if value is None else str(value)

    return [(name, shown(cls.defaults[name]), arg.expected(), arg.help) for name, arg in cls.arguments.items()]


def coerce_value(text: str) -> Any:
    """``--dataset-option`` values: int, float, bool, none or string (adapters check their own options)."""
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


def split_pairs(pairs: list[str] | None, flag: str = "--method-arg") -> dict[str, str]:
    """``KEY=VALUE`` texts -> {key: text}; the values are parsed later against the declared types."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_method_args(pairs: list[str] | None) -> dict[str, Any]:
    """``--dataset-option`` pairs with :func:`coerce_value` (method arguments use :func:`split_pairs`)."""
    return {key: coerce_value(value) for key, value in split_pairs(pairs, "--dataset-option").items()}


def _unknown(cls: type[Method], key: str) -> str:
    return (f"unknown argument of method {cls.name!r}; expected one of {', '.join(cls.arguments)}"
            if cls.arguments else f"method {cls.name!r} takes no arguments")


def component_args(cls: type[Method], protocol) -> dict[str, Any]:
    """The arguments a method composed into another (SFR's base) runs with: its defaults, then its
    own ``method_args`` of the protocol, exactly as when it runs alone under that protocol."""
    return resolve_method_args(cls, protocol.method_args.get(cls.name, {}), {}, protocol.where)


def resolve_method_args(cls: type[Method], protocol_args: dict[str, Any], cli_args: dict[str, Any],
                        protocol_source: str = "protocol") -> dict[str, Any]:
    """defaults < protocol ``method_args[<name>]`` < CLI, every value typed and checked.

    Protocol values are checked against the declared types (YAML already typed them); CLI values
    that are text (``--method-arg key=TEXT``) are parsed as the declared type, other values checked.
    Errors name the flag or the protocol field and say what was expected.
    """
    resolved = dict(cls.defaults)
    if not isinstance(protocol_args, dict):
        raise ConfigError(f"{protocol_source}: method_args.{cls.name} must be a mapping of argument names to values")
    for key, value in protocol_args.items():
        where = f"{protocol_source}: method_args.{cls.name}.{key}"
        if key not in cls.arguments:
            raise ConfigError(f"{where}: {_unknown(cls, key)}")
        try:
            resolved[key] = cls.arguments[key].check(value)
        except ValueError as err:
            raise ConfigError(f"{where} {value!r}: expected {err}") from None
    for key, value in cli_args.items():
        if key not in cls.arguments:
            raise ConfigError(f"--method-arg {key}: {_unknown(cls, key)}")
        arg = cls.arguments[key]
        try:
            resolved[key] = arg.parse(value) if isinstance(value, str) else arg.check(value)
        except ValueError as err:
            raise ConfigError(f"--method-arg {key}={value}: expected {err} for method {cls.name!r} "
                              "(see `fmssl-bench list methods --args`)") from None
    return resolved
