"""`iclab analyze RUN_DIR` on a regression run: which algorithm the trained model runs
(algorithms.py), on the true prior and on the pretraining pool. Writes analysis.json,
analysis.md and algorithm_fit.png in the run directory."""

from pathlib import Path

from iclab.files import atomic_write_text, write_json
from iclab.plots import plt, save_figure
from iclab.results import format_table
from iclab.studies.task_diversity.algorithms import fit_algorithms
from iclab.training import RunDirectory

ANALYSIS_FILE = "analysis.json"
SUMMARY_FILE = "analysis.md"
FIGURE_FILE = "algorithm_fit.png"


def analyze_regression_run(run_dir: str | Path, n_sequences: int = 2048) -> dict:
    """The algorithm fit of the run's checkpoint on n_sequences per distribution."""
    from iclab.experiment import load_trained

    run = RunDirectory(run_dir)
    config, model, task = load_trained(run)
    result = {
        "n_sequences": n_sequences,
        "algorithm_fit": fit_algorithms(model, task, n_sequences, config.eval.eval_seed),
    }
    write_json(run.file(ANALYSIS_FILE), result)
    atomic_write_text(
        run.file(SUMMARY_FILE), "# Algorithm fit\n\n" + format_regression_analysis(result) + "\n"
    )
    plot_algorithm_fit(result, run.file(FIGURE_FILE))
    return result


def _parameters(parameters: dict) -> str:
    return ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in parameters.items()
    )


def format_regression_analysis(result: dict) -> str:
    sections = []
    for distribution, found in result["algorithm_fit"].items():
        rows = [
            [family, _parameters(fit["parameters"]), fit["delta"]]
            for family, fit in sorted(found["fits"].items(), key=lambda item: item[1]["delta"])
        ]
        table = format_table(
            ["family", "best parameters", "Delta to the PT (mean over positions)"], rows
        )
        sections.append(f"{distribution}: closest family {found['winner']}\n{table}")
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
