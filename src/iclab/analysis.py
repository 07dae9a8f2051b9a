"""Mechanistic checks on trained autoregressive models (Sander et al. 2024): what the weights compute.

Predictions are compared on held-out sequences (the run's evaluation stream, `true` distribution),
over all positions t = 0 .. T-1 as in the training loss. Position 0 has seen no pair: one-step GD
predicts 0 there, and so do the diagonal and pe_only models (a linear model nearly so); it is kept
so that every number here is on the scale of the training loss.

One-step GD fit (any predictor p; u = OneStepGD(1) predictions, eta* = optimal_eta(task).overall):
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

Weights of a one-layer augmented linear model: the prediction is exactly
    p_t = sum_h sum_{t' <= t} (e_t'^* G_h e_t) F_h e_t',   e_t = (s_t, s_{t-1}),
with value-output maps F_h (d, 2d) and score maps G_h (2d, 2d), i.e. the tensor
T[j, a, b, c] = sum_h F_h[j, a] G_h[b, c] acting on e_t',a conj(e_t',b) e_t,c. One-step GD with the
symmetry is T = eta D[j, a] conj(D[c, b]) on the block (a: s_t', b: s_{t'-1}, c: s_t), or on
(a: s_{t'-1}, b: s_t', c: s_t) for the reversed family, 0 elsewhere; weight_gap measures the
distance of the learned T to it, and block_fractions where T puts its weight.

Diagonal model (models/diagonal_attention.py): the structure report of theory/diagonal_attention.py
and, when the task is the theory's (unitary or canonical rotations, mu = 1, no noise, fixed start),
the exact expected loss of the trained weights and the closed-form minimum for its head count, both
with the task's start s_0 = (1, ..., 1) / sqrt(d) and over the positions t = 1 .. T-1.
"""

import math
from pathlib import Path

import torch

from iclab.checkpoints import load_checkpoint
from iclab.config import AutoregressiveTaskConfig, ConfigError, load_config
from iclab.estimators.autoregressive import optimal_eta
from iclab.models.diagonal_attention import DiagonalAttention
from iclab.models.linear_attention import LinearAttention
from iclab.plots import plot_eta_per_position, plot_heatmaps, plot_positions
from iclab.results import CHECKPOINT_FILE, CONFIG_FILE, write_json
from iclab.tasks import make_task
from iclab.tasks.autoregressive import AutoregressiveTask, rotation_blocks, squared_modulus
from iclab.theory.diagonal_attention import closed_form_loss, minimise_closed_form, structure_report
from iclab.training import build_model

ANALYSIS_FILE = "analysis.json"


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.complex128 if x.is_complex() else torch.float64)


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """Re <a, b> over all entries."""
    return float((a.conj() * b).real.sum())


def _norm(x: torch.Tensor) -> float:
    return float(squared_modulus(x).sum().sqrt())


def conjugated_gd(
    inputs: torch.Tensor, eta: float, D: torch.Tensor | None = None, reverse: bool = False
) -> torch.Tensor:
    """eta D M_t D^* s_t for inputs s_0 .. s_{L-1} (batch, L, d) -> (batch, L, d), float64 or
    complex128, with M_t = W_hat_t = sum_{t' < t} s_{t'+1} s_t'^* (one-step GD's estimate of W), or
    with reverse its transpose sum_{t' < t} s_t' s_{t'+1}^* (the estimate of W^{-1} = W^T from the
    reversed pairs). D = None is the identity: OneStepGD(eta) without reverse."""
    s = _wide(inputs)
    a = s if D is None else s @ D.to(s.dtype).T  # a_t = D s_t
    keys, values = (a[:, 1:], a[:, :-1]) if reverse else (a[:, :-1], a[:, 1:])
    inner = (s @ keys.conj().transpose(1, 2)).tril(-1)  # [t, t'] = keys_t'^* s_t for t' < t
    return eta * inner @ values


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
    """(angles, reverse, eta, residual) minimising ||p - eta g|| / ||p||, g = conjugated_gd with
    D = symmetry_matrix(task, angles, reflect=reverse), over every orientation, the angles and eta:
    L-BFGS over the angles from 0 and n_restarts - 1 random starts, eta in closed form. angles is
    None when the family has no such symmetry (the fit is then plain GD's, D = I)."""
    p, s = _wide(predictions), _wide(inputs)
    p_norm2 = float(squared_modulus(p).sum())
    n_angles = {"unitary": task.config.n_dims}.get(task.config.w_family, task.config.n_dims // 2)

    def eta_and_residual(D: torch.Tensor | None, reverse: bool) -> tuple[torch.Tensor, ...]:
        g = conjugated_gd(s, 1.0, D, reverse)
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
    return float(squared_modulus(prediction - _wide(target)).mean())


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
        p = _wide(predict(inputs))
    u = conjugated_gd(inputs, 1.0)
    optimal = optimal_eta(task.config)
    eta_star = optimal.overall
    eta_fit = _inner(u, p) / _norm(u) ** 2
    n_fit = min(fit_sequences, n_sequences)
    angles, reverse, _, _ = conjugation_fit(p[:n_fit], inputs[:n_fit], task, n_restarts, seed)
    D = None if angles is None else symmetry_matrix(task, angles, reverse)
    g = conjugated_gd(inputs, 1.0, D, reverse)
    eta_sym = _inner(g, p) / _norm(g) ** 2
    result = {
        "n_sequences": n_sequences,
        "eta_fit": eta_fit,
        "eta_optimal": eta_star,
        "eta_optimal_method": optimal.method,
        "eta_ratio": eta_fit / eta_star,
        "gap_plain": _norm(p - eta_star * u) / _norm(eta_star * u),
        "gap_at_eta_fit": _norm(p - eta_fit * u) / _norm(p),
        "symmetry": _symmetry_name(task.config.w_family, reverse),
        "gap_sym": _norm(p - eta_star * g) / _norm(eta_star * g),
        "gap_sym_fit": _norm(p - eta_sym * g) / _norm(p),
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
    return result


def _eta_per_position(p: torch.Tensor, u: torch.Tensor) -> list[float]:
    """Least-squares eta per position: Re<u_t, p_t> / ||u_t||^2 (0 where u_t = 0)."""
    cross = (u.conj() * p).real.sum(dim=(0, 2))
    norm2 = squared_modulus(u).sum(dim=(0, 2))
    return torch.where(norm2 > 0, cross / norm2.clamp_min(1e-300), 0).tolist()


def _paired_difference(p: torch.Tensor, q: torch.Tensor, target: torch.Tensor) -> dict:
    """Loss of p minus loss of q, averaged over sequences, with its standard error (the two losses
    are paired: same sequences), absolute and relative to q's loss."""
    target = _wide(target)
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


def effective_maps(model: LinearAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head value-output maps F (H, d, 2d) into the prediction slot and score maps G (H, 2d, 2d),
    score = e_t'^* G_h e_t, of a one-layer augmented linear model (token e_t = (s_t, s_{t-1}))."""
    c = model.config
    if not (c.attention == "linear" and c.tokens == "augmented" and c.n_layers == 1):
        raise ValueError("effective_maps needs a one-layer linear model with augmented tokens")
    d, width = model.n_dims, model.n_embd
    layer = model.layers[0]
    head = width // c.n_heads
    q, k, v = (w.detach() for w in layer.qkv.weight.split(width, 0))  # rows: output features
    out = layer.proj.weight.detach()
    token = slice(d, 3 * d)  # the residual stream is (0_d, s_t, s_{t-1}, 0...)
    F, G = [], []
    for h in range(c.n_heads):
        rows = slice(h * head, (h + 1) * head)
        F.append(out[:d, rows] @ v[rows, token])
        G.append(k[rows, token].conj().T @ q[rows, token])
    return torch.stack(F), torch.stack(G)


TOKEN_HALVES = ("s_t'", "s_t'-1")  # the two halves of a key or value token e_t'


def weight_structure(
    model: LinearAttention, D: torch.Tensor | None = None, reverse: bool = False
) -> dict:
    """The tensor T of a one-layer augmented model (module docstring) against symmetric GD.

    block_fractions: ||T||^2 share of each (value half, key half, query half) block; the GD block
    is (value s_t', key s_{t'-1}, query s_t), or (value s_{t'-1}, key s_t', query s_t) with
    reverse. eta_weights and weight_gap = ||T - eta_weights S|| / ||T|| for S = D[j, a] conj(D[c, b])
    on the GD block (D = I if None). max_abs_cos between heads' tensors F_h (x) G_h (invariant
    under reparametrisations within a head). With one head, `frame`: the GD-block maps in D's frame,
    F' = D^* F and G' = G D, each divided by its mean diagonal (one-step GD: both I), and the
    structure of their off-diagonal entries (_offdiagonal_structure)."""
    F, G = (_wide(x) for x in effective_maps(model))
    d = model.n_dims
    T = torch.einsum("hja,hbc->jabc", F, G)
    halves = (slice(0, d), slice(d, 2 * d))
    total = _norm(T) ** 2
    fractions = {}
    for a, value in enumerate(TOKEN_HALVES):
        for b, key in enumerate(TOKEN_HALVES):
            for c, query in enumerate(("s_t", "s_t-1")):
                share = squared_modulus(T[:, halves[a], halves[b], halves[c]]).sum() / total
                fractions[f"value {value}, key {key}, query {query}"] = float(share)
    v, k = (1, 0) if reverse else (0, 1)
    gd_block = f"value {TOKEN_HALVES[v]}, key {TOKEN_HALVES[k]}, query s_t"
    D = torch.eye(d, dtype=T.dtype) if D is None else D.to(T.dtype)
    S = torch.zeros_like(T)
    S[:, halves[v], halves[k], halves[0]] = torch.einsum("ja,cb->jabc", D, D.conj())
    eta_weights = _inner(S, T) / _norm(S) ** 2
    n_heads = F.shape[0]
    cos = 0.0
    for h in range(n_heads):
        for g in range(h):
            f_cos = (F[h].conj() * F[g]).sum().abs() / (F[h].norm() * F[g].norm())
            g_cos = (G[h].conj() * G[g]).sum().abs() / (G[h].norm() * G[g].norm())
            cos = max(cos, float(f_cos * g_cos))
    result = {
        "block_fractions": fractions,
        "gd_block": gd_block,
        "gd_block_fraction": fractions[gd_block],
        "eta_weights": eta_weights,
        "weight_gap": _norm(T - eta_weights * S) / _norm(T),
        "max_abs_cos": cos,
        "F": F,
        "G": G,
    }
    if n_heads == 1:
        frame = {"F": D.conj().T @ F[0][:, halves[v]], "G": G[0][halves[k], halves[0]] @ D}
        for name, matrix in list(frame.items()):
            frame[name] = matrix / torch.diagonal(matrix).mean()
            for key, value in _offdiagonal_structure(frame[name]).items():
                frame[f"offdiag_{key}_{name}"] = value
        result["frame"] = frame
    return result


def _offdiagonal_structure(M: torch.Tensor) -> dict[str, float]:
    """rms and mean (real part) of the off-diagonal entries of M, and the share of their energy
    on one rank-one pattern c w w^* (|w_j| = 1; w from the top eigenvector of the Hermitian part)."""
    d = M.shape[0]
    off = ~torch.eye(d, dtype=torch.bool)
    if d < 2:
        return {"rms": 0.0, "mean": 0.0, "rank1_share": 0.0}
    O = M * off
    values, vectors = torch.linalg.eigh((O + O.conj().T) / 2)
    w = vectors[:, values.abs().argmax()]
    w = w / w.abs().clamp_min(1e-300)
    pattern = w[:, None] * w.conj()[None, :] * off
    overlap = (pattern.conj() * O).sum().abs() ** 2
    energy = squared_modulus(O).sum()
    share = overlap / (squared_modulus(pattern).sum() * energy) if energy > 0 else 0.0
    return {
        "rms": float(squared_modulus(M[off]).mean().sqrt()),
        "mean": float(M[off].real.mean()),
        "rank1_share": float(share),
    }


def theory_applies(config: AutoregressiveTaskConfig) -> bool:
    """Whether the diagonal model's closed form covers this task (theory/diagonal_attention.py)."""
    return (
        config.w_family in ("unitary", "rotations")
        and config.rotation_basis == "canonical"
        and config.mu == 1
        and config.noise_std == 0
        and config.start == "fixed"
    )


def task_start(config: AutoregressiveTaskConfig) -> torch.Tensor:
    """The task's fixed start (1, ..., 1) / sqrt(d) in float64 / complex128, for the closed form."""
    start = torch.ones(config.n_dims, dtype=torch.float64) / math.sqrt(config.n_dims)
    return start.to(torch.complex128) if config.w_family == "unitary" else start


def diagonal_structure(
    model: DiagonalAttention, config: AutoregressiveTaskConfig, minimiser_steps: int = 300
) -> dict:
    """structure_report of the trained A, B, P and, when theory_applies, its exact expected loss,
    the closed-form minimiser for the same head count (init N(0, 0.01^2)) and its report."""
    A, B, P = (x.detach().double() for x in (model.A, model.B, model.P))
    result: dict = {"trained": structure_report(A, B, P), "init_std_minimiser": 0.01}
    if theory_applies(config):
        family, start = config.w_family, task_start(config)
        found = minimise_closed_form(
            config.n_dims, model.n_heads, config.n_steps, family, steps=minimiser_steps,
            init_std=0.01, start=start,
        )  # fmt: skip
        result["closed_form_loss_trained"] = float(closed_form_loss(A, B, P, family, start=start))
        result["closed_form_minimum"] = found.loss
        result["minimiser"] = structure_report(found.A, found.B, found.P)
        result["minimiser"].update(A=found.A, B=found.B, P=found.P)
    result["trained"].update(A=A, B=B, P=P)
    return result


def positional_matrix(model: torch.nn.Module) -> tuple[torch.Tensor, str] | None:
    """The model's position weights as a (T, T) matrix and its name: P of the diagonal and pe_only
    models, the Gram matrix Re(E E^*) of a plain-token model's positional encodings E."""
    if isinstance(model, DiagonalAttention):
        return torch.tril(model.P.detach()).double(), "P"
    if isinstance(model, LinearAttention) and model.positions is not None:
        E = model.positions.detach()
        if model.config.attention == "pe_only":
            return torch.tril(E).double(), "P"
        return (E @ E.conj().T).real.double(), "Gram Re(E E^*) of the positional encodings"
    return None


def _jsonable(value):
    """Tensors to (nested) lists; complex tensors to their modulus (phases are in the figures)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return (value.abs() if value.is_complex() else value).double().tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def analyze_model(
    model: torch.nn.Module,
    task: AutoregressiveTask,
    n_sequences: int = 2048,
    seed: int = 0,
    minimiser_steps: int = 300,
) -> dict:
    """Every check that applies to the model (module docstring); tensors are kept as tensors.
    minimiser_steps: Adam and L-BFGS steps of the closed-form minimiser (diagonal model only)."""
    model.eval()
    result: dict = {"model": type(model).__name__, "gd_fit": gd_fit(model, task, n_sequences, seed)}
    if isinstance(model, LinearAttention):
        c = model.config
        result["model_config"] = {"attention": c.attention, "tokens": c.tokens}
        if c.attention == "linear" and c.tokens == "augmented" and c.n_layers == 1:
            fit = result["gd_fit"]
            angles, reverse = fit["symmetry_angles"], fit["symmetry_reversed"]
            D = None if angles is None else symmetry_matrix(task, angles, reverse)
            result["weights"] = weight_structure(model, D, reverse)
    if isinstance(model, DiagonalAttention):
        result["diagonal"] = diagonal_structure(model, task.config, minimiser_steps)
    positions = positional_matrix(model)
    if positions is not None:
        result["positions"] = {"name": positions[1], "matrix": positions[0]}
    return result


def write_figures(result: dict, run_dir: Path) -> list[Path]:
    """The figures of analyze_model's result into run_dir; returns their paths."""
    paths = []
    fit = result["gd_fit"]
    paths.append(
        plot_eta_per_position(
            {
                "fitted to one-step GD": fit["eta_fit_per_position"],
                "fitted up to the symmetry": fit["eta_sym_per_position"],
            },
            fit["eta_optimal_per_position"],
            fit["eta_optimal"],
            run_dir / "eta_per_position.png",
        )
    )
    if "weights" in result:
        F, G = result["weights"]["F"], result["weights"]["G"]
        d = F.shape[1]
        token = [f"s_t[{i}]" for i in range(d)] + [f"s_t-1[{i}]" for i in range(d)]
        panels = []
        for h in range(F.shape[0]):
            panels.append((f"|F| head {h}: value map", F[h].abs(), "value token e_t'", "output j"))
            panels.append((f"|G| head {h}: score map", G[h].abs(), "query token e_t", "key e_t'"))
        frame = result["weights"].get("frame")
        if frame is not None:  # one head: the GD block in the fitted symmetry's frame
            eye = torch.eye(d, dtype=frame["F"].dtype)
            title = "|{} - I|: deviation from one-step GD in D's frame"
            panels.append((title.format("F' = D^* F"), frame["F"] - eye, "value coordinate", "j"))
            panels.append((title.format("G' = G D"), frame["G"] - eye, "query coordinate", "key"))
        paths.append(plot_heatmaps(panels, run_dir / "linear_weights.png", ticks=token))
    if "diagonal" in result:
        paths.append(plot_diagonal_parameters(result["diagonal"], run_dir / "diagonal_params.png"))
    if "positions" in result:
        positions = result["positions"]
        paths.append(plot_positions(positions["matrix"], positions["name"], run_dir / "P.png"))
    return paths


def plot_diagonal_parameters(diagonal: dict, path: Path) -> Path:
    """Heatmaps of A, B, B^T A, P: trained (first row) and closed-form minimiser (second)."""
    rows = [("trained", diagonal["trained"])]
    if "minimiser" in diagonal:
        rows.append(("closed-form minimiser", diagonal["minimiser"]))
    panels = []
    for label, report in rows:
        panels += [
            (f"A ({label})", report["A"], "coordinate k", "head h"),
            (f"B ({label})", report["B"], "coordinate j", "head h"),
            (f"B^T A ({label})", report["C"], "k", "j"),
            (f"P ({label})", torch.tril(report["P"]), "key position t'", "query position t"),
        ]
    return plot_heatmaps(panels, path, n_columns=4)


def analyze_run(
    run_dir: str | Path, n_sequences: int = 2048, figures: bool = True, minimiser_steps: int = 300
) -> dict:
    """Analyse the checkpoint of an autoregressive run directory; writes analysis.json (tensors as
    lists, complex ones as moduli) and the figures there. Returns the JSON-ready result."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    if not isinstance(config.task, AutoregressiveTaskConfig):
        raise ConfigError(
            f"task.family = {config.task.family!r} in {str(run_dir)!r} is not allowed: "
            "the analysis needs task.family = 'autoregressive'"
        )
    device = torch.device("cpu")
    model = build_model(config, device)
    load_checkpoint(run_dir / CHECKPOINT_FILE, model)
    task = make_task(config.task, device)
    result = analyze_model(model, task, n_sequences, config.eval.eval_seed, minimiser_steps)
    if figures:
        result["figures"] = [path.name for path in write_figures(result, run_dir)]
    ready = _jsonable(result)
    write_json(run_dir / ANALYSIS_FILE, ready)
    return ready
