"""Interpolation paths between pool tasks (Eq. 5) and the best smoothed dMMSE of a pool."""

import json
from dataclasses import asdict, replace

import pytest
import torch
from helpers import tiny_overrides

from iclab.cli import main
from iclab.config import load_config
from iclab.evaluation import evaluate
from iclab.experiment import run
from iclab.families import family_of, make_task
from iclab.files import CorruptFile
from iclab.studies.task_diversity import smoothing
from iclab.studies.task_diversity.interpolation import interpolate_run, interpolation_path
from iclab.studies.task_diversity.smoothing import (
    SMOOTHING_FILE,
    best_smoothing,
    read_smoothing,
    sweep_smoothing,
)
from iclab.sweeps.runner import run_sweep
from iclab.sweeps.spec import load_spec


def test_the_path_keeps_the_mean_norm_and_joins_the_two_directions():
    generator = torch.Generator().manual_seed(0)
    w_i, w_j = torch.randn(50, 6, generator=generator), 3 * torch.randn(50, 6, generator=generator)
    mean_norm = (w_i.norm(dim=-1) + w_j.norm(dim=-1)) / 2
    for alpha in (0.0, 0.3, 0.5, 1.0):
        path = interpolation_path(w_i, w_j, alpha)
        torch.testing.assert_close(path.norm(dim=-1), mean_norm)
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(unit(interpolation_path(w_i, w_j, 1.0), dim=-1), unit(w_i, dim=-1))
    torch.testing.assert_close(unit(interpolation_path(w_i, w_j, 0.0), dim=-1), unit(w_j, dim=-1))
    equal = w_j / w_j.norm(dim=-1, keepdim=True) * w_i.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(interpolation_path(w_i, equal, 1.0), w_i)  # equal norms: endpoints


def test_the_best_blur_is_the_grid_minimum_and_beats_dmmse_on_new_tasks():
    config = load_config("tiny", ["n_tasks=32"])
    task = make_task(config.task, "cpu")
    found = best_smoothing(task, seed=0, n_sequences=2048)
    assert found.name == "Smoothed dMMSE"
    assert found.smoothing_std in found.errors_on_true
    assert found.errors_on_true[found.smoothing_std] == min(found.errors_on_true.values())
    family = family_of(config.task)
    predictors = {
        **family.baselines(task),
        "best": family.smoothed_baseline(task, found.smoothing_std),
    }
    reference = evaluate(task, predictors, (("best", "Ridge"),), 2048, seed=0)["distributions"]
    assert found.error["true"] == pytest.approx(reference["true"]["mse_mean"]["best"], rel=1e-9)
    assert found.to_prior_bayes == pytest.approx(
        {d: reference[d]["delta_mean"]["best,Ridge"] for d in reference}, rel=1e-9
    )
    dmmse = reference["true"]["mse_mean"]["dMMSE"]
    assert found.error["true"] < dmmse  # a blur is better on new tasks than the bare pool
    sharpest = found.errors_on_true[min(found.errors_on_true)]
    assert found.error["true"] <= sharpest < dmmse  # the least blur is between the two
    assert found.to_prior_bayes["true"] > 0
    at_infinity = make_task(load_config("tiny").task, "cpu")
    assert best_smoothing(at_infinity, seed=0) is None


def test_interpolation_shows_dmmse_peaking_between_pool_tasks(tmp_path, capsys):
    config = load_config("tiny", tiny_overrides(n_tasks=4, n_points=16))
    run(config, tmp_path / "run", progress=False)
    result, paths = interpolate_run(tmp_path / "run", n_pairs=32, sequences_per_pair=32, n_alphas=5)
    assert [p.name for p in paths] == [
        "interpolation.json",
        "interpolation.md",
        "interpolation.png",
    ]
    dmmse, ridge = result["error_mean"]["dMMSE"], result["error_mean"]["Ridge"]
    se = result["error_mean_se"]["dMMSE"]
    assert dmmse[2] > max(dmmse[0], dmmse[-1]) + 3 * se[2]  # w_1/2 is in no pool
    assert max(ridge) - min(ridge) < 0.3 * (dmmse[2] - dmmse[0])  # Ridge knows no pool: flat
    assert set(result["error_mean"]) == {"PT", "Ridge", "dMMSE", "Smoothed dMMSE"}
    assert main(["interpolate", str(tmp_path / "run"), "--pairs", "4"]) == 0
    assert "alpha" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("tiny", tiny_overrides(steps=2, eval_every=2, checkpoint_every=2), "task.n_tasks = inf"),
        (
            "autoregressive-linear",
            [
                "steps=2",
                "eval_every=2",
                "checkpoint_every=2",
                "eval_sequences=32",
                "n_sequences=64",
            ],
            "'autoregressive' runs have no task pool",
        ),
    ],
)
def test_interpolation_of_a_run_without_a_pool_is_a_clear_user_error(
    tmp_path, capsys, preset, overrides, message
):
    run(load_config(preset, overrides), tmp_path / "run", progress=False)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert main(["interpolate", str(tmp_path / "run"), "--pairs", "2"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # nothing written


def test_sweep_smoothing_is_computed_once_and_a_corrupt_file_is_named(tmp_path, monkeypatch):
    fixed = "\n".join(tiny_overrides(steps=2, eval_every=2, checkpoint_every=2))
    (tmp_path / "s.toml").write_text(
        f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [2, "inf"]\n'
    )
    out = tmp_path / "sweep"
    run_sweep(load_spec(tmp_path / "s.toml"), out, progress=False)
    first = sweep_smoothing(out)
    assert sorted(v is None for v in first.values()) == [False, True]  # M = inf: no pool to blur
    monkeypatch.setattr(smoothing, "best_smoothing", lambda *a: pytest.fail("recomputed"))
    assert sweep_smoothing(out) == first == read_smoothing(out)
    # A cache searched over another grid is searched again.
    stale = {
        k: None if v is None else {**asdict(v), "errors_on_true": {"0.5": 1.0}}
        for k, v in first.items()
    }
    (out / SMOOTHING_FILE).write_text(json.dumps(stale))
    fresh = replace(next(v for v in first.values() if v is not None), name="searched again")
    monkeypatch.setattr(smoothing, "best_smoothing", lambda *a: fresh)
    assert sorted(str(v and v.name) for v in sweep_smoothing(out).values()) == [
        "None",
        "searched again",
    ]
    (out / SMOOTHING_FILE).write_text('{"abc": {"name": 1}}')
    with pytest.raises(CorruptFile, match=SMOOTHING_FILE):
        read_smoothing(out)
