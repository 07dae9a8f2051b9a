"""Noisy linear regression in context (Raventos et al. 2023): the task-diversity family.

Pretraining draws w uniformly from a pool of M tasks (task.n_tasks; None is M = infinity), the
true distribution a fresh w from the prior per sequence. Baselines: Ridge (Bayes for the Gaussian
prior) and dMMSE (Bayes for the pool; at M = infinity the prior's Bayes estimator). With
task.prior = "laplace" the tasks have i.i.d. Laplace coordinates and LaplaceBayes, a Monte-Carlo
posterior mean (iclab.estimators.laplace_posterior), is the prior's Bayes estimator.
"""

from dataclasses import dataclass

from iclab.families import (
    ACTIVATIONS,
    EVALUATION,
    FLOAT,
    PARAMETER_COPIES,
    PARAMETERS,
    POOL,
    Family,
    register,
)
from iclab.validation import added_field, require

RIDGE = "Ridge"
DMMSE = "dMMSE"
PT_RIDGE = "PT,Ridge"
PT_DMMSE = "PT,dMMSE"
DMMSE_RIDGE = "dMMSE,Ridge"
LAPLACE_BAYES = "LaplaceBayes"
SMOOTHED_DMMSE = "Smoothed dMMSE"
PRIORS = ("gaussian", "laplace")
STORED_ENERGIES = 2**25  # dMMSE's bound on the energies a worker thread keeps (pool_posterior)
PAIRS = (("PT", RIDGE), ("PT", DMMSE), (DMMSE, RIDGE))
# With the Laplace prior, LaplaceBayes is the prior's Bayes estimator: the study's pairs.
LAPLACE_PAIRS = (("PT", LAPLACE_BAYES), (DMMSE, LAPLACE_BAYES), (LAPLACE_BAYES, RIDGE))


@dataclass(frozen=True)
class RegressionTaskConfig:
    """Noisy linear regression y = w.x + eps (Raventos et al. 2023).

    n_tasks is the task diversity M: a pool of M tasks drawn once from the prior (nested in M for a
    fixed pool_seed), or None for M = infinity (a fresh task per sequence). prior is the
    distribution of tasks, "gaussian" (N(0, prior_std^2 I)) or "laplace" (i.i.d. Laplace
    coordinates of variance prior_std^2).
    """

    family: str = "regression"
    n_dims: int = 8
    n_points: int = 16
    n_tasks: int | None = None
    noise_std: float = 0.5
    prior_std: float = 1.0
    pool_seed: int = 0
    prior: str = added_field("gaussian")

    def __post_init__(self):
        check_linear_task(self)
        # With noise, the baselines' float32 solves need ridge's lambda = noise_std^2 / prior_std^2
        # >= 1e-6: at 1e-10 (noise_std = 1e-5) the Gram matrix of a prefix shorter than D is
        # singular there. Without noise ridge is a pseudo-inverse, which needs no pool posterior
        # (dMMSE and the Laplace prior's estimator need noise).
        noiseless_ok = self.n_tasks is None and self.prior == "gaussian"
        require(
            (self.noise_std == 0 and noiseless_ok)
            or MIN_NOISE_TO_PRIOR * self.prior_std <= self.noise_std <= MAX_SCALE,
            "task.noise_std",
            self.noise_std,
            f"a number in [{MIN_NOISE_TO_PRIOR:g} x task.prior_std, {MAX_SCALE:g}] (ridge's "
            "lambda = noise_std^2 / prior_std^2 >= 1e-6 for float32 solves), or 0 with "
            'n_tasks = "inf" and the Gaussian prior',
        )
        require(self.prior in PRIORS, "task.prior", self.prior, f"one of {PRIORS}")


# Scales (prior_std, noise_std) a float32 run computes with: squares and sums of values up to
# 1e6 stay far from float32's range at both ends.
MIN_SCALE, MAX_SCALE = 1e-6, 1e6
MIN_NOISE_TO_PRIOR = 1e-3


def check_linear_task(config) -> None:
    """The fields every task on w.x with a pool of M tasks shares (see iclab.tasks.linear)."""
    require(config.n_dims >= 1, "task.n_dims", config.n_dims, "an integer >= 1")
    require(config.n_points >= 1, "task.n_points", config.n_points, "an integer >= 1")
    require(
        config.n_tasks is None or config.n_tasks >= 1,
        "task.n_tasks",
        config.n_tasks,
        'an integer >= 1, or "inf" for a fresh task per sequence',
    )
    require(
        MIN_SCALE <= config.prior_std <= MAX_SCALE,
        "task.prior_std",
        config.prior_std,
        f"a number in [{MIN_SCALE:g}, {MAX_SCALE:g}] (tasks, inputs and targets are float32)",
    )
    require(config.pool_seed >= 0, "task.pool_seed", config.pool_seed, "an integer >= 0")


class Regression(Family):
    name = "regression"
    config_class = RegressionTaskConfig
    default = True
    model_families = ("gpt",)
    distributions = ("pretrain", "true")
    distribution_titles = {"pretrain": "pretraining pool", "true": "true prior (new tasks)"}
    status_metrics = (("true", PT_RIDGE), ("true", PT_DMMSE), ("pretrain", PT_DMMSE))
    member_fields = ("n_tasks", "noise_std", "prior_std", "pool_seed")

    def bayes(self, config) -> dict[str, str]:
        return {"pretrain": DMMSE, "true": LAPLACE_BAYES if config.prior == "laplace" else RIDGE}

    def make_task(self, config, device):
        from iclab.tasks.regression import RegressionTask

        return RegressionTask(config, device)

    def baselines(self, task) -> dict:
        from iclab.estimators.laplace_posterior import LaplaceBayes
        from iclab.estimators.pool_posterior import DMMSE as PoolPosteriorMean
        from iclab.estimators.regression import Ridge

        config = task.config
        prior_mean = ridge = Ridge(noise_std=config.noise_std, prior_std=config.prior_std)
        extra = {}
        if config.prior == "laplace":
            prior_mean = LaplaceBayes(noise_std=config.noise_std, prior_std=config.prior_std)
            extra = {LAPLACE_BAYES: prior_mean}
        pool_mean = (
            prior_mean if task.pool is None else PoolPosteriorMean(task.pool, config.noise_std)
        )
        return {RIDGE: ridge, DMMSE: pool_mean, **extra}

    smoothed_bayes = SMOOTHED_DMMSE

    def smoothed_baseline(self, task, smoothing_std: float):
        from iclab.estimators.pool_posterior import SmoothedDMMSE

        return SmoothedDMMSE(task.pool, task.config.noise_std, smoothing_std)

    def metric_pairs(self, baselines: dict) -> tuple[tuple[str, str], ...]:
        return PAIRS + (LAPLACE_PAIRS if LAPLACE_BAYES in baselines else ())

    def settings(self, config) -> dict:
        return {
            "n_tasks": "inf" if config.n_tasks is None else config.n_tasks,
            **super().settings(config),
            "prior": config.prior,
        }

    def memory(self, config, s: dict[str, int], threads: int) -> dict[str, int]:
        """Bytes per part (iclab.training.memory): gpt_memory, plus Ridge's 3 C K D^2 for an
        evaluation chunk of C sequences, dMMSE's bounded tiles per thread and, for the Laplace
        prior, LaplaceBayes's bounded filter state."""
        d, k, m, chunk = s["task.n_dims"], s["task.n_points"], s.get("task.n_tasks", 0), s["chunk"]
        baselines = 3 * chunk * k * d * d
        if m:
            baselines += threads * 2 * min(STORED_ENERGIES, 32 * m)
        if config.task.prior == "laplace":  # LaplaceBayes's filter: covariances and their update
            from iclab.estimators.laplace_posterior import FILTER_ELEMENTS

            baselines += 3 * FILTER_ELEMENTS
        return gpt_memory(s, baselines)


def gpt_memory(s: dict[str, int], baselines: int) -> dict[str, int]:
    """Bytes per part of a GPT on interleaved (x, y) sequences, in float32, with `baselines`
    values of evaluation state: parameters P x 5 copies (weights, gradients, Adam's moments, a
    foreach temporary); activations (N + 1) layers of 20 B L E + 2 B H L^2 (L = 2 K tokens) plus
    6 B K (D + 1) inputs; the pool 2 M D (drawing it holds two copies); an evaluation chunk of C
    sequences: one layer at C, its inputs, and the baselines."""
    d, k, b = s["task.n_dims"], s["task.n_points"], s["train.batch_size"]
    e, h, n = s["model.n_embd"], s["model.n_heads"], s["model.n_layers"]
    length = 2 * k
    parameters = (d + 1) * e + length * e + n * (12 * e * e + 13 * e) + 3 * e + 1
    layer = lambda rows: 20 * rows * length * e + 2 * rows * h * length**2  # noqa: E731
    inputs = lambda rows: 6 * rows * k * (d + 1)  # noqa: E731
    m, chunk = s.get("task.n_tasks", 0), s["chunk"]
    return {
        PARAMETERS: PARAMETER_COPIES * FLOAT * parameters,
        ACTIVATIONS: FLOAT * ((n + 1) * layer(b) + inputs(b)),
        POOL: FLOAT * 2 * m * d,
        EVALUATION: FLOAT * (layer(chunk) + inputs(chunk) + baselines),
    }


register(Regression())
