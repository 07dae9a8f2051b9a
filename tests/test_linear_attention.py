import json
import time

import pytest
import torch

from iclab.config import ConfigError, config_from_dict
from iclab.estimators.autoregressive import OneStepGD, optimal_eta
from iclab.families.autoregressive import AutoregressiveTaskConfig
from iclab.families.regression import RegressionTaskConfig
from iclab.models import make_model
from iclab.models.configs import LinearAttentionConfig
from iclab.models.linear_attention import LinearAttention
from iclab.seeding import make_generator
from iclab.tasks.autoregressive import AutoregressiveTask
from iclab.training import RunDirectory, train

MODES = [
    ("linear", "augmented"),
    ("linear", "plain"),
    ("softmax", "augmented"),
    ("softmax", "plain"),
    ("pe_only", "plain"),
]


def states_of(family: str, n: int = 3, n_dims: int = 4, n_steps: int = 9) -> torch.Tensor:
    config = AutoregressiveTaskConfig(
        w_family=family, n_dims=n_dims, n_steps=n_steps, noise_std=0.1
    )
    return AutoregressiveTask(config, "cpu").sample(make_generator("cpu", 0), n)[0]


@pytest.mark.parametrize("family", ["unitary", "rotations"])
@pytest.mark.parametrize(("attention", "tokens"), MODES)
def test_model_is_causal_in_every_mode(family, attention, tokens):
    task_config = AutoregressiveTaskConfig(w_family=family, n_dims=4, n_steps=9)
    layers = 1 if attention == "pe_only" else 2
    heads = 1 if attention == "pe_only" else 2
    config = LinearAttentionConfig(
        attention=attention, tokens=tokens, n_layers=layers, n_heads=heads, init_std=0.3
    )
    torch.manual_seed(0)
    model = make_model(config, task_config)
    inputs = states_of(family)[:, :-1]
    changed = inputs.clone()
    changed[:, 5:] = changed[:, 5:] * 2 + 1
    with torch.no_grad():
        before, after = model(inputs), model(changed)
    assert before.shape == inputs.shape and before.dtype == inputs.dtype
    assert torch.equal(before[:, :5], after[:, :5])
    assert (before[:, 5:] - after[:, 5:]).abs().min() > 0


def test_pe_only_matches_its_formula():
    task_config = AutoregressiveTaskConfig(n_dims=2, n_steps=6)
    model = LinearAttention(LinearAttentionConfig(attention="pe_only", init_std=1.0), task_config)
    s = states_of("unitary", n=2, n_dims=2, n_steps=6)[:, :-1]
    p = model.positions.detach()
    expected = torch.zeros_like(s)
    for t in range(1, 6):  # t = 0 has no previous state: s_{-1} = 0
        for u in range(t + 1):
            inner = (s[:, t - 1].conj() * s[:, u]).sum(-1, keepdim=True)
            expected[:, t] += p[t, u] * inner * s[:, u]
    with torch.no_grad():
        torch.testing.assert_close(model(s), expected)


@pytest.mark.parametrize("family", ["unitary", "rotations"])
def test_one_layer_linear_model_expresses_one_step_gd(family):
    d = 4
    task_config = AutoregressiveTaskConfig(w_family=family, n_dims=d, n_steps=9)
    model = LinearAttention(LinearAttentionConfig(), task_config)
    assert model.n_embd == 3 * d  # (0_d, s_t, s_{t-1})
    eye = torch.eye(d)
    with torch.no_grad():
        weight = torch.zeros_like(model.layers[0].qkv.weight)
        weight[0:d, d : 2 * d] = eye  # query s_t
        weight[3 * d : 4 * d, 2 * d : 3 * d] = eye  # key s_{t'-1}
        weight[6 * d : 7 * d, d : 2 * d] = eye  # value s_t'
        model.layers[0].qkv.weight.copy_(weight)
        proj = torch.zeros_like(model.layers[0].proj.weight)
        proj[:d, :d] = 0.3 * eye  # into the prediction slot
        model.layers[0].proj.weight.copy_(proj)
        inputs = states_of(family, n_dims=d)[:, :-1]
        torch.testing.assert_close(model(inputs), OneStepGD(0.3)(inputs))


def test_config_errors():
    with pytest.raises(ConfigError, match="model.n_heads"):
        LinearAttentionConfig(attention="pe_only", n_heads=2)
    with pytest.raises(ConfigError, match="model.attention"):
        LinearAttentionConfig(attention="cosine")
    with pytest.raises(ConfigError, match="model.init_std"):
        LinearAttentionConfig(init_std=0.0)
    with pytest.raises(ConfigError, match="task.family = 'autoregressive'"):
        make_model(LinearAttentionConfig(), RegressionTaskConfig())
    with pytest.raises(ConfigError, match="model.n_embd"):
        make_model(LinearAttentionConfig(n_embd=8), AutoregressiveTaskConfig(n_dims=4))
    model = make_model(LinearAttentionConfig(n_heads=5), AutoregressiveTaskConfig(n_dims=4))
    assert model.n_embd == 15  # 3 d = 12 rounded up to a multiple of the heads


def ar_config(steps: int, **train) -> dict:
    return {
        "task": {"family": "autoregressive", "n_dims": 5, "n_steps": 20},
        "model": {"family": "linear_attention", "init_std": 0.02},
        "train": {"steps": steps, "batch_size": 64, "lr": 1e-2, "schedule": "constant"}
        | {"device": "cpu", "log_every": 50, **train},
    }


def test_one_layer_augmented_model_learns_unitary_sequences():
    config = config_from_dict(ar_config(200))
    started = time.perf_counter()
    result = train(config, run_dir=None, progress=False)
    seconds = time.perf_counter() - started
    # Zero predictor: E|s_{t+1}|^2 / d = 1/5. One-step GD at the optimal eta (closed form): 0.088.
    task = result.task
    (states,) = task.eval_batch("true", 0, 0, 2048)
    zero = task.loss(lambda inputs: torch.zeros_like(inputs), (states,)).item()
    gd = task.loss(OneStepGD(optimal_eta(config.task).overall), (states,)).item()
    with torch.no_grad():
        trained = task.loss(result.model, (states,)).item()
    print(f"zero {zero:.4f} one-step GD {gd:.4f} trained {trained:.4f} ({seconds:.1f} s)")
    assert zero == pytest.approx(0.2, rel=1e-5)
    assert gd == pytest.approx(0.088, abs=0.002)
    assert result.final_loss < 0.5 * zero
    assert trained < 1.05 * gd


@pytest.mark.parametrize("family", ["unitary", "rotations"])
def test_training_with_a_run_dir_evaluates_against_estimators(tmp_path, family):
    data = ar_config(20, eval_every=10, eval_sequences=64)
    data["task"] |= {"w_family": family, "n_dims": 4, "n_steps": 8}
    if family == "rotations":
        data["task"]["rotation_basis"] = "random"
    train(config_from_dict(data), run_dir=tmp_path / "run", progress=False)
    records = RunDirectory(tmp_path / "run").metrics()
    assert [r["step"] for r in records] == [10, 20]
    evaluation = json.loads(json.dumps(records[-1]["eval"]))
    assert evaluation["n_sequences"] == 64
    result = evaluation["distributions"]["true"]
    special = "LastPair" if family == "unitary" else "CosineRecurrence"
    names = {"PT", "Oracle", "LeastSquares", "OneStepGD", special}
    assert set(result["mse"]) == names and set(result["mse_mean"]) == names
    assert all(len(v) == 8 for v in result["mse"].values())
    assert max(result["mse"]["Oracle"]) < 1e-10 and max(result["mse"][special][1:]) < 1e-10
    assert result["mse"]["LeastSquares"][0] == pytest.approx(0.25, rel=1e-4)  # predicts 0 at t = 0
    assert set(result["delta"]) == {f"PT,{name}" for name in names - {"PT", "Oracle"}}
    assert evaluation["one_step_gd_eta"]["overall"] > 0
