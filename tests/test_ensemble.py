"""A stacked ensemble trains each member exactly as it would train alone."""

import pytest
import torch
from helpers import tiny_overrides

from iclab.checkpoints import load_checkpoint
from iclab.config import load_config
from iclab.models.gpt import GPT
from iclab.training import build_model, ensemble_key, train, train_runs

MEMBERS = [(1, 0), (4, 1), ('"inf"', 2)]  # (n_tasks, seed): different pools, data and inits


def _configs(**extra):
    return [
        load_config("tiny", tiny_overrides(n_tasks=m, seed=s, steps=60, **extra))
        for m, s in MEMBERS
    ]


def _key_bias_slice(name: str, parameter: torch.Tensor) -> torch.Tensor:
    """The attention key bias has zero gradient in exact arithmetic (softmax ignores a shift
    shared by all keys, and q.(k + b) shifts every key's score by q.b), so Adam turns rounding
    noise into full-size steps there and it differs between any two float programs. It has no
    effect on the outputs; everything else must match."""
    if name.endswith("attention.qkv.bias"):
        width = parameter.shape[-1] // 3
        return torch.cat([parameter[..., :width], parameter[..., 2 * width :]], dim=-1)
    return parameter


def _max_relative_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    worst = 0.0
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        p, q = _key_bias_slice(name, p), _key_bias_slice(name, q)
        worst = max(worst, ((p - q).norm() / q.norm().clamp_min(1e-12)).item())
    return worst


@pytest.mark.parametrize(("grad_clip", "stacked_forward"), [(0.0, True), (0.5, True), (0.5, False)])
def test_members_equal_runs_trained_alone(grad_clip, stacked_forward, monkeypatch):
    # stacked_forward False: the torch.func.vmap path that models without a member axis take.
    monkeypatch.setattr(GPT, "supports_member_axis", stacked_forward)
    configs = _configs(grad_clip=grad_clip)
    members = train_runs(configs)
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(32, 8, 4, generator=gen)
    ys = torch.randn(32, 8, generator=gen)
    for config, member in zip(configs, members, strict=True):
        alone = train(config, progress=False).model
        assert _max_relative_difference(member.model, alone) < 1e-5
        with torch.no_grad():
            prediction = member.model(xs, ys)
            # Batched and single matrix products round differently, and 60 Adam steps carry that
            # to ~1e-6..1e-5 in the outputs (of order 1).
            assert torch.allclose(prediction, alone(xs, ys), rtol=1e-4, atol=1e-5)
    # The members did learn different things (the check above could fail).
    assert _max_relative_difference(members[0].model, members[1].model) > 0.1


def test_bf16_members_train_under_autocast_like_runs_alone():
    """The stacked step autocasts as the single one does: fp32 master weights, bf16 products."""

    def config(n_tasks, seed, dtype):
        return load_config(
            "tiny", tiny_overrides(n_tasks=n_tasks, seed=seed, steps=20, dtype=dtype)
        )

    configs = [config(m, s, '"bfloat16"') for m, s in MEMBERS[:2]]
    members = train_runs(configs)
    for (n_tasks, seed), member in zip(MEMBERS, members, strict=False):
        assert next(member.model.parameters()).dtype == torch.float32
        alone = train(config(n_tasks, seed, '"bfloat16"'), progress=False).model
        # bf16 products round to 2^-8 relative: batched and single ones round differently
        difference = _max_relative_difference(member.model, alone)
        fp32 = train(config(n_tasks, seed, '"float32"'), progress=False).model
        assert difference < 2e-2
        assert _max_relative_difference(member.model, fp32) > 3 * difference  # autocast ran


def test_ensemble_resumes_like_an_uninterrupted_ensemble(tmp_path):
    configs = _configs(checkpoint_every=20, eval_every=20)
    dirs = [tmp_path / f"stopped{i}" for i in range(3)]
    train_runs(configs, dirs, stop_after=40)
    resumed = train_runs(configs, dirs, resume=True)
    whole = train_runs(configs, [tmp_path / f"whole{i}" for i in range(3)])
    for config, a, b, run_dir in zip(configs, resumed, whole, dirs, strict=True):
        assert _max_relative_difference(a.model, b.model) < 1e-6
        # Each member's directory is a single run's: its checkpoint loads into a lone model.
        model = build_model(config, "cpu")
        assert load_checkpoint(run_dir / "checkpoint.safetensors", model) == 60
        assert _max_relative_difference(model, b.model) < 1e-6


def test_ensemble_key_groups_only_compatible_runs():
    base = load_config("tiny", tiny_overrides())
    same = load_config("tiny", tiny_overrides(seed=3, n_tasks=8, noise_std=0.1))
    wider = load_config("tiny", tiny_overrides(n_embd=32))
    bigger_batch = load_config("tiny", tiny_overrides(batch_size=32))
    dropout = load_config("tiny", tiny_overrides(dropout=0.1))
    assert ensemble_key(base) == ensemble_key(same)
    assert ensemble_key(base) != ensemble_key(wider)
    assert ensemble_key(base) != ensemble_key(bigger_batch)
    assert ensemble_key(dropout) is None
    bf16 = load_config("tiny", tiny_overrides(dtype='"bfloat16"'))
    assert ensemble_key(bf16) is not None and ensemble_key(bf16) != ensemble_key(base)
    with pytest.raises(ValueError, match="differ only in seed and task"):
        train_runs([base, wider])


def test_ensemble_sweep_matches_the_plain_sweep(tmp_path):
    from iclab.sweeps.runner import run_sweep
    from iclab.sweeps.spec import load_spec
    from iclab.sweeps.store import SweepStore

    fixed = "\n".join(tiny_overrides(steps=40))
    results = {}
    for ensemble in ("true", "false"):
        spec_path = tmp_path / f"{ensemble}.toml"
        spec_path.write_text(
            f'base = "tiny"\nensemble = {ensemble}\n[set]\n{fixed}\n'
            '[grid]\nn_tasks = [1, 4, "inf"]\nseed = [0, 1]\n'
        )
        spec = load_spec(spec_path)
        outcome = run_sweep(spec, tmp_path / ensemble, progress=False)
        assert len(outcome.completed) == 6 and not outcome.failed
        store = SweepStore(tmp_path / ensemble)
        results[ensemble] = {
            run.run_hash: store.run(run.run_hash).evaluation()["distributions"]
            for run in spec.runs()
        }
    assert results["true"].keys() == results["false"].keys()
    for run_hash, distributions in results["true"].items():
        for name, result in distributions.items():
            plain = results["false"][run_hash][name]["delta_mean"]
            for pair, value in result["delta_mean"].items():
                assert value == pytest.approx(plain[pair], rel=1e-4, abs=1e-7)


def test_gpt_stacked_forward_equals_each_members_own():
    # The forward the ensemble uses: parameters and inputs with a leading member axis.
    configs = _configs()
    models = [build_model(config, torch.device("cpu")) for config in configs]
    names = [name for name, _ in models[0].named_parameters()]
    stacked = {n: torch.stack([dict(m.named_parameters())[n] for m in models]) for n in names}
    gen = torch.Generator().manual_seed(0)
    n_points, n_dims = configs[0].task.n_points, configs[0].task.n_dims
    xs = torch.randn(len(models), 5, n_points, n_dims, generator=gen)
    ys = torch.randn(len(models), 5, n_points, generator=gen)
    with torch.no_grad():
        out = torch.func.functional_call(models[0], stacked, (xs, ys))
        assert out.shape == (len(models), 5, n_points)
        for i, model in enumerate(models):
            torch.testing.assert_close(out[i], model(xs[i], ys[i]), rtol=1e-5, atol=1e-6)
            # Members differ, so the check above would see a mix-up of members.
            assert (out[i] - models[i - 1](xs[i], ys[i])).abs().max() > 1e-3
