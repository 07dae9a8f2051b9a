"""`iclab predict`: a trained regression run applied to the rows of a user's CSV.

Rows whose target cell is filled are the context, rows whose target is empty are the queries; the
rows are exchangeable, so every query is predicted from the whole context, placed after it. The
run saw at most n_points - 1 examples before a query, so a longer context keeps its last
n_points - 1 rows. The features are standardised with the context's mean and standard deviation,
and the target with the context's mean and standard deviation scaled to the spread the run was
trained on (sqrt(n_dims prior_std^2 + noise_std^2)); predictions are mapped back to the data's
units. Beside the PT: Ridge with the run's prior (the Bayes estimator of new tasks) and
least squares (minimum-norm), on the same standardised rows. Each predictor's error on the context
is estimated by leave-one-out: every context row predicted from the others (standardised with
their statistics only).
"""

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from iclab.families import MODEL_NAME, family_of
from iclab.files import atomic_write_text, write_json
from iclab.results import format_table
from iclab.training import RunDirectory
from iclab.user_data import trained_run
from iclab.user_data.csv_table import (
    DataError,
    output_file,
    read_table,
    refuse_existing,
    require_finite_results,
)

MIN_CONTEXT = 3  # leave-one-out standardises with two rows


@dataclass(frozen=True)
class Standardisation:
    """Affine maps from the data's units to the run's and back, from a context's statistics."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float
    y_std: float
    y_scale: float  # the target's standard deviation in the run's training data

    @classmethod
    def of(cls, xs: torch.Tensor, ys: torch.Tensor, y_scale: float) -> "Standardisation":
        x_std = xs.std(0)
        y_std = float(ys.std())
        return cls(
            xs.mean(0),
            torch.where(x_std > 0, x_std, 1.0),  # a constant column is only centred
            float(ys.mean()),
            y_std if y_std > 0 else 1.0,
            y_scale,
        )

    def features(self, xs: torch.Tensor) -> torch.Tensor:
        return (xs - self.x_mean) / self.x_std

    def target(self, ys: torch.Tensor) -> torch.Tensor:
        return (ys - self.y_mean) / self.y_std * self.y_scale

    def back(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions / self.y_scale * self.y_std + self.y_mean


def training_target_std(task_config) -> float:
    """The standard deviation of y in a run's training data: sqrt(n_dims prior_std^2 +
    noise_std^2)."""
    return math.sqrt(task_config.n_dims * task_config.prior_std**2 + task_config.noise_std**2)


def predictors_of(config, model) -> dict:
    """The PT and its baselines, each called as predict(xs, ys)."""
    from iclab.estimators.regression import LeastSquares, Ridge

    task = config.task
    return {
        MODEL_NAME: family_of(task).model_predictor(model),
        "Ridge": Ridge(noise_std=task.noise_std, prior_std=task.prior_std),
        "LeastSquares": LeastSquares(),
    }


# Queries are predicted this many at a time (one sequence each): a file of 300k queries took
# 19 GB at once.
QUERIES_PER_CHUNK = 4096


@torch.inference_mode()
def in_context_predictions(
    predictors: dict, xs: torch.Tensor, ys: torch.Tensor, queries: torch.Tensor, y_scale: float
) -> dict[str, torch.Tensor]:
    """Each predictor's prediction (data units) for each query row (n_queries, n_dims) after the
    context xs (n_context, n_dims), ys (n_context,)."""
    if len(queries) > QUERIES_PER_CHUNK:  # memory stays that of one chunk's sequences
        chunks = [
            in_context_predictions(predictors, xs, ys, chunk, y_scale)
            for chunk in queries.split(QUERIES_PER_CHUNK)
        ]
        return {name: torch.cat([chunk[name] for chunk in chunks]) for name in predictors}
    xs, ys, queries = xs.double(), ys.double(), queries.double()  # data units can be large
    scale = Standardisation.of(xs, ys, y_scale)
    n, c = len(queries), len(xs)
    sequence_xs = torch.cat(
        [scale.features(xs).expand(n, c, -1), scale.features(queries)[:, None]], 1
    ).float()
    sequence_ys = torch.cat([scale.target(ys).expand(n, c), ys.new_zeros(n, 1)], 1).float()
    return {
        name: scale.back(predict(sequence_xs, sequence_ys)[:, -1].double())
        for name, predict in predictors.items()
    }


def leave_one_out(predictors: dict, xs: torch.Tensor, ys: torch.Tensor, y_scale: float) -> dict:
    """Mean squared error (data units) of each predictor over the context rows, each predicted
    from the others."""
    errors = {name: 0.0 for name in predictors}
    for i in range(len(xs)):
        others = torch.arange(len(xs)) != i
        predicted = in_context_predictions(
            predictors, xs[others], ys[others], xs[i : i + 1], y_scale
        )
        for name, value in predicted.items():
            errors[name] += float((value[0] - ys[i]) ** 2) / len(xs)
    return errors


@dataclass
class PredictionResult:
    target: str
    features: list[str]
    n_context: int  # context rows used
    n_dropped: int  # earlier context rows left out (beyond n_points - 1)
    queries: list[list[float]]  # the query rows' features, in file order
    predictions: dict[str, list[float]]  # predictor -> one per query
    leave_one_out_mse: dict[str, float]  # predictor -> MSE on the context, in the target's units
    paths: list[Path]


def predict_csv(
    run_dir: str | Path, data: str | Path, out: str | Path | None = None, target: str | None = None
) -> PredictionResult:
    """Apply the regression run in run_dir to the CSV `data` (see the module's docstring): writes
    the query rows with each predictor's prediction to `out` (default: DATA-STEM_predictions.csv
    in the working directory) and the summary beside it (.json); neither may exist yet."""
    from iclab.experiment import load_trained

    run = trained_run(run_dir, "regression", "predict", "forecast")
    config = run.config()
    table = read_table(data, "data file")
    target = table.columns[-1] if target is None else target
    if target not in table.columns:
        raise DataError(f"no column {target!r} in {str(table.path)!r}; columns: {table.columns}")
    t = table.columns.index(target)
    feature_columns = [i for i in range(len(table.columns)) if i != t]
    n_dims = config.task.n_dims
    if len(feature_columns) != n_dims:
        raise DataError(
            f"{str(table.path)!r} has {len(feature_columns)} feature columns besides the target "
            f"{target!r}, the run reads n_dims = {n_dims}: train a run with that many, e.g. "
            f"`iclab train tiny --set n_dims={len(feature_columns)}`"
        )
    table.require_complete(feature_columns)
    context = [row for row in table.rows if row[t] is not None]
    queries = [[row[i] for i in feature_columns] for row in table.rows if row[t] is None]
    if len(context) < MIN_CONTEXT:
        raise DataError(
            f"{str(table.path)!r} has {len(context)} context rows (rows with the target {target!r} "
            f"filled); at least {MIN_CONTEXT} are needed"
        )
    room = config.task.n_points - 1  # examples the run sees before a query
    if room < MIN_CONTEXT:
        raise DataError(
            f"the run sees {room} examples before a query; at least {MIN_CONTEXT} are needed"
        )
    kept = context[-room:]
    out = output_file(out, f"{table.path.stem}_predictions.csv")
    summary = out.with_suffix(".json")
    refuse_existing(out, summary)

    _, model, _ = load_trained(run)
    predictors = predictors_of(config, model)
    device = next(model.parameters()).device
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.float64, device=device)  # noqa: E731
    xs = as_tensor([[row[i] for i in feature_columns] for row in kept])
    ys = as_tensor([row[t] for row in kept])
    y_scale = training_target_std(config.task)
    predictions = {name: [] for name in predictors}
    if queries:
        found = in_context_predictions(predictors, xs, ys, as_tensor(queries), y_scale)
        predictions = {name: values.tolist() for name, values in found.items()}
    result = PredictionResult(
        target,
        [table.columns[i] for i in feature_columns],
        len(kept),
        len(context) - len(kept),
        queries,
        predictions,
        leave_one_out(predictors, xs, ys, y_scale),
        [out, summary],
    )
    require_finite_results(table.path, "predictions", result.predictions)
    require_finite_results(table.path, "leave-one-out errors", result.leave_one_out_mse)
    atomic_write_text(out, _predictions_csv(result))
    write_json(summary, _summary(result, run))
    return result


def _predictions_csv(result: PredictionResult) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([*result.features, *(f"{result.target}_{name}" for name in result.predictions)])
    for i, features in enumerate(result.queries):
        writer.writerow(
            [*features, *(f"{values[i]:.6g}" for values in result.predictions.values())]
        )
    return text.getvalue()


def _summary(result: PredictionResult, run: RunDirectory) -> dict:
    return {
        "run": str(run.path),
        "target": result.target,
        "features": result.features,
        "context_rows_used": result.n_context,
        "context_rows_dropped": result.n_dropped,
        "queries": len(result.queries),
        "leave_one_out_mse": result.leave_one_out_mse,
        "standardisation": "features and target by the context's mean and standard deviation, "
        "the target scaled to the run's training spread; predictions in the target's units",
    }


def format_prediction(result: PredictionResult) -> str:
    dropped = (
        f" ({result.n_dropped} earlier rows dropped: the run sees at most {result.n_context})"
        if result.n_dropped
        else ""
    )
    rows = [[name, mse, math.sqrt(mse)] for name, mse in result.leave_one_out_mse.items()]
    table = format_table(["predictor", "leave-one-out MSE", "RMSE"], rows)
    return (
        f"context: {result.n_context} rows{dropped}; {len(result.queries)} queries; target "
        f"{result.target!r}, features {result.features}\n{table}"
    )
