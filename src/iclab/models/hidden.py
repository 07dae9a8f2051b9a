"""What a model's forward(..., return_hidden=True) returns next to its predictions."""

from dataclasses import dataclass

import torch


@dataclass
class Hidden:
    """Internals of one forward pass (they keep their autograd graph).

    residual: (n_layers + 1, batch, length, width), the residual stream after the embedding and
        after each layer.
    attention: (n_layers, batch, n_heads, length, length), attention[l, b, h, t, t'] = the weight
        of position t' in the output at position t (zero for t' > t).
    """

    residual: torch.Tensor
    attention: torch.Tensor
