"""Run configuration: frozen dataclasses loaded from TOML, validated on construction, hashed.

A config file has four sections, each optional (defaults below):

    [task]   family = a registered task family (iclab.families) and its fields
    [model]  family = a model family (iclab.models.configs) and its fields
    [train]  optimisation, seeds, device, dtype, logging
    [eval]   final evaluation set

Overrides (`--set key=value`) name a field as `section.key` or, when unique across sections, as
just `key` (`steps=200`). Every error is a ConfigError naming the field, the value and what is allowed.
"""

import dataclasses
import hashlib
import json
import math
import numbers
import sys
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iclab.families import default_family, family_named, family_of
from iclab.models.configs import MODEL_CONFIGS
from iclab.validation import (
    ConfigError,
    added_field,
    identity_fields,
    require,
    require_finite,
    shown,
)

INFINITE_TASKS = "inf"
INFINITE_SPELLINGS = ("inf", "infinity")  # of n_tasks = infinity, in any case


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("triangle", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")


MAX_LR = 1e30  # far above any useful learning rate, below what overflows in float32


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. `seed` drives the initialisation and the training batches (batch n is a pure
    function of (seed, n)). Schedules: `triangle` is the one-cycle schedule (linear warm-up over
    warmup_fraction of the steps, linear decay to 0); `cosine` warms up linearly, then decays to 0.
    Periodic evaluations (eval_sequences each) run every eval_every steps, or, with
    evals_per_doubling = n > 0, at log-spaced steps: round(eval_every * 2^(j / n)) for j = 0, 1, ...
    (n per doubling of the step, from step eval_every); both always evaluate at the last step.
    `compile`: on CUDA, runs that stack (training/steps.py) take a compiled, graph-captured step
    that draws its batches on the device (seeding.CounterDraws); elsewhere it has no effect.
    `keep_checkpoints`: keep a copy of the checkpoint at every periodic evaluation (log-spaced with
    evals_per_doubling), for analyses over training (`iclab analyze RUN --llc`)."""

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
    evals_per_doubling: int = added_field(0)
    compile: bool = added_field(False)
    keep_checkpoints: bool = added_field(False)

    def __post_init__(self):
        require(self.steps >= 1, "train.steps", self.steps, "an integer >= 1")
        require(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        # Adam's step is lr / (1 - beta1^t), up to 10 lr, in float32: lr = 1e38 overflowed there.
        require(0 < self.lr <= MAX_LR, "train.lr", self.lr, f"a number in (0, {MAX_LR:g}]")
        require(
            self.optimizer in OPTIMIZERS, "train.optimizer", self.optimizer, f"one of {OPTIMIZERS}"
        )
        require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        require(self.schedule in SCHEDULES, "train.schedule", self.schedule, f"one of {SCHEDULES}")
        require(
            0 <= self.warmup_fraction <= 1,
            "train.warmup_fraction",
            self.warmup_fraction,
            "a number in [0, 1]",
        )
        require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a number >= 0 (0 = off)")
        require(self.seed >= 0, "train.seed", self.seed, "an integer >= 0")
        require(self.device in DEVICES, "train.device", self.device, f"one of {DEVICES}")
        require(self.dtype in DTYPES, "train.dtype", self.dtype, f"one of {DTYPES}")
        for name in ("log_every", "eval_every", "eval_sequences", "checkpoint_every"):
            value = getattr(self, name)
            require(value >= 1, f"train.{name}", value, "an integer >= 1")
        require(
            0 <= self.evals_per_doubling <= 64,
            "train.evals_per_doubling",
            self.evals_per_doubling,
            "an integer in [0, 64] (0 = every eval_every steps)",
        )

    def evaluation_steps(self) -> list[int]:
        """The steps after which a periodic evaluation runs, in increasing order."""
        if self.evals_per_doubling == 0:
            steps = range(self.eval_every, self.steps + 1, self.eval_every)
        else:
            count = math.floor(self.evals_per_doubling * math.log2(self.steps / self.eval_every))
            grid = (self.eval_every * 2 ** (j / self.evals_per_doubling) for j in range(count + 1))
            steps = {round(step) for step in grid if round(step) <= self.steps}
        return sorted({*steps, self.steps})


@dataclass(frozen=True)
class EvalConfig:
    """Final evaluation: n_sequences fresh sequences per distribution, drawn from `eval_seed`."""

    n_sequences: int = 16_384
    eval_batch_size: int = 4096
    eval_seed: int = 0

    def __post_init__(self):
        require(self.n_sequences >= 1, "eval.n_sequences", self.n_sequences, "an integer >= 1")
        require(
            self.eval_batch_size >= 1,
            "eval.eval_batch_size",
            self.eval_batch_size,
            "an integer >= 1",
        )
        require(self.eval_seed >= 0, "eval.eval_seed", self.eval_seed, "an integer >= 0")


@dataclass(frozen=True)
class RunConfig:
    task: typing.Any = field(default_factory=lambda: default_family().config_class())
    model: typing.Any = field(default_factory=lambda: next(iter(MODEL_CONFIGS.values()))())
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        for section in SECTIONS:
            instance = _with_annotated_types(section, getattr(self, section))
            object.__setattr__(self, section, instance)  # frozen: set once, here
            require_finite(instance, section)
        family_of(self.task).check_model(self.model, self.task)

    def to_dict(self) -> dict:
        return {section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS}

    def run_hash(self) -> str:
        """12 hex digits identifying the resolved config (n_tasks None is written "inf"). Fields
        declared with validation.added_field enter only when they differ from their default, so
        adding a field keeps the names of existing run directories."""
        identity = {section: identity_fields(getattr(self, section)) for section in SECTIONS}
        canonical = json.dumps(_toml_ready(identity), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


SECTIONS = ("task", "model", "train", "eval")
_FIXED_SECTIONS = {"train": TrainConfig, "eval": EvalConfig}


def _section_class(section: str, family: str | None) -> type:
    """The dataclass of a section; for task and model, that of the named (or default) family."""
    require(family is None or isinstance(family, str), f"{section}.family", family, "a string")
    if section == "task":
        return (default_family() if family is None else family_named(family)).config_class
    if section == "model":
        family = next(iter(MODEL_CONFIGS)) if family is None else family
        require(family in MODEL_CONFIGS, "model.family", family, f"one of {tuple(MODEL_CONFIGS)}")
        return MODEL_CONFIGS[family]
    return _FIXED_SECTIONS[section]


# ---------------------------------------------------------------------------------------------
# Loading, overriding, writing
# ---------------------------------------------------------------------------------------------
def _coerce(name: str, value, annotation):
    """Convert a TOML value to the field's annotated type, or raise ConfigError."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    if type(None) in options:  # only n_tasks-like "int | None" fields: None means infinite
        if value is None or (isinstance(value, str) and value.lower() in INFINITE_SPELLINGS):
            return None
        if isinstance(value, float) and value == math.inf:  # TOML's inf; -inf is not allowed
            return None
        annotation = next(t for t in options if t is not type(None))
        expected = 'an integer, or "inf"'
    else:
        expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[
            annotation
        ]
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:  # numbers.Integral: numpy's integers too (the Python API)
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        value = int(value) if ok else value
        if isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
    elif annotation is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        value = float(value) if ok else value
        expected = "a finite number"
        ok = ok and math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{name} = {shown(value)} is not allowed: expected {expected}")
    return value


def _with_annotated_types(section: str, instance):
    """instance with every field in its annotated type, as a config file's values are (_coerce):
    sections built in Python (dataclasses.replace, the constructors) skip that conversion, so
    n_tasks = 2.5 or steps = "20" must be refused here, before any run directory is written."""
    if not dataclasses.is_dataclass(instance) or isinstance(instance, type):
        raise ConfigError(
            f"[{section}] is not allowed: expected a config section, got {instance!r}"
        )
    hints = typing.get_type_hints(type(instance))
    changed = {}
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        converted = _coerce(f"{section}.{f.name}", value, hints[f.name])
        if type(converted) is not type(value) or converted != value:
            changed[f.name] = converted
    return dataclasses.replace(instance, **changed) if changed else instance


def _build_section(section: str, values: dict):
    cls = _section_class(section, values.get("family"))
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


def check_sections(data: dict, where: str = "") -> None:
    """Raise ConfigError unless data is {known section: table}; `where` names the source."""
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section [{section}]{where}; allowed sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(
                f"[{section}]{where} must be a table of key = value pairs, got {values!r}"
            )


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a RunConfig from nested {section: {key: value}}."""
    check_sections(data)
    return RunConfig(**{s: _build_section(s, data.get(s, {})) for s in SECTIONS})


def _parse_float(literal: str) -> float | str:
    """TOML floats; a finite literal that overflows (1e400) stays its text, so validation rejects
    it instead of reading it as infinity (only inf, +inf and -inf are written infinities)."""
    value = float(literal)
    if math.isinf(value) and literal.lstrip("+-") != "inf":
        return literal
    return value


def _parse_toml(text: str, source: str) -> dict:
    """TOML text of `source` (named in the error of an integer too long for Python to read)."""
    try:
        return tomllib.loads(text, parse_float=_parse_float)
    except tomllib.TOMLDecodeError:
        raise
    except ValueError:
        limit = sys.get_int_max_str_digits()
        raise ConfigError(
            f"{source} is not valid: it holds an integer of more than {limit} digits"
        ) from None


def parse_override(text: str) -> tuple[str, object]:
    """Split `key=value`; the value is read as TOML (numbers, true/false, "strings"), else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not allowed: write it as key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = _parse_toml(f"v = {raw}", f"override {key!r}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(data: dict, overrides: Mapping[str, object] | Sequence[str]) -> dict:
    """Return a copy of nested config data with overrides applied: `key=value` strings, or a
    mapping of keys to values (the Python API's)."""
    keys = list(overrides) if isinstance(overrides, Mapping | list | tuple) else [None]
    if not all(isinstance(key, str) for key in keys):
        raise ConfigError(f"overrides {overrides!r}: give a list of key=value strings or a dict")
    data = {section: dict(values) for section, values in data.items()}
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    spelled: dict[tuple[str, str], str] = {}  # a later value of the same key wins
    for key, value in pairs:
        section, _, name = key.rpartition(".")
        if not section:
            section = _section_of(name, data)
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section in {key!r}; allowed sections: {', '.join(SECTIONS)}"
            )
        if spelled.setdefault((section, name), key) != key:
            raise ConfigError(
                f"{spelled[section, name]!r} and {key!r} both set {section}.{name}: give it once"
            )
        data.setdefault(section, {})[name] = value
    return data


def _section_of(name: str, data: dict) -> str:
    """The one section whose dataclass (for the families in `data`) has a field `name`."""
    found = []
    for section in SECTIONS:
        try:
            cls = _section_class(section, data.get(section, {}).get("family"))
        except ConfigError:  # an unknown family is reported when the section is built
            continue
        if name in {f.name for f in dataclasses.fields(cls)}:
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
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory, not a TOML file")
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist (presets: {', '.join(preset_names())})"
        )
    try:
        # utf-8-sig: a byte-order mark (some Windows editors write one) is not TOML
        return _parse_toml(path.read_text(encoding="utf-8-sig"), f"config file {str(path)!r}")
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {str(path)!r} is not valid TOML: it is not UTF-8 text"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def load_config(
    path: str | Path, overrides: Mapping[str, object] | Sequence[str] = ()
) -> RunConfig:
    """Read a TOML config file (or a preset name), apply overrides (`key=value` strings or a
    mapping of keys to values), validate."""
    if not isinstance(path, str | Path):
        raise ConfigError(f"config {path!r}: give a preset name or the path of a TOML file")
    data = read_toml(path)
    check_sections(data, f" in config file {str(resolve_config_path(path))!r}")
    return config_from_dict(apply_overrides(data, overrides))


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
