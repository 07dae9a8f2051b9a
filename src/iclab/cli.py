"""`iclab` command line: parses arguments, calls the library, prints. No science here."""

import argparse
import sys
from pathlib import Path

from iclab.checkpoints import CheckpointError
from iclab.config import ConfigError, load_config, preset_names, resolve_config_path
from iclab.results import format_evaluation, format_table
from iclab.training import TrainingDiverged

USAGE_ERROR = 2


def _train(args) -> int:
    from iclab.experiment import run

    config = load_config(args.config, args.set)
    out = args.out or Path("runs") / f"{resolve_config_path(args.config).stem}-{config.run_hash()}"
    print(f"run directory: {out}")
    evaluation = run(config, out, resume=args.resume, progress=not args.no_progress)
    print(format_evaluation(evaluation))
    return 0


def _eval(args) -> int:
    from iclab.experiment import evaluate_run

    print(format_evaluation(evaluate_run(args.run_dir, args.n_sequences)))
    return 0


def _presets(args) -> int:
    rows = []
    for name in preset_names():
        config = load_config(name)
        m, t = config.model, config.train
        shape = f"{m.family} {getattr(m, 'n_layers', '')}x{getattr(m, 'n_embd', '')}"
        rows.append([name, config.task.family, shape, t.batch_size, t.steps, t.lr])
    print(format_table(["preset", "task", "model", "batch", "steps", "lr"], rows))
    return 0


def _demo(args) -> int:
    from iclab.demo import run_demo

    report = run_demo(Path(args.out), progress=not args.no_progress, pdf=args.pdf)
    return 0 if report.all_hold else 1


def _analyze(args) -> int:
    from iclab.analysis import analyze_run

    result = analyze_run(args.run_dir, args.n_sequences)
    fit = result["gd_fit"]
    rows = [[name, fit[name]] for name in ("eta_fit", "eta_optimal", "eta_ratio", "gap_plain")]
    rows += [[name, fit[name]] for name in ("gap_sym", "gap_sym_fit", "eta_sym", "eta_sym_ratio")]
    rows += [[f"loss {name}", value] for name, value in fit["loss"].items()]
    print(format_table(["one-step GD fit", "value"], rows))
    print(f"symmetry: {fit['symmetry']}; analysis.json and figures in {args.run_dir}")
    return 0


def _reproduce(args) -> int:
    from iclab.reproduce.autoregressive import format_checks, reproduce_autoregressive

    report = reproduce_autoregressive(args.out, progress=not args.no_progress)
    print(format_checks(report))
    print(f"report: {report.path} ({report.seconds:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iclab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model and evaluate it")
    train.add_argument("config", help="a TOML config file or a preset name (see `iclab presets`)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    train.add_argument("--out", type=Path, help="run directory (default runs/NAME-HASH)")
    train.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a run directory's checkpoint")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--n-sequences", type=int, help="default: the run's eval.n_sequences")
    evaluate.set_defaults(handler=_eval)

    presets = commands.add_parser("presets", help="list the preset configs")
    presets.set_defaults(handler=_presets)

    demo = commands.add_parser("demo", help="CPU demo: task diversity sweep with tiny models")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--pdf", action="store_true", help="also save the figure as PDF")
    demo.set_defaults(handler=_demo)

    analyze = commands.add_parser("analyze", help="mechanistic checks of an autoregressive run")
    analyze.add_argument("run_dir", type=Path)
    analyze.add_argument("--n-sequences", type=int, default=2048, help="held-out sequences")
    analyze.set_defaults(handler=_analyze)

    reproduce = commands.add_parser("reproduce", help="reproduce a paper's claims, write a report")
    reproduce.add_argument("study", choices=["autoregressive"], help="which study")
    reproduce.add_argument("--out", type=Path, default=Path("autoregressive_out"))
    reproduce.add_argument("--no-progress", action="store_true")
    reproduce.set_defaults(handler=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"iclab: config error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (CheckpointError, TrainingDiverged) as error:
        print(f"iclab: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
