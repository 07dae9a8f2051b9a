"""Sweep specs: a base config (preset or file), fixed overrides and a grid of keys to lists.

    base = "tiny"                       # a preset name or a config file (relative to the spec)
    ensemble = false                    # train same-shape runs as one stacked ensemble
    [set]                               # fixed overrides, as `--set` takes them
    steps = 3000
    [grid]                              # every combination becomes one run
    n_tasks = ["2^0..2^12", "inf"]      # "2^a..2^b" is the powers of two 2^a, 2^(a+1), ..., 2^b
    batch_size = [32, 64]
    seed = [0]
    [threshold]                         # optional: settings of `iclab threshold`
    criterion = "batch_doubling"        # or "fraction"

Keys are written as in `--set`: bare when one section has them, else `section.key`. A run's
directory is named by its config hash, so the same run in two sweeps is the same directory.
"""

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from iclab.config import ConfigError, RunConfig, read_toml, resolve_config_path
from iclab.config import load_config as load_run_config

MAX_EXPONENT = 62
POWER_RANGE = re.compile(r"^\s*2\^(\d+)\s*\.\.\s*2\^(\d+)\s*$")
SPEC_KEYS = ("base", "ensemble", "set", "grid", "threshold")


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its config, the grid values that made it, and its directory name."""

    config: RunConfig
    grid_values: dict

    @property
    def run_hash(self) -> str:
        return self.config.run_hash()


@dataclass(frozen=True)
class SweepSpec:
    base: str
    overrides: tuple[str, ...] = ()
    grid: dict = field(default_factory=dict)  # key -> list of values (ranges expanded)
    ensemble: bool = False
    threshold: dict = field(default_factory=dict)

    def config(self, values: dict) -> RunConfig:
        """The run config of one assignment of grid values (plus the fixed overrides)."""
        assignments = [f"{key}={_override_value(value)}" for key, value in values.items()]
        return load_run_config(self.base, [*self.overrides, *assignments])

    def with_threshold(self, **settings) -> "SweepSpec":
        return dataclasses.replace(self, threshold={**self.threshold, **settings})

    def runs(self) -> list[SweepRun]:
        """Every combination of the grid, in grid order; duplicates (same hash) once."""
        keys = list(self.grid)
        runs, seen = [], set()
        for combination in itertools.product(*(self.grid[key] for key in keys)):
            values = dict(zip(keys, combination, strict=True))
            run = SweepRun(self.config(values), values)
            if run.run_hash not in seen:
                seen.add(run.run_hash)
                runs.append(run)
        return runs


def _override_value(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def expand_values(key: str, values) -> list:
    """A grid list with every "2^a..2^b" item replaced by the powers of two it names."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"grid.{key} = {values!r} is not allowed: expected a non-empty list")
    expanded = []
    for value in values:
        match = POWER_RANGE.match(value) if isinstance(value, str) else None
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if low > high:
                raise ConfigError(
                    f"grid.{key} range {value!r} is not allowed: the first exponent exceeds the "
                    "second"
                )
            if high > MAX_EXPONENT:  # checked before the range is expanded
                raise ConfigError(
                    f"grid.{key} range {value!r} is not allowed: exponents are at most "
                    f"{MAX_EXPONENT} (config integers are int64)"
                )
            expanded += [2**exponent for exponent in range(low, high + 1)]
        else:
            expanded.append(value)
    return expanded


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every run config is built (and so checked) here."""
    path = Path(path)
    data = read_toml(path)
    unknown = set(data) - set(SPEC_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))} in sweep spec {str(path)!r}; "
            f"allowed: {', '.join(SPEC_KEYS)}"
        )
    if "base" not in data:
        raise ConfigError(f"sweep spec {str(path)!r} has no `base` (a preset name or config file)")
    base = str(data["base"])
    relative = path.parent / base
    if relative.suffix == ".toml" and relative.is_file():
        base = str(relative)
    elif not resolve_config_path(base).is_file():
        raise ConfigError(
            f"sweep spec {str(path)!r}: base = {base!r} is neither a preset nor a file"
        )
    for name in ("set", "grid", "threshold"):
        if not isinstance(data.get(name, {}), dict):
            raise ConfigError(f"[{name}] in sweep spec {str(path)!r} must be a table")
    ensemble = data.get("ensemble", False)
    if not isinstance(ensemble, bool):
        raise ConfigError(f"ensemble = {ensemble!r} is not allowed: expected true or false")
    spec = SweepSpec(
        base=base,
        overrides=tuple(f"{k}={_override_value(v)}" for k, v in data.get("set", {}).items()),
        grid={key: expand_values(key, values) for key, values in data.get("grid", {}).items()},
        ensemble=ensemble,
        threshold=dict(data.get("threshold", {})),
    )
    spec.runs()  # validates every combination before any work
    return spec
