"""Run identity: a record's key is a hash of everything that changes its numbers, and nothing else.

What enters (:func:`run_identity`):

- ``record_format``: bumped when the meaning of a record's files changes;
- ``dataset`` and its adapter options;
- ``method`` and its fully resolved arguments (its defaults, then *its own* ``method_args`` of the
  protocol, then ``--method-arg``), and those of the methods it composes (``components``: SFR's base);
- ``protocol``: the protocol's result-determining fields (:func:`result_fields`): not its name or
  description, not run-time settings (checkpoint/log frequency, sliding-window batch size, worker
  counts), not the ``method_args`` of other methods and not the ``stages:`` sections of stages
  the method does not train (``Method.stages_used``; the runner removes them);
- ``overrides``: ``--iterations`` and per-stage overrides;
- ``split``: sha256 of the labeled, unlabeled and test ids (and their counts);
- ``generalists``: the weights sha256 of every foundation model the method will use;
- ``seed``.

Two records with the same identity are the same experiment (a cache hit); any difference gives a
new record. Leaderboard rows aggregate records whose identities differ only in the seed and in
which cases the seed drew as labeled (:func:`row_identity`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping, Sequence

#: bump when the meaning of a record's files changes (old records then never match new runs)
RECORD_FORMAT = 2

#: protocol fields that change how a run is executed or logged, never its numbers
RUNTIME_FIELDS = frozenset({
    "name", "description", "source", "method_args", "eval_workers",
    "train.checkpoint_every", "train.log_every", "inference.sw_batch_size",
})
RUNTIME_STAGE_FIELDS = frozenset({"checkpoint_every", "log_every"})


def canonical_json(data: Any) -> str:
    """Stable JSON: sorted keys, tuples as lists, no whitespace variation."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def digest(data: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:length]


def ids_digest(ids: Iterable[str]) -> str:
    """Order-sensitive hash of a list of case ids (order matters: LA takes the first N)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": 0.01}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def result_fields(protocol_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol's result-determining fields (nested), run-time settings removed."""
    flat = flatten(protocol_dict)
    kept = {}
    for key, value in flat.items():
        if key in RUNTIME_FIELDS or key.split(".")[0] in RUNTIME_FIELDS:
            continue
        if value is None:  # an optional feature that is off: adding such a field later keeps old identities
            continue
        parts = key.split(".")
        if parts[0] == "stages" and len(parts) == 3 and parts[2] in RUNTIME_STAGE_FIELDS:
            continue
        kept[key] = value
    return unflatten(kept)


def protocol_for_identity(protocol_dict: Mapping[str, Any], stages: Sequence[str]) -> dict[str, Any]:
    """The protocol as the identity sees it: only the ``stages:`` sections of the method's own stages,
    so declaring a stage for one method (SFR's ``finetune``) leaves every other record's identity alone."""
    data = dict(protocol_dict)
    data["stages"] = {name: cfg for name, cfg in (data.get("stages") or {}).items() if name in stages}
    return data


def split_identity(labeled: list[str], unlabeled: list[str], test: list[str]) -> dict[str, Any]:
    return {
        "n_labeled": len(labeled), "n_unlabeled": len(unlabeled), "n_test": len(test),
        "labeled": ids_digest(labeled), "unlabeled": ids_digest(unlabeled), "test": ids_digest(test),
    }


def run_identity(*, dataset: str, dataset_options: Mapping[str, Any], method: str, method_args: Mapping[str, Any],
                 protocol: Mapping[str, Any], overrides: Mapping[str, Any], split: Mapping[str, Any],
                 generalists: Mapping[str, str | None], seed: int, budget: str,
                 components: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The resolved identity of a run (stored in ``config.json``; its digest names the record)."""
    identity = {
        "record_format": RECORD_FORMAT,
        "dataset": dataset,
        "dataset_options": dict(sorted(dataset_options.items())),
        "method": method,
        "method_args": dict(sorted(method_args.items())),
        "protocol": result_fields(protocol),
        "overrides": {k: v for k, v in sorted(overrides.items()) if v not in (None, {}, [])},
        "budget": budget,
        "split": dict(split),
        "generalists": dict(sorted(generalists.items())),
        "seed": seed,
    }
    if components:  # absent when empty, so the identities of methods without components stay as they were
        identity["components"] = {name: dict(sorted(args.items())) for name, args in sorted(components.items())}
    return identity


def row_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """What a leaderboard row shares: the identity without the seed and the seed-drawn case lists.

    Data sets with seeded budgets draw different labeled cases per seed; the budget, the counts
    and the test set stay part of the row.
    """
    row = {k: v for k, v in identity.items() if k != "seed"}
    split = dict(row.get("split", {}))
    split.pop("labeled", None)
    split.pop("unlabeled", None)
    row["split"] = split
    return row

