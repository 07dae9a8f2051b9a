"""iclab: in-context learning of transformers on synthetic tasks.

The public API (iclab.api): load_config, train, open_run, Run, sweep, results_table; the
baselines and tasks by name (Ridge, LeastSquares, DMMSE, SmoothedDMMSE, LaplaceBayes,
GradientDescent, OneStepGD; make_task, RegressionTask, ClassificationTask, AutoregressiveTask).
Names are imported on first use, so that `import iclab` stays cheap for the command line.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "iclab.api",
    "train": "iclab.api",
    "open_run": "iclab.api",
    "Run": "iclab.api",
    "sweep": "iclab.api",
    "results_table": "iclab.api",
    "Ridge": "iclab.estimators.regression",
    "LeastSquares": "iclab.estimators.regression",
    "DMMSE": "iclab.estimators.pool_posterior",
    "SmoothedDMMSE": "iclab.estimators.pool_posterior",
    "LaplaceBayes": "iclab.estimators.laplace_posterior",
    "GradientDescent": "iclab.estimators.regression",
    "OneStepGD": "iclab.estimators.autoregressive",
    "make_task": "iclab.families",
    "RegressionTask": "iclab.tasks.regression",
    "ClassificationTask": "iclab.tasks.classification",
    "AutoregressiveTask": "iclab.tasks.autoregressive",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iclab' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
