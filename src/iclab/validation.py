"""The validation layer of configs: one error type, one way to state a rule, stable run identity.

Every config dataclass (task families, models, training) validates its fields on construction with
`require`, so a bad value fails before any work with one message naming the field, the value and
what is allowed.
"""

import dataclasses
import math


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


def shown(value) -> str:
    """repr(value) for a message, its middle cut out beyond 200 characters (a 100 kB value is
    not echoed whole)."""
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:100]}...({len(text) - 200} more)...{text[-100:]}"


def require(condition: bool, name: str, value, allowed: str) -> None:
    """Raise ConfigError("NAME = VALUE is not allowed: ALLOWED") unless condition holds."""
    if not condition:
        raise ConfigError(f"{name} = {shown(value)} is not allowed: {allowed}")


# Config numbers end up in float32 and int64 tensors and torch scalars; larger ones overflow there
# (lr = 1e39 failed inside Adam).
LARGEST_FLOAT = 3.4028234663852886e38  # torch.finfo(torch.float32).max
LARGEST_INTEGER = 2**63 - 1


def require_finite(instance, section: str) -> None:
    """Every number of a config dataclass is finite and fits the type it is computed in: float
    fields float32, int fields int64 (inf and nan are never a setting; an infinite task
    diversity is n_tasks = None)."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        name = f"{section}.{f.name} = {shown(value)} is not allowed"
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number")
        if isinstance(value, float) and abs(value) > LARGEST_FLOAT:
            raise ConfigError(f"{name}: expected a finite number that float32 holds (<= 3.4e38)")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > LARGEST_INTEGER:
            raise ConfigError(f"{name}: expected an integer that int64 holds (< 2^63)")


# Run identity. A run's directory is named by a hash of its resolved config. A field added after
# the first release is declared with added_field(default): it enters the hash only when it differs
# from its default, so adding a field never renames the runs that exist.
_ADDED = "added after the first release"


def added_field(default, **kwargs):
    """A dataclass field that enters the run hash only when it differs from `default`."""
    return dataclasses.field(default=default, metadata={_ADDED: True}, **kwargs)


def identity_fields(instance) -> dict:
    """The fields of a config dataclass that identify a run: all first-release fields, and added
    fields where they differ from their default."""
    return {
        f.name: getattr(instance, f.name)
        for f in dataclasses.fields(instance)
        if not (f.metadata.get(_ADDED) and getattr(instance, f.name) == f.default)
    }
