"""Classification baselines vs brute-force float64 references (loops, grid quadrature, LBFGS)."""

import math

import pytest
import torch

from iclab.estimators.classification import (
    GaussianBayesClassifier,
    LogisticRegression,
    PoolBayesClassifier,
    PriorPrediction,
)


def classification_data(n_sequences, n_points, n_dims, beta, seed=0, prior_std=1.0):
    generator = torch.Generator().manual_seed(seed)
    ws = prior_std * torch.randn(n_sequences, n_dims, generator=generator, dtype=torch.float64)
    xs = torch.randn(n_sequences, n_points, n_dims, generator=generator, dtype=torch.float64)
    p = torch.sigmoid(beta * (xs * ws[:, None]).sum(-1))
    u = torch.rand(n_sequences, n_points, generator=generator, dtype=torch.float64)
    return xs, torch.where(u < p, 1.0, -1.0).to(torch.float64)


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z > 0 else z - math.log1p(math.exp(z))


def log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def loop_pool_logits(xs, ys, pool, beta):
    """The pool posterior predictive's log-odds, one sequence, position and task at a time."""
    out = torch.zeros(ys.shape, dtype=torch.float64)
    for b in range(xs.shape[0]):
        for k in range(xs.shape[1]):
            positive, negative = [], []
            for w in pool.tolist():

                def margin(j, w=w, b=b):
                    return beta * sum(wi * xi for wi, xi in zip(w, xs[b, j].tolist(), strict=True))

                log_lik = sum(log_sigmoid(ys[b, j].item() * margin(j)) for j in range(k))
                positive.append(log_lik + log_sigmoid(margin(k)))
                negative.append(log_lik + log_sigmoid(-margin(k)))
            out[b, k] = log_sum_exp(positive) - log_sum_exp(negative)
    return out


def quadrature_probabilities(xs, ys, beta, prior_std=1.0, half_width=7.0, n_grid=561):
    """Brute force at D = 2: the posterior predictive P(y_k = 1) on a grid over w."""
    axis = torch.linspace(-half_width, half_width, n_grid, dtype=torch.float64) * prior_std
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    log_prior = -0.5 * grid.square().sum(-1) / prior_std**2
    out = torch.zeros(ys.shape, dtype=torch.float64)
    for b in range(xs.shape[0]):
        margins = beta * grid @ xs[b].T  # (grid, K)
        log_lik = torch.cumsum(torch.nn.functional.logsigmoid(ys[b] * margins), dim=1)
        for k in range(xs.shape[1]):
            log_post = log_prior + (log_lik[:, k - 1] if k else 0.0)
            out[b, k] = torch.softmax(log_post, 0) @ torch.sigmoid(margins[:, k])
    return out


def rms(t):
    return t.square().mean().sqrt().item()


# ----- PoolBayesClassifier ---------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 16.0])
def test_the_pool_posterior_equals_a_loop_over_sequences_positions_and_tasks(beta):
    xs, ys = classification_data(3, 6, 3, beta, seed=1)
    pool = torch.randn(7, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = loop_pool_logits(xs, ys, pool, beta)
    for block_size in (None, 1, 3):  # one block, and the running logsumexp over several
        logits = PoolBayesClassifier(pool, beta, block_size=block_size)(xs, ys)
        assert torch.allclose(logits, reference, rtol=0, atol=1e-9)


def test_the_pool_posterior_starts_at_the_pools_mean_prediction_and_is_the_task_at_m_1():
    xs, ys = classification_data(4, 5, 3, 2.0, seed=3)
    pool = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    logits = PoolBayesClassifier(pool, 2.0)(xs, ys)
    p0 = torch.sigmoid(2.0 * xs[:, 0] @ pool.T).mean(-1)
    assert torch.allclose(logits[:, 0], torch.logit(p0), atol=1e-12)
    assert logits[:, 0].abs().min() > 1e-3  # not the symmetric prior's 0
    single = pool[:1]
    assert torch.allclose(
        PoolBayesClassifier(single, 2.0)(xs, ys), 2.0 * (xs @ single[0]), rtol=0, atol=1e-12
    )


def test_the_pool_posterior_is_stable_at_large_beta_and_keeps_float32():
    xs, ys = classification_data(8, 12, 4, 16.0, seed=5)
    pool = 10 * torch.randn(300, 4, generator=torch.Generator().manual_seed(6))
    logits32 = PoolBayesClassifier(pool, 16.0, block_size=64)(xs.float(), ys.float())
    assert logits32.dtype == torch.float32 and torch.isfinite(logits32).all()
    logits64 = PoolBayesClassifier(pool.double(), 16.0)(xs, ys)
    assert torch.isfinite(logits64).all()
    assert logits64.abs().max() > 50  # margins this large would overflow a naive sigmoid ratio
    scale = 1 + logits64.abs()
    assert ((logits32.double() - logits64).abs() / scale).max() < 1e-3


# ----- LogisticRegression -------------------------------------------------------------------------


def lbfgs_map(x, y, beta, prior_std):
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-13,
        tolerance_change=0,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.softplus(-beta * y * (x @ w)).sum()
        loss = loss + w.square().sum() / (2 * prior_std**2)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


@pytest.mark.parametrize(("beta", "prior_std"), [(1.0, 1.0), (16.0, 2.0)])
def test_logistic_regression_is_the_map_found_by_lbfgs_per_prefix(beta, prior_std):
    xs, ys = classification_data(3, 7, 3, beta, seed=7, prior_std=prior_std)
    estimator = LogisticRegression(beta, prior_std)
    w, gradient = estimator.solve(xs, ys)
    assert gradient.norm(dim=-1).max() < 1e-9
    logits = estimator(xs, ys)
    assert torch.equal(logits[:, 0], torch.zeros(3, dtype=torch.float64))
    for b in range(3):
        for k in range(1, 7):
            reference = lbfgs_map(xs[b, :k], ys[b, :k], beta, prior_std)
            assert torch.allclose(w[b, k], reference, atol=1e-6)
            assert logits[b, k].item() == pytest.approx(
                beta * (reference @ xs[b, k]).item(), abs=1e-6
            )


# ----- Gaussian prior ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_dim_cases():
    cases = {}
    for beta in (1.0, 8.0):
        xs, ys = classification_data(16, 8, 2, beta, seed=11)
        cases[beta] = xs, ys, quadrature_probabilities(xs, ys, beta)
    return cases


@pytest.mark.parametrize(
    ("beta", "settings"), [(1.0, {}), (8.0, {"n_iterations": 1600, "burn_in": 50})]
)
def test_two_dimensions_match_grid_quadrature(two_dim_cases, beta, settings):
    xs, ys, reference = two_dim_cases[beta]
    estimator = GaussianBayesClassifier(beta, **settings)
    assert estimator.method == ("snis" if beta <= 2 else "ess")
    logits, errors = estimator.predict_with_error(xs, ys)
    error = rms(torch.sigmoid(logits) - reference)
    # 3x the reported RMS error leaves room for the RMS over 112 estimates to fluctuate (its
    # relative spread is ~1/sqrt(2 * 112) = 7%, so this only fails if the errors are misreported).
    assert error < min(0.01, 3 * rms(errors)), (error, rms(errors))


def test_the_importance_sampling_error_is_honest(two_dim_cases):
    xs, ys, reference = two_dim_cases[1.0]
    logits, errors = GaussianBayesClassifier(1.0, n_draws=2**10).predict_with_error(xs, ys)
    real = rms(torch.sigmoid(logits)[:, 1:] - reference[:, 1:])
    assert 0.5 < real / rms(errors[:, 1:]) < 2


@pytest.mark.parametrize(
    ("beta", "short", "long"),
    [
        (1.0, {"n_draws": 2**11}, {"n_draws": 2**15}),
        (4.0, {"n_iterations": 80, "method": "ess"}, {"n_iterations": 640, "method": "ess"}),
        (4.0, {"n_draws": 2**12}, {"n_draws": 2**15}),
    ],
)
def test_eight_dimensions_agree_with_a_long_run_within_the_combined_error(beta, short, long):
    xs, ys = classification_data(24, 16, 8, beta, seed=13)
    a, a_error = GaussianBayesClassifier(beta, **short).predict_with_error(xs, ys)
    b, b_error = GaussianBayesClassifier(beta, **long).predict_with_error(xs[:, :], ys + 0.0)
    difference = (torch.sigmoid(a) - torch.sigmoid(b))[:, 1:]
    combined = (a_error.square() + b_error.square())[:, 1:]
    ratio = difference.square().mean() / combined.mean()
    assert 0.3 < ratio.item() < 3, ratio.item()


@pytest.mark.parametrize("method", ["snis", "ess"])
def test_gaussian_draws_are_keyed_by_the_chunk(method):
    xs, ys = classification_data(5, 6, 3, 4.0, seed=17)
    estimator = GaussianBayesClassifier(4.0, n_draws=256, n_iterations=16, method=method)
    logits = estimator(xs, ys)
    assert torch.equal(
        logits, GaussianBayesClassifier(4.0, n_draws=256, n_iterations=16, method=method)(xs, ys)
    )
    assert not torch.allclose(estimator(xs[:1], ys[:1]), logits[:1])  # another chunk draws anew
    assert torch.equal(logits[:, 0], torch.zeros(5, dtype=torch.float64))


def test_the_gaussian_posterior_is_finite_at_beta_16_in_float32():
    xs, ys = classification_data(6, 10, 4, 16.0, seed=19)
    for method in ("snis", "ess"):
        estimator = GaussianBayesClassifier(16.0, n_draws=512, n_iterations=16, method=method)
        logits, errors = estimator.predict_with_error(xs.float(), ys.float())
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
        assert torch.isfinite(errors).all() and (errors >= 0).all()


# ----- shared facts and validation -------------------------------------------------------------


def test_every_predictor_returns_batch_by_points_logits_and_the_prior_at_position_0():
    xs, ys = classification_data(4, 6, 3, 2.0, seed=23)
    pool = torch.randn(9, 3, generator=torch.Generator().manual_seed(24), dtype=torch.float64)
    predictors = [
        PoolBayesClassifier(pool, 2.0),
        GaussianBayesClassifier(2.0, n_draws=128),
        GaussianBayesClassifier(4.0, n_iterations=8, method="ess"),
        LogisticRegression(2.0),
        PriorPrediction(),
    ]
    for predictor in predictors:
        logits = predictor(xs, ys)
        assert logits.shape == (4, 6) and logits.dtype == torch.float64, predictor.name
        assert torch.isfinite(logits).all()
    assert torch.equal(PriorPrediction()(xs, ys), torch.zeros(4, 6, dtype=torch.float64))
    for predictor in predictors[1:]:
        assert torch.equal(predictor(xs, ys)[:, 0], torch.zeros(4, dtype=torch.float64))
    # the pool's prior prediction: logsumexp over uniform weights of its predictions at x_0
    z = 2.0 * xs[:, 0] @ pool.T
    expected = torch.logsumexp(torch.nn.functional.logsigmoid(z), -1) - torch.logsumexp(
        torch.nn.functional.logsigmoid(-z), -1
    )
    assert torch.allclose(predictors[0](xs, ys)[:, 0], expected, atol=1e-12)


def test_arguments_are_validated():
    pool = torch.randn(4, 3)
    for beta in (0.0, -1.0, 16.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            PoolBayesClassifier(pool, beta)
        with pytest.raises(ValueError, match="beta"):
            GaussianBayesClassifier(beta)
        with pytest.raises(ValueError, match="beta"):
            LogisticRegression(beta)
    with pytest.raises(ValueError, match="pool"):
        PoolBayesClassifier(torch.randn(0, 3), 1.0)
    with pytest.raises(ValueError, match="block_size"):
        PoolBayesClassifier(pool, 1.0, block_size=0)
    with pytest.raises(ValueError, match="prior_std"):
        GaussianBayesClassifier(1.0, prior_std=0.0)
    with pytest.raises(ValueError, match="prior_std"):
        LogisticRegression(1.0, prior_std=-1.0)
    with pytest.raises(ValueError, match="n_draws"):
        GaussianBayesClassifier(1.0, n_draws=0)
    with pytest.raises(ValueError, match="n_iterations"):
        GaussianBayesClassifier(8.0, n_iterations=2)
    with pytest.raises(ValueError, match="method"):
        GaussianBayesClassifier(8.0, method="gibbs")
    xs, ys = classification_data(2, 3, 3, 1.0)
    with pytest.raises(ValueError, match="n_dims"):
        PoolBayesClassifier(torch.randn(4, 2), 1.0)(xs, ys)
    with pytest.raises(ValueError, match="ys"):
        PriorPrediction()(xs, ys[:, :2])
