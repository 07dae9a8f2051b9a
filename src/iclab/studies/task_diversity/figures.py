"""The study's figures (matplotlib, Agg backend): figure 2 (Delta against log2 M), per-position
errors for several M, and figure 4 (Delta over training), from rows or a sweep directory
(`iclab plot`)."""

import math
from pathlib import Path

from iclab.evaluation import metric_labels
from iclab.families import MODEL_NAME, family_of
from iclab.plots import plt, save_figure
from iclab.studies.task_diversity.pairs import StudyPairs, study_pairs
from iclab.studies.task_diversity.smoothing import read_smoothing
from iclab.studies.task_diversity.threshold import read_threshold
from iclab.sweeps.store import SweepError, SweepStore
from iclab.sweeps.table import results_rows
from iclab.validation import ConfigError

DISTRIBUTION_TITLES = {"pretrain": "pretraining pool", "true": "true prior (new tasks)"}


def _m_text(n_tasks: int | None) -> str:
    return "inf" if n_tasks is None else str(n_tasks)


def delta_label(pair: str) -> str:
    """Delta_{A,B} in mathtext, keeping the spaces of estimator names (Smoothed dMMSE)."""
    spaced = pair.replace(" ", "\\ ")
    return f"$\\Delta_{{{spaced}}}$"


def pair_styles(pairs: StudyPairs) -> dict[str, dict]:
    """Line styles of the study's Deltas (regression: PT-Ridge, PT-dMMSE, dMMSE-Ridge and, where
    computed, Smoothed dMMSE-Ridge)."""
    styles = {
        pairs.to_prior: dict(label=delta_label(pairs.to_prior), color="tab:blue", marker="o"),
        pairs.to_pool: dict(label=delta_label(pairs.to_pool), color="tab:red", marker="s"),
        pairs.reference: dict(
            label=f"{delta_label(pairs.reference)} (reference)", color="gray", ls="--"
        ),
    }
    if pairs.smoothed_reference is not None:
        styles[pairs.smoothed_reference] = dict(
            label=f"{delta_label(pairs.smoothed_reference)} (best blur)",
            color="tab:green",
            ls=":",
            marker="^",
        )
    return styles


TASK_DIVERSITY_FIGURE = "task_diversity.png"
MSE_FIGURE = "mse_per_position_by_M.png"
TRAINING_FIGURE = "delta_over_training.png"


def _n_tasks(value) -> int | None:
    return None if value == "inf" else int(value)


def task_diversity_rows(out_dir: str | Path) -> list[dict]:
    """One row per (batch size, M): 'DISTRIBUTION:A,B' Deltas averaged over the other settings
    (seeds), as plots.plot_task_diversity takes them; with the best smoothed pool Bayes estimator's
    Delta to the prior's where the sweep's smoothing file has it (studies.task_diversity.smoothing)."""
    sums: dict = {}
    smoothed = read_smoothing(out_dir)
    for row in results_rows(out_dir):
        key = (row["batch_size"], _n_tasks(row["n_tasks"]))
        entry = sums.setdefault(key, {"runs": set(), "values": {}})
        entry["runs"].add(row["run"])
        for column, value in row.items():
            if column.startswith("delta_"):
                name = f"{row['distribution']}:{column[len('delta_') :]}"
                entry["values"][name] = entry["values"].get(name, 0.0) + value
        if smoothed.get(row["run"]) is not None:
            found = smoothed[row["run"]]
            pairs = study_pairs(SweepStore(out_dir).run(row["run"]).config().task)
            name = f"{row['distribution']}:{pairs.smoothed_reference}"
            value = found.to_prior_bayes[row["distribution"]]
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
    if missing:  # a value of --m: a user error
        done = [m for m in order if (batch_sizes[-1], m) in runs]
        raise ConfigError(
            f"--m {' '.join(map(_m_text, missing))} is not allowed: no completed run "
            f"with that M at batch size {batch_sizes[-1]} (completed: "
            f"{' '.join(map(_m_text, done))})"
        )
    evaluations = {m: store.run(runs[batch_sizes[-1], m]).evaluation() for m in n_tasks_shown}
    task_config = store.run(runs[batch_sizes[-1], order[0]]).config().task
    pairs = study_pairs(task_config)
    curves = {}
    for batch_size in batch_sizes:
        curves[f"batch size {batch_size}"] = {
            m: [
                (r["step"], r["eval"]["distributions"]["true"]["delta_mean"][pairs.to_prior])
                for r in store.run(runs[batch_size, m]).metrics()
            ]
            for m in order
            if (batch_size, m) in runs
        }
    return [
        plot_task_diversity(
            rows,
            out_dir / TASK_DIVERSITY_FIGURE,
            pairs,
            pdf,
            series_key="batch_size",
            threshold=threshold,
            scale_label=_scale_label(task_config),
        ),
        plot_error_per_position_by_tasks(evaluations, out_dir / MSE_FIGURE, pairs, pdf),
        plot_delta_over_training(
            curves, out_dir / TRAINING_FIGURE, pairs, pdf, _scale_label(task_config)
        ),
    ]


def _scale_label(task_config) -> str:
    """What the family's Deltas are divided by, for axis labels."""
    scale = family_of(task_config).metric_scale(task_config)
    return "" if scale == 1 else " / D"


def log2_positions(n_tasks: list[int | None]) -> tuple[list[float], list[str]]:
    """x positions log2 M; infinity gets its own tick two octaves right of the largest M."""
    finite = [math.log2(m) for m in n_tasks if m is not None]
    inf_position = (max(finite) if finite else 0.0) + 2.0
    positions = [inf_position if m is None else math.log2(m) for m in n_tasks]
    labels = ["$\\infty$" if m is None else f"{math.log2(m):g}" for m in n_tasks]
    return positions, labels


SERIES_LINE_STYLES = ("-", "--", ":", "-.")


def plot_task_diversity(
    rows: list[dict],
    path: Path,
    pairs: StudyPairs,
    pdf: bool = False,
    series_key: str | None = None,
    threshold: tuple[int | None, int | None] | None = None,
    scale_label: str = " / D",
) -> Path:
    """Delta_PT,Ridge and Delta_PT,dMMSE against log2 M on both distributions, with the
    Delta_dMMSE,Ridge reference (the paper's figure 2; pairs names the family's estimators).
    rows have keys 'n_tasks' (None: infinity) and 'DISTRIBUTION:A,B' (as
    studies.task_diversity.demo.summarize makes them); with series_key, one line style per value of
    row[series_key] (e.g. batch_size). threshold: a (low, high) bracket of log2 M*, shaded."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row.get(series_key) if series_key else None, []).append(row)
    all_tasks = sorted({r["n_tasks"] for r in rows}, key=lambda m: math.inf if m is None else m)
    positions, labels = log2_positions(all_tasks)
    x_of = dict(zip(all_tasks, positions, strict=True))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, distribution in zip(axes, ("pretrain", "true"), strict=True):
        for index, (value, group) in enumerate(sorted(groups.items(), key=_series_order)):
            group = sorted(group, key=lambda r: math.inf if r["n_tasks"] is None else r["n_tasks"])
            references = (pairs.reference, pairs.smoothed_reference)
            for pair, style in pair_styles(pairs).items():
                if pair in references and index > 0:
                    continue  # the references do not depend on the series
                if not any(f"{distribution}:{pair}" in r for r in group):
                    continue  # no smoothed estimator computed for this sweep
                style = dict(style)
                if series_key and pair not in references:
                    style["label"] += f" ({series_key.replace('_', ' ')} {value})"
                    style["ls"] = SERIES_LINE_STYLES[index % len(SERIES_LINE_STYLES)]
                _plot_pair(axis, group, distribution, pair, style, x_of)
        if threshold is not None and None not in threshold:
            axis.axvspan(*threshold, color="gold", alpha=0.3, label="threshold $M^*$ bracket")
        axis.set_yscale("log")
        axis.set_xticks(positions, labels)
        axis.set_xlabel("task diversity $\\log_2 M$")
        axis.set_title(f"evaluated on the {DISTRIBUTION_TITLES[distribution]}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"$\\Delta$ (squared prediction difference{scale_label})")
    axes[1].legend(fontsize="small")
    return save_figure(figure, path, pdf)


def _series_order(item) -> tuple:
    """Numbers in numeric order, then anything else by name."""
    value = item[0]
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def _plot_pair(axis, rows, distribution: str, pair: str, style: dict, x_of: dict) -> None:
    """Finite M as a line; M = inf as a lone marker past a gap (it is a limit, not a next
    octave). Zeros (dMMSE is Ridge at M = inf) have no place on the log axis."""
    points = [
        (x_of[r["n_tasks"]], r[f"{distribution}:{pair}"], r["n_tasks"] is None)
        for r in rows
        if r.get(f"{distribution}:{pair}", 0) > 0
    ]
    finite = [(x, v) for x, v, is_inf in points if not is_inf]
    infinite = [(x, v) for x, v, is_inf in points if is_inf]
    if finite:
        axis.plot(*zip(*finite, strict=True), **style)
    if infinite:
        marker = style.get("marker", "D")
        axis.plot(*zip(*infinite, strict=True), color=style["color"], marker=marker, ls="")


def plot_error_per_position_by_tasks(
    evaluations: dict, path: Path, pairs: StudyPairs, pdf: bool = False
) -> Path:
    """Per-position error (the family's first metric; regression: MSE/D) of the PT (solid), the
    pool's Bayes estimator (dotted; dMMSE) and the prior's (dashed; Ridge, black on the true prior,
    where it is the same for every M) for several M, on each distribution. evaluations: n_tasks
    (None: infinity) -> eval.json contents."""
    distributions = ("pretrain", "true")
    error, label = next(iter(metric_labels(next(iter(evaluations.values()))).items()))
    pool, prior = pairs.pool_bayes, pairs.prior_bayes
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = plt.cm.viridis([i / max(1, len(evaluations) - 1) for i in range(len(evaluations))])
    for axis, distribution in zip(axes, distributions, strict=True):
        for color, (n_tasks, evaluation) in zip(colors, evaluations.items(), strict=True):
            errors = evaluation["distributions"][distribution][error]
            m = "$\\infty$" if n_tasks is None else str(n_tasks)
            positions = range(1, len(errors[MODEL_NAME]) + 1)
            axis.plot(positions, errors[MODEL_NAME], color=color, marker=".", label=f"PT, M = {m}")
            if n_tasks is not None:
                axis.plot(positions, errors[pool], color=color, ls=":", label=f"{pool}, M = {m}")
            if distribution == "pretrain":  # each M has its own pool, so the prior's error differs
                axis.plot(positions, errors[prior], color=color, ls="--", lw=0.8)
        if distribution == "true":
            axis.plot(positions, errors[prior], color="black", ls="--", label=prior)
        axis.set_yscale("log")
        axis.set_xlabel("position k (in-context examples seen: k - 1)")
        axis.set_title(f"evaluated on the {DISTRIBUTION_TITLES[distribution]}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[1].legend(fontsize="small", ncol=2)
    return save_figure(figure, path, pdf)


def plot_delta_over_training(
    curves: dict, path: Path, pairs: StudyPairs, pdf: bool = False, scale_label: str = " / D"
) -> Path:
    """Delta_PT,Ridge (pairs.to_prior) on the true distribution against training step, one line
    per M (the paper's figure 4). curves: panel title -> {n_tasks (None: infinity): [(step,
    delta), ...]}."""
    figure, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for axis, (title, lines) in zip(axes[0], curves.items(), strict=True):
        order = sorted(lines, key=lambda m: math.inf if m is None else m)
        colors = plt.cm.viridis([i / max(1, len(order) - 1) for i in range(len(order))])
        for color, n_tasks in zip(colors, order, strict=True):
            steps, values = zip(*lines[n_tasks], strict=True)
            label = "M = $\\infty$" if n_tasks is None else f"M = 2^{math.log2(n_tasks):g}"
            axis.plot(steps, values, color=color, marker=".", label=label)
        axis.set_yscale("log")
        axis.set_xlabel("training step")
        axis.set_ylabel(f"$\\Delta_{{{pairs.to_prior}}}$ on the true prior{scale_label}")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    return save_figure(figure, path, pdf)
