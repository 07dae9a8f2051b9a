"""seeding.CounterDraws, the counter-based random source of the captured train step: its numbers
are a pure function of (key, step, call, index) and have the distributions they claim."""

import math

import pytest
import torch

from iclab.config import load_config
from iclab.seeding import CounterDraws, _multiply32
from iclab.tasks.regression import RegressionTask

N = 1 << 20


def draws(step: int, key: int = 12345) -> CounterDraws:
    return CounterDraws(key, torch.tensor(step))


def ks_statistic(samples: torch.Tensor, cdf) -> float:
    """The Kolmogorov-Smirnov distance of samples to a continuous CDF."""
    ordered = samples.double().sort().values
    n = len(ordered)
    fitted = cdf(ordered)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - fitted
    below = fitted - torch.arange(n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


def test_the_32_bit_product_is_exact():
    x = torch.tensor([0, 1, 2**32 - 1, 123456789, 2**31 + 5])
    for constant in (0x7FEB352D, 0x846CA68B, 0xFFFFFFFF):
        expected = [(int(v) * constant) % 2**32 for v in x]
        assert _multiply32(x, constant).tolist() == expected


def test_draws_are_a_pure_function_of_key_step_and_call():
    first, again = draws(7), draws(7)
    assert torch.equal(first.normal((4, 5)), again.normal((4, 5)))
    assert torch.equal(first.uniform((9,)), again.uniform((9,)))  # the second call, both times
    assert not torch.equal(draws(7).normal((20,)), draws(8).normal((20,)))
    assert not torch.equal(draws(7).normal((20,)), draws(7, key=54321).normal((20,)))
    source = draws(7)
    assert not torch.equal(source.normal((20,)), source.normal((20,)))  # calls differ


def test_uniform_normal_and_integers_have_their_distributions():
    critical = 1.95 / math.sqrt(N)  # the KS test's 0.1% critical value
    uniform = draws(0).uniform((N,))
    assert 0 < float(uniform.min()) and float(uniform.max()) < 1
    assert ks_statistic(uniform, lambda u: u) < critical
    normal = draws(1).normal((N,))
    assert ks_statistic(normal, lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))) < critical
    assert abs(float(normal.mean())) < 5 / math.sqrt(N)
    assert float(normal.var()) == pytest.approx(1.0, abs=5 * math.sqrt(2 / N))
    counts = torch.bincount(draws(2).integers(10, (N,)), minlength=10).double()
    chi_square = float(((counts - N / 10) ** 2 / (N / 10)).sum())
    assert counts.numel() == 10 and chi_square < 27.9  # 9 degrees of freedom, 0.1%


def test_consecutive_steps_and_neighbouring_elements_are_uncorrelated():
    bound = 5 / math.sqrt(N)
    a, b = draws(100).normal((N,)), draws(101).normal((N,))
    assert abs(float((a * b).mean())) < bound
    assert abs(float((a[1:] * a[:-1]).mean())) < bound


def test_a_regression_batch_from_counter_draws_has_the_task_distribution():
    config = load_config("tiny").task
    task = RegressionTask(config)
    xs, ys = task.train_batch_from(CounterDraws(3, torch.tensor(0)), 4096)
    assert xs.shape == (4096, config.n_points, config.n_dims)
    variance = config.n_dims * config.prior_std**2 + config.noise_std**2
    assert float(ys.var()) == pytest.approx(variance, rel=0.05)
    assert float(xs.var()) == pytest.approx(1.0, rel=0.02)
