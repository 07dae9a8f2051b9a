"""One run end to end: train, evaluate on the full evaluation set, write eval.json."""

import dataclasses
from pathlib import Path

import torch

from iclab.config import ConfigError, RunConfig
from iclab.families import family_of, make_task
from iclab.locks import exclusive
from iclab.plots import plot_error_per_position
from iclab.tracking import RunTracker
from iclab.training import (
    RunDirectory,
    build_model,
    evaluate_as_configured,
    resolve_device,
    train,
)
from iclab.training.run_directory import REEVALUATION_FILE

MSE_FIGURE = "mse_per_position.png"
REEVALUATION_FIGURE = "reevaluation_mse_per_position.png"


def run(
    config: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    log_to: str | None = None,
) -> dict:
    """Train `config` into run_dir, then evaluate it (config.eval) and write eval.json; with
    log_to (iclab.tracking.BACKENDS) mirror its evaluations and figures to that tracker.
    Resuming a complete run of the same config returns its evaluation and rewrites nothing."""
    if resume and RunDirectory(run_dir).status() == "complete":
        run = RunDirectory.create(run_dir, config, resume=True)
        with exclusive(run.path, "run directory"):  # no other writer may be changing it
            return run.evaluation()
    tracker = None if log_to is None else RunTracker(log_to, run_dir, config)

    def on_evaluation(_index: int, record: dict) -> None:
        tracker.log(record)

    try:
        result = train(
            config,
            run_dir,
            resume=resume,
            progress=progress,
            on_evaluation=None if tracker is None else on_evaluation,
        )
        # train() released the run directory's lock; the final evaluation writes there too.
        with exclusive(run_dir, "run directory"):
            evaluation = finish_run(
                config, run_dir, result.model, result.task, result.steps_per_second
            )
        if tracker is not None:
            tracker.finish(RunDirectory(run_dir))
    finally:
        if tracker is not None:
            tracker.abort()  # a no-op once finished
    return evaluation


def finish_run(config: RunConfig, run_dir, model, task, steps_per_second: float) -> dict:
    """Evaluate a trained model on config.eval, draw its per-position figure and write eval.json
    last: a run directory with eval.json is complete."""
    evaluation = evaluate_as_configured(model, task, config, config.eval.n_sequences)
    evaluation["steps_per_second"] = steps_per_second
    run = RunDirectory(run_dir)
    _plot(config, evaluation, run.file(MSE_FIGURE))
    run.write_evaluation(evaluation)
    return evaluation


def evaluate_run(
    run_dir: str | Path, n_sequences: int | None = None, replace: bool = False
) -> tuple[dict, Path]:
    """Re-evaluate the checkpoint of a run directory on n_sequences (default: the run's
    eval.n_sequences). Written beside the run's own results, never over them:
    reevaluation.json and its figure; an earlier re-evaluation is replaced only with `replace`.
    Returns the evaluation and the path written."""
    run = RunDirectory(run_dir)
    earlier = run.file(REEVALUATION_FILE)
    if earlier.exists() and not replace:
        raise ConfigError(
            f"{str(earlier)!r} holds an earlier re-evaluation: pass --replace to replace it "
            "(or copy it elsewhere first)"
        )
    config, model, task = load_trained(run)
    if n_sequences is not None:  # checked as eval.n_sequences is: an integer >= 1
        config = dataclasses.replace(
            config, eval=dataclasses.replace(config.eval, n_sequences=n_sequences)
        )
    evaluation = evaluate_as_configured(model, task, config, config.eval.n_sequences)
    _plot(config, evaluation, run.file(REEVALUATION_FIGURE))
    return evaluation, run.write_reevaluation(evaluation)


def load_trained(run: RunDirectory) -> tuple[RunConfig, torch.nn.Module, object]:
    """A run's config, its model at the last checkpoint (in eval mode) and its task."""
    config = run.config()
    device = resolve_device(config.train.device)
    model = build_model(config, device)
    run.load_checkpoint(model, run_hash=config.run_hash())  # config.toml is read once
    model.eval()
    return config, model, make_task(config.task, device)


def _plot(config: RunConfig, evaluation: dict, path: Path) -> None:
    plot_error_per_position(evaluation, path, family_of(config.task).distribution_titles)
