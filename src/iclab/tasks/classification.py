"""In-context linear classification: x ~ N(0, I_D), y in {-1, +1}, P(y = 1 | x, w) = sigmoid(beta w.x).

Tasks w come from the Gaussian prior N(0, prior_std^2 I_D); the pretraining distribution is uniform
over a pool of M tasks drawn as the regression family's pools (nested in M for a fixed pool_seed),
and M = infinity (n_tasks None) draws a fresh task per sequence. The model reads the same
interleaved tokens as in regression, with the labels in place of y, and outputs a logit per x.
"""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from iclab.seeding import EVAL_STREAM, TRAIN_STREAM, make_generator
from iclab.tasks.regression import draw_pool

DISTRIBUTIONS = ("pretrain", "true")

if TYPE_CHECKING:  # for type hints only: the config is defined by its family module
    from iclab.families.classification import ClassificationTaskConfig


class ClassificationTask:
    """Sampler and loss for linear classification; batches are (xs, ys), ys holding -1.0 / +1.0.

    xs: (batch, n_points, n_dims), ys: (batch, n_points).
    """

    def __init__(self, config: "ClassificationTaskConfig", device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.pool = None
        if config.n_tasks is not None:
            pool = draw_pool(config.n_tasks, config.n_dims, config.prior_std, config.pool_seed)
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
            ws = c.prior_std * torch.randn(batch_size, c.n_dims, generator=generator, device=device)
        probability = torch.sigmoid(c.beta * torch.einsum("bkd,bd->bk", xs, ws))
        uniform = torch.rand(batch_size, c.n_points, generator=generator, device=device)
        ys = torch.where(uniform < probability, 1.0, -1.0)
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
        """An evaluation chunk as (predictor arguments (xs, ys), target labels ys)."""
        xs, ys = self.eval_batch(distribution, seed, index, batch_size)
        return (xs, ys), ys

    @staticmethod
    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Binary cross-entropy of the model's logits, mean over sequences and positions (nats)."""
        xs, ys = batch
        return F.softplus(-ys * model(xs, ys).float()).mean()
