"""In-context linear classification: x ~ N(0, I_D), y in {-1, +1}, P(y = 1 | x, w) = sigmoid(beta w.x).

Tasks w come from the Gaussian prior N(0, prior_std^2 I_D); pools and M as in iclab.tasks.linear.
The model reads the same interleaved tokens as in regression, with the labels in place of y, and
outputs a logit per x.
"""

import torch
import torch.nn.functional as F

from iclab.seeding import uniform
from iclab.tasks.linear import LinearTask


class ClassificationTask(LinearTask):
    """Sampler and loss for linear classification; batches are (xs, ys), ys holding -1.0 / +1.0.

    xs: (batch, n_points, n_dims), ys: (batch, n_points).
    """

    def labels(self, xs: torch.Tensor, ws: torch.Tensor, generator):
        probability = torch.sigmoid(self.config.beta * torch.einsum("bkd,bd->bk", xs, ws))
        uniforms = uniform(generator, xs.shape[:2], self.device)
        return torch.where(uniforms < probability, 1.0, -1.0)

    @staticmethod
    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Binary cross-entropy of the model's logits, mean over sequences and positions (nats)."""
        xs, ys = batch
        return F.softplus(-ys * model(xs, ys).float()).mean()
