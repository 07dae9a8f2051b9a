"""The CPU demo: the task-diversity study of Raventos et al. 2023 in miniature.

Trains the `tiny` preset for several task diversities M (powers of 8 and infinity), evaluates each
run against Ridge and dMMSE on the pretraining pool and on the true prior, prints a table, draws the
Delta-vs-log2 M figure and checks the paper's two regimes:

- Bayesian: at the smallest M, on the pretraining pool, Delta_PT,dMMSE < Delta_PT,Ridge / 3;
- non-Bayesian ICL: at some finite M where dMMSE is still far from Ridge on the true prior
  (Delta_dMMSE,Ridge >= 2 Delta_PT,Ridge), Delta_PT,Ridge <= Delta_PT,dMMSE / 3 there.

The output directory is a sweep directory (iclab.sweeps): runs already completed there are reused,
unfinished ones resume, and `iclab status/results/plot` work on it.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

from iclab.config import ConfigError, load_config, parse_override
from iclab.evaluation import metric_labels
from iclab.families import MODEL_NAME
from iclab.results import format_table
from iclab.studies.task_diversity.pairs import StudyPairs, study_pairs
from iclab.sweeps.executors import LocalExecutor
from iclab.sweeps.runner import run_runs
from iclab.sweeps.spec import SweepRun
from iclab.sweeps.store import SweepError, SweepStore

DEMO_PRESET = "tiny"
DEMO_TASK_DIVERSITIES = (1, 8, 64, 512, 4096, None)
BAYESIAN_FACTOR = 3.0
FAR_FACTOR = 2.0  # how far the pool's Bayes estimator must still be from the prior's
NON_BAYESIAN_FACTOR = 3.0


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
    error = next(iter(metric_labels(evaluation)))
    for distribution, result in evaluation["distributions"].items():
        for pair, value in result["delta_mean"].items():
            row[f"{distribution}:{pair}"] = value
        row[f"{distribution}:error PT"] = result[f"{error}_mean"][MODEL_NAME]
    return row


def check_regimes(rows: list[dict], pairs: StudyPairs) -> dict[str, tuple[bool, str]]:
    """The demo's two numeric conditions, each with the numbers that decide it (named for
    regression in the module docstring; pairs names the family's Bayes estimators)."""
    to_prior_name, to_pool_name, reference_name = pairs.columns
    smallest = min((r for r in rows if r["n_tasks"] is not None), key=lambda r: r["n_tasks"])
    to_pool, to_prior = smallest[f"pretrain:{to_pool_name}"], smallest[f"pretrain:{to_prior_name}"]
    bayesian = (
        to_pool < to_prior / BAYESIAN_FACTOR,
        f"{run_label(smallest['n_tasks'])}, pretraining pool: Delta_{to_pool_name} = "
        f"{to_pool:.4g} {'<' if to_pool < to_prior / BAYESIAN_FACTOR else '>='} "
        f"Delta_{to_prior_name} / {BAYESIAN_FACTOR:g} = {to_prior / BAYESIAN_FACTOR:.4g}",
    )
    candidates = []
    for row in rows:
        if row["n_tasks"] is None:
            continue
        pt_prior, pt_pool = row[f"true:{to_prior_name}"], row[f"true:{to_pool_name}"]
        reference = row[f"true:{reference_name}"]
        far = reference >= FAR_FACTOR * pt_prior
        closer = pt_prior <= pt_pool / NON_BAYESIAN_FACTOR
        factor = f"{NON_BAYESIAN_FACTOR:g}"
        candidates.append(
            (
                far and closer,
                f"{run_label(row['n_tasks'])}, true prior: Delta_{reference_name} = "
                f"{reference:.4g} (>= {FAR_FACTOR:g} x Delta_{to_prior_name}: {far}), "
                f"Delta_{to_prior_name} = {pt_prior:.4g} <= Delta_{to_pool_name} / {factor} = "
                f"{pt_pool / NON_BAYESIAN_FACTOR:.4g}: {closer}",
            )
        )
    passing = [c for c in candidates if c[0]]
    non_bayesian = (
        passing[0]
        if passing
        else (False, "no finite M meets both: " + "; ".join(text for _, text in candidates))
    )
    return {"Bayesian regime (small M)": bayesian, "non-Bayesian ICL (finite M)": non_bayesian}


def format_rows(rows: list[dict], pairs: StudyPairs) -> str:
    columns = pairs.columns
    header = ["M", "log2 M"] + [f"{d[:4]} {p}" for d in ("pretrain", "true") for p in columns]
    table = []
    for row in rows:
        m = row["n_tasks"]
        log2 = "inf" if m is None else f"{m.bit_length() - 1}"
        table.append(
            [run_label(m)[2:], log2]
            + [row[f"{d}:{p}"] for d in ("pretrain", "true") for p in columns]
        )
    return "Delta metrics (mean over positions):\n" + format_table(header, table)


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
    if any(parse_override(o)[0].rpartition(".")[2] == "n_tasks" for o in overrides):
        raise ConfigError("the demo's runs span task.n_tasks (M): it cannot be set with --set")
    grid = [{"n_tasks": "inf" if m is None else m} for m in task_diversities]
    runs = [SweepRun(load_config(DEMO_PRESET, [*overrides, _assign(g)]), g) for g in grid]
    workers = workers or min(len(runs), os.cpu_count() or 1)
    outcome = run_runs(runs, out_dir, LocalExecutor(workers), retry_failed=True, progress=progress)
    if outcome.failed:
        errors = "; ".join(
            f"{run_hash}: {(error.strip().splitlines() or ['?'])[-1]}"
            for run_hash, error in outcome.failed.items()
        )
        raise SweepError(f"demo runs failed ({errors}); see `iclab status {out_dir}`")
    store = SweepStore(out_dir)
    evaluations = {
        m: store.run(run.run_hash).evaluation()
        for m, run in zip(task_diversities, runs, strict=True)
    }
    rows = [summarize(m, evaluations[m]) for m in task_diversities]
    pairs = study_pairs(runs[0].config.task)
    checks = check_regimes(rows, pairs)
    figure = plot_task_diversity(rows, Path(out_dir) / "task_diversity.png", pairs, pdf=pdf)
    report = DemoReport(rows, checks, figure, time.perf_counter() - started)
    print(format_rows(rows, pairs))
    for name, (holds, text) in checks.items():
        print(f"{'HOLDS' if holds else 'FAILS'}  {name}: {text}")
    print(f"figure: {figure}\nwall time: {report.seconds:.0f} s")
    return report
