"""Model configs: one frozen dataclass per model family, registered by its config name
(`model.family`); the first is the default. Each validates its fields on construction."""

from dataclasses import dataclass

from iclab.validation import added_field, require


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


@dataclass(frozen=True)
class GPTConfig:
    """Decoder-only GPT-2 style transformer over interleaved (x, y) tokens."""

    family: str = "gpt"
    n_layers: int = 4
    n_embd: int = 64
    n_heads: int = 2
    dropout: float = 0.0
    init_std: float = added_field(0.02)  # std of the weights at init (GPT-2's 0.02)

    def describe(self) -> str:
        return f"gpt {self.n_layers}x{self.n_embd}, {_count(self.n_heads, 'head')}"

    def __post_init__(self):
        require(self.n_layers >= 1, "model.n_layers", self.n_layers, "an integer >= 1")
        require(self.n_embd >= 1, "model.n_embd", self.n_embd, "an integer >= 1")
        require(self.n_heads >= 1, "model.n_heads", self.n_heads, "an integer >= 1")
        require(
            self.n_embd % self.n_heads == 0,
            "model.n_embd",
            self.n_embd,
            f"a multiple of model.n_heads = {self.n_heads}",
        )
        require(0 <= self.dropout < 1, "model.dropout", self.dropout, "a number in [0, 1)")
        require(self.init_std > 0, "model.init_std", self.init_std, "a number > 0")


ATTENTIONS = ("linear", "softmax", "pe_only")
TOKENS = ("augmented", "plain")


@dataclass(frozen=True)
class LinearAttentionConfig:
    """Attention-only causal transformer over states s_t (Sander et al. 2024), predicting s_{t+1}.

    attention: `linear` (no softmax), `softmax`, or `pe_only` (only a position matrix P is
    learned: weight P[t, t'] times <s_{t-1}, s_t'>; ignores tokens and n_embd). tokens:
    `augmented` e_t = (s_t, s_{t-1}) or `plain` e_t = s_t with a learned positional encoding.
    n_embd is the residual width, >= a prediction slot of n_dims plus the token; 0 means exactly
    that, rounded up to a multiple of n_heads. Weights start as N(0, init_std^2).
    """

    family: str = "linear_attention"
    attention: str = "linear"
    tokens: str = "augmented"
    n_layers: int = 1
    n_heads: int = 1
    n_embd: int = 0
    init_std: float = 0.02

    def describe(self) -> str:
        if self.attention == "pe_only":
            return "linear_attention, positions only"
        layers, heads = _count(self.n_layers, "layer"), _count(self.n_heads, "head")
        return f"linear_attention {self.attention}, {self.tokens} tokens, {layers}, {heads}"

    def __post_init__(self):
        require(
            self.attention in ATTENTIONS, "model.attention", self.attention, f"one of {ATTENTIONS}"
        )
        require(self.tokens in TOKENS, "model.tokens", self.tokens, f"one of {TOKENS}")
        require(self.n_layers >= 1, "model.n_layers", self.n_layers, "an integer >= 1")
        require(self.n_heads >= 1, "model.n_heads", self.n_heads, "an integer >= 1")
        require(self.n_embd >= 0, "model.n_embd", self.n_embd, "an integer >= 0 (0 = automatic)")
        require(
            self.n_embd % self.n_heads == 0,
            "model.n_embd",
            self.n_embd,
            f"a multiple of model.n_heads = {self.n_heads} (or 0 = automatic)",
        )
        if self.attention == "pe_only":
            only_one = "1 for attention = 'pe_only'"
            require(self.n_layers == 1, "model.n_layers", self.n_layers, only_one)
            require(self.n_heads == 1, "model.n_heads", self.n_heads, only_one)
            require(self.init_std >= 0, "model.init_std", self.init_std, "a number >= 0")
        else:
            require(self.init_std > 0, "model.init_std", self.init_std, "a number > 0")


@dataclass(frozen=True)
class DiagonalAttentionConfig:
    """The paper's diagonal multi-head linear attention with positional weights P (Sander et al.
    2024; models/diagonal_attention.py): head h has diagonal query-key weights a_h and value-output
    weights b_h (rows of A, B), P is n_steps x n_steps. A, B, P start as N(0, init_std^2)."""

    family: str = "diagonal_attention"
    n_heads: int = 1
    init_std: float = 0.1

    def describe(self) -> str:
        return f"diagonal_attention, {_count(self.n_heads, 'head')}"

    def __post_init__(self):
        require(self.n_heads >= 1, "model.n_heads", self.n_heads, "an integer >= 1")
        require(self.init_std > 0, "model.init_std", self.init_std, "a number > 0")


MODEL_CONFIGS: dict[str, type] = {
    "gpt": GPTConfig,
    "linear_attention": LinearAttentionConfig,
    "diagonal_attention": DiagonalAttentionConfig,
}
