"""Run identity across the redesign: run directories made by the pre-redesign code keep their
names (pinned hashes), fields added later with validation.added_field do not rename runs, and an
old-format sweep directory still resumes and reports with the current code."""

import dataclasses
import json

import pytest

import iclab.training
from iclab.config import TrainConfig, config_from_dict, config_to_toml, load_config
from iclab.sweeps.executors import LocalExecutor
from iclab.sweeps.runner import run_sweep, status_rows
from iclab.sweeps.spec import load_spec
from iclab.sweeps.table import results_rows
from iclab.training import RunDirectory, train
from iclab.validation import added_field, identity_fields

# Hashes computed with the pre-redesign code (PYTHONPATH=<old checkout>/src); run directories made
# then are named by them, so the current code must give the same.
TINY_M64_HASH = "212fad0c00f4"  # load_config("tiny", [*OLD_TINY, "n_tasks=64"])
TINY_HASH = "56abdc8d1092"  # load_config("tiny", OLD_TINY)
# The tiny preset of those days (2 layers of width 64, 2 heads, GPT-2's init, 3000 steps, warm-up
# 0.1); the preset has changed since, which renames its runs, as a changed config should.
OLD_TINY = [
    "n_layers=2",
    "n_embd=64",
    "n_heads=2",
    "init_std=0.02",
    "steps=3000",
    "warmup_fraction=0.1",
]
AUTOREGRESSIVE_HASH = "bbc121fd6a09"  # AUTOREGRESSIVE below
AUTOREGRESSIVE = {
    "task": {"family": "autoregressive", "n_dims": 2, "n_steps": 4},
    "model": {"family": "linear_attention"},
}

# What the pre-redesign code wrote as config.toml for
#   load_config("tiny", OLD_TINY + OLD_OVERRIDES)   (config_to_toml, byte for byte)
# and the hash that named its directory.
OLD_OVERRIDES = [
    "n_tasks=4",
    "steps=40",
    "eval_every=20",
    "checkpoint_every=20",
    "n_sequences=256",
    "eval_sequences=128",
    "n_points=8",
]
OLD_HASH = "acc19e43c455"
OLD_CONFIG_TOML = """\
[task]
family = "regression"
n_dims = 4
n_points = 8
n_tasks = 4
noise_std = 0.35355
prior_std = 1.0
pool_seed = 0

[model]
family = "gpt"
n_layers = 2
n_embd = 64
n_heads = 2
dropout = 0.0

[train]
steps = 40
batch_size = 64
lr = 0.001
optimizer = "adam"
weight_decay = 0.0
schedule = "cosine"
warmup_fraction = 0.1
grad_clip = 0.0
seed = 0
device = "auto"
dtype = "float32"
log_every = 50
eval_every = 20
eval_sequences = 128
checkpoint_every = 20

[eval]
n_sequences = 256
eval_batch_size = 4096
eval_seed = 0
"""
# The old sweep.json of a sweep with grid n_tasks = [4] (json.dumps(..., indent=1)).
OLD_SWEEP_JSON = """\
{
 "runs": {
  "acc19e43c455": {
   "n_tasks": 4
  }
 }
}"""


# -- pinned hashes ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: load_config("tiny", [*OLD_TINY, "n_tasks=64"]), TINY_M64_HASH),
        (lambda: load_config("tiny", OLD_TINY), TINY_HASH),
        (lambda: config_from_dict(AUTOREGRESSIVE), AUTOREGRESSIVE_HASH),
        (lambda: load_config("tiny", [*OLD_TINY, *OLD_OVERRIDES]), OLD_HASH),
    ],
    ids=["tiny-M64", "tiny", "autoregressive", "old-sweep-run"],
)
def test_run_hashes_match_the_pre_redesign_code(make, expected):
    assert make().run_hash() == expected


def test_current_code_writes_the_old_config_text_plus_the_added_fields():
    # task.prior (the Laplace prior), model.init_std, train.evals_per_doubling, train.compile and
    # train.keep_checkpoints, added since
    expected = OLD_CONFIG_TOML.replace("pool_seed = 0\n", 'pool_seed = 0\nprior = "gaussian"\n', 1)
    expected = expected.replace("dropout = 0.0\n", "dropout = 0.0\ninit_std = 0.02\n", 1)
    expected = expected.replace(
        "checkpoint_every = 20\n",
        "checkpoint_every = 20\nevals_per_doubling = 0\ncompile = false\nkeep_checkpoints = false\n",
        1,
    )
    assert config_to_toml(load_config("tiny", [*OLD_TINY, *OLD_OVERRIDES])) == expected


# -- added fields -------------------------------------------------------------------------------
def test_identity_fields_leave_out_added_fields_at_their_default():
    @dataclasses.dataclass(frozen=True)
    class Section:
        old: int = 1
        new: int = added_field(2)

    assert identity_fields(Section()) == {"old": 1}
    assert identity_fields(Section(old=5)) == {"old": 5}  # a first-release field: always there
    assert identity_fields(Section(new=3)) == {"old": 1, "new": 3}
    assert identity_fields(Section(old=1, new=2)) == {"old": 1}


def test_adding_a_field_with_added_field_keeps_the_run_hash():
    @dataclasses.dataclass(frozen=True)
    class TrainWithKnob(TrainConfig):
        new_knob: int = added_field(0)

    @dataclasses.dataclass(frozen=True)
    class TrainWithPlainKnob(TrainConfig):
        new_knob: int = 0

    config = load_config("tiny", [*OLD_TINY, "n_tasks=64"])
    fields = dataclasses.asdict(config.train)

    def with_train(train_config):
        return dataclasses.replace(config, train=train_config)

    assert with_train(TrainWithKnob(**fields)).run_hash() == TINY_M64_HASH
    assert with_train(TrainWithKnob(**fields, new_knob=1)).run_hash() != TINY_M64_HASH
    assert with_train(TrainWithKnob(**fields, new_knob=0)).run_hash() == TINY_M64_HASH
    # A field added without added_field would rename every existing run: what added_field avoids.
    assert with_train(TrainWithPlainKnob(**fields)).run_hash() != TINY_M64_HASH
    # The added field still validates and is written with the config like any other.
    assert with_train(TrainWithKnob(**fields)).to_dict()["train"]["new_knob"] == 0


# -- an old-format sweep directory --------------------------------------------------------------
def test_old_format_sweep_directory_resumes_and_reports(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    run_dir = out / "runs" / OLD_HASH
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(OLD_CONFIG_TOML)
    (out / "sweep.json").write_text(OLD_SWEEP_JSON)

    run = RunDirectory(run_dir)
    config = run.config()
    assert config.run_hash() == run_dir.name == OLD_HASH
    assert config == load_config("tiny", [*OLD_TINY, *OLD_OVERRIDES])

    # resume=True accepts the old config.toml (same hash) and starts from step 0: no checkpoint.
    train(config, run_dir, resume=True, stop_after=20, progress=False)
    assert run.checkpoint_step() == 20 and run.status() == "interrupted"
    assert [record["step"] for record in run.metrics()] == [20]
    step_20 = run.metrics()[0]
    header, rows = status_rows(out)
    assert [row[:2] for row in rows] == [[OLD_HASH, "interrupted"]]
    assert rows[0][header.index("n_tasks")] == 4 and rows[0][header.index("step")] == 20

    # The same run asked by a current sweep spec is the old directory, resumed from step 20.
    spec_path = tmp_path / "spec.toml"
    settings = dict(o.split("=") for o in [*OLD_TINY, *OLD_OVERRIDES])  # the later ones win
    fixed = "\n".join(f"{k} = {v}" for k, v in settings.items() if k != "n_tasks")
    spec_path.write_text(f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [4]\n')
    spec = load_spec(spec_path)
    assert [r.run_hash for r in spec.runs()] == [OLD_HASH]
    real_train_runs, resumed_from = iclab.training.train_runs, []

    def recording_train_runs(configs, run_dirs, resume, *args, **kwargs):
        resumed_from.append((resume, RunDirectory(run_dirs[0]).checkpoint_step()))
        return real_train_runs(configs, run_dirs, resume, *args, **kwargs)

    monkeypatch.setattr(iclab.training, "train_runs", recording_train_runs)
    outcome = run_sweep(spec, out, LocalExecutor(), progress=False)
    assert outcome.completed == [OLD_HASH] and not outcome.failed and not outcome.skipped
    assert resumed_from == [(True, 20)]
    assert [record["step"] for record in run.metrics()] == [20, 40]
    assert run.metrics()[0] == step_20
    assert sorted(p.name for p in (out / "runs").iterdir()) == [OLD_HASH]
    assert (run_dir / "config.toml").read_text() == OLD_CONFIG_TOML  # never rewritten
    assert json.loads((out / "sweep.json").read_text()) == json.loads(OLD_SWEEP_JSON)

    header, rows = status_rows(out)
    assert [row[:2] for row in rows] == [[OLD_HASH, "complete"]]
    assert rows[0][header.index("step")] == 40
    assert isinstance(rows[0][header.index("true PT,Ridge")], float)
    results = results_rows(out)
    assert sorted(r["distribution"] for r in results) == ["pretrain", "true"]
    assert all(r["run"] == OLD_HASH and r["n_tasks"] == 4 for r in results)
    assert all(r["family"] == "regression" and r["n_dims"] == 4 for r in results)
    assert all(isinstance(r["delta_PT,dMMSE"], float) for r in results)
    # Complete runs are not redone.
    assert run_sweep(spec, out, progress=False).skipped == [OLD_HASH]
