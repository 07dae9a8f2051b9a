"""The SGLD estimate of the local learning coefficient (iclab.llc) against its exact value on a
linear model, where the tempered posterior is Gaussian: d / 2 for d used parameters, and parameters
that the loss ignores count 0."""

import math

import pytest
import torch

from iclab.llc import SGLDSettings, estimate_llc

N_DIMS = 6
W_STAR = torch.linspace(-1.0, 1.0, N_DIMS)


class LinearModel(torch.nn.Module):
    def __init__(self, unused: int = 0):
        super().__init__()
        self.w = torch.nn.Parameter(W_STAR.clone())  # at the population loss's minimum
        self.unused = torch.nn.Parameter(torch.zeros(unused))

    def forward(self, xs):
        return xs @ self.w


def loss(model, batch):
    xs, ys = batch
    return (model(xs) - ys).square().mean()


def draw_batch(generator, batch_size):
    xs = torch.randn(batch_size, N_DIMS, generator=generator)
    return xs, xs @ W_STAR + 0.5 * torch.randn(batch_size, generator=generator)


def expected_llc(settings: SGLDSettings) -> float:
    """n_beta E|w - w*|^2 under the discretised chain: per coordinate an AR(1) process with
    curvature kappa = 2 n_beta + gamma, stationary variance 1 / (kappa (1 - step kappa / 4))."""
    kappa = 2 * settings.n_beta + settings.gamma
    variance = 1 / (kappa * (1 - settings.step_size * kappa / 4))
    return settings.n_beta * N_DIMS * variance


def test_the_llc_of_a_linear_model_is_half_its_used_parameters():
    settings = SGLDSettings(
        n_beta=20.0, gamma=0.1, step_size=2.5e-3, n_steps=700, burn_in=100, n_chains=6,
        batch_size=256,
    )  # fmt: skip
    model = LinearModel(unused=5)  # 6 used parameters and 5 that the loss ignores
    llc, error, trace = estimate_llc(model, loss, draw_batch, settings, seed=0)
    expected = expected_llc(settings)
    assert expected == pytest.approx(N_DIMS / 2, rel=0.03)  # the chain's bias is small
    assert abs(llc - expected) < 4 * error + 0.02 * expected, (llc, error, expected)
    assert error < 0.05 * expected
    assert len(trace) == settings.n_steps
    assert torch.equal(model.w.detach(), W_STAR)  # the weights are left as they were


def test_kept_checkpoints_survive_a_resume_and_analyze_llc_reads_them(tmp_path, capsys):
    import json

    from helpers import tiny_overrides

    from iclab.cli import main
    from iclab.config import load_config
    from iclab.training import RunDirectory, train

    overrides = tiny_overrides(steps=40, eval_every=10, checkpoint_every=10, n_tasks='"inf"')
    config = load_config("tiny", [*overrides, "evals_per_doubling=1", "keep_checkpoints=true"])
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "resumed", progress=False, stop_after=20)
    train(config, tmp_path / "resumed", progress=False, resume=True)
    whole, resumed = RunDirectory(tmp_path / "whole"), RunDirectory(tmp_path / "resumed")
    steps = [step for step, _ in whole.kept_checkpoints()]
    assert steps == config.train.evaluation_steps() == [10, 20, 40]
    for (_, a), (_, b) in zip(whole.kept_checkpoints(), resumed.kept_checkpoints(), strict=True):
        (metadata, tensors), (resumed_metadata, resumed_tensors) = _contents(a), _contents(b)
        assert metadata == resumed_metadata  # a resumed run keeps the same states
        assert tensors.keys() == resumed_tensors.keys()
        assert all(torch.equal(tensors[k], resumed_tensors[k]) for k in tensors)
    assert (
        main(["analyze", str(whole.path), "--n-sequences", "64", "--llc", "--llc-steps", "40"]) == 0
    )
    assert "Local learning coefficient" in capsys.readouterr().out
    rows = json.loads((whole.path / "llc.json").read_text())["rows"]
    assert [row["step"] for row in rows] == steps
    assert all(math.isfinite(row["llc"]) and row["llc_se"] >= 0 for row in rows)
    assert (whole.path / "llc.png").stat().st_size > 10_000
    plain = load_config("tiny", overrides)
    train(plain, tmp_path / "plain", progress=False)
    assert main(["analyze", str(tmp_path / "plain"), "--llc"]) == 2
    assert "keep_checkpoints" in capsys.readouterr().err
    # A damaged checkpoint is refused before the LLC part writes anything.
    checkpoint = resumed.file("checkpoint.safetensors")
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    assert main(["analyze", str(resumed.path), "--llc", "--llc-steps", "4"]) == 1
    assert "checkpoint" in capsys.readouterr().err and not resumed.file("llc.json").exists()


def _contents(path):
    """(metadata, tensors) of a safetensors file (its bytes may order the tensors differently)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as file:
        return file.metadata(), {key: file.get_tensor(key) for key in file.keys()}
