"""Sweeps: spec expansion, the sweep directory, failures, kills and resume, results and figures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_overrides

from iclab.config import ConfigError
from iclab.sweeps.executors import LocalExecutor
from iclab.sweeps.runner import run_sweep, status_rows
from iclab.sweeps.spec import expand_values, load_spec
from iclab.sweeps.store import SweepStore
from iclab.sweeps.table import results_rows, write_results

ONE_THREAD = LocalExecutor(threads_per_run=1)  # as the killed sweeps ran: identical results
SWEEP_SPECS = Path(__file__).parent.parent / "src" / "iclab" / "presets" / "sweeps"


def write_spec(path: Path, grid: str, extra: str = "", **overrides) -> Path:
    fixed = "\n".join(tiny_overrides(**overrides))
    path.write_text(f'base = "tiny"\n{extra}\n[set]\n{fixed}\n[grid]\n{grid}\n')
    return path


def test_powers_of_two_range_and_hashes(tmp_path):
    assert expand_values("n_tasks", ["2^0..2^3", "inf"]) == [1, 2, 4, 8, "inf"]
    assert expand_values("seed", [3, 1]) == [3, 1]
    spec = load_spec(
        write_spec(tmp_path / "s.toml", 'n_tasks = ["2^1..2^2", "inf"]\nseed = [0, 1]')
    )
    runs = spec.runs()
    assert [(r.grid_values["n_tasks"], r.grid_values["seed"]) for r in runs] == [
        (2, 0), (2, 1), (4, 0), (4, 1), ("inf", 0), ("inf", 1)
    ]  # fmt: skip
    assert [r.config.task.n_tasks for r in runs] == [2, 2, 4, 4, None, None]
    assert len({r.run_hash for r in runs}) == 6
    # The hash is the config's: the same run written another way has the same directory name.
    again = load_spec(write_spec(tmp_path / "t.toml", "seed = [1]\nn_tasks = [4]"))
    assert again.runs()[0].run_hash == runs[3].run_hash
    # Values equal to the base's collapse to one run.
    assert len(load_spec(write_spec(tmp_path / "u.toml", "seed = [0, 0]")).runs()) == 1


@pytest.mark.parametrize(
    ("grid", "extra", "message"),
    [
        ('n_tasks = ["2^3..2^1"]', "", "first exponent exceeds"),
        ('n_tasks = ["2^0..2^3000000"]', "", "exponents are at most 62"),
        ('"task.n_tasks" = [1]\nn_tasks = [2]', "", "both set task.n_tasks"),
        ("n_tasks = 4", "", "expected a non-empty list"),
        ("n_tasks = [0]", "", "n_tasks = 0 is not allowed"),
        ("widht = [3]", "", "widht"),
        ("seed = [1]", "colour = 3", "unknown key(s) colour"),
        ("seed = [1]", "ensemble = 3", "ensemble = 3 is not allowed"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, grid, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(write_spec(tmp_path / "s.toml", grid, extra))


def test_bundled_sweep_specs_load():
    sizes = {path.stem: len(load_spec(path).runs()) for path in SWEEP_SPECS.glob("*.toml")}
    assert sizes["task_diversity_small"] == sizes["task_diversity_base"] == 2 * 22
    assert sizes["task_diversity_cpu"] == 5  # M = 1, 4, 16, 64, inf at batch 64
    assert sizes["task_diversity_tstar-cpu"] == 7 and sizes["task_diversity_tstar-small"] == 14
    dimension_specs = [name for name in sizes if name.startswith("task_diversity_dimensions")]
    assert len(dimension_specs) == 6 and all(sizes[name] in (5, 28) for name in dimension_specs)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"config.toml": "[task]\n"}, r"holds files \(config.toml\)"),
        ({"notes.txt": "x"}, "notes.txt"),
    ],
)
def test_sweep_refuses_a_directory_that_is_not_a_sweep(tmp_path, files, message):
    spec = load_spec(write_spec(tmp_path / "s.toml", "n_tasks = [1]"))
    out = tmp_path / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        run_sweep(spec, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, ".lock"])
    assert all((out / name).read_text() == text for name, text in files.items())


def test_sweep_records_failures_and_retries_only_those(tmp_path, monkeypatch):
    import iclab.training

    spec = load_spec(write_spec(tmp_path / "s.toml", "n_tasks = [1, 2, 4]"))
    doomed = spec.runs()[1].run_hash
    real_train, trained = iclab.training.train_runs, []

    def flaky_train(configs, *args, **kwargs):
        trained.append(configs[0].run_hash())
        if configs[0].task.n_tasks == 2 and len(trained) < 4:
            raise RuntimeError("injected failure for this test")
        return real_train(configs, *args, **kwargs)

    monkeypatch.setattr(iclab.training, "train_runs", flaky_train)
    out = tmp_path / "sweep"
    outcome = run_sweep(spec, out, LocalExecutor(), progress=False)
    store = SweepStore(out)
    assert list(outcome.failed) == [doomed] and len(outcome.completed) == 2
    assert "injected failure for this test" in store.run(doomed).failure()
    assert "Traceback" in store.run(doomed).failure()
    header, rows = status_rows(out)
    assert [row[1] for row in rows] == ["complete", "failed", "complete"]
    assert "injected failure" in rows[1][header.index("note")]
    # Without --retry-failed nothing runs; with it only the failed run.
    assert run_sweep(spec, out, progress=False).completed == [] and len(trained) == 3
    retried = run_sweep(spec, out, retry_failed=True, progress=False)
    assert retried.completed == [doomed] and trained[3:] == [doomed]
    assert store.run(doomed).status() == "complete"
    assert not (store.run(doomed).path / "failed.json").exists()


def _launch(spec: Path, out: Path, workers: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "iclab.cli", "sweep", str(spec), "--out", str(out)]
    command += ["--workers", str(workers), "--threads-per-run", "1", "--no-progress"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended early: {process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the sweep")
        time.sleep(0.05)


def _cpu_ticks(pid: str) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _descendants(pid: int) -> set[int]:
    """Every process below pid (children, their children, ...), from /proc's parent pids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The pids still running (a zombie has ended, whoever reaps it)."""
    return {pid for pid in pids if (fields := _stat(pid)) is not None and fields[0] != "Z"}


def _assert_all_end(pids: set[int], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(pids)
    for pid in left:  # never leave them hogging the machine
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the sweep outlived its driver by {within} s: {sorted(left)}"


def _sigkill_driver(process) -> set[int]:
    """SIGKILL a sweep driver and assert that every process it started ends within seconds;
    returns their pids."""
    descendants = _descendants(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    _assert_all_end(descendants)
    return descendants


def _steps(run_dir: Path) -> list[int]:
    return [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_sigkill_mid_sweep_then_restart_completes_each_run_once(tmp_path):
    """SIGKILL the sweep (in-process executor: the driver is the worker) while the second of
    three runs is between checkpoints; a restart keeps the first run untouched, resumes the
    second from its checkpoint and finishes the third. The result equals an uninterrupted sweep."""
    spec = write_spec(
        tmp_path / "s.toml", "n_tasks = [1, 2, 4]", steps=600, checkpoint_every=20, eval_every=150
    )
    runs = load_spec(spec).runs()
    store = SweepStore(tmp_path / "killed")
    first, second = (store.run(r.run_hash).path for r in runs[:2])
    process = _launch(spec, tmp_path / "killed", workers=1)
    try:
        _wait_for(lambda: store.run(runs[1].run_hash).status() == "interrupted", process)
        _wait_for(lambda: store.run(runs[1].run_hash).checkpoint_step() >= 60, process)
        _sigkill_driver(process)
    finally:
        process.kill()
        process.wait()
    assert store.run(runs[0].run_hash).status() == "complete"
    assert store.run(runs[2].run_hash).status() == "pending"
    killed_at = store.run(runs[1].run_hash).checkpoint_step()
    assert 60 <= killed_at < 600
    first_eval = (first / "eval.json").stat()

    outcome = run_sweep(load_spec(spec), tmp_path / "killed", ONE_THREAD, progress=False)
    assert outcome.skipped == [runs[0].run_hash]
    assert outcome.completed == [runs[1].run_hash, runs[2].run_hash]
    assert (first / "eval.json").stat().st_mtime_ns == first_eval.st_mtime_ns
    assert _steps(second) == [150, 300, 450, 600]  # each evaluation exactly once
    run_dirs = sorted(p.name for p in (tmp_path / "killed" / "runs").iterdir())
    assert run_dirs == sorted(r.run_hash for r in runs)

    run_sweep(load_spec(spec), tmp_path / "whole", ONE_THREAD, progress=False)
    for run in runs:
        killed = json.loads((store.run(run.run_hash).path / "eval.json").read_text())
        whole = json.loads(
            (SweepStore(tmp_path / "whole").run(run.run_hash).path / "eval.json").read_text()
        )
        assert killed["distributions"] == whole["distributions"]


def test_sigkill_of_a_pool_sweep_driver_ends_all_its_processes(tmp_path):
    """SIGKILL the driver of a two-worker sweep: its workers, the message queue's manager and the
    resource tracker end within seconds instead of hanging on as orphans."""
    spec = write_spec(tmp_path / "s.toml", "n_tasks = [1, 2]", steps=600, checkpoint_every=20)
    runs = load_spec(spec).runs()
    store = SweepStore(tmp_path / "sweep")
    process = _launch(spec, tmp_path / "sweep", workers=2)
    try:
        _wait_for(lambda: all(store.run(r.run_hash).checkpoint_step() >= 20 for r in runs), process)
        descendants = _sigkill_driver(process)  # kills any survivor before it asserts
        assert len(descendants) >= 3  # two workers and the manager (and a resource tracker)
    finally:
        process.kill()
        process.wait()


def test_killed_pool_worker_is_recorded_and_retried_from_its_checkpoint(tmp_path):
    """SIGKILL one worker process of a two-process pool running two of three runs: only its run
    is recorded as failed, with the reason; the run in the other worker and the one not started
    yet are not, and the sweep completes them (the first from its checkpoint). --retry-failed
    then resumes the failed run from the checkpoint the driver received."""
    # 400 steps: the third run must still be pending when both others reach step 40; with 200,
    # a loaded machine once let one run finish first (seen in CI).
    spec = write_spec(tmp_path / "s.toml", "n_tasks = [1, 2, 4]", steps=400, checkpoint_every=20)
    runs = load_spec(spec).runs()
    out = tmp_path / "sweep"
    store = SweepStore(out)
    process = _launch(spec, out, workers=2)
    descendants: set[int] = set()
    try:
        first_two = runs[:2]
        _wait_for(
            lambda: all(store.run(r.run_hash).checkpoint_step() >= 40 for r in first_two), process
        )
        assert store.run(runs[2].run_hash).status() == "pending"
        descendants = _descendants(process.pid)
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        # Spawned children are the two pool workers, the message queue's manager and the
        # resource tracker; the busiest is a worker.
        busiest = max(children, key=_cpu_ticks)
        os.kill(int(busiest), signal.SIGKILL)
        assert process.wait(timeout=120) == 1  # a failed run: exit status 1
        _assert_all_end(descendants | _descendants(process.pid))
    finally:
        process.kill()
        process.wait()
        for pid in _alive(descendants):
            os.kill(pid, signal.SIGKILL)
    statuses = [store.run(r.run_hash).status() for r in runs]
    failed = [r.run_hash for r in runs if store.run(r.run_hash).status() == "failed"]
    assert len(failed) == 1 and failed[0] in {r.run_hash for r in first_two}, statuses
    assert "worker process died" in store.run(failed[0]).failure()
    assert statuses.count("complete") == 2
    for run in runs:
        if run.run_hash not in failed:  # each evaluation exactly once, resumed or not
            assert _steps(store.run(run.run_hash).path) == list(range(20, 401, 20))
    # A plain restart skips them all; --retry-failed resumes the failed run.
    assert run_sweep(load_spec(spec), out, ONE_THREAD, progress=False).completed == []
    resumed_from = store.run(failed[0]).checkpoint_step()
    outcome = run_sweep(load_spec(spec), out, ONE_THREAD, retry_failed=True, progress=False)
    assert outcome.completed == failed
    assert all(store.run(r.run_hash).status() == "complete" for r in runs)
    assert resumed_from >= 40


def test_results_table_and_figures(tmp_path):
    spec = load_spec(
        write_spec(tmp_path / "s.toml", 'n_tasks = [1, 4, "inf"]\nbatch_size = [8, 16]')
    )
    out = tmp_path / "sweep"
    run_sweep(spec, out, LocalExecutor(workers=2, threads_per_run=1), progress=False)
    rows = results_rows(out)
    assert len(rows) == 6 * 2  # runs x distributions
    assert {r["distribution"] for r in rows} == {"pretrain", "true"}
    assert {r["n_tasks"] for r in rows} == {1, 4, "inf"} and {r["batch_size"] for r in rows} == {
        8,
        16,
    }
    row = next(r for r in rows if r["n_tasks"] == 4 and r["distribution"] == "true")
    evaluation = SweepStore(out).run(row["run"]).evaluation()["distributions"]["true"]
    assert row["delta_PT,Ridge"] == evaluation["delta_mean"]["PT,Ridge"]
    assert row["mse_dMMSE"] == evaluation["mse_mean"]["dMMSE"]
    csv_path = write_results(out)[0]
    assert len(csv_path.read_text().splitlines()) == 1 + 12

    from iclab.studies.task_diversity.figures import plot_sweep

    paths = plot_sweep(out, [1, None])
    assert [p.name for p in paths] == [
        "task_diversity.png", "mse_per_position_by_M.png", "delta_over_training.png"
    ]  # fmt: skip
    assert all(p.stat().st_size > 10_000 for p in paths)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _flip_tensor_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little") + 64
    data[start : start + 100] = bytes(b ^ 0x5A for b in data[start : start + 100])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("ensemble", [False, True])
@pytest.mark.parametrize("damage", [_truncate, _flip_tensor_bytes])
def test_corrupt_checkpoint_fails_its_run_and_is_kept(tmp_path, capsys, damage, ensemble):
    """An interrupted run whose checkpoint is corrupt is not started over (which would overwrite
    the file): it fails with the checkpoint's one-line error, and the sweep goes on."""
    from iclab.cli import main

    extra = "ensemble = true" if ensemble else ""
    spec = write_spec(tmp_path / "s.toml", "n_tasks = [1, 2, 4]", extra)
    runs = load_spec(spec).runs()
    out = tmp_path / "sweep"
    run_sweep(load_spec(spec), out, ONE_THREAD, progress=False)
    store = SweepStore(out)
    corrupt, interrupted = store.run(runs[0].run_hash), store.run(runs[1].run_hash)
    for run in (corrupt, interrupted):
        (run.path / "eval.json").unlink()
    checkpoint = corrupt.path / "checkpoint.safetensors"
    damage(checkpoint)
    kept = checkpoint.read_bytes()

    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert checkpoint.read_bytes() == kept
    message = corrupt.failure()
    assert message.startswith(f"checkpoint {str(checkpoint)!r} is corrupt")
    assert "\n" not in message
    assert interrupted.status() == "complete" and store.run(runs[2].run_hash).status() == "complete"
    header, rows = status_rows(out)
    assert [row[1] for row in rows] == ["failed", "complete", "complete"]
    assert rows[0][header.index("note")] == message[:60]
    # Retrying fails it again, leaving the file as it is.
    outcome = run_sweep(load_spec(spec), out, ONE_THREAD, retry_failed=True, progress=False)
    assert outcome.failed == {runs[0].run_hash: message} and outcome.completed == []
    assert checkpoint.read_bytes() == kept
