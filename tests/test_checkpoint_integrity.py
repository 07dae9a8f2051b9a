"""A checkpoint belongs to one run and is verified before anything is loaded or rewritten, and a
resumed run's metrics.jsonl and weights equal those of an uninterrupted run."""

import hashlib
import json
import math
import shutil

import pytest
import torch
from helpers import tiny_overrides
from safetensors.torch import load_file, save, save_file

from iclab.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from iclab.cli import main
from iclab.config import config_to_toml, load_config
from iclab.training import build_model, build_optimizer, train, train_runs
from iclab.training.run_directory import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, RunDirectory

CPU = torch.device("cpu")


def make_config(**extra):
    return load_config("tiny", tiny_overrides(**extra))


def digests(run_dir) -> dict[str, str]:
    """sha256 of every file of a run directory (what a refused load must leave untouched)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.iterdir())
        if p.is_file()
    }


def interrupted_run(tmp_path, name="run", **extra):
    """A run stopped after its checkpoint at step 20 of 40, with metrics records."""
    config = make_config(**extra)
    train(config, tmp_path / name, progress=False, stop_after=20)
    return config, tmp_path / name


def data_start(path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def rewrite_metadata(path, metadata) -> None:
    """Valid safetensors with the same tensors and the given metadata (the old format: no
    checksum, so the metadata is all that is checked)."""
    tensors = load_file(path)
    path.write_bytes(save(tensors, metadata=metadata))


def old_format(path) -> None:
    """Rewrite a checkpoint as the format before checksums and run hashes wrote it."""
    tensors = load_file(path)
    with open(path, "rb") as file:
        header = file.read(8)
        metadata = json.loads(file.read(int.from_bytes(header, "little")))["__metadata__"]
    save_file(tensors, path, metadata={k: metadata[k] for k in ("step", "param_groups")})


def test_flipped_tensor_bytes_are_refused_by_eval_and_resume(tmp_path, capsys):
    config, run_dir = interrupted_run(tmp_path)
    path = run_dir / CHECKPOINT_FILE
    data = bytearray(path.read_bytes())
    start = data_start(path) + 64
    data[start : start + 200] = bytes(b ^ 0x5A for b in data[start : start + 200])
    path.write_bytes(bytes(data))
    before = digests(run_dir)

    with pytest.raises(CheckpointError, match="checksum") as error:
        load_checkpoint(path, build_model(config, CPU))
    assert str(path) in str(error.value)

    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 1
    assert str(path) in capsys.readouterr().err
    config_file = tmp_path / "config.toml"
    config_file.write_text(config_to_toml(config))
    code = main(["train", str(config_file), "--out", str(run_dir), "--resume", "--no-progress"])
    assert code == 1
    assert "checksum" in capsys.readouterr().err
    assert digests(run_dir) == before


def test_flipped_metadata_byte_is_refused(tmp_path):
    config, run_dir = interrupted_run(tmp_path)
    path = run_dir / CHECKPOINT_FILE
    data = path.read_bytes()
    at = data.index(b'"step":"20"') + len(b'"step":"')
    path.write_bytes(data[:at] + b"3" + data[at + 1 :])  # step 20 -> 30, still valid JSON
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path, build_model(config, CPU))


def test_checkpoint_of_another_run_is_refused_naming_both_hashes(tmp_path, capsys):
    config, run_dir = interrupted_run(tmp_path)
    other, other_dir = interrupted_run(tmp_path, "other", seed=1)
    assert other.run_hash() != config.run_hash()
    shutil.copyfile(other_dir / CHECKPOINT_FILE, run_dir / CHECKPOINT_FILE)
    before = digests(run_dir)

    with pytest.raises(CheckpointError) as error:
        train(config, run_dir, resume=True, progress=False)
    message = str(error.value)
    assert str(run_dir / CHECKPOINT_FILE) in message
    assert other.run_hash() in message and config.run_hash() in message
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert other.run_hash() in err and config.run_hash() in err
    assert digests(run_dir) == before


def test_edited_config_is_refused(tmp_path, capsys):
    config, run_dir = interrupted_run(tmp_path)
    edited = make_config(lr="3e-3")
    (run_dir / CONFIG_FILE).write_text(config_to_toml(edited))
    before = digests(run_dir)
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert str(run_dir / CHECKPOINT_FILE) in err
    assert config.run_hash() in err and edited.run_hash() in err
    with pytest.raises(CheckpointError, match=edited.run_hash()):
        train(edited, run_dir, resume=True, progress=False)
    assert digests(run_dir) == before


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {},
        {"step": "-5", "param_groups": "[]"},
        {"step": "twenty", "param_groups": "[]"},
        {"step": "20"},
        {"step": "20", "param_groups": "not json"},
        {"step": "20", "param_groups": '{"lr": 1}'},
        {"step": "20", "param_groups": "[]", "train_losses": '{"sum": 1.0}'},
        {"step": "20", "param_groups": "[]", "train_losses": '{"sum": 0, "count": 99, "last": 0}'},
    ],
)
def test_bad_metadata_is_a_checkpoint_error_and_keeps_the_metrics(tmp_path, metadata):
    config, run_dir = interrupted_run(tmp_path)
    path = run_dir / CHECKPOINT_FILE
    if metadata is not None and "param_groups" in metadata and metadata["param_groups"] == "[]":
        # the real param_groups, so that only the field under test is bad
        with open(path, "rb") as file:
            header = file.read(8)
            real = json.loads(file.read(int.from_bytes(header, "little")))["__metadata__"]
        metadata["param_groups"] = real["param_groups"]
    rewrite_metadata(path, metadata)
    before = digests(run_dir)
    assert RunDirectory(run_dir).metrics()
    with pytest.raises(CheckpointError) as error:
        train(config, run_dir, resume=True, progress=False)
    assert str(path) in str(error.value)
    assert digests(run_dir) == before


def test_step_beyond_the_run_is_refused_before_metrics_change(tmp_path, capsys):
    config, run_dir = interrupted_run(tmp_path)
    path = run_dir / CHECKPOINT_FILE
    old_format(path)
    data = path.read_bytes()
    rewrite_metadata(path, {**_metadata(data), "step": "1000"})
    before = digests(run_dir)
    with pytest.raises(CheckpointError, match="beyond train.steps"):
        train(config, run_dir, resume=True, progress=False)
    assert "loaded without verifying it" in capsys.readouterr().err
    assert digests(run_dir) == before


def _metadata(data: bytes) -> dict:
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]


def test_old_format_checkpoint_loads_with_one_warning(tmp_path, capsys):
    config = make_config()
    whole = train(config, tmp_path / "whole", progress=False)
    _, run_dir = interrupted_run(tmp_path)
    path = run_dir / CHECKPOINT_FILE
    old_format(path)
    assert set(_metadata(path.read_bytes())) == {"step", "param_groups"}

    capsys.readouterr()
    model = build_model(config, CPU)
    assert RunDirectory(run_dir).load_checkpoint(model) == 20
    # one line, the message alone (no Python source line after it)
    assert capsys.readouterr().err == (
        f"iclab: warning: checkpoint {str(path)!r} has no checksum and no run hash (written by "
        "an older iclab): loaded without verifying it\n"
    )

    resumed = train(config, run_dir, resume=True, progress=False)
    assert capsys.readouterr().err.count("loaded without verifying it") == 1
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    # the resumed run wrote a checkpoint of the new format
    assert {"checksum", "run_hash", "train_losses"} <= set(_metadata(path.read_bytes()))
    assert main(["eval", str(run_dir)]) == 0
    assert "loaded without verifying it" not in capsys.readouterr().err


def damage_old_format(path, change) -> None:
    """Rewrite a checkpoint in the old format (only step and param_groups in its metadata) after
    change(tensors, param_groups) has damaged it: nothing but the loader's own checks stands in
    the way, no checksum."""
    tensors = load_file(path)
    metadata = _metadata(path.read_bytes())
    groups = json.loads(metadata["param_groups"])
    change(tensors, groups)
    save_file(
        tensors, path, metadata={"step": metadata["step"], "param_groups": json.dumps(groups)}
    )


def _set(mapping, key, value):
    mapping[key] = value


OPTIMIZER_DAMAGE = {
    "moment of the wrong shape": lambda t, g: _set(t, "optimizer.0.exp_avg", torch.zeros(3)),
    "betas not a pair": lambda t, g: _set(g[0], "betas", "x"),
    "betas missing": lambda t, g: g[0].pop("betas"),
    "eps not a number": lambda t, g: _set(g[1], "eps", None),
    "step of 5 elements": lambda t, g: _set(t, "optimizer.0.step", torch.zeros(5)),
    "a moment missing": lambda t, g: t.pop("optimizer.1.exp_avg_sq"),
}


@pytest.mark.parametrize("damage", list(OPTIMIZER_DAMAGE))
def test_damaged_optimizer_state_of_an_old_checkpoint_is_refused(tmp_path, capsys, damage):
    config, run_dir = interrupted_run(tmp_path)
    path = run_dir / CHECKPOINT_FILE
    damage_old_format(path, OPTIMIZER_DAMAGE[damage])
    config_file = tmp_path / "config.toml"
    config_file.write_text(config_to_toml(config))
    before = digests(run_dir)
    capsys.readouterr()
    code = main(["train", str(config_file), "--out", str(run_dir), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"iclab: checkpoint {str(path)!r}: optimizer state does not fit" in err
    assert "Traceback" not in err
    assert digests(run_dir) == before


def nan_weights(run_dir, config, new_format: bool) -> None:
    """Set one weight of the run's checkpoint to NaN, in a checkpoint of either format."""
    path = run_dir / CHECKPOINT_FILE
    if not new_format:
        damage_old_format(path, lambda t, g: t["model.head.weight"].fill_(math.nan))
        return
    model = build_model(config, CPU)
    optimizer = build_optimizer(model, config.train)
    step = load_checkpoint(path, model, optimizer, config.run_hash())
    with torch.no_grad():
        model.head.weight.fill_(math.nan)
    save_checkpoint(path, model, optimizer, step, config.run_hash())


@pytest.mark.parametrize("new_format", [True, False])
def test_checkpoint_with_nan_weights_is_refused(tmp_path, capsys, new_format):
    config = make_config(n_tasks=4, steps=20)
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False)
    main(["make-example-data", "--out", str(tmp_path / "data")])
    nan_weights(run_dir, config, new_format)
    path = run_dir / CHECKPOINT_FILE
    with pytest.raises(CheckpointError, match="'head.weight' holds NaN"):
        load_checkpoint(path, build_model(config, CPU))
    before = digests(run_dir)
    for command in [
        ["eval", str(run_dir)],
        ["interpolate", str(run_dir), "--pairs", "2", "--sequences-per-pair", "2"],
        ["predict", str(run_dir), str(tmp_path / "data" / "regression.csv")],
    ]:
        capsys.readouterr()
        assert main(command) == 1, command
        err = capsys.readouterr().err
        assert f"iclab: checkpoint {str(path)!r} is corrupt: weight 'head.weight'" in err
        assert "Traceback" not in err
    assert digests(run_dir) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["regression.csv", "series.csv"]


# -- resume equals an uninterrupted run, metrics included ----------------------------------------


def same(a, b) -> bool:
    """Equality of parsed JSON where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def assert_same_runs(whole_dirs, split_dirs, whole_results, split_results):
    for whole_dir, split_dir in zip(whole_dirs, split_dirs, strict=True):
        expected, got = RunDirectory(whole_dir).metrics(), RunDirectory(split_dir).metrics()
        assert expected, "the schedule must write records"
        assert same(got, expected), (got, expected)
    for whole, split in zip(whole_results, split_results, strict=True):
        for (name, a), b in zip(
            whole.model.state_dict().items(), split.model.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name


# (log_every, eval_every, checkpoint_every, stop_after) on 40 steps
SCHEDULES = [
    (10, 20, 20, 20),
    (10, 10, 15, 15),  # checkpoint between two logs
    (7, 5, 6, 18),
    (10, 3, 4, 4),  # resumed before the first log: train_loss NaN in both, then an eval at 6
    (4, 10, 7, 35),
    (40, 13, 13, 26),
    (10, 5, 10, 25),  # stopped between checkpoints and logs
    (3, 1, 40, 39),
]


@pytest.mark.parametrize("log_every,eval_every,checkpoint_every,stop_after", SCHEDULES)
def test_resumed_single_run_equals_uninterrupted(
    tmp_path, log_every, eval_every, checkpoint_every, stop_after
):
    config = make_config(
        log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every
    )
    whole = train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after=stop_after)
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    assert_same_runs([tmp_path / "whole"], [tmp_path / "split"], [whole], [resumed])


@pytest.mark.parametrize("log_every,eval_every,checkpoint_every,stop_after", SCHEDULES[1:4])
def test_resumed_ensemble_equals_uninterrupted(
    tmp_path, log_every, eval_every, checkpoint_every, stop_after
):
    schedule = dict(log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every)
    configs = [
        make_config(n_tasks=4, seed=0, **schedule),
        make_config(n_tasks=16, seed=3, **schedule),
    ]
    whole_dirs = [tmp_path / "whole0", tmp_path / "whole1"]
    split_dirs = [tmp_path / "split0", tmp_path / "split1"]
    whole = train_runs(configs, whole_dirs, progress=False)
    train_runs(configs, split_dirs, progress=False, stop_after=stop_after)
    resumed = train_runs(configs, split_dirs, resume=True, progress=False)
    assert_same_runs(whole_dirs, split_dirs, whole, resumed)


class Killed(Exception):
    pass


def _kill_at(step):
    def on_log(done, _loss):
        if done == step:
            raise Killed

    return on_log


@pytest.mark.parametrize("killed_at", [10, 30])
def test_run_killed_between_checkpoints_resumes_to_the_same_metrics(tmp_path, killed_at):
    # killed at 10: before the first checkpoint (20), with the eval record of 5 on disk;
    # killed at 30: the record of 25 beyond the checkpoint at 20.
    config = make_config(log_every=10, eval_every=5, checkpoint_every=20)
    whole = train(config, tmp_path / "whole", progress=False)
    with pytest.raises(Killed):
        train(config, tmp_path / "split", progress=False, on_log=_kill_at(killed_at))
    split = RunDirectory(tmp_path / "split")
    assert split.has_checkpoint() == (killed_at > 20)
    assert split.metrics()[-1]["step"] == killed_at - 5  # on_log comes before the evaluation
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    assert_same_runs([tmp_path / "whole"], [tmp_path / "split"], [whole], [resumed])
    steps = [r["step"] for r in split.metrics()]
    assert steps == sorted(set(steps))  # no duplicate records
    assert (tmp_path / "split" / METRICS_FILE).read_bytes() == (
        tmp_path / "whole" / METRICS_FILE
    ).read_bytes()
