"""Closed-form baselines for noisy linear regression (Raventos et al. 2023).

Data: y_j = w.x_j + eps_j, eps_j ~ N(0, noise_std^2). Every estimator has
`predict(xs, ys) -> (batch, n_points)` with xs (batch, n_points, n_dims) and ys (batch, n_points);
output k uses only the pairs 0..k-1 and xs[:, k]. Inputs of any device are accepted; float64 inputs
are computed in float64, everything else in float32, and the output has the input's dtype.

Notation: G_k = sum_{j<k} x_j x_j^T, b_k = sum_{j<k} y_j x_j (exclusive prefix sums over pairs).
"""

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

# The pool-posterior estimators work on tiles of (rows x pool chunk) energies. Tile elements when
# chunk_size is None: 2^19 float32 = 2 MiB. On the 2-core development machine (1 MiB L2 per core)
# tiles of 1-4 MiB ran alike and ~1.5x faster per element than 16 MiB ones, and the ~30 torch
# calls of a tile (0.1-0.2 ms of dispatch) stay small against its ~1.5 ms of work.
CHUNK_ELEMENTS = 2**19
# dMMSE tiles hold all pairs of whole sequences: 32 sequences x 15 pairs = 480 rows at K = 16.
SEQUENCES_PER_BLOCK = 32
# Smoothed dMMSE rows are independent (sequence, position) pairs.
ROWS_PER_BLOCK = 512

# Weights are 2^-energy (exp2 measured 2x faster than exp on this CPU). Clamping log2-weights at
# float32's smallest normal exponent keeps exp2 (and the products after it) out of the slow
# subnormal range; it adds at most 2^-126 per task relative to the best one, far below resolution.
LOG2_WEIGHT_FLOOR = -126.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_inputs(xs: Tensor, ys: Tensor, n_dims: int | None = None) -> None:
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (batch, n_points, n_dims), got {tuple(xs.shape)}")
    if tuple(ys.shape) != tuple(xs.shape[:2]):
        raise ValueError(f"ys must have shape {tuple(xs.shape[:2])}, got {tuple(ys.shape)}")
    if n_dims is not None and xs.shape[2] != n_dims:
        raise ValueError(f"xs has n_dims={xs.shape[2]} but the pool has n_dims={n_dims}")


def _check_pool(pool: Tensor) -> Tensor:
    pool = torch.as_tensor(pool)
    if pool.ndim != 2 or pool.shape[0] == 0:
        raise ValueError(f"pool must have shape (n_tasks >= 1, n_dims), got {tuple(pool.shape)}")
    return pool


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")


def auto_chunk_size(n_rows: int, n_tasks: int) -> int:
    """Pool rows per chunk so that n_rows * chunk stays near CHUNK_ELEMENTS (at least 1)."""
    return max(1, min(n_tasks, CHUNK_ELEMENTS // max(1, n_rows)))


def prefix_stats(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Exclusive prefix sums G (batch, K, D, D) and b (batch, K, D); G[:, 0] = 0, b[:, 0] = 0."""
    batch, n_points, n_dims = xs.shape
    gram = xs.new_zeros(batch, n_points, n_dims, n_dims)
    xty = xs.new_zeros(batch, n_points, n_dims)
    # Pair k-1 is the last one position k may use, so the sums stop one short of the end.
    torch.cumsum(xs[:, :-1, :, None] * xs[:, :-1, None, :], dim=1, out=gram[:, 1:])
    torch.cumsum(xs[:, :-1] * ys[:, :-1, None], dim=1, out=xty[:, 1:])
    return gram, xty


def min_norm_predictions(xs: Tensor, ys: Tensor) -> Tensor:
    """Minimum-norm least-squares prediction per position (0 at position 0), in xs's dtype.

    Uses the SVD pseudo-inverse of each k x D prefix (not of G = X^T X, whose condition number is
    squared); the loop runs over the K positions only.
    """
    batch, n_points, _ = xs.shape
    preds = xs.new_zeros(batch, n_points)
    for k in range(1, n_points):
        w = torch.linalg.pinv(xs[:, :k]) @ ys[:, :k, None]  # (batch, D, 1)
        preds[:, k] = (xs[:, k] * w[..., 0]).sum(-1)
    return preds


def stream_pool_mean(
    pool: Tensor,
    row_features: Tensor,
    chunk_features: Callable[[Tensor], Tensor],
    block_rows: int,
    chunk_size: int | None = None,
    finish: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Posterior means sum_i 2^-e[r, i] w_i / sum_i 2^-e[r, i] of the pool (M, D) per row r.

    Energies e (log2 units, up to a constant per row) come tile by tile: for rows r0:r0+block_rows
    and pool chunk c, e = row_features[rows] @ chunk_features(pool[c]), with row_features
    (n_rows, F) and chunk_features(chunk) (F, len(chunk)), then finish(e) in place if given. One reused buffer holds a tile, and a running log-sum-exp per row
    (lowest energy so far, weighted sums of [w_i, 1] relative to it) combines the tiles, so memory
    does not grow with the pool size. Returns (n_rows, D).

    On CPU with torch.get_num_threads() = n > 1, n worker threads each stream their share of whole
    row blocks with single-threaded torch ops. Intra-op threads would meet at every one of the ~30
    ops of a tile; on a loaded machine, where a thread often waits for a core, that made a 2-thread
    run 50x slower than 1 thread. Independent workers only meet at the end.
    """
    n_rows = len(row_features)
    n_blocks = -(-n_rows // block_rows)
    workers = min(torch.get_num_threads(), n_blocks) if pool.device.type == "cpu" else 1
    if workers == 1:
        return _stream_rows(pool, row_features, chunk_features, block_rows, chunk_size, finish)
    shares = row_features.split(-(-n_blocks // workers) * block_rows)

    def stream(share: Tensor) -> Tensor:
        return _stream_rows(pool, share, chunk_features, block_rows, chunk_size, finish)

    with _single_threaded_ops(), ThreadPoolExecutor(len(shares)) as executor:
        return torch.cat(list(executor.map(stream, shares)))


_THREAD_COUNT_LOCK = threading.Lock()


@contextmanager
def _single_threaded_ops():
    """torch.set_num_threads(1) until exit, then the previous count. Threads started inside take
    1 as their default, so their ops run without intra-op threads. The lock keeps concurrent
    callers from restoring each other's 1."""
    with _THREAD_COUNT_LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@torch.no_grad()  # grad mode is per thread: workers start with it on
def _stream_rows(
    pool: Tensor,
    row_features: Tensor,
    chunk_features: Callable[[Tensor], Tensor],
    block_rows: int,
    chunk_size: int | None,
    finish: Callable[[Tensor], None] | None,
) -> Tensor:
    """stream_pool_mean in the calling thread."""
    n_tasks, n_dims = pool.shape
    n_rows = len(row_features)
    chunk_size = chunk_size or auto_chunk_size(block_rows, n_tasks)
    lowest = pool.new_full((n_rows,), math.inf)
    # Rows 0..D-1: sum_i weight_i w_i; row D: sum_i weight_i. Kept transposed (D + 1, n_rows)
    # because tasks @ weights.T measured faster here than weights @ tasks.T.
    acc = pool.new_zeros(n_dims + 1, n_rows)
    buffer = pool.new_empty(min(block_rows, n_rows) * min(chunk_size, n_tasks))
    for start in range(0, n_tasks, chunk_size):
        chunk = pool[start : start + chunk_size]
        side = chunk_features(chunk)
        tasks = torch.cat([chunk.T, chunk.new_ones(1, len(chunk))])
        for row in range(0, n_rows, block_rows):
            rows = slice(row, row + block_rows)
            features = row_features[rows]
            tile = buffer[: len(features) * len(chunk)].view(len(features), len(chunk))
            e = torch.mm(features, side, out=tile)
            if finish is not None:
                finish(e)
            new_lowest = torch.minimum(lowest[rows], e.amin(1))
            # Rescale the sums so far to the new reference; on the first chunk 2^-inf = 0.
            decay = torch.exp2(new_lowest - lowest[rows])
            # In place: 2^(lowest - e), so the best task of each row has weight 1.
            weights = torch.sub(new_lowest[:, None], e, out=e).clamp_(min=LOG2_WEIGHT_FLOOR).exp2_()
            acc[:, rows].mul_(decay).add_(tasks @ weights.T)
            lowest[rows] = new_lowest
    return (acc[:-1] / acc[-1]).T


class Ridge:
    """Posterior mean for the prior w ~ N(0, prior_std^2 I): w_k = (G_k + lambda I)^-1 b_k.

    lambda = noise_std^2 / prior_std^2; position 0 predicts 0. With noise_std == 0 (lambda = 0) G_k
    is singular while k < D, so that case returns the minimum-norm least-squares solution (the
    lambda -> 0 limit of ridge), computed as in LeastSquares.
    """

    name = "Ridge"

    def __init__(self, noise_std: float, prior_std: float = 1.0):
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if not prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {prior_std}")
        self.noise_std = float(noise_std)
        self.prior_std = float(prior_std)

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        _check_inputs(xs, ys)
        dtype = _compute_dtype(xs.dtype)
        xs_c, ys_c = xs.to(dtype), ys.to(dtype)
        if self.noise_std == 0:
            return min_norm_predictions(xs_c, ys_c).to(xs.dtype)
        gram, xty = prefix_stats(xs_c, ys_c)
        gram.diagonal(dim1=-2, dim2=-1).add_((self.noise_std / self.prior_std) ** 2)
        w = torch.linalg.solve(gram, xty)  # one batched solve for all (sequence, position) pairs
        return (xs_c * w).sum(-1).to(xs.dtype)

    __call__ = predict


class LeastSquares:
    """Minimum-norm least squares on the pairs before each position; position 0 predicts 0."""

    name = "Least squares"

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        _check_inputs(xs, ys)
        dtype = _compute_dtype(xs.dtype)
        return min_norm_predictions(xs.to(dtype), ys.to(dtype)).to(xs.dtype)

    __call__ = predict


class _PoolPosterior:
    """Shared set-up of the estimators whose prior lives on a pool of tasks (M, D)."""

    def __init__(self, pool: Tensor, noise_std: float, chunk_size: int | None = None):
        if not noise_std > 0:
            raise ValueError(f"noise_std must be > 0 for {self.name}, got {noise_std}")
        _check_chunk_size(chunk_size)
        self.pool = _check_pool(pool)
        self.noise_std = float(noise_std)
        self.chunk_size = chunk_size

    def _inputs(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """xs, ys and the pool, checked, in the compute dtype on xs's device."""
        _check_inputs(xs, ys, self.pool.shape[1])
        dtype = _compute_dtype(xs.dtype)
        return xs.to(dtype), ys.to(dtype), self.pool.to(xs.device, dtype)


class DMMSE(_PoolPosterior):
    """Bayes estimator for the uniform prior over a pool of tasks (M, D).

    Position 0 predicts mean(pool).x_0; position k predicts sum_i pi_i (w_i . x_k) with
    pi = softmax_i(-sum_{j<k} (y_j - w_i.x_j)^2 / (2 noise_std^2)). The residuals are summed
    directly (not expanded via G and b) so the log-weights stay accurate when the noise is tiny.
    All positions come from one pass over the pool: per tile of 32 sequences x chunk_size tasks,
    one matrix product gives every residual, a running sum over pairs turns them into the energies
    of all K - 1 prefixes, and stream_pool_mean weights them. chunk_size None: automatic, about
    CHUNK_ELEMENTS / (32 (K - 1)) tasks.
    """

    name = "dMMSE"

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        xs_c, ys_c, pool = self._inputs(xs, ys)
        batch, n_points, n_dims = xs.shape
        preds = xs_c.new_empty(batch, n_points)
        preds[:, 0] = xs_c[:, 0] @ pool.mean(0)
        if n_points == 1:
            return preds.to(xs.dtype)
        n_pairs = n_points - 1
        # [x, -y] . [w, 1] = w.x - y puts the residual inside the matrix product; the factor
        # sqrt(log2(e) / (2 sigma^2)) makes its square the energy in log2 units.
        scale = math.sqrt(math.log2(math.e) / 2) / self.noise_std
        pairs = torch.cat([xs_c[:, :-1], -ys_c[:, :-1, None]], dim=-1) * scale
        # Blocks of n_seq sequences (zero-padded: zero pairs add zero energy), pair-major inside a
        # block, so that pair j of all its sequences is one contiguous slab of a tile.
        n_blocks = -(-batch // SEQUENCES_PER_BLOCK)
        n_seq = -(-batch // n_blocks)
        padded = pairs.new_zeros(n_blocks * n_seq, n_pairs, n_dims + 1)
        padded[:batch] = pairs
        rows = padded.view(n_blocks, n_seq, n_pairs, -1).transpose(1, 2).reshape(-1, n_dims + 1)

        def energies(tile: Tensor) -> None:
            # Residuals -> energies in place: slab j becomes the sum of squares over pairs 0..j,
            # the energy of position j + 1. One fused op per slab, no separate squaring pass.
            slabs = tile.view(n_pairs, n_seq, -1).unbind(0)
            slabs[0].square_()
            for previous, current in zip(slabs[:-1], slabs[1:], strict=True):
                torch.addcmul(previous, current, current, out=current)

        def tasks_and_one(chunk: Tensor) -> Tensor:
            return torch.cat([chunk.T, chunk.new_ones(1, len(chunk))])

        w_bar = stream_pool_mean(
            pool, rows, tasks_and_one, n_pairs * n_seq, self.chunk_size, energies
        )
        w_bar = w_bar.view(n_blocks, n_pairs, n_seq, n_dims).transpose(1, 2)
        w_bar = w_bar.reshape(-1, n_pairs, n_dims)[:batch]
        preds[:, 1:] = (xs_c[:, 1:] * w_bar).sum(-1)
        return preds.to(xs.dtype)

    __call__ = predict


class SmoothedDMMSE(_PoolPosterior):
    """Bayes estimator for the prior (1/M) sum_i N(w_i, s^2 I), s = smoothing_std > 0.

    With S = sigma^2 I + s^2 G and H = S^-1, component i has posterior mean
    m_i = A^-1 (b / sigma^2 + w_i / s^2) = H (s^2 b + sigma^2 w_i), A = G / sigma^2 + I / s^2, and
    log-weight -1/2 r_i^T (sigma^2 I + s^2 X X^T)^-1 r_i, r_i = y - X w_i. By Woodbury and dropping
    the terms that do not depend on i (they contain y^T y and b^T H b), the log-weight is
        w_i^T H b - 1/2 w_i^T (H G) w_i,
    with H G formed directly (never as (I - sigma^2 H) / s^2, which cancels catastrophically for
    small s). The prediction sum_i pi_i m_i . x_k is then (H x_k) . (s^2 b + sigma^2 w_bar) with
    w_bar = sum_i pi_i w_i, streamed over pool chunks like DMMSE; with no data the weights are
    uniform and the prediction is mean(pool) . x_0.

    Precision: unlike DMMSE the residuals are expanded, so float32 log-weights carry absolute errors
    of about 1e-7 (|w|^2 |G|) / min(noise_std^2, s^2 |G|); and the sufficient statistics cannot
    resolve noise_std^2 below about 1e-7 s^2 |G|. Pass float64 inputs for such extreme settings.
    """

    name = "Smoothed dMMSE"

    def __init__(
        self,
        pool: Tensor,
        noise_std: float,
        smoothing_std: float,
        chunk_size: int | None = None,
    ):
        if not smoothing_std > 0:
            raise ValueError(f"smoothing_std must be > 0, got {smoothing_std}")
        super().__init__(pool, noise_std, chunk_size)
        self.smoothing_std = float(smoothing_std)

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        xs_c, ys_c, pool = self._inputs(xs, ys)
        batch, n_points, n_dims = xs.shape
        var_noise, var_smooth = self.noise_std**2, self.smoothing_std**2
        gram, xty = prefix_stats(xs_c, ys_c)
        cov = gram * var_smooth
        cov.diagonal(dim1=-2, dim2=-1).add_(var_noise)
        # One solve gives H G, H b and H x_k for every (sequence, position).
        sol = torch.linalg.solve(cov, torch.cat([gram, xty[..., None], xs_c[..., None]], dim=-1))
        hg, hb, hx = sol[..., :n_dims], sol[..., n_dims], sol[..., n_dims + 1]
        # Energy_i = 1/2 w^T (HG) w - w . Hb as one matrix product over [w, w_a w_b (a <= b)].
        rows, cols = torch.triu_indices(n_dims, n_dims, device=xs.device)
        pair_coef = torch.where(
            rows == cols, hg[..., rows, cols], hg[..., rows, cols] + hg[..., cols, rows]
        )
        # log2(e) turns the natural-log energy into log2 units for stream_pool_mean's exp2.
        features = torch.cat([-hb, 0.5 * pair_coef], dim=-1) * math.log2(math.e)
        features = features.reshape(batch * n_points, len(rows) + n_dims)

        def chunk_side(chunk: Tensor) -> Tensor:
            return torch.cat([chunk, chunk[:, rows] * chunk[:, cols]], dim=1).T

        w_bar = stream_pool_mean(pool, features, chunk_side, ROWS_PER_BLOCK, self.chunk_size)
        w_bar = w_bar.view(batch, n_points, n_dims)
        preds = (hx * (var_smooth * xty + var_noise * w_bar)).sum(-1)
        return preds.to(xs.dtype)

    __call__ = predict
