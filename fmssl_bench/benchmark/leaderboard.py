"""Leaderboards, computed from run records (never typed by hand).

Rows are (dataset, protocol, method, budget); values are the mean ± std over seeds of each run's
mean over test cases (and classes), with the mean per-case standard deviation shown as the
spread, the number of seeds, the number of empty predictions and the metric definition ids.
Where a run row matches a number of the seed papers (``leaderboards/paper/*.csv``) *and* the
protocol is a paper protocol, the paper's Dice is shown beside the measured one.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tabulate import tabulate

from .metrics import METRICS
from .records import atomic_write_text

PERCENT = {"dice", "jaccard", "sensitivity"}
REPO_ROOT = Path(__file__).resolve().parents[2]
PAPER_DIR = Path(os.environ.get("FMSSL_PAPER_NUMBERS", REPO_ROOT / "leaderboards" / "paper"))

# our method / dataset names -> how the seed papers print them (method, base)
PAPER_METHODS: dict[str, list[tuple[str, str]]] = {
    "supervised": [("Supervised", ""), ("FS Baseline", ""), ("V-Net", "")],
    "mean_teacher": [("MT", "")],
    "semisam": [("SemiSAM", "MT")],
}
PAPER_DATASETS = {"la": "LA", "kvasir": "Kvasir", "brats": "BraTS2019", "btcv": "BTCV"}


@dataclass(frozen=True)
class RunRow:
    key: tuple[str, str, str, str]  # dataset, protocol, method, labeled
    summary: dict[str, Any]


def find_summaries(root: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(Path(root).glob("**/summary.json")):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue  # a summary is written atomically; an unreadable one is not ours
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite)) if len(finite) > 1 else 0.0
    return mean, std


def paper_numbers(paper_dir: Path = PAPER_DIR) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(Path(paper_dir).glob("*.csv")):
        with path.open(newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def paper_value(papers: list[dict[str, str]], dataset: str, method: str, labeled: str, metric: str = "dice") -> str:
    """Printed paper numbers for the row, e.g. ``88.12 (001 II)``; empty when none matches."""
    names = PAPER_METHODS.get(method, [])
    ds = PAPER_DATASETS.get(dataset, dataset)
    hits = [
        f"{r['value']} ({r['paper']} {r['table']})"
        for r in papers
        if r["dataset"] == ds and (r["method"], r["base"]) in names and r["labeled"] == labeled
        and r["metric"] == metric and r["structure"] in ("", "mean")
    ]
    return "; ".join(dict.fromkeys(hits))


def aggregate(summaries: Iterable[dict[str, Any]], dataset: str | None = None) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for s in summaries:
        if dataset and s["dataset"] != dataset:
            continue
        key = (s["dataset"], s["protocol"], s["method"], str(s["labeled"]))
        groups.setdefault(key, []).append(s)
    papers = paper_numbers()
    table = []
    for (ds, protocol, method, labeled), runs in sorted(groups.items()):
        row: dict[str, Any] = {"dataset": ds, "protocol": protocol, "method": method, "labeled": labeled,
                               "seeds": len(runs), "n_test": runs[0].get("n_test")}
        for metric in METRICS:
            scale = 100.0 if metric in PERCENT else 1.0
            per_run = [r["classes"]["mean"].get(metric, {}).get("mean", float("nan")) * scale for r in runs]
            spread = [r["classes"]["mean"].get(metric, {}).get("std", float("nan")) * scale for r in runs]
            row[metric], row[f"{metric}_std_seeds"] = _mean_std(per_run)
            row[f"{metric}_std_cases"] = _mean_std(spread)[0]
        row["empty_pred"] = sum(sum(v for k, v in r.get("empty_predictions", {}).items()) for r in runs)
        row["oracle"] = any(r.get("oracle") for r in runs)
        row["metric_ids"] = " ".join(sorted(set(runs[0].get("metric_ids", {}).values()) - {"dice", "jaccard", "sensitivity"}))
        comparable = any(r.get("paper_comparable") for r in runs)
        row["paper_dice"] = paper_value(papers, ds, method, labeled) if comparable else ""
        table.append(row)
    return table


def _fmt(row: dict[str, Any], metric: str) -> str:
    mean = row[metric]
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.2f}"
    if row["seeds"] > 1:
        text += f" ± {row[f'{metric}_std_seeds']:.2f}"
    if not math.isnan(row[f"{metric}_std_cases"]):
        text += f" (±{row[f'{metric}_std_cases']:.1f})"
    return text


HEADERS = ["dataset", "protocol", "method", "labeled", "seeds", "Dice %", "Jaccard %", "HD95", "ASD", "Sen %",
           "empty pred", "paper Dice %"]


def display_rows(table: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in table:
        method = r["method"] + (" [oracle]" if r["oracle"] else "")
        rows.append([r["dataset"], r["protocol"], method, r["labeled"], r["seeds"],
                     *(_fmt(r, m) for m in METRICS), r["empty_pred"], r["paper_dice"]])
    return rows


def render(table: list[dict[str, Any]], fmt: str = "md") -> str:
    rows = display_rows(table)
    ids = sorted({r["metric_ids"] for r in table if r["metric_ids"]})
    if fmt == "csv":
        keys = list(table[0]) if table else []
        buf_rows = [",".join(keys)] + [",".join(_csv_cell(r[k]) for k in keys) for r in table]
        return "\n".join(buf_rows) + "\n"
    if fmt == "html":
        body = tabulate(rows, headers=HEADERS, tablefmt="html")
        note = "".join(f"<p>distance metrics: <code>{html.escape(i)}</code></p>" for i in ids)
        return f"<!doctype html><meta charset='utf-8'><title>fmssl-bench leaderboard</title>{body}{note}\n"
    text = tabulate(rows, headers=HEADERS, tablefmt="github" if fmt == "md" else "simple")
    legend = ("\n\nmean over test cases (± std over seeds) (± mean per-case std); distances in the units of the ids: "
              + "; ".join(ids)) if ids else ""
    return text + legend + "\n"


def _csv_cell(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


def write_leaderboards(table: list[dict[str, Any]], out_dir: Path, name: str = "leaderboard") -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for fmt, ext in (("md", "md"), ("csv", "csv"), ("html", "html")):
        path = out_dir / f"{name}.{ext}"
        atomic_write_text(path, render(table, fmt))
        written.append(path)
    return written
