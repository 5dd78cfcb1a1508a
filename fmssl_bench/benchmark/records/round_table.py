"""Per-round tables of iterative methods (SamDSK, IFDL, ...): what each round added and what it scored.

Why: an iterative method's final Dice hides its rounds: how many images a round accepted, how good
their pseudo-labels were against the labels the method never saw, whether the test Dice rose. The
runner records all of it in ``provenance.json``: ``round_evaluation`` (test Dice of the model after
each round, tags ``round<r>``), ``pseudo_label_quality.mean_dice_by_tag`` (tags ``round<r>``,
``<variant>_round<r>`` or ``round<r>_<variant>``, e.g. IFDL's ``unet_round1``, SamDSK's
``round1_rejected``) and the method's own ``rounds`` facts (a list of dicts with ``round``, or a dict
keyed ``round<r>``). This module lays them out, one row per record and round, without knowing the
methods: a new iterative method gets its table by recording the same keys.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tabulate import tabulate

from .leaderboard import record_dir
from .store import read_provenance

TAG = re.compile(r"^(?:(?P<pre>[a-z0-9]+)_)?round(?P<round>\d+)(?:_(?P<post>[a-z0-9_]+))?$")
KEYS = ("dataset", "protocol", "method", "labeled", "seed", "round")
LEGEND = ("test Dice %: the model after the round on the test split (round 0: before any pseudo-label); "
          "PL Dice %: the round's pseudo-labels against the hidden labels of those cases (in brackets: a "
          "variant, e.g. unet = the dedicated model's own, rejected = images a round did not accept); "
          "the other columns are the method's own round facts from provenance.json")


def parse_tag(tag: str) -> tuple[int, str] | None:
    """``round2`` -> (2, ""), ``unet_round1`` -> (1, "unet"), ``round1_rejected`` -> (1, "rejected")."""
    m = TAG.match(tag)
    if m is None:
        return None
    return int(m["round"]), "_".join(p for p in (m["pre"], m["post"]) if p)


def _column(name: str, variant: str) -> str:
    return f"{name} ({variant})" if variant else name


def _scalars(facts: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numbers, short number lists (``1,2``) and one level of nested numbers (``objects.box``); case id
    lists and texts are left out (they belong to the artifacts, not a table)."""
    out: dict[str, Any] = {}
    for key, value in facts.items():
        name = f"{prefix}{key}"
        if key == "round" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[name] = round(value, 4) if isinstance(value, float) else value
        elif isinstance(value, list) and value and len(value) <= 8 and all(isinstance(v, (int, float)) for v in value):
            out[name] = ",".join(str(v) for v in value)
        elif isinstance(value, Mapping) and not prefix:
            out.update(_scalars(value, prefix=f"{name}."))
    return out


def method_round_facts(facts: Any) -> dict[int, dict[str, Any]]:
    """``{round: facts}`` from a method's provenance entry (its ``rounds`` key, either form)."""
    rounds = facts.get("rounds") if isinstance(facts, Mapping) else None
    out: dict[int, dict[str, Any]] = {}
    if isinstance(rounds, list):
        for entry in rounds:
            if isinstance(entry, Mapping) and isinstance(entry.get("round"), int):
                out[entry["round"]] = _scalars(entry)
    elif isinstance(rounds, Mapping):
        for tag, entry in rounds.items():
            parsed = parse_tag(str(tag))
            if parsed is not None and isinstance(entry, Mapping):
                out[parsed[0]] = _scalars(entry)
    return out


def record_rounds(summary: Mapping[str, Any], provenance: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of one record (none if it has no rounds)."""
    by_round: dict[int, dict[str, Any]] = {}
    for tag, classes in (provenance.get("round_evaluation") or {}).items():
        parsed = parse_tag(tag)
        if parsed is not None and classes:
            by_round.setdefault(parsed[0], {})[_column("test Dice %", parsed[1])] = \
                round(100 * sum(classes.values()) / len(classes), 2)
    quality = (provenance.get("pseudo_label_quality") or {}).get("mean_dice_by_tag") or {}
    for tag, dice in quality.items():
        parsed = parse_tag(tag)
        if parsed is not None and dice is not None:
            by_round.setdefault(parsed[0], {})[_column("PL Dice %", parsed[1])] = round(100 * float(dice), 2)
    method_facts = (provenance.get("method") or {}).get(summary["method"])
    for r, facts in method_round_facts(method_facts).items():
        by_round.setdefault(r, {}).update(facts)
    head = {k: summary.get(k) for k in KEYS[:-1]}
    return [{**head, "round": r, **by_round[r]} for r in sorted(by_round)]


def round_rows(summaries: Iterable[Mapping[str, Any]], dataset: str | None = None,
               method: str | None = None) -> list[dict[str, Any]]:
    """Every record's rows, sorted by data set, protocol, method, budget, seed and round."""
    rows: list[dict[str, Any]] = []
    for s in summaries:
        if (dataset and s.get("dataset") != dataset) or (method and s.get("method") != method):
            continue
        provenance = read_provenance(record_dir(s))
        if provenance is not None:
            rows.extend(record_rounds(s, provenance))
    return _sorted(rows)


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(str(r[k]).zfill(8) if k in ("seed", "round") else str(r[k]) for k in KEYS))


def leaderboard_round_rows(table: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the records behind leaderboard rows (their ``_records``, with the ``_provenances``
    the leaderboard has read already), for the HTML page."""
    rows: list[dict[str, Any]] = []
    for row in table:
        head = {"dataset": row["dataset"], "protocol": row["protocol"], "method": row["method"], "labeled": row["labeled"]}
        for (seed, _), provenance in zip(row.get("_records", []), row.get("_provenances", [])):
            if provenance is not None:
                rows.extend(record_rounds({**head, "seed": seed}, provenance))
    return _sorted(rows)


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Key columns, then the scores, then the method facts, each in first-seen order."""
    seen = list(dict.fromkeys(k for r in rows for k in r if k not in KEYS))
    scores = [c for c in seen if c.startswith(("test Dice %", "PL Dice %"))]
    return [*KEYS, *scores, *(c for c in seen if c not in scores)]


def render_rounds(rows: list[dict[str, Any]], fmt: str = "md") -> str:
    """``md`` (a table per method, then the legend) or ``csv`` (one table); a missing value is an empty cell."""
    if fmt == "csv":
        cols = columns(rows)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        writer.writerows([["" if r.get(c) is None else r.get(c) for c in cols] for r in rows])
        return buf.getvalue()
    if not rows:
        return "no record with rounds\n"
    blocks = []
    for method in dict.fromkeys(r["method"] for r in rows):  # one table per method: their facts differ
        mine = [r for r in rows if r["method"] == method]
        cols = columns(mine)
        blocks.append(f"#### {method}\n\n" + tabulate([[r.get(c, "") for c in cols] for r in mine], headers=cols,
                                                       tablefmt="github"))
    return "\n\n".join(blocks) + f"\n\n{LEGEND}\n"
