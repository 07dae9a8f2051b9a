import json
import warnings

import pytest
import torch
from helpers import snapshot, tiny_overrides

from iclab.checkpoints import CheckpointError, load_checkpoint
from iclab.config import apply_overrides, config_from_dict
from iclab.files import CorruptFile
from iclab.tasks.regression import RegressionTask
from iclab.training import TrainingDiverged, build_model, learning_rate, train
from iclab.training.optimization import autocast, build_optimizer
from iclab.training.run_directory import CHECKPOINT_FILE, RunDirectory


def make_config(**extra):
    return config_from_dict(apply_overrides({}, tiny_overrides(**extra)))


def test_short_run_learns_far_below_the_prior_mean_predictor():
    # One task (M = 1): the model must learn to output w.x. The prior-mean predictor (0) has
    # loss E[(w.x)^2] + sigma^2 = D + sigma^2.
    config = make_config(n_tasks=1, n_layers=2, n_embd=32, steps=300, batch_size=32, lr=3e-3)
    result = train(config, progress=False)
    prior_mean_loss = config.task.n_dims + config.task.noise_std**2
    assert result.final_loss < 0.15 * prior_mean_loss


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    config = make_config(n_tasks=8)
    whole = train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after=20)
    assert (
        json.loads((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        == 20
    )
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert [r["step"] for r in RunDirectory(tmp_path / "split").metrics()] == [20, 40]
    assert RunDirectory(tmp_path / "split").metrics() == RunDirectory(tmp_path / "whole").metrics()


@pytest.mark.parametrize("damage", ["deleted", "a line lost", "two lines swapped"])
def test_resuming_with_metrics_records_lost_or_moved_is_refused(tmp_path, damage):
    config = make_config(n_tasks=8, steps=40, eval_every=10, checkpoint_every=10)
    train(config, tmp_path / "run", progress=False, stop_after=30)
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)  # steps 10, 20, 30
    damaged = {
        "deleted": [],
        "a line lost": [lines[0], lines[2]],
        "two lines swapped": lines[1::-1],
    }
    metrics.write_text("".join(damaged[damage]))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptFile, match="the run evaluates at steps 10, 20, 30"):
        train(config, tmp_path / "run", resume=True, progress=False)
    assert snapshot(tmp_path) == before  # nothing is written over what is left


def test_an_evaluation_between_logs_records_the_mean_loss_since_the_last_log(tmp_path):
    # Evaluations at steps 6 and 12 with logs every 8 steps: step 6 comes before the first log
    # and step 12 between two. Each records the mean of the per-step losses (log_every = 1)
    # since the log before; the step-16 record, at a log step, the mean of steps 9-16.
    overrides = dict(steps=16, eval_every=6, checkpoint_every=16)
    per_step = []
    train(
        make_config(log_every=1, **overrides),
        progress=False,
        on_log=lambda _done, loss: per_step.append(loss),
    )
    train(make_config(log_every=8, **overrides), tmp_path / "run", progress=False)
    records = {r["step"]: r["train_loss"] for r in RunDirectory(tmp_path / "run").metrics()}
    expected = {6: per_step[:6], 12: per_step[8:12], 16: per_step[8:16]}
    assert records.keys() == expected.keys()
    for step, losses in expected.items():
        assert records[step] == pytest.approx(sum(losses) / len(losses), rel=1e-5), step


def test_a_run_resumed_between_logs_records_the_losses_of_an_uninterrupted_one(tmp_path):
    # Stopped at step 10, between the logs at 8 and 16: the checkpoint carries the losses of
    # steps 9-10, which the evaluation at step 12 averages with those of steps 11-12.
    config = make_config(steps=16, log_every=8, eval_every=6, checkpoint_every=16)
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after=10)
    train(config, tmp_path / "split", resume=True, progress=False)
    split, whole = RunDirectory(tmp_path / "split"), RunDirectory(tmp_path / "whole")
    assert [r["step"] for r in whole.metrics()] == [6, 12, 16]
    assert split.metrics() == whole.metrics()


def test_fresh_run_refuses_to_overwrite_an_existing_run(tmp_path):
    config = make_config(steps=20)
    train(config, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(Exception, match="already holds a run"):
        train(config, tmp_path / "run", progress=False)
    with pytest.raises(Exception, match="differs"):
        train(make_config(steps=21), tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / CHECKPOINT_FILE).read_bytes() == before


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = make_config(steps=60, log_every=10, checkpoint_every=20)
    original = RegressionTask.loss
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        loss = original(model, batch)
        return loss * float("nan") if calls["n"] > 25 else loss

    monkeypatch.setattr(RegressionTask, "loss", staticmethod(poisoned))
    with pytest.raises(TrainingDiverged, match="loss became nan by step 30"):
        train(config, tmp_path / "run", progress=False)
    model = build_model(config, torch.device("cpu"))
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE, model) == 20
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tmp_path):
    config = make_config(steps=20)
    train(config, tmp_path / "run", progress=False)
    path = tmp_path / "run" / CHECKPOINT_FILE
    other = build_model(make_config(n_embd=32), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(path, other)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, build_model(config, torch.device("cpu")))


@pytest.mark.parametrize("schedule", ["triangle", "cosine", "constant"])
def test_learning_rate_schedules(schedule):
    config = make_config(steps=100, lr=1.0, schedule=f'"{schedule}"', warmup_fraction=0.5).train
    rates = [learning_rate(config, step) for step in range(100)]
    assert max(rates) == pytest.approx(1.0)
    if schedule == "constant":
        assert min(rates) == 1.0
    else:
        assert rates[0] == pytest.approx(0.02) and rates[-1] < 0.03
        assert rates.index(max(rates)) == 49


def test_bfloat16_autocast_trains():
    config = make_config(
        n_tasks=1, n_embd=32, steps=200, batch_size=32, lr=3e-3, dtype='"bfloat16"'
    )
    result = train(config, progress=False)
    assert result.final_loss < 0.3 * (config.task.n_dims + config.task.noise_std**2)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_bfloat16_on_a_cpu_without_native_bf16_warns(monkeypatch, native_bf16):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    config = make_config(dtype='"bfloat16"').train
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with autocast(config, torch.device("cpu")):
            pass
    slow = [w for w in caught if "without native bf16" in str(w.message)]
    assert len(slow) == (0 if native_bf16 else 1)


@pytest.mark.parametrize(
    "model, options, decayed",
    [
        ("gpt", {}, lambda name, p: name.startswith("blocks.") and p.dim() == 2),
        # Plain tokens add a learned positional encoding, which is not decayed.
        ("linear_attention", {"tokens": "plain"}, lambda name, p: name.startswith("layers.")),
    ],
)
def test_weight_decay_reaches_only_the_parameters_the_model_names(model, options, decayed):
    task = {"family": "autoregressive", "n_dims": 2, "n_steps": 4} if model != "gpt" else {}
    config = config_from_dict(
        {"task": task, "model": {"family": model, **options}, "train": {"weight_decay": 0.1}}
    )
    model = build_model(config, torch.device("cpu"))
    optimizer = build_optimizer(model, config.train)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    expected = {name for name, p in model.named_parameters() if decayed(name, p)}
    assert expected and len(expected) < len(list(model.parameters()))
    assert {name for name, p in model.named_parameters() if decay_of[id(p)] > 0} == expected
