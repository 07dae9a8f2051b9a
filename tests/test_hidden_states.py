"""forward(..., return_hidden=True): residual streams and attention weights of GPT and
LinearAttention, causal and consistent with the predictions of the normal path."""

import pytest
import torch

from iclab.config import load_config
from iclab.families.autoregressive import AutoregressiveTaskConfig
from iclab.models import make_model
from iclab.models.configs import LinearAttentionConfig
from iclab.seeding import make_generator
from iclab.tasks.autoregressive import AutoregressiveTask
from iclab.tasks.regression import RegressionTask

# ---- GPT


def gpt_and_batch(n_layers: int = 2, batch: int = 3):
    """The tiny preset's GPT (D = 4, K = 16, width 64, 2 heads) and a batch of its task."""
    config = load_config("tiny", [f"n_layers={n_layers}", 'device="cpu"'])
    torch.manual_seed(0)
    model = make_model(config.model, config.task).eval()
    xs, ys = RegressionTask(config.task, "cpu").sample(make_generator("cpu", 0), batch, "true")[:2]
    return model, xs, ys


def test_gpt_hidden_shapes_and_predictions():
    model, xs, ys = gpt_and_batch(n_layers=3)
    with torch.no_grad():
        plain = model(xs, ys)
        predictions, hidden = model(xs, ys, return_hidden=True)
    batch, n_points = ys.shape
    width, heads = model.config.n_embd, model.config.n_heads
    assert hidden.residual.shape == (4, batch, 2 * n_points, width)
    assert hidden.attention.shape == (3, batch, heads, 2 * n_points, 2 * n_points)
    # SDPA and the explicit softmax(q k^T / sqrt(d)) v round differently in float32: the
    # predictions (of order 1e-1 here) agree to ~1e-7, so 1e-5 is loose yet catches any real bug.
    torch.testing.assert_close(predictions, plain, rtol=0, atol=1e-5)
    # The stream starts as the embedding plus positions ...
    tokens = model.interleave(xs, ys)
    torch.testing.assert_close(
        hidden.residual[0], model.embed(tokens) + model.positions.weight[: 2 * n_points]
    )
    # ... and its end, read at the x positions by the final LayerNorm and head, is the prediction.
    readout = model.head(model.ln_final(hidden.residual[-1][:, ::2])).squeeze(-1)
    torch.testing.assert_close(readout, predictions)
    assert model.predict(xs, ys, return_hidden=True)[1].attention.shape == hidden.attention.shape


def test_gpt_hidden_is_causal():
    model, xs, ys = gpt_and_batch()
    later_xs, later_ys = xs.clone(), ys.clone()
    later_xs[:, 5:] += 1.0  # x_6, ... : token positions 10, 11, ...
    later_ys[:, 5:] -= 1.0
    with torch.no_grad():
        _, hidden = model(xs, ys, return_hidden=True)
        _, changed = model(later_xs, later_ys, return_hidden=True)
    attention = hidden.attention
    above = torch.ones(attention.shape[-2:], dtype=torch.bool).triu(1)
    assert torch.all(attention[..., above] == 0)
    assert torch.all(attention[..., ~above] > 0)  # softmax: every visible token has some weight
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    assert torch.equal(hidden.residual[:, :, :10], changed.residual[:, :, :10])
    assert torch.equal(hidden.attention[..., :10, :10], changed.attention[..., :10, :10])
    assert (hidden.residual[:, :, 10:] - changed.residual[:, :, 10:]).abs().amax(-1).min() > 0


def test_gpt_hidden_keeps_gradients():
    model, xs, ys = gpt_and_batch()
    predictions, hidden = model(xs, ys, return_hidden=True)
    hidden.attention[-1, :, :, -1].sum().backward()
    assert model.blocks[0].attention.qkv.weight.grad.abs().sum() > 0


def test_gpt_hidden_rejects_a_member_axis():
    models = [gpt_and_batch()[0] for _ in range(2)]
    _, xs, ys = gpt_and_batch()
    stacked = {
        name: torch.stack([dict(m.named_parameters())[name] for m in models])
        for name, _ in models[0].named_parameters()
    }
    members = (xs.expand(2, *xs.shape), ys.expand(2, *ys.shape))
    with torch.no_grad():
        assert torch.func.functional_call(models[0], stacked, members).shape == (2, *ys.shape)
        with pytest.raises(ValueError, match="member axis"):
            torch.func.functional_call(models[0], stacked, members, {"return_hidden": True})


# ---- LinearAttention

N_DIMS, N_STEPS = 4, 9


def states_of(family: str, n: int = 3) -> torch.Tensor:
    """States s_0..s_{T-1} (n, T, d); complex64 for the unitary family."""
    config = AutoregressiveTaskConfig(
        w_family=family, n_dims=N_DIMS, n_steps=N_STEPS, noise_std=0.1
    )
    return AutoregressiveTask(config, "cpu").sample(make_generator("cpu", 0), n)[0][:, :-1]


def linear_attention(family: str, attention: str, tokens: str, n_layers: int = 2):
    task = AutoregressiveTaskConfig(w_family=family, n_dims=N_DIMS, n_steps=N_STEPS)
    heads = 1 if attention == "pe_only" else 2
    config = LinearAttentionConfig(
        attention=attention, tokens=tokens, n_layers=n_layers, n_heads=heads, init_std=0.3
    )
    torch.manual_seed(0)
    return make_model(config, task)


FAMILIES = ["unitary", "rotations"]  # complex and real states
MODES = [
    ("linear", "augmented"),
    ("linear", "plain"),
    ("softmax", "augmented"),
    ("softmax", "plain"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("attention", "tokens"), MODES)
def test_linear_attention_hidden(family, attention, tokens):
    model = linear_attention(family, attention, tokens)
    states = states_of(family)
    with torch.no_grad():
        plain = model(states)
        predictions, hidden = model(states, return_hidden=True)
    batch, length, d = states.shape
    assert hidden.residual.shape == (3, batch, length, model.n_embd)
    assert hidden.attention.shape == (2, batch, 2, length, length)
    assert torch.equal(predictions, plain)  # the same operations in the same order
    assert torch.equal(hidden.residual[-1][..., :d], predictions)
    start = hidden.residual[0]  # (0_d, s_t, ...) plus, for plain tokens, positions
    if tokens == "plain":
        start = start - model.positions[:length]
    torch.testing.assert_close(start[..., d : 2 * d], states)
    if attention == "softmax":
        assert not hidden.attention.is_complex()
        torch.testing.assert_close(hidden.attention.sum(-1), torch.ones(2, batch, 2, length))
    # The weights are the ones each layer used: its update is proj(concat_h weights_h @ v_h).
    for layer, before, after, weights in zip(
        model.layers, hidden.residual[:-1], hidden.residual[1:], hidden.attention, strict=True
    ):
        v = layer.qkv(before).split(model.n_embd, -1)[2].view(batch, length, 2, -1).transpose(1, 2)
        mixed = (weights.to(v.dtype) @ v).transpose(1, 2).reshape(batch, length, -1)
        torch.testing.assert_close(after - before, layer.proj(mixed))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("attention", "tokens"), MODES)
def test_linear_attention_hidden_is_causal(family, attention, tokens):
    model = linear_attention(family, attention, tokens)
    states = states_of(family)
    changed = states.clone()
    changed[:, 5:] = changed[:, 5:] * 2 + 1
    with torch.no_grad():
        _, hidden = model(states, return_hidden=True)
        _, later = model(changed, return_hidden=True)
    above = torch.ones(N_STEPS, N_STEPS, dtype=torch.bool).triu(1)
    assert torch.all(hidden.attention[..., above] == 0)
    assert torch.equal(hidden.residual[:, :, :5], later.residual[:, :, :5])
    assert torch.equal(hidden.attention[..., :5, :5], later.attention[..., :5, :5])
    assert (hidden.residual[1:, :, 5:] - later.residual[1:, :, 5:]).abs().amax(-1).min() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_pe_only_hidden_is_its_one_matrix(family):
    model = linear_attention(family, "pe_only", "plain", n_layers=1)
    states = states_of(family)
    with torch.no_grad():
        plain = model(states)
        predictions, hidden = model(states, return_hidden=True)
    batch, length, d = states.shape
    assert hidden.residual.shape == (1, batch, length, d)
    assert hidden.attention.shape == (1, batch, 1, length, length)
    assert torch.equal(predictions, plain)
    assert torch.equal(hidden.residual[0], states)
    weights = hidden.attention[0, :, 0]
    torch.testing.assert_close(weights @ states, predictions)
    above = torch.ones(length, length, dtype=torch.bool).triu(1)
    assert torch.all(weights[:, above] == 0)
    assert torch.all(weights[:, 0] == 0)  # t = 0 has no previous state: s_{-1} = 0
    t, u = 4, 2  # P[t, u] <s_{t-1}, s_u>
    inner = (states[:, t - 1].conj() * states[:, u]).sum(-1)
    torch.testing.assert_close(weights[:, t, u], model.positions[t, u].detach() * inner)
