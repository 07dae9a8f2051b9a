"""Closed-form next-state predictors for autoregressive sequences, called like the models.

Every estimator is called as estimator(states, ws=None) with states (batch, L, d) = s_0..s_{L-1}
and returns (batch, L, d): output t predicts s_{t+1} from s_0..s_t (only Oracle reads ws, the true
W of each sequence, (batch, d, d)). Position t has seen the t pairs (s_t', s_{t'+1}), t' < t. Work
is done in float64 / complex128 and returned in the states' dtype. For complex states (unitary W)
transposes are conjugate transposes, s^* = conj(s)^T.

- Oracle:           W s_t.
- LeastSquares:     W_hat = min-norm argmin sum_{t'<t} ||s_{t'+1} - W s_t'||^2 = M_t G_t^+ with
                    M_t = sum s_{t'+1} s_t'^*, G_t = sum s_t' s_t'^*; predicts W_hat s_t.
- OneStepGD(eta):   one gradient step from W = 0 on 1/2 sum_{t'<t} ||s_{t'+1} - W s_t'||^2:
                    W_hat = eta M_t, predicts eta sum_{t'<t} s_{t'+1} <s_t', s_t>. eta is a number
                    or one per position, (L,). one_step_gd computes it, and its conjugated
                    relatives eta D M_t D^* s_t.
- LastPair:         unitary (diagonal) W: W_hat_jj = s_{t,j} / s_{t-1,j}, predicts s_t^2 / s_{t-1}.
- CosineRecurrence: rotations: s_{t+1} = 2 cos(theta) s_t - s_{t-1} per 2x2 block (coordinates
                    (2i, 2i+1) after changing to the task's basis), cos(theta) estimated by
                    sum_{t'<t} <x_{t'+1}, x_t'> / sum_{t'<t} ||x_t'||^2 over the block's
                    coordinates x (exact without noise from the first pair on, since
                    <R x, x> = cos(theta) ||x||^2).
Position 0 has no pair: every estimator but Oracle predicts 0 there (LastPair and CosineRecurrence
also at positions where a needed denominator is 0).

optimal_eta(task_config) gives the step size of OneStepGD that minimises its expected error.
"""

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from iclab.seeding import EVAL_STREAM, make_generator
from iclab.tasks.autoregressive import AutoregressiveTask, squared_modulus

ETA_STREAM = 1000  # evaluation sub-stream of the sequences that fit eta (apart from eval sets)

if TYPE_CHECKING:  # for type hints only: the config is defined by its family module
    from iclab.families.autoregressive import AutoregressiveTaskConfig


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.complex128) if x.is_complex() else x.to(torch.float64)


def _hermitian(x: torch.Tensor) -> torch.Tensor:
    return x.conj().transpose(-2, -1)


class Oracle:
    """W s_t with the true W of each sequence."""

    def __call__(self, states: torch.Tensor, ws: torch.Tensor | None = None) -> torch.Tensor:
        if ws is None:
            raise ValueError("Oracle needs the transition matrices ws (batch, d, d)")
        return (_wide(states) @ _wide(ws).transpose(-2, -1)).to(states.dtype)


class LeastSquares:
    """Min-norm least-squares W_hat from the pairs so far (pseudo-inverse cut at rtol * largest)."""

    def __init__(self, rtol: float = 1e-10):
        self.rtol = rtol

    def __call__(self, states: torch.Tensor, ws: torch.Tensor | None = None) -> torch.Tensor:
        s = _wide(states)
        batch, length, n_dims = s.shape
        gram = s.new_zeros(batch, n_dims, n_dims)
        moment = s.new_zeros(batch, n_dims, n_dims)
        predictions = torch.zeros_like(s)
        for t in range(1, length):
            previous, current = s[:, t - 1, :, None], s[:, t, :, None]
            gram += previous @ _hermitian(previous)
            moment += current @ _hermitian(previous)
            w_hat = moment @ torch.linalg.pinv(gram, rtol=self.rtol, hermitian=True)
            predictions[:, t] = (w_hat @ current).squeeze(-1)
        return predictions.to(states.dtype)


def one_step_gd(
    states: torch.Tensor,
    eta: float | torch.Tensor | tuple[float, ...] = 1.0,
    D: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """eta D M_t D^* s_t for states s_0..s_{L-1} (batch, L, d) -> (batch, L, d) in float64 or
    complex128, with M_t = W_hat_t = sum_{t'<t} s_{t'+1} s_t'^* (one step of GD from W = 0), or
    with reverse its transpose sum_{t'<t} s_t' s_{t'+1}^* (the estimate of W^{-1} = W^T from the
    reversed pairs). eta is a number or one per position, (L,); D (d, d) defaults to the
    identity. D and reverse describe the conjugation symmetry of iclab.studies.autoregressive."""
    s = _wide(states)
    length = s.shape[1]
    a = s if D is None else s @ D.to(s.dtype).T  # a_t = D s_t
    scores = s @ _hermitian(a)  # [t, t'] = a_t'^* s_t
    if reverse:  # pairs t' < t as (key a_{t'+1}, value a_t')
        inner, values = scores[:, :, 1:].tril(-1), a[:, :-1]
    else:  # pairs t' < t as (key a_t', value a_{t'+1})
        inner, values = scores[:, :, :-1].tril(-1), a[:, 1:]
    eta = torch.as_tensor(eta, dtype=torch.float64, device=s.device)
    if eta.dim() == 1:
        eta = eta[:length, None]
    return eta * (inner @ values)


class OneStepGD:
    """eta sum_{t'<t} s_{t'+1} <s_t', s_t>: one GD step from W = 0; eta a number or (L,)."""

    def __init__(self, eta: float | torch.Tensor | tuple[float, ...] = 1.0):
        self.eta = eta

    def __call__(self, states: torch.Tensor, ws: torch.Tensor | None = None) -> torch.Tensor:
        return one_step_gd(states, self.eta).to(states.dtype)


class LastPair:
    """Diagonal W from the last pair: W_hat_jj = s_{t,j} / s_{t-1,j}; predicts W_hat s_t."""

    def __call__(self, states: torch.Tensor, ws: torch.Tensor | None = None) -> torch.Tensor:
        s = _wide(states)
        previous, current = s[:, :-1], s[:, 1:]
        ok = previous != 0
        ratio = torch.where(ok, current / torch.where(ok, previous, 1), 0)
        predictions = torch.zeros_like(s)
        predictions[:, 1:] = ratio * current
        return predictions.to(states.dtype)


class CosineRecurrence:
    """Rotations: 2 cos(theta) s_t - s_{t-1} per 2x2 block, cos(theta) fitted on the pairs so far.

    basis: the task's rotation basis Q (d, d) (W = Q R Q^T), None for the canonical basis.
    """

    def __init__(self, basis: torch.Tensor | None = None):
        self.basis = basis

    def __call__(self, states: torch.Tensor, ws: torch.Tensor | None = None) -> torch.Tensor:
        if states.is_complex() or states.shape[-1] % 2:
            raise ValueError("CosineRecurrence needs real states of even dimension (rotations)")
        x = _wide(states)
        basis = None if self.basis is None else _wide(self.basis).to(x.device)
        if basis is not None:
            x = x @ basis  # coordinates in the rotation basis: Q^T s_t
        batch, length, n_dims = x.shape
        blocks = x.reshape(batch, length, n_dims // 2, 2)
        cross = (blocks[:, 1:] * blocks[:, :-1]).sum(-1).cumsum(1)  # sum_{t'<t} <x_{t'+1}, x_t'>
        norms = blocks[:, :-1].square().sum(-1).cumsum(1)  # sum_{t'<t} ||x_t'||^2
        cos = torch.where(norms > 0, cross / torch.where(norms > 0, norms, 1), 0)
        predictions = torch.zeros_like(blocks)
        predictions[:, 1:] = 2 * cos.unsqueeze(-1) * blocks[:, 1:] - blocks[:, :-1]
        predictions = predictions.reshape(batch, length, n_dims)
        if basis is not None:
            predictions = predictions @ basis.T
        return predictions.to(states.dtype)


@dataclass(frozen=True)
class OptimalEta:
    """Step sizes of OneStepGD minimising the expected error: one per position t = 0..T-1 (0 at
    t = 0, where no pair is seen) and the single eta minimising the error summed over positions."""

    per_position: tuple[float, ...]
    overall: float
    method: str  # "closed form" or "empirical (N sequences)"


def unitary_optimal_eta(n_dims: int, n_steps: int, mu: float = 1.0) -> OptimalEta:
    """Exact optimal eta for unitary W, fixed start (1, ..., 1)/sqrt(d), no noise.

    With u_t the OneStepGD(1) prediction and v = s_{t+1}, the error is quadratic in eta and
    eta*_t = E Re<u_t, v> / E||u_t||^2. With phi(n) = E[e^{i theta n}] for theta ~ U[0, 2 pi / mu)
    and S1 = sum_{a=1..t} |phi(a)|^2, S2 = sum_{a,b=1..t} |phi(a-b)|^2,
    S3 = Re sum_{a,b=1..t} phi(b-a) phi(a) conj(phi(b)), averaging over the angles gives
        E Re<u, v> = (t + (d-1) S1) / d,
        E||u||^2   = (t^2 + (d-1)(S2 + 2 t S1) + (d-1)(d-2) S3) / d^2,
    so for mu = 1 (phi(n) = 0 for n != 0) eta*_t = d / (t + d - 1).
    """
    d = n_dims

    def phi(n: torch.Tensor) -> torch.Tensor:
        x = 2 * math.pi * n.to(torch.float64) / mu
        safe = torch.where(n == 0, 1.0, x)
        return torch.where(n == 0, 1.0 + 0j, (torch.exp(1j * safe) - 1) / (1j * safe))

    numerators, denominators = [0.0], [0.0]
    for t in range(1, n_steps):
        a = torch.arange(1, t + 1)
        phi_a = phi(a)
        s1 = phi_a.abs().square().sum().item()
        s2 = phi(a[:, None] - a[None, :]).abs().square().sum().item()
        s3 = (phi(a[None, :] - a[:, None]) * phi_a[:, None] * phi_a.conj()[None, :]).sum().real
        numerators.append((t + (d - 1) * s1) / d)
        denominators.append(
            (t**2 + (d - 1) * (s2 + 2 * t * s1) + (d - 1) * (d - 2) * s3.item()) / d**2
        )
    per_position = tuple(
        n / m if m > 0 else 0.0 for n, m in zip(numerators, denominators, strict=True)
    )
    return OptimalEta(per_position, sum(numerators) / sum(denominators), "closed form")


@torch.inference_mode()
def empirical_optimal_eta(
    task_config: "AutoregressiveTaskConfig",
    n_sequences: int = 16_384,
    seed: int = 0,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
) -> OptimalEta:
    """eta* = sum Re<u, v> / sum ||u||^2 over n_sequences sampled sequences (u: OneStepGD(1)
    prediction, v: target), per position and pooled; exact minimiser of the empirical error."""
    task = AutoregressiveTask(task_config, device)
    numerator = denominator = 0
    for index, start in enumerate(range(0, n_sequences, batch_size)):
        generator = make_generator(device, seed, EVAL_STREAM, ETA_STREAM, index)
        states, _ = task.sample(generator, min(batch_size, n_sequences - start))
        u = one_step_gd(states[:, :-1])
        v = _wide(states[:, 1:])
        numerator = numerator + (u.conj() * v).real.sum(dim=(0, 2))
        denominator = denominator + squared_modulus(u).sum(dim=(0, 2))
    per_position = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 0)
    overall = (numerator.sum() / denominator.sum()).item()
    return OptimalEta(tuple(per_position.tolist()), overall, f"empirical ({n_sequences} sequences)")


@functools.lru_cache(maxsize=32)
def optimal_eta(
    task_config: "AutoregressiveTaskConfig", n_sequences: int = 16_384, seed: int = 0
) -> OptimalEta:
    """The OneStepGD step size minimising the expected error on the task distribution: the closed
    form for unitary W with the fixed start and no noise, else the empirical minimiser (on CPU).
    Cached per (config, n_sequences, seed)."""
    c = task_config
    if c.w_family == "unitary" and c.start == "fixed" and c.noise_std == 0:
        return unitary_optimal_eta(c.n_dims, c.n_steps, c.mu)
    return empirical_optimal_eta(c, n_sequences, seed)
