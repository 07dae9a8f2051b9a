"""One run end to end: train, evaluate on the full evaluation set, write eval.json."""

from collections.abc import Callable
from pathlib import Path

from iclab.checkpoints import load_checkpoint
from iclab.config import RunConfig, load_config
from iclab.families import family_of, make_task
from iclab.plots import plot_mse_per_position
from iclab.results import CHECKPOINT_FILE, CONFIG_FILE, EVAL_FILE, write_json
from iclab.training import build_model, evaluate_as_configured, resolve_device, train

MSE_FIGURE = "mse_per_position.png"


def run(
    config: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict:
    """Train `config` into run_dir, then evaluate it (config.eval) and write eval.json.

    on_log and on_checkpoint are passed to training.train (reports from worker processes)."""
    result = train(
        config,
        run_dir,
        resume=resume,
        progress=progress,
        on_log=on_log,
        on_checkpoint=on_checkpoint,
    )
    return finish_run(config, run_dir, result.model, result.task, result.steps_per_second)


def finish_run(config: RunConfig, run_dir, model, task, steps_per_second: float) -> dict:
    """Evaluate a trained model on config.eval, draw its per-position figure and write eval.json
    last: a run directory with eval.json is complete."""
    evaluation = evaluate_as_configured(model, task, config, config.eval.n_sequences)
    evaluation["steps_per_second"] = steps_per_second
    plot_mse_per_position(
        evaluation, Path(run_dir) / MSE_FIGURE, family_of(config.task).distribution_titles
    )
    write_json(Path(run_dir) / EVAL_FILE, evaluation)
    return evaluation


def evaluate_run(run_dir: str | Path, n_sequences: int | None = None) -> dict:
    """Re-evaluate the checkpoint of a run directory and (re)write its eval.json."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    device = resolve_device(config.train.device)
    model = build_model(config, device)
    load_checkpoint(run_dir / CHECKPOINT_FILE, model)
    task = make_task(config.task, device)
    evaluation = evaluate_as_configured(model, task, config, n_sequences or config.eval.n_sequences)
    plot_mse_per_position(
        evaluation, run_dir / MSE_FIGURE, family_of(config.task).distribution_titles
    )
    write_json(run_dir / EVAL_FILE, evaluation)
    return evaluation
