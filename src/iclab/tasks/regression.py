"""Noisy linear regression (Raventos et al. 2023): x ~ N(0, I_D), y = w.x + eps, eps ~ N(0, sigma^2).

Tasks w come from the prior: N(0, prior_std^2 I_D), or with task.prior = "laplace" i.i.d. Laplace
coordinates of the same variance prior_std^2 (the paper's Fig. 14). The pretraining distribution is uniform over a
pool of M tasks; the pool for M is the first M rows of one master stream (drawn in fixed blocks, each
from its own seed), so pools are nested in M for a fixed pool_seed and a sweep over M changes only
the diversity. M = infinity (n_tasks None) draws a fresh task per sequence.
"""

import math
from typing import TYPE_CHECKING

import torch

from iclab.seeding import EVAL_STREAM, POOL_STREAM, TRAIN_STREAM, make_generator

POOL_BLOCK_ROWS = 4096
DISTRIBUTIONS = ("pretrain", "true")

if TYPE_CHECKING:  # for type hints only: the config is defined by its family module
    from iclab.families.regression import RegressionTaskConfig


def draw_prior(
    prior: str, shape: tuple[int, ...], prior_std: float, generator: torch.Generator, device
) -> torch.Tensor:
    """Tasks from the prior: Gaussian, or Laplace as b (E1 - E2) with E1, E2 ~ Exponential(1) and
    b = prior_std / sqrt(2), so that both have variance prior_std^2 per coordinate."""
    if prior == "gaussian":
        return prior_std * torch.randn(shape, generator=generator, device=device)
    uniform = torch.rand((2, *shape), generator=generator, device=device)
    exponential = -torch.log1p(-uniform)  # 1 - U lies in (0, 1], so this is finite
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


class RegressionTask:
    """Sampler and loss for noisy linear regression; batches are (xs, ys).

    xs: (batch, n_points, n_dims), ys: (batch, n_points).
    """

    def __init__(self, config: "RegressionTaskConfig", device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.pool = None
        if config.n_tasks is not None:
            pool = draw_pool(
                config.n_tasks, config.n_dims, config.prior_std, config.pool_seed, config.prior
            )
            self.pool = pool.to(self.device)

    def sample(
        self, generator: torch.Generator, batch_size: int, distribution: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw (xs, ys, ws) from `pretrain` (the pool) or `true` (the prior)."""
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution {distribution!r} is not one of {DISTRIBUTIONS}")
        c, device = self.config, self.device
        xs = torch.randn(batch_size, c.n_points, c.n_dims, generator=generator, device=device)
        if distribution == "pretrain" and self.pool is not None:
            index = torch.randint(len(self.pool), (batch_size,), generator=generator, device=device)
            ws = self.pool[index]
        else:
            ws = draw_prior(c.prior, (batch_size, c.n_dims), c.prior_std, generator, device)
        noise = torch.randn(batch_size, c.n_points, generator=generator, device=device)
        ys = torch.einsum("bkd,bd->bk", xs, ws) + c.noise_std * noise
        return xs, ys, ws

    def train_batch(
        self, seed: int, step: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pretraining batch of `step`: a pure function of (seed, step)."""
        generator = make_generator(self.device, seed, TRAIN_STREAM, step)
        xs, ys, _ = self.sample(generator, batch_size, "pretrain")
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

    @staticmethod
    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean over sequences and positions of (prediction - y)^2 (not divided by D)."""
        xs, ys = batch
        return (model(xs, ys).float() - ys).square().mean()
