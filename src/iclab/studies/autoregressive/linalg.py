"""Inner products and norms over all entries of real or complex tensors, in float64."""

import torch

from iclab.tasks.autoregressive import squared_modulus


def wide(x: torch.Tensor) -> torch.Tensor:
    """x detached, as float64 or complex128."""
    return x.detach().to(torch.complex128 if x.is_complex() else torch.float64)


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """Re <a, b> over all entries."""
    return float((a.conj() * b).real.sum())


def norm(x: torch.Tensor) -> float:
    """The L2 norm over all entries."""
    return float(squared_modulus(x).sum().sqrt())
