"""The algorithm fit of a regression transformer: the GD estimators against a brute-force
reference, and each fit recovering the algorithm that made constructed predictions."""

import math

import pytest
import torch

from iclab.estimators.regression import GradientDescent, Ridge
from iclab.studies.task_diversity.algorithms import (
    Reference,
    fit_gd,
    fit_preconditioned_gd,
    fit_ridge,
)

N_DIMS, N_POINTS = 4, 12


def sequences(n: int = 512, noise_std: float = 0.5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, N_POINTS, N_DIMS, generator=generator, dtype=torch.float64)
    w = torch.randn(n, N_DIMS, generator=generator, dtype=torch.float64)
    ys = (xs * w[:, None]).sum(-1) + noise_std * torch.randn(
        n, N_POINTS, generator=generator, dtype=torch.float64
    )
    return xs, ys


def brute_force_gd(xs, ys, steps, step_size, ridge=None):
    """Per sequence and position: gradient steps on the prefix's loss by autograd."""
    out = torch.zeros(ys.shape, dtype=torch.float64)
    for b in range(xs.shape[0]):
        for k in range(1, xs.shape[1]):
            x, y = xs[b, :k], ys[b, :k]
            precondition = torch.eye(N_DIMS, dtype=torch.float64)
            if ridge is not None:
                precondition = torch.linalg.inv(
                    x.T @ x / k + ridge * torch.eye(N_DIMS, dtype=torch.float64)
                )
            w = torch.zeros(N_DIMS, dtype=torch.float64)
            for _ in range(steps):
                w = w.detach().requires_grad_()
                loss = 0.5 * ((x @ w - y) ** 2).mean()
                (gradient,) = torch.autograd.grad(loss, w)
                w = w - step_size * precondition @ gradient
            out[b, k] = xs[b, k] @ w.detach()
    return out


@pytest.mark.parametrize("ridge", [None, 0.2])
def test_gradient_descent_matches_autograd_steps(ridge):
    xs, ys = sequences(n=6)
    found = GradientDescent(3, 0.3, ridge)(xs, ys)
    torch.testing.assert_close(found, brute_force_gd(xs, ys, 3, 0.3, ridge))


def test_one_preconditioned_step_is_ridge():
    xs, ys = sequences(n=64)
    # (G/k + lambda I)^-1 b/k = (G + k lambda I)^-1 b: ridge with regulariser k lambda.
    found = GradientDescent(1, 1.0, 0.1)(xs, ys)
    for k in (1, 5, 11):
        expected = Ridge(noise_std=math.sqrt(0.1 * k))(xs, ys)[:, k]
        torch.testing.assert_close(found[:, k], expected)


def test_ridge_predictions_are_fitted_as_ridge_with_their_lambda():
    xs, ys = sequences()
    reference = Reference(xs, ys, Ridge(noise_std=math.sqrt(0.3))(xs, ys), N_DIMS)
    ridge = fit_ridge(reference)
    assert ridge.parameters["ridge"] == pytest.approx(0.3, rel=0.02)
    assert ridge.delta < 1e-8
    assert fit_gd(reference).delta > 100 * max(ridge.delta, 1e-10)


def test_two_gd_steps_are_fitted_as_two_gd_steps():
    xs, ys = sequences()
    reference = Reference(xs, ys, GradientDescent(2, 0.4)(xs, ys), N_DIMS)
    gd = fit_gd(reference)
    assert gd.parameters["steps"] == 2
    assert gd.parameters["step_size"] == pytest.approx(0.4, rel=0.02)
    assert gd.delta < 1e-8 < fit_ridge(reference).delta


def test_preconditioned_gd_predictions_are_fitted_by_that_family():
    """(k, step, lambda) trade off along a valley, so the test asks for the family and a near-exact
    fit rather than the parameters."""
    xs, ys = sequences(n=128)
    reference = Reference(xs, ys, GradientDescent(2, 0.7, 0.5)(xs, ys), N_DIMS)
    fit = fit_preconditioned_gd(reference)
    others = min(fit_gd(reference).delta, fit_ridge(reference).delta)
    assert fit.delta < 1e-3 * others, (fit.parameters, fit.delta, others)


def test_dmmse_predictions_are_fitted_with_their_temperature():
    from iclab.estimators.pool_posterior import DMMSE
    from iclab.studies.task_diversity.algorithms import _fit_1d

    xs, ys = sequences(n=256)
    pool = torch.randn(8, N_DIMS, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = Reference(xs, ys, DMMSE(pool, 0.8)(xs, ys), N_DIMS)
    fit = _fit_1d("dMMSE", "noise_std", reference, lambda v: DMMSE(pool, v), 0.05, 10.0)
    assert fit.parameters["noise_std"] == pytest.approx(0.8, rel=0.02) and fit.delta < 1e-8


def test_iclab_analyze_on_a_regression_run(tmp_path, capsys):
    import json

    import iclab
    from iclab.cli import main

    short = {"task.n_tasks": 4, "train.steps": 8, "train.eval_every": 8, "eval.n_sequences": 64}
    run = iclab.train(iclab.load_config("tiny", short), tmp_path / "run", progress=False)
    assert main(["analyze", str(run.path), "--n-sequences", "64", "--gd-steps", "3"]) == 0
    assert "closest family" in capsys.readouterr().out
    analysis = json.loads((run.path / "analysis.json").read_text())
    assert analysis["gd_steps"] == 3
    result = analysis["algorithm_fit"]
    families = {"Ridge", "GD", "Preconditioned GD", "dMMSE", "Smoothed dMMSE"}
    for distribution in ("true", "pretrain"):
        fits = result[distribution]["fits"]
        assert set(fits) == families
        winner = result[distribution]["winner"]
        assert fits[winner]["delta"] == min(fit["delta"] for fit in fits.values())
        assert len(fits["Ridge"]["best_per_position"]) == run.config.task.n_points
        assert max(m["parameters"]["steps"] for m in fits["GD"]["best_per_position"]) <= 3
    assert (run.path / "algorithm_fit.png").stat().st_size > 10_000
    assert main(["analyze", str(tmp_path)]) == 2
    (run.path / "checkpoint.safetensors").unlink()
    assert main(["analyze", str(run.path)]) == 2
    assert "has no checkpoint" in capsys.readouterr().err


def test_a_probe_recovers_a_planted_feature_and_not_a_shuffled_one():
    from iclab.studies.task_diversity.probes import probe_r2

    generator = torch.Generator().manual_seed(0)
    residual = torch.randn(2000, 32, generator=generator)
    planted = residual @ torch.randn(32, 3, generator=generator)
    target = planted + 0.1 * torch.randn(2000, 3, generator=generator)
    assert probe_r2(residual, target) > 0.99
    shuffled = target[torch.randperm(2000, generator=generator)]
    assert probe_r2(residual, shuffled) < 0.05
    assert probe_r2(residual, torch.zeros(2000, 3)) is None  # R^2 undefined, not noise


def test_iclab_analyze_on_a_sweep_directory(tmp_path, capsys):
    import json

    from iclab.cli import main

    spec = tmp_path / "spec.toml"
    spec.write_text(
        'base = "tiny"\n[set]\nsteps = 8\neval_every = 8\neval_sequences = 32\nn_sequences = 64\n'
        '[grid]\nn_tasks = [4, "inf"]\n'
    )
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert main(["analyze", str(out), "--n-sequences", "64"]) == 0
    assert "closest family" in capsys.readouterr().out
    rows = json.loads((out / "analysis.json").read_text())["runs"]
    assert [row["n_tasks"] for row in rows] == [4, None]
    assert rows[1]["switch_r2"] is None  # at M = inf dMMSE is ridge: the probe is undefined
    assert isinstance(rows[0]["switch_r2"], float)
    assert (out / "analysis_by_M.png").stat().st_size > 10_000
    for run in (out / "runs").iterdir():
        assert (run / "probes.png").exists() and (run / "attention.png").exists()
