"""The runner: protocol + dataset + method + budget + seed -> a complete run record.

Order matters for the "nothing written on bad input" promise: every flag, protocol field and
method argument is checked (:func:`prepare`) and every case is loaded and validated *before*
anything is written, the seeded split file included (it is persisted when the record begins). The
run's identity (see :mod:`.records.identity`) names the record, so the same command finds the
same record: a cache hit when complete, a resume when interrupted (said on the first line), and
``--force`` recomputes exactly that record. ``summary.json`` is written last and marks the record
complete. Training and evaluation hold the record's lock (:meth:`Record.lock`), so concurrent
runs on one results root (a grid, two terminals) never compute the same record twice: the second
waits and then finds a cache hit.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import paths
from ..api import Method
from ..datasets import DatasetAdapter, build_dataset, dataset_class
from ..errors import ConfigError, DataError
from ..methods.nets import count_parameters
from ..methods.registry import component_args, method_class, resolve_method_args
from .evaluation.pseudo_labels import PseudoLabelQuality, pseudo_label_summary
from .evaluation.rounds import RoundEvaluation, round_evaluation_summary
from .evaluation.scoring import evaluate_predictor, summarise, write_per_case
from .protocol import Protocol, load_protocol
from .records import store as records
from .records.identity import protocol_for_identity, run_identity, split_identity
from .splits import ResolvedSplit, parse_budget, resolve_split, select_labeled
from .training.batches import batch_split
from .training.context import Overrides, RunContext
from .training.loop import checkpoint_progress, say
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
    stage_iterations: dict[str, int] = field(default_factory=dict)
    deterministic: bool = False
    progress: bool = True
    wait: bool = True
    """Another process computing the same record: wait for it (True) or fail naming it (``--no-wait``)."""


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
    split: ResolvedSplit
    overrides: Overrides
    generalists: dict[str, str | None]
    record: records.Record

    @property
    def directory(self) -> Path:
        return self.record.directory

    @property
    def split_source(self) -> str:
        return self.split.source


def check_spec(spec: RunSpec) -> None:
    """Command-line ranges, before anything is read or written."""
    if not isinstance(spec.seed, int) or isinstance(spec.seed, bool) or spec.seed < 0:
        raise ConfigError(f"--seed {spec.seed}: expected a non-negative integer")
    if spec.iterations is not None and (not isinstance(spec.iterations, int) or spec.iterations < 1):
        raise ConfigError(f"--iterations {spec.iterations}: expected at least 1")
    for stage, n in spec.stage_iterations.items():
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"--stage-iterations {stage}={n}: expected an integer of at least 1")
    resolve_device(spec.device)


def check_results_root(out: Path) -> None:
    """The results root can be created and written (checked, not tried: nothing is written yet)."""
    existing = Path(out).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder; expected a writable results folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable; expected a writable results folder")


def generalist_weights(pairs: list[tuple[str, str | None]]) -> dict[str, str | None]:
    """name -> weights sha256 of each generalist a method will load (verified where known)."""
    from ..foundation.registry import get_spec, resolve_checkpoint, verify_sha256

    out = {}
    for name, checkpoint in pairs:
        spec = get_spec(name)
        path, official = resolve_checkpoint(spec, checkpoint)
        out[name] = verify_sha256(path, spec.sha256 if official else None, name)
    return out


def check_batch_split(protocol: Protocol, method_cls: type, args: dict[str, Any], n_labeled: int) -> None:
    """``train.short_labeled: refuse`` with fewer labeled cases than ``labeled_bs``: refused here, before
    anything is written (:func:`.training.batches.batch_split` states the rule)."""
    if "train" not in method_cls.stages_used(args):
        return
    try:
        batch_split(protocol.stage_config("train"), n_labeled, bool(method_cls.uses_unlabeled))
    except ConfigError as err:
        raise ConfigError(f"{protocol.where}: {err}") from None


def default_protocol(method_cls: type, dataset: str) -> str:
    """The protocol a run uses without ``--protocol``: the method's paper protocol for the data set
    (``Method.paper_protocols``, e.g. semisam on la -> semisam-la), else the data set's default."""
    return getattr(method_cls, "paper_protocols", {}).get(dataset) or dataset_class(dataset).default_protocol


def prepare(spec: RunSpec) -> Prepared:
    """Resolve every name, flag and file and the run's identity; raises before anything is written."""
    check_spec(spec)
    method_cls = method_class(spec.method)
    if getattr(method_cls, "oracle", False):
        raise ConfigError(f"--method {spec.method}: an oracle evaluation mode, not a training method; use `fmssl-bench oracle`")
    cls = dataset_class(spec.dataset)
    protocol = load_protocol(spec.protocol or default_protocol(method_cls, spec.dataset))
    if protocol.ndim != cls.ndim:
        raise ConfigError(f"--protocol {protocol.name}: a {protocol.ndim}D protocol; dataset {spec.dataset!r} is {cls.ndim}D")
    args = resolve_method_args(method_cls, protocol.method_args.get(spec.method, {}), spec.method_args, protocol.source)
    method_cls.check(args, protocol)
    generalists = generalist_weights(method_cls.generalists_used(args))
    budget = parse_budget(spec.labeled)
    adapter = build_dataset(spec.dataset, resolve_data_root(spec.dataset, spec.data_root), **spec.dataset_options)
    out = Path(spec.out) if spec.out else paths.results_root()
    check_results_root(out)
    split = resolve_split(adapter, out / "splits")  # writes nothing: persisted when the record begins
    labeled = select_labeled(adapter, split, budget, spec.seed)
    chosen = set(labeled)
    unlabeled = [i for i in split.train if i not in chosen]
    check_batch_split(protocol, method_cls, args, len(labeled))
    test = list(split.test)
    overrides = Overrides(spec.iterations, dict(spec.stage_iterations))
    identity = run_identity(
        dataset=spec.dataset, dataset_options=spec.dataset_options, method=spec.method, method_args=args,
        protocol=protocol_for_identity(protocol.to_dict(), method_cls.stages_used(args)), overrides=overrides.to_dict(), split=split_identity(labeled, unlabeled, test),
        generalists=generalists, seed=spec.seed, budget=budget.text,
        components={name: component_args(method_class(name), protocol) for name in method_cls.components(args)})
    record = records.Record.locate(out, spec.dataset, spec.method, budget.text, spec.seed, identity)
    return Prepared(spec, adapter, protocol, method_cls, args, labeled, unlabeled, test, split, overrides,
                    generalists, record)


def announce_resume(directory: Path) -> list[tuple[str, int, int]]:
    """First line of a resumed run: which stage continues from which iteration (returns the progress)."""
    progress = checkpoint_progress(directory)
    unfinished = [(s, i, n) for s, i, n in progress if i < n]
    if unfinished:
        stage, it, total = unfinished[-1]
        say(f"resuming {stage} from iteration {it} of {total}")
    elif progress:
        say(f"resuming after stage {progress[-1][0]} (finished; {len(progress)} stage checkpoint(s) found)")
    else:
        say(f"resuming an interrupted run in {directory} (no checkpoint yet: starting from iteration 0)")
    return progress


@contextmanager
def determinism(enabled: bool) -> Iterator[dict[str, Any]]:
    """``--deterministic``: cuDNN deterministic and torch's deterministic algorithms for the run.

    What it buys is written in the README ("Reproducibility"); the previous global settings are
    restored afterwards, so one process can run several specs.
    """
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled())
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    try:
        yield {"deterministic": enabled, "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
               "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
               "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[0], before[1]
        torch.use_deterministic_algorithms(before[2])


@dataclass
class Views:
    labeled: Any
    unlabeled: Any
    test: TestView


def needs_unlabeled(method_cls: type) -> bool:
    """Whether a method may read unlabeled images: all but single-stage ones that declare they don't
    (a method with its own ``fit`` may use ``ctx.unlabeled`` in any stage)."""
    return bool(method_cls.uses_unlabeled) or method_cls.fit is not Method.fit


def load_views(prep: Prepared) -> Views:
    """Every training and test case read and validated (the last check before anything is written).

    Unlabeled images are read up front too, except for methods that never use them
    (:func:`needs_unlabeled`): for them the view reads on first use, so ``supervised`` on Kvasir
    does not spend half a minute reading 855 images it ignores.
    """
    protocol, adapter = prep.protocol, prep.adapter
    return Views(build_labeled_view(adapter, prep.labeled_ids, protocol.training_size),
                 build_unlabeled_view(adapter.image_reader(), prep.unlabeled_ids, protocol.training_size,
                                      lazy=not needs_unlabeled(prep.method_cls)),
                 TestView(adapter, prep.test_ids, preload=True))


def write_pictures(directory: Path, adapter: DatasetAdapter, test_ids: list[str]) -> None:
    """``progress.png`` and ``overlays.png`` in the record; a plotting problem never fails a run."""
    try:
        from .evaluation.figures import write_overlays_png, write_progress_png

        write_progress_png(directory)
        write_overlays_png(directory, adapter, test_ids)
    except Exception as err:  # matplotlib missing or a drawing bug: the numbers matter more
        say(f"warning: pictures not written ({type(err).__name__}: {err})")


def drop_embedding_cache(folder: Path) -> dict[str, Any] | None:
    """Delete a finished run's embedding cache (LA: gigabytes), keeping its size for provenance.

    It lives in the record while the run may still resume (a resumed run encodes nothing twice);
    once the record is complete, nothing reads it again.
    """
    if not folder.is_dir():
        return None
    files = [f for f in folder.iterdir() if f.is_file()]
    info = {"entries": len(files), "bytes": sum(f.stat().st_size for f in files), "deleted_after_run": True}
    shutil.rmtree(folder, ignore_errors=True)
    return info


def execute(prep: Prepared) -> dict[str, Any]:
    """Train (or resume) and evaluate holding the record's lock; returns the summary.

    Assumes :func:`prepare` succeeded. The data and any checkpoints to resume from are checked
    before the lock (whose file is the first thing written); after acquiring it the record is
    looked at again, since the process that held it may have completed it.
    """
    spec, record = prep.spec, prep.record
    if record.complete and not spec.force:
        return record.summary()
    device = resolve_device(spec.device)
    announced = None
    if record.directory.exists() and not spec.force and record.holder() is None:
        try:  # the first line; a corrupt checkpoint is refused here, before anything is written
            announced = announce_resume(record.directory)
        except FileNotFoundError:  # being replaced or deleted (--force) by another process: see under the lock
            pass
    views = load_views(prep)
    with record.lock(wait=spec.wait, say=say):
        if spec.force:
            record.reset()
        elif record.complete:
            say(f"cached: {record.directory} was completed by another process meanwhile")
            return record.summary()
        elif record.directory.exists() and checkpoint_progress(record.directory) != announced:
            announce_resume(record.directory)  # another process advanced it while this one waited
        with determinism(spec.deterministic) as settings:
            return _train_and_evaluate(prep, views, device, settings)


def _train_and_evaluate(prep: Prepared, views: Views, device: torch.device, settings: dict[str, Any]) -> dict[str, Any]:
    spec, protocol, adapter, record = prep.spec, prep.protocol, prep.adapter, prep.record
    labeled_view, unlabeled_view, test_view = views.labeled, views.unlabeled, views.test
    in_channels = labeled_view.images[0].shape[0]

    config = {
        "method": spec.method, "method_args": prep.method_args, "method_defaults": dict(prep.method_cls.defaults),
        "method_arg_types": {name: arg.expected() for name, arg in prep.method_cls.arguments.items()},
        "dataset": spec.dataset, "data_root": str(adapter.root), "dataset_options": spec.dataset_options,
        "labeled": spec.labeled, "seed": spec.seed, "protocol": protocol.name, "protocol_resolved": protocol.to_dict(),
        "device": str(device), "overrides": prep.overrides.to_dict(), "deterministic": spec.deterministic,
    }
    prep.split.persist()
    record.begin(config, {"source": prep.split_source, "labeled": prep.labeled_ids, "unlabeled": prep.unlabeled_ids,
                          "test": prep.test_ids})
    if spec.progress:  # which record the progress lines below belong to (a grid's log holds many)
        say(f"record {spec.method} {spec.dataset} labeled={spec.labeled} seed={spec.seed}: {record.directory}")
    ctx = RunContext(
        protocol=protocol, labeled=labeled_view, unlabeled=unlabeled_view, n_classes=len(adapter.classes),
        class_names=tuple(adapter.classes),
        in_channels=in_channels, seed=spec.seed, run_dir=record.directory, device=device, overrides=prep.overrides,
        progress=spec.progress, score_pseudo_labels=PseudoLabelQuality(adapter, record.path("pseudo_label_quality.csv")),
        score_checkpoint=RoundEvaluation(test_view, protocol, adapter.classes, device, record.path("round_evaluation.csv")),
        roi_counts=dict(adapter.roi_counts),
    )
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    method = prep.method_cls(ctx, **prep.method_args)
    method.setup()
    t0 = time.time()
    predictor = method.fit()
    train_seconds = time.time() - t0

    t0 = time.time()
    rows = evaluate_predictor(predictor, test_view, protocol, adapter.classes, device, progress=spec.progress,
                              predictions_dir=record.predictions_dir)
    eval_seconds = time.time() - t0
    write_per_case(record.path("per_case.csv"), rows)
    write_pictures(record.directory, adapter, prep.test_ids)
    fm_cache = drop_embedding_cache(record.path("fm_cache"))
    if paths.shared_fm_cache() is not None and ctx.generalists:  # where the embeddings were (not in the identity)
        fm_cache = {"shared": str(paths.shared_fm_cache())}
    provenance = {
        **records.environment(device),
        **settings,
        "computed_by": {k: v for k, v in records.owner_info().items() if k in ("pid", "host")},
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "stages": ctx.stage_log,
        "artifacts": ctx.artifacts.listing(),
        "parameters": count_parameters(predictor),
        "network": protocol.net.name,
        "protocol_source": protocol.source,
        "split_source": prep.split_source,
        "method": method.provenance(),
        "generalists": ctx.generalist_provenance(),
        "embedding_cache": fm_cache,
        "pseudo_label_quality": pseudo_label_summary(record.path("pseudo_label_quality.csv")),
    }
    rounds = round_evaluation_summary(record.path("round_evaluation.csv"))
    if rounds is not None:  # only multi-round methods report intermediate networks
        provenance["round_evaluation"] = rounds
    summary = summarise(rows, config, n_labeled=len(prep.labeled_ids), n_unlabeled=len(prep.unlabeled_ids),
                        n_test=len(prep.test_ids), oracle=False, external=False,
                        method_defaults=dict(prep.method_cls.defaults))
    return record.finish(provenance, summary)


def run(spec: RunSpec) -> dict[str, Any]:
    return execute(prepare(spec))
