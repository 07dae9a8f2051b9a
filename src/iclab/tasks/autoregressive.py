"""Linear autoregressive sequences (Sander et al. 2024): s_{t+1} = W s_t + noise_std * eps_t.

A batch of states has shape (batch, n_steps + 1, n_dims): s_0..s_T with T = n_steps. W is drawn per
sequence; its family decides the number type of the states:

- `unitary`: W = diag(e^{i theta_1}, ..., e^{i theta_d}); states are complex (complex64). Noise is
  circular complex Gaussian, real and imaginary parts each N(0, 1/2), so E|eps_j|^2 = 1 as for real
  states. Squared errors of complex states are |.|^2, so a complex coordinate counts once.
- `rotations`: real block-diagonal R with 2x2 rotations by theta_i on coordinates (2i, 2i+1), in the
  canonical basis (W = R) or in one random orthogonal basis Q shared by the task (W = Q R Q^T, Q
  Haar-random from basis_seed, the same for every sequence, batch and device).
- `orthogonal`: W Haar-random on O(d) (QR of a Gaussian matrix with the sign fix), non-commuting.

Angles are theta ~ U[0, 2 pi / mu). The start is the reference code's s_0 = (1, ..., 1) / sqrt(d)
(`fixed`; complex ones for unitary) or uniform on the unit sphere of R^d or C^d (`random`).
"""

import math
from typing import TYPE_CHECKING

import torch

from iclab.seeding import EVAL_STREAM, POOL_STREAM, TRAIN_STREAM, make_generator, normal, uniform

DISTRIBUTIONS = ("true",)

if TYPE_CHECKING:  # for type hints only: the config is defined by its family module
    from iclab.families.autoregressive import AutoregressiveTaskConfig


def is_complex(config: "AutoregressiveTaskConfig") -> bool:
    """Whether the states of this task are complex (unitary W) rather than real."""
    return config.w_family == "unitary"


def squared_modulus(x: torch.Tensor) -> torch.Tensor:
    """|x|^2 elementwise for real or complex x (smooth at 0, unlike abs().square() for complex)."""
    return x.real.square() + x.imag.square() if x.is_complex() else x.square()


def fixed_start(
    n_dims: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    unit_norm: bool = True,
) -> torch.Tensor:
    """The fixed start s_0 = (1, ..., 1) / sqrt(d), the reference code's, as a (d,) tensor of dtype
    (complex for unitary W); with unit_norm=False (1, ..., 1), the diagonal model theory's."""
    ones = torch.ones(n_dims, dtype=dtype, device=device)
    return ones / torch.linalg.vector_norm(ones) if unit_norm else ones


def haar_orthogonal(
    batch_size: int, n_dims: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(batch, d, d) Haar-random orthogonal matrices: Q of a Gaussian's QR, signed by diag R."""
    gaussian = normal(generator, (batch_size, n_dims, n_dims), device)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)


def rotation_blocks(thetas: torch.Tensor) -> torch.Tensor:
    """(batch, d, d) block-diagonal rotations by angles (batch, d/2), block i on (2i, 2i+1)."""
    batch_size, n_blocks = thetas.shape
    cos, sin = thetas.cos(), thetas.sin()
    blocks = torch.stack((cos, -sin, sin, cos), dim=-1).reshape(batch_size, n_blocks, 2, 2)
    w = thetas.new_zeros(batch_size, 2 * n_blocks, 2 * n_blocks)
    for i in range(n_blocks):
        w[:, 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = blocks[:, i]
    return w


def rotation_basis(config: "AutoregressiveTaskConfig") -> torch.Tensor | None:
    """The task's shared basis Q (d, d) on the CPU for random-basis rotations, else None."""
    if config.w_family != "rotations" or config.rotation_basis == "canonical":
        return None
    generator = make_generator("cpu", config.basis_seed, POOL_STREAM)
    return haar_orthogonal(1, config.n_dims, generator)[0]


class AutoregressiveTask:
    """Sampler and loss for autoregressive sequences; batches are (states,), states (batch, T+1, d).

    A predictor maps inputs states[:, :-1] (batch, T, d) to predictions of states[:, 1:]: output t
    predicts s_{t+1} from s_0..s_t.
    """

    def __init__(self, config: "AutoregressiveTaskConfig", device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.complex = is_complex(config)
        self.dtype = torch.complex64 if self.complex else torch.float32
        basis = rotation_basis(config)
        self.basis = None if basis is None else basis.to(self.device)

    def sample_w(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """(batch, d, d) transition matrices of the task's family (complex64 for unitary)."""
        c, device = self.config, self.device
        if c.w_family == "orthogonal":
            return haar_orthogonal(batch_size, c.n_dims, generator, device)
        n_angles = c.n_dims if c.w_family == "unitary" else c.n_dims // 2
        thetas = uniform(generator, (batch_size, n_angles), device)
        thetas = thetas * (2 * math.pi / c.mu)
        if c.w_family == "unitary":
            return torch.diag_embed(torch.polar(torch.ones_like(thetas), thetas))
        w = rotation_blocks(thetas)
        return w if self.basis is None else self.basis @ w @ self.basis.T

    def _gaussian(self, generator: torch.Generator, *shape: int) -> torch.Tensor:
        """Standard Gaussian of the state type: E|z|^2 = 1 per coordinate, real or complex."""
        if not self.complex:
            return normal(generator, shape, self.device)
        parts = normal(generator, (*shape, 2), self.device) / math.sqrt(2)
        return torch.view_as_complex(parts)

    def sample(
        self, generator: torch.Generator, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (batch, T+1, d), ws (batch, d, d)); draws W, then the start, then the noise."""
        c = self.config
        ws = self.sample_w(generator, batch_size)
        if c.start == "fixed":
            start = fixed_start(c.n_dims, self.dtype, self.device).expand(batch_size, -1)
        else:
            start = self._gaussian(generator, batch_size, c.n_dims)
            start = start / torch.linalg.vector_norm(start, dim=-1, keepdim=True)
        states = [start]
        noise = self._gaussian(generator, batch_size, c.n_steps, c.n_dims) * c.noise_std
        diagonal = torch.diagonal(ws, dim1=-2, dim2=-1) if self.complex else None
        for t in range(c.n_steps):
            if diagonal is not None:  # unitary W is diagonal: a product per coordinate is enough
                step = diagonal * states[-1]
            else:
                step = (ws @ states[-1].unsqueeze(-1)).squeeze(-1)
            states.append(step + noise[:, t])
        return torch.stack(states, dim=1), ws

    def train_batch(self, seed: int, step: int, batch_size: int) -> tuple[torch.Tensor]:
        """The training batch of `step`: a pure function of (seed, step)."""
        generator = make_generator(self.device, seed, TRAIN_STREAM, step)
        return self.train_batch_from(generator, batch_size)

    def train_batch_from(self, source, batch_size: int) -> tuple[torch.Tensor]:
        """A training batch drawn from a random source (a generator or seeding.CounterDraws)."""
        return (self.sample(source, batch_size)[0],)

    def eval_sample(
        self, distribution: str, seed: int, index: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk `index` of the evaluation set with its W: (states, ws), on eval-only seeds."""
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution {distribution!r} is not one of {DISTRIBUTIONS}")
        stream = DISTRIBUTIONS.index(distribution)
        generator = make_generator(self.device, seed, EVAL_STREAM, stream, index)
        return self.sample(generator, batch_size)

    def eval_batch(
        self, distribution: str, seed: int, index: int, batch_size: int
    ) -> tuple[torch.Tensor]:
        """Chunk `index` of the evaluation set of `distribution` (only `true`): (states,)."""
        return (self.eval_sample(distribution, seed, index, batch_size)[0],)

    def prediction_batch(self, distribution: str, seed: int, index: int, batch_size: int):
        """An evaluation chunk as (predictor arguments (s_0..s_{T-1}, ws), target s_1..s_T)."""
        states, ws = self.eval_sample(distribution, seed, index, batch_size)
        return (states[:, :-1], ws), states[:, 1:]

    @staticmethod
    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Mean over sequences, positions and coordinates of |prediction of s_{t+1} - s_{t+1}|^2."""
        states = batch[0]
        predictions = model(states[:, :-1])
        if not predictions.is_complex():
            predictions = predictions.float()
        return squared_modulus(predictions - states[:, 1:]).mean()
