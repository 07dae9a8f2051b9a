"""Figures of the autoregressive study: step sizes, weights, position weights, training curves."""

from pathlib import Path

import torch

from iclab.plots import _array, plot_heatmaps, plt, save_figure  # plt: pyplot, Agg backend


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
    return save_figure(figure, path, pdf)


def plot_linear_weights(weights: dict, path: Path) -> Path:
    """|F| and |G| of each head (weights.weight_structure) and, with one head, the deviation of
    the GD block from one-step GD in the fitted symmetry's frame."""
    F, G = weights["F"], weights["G"]
    d = F.shape[1]
    token = [f"s_t[{i}]" for i in range(d)] + [f"s_t-1[{i}]" for i in range(d)]
    panels = []
    for h in range(F.shape[0]):
        panels.append((f"|F| head {h}: value map", F[h].abs(), "value token e_t'", "output j"))
        panels.append((f"|G| head {h}: score map", G[h].abs(), "query token e_t", "key e_t'"))
    frame = weights.get("frame")
    if frame is not None:
        eye = torch.eye(d, dtype=frame["F"].dtype)
        title = "|{} - I|: deviation from one-step GD in D's frame"
        panels.append((title.format("F' = D^* F"), frame["F"] - eye, "value coordinate", "j"))
        panels.append((title.format("G' = G D"), frame["G"] - eye, "query coordinate", "key"))
    return plot_heatmaps(panels, path, ticks=token)


def plot_diagonal_parameters(diagonal: dict, path: Path) -> Path:
    """Heatmaps of A, B, B^T A, P: trained (first row) and closed-form minimiser (second)."""
    rows = [("trained", diagonal["trained"])]
    if "minimiser" in diagonal:
        rows.append(("closed-form minimiser", diagonal["minimiser"]))
    panels = []
    for label, report in rows:
        panels += [
            (f"A ({label})", report["A"], "coordinate k", "head h"),
            (f"B ({label})", report["B"], "coordinate j", "head h"),
            (f"B^T A ({label})", report["C"], "k", "j"),
            (f"P ({label})", torch.tril(report["P"]), "key position t'", "query position t"),
        ]
    return plot_heatmaps(panels, path, n_columns=4)


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
    return save_figure(figure, path, pdf)


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
    return save_figure(figure, path, pdf)


def plot_head_cosines(diagonal: list[dict], path: Path) -> Path:
    """|cos| between the heads of each diagonal run, trained and closed-form minimiser."""
    panels = []
    for r in diagonal:
        for which in ("trained", "minimiser"):
            cos = torch.as_tensor(r[f"head_cos_{which}"], dtype=torch.float64).abs()
            label = (
                which
                if which == "trained"
                else f"closed-form minimiser, init {r['minimiser_init_std']:g}"
            )
            panels.append((f"{r['run']}\n|cos|, {label}", cos, "head", "head"))
    return plot_heatmaps(panels, path, n_columns=2)


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
    return save_figure(figure, path, pdf)
