"""What a record was computed on, as far as it decides the floating-point order of its numbers.

Why this exists: a run's numbers are reproducible only on the same compute. On a CPU, torch splits
reductions (matrix products, sums, convolutions) by its thread count, so one seed and recipe with
one and with two threads are two different runs: on ``kvasir-cpu`` that moved a 10 % run by up to
3.8 Dice points (``docs/cpu-tier.md``). On a GPU the card and its libraries decide. A record's
compute is therefore not part of its identity (the same experiment on other hardware is the same
row), but a comparison of two rows that ran on different compute mixes that effect into its Δ, and
the leaderboard says so (:func:`.statistics.attach_baseline_tests`).

The compute of a record comes from its ``provenance.json``: ``cpu, N thread(s)`` for CPU runs, the
GPU's name otherwise; ``None`` where the record has no (readable) provenance, which is never
reported as a difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .store import read_provenance

if TYPE_CHECKING:
    import torch

COMPUTE_LEGEND = ("‡ the two rows compared (or a row's own seeds) ran on different compute ({which}); runs are "
                  "reproducible only on the same compute (on a CPU: the same torch thread count), so this Δ "
                  "includes a floating-point-order effect (docs/cpu-tier.md)")


def compute_of(provenance: Mapping[str, Any]) -> str | None:
    """``cpu, 1 thread`` / ``cpu, 2 threads`` / the GPU's name, from a record's provenance."""
    device = provenance.get("device")
    if not isinstance(device, str) or not device:
        return None
    if not device.startswith("cpu"):
        return device
    threads = provenance.get("torch_threads")
    if not isinstance(threads, int):
        return "cpu"
    return f"cpu, {threads} thread{'s' * (threads != 1)}"


def current_compute(device: str | torch.device | None = None) -> str:
    """The compute a record started in this process on ``device`` would record (the provenance of
    :func:`.store.environment`)."""
    import torch

    from .store import device_name

    return compute_of({"device": device_name(device), "torch_threads": torch.get_num_threads()}) or "unknown"


def record_compute(record_dir: Path | None) -> str | None:
    """:func:`compute_of` the ``provenance.json`` in ``record_dir`` (``None`` without a readable one)."""
    provenance = read_provenance(record_dir)
    return compute_of(provenance) if provenance is not None else None


def row_compute(provenances: Iterable[Mapping[str, Any] | None]) -> frozenset[str]:
    """The distinct computes of a row's records, from their provenance (records without one are left out)."""
    return frozenset(c for c in (compute_of(p) for p in provenances if p is not None) if c is not None)


def compute_text(computes: Iterable[str]) -> str:
    """``cpu, 1 thread`` or, for a row whose seeds differ, ``cpu, 1 thread + cpu, 2 threads``."""
    return " + ".join(sorted(computes))


def computes_differ(a: frozenset[str], b: frozenset[str]) -> bool:
    """Whether a comparison of rows with these computes mixes floating-point orders: either row's own
    seeds differ, or the two rows ran on different compute. Unknown compute (empty) is not a difference."""
    if not a or not b:
        return False
    return len(a) > 1 or len(b) > 1 or a != b
