"""``fmssl-bench``: run, list, leaderboard, check-data, bench.

``fmssl-bench --method M --dataset D ...`` (no subcommand) means ``run``: that is how the
container is called. ``fmssl-bench run`` with neither method nor dataset runs the synthetic demo
(supervised vs mean_teacher) and prints its leaderboard.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, FmsslError

SUBCOMMANDS = ("run", "list", "leaderboard", "check-data", "bench", "oracle", "evaluate", "grid", "regress", "export")
DEMO = {"dataset": "synthetic-2d", "methods": ("supervised", "mean_teacher"), "labeled": "4", "seed": 0}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="method name (see `fmssl-bench list methods`)")
    p.add_argument("--dataset", help="dataset name (see `fmssl-bench list datasets`)")
    p.add_argument("--labeled", default=None, help="label budget: a count (4), a percentage (10%%) or 'all' (default: 10%%)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--protocol", help="protocol name or YAML path (default: the method's paper protocol for the dataset, else the dataset's)")
    p.add_argument("--data-root", help="dataset folder (default: $FMSSL_DATA/<dataset folder>)")
    p.add_argument("--out", help="results root (default: $FMSSL_RESULTS or ./runs)")
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE", help="override a method hyper-parameter")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE", help="adapter option (e.g. spacing=0.625)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--iterations", type=int, help="override every stage's iteration count (part of the run identity; for quick checks)")
    p.add_argument("--stage-iterations", action="append", default=[], metavar="STAGE=N",
                   help="override one stage's iteration count (part of the run identity)")
    p.add_argument("--deterministic", action="store_true",
                   help="cuDNN deterministic + torch deterministic algorithms (GPU runs; recorded in provenance)")
    p.add_argument("--force", action="store_true", help="recompute this run's record even if it is complete")
    p.add_argument("--no-wait", action="store_true",
                   help="if another process is computing the same record, fail naming it instead of waiting")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--leaderboard-dir", default=None, help="where to write leaderboard files (default: <out>/leaderboards)")


def _add_oracle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generalist", required=True, help="foundation model (see `fmssl-bench list generalists`)")
    p.add_argument("--dataset", required=True, help="dataset name (see `fmssl-bench list datasets`)")
    p.add_argument("--data-root", help="dataset folder (default: $FMSSL_DATA/<dataset folder>)")
    p.add_argument("--prompt", choices=["box", "points", "clicks", "keyframes"], default="box",
                   help="box: one box per reference component; points: k positive clicks on every slice with the "
                        "target (001 Table I 'SAM (kN points)'); clicks: k corrective clicks with the previous mask fed "
                        "back (001 Table I / 002 Table XIV SAM-Med3D rows); keyframes: a click on every k-th slice, "
                        "propagated (002 Table XV 'Frequency k') (default box)")
    p.add_argument("--points", "--per-slice", dest="points", type=int, default=1,
                   help="points per slice (per image in 2D) with --prompt points, per key frame with keyframes (default 1)")
    p.add_argument("--clicks", type=int, default=5, help="corrective clicks per slice with --prompt clicks (default 5)")
    p.add_argument("--every", type=int, default=5, help="a key frame every N slices with --prompt keyframes (default 5)")
    p.add_argument("--protocol", help="protocol name or YAML path; decides the metric definitions (default: the dataset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the point sampling (default 0)")
    p.add_argument("--out", help="results root (default: $FMSSL_RESULTS or ./runs)")
    p.add_argument("--fm-checkpoint", help="generalist checkpoint file (default: bundled or $FMSSL_WEIGHTS)")
    p.add_argument("--max-cases", type=int, help="only the first N test cases (recorded; for quick checks)")
    p.add_argument("--fm-cache-dir", help="folder for image embeddings, reused by later oracle runs (default: none)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE", help="adapter option")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--force", action="store_true", help="recompute even if a complete record exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", required=True, help="comma-separated method names")
    p.add_argument("--datasets", required=True, help="comma-separated dataset names")
    p.add_argument("--budgets", required=True, help="comma-separated label budgets (4,8 or 5%%,10%%)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--protocol", help="protocol name or YAML path (default: per method and dataset, its paper protocol)")
    p.add_argument("--data-root", help="dataset folder (one dataset only; default: $FMSSL_DATA/<dataset folder>)")
    p.add_argument("--out", help="results root (default: $FMSSL_RESULTS or ./runs)")
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE", help="for every method of the grid")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE", help="adapter option")
    p.add_argument("--iterations", type=int, help="override every stage's iteration count (part of each identity)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="local (one after the other) or ray")
    p.add_argument("--address", help="Ray cluster address to join (default: start a local one)")
    p.add_argument("--workers", type=int, default=None, help="local Ray cluster: parallel records (default 1)")
    p.add_argument("--cpus-per-run", type=int, default=1, help="CPUs (and torch threads) per record on Ray (default 1)")
    p.add_argument("--force", action="store_true", help="recompute every record of the grid")
    p.add_argument("--no-progress", action="store_true",
                   help="no per-record progress lines (training, inference) between the grid's own lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmssl-bench",
        description="Benchmark semi-supervised (foundation-model-assisted) medical image segmentation methods.",
        epilog="Without a subcommand, `fmssl-bench --method M --dataset D ...` means `fmssl-bench run ...`.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="train + evaluate one method (no flags: synthetic demo)")
    _add_run_args(run)
    ls = sub.add_parser("list", help="list methods, datasets, protocols or generalists")
    ls.add_argument("what", choices=["methods", "datasets", "protocols", "generalists"])
    ls.add_argument("--args", action="store_true", help="methods: each method's typed arguments (default, type, help)")
    lb = sub.add_parser("leaderboard", help="aggregate run records into leaderboard tables")
    lb.add_argument("--dataset")
    lb.add_argument("--format", choices=["md", "csv", "html"], default="md")
    lb.add_argument("--runs", help="results root (default: $FMSSL_RESULTS or ./runs)")
    lb.add_argument("--write", default="leaderboards", help="folder for the md/csv/html files ('' to skip)")
    lb.add_argument("--compare", metavar="A,B", help="paired test of method A against method B (Dice, per test case, "
                    "seed-averaged) for every setting both were run in, instead of the table")
    lb.add_argument("--rounds", action="store_true", help="per-round table of iterative methods (test Dice after each "
                    "round, pseudo-label Dice, accepted images ...), one row per record and round, instead of the table")
    lb.add_argument("--method", help="with --rounds: only this method's records")
    cd = sub.add_parser("check-data", help="verify a dataset folder and report every problem")
    cd.add_argument("--dataset", required=True)
    cd.add_argument("--data-root")
    cd.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE")
    _add_oracle_args(sub.add_parser("oracle", help="zero-shot foundation model with prompts from the test labels (oracle)"))
    from .evaluation import rescore

    rescore.add_arguments(sub.add_parser("evaluate", help="re-score a run's saved predictions, or score an outside "
                                                          "method's prediction folder on the same test split"))
    _add_grid_args(sub.add_parser("grid", help="run the missing records of methods x datasets x budgets x seeds "
                                               "(local or on a Ray cluster); finished ones are skipped, killed ones resume"))
    rg = sub.add_parser("regress", help="compare records with the committed measured leaderboard or the papers; "
                                        "exit 1 when a row regresses")
    rg.add_argument("--against", choices=["measured", "paper"], default="measured")
    rg.add_argument("--runs", help="results root to check (default: $FMSSL_RESULTS or ./runs)")
    rg.add_argument("--golden", default="leaderboards/measured", help="the committed measured records (default %(default)s)")
    rg.add_argument("--tolerance", type=float, help="fixed tolerance in Dice points (default: from the golden spread)")
    rg.add_argument("--k", type=float, default=3.0, help="tolerance = max(k x golden std over seeds, floor) (default 3)")
    rg.add_argument("--floor", type=float, default=1.0, help="smallest tolerance in Dice points (default 1)")
    rg.add_argument("--require-reference", action="store_true",
                    help="also exit 1 when a row has no reference (CI: a changed run identity must not pass unseen)")
    ex = sub.add_parser("export", help="copy the small files of complete records (no checkpoints, predictions, "
                                       "artifacts) into a folder to commit, e.g. leaderboards/measured")
    ex.add_argument("--runs", help="results root (default: $FMSSL_RESULTS or ./runs)")
    ex.add_argument("--to", required=True, help="target folder (itself a results root afterwards)")
    ex.add_argument("--dataset", help="only this dataset's records")
    bench = sub.add_parser("bench", help="micro-benchmarks (metrics)")
    bench_sub = bench.add_subparsers(dest="bench_what", required=True)
    from .evaluation import bench_metrics

    bench_metrics.add_arguments(bench_sub.add_parser("metrics", help="fmssl-bench metrics vs medpy on LA test volumes"))
    return parser


def _normalise_argv(argv: list[str]) -> list[str]:
    """The container form: no subcommand but run flags -> ``run``."""
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help") and argv[0].startswith("--"):
        return ["run", *argv]
    return argv


def _options(pairs: list[str]) -> dict:
    from ..methods.registry import parse_method_args

    return parse_method_args(pairs)


def _method_args(pairs: list[str]) -> dict[str, str]:
    """``--method-arg`` texts; each is parsed against the method's declared type in ``prepare``."""
    from ..methods.registry import split_pairs

    return split_pairs(pairs, "--method-arg")


def _stage_iterations(pairs: list[str]) -> dict[str, int]:
    out = {}
    for pair in pairs:
        stage, _, value = pair.partition("=")
        try:
            out[stage.strip()] = int(value)
        except ValueError:
            raise FmsslError(f"--stage-iterations {pair!r}: expected STAGE=N with an integer N") from None
        if not stage.strip():
            raise FmsslError(f"--stage-iterations {pair!r}: expected STAGE=N")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .records.leaderboard import aggregate, find_summaries, render, write_leaderboards
    from .runner import RunSpec, execute, prepare

    out = Path(args.out) if args.out else None
    if not args.method and not args.dataset:
        specs = [RunSpec(method=m, dataset=DEMO["dataset"], labeled=args.labeled or DEMO["labeled"], seed=args.seed,
                         protocol=args.protocol, out=args.out, device=args.device, force=args.force,
                         iterations=args.iterations, stage_iterations=_stage_iterations(args.stage_iterations),
                         deterministic=args.deterministic, progress=not args.no_progress, wait=not args.no_wait)
                 for m in DEMO["methods"]]
        print(f"fmssl-bench demo: {', '.join(DEMO['methods'])} on {DEMO['dataset']} with {specs[0].labeled} labeled cases")
    elif not (args.method and args.dataset):
        raise FmsslError("run: give both --method and --dataset (or neither, for the synthetic demo)")
    else:
        specs = [RunSpec(method=args.method, dataset=args.dataset, labeled=args.labeled or "10%", seed=args.seed,
                         protocol=args.protocol, data_root=args.data_root, out=args.out,
                         method_args=_method_args(args.method_arg), dataset_options=_options(args.dataset_option),
                         device=args.device, force=args.force, iterations=args.iterations,
                         stage_iterations=_stage_iterations(args.stage_iterations), deterministic=args.deterministic,
                         progress=not args.no_progress, wait=not args.no_wait)]
    summaries = []
    for spec in specs:
        prep = prepare(spec)
        if prep.record.complete and not spec.force:
            print(f"cached: a complete record of this exact run exists ({prep.directory}); --force recomputes it")
        summary = execute(prep)
        mean = summary["classes"]["mean"]
        print(f"{spec.method} on {spec.dataset} ({spec.labeled} labeled, seed {spec.seed}): "
              f"Dice {100 * mean['dice']['mean']:.2f}%  HD95 {mean['hd95']['mean']:.2f}  -> {summary.get('record', '')}")
        summaries.append(summary)
    from .. import paths

    root = out or paths.results_root()
    keys = {(s["dataset"], s["protocol"]) for s in summaries}
    # only this run's (dataset, protocol): the statistics of every other row in the root are not needed here
    table = aggregate(s for s in find_summaries(root) if (s.get("dataset"), s.get("protocol")) in keys)
    print()
    print(render(table, "md"))
    lb_dir = Path(args.leaderboard_dir) if args.leaderboard_dir else root / "leaderboards"
    for path in write_leaderboards(table, lb_dir, name=f"{specs[0].dataset}_{summaries[0]['protocol']}"):
        print(f"wrote {path}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from .grid import grid_specs, parse_list, parse_seeds, run_grid

    datasets = parse_list(args.datasets, "--datasets")
    if args.data_root and len(datasets) > 1:
        raise FmsslError("grid: --data-root names one folder; give one dataset or use $FMSSL_DATA")
    specs = grid_specs(parse_list(args.methods, "--methods"), datasets, parse_list(args.budgets, "--budgets"),
                       parse_seeds(args.seeds), protocol=args.protocol, data_root=args.data_root, out=args.out,
                       method_args=_method_args(args.method_arg), dataset_options=_options(args.dataset_option),
                       device=args.device, force=args.force, iterations=args.iterations,
                       progress=not args.no_progress)  # local: periodic lines per record (Ray tasks: none)
    cells = run_grid(specs, executor=args.executor, address=args.address, workers=args.workers,
                     cpus_per_run=args.cpus_per_run)
    return 1 if any(c.status == "failed" for c in cells) else 0


def cmd_regress(args: argparse.Namespace) -> int:
    from .. import paths
    from .records.regress import run_regress

    runs = Path(args.runs) if args.runs else paths.results_root()
    checks, text = run_regress(runs, args.against, Path(args.golden), args.k, args.floor, args.tolerance)
    print(text)
    regressed = [c for c in checks if c.status == "REGRESSED"]
    checked = [c for c in checks if c.reference is not None]
    missing = [c for c in checks if c.reference is None]
    print(f"\nregress --against {args.against}: {len(checked)} row(s) with a reference, {len(regressed)} regressed")
    if args.require_reference and missing:
        print(f"--require-reference: {len(missing)} row(s) without a reference (their run identity matches no "
              f"golden/paper row): {', '.join(c.row for c in missing)}")
        return 1
    return 1 if regressed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import rescore

    return rescore.run(args)


def cmd_export(args: argparse.Namespace) -> int:
    from .. import paths
    from .records.export import export_records

    copied = export_records(Path(args.runs) if args.runs else paths.results_root(), Path(args.to), args.dataset)
    print(f"exported {len(copied)} complete record(s) to {args.to}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.args and args.what != "methods":
        raise FmsslError(f"list {args.what} --args: --args applies to `list methods`")
    if args.what == "methods":
        from ..methods.registry import describe_arguments, describe_methods, method_class

        items = describe_methods()
        if args.args:
            width = max(map(len, items))
            for name, text in items.items():
                print(f"{name:<{width}}  {text}")
                rows = describe_arguments(method_class(name))
                if not rows:
                    print("    (no arguments)")
                widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else []
                for arg, default, expected, help_text in rows:
                    print(f"    {arg:<{widths[0]}}  = {default:<{widths[1]}}  {expected:<{widths[2]}}  {help_text}")
            return 0
    elif args.what == "datasets":
        from ..datasets import dataset_class, dataset_names

        items = {n: dataset_class(n).description for n in dataset_names()}
    elif args.what == "generalists":
        from ..foundation import describe_generalists

        items = describe_generalists()
    else:
        from .protocol import load_protocol, protocol_names

        items = {n: " ".join(load_protocol(n).description.split())[:110] for n in protocol_names()}
    width = max(map(len, items)) if items else 0
    for name, text in items.items():
        print(f"{name:<{width}}  {text}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .. import paths
    from .records.leaderboard import aggregate, find_summaries, render, write_leaderboards

    root = Path(args.runs) if args.runs else paths.results_root()
    if not root.is_dir():
        raise FmsslError(f"--runs {root}: no such folder; run something first or point --runs at a results root")
    if args.rounds:
        from .records.round_table import render_rounds, round_rows

        if args.format == "html":
            raise ConfigError("--rounds: --format md or csv (the HTML page has the leaderboard only)")
        print(render_rounds(round_rows(find_summaries(root), dataset=args.dataset, method=args.method), args.format), end="")
        return 0
    if args.method:
        raise ConfigError("--method filters the --rounds table; the leaderboard shows every method")
    table = aggregate(find_summaries(root), dataset=args.dataset)
    if args.compare:
        return _compare(table, args.compare)
    print(render(table, args.format), end="")
    if args.write:
        for path in write_leaderboards(table, Path(args.write), name=args.dataset or "all"):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _compare(table: list[dict[str, Any]], spec: str) -> int:
    from .records.compute import COMPUTE_LEGEND
    from .records.statistics import METHOD_TEXT, compare_methods, rows_compute_differ

    names = [m.strip() for m in spec.split(",") if m.strip()]
    if len(names) != 2:
        raise ConfigError(f"--compare {spec!r}: expected two method names, e.g. --compare sfr,mean_teacher")
    pairs = compare_methods(table, *names)
    if not pairs:
        raise FmsslError(f"--compare {spec}: no setting (data set, protocol, budget, test set) has rows of both "
                         f"{names[0]} and {names[1]}")
    computes: set[str] = set()
    for a, b, test in pairs:
        differ = rows_compute_differ(a, b)
        if differ:
            computes |= a["_compute"] | b["_compute"]
        print(f"{a['dataset']} {a['protocol']} labeled {a['labeled']}: {names[0]} ({a['seeds']} seed(s)) vs "
              f"{names[1]} ({b['seeds']} seed(s)): Δ Dice {test.text()}" + (" ‡" if differ else ""))
    print(f"Δ Dice in % points, {METHOD_TEXT}")
    if computes:
        print(COMPUTE_LEGEND.format(which="; ".join(sorted(computes))))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from ..datasets import build_dataset
    from .runner import resolve_data_root

    adapter = build_dataset(args.dataset, resolve_data_root(args.dataset, args.data_root), **_options(args.dataset_option))
    problems = adapter.check()
    n = len(adapter.case_ids())
    if problems:
        for problem in problems:
            print(f"PROBLEM {problem}")
        print(f"{args.dataset}: {len(problems)} problem(s) in {n} cases")
        return 1
    print(f"{args.dataset}: {n} cases OK ({adapter.root})")
    return 0


def cmd_oracle(args: argparse.Namespace) -> int:
    from .. import paths
    from .records.leaderboard import aggregate, find_summaries, render
    from .oracle import run_oracle

    summary = run_oracle(args.generalist, args.dataset, args.data_root, prompt=args.prompt, n_points=args.points,
                         n_clicks=args.clicks, every=args.every,
                         protocol=args.protocol, out=args.out, checkpoint=args.fm_checkpoint, max_cases=args.max_cases,
                         seed=args.seed, force=args.force, progress=not args.no_progress, device=args.device,
                         dataset_options=_options(args.dataset_option), cache_dir=args.fm_cache_dir)
    mean = summary["classes"]["mean"]
    print(f"sam_zero_shot [oracle] {summary['labeled']} on {args.dataset} ({summary['n_test']} test cases): "
          f"Dice {100 * mean['dice']['mean']:.2f}%  HD95 {mean['hd95']['mean']:.2f}  -> {summary.get('record', '')}")
    print()
    print(render(aggregate(find_summaries(Path(args.out) if args.out else paths.results_root()), dataset=args.dataset), "md"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    handlers = {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard, "check-data": cmd_check_data,
                "oracle": cmd_oracle, "grid": cmd_grid, "regress": cmd_regress, "export": cmd_export,
                "evaluate": cmd_evaluate}
    try:
        if args.command == "bench":
            from .evaluation import bench_metrics

            return bench_metrics.run(args)
        return handlers[args.command](args)
    except FmsslError as err:
        print(f"fmssl-bench: error: {err}", file=sys.stderr)
        return 2
    except NotImplementedError as err:  # an option a method declares but does not implement (never replaced)
        print(f"fmssl-bench: not implemented: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fmssl-bench: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
