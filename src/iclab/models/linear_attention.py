"""Attention-only causal transformers over autoregressive states (Sander et al. 2024).

The input is states (batch, L, d) = s_0..s_{L-1}; output t is the prediction of s_{t+1} and sees
only s_0..s_t. As in the paper and its reference code, the residual stream of position t starts as
(0_d, e_t, 0...) of width n_embd: a zero slot for the prediction, then the token, `augmented`
e_t = (s_t, s_{t-1}) with s_{-1} = 0, or `plain` e_t = s_t plus a learned positional encoding
(a vector per position added to the whole stream). n_layers residual causal multi-head attention
layers follow (no LayerNorm, no MLP: the model of the theory), and the prediction is read from the
zero slot, the first d coordinates. There is no learned embedding or readout on purpose: with them
the prediction is a degree-8 polynomial of the weights instead of degree 4 per layer, and training
from a small initialisation stalls on long plateaus.

`linear` attention weighs token t' by the raw score k_{t'}^* q_t (no softmax, no 1/sqrt(head dim));
`softmax` normalises Re(k^* q) / sqrt(head dim). `pe_only` (the reference code's
positional-encoding-only script) learns only a real matrix P:
    s_hat_{t+1} = sum_{t' <= t} P[t, t'] <s_{t-1}, s_t'> s_t',    <a, b> = a^* b,
with the previous state as the query (for unitary W the t' = t term has the target's phase).

Complex states (unitary W) are handled natively: every weight except P is complex (complex64) and
scores are Hermitian, k^* q. The paper's theory is stated over C^d, and a one-head complex model
expresses one step of gradient descent, W_hat = eta sum s_{t'+1} s_{t'}^*, exactly; on real pairs
(Re, Im) a one-head real model could not (Re and Im of s_{t'}^* s_t need two scores).

forward(states, return_hidden=True) also returns (iclab.models.hidden.Hidden) the residual stream
and the attention weights each layer used: the masked raw scores k_{t'}^* q_t for `linear` (complex
for complex states), the softmax weights for `softmax` (real). `pe_only` has no layers or stream:
its residual is the states (1, batch, L, d) and its attention the one matrix it applies,
(1, batch, 1, L, L) = P[t, t'] <s_{t-1}, s_t'> for t' <= t and 0 above the diagonal.
"""

import torch
import torch.nn.functional as F
from torch import nn

from iclab.families.autoregressive import AutoregressiveTaskConfig
from iclab.models.configs import LinearAttentionConfig
from iclab.models.hidden import Hidden
from iclab.tasks.autoregressive import is_complex
from iclab.validation import ConfigError


class CausalAttention(nn.Module):
    def __init__(self, n_embd: int, n_heads: int, softmax: bool, dtype: torch.dtype):
        super().__init__()
        self.n_heads, self.softmax = n_heads, softmax
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False, dtype=dtype)
        self.proj = nn.Linear(n_embd, n_embd, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_weights(x)[0]

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(update (batch, length, width), weights (batch, n_heads, length, length)) for x."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.conj().transpose(-2, -1)  # [t, t'] = k_{t'}^* q_t
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        if self.softmax:
            logits = scores.real / q.shape[-1] ** 0.5
            weights = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        else:
            weights = scores.masked_fill(~causal, 0)
        out = (weights.to(v.dtype) @ v).transpose(1, 2).reshape(batch, length, width)
        return self.proj(out), weights


class LinearAttention(nn.Module):
    """predict(states (batch, L, d)) -> (batch, L, d): output t predicts s_{t+1} from s_0..s_t.

    With return_hidden=True, (predictions, Hidden): residual (n_layers + 1, batch, L, n_embd),
    attention (n_layers, batch, n_heads, L, L); for `pe_only` see the module docstring.
    """

    def __init__(self, config: LinearAttentionConfig, task_config: AutoregressiveTaskConfig):
        super().__init__()
        self.config, self.n_dims, self.n_steps = config, task_config.n_dims, task_config.n_steps
        dtype = torch.complex64 if is_complex(task_config) else torch.float32
        if config.attention == "pe_only":
            self.positions = nn.Parameter(torch.empty(self.n_steps, self.n_steps))  # real P
        else:
            needed = (3 if config.tokens == "augmented" else 2) * self.n_dims  # slot + token
            self.n_embd = config.n_embd or -(-needed // config.n_heads) * config.n_heads
            if self.n_embd < needed:
                raise ConfigError(
                    f"model.n_embd = {config.n_embd} is not allowed: it must hold the prediction "
                    f"slot and the {config.tokens} token, >= {needed} (or 0 = automatic)"
                )
            if config.tokens == "plain":
                self.positions = nn.Parameter(torch.empty(self.n_steps, self.n_embd, dtype=dtype))
            else:
                self.positions = None
            softmax = config.attention == "softmax"
            self.layers = nn.ModuleList(
                CausalAttention(self.n_embd, config.n_heads, softmax, dtype)
                for _ in range(config.n_layers)
            )
        for parameter in self.parameters():
            nn.init.normal_(parameter, std=config.init_std)

    def forward(
        self, states: torch.Tensor, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Hidden]:
        length, d = states.shape[1], self.n_dims
        if length > self.n_steps:
            raise ValueError(f"{length} input states exceed the model's n_steps = {self.n_steps}")
        previous = F.pad(states, (0, 0, 1, 0))[:, :-1]  # s_{t-1}, with s_{-1} = 0
        if self.config.attention == "pe_only":
            scores = previous.conj() @ states.transpose(1, 2)  # [t, t'] = <s_{t-1}, s_t'>
            weights = scores * self.positions[:length, :length].tril()
            if return_hidden:
                return weights @ states, Hidden(states[None], weights[None, :, None])
            return weights @ states
        token = torch.cat((states, previous), -1) if self.config.tokens == "augmented" else states
        h = F.pad(token, (d, self.n_embd - d - token.shape[-1]))  # (0_d, e_t, 0...)
        if self.positions is not None:
            h = h + self.positions[:length]
        if return_hidden:
            return self._forward_hidden(h)
        for layer in self.layers:
            h = h + layer(h)
        return h[..., :d]

    def _forward_hidden(self, h: torch.Tensor) -> tuple[torch.Tensor, Hidden]:
        """Predictions and Hidden from the initial residual stream h (batch, L, n_embd)."""
        residual, attention = [h], []
        for layer in self.layers:
            update, weights = layer.forward_with_weights(h)
            h = h + update
            residual.append(h)
            attention.append(weights)
        return h[..., : self.n_dims], Hidden(torch.stack(residual), torch.stack(attention))

    predict = forward

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on the attention matrices, not on the positional encoding."""
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            (decay if name.startswith("layers.") else no_decay).append(parameter)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
