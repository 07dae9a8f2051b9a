"""Per-position MSE and Delta metrics of predictors on named task distributions.

Every predictor (trained model or estimator) is called as predictor(*batch) and returns predictions
per position. For regression, batch = (xs, ys), predictions (batch, n_points), target ys (the noisy y).
Errors are squared differences summed over the output's coordinates, averaged over sequences and
divided by D (n_dims), as the papers report them:

    mse[name][k]      = E[(f(S_k) - y_k)^2] / D
    delta["A,B"][k]   = E[(f_A(S_k) - f_B(S_k))^2] / D      (Delta_{A,B} of papers.md, per position)

and `*_mean` are the averages over positions. Autoregressive tasks (distribution `true` only):
positions t = 0..T-1 predict s_{t+1}; errors |.|^2 per coordinate, divided by d. Each task's
prediction_batch gives the predictors' arguments and the target.
"""

from collections.abc import Callable

import torch

from iclab.tasks.autoregressive import AutoregressiveTask
from iclab.tasks.regression import RegressionTask

MODEL_NAME = "PT"
REGRESSION_PAIRS = (("PT", "Ridge"), ("PT", "dMMSE"), ("dMMSE", "Ridge"))


def regression_baselines(task: RegressionTask) -> dict[str, Callable]:
    """Ridge (Bayes for the prior) and dMMSE (Bayes for the pool; equals Ridge when M is infinite)."""
    from iclab.estimators.regression import DMMSE, Ridge

    config = task.config
    ridge = Ridge(noise_std=config.noise_std, prior_std=config.prior_std)
    dmmse = ridge if task.pool is None else DMMSE(task.pool, noise_std=config.noise_std)
    return {"Ridge": ridge, "dMMSE": dmmse}


def _squared_error_per_position(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over sequences and output coordinates of |a - b|^2 (complex states count a complex
    coordinate once), per position: (n_positions,), in double precision."""
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    squared = (a.to(wide) - b.to(wide)).abs().square()
    return squared.reshape(squared.shape[0], squared.shape[1], -1).sum(dim=(0, 2))


def _error_table(batches, predictors: dict, pairs, n_sequences: int, n_dims: int) -> dict:
    """MSE/D per predictor and Delta/D per pair, per position and averaged, over `batches` of
    (predictor arguments, target)."""
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
    to_list = lambda total: (total / (n_sequences * n_dims)).tolist()  # noqa: E731
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
    distributions: tuple[str, ...] = ("pretrain", "true"),
) -> dict:
    """MSE of every predictor and Delta of every pair, per position and averaged, per distribution."""

    def batches(distribution: str):
        for index, size in _chunks(n_sequences, batch_size):
            yield task.prediction_batch(distribution, seed, index, size)

    n_dims = task.config.n_dims
    results = {
        distribution: _error_table(batches(distribution), predictors, pairs, n_sequences, n_dims)
        for distribution in distributions
    }
    return {"n_sequences": n_sequences, "distributions": results}


def evaluate_model(
    model: torch.nn.Module, task, n_sequences: int, seed: int, batch_size: int = 4096
) -> dict:
    """Evaluate a trained model against its task's Bayes baselines (model in eval mode, fp32)."""
    if not isinstance(task, RegressionTask | AutoregressiveTask):
        raise TypeError(f"no Delta-metric evaluation for {type(task).__name__}; see iclab.analysis")
    was_training = model.training
    model.eval()
    try:
        if isinstance(task, AutoregressiveTask):
            return evaluate_autoregressive_model(model, task, n_sequences, seed, batch_size)
        predictors = {MODEL_NAME: model, **regression_baselines(task)}
        return evaluate(task, predictors, REGRESSION_PAIRS, n_sequences, seed, batch_size)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Autoregressive sequences: predictors are called as predict(inputs, ws) -> (batch, T, d), where
# inputs = states[:, :-1] and output t predicts s_{t+1}; errors are |.|^2 (complex states count a
# coordinate once), summed over coordinates, averaged over sequences and divided by d.
# ---------------------------------------------------------------------------------------------
def autoregressive_baselines(task) -> tuple[dict[str, Callable], dict]:
    """Oracle, least squares, one-step GD at the optimal eta, and the family's exact shortcut
    (LastPair for unitary W, CosineRecurrence for rotations); also returns the eta used."""
    from iclab.estimators.autoregressive import (
        CosineRecurrence,
        LastPair,
        LeastSquares,
        OneStepGD,
        Oracle,
        optimal_eta,
    )

    eta = optimal_eta(task.config)
    baselines = {
        "Oracle": Oracle(),
        "LeastSquares": LeastSquares(),
        "OneStepGD": OneStepGD(eta.overall),
    }
    if task.config.w_family == "unitary":
        baselines["LastPair"] = LastPair()
    if task.config.w_family == "rotations":
        baselines["CosineRecurrence"] = CosineRecurrence(task.basis)
    return baselines, {"overall": eta.overall, "method": eta.method}


def evaluate_autoregressive_model(
    model: torch.nn.Module, task, n_sequences: int, seed: int, batch_size: int = 4096
) -> dict:
    """The model ("PT") against the autoregressive baselines; Delta of PT vs each of them."""
    baselines, eta = autoregressive_baselines(task)

    def pretrained(inputs: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        prediction = model(inputs)
        return prediction if prediction.is_complex() else prediction.float()

    predictors = {MODEL_NAME: pretrained, **baselines}
    pairs = tuple((MODEL_NAME, name) for name in baselines if name != "Oracle")
    result = evaluate(task, predictors, pairs, n_sequences, seed, batch_size, ("true",))
    return {**result, "one_step_gd_eta": eta}
