"""The training runs of the reproduction: their configs, trained (or reused) and analysed.

Runs live in OUT/runs/NAME (run directories of iclab.experiment, plus analysis.json and the
analysis figures); finished runs are reused (and re-analysed), unfinished ones resume.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from iclab.config import RunConfig, config_from_dict
from iclab.experiment import run
from iclab.studies.autoregressive.analysis import analyze_run
from iclab.studies.autoregressive.figures import plot_training_vs_estimators
from iclab.training import RunDirectory

if TYPE_CHECKING:  # type hints only: reproduction imports this module
    from iclab.studies.autoregressive.reproduction import Settings


def _train(steps: int, lr: float, batch_size: int, s: "Settings") -> dict:
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "schedule": "cosine",
        "warmup_fraction": 0.05,
        "device": "cpu",
        "log_every": max(1, steps // 20),
        "eval_every": max(1, steps // 10),
        "eval_sequences": min(512, s.eval_sequences),
        "checkpoint_every": steps,
    }


def _task(family: str, n_dims: int, n_steps: int) -> dict:
    return {"family": "autoregressive", "w_family": family, "n_dims": n_dims, "n_steps": n_steps}


def linear_config(family: str, n_dims: int, start: str, s: "Settings") -> RunConfig:
    """One layer, one head, linear attention, augmented tokens, init N(0, 0.02^2)."""
    model = {"family": "linear_attention", "attention": "linear", "tokens": "augmented"}
    return config_from_dict(
        {
            "task": _task(family, n_dims, s.linear_n_steps) | {"start": start},
            "model": model | {"n_layers": 1, "n_heads": 1, "init_std": 0.02},
            "train": _train(s.linear_train_steps, 1e-2, 64, s),
            "eval": {"n_sequences": s.eval_sequences},
        }
    )


def diagonal_config(family: str, n_heads: int, init_std: float, s: "Settings") -> RunConfig:
    model = {"family": "diagonal_attention", "n_heads": n_heads, "init_std": init_std}
    return config_from_dict(
        {
            "task": _task(family, s.diagonal_dims, s.diagonal_n_steps),
            "model": model,
            "train": _train(s.diagonal_train_steps, 5e-2, 64, s),
            "eval": {"n_sequences": s.eval_sequences},
        }
    )


def pe_config(mu: float, s: "Settings") -> RunConfig:
    """Scalar unitary sequences s_t = e^{i t theta}, theta ~ U[0, 2 pi / mu); P starts at 0."""
    return config_from_dict(
        {
            "task": _task("unitary", 1, s.pe_n_steps) | {"mu": mu},
            "model": {"family": "linear_attention", "attention": "pe_only", "init_std": 0.0},
            "train": _train(s.pe_train_steps, 1e-2, 256, s),
            "eval": {"n_sequences": s.eval_sequences},
        }
    )


def train_and_analyze(config: RunConfig, run_dir: Path, s: "Settings", progress: bool) -> dict:
    """Train (or resume) and evaluate a run unless it is finished, then (re)analyse it."""
    directory = RunDirectory(run_dir)
    finished = directory.status() == "complete"
    if not finished or directory.config().run_hash() != config.run_hash():
        # A different config in run_dir raises ConfigError: nothing is overwritten.
        run(config, run_dir, resume=directory.has_config(), progress=progress)
    plot_training_vs_estimators(directory.metrics(), directory.file("training.png"), run_dir.name)
    return analyze_run(run_dir, s.eval_sequences, minimiser_steps=s.minimiser_steps)
