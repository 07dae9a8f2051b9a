"""`iclab status` and `iclab results` on an autoregressive sweep (before the family registry,
results crashed on one), and on a sweep directory holding runs of both task families."""

import csv
import dataclasses
import math

import pytest
from helpers import tiny_overrides

from iclab.cli import main
from iclab.sweeps.executors import LocalExecutor
from iclab.sweeps.runner import run_sweep, status_rows
from iclab.sweeps.spec import load_spec
from iclab.sweeps.table import RESULTS_CSV, results_rows, write_results

BASE_CONFIG = """
[task]
family = "autoregressive"
n_dims = 2
n_steps = 6

[model]
family = "linear_attention"

[train]
steps = 20
batch_size = 16
lr = 0.01
log_every = 10
eval_every = 10
eval_sequences = 64
checkpoint_every = 10
device = "cpu"

[eval]
n_sequences = 128
"""
AR_METRICS = ("true PT,OneStepGD", "true PT,LeastSquares")
REGRESSION_METRICS = ("true PT,Ridge", "true PT,dMMSE", "pretrain PT,dMMSE")


def write_autoregressive_spec(tmp_path):
    (tmp_path / "base.toml").write_text(BASE_CONFIG)
    path = tmp_path / "ar_spec.toml"
    path.write_text(
        'base = "base.toml"\n[grid]\nseed = [0, 1]\nw_family = ["unitary", "rotations"]\n'
    )
    return path


@pytest.fixture(scope="module")
def ar_sweep(tmp_path_factory):
    """A complete autoregressive sweep of 4 runs (seed x w_family), trained in this process."""
    tmp_path = tmp_path_factory.mktemp("ar_sweep")
    spec = load_spec(write_autoregressive_spec(tmp_path))
    out = tmp_path / "sweep"
    outcome = run_sweep(spec, out, LocalExecutor(threads_per_run=1), progress=False)
    assert len(outcome.completed) == 4 and not outcome.failed
    return spec, out


def _is_number(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def test_status_shows_the_autoregressive_metrics(ar_sweep):
    spec, out = ar_sweep
    header, rows = status_rows(out)
    assert header == ["run", "status", "seed", "w_family", "step", *AR_METRICS, "note"]
    assert [row[0] for row in rows] == [run.run_hash for run in spec.runs()]
    assert [row[1] for row in rows] == ["complete"] * 4
    assert [(row[2], row[3]) for row in rows] == [
        (0, "unitary"), (0, "rotations"), (1, "unitary"), (1, "rotations")
    ]  # fmt: skip
    assert all(row[header.index("step")] == 20 for row in rows)
    for row in rows:
        assert all(_is_number(row[header.index(metric)]) for metric in AR_METRICS), row


def test_results_rows_of_an_autoregressive_sweep(ar_sweep):
    spec, out = ar_sweep
    rows = results_rows(out)
    assert len(rows) == 4  # one evaluated distribution ("true") per run
    assert {row["distribution"] for row in rows} == {"true"}
    assert {row["family"] for row in rows} == {"autoregressive"}
    assert {(row["seed"], row["w_family"]) for row in rows} == {
        (0, "unitary"), (0, "rotations"), (1, "unitary"), (1, "rotations")
    }  # fmt: skip
    assert all(row["n_dims"] == 2 and row["n_steps"] == 6 for row in rows)
    assert "n_tasks" not in rows[0]  # a regression column
    for row in rows:
        for column in ("mse_PT", "mse_Oracle", "delta_PT,OneStepGD", "delta_PT,LeastSquares"):
            assert _is_number(row[column]), (column, row)
    # Each W family's exact shortcut is a baseline of its own runs only.
    unitary = next(row for row in rows if row["w_family"] == "unitary")
    rotations = next(row for row in rows if row["w_family"] == "rotations")
    assert _is_number(unitary["delta_PT,LastPair"]) and "delta_PT,LastPair" not in rotations
    assert _is_number(rotations["delta_PT,CosineRecurrence"])
    # The oracle is exact on noiseless sequences.
    assert all(row["mse_Oracle"] < 1e-6 for row in rows)

    paths = write_results(out)
    assert paths[0] == out / RESULTS_CSV
    with paths[0].open() as file:
        table = list(csv.DictReader(file))
    assert len(table) == 4 and {row["family"] for row in table} == {"autoregressive"}
    assert all(math.isfinite(float(row["delta_PT,OneStepGD"])) for row in table)


def test_status_and_results_commands_on_an_autoregressive_sweep(ar_sweep, capsys):
    _, out = ar_sweep
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(metric in printed for metric in AR_METRICS)
    assert printed.count("complete") == 4
    assert main(["results", str(out)]) == 0
    assert str(out / RESULTS_CSV) in capsys.readouterr().out
    assert (out / RESULTS_CSV).stat().st_size > 0


def test_a_sweep_directory_with_both_families(tmp_path):
    ar_spec = load_spec(write_autoregressive_spec(tmp_path))
    regression_path = tmp_path / "regression_spec.toml"
    fixed = "\n".join(tiny_overrides(steps=20, eval_every=10, checkpoint_every=10))
    regression_path.write_text(f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [2]\n')
    regression_spec = load_spec(regression_path)
    ar_only = dataclasses.replace(ar_spec, grid={"seed": [0]})
    out = tmp_path / "sweep"
    for spec in (regression_spec, ar_only):
        outcome = run_sweep(spec, out, LocalExecutor(threads_per_run=1), progress=False)
        assert len(outcome.completed) == 1 and not outcome.failed

    header, rows = status_rows(out)
    assert header == [
        "run",
        "status",
        "n_tasks",
        "seed",
        "step",
        *REGRESSION_METRICS,
        *AR_METRICS,
        "note",
    ]
    regression_row, ar_row = rows
    assert [regression_row[1], ar_row[1]] == ["complete", "complete"]
    assert regression_row[2:4] == [2, ""] and ar_row[2:4] == ["", 0]
    # Each run shows its own family's metrics and leaves the other family's blank.
    for metric in REGRESSION_METRICS:
        assert (
            _is_number(regression_row[header.index(metric)]) and ar_row[header.index(metric)] == ""
        )
    for metric in AR_METRICS:
        assert (
            _is_number(ar_row[header.index(metric)]) and regression_row[header.index(metric)] == ""
        )

    rows = results_rows(out)
    assert sorted((row["family"], row["distribution"]) for row in rows) == [
        ("autoregressive", "true"), ("regression", "pretrain"), ("regression", "true")
    ]  # fmt: skip
    with write_results(out)[0].open() as file:
        table = list(csv.DictReader(file))
    assert {"n_tasks", "w_family", "delta_PT,Ridge", "delta_PT,OneStepGD"} <= set(table[0])
    assert sorted(row["family"] for row in table) == ["autoregressive", "regression", "regression"]
