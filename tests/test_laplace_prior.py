"""Regression with a Laplace prior: its sampler, its Monte-Carlo Bayes estimator and its evaluation."""

import math

import pytest
import torch

from iclab.config import load_config
from iclab.estimators.laplace_posterior import LaplaceBayes, posterior_predictions
from iclab.estimators.regression import Ridge
from iclab.evaluation import evaluate_model
from iclab.families import family_of, make_task
from iclab.tasks.linear import draw_pool, draw_prior
from iclab.training.optimization import build_model
from iclab.validation import ConfigError


def laplace_data(n_dims, n_points, n_sequences, noise_std, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ws = draw_prior("laplace", (n_sequences, n_dims), 1.0, generator, "cpu").double()
    xs = torch.randn(n_sequences, n_points, n_dims, generator=generator, dtype=torch.float64)
    noise = torch.randn(n_sequences, n_points, generator=generator, dtype=torch.float64)
    return xs, (xs * ws[:, None]).sum(-1) + noise_std * noise


def quadrature_predictions(xs, ys, noise_std, half_width=8.0, n_grid=1601):
    """Brute force at D = 2: the posterior mean of w on a grid, per sequence and position."""
    scale = 1 / math.sqrt(2.0)  # Laplace b for variance 1
    axis = torch.linspace(-half_width, half_width, n_grid, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    log_prior = -grid.abs().sum(-1) / scale
    predictions = torch.zeros(ys.shape, dtype=torch.float64)
    for i in range(xs.shape[0]):
        residuals = ys[i][None, :] - grid @ xs[i].T  # (grid, K)
        log_likelihood = torch.cumsum(-0.5 * residuals.square() / noise_std**2, dim=1)
        for k in range(xs.shape[1]):
            log_post = log_prior + (log_likelihood[:, k - 1] if k else 0.0)
            mean = torch.softmax(log_post, 0) @ grid
            predictions[i, k] = mean @ xs[i, k]
    return predictions


def loop_reference(xs, ys, mixing_variances, noise_std):
    """The importance-sampling estimate with a direct solve per (sequence, draw, prefix)."""
    batch, n_points, n_dims = xs.shape
    out = torch.zeros(batch, n_points, dtype=torch.float64)
    for b in range(batch):
        for k in range(n_points):
            x, y = xs[b, :k], ys[b, :k]
            log_weights, predictions = [], []
            for tau in mixing_variances:
                covariance = x @ torch.diag(tau) @ x.T + noise_std**2 * torch.eye(k, dtype=x.dtype)
                marginal = torch.distributions.MultivariateNormal(y.new_zeros(k), covariance)
                log_weights.append(marginal.log_prob(y) if k else y.new_zeros(()))
                posterior = torch.linalg.inv(x.T @ x / noise_std**2 + torch.diag(1 / tau))
                predictions.append(xs[b, k] @ (posterior @ x.T @ y / noise_std**2))
            weights = torch.softmax(torch.stack(log_weights), 0)
            out[b, k] = weights @ torch.stack(predictions)
    return out


def test_laplace_draws_have_the_prior_variance_and_heavy_tails():
    generator = torch.Generator().manual_seed(0)
    values = draw_prior("laplace", (400_000,), 1.5, generator, "cpu").double()
    variance = values.var().item()
    kurtosis = ((values - values.mean()) ** 4).mean().item() / variance**2
    assert variance == pytest.approx(2.25, rel=0.02)
    assert kurtosis == pytest.approx(6.0, rel=0.1)  # Laplace: 6; a Gaussian's is 3


def test_laplace_pools_are_nested_in_m_and_differ_from_the_gaussian_pool():
    big = draw_pool(5000, 4, 1.0, pool_seed=1, prior="laplace")
    assert torch.equal(draw_pool(300, 4, 1.0, pool_seed=1, prior="laplace"), big[:300])
    assert not torch.equal(draw_pool(300, 4, 1.0, pool_seed=1), big[:300])


def test_the_filter_equals_a_direct_solve_per_prefix_and_draw():
    xs, ys = laplace_data(n_dims=3, n_points=5, n_sequences=3, noise_std=0.5)
    tau = torch.rand(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1
    predictions, _ = posterior_predictions(xs, ys, tau, 0.5)
    assert torch.allclose(predictions, loop_reference(xs, ys, tau, 0.5), atol=1e-10)


@pytest.fixture(scope="module")
def two_dim_case():
    xs, ys = laplace_data(n_dims=2, n_points=8, n_sequences=6, noise_std=0.5, seed=3)
    return xs, ys, quadrature_predictions(xs, ys, 0.5)


def rms_error(xs, ys, reference, n_draws, key):
    tau = LaplaceBayes(0.5, 1.0, n_draws).mixing_variances(key, 2, torch.float64, "cpu")
    predictions, errors = posterior_predictions(xs, ys, tau, 0.5)
    return (predictions - reference).square().mean().sqrt().item(), errors.square().mean().sqrt()


def test_two_dimensions_match_grid_quadrature_below_1e_3(two_dim_case):
    xs, ys, reference = two_dim_case
    error, standard_error = rms_error(xs, ys, reference, 2**17, key=0)
    assert error < 1e-3
    assert 0.5 < error / standard_error < 2  # the reported error is the real one


def test_the_monte_carlo_error_falls_like_one_over_root_n(two_dim_case):
    xs, ys, reference = two_dim_case
    sizes = [2**8, 2**10, 2**12, 2**14]
    errors = []
    for n in sizes:  # the mean squared error over 6 independent keys, so one draw does not decide
        squared = [rms_error(xs, ys, reference, n, key)[0] ** 2 for key in range(6)]
        errors.append(math.sqrt(sum(squared) / len(squared)))
    logs = [(math.log(n), math.log(e)) for n, e in zip(sizes, errors, strict=True)]
    mean_x = sum(x for x, _ in logs) / len(logs)
    mean_y = sum(y for _, y in logs) / len(logs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in logs) / sum(
        (x - mean_x) ** 2 for x, _ in logs
    )
    assert -0.65 < slope < -0.35, (errors, slope)


def test_eight_dimensions_agree_with_a_long_run_within_the_combined_error():
    xs, ys = laplace_data(n_dims=8, n_points=16, n_sequences=24, noise_std=0.5, seed=5)
    short, short_error = LaplaceBayes(0.5, 1.0, 512).predict_with_error(xs, ys)
    long_estimator = LaplaceBayes(0.5, 1.0, 2**14)
    tau = long_estimator.mixing_variances(99, 8, torch.float64, "cpu")
    long, long_error = posterior_predictions(xs, ys, tau, 0.5)
    ratio = (short - long).square().mean() / (short_error.square() + long_error.square()).mean()
    assert 0.4 < ratio.item() < 2.5
    # and the estimate is not Ridge: at D = 8 the two differ by much more than the error
    ridge = Ridge(0.5, 1.0)(xs, ys)
    assert (long - ridge).square().mean() > 10 * long_error.square().mean()


def test_predictions_are_keyed_by_the_chunk():
    xs, ys = laplace_data(n_dims=4, n_points=6, n_sequences=5, noise_std=0.5)
    estimator = LaplaceBayes(0.5, 1.0, 64)
    assert torch.equal(estimator(xs, ys), LaplaceBayes(0.5, 1.0, 64)(xs, ys))
    single = estimator(xs[:1], ys[:1])
    assert not torch.allclose(single, estimator(xs, ys)[:1])  # another chunk draws anew


def laplace_config(**settings):
    overrides = ["task.prior=laplace", "task.n_dims=4", "task.n_points=8", "eval.n_sequences=256"]
    return load_config("tiny", overrides + [f"{k}={v}" for k, v in settings.items()])


def test_a_laplace_run_is_evaluated_against_its_bayes_estimator_ridge_and_dmmse():
    for n_tasks, pool_bayes in ((16, "dMMSE"), ("inf", "LaplaceBayes")):
        config = laplace_config(**{"task.n_tasks": n_tasks})
        task = make_task(config.task)
        evaluation = evaluate_model(build_model(config, "cpu"), task, 256, seed=0)
        true = evaluation["distributions"]["true"]
        assert {"PT,LaplaceBayes", "LaplaceBayes,Ridge", "PT,Ridge", "PT,dMMSE"} <= set(
            true["delta_mean"]
        )
        bayes = family_of(config.task).bayes(config.task)
        assert bayes["true"] == "LaplaceBayes"
        pretrain = evaluation["distributions"]["pretrain"]["mse_mean"]
        assert pretrain["dMMSE"] <= pretrain["Ridge"]
        if (
            pool_bayes == "LaplaceBayes"
        ):  # at M = infinity the pool's Bayes estimator is the prior's
            assert true["delta_mean"]["dMMSE,Ridge"] == true["delta_mean"]["LaplaceBayes,Ridge"]


def test_the_prior_is_validated_and_enters_the_run_hash_only_when_laplace():
    with pytest.raises(ConfigError, match="task.prior"):
        load_config("tiny", ["task.prior=cauchy"])
    with pytest.raises(ConfigError, match="task.noise_std"):
        load_config("tiny", ["task.prior=laplace", "task.noise_std=0"])
    gaussian = load_config("tiny", ["task.prior=gaussian"])
    assert gaussian.run_hash() == load_config("tiny").run_hash()
    assert load_config("tiny", ["task.prior=laplace"]).run_hash() != gaussian.run_hash()
