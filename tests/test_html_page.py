"""The HTML leaderboard page: self-contained, complete, and working in a real (headless) browser.

Built from tiny fake records (summary.json + per_case.csv + provenance.json written by hand, no
training). The browser checks need Debian's ``chromium``; they skip with a reason without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from fmssl_bench.benchmark.records.html_page import write_html_page
from fmssl_bench.benchmark.records.leaderboard import STAT_HEADER, aggregate, find_summaries, headers, write_leaderboards
from test_leaderboard import make_summary, write_record

CASES = [f"case{i:02d}" for i in range(20)]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """LA: supervised and mean_teacher at 8 and 16 labeled, 2 seeds each; one Kvasir row (another page)."""
    root = tmp_path / "results"
    for labeled, n in (("8", (8, 72, 20)), ("16", (16, 64, 20))):
        for seed in (0, 1):
            gain = 0.04 if labeled == "8" else 0.01
            for method, shift in (("supervised", 0.0), ("mean_teacher", gain)):
                dice = {c: 0.70 + 0.01 * i + shift + 0.003 * seed for i, c in enumerate(CASES)}
                dice["case03"] = float("nan")  # an undefined case: excluded pairwise
                mean = sum(v for v in dice.values() if v == v) / 19
                folder = write_record(root, make_summary(method=method, labeled=labeled, n=n, seed=seed, dice=mean),
                                      dice)
                if method == "mean_teacher" and seed == 0:
                    Image.new("RGB", (8, 8)).save(folder / "progress.png")
    write_record(root, make_summary(method="supervised", dataset="kvasir", protocol="kvasir", labeled="50",
                                    n=(50, 850, 100)), {c: 0.8 for c in CASES})
    return root


class Rows(HTMLParser):
    """Cell texts of the rows of ``table#leaderboard``, the ``<body>`` attributes and every link."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.body: dict[str, str | None] = {}
        self.links: list[str] = []
        self._in_table = self._in_body_rows = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "table":
            self._in_table = attrs.get("id") == "leaderboard"
        elif tag == "tbody" and self._in_table:
            self._in_body_rows = True
        elif tag == "tr" and self._in_body_rows:
            self.rows.append([])
        elif tag == "td" and self._in_body_rows:
            self._cell = []
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._in_table = self._in_body_rows = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Rows:
    parser = Rows()
    parser.feed(text)
    return parser


def test_page_is_self_contained_and_complete(results, tmp_path):
    page = write_html_page(find_summaries(results), "la", tmp_path / "pages" / "la.html")  # summaries in
    text = page.read_text()
    dom = parse(text)
    assert [(r[2], r[3]) for r in dom.rows] == [("mean_teacher", "8"), ("mean_teacher", "16"),
                                                ("supervised", "8"), ("supervised", "16")]
    assert "kvasir" not in text  # one page per data set
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text)  # nothing fetched from a network
    assert len(re.findall(r"src='data:image/png;base64,", text)) == 2  # budget curves and box plots
    assert STAT_HEADER in text and "<script>" in text and "Paper vs measured" in text
    mt8 = dom.rows[0]
    assert re.fullmatch(r"\+4\.00 \[\+4\.00, \+4\.00\] p=[0-9.e-]+ \*", mt8[8]), mt8[8]  # every case +4 points
    assert dom.rows[2][8] == "baseline"
    assert "<td class='sig'>+4.00 [" in text  # highlighted from the row's p (a ‡ may follow the star)
    # links are relative to the page and reach each seed's provenance.json (and a progress.png where one exists)
    targets = [(page.parent / unquote(link)).resolve() for link in dom.links]
    assert len([t for t in targets if t.name == "provenance.json"]) == 8 and all(t.is_file() for t in targets)
    assert [t.name for t in targets].count("progress.png") == 2
    assert all(not link.startswith("/") for link in dom.links)


def test_write_leaderboards_writes_the_page_as_html(results, tmp_path):
    table = aggregate(find_summaries(results), dataset="la")
    paths = write_leaderboards(table, tmp_path / "lb", name="la")
    assert [p.name for p in paths] == ["la.md", "la.csv", "la.html"]
    assert len(parse(paths[2].read_text()).rows) == 4
    assert STAT_HEADER in paths[0].read_text()


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium); the page is not checked in a browser")
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120)


def test_page_in_headless_chromium(results, tmp_path):
    table = aggregate(find_summaries(results), dataset="la")
    page = write_html_page(table, "la", tmp_path / "la.html")
    dice = headers(table).index("Dice %")
    done = chromium(f"{page.as_uri()}#sort={dice}-desc", tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert any("fmssl-bench page ready" in line for line in console), done.stderr[-2000:]  # logging works, JS ran
    assert all("fmssl-bench page ready" in line for line in console), console  # and nothing else was said
    assert "Uncaught" not in done.stderr
    dom = parse(done.stdout)
    assert dom.body.get("data-ready") == "1"
    values = [float(r[dice].split()[0]) for r in dom.rows]
    assert len(values) == 4 and values == sorted(values, reverse=True)  # the #sort= address sorted it

    shot = tmp_path / "page.png"
    done = chromium(page.as_uri(), tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,1800")
    assert done.returncode == 0 and "Uncaught" not in done.stderr, done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 1800)
        assert len(image.convert("L").getcolors(maxcolors=256)) > 20  # a rendered page, not a blank one


def test_budget_curves_of_many_methods_stay_distinguishable():
    from fmssl_bench.benchmark.records.html_page import line_style

    styles = [line_style(i) for i in range(30)]
    assert len(set(styles)) == 30 and styles[0] == ("C0", "o", "-") and styles[10][0] == "C0" != styles[10][1:]
