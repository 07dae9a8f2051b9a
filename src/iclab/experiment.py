"""One run end to end: train, evaluate on the full evaluation set, write eval.json."""

from collections.abc import Callable
from pathlib import Path

from iclab.config import RunConfig
from iclab.families import family_of, make_task
from iclab.plots import plot_mse_per_position
from iclab.training import (
    RunDirectory,
    build_model,
    evaluate_as_configured,
    resolve_device,
    train,
)

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


def finish_run(
    config: RunConfig,
    run_dir,
    model,
    task,
    steps_per_second: float | None = None,
    n_sequences: int | None = None,
) -> dict:
    """Evaluate a trained model on n_sequences (default config.eval's), draw its per-position
    figure and write eval.json last: a run directory with eval.json is complete."""
    evaluation = evaluate_as_configured(model, task, config, n_sequences or config.eval.n_sequences)
    if steps_per_second is not None:
        evaluation["steps_per_second"] = steps_per_second
    run = RunDirectory(run_dir)
    titles = family_of(config.task).distribution_titles
    plot_mse_per_position(evaluation, run.file(MSE_FIGURE), titles)
    run.write_evaluation(evaluation)
    return evaluation


def evaluate_run(run_dir: str | Path, n_sequences: int | None = None) -> dict:
    """Re-evaluate the checkpoint of a run directory and (re)write its eval.json."""
    run = RunDirectory(run_dir)
    config = run.config()
    device = resolve_device(config.train.device)
    model = build_model(config, device)
    run.load_checkpoint(model)
    return finish_run(config, run_dir, model, make_task(config.task, device), None, n_sequences)
