"""`python -m benchmarks [NAME ...] [--quick] [--threads N] [--json PATH]` from the repo root.

Runs the named benchmarks (default: all in BENCHMARKS), prints one table per benchmark (a line per
measured quantity, a column per case) and writes every row, with the environment, to a JSON file
(default bench_results.json in the current directory, replaced by each run; a --json file that
exists is refused). Exit status 2, before anything runs, for an unknown name or a --json path that
exists or cannot be written.
"""

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import environment
from iclab.files import write_json

# Name -> module defining run(quick: bool) -> list[dict]; imported only when its benchmark runs.
BENCHMARKS = {
    "estimators": "benchmarks.estimators",
    "train_step": "benchmarks.train_step",
    "ensemble": "benchmarks.ensemble",
    "reproduce": "benchmarks.reproduce",
    "training_length": "benchmarks.training_length",
}
DEFAULT_JSON = "bench_results.json"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Plain aligned text: a line per key (first-seen order over the rows), a column per row."""
    keys = list(dict.fromkeys(key for row in rows for key in row if key != "benchmark"))
    lines = [[key] + [_cell(row.get(key)) for row in rows] for key in keys]
    widths = [max(len(line[i]) for line in lines) for i in range(len(rows) + 1)]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def json_problem(path: Path, replace: bool) -> str | None:
    """Why the rows cannot be written to path (None if they can): it exists (unless `replace`,
    the default file) or is a directory, or its directory cannot be made or written."""
    if path.is_dir() or (path.exists() and not replace):
        return (
            f"--json {str(path)!r} exists; choose a new path (only the default, {DEFAULT_JSON} "
            "without --json, is replaced)"
        )
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        return f"--json {str(path)!r} cannot be written: {str(existing)!r} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=existing):  # as the atomic write will, then removed
            pass
    except OSError as error:
        return f"--json {str(path)!r} cannot be written in {str(existing)!r}: {error.strerror}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run performance benchmarks: a table per benchmark, all rows to a JSON file.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's setting)")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help=f"output file, which must not exist yet (default {DEFAULT_JSON}, which is replaced)",
    )
    args = parser.parse_args(argv)
    problem = json_problem(Path(args.json or DEFAULT_JSON), replace=args.json is None)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    args.json = args.json or DEFAULT_JSON
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    if args.threads is not None:
        cores = os.cpu_count() or 1
        if not 1 <= args.threads <= cores:  # 100000 crashed torch (a segfault, no message)
            print(
                f"--threads must be from 1 to the {cores} cores, got {args.threads}",
                file=sys.stderr,
            )
            return 2
        torch.set_num_threads(args.threads)
    env = environment()
    print(", ".join(f"{key} {value}" for key, value in env.items()), flush=True)
    all_rows = []
    for name in args.names or list(BENCHMARKS):
        rows = importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
        all_rows.extend(rows)
        print(f"\n== {name}{' (quick)' if args.quick else ''} ==\n{format_table(rows)}", flush=True)
        # Rewritten after every benchmark, so a long run that is interrupted keeps what it measured.
        write_json(args.json, {"quick": args.quick, "environment": env, "rows": all_rows})
    print(f"\nrows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
