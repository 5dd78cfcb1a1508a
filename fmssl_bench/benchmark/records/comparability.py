"""Comparability with the seed papers, computed from a run's identity (never declared).

A measured leaderboard row is set beside a printed paper number only when nothing that changes
the numbers differs from the paper's setting. :func:`compare` checks, for every paper number of
the same data set, method and labeled count:

- the unlabeled count, where the paper prints one (a method that uses no unlabeled data counts
  0, as the papers' "16 / 0" lower bounds do);
- the train pool (labeled + unlabeled) and the test-set size against :data:`PAPER_SETTINGS`;
- the metric definitions (``metric_ids``) against those of the reference protocol under the
  paper's own empty-mask convention (:attr:`PaperSetting.empty_policy`: UA-MT, SemiSAM and SFR
  score an empty prediction HD95 = ASD = 0); a row under another policy is compared only when it
  recorded no one-sided empty mask, where the policy cannot have changed a number;
- every result-determining protocol field (:func:`.identity.result_fields`) against the reference
  protocol with the paper's own departures from it (:attr:`PaperSetting.changes`) applied;
- no ``--iterations`` / stage overrides, no data-set options, and method arguments equal to the
  method's defaults (or to the arguments the paper's method is declared as).

Each failed check is one short reason (``train pool 30 ≠ 80``, ``train.iterations 24 ≠ 6000``);
no reason means comparable. Oracle rows (prompts from the test reference) and outside predictions
are never comparable: the oracle follows the papers' zero-shot prompt recipes (SAM with k points
per slice, corrective clicks with mask feedback, key-frame clicks with propagation; its modes name
their tables, :mod:`..oracle_modes`) but with the generalists available here, not the tables' SAM,
SAM-Med3D or SAM 2 weights; outside predictions carry no training record to check.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ...errors import FmsslError
from ..evaluation.metrics import METRICS
from ..protocol import load_protocol
from .identity import flatten, result_fields

#: harness data set -> the papers' data set name
PAPER_DATASETS: dict[str, str] = {
    "la": "LA", "brats2019": "BraTS2019", "kvasir": "Kvasir", "cvc-clinicdb": "CVC-ClinicDB",
    "isic": "ISIC 2018", "busi": "BUSI",
}
#: protocol fields compared through the metric ids instead (:func:`_metric_reasons`: the empty policy
#: matters only where a mask was empty)
METRIC_RULED_FIELDS = frozenset({"metrics.empty_policy"})
#: a declaration, not a result-determining field (being removed from the protocols)
DECLARED_FIELDS = frozenset({"paper_comparable"})


@dataclass(frozen=True)
class PaperSetting:
    """What a paper's numbers on one data set were measured under.

    ``changes`` are flattened protocol fields where the paper departs from its reference
    protocol; ``method_args`` are, per harness method, the arguments the paper's method
    corresponds to (others must stay at the method's defaults). ``empty_policy`` is how the
    paper's evaluation code scores a one-sided empty mask (``zero``: the UA-MT family's
    ``if np.sum(prediction) == 0: (0, 0, 0, 0)``). A non-empty ``unknown`` says why the setting
    cannot be pinned down from the paper: its numbers are then never comparable.
    """

    protocol: str
    train_pool: int | None
    n_test: int | None
    changes: Mapping[str, Any] = field(default_factory=dict)
    empty_policy: str = "worst"
    method_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unknown: str = ""
    source: str = ""


#: keyed by (paper, paper data set) or, for a table with its own setting, (paper, data set, table)
PAPER_SETTINGS: dict[tuple[str, ...], PaperSetting] = {
    ("001", "LA"): PaperSetting(
        "semisam-la", 80, 20, empty_policy="zero",
        method_args={"semisam": {"generalist": "sam-med3d"}},
        source="seed 001 line 64: UA-MT split 80/20 and schedule, 'patch size changed from 112x112x80 to "
               "128x128x128'; SAM-Med3D as generalist; YichiZhang98/SemiSAM code/train_LA_semisam_mt.py "
               "(batch 4, labeled_bs 1) and code/test_util.py (sliding window 128^3 stride 18/4, getLargestCC, "
               "an empty prediction scores (0, 0, 0, 0)): protocol semisam-la",
    ),
    ("002", "LA"): PaperSetting(
        "la", 80, 20, empty_policy="zero",
        source="seed 002 Sec. IV-A/B: UA-MT split and training strategy [17], [20]; patch 112x112x80 (src line 372); "
               "ShumengLI/SFR code/test_util_singleclass.py scores an empty prediction 0 (UA-MT's convention)",
    ),
    ("002", "LA", "VI"): PaperSetting(
        "la", 80, 20, empty_policy="zero",
        unknown="002 Table VI uses 96³ patches with LA interpolated to 96 slices",
        source="seed 002 src lines 375-420",
    ),
    ("002", "BraTS2019"): PaperSetting(
        "brats2019", 250, 60,
        unknown="002 prints 3D U-Net bounds for BraTS (protocol brats2019: VNet) and no test-set size",
        source="seed 002: 335 cases, ACMT split [17]; train pool 250 from Tables II/VIII (250/0, 1/249); "
               "60 test cases is the SSL4MIS data/BraTS2019/test.txt convention, not printed in seed 002",
    ),
}


@dataclass
class Comparison:
    """One printed paper number and why a measured row is not comparable with it (empty: it is)."""

    paper: str
    table: str
    value: str
    reasons: list[str] = field(default_factory=list)
    setting_known: bool = True  # False: the paper does not pin its setting down (never comparable)

    @property
    def text(self) -> str:
        return paper_text(self.__dict__)

    @property
    def comparable(self) -> bool:
        return not self.reasons


def paper_text(paper_row: Mapping[str, Any]) -> str:
    """How a paper number is cited in a cell: ``88.12 (002 I)``."""
    return f"{paper_row['value']} ({paper_row['paper']} {paper_row['table']})"


def paper_candidates(papers: Iterable[Mapping[str, str]], dataset: str, method: str, labeled: str,
                     metric: str = "dice") -> list[Mapping[str, str]]:
    """Paper numbers of the same data set, method and printed labeled count (whatever the setting)."""
    from ...methods.registry import paper_names  # each method's own registration says its paper names

    names = paper_names().get(method, [])
    ds = PAPER_DATASETS.get(dataset, dataset)
    return [
        r for r in papers
        if r["dataset"] == ds and (r["method"], r["base"]) in names and r["labeled"] == labeled
        and r["metric"] == metric and r["structure"] in ("", "mean")
    ]


def setting_for(paper: str, dataset: str, table: str) -> PaperSetting | None:
    return PAPER_SETTINGS.get((paper, dataset, table)) or PAPER_SETTINGS.get((paper, dataset))


def compare(row: Mapping[str, Any], paper_rows: Iterable[Mapping[str, str]], metric: str = "dice") -> list[Comparison]:
    """A :class:`Comparison` for every paper number of the row's data set, method and labeled count.

    ``row`` is a summary (or anything with its keys: dataset, method, n_labeled, n_unlabeled,
    n_test, metric_ids, oracle, external, row_identity, method_defaults).
    """
    n_labeled = row.get("n_labeled")
    if n_labeled is None:
        return []
    out = []
    for paper_row in paper_candidates(paper_rows, row["dataset"], row["method"], str(n_labeled), metric):
        setting = setting_for(paper_row["paper"], paper_row["dataset"], paper_row["table"])
        known = setting is not None and not setting.unknown
        out.append(Comparison(paper_row["paper"], paper_row["table"], paper_row["value"],
                              _reasons(row, paper_row, setting), known))
    return out


def _reasons(row: Mapping[str, Any], paper_row: Mapping[str, str], setting: PaperSetting | None) -> list[str]:
    """Every reason the row is not comparable with this paper number, in a fixed order."""
    general = _provenance_reasons(row)
    if general:
        return general
    if setting is None or setting.unknown:
        return [f"paper setting unknown{': ' + setting.unknown if setting else ''}"]
    identity = row["row_identity"]
    return [
        *_count_reasons(row, paper_row, setting),
        *_metric_reasons(row.get("metric_ids") or {}, setting, row.get("empty_masks")),
        *_protocol_reasons(identity.get("protocol") or {}, setting, _stages_of(row, identity)),
        *_override_reasons(identity),
        *_method_reasons(row, identity, setting),
    ]


def _provenance_reasons(row: Mapping[str, Any]) -> list[str]:
    """Rows whose training cannot be checked at all."""
    if row.get("oracle"):
        return ["oracle prompts from the test reference"]
    if row.get("external"):
        return ["outside predictions (no training record)"]
    if not isinstance(row.get("row_identity"), Mapping):
        return ["old record format (no run identity)"]
    return []


def _count_reasons(row: Mapping[str, Any], paper_row: Mapping[str, str], setting: PaperSetting) -> list[str]:
    n_labeled, n_unlabeled, n_test = (int(row.get(k) or 0) for k in ("n_labeled", "n_unlabeled", "n_test"))
    reasons = []
    pool = n_labeled + n_unlabeled
    if setting.train_pool is not None and pool != setting.train_pool:
        reasons.append(f"train pool {pool} ≠ {setting.train_pool}")
    elif paper_row.get("unlabeled", "") != "":
        # the paper's "L / U": U is what the method trained on (0 for a supervised lower bound)
        used = n_unlabeled if uses_unlabeled(row["method"]) else 0
        if str(used) != paper_row["unlabeled"]:
            reasons.append(f"unlabeled {used} ≠ {paper_row['unlabeled']}")
    if setting.n_test is not None and n_test != setting.n_test:
        reasons.append(f"test set {n_test} ≠ {setting.n_test}")
    return reasons


def _metric_reasons(metric_ids: Mapping[str, str], setting: PaperSetting, empty_masks: int | None) -> list[str]:
    """Metric definitions that differ from the paper's: its reference protocol's, under its empty policy.

    Only the definitions are compared here (the ``;lcc=`` post-processing part of an id is a
    protocol field, compared with the others). ``empty_masks``: one-sided empty masks the row
    recorded (None: unknown); with none, the empty policy cannot have changed any number, so the
    paper's policy is not asked of the row.
    """
    expected = paper_metric_ids(setting)
    reasons = []
    for m in METRICS:
        got = metric_ids.get(m)
        got_def = None if got is None else _definition(got)
        want = _definition(expected[m])
        if empty_masks == 0 and got_def is not None:
            want = _with_policy(want, _policy(got_def))
        if got_def != want:
            count = (f" ({empty_masks} empty mask(s))" if empty_masks and got_def is not None
                     and _with_policy(got_def, "") == _with_policy(want, "") else "")
            reasons.append(f"{m} {got_def} ≠ {want}{count}")
    return reasons


def _definition(metric_id: str) -> str:
    """A metric id without its post-processing part (``;lcc=26``)."""
    return ";".join(part for part in metric_id.split(";") if not part.startswith("lcc="))


def _policy(metric_id: str) -> str | None:
    return next((part[len("empty="):] for part in metric_id.split(";") if part.startswith("empty=")), None)


def _with_policy(metric_id: str, policy: str | None) -> str:
    """``metric_id`` with its ``;empty=`` part set to ``policy`` (ids without one are left as they are)."""
    if policy is None:
        return metric_id
    return ";".join(f"empty={policy}" if part.startswith("empty=") else part for part in metric_id.split(";"))


def paper_metric_ids(setting: PaperSetting) -> dict[str, str]:
    """The metric ids the paper's numbers correspond to: its reference protocol's, under its empty policy."""
    return {m: _with_policy(i, setting.empty_policy) for m, i in reference_metric_ids(setting.protocol).items()}


def _protocol_reasons(protocol: Mapping[str, Any], setting: PaperSetting, stages: Sequence[str] | None) -> list[str]:
    expected = {**reference_fields(setting.protocol), **setting.changes}
    if stages is not None:  # a record's identity holds the stages: sections of its method's stages only
        expected = {k: v for k, v in expected.items() if not k.startswith("stages.") or k.split(".")[1] in stages}
    actual = {k: v for k, v in comparable_fields(protocol).items() if k not in METRIC_RULED_FIELDS}
    return differing_fields(actual, {k: v for k, v in expected.items() if k not in METRIC_RULED_FIELDS})


def _stages_of(row: Mapping[str, Any], identity: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The loop stages the row's method trains (None: not a registered method, compare every section)."""
    from ...methods.registry import method_class, method_names

    if row.get("method") not in method_names():
        return None
    cls = method_class(row["method"])
    return cls.stages_used({**cls.defaults, **(identity.get("method_args") or {})})


def _override_reasons(identity: Mapping[str, Any]) -> list[str]:
    overrides = flatten(identity.get("overrides") or {})
    options = flatten(identity.get("dataset_options") or {})
    return ([f"override {k}={format_value(v)}" for k, v in overrides.items()]
            + [f"dataset option {k}={format_value(v)}" for k, v in options.items()])


def _method_reasons(row: Mapping[str, Any], identity: Mapping[str, Any], setting: PaperSetting) -> list[str]:
    defaults = method_defaults(row)
    if defaults is None:
        return ["method defaults not recorded"]
    expected = {**defaults, **setting.method_args.get(row["method"], {})}
    return differing_fields(identity.get("method_args") or {}, expected)


def differing_fields(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """``field ours ≠ paper`` for every flattened field that differs (missing shows as ``—``)."""
    missing = object()
    out = []
    for key in sorted(set(actual) | set(expected)):
        a, e = actual.get(key, missing), expected.get(key, missing)
        if not _same(a, e):
            out.append(f"{key} {'—' if a is missing else format_value(a)} ≠ {'—' if e is missing else format_value(e)}")
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal after JSON-like normalisation (tuples and lists are the same value)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def format_value(value: Any) -> str:
    """Compact cell text: ``112×112×80`` for integer shapes, ``0.0001`` for floats."""
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "×".join(str(v) for v in value)
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def comparable_fields(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """Flattened result-determining protocol fields, declarations removed.

    An empty section (``stages: {}`` of a method that trains no extra stage) is the same as an
    absent one, so it is not a field of its own."""
    return {k: v for k, v in flatten(protocol).items() if k not in DECLARED_FIELDS and v != {}}


@functools.lru_cache(maxsize=None)
def _reference(protocol: str) -> tuple[dict[str, Any], dict[str, str]]:
    from ..evaluation.scoring import metric_ids  # the evaluator's own ids (definitions + post-processing)

    loaded = load_protocol(protocol)
    return comparable_fields(result_fields(loaded.to_dict())), metric_ids(loaded)


def reference_fields(protocol: str) -> dict[str, Any]:
    """The packaged protocol's flattened result-determining fields (a copy)."""
    return dict(_reference(protocol)[0])


def reference_metric_ids(protocol: str) -> dict[str, str]:
    return dict(_reference(protocol)[1])


def _method_class(method: str) -> type | None:
    from ...methods.registry import method_class

    try:
        return method_class(method)
    except FmsslError:
        return None


def method_defaults(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The method's defaults as recorded in the summary, else as the registry has them now."""
    if isinstance(row.get("method_defaults"), Mapping):
        return dict(row["method_defaults"])
    cls = _method_class(row["method"])
    return dict(cls.defaults) if cls is not None else None


def uses_unlabeled(method: str) -> bool:
    cls = _method_class(method)
    return bool(getattr(cls, "uses_unlabeled", True))


def describe(comparisons: list[Comparison]) -> str:
    """The leaderboard's paper cell: the comparable values, then why each other candidate is not.

    With comparable values: ``88.12 (002 I); not comparable: 87.47 (002 VI): <reasons>``, so a row
    says which paper rows it may be set beside and why not the others. Without: ``not comparable:
    <reasons>``, where reasons shared by every candidate are listed once and a reason of only some
    candidates is prefixed with the tables it applies to (``001 I, 001 II: train.patch …``);
    candidates whose paper setting is unknown are left out when others are known: only the known
    ones say what a run would have to change.
    """
    hits = [c.text for c in comparisons if c.comparable]
    if hits:
        others = {}
        for c in comparisons:
            if not c.comparable:
                others.setdefault(c.text, "; ".join(c.reasons))
        tail = "; ".join(f"{text}: {why}" for text, why in others.items())
        return "; ".join(dict.fromkeys(hits)) + (f"; not comparable: {tail}" if tail else "")
    if not comparisons:
        return ""
    comparisons = [c for c in comparisons if c.setting_known] or comparisons
    common = [r for r in comparisons[0].reasons if all(r in c.reasons for c in comparisons)]
    specific: dict[str, list[str]] = {}
    for c in comparisons:
        for r in c.reasons:
            if r not in common:
                specific.setdefault(r, []).append(f"{c.paper} {c.table}")
    parts = common + [f"{', '.join(dict.fromkeys(refs))}: {r}" for r, refs in specific.items()]
    return "not comparable: " + "; ".join(parts)
