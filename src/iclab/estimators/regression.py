"""Closed-form baselines for noisy linear regression (Raventos et al. 2023): Ridge, LeastSquares,
GradientDescent (plain or preconditioned).

Data: y_j = w.x_j + eps_j, eps_j ~ N(0, noise_std^2). Every estimator has
`predict(xs, ys) -> (batch, n_points)` with xs (batch, n_points, n_dims) and ys (batch, n_points);
output k uses only the pairs 0..k-1 and xs[:, k]. Inputs of any device are accepted; float64 inputs
are computed in float64, everything else in float32, and the output has the input's dtype.

Notation: G_k = sum_{j<k} x_j x_j^T, b_k = sum_{j<k} y_j x_j (exclusive prefix sums over pairs).
Also here: prefix_stats (G and b), min_norm_predictions, and the input checks and compute dtype
shared with the estimators whose prior lives on a pool of tasks (DMMSE, SmoothedDMMSE), which are
in iclab.estimators.pool_posterior.
"""

import torch
from torch import Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_inputs(xs: Tensor, ys: Tensor, n_dims: int | None = None) -> None:
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (batch, n_points, n_dims), got {tuple(xs.shape)}")
    if tuple(ys.shape) != tuple(xs.shape[:2]):
        raise ValueError(f"ys must have shape {tuple(xs.shape[:2])}, got {tuple(ys.shape)}")
    if n_dims is not None and xs.shape[2] != n_dims:
        raise ValueError(f"xs has n_dims={xs.shape[2]} but the pool has n_dims={n_dims}")


def _check_pool(pool: Tensor) -> Tensor:
    pool = torch.as_tensor(pool)
    if pool.ndim != 2 or pool.shape[0] == 0:
        raise ValueError(f"pool must have shape (n_tasks >= 1, n_dims), got {tuple(pool.shape)}")
    return pool


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")


def prefix_stats(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Exclusive prefix sums G (batch, K, D, D) and b (batch, K, D); G[:, 0] = 0, b[:, 0] = 0."""
    batch, n_points, n_dims = xs.shape
    gram = xs.new_zeros(batch, n_points, n_dims, n_dims)
    xty = xs.new_zeros(batch, n_points, n_dims)
    # Pair k-1 is the last one position k may use, so the sums stop one short of the end.
    torch.cumsum(xs[:, :-1, :, None] * xs[:, :-1, None, :], dim=1, out=gram[:, 1:])
    torch.cumsum(xs[:, :-1] * ys[:, :-1, None], dim=1, out=xty[:, 1:])
    return gram, xty


def min_norm_predictions(xs: Tensor, ys: Tensor) -> Tensor:
    """Minimum-norm least-squares prediction per position (0 at position 0), in xs's dtype.

    Uses the SVD pseudo-inverse of each k x D prefix (not of G = X^T X, whose condition number is
    squared); the loop runs over the K positions only.
    """
    batch, n_points, _ = xs.shape
    preds = xs.new_zeros(batch, n_points)
    for k in range(1, n_points):
        w = torch.linalg.pinv(xs[:, :k]) @ ys[:, :k, None]  # (batch, D, 1)
        preds[:, k] = (xs[:, k] * w[..., 0]).sum(-1)
    return preds


class Ridge:
    """Posterior mean for the prior w ~ N(0, prior_std^2 I): w_k = (G_k + lambda I)^-1 b_k.

    lambda = noise_std^2 / prior_std^2; position 0 predicts 0. With noise_std == 0 (lambda = 0) G_k
    is singular while k < D, so that case returns the minimum-norm least-squares solution (the
    lambda -> 0 limit of ridge), computed as in LeastSquares.
    """

    name = "Ridge"

    def __init__(self, noise_std: float, prior_std: float = 1.0):
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if not prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {prior_std}")
        self.noise_std = float(noise_std)
        self.prior_std = float(prior_std)

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        _check_inputs(xs, ys)
        dtype = _compute_dtype(xs.dtype)
        xs_c, ys_c = xs.to(dtype), ys.to(dtype)
        if self.noise_std == 0:
            return min_norm_predictions(xs_c, ys_c).to(xs.dtype)
        return (xs_c * self.posterior_means(xs_c, ys_c)).sum(-1).to(xs.dtype)

    __call__ = predict

    @torch.no_grad()
    def posterior_means(self, xs: Tensor, ys: Tensor) -> Tensor:
        """w_k = (G_k + lambda I)^-1 b_k for every position, (batch, n_points, n_dims), in the
        compute dtype (lambda = 0: the minimum-norm solution pinv(G_k) b_k)."""
        _check_inputs(xs, ys)
        dtype = _compute_dtype(xs.dtype)
        gram, xty = prefix_stats(xs.to(dtype), ys.to(dtype))
        if self.noise_std == 0:
            return (torch.linalg.pinv(gram, hermitian=True) @ xty[..., None])[..., 0]
        gram.diagonal(dim1=-2, dim2=-1).add_((self.noise_std / self.prior_std) ** 2)
        return torch.linalg.solve(gram, xty)  # one batched solve for all (sequence, position)


class LeastSquares:
    """Minimum-norm least squares on the pairs before each position; position 0 predicts 0."""

    name = "Least squares"

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        _check_inputs(xs, ys)
        dtype = _compute_dtype(xs.dtype)
        return min_norm_predictions(xs.to(dtype), ys.to(dtype)).to(xs.dtype)

    __call__ = predict


def gd_iterates(
    xs: Tensor, ys: Tensor, step_size: float, steps: int, preconditioner_ridge: float | None = None
):
    """The predictions (batch, n_points) of GradientDescent after each of 1..steps steps, in the
    compute dtype (one solve for the preconditioner, however many steps)."""
    gram, xty = prefix_stats(xs, ys)
    counts = torch.arange(xs.shape[1], device=xs.device, dtype=xs.dtype).clamp_min(1)
    gram, xty = gram / counts[:, None, None], xty / counts[:, None]  # position 0: zeros
    if preconditioner_ridge is not None:
        shifted = gram.clone()
        shifted.diagonal(dim1=-2, dim2=-1).add_(preconditioner_ridge)
        both = torch.linalg.solve(shifted, torch.cat([gram, xty[..., None]], dim=-1))
        gram, xty = both[..., :-1], both[..., -1]  # P G and P b
    w = torch.zeros_like(xty)
    for _ in range(steps):
        w = w - step_size * ((gram @ w[..., None])[..., 0] - xty)
        yield (xs * w).sum(-1)


class GradientDescent:
    """`steps` steps of gradient descent from w = 0 on the prefix's mean squared error
    L_k(w) = 1/(2k) sum_{j<k} (w.x_j - y_j)^2, preconditioned by P_k = (G_k / k + lambda I)^-1
    when `preconditioner_ridge` lambda is given (plain GD: P = I):

        w_{t+1} = w_t - step_size P_k (G_k w_t - b_k) / k,

    then predicts w_steps . x_k (position 0: 0). One preconditioned step of size 1 is ridge with
    regulariser k lambda (Ridge with noise_std^2 / prior_std^2 = k lambda); many plain steps of a
    small enough size approach least squares. The algorithm families that trained transformers
    are compared with (von Oswald et al. 2023; Ahn et al. 2023)."""

    name = "GD"

    def __init__(self, steps: int, step_size: float, preconditioner_ridge: float | None = None):
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        if preconditioner_ridge is not None and not preconditioner_ridge > 0:
            raise ValueError(f"preconditioner_ridge must be > 0, got {preconditioner_ridge}")
        self.steps, self.step_size = steps, float(step_size)
        self.preconditioner_ridge = preconditioner_ridge

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        _check_inputs(xs, ys)
        dtype = _compute_dtype(xs.dtype)
        iterates = gd_iterates(
            xs.to(dtype), ys.to(dtype), self.step_size, self.steps, self.preconditioner_ridge
        )
        *_, last = iterates
        return last.to(xs.dtype)

    __call__ = predict
