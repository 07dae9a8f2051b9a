"""In-context linear classification: is the task-diversity transition universal?

Labels y in {-1, +1} with P(y = 1 | x, w) = sigmoid(beta w.x), x ~ N(0, I_D); pretraining draws w
uniformly from a pool of M tasks (task.n_tasks; None is M = infinity), the true distribution a fresh
w ~ N(0, prior_std^2 I) per sequence. The GPT reads the regression family's interleaved tokens and
outputs a logit per x; it is trained on the binary cross-entropy. Every predictor returns logits.

Baselines (iclab.estimators.classification): PoolBayes (the posterior predictive over the pool,
Bayes for the pretraining distribution; at M = infinity it is GaussianBayes), GaussianBayes (the
prior's posterior predictive, by Monte Carlo), LogisticRegression (L2-regularised, the ridge
analogue) and Prior (logit 0).

Metrics (not divided by D): per predictor the cross-entropy of the labels (nats) and the accuracy
of the sign of the logit; per pair (A, B) Delta_{A,B} = E[(p_A - p_B)^2] (the excess Brier score
when B is Bayes) and the excess cross-entropy E[KL(p_B || p_A)] of A over B.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from iclab.families import MODEL_NAME, Family, Metric, register
from iclab.families.regression import check_linear_task, gpt_memory
from iclab.validation import require

POOL_BAYES = "PoolBayes"
GAUSSIAN_BAYES = "GaussianBayes"
LOGISTIC_REGRESSION = "LogisticRegression"
PRIOR = "Prior"
MAX_BETA = 16.0
PAIRS = (
    (MODEL_NAME, GAUSSIAN_BAYES),
    (MODEL_NAME, POOL_BAYES),
    (POOL_BAYES, GAUSSIAN_BAYES),
    (MODEL_NAME, LOGISTIC_REGRESSION),
)


@dataclass(frozen=True)
class ClassificationTaskConfig:
    """Linear classification with P(y = 1 | x, w) = sigmoid(beta w.x); n_tasks is the task
    diversity M (a pool nested in M for a fixed pool_seed) or None for M = infinity."""

    family: str = "classification"
    n_dims: int = 8
    n_points: int = 16
    n_tasks: int | None = None
    beta: float = 1.0
    prior_std: float = 1.0
    pool_seed: int = 0

    def __post_init__(self):
        check_linear_task(self)
        require(0 < self.beta <= MAX_BETA, "task.beta", self.beta, f"a number in (0, {MAX_BETA:g}]")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log P(label) under the logit, per sequence and position, in nats."""
    return F.softplus(-labels.double() * logits.double())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 where the logit's sign is the label's, 1/2 at logit 0."""
    margin = labels.double() * logits.double()
    return (margin > 0).double() + 0.5 * (margin == 0).double()


def brier_difference(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """(p_A - p_B)^2 of the predicted probabilities."""
    return (torch.sigmoid(logits_a.double()) - torch.sigmoid(logits_b.double())).square()


def excess_cross_entropy(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """KL(p_B || p_A) in nats: what predicting with A costs when labels follow B."""
    a, b = logits_a.double(), logits_b.double()
    p_b = torch.sigmoid(b)
    return p_b * (F.logsigmoid(b) - F.logsigmoid(a)) + (1 - p_b) * (
        F.logsigmoid(-b) - F.logsigmoid(-a)
    )


class Classification(Family):
    name = "classification"
    config_class = ClassificationTaskConfig
    model_families = ("gpt",)
    distributions = ("pretrain", "true")
    distribution_titles = {"pretrain": "pretraining pool", "true": "true prior (new tasks)"}
    status_metrics = (
        ("true", f"{MODEL_NAME},{GAUSSIAN_BAYES}"),
        ("true", f"{MODEL_NAME},{POOL_BAYES}"),
        ("pretrain", f"{MODEL_NAME},{POOL_BAYES}"),
    )
    member_fields = ("n_tasks", "beta", "prior_std", "pool_seed")

    def bayes(self, config) -> dict[str, str]:
        return {"pretrain": POOL_BAYES, "true": GAUSSIAN_BAYES}

    def make_task(self, config, device):
        from iclab.tasks.classification import ClassificationTask

        return ClassificationTask(config, device)

    def baselines(self, task) -> dict:
        from iclab.estimators.classification import (
            GaussianBayesClassifier,
            LogisticRegression,
            PoolBayesClassifier,
            PriorPrediction,
        )

        config = task.config
        prior_bayes = GaussianBayesClassifier(config.beta, config.prior_std)
        pool_bayes = (
            prior_bayes if task.pool is None else PoolBayesClassifier(task.pool, config.beta)
        )
        return {
            GAUSSIAN_BAYES: prior_bayes,
            POOL_BAYES: pool_bayes,
            LOGISTIC_REGRESSION: LogisticRegression(config.beta, config.prior_std),
            PRIOR: PriorPrediction(),
        }

    def metric_pairs(self, baselines: dict) -> tuple[tuple[str, str], ...]:
        return PAIRS

    def metric_scale(self, config) -> float:
        return 1.0

    def predictor_metrics(self, config) -> dict[str, Metric]:
        return {
            "cross_entropy": Metric("CE (nats)", cross_entropy),
            "accuracy": Metric("accuracy", accuracy),
        }

    def pair_metrics(self, config) -> dict[str, Metric]:
        return {
            "delta": Metric("Delta (Brier)", brier_difference),
            "excess_cross_entropy": Metric("excess CE (nats)", excess_cross_entropy),
        }

    def settings(self, config) -> dict:
        return {
            "n_tasks": "inf" if config.n_tasks is None else config.n_tasks,
            "n_dims": config.n_dims,
            "beta": config.beta,
        }

    def memory(self, config, s: dict[str, int], threads: int) -> dict[str, int]:
        """Bytes per part (iclab.training.memory): the regression family's GPT formula, with the
        baselines' bounded blocks (about 8 temporaries of BLOCK_ELEMENTS values) and logistic
        regression's Hessians and their solve, 4 C K D^2 for an evaluation chunk of C."""
        from iclab.estimators.classification import BLOCK_ELEMENTS

        d, k, chunk = s["task.n_dims"], s["task.n_points"], s["chunk"]
        baselines = 4 * chunk * k * d * d + 8 * BLOCK_ELEMENTS
        return gpt_memory(s, baselines)


register(Classification())
