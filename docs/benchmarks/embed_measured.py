"""Rebuild the measured tables embedded in README.md from the committed records.

The tables between ``<!-- measured-tables:begin -->`` and ``<!-- measured-tables:end -->`` are the
output of ``fmssl-bench leaderboard --runs leaderboards/measured --dataset D`` for each dataset of
the CPU tier; run this after exporting new records, never edit the block by hand.

    python docs/benchmarks/embed_measured.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- measured-tables:begin -->", "<!-- measured-tables:end -->"
DATASETS = {"kvasir": "Kvasir-SEG, `kvasir-cpu`", "la": "LA, `la-cpu`"}


def table(dataset: str) -> str:
    out = subprocess.run([sys.executable, "-m", "fmssl_bench.benchmark.cli", "leaderboard", "--runs",
                          str(ROOT / "leaderboards" / "measured"), "--dataset", dataset, "--write", ""],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: expected the markers {BEGIN} and {END}")
    blocks = [f"#### {title}\n\n{table(name)}" for name, title in DATASETS.items()]
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{chr(10).join(b + chr(10) for b in blocks)}{END}{tail}")
    print(f"rebuilt the measured tables of {readme}")


if __name__ == "__main__":
    main()
