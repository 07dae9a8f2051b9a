"""`iclab` command line: parses arguments, calls the library, prints. No science here."""

import argparse
import math
import os
import sys
from pathlib import Path

from iclab.checkpoints import CheckpointError
from iclab.config import (
    INFINITE_SPELLINGS,
    ConfigError,
    load_config,
    preset_names,
    resolve_config_path,
)
from iclab.files import CorruptFile
from iclab.results import format_evaluation, format_table
from iclab.studies import STUDIES
from iclab.studies.task_diversity.reproduction import PRESETS as TASK_DIVERSITY_PRESETS
from iclab.sweeps.store import SweepError
from iclab.training import TrainingDiverged
from iclab.user_data.csv_table import DataError

USAGE_ERROR = 2
INTERRUPTED = 130  # the shell convention for SIGINT


def _train(args) -> int:
    from iclab.api import train
    from iclab.training import RunDirectory

    config = load_config(args.config, args.set)
    out = args.out or Path("runs") / f"{resolve_config_path(args.config).stem}-{config.run_hash()}"
    print(f"run directory: {out}")
    was_complete = args.resume and RunDirectory(out).status() == "complete"
    run = train(config, out, args.resume, not args.no_progress, args.log_to)
    if was_complete:
        print("the run was complete: nothing to resume, its results are kept")
    print(format_evaluation(run.evaluation))
    return 0


def _eval(args) -> int:
    from iclab.experiment import evaluate_run

    evaluation, path = evaluate_run(args.run_dir, args.n_sequences, args.replace)
    print(format_evaluation(evaluation))
    print(f"written to {path} (the run's eval.json is kept)")
    return 0


def _presets(args) -> int:
    rows = []
    for name in preset_names():
        config = load_config(name)
        t = config.train
        rows.append(
            [name, config.task.family, config.model.describe(), t.batch_size, t.steps, t.lr]
        )
    print(format_table(["preset", "task", "model", "batch", "steps", "lr"], rows))
    return 0


def _demo(args) -> int:
    from iclab.studies.task_diversity.demo import run_demo

    report = run_demo(
        Path(args.out), overrides=tuple(args.set), progress=not args.no_progress, pdf=args.pdf
    )
    return 0 if report.all_hold else 1


def _analyze(args) -> int:
    from iclab.studies import analyze

    print(analyze(args.run_dir, args.n_sequences, args.gd_steps, args.llc, args.llc_steps))
    print(f"analysis.json and figures in {args.run_dir}")
    return 0


def _reproduce(args) -> int:
    from iclab.studies import reproduce

    executor = _executor(args)
    progress = not args.no_progress
    report = reproduce(args.study, args.out, args.preset, executor, progress, args.pdf, args.quick)
    print(report.summary)
    print(f"report: {report.path} ({report.seconds:.0f} s)")
    return 0


def _executor(args):
    from iclab.sweeps.executors import make_executor

    default_workers = (os.cpu_count() or 1) if args.command == "reproduce" else 1
    return make_executor(
        args.executor,
        args.workers or default_workers,
        args.address,
        args.cpus_per_run,
        args.gpus_per_run,
        args.threads_per_run,
    )


def _sweep(args) -> int:
    from iclab.api import sweep

    progress = not args.no_progress
    outcome = sweep(args.spec, args.out, _executor(args), args.retry_failed, progress, args.log_to)
    _status(args)
    print(
        f"{len(outcome.completed)} runs completed, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} skipped (complete, or failed: --retry-failed reruns those), "
        f"{outcome.seconds:.0f} s"
    )
    return 1 if outcome.failed else 0


def _status(args) -> int:
    from iclab.sweeps.runner import status_rows

    header, rows = status_rows(args.out)
    print(format_table(header, rows))
    return 0


def _results(args) -> int:
    from iclab.sweeps.table import write_results

    for path in write_results(args.out):
        print(f"wrote {path}")
    return 0


def _plot(args) -> int:
    from iclab.studies.task_diversity.figures import plot_sweep

    for path in plot_sweep(args.out, args.m, pdf=args.pdf):
        print(f"wrote {path}")
    return 0


def _threshold(args) -> int:
    from iclab.studies.task_diversity.threshold import find_threshold, write_threshold
    from iclab.sweeps.spec import load_spec

    spec = load_spec(args.spec)
    if args.criterion:
        spec = spec.with_threshold(criterion=args.criterion)
    result = find_threshold(spec, args.out, _executor(args), progress=not args.no_progress)
    rows = [
        [f"2^{e}", "holds" if ev.holds else "fails", ev.explanation]
        for e, ev in sorted(result.evaluations.items())
    ]
    print(format_table(["M", result.criterion, "evidence"], rows))
    print(f"threshold: {result.describe()}; written to {write_threshold(args.out, result)}")
    return 0


def _tstar(args) -> int:
    from iclab.studies.task_diversity.tstar import format_tstar, write_tstar

    study, paths = write_tstar(args.out, pdf=args.pdf)
    print(format_tstar(study))
    for path in paths:
        print(f"wrote {path}")
    return 0


def _interpolate(args) -> int:
    from iclab.studies.task_diversity.interpolation import format_interpolation, interpolate_run

    settings = dict(n_pairs=args.pairs, sequences_per_pair=args.sequences_per_pair)
    result, paths = interpolate_run(args.run_dir, pdf=args.pdf, **settings)
    print(format_interpolation(result))
    for path in paths:
        print(f"wrote {path}")
    return 0


def _predict(args) -> int:
    from iclab.user_data.predict import format_prediction, predict_csv

    result = predict_csv(args.run_dir, args.data, args.out, args.target)
    print(format_prediction(result))
    for path in result.paths:
        print(f"wrote {path}")
    return 0


def _forecast(args) -> int:
    from iclab.user_data.forecast import forecast_csv, format_forecast

    result = forecast_csv(args.run_dir, args.series, args.out)
    print(format_forecast(result))
    for path in result.paths:
        print(f"wrote {path}")
    return 0


def _make_example_data(args) -> int:
    from iclab.user_data.example_data import write_example_data

    for path in write_example_data(args.out):
        print(f"wrote {path}")
    return 0


def _bench(arguments: list[str]) -> int:
    # benchmarks/ ships with the source tree, next to src/, and is not installed.
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").is_file():
        print("iclab: benchmarks/ comes with a checkout of the source tree", file=sys.stderr)
        return USAGE_ERROR
    sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as bench_main

    return bench_main(arguments)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected an integer >= 1")
    return value


def _number_in(allowed: str, holds):
    """An argparse type: a finite number for which holds(value) is true."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and holds(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected {allowed}")
        return value

    return parse


_positive_number = _number_in("a number > 0", lambda value: value > 0)
_fraction = _number_in("a number in [0, 1]", lambda value: 0 <= value <= 1)


def _task_diversity(text: str) -> int | None:
    """M: an integer >= 1, or inf (None), spelt as config values may be (inf, Inf, infinity)."""
    return None if text.lower() in INFINITE_SPELLINGS else _positive_int(text)


def _add_executor_options(parser) -> None:
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument(
        "--workers",
        type=_positive_int,
        help="local worker processes (default: 1; reproduce: one per core)",
    )
    parser.add_argument(
        "--threads-per-run",
        type=_positive_int,
        help="local: torch threads per run (default: cores/workers)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument(
        "--cpus-per-run", type=_positive_number, default=1, help="Ray: CPUs per run"
    )
    parser.add_argument(
        "--gpus-per-run", type=_fraction, default=0, help="Ray: GPU fraction per run"
    )


def _add_log_to(parser) -> None:
    parser.add_argument(
        "--log-to",
        choices=["tensorboard", "wandb"],
        help="mirror evaluations, config and figures to a tracker (wandb: offline by default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iclab",
        description="In-context learning of transformers on synthetic tasks: train, evaluate "
        "against the Bayes baselines, sweep, analyse. Start with `iclab demo` or `iclab presets`; "
        "README.md has the rest.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model and evaluate it")
    train.add_argument("config", help="a TOML config file or a preset name (see `iclab presets`)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    train.add_argument("--out", type=Path, help="run directory (default runs/NAME-HASH)")
    train.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_log_to(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a run directory's checkpoint")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument(
        "--n-sequences", type=_positive_int, help="default: the run's eval.n_sequences"
    )
    evaluate.add_argument(
        "--replace", action="store_true", help="replace an earlier reevaluation.json"
    )
    evaluate.set_defaults(handler=_eval)

    presets = commands.add_parser("presets", help="list the preset configs")
    presets.set_defaults(handler=_presets)

    demo = commands.add_parser("demo", help="CPU demo: task diversity sweep with tiny models")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run"
    )
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--pdf", action="store_true", help="also save the figure as PDF")
    demo.set_defaults(handler=_demo)

    analyze = commands.add_parser("analyze", help="what a trained run computes (see README)")
    analyze.add_argument("run_dir", type=Path)
    analyze.add_argument(
        "--n-sequences", type=_positive_int, default=2048, help="held-out sequences"
    )
    analyze.add_argument(
        "--gd-steps",
        type=_positive_int,
        help="the algorithm fit: GD with k = 1..K steps (default 16)",
    )
    analyze.add_argument(
        "--llc",
        action="store_true",
        help="also the local learning coefficient at each kept checkpoint (train.keep_checkpoints)",
    )
    analyze.add_argument(
        "--llc-steps", type=_positive_int, help="SGLD steps per chain of --llc (default 200)"
    )
    analyze.set_defaults(handler=_analyze)

    reproduce = commands.add_parser("reproduce", help="reproduce a paper's claims, write a report")
    reproduce.add_argument("study", choices=STUDIES)
    reproduce.add_argument(
        "--preset", choices=TASK_DIVERSITY_PRESETS, help="task-diversity only (default cpu)"
    )
    reproduce.add_argument(
        "--out", type=Path, help="default: STUDY_out (task_diversity_PRESET_out)"
    )
    reproduce.add_argument("--no-progress", action="store_true")
    reproduce.add_argument("--pdf", action="store_true", help="also save figures as PDF")
    reproduce.add_argument(
        "--quick", action="store_true", help="a miniature of every part: checks the pipeline"
    )
    _add_executor_options(reproduce)
    reproduce.set_defaults(handler=_reproduce)

    sweep = commands.add_parser("sweep", help="train every run of a sweep spec not yet complete")
    sweep.add_argument("spec", type=Path, help="a sweep spec TOML (see sweeps/)")
    sweep.add_argument("--out", type=Path, required=True, help="the sweep directory")
    sweep.add_argument("--retry-failed", action="store_true", help="rerun failed runs")
    sweep.add_argument("--no-progress", action="store_true")
    _add_log_to(sweep)
    _add_executor_options(sweep)
    sweep.set_defaults(handler=_sweep)

    status = commands.add_parser(
        "status", help="complete / failed / interrupted / pending / corrupt runs of a sweep"
    )
    status.add_argument("out", type=Path, help="the sweep directory")
    status.set_defaults(handler=_status)

    results = commands.add_parser("results", help="write the tidy results table of a sweep")
    results.add_argument("out", type=Path, help="the sweep directory")
    results.set_defaults(handler=_results)

    plot = commands.add_parser("plot", help="draw the paper's figures from a sweep")
    plot.add_argument("out", type=Path, help="the sweep directory")
    plot.add_argument(
        "--m", nargs="+", type=_task_diversity, help="M values for the per-position figure (or inf)"
    )
    plot.add_argument("--pdf", action="store_true", help="also save figures as PDF")
    plot.set_defaults(handler=_plot)

    threshold = commands.add_parser("threshold", help="bisect for the task-diversity threshold")
    threshold.add_argument("spec", type=Path, help="a sweep spec TOML with a [threshold] table")
    threshold.add_argument("--out", type=Path, required=True, help="the sweep directory")
    threshold.add_argument("--criterion", choices=["batch_doubling", "fraction"])
    threshold.add_argument("--no-progress", action="store_true")
    _add_executor_options(threshold)
    threshold.set_defaults(handler=_threshold)

    tstar = commands.add_parser("tstar", help="the early-stopping time t* of a sweep's runs")
    tstar.add_argument("out", type=Path, help="the sweep directory")
    tstar.add_argument("--pdf", action="store_true", help="also save the figure as PDF")
    tstar.set_defaults(handler=_tstar)

    interpolate = commands.add_parser(
        "interpolate", help="errors along paths between a run's pool tasks (paper's Fig. 5)"
    )
    interpolate.add_argument("run_dir", type=Path, help="a trained run with finite task.n_tasks")
    interpolate.add_argument("--pairs", type=_positive_int, default=64, help="task pairs (64)")
    interpolate.add_argument(
        "--sequences-per-pair", type=_positive_int, default=32, help="per pair and alpha (32)"
    )
    interpolate.add_argument("--pdf", action="store_true", help="also save the figure as PDF")
    interpolate.set_defaults(handler=_interpolate)

    predict = commands.add_parser(
        "predict", help="a trained run's in-context predictions for the rows of a CSV (README)"
    )
    predict.add_argument("run_dir", type=Path, help="a trained run of feature vectors and targets")
    predict.add_argument(
        "data", type=Path, help="CSV: feature columns and a target; rows without it are queries"
    )
    predict.add_argument("--target", help="the target column (default: the last)")
    predict.add_argument("--out", type=Path, help="default: DATA-STEM_predictions.csv")
    predict.set_defaults(handler=_predict)

    forecast = commands.add_parser(
        "forecast", help="a trained run's one-step forecasts of a multivariate series (README)"
    )
    forecast.add_argument("run_dir", type=Path, help="a trained run of real state sequences")
    forecast.add_argument("series", type=Path, help="CSV: one column per channel, rows = time")
    forecast.add_argument("--out", type=Path, help="default: SERIES-STEM_forecast.csv")
    forecast.set_defaults(handler=_forecast)

    examples = commands.add_parser(
        "make-example-data", help="write two small synthetic CSVs for predict and forecast"
    )
    examples.add_argument("--out", type=Path, default=Path("example_data"), help="(example_data)")
    examples.set_defaults(handler=_make_example_data)

    bench = commands.add_parser(
        "bench", help="performance benchmarks (python -m benchmarks)", add_help=False
    )
    bench.add_argument("arguments", nargs=argparse.REMAINDER, help="see iclab bench --help")
    bench.set_defaults(handler=lambda args: _bench(args.arguments))
    return parser


def _memory_shortage(error: BaseException) -> str | None:
    """What could not be allocated, if error is an allocation failure: Python's MemoryError,
    torch's CUDA OutOfMemoryError, or the RuntimeError of its CPU allocator; else None. Commands
    that size their work from a count check what they can (training: check_memory); this is the
    one message for the rest."""
    text = str(error)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return text.split("\n")[0][:200] or "MemoryError"
    if "can't allocate memory" in text:
        return text[text.index("you tried") :].split(".")[0] if "you tried" in text else text[:200]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its options belong to the benchmarks, --help included
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"iclab: config error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except DataError as error:
        print(f"iclab: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:  # a path that cannot be read or written: full disk, permissions
        where = f": {error.filename!r}" if error.filename else ""
        print(f"iclab: {error.strerror or error}{where}", file=sys.stderr)
        return USAGE_ERROR
    except (CheckpointError, CorruptFile, TrainingDiverged, SweepError) as error:
        print(f"iclab: {error}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as error:
        if (shortage := _memory_shortage(error)) is None:
            raise
        print(
            f"iclab: out of memory ({shortage}): ask for less at once (fewer sequences, pairs or "
            "steps, a smaller model)",
            file=sys.stderr,
        )
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(
            "\niclab: interrupted; completed runs and the checkpoints written so far (if any) "
            "are kept: run the same command again (iclab train: with --resume) to continue",
            file=sys.stderr,
        )
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
