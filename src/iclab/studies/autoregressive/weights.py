"""What the trained weights compute (Sander et al. 2024): linear, diagonal and positional weights.

One-layer augmented linear model: the prediction is exactly
    p_t = sum_h sum_{t' <= t} (e_t'^* G_h e_t) F_h e_t',   e_t = (s_t, s_{t-1}),
with value-output maps F_h (d, 2d) and score maps G_h (2d, 2d), i.e. the tensor
T[j, a, b, c] = sum_h F_h[j, a] G_h[b, c] acting on e_t',a conj(e_t',b) e_t,c. One-step GD with the
symmetry of gd_fit is T = eta D[j, a] conj(D[c, b]) on the block (a: s_t', b: s_{t'-1}, c: s_t),
or on (a: s_{t'-1}, b: s_t', c: s_t) for the reversed family, 0 elsewhere; weight_gap measures the
distance of the learned T to it, and block_fractions where T puts its weight.

Diagonal model (models/diagonal_attention.py): the structure report of theory/diagonal_attention.py
and, when the task is the theory's (unitary or canonical rotations, mu = 1, no noise, fixed start),
the exact expected loss of the trained weights and the closed-form minimum for its head count, both
with the task's start s_0 = (1, ..., 1) / sqrt(d) and over the positions t = 1 .. T-1.
"""

import torch

from iclab.families.autoregressive import AutoregressiveTaskConfig
from iclab.models.diagonal_attention import DiagonalAttention
from iclab.models.linear_attention import LinearAttention
from iclab.studies.autoregressive.linalg import inner, norm, wide
from iclab.tasks.autoregressive import fixed_start, is_complex, squared_modulus
from iclab.theory.diagonal_attention import closed_form_loss, minimise_closed_form, structure_report


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
    F, G = (wide(x) for x in effective_maps(model))
    d = model.n_dims
    T = torch.einsum("hja,hbc->jabc", F, G)
    halves = (slice(0, d), slice(d, 2 * d))
    total = norm(T) ** 2
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
    eta_weights = inner(S, T) / norm(S) ** 2
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
        "weight_gap": norm(T - eta_weights * S) / norm(T),
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
    """The task's fixed start in float64 / complex128, as the closed form takes it."""
    return fixed_start(config.n_dims, torch.complex128 if is_complex(config) else torch.float64)


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
