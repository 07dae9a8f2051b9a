"""`iclab reproduce task-diversity`: the paper's figure 2 pattern and threshold, with a report.

Runs the preset's sweep (sweeps/task_diversity_PRESET.toml), searches the threshold with the
spec's criterion, evaluates the other criterion on the sweep's own runs, draws the figures and
writes report.md. Completed runs are reused, so an interrupted reproduction continues.
"""

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

from iclab.config import PRESETS_DIR
from iclab.files import atomic_write_text
from iclab.results import format_table
from iclab.studies.task_diversity.demo import check_regimes
from iclab.studies.task_diversity.dimensions import DIMENSION_SPECS, reproduce_dimensions
from iclab.studies.task_diversity.figures import plot_sweep, task_diversity_rows
from iclab.studies.task_diversity.pairs import study_pairs
from iclab.studies.task_diversity.smoothing import sweep_smoothing
from iclab.studies.task_diversity.threshold import (
    CRITERIA,
    find_threshold,
    judge,
    threshold_settings,
    write_threshold,
)
from iclab.studies.task_diversity.tstar import reproduce_tstar
from iclab.sweeps.runner import run_sweep
from iclab.sweeps.spec import load_spec
from iclab.sweeps.store import SweepError

SPECS_DIR = PRESETS_DIR / "sweeps"
REPORT_FILE = "report.md"
PAPER = {
    "cpu": (
        "Not a configuration of the paper: a miniature (D = 4, a 4-layer width-48 GPT, 2200 "
        "steps) of its figure 2. Expected: the pattern, i.e. the PT matches dMMSE on the "
        "pretraining pool at small M and Ridge on new tasks at large M, with a threshold at a "
        "much smaller M than the paper's models (smaller D, smaller model, far shorter training)."
    ),
    "small": "Paper (small model, D = 8): M* between 2^11 and 2^12 (about 2^11.5).",
    "base": "Paper (base model, D = 8): M* between 2^14 and 2^15.",
}
TSTAR_PAPER = {
    "tstar-cpu": (
        "Not a configuration of the paper: the `tiny` model at M = 2^1 ... 2^6 and infinity, "
        "evaluated at log-spaced steps. Paper (small model, batch 512, D = 8): below the "
        "threshold Delta_PT,Ridge(true) has an interior minimum at t* ~ M^0.47 (M <= 2^10)."
    ),
    "tstar-small": (
        "Paper (small model, batch 512, D = 8, 2M steps): t* ~ M^0.47 for M <= 2^10; above, "
        "Delta_PT,Ridge(true) falls to the end of training."
    ),
}
DIMENSIONS_PAPER = {
    "dimensions-cpu": (
        "Not a configuration of the paper: the `tiny` model at D = 2, 4, 8 with K = 2D and "
        "sigma^2 = D/32, threshold by the single-budget criterion. Paper (12 layers, width 256): "
        "M* about 2^14, 2^15, 2^16 at D = 8, 16, 32."
    ),
    "dimensions": "Paper (12 layers, width 256): M* about 2^14, 2^15, 2^16 at D = 8, 16, 32.",
}
PRESETS = (*PAPER, *TSTAR_PAPER, *DIMENSIONS_PAPER)
# --quick: a pipeline check in seconds. Its numbers say nothing about the paper.
QUICK = ("steps=40", "eval_every=20", "checkpoint_every=20", "n_sequences=256", "eval_sequences=64")
QUICK_NOTE = (
    "\n\n**Quick run** (`--quick`: every run shortened to " + ", ".join(QUICK) + "): a "
    "pipeline check, not a measurement; its checks are expected to fail."
)  # the bundled specs sweeps/task_diversity_PRESET.toml


@dataclass
class TaskDiversityReport:
    path: Path
    summary: str
    seconds: float


def _label(n_tasks) -> str:
    return "inf" if n_tasks is None else f"2^{int(math.log2(n_tasks))}"


def reproduce_task_diversity(
    preset: str,
    out_dir: str | Path,
    executor=None,
    progress: bool = True,
    pdf: bool = False,
    spec_path: str | Path | None = None,
    quick: bool = False,
) -> TaskDiversityReport:
    """spec_path replaces the preset's spec (the report still quotes the preset's expectations).
    quick: every run shortened by QUICK, to check the pipeline in seconds (not the science).
    The tstar-* presets measure the early-stopping time (studies.task_diversity.tstar), the
    dimensions* presets the threshold per dimension (studies.task_diversity.dimensions)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if preset in DIMENSIONS_PAPER:
        names = DIMENSION_SPECS[preset]
        specs = [_load(SPECS_DIR / f"{name}.toml", quick) for name in names]
        body, summary = reproduce_dimensions(specs, out_dir, executor, progress, pdf)
        title, expectation = "Task diversity and dimension", DIMENSIONS_PAPER[preset]
        body = f"{expectation}{QUICK_NOTE if quick else ''}\n\n{body}"
        return _write_report(out_dir, preset, title, body, summary, started)
    spec = _load(spec_path or SPECS_DIR / f"task_diversity_{preset}.toml", quick)
    if preset in TSTAR_PAPER:
        expectation = TSTAR_PAPER[preset] + (QUICK_NOTE if quick else "")
        body, summary = reproduce_tstar(spec, out_dir, expectation, executor, progress, pdf)
        title = "Early-stopping time t*"
        return _write_report(out_dir, preset, title, body, summary, started)
    sweep = run_sweep(spec, out_dir, executor, progress=progress)
    if sweep.failed:
        failed = ", ".join(sweep.failed)
        raise SweepError(f"runs {failed} failed; see `iclab status {out_dir}` and retry")
    primary = spec.threshold.get("criterion", "batch_doubling")
    threshold = find_threshold(spec, out_dir, executor, progress=progress)
    write_threshold(out_dir, threshold)
    smoothing = sweep_smoothing(out_dir)
    figures = plot_sweep(out_dir, pdf=pdf)
    rows = task_diversity_rows(out_dir)
    batch_sizes = sorted({r["batch_size"] for r in rows})
    grid_tasks = {m if isinstance(m, int) else None for m in spec.grid["n_tasks"]}
    pairs = study_pairs(spec.config({}).task)
    columns = pairs.columns

    # The other criterion, on the sweep's grid only (no extra training).
    other = next(c for c in CRITERIA if c != primary)
    fraction = threshold_settings(spec)["fraction"]
    by_key = {(r["batch_size"], r["n_tasks"]): r for r in rows}
    other_lines = []
    for m in sorted(m for m in grid_tasks if m is not None):
        at_m = [by_key.get((b, m)) for b in batch_sizes[: 2 if other == "batch_doubling" else 1]]
        if None in at_m or (other == "batch_doubling" and len(at_m) < 2):
            continue
        true_deltas = [{p: r[f"true:{p}"] for p in columns} for r in at_m]
        holds, _ = judge(other, fraction, batch_sizes, true_deltas, pairs)
        second = (
            true_deltas[-1][pairs.to_prior]
            if other == "batch_doubling"
            else true_deltas[0][pairs.reference]
        )
        other_lines.append(
            f"| {_label(m)} | {true_deltas[0][pairs.to_prior]:.4g} | {second:.4g} | "
            f"{'holds' if holds else 'fails'} |"
        )
    other_header = (
        f"| M | Delta_{pairs.to_prior}(true) batch {batch_sizes[0]} | batch {batch_sizes[-1]} | "
        "lower |"
        if other == "batch_doubling"
        else f"| M | Delta_{pairs.to_prior}(true) batch {batch_sizes[0]} | "
        f"Delta_{pairs.reference}(true) | "
        f"< {fraction:g} x |"
    )
    other_table = f"{other_header}\n|---|---|---|---|\n" + "\n".join(other_lines)
    if other == "batch_doubling" and len(batch_sizes) < 2:
        other_table = "Not evaluated: the grid has one batch size."

    checks = {}
    for batch_size in batch_sizes:
        grid_rows = [
            r for r in rows if r["batch_size"] == batch_size and r["n_tasks"] in grid_tasks
        ]
        for name, (holds, text) in check_regimes(grid_rows, pairs).items():
            checks[f"{name}, batch {batch_size}"] = (holds, text)

    table_rows = [
        [r["batch_size"], _label(r["n_tasks"])]
        + [r[f"{d}:{p}"] for d in ("pretrain", "true") for p in columns]
        for r in sorted(
            rows,
            key=lambda r: (r["batch_size"], math.inf if r["n_tasks"] is None else r["n_tasks"]),
        )
    ]
    table = format_table(
        ["batch", "M"] + [f"{d[:4]} {p}" for d in ("pretrain", "true") for p in columns],
        table_rows,
    )
    evidence = "\n".join(
        f"| 2^{e} | {'holds' if ev.holds else 'fails'} | {ev.explanation} | {', '.join(ev.runs)} |"
        for e, ev in sorted(threshold.evaluations.items())
    )
    seconds = time.perf_counter() - started
    check_lines = "\n".join(
        f"- **{'HOLDS' if holds else 'FAILS'}** {name}: {text}"
        for name, (holds, text) in checks.items()
    )
    summary = (
        f"{table}\n{check_lines.replace('**', '')}\n"
        f"threshold ({primary}): {threshold.describe()}\nwall time: {seconds:.0f} s"
    )
    report = f"""# Task diversity (Raventos et al. 2023), preset `{preset}`

{PAPER[preset]}{QUICK_NOTE if quick else ""}

Wall time: {seconds:.0f} s ({len(sweep.completed)} runs trained now, {len(sweep.skipped)} reused).
Spec: `sweeps/task_diversity_{preset}.toml`; runs in `{out_dir}/runs/`, tidy table by
`iclab results {out_dir}`.

## Figure 2: Delta against task diversity

![task diversity]({figures[0].name})

Delta metrics (mean over positions, MSE/D; averaged over seeds):

```
{table}
```

## Checks (each with the numbers that decide it)

{check_lines}

## Threshold M*

Criterion `{primary}` by bisection over log2 M (runs reused where complete):
**{threshold.describe()}**

| M | criterion | evidence | runs |
|---|---|---|---|
{evidence}

The other criterion, `{other}`, on the sweep's grid (no extra training):

{other_table}

{_smoothing_section(rows, smoothing, pairs)}

{_interpolation_section(out_dir, rows, smoothing, pdf)}

## Per-position error and training dynamics (figure 4)

![per-position MSE]({figures[1].name})

![Delta over training]({figures[2].name})
"""
    path = out_dir / REPORT_FILE
    atomic_write_text(path, report)
    return TaskDiversityReport(path, summary, seconds)


def _smoothing_section(rows: list[dict], smoothing: dict, pairs) -> str:
    """Per (batch, M): is the PT closer to the prior's Bayes estimator than the best blur of its
    pool's Bayes estimator is (the paper's evidence that the PT is not a blurred dMMSE)?"""
    if pairs.smoothed_reference is None:
        return ""
    blur = {found.n_tasks: found.smoothing_std for found in smoothing.values() if found}
    lines = []
    for r in sorted(rows, key=lambda r: (r["batch_size"], r["n_tasks"] or math.inf)):
        smoothed = r.get(f"true:{pairs.smoothed_reference}")
        if r["n_tasks"] is None or smoothed is None:
            continue
        pt = r[f"true:{pairs.to_prior}"]
        closer = "yes" if pt < smoothed else "no"
        lines.append(
            f"| {r['batch_size']} | {_label(r['n_tasks'])} | {blur[r['n_tasks']]:.3g} | {pt:.4g} "
            f"| {smoothed:.4g} | {closer} |"
        )
    return f"""## Is the PT a blurred {pairs.pool_bayes}?

{pairs.smoothed_bayes}: the Bayes estimator of the pool blurred by isotropic Gaussian noise, its blur
chosen for the smallest error on new tasks (studies/task_diversity/smoothing.py). Where the PT is
closer to {pairs.prior_bayes} than the best blur is, it is not a blurred {pairs.pool_bayes}.

| batch | M | best blur s | Delta_{pairs.to_prior}(true) | Delta_{pairs.smoothed_reference}(true) | PT closer? |
|---|---|---|---|---|---|
{chr(10).join(lines)}
"""


def _interpolation_section(out_dir: Path, rows: list[dict], smoothing: dict, pdf: bool) -> str:
    """Interpolation paths (Eq. 5) for the smallest M > 1 and the largest finite M of the sweep,
    at its largest batch size and first seed."""
    from iclab.studies.task_diversity.interpolation import interpolate_run
    from iclab.sweeps.table import results_rows

    largest_batch = max(r["batch_size"] for r in rows)
    runs = {}
    for row in sorted(results_rows(out_dir), key=lambda r: r["seed"]):
        if row["batch_size"] == largest_batch and row["n_tasks"] not in ("inf", 1):
            runs.setdefault(int(row["n_tasks"]), row["run"])
    if not runs:
        return ""
    parts = []
    for n_tasks in sorted({min(runs), max(runs)}):
        run_dir = out_dir / "runs" / runs[n_tasks]
        result, paths = interpolate_run(run_dir, pdf=pdf, smoothing=smoothing.get(runs[n_tasks]))
        errors = result["error_mean"]
        middle = len(result["alphas"]) // 2
        cells = " | ".join(
            f"{name}: {values[0]:.3g} / {values[middle]:.3g}" for name, values in errors.items()
        )
        figure = paths[2].relative_to(out_dir)
        parts.append(
            f"M = {_label(n_tasks)} (alpha 0 / 0.5): {cells}\n\n![interpolation]({figure})"
        )
    return (
        "## Interpolation between pool tasks (Eq. 5)\n\n"
        f"Errors along the norm-preserving paths between pool tasks, batch {largest_batch}; "
        "expected: at small M the PT follows the pool's Bayes estimator (its error peaks between "
        "the tasks), past the threshold the prior's (flat).\n\n" + "\n\n".join(parts)
    )


def _load(path: Path, quick: bool):
    spec = load_spec(path)
    return dataclasses.replace(spec, overrides=(*spec.overrides, *QUICK)) if quick else spec


def _write_report(out_dir: Path, preset, title, body, summary, started) -> TaskDiversityReport:
    seconds = time.perf_counter() - started
    text = f"# {title} (Raventos et al. 2023), preset `{preset}`\n\n{body}\n"
    text += f"\nWall time: {seconds:.0f} s.\n"
    path = out_dir / REPORT_FILE
    atomic_write_text(path, text)
    return TaskDiversityReport(path, f"{summary}\nwall time: {seconds:.0f} s", seconds)
