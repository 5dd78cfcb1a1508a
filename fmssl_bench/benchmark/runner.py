"""The runner: protocol + dataset + method + budget + seed -> a complete run record.

Order matters for the "no partial run directory" promise: every input is resolved and every
case is loaded and validated *before* the run directory is created. Once training has started
the directory holds checkpoints, so an interrupted run resumes when the same command is run
again. ``summary.json`` is written last and marks the record complete (a cache hit later).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import paths
from ..datasets import DatasetAdapter, build_dataset, dataset_class
from ..errors import ConfigError, DataError
from ..methods.nets import count_parameters
from ..methods.registry import method_class, resolve_method_args
from . import records
from .evaluate import evaluate_predictor, summarise, write_per_case
from .loop import RunContext
from .protocol import Protocol, load_protocol
from .splits import parse_budget, resolve_split, select_labeled
from .views import TestView, build_labeled_view, build_unlabeled_view


@dataclass
class RunSpec:
    """Everything a run is made of, as given on the command line."""

    method: str
    dataset: str
    labeled: str = "10%"
    seed: int = 0
    protocol: str | None = None
    data_root: str | None = None
    out: str | None = None
    method_args: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    force: bool = False
    iterations: int | None = None
    progress: bool = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda[:N]") from None


def resolve_data_root(dataset: str, data_root: str | None) -> str | None:
    """``--data-root`` wins; else ``$FMSSL_DATA/<the data set's usual folder>``."""
    cls = dataset_class(dataset)
    if data_root or not cls.needs_root:
        return data_root
    base = paths.data_root()
    if base is None:
        raise DataError(f"dataset {dataset!r} needs --data-root PATH (or FMSSL_DATA=<folder holding {cls.default_subdir or 'the data'}>)")
    return str(base / getattr(cls, "default_subdir", ""))


@dataclass
class Prepared:
    spec: RunSpec
    adapter: DatasetAdapter
    protocol: Protocol
    method_cls: type
    method_args: dict[str, Any]
    labeled_ids: list[str]
    unlabeled_ids: list[str]
    test_ids: list[str]
    split_source: str
    directory: Path


def prepare(spec: RunSpec) -> Prepared:
    """Resolve every name, flag and file; raises before anything is written."""
    method_cls = method_class(spec.method)
    if getattr(method_cls, "oracle", False):
        raise ConfigError(f"--method {spec.method}: an oracle evaluation mode, not a training method; use `fmssl-bench oracle`")
    cls = dataset_class(spec.dataset)
    protocol = load_protocol(spec.protocol or cls.default_protocol)
    if protocol.ndim != cls.ndim:
        raise ConfigError(f"--protocol {protocol.name}: a {protocol.ndim}D protocol; dataset {spec.dataset!r} is {cls.ndim}D")
    args = resolve_method_args(method_cls, protocol.method_args.get(spec.method, {}), spec.method_args)
    budget = parse_budget(spec.labeled)
    adapter = build_dataset(spec.dataset, resolve_data_root(spec.dataset, spec.data_root), **spec.dataset_options)
    out = Path(spec.out) if spec.out else paths.results_root()
    split = resolve_split(adapter, out / "splits")
    labeled = select_labeled(adapter, split, budget, spec.seed)
    chosen = set(labeled)
    unlabeled = [i for i in split.train if i not in chosen]
    directory = records.run_dir(out, spec.dataset, spec.method, budget.text, spec.seed, protocol.hash)
    return Prepared(spec, adapter, protocol, method_cls, args, labeled, unlabeled, list(split.test), split.source, directory)


def pseudo_label_scorer(adapter: DatasetAdapter, directory: Path) -> Callable[..., None]:
    """A callback for methods that make pseudo-labels: scored here against labels the method never sees.

    Pseudo-labels come in the frame of the training views (2D: the protocol resolution); the hidden
    reference is resized to match (nearest). Value 255 marks voxels without a pseudo-label. Dice per
    foreground class over the defined voxels goes to ``pseudo_label_quality.csv``; the method gets
    nothing back.
    """
    from .views import resize_label

    refs: dict[str, np.ndarray | None] = {}
    path = directory / "pseudo_label_quality.csv"

    def score(ids: list[str], labels: list[np.ndarray], tag: str) -> None:
        rows = []
        for case_id, pseudo in zip(ids, labels):
            if case_id not in refs:  # read (and resize to the pseudo-label frame) once per case
                ref = adapter.load_label(case_id) if adapter.has_label(case_id) else None
                refs[case_id] = resize_label(ref, pseudo.shape) if ref is not None else None
            ref = refs[case_id]
            if ref is None:
                continue
            defined = pseudo != 255
            for k in range(1, len(adapter.classes)):
                p, r = (pseudo == k) & defined, (ref == k) & defined
                denom = int(p.sum()) + int(r.sum())
                dice = 2.0 * int((p & r).sum()) / denom if denom else float("nan")
                rows.append(f"{tag},{case_id},{adapter.classes[k]},{dice:.6f},{int(defined.sum())}\n")
        existing = path.read_text() if path.is_file() else "tag,case,class,dice,defined_voxels\n"
        records.atomic_write_text(path, existing + "".join(rows))

    return score


def pseudo_label_summary(directory: Path) -> dict[str, Any] | None:
    """Mean pseudo-label Dice overall and for the first and last quarter of the reports."""
    path = directory / "pseudo_label_quality.csv"
    if not path.is_file():
        return None
    import pandas as pd

    table = pd.read_csv(path)
    if table.empty:
        return None
    tags = list(dict.fromkeys(table["tag"]))
    quarter = max(1, len(tags) // 4)
    mean = lambda t: float(table[table["tag"].isin(t)]["dice"].mean())  # noqa: E731
    return {"reports": len(tags), "cases_scored": int(table["case"].nunique()), "mean_dice": mean(tags),
            "mean_dice_first_quarter": mean(tags[:quarter]), "mean_dice_last_quarter": mean(tags[-quarter:])}


def execute(prep: Prepared) -> dict[str, Any]:
    """Train (or resume) and evaluate; returns the summary. Assumes :func:`prepare` succeeded."""
    spec, protocol, adapter = prep.spec, prep.protocol, prep.adapter
    if spec.force and prep.directory.exists():
        shutil.rmtree(prep.directory)
    if records.is_complete(prep.directory):
        return json.loads((prep.directory / "summary.json").read_text())
    device = resolve_device(spec.device)
    labeled_view = build_labeled_view(adapter, prep.labeled_ids, protocol.resize)
    unlabeled_view = build_unlabeled_view(adapter.image_reader(), prep.unlabeled_ids, protocol.resize)
    test_view = TestView(adapter, prep.test_ids, preload=True)
    in_channels = labeled_view.images[0].shape[0]

    prep.directory.mkdir(parents=True, exist_ok=True)
    config = {
        "method": spec.method, "method_args": prep.method_args, "dataset": spec.dataset, "data_root": str(adapter.root),
        "labeled": spec.labeled, "seed": spec.seed, "protocol": protocol.name, "protocol_hash": protocol.hash,
        "protocol_resolved": protocol.to_dict(), "device": str(device), "iterations_override": spec.iterations,
    }
    records.atomic_write_json(prep.directory / "config.json", config)
    records.atomic_write_json(prep.directory / "split.json", {
        "source": prep.split_source, "labeled": prep.labeled_ids, "unlabeled": prep.unlabeled_ids, "test": prep.test_ids})

    ctx = RunContext(
        protocol=protocol, labeled=labeled_view, unlabeled=unlabeled_view, n_classes=len(adapter.classes),
        in_channels=in_channels, seed=spec.seed, run_dir=prep.directory, device=device, iterations=spec.iterations,
        progress=spec.progress,
    )
    ctx.hooks["score_pseudo_labels"] = pseudo_label_scorer(adapter, prep.directory)
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    method = prep.method_cls(ctx, **prep.method_args)
    method.setup()
    t0 = time.time()
    predictor = method.fit()
    train_seconds = time.time() - t0

    t0 = time.time()
    rows = evaluate_predictor(predictor, test_view, protocol, adapter.classes, device, progress=spec.progress)
    eval_seconds = time.time() - t0
    write_per_case(prep.directory / "per_case.csv", rows)
    provenance = {
        **records.environment(),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "stages": ctx.stage_log,
        "parameters": count_parameters(predictor),
        "network": protocol.net.name,
        "protocol_source": protocol.source,
        "split_source": prep.split_source,
        "method": method.provenance(),
        "generalists": ctx.generalist_provenance(),
        "pseudo_label_quality": pseudo_label_summary(prep.directory),
    }
    records.atomic_write_json(prep.directory / "provenance.json", provenance)
    summary = summarise(rows, config, n_labeled=len(prep.labeled_ids), n_unlabeled=len(prep.unlabeled_ids),
                        n_test=len(prep.test_ids), paper_comparable=protocol.paper_comparable, oracle=False,
                        record=str(prep.directory))
    records.atomic_write_json(prep.directory / "summary.json", summary)
    return summary


def run(spec: RunSpec) -> dict[str, Any]:
    return execute(prepare(spec))
