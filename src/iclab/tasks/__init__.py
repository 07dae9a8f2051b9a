"""Tasks: what a model sees. Every sampler is a pure function of its seeds and the step.

A task object offers `train_batch(seed, step, batch_size)` (a tuple of tensors, the model's inputs),
`loss(model, batch)` (the scalar training loss), `eval_batch(distribution, seed, index, size)`
(named evaluation distributions; see each task family) and `prediction_batch(...)` (the same chunk
as (predictor arguments, target), for iclab.evaluation).
"""

import torch

from iclab.config import AutoregressiveTaskConfig, RegressionTaskConfig


def make_task(config, device: torch.device | str):
    """Build the task object of a task config (registry from config class to task class)."""
    if isinstance(config, RegressionTaskConfig):
        from iclab.tasks.regression import RegressionTask

        return RegressionTask(config, device)
    if isinstance(config, AutoregressiveTaskConfig):
        from iclab.tasks.autoregressive import AutoregressiveTask

        return AutoregressiveTask(config, device)
    raise TypeError(f"no task for config {type(config).__name__}")
