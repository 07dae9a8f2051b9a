"""Experiment tracking mirrors metrics.jsonl: TensorBoard event files read back hold every
periodic evaluation's values, the final evaluation and the figures, for a run and for each run of
a sweep; wandb's offline run holds them too."""

import json

import pytest

import iclab
from iclab.cli import main
from iclab.config import ConfigError
from iclab.tracking import LOG_DIR, check_backend

SHORT = {
    "train.steps": 8,
    "train.eval_every": 4,
    "eval.n_sequences": 64,
    "train.eval_sequences": 32,
}


def scalars_of(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    return events


def recorded(run_dir) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [
        (r["step"], r["eval"]["distributions"]["true"]["delta_mean"]["PT,Ridge"]) for r in records
    ]


def test_tensorboard_holds_every_evaluation_and_the_figures(tmp_path):
    config = iclab.load_config("tiny", SHORT)
    run = iclab.train(config, tmp_path / "run", progress=False, log_to="tensorboard")
    events = scalars_of(run.path / LOG_DIR / config.run_hash())
    logged = [(e.step, e.value) for e in events.Scalars("true/delta_PT,Ridge")]
    assert [step for step, _ in logged] == [4, 8]
    for (step, value), (expected_step, expected) in zip(logged, recorded(run.path), strict=True):
        assert step == expected_step and value == pytest.approx(expected, rel=1e-6)
    final = events.Scalars("final/true/mse_PT")
    assert final[0].value == pytest.approx(
        run.evaluation["distributions"]["true"]["mse_mean"]["PT"]
    )
    assert "mse_per_position" in events.Tags()["images"]
    assert {"train_loss", "lr", "pretrain/delta_PT,dMMSE"} <= set(events.Tags()["scalars"])


def test_a_sweep_tracks_each_run_under_the_sweep_directory(tmp_path):
    spec = tmp_path / "spec.toml"
    fixed = "\n".join(f"{key.split('.')[1]} = {value}" for key, value in SHORT.items())
    spec.write_text(f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [4, "inf"]\n')
    out = tmp_path / "sweep"
    assert (
        main(["sweep", str(spec), "--out", str(out), "--no-progress", "--log-to", "tensorboard"])
        == 0
    )
    for run_dir in (out / "runs").iterdir():
        events = scalars_of(out / LOG_DIR / run_dir.name)
        logged = [
            (e.step, pytest.approx(e.value, rel=1e-6))
            for e in events.Scalars("true/delta_PT,Ridge")
        ]
        assert logged == recorded(run_dir)
    assert len(list((out / LOG_DIR).iterdir())) == 2


def test_wandb_offline_holds_the_evaluations(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    config = iclab.load_config("tiny", SHORT)
    run = iclab.train(config, tmp_path / "run", progress=False, log_to="wandb")
    # wandb's service process writes the offline file; under load it had written only the
    # header when finish() returned (seen once in CI). teardown waits for the service to exit.
    wandb.teardown()
    (offline,) = (run.path / "wandb").glob(f"offline-run-*-{config.run_hash()}-*")
    log = next(offline.glob("run-*.wandb")).read_bytes()
    for _, value in recorded(run.path):  # values are stored as JSON text after their key
        assert repr(value).encode() in log
    assert b"final/true/delta_PT,Ridge" in log
    assert list((offline / "files" / "media" / "images").glob("mse_per_position_*.png"))


def test_a_missing_tracker_package_is_a_config_error_before_any_work(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'iclab\[wandb\]'"):
        check_backend("wandb")
    with pytest.raises(ConfigError, match="wandb"):
        iclab.train(iclab.load_config("tiny", SHORT), tmp_path / "run", log_to="wandb")
    assert not (tmp_path / "run").exists()


def test_a_bad_wandb_mode_is_a_config_error_before_any_work(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "bogus")  # failed at the first evaluation, mid-training
    with pytest.raises(ConfigError, match="WANDB_MODE = 'bogus' is not allowed: Input should be"):
        iclab.train(iclab.load_config("tiny", SHORT), tmp_path / "run", log_to="wandb")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_backend("wandb")


class RecordingTracker:
    """A backend that records what it is told, in place of TensorBoard."""

    events: list[tuple] = []

    def __init__(self, root, name, group, config):
        self.name = name

    def log(self, step, values):
        self.events.append(("log", self.name, step))

    def finish(self, step, final, figures):
        self.events.append(("finish", self.name))

    def abort(self):
        self.events.append(("abort", self.name))


def poison_losses(monkeypatch, calls_from: int, calls_to: int) -> None:
    """The regression loss becomes NaN at its calls calls_from..calls_to - 1 (counted from 0)."""
    from iclab.tasks.regression import RegressionTask

    loss = RegressionTask.loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        value = loss(*args, **kwargs)
        calls["n"] += 1
        return value * float("nan") if calls_from <= calls["n"] - 1 < calls_to else value

    monkeypatch.setattr(RegressionTask, "loss", staticmethod(poisoned))


def test_a_failed_run_closes_its_tracker(tmp_path, monkeypatch):
    from iclab import tracking
    from iclab.training import TrainingDiverged

    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", RecordingTracker)
    monkeypatch.setattr(RecordingTracker, "events", [])
    poison_losses(monkeypatch, 5, 10**9)  # after the evaluation at step 4
    config = iclab.load_config("tiny", SHORT)
    with pytest.raises(TrainingDiverged):
        iclab.train(config, tmp_path / "run", progress=False, log_to="tensorboard")
    name = config.run_hash()
    assert RecordingTracker.events == [("log", name, 4), ("abort", name)]


def test_a_sweep_closes_the_tracker_of_its_failed_run_and_finishes_the_others(
    tmp_path, monkeypatch
):
    from iclab import tracking
    from iclab.sweeps.executors import LocalExecutor
    from iclab.sweeps.runner import run_sweep
    from iclab.sweeps.spec import load_spec

    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", RecordingTracker)
    monkeypatch.setattr(RecordingTracker, "events", [])
    spec = tmp_path / "spec.toml"
    fixed = "\n".join(f"{key.split('.')[1]} = {value}" for key, value in SHORT.items())
    spec.write_text(f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [4, "inf"]\n')
    first, second = (run.run_hash for run in load_spec(spec).runs())
    poison_losses(monkeypatch, 5, 8)  # the first run's steps 6-8, after its evaluation at step 4
    outcome = run_sweep(
        load_spec(spec), tmp_path / "sweep", LocalExecutor(), progress=False, log_to="tensorboard"
    )
    assert list(outcome.failed) == [first] and outcome.completed == [second]
    assert RecordingTracker.events == [
        ("log", first, 4),
        ("abort", first),
        ("log", second, 4),
        ("log", second, 8),
        ("finish", second),
    ]
