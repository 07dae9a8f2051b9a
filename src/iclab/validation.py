"""The validation layer of configs: one error type, one way to state a rule, stable run identity.

Every config dataclass (task families, models, training) validates its fields on construction with
`require`, so a bad value fails before any work with one message naming the field, the value and
what is allowed.
"""

import dataclasses
import math


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


def require(condition: bool, name: str, value, allowed: str) -> None:
    """Raise ConfigError("NAME = VALUE is not allowed: ALLOWED") unless condition holds."""
    if not condition:
        raise ConfigError(f"{name} = {value!r} is not allowed: {allowed}")


def require_finite(instance, section: str) -> None:
    """Every float field of a config dataclass is finite (inf and nan are never a setting; an
    infinite task diversity is n_tasks = None)."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{section}.{f.name} = {value!r} is not allowed: expected a finite number"
            )


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
