"""Expected loss of the diagonal multi-head attention model (models/diagonal_attention.py).

Data: noiseless s_{t+1} = W s_t, t = 0 .. T-1 (T = n_steps, P is T x T), fixed start s_0, and
uniform angles (mu = 1):
- unitary: W = diag(e^{i theta_k}), theta ~ U[0, 2 pi)^d, complex states, default s_0 = (1, ..., 1);
- rotations: W = blockdiag(R(theta_1), ..., R(theta_{d/2})), R(theta) = [[cos, -sin], [sin, cos]]
  on coordinates (2n, 2n+1), theta ~ U[0, 2 pi)^{d/2}, real states, default s_0 = (1, ..., 1) (the
  same start as unitary; every coordinate then has E[s_{t,j}^2] = 1 for t >= 1).
Loss: what the training loss computes on such data, the mean of |s_hat_{t+1, j} - s_{t+1, j}|^2 over
the predicted positions t = 1 .. T-1 and the d (real or complex) coordinates, in expectation over
theta. With per_position=True the T-1 per-position means are returned instead.

Derivation (both families): the error is a trigonometric polynomial in theta, so by Parseval
E|sum_f c_f e^{i f . theta}|^2 = sum_f |c_f|^2, summed over distinct frequency vectors f after
merging the monomials that share one. Notation: C = B^T A, p = P[t, :t+1], p_last = P[t, t],
p_prev = P[t, t-1], r_k = |s_{0,k}|^2.

Unitary. conj(s_{t-1,k}) s_{t',k} = r_k e^{i (t'-t+1) theta_k}, so with C~ = C diag(r), the error
of coordinate j is s_{0,j} [sum_{t'} p_{t'} e^{i t' theta_j} sum_k C~_{jk} e^{i (t'-t+1) theta_k}
- e^{i (t+1) theta_j}]. Monomials: k != j, t' != t-1 have two nonzero frequencies (t', t'-t+1)
and are all distinct; t' = t-1 gives frequency t-1 on theta_j alone for every k (they merge);
k = j gives 2t'-t+1 on theta_j, which meets the target t+1 only at t' = t. Hence
    sum_j E|err_j|^2 = sum_j r_j [(|p|^2 - p_prev^2) |C~_j|^2 + p_prev^2 (C~ 1)_j^2
                                  - 2 p_last C~_jj + 1],
which for r = 1 is (|p|^2 - p_prev^2) |C|_F^2 + p_prev^2 1^T C^T C 1 - 2 p_last tr(C) + d
(papers.md).
Its minimum over p (p_prev = 0, p_last = tr C / |C|_F^2, rest 0) is d - tr(C)^2 / |C|_F^2
>= d - rank(C) >= d - H, with equality for C a multiple of a rank-H orthogonal projection: the
per-coordinate minimum is (d - H) / d when H < d and 0 when H >= d.

Rotations. Write block n as z_{t,n} = s_{t,2n} + i s_{t,2n+1} = w_n e^{i t theta_n}, w_n = z_{0,n}.
For output j and key block m, C_{j,2m} x x' + C_{j,2m+1} y y' (x, y of s_{t-1}; x', y' of s_{t'})
= (C_{j,2m} + C_{j,2m+1}) Re(z_{t-1} conj z_{t'}) / 2
  + (C_{j,2m} - C_{j,2m+1}) Re(z_{t-1} z_{t'}) / 2,
and the two outputs of block n combine into z_hat = sum_{t'} p_{t'} (gamma(t') z_{t'} + eta(t')
conj z_{t'}) with gamma, eta the half-sum and half-difference of the scores of coordinates 2n, 2n+1.
Every 2x2 block C_{nm} enters only through [[S, D], [S', D']] = U C_{nm} U^T,
U = [[1, 1], [1, -1]] / 2:
    gamma(t') = sum_m S_nm |w_m|^2 cos(a theta_m) + D_nm Re(w_m^2 e^{i b theta_m}),
    eta(t')   = sum_m S'_nm |w_m|^2 cos(a theta_m) + D'_nm Re(w_m^2 e^{i b theta_m}),
with a = t-1-t', b = t-1+t'. Expanding cos and Re into exponentials gives, per key t', with
coefficients times p_{t'}/2 (q_m = w_m^2), the monomials of the block error z_hat_{t+1} - z_{t+1}:
  key block m != n, frequencies (theta_n, theta_m):
    S |w_m|^2 w_n at (t', +-a); D q_m w_n at (t', +b), D conj(q_m) w_n at (t', -b);
    S' |w_m|^2 conj(w_n) at (-t', +-a);
    D' q_m conj(w_n) at (-t', +b), D' conj(q_m) conj(w_n) at (-t', -b);
  key block m = n, frequency on theta_n only: the same coefficients at t' +- a, t' +- b (gamma part)
    and -t' +- a, -t' +- b (eta part); target: -w_n at t+1.
Monomials of key blocks m != n whose theta_m frequency vanishes (a = 0, or b = 0 at t = 1, t' = 0)
depend on theta_n only and merge with the own-block ones; the code sums coefficients per distinct
frequency vector (index_add into a frequency table) and applies Parseval, which covers every such
coincidence (t = 1, t' = 0, t' = t-1, ...) without case analysis. Zero loss: C = c blockdiag(J_2)
(S_nn = c, all else 0) with c |w|^2 p_last = 2, p_prev = -p_last/2 and the rest of p zero, i.e.
s_{t+1} = 2 cos(theta) s_t - s_{t-1}.

exact_average_loss checks these formulas by running the model itself on a product grid of angles.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch

from iclab.models.diagonal_attention import diagonal_attention_predict
from iclab.tasks.autoregressive import fixed_start

Family = Literal["unitary", "rotations"]
FAMILIES = ("unitary", "rotations")


def _check(A: torch.Tensor, B: torch.Tensor, P: torch.Tensor, family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if A.ndim != 2 or A.shape != B.shape:
        raise ValueError(f"A and B must both be (n_heads, n_dims), got {A.shape} and {B.shape}")
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] < 2:
        raise ValueError(f"P must be (n_steps, n_steps) with n_steps >= 2, got {tuple(P.shape)}")
    if family == "rotations" and A.shape[1] % 2:
        raise ValueError(f"rotations need an even n_dims, got {A.shape[1]}")


def default_start(n_dims: int, family: Family) -> torch.Tensor:
    """s_0 = (1, ..., 1) (the task's fixed start times sqrt(d)), complex128 for unitary, else
    float64."""
    dtype = torch.complex128 if family == "unitary" else torch.float64
    return fixed_start(n_dims, dtype, unit_norm=False)


def closed_form_loss(
    A: torch.Tensor,
    B: torch.Tensor,
    P: torch.Tensor,
    family: Family,
    start: torch.Tensor | None = None,
    per_position: bool = False,
) -> torch.Tensor:
    """Expected mean squared error over theta (module docstring), differentiable in A, B, P.

    A, B: (n_heads, n_dims); P: (n_steps, n_steps), lower triangle used; start: s_0 (default ones).
    Returns a scalar, or the (n_steps - 1,) per-position values if per_position."""
    _check(A, B, P, family)
    start = default_start(A.shape[1], family) if start is None else start
    if family == "unitary":
        per_t = _unitary_closed_form(A, B, P, start)
    else:
        per_t = _rotations_closed_form(A, B, P, start)
    return per_t if per_position else per_t.mean()


def _unitary_closed_form(
    A: torch.Tensor, B: torch.Tensor, P: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    d = A.shape[1]
    r = start.abs().square().to(A.dtype)
    c = (B.T @ A) * r  # C~ = C diag(r)
    rows = torch.tril(P)[1:]  # t = 1 .. T-1
    p_norm2 = rows.square().sum(1)
    p_prev = torch.diagonal(P, -1)
    p_last = torch.diagonal(P)[1:]
    row_norm2 = (r * c.square().sum(1)).sum()
    row_sum2 = (r * c.sum(1).square()).sum()
    trace = (r * torch.diagonal(c)).sum()
    per_t = (p_norm2 - p_prev**2) * row_norm2 + p_prev**2 * row_sum2 - 2 * p_last * trace + r.sum()
    return per_t / d


def _rotations_closed_form(
    A: torch.Tensor, B: torch.Tensor, P: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    d, T = A.shape[1], P.shape[0]
    h, nq = d // 2, T - 1
    cdt = torch.complex128 if A.dtype == torch.float64 else torch.complex64
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=A.dtype) / 2
    blocks = (B.T @ A).reshape(h, 2, h, 2)  # [n, i, m, k] = C[2n+i, 2m+k]
    sd = torch.einsum("ai,nimk,bk->nmab", u, blocks, u).to(cdt)  # [[S, D], [S', D']]
    s, dd, s2, d2 = sd[..., 0, 0], sd[..., 0, 1], sd[..., 1, 0], sd[..., 1, 1]
    w = torch.complex(start[0::2], start[1::2]).to(cdt)
    rw, q = w.abs().square().to(cdt), w * w
    wn, wc = w[:, None], w.conj()[:, None]  # factor of the output block n (rows)
    # Eight coefficient kinds per (n, m), in the order of _frequencies: (+-a, +b, -b) x gamma, eta.
    kinds = torch.stack(
        [
            s * rw * wn,
            s * rw * wn,
            dd * q * wn,
            dd * q.conj() * wn,
            s2 * rw * wc,
            s2 * rw * wc,
            d2 * q * wc,
            d2 * q.conj() * wc,
        ],
        dim=-1,
    )  # (n, m, 8)
    p = torch.tril(P)[1:].to(cdt) / 2  # (nq, T) over (t, t')
    coef = kinds[:, :, None, :, None] * p[None, None, :, None, :]  # (n, m, t, kind, t')
    f_n, f_m, f_own = _frequencies(T)
    t_idx = torch.arange(nq)[:, None, None]
    coef = coef.reshape(h, h, -1)  # last axis: (t, kind, t') flattened
    cross = coef * (1.0 - torch.eye(h, dtype=A.dtype))[:, :, None]  # key blocks m != n
    alone = (f_m == 0).reshape(-1)  # monomials of key blocks m != n with no theta_m frequency
    # Terms on theta_n alone: own key block (m = n), those merged over m != n, and the target.
    n_own = 6 * T + 1
    own_index = (t_idx * n_own + f_own + 3 * T).reshape(-1)
    own_src = torch.diagonal(coef).T + cross.sum(1) * alone
    own = torch.zeros(h, nq * n_own, dtype=cdt).index_add(1, own_index, own_src)
    target = torch.arange(nq) * n_own + torch.arange(2, T + 1) + 3 * T  # frequency t + 1
    own[:, target] -= w[:, None]
    own_power = torch.view_as_real(own.reshape(h, nq, n_own)).square().sum((0, 2, 3))
    # Terms on (theta_n, theta_m), m != n: sum the coefficients of each distinct frequency vector.
    n_f, n_g = 2 * T + 1, 4 * T + 1
    key = ((t_idx * n_f + f_n + T) * n_g + f_m + 2 * T).reshape(-1)[~alone]
    keys, slot = torch.unique(key, return_inverse=True)
    table = torch.zeros(h, h, len(keys), dtype=cdt).index_add(2, slot, cross[:, :, ~alone])
    key_power = torch.view_as_real(table).square().sum((0, 1, 3))
    table_power = torch.zeros(nq, dtype=A.dtype).index_add(0, keys // (n_f * n_g), key_power)
    return (own_power + table_power) / d


def _frequencies(T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequencies of the eight monomial kinds, each (T-1, 8, T) over (t, kind, t').

    Returns (theta_n, theta_m) frequencies for key blocks m != n and the theta_n frequency for the
    own block m = n (where the two add, since the score multiplies the value of the same angle)."""
    t = torch.arange(1, T)[:, None, None]
    tp = torch.arange(T)[None, None, :]
    a, b = t - 1 - tp, t - 1 + tp
    f_m = torch.cat([a, -a, b, -b, a, -a, b, -b], dim=1)
    sign = torch.tensor([1, 1, 1, 1, -1, -1, -1, -1])[None, :, None]
    f_n = sign * tp.expand(T - 1, 1, T)
    return f_n, f_m, f_n + f_m


def required_grid_size(n_steps: int, family: Family) -> int:
    """Points per angle for which the grid average of the loss is exact.

    An N-point grid {2 pi k / N} averages e^{i f theta} to 1 if N divides f and 0 otherwise, so it
    is exact on trigonometric polynomials of degree < N in each angle; the loss is such a polynomial
    of degree 2 (T-1) (unitary: error frequencies lie in [-(t-1), t+1]) or 6 (T-1) - 2
    (rotations: own-block error frequencies lie in [-(3t-1), 3t-1]), hence N = degree + 1."""
    return 2 * n_steps - 1 if family == "unitary" else 6 * n_steps - 7


def sequences_from_angles(
    theta: torch.Tensor, n_steps: int, family: Family, start: torch.Tensor | None = None
) -> torch.Tensor:
    """States s_0 .. s_T (batch, T+1, d) for angles theta (batch, d) or (batch, d/2)."""
    times = torch.arange(n_steps + 1, dtype=theta.dtype)
    angle = times[:, None] * theta[:, None, :]
    phase = torch.complex(torch.cos(angle), torch.sin(angle))
    if family == "unitary":
        start = default_start(theta.shape[1], family) if start is None else start
        return phase * start.to(phase.dtype)
    start = default_start(2 * theta.shape[1], family) if start is None else start
    z = phase * torch.complex(start[0::2], start[1::2]).to(phase.dtype)
    return torch.view_as_real(z).flatten(-2)  # (x_n, y_n) interleaved: coordinates 2n, 2n+1


def exact_average_loss(
    A: torch.Tensor,
    B: torch.Tensor,
    P: torch.Tensor,
    family: Family,
    n_grid: int | None = None,
    start: torch.Tensor | None = None,
    per_position: bool = False,
    chunk: int = 4096,
) -> torch.Tensor:
    """The expectation of closed_form_loss computed by running the model on a grid of angles.

    The grid is the product of n_grid points per angle (d angles for unitary, d/2 for rotations),
    exact for n_grid >= required_grid_size (the default; see there; one point fewer already
    aliases the top frequency), and the cost is n_grid ** n_angles model runs,
    so keep d and T small (e.g. unitary d = 3, T = 5: 9^3 points; rotations d = 4, T = 4: 17^2)."""
    _check(A, B, P, family)
    T = P.shape[0]
    n_grid = required_grid_size(T, family) if n_grid is None else n_grid
    n_angles = A.shape[1] if family == "unitary" else A.shape[1] // 2
    if n_grid**n_angles > 5_000_000:
        raise ValueError(f"grid of {n_grid}^{n_angles} points is too large; use smaller d or T")
    axis = torch.arange(n_grid, dtype=torch.float64) * (2 * math.pi / n_grid)
    grid = torch.cartesian_prod(*[axis] * n_angles).reshape(-1, n_angles)
    total = torch.zeros(T - 1, dtype=torch.float64)
    for theta in grid.split(chunk):
        states = sequences_from_angles(theta, T, family, start)
        err = diagonal_attention_predict(A, B, P, states) - states[:, 2:]
        total = total + err.abs().square().mean(-1).sum(0)
    per_t = total / grid.shape[0]
    return per_t if per_position else per_t.mean()


@dataclass
class Minimiser:
    """Parameters found by minimise_closed_form and their closed-form loss."""

    A: torch.Tensor
    B: torch.Tensor
    P: torch.Tensor
    loss: float
    losses: list[float]  # final loss of every restart


def minimise_closed_form(
    n_dims: int,
    n_heads: int,
    n_steps: int,
    family: Family,
    steps: int = 500,
    seed: int = 0,
    n_restarts: int = 1,
    init_std: float = 0.1,
    lr: float = 0.02,
    start: torch.Tensor | None = None,
) -> Minimiser:
    """Minimise closed_form_loss over A, B, P (double precision) from N(0, init_std^2) inits.

    Each restart runs `steps` Adam steps (leaves the small init, where gradients are tiny) and then
    L-BFGS with a strong-Wolfe line search for at most `steps` iterations (fast final convergence);
    the restart with the lowest loss is returned. Gradient flow on C = B^T A keeps A A^T - B B^T
    constant (Adam nearly so), so a small init ends with balanced, here orthogonal, heads."""
    gen = torch.Generator().manual_seed(seed)
    best: Minimiser | None = None
    losses = []
    for _ in range(n_restarts):
        shapes = [(n_heads, n_dims), (n_heads, n_dims), (n_steps, n_steps)]
        params = [init_std * torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        A, B, P = _descend(params, family, start, steps, lr)
        loss = float(closed_form_loss(A, B, P, family, start=start))
        losses.append(loss)
        if best is None or loss < best.loss:
            best = Minimiser(A, B, torch.tril(P), loss, losses)
    assert best is not None
    return best


def _descend(
    params: list[torch.Tensor], family: Family, start: torch.Tensor | None, steps: int, lr: float
) -> list[torch.Tensor]:
    params = [x.requires_grad_() for x in params]
    adam = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        adam.zero_grad()
        closed_form_loss(*params, family=family, start=start).backward()
        adam.step()
    lbfgs = torch.optim.LBFGS(
        params, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15,
        history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = closed_form_loss(*params, family=family, start=start)
        loss.backward()
        return loss

    lbfgs.step(closure)
    return [x.detach() for x in params]


def structure_report(
    A: torch.Tensor, B: torch.Tensor, P: torch.Tensor, rank_rtol: float = 1e-3
) -> dict[str, object]:
    """Structure of a (minimising) parameter set.

    - C = B^T A; c = tr(C) / d minimises |C - c I|_F; identity_gap = |C - c I|_F / |C|_F;
      block_gap (even d) = relative Frobenius mass of C outside its 2x2 diagonal blocks;
    - singular values of C and rank = #(sigma > rank_rtol * sigma_max);
    - head_cos: cosines between heads, each head the concatenation (a_h, b_h) (the head's whole
      weight; head_cos_a / head_cos_b use a_h or b_h alone); max_abs_cos*: largest off-diagonal
      |cos|;
      head_norms: |(a_h, b_h)| (a tiny head has an arbitrary direction; with more heads than
      rank(C) the heads cannot all be orthogonal);
    - last row of P: p_last = P[T-1, T-1], p_prev = P[T-1, T-2], ratio p_prev / p_last,
      mass_elsewhere = sum_{t' < T-2} |P[T-1, t']| / (|p_last| + |p_prev|);
      c_p_last = c * p_last (1 at the unitary minimum with s_0 = 1)."""
    A, B, P = (x.detach().to(torch.float64) for x in (A, B, P))
    d = A.shape[1]
    C = B.T @ A
    c_norm = torch.linalg.matrix_norm(C)
    c = torch.trace(C) / d
    identity_gap = torch.linalg.matrix_norm(C - c * torch.eye(d, dtype=C.dtype)) / c_norm
    sigma = torch.linalg.svdvals(C)
    report: dict[str, object] = {
        "C": C,
        "c": float(c),
        "identity_gap": float(identity_gap),
        "singular_values": sigma,
        "rank": int((sigma > rank_rtol * sigma[0]).sum()),
    }
    if d % 2 == 0:
        mask = torch.block_diag(*[torch.ones(2, 2, dtype=C.dtype)] * (d // 2))
        report["block_gap"] = float(torch.linalg.matrix_norm(C * (1 - mask)) / c_norm)
    report["head_norms"] = torch.cat([A, B], 1).norm(dim=1)
    for name, heads in [("", torch.cat([A, B], 1)), ("_a", A), ("_b", B)]:
        unit = heads / heads.norm(dim=1, keepdim=True).clamp_min(1e-300)
        gram = unit @ unit.T
        off = gram - torch.diag(torch.diagonal(gram))
        report[f"head_cos{name}"] = gram
        report[f"max_abs_cos{name}"] = float(off.abs().max()) if len(heads) > 1 else 0.0
    last = P[-1]
    p_last, p_prev = float(last[-1]), float(last[-2])
    report.update(
        p_last=p_last,
        p_prev=p_prev,
        ratio=p_prev / p_last,
        mass_elsewhere=float(last[:-2].abs().sum()) / (abs(p_last) + abs(p_prev)),
        c_p_last=float(c) * p_last,
    )
    return report
