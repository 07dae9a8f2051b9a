"""The device check: `benchmarks/gpu_check.sh [--cpu-smoke] OUTDIR` (README, "GPU").

Five parts, each run in its own process group under its own time guard (a crash, a hang or an error is
that part's `failed`, with its error, and the check goes on to the next part):

- cuda_tests: the tests that need a GPU (tests/test_cuda.py, pytest without the project's addopts);
- train_step: rows of ms/step, aggregate member-steps/s, model FLOP/s and its fraction of the dense
  matrix-product rate of the row's dtype measured in the same process (the train-step
  benchmark's reference product at GPU size; fp32 with TF32 off), for the small and base presets in bf16 autocast and fp32: one model alone
  (the eager single step) and stacked ensembles of N = 1, 8, 22, 44 (the compiled step on CUDA).
  Rows run in order of importance and stop when the part's time is nearly spent; compile and
  warm-up time is reported apart from the timed steps;
- dmmse: dMMSE at M = 2^20 on 4096 sequences (seconds, peak device memory);
- training: the small model at M = 2^12 and M = infinity trained as a stacked pair for 20k steps
  (bf16, compiled), with its Delta metrics at the end;
- projection: the wall time of `iclab reproduce task-diversity --preset small` and `--preset base`
  from the measured ensemble rows, the periodic and final evaluations included (dMMSE over each
  run's pool, at the measured dMMSE rate).

It prints its progress, writes OUTDIR/gpu_check.json (every part, its status, seconds, result or
error, and the targets with pass/fail) and OUTDIR/gpu_check.log; its exit status is 0 when every
part ran, 1 when a part failed (a missed target is reported, not an error), 2 for bad usage. `--cpu-smoke` runs every part at tiny sizes on the
CPU in well under a minute: it checks the script's plumbing, not the GPU path.

The GPU machine has PyTorch, numpy, matplotlib, safetensors, tqdm and pytest but no iclab install:
run with PYTHONPATH=src from the repository root (the shell script does).
"""

import argparse
import gc
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.train_step import _MatmulReference, _sync

PARTS = ("cuda_tests", "train_step", "dmmse", "training", "projection")
GUARD_SECONDS = {  # 290 s in all; compiles (cold, tens of seconds each) dominate the first two
    "cuda_tests": 75,
    "train_step": 100,
    "dmmse": 15,
    "training": 90,
    "projection": 10,
}
SMOKE_GUARD_SECONDS = {
    "cuda_tests": 30,
    "train_step": 40,
    "dmmse": 20,
    "training": 30,
    "projection": 15,
}
REPORT_FILE, LOG_FILE = "gpu_check.json", "gpu_check.log"
DEADLINE_VARIABLE = "GPU_CHECK_PART_DEADLINE"  # when the part's guard ends (seconds since epoch)
TARGETS = {  # issue 14
    "ensemble_speedup": 20.0,  # small, bf16, N = 22 against one member alone
    "small_sweep_gpu_hours": 1.0,
    "base_sweep_gpu_hours": 8.0,
    "dmmse_seconds": 5.0,  # M = 2^20, 4096 sequences
}
SPEEDUP = ("small", "bfloat16", 22, 256)  # (preset, dtype, members, batch) of the speed-up target
SMOKE_SPEEDUP = ("tiny", "float32", 2, 16)
FULL_ROWS = [  # (preset, dtype, mode, members, batch size), most important first
    ("small", "bfloat16", "single", 1, 256),
    ("small", "bfloat16", "stacked", 22, 256),
    ("small", "bfloat16", "stacked", 1, 256),
    ("small", "bfloat16", "stacked", 22, 512),
    ("base", "bfloat16", "stacked", 22, 256),
    ("base", "bfloat16", "stacked", 22, 512),
    ("base", "bfloat16", "single", 1, 256),
    ("small", "float32", "single", 1, 256),
    ("small", "float32", "stacked", 22, 256),
    ("small", "bfloat16", "stacked", 8, 256),
    ("small", "bfloat16", "stacked", 44, 256),
    ("base", "float32", "stacked", 22, 256),
    ("small", "float32", "stacked", 1, 256),
    ("small", "float32", "stacked", 8, 256),
    ("small", "float32", "stacked", 44, 256),
    ("base", "bfloat16", "stacked", 1, 256),
    ("base", "bfloat16", "stacked", 8, 256),
    ("base", "bfloat16", "stacked", 44, 256),
    ("base", "float32", "single", 1, 256),
    ("base", "float32", "stacked", 1, 256),
    ("base", "float32", "stacked", 8, 256),
    ("base", "float32", "stacked", 44, 256),
]
SMOKE_ROWS = [
    ("tiny", "float32", "single", 1, 16),
    ("tiny", "float32", "stacked", 1, 16),
    ("tiny", "float32", "stacked", 2, 16),
    ("tiny", "bfloat16", "stacked", 2, 16),
]
SMOKE_OVERRIDES = ("model.n_layers=1", "model.n_embd=16")


# -- the parts ----------------------------------------------------------------------------------
def cuda_tests(smoke: bool, out: Path) -> dict:
    command = [sys.executable, "-m", "pytest", "-o", "addopts=", "-v", "-p", "no:cacheprovider"]
    # pytest stops 5 s before the part's guard (counted from the part's start, imports included),
    # so that its own report still comes back; it stays in the part's process group
    timeout = max(1.0, float(os.environ.get(DEADLINE_VARIABLE, "inf")) - time.time() - 5)
    returncode, output = run_guarded([*command, "tests/test_cuda.py"], timeout, own_group=False)
    lines = output.strip().splitlines()
    print("\n".join(lines[-25:]))
    summary = lines[-1] if lines else ""
    if returncode is None:
        raise RuntimeError(f"pytest stopped after {timeout:.0f} s; last line: {summary}")
    if returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest exit status {returncode}: {summary}")
    return {"summary": summary, "cuda": torch.cuda.is_available()}


def run_guarded(
    command: list[str],
    timeout: float,
    own_group: bool = True,
    env: dict | None = None,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int | None, str]:
    """(exit status, stdout and stderr) of command, each line also handed to on_line as it comes;
    after timeout seconds it is killed (exit status None). With own_group (a part of the check),
    the command runs in a process group of its own, which is killed whole when it ends or times
    out: compile workers and other grandchildren included, so nothing keeps the device busy
    afterwards. Without (a command a part runs), it stays in the caller's group, so that killing
    the part's group kills it too."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=own_group,
        env=env,
    )
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        returncode = None
        process.kill()
    finally:
        if own_group:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever the command left running
            except ProcessLookupError:
                pass
    process.wait()
    reader.join(timeout=5)  # a grandchild outside the group may still hold the pipe open
    return returncode, "".join(lines)


def _device(smoke: bool) -> torch.device:
    if smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run with --cpu-smoke on a CPU")
    return torch.device("cuda")


def matmul_flops(dtype: torch.dtype, device: torch.device, size: int, seconds: float) -> float:
    """Dense (size, size / 4) @ (size / 4, size) FLOP/s in dtype over at least `seconds`: the
    train-step benchmark's reference product, at a size that fills a GPU."""
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows against true fp32
    return _MatmulReference(size, size // 4, dtype, device)(seconds)


def row_configs(preset: str, dtype: str, members: int, batch_size: int, smoke: bool, steps: int):
    from iclab.config import load_config

    overrides = [
        f'train.dtype="{dtype}"',
        f"train.batch_size={batch_size}",
        f"train.steps={steps}",
        "train.compile=true",
        *(SMOKE_OVERRIDES if smoke else ()),
    ]
    return [load_config(preset, [*overrides, f"train.seed={seed}"]) for seed in range(members)]


def time_steps(configs, device: torch.device, mode: str, warmup: int, steps: int) -> dict:
    """Warm-up (compile and capture) steps, then `steps` timed steps with one sync at the end."""
    from iclab.families import make_task
    from iclab.training import build_model
    from iclab.training.optimization import build_optimizer, learning_rate
    from iclab.training.steps import SingleStep, StackedStep

    models = [build_model(config, device) for config in configs]
    optimizers = [build_optimizer(model, configs[0].train) for model in models]
    tasks = [make_task(config.task, device) for config in configs]
    if mode == "single":
        stepper = SingleStep(models[0], optimizers[0], tasks[0], configs[0], device)
    else:
        stepper = StackedStep(models, optimizers, tasks, configs, device, device.type == "cuda")
    train = configs[0].train
    losses = torch.zeros(len(configs), device=device)
    started = time.perf_counter()
    for step in range(warmup):
        losses += stepper.step(step, learning_rate(train, step)).detach()
    _sync(device)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(warmup, warmup + steps):
        losses += stepper.step(step, learning_rate(train, step)).detach()
    _sync(device)
    seconds = (time.perf_counter() - started) / steps
    if not all(math.isfinite(v) for v in losses.tolist()):
        raise RuntimeError(f"non-finite training loss in {mode} steps: {losses.tolist()}")
    return {"seconds_per_step": seconds, "warmup_seconds": warmup_seconds}


def train_step(smoke: bool, out: Path) -> dict:
    device = _device(smoke)
    guard = (SMOKE_GUARD_SECONDS if smoke else GUARD_SECONDS)["train_step"]
    size, seconds = (256, 0.2) if smoke else (8192, 1.0)
    peak = {
        name: matmul_flops(dtype, device, size, seconds)
        for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32))
    }
    result = {
        "matmul_tflops": {k: round(v / 1e12, 3) for k, v in peak.items()},
        "matmul_size": size,
        "rows": [],
        "failed_rows": [],
        "skipped_by_time_guard": [],
    }
    started, longest = time.perf_counter(), 0.0
    for spec in SMOKE_ROWS if smoke else FULL_ROWS:
        case = "{}/{}/{}/N={}/batch={}".format(*spec)
        if time.perf_counter() - started + longest > 0.8 * guard:  # the guard would cut it off
            result["skipped_by_time_guard"].append(case)
            continue
        row_started = time.perf_counter()
        try:  # a row that fails (out of memory, a compile error) is reported; the others run
            measured = {"case": case, **measure_row(*spec, smoke, device, peak)}
            print(json.dumps(measured), flush=True)
            result["rows"].append(measured)
        except Exception as error:
            traceback.print_exc()
            result["failed_rows"].append(
                {"case": case, "error": f"{type(error).__name__}: {error}"}
            )
            gc.collect()  # what the failed row held (an out-of-memory error's tensors, its graphs)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        longest = max(longest, time.perf_counter() - row_started)
        write_part(out, "train_step", result)  # the rows so far, kept if the guard stops the part
    if result["failed_rows"]:
        raise RuntimeError(f"{len(result['failed_rows'])} row(s) failed: {result['failed_rows']}")
    return result


def measure_row(preset, dtype, mode, members, batch_size, smoke, device, peak) -> dict:
    """One train-step row: warm-up (compile and capture) apart from the timed steps."""
    from benchmarks.train_step import train_step_flops

    warmup, steps = (2, 5) if smoke else (20, 200)
    configs = row_configs(preset, dtype, members, batch_size, smoke, warmup + steps)
    timing = time_steps(configs, device, mode, warmup, steps)
    flops = members * train_step_flops(configs[0]) / timing["seconds_per_step"]
    return {
        "preset": preset,
        "dtype": dtype,
        "mode": mode if mode == "single" else "compiled" if device.type == "cuda" else "eager",
        "members": members,
        "batch_size": batch_size,
        "ms_per_step": round(1e3 * timing["seconds_per_step"], 3),
        "member_steps_per_s": round(members / timing["seconds_per_step"], 1),
        "model_tflops": round(flops / 1e12, 4),
        "fraction_of_matmul": round(flops / peak[dtype], 5),
        "warmup_seconds": round(timing["warmup_seconds"], 2),
        "timed_seconds": round(timing["seconds_per_step"] * steps, 2),
    }


def dmmse(smoke: bool, out: Path) -> dict:
    from iclab.config import load_config
    from iclab.estimators.pool_posterior import DMMSE
    from iclab.tasks.regression import RegressionTask

    device = _device(smoke)
    n_tasks, n_sequences = (2**12, 256) if smoke else (2**20, 4096)
    config = load_config("small", [f"task.n_tasks={n_tasks}"]).task
    task = RegressionTask(config, device)
    xs, ys = task.eval_batch("pretrain", 0, 0, n_sequences)
    estimator = DMMSE(task.pool, config.noise_std)
    estimator(xs[:32], ys[:32])  # warm
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    predictions = estimator(xs, ys)
    _sync(device)
    seconds = time.perf_counter() - started
    if not bool(torch.isfinite(predictions).all()):
        raise RuntimeError("dMMSE predictions are not finite")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "n_tasks": n_tasks,
        "n_sequences": n_sequences,
        "seconds": round(seconds, 3),
        "seconds_per_sequence_task": seconds / (n_sequences * n_tasks),
        "peak_memory_gib": None if peak is None else round(peak / 2**30, 3),
    }


def training(smoke: bool, out: Path) -> dict:
    from iclab.config import load_config
    from iclab.evaluation import evaluate_model, flat_means
    from iclab.training import train_runs

    device = _device(smoke)
    preset, steps, dtype = ("tiny", 100, "float32") if smoke else ("small", 20_000, "bfloat16")
    overrides = [
        f"train.steps={steps}",
        f'train.dtype="{dtype}"',
        "train.compile=true",
        f"train.log_every={min(1000, steps)}",
        f'train.device="{device.type}"',
        *(SMOKE_OVERRIDES if smoke else ()),
    ]
    configs = [load_config(preset, [*overrides, f"task.n_tasks={m}"]) for m in (4096, '"inf"')]
    started = time.perf_counter()
    results = train_runs(configs, progress=False)
    seconds = time.perf_counter() - started
    evaluations = {}
    for config, result in zip(configs, results, strict=True):
        evaluation = evaluate_model(result.model, result.task, 1024 if smoke else 4096, seed=0)
        means = flat_means(evaluation)
        label = "inf" if config.task.n_tasks is None else str(config.task.n_tasks)
        evaluations[label] = {k: round(v, 5) for k, v in means.items() if "delta" in k}
        evaluations[label]["final_train_loss"] = round(result.final_loss, 5)
    return {"preset": preset, "steps": steps, "dtype": dtype, "seconds": round(seconds, 1),
            "delta_at_end": evaluations}  # fmt: skip


def _seconds_per_step(rows: list[dict], preset: str, dtype: str, members: int, batch_size: int):
    """Seconds per step of a stacked ensemble of `members` at `batch_size`: the measured row, or
    the nearest measured one scaled linearly in members and batch size where it has fewer
    (then marked estimated). (None, None) where no stacked row of preset and dtype was measured."""
    stacked = [r for r in rows if r["preset"] == preset and r["dtype"] == dtype]
    stacked = [r for r in stacked if r["mode"] != "single"]
    if not stacked:
        return None, None
    nearest = min(
        stacked, key=lambda r: (abs(r["batch_size"] - batch_size), abs(r["members"] - members))
    )
    scale = max(1.0, members / nearest["members"]) * max(1.0, batch_size / nearest["batch_size"])
    estimated = (nearest["members"], nearest["batch_size"]) != (members, batch_size)
    return nearest["ms_per_step"] / 1e3 * scale, estimated


def projection(smoke: bool, out: Path) -> dict:
    from iclab.sweeps.spec import load_spec
    from iclab.training import ensemble_key

    rows = json.loads((out / "train_step.json").read_text())["result"]["rows"]
    rate = json.loads((out / "dmmse.json").read_text())["result"]["seconds_per_sequence_task"]
    specs = Path("src/iclab/presets/sweeps")
    projected = {}
    for preset in ("small", "base"):
        spec = load_spec(specs / f"task_diversity_{preset}.toml")
        groups: dict = {}
        for run in spec.runs():
            groups.setdefault(ensemble_key(run.config) or run.run_hash, []).append(run.config)
        train_hours, eval_hours, estimated = 0.0, 0.0, False
        for configs in groups.values():
            c = configs[0]
            measured = "tiny" if smoke else preset  # the smoke run measures tiny rows only
            seconds, scaled = _seconds_per_step(
                rows, measured, c.train.dtype, len(configs), c.train.batch_size
            )
            if seconds is None:
                raise RuntimeError(f"no stacked row measured for {measured}/{c.train.dtype}")
            estimated = estimated or scaled
            train_hours += c.train.steps * seconds / 3600
            for config in configs:  # dMMSE on both distributions over the run's pool
                pool = config.task.n_tasks or 0
                n_evals = len(config.train.evaluation_steps())
                sequences = 2 * (n_evals * config.train.eval_sequences + config.eval.n_sequences)
                eval_hours += sequences * pool * rate / 3600
        projected[preset] = {
            "runs": sum(len(g) for g in groups.values()),
            "ensembles": len(groups),
            "train_hours": round(train_hours, 3),
            "evaluation_hours": round(eval_hours, 3),
            "total_gpu_hours": round(train_hours + eval_hours, 3),
            "from_scaled_rows": estimated,
        }
    return projected


PART_FUNCTIONS = {name: globals()[name] for name in PARTS}


# -- the driver ---------------------------------------------------------------------------------
def targets(report: dict) -> list[dict]:
    """Each issue-14 target with its measured value and pass/fail (None where unmeasured)."""

    def result(part):  # a failed part's partial result (train_step's rows so far) counts
        return report["parts"].get(part, {}).get("result")

    checks = []
    steps = result("train_step")
    value = None
    if steps:  # the ensemble's member-steps/s against the faster of single and N = 1 alone
        preset, dtype, members, batch_size = SMOKE_SPEEDUP if report["cpu_smoke"] else SPEEDUP
        rows = [r for r in steps["rows"] if (r["preset"], r["dtype"]) == (preset, dtype)]
        rows = [r for r in rows if r["batch_size"] == batch_size]
        alone = [r["member_steps_per_s"] for r in rows if r["members"] == 1]
        ensemble = [r["member_steps_per_s"] for r in rows if r["members"] == members]
        if alone and ensemble:
            value = round(ensemble[0] / max(alone), 2)
    checks.append(("ensemble_speedup", value, "at least"))
    projected = result("projection") or {}
    for preset in ("small", "base"):
        hours = projected.get(preset, {}).get("total_gpu_hours")
        checks.append((f"{preset}_sweep_gpu_hours", hours, "at most"))
    dmmse_result = result("dmmse")
    checks.append(("dmmse_seconds", dmmse_result and dmmse_result["seconds"], "below"))
    rows = []
    for name, measured, sense in checks:
        target = TARGETS[name]
        passed = None
        if measured is not None and not report["cpu_smoke"]:
            passed = measured >= target if sense == "at least" else measured <= target
        rows.append({"target": name, "value": measured, "goal": f"{sense} {target}",
                     "pass": passed})  # fmt: skip
    return rows


def run_parts(parts, out: Path, smoke: bool, guards: dict, log) -> dict:
    """Each part in a child process under its guard; a failure is recorded and the next runs."""
    report = {"cpu_smoke": smoke, "parts": {}}
    for name in parts:
        log(f"== {name} (guard {guards[name]} s)")
        started = time.perf_counter()
        command = [sys.executable, "-m", "benchmarks.gpu_check", "--part", name, str(out)]
        command += ["--cpu-smoke"] if smoke else []
        deadline = {DEADLINE_VARIABLE: str(time.time() + guards[name])}
        environment = {**os.environ, **deadline, "PYTHONUNBUFFERED": "1"}  # lines as they come
        returncode, output = run_guarded(command, guards[name], env=environment, on_line=log)
        part_file = out / f"{name}.json"
        entry = {"status": "ok" if returncode == 0 and part_file.exists() else "failed"}
        if part_file.exists():  # a failed part may have written what it measured so far
            entry["result"] = json.loads(part_file.read_text())["result"]
        if returncode is None:
            entry["error"] = f"time guard: stopped after {guards[name]} s"
        elif entry["status"] == "failed":
            entry["error"] = (output.strip().splitlines() or [f"exit {returncode}"])[-1]
        entry["seconds"] = round(time.perf_counter() - started, 1)
        log(f"-- {name}: {entry['status']} in {entry['seconds']} s"
            + (f": {entry['error']}" if "error" in entry else ""))  # fmt: skip
        report["parts"][name] = entry
    return report


def _run_one_part(name: str, out: Path, smoke: bool) -> int:
    try:
        result = PART_FUNCTIONS[name](smoke, out)
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None
    print(json.dumps(result))
    write_part(out, name, result)
    return 0


def write_part(out: Path, name: str, result: dict) -> None:
    """OUTDIR/NAME.json, atomically: a part stopped by its guard leaves the last one whole."""
    path = out / f"{name}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"result": result}, indent=1))
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_check.sh", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="where gpu_check.json and gpu_check.log go")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.part:
        return _run_one_part(args.part, args.out, args.cpu_smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / REPORT_FILE).exists():
        print(f"{args.out / REPORT_FILE} exists: give an empty or new OUTDIR", file=sys.stderr)
        return 2
    guards = SMOKE_GUARD_SECONDS if args.cpu_smoke else GUARD_SECONDS
    with open(args.out / LOG_FILE, "w") as log_file:

        def log(text: str) -> None:
            print(text, flush=True)
            log_file.write(text + "\n")
            log_file.flush()

        started = time.perf_counter()
        report = run_parts(PARTS, args.out, args.cpu_smoke, guards, log)
        report["environment"] = {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count(),
        }
        report["targets"] = targets(report)
        report["seconds"] = round(time.perf_counter() - started, 1)
        for row in report["targets"]:
            verdict = {True: "PASS", False: "FAIL", None: "-"}[row["pass"]]
            log(f"target {row['target']}: {row['value']} ({row['goal']}): {verdict}")
        log(f"done in {report['seconds']} s")
    (args.out / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
