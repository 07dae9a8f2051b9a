"""One writer per directory: a second writer gets a clear message; a dead holder's lock is free."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import snapshot

from iclab.cli import main
from iclab.locks import LOCK_FILE, DirectoryBusy, exclusive

HOLD = """
import sys, time
from iclab.locks import exclusive
with exclusive(sys.argv[1], "run directory"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_another_process(directory):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_while_the_first_lives_and_admitted_after_kill_9(tmp_path):
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(DirectoryBusy, match=rf"in use by process {holder.pid}"):
            with exclusive(tmp_path, "run directory"):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # The lock file is still there with the dead pid, but the lock died with its holder.
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(holder.pid)
    with exclusive(tmp_path, "run directory"):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_the_lock_is_released_after_the_block(tmp_path):
    with exclusive(tmp_path, "sweep directory"):
        pass
    started = time.perf_counter()
    with exclusive(tmp_path, "sweep directory"):
        pass
    assert time.perf_counter() - started < 1.0


def test_a_second_train_or_sweep_on_a_busy_directory_exits_2_and_changes_nothing(tmp_path, capsys):
    """`iclab train --resume` into a run directory, and `iclab sweep` into a sweep directory,
    that another live process is writing to: one message naming the holder, exit status 2."""
    small = ["--set", "steps=4", "--set", "n_sequences=32", "--set", "eval_sequences=16"]
    run = tmp_path / "run"
    assert main(["train", "tiny", *small, "--out", str(run), "--no-progress"]) == 0
    spec = tmp_path / "s.toml"
    spec.write_text('base = "tiny"\n[set]\nsteps = 4\nn_sequences = 32\n[grid]\nseed = [0]\n')
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for directory, args in (
        (run, ["train", "tiny", *small, "--out", str(run), "--resume", "--no-progress"]),
        (sweep, ["sweep", str(spec), "--out", str(sweep), "--no-progress"]),
    ):
        holder = hold_in_another_process(directory)
        try:
            before = snapshot(tmp_path)
            capsys.readouterr()
            assert main(args) == 2
            assert f"in use by process {holder.pid}" in capsys.readouterr().err
            assert snapshot(tmp_path) == before
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()


def test_the_final_evaluation_of_a_run_holds_its_directory(tmp_path, monkeypatch):
    import iclab.experiment as experiment
    from iclab.config import load_config

    original, held = experiment.finish_run, []

    def finish_run(config, run_dir, *rest):
        with pytest.raises(DirectoryBusy):  # another writer would be refused here
            with exclusive(run_dir, "run directory"):
                pass
        held.append(True)
        return original(config, run_dir, *rest)

    monkeypatch.setattr(experiment, "finish_run", finish_run)
    small = ["steps=2", "eval_every=2", "checkpoint_every=2", "n_sequences=32", "eval_sequences=16"]
    experiment.run(load_config("tiny", small), tmp_path / "run", progress=False)
    assert held and (tmp_path / "run" / "eval.json").exists()
