"""The public Python API, for notebooks and scripts; the command line calls the same functions.

    import iclab
    config = iclab.load_config("tiny", {"task.n_tasks": 64, "train.steps": 500})
    run = iclab.train(config, out="runs/m64")
    run.metrics                      # one row per periodic evaluation (a pandas DataFrame)
    run.errors_per_position()        # the final evaluation, one row per (distribution, metric, position)
    run.predict(xs, ys)              # the trained model's predictions at every position
    iclab.results_table("demo_out")  # the tidy table of a sweep

pandas is a dependency because the tables here are DataFrames: what researchers plot and filter.
"""

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

import torch

from iclab import config as _config
from iclab.config import RunConfig
from iclab.evaluation import flat_means, metric_labels
from iclab.training import RunDirectory

Overrides = Mapping[str, object] | Sequence[str]


def load_config(preset_or_path: str | Path, overrides: Overrides = ()) -> RunConfig:
    """A validated run config from a preset name (see `iclab presets`) or a TOML file, with
    overrides: a dict of dotted keys ({"task.n_tasks": 64}, None or "inf" for M = infinity) or
    the command line's "key=value" strings."""
    return _config.load_config(preset_or_path, overrides)


class Run:
    """A run directory: its config, metrics and evaluation, and its trained model."""

    def __init__(self, path: str | Path):
        self.directory = RunDirectory(path)
        if not self.directory.has_config():
            raise _config.ConfigError(
                f"{str(self.directory.path)!r} is not an iclab run directory: it has no config.toml"
            )

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    @property
    def path(self) -> Path:
        return self.directory.path

    @cached_property
    def config(self) -> RunConfig:
        return self.directory.config()

    @property
    def status(self) -> str:
        """complete, failed, interrupted or pending."""
        return self.directory.status()

    @property
    def evaluation(self) -> dict:
        """The final evaluation (eval.json) of a complete run."""
        return self.directory.evaluation()

    @property
    def metrics(self):
        """The periodic evaluations as a DataFrame: step, train_loss, lr and one column per
        distribution and metric averaged over positions, named "DISTRIBUTION.METRIC_NAME"
        (regression: "true.mse_PT", "pretrain.delta_PT,Ridge")."""
        import pandas as pd

        rows = [
            {
                **{key: record[key] for key in ("step", "train_loss", "lr")},
                **flat_means(record["eval"]),
            }
            for record in self.directory.metrics()
        ]
        return pd.DataFrame(rows)

    def errors_per_position(self, evaluation: dict | None = None):
        """An evaluation (default: the final one) as a tidy DataFrame with columns distribution,
        metric, name (predictor or pair), position (0-based) and value."""
        import pandas as pd

        evaluation = evaluation or self.evaluation
        rows = [
            (distribution, metric, name, position, value)
            for distribution, result in evaluation["distributions"].items()
            for metric in metric_labels(evaluation)
            for name, values in result[metric].items()
            for position, value in enumerate(values)
        ]
        return pd.DataFrame(rows, columns=["distribution", "metric", "name", "position", "value"])

    @cached_property
    def _trained(self):
        from iclab.experiment import load_trained

        return load_trained(self.directory)

    @property
    def model(self) -> torch.nn.Module:
        """The model at the run's last checkpoint, in eval mode."""
        return self._trained[1]

    @property
    def task(self):
        """The run's task (sampler and evaluation distributions), on the model's device."""
        return self._trained[2]

    @torch.inference_mode()
    def predict(self, *arguments) -> torch.Tensor:
        """The model's predictions at every position, called as the model is (regression:
        predict(xs, ys) with xs (batch, n_points, n_dims), ys (batch, n_points); autoregressive:
        predict(states) with states (batch, T, d)); arrays become float32 (complex64 if complex)
        tensors on the model's device."""
        device = next(self.model.parameters()).device
        tensors = [torch.as_tensor(a, device=device) for a in arguments]
        tensors = [t.to(torch.complex64 if t.is_complex() else torch.float32) for t in tensors]
        return self.model(*tensors)

    def evaluate(self, n_sequences: int | None = None, replace: bool = False) -> dict:
        """Evaluate the checkpoint again on n_sequences (default: the run's eval.n_sequences);
        written to reevaluation.json beside the run's own eval.json, which is kept. An earlier
        reevaluation.json is replaced only with replace=True (else a ConfigError)."""
        from iclab.experiment import evaluate_run

        return evaluate_run(self.path, n_sequences, replace)[0]


def open_run(path: str | Path) -> Run:
    """The run in directory `path`."""
    return Run(path)


def train(
    config: RunConfig,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log_to: str | None = None,
) -> Run:
    """Train `config` into run directory `out` (default runs/HASH), evaluate it, return the Run.
    A directory holding another run is refused; resume=True continues a stopped run there.
    log_to: "tensorboard" or "wandb" mirrors its evaluations and figures (iclab.tracking)."""
    from iclab.experiment import run

    if not isinstance(config, RunConfig):
        raise _config.ConfigError(f"config {config!r}: give a RunConfig (iclab.load_config)")
    out = Path("runs") / config.run_hash() if out is None else out
    run(config, out, resume=resume, progress=progress, log_to=log_to)
    return Run(out)


def sweep(
    spec,
    out: str | Path,
    executor=None,
    retry_failed: bool = False,
    progress: bool = True,
    log_to: str | None = None,
):
    """Train every run of a sweep spec (a TOML path or a loaded SweepSpec) into the sweep
    directory `out` that is not complete yet. executor: None (one local worker), "local", "ray",
    or an executor of iclab.sweeps.executors; log_to as for train, one tracked run per run,
    grouped by the sweep. Returns the SweepOutcome."""
    from iclab.sweeps.executors import make_executor
    from iclab.sweeps.runner import run_sweep
    from iclab.sweeps.spec import SweepSpec, load_spec

    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if executor is None or isinstance(executor, str):
        executor = make_executor(executor or "local")
    if not callable(getattr(executor, "run", None)):
        raise _config.ConfigError(
            f"executor {executor!r}: give None, 'local', 'ray' or an executor of "
            "iclab.sweeps.executors"
        )
    return run_sweep(spec, out, executor, retry_failed, progress, log_to)


def results_table(out: str | Path):
    """The tidy results table of a sweep directory as a DataFrame: one row per completed run and
    distribution (the columns are those of results.csv, README "Results table")."""
    import pandas as pd

    from iclab.sweeps.table import results_rows

    return pd.DataFrame(results_rows(out))
