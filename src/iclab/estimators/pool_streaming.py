"""Streaming over a pool of tasks: posterior means over the pool computed tile by tile, so memory
does not grow with the pool size, in worker threads on the CPU. Used by the pool-posterior
estimators (estimators/pool_posterior.py)."""

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
# On a GPU a tile's cost is its ~30 kernel launches, not cache misses: tiles of 2^25 elements
# (128 MiB of float32) make the launches small against the work.
DEVICE_CHUNK_ELEMENTS = 2**25


# Weights are 2^-energy (exp2 measured 2x faster than exp on this CPU). Clamping log2-weights at
# float32's smallest normal exponent keeps exp2 (and the products after it) out of the slow
# subnormal range; it adds at most 2^-126 per task relative to the best one, far below resolution.
LOG2_WEIGHT_FLOOR = -126.0


def tile_elements(device: torch.device) -> int:
    """Elements of a tile on device: CHUNK_ELEMENTS on the CPU, DEVICE_CHUNK_ELEMENTS else."""
    return CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


def auto_chunk_size(n_rows: int, n_tasks: int, elements: int) -> int:
    """Pool rows per chunk so that n_rows * chunk stays near `elements` (at least 1)."""
    return max(1, min(n_tasks, elements // max(1, n_rows)))


def stream_pool_mean(
    pool: Tensor,
    row_features: Tensor,
    chunk_features: Callable[[Tensor], Tensor],
    block_rows: int,
    chunk_size: int | None = None,
) -> Tensor:
    """Posterior means sum_i 2^-e[r, i] w_i / sum_i 2^-e[r, i] of the pool (M, D) per row r.

    Energies e (log2 units, up to a constant per row) come tile by tile: for a block of
    block_rows rows and a pool chunk c, e[rows, c] = row_features[rows] @ chunk_features(pool[c]).T,
    with row_features (n_rows, F) and chunk_features(chunk) (len(chunk), F). RunningMean folds
    each tile into a running log-sum-exp per row, so memory does not grow with the pool size.
    Returns (n_rows, D). On CPU with torch.get_num_threads() = n > 1, n worker threads
    (map_in_workers) each stream their share of the row blocks.
    """
    task_columns = pool_columns(pool)

    @torch.no_grad()  # grad mode is per thread: workers start with it on
    def stream(rows: Tensor) -> Tensor:
        size = chunk_size or auto_chunk_size(len(rows), len(pool), tile_elements(pool.device))
        mean = RunningMean(task_columns, len(rows))
        buffer = pool.new_empty(min(size, len(pool)) * len(rows))
        for start in range(0, len(pool), size):
            chunk = pool[start : start + size]
            tile = buffer[: len(rows) * len(chunk)].view(len(rows), len(chunk))
            energies = torch.mm(rows, chunk_features(chunk).T, out=tile)
            mean.add(energies, task_columns[:, start : start + size])
        return mean.value()

    return torch.cat(map_in_workers(stream, row_features.split(block_rows), pool.device))


def map_in_workers(fn: Callable, items: list | tuple, device: torch.device) -> list:
    """[fn(item) for item in items]; on CPU, torch.get_num_threads() worker threads take a
    contiguous share of the items each.

    The workers run single-threaded torch ops. Intra-op threads would meet at every one of the ~30
    ops of a tile; on a loaded machine, where a thread often waits for a core, that made a 2-thread
    run 50x slower than 1 thread. Independent workers only meet at the end.
    """
    workers = min(torch.get_num_threads(), len(items)) if device.type == "cpu" else 1
    if workers <= 1:
        return [fn(item) for item in items]
    size = -(-len(items) // workers)
    shares = [items[start : start + size] for start in range(0, len(items), size)]

    def run(share: list | tuple) -> list:
        return [fn(item) for item in share]

    with single_threaded_ops(), ThreadPoolExecutor(len(shares)) as executor:
        return [out for outs in executor.map(run, shares) for out in outs]


_THREAD_COUNT_LOCK = threading.Lock()


@contextmanager
def single_threaded_ops():
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


def pool_columns(pool: Tensor) -> Tensor:
    """(D + 1, M): column i is [w_i, 1], so that [x, -y] . [w, 1] = w.x - y."""
    return torch.cat([pool.T, pool.new_ones(1, len(pool))])


class RunningMean:
    """Weighted means of the pool's tasks for n_rows rows, from tiles of energies (log2 units).

    Keeps per row the lowest energy so far and the sums of 2^(lowest - energy_i) [w_i, 1], so
    the best task has weight 1 and nothing overflows; tiles are folded in as they come.
    """

    def __init__(self, task_columns: Tensor, n_rows: int):
        self.lowest = task_columns.new_full((n_rows,), math.inf)
        self.sums = task_columns.new_zeros(len(task_columns), n_rows)

    def add(self, energies: Tensor, task_columns: Tensor) -> None:
        """Folds in energies (n_rows, chunk) of the tasks task_columns (D + 1, chunk) (see
        pool_columns); the energies are overwritten."""
        lowest = torch.minimum(self.lowest, energies.amin(1))
        # Rescale the sums so far to the new reference; on the first tile 2^-inf = 0.
        decay = torch.exp2(lowest - self.lowest)
        weights = torch.sub(lowest[:, None], energies, out=energies)
        weights.clamp_(min=LOG2_WEIGHT_FLOOR).exp2_()
        self.sums.mul_(decay).addmm_(task_columns, weights.T)
        self.lowest = lowest

    def value(self) -> Tensor:
        """(n_rows, D) weighted means."""
        return (self.sums[:-1] / self.sums[-1]).T


class ThreadBuffers(threading.local):
    """Buffers reused by the calls of one thread: fresh large tensors cost page faults on first
    touch, measured at ~20 ms per 32 MiB here."""

    def get(self, like: Tensor, shape: tuple[int, ...], name: str = "") -> Tensor:
        """An uninitialised tensor of shape, like's dtype and device, reused for the same name."""
        numel = math.prod(shape)
        key = (name, like.dtype, like.device)
        buffers = self.__dict__.setdefault("buffers", {})
        if key not in buffers or buffers[key].numel() < numel:
            buffers[key] = like.new_empty(numel)
        return buffers[key][:numel].view(shape)
