"""The GPU path: run only where CUDA is present (skipped on CPU-only machines such as CI here).

Random streams differ between CPU and CUDA generators, so these tests check that everything runs on
the device, learns, and that device-independent computations agree with the CPU."""

import pytest
import torch
from helpers import tiny_overrides

from iclab.config import load_config
from iclab.estimators.pool_posterior import DMMSE
from iclab.estimators.regression import Ridge
from iclab.evaluation import evaluate_model
from iclab.families import make_task
from iclab.training import build_model, train, train_runs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_training_runs_on_the_device_and_learns():
    config = load_config("tiny", tiny_overrides(device='"cuda"', n_tasks=1, steps=200))
    result = train(config, progress=False)
    assert next(result.model.parameters()).device.type == "cuda"
    xs, ys = result.task.train_batch(config.train.seed, 0, 8)
    assert xs.device.type == "cuda"
    evaluation = evaluate_model(result.model, result.task, 512, seed=0, batch_size=256)
    mse = evaluation["distributions"]["pretrain"]["mse_mean"]
    assert mse["PT"] < 0.5 * mse["Ridge"]


def test_initial_weights_and_estimators_agree_with_the_cpu():
    config = load_config("tiny", tiny_overrides(n_tasks=64))
    on_cpu, on_gpu = build_model(config, "cpu"), build_model(config, "cuda")
    for p, q in zip(on_cpu.parameters(), on_gpu.parameters(), strict=True):
        assert torch.equal(p, q.cpu())
    task = make_task(config.task, "cpu")
    xs, ys = task.eval_batch("pretrain", 0, 0, 256)
    for estimator in (Ridge(noise_std=0.35), DMMSE(task.pool, noise_std=0.35)):
        expected = estimator.predict(xs, ys)
        got = estimator.predict(xs.cuda(), ys.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)


def test_ensemble_runs_on_the_device():
    configs = [
        load_config("tiny", tiny_overrides(device='"cuda"', seed=s, n_tasks=m, steps=20))
        for s, m in ((0, 1), (1, 4))
    ]
    members = train_runs(configs)
    alone = train(configs[1], progress=False).model
    assert next(members[1].model.parameters()).device.type == "cuda"
    xs, ys = torch.randn(16, 8, 4, device="cuda"), torch.randn(16, 8, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(members[1].model(xs, ys), alone(xs, ys), rtol=1e-4, atol=1e-5)


def test_counter_draws_are_the_same_on_the_device_as_on_the_cpu():
    from iclab.seeding import CounterDraws

    on_cpu = CounterDraws(99, torch.tensor(5))
    on_gpu = CounterDraws(99, torch.tensor(5, device="cuda"))
    assert torch.equal(on_cpu.bits(1000), on_gpu.bits(1000).cpu())  # integer arithmetic: exact
    torch.testing.assert_close(on_gpu.normal((1000,)).cpu(), on_cpu.normal((1000,)))


def test_the_captured_step_equals_the_eager_one_on_the_device():
    from test_compiled_step import _stepper
    from test_ensemble import _key_bias_slice

    from iclab.training.optimization import learning_rate

    configs = [
        load_config(
            "tiny", tiny_overrides(device='"cuda"', n_tasks=m, seed=s, steps=30, grad_clip=1.0)
        )
        for m, s in ((4, 0), ('"inf"', 1))
    ]
    eager, captured = _stepper(configs, False, "cuda"), _stepper(configs, True, "cuda")
    for step in range(30):  # CUDA graphs replay from the third call on
        lr = learning_rate(configs[0].train, step)
        # eager: fused Adam; captured: capturable foreach Adam (they round differently)
        got, expected = captured.step(step, lr).detach(), eager.step(step, lr).detach()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    for name, parameter in eager.stacked.items():
        expected = _key_bias_slice(name, parameter)
        got = _key_bias_slice(name, captured.stacked[name])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_compiled_bf16_run_learns_on_the_device():
    overrides = tiny_overrides(device='"cuda"', n_tasks=1, steps=200, dtype='"bfloat16"')
    config = load_config("tiny", [*overrides, "train.compile=true"])
    result = train(config, progress=False)
    evaluation = evaluate_model(result.model, result.task, 512, seed=0, batch_size=256)
    mse = evaluation["distributions"]["pretrain"]["mse_mean"]
    assert mse["PT"] < 0.5 * mse["Ridge"]
