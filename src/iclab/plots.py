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


def plot_task_diversity(rows: list[dict], path: Path, pdf: bool = False) -> Path:
    """Delta_PT,Ridge and Delta_PT,dMMSE against log2 M on both distributions (rows from
    iclab.demo.summarize: keys 'n_tasks' and 'DISTRIBUTION:A,B')."""
    rows = sorted(rows, key=lambda r: math.inf if r["n_tasks"] is None else r["n_tasks"])
    positions, labels = _log2_positions([r["n_tasks"] for r in rows])
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, distribution in zip(axes, ("pretrain", "true"), strict=True):
        for pair, style in PAIR_STYLES.items():
            # Finite M as a line; M = inf as a lone marker past a gap (it is a limit, not a next
            # octave). Zeros (dMMSE is Ridge at M = inf) have no place on the log axis.
            points = [
                (x, r[f"{distribution}:{pair}"], r["n_tasks"] is None)
                for x, r in zip(positions, rows, strict=True)
                if r[f"{distribution}:{pair}"] > 0
            ]
            finite = [(x, v) for x, v, is_inf in points if not is_inf]
            infinite = [(x, v) for x, v, is_inf in points if is_inf]
            if finite:
                axis.plot(*zip(*finite, strict=True), **style)
            if infinite:
                marker = style.get("marker", "D")
                axis.plot(*zip(*infinite, strict=True), color=style["color"], marker=marker, ls="")
        axis.set_yscale("log")
        axis.set_xticks(positions, labels)
        axis.set_xlabel("task diversity $\\log_2 M$")
        axis.set_title(f"evaluated on the {DISTRIBUTION_TITLES[distribution]}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("$\\Delta$ (squared prediction difference / D)")
    axes[1].legend()
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
