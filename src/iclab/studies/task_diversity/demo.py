"""The CPU demo: the task-diversity study of Raventos et al. 2023 in miniature.

Trains the `tiny` preset for several task diversities M (powers of 8 and infinity), evaluates each
run against Ridge and dMMSE on the pretraining pool and on the true prior, prints a table, draws the
Delta-vs-log2 M figure and checks the paper's two regimes:

- Bayesian: at the smallest M, on the pretraining pool, Delta_PT,dMMSE < Delta_PT,Ridge / 3;
- non-Bayesian ICL: at some finite M where dMMSE is still far from Ridge on the true prior
  (Delta_dMMSE,Ridge >= 2 Delta_PT,Ridge), Delta_PT,Ridge <= Delta_PT,dMMSE / 2 there.

The output directory is a sweep directory (iclab.sweeps): runs already completed there are reused,
unfinished ones resume, and `iclab status/results/plot` work on it.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

from iclab.config import load_config
from iclab.families import MODEL_NAME
from iclab.families.regression import DMMSE_RIDGE, PT_DMMSE, PT_RIDGE
from iclab.results import format_table
from iclab.sweeps.executors import LocalExecutor
from iclab.sweeps.runner import run_runs
from iclab.sweeps.spec import SweepRun
from iclab.sweeps.store import SweepError, SweepStore

DEMO_PRESET = "tiny"
DEMO_TASK_DIVERSITIES = (1, 8, 64, 512, 4096, None)
BAYESIAN_FACTOR = 3.0
NON_BAYESIAN_FACTOR = 2.0
PAIR_COLUMNS = (PT_RIDGE, PT_DMMSE, DMMSE_RIDGE)  # the columns of the study's tables, in this order


@dataclass
class DemoReport:
    rows: list[dict]  # one per M: n_tasks and the mean Deltas on both distributions
    checks: dict[str, tuple[bool, str]]  # name -> (holds, explanation with the numbers)
    figure: Path
    seconds: float

    @property
    def all_hold(self) -> bool:
        return all(holds for holds, _ in self.checks.values())


def run_label(n_tasks: int | None) -> str:
    return "M=inf" if n_tasks is None else f"M={n_tasks}"


def summarize(n_tasks: int | None, evaluation: dict) -> dict:
    row = {"n_tasks": n_tasks}
    for distribution, result in evaluation["distributions"].items():
        for pair, value in result["delta_mean"].items():
            row[f"{distribution}:{pair}"] = value
        row[f"{distribution}:MSE PT"] = result["mse_mean"][MODEL_NAME]
    return row


def check_regimes(rows: list[dict]) -> dict[str, tuple[bool, str]]:
    """The demo's two numeric conditions, each with the numbers that decide it."""
    smallest = min((r for r in rows if r["n_tasks"] is not None), key=lambda r: r["n_tasks"])
    to_dmmse, to_ridge = smallest[f"pretrain:{PT_DMMSE}"], smallest[f"pretrain:{PT_RIDGE}"]
    bayesian = (
        to_dmmse < to_ridge / BAYESIAN_FACTOR,
        f"{run_label(smallest['n_tasks'])}, pretraining pool: Delta_PT,dMMSE = {to_dmmse:.4g} "
        f"{'<' if to_dmmse < to_ridge / BAYESIAN_FACTOR else '>='} Delta_PT,Ridge / 3 = "
        f"{to_ridge / BAYESIAN_FACTOR:.4g}",
    )
    candidates = []
    for row in rows:
        if row["n_tasks"] is None:
            continue
        pt_ridge, pt_dmmse = row[f"true:{PT_RIDGE}"], row[f"true:{PT_DMMSE}"]
        dmmse_ridge = row[f"true:{DMMSE_RIDGE}"]
        far = dmmse_ridge >= NON_BAYESIAN_FACTOR * pt_ridge
        closer = pt_ridge <= pt_dmmse / NON_BAYESIAN_FACTOR
        candidates.append(
            (
                far and closer,
                f"{run_label(row['n_tasks'])}, true prior: Delta_dMMSE,Ridge = {dmmse_ridge:.4g} "
                f"(>= 2 x Delta_PT,Ridge: {far}), Delta_PT,Ridge = {pt_ridge:.4g} <= "
                f"Delta_PT,dMMSE / 2 = {pt_dmmse / 2:.4g}: {closer}",
            )
        )
    passing = [c for c in candidates if c[0]]
    non_bayesian = (
        passing[0]
        if passing
        else (False, "no finite M meets both: " + "; ".join(text for _, text in candidates))
    )
    return {"Bayesian regime (small M)": bayesian, "non-Bayesian ICL (finite M)": non_bayesian}


def format_rows(rows: list[dict]) -> str:
    header = ["M", "log2 M"] + [f"{d[:4]} {p}" for d in ("pretrain", "true") for p in PAIR_COLUMNS]
    table = []
    for row in rows:
        m = row["n_tasks"]
        log2 = "inf" if m is None else f"{m.bit_length() - 1}"
        table.append(
            [run_label(m)[2:], log2]
            + [row[f"{d}:{p}"] for d in ("pretrain", "true") for p in PAIR_COLUMNS]
        )
    return "Delta metrics (mean over positions, MSE/D):\n" + format_table(header, table)


def _assign(values: dict) -> str:
    return (
        f'n_tasks="{values["n_tasks"]}"'
        if values["n_tasks"] == "inf"
        else f"n_tasks={values['n_tasks']}"
    )


def run_demo(
    out_dir: Path,
    task_diversities: tuple[int | None, ...] = DEMO_TASK_DIVERSITIES,
    overrides: tuple[str, ...] = (),
    workers: int | None = None,
    progress: bool = True,
    pdf: bool = False,
) -> DemoReport:
    """Train, evaluate, tabulate, plot and check; see the module docstring."""
    from iclab.studies.task_diversity.figures import plot_task_diversity

    started = time.perf_counter()
    grid = [{"n_tasks": "inf" if m is None else m} for m in task_diversities]
    runs = [SweepRun(load_config(DEMO_PRESET, [*overrides, _assign(g)]), g) for g in grid]
    workers = workers or min(len(runs), os.cpu_count() or 1)
    outcome = run_runs(runs, out_dir, LocalExecutor(workers), retry_failed=True, progress=progress)
    if outcome.failed:
        raise SweepError(f"demo runs failed, see `iclab status {out_dir}`: {outcome.failed}")
    store = SweepStore(out_dir)
    evaluations = {
        m: store.run(run.run_hash).evaluation()
        for m, run in zip(task_diversities, runs, strict=True)
    }
    rows = [summarize(m, evaluations[m]) for m in task_diversities]
    checks = check_regimes(rows)
    figure = plot_task_diversity(rows, Path(out_dir) / "task_diversity.png", pdf=pdf)
    report = DemoReport(rows, checks, figure, time.perf_counter() - started)
    print(format_rows(rows))
    for name, (holds, text) in checks.items():
        print(f"{'HOLDS' if holds else 'FAILS'}  {name}: {text}")
    print(f"figure: {figure}\nwall time: {report.seconds:.0f} s")
    return report
