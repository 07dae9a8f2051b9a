"""GPT-2 style decoder-only transformer over the interleaved sequence x_1, y_1, ..., x_K, y_K.

Tokens are (D+1)-dimensional: x -> [0, x], y -> [y, 0, ..., 0]; a bias-free linear embedding plus
learned positional embeddings; pre-LayerNorm blocks with causal self-attention and a GELU MLP of 4x
width; the prediction of y_k is read from the output at the position of x_k, so it sees only the
pairs before k and x_k.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from iclab.config import GPTConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


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
        x = x + self.attention(self.ln_attention(x))
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    """predict(xs, ys) -> (batch, n_points): xs (batch, n_points, n_dims), ys (batch, n_points)."""

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
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @staticmethod
    def interleave(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(batch, 2K, D+1) tokens x_1, y_1, ...: x -> [0, x], y -> [y, 0, ..., 0]."""
        batch, n_points, n_dims = xs.shape
        x_tokens = F.pad(xs, (1, 0))
        y_tokens = F.pad(ys.unsqueeze(-1), (0, n_dims))
        return torch.stack((x_tokens, y_tokens), dim=2).reshape(batch, 2 * n_points, n_dims + 1)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        tokens = self.interleave(xs, ys)
        length = tokens.shape[1]
        if length > self.positions.num_embeddings:
            raise ValueError(f"{xs.shape[1]} points exceed the model's n_points = {self.n_points}")
        h = self.embed(tokens) + self.positions.weight[:length]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_final(h[:, ::2])).squeeze(-1)

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
