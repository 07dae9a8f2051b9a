import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import snapshot, tiny_overrides

import iclab
from iclab.cli import build_parser, main
from iclab.config import ConfigError

CONFIG = """
[task]
n_dims = 4
n_points = 8
n_tasks = 16
noise_std = 0.5
"""


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG)
    return path


def set_args(**extra) -> list[str]:
    return [arg for override in tiny_overrides(**extra) for arg in ("--set", override)]


def test_train_then_eval_end_to_end(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(config_file), "--out", str(out), "--no-progress", *set_args()])
    assert code == 0
    for name in ("config.toml", "metrics.jsonl", "checkpoint.safetensors", "eval.json"):
        assert (out / name).is_file(), name
    assert (out / "mse_per_position.png").stat().st_size > 10_000
    evaluation = json.loads((out / "eval.json").read_text())
    true = evaluation["distributions"]["true"]
    assert len(true["mse"]["PT"]) == 8 and evaluation["n_sequences"] == 128
    # On the true prior Ridge is the posterior mean, so no predictor beats it by more than noise.
    assert true["mse_mean"]["Ridge"] <= true["mse_mean"]["PT"] + 0.05
    printed = capsys.readouterr().out
    assert "Delta PT,Ridge" in printed and "MSE/D dMMSE" in printed

    final = (out / "eval.json").read_bytes()
    assert main(["eval", str(out), "--n-sequences", "256"]) == 0
    assert json.loads((out / "reevaluation.json").read_text())["n_sequences"] == 256
    assert (out / "eval.json").read_bytes() == final  # the run's own result is never replaced
    # An earlier re-evaluation is replaced only when asked.
    before = snapshot(out)
    assert main(["eval", str(out), "--n-sequences", "128"]) == 2
    assert "pass --replace" in capsys.readouterr().err and snapshot(out) == before
    assert main(["eval", str(out), "--n-sequences", "128", "--replace"]) == 0
    assert json.loads((out / "reevaluation.json").read_text())["n_sequences"] == 128
    # The Python API checks the count as eval.n_sequences is checked, before writing anything.
    before = snapshot(out)
    for bad in (-5, 0, 2.5):
        with pytest.raises(ConfigError, match=f"eval.n_sequences = {bad} is not allowed"):
            iclab.open_run(out).evaluate(bad, replace=True)
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("n_tasks=0", "task.n_tasks = 0"),
        ("n_dims=0", "task.n_dims = 0"),
        ("noise_std=-1", "task.noise_std = -1"),
        ("n_heads=3", "n_heads"),
        ("lr=abc", "lr"),
        ("colour=red", "colour"),
    ],
)
def test_config_errors_exit_2_and_write_nothing(config_file, tmp_path, capsys, bad, named):
    out = tmp_path / "never"
    before = snapshot(tmp_path)
    assert main(["train", str(config_file), "--out", str(out), "--set", bad]) == 2
    assert snapshot(tmp_path) == before and not out.exists()
    error = capsys.readouterr().err
    assert "config error" in error and named in error and error.count("\n") == 1


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "x")]) == 2
    assert "nope.toml' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_existing_run_is_not_overwritten(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(config_file), "--out", str(out), "--no-progress", *set_args(steps=20)]
    assert main(args) == 0
    checkpoint = (out / "checkpoint.safetensors").read_bytes()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoint.safetensors").read_bytes() == checkpoint


def test_console_script_lists_presets():
    script = Path(sys.executable).with_name("iclab")
    listing = subprocess.run([script, "presets"], capture_output=True, text=True, check=True)
    assert all(name in listing.stdout for name in ("base", "small", "tiny"))
    assert all(f"autoregressive-{m}" in listing.stdout for m in ("linear", "diagonal", "pe-only"))


@pytest.mark.parametrize(
    "preset", ["autoregressive-linear", "autoregressive-diagonal", "autoregressive-pe-only"]
)
def test_autoregressive_presets_train_and_analyze_through_the_console_script(tmp_path, preset):
    """A newcomer's path: train a bundled autoregressive preset, then `iclab analyze` it."""
    script = Path(sys.executable).with_name("iclab")
    out = tmp_path / "run"
    small = [
        "steps=20",
        "eval_every=10",
        "checkpoint_every=10",
        "eval_sequences=64",
        "n_sequences=64",
    ]
    overrides = [arg for value in small for arg in ("--set", value)]
    train = [script, "train", preset, *overrides, "--out", out, "--no-progress"]
    subprocess.run(train, capture_output=True, text=True, check=True)
    assert (out / "eval.json").exists()
    analyzed = subprocess.run(
        [script, "analyze", out, "--n-sequences", "64"], capture_output=True, text=True, check=True
    )
    assert "one-step GD fit" in analyzed.stdout
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["gd_fit"]["eta_optimal"] > 0 and 0 <= analysis["gd_fit"]["gap_plain"]


def test_demo_exit_status_says_whether_the_regimes_hold(monkeypatch, tmp_path):
    import iclab.studies.task_diversity.demo as demo_module
    from iclab.studies.task_diversity.demo import DemoReport

    def fake_demo(holds):
        checks = {"Bayesian regime (small M)": (holds, "numbers")}
        return lambda out, **options: DemoReport([], checks, out / "f.png", 0.0)

    monkeypatch.setattr(demo_module, "run_demo", fake_demo(True))
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    monkeypatch.setattr(demo_module, "run_demo", fake_demo(False))
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 1


def test_sweep_commands_end_to_end(tmp_path, capsys):
    fixed = "\n".join(tiny_overrides(steps=20))
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = ["2^0..2^1"]\nbatch_size = [8, 16]\n'
        '[threshold]\ncriterion = "fraction"\n'
    )
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" complete ") == 4 and "4 runs completed, 0 failed" in printed
    assert main(["status", str(out)]) == 0
    assert capsys.readouterr().out.count(" complete ") == 4
    assert main(["results", str(out)]) == 0
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 4 * 2
    assert main(["threshold", str(spec), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "threshold:" in printed and (out / "threshold.json").exists()
    assert main(["plot", str(out), "--m", "1", "2", "--pdf"]) == 0
    assert (out / "task_diversity.pdf").stat().st_size > 5_000
    assert main(["plot", str(out), "--m", "3"]) == 2
    assert "--m 3 is not allowed: no completed run with that M" in capsys.readouterr().err
    assert build_parser().parse_args(["plot", "d", "--m", "Inf", "infinity"]).m == [None, None]
    threshold = (out / "threshold.json").read_bytes()
    for damaged in (b'{"crit', b'{"criterion": "fraction"}', b"[1]"):
        (out / "threshold.json").write_bytes(damaged)
        assert main(["plot", str(out)]) == 1
        assert "threshold file" in capsys.readouterr().err
    (out / "threshold.json").write_bytes(threshold)
    # Nothing new to train the second time.
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert "0 runs completed, 0 failed, 4 skipped" in capsys.readouterr().out


def test_sweep_errors_name_the_problem(tmp_path, capsys, monkeypatch):
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    spec = tmp_path / "spec.toml"
    spec.write_text('base = "tiny"\n[grid]\nn_tasks = [0]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "n_tasks = 0 is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # a bad spec writes nothing
    monkeypatch.setitem(sys.modules, "ray", None)
    spec.write_text('base = "tiny"\n[grid]\nn_tasks = [1]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--executor", "ray"]) == 2
    assert "pip install 'iclab[ray]'" in capsys.readouterr().err
