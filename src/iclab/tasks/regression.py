"""Noisy linear regression (Raventos et al. 2023): x ~ N(0, I_D), y = w.x + eps, eps ~ N(0, sigma^2).

Tasks w come from the prior: N(0, prior_std^2 I_D), or with task.prior = "laplace" i.i.d. Laplace
coordinates of the same variance prior_std^2 (the paper's Fig. 14); pools and M as in
iclab.tasks.linear.
"""

import torch

from iclab.seeding import normal
from iclab.tasks.linear import LinearTask


class RegressionTask(LinearTask):
    """Sampler and loss for noisy linear regression; batches are (xs, ys).

    xs: (batch, n_points, n_dims), ys: (batch, n_points).
    """

    @property
    def prior(self) -> str:
        return self.config.prior

    def labels(self, xs: torch.Tensor, ws: torch.Tensor, generator):
        noise = normal(generator, xs.shape[:2], self.device)
        return torch.einsum("bkd,bd->bk", xs, ws) + self.config.noise_std * noise

    @staticmethod
    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean over sequences and positions of (prediction - y)^2 (not divided by D)."""
        xs, ys = batch
        return (model(xs, ys).float() - ys).square().mean()
