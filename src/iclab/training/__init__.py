"""Training: one train loop for a single model or a stacked ensemble (loop.py, with the step
strategies of steps.py), what a run trains with (optimization.py), and the run directory
(run_directory.py), the one owner of a run's files."""

from iclab.training.loop import (
    TrainingDiverged,
    TrainResult,
    evaluate_as_configured,
    record_evaluation,
    train,
    train_runs,
)
from iclab.training.optimization import build_model, build_optimizer, learning_rate, resolve_device
from iclab.training.run_directory import RunDirectory
from iclab.training.steps import ensemble_key

__all__ = [
    "RunDirectory",
    "TrainResult",
    "TrainingDiverged",
    "build_model",
    "build_optimizer",
    "ensemble_key",
    "evaluate_as_configured",
    "learning_rate",
    "record_evaluation",
    "resolve_device",
    "train",
    "train_runs",
]
