"""Noisy linear regression in context (Raventos et al. 2023): the task-diversity family.

Pretraining draws w uniformly from a pool of M tasks (task.n_tasks; None is M = infinity), the
true distribution a fresh w from the prior per sequence. Baselines: Ridge (Bayes for the prior)
and dMMSE (Bayes for the pool; it is Ridge when M is infinite).
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
from iclab.validation import require

RIDGE = "Ridge"
DMMSE = "dMMSE"
PT_RIDGE = "PT,Ridge"
PT_DMMSE = "PT,dMMSE"
DMMSE_RIDGE = "dMMSE,Ridge"
STORED_ENERGIES = 2**25  # dMMSE's bound on the energies a worker thread keeps (pool_posterior)
PAIRS = (("PT", RIDGE), ("PT", DMMSE), (DMMSE, RIDGE))


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
        require(self.n_dims >= 1, "task.n_dims", self.n_dims, "an integer >= 1")
        require(self.n_points >= 1, "task.n_points", self.n_points, "an integer >= 1")
        require(
            self.n_tasks is None or self.n_tasks >= 1,
            "task.n_tasks",
            self.n_tasks,
            'an integer >= 1, or "inf" for a fresh task per sequence',
        )
        require(self.noise_std >= 0, "task.noise_std", self.noise_std, "a number >= 0")
        require(self.prior_std > 0, "task.prior_std", self.prior_std, "a number > 0")
        require(self.pool_seed >= 0, "task.pool_seed", self.pool_seed, "an integer >= 0")


class Regression(Family):
    name = "regression"
    config_class = RegressionTaskConfig
    default = True
    model_families = ("gpt",)
    distributions = ("pretrain", "true")
    distribution_titles = {"pretrain": "pretraining pool", "true": "true prior (new tasks)"}
    bayes = {"pretrain": DMMSE, "true": RIDGE}
    status_metrics = (("true", PT_RIDGE), ("true", PT_DMMSE), ("pretrain", PT_DMMSE))
    member_fields = ("n_tasks", "noise_std", "prior_std", "pool_seed")

    def make_task(self, config, device):
        from iclab.tasks.regression import RegressionTask

        return RegressionTask(config, device)

    def baselines(self, task) -> dict:
        from iclab.estimators.pool_posterior import DMMSE as PoolPosteriorMean
        from iclab.estimators.regression import Ridge

        config = task.config
        ridge = Ridge(noise_std=config.noise_std, prior_std=config.prior_std)
        pool_mean = ridge if task.pool is None else PoolPosteriorMean(task.pool, config.noise_std)
        return {RIDGE: ridge, DMMSE: pool_mean}

    def metric_pairs(self, baselines: dict) -> tuple[tuple[str, str], ...]:
        return PAIRS

    def settings(self, config) -> dict:
        return {
            "n_tasks": "inf" if config.n_tasks is None else config.n_tasks,
            **super().settings(config),
        }

    def memory(self, config, s: dict[str, int], threads: int) -> dict[str, int]:
        """Bytes per part (iclab.training.memory) of a GPT on regression sequences, in float32:
        parameters P x 5 copies (weights, gradients, Adam's moments, a foreach temporary);
        activations (N + 1) layers of 20 B L E + 2 B H L^2 (L = 2 K tokens) plus 6 B K (D + 1)
        inputs; the pool 2 M D (drawing it holds two copies); an evaluation chunk of C
        sequences: one layer at C, Ridge's 3 C K D^2 and dMMSE's bounded tiles per thread."""
        d, k, b = s["task.n_dims"], s["task.n_points"], s["train.batch_size"]
        e, h, n = s["model.n_embd"], s["model.n_heads"], s["model.n_layers"]
        length = 2 * k
        parameters = (d + 1) * e + length * e + n * (12 * e * e + 13 * e) + 3 * e + 1
        layer = lambda rows: 20 * rows * length * e + 2 * rows * h * length**2  # noqa: E731
        inputs = lambda rows: 6 * rows * k * (d + 1)  # noqa: E731
        m = s.get("task.n_tasks", 0)
        chunk = s["chunk"]
        evaluation = layer(chunk) + inputs(chunk) + 3 * chunk * k * d * d
        if m:
            evaluation += threads * 2 * min(STORED_ENERGIES, 32 * m)
        return {
            PARAMETERS: PARAMETER_COPIES * FLOAT * parameters,
            ACTIVATIONS: FLOAT * ((n + 1) * layer(b) + inputs(b)),
            POOL: FLOAT * 2 * m * d,
            EVALUATION: FLOAT * evaluation,
        }


register(Regression())
