"""The compiled train step (train.compile, the GPU path) computes what the eager step computes:
the same batches (counter-based draws) and, after a number of steps, the same weights to float
tolerance. On CPU torch.compile generates C++ code; on CUDA the device check
(benchmarks/gpu_check.sh) compares the graph-captured step with the eager one."""

import math

import torch
from helpers import tiny_overrides
from test_ensemble import _key_bias_slice

from iclab.config import load_config
from iclab.families import make_task
from iclab.training import build_model
from iclab.training.optimization import build_optimizer, learning_rate
from iclab.training.steps import StackedStep

STEPS = 12
MEMBERS = [(4, 0), ('"inf"', 1)]  # (n_tasks, seed)


def _stepper(configs, compiled: bool, device: str = "cpu") -> StackedStep:
    """A stacked step of fresh members that draws counter-based batches (eager or compiled)."""
    device = torch.device(device)
    models = [build_model(config, device) for config in configs]
    optimizers = [build_optimizer(model, configs[0].train) for model in models]
    tasks = [make_task(config.task, device) for config in configs]
    return StackedStep(models, optimizers, tasks, configs, device, compiled, counter_draws=True)


def test_the_compiled_step_equals_the_eager_one_on_cpu():
    configs = [
        load_config("tiny", tiny_overrides(n_tasks=m, seed=s, steps=STEPS, grad_clip=1.0))
        for m, s in MEMBERS
    ]
    eager, compiled = _stepper(configs, False), _stepper(configs, True)
    initial = {name: p.detach().clone() for name, p in eager.stacked.items()}
    for step in range(STEPS):
        lr = learning_rate(configs[0].train, step)
        eager_losses = eager.step(step, lr).detach()
        compiled_losses = compiled.step(step, lr).detach()
        torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-6)
    moved = 0.0
    for name, parameter in eager.stacked.items():
        # the attention key bias has zero gradient in exact arithmetic: Adam turns rounding noise
        # into full steps there, different in any two float programs (see test_ensemble.py)
        expected, got = (
            _key_bias_slice(name, parameter),
            _key_bias_slice(name, compiled.stacked[name]),
        )
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        moved = max(moved, float((expected - _key_bias_slice(name, initial[name])).abs().max()))
    assert (
        moved > 100 * 1e-5
    )  # the weights moved far beyond the tolerance: the match means something
    assert all(math.isfinite(v) for v in eager_losses.tolist())
