"""The task-family registry: every family honours the contract, and generic modules ask the
registry instead of naming a family, an estimator or a metric pair."""

import ast
import re
from pathlib import Path

import pytest
import torch

from iclab.config import config_from_dict
from iclab.evaluation import evaluate_model
from iclab.families import MODEL_NAME, family_named, family_names, make_task
from iclab.training import build_model

SRC = Path(__file__).resolve().parents[1] / "src" / "iclab"
# Modules that serve every family; the families/, tasks/, estimators/, models/ and studies/
# modules are where family-specific names belong.
GENERIC = [
    "config.py",
    "validation.py",
    "evaluation.py",
    "results.py",
    "cli.py",
    "plots.py",
    "experiment.py",
    "api.py",
    "tracking.py",
    "files.py",
    "checkpoints.py",
    "seeding.py",
    "tasks/__init__.py",
    "models/__init__.py",
    *(f"training/{p.name}" for p in sorted((SRC / "training").glob("*.py"))),
    *(f"sweeps/{p.name}" for p in sorted((SRC / "sweeps").glob("*.py"))),
]


def small_config(name: str):
    """A small run config of family `name`, with the first model family that reads it."""
    family = family_named(name)
    task = {"family": name, "n_dims": 2}
    model = {"family": family.model_families[0]}
    return config_from_dict({"task": task, "model": model, "train": {"device": "cpu"}})


def registered_names() -> set[str]:
    """Family names, their baselines' names, metric pairs and distribution names ("true" is left
    out: it is also TOML's spelling of a boolean)."""
    names = set(family_names())
    for name in family_names():
        family = family_named(name)
        baselines = family.baselines(make_task(small_config(name).task))
        names |= set(baselines) | {f"{a},{b}" for a, b in family.metric_pairs(baselines)}
        names |= set(family.distributions) - {"true"}
    return names - {MODEL_NAME}


def code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in the module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_registry_holds_both_families_and_their_names():
    names = registered_names()
    assert {"regression", "autoregressive"} <= set(family_names())
    assert {"Ridge", "dMMSE", "PT,Ridge", "dMMSE,Ridge", "OneStepGD", "pretrain"} <= names


def test_generic_modules_name_no_family_estimator_or_metric_pair():
    names = registered_names()
    patterns = {name: re.compile(rf"(?<![\w,]){re.escape(name)}(?![\w,])") for name in names}
    found = []
    for relative in GENERIC:
        for line, text in code_strings(SRC / relative):
            found += [f"{relative}:{line}: {n!r}" for n, p in patterns.items() if p.search(text)]
    assert not found, "generic modules name family-specific things:\n" + "\n".join(found)


def test_the_scan_finds_a_planted_name(tmp_path):
    """The scan above must be able to fail: a planted pair name is found, a docstring is not."""
    planted = tmp_path / "planted.py"
    planted.write_text('"""Mentions PT,Ridge in a docstring."""\n\nPAIR = f"{1}PT,Ridge"\n')
    assert [line for line, text in code_strings(planted) if "PT,Ridge" in text] == [3]


@pytest.mark.parametrize("name", ["regression", "autoregressive", "classification"])
def test_each_family_evaluates_a_model_on_its_own_distributions_and_pairs(name):
    config = small_config(name)
    family = family_named(name)
    task = make_task(config.task)
    model = build_model(config, torch.device("cpu"))
    evaluation = evaluate_model(model, task, n_sequences=64, seed=0, batch_size=32)
    baselines = family.baselines(task)
    assert tuple(evaluation["distributions"]) == family.distributions
    error, *_ = family.predictor_metrics(config.task)  # the family's error, lower is better
    for distribution, result in evaluation["distributions"].items():
        for metric in family.predictor_metrics(config.task):
            assert set(result[f"{metric}_mean"]) == {MODEL_NAME, *baselines}
        pairs = {f"{a},{b}" for a, b in family.metric_pairs(baselines)}
        for metric in family.pair_metrics(config.task):
            assert set(result[f"{metric}_mean"]) == pairs
        bayes = family.bayes(config.task)[distribution]
        # The Bayes estimator of a distribution has the lowest error of the baselines there.
        errors = result[f"{error}_mean"]
        assert errors[bayes] <= min(errors[b] for b in baselines) + 1e-9
    assert family.settings(config.task)["n_dims"] == 2
