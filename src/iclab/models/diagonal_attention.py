"""Diagonal multi-head linear attention with positional weights (Sander et al. 2024, section B).

Head h has a diagonal query-key weight a_h and a diagonal value-output weight b_h (rows of the real
matrices A, B of shape (n_heads, n_dims)); a real matrix P (n_steps, n_steps) weights key position
t' for query position t (only t' <= t is used). For a sequence of states s_0 .. s_T (T = n_steps)
the model reads the T tokens s_0 .. s_{T-1} and predicts s_{t+1} at every position t that has a
previous token, t = 1 .. T-1, using the previous token s_{t-1} as the query:

    s_hat_{t+1,j} = sum_{t'<=t} P[t,t'] sum_h b_{hj} s_{t',j} sum_k a_{hk} conj(s_{t-1,k}) s_{t',k}
                  = sum_{t'<=t} P[t,t'] s_{t',j} sum_k C_{jk} conj(s_{t-1,k}) s_{t',k},   C = B^T A.

So the output has T - 1 positions, predicting s_2 .. s_T (all targets are in the input); row 0 of P
is never used. The last row P[T-1, :] predicts the last state from the whole context.

As a model (DiagonalAttention) it has the call shape of every autoregressive predictor (see
tasks/autoregressive.py): inputs s_0 .. s_{L-1} (batch, L, d) -> (batch, L, d), output t predicting
s_{t+1}. Output 0 has no previous token to query with and is 0 (as for the pe_only model and the
estimators); outputs 1 .. L-1 are those of the formula above. So the training loss, which averages
over all L outputs, equals (1/L) E|s_1|^2/d + (L-1)/L times the loss over t = 1 .. L-1 that the
closed form of theory/diagonal_attention.py computes; the first term does not depend on the weights.

Complex states (unitary family, torch.complex64/128) are used natively; A, B, P stay real.
Real states (rotations family) go through the same formula with real arithmetic (conj is the
identity). Diagonal a_h, b_h are enough there: a head with a_h = b_h supported on one rotation
block (2i, 2i+1) with equal entries scores the block inner product <x_{t-1}, x_{t'}> =
|x_0|^2 cos((t-1-t') theta_i), so C = c blockdiag(J_2, ..., J_2) (J_2 the 2x2 all-ones block;
rank d/2, d/2 heads) with c |x_0|^2 P[t, t] = 2 and P[t, t-1] = -P[t, t] / 2 gives
s_{t+1} = 2 cos(theta) s_t - s_{t-1}. Full (non-diagonal) A, B are not needed.
"""

import torch


def diagonal_attention_predict(
    A: torch.Tensor, B: torch.Tensor, P: torch.Tensor, states: torch.Tensor
) -> torch.Tensor:
    """Predictions of s_2 .. s_T from states (batch, T+1, d); returns (batch, T-1, d).

    A, B: (n_heads, d) real; P: (T, T) real, entries above the diagonal ignored. The dtype of the
    result is that of the states (complex states stay complex)."""
    n_steps = P.shape[0]
    if states.ndim != 3 or states.shape[1] != n_steps + 1 or states.shape[2] != A.shape[1]:
        raise ValueError(
            f"states must have shape (batch, {n_steps + 1}, {A.shape[1]}), "
            f"got {tuple(states.shape)}"
        )
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2 to have a predicted position, got {n_steps}")
    tokens = states[:, :n_steps]  # s_0 .. s_{T-1}
    queries = tokens[:, :-1].conj()  # s_{t-1} for t = 1 .. T-1
    dtype = states.dtype
    a, b = A.to(dtype), B.to(dtype)
    weights = torch.tril(P)[1:].to(dtype)  # rows t = 1 .. T-1, keys t' = 0 .. T-1
    # scores[b, h, t, t'] = sum_k a_hk conj(s_{t-1,k}) s_{t',k}
    scores = torch.einsum("bqk,hk,bsk->bhqs", queries, a, tokens)
    return torch.einsum("bhqs,qs,hj,bsj->bqj", scores, weights, b, tokens)


class DiagonalAttention(torch.nn.Module):
    """The diagonal multi-head linear-attention model; see the module docstring for the formula."""

    def __init__(self, n_dims: int, n_heads: int, n_steps: int, init_std: float = 0.1) -> None:
        super().__init__()
        if n_dims < 1 or n_heads < 1 or n_steps < 2:
            raise ValueError(
                f"need n_dims >= 1, n_heads >= 1, n_steps >= 2; got {n_dims}, {n_heads}, {n_steps}"
            )
        self.n_dims, self.n_heads, self.n_steps = n_dims, n_heads, n_steps
        self.A = torch.nn.Parameter(init_std * torch.randn(n_heads, n_dims))
        self.B = torch.nn.Parameter(init_std * torch.randn(n_heads, n_dims))
        self.P = torch.nn.Parameter(init_std * torch.randn(n_steps, n_steps))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs s_0 .. s_{L-1} (batch, L, n_dims), L <= n_steps -> (batch, L, n_dims): output t
        predicts s_{t+1}; output 0 is 0. Uses P[:L, :L]."""
        length = inputs.shape[1]
        if length > self.n_steps:
            raise ValueError(f"{length} input states exceed the model's n_steps = {self.n_steps}")
        first = torch.zeros_like(inputs[:, :1])
        if length < 2:
            return first
        # diagonal_attention_predict reads states[:, :L] only; the appended state is never used.
        states = torch.cat((inputs, first), dim=1)
        rest = diagonal_attention_predict(self.A, self.B, self.P[:length, :length], states)
        return torch.cat((first, rest), dim=1)

    predict = forward
