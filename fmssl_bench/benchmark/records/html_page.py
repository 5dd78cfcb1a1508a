"""The leaderboard page people read: one self-contained static HTML file per data set.

Everything is inline (CSS, a few lines of vanilla JS, figures as base64 PNG) so the page opens
from a disk, an artifact store or an e-mail without any network. It holds:

- the leaderboard table of :func:`.leaderboard.render` (same cells, same statistics column),
  sortable by clicking a header (numbers sort as numbers, ``n/a`` and text last; ``#sort=7-desc``
  in the address sorts on load), with links to each seed's ``provenance.json`` (and its
  ``progress.png`` / ``overlays.png`` where the run wrote them), relative to the page's folder;
- per protocol, budget curves (Dice against the labeled count, one line per method and args,
  ± the std over seeds as a band) and box plots of per-case Dice (averaged over seeds) per
  method and budget;
- paper against measured: every printed paper number of a row's data set, method and budget,
  the difference and whether the settings are comparable (the reasons of :mod:`.comparability`);
- the metric and statistics definitions and what the empty-prediction count counts.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote

from ..evaluation.figures import figure_png, new_figure
from .leaderboard import LEGEND, STAT_LEGEND, aggregate, display_rows, headers, stat_legends
from .statistics import ALPHA
from .store import atomic_write_text

Table = list[dict[str, Any]]
#: columns whose long texts wrap (the others stay on one line), and those given room to
WRAPPED = frozenset({"args", "paper Dice %"})
WIDE = frozenset({"paper Dice %"})
#: files of a record worth linking from the page, by their link text
RECORD_LINKS = (("provenance", "provenance.json"), ("progress", "progress.png"), ("overlays", "overlays.png"))

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;white-space:nowrap}
td.wrap{white-space:normal}td.wide{min-width:20em}
.scroll{overflow-x:auto}
th{background:#f1f3f5;cursor:pointer;user-select:none;white-space:nowrap}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafafa}
.sig{color:#0a6b2e;font-weight:600}.na{color:#888}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.note{color:#555;font-size:12px}
"""

JS = """
(function () {
  function key(cell) {
    var text = cell.textContent.trim(), number = parseFloat(text);
    return isNaN(number) ? [1, text] : [0, number];
  }
  function sortTable(table, column, descending) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[column]), y = key(b.cells[column]);
      if (x[0] !== y[0]) return x[0] - y[0];
      var order = x[0] === 0 ? x[1] - y[1] : String(x[1]).localeCompare(String(y[1]));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === column) th.setAttribute("data-dir", descending ? "desc" : "asc");
      else th.removeAttribute("data-dir");
    });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () { sortTable(table, i, th.getAttribute("data-dir") === "asc"); });
    });
  });
  var wanted = /sort=(\\d+)(-desc)?/.exec(window.location.hash);
  var main = document.getElementById("leaderboard");
  if (wanted && main && +wanted[1] < main.tHead.rows[0].cells.length) sortTable(main, +wanted[1], !!wanted[2]);
  document.body.setAttribute("data-ready", "1");
  console.log("fmssl-bench page ready");
})();
"""

METRIC_DEFINITIONS = (
    ("Dice %", "2|P∩R| / (|P| + |R|) per test case and foreground class (P prediction, R reference)"),
    ("Jaccard %", "|P∩R| / |P∪R|"),
    ("Sen %", "sensitivity |P∩R| / |R|"),
    ("HD95", "95th percentile of the surface distances between P and R; the id below says how the two "
             "directions are pooled, in which units, and what an empty mask scores"),
    ("ASD", "average surface distance (directed or symmetric: see the id below)"),
    ("± / (±)", "± sample std over seeds (ddof 1, from 2 seeds); (±) mean over seeds of the per-case std"),
    ("empty pred", "(test case, class) pairs whose prediction is empty, summed over the row's seeds: the cases "
                   "where the distance metrics fall back to their empty policy"),
)


# --------------------------------------------------------------------------- entry point


def write_html_page(table_or_summaries: Iterable[Mapping[str, Any]], dataset: str | None, out_path: Path) -> Path:
    """Write the page of ``dataset`` (None: every data set in the table) to ``out_path``.

    Takes the rows of :func:`.leaderboard.aggregate` or the summaries to aggregate.
    """
    out_path = Path(out_path)
    table = _as_table(list(table_or_summaries), dataset)
    atomic_write_text(out_path, render_page(table, dataset, out_path.parent))
    return out_path


def _as_table(items: list[Mapping[str, Any]], dataset: str | None) -> Table:
    if items and not all("seeds" in r and "dice" in r for r in items):
        return aggregate([dict(s) for s in items], dataset=dataset)
    return [dict(r) for r in items if dataset is None or r["dataset"] == dataset]


def render_page(table: Table, dataset: str | None, base: Path) -> str:
    """The page's HTML; links are relative to ``base`` (the page's folder)."""
    title = f"fmssl-bench leaderboard: {dataset or ', '.join(sorted({r['dataset'] for r in table})) or 'no records'}"
    parts = [f"<h1>{_e(title)}</h1>", _leaderboard_table(table, base)]
    for (ds, protocol), rows in _by_protocol(table).items():
        parts.append(f"<h2>{_e(ds)} · {_e(protocol)}</h2>")
        parts += [_budget_curves(rows), _box_plots(rows)]
    parts += [_rounds_section(table), _paper_table(table), _definitions(table)]
    body = "\n".join(p for p in parts if p)
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<meta name='viewport' content='width=device-width'><style>{CSS}</style></head>\n<body>\n{body}\n"
            f"<script>{JS}</script>\n</body></html>\n")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _label(row: Mapping[str, Any], budget: bool = True) -> str:
    text = row["method"] + (f" [{row['args']}]" if row.get("args") else "")
    return text + (f" @ {row['labeled']}" if budget else "")


def _by_protocol(table: Table) -> dict[tuple[str, str], Table]:
    groups: dict[tuple[str, str], Table] = {}
    for row in table:
        groups.setdefault((row["dataset"], row["protocol"]), []).append(row)
    return groups


# --------------------------------------------------------------------------- the table


def _link(target: Path, base: Path) -> str:
    """A link to ``target`` from a page in ``base``: relative where the two share a root."""
    try:
        return quote(os.path.relpath(target.resolve(), base.resolve()).replace(os.sep, "/"))
    except ValueError:  # another drive (Windows)
        return target.resolve().as_uri()


def _records_cell(row: Mapping[str, Any], base: Path) -> str:
    out = []
    for seed, directory in row.get("_records", []):
        if directory is None:
            continue
        links = [f"<a href='{_e(_link(directory / name, base))}'>{text}</a>" for text, name in RECORD_LINKS
                 if name == "provenance.json" or (directory / name).is_file()]
        out.append(f"seed {_e(seed)}: " + " ".join(links))
    return "<br>".join(out)


def _cell(header: str, text: Any, row: Mapping[str, Any]) -> str:
    classes = (["wrap"] if header in WRAPPED else []) + (["wide"] if header in WIDE else [])
    p = row.get("p_wilcoxon")
    if header.startswith("Δ") and isinstance(p, float) and p < ALPHA:  # the test's p, not the cell text (‡ may follow)
        classes.append("sig")
    elif str(text).startswith(("n/a", "not comparable")):
        classes.append("na")
    return f"<td class='{' '.join(classes)}'>{_e(text)}</td>" if classes else f"<td>{_e(text)}</td>"


def _leaderboard_table(table: Table, base: Path) -> str:
    if not table:
        return "<p>No complete run records.</p>"
    cols = headers(table)
    head = "".join(f"<th>{_e(h)}</th>" for h in [*cols, "records"])
    body = "".join(
        "<tr>" + "".join(_cell(h, v, r) for h, v in zip(cols, cells)) + f"<td>{_records_cell(r, base)}</td></tr>\n"
        for r, cells in zip(table, display_rows(table)))
    notes = [LEGEND, *stat_legends(table)]
    return (f"<div class='scroll'><table id='leaderboard' class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>\n{body}</tbody></table></div>"
            + "".join(f"<p class='note'>{_e(n)}</p>" for n in notes))


# --------------------------------------------------------------------------- figures


def _img(fig, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _budget_curves(rows: Table) -> str:
    """Dice against the labeled count, one line per method (and args), ± std over seeds."""
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for r in rows:
        if isinstance(r.get("n_labeled"), int) and not math.isnan(r["dice"]):
            lines.setdefault(_label(r, budget=False), []).append((r["n_labeled"], r["dice"], r["dice_std_seeds"]))
    if not lines:
        return "<p class='note'>No budget curve: no row has a labeled count.</p>"
    fig = new_figure(9 if len(lines) > 1 else 7, 4)
    ax = fig.subplots()
    for i, (label, points) in enumerate(sorted(lines.items())):
        points.sort()
        x = [p[0] for p in points]
        y = [p[1] for p in points]
        std = [0.0 if math.isnan(p[2]) else p[2] for p in points]
        colour, marker, line = line_style(i)
        ax.errorbar(x, y, yerr=std, fmt=marker + line, capsize=3, color=colour, label=label)
        ax.fill_between(x, [a - s for a, s in zip(y, std)], [a + s for a, s in zip(y, std)], color=colour,
                        alpha=0.12, linewidth=0)
    budgets = sorted({p[0] for points in lines.values() for p in points})
    ax.set_xticks(budgets)
    ax.set_xlabel("labeled cases")
    ax.set_ylabel("Dice % (mean over seeds, band ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)  # beside the axes: inside, 18 methods hide the lines
    return _img(fig, "budget curves: Dice against the labeled count")


MARKERS = "osD^v<>Ph*"
LINES = ("-", "--", ":")


def line_style(i: int) -> tuple[str, str, str]:
    """Colour, marker and line style of the ``i``-th curve: ten colours, then a new marker and dash per
    round of ten, so that no two of up to 30 methods look alike (a leaderboard has ~20)."""
    return f"C{i % 10}", MARKERS[(i // 10) % len(MARKERS)], LINES[(i // 10) % len(LINES)]


def _box_plots(rows: Table) -> str:
    """Per-case Dice (averaged over seeds) of every row, ordered by budget then method."""
    boxes = [(r, [100 * v for v in (r.get("_case_dice") or {}).values() if not math.isnan(v)]) for r in rows]
    boxes = [(r, v) for r, v in boxes if v]
    if not boxes:
        return "<p class='note'>No box plot: no per_case.csv beside these records.</p>"
    boxes.sort(key=lambda b: (b[0].get("n_labeled") or 0, str(b[0]["labeled"]), b[0]["method"], b[0]["args"]))
    fig = new_figure(min(16.0, max(5.0, 0.9 * len(boxes) + 2)), 4.2)
    ax = fig.subplots()
    ax.boxplot([v for _, v in boxes], showmeans=True)
    ax.set_xticks(range(1, len(boxes) + 1), [_label(r)[:40] for r, _ in boxes], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("per-case Dice % (mean over seeds)")
    ax.grid(alpha=0.3, axis="y")
    return _img(fig, "box plots of per-case Dice per method and budget")


# --------------------------------------------------------------------------- paper and definitions


def _number(value: float, spec: str = ".2f") -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _paper_table(table: Table) -> str:
    lines = []
    for r in table:
        for c in r.get("_comparisons", []):
            try:
                delta = r["dice"] - float(c.value)
            except ValueError:  # a printed value that is not a number
                delta = math.nan
            status = "comparable" if c.comparable else "not comparable: " + "; ".join(c.reasons)
            cls = " class='wrap'" if c.comparable else " class='wrap na'"
            lines.append(f"<tr><td>{_e(r['protocol'])}</td><td>{_e(_label(r))}</td><td>{_number(r['dice'])}</td>"
                         f"<td>{_e(c.text)}</td><td>{_number(delta, '+.2f')}</td><td{cls}>{_e(status)}</td></tr>")
    if not lines:
        return "<h2>Paper vs measured</h2><p>No printed paper number for these data sets, methods and budgets.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("protocol", "row", "measured Dice %", "paper Dice %", "Δ (measured − paper)",
                                              "comparability"))
    return ("<h2>Paper vs measured</h2><p class='note'>Every printed number of the row's data set, method and budget; "
            "Δ is shown for all, but only a comparable setting makes it a reproduction check.</p>"
            f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>")


def _rounds_section(table: Table) -> str:
    """Per record and round of the iterative methods (:mod:`.round_table`); nothing without rounds."""
    from .round_table import LEGEND as ROUND_LEGEND
    from .round_table import columns, leaderboard_round_rows

    rows = leaderboard_round_rows(table)
    if not rows:
        return ""
    parts = ["<h2>Rounds of iterative methods</h2>"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cols = columns(mine)
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c, ''))}</td>" for c in cols) + "</tr>\n" for r in mine)
        parts.append(f"<h3>{_e(method)}</h3><div class='scroll'><table class='sortable'><thead><tr>{head}</tr></thead>"
                     f"<tbody>\n{body}</tbody></table></div>")
    return "".join(parts) + f"<p class='note'>{_e(ROUND_LEGEND)}</p>"


def _definitions(table: Table) -> str:
    items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in METRIC_DEFINITIONS)
    ids = sorted({r["metric_ids"] for r in table if r.get("metric_ids")})
    id_items = "".join(f"<li><code>{_e(i)}</code></li>" for i in ids)
    return (f"<h2>Definitions</h2><ul>{items}<li><b>statistics</b>: {_e(STAT_LEGEND)}</li></ul>"
            + (f"<p>Distance metric definitions of these rows (<code>metric@definition/units;empty=policy</code>):</p>"
               f"<ul>{id_items}</ul>" if ids else ""))
