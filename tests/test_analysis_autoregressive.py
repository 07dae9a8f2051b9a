"""Mechanistic analysis (iclab.studies.autoregressive), the diagonal model through the training
path, the `iclab analyze` command and the autoregressive reproduction on a miniature setting."""

import json
import re

import pytest
import torch

from iclab.cli import build_parser, main
from iclab.config import ConfigError, config_from_dict
from iclab.estimators.autoregressive import OneStepGD, one_step_gd, optimal_eta
from iclab.families.autoregressive import AutoregressiveTaskConfig
from iclab.families.regression import RegressionTaskConfig
from iclab.models import make_model
from iclab.models.configs import DiagonalAttentionConfig, LinearAttentionConfig
from iclab.models.linear_attention import LinearAttention
from iclab.studies.autoregressive.analysis import analyze_model
from iclab.studies.autoregressive.gd_fit import gd_fit, symmetry_matrix
from iclab.studies.autoregressive.reproduction import MINI, reproduce_autoregressive
from iclab.studies.autoregressive.weights import task_start, weight_structure
from iclab.tasks.autoregressive import AutoregressiveTask
from iclab.theory.diagonal_attention import closed_form_loss
from iclab.training import train


@pytest.fixture(autouse=True)
def _one_thread():
    # After conftest's 2-thread fixture: tiny tensors run faster on one thread of a shared machine.
    torch.set_num_threads(1)


def gd_model(
    task_config: AutoregressiveTaskConfig,
    eta: float,
    D: torch.Tensor | None = None,
    reverse: bool = False,
):
    """A one-layer augmented linear model computing eta D W_hat D^* s_t exactly: query s_t, key
    D s_{t'-1}, value s_t', output map eta D into the prediction slot; with reverse the key reads
    D s_t' and the value s_{t'-1} (eta D W_hat^T D^* s_t)."""
    d = task_config.n_dims
    model = LinearAttention(LinearAttentionConfig(), task_config)
    layer = model.layers[0]
    eye = torch.eye(d, dtype=layer.qkv.weight.dtype)
    D = eye if D is None else D.to(eye.dtype)
    with torch.no_grad():
        qkv = torch.zeros_like(layer.qkv.weight)
        qkv[0:d, d : 2 * d] = eye
        current, previous = slice(d, 2 * d), slice(2 * d, 3 * d)
        qkv[3 * d : 4 * d, current if reverse else previous] = D
        qkv[6 * d : 7 * d, previous if reverse else current] = eye
        layer.qkv.weight.copy_(qkv)
        proj = torch.zeros_like(layer.proj.weight)
        proj[:d, :d] = eta * D
        layer.proj.weight.copy_(proj)
    return model


ANGLES = {"unitary": [0.3, 1.1, 2.0, -0.7], "rotations": [0.4, 2.5]}


@pytest.mark.parametrize("family", ["unitary", "rotations"])
def test_exact_gd_model_gives_its_eta_and_zero_gaps(family):
    config = AutoregressiveTaskConfig(w_family=family, n_dims=4, n_steps=10)
    task = AutoregressiveTask(config)
    model = gd_model(config, 0.37)
    states, _ = task.eval_sample("true", 0, 0, 8)
    torch.testing.assert_close(model(states[:, :-1]), OneStepGD(0.37)(states[:, :-1]))
    result = analyze_model(model, task, n_sequences=512)
    fit, weights = result["gd_fit"], result["weights"]
    eta_star = optimal_eta(config).overall
    assert fit["eta_fit"] == pytest.approx(0.37, rel=1e-5)
    assert fit["eta_ratio"] == pytest.approx(0.37 / eta_star, rel=1e-5)
    assert fit["gap_at_eta_fit"] < 1e-5 and fit["gap_sym_fit"] < 1e-5
    assert fit["gap_plain"] == pytest.approx(abs(0.37 - eta_star) / eta_star, rel=1e-4)
    assert fit["D_distance_from_identity"] < 1e-4  # the symmetry fit finds D = I (up to phase)
    assert weights["gd_block_fraction"] == pytest.approx(1.0)
    assert weights["eta_weights"] == pytest.approx(0.37, rel=1e-6) and weights["weight_gap"] < 1e-6


@pytest.mark.parametrize(
    ("family", "basis", "reverse"),
    [
        ("unitary", "canonical", False),
        ("rotations", "canonical", False),
        ("rotations", "random", True),
    ],
)
def test_conjugated_gd_model_differs_plainly_but_not_up_to_the_symmetry(family, basis, reverse):
    config = AutoregressiveTaskConfig(w_family=family, n_dims=4, n_steps=10, rotation_basis=basis)
    task = AutoregressiveTask(config)
    D = symmetry_matrix(task, torch.tensor(ANGLES[family], dtype=torch.float64), reverse)
    model = gd_model(config, 0.37, D, reverse)
    result = analyze_model(model, task, n_sequences=512)
    fit, weights = result["gd_fit"], result["weights"]
    assert fit["gap_at_eta_fit"] > 0.3  # plain GD cannot describe it at any eta ...
    assert fit["gap_sym_fit"] < 1e-5  # ... conjugated GD does, with the same eta
    assert fit["eta_sym"] == pytest.approx(0.37, rel=1e-5)
    assert fit["symmetry_reversed"] == reverse and fit["D_distance_from_identity"] > 0.3
    # float32 weights and fitted angles: agreement to ~1e-5
    assert weights["gd_block_fraction"] == pytest.approx(1.0) and weights["weight_gap"] < 1e-4
    assert weights["frame"]["offdiag_rms_F"] < 1e-4 and weights["frame"]["offdiag_rms_G"] < 1e-4
    # The symmetry: same expected loss (up to sampling noise), predictions far apart.
    states, _ = task.eval_sample("true", 1, 0, 8192)
    inputs, target = states[:, :-1], states[:, 1:]
    loss = lambda p: float((p - target).abs().square().mean())  # noqa: E731
    plain, conjugated = one_step_gd(inputs, 0.37), one_step_gd(inputs, 0.37, D, reverse)
    assert loss(conjugated) == pytest.approx(loss(plain), rel=0.01)
    assert (conjugated - plain).norm() / plain.norm() > 0.3


def test_orthogonal_family_has_no_symmetry_and_heads_are_compared():
    config = AutoregressiveTaskConfig(w_family="orthogonal", n_dims=3, n_steps=6)
    task = AutoregressiveTask(config)
    fit = gd_fit(gd_model(config, 0.5), task, n_sequences=256)
    assert fit["symmetry_angles"] is None and fit["gap_sym"] == pytest.approx(fit["gap_plain"])
    torch.manual_seed(0)
    two_heads = LinearAttention(LinearAttentionConfig(n_heads=2, init_std=0.3), config)
    assert 0 < weight_structure(two_heads, None)["max_abs_cos"] < 1


def test_diagonal_model_trains_through_the_config_path():
    data = {
        "task": {"family": "autoregressive", "n_dims": 3, "n_steps": 6},
        "model": {"family": "diagonal_attention", "n_heads": 3, "init_std": 0.05},
        "train": {"steps": 150, "batch_size": 64, "lr": 0.05, "schedule": "cosine"}
        | {"warmup_fraction": 0.05, "device": "cpu", "log_every": 50},
    }
    result = train(config_from_dict(data), progress=False)
    model, task = result.model, result.task
    (states,) = task.eval_batch("true", 0, 0, 1024)
    zero = 1 / 3  # E|s_{t+1, j}|^2 with the start (1, 1, 1) / sqrt(3)
    with torch.no_grad():
        outputs = model(states[:, :-1])
    assert outputs.shape == states[:, 1:].shape and not outputs[:, 0].any()
    sampled = float((outputs[:, 1:] - states[:, 2:]).abs().square().mean())
    A, B, P = (x.detach().double() for x in (model.A, model.B, model.P))
    exact = float(closed_form_loss(A, B, P, "unitary", start=task_start(task.config)))
    print(f"sampled {sampled:.2e} exact {exact:.2e} zero {zero:.3f}")
    assert sampled < 0.01 * zero and exact < 0.01 * zero
    # The training loss also averages position 0, where the model outputs 0: + zero / T.
    assert result.final_loss == pytest.approx(zero / 6 + 5 / 6 * sampled, abs=0.01 * zero)


def test_diagonal_config_errors():
    with pytest.raises(ConfigError, match="model.n_heads"):
        DiagonalAttentionConfig(n_heads=0)
    with pytest.raises(ConfigError, match="model.init_std"):
        DiagonalAttentionConfig(init_std=0.0)
    with pytest.raises(ConfigError, match="task.family = 'autoregressive'"):
        make_model(DiagonalAttentionConfig(), RegressionTaskConfig())
    with pytest.raises(ConfigError, match="task.n_steps"):
        make_model(DiagonalAttentionConfig(), AutoregressiveTaskConfig(n_steps=1))


AR_CONFIG = """
[task]
family = "autoregressive"
n_dims = 3
n_steps = 6

[model]
family = "linear_attention"
n_heads = 2

[train]
steps = 30
batch_size = 32
lr = 0.01
eval_every = 30
eval_sequences = 64
device = "cpu"

[eval]
n_sequences = 128
"""


def test_analyze_command_end_to_end(tmp_path, capsys):
    config = tmp_path / "ar.toml"
    config.write_text(AR_CONFIG)
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run_dir), "--no-progress"]) == 0
    assert main(["analyze", str(run_dir), "--n-sequences", "256"]) == 0
    analysis = json.loads((run_dir / "analysis.json").read_text())
    fit = analysis["gd_fit"]
    eta_star = optimal_eta(AutoregressiveTaskConfig(n_dims=3, n_steps=6)).overall
    assert fit["n_sequences"] == 256 and fit["eta_optimal"] == pytest.approx(eta_star)
    assert set(analysis["weights"]) >= {"gd_block_fraction", "weight_gap", "max_abs_cos"}
    for name in analysis["figures"]:
        assert (run_dir / name).stat().st_size > 5_000, name
    assert "eta_fit" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert main(["analyze", str(run_dir), "--gd-steps", "4"]) == 2  # a regression-only option
    assert "--gd-steps is an option of the regression analysis" in capsys.readouterr().err


@pytest.mark.parametrize("earlier", ["notes", "sweep"])
def test_reproduce_refuses_a_directory_of_other_files(tmp_path, earlier):
    (tmp_path / "report.md").write_text("my notes")
    if earlier == "sweep":  # a task-diversity sweep has runs/ and a report too
        (tmp_path / "runs").mkdir()
        (tmp_path / "sweep.json").write_text('{"runs": {}}')
    names = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="holds files"):
        reproduce_autoregressive(tmp_path, progress=False, settings=MINI)
    assert (tmp_path / "report.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_reproduce_pipeline_on_a_miniature_setting(tmp_path):
    args = build_parser().parse_args(["reproduce", "autoregressive", "--out", str(tmp_path)])
    assert args.study == "autoregressive" and args.out == tmp_path
    report = reproduce_autoregressive(tmp_path, progress=False, settings=MINI)
    text = report.path.read_text()
    for heading in ("## (a)", "## (b)", "## (c)", "## (d)", "## Checks"):
        assert heading in text
    figures = set(re.findall(r"\]\(([^)]+\.png)\)", text))
    assert len(figures) >= 7
    for figure in figures | {
        f"runs/{run.name}/training.png" for run in (tmp_path / "runs").iterdir()
    }:
        assert (tmp_path / figure).stat().st_size > 5_000, figure
    numbers = json.loads((tmp_path / "report.json").read_text())
    assert len(numbers["pe_only"]) == 2 and len(numbers["pe_only"][0]["last_row"]) == 5
    checks = {c.name: c.holds for c in report.checks}
    # Exact identities hold at any size; trained-model claims need FULL (10-step runs here).
    assert checks["(b) unitary: closed form = exact grid average within 1e-6 relative"]
    assert checks["(b) rotations: closed form = exact grid average within 1e-6 relative"]
