import pytest

from iclab.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_toml,
    load_config,
    preset_names,
)


def build(*overrides: str) -> RunConfig:
    return config_from_dict(apply_overrides({}, list(overrides)))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("n_tasks=0", "task.n_tasks = 0"),
        ("n_dims=0", "task.n_dims = 0"),
        ("noise_std=-0.1", "task.noise_std = -0.1"),
        ("n_heads=3", "model.n_heads = 3"),
        ("lr=fast", "train.lr = 'fast'"),
        ("steps=1.5", "train.steps = 1.5"),
        ("optimizer=sgd", "train.optimizer = 'sgd'"),
        ("dtype=float16", "train.dtype = 'float16'"),
        ("train.nonsense=1", "unknown key train.nonsense"),
        ("nonsense=1", "'nonsense'"),
        ("task.family=vision", "task.family = 'vision'"),
    ],
)
def test_bad_values_name_the_key_and_value(override, named):
    with pytest.raises(ConfigError) as error:
        build(override)
    assert named in str(error.value)


def test_width_not_divisible_by_heads_says_what_is_allowed():
    with pytest.raises(ConfigError, match="a multiple of model.n_heads = 3"):
        build("n_heads=3", "n_embd=64")


def test_infinite_tasks_spellings_and_integral_floats():
    assert build('n_tasks="inf"').task.n_tasks is None
    assert build("n_tasks=inf").task.n_tasks is None
    assert build("n_tasks=1024").task.n_tasks == 1024
    assert build("steps=2e3").train.steps == 2000


def test_toml_round_trip_keeps_the_hash(tmp_path):
    config = build("n_tasks=64", "steps=123", "lr=3e-4")
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config))
    loaded = load_config(path)
    assert loaded == config
    assert loaded.run_hash() == config.run_hash()
    assert build("n_tasks=65").run_hash() != config.run_hash()


def test_presets_load_and_match_the_paper():
    assert {"base", "small", "tiny"} <= set(preset_names())
    base, small = load_config("base"), load_config("small")
    assert (base.model.n_layers, base.model.n_embd, base.model.n_heads) == (8, 128, 2)
    assert (small.model.n_layers, small.model.n_embd, small.model.n_heads) == (4, 64, 2)
    assert base.task.noise_std**2 == pytest.approx(0.25)
    assert (base.task.n_dims, base.task.n_points) == (8, 16)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_model_and_task_families_must_fit():
    with pytest.raises(ConfigError, match="model.family = 'gpt' needs task.family = 'regression'"):
        config_from_dict({"task": {"family": "autoregressive"}})
    with pytest.raises(ConfigError, match="task.n_steps = 1"):
        config_from_dict(
            {
                "task": {"family": "autoregressive", "n_steps": 1},
                "model": {"family": "diagonal_attention"},
            }
        )


def test_the_gpt_init_scale_is_a_setting_that_keeps_old_run_names():
    import torch

    from iclab.training.optimization import build_model

    assert (
        load_config("small", ["model.init_std=0.02"]).run_hash() == load_config("small").run_hash()
    )
    assert load_config("tiny").model.init_std == 0.1  # the demo's recipe sets it: a new name
    model = build_model(load_config("tiny", ["model.init_std=0.05"]), torch.device("cpu"))
    assert model.embed.weight.std().item() == pytest.approx(0.05, rel=0.15)
    projection = model.blocks[0].attention.proj.weight.std().item()
    assert projection == pytest.approx(0.05 / 8**0.5, rel=0.15)  # / sqrt(2 n_layers), 4 layers
    with pytest.raises(ConfigError, match="model.init_std"):
        load_config("tiny", ["model.init_std=0"])
