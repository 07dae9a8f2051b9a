"""The device check's plumbing (benchmarks/gpu_check.sh): its CPU smoke run writes every part,
and a part that fails or overruns its time guard is reported while the next part still runs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import PARTS, SMOKE_GUARD_SECONDS, run_parts

ROOT = Path(__file__).resolve().parent.parent


def test_the_cpu_smoke_run_writes_every_part(tmp_path):
    out = tmp_path / "check"
    command = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", str(out)]
    environment = {**os.environ, "PYTHON": sys.executable}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["parts"]) == list(PARTS)
    assert all(part["status"] == "ok" for part in report["parts"].values())
    rows = report["parts"]["train_step"]["result"]["rows"]
    assert {(row["mode"], row["members"]) for row in rows} >= {("single", 1), ("eager", 2)}
    assert all(row["ms_per_step"] > 0 and row["model_tflops"] > 0 for row in rows)
    assert report["parts"]["dmmse"]["result"]["seconds"] > 0
    deltas = report["parts"]["training"]["result"]["delta_at_end"]
    assert set(deltas) == {"4096", "inf"} and all(deltas[m] for m in deltas)
    projected = report["parts"]["projection"]["result"]
    assert projected["small"]["runs"] == 44 and projected["small"]["ensembles"] == 2
    assert [t["target"] for t in report["targets"]] == [
        "ensemble_speedup", "small_sweep_gpu_hours", "base_sweep_gpu_hours", "dmmse_seconds"
    ]  # fmt: skip
    assert all(t["value"] is not None and t["pass"] is None for t in report["targets"])
    log = (out / "gpu_check.log").read_text()
    assert all(f"-- {name}: ok" in log for name in PARTS)
    before = (out / "gpu_check.json").read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert again.returncode == 2 and "exists" in again.stderr
    assert (out / "gpu_check.json").read_bytes() == before  # nothing overwritten


def test_a_failing_or_overrunning_part_is_reported_and_the_next_part_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    lines = []
    guards = {**SMOKE_GUARD_SECONDS, "cuda_tests": 0.5}  # too short to even start python
    # projection reads the train_step and dmmse results, which are not there: it fails
    report = run_parts(["cuda_tests", "projection", "dmmse"], tmp_path, True, guards, lines.append)
    parts = report["parts"]
    assert parts["cuda_tests"]["status"] == "failed"
    assert "time guard" in parts["cuda_tests"]["error"]
    assert parts["projection"]["status"] == "failed"
    assert "train_step.json" in parts["projection"]["error"]
    assert parts["dmmse"]["status"] == "ok"
    assert any("-- projection: failed" in line for line in lines)


def test_a_failing_train_step_row_is_reported_and_the_rows_measured_are_kept(tmp_path, monkeypatch):
    from benchmarks import gpu_check

    measure = gpu_check.measure_row

    def failing_second(preset, dtype, mode, members, *rest):
        if (mode, members) == ("stacked", 1):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return measure(preset, dtype, mode, members, *rest)

    monkeypatch.setattr(gpu_check, "measure_row", failing_second)
    with pytest.raises(RuntimeError, match="1 row"):
        gpu_check.train_step(True, tmp_path)
    kept = json.loads((tmp_path / "train_step.json").read_text())["result"]
    assert [row["case"] for row in kept["failed_rows"]] == ["tiny/float32/stacked/N=1/batch=16"]
    assert "simulated" in kept["failed_rows"][0]["error"]
    # the rows after it ran too (or were skipped by the guard on a loaded machine)
    ran = len(kept["rows"]) + len(kept["skipped_by_time_guard"])
    assert kept["rows"] and ran == len(gpu_check.SMOKE_ROWS) - 1


def test_a_guarded_command_is_stopped_with_its_grandchildren(tmp_path, monkeypatch):
    # As in the check: a part (own group) runs a command in its group (as cuda_tests runs
    # pytest), which writes its pid and sleeps; the part's guard ends first.
    from benchmarks.gpu_check import run_guarded

    monkeypatch.chdir(ROOT)
    pid_file = tmp_path / "pid"
    sleeper = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    )
    part = (
        "import sys; from benchmarks.gpu_check import run_guarded; "
        f"run_guarded([sys.executable, '-c', {sleeper!r}], 120, own_group=False)"
    )
    returncode, _ = run_guarded([sys.executable, "-c", part], timeout=15)
    assert returncode is None
    grandchild = int(pid_file.read_text())
    for _ in range(100):  # it is killed at once; its reaping may take a moment
        status = Path(f"/proc/{grandchild}/status")
        if not status.exists() or "zombie" in status.read_text():
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"process {grandchild} still runs")


def test_a_guarded_command_hands_on_its_lines_as_they_come():
    from benchmarks.gpu_check import run_guarded

    seen = []
    script = "import time; print('row 1', flush=True); time.sleep(60)"
    returncode, output = run_guarded([sys.executable, "-c", script], 3, on_line=seen.append)
    assert returncode is None  # stopped by the guard, yet its line came through
    assert seen == ["row 1"] and output == "row 1\n"
