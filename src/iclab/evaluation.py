"""Per-position errors and Delta metrics of predictors on a task family's named distributions.

Every predictor (trained model or estimator) is called as predictor(*arguments) on an evaluation
chunk and returns predictions per position; the task's prediction_batch gives (arguments, target).
The metrics are the task family's (iclab.families: Family.predictor_metrics, pair_metrics),
averaged over sequences and divided by the family's metric scale; for regression (D, as the papers
report them):

    mse[name][k]      = E[(f(S_k) - y_k)^2] / D
    delta["A,B"][k]   = E[(f_A(S_k) - f_B(S_k))^2] / D      (Delta_{A,B} of papers.md, per position)

and `*_mean` are the averages over positions, `*_mean_se` their standard errors over sequences (of
each sequence's average over positions); the evaluation's "metric_labels" name every metric
for tables. Which predictors, pairs and distributions a model is evaluated on is also the family's
choice.
"""

from collections.abc import Callable

import torch

from iclab.families import MODEL_NAME, family_of

# What evaluations written before they named their metrics ("metric_labels") hold.
LEGACY_METRIC_LABELS = {"mse": "MSE/D", "delta": "Delta"}


def metric_labels(evaluation: dict) -> dict[str, str]:
    """Metric name -> label of an evaluation (e.g. "mse" -> "MSE/D"), in the family's order."""
    return evaluation.get("metric_labels", LEGACY_METRIC_LABELS)


def metric_means(evaluation: dict, distribution: str) -> dict[str, float]:
    """Every metric of one distribution averaged over positions, keyed METRIC_NAME (for example
    "delta_PT,Ridge")."""
    result = evaluation["distributions"][distribution]
    return {
        f"{metric}_{name}": value
        for metric in metric_labels(evaluation)
        for name, value in result[f"{metric}_mean"].items()
    }


def flat_means(evaluation: dict, separator: str = ".") -> dict[str, float]:
    """metric_means of every distribution, keyed DISTRIBUTION + separator + METRIC_NAME (for
    example "true.delta_PT,Ridge"): what trackers and DataFrames show of an evaluation."""
    return {
        f"{distribution}{separator}{key}": value
        for distribution in evaluation["distributions"]
        for key, value in metric_means(evaluation, distribution).items()
    }


def _error_table(batches, predictors: dict, pairs, metrics: tuple, n_sequences, scale) -> dict:
    """Every predictor metric per predictor and every pair metric per pair, per position
    (divided by n_sequences and scale) and averaged over positions, over `batches` of
    (predictor arguments, target). metrics: (predictor metrics, pair metrics) of the family."""
    predictor_metrics, pair_metrics = metrics
    names = (*predictor_metrics, *pair_metrics)
    sums: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    squares: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}  # of sequence means

    def add(metric: str, key: str, values: torch.Tensor) -> None:
        sums[metric][key] = sums[metric].get(key, 0) + values.sum(0)
        squares[metric][key] = squares[metric].get(key, 0) + values.double().mean(-1).square().sum()

    for arguments, target in batches:
        outputs: dict[int, torch.Tensor] = {}  # one call per predictor object: at M = inf the
        # pool's Bayes estimator is the prior's, and a Monte-Carlo one costs seconds per chunk
        predictions = {}
        for name, predict in predictors.items():
            if id(predict) not in outputs:
                outputs[id(predict)] = predict(*arguments)
            predictions[name] = outputs[id(predict)]
        for metric, definition in predictor_metrics.items():
            for name, prediction in predictions.items():
                add(metric, name, definition.values(prediction, target))
        for metric, definition in pair_metrics.items():
            for a, b in pairs:
                add(metric, f"{a},{b}", definition.values(predictions[a], predictions[b]))
    table = {}
    for metric, totals in sums.items():
        per_position = {
            key: (total / (n_sequences * scale)).tolist() for key, total in totals.items()
        }
        table[metric] = per_position
        table[f"{metric}_mean"] = {key: sum(v) / len(v) for key, v in per_position.items()}
        table[f"{metric}_mean_se"] = {
            key: _standard_error(table[f"{metric}_mean"][key] * scale, total, n_sequences) / scale
            for key, total in squares[metric].items()
        }
    return table


def _standard_error(mean: float, sum_of_squares: torch.Tensor, n_sequences: int) -> float:
    """Standard error of a mean over n_sequences values, from their mean and sum of squares."""
    if n_sequences < 2:
        return float("nan")
    variance = (float(sum_of_squares) - n_sequences * mean**2) / (n_sequences - 1)
    return max(variance, 0.0) ** 0.5 / n_sequences**0.5


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

    results = {
        distribution: error_table(
            task.config, batches(distribution), predictors, pairs, n_sequences
        )
        for distribution in distributions or family.distributions
    }
    return {
        "n_sequences": n_sequences,
        "metric_labels": family_metric_labels(task.config),
        "distributions": results,
    }


def error_table(task_config, batches, predictors: dict, pairs, n_sequences: int) -> dict:
    """The family's metrics of `predictors` and `pairs` over `batches` of (predictor arguments,
    target) holding n_sequences sequences in all: one distribution's entry of an evaluation."""
    family = family_of(task_config)
    metrics = (family.predictor_metrics(task_config), family.pair_metrics(task_config))
    scale = family.metric_scale(task_config)
    return _error_table(batches, predictors, pairs, metrics, n_sequences, scale)


def family_metric_labels(task_config) -> dict[str, str]:
    """Metric name -> label of the family's metrics (what evaluations store as metric_labels)."""
    family = family_of(task_config)
    metrics = (family.predictor_metrics(task_config), family.pair_metrics(task_config))
    return {name: metric.label for group in metrics for name, metric in group.items()}


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
