"""Task families, registered by their config name (`task.family`).

A family owns everything that is specific to one kind of in-context task: its task config
dataclass, its sampler, its baselines and which of them is the Bayes estimator of which
distribution, its named evaluation distributions, its metrics (Metric: predictor and pair
metrics), its metric pairs and their normalisation, the
columns it contributes to results and status tables, the model families that read its sequences,
and whether its runs stack into ensembles. Generic modules (config, evaluation, training, sweeps,
results, cli) ask this registry and never name a family, an estimator or a metric pair.

Every module of this package that defines a Family subclass instance with `register(...)` is a
family: adding one is a new module here (plus its sampler in tasks/ and any estimators it needs).
"""

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import torch

from iclab.validation import ConfigError, require

MODEL_NAME = "PT"  # the trained model's name in every evaluation table

# The parts of a run's memory estimate (iclab.training.memory), in bytes.
PARAMETERS = "parameters, gradients and Adam state"
ACTIVATIONS = "activations of the training batch"
POOL = "task pool"
EVALUATION = "evaluation chunk"
FLOAT = 4  # bytes of a float32 value
PARAMETER_COPIES = 5  # weights, gradients, Adam's two moments, a foreach temporary


@dataclass(frozen=True)
class Metric:
    """One evaluation metric: `values(a, b)` maps two (batch, n_positions, ...) outputs (a
    prediction and the target, or two predictions) to (batch, n_positions) float64 values, summed
    over output coordinates; evaluations average them over sequences and divide by the family's
    metric scale. `label` names it in tables and figures."""

    label: str
    values: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|^2 summed over output coordinates, in double precision (a complex coordinate counts
    once)."""
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    squared = (a.to(wide) - b.to(wide)).abs().square()
    return squared.reshape(squared.shape[0], squared.shape[1], -1).sum(-1)


class Family:
    """What one task family declares; subclasses set the attributes and override the methods."""

    name: str  # the value of task.family
    config_class: type  # its frozen task config dataclass
    default: bool = False  # the family of a config that names none
    model_families: tuple[str, ...] = ()  # model.family values that read its sequences
    distributions: tuple[str, ...] = ()  # named evaluation distributions
    distribution_titles: dict[str, str] = {}  # how figures name them ("evaluated on the ...")
    status_metrics: tuple[tuple[str, str], ...] = ()  # (distribution, pair) shown by `status`
    # Task fields in which runs of one stacked ensemble may differ (with the seed); None: its runs
    # always train alone.
    member_fields: tuple[str, ...] | None = None

    def bayes(self, config) -> dict[str, str]:
        """Distribution -> the baseline that is Bayes-optimal there, for a task config."""
        raise NotImplementedError

    def make_task(self, config, device: torch.device | str):
        """The sampler object (see iclab.tasks) of a task config."""
        raise NotImplementedError

    def baselines(self, task) -> dict[str, Callable]:
        """Named estimators with the models' call shape, for evaluation against the model."""
        raise NotImplementedError

    def metric_pairs(self, baselines: dict) -> tuple[tuple[str, str], ...]:
        """The (A, B) pairs whose Delta_{A,B} an evaluation reports."""
        raise NotImplementedError

    # The name of the family's smoothed pool Bayes estimator, if it has one (see smoothed_baseline).
    smoothed_bayes: str | None = None

    def smoothed_baseline(self, task, smoothing_std: float) -> Callable:
        """The Bayes estimator of the pool blurred by isotropic noise of std smoothing_std (the
        paper's smoothed dMMSE), for a task with a finite pool; only where smoothed_bayes is set."""
        raise NotImplementedError

    def metric_scale(self, config) -> float:
        """What the metrics are divided by (the papers report MSE / D)."""
        return config.n_dims

    def predictor_metrics(self, config) -> dict[str, Metric]:
        """Metrics of each predictor against the target, by the name evaluations store them
        under; the first is the family's error (what `plot` draws per position)."""
        return {"mse": Metric("MSE/D", squared_difference)}

    def pair_metrics(self, config) -> dict[str, Metric]:
        """Metrics between the two predictors of each metric pair; the first is Delta."""
        return {"delta": Metric("Delta", squared_difference)}

    def model_predictor(self, model: torch.nn.Module) -> Callable:
        """The trained model as a predictor taking an evaluation chunk's arguments."""
        return model

    def evaluation_extras(self, task) -> dict:
        """Entries an evaluation adds beside the metrics (e.g. a baseline's fitted parameter)."""
        return {}

    def settings(self, config) -> dict:
        """The task's key settings, as columns of results and status tables."""
        return {"n_dims": config.n_dims}

    def memory(self, config, sizes: dict[str, int], threads: int) -> dict[str, int]:
        """Bytes per part (PARAMETERS, ACTIVATIONS, POOL, EVALUATION) that training and
        evaluating `config` with the integer settings `sizes` ("section.key" -> value, plus
        "chunk", the evaluation chunk) needs; see iclab.training.memory."""
        raise NotImplementedError

    def check_model(self, model_config, task_config) -> None:
        """Raise ConfigError when the model cannot read this family's sequences."""
        if model_config.family not in self.model_families:
            needed = family_of_model(model_config.family).name
            require(
                False,
                "task.family",
                self.name,
                f"model.family = {model_config.family!r} needs task.family = {needed!r}",
            )


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in _REGISTRY:
        raise ValueError(f"task family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return family


def family_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def default_family() -> Family:
    return next(f for f in _REGISTRY.values() if f.default)


def family_named(name: str) -> Family:
    """The family registered as `name`, or a ConfigError listing the known ones."""
    require(name in _REGISTRY, "task.family", name, f"one of {family_names()}")
    return _REGISTRY[name]


def family_of(task_config) -> Family:
    return family_named(task_config.family)


def family_of_model(model_family: str) -> Family:
    """The family whose sequences a model family reads (for messages)."""
    for family in _REGISTRY.values():
        if model_family in family.model_families:
            return family
    raise ConfigError(f"model.family = {model_family!r} reads no registered task family")


def make_task(task_config, device: torch.device | str = "cpu"):
    """The sampler of a task config, from its family."""
    return family_of(task_config).make_task(task_config, device)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
