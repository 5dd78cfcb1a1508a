"""Leaderboards, computed from run records (never typed by hand).

A row is a run identity without its seed (``row_key``, see :func:`.identity.row_identity`): the
records of one row differ only in the seed, so anything else that changes the numbers (a method
argument, a protocol field, an ``--iterations`` override, the split) makes another row. Rows of
the same (dataset, protocol, method, labeled) that differ name what differs in the ``args`` column
(``train.lr=0.3``, ``consistency=50``, ``iterations=10``), as do method arguments changed from the
method's defaults and protocol fields changed from the named protocol file.

Values are the mean over seeds of each run's mean over test cases (and classes), ± the sample
standard deviation over seeds (ddof = 1; none with one seed), with the mean per-case standard
deviation as the spread. The paper column holds the seed papers' printed number where the row is
comparable with it (:mod:`.comparability` computes that), else why not. Each row is compared
with the supervised row of its protocol and budget, paired over test cases (:mod:`.statistics`);
the column appears when some row has such a baseline.

Old-format summaries (no ``row_key``) are shown under (dataset, protocol, method, labeled) with
``old record format`` in ``args`` and a warning; they are never comparable with a paper.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from tabulate import tabulate

try:  # Python >= 3.11
    from importlib.resources.abc import Traversable
except ImportError:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable

from ...errors import FmsslError
from ..evaluation.metrics import METRICS, OPTIONAL_METRICS, PAPER_EMPTY_POLICY
from .compute import COMPUTE_LEGEND, compute_text, row_compute
from .comparability import (PAPER_DATASETS, compare, describe, format_value, method_defaults,
                            paper_candidates, paper_text, reference_fields)
from .identity import flatten
from .statistics import METHOD_TEXT, attach_baseline_tests, baseline_keys, case_dice
from .store import atomic_write_text, read_provenance, summary_paths

__all__ = ["PAPER_DATASETS", "aggregate", "find_summaries", "headers", "paper_dir", "paper_numbers",
           "paper_value", "record_dir", "render", "write_leaderboards"]

PERCENT = {"dice", "jaccard", "sensitivity"}
PAPER_ENV = "FMSSL_PAPER_NUMBERS"
LEGACY_ARGS = "old record format"
#: identity fields that are columns of their own (or the seed-free part of the split)
COLUMN_FIELDS = frozenset({"dataset", "method", "budget", "split.n_labeled", "split.n_unlabeled", "split.n_test"})
#: identity prefixes dropped from the args text: ``protocol.train.lr`` reads ``train.lr``
SHORT_PREFIXES = ("protocol.", "method_args.", "overrides.")
#: fields whose values are digests; shortened in the args text
DIGEST_PREFIXES = ("generalists.", "split.test")


# --------------------------------------------------------------------------- paper numbers


def paper_dir() -> Traversable:
    """``$FMSSL_PAPER_NUMBERS`` if set, else the copy inside the package (works installed and in the image)."""
    override = os.environ.get(PAPER_ENV)
    if override:
        return Path(override)
    return resources.files("fmssl_bench") / "paper_numbers"


def paper_numbers(directory: Path | Traversable | None = None) -> list[dict[str, str]]:
    """Every printed number of the seed papers, one dict per CSV row (``paper,table,...,value``)."""
    root = paper_dir() if directory is None else directory
    rows: list[dict[str, str]] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".csv"):
            rows += list(csv.DictReader(io.StringIO(entry.read_text(encoding="utf-8"))))
    return rows


def paper_value(papers: list[dict[str, str]], dataset: str, method: str, labeled: str, metric: str = "dice") -> str:
    """Printed paper numbers for a (dataset, method, labeled), e.g. ``88.12 (002 I)``, whatever the setting.

    A lookup, not a comparability judgement (that is :func:`.comparability.compare`); empty when
    nothing matches.
    """
    return "; ".join(dict.fromkeys(paper_text(r) for r in paper_candidates(papers, dataset, method, labeled, metric)))


# --------------------------------------------------------------------------- reading records


def find_summaries(root: Path) -> list[dict[str, Any]]:
    """Every ``summary.json`` under ``root``; ``_dir`` is the folder it was found in.

    ``summary["record"]`` is where the run wrote it; records are moved and committed elsewhere,
    so the per-case values are read next to the file actually found (:func:`record_dir`).
    """
    out = []
    for path in summary_paths(Path(root)):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue  # a summary is written atomically; an unreadable one is not ours
        if isinstance(data, dict):
            out.append({**data, "_dir": str(path.parent)})
    return out


def record_dir(s: Mapping[str, Any]) -> Path | None:
    """The record folder of a summary: where it was found, else where it was written."""
    where = s.get("_dir") or s.get("record")
    return Path(where) if where else None


def _is_summary(s: Mapping[str, Any]) -> bool:
    return all(k in s for k in ("dataset", "method", "labeled"))


def _is_legacy(s: Mapping[str, Any]) -> bool:
    return not (s.get("row_key") and isinstance(s.get("row_identity"), Mapping))


def _row_key(s: Mapping[str, Any]) -> tuple[str, ...]:
    if _is_legacy(s):
        return ("legacy", s["dataset"], str(s.get("protocol", "")), s["method"], str(s["labeled"]))
    return ("row", s["row_key"])


Groups = dict[tuple[str, ...], list[dict[str, Any]]]


def _group_rows(summaries: Iterable[dict[str, Any]], dataset: str | None) -> Groups:
    """Records by row; a record found twice (same ``identity_hash``, e.g. a copied folder) counts once."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    seen: set[str] = set()
    skipped = legacy = 0
    for s in summaries:
        if not isinstance(s, Mapping) or not _is_summary(s):
            skipped += 1
            continue
        if dataset and s["dataset"] != dataset:
            continue
        ident = s.get("identity_hash")
        if ident and ident in seen:
            continue
        if ident:
            seen.add(ident)
        legacy += _is_legacy(s)
        groups.setdefault(_row_key(s), []).append(s)
    if skipped:
        warnings.warn(f"leaderboard: skipped {skipped} summary file(s) without dataset/method/labeled", stacklevel=3)
    if legacy:
        warnings.warn(f"leaderboard: {legacy} record(s) in the old format (no run identity) are shown as "
                      f"'{LEGACY_ARGS}' rows and are never paper-comparable; re-run them to get identities",
                      stacklevel=3)
    return groups


# --------------------------------------------------------------------------- statistics


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof = 1) of the finite values; std is NaN below two values."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def _stat(run: Mapping[str, Any], metric: str, key: str) -> float:
    value = ((run.get("classes") or {}).get("mean") or {}).get(metric, {}).get(key)
    return float("nan") if value is None else float(value)


def _metric_columns(runs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    optional = [m for m in OPTIONAL_METRICS if any(m in ((r.get("classes") or {}).get("mean") or {}) for r in runs)]
    for metric in (*METRICS, *optional):
        scale = 100.0 if metric in PERCENT else 1.0
        out[metric], out[f"{metric}_std_seeds"] = _mean_std([_stat(r, metric, "mean") * scale for r in runs])
        out[f"{metric}_std_cases"] = _mean_std([_stat(r, metric, "std") * scale for r in runs])[0]
    return out


# --------------------------------------------------------------------------- the args column


def _identity_fields(s: Mapping[str, Any]) -> dict[str, Any]:
    """A row's flattened identity (``protocol.train.lr``), without fields that are columns."""
    if _is_legacy(s):
        return {}
    flat = flatten(s["row_identity"])
    return {k: v for k, v in flat.items()
            if k not in COLUMN_FIELDS and k != "protocol.paper_comparable" and v != {}}  # {}: nothing set


def _named_protocol_fields(name: str) -> dict[str, Any] | None:
    """The packaged protocol of that name, as ``protocol.<field>`` identity keys."""
    try:
        return {f"protocol.{k}": v for k, v in reference_fields(name).items()}
    except FmsslError:
        return None  # a protocol given as a path, or since removed: nothing to compare with


def _changed_fields(s: Mapping[str, Any], fields: Mapping[str, Any]) -> list[str]:
    """Fields that differ from defaults: method args vs the method's, protocol fields vs the named file, overrides."""
    changed = [k for k in fields if k.startswith("overrides.")]
    defaults = method_defaults(s) or {}
    changed += [k for k in fields if k.startswith("method_args.") and k[len("method_args."):] in defaults
                and fields[k] != defaults[k[len("method_args."):]]]
    named = _named_protocol_fields(str(s.get("protocol", "")))
    if named is not None:
        changed += [k for k in fields if k.startswith("protocol.") and k in named
                    and format_value(fields[k]) != format_value(named[k])]
    return changed


def _arg_text(key: str, value: Any) -> str:
    name = next((key[len(p):] for p in SHORT_PREFIXES if key.startswith(p)), key)
    text = format_value(value)
    if key.startswith(DIGEST_PREFIXES) and len(text) > 10:
        text = text[:8] + "…"
    return f"{name}={text}"


def _args_columns(rows: list[list[dict[str, Any]]]) -> list[str]:
    """The args text of each row: fields varying among rows of its (dataset, protocol, method, labeled)
    group, plus fields changed from the method's / protocol's defaults."""
    fields = [_identity_fields(runs[0]) for runs in rows]
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, runs in enumerate(rows):
        s = runs[0]
        groups.setdefault((s["dataset"], str(s.get("protocol", "")), s["method"], str(s["labeled"])), []).append(i)
    varying: dict[int, set[str]] = {}
    for members in groups.values():
        keys = set().union(*(fields[i] for i in members))
        vary = {k for k in keys if len({format_value(fields[i].get(k, "—")) for i in members}) > 1}
        for i in members:
            varying[i] = vary
    out = []
    for i, runs in enumerate(rows):
        if _is_legacy(runs[0]):
            out.append(LEGACY_ARGS)
            continue
        keys = dict.fromkeys(k for k in sorted(varying[i]) + _changed_fields(runs[0], fields[i]) if k in fields[i])
        out.append(", ".join(_arg_text(k, fields[i][k]) for k in keys))
    return out


# --------------------------------------------------------------------------- the table


def _counts(s: Mapping[str, Any]) -> dict[str, Any]:
    split = (s.get("row_identity") or {}).get("split") or {}
    return {k: s.get(k, split.get(k)) for k in ("n_labeled", "n_unlabeled", "n_test")}


ZERO_POLICY_TEXT = "HD95 0 for empty predictions, as in UA-MT"


def _empty_masks(runs: list[dict[str, Any]]) -> int:
    """One-sided empty masks over the row's seeds: empty predictions plus empty references.

    Records written before ``empty_references`` was recorded count their empty predictions only
    (the LA and Kvasir test sets have no empty reference mask)."""
    return sum(sum((r.get(key) or {}).values()) for r in runs for key in ("empty_predictions", "empty_references"))


def uses_zero_policy(metric_ids: Mapping[str, str]) -> bool:
    """Whether a record's distances score an empty prediction 0 (``empty_policy: zero``)."""
    return any(f";empty={PAPER_EMPTY_POLICY}" in str(i) for i in metric_ids.values())


def _oracle_note(s: Mapping[str, Any]) -> str:
    """An oracle row's paper cell: the zero-shot table whose recipe it follows (never comparable:
    prompts come from the test reference and the generalist is not the table's model)."""
    recipe = s.get("oracle_recipe") if s.get("oracle") else None
    return f"recipe of {recipe} (oracle, not comparable)" if recipe else ""


def _row(runs: list[dict[str, Any]], args: str, papers: list[dict[str, str]]) -> dict[str, Any]:
    """A table row; keys starting with ``_`` are for the statistics and the HTML page, not the CSV."""
    first = runs[0]
    comparisons = compare({**first, **_counts(first), "empty_masks": _empty_masks(runs)}, papers)
    zero = uses_zero_policy(first.get("metric_ids") or {})
    protocols = "/".join(sorted({str(r.get("protocol", "")) for r in runs}))
    provenances = [read_provenance(record_dir(r)) for r in runs]  # read once: compute here, rounds on the page
    compute = row_compute(provenances)
    row: dict[str, Any] = {
        "dataset": first["dataset"], "protocol": protocols, "method": first["method"], "labeled": str(first["labeled"]),
        "args": args, "seeds": len({r.get("seed") for r in runs}), **_counts(first), **_metric_columns(runs),
        "empty_pred": sum(sum((r.get("empty_predictions") or {}).values()) for r in runs),
        "empty_policy_zero": zero,
        "oracle": any(r.get("oracle") for r in runs), "external": any(r.get("external") for r in runs),
        "metric_ids": " ".join(sorted(set((first.get("metric_ids") or {}).values()) - PERCENT)),
        "paper_dice": describe(comparisons) or _oracle_note(first),
        "row_key": first.get("row_key", ""), "compute": compute_text(compute), "_compute": compute,
        "_comparisons": comparisons, "_baseline_keys": baseline_keys(first),
        "_records": [(r.get("seed"), record_dir(r)) for r in runs], "_provenances": provenances,
        "_case_dice": case_dice(record_dir(r) for r in runs),
    }
    return row


def aggregate(summaries: Iterable[dict[str, Any]], dataset: str | None = None) -> list[dict[str, Any]]:
    """One leaderboard row per run identity without the seed (see the module docstring)."""
    rows = [sorted(runs, key=lambda s: str(s.get("seed"))) for runs in _group_rows(summaries, dataset).values()]
    ordered = sorted(zip(rows, _args_columns(rows)), key=lambda pair: (*_sort_key(pair[0][0]), pair[1]))
    papers = paper_numbers()
    table = [_row(runs, args, papers) for runs, args in ordered]
    attach_baseline_tests(table)
    return table


def _sort_key(s: Mapping[str, Any]) -> tuple[str, ...]:
    labeled = str(s["labeled"])
    return (s["dataset"], str(s.get("protocol", "")), s["method"], labeled.zfill(8) if labeled.isdigit() else labeled)


# --------------------------------------------------------------------------- rendering


def _fmt(row: dict[str, Any], metric: str) -> str:
    mean = row[metric]
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.2f}"
    if not math.isnan(row[f"{metric}_std_seeds"]):
        text += f" ± {row[f'{metric}_std_seeds']:.2f}"
    if not math.isnan(row[f"{metric}_std_cases"]):
        text += f" (±{row[f'{metric}_std_cases']:.1f})"
    return text


KEY_HEADERS = ["dataset", "protocol", "method", "labeled", "args", "L/U/test", "seeds"]
TAIL_HEADERS = ["empty pred", "paper Dice %"]
METRIC_HEADERS = {"dice": "Dice %", "jaccard": "Jaccard %", "hd95": "HD95", "asd": "ASD", "sensitivity": "Sen %",
                  "hd": "HD"}
HEADERS = [*KEY_HEADERS, *(METRIC_HEADERS[m] for m in METRICS), *TAIL_HEADERS]
STAT_HEADER = "Δ Dice vs supervised [95% CI], p"
LEGEND = ("mean over test cases, ± sample std over seeds (ddof 1; shown from 2 seeds on, the seeds column counts them), (± mean per-case std); "
          "args: what differs from the other rows of the same dataset/protocol/method/labeled or from the "
          "defaults; paper Dice % only where the run's setting equals the paper's")
STAT_LEGEND = f"{STAT_HEADER}: Dice % points against the supervised row of the same protocol and budget, {METHOD_TEXT}"


def shown_metrics(table: list[dict[str, Any]]) -> list[str]:
    """:data:`METRICS`, plus each optional metric some row of ``table`` has (a protocol's ``metrics.hd: max``),
    after the column :data:`OPTIONAL_METRICS` names for it."""
    shown = list(METRICS)
    for metric, after in OPTIONAL_METRICS.items():
        if any(metric in r for r in table):
            shown.insert(shown.index(after) + 1, metric)
    return shown


def stat_legends(table: list[dict[str, Any]]) -> list[str]:
    """The statistics' legend lines of ``table``: the method, and the ‡ of comparisons across computes."""
    if not has_stat_column(table):
        return []
    if not any(r.get("compute_differs") for r in table):
        return [STAT_LEGEND]
    which = "; ".join(sorted(frozenset().union(*(r.get("_compute") or frozenset() for r in table))))
    return [STAT_LEGEND, COMPUTE_LEGEND.format(which=which)]


def has_stat_column(table: list[dict[str, Any]]) -> bool:
    """Whether some row has a supervised baseline to be compared with (else the column is left out)."""
    return any(r.get("_has_baseline") for r in table)


def headers(table: list[dict[str, Any]]) -> list[str]:
    """The display columns of ``table``: :data:`HEADERS` with its optional metrics (:func:`shown_metrics`), and the
    statistics after Dice where it has them."""
    cols = [*KEY_HEADERS, *(METRIC_HEADERS[m] for m in shown_metrics(table)), *TAIL_HEADERS]
    if not has_stat_column(table):
        return cols
    i = cols.index("Dice %") + 1
    return [*cols[:i], STAT_HEADER, *cols[i:]]


def _split_text(r: Mapping[str, Any]) -> str:
    return "/".join("?" if r.get(k) is None else str(r[k]) for k in ("n_labeled", "n_unlabeled", "n_test"))


def display_rows(table: list[dict[str, Any]]) -> list[list[Any]]:
    """Cell texts of ``table`` in the order of :func:`headers`."""
    stat, shown = has_stat_column(table), shown_metrics(table)
    rows = []
    for r in table:
        method = r["method"] + (" [oracle]" if r["oracle"] else "") + (" [external]" if r.get("external") else "")
        metrics = [_fmt(r, m) if m in r else "" for m in shown]
        if stat:
            metrics.insert(shown.index("dice") + 1, r.get("vs_supervised", ""))
        empty = f"{r['empty_pred']} ({ZERO_POLICY_TEXT})" if r.get("empty_policy_zero") else r["empty_pred"]
        rows.append([r["dataset"], r["protocol"], method, r["labeled"], r["args"], _split_text(r), r["seeds"],
                     *metrics, empty, r["paper_dice"]])
    return rows


def render(table: list[dict[str, Any]], fmt: str = "md") -> str:
    if fmt == "csv":
        return _render_csv(table)
    rows, cols = display_rows(table), headers(table)
    ids = sorted({r["metric_ids"] for r in table if r["metric_ids"]})
    stat_legend = stat_legends(table)
    if fmt == "html":  # a bare table; the page people read is :mod:`.html_page`
        body = tabulate(rows, headers=cols, tablefmt="html")
        notes = [LEGEND, *stat_legend] + [f"distance metrics: {i}" for i in ids]
        note = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
        return f"<!doctype html><meta charset='utf-8'><title>fmssl-bench leaderboard</title>{body}{note}\n"
    rows, notes = _footnoted(rows)
    text = tabulate(rows, headers=cols, tablefmt="github" if fmt == "md" else "simple")
    legend = f"\n\n{LEGEND}" + (f"; distances in the units of the ids: {'; '.join(ids)}" if ids else "")
    zero = sum(1 for r in table if r.get("empty_policy_zero"))
    if zero:
        legend += (f"\n\n{zero} row(s) score an empty prediction HD95 = ASD = 0 (empty_policy zero, the UA-MT / "
                   "SemiSAM / SFR test code's convention, for comparison with those papers only): their empty pred "
                   "cell says so and counts the predictions scored 0")
    legend += "".join(f"\n\n{t}" for t in stat_legend)
    if notes:
        legend += "\n\npaper Dice %, why not comparable:\n" + "\n".join(
            f"- [{k}] {why}" for k, why in enumerate(notes, 1))
    return text + (legend if table else "") + "\n"


def _footnoted(rows: list[list[Any]]) -> tuple[list[list[Any]], list[str]]:
    """Text tables: each distinct "not comparable: <reasons>" of the paper cell (the last column) becomes
    ``not comparable [k]`` with the reasons once below the table.

    Why: the reasons run to hundreds of characters and are mostly the same for every row of a protocol
    (a CPU tier differs from the paper in the same ten settings), so inline they make a table nobody can
    read; the CSV and the HTML page keep them per row.
    """
    notes: dict[str, int] = {}
    out = []
    for row in rows:
        cell = str(row[-1])
        head, sep, why = cell.partition("not comparable: ")
        if sep:
            k = notes.setdefault(why, len(notes) + 1)
            cell = f"{head}not comparable [{k}]"
        out.append([*row[:-1], cell])
    return out, list(notes)


def _render_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in table for k in r if not k.startswith("_")))  # optional metrics: some rows
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in table:
        writer.writerow([_csv_cell(r.get(k)) for k in keys])
    return buf.getvalue()


def _csv_cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def write_leaderboards(table: list[dict[str, Any]], out_dir: Path, name: str = "leaderboard") -> list[Path]:
    """``<name>.md`` and ``.csv`` (:func:`render`) and ``<name>.html``, the self-contained page of
    :mod:`.html_page` (figures, statistics, links to the records)."""
    from .html_page import write_html_page

    out_dir = Path(out_dir)
    written = []
    for fmt in ("md", "csv"):
        path = out_dir / f"{name}.{fmt}"
        atomic_write_text(path, render(table, fmt))
        written.append(path)
    datasets = {r["dataset"] for r in table}
    written.append(write_html_page(table, datasets.pop() if len(datasets) == 1 else None, out_dir / f"{name}.html"))
    return written
