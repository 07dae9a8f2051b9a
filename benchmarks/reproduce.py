"""End to end: wall time of `iclab reproduce task-diversity --preset cpu` against its 30-minute
budget, run as a user runs it (a fresh output directory, the CLI in a subprocess, its default of one
worker process per core). --quick runs the same pipeline on a miniature spec (tiny widths, 60
steps) through the library, as a smoke test of the path, not of the budget."""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = 30 * 60
MINIATURE = """
base = "tiny"
[set]
n_layers = 1
n_embd = 16
steps = 60
eval_every = 30
eval_sequences = 64
n_sequences = 256
[grid]
n_tasks = [1, 4, "inf"]
batch_size = [8, 16]
[threshold]
criterion = "fraction"
"""


def run(quick: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="iclab-bench-") as scratch:
        out = Path(scratch) / "out"
        started = time.perf_counter()
        if quick:
            from iclab.studies.task_diversity.reproduction import reproduce_task_diversity
            from iclab.sweeps.executors import LocalExecutor

            spec = Path(scratch) / "miniature.toml"
            spec.write_text(MINIATURE)
            reproduce_task_diversity("cpu", out, LocalExecutor(2), False, spec_path=spec)
        else:
            command = [sys.executable, "-m", "iclab.cli", "reproduce", "task-diversity"]
            subprocess.run(
                [*command, "--preset", "cpu", "--out", str(out), "--no-progress"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        seconds = time.perf_counter() - started
        report_written = (out / "report.md").exists()
    row = {
        "benchmark": "reproduce",
        "case": "miniature spec (library)"
        if quick
        else "iclab reproduce task-diversity --preset cpu",
        "wall seconds": seconds,
        "report written": report_written,
    }
    if not quick:
        row.update({"budget seconds": BUDGET_SECONDS, "meets budget": seconds <= BUDGET_SECONDS})
    return [row]
