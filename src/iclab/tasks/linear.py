"""Tasks on linear functions of x ~ N(0, I_D): a task is a vector w, from a pool of M tasks or a prior.

The pretraining distribution is uniform over a pool of M tasks; the pool for M is the first M rows
of one master stream (drawn in fixed blocks, each from its own seed), so pools are nested in M for
a fixed pool_seed and a sweep over M changes only the diversity. M = infinity (n_tasks None) draws a
fresh task per sequence, as the true distribution always does. LinearTask draws (xs, ws) and leaves
the labels and the loss to its family's sampler (tasks.regression, tasks.classification).
"""

import math

import torch

from iclab.seeding import (
    EVAL_STREAM,
    POOL_STREAM,
    TRAIN_STREAM,
    RandomSource,
    integers,
    make_generator,
    normal,
    uniform,
)

POOL_BLOCK_ROWS = 4096
DISTRIBUTIONS = ("pretrain", "true")


def draw_prior(
    prior: str, shape: tuple[int, ...], prior_std: float, generator: RandomSource, device
) -> torch.Tensor:
    """Tasks from the prior: Gaussian, or Laplace as b (E1 - E2) with E1, E2 ~ Exponential(1) and
    b = prior_std / sqrt(2), so that both have variance prior_std^2 per coordinate."""
    if prior == "gaussian":
        return prior_std * normal(generator, shape, device)
    uniforms = uniform(generator, (2, *shape), device)
    exponential = -torch.log1p(-uniforms)  # 1 - U lies in (0, 1], so this is finite
    return prior_std / math.sqrt(2.0) * (exponential[0] - exponential[1])


def draw_pool(
    n_tasks: int, n_dims: int, prior_std: float, pool_seed: int, prior: str = "gaussian"
) -> torch.Tensor:
    """The first n_tasks rows of the master task stream of pool_seed: (n_tasks, n_dims), on CPU.

    Drawn on the CPU in blocks of POOL_BLOCK_ROWS rows, each block from its own seed, so the rows do
    not depend on n_tasks or on the device that trains.
    """
    n_blocks = -(-n_tasks // POOL_BLOCK_ROWS)
    blocks = [
        draw_prior(
            prior,
            (POOL_BLOCK_ROWS, n_dims),
            prior_std,
            make_generator("cpu", pool_seed, POOL_STREAM, block),
            "cpu",
        )
        for block in range(n_blocks)
    ]
    return torch.cat(blocks)[:n_tasks]


class LinearTask:
    """A sampler of (xs, labels) batches with tasks w from the config's pool or prior.

    The config has n_dims, n_points, n_tasks, prior_std and pool_seed; `prior` names the prior
    ("gaussian" or "laplace"; see draw_prior). Subclasses define `labels` and `loss`.
    xs: (batch, n_points, n_dims), labels: (batch, n_points).
    """

    prior = "gaussian"

    def __init__(self, config, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.pool = None
        if config.n_tasks is not None:
            pool = draw_pool(
                config.n_tasks, config.n_dims, config.prior_std, config.pool_seed, self.prior
            )
            self.pool = pool.to(self.device)

    def labels(self, xs: torch.Tensor, ws: torch.Tensor, generator: torch.Generator):
        """The labels (batch, n_points) of xs under the tasks ws (batch, n_dims)."""
        raise NotImplementedError

    def sample(
        self, generator: torch.Generator, batch_size: int, distribution: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw (xs, ys, ws) from `pretrain` (the pool) or `true` (the prior)."""
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution {distribution!r} is not one of {DISTRIBUTIONS}")
        c, device = self.config, self.device
        xs = normal(generator, (batch_size, c.n_points, c.n_dims), device)
        if distribution == "pretrain" and self.pool is not None:
            index = integers(generator, len(self.pool), (batch_size,), device)
            ws = self.pool[index]
        else:
            ws = draw_prior(self.prior, (batch_size, c.n_dims), c.prior_std, generator, device)
        return xs, self.labels(xs, ws, generator), ws

    def sequences_of(
        self, ws: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh (xs, labels) for given tasks ws (batch, n_dims), one sequence per row."""
        c = self.config
        xs = normal(generator, (len(ws), c.n_points, c.n_dims), self.device)
        return xs, self.labels(xs, ws.to(self.device), generator)

    def train_batch(
        self, seed: int, step: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pretraining batch of `step`: a pure function of (seed, step)."""
        generator = make_generator(self.device, seed, TRAIN_STREAM, step)
        return self.train_batch_from(generator, batch_size)

    def train_batch_from(
        self, source: RandomSource, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pretraining batch drawn from a random source (a generator or seeding.CounterDraws)."""
        xs, ys, _ = self.sample(source, batch_size, "pretrain")
        return xs, ys

    def eval_batch(
        self, distribution: str, seed: int, index: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk `index` of the evaluation set of `distribution`, drawn from separate seeds."""
        stream = DISTRIBUTIONS.index(distribution)
        generator = make_generator(self.device, seed, EVAL_STREAM, stream, index)
        xs, ys, _ = self.sample(generator, batch_size, distribution)
        return xs, ys

    def prediction_batch(self, distribution: str, seed: int, index: int, batch_size: int):
        """An evaluation chunk as (predictor arguments (xs, ys), target ys)."""
        xs, ys = self.eval_batch(distribution, seed, index, batch_size)
        return (xs, ys), ys
