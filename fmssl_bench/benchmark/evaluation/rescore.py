"""``fmssl-bench evaluate``: score saved predictions without training (nnU-Net's evaluate_folder).

Two uses, one scorer (:func:`.scoring.score_predictions`, the one every run uses):

- :func:`evaluate_run` re-scores a complete run record's ``predictions/`` under other metric
  definitions (HD95 pooled vs max-directional, ASD directed vs symmetric, empty policy, voxel vs
  mm). The record itself is never touched: results go to
  ``<run>/evaluations/<metric-key>/`` with ``per_case.csv`` and ``evaluation.json`` (the summary,
  written last). ``<metric-key>`` is readable and names all four definitions, e.g.
  ``hd95-medpy-pooled_asd-directed_empty-worst_voxel``; the definitions themselves are in the
  summary under ``metrics``. With the run's own definitions the rows equal the run's
  ``per_case.csv`` (``matches_record`` in the summary says whether they do).

  The summary is *not* called ``summary.json`` on purpose: the leaderboard collects every
  ``**/summary.json`` under the results root and would list a re-scoring as a row of its own.

- :func:`evaluate_folder` scores an outside method's prediction folder (format:
  :mod:`.predictions`) on the harness's test split of a data set and writes an ordinary run
  record (``<out>/<dataset>/<name>/labeled-<labeled or external>/seed0/<key>/``, marked
  ``external: true``) that the leaderboard lists beside trained methods. The folder is fully
  validated, and scored, before the record folder is created; a bad folder raises one
  :class:`DataError` listing every problem and leaves nothing behind. The used prediction files
  are copied into the record's ``predictions/`` so the record can itself be re-scored with
  :func:`evaluate_run`.

``config.json`` keys read from a run record: ``dataset``, ``data_root``, ``dataset_options``
(optional, default ``{}``), ``protocol`` (its name), ``protocol_resolved`` (the resolved
protocol as a dict), and ``method``, ``labeled``, ``seed`` (copied into the summary);
``split.json``: ``test``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ... import paths
from ...datasets import DatasetAdapter, build_dataset, dataset_class
from ...errors import ConfigError, DataError
from ..protocol import Protocol, load_protocol, protocol_from_dict
from ..records.identity import RECORD_FORMAT, ids_digest
from ..records.store import Record, atomic_write_bytes, atomic_write_json, environment, is_complete
from ..splits import resolve_split
from ..views import TestView
from .metrics import ASD_MODES, EMPTY_POLICIES, HD95_MODES, HD_MODES
from .predictions import (SUFFIX, UnmatchedPredictionWarning, load_prediction_folder, prediction_path,
                          predictions_digest)
from .scoring import metric_definitions, per_case_csv, score_predictions, summarise, write_per_case

EVALUATIONS = "evaluations"
EVALUATION_SUMMARY = "evaluation.json"
UNITS = ("voxel", "mm")
#: metric definition key -> valid values (the keys of a protocol's ``metrics:`` section)
METRIC_CHOICES: dict[str, tuple[str, ...]] = {"hd95": HD95_MODES, "asd": ASD_MODES, "empty_policy": EMPTY_POLICIES,
                                              "units": UNITS, "hd": HD_MODES}
#: what an outside method's name and label text may look like: they become folder names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_LABELED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+% -]*")
RUN_CONFIG_KEYS = ("dataset", "protocol", "protocol_resolved", "method", "labeled", "seed")

Rows = list[dict[str, Any]]


# ----------------------------------------------------------------------------- shared pieces


def metric_key(definitions: Mapping[str, str]) -> str:
    """Folder name of one set of metric definitions, e.g. ``hd95-medpy-pooled_asd-directed_empty-worst_voxel``."""
    key = f"hd95-{definitions['hd95']}_asd-{definitions['asd']}_empty-{definitions['empty_policy']}_{definitions['units']}"
    return key + (f"_hd-{definitions['hd']}" if definitions.get("hd", "off") != "off" else "")


def with_metrics(protocol: Protocol, overrides: Mapping[str, Any] | None = None, workers: int | None = None) -> Protocol:
    """``protocol`` with its ``metrics`` section updated by ``overrides`` (None values ignored), validated."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    merged = {**protocol.metrics, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = sorted(set(merged) - set(METRIC_CHOICES))
    if unknown:
        raise ConfigError(f"unknown metric definition(s) {', '.join(map(repr, unknown))}; expected: {', '.join(METRIC_CHOICES)}")
    changed = dataclasses.replace(protocol, metrics=merged,
                                  eval_workers=protocol.eval_workers if workers is None else int(workers))
    metric_definitions(changed)  # raises ConfigError for a bad value
    return changed


def reference_labels(adapter: DatasetAdapter, test_ids: list[str]) -> dict[str, np.ndarray]:
    """Reference labels of the test cases, read and validated as the runner's test view does.

    Images are read (to check label and image shapes agree) and dropped one by one, so only the
    labels stay in memory.
    """
    return {case.case_id: case.label for case in TestView(adapter, test_ids)}


def score_folder(folder: Path, adapter: DatasetAdapter, test_ids: list[str], protocol: Protocol) -> Rows:
    """Validate ``folder`` (every problem at once) and score it against the test references."""
    refs = reference_labels(adapter, test_ids)
    preds = load_prediction_folder(folder, adapter, test_ids, adapter.classes, references=refs)
    return score_predictions([(c, p, refs[c], s) for c, p, s in preds], adapter.classes, protocol)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: not found; expected the {what} of a run record")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise DataError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object ({what})")
    return data


# ----------------------------------------------------------------------------- re-scoring a run


def evaluate_run(run_dir: Path, metric_overrides: Mapping[str, Any] | None = None, data_root: str | Path | None = None,
                 workers: int | None = None) -> dict[str, Any]:
    """Re-score the saved predictions of a complete run record; returns the evaluation summary.

    ``metric_overrides`` update the run protocol's ``metrics`` section (keys ``hd95``, ``asd``,
    ``empty_policy``, ``units``). ``data_root`` replaces the recorded one (data moved);
    ``workers`` the protocol's ``eval_workers``. The reference labels are read from the data set
    again; the run's split fixes the test cases. Always recomputed (scoring is cheap next to
    training and the output is deterministic); the record's own files are never modified.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    config = _read_json(config_path, "config.json")
    missing = [k for k in RUN_CONFIG_KEYS if k not in config]
    if missing:
        raise DataError(f"{config_path}: no {', '.join(missing)}; expected the config.json the runner writes")
    if not is_complete(run_dir):
        raise DataError(f"{run_dir}: not a complete run record (no summary.json); finish the run first "
                        "(rerun the same command to resume)")
    split = _read_json(run_dir / "split.json", "split.json")
    if not isinstance(split.get("test"), list) or not split["test"]:
        raise DataError(f"{run_dir / 'split.json'}: no 'test' list of case ids")
    predictions = run_dir / "predictions"
    if not predictions.is_dir():
        raise DataError(f"{predictions}: not found; this record was made before runs saved their test predictions: "
                        "rerun it with --force to save them")
    resolved = config["protocol_resolved"]
    if not isinstance(resolved, dict):
        raise DataError(f"{config_path}: protocol_resolved is not a mapping")
    recorded = _recorded_protocol(config["protocol"], resolved, config_path)
    protocol = with_metrics(recorded, metric_overrides, workers)
    dataset = str(config["dataset"])
    adapter = _adapter(dataset, data_root if data_root is not None else config.get("data_root"),
                       config.get("dataset_options") or {})
    test_ids = [str(i) for i in split["test"]]

    rows = score_folder(predictions, adapter, test_ids, protocol)
    definitions = metric_definitions(protocol)
    same_definitions = definitions == metric_definitions(recorded)
    record_csv = run_dir / "per_case.csv"
    matches = (record_csv.is_file() and record_csv.read_bytes() == per_case_csv(rows).encode()) if same_definitions else None

    out = run_dir / EVALUATIONS / metric_key(definitions)
    write_per_case(out / "per_case.csv", rows)
    summary = summarise(rows, config, n_test=len(test_ids), metrics=definitions, rescored=True,
                        same_metrics_as_record=same_definitions, matches_record=matches,
                        oracle=bool(config.get("oracle", False)), external=bool(config.get("external", False)),
                        record=str(run_dir), evaluation=str(out))
    atomic_write_json(out / EVALUATION_SUMMARY, summary)
    return summary


def _recorded_protocol(name: str, resolved: Mapping[str, Any], source: Path) -> Protocol:
    """The run's protocol from ``protocol_resolved``; top-level fields this version no longer has
    (e.g. a removed declaration) are dropped, since only the metric definitions matter here."""
    known = {f.name for f in dataclasses.fields(Protocol)} - {"source"}
    return protocol_from_dict({"name": name, **{k: v for k, v in resolved.items() if k in known}}, source=str(source))


def _adapter(dataset: str, data_root: str | Path | None, options: Mapping[str, Any]) -> DatasetAdapter:
    """The data set's adapter; the recorded root is ignored for data sets that need none."""
    from ..runner import resolve_data_root

    if not dataset_class(dataset).needs_root:
        data_root = None
    return build_dataset(dataset, resolve_data_root(dataset, None if data_root is None else str(data_root)),
                         **dict(options))


# ----------------------------------------------------------------------------- outside predictions


def _check_name(name: str, labeled: str | None) -> None:
    from ...methods.registry import method_names

    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"--name {name!r}: expected letters, digits, '.', '_', '+' or '-' (it names a folder)")
    if name in method_names():
        raise ConfigError(f"--name {name}: a method of this harness; give outside predictions another name "
                          "(the leaderboard would mix them with trained runs)")
    if labeled is not None and not _LABELED.fullmatch(labeled):
        raise ConfigError(f"--labeled {labeled!r}: expected a short text such as 10, 10% or all (it names a folder)")


def evaluate_folder(folder: str | Path, dataset: str, name: str, data_root: str | Path | None = None,
                    protocol: str | Path | None = None, labeled: str | None = None, out: str | Path | None = None,
                    dataset_options: Mapping[str, Any] | None = None, force: bool = False,
                    workers: int | None = None) -> dict[str, Any]:
    """Score an outside method's predictions on the harness's test split; returns the record's summary.

    ``protocol`` (default: the data set's) fixes the metric definitions; ``labeled`` is the
    label-budget text shown on the leaderboard (default ``external``). The test split is the
    one every harness run of ``dataset`` uses (official, or the seeded split file under
    ``<out>/splits/``, written on first use as by any run). The record's identity is the
    data set and its options, ``name``, the sha256 of the used prediction files, the metric
    definitions and the test set: the same folder scored twice is a cache hit (``force``
    recomputes it), and a changed folder is a new record (a separate leaderboard row, told apart
    by its ``predictions`` digest).
    """
    folder = Path(folder)
    _check_name(name, labeled)
    cls = dataset_class(dataset)
    proto = with_metrics(load_protocol(protocol or cls.default_protocol), workers=workers)
    if proto.ndim != cls.ndim:
        raise ConfigError(f"--protocol {proto.name}: a {proto.ndim}D protocol; dataset {dataset!r} is {cls.ndim}D")
    if not folder.is_dir():
        raise DataError(f"--predictions {folder}: not a folder; expected one <case_id>{SUFFIX[cls.ndim]} per test case")
    options = dict(sorted((dataset_options or {}).items()))
    adapter = _adapter(dataset, data_root, options)
    root = Path(out) if out else paths.results_root()
    split = resolve_split(adapter, root / "splits")
    test_ids = list(split.test)
    used = [prediction_path(folder, c, cls.ndim) for c in test_ids]
    definitions = metric_definitions(proto)
    budget = labeled or "external"

    def locate() -> Record:
        identity = {
            "record_format": RECORD_FORMAT,
            "dataset": dataset,
            "dataset_options": options,
            "external": name,
            "predictions": predictions_digest(used),
            "metrics": definitions,
            "split": {"test": ids_digest(test_ids), "n_test": len(test_ids)},
        }
        return Record.locate(root, dataset, name, budget, 0, identity)

    # the same bytes were validated when the record was made: a complete record is a cache hit
    record = locate() if all(p.is_file() for p in used) else None
    if record is not None and record.complete and not force:
        return record.summary()
    t0 = time.time()
    rows = score_folder(folder, adapter, test_ids, proto)  # raises, listing every problem, before any record folder
    score_seconds = time.time() - t0
    record = record or locate()
    with record.lock():  # one process writes a record; the others wait, then find it complete
        if force:
            record.reset()
        elif record.complete:
            return record.summary()
        config = {
            "method": name, "external": True, "dataset": dataset, "data_root": str(adapter.root),
            "dataset_options": options, "labeled": budget, "seed": 0, "protocol": proto.name,
            "protocol_resolved": proto.to_dict(), "metrics": definitions,
            "predictions_folder": str(folder.resolve()),
        }
        split.persist()  # a new seeded split file is written only now, after every check
        record.begin(config, {"source": split.source, "labeled": [], "unlabeled": [], "test": test_ids})
        for path in used:  # the record keeps the files it scored, so it can be re-scored like any run
            atomic_write_bytes(record.predictions_dir / path.name, path.read_bytes())
        write_per_case(record.path("per_case.csv"), rows)
        provenance = {**environment("cpu"), "score_seconds": round(score_seconds, 2), "protocol_source": proto.source,
                      "split_source": split.source, "predictions_folder": str(folder.resolve()),
                      "predictions_sha256": record.identity["predictions"], "prediction_files": len(used)}
        summary = summarise(rows, config, n_labeled=None, n_unlabeled=None, n_test=len(test_ids), oracle=False,
                            external=True)
        return record.finish(provenance, summary)


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``fmssl-bench evaluate RUN_DIR | --predictions FOLDER ...``."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                       help="a complete run record to re-score under other metric definitions")
    which.add_argument("--predictions", metavar="FOLDER",
                       help="an outside method's predictions (<case_id>.nii.gz in 3D, <case_id>.png with class "
                            "indices in 2D) to score on the harness's test split")
    p.add_argument("--hd95", choices=HD95_MODES, help="RUN_DIR: HD95 definition (default: the run's)")
    p.add_argument("--asd", choices=ASD_MODES, help="RUN_DIR: ASD definition (default: the run's)")
    p.add_argument("--empty-policy", choices=EMPTY_POLICIES, help="RUN_DIR: distance for an empty mask (default: the run's)")
    p.add_argument("--units", choices=UNITS, help="RUN_DIR: distances in voxels or mm (default: the run's)")
    p.add_argument("--hd", choices=HD_MODES, help="RUN_DIR: also score the full Hausdorff distance (max; default: the run's)")
    p.add_argument("--dataset", help="--predictions: dataset name (see `fmssl-bench list datasets`)")
    p.add_argument("--name", help="--predictions: the outside method's name on the leaderboard")
    p.add_argument("--labeled", help="--predictions: label budget text for the leaderboard (default 'external')")
    p.add_argument("--protocol", help="--predictions: protocol name or YAML path; fixes the metric definitions "
                                      "(default: the dataset's)")
    p.add_argument("--data-root", help="dataset folder (default: the run's, or $FMSSL_DATA/<dataset folder>)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE", help="--predictions: adapter option")
    p.add_argument("--out", help="--predictions: results root (default: $FMSSL_RESULTS or ./runs)")
    p.add_argument("--force", action="store_true", help="--predictions: rescore and replace an existing record")
    p.add_argument("--workers", type=int, help="metric processes (default: the protocol's eval_workers)")


def run(args: argparse.Namespace) -> int:
    """``fmssl-bench evaluate``: one line per result; warnings about ignored files go to stderr."""
    overrides = {k: getattr(args, k) for k in METRIC_CHOICES if getattr(args, k, None) is not None}
    if (args.run_dir is None) == (args.predictions is None):
        raise ConfigError("evaluate: give RUN_DIR (re-score a run) or --predictions FOLDER (score outside predictions)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnmatchedPredictionWarning)
        if args.run_dir is not None:
            stray = [flag for flag, value in (("--dataset", args.dataset), ("--name", args.name),
                                              ("--labeled", args.labeled), ("--protocol", args.protocol),
                                              ("--out", args.out), ("--force", args.force),
                                              ("--dataset-option", args.dataset_option)) if value]
            if stray:
                raise ConfigError(f"evaluate RUN_DIR: {', '.join(stray)} only apply with --predictions")
            summary = evaluate_run(Path(args.run_dir), overrides, data_root=args.data_root, workers=args.workers)
            where = summary["evaluation"]
        else:
            if not args.dataset or not args.name:
                raise ConfigError("evaluate --predictions: --dataset and --name are required")
            if overrides:
                raise ConfigError("evaluate --predictions: --hd95/--asd/--empty-policy/--units apply to RUN_DIR; "
                                  "outside predictions are scored with the protocol's metrics (choose them with --protocol)")
            from ...methods.registry import parse_method_args

            summary = evaluate_folder(args.predictions, args.dataset, args.name, data_root=args.data_root,
                                      protocol=args.protocol, labeled=args.labeled, out=args.out,
                                      dataset_options=parse_method_args(args.dataset_option), force=args.force,
                                      workers=args.workers)
            where = summary["record"]
    for warning in caught:
        if issubclass(warning.category, UnmatchedPredictionWarning):
            print(f"fmssl-bench: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    mean = summary["classes"]["mean"]
    print(f"{summary['method']} on {summary['dataset']} ({summary['labeled']}, {summary['n_test']} test cases, "
          f"{summary['metric_ids'].get('hd95', 'hd95')}): Dice {100 * mean['dice']['mean']:.2f}%  "
          f"HD95 {mean['hd95']['mean']:.2f}  -> {where}")
    return 0


__all__ = ["EVALUATIONS", "EVALUATION_SUMMARY", "add_arguments", "evaluate_folder", "evaluate_run",
           "metric_key", "reference_labels", "run", "score_folder", "with_metrics"]
