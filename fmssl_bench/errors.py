"""User-facing errors.

Every problem caused by input (a flag, a file, a data set) raises :class:`FmsslError` with a
one-line message that names the flag or file and what was expected. The CLI prints the message
alone (no traceback) and exits with status 2.
"""

from __future__ import annotations


class FmsslError(Exception):
    """An input error with a message meant for the user, not a bug."""


class DataError(FmsslError):
    """A data set on disk does not look like its adapter expects."""


class ConfigError(FmsslError):
    """A flag, protocol file or registry name is invalid."""


class RecordBusy(FmsslError):
    """Another live process holds the record's lock (raised only when the caller chose not to wait)."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    """Error for an unknown registry entry that lists the valid names."""
    return ConfigError(f"unknown {kind} {name!r}; expected one of: {', '.join(sorted(valid))}")
