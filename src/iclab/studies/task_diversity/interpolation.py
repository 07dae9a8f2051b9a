"""Interpolation paths between pretraining tasks (the paper's Eq. 5 and its Fig. 5).

For two pool tasks w_i, w_j and alpha in [0, 1], the norm-preserving path is

    w_alpha = (|w_i| + |w_j|) / 2 * (alpha w_i + (1 - alpha) w_j) / |alpha w_i + (1 - alpha) w_j|.

Along it, the PT, the prior's Bayes estimator (Ridge), the pool's (dMMSE) and the best smoothed
pool Bayes estimator (studies.task_diversity.smoothing) are evaluated on fresh sequences of
w_alpha, averaged over many random pairs. Expected: at small M the PT follows dMMSE, whose error
peaks between the two tasks (w_alpha is not in its pool); past the threshold it follows Ridge,
flat along the path. `iclab interpolate RUN_DIR` writes interpolation.json, .md and .png there.
"""

import math
from pathlib import Path

import torch

from iclab.evaluation import error_table, family_metric_labels
from iclab.experiment import load_trained
from iclab.families import MODEL_NAME, family_of
from iclab.files import atomic_write_text, write_json
from iclab.plots import plt, save_figure
from iclab.results import format_table
from iclab.seeding import make_generator
from iclab.studies.task_diversity.pairs import study_pairs
from iclab.studies.task_diversity.smoothing import Smoothing, best_smoothing
from iclab.training import RunDirectory
from iclab.validation import ConfigError

INTERPOLATION_STREAM = 7  # pairs and their sequences (see seeding's stream list)
INTERPOLATION_FILE = "interpolation.json"
INTERPOLATION_TABLE = "interpolation.md"
INTERPOLATION_FIGURE = "interpolation.png"


def interpolation_path(w_i: torch.Tensor, w_j: torch.Tensor, alpha: float) -> torch.Tensor:
    """w_alpha of Eq. 5 for pairs of tasks (..., n_dims): the direction of the convex
    combination, with the mean of the two norms as its length."""
    mix = alpha * w_i + (1 - alpha) * w_j
    length = (w_i.norm(dim=-1, keepdim=True) + w_j.norm(dim=-1, keepdim=True)) / 2
    return length * mix / mix.norm(dim=-1, keepdim=True)


def require_pool(task_config) -> None:
    """A ConfigError unless the run's tasks are drawn from a finite pool of at least 2 (the paths
    join two of them): the pool families (regression, classification) have task.n_tasks, the
    others (autoregressive) no pool at all."""
    if not hasattr(task_config, "n_tasks"):
        found = f"{task_config.family!r} runs have no task pool"
    elif task_config.n_tasks is None or task_config.n_tasks < 2:
        n_tasks = "inf" if task_config.n_tasks is None else task_config.n_tasks
        found = f"this run has task.n_tasks = {n_tasks}"
    else:
        return
    raise ConfigError(f"interpolation needs a pool of at least 2 tasks; {found}")


def interpolate(
    model,
    task,
    n_pairs: int = 64,
    sequences_per_pair: int = 32,
    n_alphas: int = 11,
    seed: int = 0,
    smoothing: Smoothing | None = None,
) -> dict:
    """The family's error (regression: MSE/D, averaged over positions) of the PT and the Bayes
    estimators along the paths between n_pairs random pairs of distinct pool tasks, at n_alphas
    evenly spaced alpha, each on sequences_per_pair fresh sequences per pair. smoothing: the
    pool's best blur if already searched (studies.task_diversity.smoothing), else searched here."""
    config = task.config
    require_pool(config)
    family = family_of(config)
    pairs = study_pairs(config)
    baselines = family.baselines(task)
    predictors = {
        MODEL_NAME: family.model_predictor(model),
        pairs.prior_bayes: baselines[pairs.prior_bayes],
        pairs.pool_bayes: baselines[pairs.pool_bayes],
    }
    smoothing = smoothing or best_smoothing(task, seed)
    if smoothing is not None:
        predictors[smoothing.name] = family.smoothed_baseline(task, smoothing.smoothing_std)
    generator = make_generator("cpu", seed, INTERPOLATION_STREAM)
    first = torch.randint(len(task.pool), (n_pairs,), generator=generator)
    offset = torch.randint(1, len(task.pool), (n_pairs,), generator=generator)
    w_i, w_j = task.pool.cpu()[first], task.pool.cpu()[(first + offset) % len(task.pool)]
    error = next(iter(family_metric_labels(config)))
    alphas = [index / (n_alphas - 1) for index in range(n_alphas)]
    curves: dict[str, list[float]] = {name: [] for name in predictors}
    errors: dict[str, list[float]] = {name: [] for name in predictors}
    with torch.inference_mode():
        for index, alpha in enumerate(alphas):
            ws = interpolation_path(w_i, w_j, alpha).repeat_interleave(sequences_per_pair, 0)
            sequences = make_generator(task.device, seed, INTERPOLATION_STREAM, 1, index)
            xs, ys = task.sequences_of(ws, sequences)
            n_sequences = len(ws)
            table = error_table(config, [((xs, ys), ys)], predictors, (), n_sequences)
            for name in predictors:
                curves[name].append(table[f"{error}_mean"][name])
                errors[name].append(table[f"{error}_mean_se"][name])
    return {
        "n_tasks": config.n_tasks,
        "n_pairs": n_pairs,
        "sequences_per_pair": sequences_per_pair,
        "seed": seed,
        "metric": error,
        "metric_label": family_metric_labels(config)[error],
        "alphas": alphas,
        "error_mean": curves,
        "error_mean_se": errors,
        "smoothing_std": None if smoothing is None else smoothing.smoothing_std,
    }


def format_interpolation(result: dict) -> str:
    names = list(result["error_mean"])
    header = ["alpha", *(f"{result['metric_label']} {name}" for name in names)]
    rows = [
        [f"{alpha:.2f}", *(result["error_mean"][name][i] for name in names)]
        for i, alpha in enumerate(result["alphas"])
    ]
    blur = result["smoothing_std"]
    note = "" if blur is None else f"; smoothed at its best blur s = {blur:.3g}"
    return (
        f"M = {result['n_tasks']}, {result['n_pairs']} pairs of pool tasks, "
        f"{result['sequences_per_pair']} sequences per pair and alpha{note}\n\n"
        f"```\n{format_table(header, rows)}\n```\n"
    )


STYLES = {0: dict(color="tab:blue", marker="o"), 1: dict(color="black", ls="--")}
EXTRA_STYLES = (dict(color="tab:red", ls=":"), dict(color="tab:green", ls="-."))


def plot_interpolation(result: dict, path: Path, pdf: bool = False) -> Path:
    """The error of each predictor along alpha, with 2-standard-error bands."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (name, values) in enumerate(result["error_mean"].items()):
        style = STYLES.get(index) or EXTRA_STYLES[(index - 2) % len(EXTRA_STYLES)]
        errors = result["error_mean_se"][name]
        axis.plot(result["alphas"], values, label=name, **style)
        low = [v - 2 * e for v, e in zip(values, errors, strict=True)]
        high = [v + 2 * e for v, e in zip(values, errors, strict=True)]
        axis.fill_between(result["alphas"], low, high, color=style["color"], alpha=0.15)
    m = result["n_tasks"]
    axis.set_xlabel("interpolation weight $\\alpha$ (0: task $w_j$, 1: task $w_i$)")
    axis.set_ylabel(f"{result['metric_label']}, mean over positions")
    axis.set_title(f"between pool tasks, M = 2^{math.log2(m):g}" if m else "between pool tasks")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return save_figure(figure, path, pdf)


def interpolate_run(run_dir: str | Path, pdf: bool = False, **settings) -> tuple[dict, list[Path]]:
    """interpolate() for a trained run; writes its JSON, table and figure in the run directory."""
    run = RunDirectory(run_dir)
    config, model, task = load_trained(run)
    result = interpolate(model, task, seed=config.eval.eval_seed, **settings)
    write_json(run.file(INTERPOLATION_FILE), result)
    table = run.file(INTERPOLATION_TABLE)
    atomic_write_text(
        table, "# Interpolation between pool tasks\n\n" + format_interpolation(result)
    )
    figure = plot_interpolation(result, run.file(INTERPOLATION_FIGURE), pdf)
    return result, [run.file(INTERPOLATION_FILE), table, figure]
