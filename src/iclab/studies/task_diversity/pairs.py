"""The three Deltas of the task-diversity study, named by the task family's Bayes estimators.

The study compares the PT with the Bayes estimator of the true prior (regression: Ridge) and with
the Bayes estimator of its own pretraining pool (regression: dMMSE), and the two with each other as
the reference; any family whose `bayes` names both ("true" and "pretrain") can be studied.
"""

from dataclasses import dataclass

from iclab.families import MODEL_NAME, family_of


@dataclass(frozen=True)
class StudyPairs:
    prior_bayes: str  # the Bayes estimator of the true prior (regression: Ridge)
    pool_bayes: str  # the Bayes estimator of the pretraining pool (regression: dMMSE)
    smoothed_bayes: str | None = None  # the pool's, blurred (regression: Smoothed dMMSE)

    @property
    def to_prior(self) -> str:
        return f"{MODEL_NAME},{self.prior_bayes}"

    @property
    def to_pool(self) -> str:
        return f"{MODEL_NAME},{self.pool_bayes}"

    @property
    def reference(self) -> str:
        return f"{self.pool_bayes},{self.prior_bayes}"

    @property
    def smoothed_reference(self) -> str | None:
        """The best blurred pool Bayes estimator against the prior's (studies.task_diversity.
        smoothing), where the family has one."""
        return None if self.smoothed_bayes is None else f"{self.smoothed_bayes},{self.prior_bayes}"

    @property
    def columns(self) -> tuple[str, str, str]:
        """The columns of the study's tables, in this order."""
        return (self.to_prior, self.to_pool, self.reference)


def study_pairs(task_config) -> StudyPairs:
    family = family_of(task_config)
    bayes = family.bayes(task_config)
    return StudyPairs(bayes["true"], bayes["pretrain"], family.smoothed_bayes)
