"""Pseudo-label quality: scored by the runner against labels the method never sees.

Methods hand their pseudo-labels to ``ctx.score_pseudo_labels`` (a
:class:`~fmssl_bench.api.PseudoLabelScorer`); this module's :class:`PseudoLabelQuality` is the
runner's implementation. Pseudo-labels come in the frame of the training views (2D: the protocol
resolution); the hidden reference is read once per case and resized to match (nearest). Value 255
marks voxels without a pseudo-label. Dice per foreground class over the defined voxels is
*appended* to ``pseudo_label_quality.csv``; rows already there (a resumed run re-reporting the
iterations after its last checkpoint) are not written twice, and a line cut by a kill is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...datasets import DatasetAdapter
from ...errors import FmsslError
from ..views import resize_label

HEADER = "tag,case,class,dice,defined_voxels\n"
#: reports named by stage rather than by iteration are few; up to this many get a mean each
MAX_TAGS_SHOWN = 8


class PseudoLabelQuality:
    """Appends per-case, per-class Dice of reported pseudo-labels; returns nothing to the method."""

    def __init__(self, adapter: DatasetAdapter, path: Path) -> None:
        self.adapter = adapter
        self.path = Path(path)
        self._refs: dict[str, np.ndarray | None] = {}
        self._seen: set[tuple[str, str, str]] = set()
        if self.path.is_file():
            text = self.path.read_text()
            complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
            if complete != text:
                self.path.write_text(complete)  # drop the line a kill cut in half
            for line in complete.splitlines()[1:]:
                tag, case, cls = line.split(",")[:3]
                self._seen.add((tag, case, cls))

    def _reference(self, case_id: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if case_id not in self._refs:  # read (and resize to the pseudo-label frame) once per case
            ref = self.adapter.load_label(case_id) if self.adapter.has_label(case_id) else None
            self._refs[case_id] = resize_label(ref, shape) if ref is not None else None
        return self._refs[case_id]

    def __call__(self, ids: Sequence[str], labels: Sequence[np.ndarray], tag: str) -> None:
        classes = self.adapter.classes
        rows = []
        for case_id, pseudo in zip(ids, labels):
            ref = self._reference(case_id, pseudo.shape)
            if ref is None:
                continue
            defined = pseudo != 255
            for k in range(1, len(classes)):
                if (tag, case_id, classes[k]) in self._seen:
                    continue
                self._seen.add((tag, case_id, classes[k]))
                p, r = (pseudo == k) & defined, (ref == k) & defined
                denom = int(p.sum()) + int(r.sum())
                dice = 2.0 * int((p & r).sum()) / denom if denom else float("nan")
                rows.append(f"{tag},{case_id},{classes[k]},{dice:.6f},{int(defined.sum())}\n")
        if not rows:
            return
        new = not self.path.is_file()
        try:
            with self.path.open("a") as f:
                f.write((HEADER if new else "") + "".join(rows))
                f.flush()
        except OSError as err:  # a full disk: one clean line; a cut line is dropped on resume
            raise FmsslError(f"cannot write {self.path}: {err.strerror or err}") from None


def pseudo_label_summary(path: Path) -> dict[str, Any] | None:
    """Mean pseudo-label Dice overall and for the first and last quarter of the reports."""
    if not Path(path).is_file():
        return None
    import pandas as pd

    table = pd.read_csv(path)
    if table.empty:
        return None
    tags = list(dict.fromkeys(table["tag"]))
    quarter = max(1, len(tags) // 4)
    mean = lambda t: float(table[table["tag"].isin(t)]["dice"].mean())  # noqa: E731
    summary = {"reports": len(tags), "cases_scored": int(table["case"].nunique()), "mean_dice": mean(tags),
               "mean_dice_first_quarter": mean(tags[:quarter]), "mean_dice_last_quarter": mean(tags[-quarter:])}
    if len(tags) <= MAX_TAGS_SHOWN:  # stage-wise reports (SFR: zero_shot, finetuned, ...): one mean each
        summary["mean_dice_by_tag"] = {str(t): mean([t]) for t in tags}
    return summary
