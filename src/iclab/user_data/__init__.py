"""In-context prediction on a user's own data: a trained regression run applied to a CSV of rows
(predict.py), an autoregressive run applied to a multivariate time series (forecast.py), each
beside honest baselines; csv_table.py reads and checks the files; example_data.py writes small
synthetic ones."""

from iclab.training import RunDirectory
from iclab.user_data.csv_table import DataError


def trained_run(run_dir, family: str, command: str, other: str) -> RunDirectory:
    """The run in run_dir, trained (a checkpoint) and of task `family`; else a DataError naming
    what `command` needs (and `other`, the command for the other kind of run)."""
    run = RunDirectory(run_dir)
    if not run.has_config():
        raise DataError(f"{str(run.path)!r} is not an iclab run directory: it has no config.toml")
    if not run.has_checkpoint():
        raise DataError(f"{str(run.path)!r} has no checkpoint: train the run first")
    found = run.config().task.family
    if found != family:
        raise DataError(
            f"{str(run.path)!r} is a {found!r} run: iclab {command} applies {family} runs "
            f"(iclab {other} applies the others)"
        )
    return run
