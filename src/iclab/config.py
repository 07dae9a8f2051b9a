"""Run configuration: frozen dataclasses loaded from TOML, validated on construction, hashed.

A config file has four sections, each optional (defaults below):

    [task]   family = "regression" | "autoregressive" and that family's fields
    [model]  family = "gpt" | ... and that family's fields
    [train]  optimisation, seeds, device, dtype, logging
    [eval]   final evaluation set

Overrides (`--set key=value`) name a field as `section.key` or, when unique across sections, as
just `key` (`steps=200`). Every error is a ConfigError naming the field, the value and what is allowed.
"""

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


def _require(condition: bool, name: str, value, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{name} = {value!r} is not allowed: {allowed}")


INFINITE_TASKS = "inf"


# ---------------------------------------------------------------------------------------------
# Task families
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegressionTaskConfig:
    """Noisy linear regression y = w.x + eps (Raventos et al. 2023).

    n_tasks is the task diversity M: a pool of M tasks drawn once from the prior (nested in M for a
    fixed pool_seed), or None for M = infinity (a fresh task per sequence).
    """

    family: str = "regression"
    n_dims: int = 8
    n_points: int = 16
    n_tasks: int | None = None
    noise_std: float = 0.5
    prior_std: float = 1.0
    pool_seed: int = 0

    def __post_init__(self):
        _require(self.n_dims >= 1, "task.n_dims", self.n_dims, "an integer >= 1")
        _require(self.n_points >= 1, "task.n_points", self.n_points, "an integer >= 1")
        _require(
            self.n_tasks is None or self.n_tasks >= 1,
            "task.n_tasks",
            self.n_tasks,
            'an integer >= 1, or "inf" for a fresh task per sequence',
        )
        _require(self.noise_std >= 0, "task.noise_std", self.noise_std, "a number >= 0")
        _require(self.prior_std > 0, "task.prior_std", self.prior_std, "a number > 0")
        _require(self.pool_seed >= 0, "task.pool_seed", self.pool_seed, "an integer >= 0")


W_FAMILIES = ("unitary", "rotations", "orthogonal")


@dataclass(frozen=True)
class AutoregressiveTaskConfig:
    """Linear autoregressive sequences s_{t+1} = W s_t + noise_std * eps_t (Sander et al. 2024).

    A sequence holds n_steps + 1 states s_0..s_T of dimension n_dims. Angles theta ~ U[0, 2 pi / mu).
    w_family: `unitary` (complex diagonal e^{i theta}), `rotations` (commuting 2x2 rotation blocks on
    coordinates (2i, 2i+1), in the canonical basis or a random basis shared by the task, drawn from
    basis_seed), `orthogonal` (Haar-random). start: `fixed` (the reference code's unit vector) or
    `random` (uniform on the sphere).
    """

    family: str = "autoregressive"
    n_dims: int = 5
    n_steps: int = 50
    w_family: str = "unitary"
    mu: float = 1.0
    rotation_basis: str = "canonical"
    start: str = "fixed"
    noise_std: float = 0.0
    basis_seed: int = 0

    def __post_init__(self):
        _require(self.n_dims >= 1, "task.n_dims", self.n_dims, "an integer >= 1")
        _require(self.n_steps >= 1, "task.n_steps", self.n_steps, "an integer >= 1")
        _require(
            self.w_family in W_FAMILIES, "task.w_family", self.w_family, f"one of {W_FAMILIES}"
        )
        _require(self.mu >= 1, "task.mu", self.mu, "a number >= 1")
        _require(
            self.rotation_basis in ("canonical", "random"),
            "task.rotation_basis",
            self.rotation_basis,
            "one of ('canonical', 'random')",
        )
        _require(
            self.start in ("fixed", "random"),
            "task.start",
            self.start,
            "one of ('fixed', 'random')",
        )
        _require(self.noise_std >= 0, "task.noise_std", self.noise_std, "a number >= 0")
        _require(self.basis_seed >= 0, "task.basis_seed", self.basis_seed, "an integer >= 0")
        if self.w_family == "rotations":
            _require(
                self.n_dims % 2 == 0, "task.n_dims", self.n_dims, "an even integer for rotations"
            )
        if self.w_family == "orthogonal":  # Haar W has no angle distribution to scale
            _require(self.mu == 1, "task.mu", self.mu, "1 for w_family = 'orthogonal' (Haar W)")
        if self.w_family != "rotations":
            _require(
                self.rotation_basis == "canonical",
                "task.rotation_basis",
                self.rotation_basis,
                "'canonical' unless w_family = 'rotations'",
            )


TASK_CONFIGS: dict[str, type] = {
    "regression": RegressionTaskConfig,
    "autoregressive": AutoregressiveTaskConfig,
}


# ---------------------------------------------------------------------------------------------
# Model families
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPTConfig:
    """Decoder-only GPT-2 style transformer over interleaved (x, y) tokens."""

    family: str = "gpt"
    n_layers: int = 4
    n_embd: int = 64
    n_heads: int = 2
    dropout: float = 0.0

    def __post_init__(self):
        _require(self.n_layers >= 1, "model.n_layers", self.n_layers, "an integer >= 1")
        _require(self.n_embd >= 1, "model.n_embd", self.n_embd, "an integer >= 1")
        _require(self.n_heads >= 1, "model.n_heads", self.n_heads, "an integer >= 1")
        _require(
            self.n_embd % self.n_heads == 0,
            "model.n_embd",
            self.n_embd,
            f"a multiple of model.n_heads = {self.n_heads}",
        )
        _require(0 <= self.dropout < 1, "model.dropout", self.dropout, "a number in [0, 1)")


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

    def __post_init__(self):
        _require(
            self.attention in ATTENTIONS, "model.attention", self.attention, f"one of {ATTENTIONS}"
        )
        _require(self.tokens in TOKENS, "model.tokens", self.tokens, f"one of {TOKENS}")
        _require(self.n_layers >= 1, "model.n_layers", self.n_layers, "an integer >= 1")
        _require(self.n_heads >= 1, "model.n_heads", self.n_heads, "an integer >= 1")
        _require(self.n_embd >= 0, "model.n_embd", self.n_embd, "an integer >= 0 (0 = automatic)")
        _require(
            self.n_embd % self.n_heads == 0,
            "model.n_embd",
            self.n_embd,
            f"a multiple of model.n_heads = {self.n_heads} (or 0 = automatic)",
        )
        if self.attention == "pe_only":
            only_one = "1 for attention = 'pe_only'"
            _require(self.n_layers == 1, "model.n_layers", self.n_layers, only_one)
            _require(self.n_heads == 1, "model.n_heads", self.n_heads, only_one)
            _require(self.init_std >= 0, "model.init_std", self.init_std, "a number >= 0")
        else:
            _require(self.init_std > 0, "model.init_std", self.init_std, "a number > 0")


@dataclass(frozen=True)
class DiagonalAttentionConfig:
    """The paper's diagonal multi-head linear attention with positional weights P (Sander et al.
    2024; models/diagonal_attention.py): head h has diagonal query-key weights a_h and value-output
    weights b_h (rows of A, B), P is n_steps x n_steps. A, B, P start as N(0, init_std^2)."""

    family: str = "diagonal_attention"
    n_heads: int = 1
    init_std: float = 0.1

    def __post_init__(self):
        _require(self.n_heads >= 1, "model.n_heads", self.n_heads, "an integer >= 1")
        _require(self.init_std > 0, "model.init_std", self.init_std, "a number > 0")


MODEL_CONFIGS: dict[str, type] = {
    "gpt": GPTConfig,
    "linear_attention": LinearAttentionConfig,
    "diagonal_attention": DiagonalAttentionConfig,
}


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("triangle", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. `seed` drives the initialisation and the training batches (batch n is a pure
    function of (seed, n)). Schedules: `triangle` is the one-cycle schedule (linear warm-up over
    warmup_fraction of the steps, linear decay to 0); `cosine` warms up linearly, then decays to 0."""

    steps: int = 10_000
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "triangle"
    warmup_fraction: float = 0.5
    grad_clip: float = 0.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    log_every: int = 50
    eval_every: int = 1000
    eval_sequences: int = 1024
    checkpoint_every: int = 1000

    def __post_init__(self):
        _require(self.steps >= 1, "train.steps", self.steps, "an integer >= 1")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _require(self.lr > 0, "train.lr", self.lr, "a number > 0")
        _require(
            self.optimizer in OPTIMIZERS, "train.optimizer", self.optimizer, f"one of {OPTIMIZERS}"
        )
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        _require(self.schedule in SCHEDULES, "train.schedule", self.schedule, f"one of {SCHEDULES}")
        _require(
            0 <= self.warmup_fraction <= 1,
            "train.warmup_fraction",
            self.warmup_fraction,
            "a number in [0, 1]",
        )
        _require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a number >= 0 (0 = off)")
        _require(self.seed >= 0, "train.seed", self.seed, "an integer >= 0")
        _require(self.device in DEVICES, "train.device", self.device, f"one of {DEVICES}")
        _require(self.dtype in DTYPES, "train.dtype", self.dtype, f"one of {DTYPES}")
        for name in ("log_every", "eval_every", "eval_sequences", "checkpoint_every"):
            value = getattr(self, name)
            _require(value >= 1, f"train.{name}", value, "an integer >= 1")


@dataclass(frozen=True)
class EvalConfig:
    """Final evaluation: n_sequences fresh sequences per distribution, drawn from `eval_seed`."""

    n_sequences: int = 16_384
    eval_batch_size: int = 4096
    eval_seed: int = 0

    def __post_init__(self):
        _require(self.n_sequences >= 1, "eval.n_sequences", self.n_sequences, "an integer >= 1")
        _require(
            self.eval_batch_size >= 1,
            "eval.eval_batch_size",
            self.eval_batch_size,
            "an integer >= 1",
        )
        _require(self.eval_seed >= 0, "eval.eval_seed", self.eval_seed, "an integer >= 0")


# The task family each model family reads, and the fewest states a sequence needs for it.
MODEL_TASK_FAMILIES = {
    "gpt": "regression",
    "linear_attention": "autoregressive",
    "diagonal_attention": "autoregressive",
}


def check_model_fits_task(model, task) -> None:
    """Raise ConfigError when the model family cannot read the task family's sequences."""
    needed = MODEL_TASK_FAMILIES[model.family]
    _require(
        task.family == needed,
        "task.family",
        task.family,
        f"model.family = {model.family!r} needs task.family = {needed!r}",
    )
    if model.family == "diagonal_attention":  # it queries with the previous token
        _require(
            task.n_steps >= 2,
            "task.n_steps",
            task.n_steps,
            f"model.family = {model.family!r} needs n_steps >= 2 (a previous token to query with)",
        )


@dataclass(frozen=True)
class RunConfig:
    task: typing.Any = field(default_factory=RegressionTaskConfig)
    model: typing.Any = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        check_model_fits_task(self.model, self.task)

    def to_dict(self) -> dict:
        return {section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS}

    def run_hash(self) -> str:
        """12 hex digits identifying the resolved config (n_tasks None is written "inf")."""
        canonical = json.dumps(_toml_ready(self.to_dict()), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


SECTIONS = ("task", "model", "train", "eval")
_FAMILY_REGISTRIES = {"task": TASK_CONFIGS, "model": MODEL_CONFIGS}
_FIXED_SECTIONS = {"train": TrainConfig, "eval": EvalConfig}


# ---------------------------------------------------------------------------------------------
# Loading, overriding, writing
# ---------------------------------------------------------------------------------------------
def _coerce(name: str, value, annotation):
    """Convert a TOML value to the field's annotated type, or raise ConfigError."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    if type(None) in options:  # only n_tasks-like "int | None" fields: None means infinite
        if value is None or (isinstance(value, str) and value.lower() in ("inf", "infinity")):
            return None
        if isinstance(value, float) and math.isinf(value):
            return None
        annotation = next(t for t in options if t is not type(None))
        expected = 'an integer, or "inf"'
    else:
        expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[
            annotation
        ]
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        ok = ok and not math.isnan(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{name} = {value!r} is not allowed: expected {expected}")
    return value


def _build_section(section: str, values: dict):
    values = dict(values)
    if section in _FAMILY_REGISTRIES:
        registry = _FAMILY_REGISTRIES[section]
        default_family = next(iter(registry))
        family = values.get("family", default_family)
        _require(family in registry, f"{section}.family", family, f"one of {tuple(registry)}")
        cls = registry[family]
    else:
        cls = _FIXED_SECTIONS[section]
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"unknown key {section}.{key}; allowed keys in [{section}]: {', '.join(allowed)}"
            )
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a RunConfig from nested {section: {key: value}}."""
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section [{section}]; allowed sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of key = value pairs, got {values!r}")
    return RunConfig(**{s: _build_section(s, data.get(s, {})) for s in SECTIONS})


def parse_override(text: str) -> tuple[str, object]:
    """Split `key=value`; the value is read as TOML (numbers, true/false, "strings"), else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not allowed: write it as key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of nested config data with `key=value` overrides applied."""
    data = {section: dict(values) for section, values in data.items()}
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.rpartition(".")
        if not section:
            section = _section_of(name, data)
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section in {key!r}; allowed sections: {', '.join(SECTIONS)}"
            )
        data.setdefault(section, {})[name] = value
    return data


def _section_of(name: str, data: dict) -> str:
    """The one section whose dataclass (for the families in `data`) has a field `name`."""
    found = []
    for section in SECTIONS:
        if section in _FAMILY_REGISTRIES:
            registry = _FAMILY_REGISTRIES[section]
            cls = registry.get(data.get(section, {}).get("family", next(iter(registry))))
        else:
            cls = _FIXED_SECTIONS[section]
        if cls is not None and name in {f.name for f in dataclasses.fields(cls)}:
            found.append(section)
    if len(found) != 1:
        where = f"it is in {', '.join(found)}" if found else "no section has it"
        raise ConfigError(f"override key {name!r} is not allowed: {where}; write section.{name}")
    return found[0]


PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def resolve_config_path(path_or_preset: str | Path) -> Path:
    """A config file path, or the file of a preset name (`small` -> presets/small.toml)."""
    path = Path(path_or_preset)
    if not path.exists() and str(path_or_preset) in preset_names():
        return PRESETS_DIR / f"{path_or_preset}.toml"
    return path


def read_toml(path: str | Path) -> dict:
    path = resolve_config_path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist (presets: {', '.join(preset_names())})"
        )
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a TOML config file (or a preset name), apply `key=value` overrides, validate."""
    return config_from_dict(apply_overrides(read_toml(path), list(overrides)))


def _toml_ready(data: dict) -> dict:
    return {
        section: {k: (INFINITE_TASKS if v is None else v) for k, v in values.items()}
        for section, values in data.items()
    }


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def config_to_toml(config: RunConfig) -> str:
    lines = []
    for section, values in _toml_ready(config.to_dict()).items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
