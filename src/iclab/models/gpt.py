"""GPT-2 style decoder-only transformer over the interleaved sequence x_1, y_1, ..., x_K, y_K.

Tokens are (D+1)-dimensional: x -> [0, x], y -> [y, 0, ..., 0]; a bias-free linear embedding plus
learned positional embeddings; pre-LayerNorm blocks with causal self-attention and a GELU MLP of 4x
width; the prediction of y_k is read from the output at the position of x_k, so it sees only the
pairs before k and x_k.

The forward also runs a stacked ensemble (iclab.training.steps): under torch.func.functional_call
with every parameter given a leading member axis N, and inputs (N, batch, ...), each linear layer is one
batched matrix product with its bias fused (baddbmm) and attention sees the members as more batch.

forward(xs, ys, return_hidden=True) also returns the residual stream and attention weights
(iclab.models.hidden.Hidden). The fused attention kernel returns no weights, so that path computes
attention explicitly; it is a separate loop, and the normal path pays one flag check per forward.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from iclab.models.configs import GPTConfig
from iclab.models.hidden import Hidden


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear, or with a member axis (weight (N, out, in), x (N, ..., in)) one baddbmm."""
    if weight.ndim == 2:
        return F.linear(x, weight, bias)
    flat = x.reshape(len(weight), -1, x.shape[-1])
    if bias is None:
        out = torch.bmm(flat, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(bias[:, None], flat, weight.transpose(1, 2))
    return out.view(*x.shape[:-1], -1)


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """norm(x), also when its weight and bias have a member axis (N, width) and x is (N, ...)."""
    weight, bias = norm.weight, norm.bias
    if weight.ndim == 1:
        return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)
    shape = (len(weight),) + (1,) * (x.ndim - 2) + (-1,)
    normed = F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
    return torch.addcmul(bias.view(shape), normed, weight.view(shape))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, length, width = x.shape  # lead: (batch,) or (members, batch)
        q, k, v = _linear(x, self.qkv.weight, self.qkv.bias).split(width, dim=-1)
        q, k, v = (t.reshape(-1, length, self.n_heads, width // self.n_heads) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            dropout_p=dropout,
        )
        out = out.transpose(1, 2).reshape(*lead, length, width)
        return _linear(out, self.proj.weight, self.proj.bias)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward for x (batch, length, width), computing attention explicitly to also return
        its weights (batch, n_heads, length, length), before dropout (if training with dropout,
        dropout is applied to them as in the fused kernel)."""
        batch, length, width = x.shape
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        dropped = F.dropout(weights, self.dropout, self.training)
        out = (dropped @ v).transpose(1, 2).reshape(batch, length, width)
        return F.linear(out, self.proj.weight, self.proj.bias), weights


class Block(nn.Module):
    def __init__(self, n_embd: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_attention = nn.LayerNorm(n_embd)
        self.attention = CausalSelfAttention(n_embd, n_heads, dropout)
        self.ln_mlp = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._feed_forward(x + self.attention(_layer_norm(x, self.ln_attention)))

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward without a member axis, also returning the attention weights."""
        attended, weights = self.attention.forward_with_weights(_layer_norm(x, self.ln_attention))
        return self._feed_forward(x + attended), weights

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual MLP half of the block."""
        up, down, dropout = self.mlp[0], self.mlp[2], self.mlp[3]
        hidden = F.gelu(_linear(_layer_norm(x, self.ln_mlp), up.weight, up.bias))
        return x + dropout(_linear(hidden, down.weight, down.bias))


class GPT(nn.Module):
    """predict(xs, ys) -> (batch, n_points): xs (batch, n_points, n_dims), ys (batch, n_points).

    With return_hidden=True, (predictions, Hidden): residual (n_layers + 1, batch, 2K, n_embd),
    attention (n_layers, batch, n_heads, 2K, 2K) over the interleaved tokens x_1, y_1, ...
    """

    supports_member_axis = True  # see the module docstring

    def __init__(self, config: GPTConfig, n_dims: int, n_points: int):
        super().__init__()
        self.config, self.n_dims, self.n_points = config, n_dims, n_points
        self.embed = nn.Linear(n_dims + 1, config.n_embd, bias=False)
        self.positions = nn.Embedding(2 * n_points, config.n_embd)
        self.blocks = nn.ModuleList(
            Block(config.n_embd, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.ln_final = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, 1)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers) so depth does not blow up.
        for name, parameter in self.named_parameters():
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(parameter, std=config.init_std / math.sqrt(2 * config.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @staticmethod
    def interleave(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(..., 2K, D+1) tokens x_1, y_1, ...: x -> [0, x], y -> [y, 0, ..., 0]."""
        *lead, n_points, n_dims = xs.shape
        x_tokens = F.pad(xs, (1, 0))
        y_tokens = F.pad(ys.unsqueeze(-1), (0, n_dims))
        tokens = torch.stack((x_tokens, y_tokens), dim=-2)
        return tokens.reshape(*lead, 2 * n_points, n_dims + 1)

    def forward(
        self, xs: torch.Tensor, ys: torch.Tensor, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Hidden]:
        tokens = self.interleave(xs, ys)
        length = tokens.shape[-2]
        if length > self.positions.num_embeddings:
            raise ValueError(f"{xs.shape[-2]} points exceed the model's n_points = {self.n_points}")
        positions = self.positions.weight[..., :length, :]
        if positions.ndim == 3:  # (members, length, width) against h (members, batch, ...)
            positions = positions[:, None]
        h = _linear(tokens, self.embed.weight, None) + positions
        if return_hidden:
            return self._forward_hidden(h)
        for block in self.blocks:
            h = block(h)
        return self._readout(h)

    def _readout(self, h: torch.Tensor) -> torch.Tensor:
        """Predictions (..., n_points) from the final residual stream at the x positions."""
        out = _linear(_layer_norm(h[..., ::2, :], self.ln_final), self.head.weight, self.head.bias)
        return out.squeeze(-1)

    def _forward_hidden(self, h: torch.Tensor) -> tuple[torch.Tensor, Hidden]:
        """Predictions and Hidden from the embedded tokens h (batch, 2K, n_embd)."""
        if self.embed.weight.ndim != 2:
            raise ValueError("return_hidden=True is not supported with a member axis (ensembles)")
        residual, attention = [h], []
        for block in self.blocks:
            h, weights = block.forward_with_weights(h)
            residual.append(h)
            attention.append(weights)
        return self._readout(h), Hidden(torch.stack(residual), torch.stack(attention))

    predict = forward

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay only on the body's matrix weights (2-D tensors other than embeddings)."""
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            is_body_matrix = parameter.dim() == 2 and name.startswith("blocks.")
            (decay if is_body_matrix else no_decay).append(parameter)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
