"""Mechanistic checks on a trained autoregressive model (Sander et al. 2024), on a run directory.

analyze_model gathers every check that applies to the model: the one-step GD fit of its
predictions (gd_fit), the weight tensor of a one-layer augmented linear model, the diagonal
model's structure and closed form, and the position weights (weights). analyze_run does so for
the checkpoint of a run directory and writes analysis.json and the figures there.
"""

from pathlib import Path

import torch

from iclab.config import ConfigError
from iclab.families import make_task
from iclab.families.autoregressive import AutoregressiveTaskConfig
from iclab.files import write_json
from iclab.models.diagonal_attention import DiagonalAttention
from iclab.models.linear_attention import LinearAttention
from iclab.results import format_table
from iclab.studies.autoregressive.figures import (
    plot_diagonal_parameters,
    plot_eta_per_position,
    plot_linear_weights,
    plot_positions,
)
from iclab.studies.autoregressive.gd_fit import gd_fit, symmetry_matrix
from iclab.studies.autoregressive.weights import (
    diagonal_structure,
    positional_matrix,
    weight_structure,
)
from iclab.tasks.autoregressive import AutoregressiveTask
from iclab.training import RunDirectory, build_model

ANALYSIS_FILE = "analysis.json"


def analyze_model(
    model: torch.nn.Module,
    task: AutoregressiveTask,
    n_sequences: int = 2048,
    seed: int = 0,
    minimiser_steps: int = 300,
) -> dict:
    """Every check that applies to the model (module docstring); tensors are kept as tensors.
    minimiser_steps: Adam and L-BFGS steps of the closed-form minimiser (diagonal model only)."""
    model.eval()
    result: dict = {"model": type(model).__name__, "gd_fit": gd_fit(model, task, n_sequences, seed)}
    if isinstance(model, LinearAttention):
        c = model.config
        result["model_config"] = {"attention": c.attention, "tokens": c.tokens}
        if c.attention == "linear" and c.tokens == "augmented" and c.n_layers == 1:
            fit = result["gd_fit"]
            angles, reverse = fit["symmetry_angles"], fit["symmetry_reversed"]
            D = None if angles is None else symmetry_matrix(task, angles, reverse)
            result["weights"] = weight_structure(model, D, reverse)
    if isinstance(model, DiagonalAttention):
        result["diagonal"] = diagonal_structure(model, task.config, minimiser_steps)
    positions = positional_matrix(model)
    if positions is not None:
        result["positions"] = {"name": positions[1], "matrix": positions[0]}
    return result


def write_figures(result: dict, run_dir: Path) -> list[Path]:
    """The figures of analyze_model's result into run_dir; returns their paths."""
    fit = result["gd_fit"]
    fitted = {
        "fitted to one-step GD": fit["eta_fit_per_position"],
        "fitted up to the symmetry": fit["eta_sym_per_position"],
    }
    paths = [
        plot_eta_per_position(
            fitted,
            fit["eta_optimal_per_position"],
            fit["eta_optimal"],
            run_dir / "eta_per_position.png",
        )
    ]
    if "weights" in result:
        paths.append(plot_linear_weights(result["weights"], run_dir / "linear_weights.png"))
    if "diagonal" in result:
        paths.append(plot_diagonal_parameters(result["diagonal"], run_dir / "diagonal_params.png"))
    if "positions" in result:
        positions = result["positions"]
        paths.append(plot_positions(positions["matrix"], positions["name"], run_dir / "P.png"))
    return paths


def _jsonable(value):
    """Tensors to (nested) lists; complex tensors to their modulus (phases are in the figures)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return (value.abs() if value.is_complex() else value).double().tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def analyze_run(
    run_dir: str | Path, n_sequences: int = 2048, figures: bool = True, minimiser_steps: int = 300
) -> dict:
    """Analyse the checkpoint of an autoregressive run directory; writes analysis.json (tensors as
    lists, complex ones as moduli) and the figures there. Returns the JSON-ready result."""
    run_dir = Path(run_dir)
    run = RunDirectory(run_dir)
    config = run.config()
    if not isinstance(config.task, AutoregressiveTaskConfig):
        raise ConfigError(
            f"task.family = {config.task.family!r} in {str(run_dir)!r} is not allowed: "
            "the analysis needs task.family = 'autoregressive'"
        )
    device = torch.device("cpu")
    model = build_model(config, device)
    run.load_checkpoint(model, run_hash=config.run_hash())  # config.toml is read once
    task = make_task(config.task, device)
    result = analyze_model(model, task, n_sequences, config.eval.eval_seed, minimiser_steps)
    if figures:
        result["figures"] = [path.name for path in write_figures(result, run_dir)]
    ready = _jsonable(result)
    write_json(run.file(ANALYSIS_FILE), ready)
    return ready


def format_analysis(result: dict) -> str:
    """The one-step GD fit of analyze_run's result as a text table."""
    fit = result["gd_fit"]
    names = ("eta_fit", "eta_optimal", "eta_ratio", "gap_plain")
    names += ("gap_sym", "gap_sym_fit", "eta_sym", "eta_sym_ratio")
    rows = [[name, fit[name]] for name in names]
    rows += [[f"loss {name}", value] for name, value in fit["loss"].items()]
    return f"{format_table(['one-step GD fit', 'value'], rows)}\nsymmetry: {fit['symmetry']}"
