"""`iclab analyze` on regression runs: which algorithm the trained model runs (algorithms.py) and
what its layers hold and attend to (probes.py). On a run directory it writes analysis.json,
analysis.md, algorithm_fit.png, probes.png and attention.png there; on a sweep directory it
analyses every completed regression run and draws the curves against log2 M
(analysis_by_M.png, with analysis.json and analysis.md in the sweep directory)."""

import math
from pathlib import Path

from iclab.files import atomic_write_text, write_json
from iclab.plots import plt, save_figure
from iclab.results import format_table
from iclab.studies.task_diversity.algorithms import GD_STEPS, fit_algorithms
from iclab.studies.task_diversity.figures import log2_positions
from iclab.studies.task_diversity.probes import plot_attention, plot_probes, probe_study
from iclab.sweeps.store import SweepError, SweepStore
from iclab.training import RunDirectory

ANALYSIS_FILE = "analysis.json"
SUMMARY_FILE = "analysis.md"
FIGURE_FILE = "algorithm_fit.png"
SWEEP_FIGURE = "analysis_by_M.png"
SWITCH_TARGET = "w_dMMSE - w_ridge"  # the probe that tells dMMSE and ridge apart


def analyze_regression_run(
    run_dir: str | Path, n_sequences: int = 2048, gd_steps: int = GD_STEPS
) -> dict:
    """The algorithm fit (GD families with k = 1..gd_steps) and the probes of the run's
    checkpoint, n_sequences per distribution."""
    from iclab.experiment import load_trained

    run = RunDirectory(run_dir)
    config, model, task = load_trained(run)
    seed = config.eval.eval_seed
    result = {
        "n_tasks": config.task.n_tasks,
        "n_sequences": n_sequences,
        "gd_steps": gd_steps,
        "algorithm_fit": fit_algorithms(model, task, n_sequences, seed, gd_steps),
        "probes": probe_study(model, task, n_sequences, seed),
    }
    write_json(run.file(ANALYSIS_FILE), result)
    summary = "# What the model computes\n\n" + format_regression_analysis(result) + "\n"
    atomic_write_text(run.file(SUMMARY_FILE), summary)
    plot_algorithm_fit(result, run.file(FIGURE_FILE))
    plot_probes(result["probes"], run.file("probes.png"))
    plot_attention(result["probes"], run.file("attention.png"))
    return result


def _parameters(parameters: dict) -> str:
    return ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in parameters.items()
    )


def last_layer_r2(result: dict, target: str, distribution: str = "true") -> float | None:
    """A target's probe R^2 after the last layer, averaged over the positions where it is
    defined (None where it is nowhere defined)."""
    values = [v for v in result["probes"][distribution]["r2"][target][-1] if v is not None]
    return sum(values) / len(values) if values else None


def format_regression_analysis(result: dict) -> str:
    sections = []
    for distribution, found in result["algorithm_fit"].items():
        rows = [
            [family, _parameters(fit["parameters"]), fit["delta"]]
            for family, fit in sorted(found["fits"].items(), key=lambda item: item[1]["delta"])
        ]
        header = ["family", "best parameters", "Delta to the PT (mean over positions)"]
        sections.append(
            f"{distribution}: closest family {found['winner']}\n{format_table(header, rows)}"
        )
    for distribution, probes in result["probes"].items():
        rows = []
        for target in probes["r2"]:
            value = last_layer_r2(result, target, distribution)
            rows.append(
                [target, "undefined (the target does not vary)" if value is None else value]
            )
        shares = probes["attention"]["share_on_labels"]
        attention = "; ".join(
            f"layer {i + 1}: " + ", ".join(f"{share:.0%}" for share in layer)
            for i, layer in enumerate(shares)
        )
        table = format_table(
            ["probe target", "held-out R^2, last layer (mean over positions)"], rows
        )
        sections.append(
            f"probes on {distribution}\n{table}\nattention of x tokens on labels (y tokens) per head: {attention}"
        )
    return "\n\n".join(sections)


def plot_algorithm_fit(result: dict, path: Path) -> Path:
    """Delta between the PT and each family's best member per position, one panel per
    distribution."""
    fits = result["algorithm_fit"]
    figure, axes = plt.subplots(1, len(fits), figsize=(5.5 * len(fits), 3.8), squeeze=False)
    for axis, (distribution, found) in zip(axes[0], fits.items(), strict=True):
        for family, fit in found["fits"].items():
            values = fit["delta_per_position"]
            axis.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=family)
        axis.set_yscale("log")
        axis.set_xlabel("context position k (examples seen: k - 1)")
        axis.set_ylabel("$\\Delta$ to the PT (per position)")
        axis.set_title(f"{distribution}: closest {found['winner']}")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path, pdf=False)


def analyze_sweep(
    out_dir: str | Path, n_sequences: int = 2048, progress: bool = True, gd_steps: int = GD_STEPS
) -> dict:
    """analyze_regression_run for every completed regression run of the sweep in out_dir, and
    per M (true distribution): the winning family, each family's Delta, and the last layer's R^2
    of the probe for w_dMMSE - w_ridge."""
    from tqdm.auto import tqdm

    store = SweepStore(out_dir)
    runs = [store.run(h) for h in store.grid_values()]
    runs = [r for r in runs if r.status() == "complete" and r.config().task.family == "regression"]
    if not runs:
        raise SweepError(f"no completed regression runs in {str(out_dir)!r}")
    rows = []
    for run in tqdm(runs, desc="analyze", unit="run", disable=not progress):
        result = analyze_regression_run(run.path, n_sequences, gd_steps)
        true = result["algorithm_fit"]["true"]
        rows.append(
            {
                "run": run.path.name,
                "n_tasks": result["n_tasks"],
                "winner": true["winner"],
                "delta": {family: fit["delta"] for family, fit in true["fits"].items()},
                "switch_r2": last_layer_r2(result, SWITCH_TARGET),
            }
        )
    rows.sort(key=lambda row: math.inf if row["n_tasks"] is None else row["n_tasks"])
    write_json(
        Path(out_dir) / ANALYSIS_FILE,
        {"n_sequences": n_sequences, "gd_steps": gd_steps, "runs": rows},
    )
    atomic_write_text(
        Path(out_dir) / SUMMARY_FILE,
        "# What the models compute, by M\n\n" + format_sweep_analysis(rows) + "\n",
    )
    plot_sweep_analysis(rows, Path(out_dir) / SWEEP_FIGURE)
    return {"runs": rows}


def format_sweep_analysis(rows: list[dict]) -> str:
    families = list(dict.fromkeys(f for row in rows for f in row["delta"]))
    table = [
        [
            "inf" if row["n_tasks"] is None else row["n_tasks"],
            row["winner"],
            *(row["delta"].get(f, math.nan) for f in families),
            "undefined" if row["switch_r2"] is None else row["switch_r2"],
        ]
        for row in rows
    ]
    header = ["M", "closest family", *(f"Delta {f}" for f in families), f"R^2 {SWITCH_TARGET}"]
    return (
        "On the true prior: the closest member of each algorithm family (Delta to the PT), and the "
        f"held-out R^2 of a linear probe for {SWITCH_TARGET} after the last layer.\n\n```\n"
        f"{format_table(header, table)}\n```"
    )


def _plot_by_m(axis, rows, positions, value, **style) -> None:
    """value(row) against log2 M: finite M as a line, M = infinity as a lone marker (a limit,
    not a next octave); rows where value is None are left out."""
    points = [(x, value(r), r["n_tasks"] is None) for x, r in zip(positions, rows, strict=True)]
    points = [p for p in points if p[1] is not None]
    finite = [(x, v) for x, v, at_infinity in points if not at_infinity]
    if finite:
        line = axis.plot(*zip(*finite, strict=True), marker="o", **style)[0]
        style = {**style, "color": line.get_color(), "label": None}
    for x, v, at_infinity in points:
        if at_infinity:
            axis.plot([x], [v], marker="o", ls="", **style)


def plot_sweep_analysis(rows: list[dict], path: Path) -> Path:
    """Left: each family's Delta to the PT against log2 M (the winner is the lowest). Right: the
    probe R^2 for w_dMMSE - w_ridge at the last layer."""
    positions, labels = log2_positions([row["n_tasks"] for row in rows])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for family in dict.fromkeys(f for row in rows for f in row["delta"]):
        _plot_by_m(left, rows, positions, lambda row, f=family: row["delta"].get(f), label=family)
    left.set_yscale("log")
    left.set_ylabel("$\\Delta$ to the PT, true prior")
    left.set_title("closest member of each algorithm family")
    left.legend(fontsize="small")
    _plot_by_m(right, rows, positions, lambda row: row["switch_r2"], color="tab:purple")
    lowest = min([0.0, *(row["switch_r2"] for row in rows if row["switch_r2"] is not None)])
    right.set_ylim(lowest - 0.05, 1.05)
    right.set_ylabel(f"held-out $R^2$, probe for {SWITCH_TARGET}")
    right.set_title("last layer (undefined at M = $\\infty$)")
    for axis in (left, right):
        axis.set_xticks(positions, labels)
        axis.set_xlabel("task diversity $\\log_2 M$")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path, pdf=False)
