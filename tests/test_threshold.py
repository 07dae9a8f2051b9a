"""Threshold search: bisection on synthetic criteria, and on a real sweep's completed runs."""

import pytest
from helpers import tiny_overrides

from iclab.config import ConfigError
from iclab.studies.task_diversity.threshold import (
    bisect,
    find_threshold,
    read_threshold,
    threshold_settings,
    write_threshold,
)
from iclab.sweeps.runner import run_sweep
from iclab.sweeps.spec import load_spec


@pytest.mark.parametrize("true_threshold", [0, 1, 5, 11, 19, 20])
def test_bisection_finds_the_bracket_with_few_evaluations(true_threshold):
    seen = []

    def holds(exponent):
        seen.append(exponent)
        return exponent >= true_threshold

    low, high = bisect(holds, 0, 20)
    if true_threshold == 0:
        assert (low, high) == (None, 0)
    else:
        assert (low, high) == (true_threshold - 1, true_threshold)
    assert len(seen) == len(set(seen)) <= 2 + 5  # both ends, then ceil(log2 20) = 5 halvings


def test_bisection_reports_a_criterion_that_never_holds():
    assert bisect(lambda e: False, 3, 9) == (9, None)
    with pytest.raises(ValueError, match="empty range"):
        bisect(lambda e: True, 5, 4)


def _spec(tmp_path, criterion_lines: str):
    fixed = "\n".join(tiny_overrides(steps=30))
    text = f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = ["2^0..2^2"]\nbatch_size = [8, 16]\n'
    (tmp_path / "s.toml").write_text(text + f"[threshold]\n{criterion_lines}\n")
    return load_spec(tmp_path / "s.toml")


def test_threshold_on_completed_runs_trains_nothing_more(tmp_path):
    spec = _spec(tmp_path, 'criterion = "batch_doubling"')
    out = tmp_path / "sweep"
    run_sweep(spec, out, progress=False)
    trained_before = sorted(p.name for p in (out / "runs").iterdir())
    result = find_threshold(spec, out, progress=False)
    assert sorted(p.name for p in (out / "runs").iterdir()) == trained_before
    assert sorted(result.evaluations) == [0, 1, 2]
    # The bracket is consistent with the evidence: fails at or below low, holds at high.
    assert all(
        not e.holds
        for x, e in result.evaluations.items()
        if result.low is not None and x <= result.low
    )
    if result.high is not None:
        assert result.evaluations[result.high].holds
    assert all(len(e.runs) == 2 for e in result.evaluations.values())
    again = read_threshold(write_threshold(out, result).parent)
    assert (again.low, again.high, again.criterion) == (result.low, result.high, result.criterion)


def test_bad_threshold_settings_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="expected \\[B, 2B\\]"):
        find_threshold(_spec(tmp_path, "batch_sizes = [8, 24]"), tmp_path / "o")
    with pytest.raises(ConfigError, match="threshold.criterion = 'vibes'"):
        find_threshold(_spec(tmp_path, 'criterion = "vibes"'), tmp_path / "o")
    # Wrong types raised TypeError before.
    with pytest.raises(ConfigError, match="threshold.fraction = 'x'"):
        find_threshold(_spec(tmp_path, 'criterion = "fraction"\nfraction = "x"'), tmp_path / "o")
    for criterion in ("batch_doubling", "fraction"):
        with pytest.raises(ConfigError, match="threshold.batch_sizes = 5"):
            find_threshold(
                _spec(tmp_path, f'criterion = "{criterion}"\nbatch_sizes = 5'), tmp_path / "o"
            )


def test_the_log2_range_comes_from_the_grid_unless_threshold_sets_it(tmp_path):
    # The grid holds M = 2^0 .. 2^2.
    assert [threshold_settings(_spec(tmp_path, ""))[k] for k in ("log2_min", "log2_max")] == [0, 2]
    settings = threshold_settings(_spec(tmp_path, "log2_min = 1\nlog2_max = 5"))
    assert (settings["log2_min"], settings["log2_max"]) == (1, 5)
    for bad in ("log2_min = 3\nlog2_max = 2", "log2_min = -1", "log2_max = 2.5", 'log2_min = "a"'):
        with pytest.raises(ConfigError, match="threshold.log2_min"):
            threshold_settings(_spec(tmp_path, bad))
