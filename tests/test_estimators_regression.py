"""Regression estimators vs slow float64 references with explicit loops, plus analytic facts."""

import json
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from iclab.estimators import pool_posterior, pool_streaming
from iclab.estimators.pool_posterior import DMMSE, SmoothedDMMSE
from iclab.estimators.pool_streaming import (
    CHUNK_ELEMENTS,
    DEVICE_CHUNK_ELEMENTS,
    auto_chunk_size,
)
from iclab.estimators.regression import LeastSquares, Ridge

B, K, D, M = 5, 6, 3, 7


# ----- slow references: float64 numpy, one sequence and one position at a time -----------------


def _logsumexp(a: np.ndarray) -> float:
    top = a.max()
    return top + math.log(np.exp(a - top).sum())


def ref_ridge(xs, ys, noise_std, prior_std=1.0):
    lam = noise_std**2 / prior_std**2
    out = np.zeros(ys.shape)
    for s in range(xs.shape[0]):
        for k in range(1, xs.shape[1]):
            x, y = xs[s, :k], ys[s, :k]
            w = np.linalg.inv(x.T @ x + lam * np.eye(xs.shape[2])) @ x.T @ y
            out[s, k] = xs[s, k] @ w
    return out


def ref_lstsq(xs, ys):
    out = np.zeros(ys.shape)
    for s in range(xs.shape[0]):
        for k in range(1, xs.shape[1]):
            w = np.linalg.lstsq(xs[s, :k], ys[s, :k], rcond=None)[0]  # minimum-norm solution
            out[s, k] = xs[s, k] @ w
    return out


def ref_dmmse(xs, ys, pool, noise_std):
    out = np.zeros(ys.shape)
    for s in range(xs.shape[0]):
        for k in range(xs.shape[1]):
            logw = np.array(
                [
                    -sum((ys[s, j] - w @ xs[s, j]) ** 2 for j in range(k)) / (2 * noise_std**2)
                    for w in pool
                ]
            )
            weights = np.exp(logw - _logsumexp(logw))
            out[s, k] = sum(p * (w @ xs[s, k]) for p, w in zip(weights, pool, strict=True))
    return out


def ref_smoothed(xs, ys, pool, noise_std, smoothing_std):
    """Direct Gaussian marginal likelihood with the full k x k covariance (no Woodbury)."""
    var_n, var_s = noise_std**2, smoothing_std**2
    n_dims = xs.shape[2]
    out = np.zeros(ys.shape)
    for s in range(xs.shape[0]):
        for k in range(xs.shape[1]):
            x, y = xs[s, :k], ys[s, :k]
            if k == 0:
                logw, means = np.zeros(len(pool)), pool
            else:
                cov = var_n * np.eye(k) + var_s * x @ x.T
                logw = np.array(
                    [-0.5 * (y - x @ w) @ np.linalg.solve(cov, y - x @ w) for w in pool]
                )
                a = x.T @ x / var_n + np.eye(n_dims) / var_s
                means = [np.linalg.solve(a, x.T @ y / var_n + w / var_s) for w in pool]
            weights = np.exp(logw - _logsumexp(logw))
            out[s, k] = sum(p * (m @ xs[s, k]) for p, m in zip(weights, means, strict=True))
    return out


# ----- data ---------------------------------------------------------------------------------------


def make_data(seed, batch=B, n_points=K, n_dims=D, n_tasks=M, noise_std=0.5, from_pool=False):
    """float32 tensors xs, ys and pool; tasks come from the pool or from N(0, I)."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(n_tasks, n_dims, generator=gen)
    xs = torch.randn(batch, n_points, n_dims, generator=gen)
    if from_pool:
        ws = pool[torch.randint(n_tasks, (batch,), generator=gen)]
    else:
        ws = torch.randn(batch, n_dims, generator=gen)
    ys = torch.einsum("bkd,bd->bk", xs, ws) + noise_std * torch.randn(
        batch, n_points, generator=gen
    )
    return xs, ys, pool


def f64(*tensors):
    return [t.double().numpy() for t in tensors]


def assert_close_rel(out, ref, rtol=1e-4):
    """Elementwise |out - ref| <= rtol * max(1, max|ref|): ~1e-4 relative at the data's scale."""
    out = out.double().numpy() if isinstance(out, torch.Tensor) else out
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out, ref, rtol=0, atol=rtol * scale)


# ----- against the references -----------------------------------------------------------------


def test_ridge_matches_reference():
    xs, ys, _ = make_data(0)
    for noise_std, prior_std in [(0.5, 1.0), (0.1, 2.0), (2.0, 0.5)]:
        out = Ridge(noise_std, prior_std)(xs, ys)
        assert_close_rel(out, ref_ridge(*f64(xs, ys), noise_std, prior_std))


def test_ridge_position_one_closed_form():
    # With one pair, w = x_0 y_0 / (|x_0|^2 + lambda): a formula that shares no code with the solve.
    xs, ys, _ = make_data(1)
    noise_std, prior_std = 0.7, 1.3
    lam = noise_std**2 / prior_std**2
    expected = (xs[:, 1] * xs[:, 0]).sum(-1) * ys[:, 0] / ((xs[:, 0] ** 2).sum(-1) + lam)
    out = Ridge(noise_std, prior_std)(xs, ys)
    torch.testing.assert_close(out[:, 1], expected, rtol=1e-5, atol=1e-6)
    assert torch.all(out[:, 0] == 0)


def test_least_squares_matches_reference():
    xs, ys, _ = make_data(2)
    ref = ref_lstsq(*f64(xs, ys))
    assert_close_rel(LeastSquares()(xs, ys), ref)
    assert_close_rel(Ridge(0.0)(xs, ys), ref)  # the documented noise_std = 0 fallback


@pytest.mark.parametrize("chunk_size", [None, 2, 3, M])
@pytest.mark.parametrize("from_pool", [False, True])
@pytest.mark.parametrize("pruning", [False, True])
def test_dmmse_matches_reference(chunk_size, from_pool, pruning, monkeypatch):
    if pruning:  # the candidate search of large pools, on this small one
        monkeypatch.setattr(pool_posterior, "PRUNE_MIN_TASKS", 1)
    xs, ys, pool = make_data(3, from_pool=from_pool)
    out = DMMSE(pool, 0.5, chunk_size=chunk_size)(xs, ys)
    assert_close_rel(out, ref_dmmse(*f64(xs, ys, pool), 0.5))


@pytest.mark.parametrize("from_pool", [False, True])
def test_dmmse_tiny_noise_log_sum_exp(from_pool):
    # Energies reach ~1e5-1e6: exp(-energy) underflows to 0 for every task without the running max.
    noise_std = 1e-3
    xs, ys, pool = make_data(4, noise_std=noise_std, from_pool=from_pool)
    ref = ref_dmmse(*f64(xs, ys, pool), noise_std)
    out = DMMSE(pool, noise_std, chunk_size=2)(xs, ys)
    assert torch.isfinite(out).all()
    assert_close_rel(out, ref)


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("smoothing_std", [0.1, 0.5, 3.0])
def test_smoothed_dmmse_matches_reference(chunk_size, smoothing_std):
    xs, ys, pool = make_data(5)
    out = SmoothedDMMSE(pool, 0.5, smoothing_std, chunk_size=chunk_size)(xs, ys)
    assert_close_rel(out, ref_smoothed(*f64(xs, ys, pool), 0.5, smoothing_std))


def test_smoothed_dmmse_large_energies_log_sum_exp():
    # noise = smoothing = 1e-2: energies of order 1e4, so the weights need the running max.
    xs, ys, pool = make_data(6, noise_std=1e-2, from_pool=True)
    out = SmoothedDMMSE(pool, 1e-2, 1e-2, chunk_size=2)(xs, ys)
    assert torch.isfinite(out).all()
    assert_close_rel(out, ref_smoothed(*f64(xs, ys, pool), 1e-2, 1e-2))


# ----- causality and dtype/device ----------------------------------------------------------------


def all_estimators(pool):
    return [
        Ridge(0.5),
        Ridge(0.0),
        LeastSquares(),
        DMMSE(pool, 0.5, chunk_size=3),
        SmoothedDMMSE(pool, 0.5, 0.4, chunk_size=3),
    ]


@pytest.mark.parametrize("index", range(5))
def test_causal(index):
    xs, ys, pool = make_data(7)
    estimator = all_estimators(pool)[index]
    base = estimator(xs, ys)
    gen = torch.Generator().manual_seed(8)
    for k in range(K):
        xs2, ys2 = xs.clone(), ys.clone()
        ys2[:, k:] = 10 * torch.randn(B, K - k, generator=gen)
        xs2[:, k + 1 :] = 10 * torch.randn(B, K - k - 1, D, generator=gen)
        out = estimator(xs2, ys2)
        torch.testing.assert_close(out[:, : k + 1], base[:, : k + 1], rtol=1e-5, atol=1e-5)
        # The perturbation is seen from position k + 1 on, so the check above is not vacuous.
        if k + 1 < K:
            assert (out[:, k + 1 :] - base[:, k + 1 :]).abs().max() > 1e-2


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_input(index, dtype):
    xs, ys, pool = make_data(9)
    xs, ys = xs.to(dtype), ys.to(dtype)
    out = all_estimators(pool)[index](xs, ys)
    assert out.dtype == dtype and out.device == xs.device and out.shape == (B, K)


@pytest.mark.parametrize("index", [3, 4])
def test_worker_threads_give_the_single_thread_result(index, monkeypatch):
    # 100 sequences make several row blocks (of 32 sequences; of 512 positions for the smoothed
    # estimator), which two worker threads share; the thread count is restored afterwards.
    xs, ys, pool = make_data(18, batch=100, n_tasks=50)
    estimator = all_estimators(pool)[index]
    single = estimator(xs, ys)
    threads = set()
    add = pool_streaming.RunningMean.add

    def recording(self, *args):
        threads.add(threading.get_ident())
        time.sleep(0.005)  # so that the first worker is still busy when the second share comes
        return add(self, *args)

    monkeypatch.setattr(pool_streaming.RunningMean, "add", recording)
    torch.set_num_threads(2)
    try:
        torch.testing.assert_close(estimator(xs, ys), single, rtol=0, atol=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert len(threads) == 2


@pytest.mark.parametrize("from_pool", [False, True])
def test_dmmse_candidates_prune_later_positions_without_changing_them(from_pool, monkeypatch):
    # Low noise and a pool of 2000 tasks in 2 dimensions: after a = 2 pairs the later positions
    # weight only the tasks near the data. The reference weights all 2000 at every position.
    n_tasks, noise_std = 2000, 0.03
    xs, ys, pool = make_data(
        19, batch=3, n_points=8, n_dims=2, n_tasks=n_tasks, noise_std=noise_std, from_pool=from_pool
    )
    monkeypatch.setattr(pool_posterior, "PRUNE_MIN_TASKS", n_tasks)
    weighed = []
    energies = pool_posterior._energies

    def recording(task_rows, energy_at_a, later_pairs):
        weighed.append(len(energy_at_a))
        return energies(task_rows, energy_at_a, later_pairs)

    monkeypatch.setattr(pool_posterior, "_energies", recording)
    out = DMMSE(pool, noise_std)(xs, ys)
    assert_close_rel(out, ref_dmmse(*f64(xs, ys, pool), noise_std))
    # Per sequence: the tasks that set the bound, then the candidates, far fewer than the pool.
    assert len(weighed) == 2 * 3
    assert 1 <= max(weighed[1::2]) < n_tasks / 10


def test_auto_chunk_size_shrinks_with_rows():
    rows = 4096 * 15  # paper scale: 4096 sequences, positions 1..15

    def size(n_rows, n_tasks):
        return auto_chunk_size(n_rows, n_tasks, CHUNK_ELEMENTS)

    assert size(rows, 2**20) * rows <= CHUNK_ELEMENTS < (size(rows, 2**20) + 1) * rows
    assert size(64 * rows, 2**20) < size(rows, 2**20)
    assert size(10 * CHUNK_ELEMENTS, 2**20) == 1
    assert size(1, 10) == 10  # never more than the pool
    assert auto_chunk_size(rows, 2**20, DEVICE_CHUNK_ELEMENTS) > size(rows, 2**20)  # GPU tiles


def test_bad_arguments_name_the_field():
    pool = torch.randn(4, D)
    with pytest.raises(ValueError, match="noise_std"):
        DMMSE(pool, 0.0)
    with pytest.raises(ValueError, match="noise_std"):
        SmoothedDMMSE(pool, 0.0, 1.0)
    with pytest.raises(ValueError, match="smoothing_std"):
        SmoothedDMMSE(pool, 0.5, 0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        DMMSE(pool, 0.5, chunk_size=0)
    with pytest.raises(ValueError, match="n_dims"):
        DMMSE(pool, 0.5)(torch.randn(2, 3, D + 1), torch.randn(2, 3))


# ----- analytic facts ----------------------------------------------------------------------------


def test_dmmse_single_task_is_that_task():
    xs, ys, pool = make_data(10, n_tasks=1)
    expected = torch.einsum("bkd,d->bk", xs, pool[0])
    torch.testing.assert_close(DMMSE(pool, 0.5)(xs, ys), expected, rtol=1e-5, atol=1e-5)


def relative_msd(a, b):
    """mean (a - b)^2 / mean b^2 over all sequences and positions."""
    return float(((a - b) ** 2).mean() / (b**2).mean())


def test_dmmse_large_pool_approaches_ridge():
    # 2^15 draws from N(0, I_3) importance-sample the Gaussian posterior. Its effective sample size
    # at the last position (posterior sd about 0.5/sqrt(7) per axis) is roughly M sd^D ~ 200, so the
    # Monte Carlo error of the posterior mean is ~ 0.2/sqrt(200) per axis: a relative squared
    # difference ~ 1e-3 or less. Tolerance 1e-2 leaves margin; a pool of 8 tasks is far above it.
    xs, ys, _ = make_data(11, batch=64, n_points=8, n_tasks=1)
    gen = torch.Generator().manual_seed(12)
    ridge = Ridge(0.5)(xs, ys)
    large = DMMSE(torch.randn(2**15, D, generator=gen), 0.5)(xs, ys)
    small = DMMSE(torch.randn(8, D, generator=gen), 0.5)(xs, ys)
    assert relative_msd(large, ridge) < 1e-2
    assert relative_msd(small, ridge) > 1e-1


def test_smoothed_dmmse_tiny_smoothing_is_dmmse():
    xs, ys, pool = make_data(13)
    expected = DMMSE(pool, 0.5)(xs, ys)
    out = SmoothedDMMSE(pool, 0.5, 1e-4, chunk_size=3)(xs, ys)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("smoothing_std", [0.3, 1.0, 4.0])
def test_smoothed_dmmse_zero_pool_is_ridge(smoothing_std):
    xs, ys, _ = make_data(14)
    out = SmoothedDMMSE(torch.zeros(1, D), 0.5, smoothing_std)(xs, ys)
    expected = Ridge(0.5, prior_std=smoothing_std)(xs, ys)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_smoothed_dmmse_large_pool_is_ridge_of_mixture_covariance():
    # The mixture of N(w_i, s^2 I), w_i ~ N(0, I), tends to N(0, (1 + s^2) I) as M grows. With
    # s = 1 the components overlap heavily, so 2^12 centres give a near-Gaussian prior (Monte Carlo
    # error in its covariance ~ 1/sqrt(M) ~ 2%; measured relative squared differences 4e-5..2e-4
    # over seeds), tolerance 1e-3. s = 1 rather than larger keeps the wrong covariances (s^2 or
    # (1 + s)^2) distinguishable: they give ~1e-2 and ~7e-3.
    xs, ys, _ = make_data(15, batch=64, n_points=8, n_tasks=1, noise_std=0.5)
    gen = torch.Generator().manual_seed(16)
    s = 1.0
    out = SmoothedDMMSE(torch.randn(2**12, D, generator=gen), 0.5, s)(xs, ys)
    assert relative_msd(out, Ridge(0.5, prior_std=math.sqrt(1 + s**2))(xs, ys)) < 1e-3
    assert relative_msd(out, Ridge(0.5, prior_std=s)(xs, ys)) > 3e-3
    assert relative_msd(out, Ridge(0.5, prior_std=1 + s)(xs, ys)) > 3e-3


def test_least_squares_is_ridge_without_noise_once_determined():
    # float64: the k = D prefix matrices may be ill-conditioned, and the claim is exact math.
    xs, ys, _ = make_data(17, noise_std=0.5)
    xs, ys = xs.double(), ys.double()
    ls = LeastSquares()(xs, ys)
    ridge = Ridge(1e-6)(xs, ys)
    torch.testing.assert_close(ridge[:, D:], ls[:, D:], rtol=1e-6, atol=1e-6)
    # Before D pairs G is singular and ridge tends to the minimum-norm solution, with a bias of
    # order lambda / (smallest nonzero eigenvalue of G); lambda = 1e-6 keeps the solve accurate.
    ridge = Ridge(1e-3)(xs, ys)
    torch.testing.assert_close(ridge[:, :D], ls[:, :D], rtol=1e-4, atol=1e-4)


# ----- memory at paper scale (excluded by default) -----------------------------------------------

_MEMORY_SCRIPT = """
import json, resource, time, torch
from iclab.estimators.pool_posterior import DMMSE
gen = torch.Generator().manual_seed(0)
pool = torch.randn(2**20, 8, generator=gen)
xs = torch.randn(4096, 16, 8, generator=gen)
ws = torch.randn(4096, 8, generator=gen)
ys = torch.einsum("bkd,bd->bk", xs, ws) + 0.5 * torch.randn(4096, 16, generator=gen)
estimator = DMMSE(pool, 0.5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = estimator(xs, ys)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "rss_growth_kib": after - before,
                  "finite": bool(torch.isfinite(out).all())}))
"""


@pytest.mark.slow
def test_dmmse_paper_scale_memory():
    """M = 2^20, 4096 sequences, D = 8, K = 16: peak RSS grows by < 2 GiB beyond pool and inputs."""
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["finite"]
    assert report["rss_growth_kib"] < 2 * 2**20
