"""`iclab forecast`: a trained autoregressive run applied to a user's multivariate time series.

Columns are channels, rows are time steps. The run was trained to predict s_{t+1} from a window
of T = n_steps states, so at every t from T - 1 on, each predictor forecasts s_{t+1} from the
window s_{t-T+1}, ..., s_t (the last window forecasts the step after the data). Each window is
scaled by one factor to the root-mean-square state norm the run was trained on and the forecast
scaled back; it is not centred, since the model and the baselines are linear dynamics
s_{t+1} = W s_t without intercept (centre a series with a mean first). Beside the PT: least
squares AR(1) fitted on the window's pairs, one step of gradient descent at the run's optimal step
size of the window's last position (what the trained linear attention should match) and persistence (s_{t+1} = s_t).
"""

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from iclab.families import MODEL_NAME, family_of
from iclab.files import atomic_write_text, write_json
from iclab.plots import plt, save_figure
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

PERSISTENCE = "Persistence"
NORM_SEQUENCES = 1024  # training sequences that measure the run's state norm
MAX_CHANNELS_DRAWN = 4


def _persistence(states: torch.Tensor, ws=None) -> torch.Tensor:
    return states


def predictors_of(config, model) -> dict:
    """The PT and its baselines, each called as predict(states (batch, T, d)) -> (batch, T, d)."""
    from iclab.estimators.autoregressive import LeastSquares, OneStepGD, optimal_eta

    return {
        MODEL_NAME: family_of(config.task).model_predictor(model),
        "LeastSquares": LeastSquares(),
        # The forecasts are the last position's, so the step size is that position's optimum.
        "OneStepGD": OneStepGD(optimal_eta(config.task).per_position[-1]),
        PERSISTENCE: _persistence,
    }


def training_norm(task) -> float:
    """Root-mean-square norm of the states a run was trained on (its model inputs), measured on
    NORM_SEQUENCES of its evaluation sequences."""
    states, _ = task.eval_sample("true", 0, 0, NORM_SEQUENCES)
    return float(states[:, :-1].abs().square().sum(-1).mean().sqrt())


WINDOWS_PER_CHUNK = 4096  # windows forecast at a time


@torch.inference_mode()
def window_forecasts(
    predictors: dict, series: torch.Tensor, length: int, norm: float
) -> dict[str, torch.Tensor]:
    """Each predictor's forecast of s_{t+1} for t = length - 1, ..., N - 1 from the window of the
    `length` states up to s_t: (N - length + 1, d) per predictor, in the series' units."""
    windows = series.unfold(0, length, 1).transpose(1, 2)  # (N - length + 1, length, d): a view
    forecasts = {name: [] for name in predictors}
    for chunk in windows.split(WINDOWS_PER_CHUNK):  # memory stays that of one chunk
        rms = chunk.square().sum(-1).mean(-1).sqrt().clamp_min(1e-12)[:, None, None]
        scaled = chunk / rms * norm
        for name, predict in predictors.items():
            forecasts[name].append(predict(scaled, None)[:, -1].real.float() / norm * rms[:, 0])
    return {name: torch.cat(parts) for name, parts in forecasts.items()}


@dataclass
class ForecastResult:
    channels: list[str]
    window: int
    first_forecast: int  # row index (0-based) of the first forecast state
    forecasts: dict[str, list[list[float]]]  # predictor -> one row of channels per forecast
    mse: dict[
        str, float
    ]  # predictor -> mean squared error per channel where the data has the truth
    paths: list[Path]


def _autoregressive_run(run_dir) -> RunDirectory:
    from iclab.tasks.autoregressive import is_complex

    run = trained_run(run_dir, "autoregressive", "forecast", "predict")
    config = run.config()
    if is_complex(config.task):
        raise DataError(
            f"{str(run.path)!r} was trained on complex states (w_family = "
            f"{config.task.w_family!r}) and cannot read a real series: train a run with "
            "w_family = 'orthogonal' or 'rotations'"
        )
    return run


def forecast_csv(run_dir: str | Path, data: str | Path, out: str | Path | None = None):
    """Apply the autoregressive run in run_dir to the series CSV `data` (see the module's
    docstring): writes the forecasts to `out` (default: DATA-STEM_forecast.csv in the working
    directory), the errors (.json) and the figure (.png) beside it; none may exist yet."""
    from iclab.experiment import load_trained

    run = _autoregressive_run(run_dir)
    config = run.config()
    table = read_table(data, "series file")
    n_dims, window = config.task.n_dims, config.task.n_steps
    if len(table.columns) != n_dims:
        raise DataError(
            f"{str(table.path)!r} has {len(table.columns)} channels (columns), the run reads "
            f"n_dims = {n_dims}: train a run with that many (--set n_dims={len(table.columns)})"
        )
    table.require_complete(range(n_dims))
    if len(table.rows) < window + 1:
        raise DataError(
            f"{str(table.path)!r} has {len(table.rows)} rows; the run's window is n_steps = "
            f"{window} states, so at least {window + 1} rows are needed for one checked forecast"
        )
    out = output_file(out, f"{table.path.stem}_forecast.csv")
    paths = [out, out.with_suffix(".json"), out.with_suffix(".png")]
    refuse_existing(*paths)

    _, model, task = load_trained(run)
    device = next(model.parameters()).device
    series = torch.tensor(table.rows, dtype=torch.float32, device=device)
    forecasts = window_forecasts(predictors_of(config, model), series, window, training_norm(task))
    truth = series[window:]
    mse = {name: float((values[:-1] - truth).square().mean()) for name, values in forecasts.items()}
    result = ForecastResult(
        table.columns,
        window,
        window,
        {name: values.tolist() for name, values in forecasts.items()},
        mse,
        paths,
    )
    require_finite_results(table.path, "forecasts", result.forecasts)
    require_finite_results(table.path, "errors", result.mse)
    atomic_write_text(paths[0], _forecast_csv(result))
    write_json(paths[1], {"run": str(run.path), "window": window, "mse_per_channel": mse})
    plot_forecast(result, table.rows, paths[2])
    return result


def _forecast_csv(result: ForecastResult) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    names = list(result.forecasts)
    writer.writerow(["row", *(f"{c}_{name}" for name in names for c in result.channels)])
    for i in range(len(result.forecasts[names[0]])):
        values = [f"{v:.6g}" for name in names for v in result.forecasts[name][i]]
        writer.writerow([result.first_forecast + i, *values])
    return text.getvalue()


def plot_forecast(result: ForecastResult, rows: list[list[float]], path: Path) -> Path:
    """The series and each predictor's one-step forecasts, one panel per channel (the first
    MAX_CHANNELS_DRAWN)."""
    shown = result.channels[:MAX_CHANNELS_DRAWN]
    figure, axes = plt.subplots(len(shown), 1, figsize=(9, 2.2 * len(shown) + 0.6), squeeze=False)
    steps = range(result.first_forecast, result.first_forecast + len(result.forecasts[MODEL_NAME]))
    for c, (axis, channel) in enumerate(zip(axes[:, 0], shown, strict=True)):
        axis.plot(range(len(rows)), [row[c] for row in rows], color="black", lw=1.5, label="series")
        for name, values in result.forecasts.items():
            style = "--" if name == PERSISTENCE else "-"
            label = f"{name} (MSE {result.mse[name]:.3g})"
            axis.plot(steps, [v[c] for v in values], style, lw=1, label=label, marker=".", ms=3)
        axis.set_ylabel(channel)
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    axes[0, 0].set_title(f"one-step forecasts from a window of {result.window} states")
    axes[-1, 0].set_xlabel("time step (row of the series)")
    figure.tight_layout()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=3)
    return save_figure(figure, path, pdf=False)


def format_forecast(result: ForecastResult) -> str:
    rows = [[name, mse, math.sqrt(mse)] for name, mse in result.mse.items()]
    checked = len(result.forecasts[MODEL_NAME]) - 1
    return (
        f"{checked} one-step forecasts checked against the series (window {result.window}), "
        f"one beyond its end\n" + format_table(["predictor", "MSE per channel", "RMSE"], rows)
    )
