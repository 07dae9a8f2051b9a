"""Every command the README shows runs end to end through the `iclab` console script, at
miniature settings, and the README shows no command that is not exercised here."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iclab import results_table
from iclab.config import preset_names

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("iclab")
SMALL = ["steps=8", "eval_every=4", "checkpoint_every=4", "n_sequences=64", "eval_sequences=32"]
SET = [arg for value in SMALL for arg in ("--set", value)]
TESTED = {"presets", "train", "eval", "demo", "analyze", "reproduce", "sweep", "status"}
TESTED |= {"results", "plot", "threshold", "bench", "tstar", "interpolate"}
TESTED |= {"predict", "forecast", "make-example-data"}


def iclab(*args, expect: int = 0) -> str:
    done = subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == expect, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_every_command_in_the_readme_is_tested_here():
    text = (ROOT / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```\n(.*?)```", text, re.S))
    shown = set(re.findall(r"^\s*iclab ([a-z-]+)", blocks, re.M))
    shown |= set(re.findall(r"`iclab ([a-z-]+)[^`]*`", text))
    assert shown, "no commands found: the pattern no longer matches the README"
    assert shown <= TESTED, f"README commands without an end-to-end test: {shown - TESTED}"


def test_the_readme_names_every_preset():
    text = (ROOT / "README.md").read_text()
    listed = re.search(r"`CONFIG` is a TOML file or a preset name \((.*?)\)", text, re.S).group(1)
    assert set(re.findall(r"`([a-z-]+)`", listed)) >= set(preset_names())


def test_train_eval_and_the_presets(tmp_path):
    assert "autoregressive-linear" in iclab("presets")
    run = tmp_path / "run"
    iclab("train", "tiny", *SET, "--out", run, "--no-progress")
    assert json.loads((run / "eval.json").read_text())["n_sequences"] == 64
    assert "reevaluation" in iclab("eval", run, "--n-sequences", "32")
    assert json.loads((run / "reevaluation.json").read_text())["n_sequences"] == 32


def test_demo_with_overrides(tmp_path):
    out = tmp_path / "demo"
    printed = iclab("demo", "--out", out, *SET, "--no-progress", expect=1)  # too short to hold
    assert "Bayesian regime" in printed and (out / "task_diversity.png").stat().st_size > 10_000
    assert "complete" in iclab("status", out)


def test_sweep_status_results_plot_threshold(tmp_path):
    spec = tmp_path / "spec.toml"
    fixed = "\n".join(value.replace("=", " = ") for value in SMALL)
    spec.write_text(
        f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [1, 4, "inf"]\nbatch_size = [8, 16]\n'
        '[threshold]\ncriterion = "fraction"\n'
    )
    out = tmp_path / "sweep"
    iclab("sweep", spec, "--out", out, "--no-progress")
    assert iclab("status", out).count("complete") == 6
    iclab("results", out)
    assert (out / "results.csv").read_text().count("\n") == 1 + 6 * 2
    # results.parquet and iclab.results_table hold the table of results.csv.
    from_csv = pd.read_csv(out / "results.csv")
    for table in (pd.read_parquet(out / "results.parquet"), results_table(out)):
        assert list(table.columns) == list(from_csv.columns) and len(table) == 12
        for column in from_csv.columns:
            if pd.api.types.is_float_dtype(from_csv[column]):
                np.testing.assert_allclose(table[column].astype(float), from_csv[column])
            else:
                assert table[column].astype(str).tolist() == from_csv[column].astype(str).tolist()
    iclab("plot", out, "--m", "1", "inf")
    assert (out / "task_diversity.png").exists() and (out / "mse_per_position_by_M.png").exists()
    assert "threshold:" in iclab("threshold", spec, "--out", out, "--no-progress")
    assert json.loads((out / "threshold.json").read_text())["criterion"] == "fraction"


@pytest.mark.parametrize(
    "study, preset, expected",
    [
        ("autoregressive", None, "one-step GD"),  # fixed settings: no --preset
        ("task-diversity", "cpu", "Threshold M*"),
        ("task-diversity", "tstar-cpu", "The exponent"),
        ("task-diversity", "dimensions-cpu", "M* bracket"),
    ],
)
def test_reproduce_quick(tmp_path, study, preset, expected):
    out = tmp_path / study
    done = subprocess.run(
        [SCRIPT, "reproduce", study, *(["--preset", preset] if preset else []), "--quick"]
        + ["--out", out, "--no-progress", "--workers", "1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "pipeline check" in report and f"report: {out / 'report.md'}" in done.stdout
    assert expected in report


def test_tstar_and_interpolate(tmp_path):
    spec = tmp_path / "spec.toml"
    fixed = "\n".join(value.replace("=", " = ") for value in SMALL)
    spec.write_text(
        f'base = "tiny"\n[set]\n{fixed}\nevals_per_doubling = 2\n[grid]\nn_tasks = [2, 8, "inf"]\n'
    )
    out = tmp_path / "sweep"
    iclab("sweep", spec, "--out", out, "--no-progress")
    assert "Evaluated on the true prior" in iclab("tstar", out)
    assert (out / "tstar.png").exists() and (out / "tstar.md").exists()
    run = next(
        p for p in (out / "runs").iterdir() if "n_tasks = 8" in (p / "config.toml").read_text()
    )
    assert "alpha" in iclab("interpolate", run, "--pairs", "4", "--sequences-per-pair", "4")
    assert (run / "interpolation.png").exists()


def test_analyze_and_bench(tmp_path):
    run = tmp_path / "run"
    iclab("train", "autoregressive-linear", *SET, "--out", run, "--no-progress")
    assert "one-step GD fit" in iclab("analyze", run, "--n-sequences", "32")
    assert "usage" in iclab("bench", "--help").lower()


def test_predict_and_forecast_on_the_example_data(tmp_path):
    data = tmp_path / "example_data"
    iclab("make-example-data", "--out", data)
    regression, autoregressive = tmp_path / "regression", tmp_path / "ar"
    iclab("train", "tiny", *SET, "--out", regression, "--no-progress")
    out = tmp_path / "predictions.csv"
    printed = iclab("predict", regression, data / "regression.csv", "--out", out)
    assert "leave-one-out MSE" in printed and out.read_text().count("\n") == 1 + 5
    real = ["--set", "w_family=orthogonal", "--set", "n_dims=3"]
    iclab("train", "autoregressive-linear", *SET, *real, "--out", autoregressive, "--no-progress")
    out = tmp_path / "forecast.csv"
    assert "Persistence" in iclab("forecast", autoregressive, data / "series.csv", "--out", out)
    assert out.with_suffix(".png").exists()
