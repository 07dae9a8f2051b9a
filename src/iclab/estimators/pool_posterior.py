"""Estimators whose prior lives on a pool of tasks (M, D): DMMSE and SmoothedDMMSE.

Same data, call shape, dtype and device rules and notation as iclab.estimators.regression, whose
input checks and prefix_stats they use. Both average over the pool's tasks with posterior weights,
streaming the pool in tiles of (rows x pool chunk) energies so that memory does not grow with M
(iclab.estimators.pool_streaming); DMMSE has its own blocks and candidate pruning for large pools
(_dmmse_block, _later_means).
"""

import math

import torch
from torch import Tensor

from iclab.estimators.pool_streaming import (
    LOG2_WEIGHT_FLOOR,
    RunningMean,
    ThreadBuffers,
    auto_chunk_size,
    map_in_workers,
    pool_columns,
    stream_pool_mean,
    tile_elements,
)
from iclab.estimators.regression import (
    _check_chunk_size,
    _check_inputs,
    _check_pool,
    _compute_dtype,
    prefix_stats,
)

# dMMSE tiles hold the first pairs of whole sequences: 32 sequences x 8 pairs = 256 rows at D = 8
# on the CPU; a GPU takes larger blocks and tiles (pool_streaming.DEVICE_CHUNK_ELEMENTS).
SEQUENCES_PER_BLOCK = 32
DEVICE_SEQUENCES_PER_BLOCK = 1024
# Pruning dMMSE blocks (on the CPU) have fewer sequences when the pool is larger than 2^20 tasks, so
# that the energies they keep (one per sequence and task) stay within 2^25 float32 = 128 MiB per
# worker thread.
STORED_ENERGIES = 2**25
# Smoothed dMMSE rows are independent (sequence, position) pairs.
ROWS_PER_BLOCK = 512
DEVICE_ROWS_PER_BLOCK = 2**14

# dMMSE drops a task from the later positions once its weight there is provably below
# 2^-(resolution + PRUNE_EXTRA_LOG2) / M of the best task's, resolution being the float type's
# mantissa bits (23 for float32, 52 for float64): all dropped tasks together weigh less than
# 2^-PRUNE_EXTRA_LOG2 of what the float can resolve.
PRUNE_EXTRA_LOG2 = 8
PRUNE_MIN_TASKS = 2**17
# dMMSE candidate search: tasks are screened in groups of CANDIDATE_GROUP by their lowest energy,
# and the bound comes from the BEST_GROUPS groups with the lowest energies (see _later_means).
CANDIDATE_GROUP = 4
BEST_GROUPS = 16


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
    pi = softmax_i(-E_k(w_i)), E_k(w) = sum_{j<k} (y_j - w.x_j)^2 / (2 noise_std^2). The residuals
    are summed directly (not expanded via G and b) so the energies stay accurate when the noise is
    tiny. Blocks of 32 sequences (1024 on a GPU) stream the pool in chunks of chunk_size tasks
    (None: automatic, tiles of about CHUNK_ELEMENTS, DEVICE_CHUNK_ELEMENTS on a GPU); see
    _dmmse_block.

    Exact up to float rounding, with one shortcut on the CPU for pools of at least PRUNE_MIN_TASKS
    tasks. Once a = max(D, 2) pairs pin w down, almost every task has negligible weight, so
    positions 1..a-1 weight every task but positions a..K-1 weight only
    the candidates with E_a(w_i) <= U + (mantissa bits + PRUNE_EXTRA_LOG2 + log2 M) ln 2, where
    U = E_{K-1}(w_j) for some task j. As E_k only grows with k and min_i E_k(w_i) <= U for k < K,
    each dropped task weighs less than 2^-(mantissa bits + PRUNE_EXTRA_LOG2) / M of the best one at
    every such position. At D = 8, K = 16, noise_std = 0.5, M = 2^20 about 4% of the tasks stay.
    """

    name = "dMMSE"

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        means = self.posterior_means(xs, ys)
        return (xs.to(means.dtype) * means).sum(-1).to(xs.dtype)

    __call__ = predict

    @torch.no_grad()
    def posterior_means(self, xs: Tensor, ys: Tensor) -> Tensor:
        """The posterior mean of w given the pairs before each position, (batch, n_points,
        n_dims), in the compute dtype (position 0: the pool's mean)."""
        xs_c, ys_c, pool = self._inputs(xs, ys)
        batch, n_points, n_dims = xs.shape
        means = xs_c.new_empty(batch, n_points, n_dims)
        means[:, 0] = pool.mean(0)
        if n_points == 1:
            return means
        # [x, -y] . [w, 1] = w.x - y puts the residual inside the matrix product; the factor
        # sqrt(log2(e) / (2 sigma^2)) makes its square the energy in log2 units.
        scale = math.sqrt(math.log2(math.e) / 2) / self.noise_std
        pairs = torch.cat([xs_c[:, :-1], -ys_c[:, :-1, None]], dim=-1) * scale
        # Pools below PRUNE_MIN_TASKS are weighted densely at every position: the candidate search
        # costs ~0.8 ms per sequence in torch calls, more than the later positions of such a pool
        # (measured here on 1024 sequences: break-even near M = 2^17). A GPU weights every task
        # at every position fast, while the search's per-sequence calls and host syncs would
        # dominate there: it prunes on the CPU only.
        on_cpu = pool.device.type == "cpu"
        pruning = on_cpu and len(pool) >= PRUNE_MIN_TASKS
        n_dense = min(n_points - 1, max(1, n_dims - 1)) if pruning else n_points - 1
        resolution = -math.log2(torch.finfo(pool.dtype).eps)  # mantissa bits
        margin = resolution + PRUNE_EXTRA_LOG2 + math.log2(len(pool))
        task_columns = pool_columns(pool)
        # Candidates are gathered as rows: one cache line each, against D + 1 for columns.
        task_rows = task_columns.T.contiguous()
        block_size = SEQUENCES_PER_BLOCK if on_cpu else DEVICE_SEQUENCES_PER_BLOCK
        if pruning:  # a block keeps E_a of all its sequences and tasks: about STORED_ENERGIES
            block_size = max(1, min(block_size, STORED_ENERGIES // len(pool)))
        n_blocks = -(-batch // block_size)
        blocks = pairs.split(-(-batch // n_blocks))  # even sizes, at most block_size
        store = ThreadBuffers()

        def block_means(block: Tensor) -> Tensor:
            return _dmmse_block(
                task_columns, task_rows, block, n_dense, margin, self.chunk_size, store
            )

        means[:, 1:] = torch.cat(map_in_workers(block_means, blocks, pool.device))
        return means


def _prefix_energies(slabs: tuple[Tensor, ...]) -> None:
    """Residuals -> energies in place: slab j becomes the sum of squares over slabs 0..j.

    One fused op per slab, no separate squaring pass."""
    slabs[0].square_()
    for previous, current in zip(slabs[:-1], slabs[1:], strict=True):
        torch.addcmul(previous, current, current, out=current)


@torch.no_grad()  # grad mode is per thread: workers start with it on
def _dmmse_block(
    task_columns: Tensor,
    task_rows: Tensor,
    pairs: Tensor,
    n_dense: int,
    margin: float,
    chunk_size: int | None,
    store: "ThreadBuffers",
) -> Tensor:
    """Posterior means (n_seq, P, D) of the pool after pairs 1..P, for pairs (n_seq, P, D + 1).

    task_columns is pool_columns(pool) and task_rows its transpose; pairs holds the scaled
    [x_j, -y_j], so that
    pairs . [w, 1] is a residual whose square is an energy in log2 units. Prefixes 1..n_dense are
    weighted densely: per pool chunk, one matrix product gives the residuals of pairs 0..n_dense
    (a tile of (pair-major rows, chunk), so pair j of all sequences is one slab),
    _prefix_energies sums them, and RunningMean folds slabs 0..n_dense - 1 in. Slab n_dense, the
    energies after a = n_dense + 1 pairs, is kept for all tasks; _later_means then weights each
    sequence's candidates at prefixes a..P. store lends the thread's reusable buffers.
    """
    n_tasks = task_columns.shape[1]
    n_seq, n_pairs, n_features = pairs.shape
    pruned = n_dense < n_pairs
    n_slabs = n_dense + pruned
    rows = pairs[:, :n_slabs].transpose(0, 1).reshape(n_slabs * n_seq, n_features)
    n_dense_rows = n_dense * n_seq
    chunk_size = chunk_size or auto_chunk_size(len(rows), n_tasks, tile_elements(pairs.device))
    dense = RunningMean(task_columns, n_dense_rows)
    buffer = store.get(task_columns, (len(rows) * min(chunk_size, n_tasks),), "tile")
    # Energies at prefix a, (n_seq, tasks), padded with +inf to whole groups of CANDIDATE_GROUP.
    n_groups = -(-n_tasks // CANDIDATE_GROUP) if pruned else 0
    energy_at_a = store.get(task_columns, (n_seq, n_groups * CANDIDATE_GROUP))
    energy_at_a[:, n_tasks:] = math.inf
    for start in range(0, n_tasks, chunk_size):
        tasks = task_columns[:, start : start + chunk_size]
        tile = buffer[: len(rows) * tasks.shape[1]].view(len(rows), -1)
        energies = torch.mm(rows, tasks, out=tile)
        slabs = energies.view(n_slabs, n_seq, -1).unbind(0)
        _prefix_energies(slabs)
        if pruned:
            energy_at_a[:, start : start + tasks.shape[1]] = slabs[-1]
        dense.add(energies[:n_dense_rows], tasks)
    means = dense.value().view(n_dense, n_seq, -1).transpose(0, 1)
    if not pruned:
        return means
    # Group g holds the tasks g, g + n_groups, g + 2 n_groups, ...: these strided groups reduce
    # ~10x faster than contiguous ones.
    group_lowest = energy_at_a.view(n_seq, CANDIDATE_GROUP, n_groups).amin(1)
    later = [
        _later_means(task_rows, e, lowest, p, margin)
        for e, lowest, p in zip(energy_at_a, group_lowest, pairs[:, n_slabs:], strict=True)
    ]
    return torch.cat([means, torch.stack(later)], dim=1)


def _later_means(
    task_rows: Tensor,
    energy_at_a: Tensor,
    group_lowest: Tensor,
    later_pairs: Tensor,
    margin: float,
) -> Tensor:
    """(P - a + 1, D) posterior means of one sequence at prefixes a..P over its candidates.

    energy_at_a (CANDIDATE_GROUP * n_groups,) holds E_a of every task (then +inf); group g holds
    the tasks g, g + n_groups, g + 2 n_groups, ... and group_lowest (n_groups,) their lowest E_a;
    later_pairs (P - a, D + 1) holds the scaled pairs a..P-1. The bound U is the lowest E_P among
    the tasks of the BEST_GROUPS groups with the lowest E_a; the candidates are the tasks with
    E_a <= U + margin, found group by group (a group whose lowest E_a is above that holds none).
    """
    groups = energy_at_a.view(CANDIDATE_GROUP, -1)
    n_groups = groups.shape[1]
    # The best groups come from the best sets of BEST_GROUPS groups (set s: s, s + n_supers, ...):
    # a top-k over all groups took 1.5 ms per sequence at M = 2^20, a tenth of the search.
    n_supers = -(-n_groups // BEST_GROUPS)
    super_lowest = group_lowest.new_full((BEST_GROUPS * n_supers,), math.inf)
    super_lowest[:n_groups] = group_lowest
    supers = (
        super_lowest.view(BEST_GROUPS, -1).amin(0).topk(min(BEST_GROUPS, n_supers), largest=False)
    )
    device = energy_at_a.device
    best = (supers.indices + n_supers * torch.arange(BEST_GROUPS, device=device)[:, None]).view(-1)
    tasks = (best + n_groups * torch.arange(CANDIDATE_GROUP, device=device)[:, None]).view(-1)
    tasks = tasks[(best < n_groups).repeat(CANDIDATE_GROUP) & (tasks < len(task_rows))]
    bound = _energies(task_rows[tasks], energy_at_a[tasks], later_pairs)[-1].amin()
    limit = bound + margin
    flagged = torch.nonzero(group_lowest <= limit)[:, 0]
    hits = torch.nonzero(groups.index_select(1, flagged).view(-1) <= limit)[:, 0]
    tasks = hits // len(flagged) * n_groups + flagged.index_select(0, hits % len(flagged))
    # index_select: several times faster here than indexing with [tasks].
    candidates = task_rows.index_select(0, tasks)
    energies = _energies(candidates, energy_at_a.index_select(0, tasks), later_pairs)
    weights = torch.sub(energies.amin(1, keepdim=True), energies)
    sums = weights.clamp_(min=LOG2_WEIGHT_FLOOR).exp2_() @ candidates
    return sums[:, :-1] / sums[:, -1:]


def _energies(task_rows: Tensor, energy_at_a: Tensor, later_pairs: Tensor) -> Tensor:
    """(P - a + 1, n) energies at prefixes a..P of n tasks (n, D + 1), from their E_a (n,)."""
    energies = energy_at_a.new_empty(len(later_pairs) + 1, len(energy_at_a))
    energies[0] = energy_at_a
    torch.mm(later_pairs, task_rows.T, out=energies[1:]).square_()
    return energies.cumsum_(0)


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
            return torch.cat([chunk, chunk[:, rows] * chunk[:, cols]], dim=1)

        block_rows = ROWS_PER_BLOCK if pool.device.type == "cpu" else DEVICE_ROWS_PER_BLOCK
        w_bar = stream_pool_mean(pool, features, chunk_side, block_rows, self.chunk_size)
        w_bar = w_bar.view(batch, n_points, n_dims)
        preds = (hx * (var_smooth * xty + var_noise * w_bar)).sum(-1)
        return preds.to(xs.dtype)

    __call__ = predict
