"""Per-position errors and Delta metrics of predictors on a task family's named distributions.

Every predictor (trained model or estimator) is called as predictor(*arguments) on an evaluation
chunk and returns predictions per position; the task's prediction_batch gives (arguments, target).
Errors are squared differences (|.|^2 for complex values) summed over the output's coordinates,
averaged over sequences and divided by the family's metric scale (D, as the papers report them):

    mse[name][k]      = E[(f(S_k) - y_k)^2] / D
    delta["A,B"][k]   = E[(f_A(S_k) - f_B(S_k))^2] / D      (Delta_{A,B} of papers.md, per position)

and `*_mean` are the averages over positions. Which predictors, pairs and distributions a model is
evaluated on is its task family's choice (iclab.families).
"""

from collections.abc import Callable

import torch

from iclab.families import MODEL_NAME, family_of


def _squared_error_per_position(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over sequences and output coordinates of |a - b|^2 (complex states count a complex
    coordinate once), per position: (n_positions,), in double precision."""
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    squared = (a.to(wide) - b.to(wide)).abs().square()
    return squared.reshape(squared.shape[0], squared.shape[1], -1).sum(dim=(0, 2))


def _error_table(batches, predictors: dict, pairs, n_sequences: int, scale: float) -> dict:
    """MSE / scale per predictor and Delta / scale per pair, per position and averaged, over
    `batches` of (predictor arguments, target)."""
    mse_sums: dict[str, torch.Tensor] = {}
    delta_sums: dict[str, torch.Tensor] = {}
    for arguments, target in batches:
        predictions = {name: predict(*arguments) for name, predict in predictors.items()}
        for name, prediction in predictions.items():
            error = _squared_error_per_position(prediction, target)
            mse_sums[name] = mse_sums.get(name, 0) + error
        for a, b in pairs:
            error = _squared_error_per_position(predictions[a], predictions[b])
            delta_sums[f"{a},{b}"] = delta_sums.get(f"{a},{b}", 0) + error
    to_list = lambda total: (total / (n_sequences * scale)).tolist()  # noqa: E731
    mse = {name: to_list(total) for name, total in mse_sums.items()}
    delta = {name: to_list(total) for name, total in delta_sums.items()}
    return {
        "mse": mse,
        "delta": delta,
        "mse_mean": {name: sum(v) / len(v) for name, v in mse.items()},
        "delta_mean": {name: sum(v) / len(v) for name, v in delta.items()},
    }


def _chunks(n_sequences: int, batch_size: int):
    """(index, size) of the evaluation chunks."""
    for index, start in enumerate(range(0, n_sequences, batch_size)):
        yield index, min(batch_size, n_sequences - start)


@torch.inference_mode()
def evaluate(
    task,
    predictors: dict[str, Callable],
    pairs: tuple[tuple[str, str], ...],
    n_sequences: int,
    seed: int,
    batch_size: int = 4096,
    distributions: tuple[str, ...] | None = None,
) -> dict:
    """MSE of every predictor and Delta of every pair, per position and averaged, per distribution
    (default: all of the task family's)."""
    family = family_of(task.config)

    def batches(distribution: str):
        for index, size in _chunks(n_sequences, batch_size):
            yield task.prediction_batch(distribution, seed, index, size)

    scale = family.metric_scale(task.config)
    results = {
        distribution: _error_table(batches(distribution), predictors, pairs, n_sequences, scale)
        for distribution in distributions or family.distributions
    }
    return {"n_sequences": n_sequences, "distributions": results}


def evaluate_model(
    model: torch.nn.Module, task, n_sequences: int, seed: int, batch_size: int = 4096
) -> dict:
    """Evaluate a trained model against its task family's baselines (model in eval mode)."""
    family = family_of(task.config)
    baselines = family.baselines(task)
    predictors = {MODEL_NAME: family.model_predictor(model), **baselines}
    was_training = model.training
    model.eval()
    try:
        result = evaluate(
            task, predictors, family.metric_pairs(baselines), n_sequences, seed, batch_size
        )
    finally:
        model.train(was_training)
    return {**result, **family.evaluation_extras(task)}
