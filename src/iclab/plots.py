"""Figures (matplotlib, Agg backend): saved as PNG, and PDF when asked."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DISTRIBUTION_TITLES = {"pretrain": "pretraining pool", "true": "true prior (new tasks)"}
PAIR_STYLES = {
    "PT,Ridge": dict(label="$\\Delta_{PT,Ridge}$", color="tab:blue", marker="o"),
    "PT,dMMSE": dict(label="$\\Delta_{PT,dMMSE}$", color="tab:red", marker="s"),
    "dMMSE,Ridge": dict(label="$\\Delta_{dMMSE,Ridge}$ (reference)", color="gray", ls="--"),
}


def _save(figure, path: Path, pdf: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130, bbox_inches="tight")
    if pdf:
        figure.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(figure)
    return path


def _log2_positions(n_tasks: list[int | None]) -> tuple[list[float], list[str]]:
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
    pdf: bool = False,
    series_key: str | None = None,
    threshold: tuple[int | None, int | None] | None = None,
) -> Path:
    """Delta_PT,Ridge and Delta_PT,dMMSE against log2 M on both distributions, with the
    Delta_dMMSE,Ridge reference (the paper's figure 2). rows have keys 'n_tasks' (None: infinity)
    and 'DISTRIBUTION:A,B' (as iclab.demo.summarize makes them); with series_key, one line style
    per value of row[series_key] (e.g. batch_size). threshold: a (low, high) bracket of log2 M*,
    shaded."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row.get(series_key) if series_key else None, []).append(row)
    all_tasks = sorted({r["n_tasks"] for r in rows}, key=lambda m: math.inf if m is None else m)
    positions, labels = _log2_positions(all_tasks)
    x_of = dict(zip(all_tasks, positions, strict=True))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, distribution in zip(axes, ("pretrain", "true"), strict=True):
        for index, (value, group) in enumerate(sorted(groups.items(), key=_series_order)):
            group = sorted(group, key=lambda r: math.inf if r["n_tasks"] is None else r["n_tasks"])
            for pair, style in PAIR_STYLES.items():
                if pair == "dMMSE,Ridge" and index > 0:
                    continue  # the reference does not depend on the series
                style = dict(style)
                if series_key and pair != "dMMSE,Ridge":
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
    axes[0].set_ylabel("$\\Delta$ (squared prediction difference / D)")
    axes[1].legend(fontsize="small")
    return _save(figure, path, pdf)


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
        if r[f"{distribution}:{pair}"] > 0
    ]
    finite = [(x, v) for x, v, is_inf in points if not is_inf]
    infinite = [(x, v) for x, v, is_inf in points if is_inf]
    if finite:
        axis.plot(*zip(*finite, strict=True), **style)
    if infinite:
        marker = style.get("marker", "D")
        axis.plot(*zip(*infinite, strict=True), color=style["color"], marker=marker, ls="")


def plot_mse_per_position_by_tasks(evaluations: dict, path: Path, pdf: bool = False) -> Path:
    """Per-position MSE/D of the PT (solid), dMMSE (dotted) and Ridge (dashed; black on the true
    prior, where it is the same for every M) for several M, on each distribution. evaluations: n_tasks (None: infinity) -> eval.json contents."""
    distributions = ("pretrain", "true")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = plt.cm.viridis([i / max(1, len(evaluations) - 1) for i in range(len(evaluations))])
    for axis, distribution in zip(axes, distributions, strict=True):
        for color, (n_tasks, evaluation) in zip(colors, evaluations.items(), strict=True):
            mse = evaluation["distributions"][distribution]["mse"]
            label = "$\\infty$" if n_tasks is None else str(n_tasks)
            positions = range(1, len(mse["PT"]) + 1)
            axis.plot(positions, mse["PT"], color=color, marker=".", label=f"PT, M = {label}")
            if n_tasks is not None:
                axis.plot(positions, mse["dMMSE"], color=color, ls=":", label=f"dMMSE, M = {label}")
            if distribution == "pretrain":  # each M has its own pool, so Ridge's error differs
                axis.plot(positions, mse["Ridge"], color=color, ls="--", lw=0.8)
        if distribution == "true":
            axis.plot(positions, mse["Ridge"], color="black", ls="--", label="Ridge")
        axis.set_yscale("log")
        axis.set_xlabel("position k (in-context examples seen: k - 1)")
        axis.set_title(f"evaluated on the {DISTRIBUTION_TITLES[distribution]}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("MSE / D")
    axes[1].legend(fontsize="small", ncol=2)
    return _save(figure, path, pdf)


def plot_delta_over_training(curves: dict, path: Path, pdf: bool = False) -> Path:
    """Delta_PT,Ridge on the true distribution against training step, one line per M (the
    paper's figure 4). curves: panel title -> {n_tasks (None: infinity): [(step, delta), ...]}."""
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
        axis.set_ylabel("$\\Delta_{PT,Ridge}$ on the true prior (/ D)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    return _save(figure, path, pdf)


def plot_mse_per_position(evaluation: dict, path: Path, pdf: bool = False) -> Path:
    """Per-position MSE/D of every predictor on each evaluated distribution."""
    distributions = evaluation["distributions"]
    figure, axes = plt.subplots(1, len(distributions), figsize=(5 * len(distributions), 4))
    axes = [axes] if len(distributions) == 1 else axes
    for axis, (distribution, result) in zip(axes, distributions.items(), strict=True):
        for name, values in result["mse"].items():
            axis.plot(range(1, len(values) + 1), values, label=name, marker=".")
        axis.set_xlabel("position k (in-context examples seen: k - 1)")
        axis.set_ylabel("MSE / D")
        axis.set_title(f"evaluated on the {DISTRIBUTION_TITLES.get(distribution, distribution)}")
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path, pdf)


# ---------------------------------------------------------------------------------------------
# Autoregressive study (Sander et al. 2024): parameters, positional weights, step sizes, training
# ---------------------------------------------------------------------------------------------
def _array(values):
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu()
        values = values.abs() if values.is_complex() else values
        values = values.double().numpy()
    return np.asarray(values, dtype=float)


def plot_heatmaps(
    panels: list[tuple],
    path: Path,
    n_columns: int = 2,
    ticks: list[str] | None = None,
    pdf: bool = False,
) -> Path:
    """One heatmap per panel (title, 2-D array or tensor, x label, y label), each with a colorbar.
    Arrays with negative entries use a diverging map centred at 0; complex tensors show moduli.
    ticks labels the axes of panels whose size matches it."""
    n_rows = math.ceil(len(panels) / n_columns)
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(4.2 * n_columns, 3.6 * n_rows))
    axes = [axes] if len(panels) == 1 else list(getattr(axes, "flat", axes))
    for axis, (title, values, xlabel, ylabel) in zip(axes, panels, strict=False):
        values = _array(values)
        if values.ndim == 1:
            values = values[None]
        scale = float(abs(values).max()) or 1.0
        if (values < 0).any():
            image = axis.imshow(values, cmap="RdBu_r", vmin=-scale, vmax=scale)
        else:
            image = axis.imshow(values, cmap="viridis", vmin=0, vmax=scale)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        if ticks is not None and values.shape[1] == len(ticks):
            axis.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=6)
        if ticks is not None and values.shape[0] == len(ticks):
            axis.set_yticks(range(len(ticks)), ticks, fontsize=6)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
    for axis in axes[len(panels) :]:
        axis.axis("off")
    figure.tight_layout()
    return _save(figure, path, pdf)


def plot_positions(matrix, name: str, path: Path, pdf: bool = False) -> Path:
    """A (T, T) position-weight matrix as a heatmap (lower triangle) and its last row's profile."""
    values = _array(matrix)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    scale = float(abs(values).max()) or 1.0
    image = left.imshow(values, cmap="RdBu_r", vmin=-scale, vmax=scale)
    figure.colorbar(image, ax=left, fraction=0.046, pad=0.04)
    left.set_xlabel("key position t'")
    left.set_ylabel("query position t")
    left.set_title(name, fontsize=9)
    right.plot(range(values.shape[1]), values[-1], marker=".")
    right.axhline(0, color="gray", lw=0.5)
    right.set_xlabel("key position t'")
    right.set_ylabel(f"last row: {name}[T-1, t']")
    right.set_title("last-row profile", fontsize=9)
    right.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path, pdf)


def plot_profiles(
    profiles: dict, path: Path, xlabel: str, ylabel: str, title: str, pdf: bool = False
) -> Path:
    """Several 1-D profiles (label -> values) against their index, in one axes."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in profiles.items():
        values = _array(values)
        axis.plot(range(len(values)), values, marker=".", label=label)
    axis.axhline(0, color="gray", lw=0.5)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path, pdf)


def plot_eta_per_position(
    fitted: dict, optimal_per_position, optimal_overall: float, path: Path, pdf: bool = False
) -> Path:
    """The model's effective step sizes per position (label -> least-squares fits) against the
    optimal per-position and overall step sizes; position 0 (no pair seen) is left out."""
    optimal = _array(optimal_per_position)[1:]
    positions = range(1, len(optimal) + 1)
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in fitted.items():
        axis.plot(positions, _array(values)[1:], marker="o", label=f"model: {label}")
    axis.plot(positions, optimal, marker=".", ls="--", label="optimal $\\eta_t$ per position")
    axis.axhline(optimal_overall, color="gray", label="optimal single $\\eta$")
    axis.set_xlabel("position t (pairs seen)")
    axis.set_ylabel("step size $\\eta$")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path, pdf)


def plot_training_vs_estimators(
    records: list[dict], path: Path, title: str = "", pdf: bool = False
) -> Path:
    """Training loss and the model's held-out MSE per step against the estimators' held-out MSE
    (records of metrics.jsonl with autoregressive evaluations; MSE per coordinate, all positions)."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    steps = [r["step"] for r in records]
    axis.plot(steps, [r["train_loss"] for r in records], marker=".", label="training loss")
    final = records[-1]["eval"]["distributions"]["true"]["mse_mean"]
    axis.plot(
        steps,
        [r["eval"]["distributions"]["true"]["mse_mean"]["PT"] for r in records],
        marker="o",
        label="model (held out)",
    )
    floor = 1e-6 * max(final.values())  # exact predictors (Oracle: ~1e-16) would squash the axis
    for index, (name, value) in enumerate(final.items()):
        if name != "PT":
            shown = value > floor
            label = name if shown else f"{name} ({value:.0e}, not shown)"
            axis.axhline(
                value if shown else float("nan"), ls="--", color=f"C{index + 2}", label=label
            )
    axis.set_xlabel("training step")
    axis.set_ylabel("MSE per coordinate (mean over positions)")
    axis.set_yscale("log")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _save(figure, path, pdf)
