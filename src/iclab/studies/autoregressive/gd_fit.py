"""Trained predictors against one-step GD, up to its conjugation symmetry (Sander et al. 2024).

Predictions are compared on held-out sequences (the run's evaluation stream, `true` distribution),
over all positions t = 0 .. T-1 as in the training loss. Position 0 has seen no pair: one-step GD
predicts 0 there, and so do the diagonal and pe_only models (a linear model nearly so); it is kept
so that every number here is on the scale of the training loss.

For any predictor p, with u = one_step_gd(inputs) (eta = 1) and eta* = optimal_eta(task).overall:
- eta_fit = argmin_eta ||p - eta u||^2 = Re<u, p> / ||u||^2, also per position;
- gap_plain = ||p - eta* u|| / ||eta* u|| (relative L2 over sequences, positions, coordinates);
- the symmetry. The one-step GD predictor eta W_hat_t s_t, W_hat_t = sum_{t' < t} s_{t'+1} s_t'^*,
  has a family of equally good relatives eta D W_hat_t D^* s_t, D unitary and commuting with every
  W of the task: diagonal phases D = diag(e^{i alpha}) for unitary W, a 2x2 rotation per block
  (in the task's basis) for commuting rotations. For noiseless sequences with uniform angles their
  expected loss does not depend on D (for unitary W the cross term only involves D_jj conj(D_jj) = 1
  and the other monomials have distinct frequencies; for rotations, in both families below, it
  was checked by sampling: 20000 sequences, d = 6, losses equal within 0.2 %),
  yet their predictions differ from plain GD's by up to ~70 % relative L2. A one-layer augmented
  linear model expresses each of them with the same number of weights (value map eta D on s_t',
  key map D on s_{t'-1}), so training may land on any D. For rotations there is a second family:
  D a 2x2 reflection per block turns W into W^T = W^{-1}, so eta D W_hat^T D^T s_t (the estimate
  of W^{-1} from the reversed pairs, reflected back) is as good; the model expresses it with the
  value reading s_{t'-1} and the key reading s_t'. conjugation_fit finds the D (and eta) of either
  family that brings the predictions closest: gap_sym = ||p - eta* g_D|| / ||eta* g_D||.
  Haar-orthogonal W commutes with no such D: there gap_sym is gap_plain.
"""

import math

import torch

from iclab.estimators.autoregressive import one_step_gd, optimal_eta
from iclab.studies.autoregressive.linalg import inner, norm, wide
from iclab.tasks.autoregressive import AutoregressiveTask, rotation_blocks, squared_modulus


def symmetry_matrix(
    task: AutoregressiveTask, angles: torch.Tensor, reflect: bool = False
) -> torch.Tensor | None:
    """D for the given angles: diag(e^{i angles}) (d angles) for unitary W; for rotations (d/2
    angles) Q blockdiag(R(angles)) Q^T, which commutes with every W, or with reflect
    Q blockdiag(R(angles) diag(1, -1)) Q^T, which turns every W into W^T = W^{-1}; None for
    Haar-orthogonal W (only +-I commutes with all of them)."""
    family = task.config.w_family
    if family == "unitary" and not reflect:
        return torch.diag(torch.polar(torch.ones_like(angles), angles))
    if family == "rotations":
        D = rotation_blocks(angles[None])[0]
        if reflect:
            D = D * torch.tensor([1.0, -1.0], dtype=D.dtype).repeat(len(angles))
        if task.basis is not None:
            basis = task.basis.to(D)
            D = basis @ D @ basis.T
        return D
    return None


def symmetry_orientations(task: AutoregressiveTask) -> tuple[bool, ...]:
    """reverse = False (D commutes with W) for unitary and rotations, also True (reflections and
    reversed pairs) for rotations; none for Haar-orthogonal W."""
    return {"unitary": (False,), "rotations": (False, True)}.get(task.config.w_family, ())


def conjugation_fit(
    predictions: torch.Tensor,
    inputs: torch.Tensor,
    task: AutoregressiveTask,
    n_restarts: int = 4,
    seed: int = 0,
) -> tuple[torch.Tensor | None, bool, float, float]:
    """(angles, reverse, eta, residual) minimising ||p - eta g|| / ||p||, g = one_step_gd with
    D = symmetry_matrix(task, angles, reflect=reverse), over every orientation, the angles and eta:
    L-BFGS over the angles from 0 and n_restarts - 1 random starts, eta in closed form. angles is
    None when the family has no such symmetry (the fit is then plain GD's, D = I)."""
    p, s = wide(predictions), wide(inputs)
    p_norm2 = float(squared_modulus(p).sum())
    n_angles = {"unitary": task.config.n_dims}.get(task.config.w_family, task.config.n_dims // 2)

    def eta_and_residual(D: torch.Tensor | None, reverse: bool) -> tuple[torch.Tensor, ...]:
        g = one_step_gd(s, 1.0, D, reverse)
        cross = (g.conj() * p).real.sum()
        g_norm2 = squared_modulus(g).sum()
        return cross / g_norm2, 1 - cross**2 / (g_norm2 * p_norm2)

    best: tuple[float, torch.Tensor, bool] | None = None
    generator = torch.Generator().manual_seed(seed)
    for reverse in symmetry_orientations(task):
        for restart in range(n_restarts):
            angles = torch.zeros(n_angles, dtype=torch.float64)
            if restart:
                angles = (
                    2 * math.pi * torch.rand(n_angles, generator=generator, dtype=torch.float64)
                )
            objective = lambda x, r=reverse: eta_and_residual(symmetry_matrix(task, x, r), r)[1]  # noqa: E731
            angles = _lbfgs(objective, angles)
            value = float(objective(angles))
            if best is None or value < best[0]:
                best = (value, angles, reverse)
    if best is None:
        eta, residual = eta_and_residual(None, False)
        return None, False, float(eta), math.sqrt(max(float(residual), 0.0))
    _, angles, reverse = best
    eta, residual = eta_and_residual(symmetry_matrix(task, angles, reverse), reverse)
    return angles % (2 * math.pi), reverse, float(eta), math.sqrt(max(float(residual), 0.0))


def _lbfgs(objective, start: torch.Tensor, max_iter: int = 100) -> torch.Tensor:
    """Minimise a smooth scalar objective of one tensor with L-BFGS (strong-Wolfe line search)."""
    x = start.clone().requires_grad_()
    optimizer = torch.optim.LBFGS([x], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = objective(x)
        value.backward()
        return value

    optimizer.step(closure)
    return x.detach()


def _loss(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """The training loss's convention: mean over sequences, positions, coordinates of |.|^2."""
    return float(squared_modulus(prediction - wide(target)).mean())


def gd_fit(
    predict,
    task: AutoregressiveTask,
    n_sequences: int = 2048,
    seed: int = 0,
    n_restarts: int = 4,
    fit_sequences: int = 512,
) -> dict:
    """Fit a predictor to one-step GD on held-out sequences (module docstring); returns a dict of
    floats: eta_fit, eta_optimal, eta_ratio, gap_plain, gap_at_eta_fit, gap_sym (at eta*),
    gap_sym_fit (best eta), eta_sym, symmetry angles, losses and per-position etas. The symmetry's
    angles are fitted on the first fit_sequences sequences (the costly part), eta and every gap on
    all n_sequences."""
    states, _ = task.eval_sample("true", seed, 0, n_sequences)
    inputs, target = states[:, :-1], states[:, 1:]
    with torch.no_grad():
        p = wide(predict(inputs))
    u = one_step_gd(inputs)
    optimal = optimal_eta(task.config)
    eta_star = optimal.overall
    eta_fit = inner(u, p) / norm(u) ** 2
    n_fit = min(fit_sequences, n_sequences)
    angles, reverse, _, _ = conjugation_fit(p[:n_fit], inputs[:n_fit], task, n_restarts, seed)
    D = None if angles is None else symmetry_matrix(task, angles, reverse)
    g = one_step_gd(inputs, 1.0, D, reverse)
    eta_sym = inner(g, p) / norm(g) ** 2
    return {
        "n_sequences": n_sequences,
        "eta_fit": eta_fit,
        "eta_optimal": eta_star,
        "eta_optimal_method": optimal.method,
        "eta_ratio": eta_fit / eta_star,
        "gap_plain": norm(p - eta_star * u) / norm(eta_star * u),
        "gap_at_eta_fit": norm(p - eta_fit * u) / norm(p),
        "symmetry": _symmetry_name(task.config.w_family, reverse),
        "gap_sym": norm(p - eta_star * g) / norm(eta_star * g),
        "gap_sym_fit": norm(p - eta_sym * g) / norm(p),
        "eta_sym": eta_sym,
        "eta_sym_ratio": eta_sym / eta_star,
        "symmetry_angles": angles,
        "symmetry_reversed": reverse,
        "D_distance_from_identity": None if D is None else _distance_from_identity(D),
        "loss": {
            "model": _loss(p, target),
            "one_step_gd_optimal_eta": _loss(eta_star * u, target),
            "one_step_gd_eta_fit": _loss(eta_fit * u, target),
            "symmetric_gd_optimal_eta": _loss(eta_star * g, target),
            "zero": _loss(torch.zeros_like(p), target),
        },
        "model_minus_gd": _paired_difference(p, eta_star * u, target),
        "loss_from_position_1": {  # the positions the diagonal model's closed form averages
            "model": _loss(p[:, 1:], target[:, 1:]),
            "one_step_gd_optimal_eta": _loss(eta_star * u[:, 1:], target[:, 1:]),
            "zero": _loss(torch.zeros_like(p[:, 1:]), target[:, 1:]),
        },
        "eta_fit_per_position": _eta_per_position(p, u),
        "eta_sym_per_position": _eta_per_position(p, g),
        "eta_optimal_per_position": list(optimal.per_position),
    }


def _eta_per_position(p: torch.Tensor, u: torch.Tensor) -> list[float]:
    """Least-squares eta per position: Re<u_t, p_t> / ||u_t||^2 (0 where u_t = 0)."""
    cross = (u.conj() * p).real.sum(dim=(0, 2))
    norm2 = squared_modulus(u).sum(dim=(0, 2))
    return torch.where(norm2 > 0, cross / norm2.clamp_min(1e-300), 0).tolist()


def _paired_difference(p: torch.Tensor, q: torch.Tensor, target: torch.Tensor) -> dict:
    """Loss of p minus loss of q, averaged over sequences, with its standard error (the two losses
    are paired: same sequences), absolute and relative to q's loss."""
    target = wide(target)
    per_sequence = squared_modulus(p - target).mean((1, 2)) - squared_modulus(q - target).mean(
        (1, 2)
    )
    mean = float(per_sequence.mean())
    se = float(per_sequence.std() / math.sqrt(len(per_sequence)))
    q_loss = float(squared_modulus(q - target).mean())
    return {"mean": mean, "se": se, "relative": mean / q_loss, "relative_se": se / q_loss}


def _symmetry_name(family: str, reverse: bool) -> str:
    if family == "unitary":
        return "D W_hat D^*, D diagonal phases"
    if family == "rotations" and reverse:
        return "D W_hat^T D^T, D a 2x2 reflection per block (reversed pairs)"
    if family == "rotations":
        return "D W_hat D^T, D a 2x2 rotation per block"
    return "none (Haar-orthogonal W)"


def _distance_from_identity(D: torch.Tensor) -> float:
    """min over global phases c of ||D - c I||_F / sqrt(d): 0 when D is plain GD's frame."""
    d = D.shape[0]
    trace = torch.trace(D)
    phase = trace / trace.abs() if trace.abs() > 0 else 1
    return float(torch.linalg.matrix_norm(D - phase * torch.eye(d, dtype=D.dtype)) / math.sqrt(d))
