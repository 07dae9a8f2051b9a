"""Figures (matplotlib, Agg backend): saved as PNG, and PDF when asked, and closed.

The Agg backend is chosen only where nobody chose one: a notebook (whose kernel sets MPLBACKEND
to its inline backend) or a script that imported pyplot first keeps its own.
"""

import math
import os
import sys
from pathlib import Path

import matplotlib

from iclab.evaluation import metric_labels

if "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure, path: Path, pdf: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130, bbox_inches="tight")
    if pdf:
        figure.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(figure)
    return path


def plot_error_per_position(
    evaluation: dict, path: Path, titles: dict[str, str] | None = None, pdf: bool = False
) -> Path:
    """Per-position error (the family's first metric, e.g. MSE/D) of every predictor on each
    evaluated distribution; titles names the distributions (the family's distribution_titles)."""
    metric, label = next(iter(metric_labels(evaluation).items()))
    distributions = evaluation["distributions"]
    figure, axes = plt.subplots(1, len(distributions), figsize=(5 * len(distributions), 4))
    axes = [axes] if len(distributions) == 1 else axes
    for axis, (distribution, result) in zip(axes, distributions.items(), strict=True):
        for name, values in result[metric].items():
            axis.plot(range(1, len(values) + 1), values, label=name, marker=".")
        axis.set_xlabel("position k (in-context examples seen: k - 1)")
        axis.set_ylabel(label)
        axis.set_title(f"evaluated on the {(titles or {}).get(distribution, distribution)}")
        axis.grid(alpha=0.3)
        axis.legend()
    return save_figure(figure, path, pdf)


# ---------------------------------------------------------------------------------------------
# Heatmaps of parameters (the autoregressive study's figures: iclab.studies.autoregressive.figures)
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
    return save_figure(figure, path, pdf)
