"""Sizes that cannot fit in memory are refused before any work (iclab.training.memory)."""

import json
import subprocess
import sys
import time

import pytest
import torch
from helpers import snapshot

from iclab.cli import main
from iclab.config import load_config
from iclab.families import ACTIVATIONS, PARAMETERS, POOL
from iclab.training.memory import (
    available_memory,
    check_memory,
    estimate_memory,
    format_bytes,
)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("n_dims=100000", "task.n_dims = 100000"),
        ("batch_size=1000000000", "train.batch_size = 1000000000"),
        ("n_points=1000000", "task.n_points = 1000000"),
        ("n_embd=1000000", "model.n_embd = 1000000"),
        (f"n_tasks={2**40}", f"task.n_tasks = {2**40}"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_any_work(tmp_path, capsys, override, key):
    (tmp_path / "keep.txt").write_text("unrelated")
    before = snapshot(tmp_path)
    started = time.perf_counter()
    code = main(["train", "tiny", "--set", override, "--out", str(tmp_path / "run")])
    elapsed = time.perf_counter() - started
    text = capsys.readouterr().err
    assert code == 2
    assert key in text and "memory" in text and "available" in text
    assert "Traceback" not in text
    assert elapsed < 5
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_the_presets_fit_on_this_machine(preset):
    config = load_config(preset, ['device="cpu"'])
    check_memory([config], torch.device("cpu"))  # raises if refused
    assert sum(estimate_memory([config]).values()) < 2**31


def test_an_ensemble_needs_its_member_count_times_a_run():
    config = load_config("tiny", ["n_tasks=64"])
    one, three = estimate_memory([config], 1), estimate_memory([config] * 3, 1)
    assert all(three[part] == 3 * one[part] for part in one)


def test_huge_values_do_not_overflow():
    config = load_config("tiny", [f"n_embd={2**62}", f"n_heads={2**31}", f"batch_size={2**62}"])
    parts = estimate_memory([config], 1)
    assert parts[PARAMETERS] > 2**124  # exact Python ints
    assert format_bytes(sum(parts.values())).endswith(("EiB", " B"))
    assert format_bytes(3 * 2**30) == "3.0 GiB"


def test_available_memory_on_the_cpu_is_plausible():
    available = available_memory(torch.device("cpu"))
    assert available is not None and 2**24 < available < 2**50


# Peak RSS from /proc/self/status (VmHWM): it belongs to this process's own memory map. ru_maxrss
# does not: Linux carries the parent's peak across fork and exec, so a pytest worker that had
# grown past this run's peak left nothing to measure.
MEASURE = """
import json, sys
import torch

def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

from iclab.config import load_config
from iclab.training.loop import train_runs

def config(**values):
    values = dict(device='"cpu"', steps=3, log_every=1, **values)
    return load_config("tiny", [f"{k}={v}" for k, v in values.items()])

torch.set_num_threads(1)
train_runs([config(batch_size=8, n_layers=1)], progress=False)  # load kernels, warm the allocator
before = peak()
train_runs([config(**json.loads(sys.argv[1]))], progress=False)
print((peak() - before) * 1024)
"""


def test_the_estimate_is_an_upper_bound_within_a_small_factor():
    """Peak RSS growth of building a GPT and taking 3 train steps (batch 1024, 2 layers of width
    64, 32 tokens: ~0.4 GB measured here) against the estimate's training parts (~0.56 GB)."""
    values = {"batch_size": 1024}
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(values)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    measured = int(result.stdout.split()[-1])
    config = load_config("tiny", [f"{k}={v}" for k, v in values.items()])
    parts = estimate_memory([config], 1)
    estimated = parts[PARAMETERS] + parts[ACTIVATIONS] + parts[POOL]
    assert measured > 2**27  # the batch dominates what is measured
    assert measured <= estimated <= 4 * measured, (measured, estimated)


def test_a_sweep_worker_checks_memory_on_its_own_device(tmp_path):
    """In a sweep the check runs where the run trains (a worker, local or Ray): a run that cannot
    fit is recorded failed with the memory message, and the sweep goes on with the others."""
    from iclab.sweeps.executors import LocalExecutor
    from iclab.sweeps.runner import run_sweep
    from iclab.sweeps.spec import load_spec
    from iclab.sweeps.store import SweepStore

    spec = tmp_path / "s.toml"
    spec.write_text(
        'base = "tiny"\n[set]\nsteps = 4\nn_sequences = 32\neval_sequences = 16\n'
        "[grid]\nbatch_size = [8, 1000000000]\n"
    )
    runs = load_spec(spec).runs()
    outcome = run_sweep(load_spec(spec), tmp_path / "out", LocalExecutor(), progress=False)
    huge = runs[1].run_hash
    assert list(outcome.failed) == [huge] and outcome.completed == [runs[0].run_hash]
    failure = SweepStore(tmp_path / "out").run(huge).failure()
    assert "train.batch_size = 1000000000 is not allowed" in failure and "memory" in failure
