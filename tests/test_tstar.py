"""The early-stopping time t*: log-spaced evaluations, standard errors of the metrics, the
minimum and its interior test on synthetic metrics, the power-law fit, and `iclab tstar` on a
miniature sweep."""

import math
import random

import pytest
import torch
from helpers import tiny_overrides

from iclab.cli import main
from iclab.config import ConfigError, load_config
from iclab.evaluation import _error_table
from iclab.families import Metric
from iclab.studies.task_diversity.tstar import early_stopping, fit_power_law
from iclab.sweeps.runner import run_sweep
from iclab.sweeps.spec import load_spec


def test_log_spaced_evaluations_double_every_n_steps():
    train = load_config("tiny", ["steps=1000", "eval_every=10", "evals_per_doubling=2"]).train
    steps = train.evaluation_steps()
    assert steps[0] == 10 and steps[-1] == 1000
    assert steps[:5] == [10, 14, 20, 28, 40]  # 10 * 2^(j/2), rounded
    ratios = [b / a for a, b in zip(steps[:-2], steps[1:-1], strict=True)]
    assert all(1.3 < r < 1.5 for r in ratios)
    linear = load_config("tiny", ["steps=1000", "eval_every=300"]).train
    assert linear.evaluation_steps() == [300, 600, 900, 1000]


def test_log_spaced_evaluations_are_validated_and_keep_run_names():
    assert (
        load_config("tiny").run_hash() == load_config("tiny", ["evals_per_doubling=0"]).run_hash()
    )
    with pytest.raises(ConfigError, match="train.evals_per_doubling = -1"):
        load_config("tiny", ["evals_per_doubling=-1"])


def test_standard_errors_of_the_position_means_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    targets = [torch.randn(50, 6, generator=generator) for _ in range(3)]
    batches = [((t,), t) for t in targets]
    predictors = {"A": lambda t: 0.5 * t, "B": lambda t: t.square()}
    metric = Metric("sq", lambda a, b: (a.double() - b.double()).square())
    table = _error_table(
        batches, predictors, (("A", "B"),), ({"e": metric}, {"d": metric}), 150, 2.0
    )
    everything = torch.cat(targets)
    per_sequence = {
        "e": (0.5 * everything - everything).double().square().mean(-1) / 2.0,
        "d": (0.5 * everything - everything.square()).double().square().mean(-1) / 2.0,
    }
    for name, key in (("e", "A"), ("d", "A,B")):
        values = per_sequence[name]
        assert table[f"{name}_mean"][key] == pytest.approx(float(values.mean()), rel=1e-9)
        expected = float(values.std() / math.sqrt(len(values)))
        assert table[f"{name}_mean_se"][key] == pytest.approx(expected, rel=1e-6)


def _records(deltas, standard_error):
    return [
        {
            "step": step,
            "eval": {
                "distributions": {
                    "true": {
                        "delta_mean": {"PT,Ridge": delta},
                        "delta_mean_se": {"PT,Ridge": standard_error},
                    }
                }
            },
        }
        for step, delta in deltas
    ]


def test_the_minimum_is_interior_only_when_the_final_value_is_clearly_above_it():
    curve = [(10, 0.5), (20, 0.2), (40, 0.1), (80, 0.14), (160, 0.2)]
    found = early_stopping(_records(curve, 0.01), "PT,Ridge", "true", 16)
    assert (found.step, found.value, found.final_step, found.final_value) == (40, 0.1, 160, 0.2)
    assert found.interior  # rise 0.1 against 2 * sqrt(2) * 0.01
    noisy = early_stopping(_records(curve, 0.05), "PT,Ridge", "true", 16)
    assert not noisy.interior  # rise 0.1 against 2 * sqrt(2) * 0.05 = 0.141
    falling = [(10, 0.5), (20, 0.2), (40, 0.1)]
    at_end = early_stopping(_records(falling, 0.001), "PT,Ridge", "true", None)
    assert at_end.step == 40 and not at_end.interior


def test_the_power_law_fit_recovers_a_known_exponent_with_an_honest_interval():
    random.seed(0)
    ms = [2**k for k in range(1, 9)]
    covered = 0
    for _ in range(200):
        steps = [300 * m**0.47 * math.exp(random.gauss(0, 0.2)) for m in ms]
        fit = fit_power_law(ms, steps)
        assert abs(fit.exponent - 0.47) < 0.2
        covered += fit.low <= 0.47 <= fit.high
    assert 0.9 <= covered / 200 <= 0.99  # a 95% interval
    exact = fit_power_law([2, 8], [100, 200])
    assert exact.exponent == pytest.approx(0.5) and math.isnan(exact.low)
    assert fit_power_law([4, 4], [10, 20]) is None


def test_iclab_tstar_writes_the_table_and_figure_of_a_sweep(tmp_path, capsys):
    fixed = "\n".join(tiny_overrides(steps=32, eval_every=4, evals_per_doubling=2))
    (tmp_path / "s.toml").write_text(
        f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [1, 4, "inf"]\n'
    )
    out = tmp_path / "sweep"
    run_sweep(load_spec(tmp_path / "s.toml"), out, progress=False)
    assert main(["tstar", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "tstar.md").read_text()
    for text in (printed, table):
        assert "Evaluated on the true prior" in text and "Evaluated on the pretraining pool" in text
    assert (out / "tstar.png").stat().st_size > 10_000
    steps = {
        line.split()[1] for line in table.splitlines() if line.strip().startswith(("1 ", "4 "))
    }
    assert steps <= {"4", "6", "8", "11", "16", "23", "32"}  # evaluation steps of the schedule
    assert main(["tstar", str(tmp_path / "nothing")]) == 2  # not a sweep: a user error
