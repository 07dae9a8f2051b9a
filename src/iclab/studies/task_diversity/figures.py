"""The paper's figures from a sweep directory (`iclab plot`)."""

import math
from pathlib import Path

from iclab.plots import (
    plot_delta_over_training,
    plot_mse_per_position_by_tasks,
    plot_task_diversity,
)
from iclab.results import read_metrics
from iclab.sweeps.store import SweepError, SweepStore
from iclab.sweeps.table import results_rows
from iclab.sweeps.threshold import read_threshold

TASK_DIVERSITY_FIGURE = "task_diversity.png"
MSE_FIGURE = "mse_per_position_by_M.png"
TRAINING_FIGURE = "delta_over_training.png"


def _n_tasks(value) -> int | None:
    return None if value == "inf" else int(value)


def task_diversity_rows(out_dir: str | Path) -> list[dict]:
    """One row per (batch size, M): 'DISTRIBUTION:A,B' Deltas averaged over the other settings
    (seeds), as plots.plot_task_diversity takes them."""
    sums: dict = {}
    for row in results_rows(out_dir):
        key = (row["batch_size"], _n_tasks(row["n_tasks"]))
        entry = sums.setdefault(key, {"runs": set(), "values": {}})
        entry["runs"].add(row["run"])
        for column, value in row.items():
            if column.startswith("delta_"):
                name = f"{row['distribution']}:{column[len('delta_') :]}"
                entry["values"][name] = entry["values"].get(name, 0.0) + value
    return [
        {
            "batch_size": batch_size,
            "n_tasks": n_tasks,
            **{name: total / len(entry["runs"]) for name, total in entry["values"].items()},
        }
        for (batch_size, n_tasks), entry in sums.items()
    ]


def plot_sweep(
    out_dir: str | Path,
    n_tasks_shown: list[int | None] | None = None,
    pdf: bool = False,
) -> list[Path]:
    """Figure 2 (Deltas against log2 M, a line style per batch size, threshold bracket shaded),
    per-position MSE for chosen M (default: about four spread over the sweep) at the largest batch
    size and first seed, and figure 4 (Delta_PT,Ridge on the true prior over training, one panel
    per batch size). The bracket of the last `iclab threshold` in out_dir is shaded. Returns the
    paths written in out_dir."""
    out_dir = Path(out_dir)
    found = read_threshold(out_dir)
    threshold = None if found is None else (found.low, found.high)
    rows = task_diversity_rows(out_dir)
    if not rows:
        raise SweepError(f"no completed runs in {str(out_dir)!r}; run `iclab sweep` first")
    store = SweepStore(out_dir)
    runs = {}  # (batch size, n_tasks) -> run hash of the first seed
    for row in sorted(results_rows(out_dir), key=lambda r: r["seed"]):
        runs.setdefault((row["batch_size"], _n_tasks(row["n_tasks"])), row["run"])
    batch_sizes = sorted({b for b, _ in runs})
    order = sorted({m for _, m in runs}, key=lambda m: math.inf if m is None else m)
    if n_tasks_shown is None:  # about four M spread over those run at the largest batch size
        at_largest = [m for m in order if (batch_sizes[-1], m) in runs]
        step = max(1, len(at_largest) // 4)
        n_tasks_shown = list(dict.fromkeys(at_largest[::step][:3] + at_largest[-1:]))
    missing = [m for m in n_tasks_shown if (batch_sizes[-1], m) not in runs]
    if missing:
        raise SweepError(f"no completed run with M in {missing} at batch size {batch_sizes[-1]}")
    evaluations = {m: store.evaluation(runs[batch_sizes[-1], m]) for m in n_tasks_shown}
    curves = {}
    for batch_size in batch_sizes:
        curves[f"batch size {batch_size}"] = {
            m: [
                (r["step"], r["eval"]["distributions"]["true"]["delta_mean"]["PT,Ridge"])
                for r in read_metrics(store.run_dir(runs[batch_size, m]))
            ]
            for m in order
            if (batch_size, m) in runs
        }
    return [
        plot_task_diversity(
            rows, out_dir / TASK_DIVERSITY_FIGURE, pdf, series_key="batch_size", threshold=threshold
        ),
        plot_mse_per_position_by_tasks(evaluations, out_dir / MSE_FIGURE, pdf),
        plot_delta_over_training(curves, out_dir / TRAINING_FIGURE, pdf),
    ]
