"""The public Python API: README's example runs as written, and the Run it returns holds what the
run directory holds."""

import re
from pathlib import Path

import pytest
import torch

import iclab
from iclab.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_its_run_reopens(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "true.delta_PT,Ridge" in printed and "Ridge" in printed
    run = iclab.open_run(tmp_path / "runs" / "api-example")
    assert run.status == "complete" and run.config.task.n_tasks == 16
    metrics = run.metrics
    assert metrics["step"].tolist() == [100, 200, 300]
    assert {"train_loss", "lr", "true.mse_PT", "pretrain.delta_PT,dMMSE"} <= set(metrics.columns)
    errors = run.errors_per_position()
    last = errors.query("distribution == 'true' and metric == 'mse' and position == 15")
    final = run.evaluation["distributions"]["true"]["mse"]
    assert dict(zip(last["name"], last["value"], strict=True)) == {
        name: values[15] for name, values in final.items()
    }
    # The model, reloaded from the checkpoint, gives the evaluation's predictions back.
    xs, ys = run.task.eval_batch("true", seed=run.config.eval.eval_seed, index=0, batch_size=64)
    with torch.inference_mode():
        expected = run.model(xs, ys)
    assert torch.equal(run.predict(xs.numpy(), ys.numpy()), expected)
    # What 300 steps learn on the pool of 16 tasks: the last position's error less than half the
    # first's (which sees no example: about 1 + sigma^2 / D).
    pretrain = run.evaluation["distributions"]["pretrain"]["mse"]["PT"]
    assert pretrain[-1] < 0.5 * pretrain[0]


def test_overrides_as_strings_or_a_mapping_and_bad_api_arguments():
    as_strings = iclab.load_config("tiny", ["n_tasks=inf", "train.steps=30"])
    as_mapping = iclab.load_config("tiny", {"task.n_tasks": None, "train.steps": 30})
    assert as_strings == as_mapping and as_mapping.task.n_tasks is None
    with pytest.raises(ConfigError, match="list of key=value strings or a dict"):
        iclab.load_config("tiny", "steps=30")
    with pytest.raises(ConfigError, match="n_tasks"):
        iclab.load_config("tiny", {"task.n_tasks": 0})
    for overrides in (None, [5], {5: 1}):
        with pytest.raises(ConfigError, match="list of key=value strings or a dict"):
            iclab.load_config("tiny", overrides)
    with pytest.raises(ConfigError, match="give a preset name or the path"):
        iclab.load_config(5)
    with pytest.raises(ConfigError, match="give a RunConfig"):
        iclab.train("tiny")
    with pytest.raises(ConfigError, match="executor 5"):
        iclab.sweep(ROOT / "sweeps" / "task_diversity_cpu.toml", "unused", executor=5)


def test_sections_built_in_python_are_checked_and_converted_as_from_a_file(tmp_path):
    import dataclasses

    import numpy as np

    config = iclab.load_config("tiny")
    with pytest.raises(
        ConfigError, match=r"task.n_tasks = 2.5 is not allowed: expected an integer"
    ):
        dataclasses.replace(config, task=dataclasses.replace(config.task, n_tasks=2.5))
    with pytest.raises(ConfigError, match="expected a config section"):
        dataclasses.replace(config, train={"steps": 5})
    # An int for a float and numpy numbers become what a config file gives: the same run hash.
    built = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=1))
    assert built.train.lr == 1.0 and isinstance(built.train.lr, float)
    assert built.run_hash() == iclab.load_config("tiny", ["train.lr=1"]).run_hash()
    numpy_values = iclab.load_config("tiny", {"task.n_tasks": np.int64(64), "lr": np.float32(0.5)})
    assert type(numpy_values.task.n_tasks) is int and type(numpy_values.train.lr) is float
    assert numpy_values == iclab.load_config("tiny", ["n_tasks=64", "lr=0.5"])


def test_open_run_refuses_a_directory_without_a_run(tmp_path):
    with pytest.raises(ConfigError, match="not an iclab run directory"):
        iclab.open_run(tmp_path)


def test_every_exported_name_resolves():
    for name in iclab.__all__:
        assert getattr(iclab, name) is not None, name
    with pytest.raises(AttributeError):
        iclab.no_such_name  # noqa: B018
