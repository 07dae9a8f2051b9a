"""Train-step benchmark: ms per step, and model FLOP/s as a fraction of dense matmul FLOP/s.

One row per (preset, dtype): presets tiny, small, base at D = 8, K = 16 (tiny's n_dims and
noise_std overridden to the papers' D = 8, sigma^2 = D / 32 = 0.25), batch 64 / 128 / 256, in
float32 and in bfloat16 autocast. The step timed is the library's own: `iclab.training.train` runs
(task.train_batch, task.loss under autocast, backward, clipping, Adam step), and its `on_log`
callback, called after every step, timestamps segments of steps after a warm-up. Between segments
the same callback measures the reference matrix product, so model and matmul FLOP/s are measured
back to back in one process, at one thread count, under the same machine load; `ratio` is the
median over segments of (model FLOP/s / matmul FLOP/s) of adjacent measurements.

FLOP count of a train step (matrix products only; B sequences, K points, T = 2K tokens,
D = n_dims, E = n_embd, L = n_layers, MLP width 4E; a product (m, k) @ (k, n) is 2mkn FLOPs):

    forward
      embedding           2*B*T*(D+1)*E
      per layer   QKV     3 * 2*B*T*E^2
                  QK^T    2*B*T^2*E        (all heads: H * 2*T^2*(E/H) per sequence)
                  AV      2*B*T^2*E
                  proj    2*B*T*E^2
                  MLP     2 * 2*B*T*E*4E
                  total   24*B*T*E^2 + 4*B*T^2*E
      head                2*B*K*E          (read out at the K x positions only)
    backward = 2 x forward for every product (gradients of both operands), except the embedding,
    whose input (the data) needs no gradient: 1 x.
    train step = 3 x forward - embedding forward
              = 3 * (L*(24*B*T*E^2 + 4*B*T^2*E) + 2*B*K*E) + 4*B*T*(D+1)*E

Attention counts the full T x T scores although they are causal (the usual convention; a causal
kernel may skip up to half of them). Layer norms, GELU, softmax, bias adds, the loss and Adam are
not counted. This is exactly what torch.utils.flop_counter.FlopCounterMode counts for one forward
and backward of the real model (aten mm, addmm, bmm, with attention run through SDPA's math
backend, because the CPU flash-attention kernel has no FLOP formula there and would count 0);
tests/test_train_step_flops.py checks that.

The reference matmul is the MLP's first product, (B*T, E) @ (E, 4E) as nn.Linear computes it
(x @ W^T), in the row's dtype, on the training device. Targets (issue 5, small preset):
bfloat16 >= 0.5, float32 >= 0.6 of the reference matmul FLOP/s.

Rows also give `speed_vs_float32` (float32 ms per step / this row's), `page_faults_per_step`
(minor faults of the process during the timed steps: glibc returning freed activations to the OS
and faulting them in again next step), the torch thread count and the 1-minute load average, since
timings on a shared machine are only comparable within one run. quick: tiny and small only, with
shorter segments. On a CPU without AVX-512/AMX bf16 matrix products take a slow fallback (no
oneDNN), so a bf16 row meets its ratio against an equally slow bf16 matmul while running several
times slower than float32; read `speed_vs_float32` with it.

Run directly: `python -m benchmarks.train_step [--quick] [--threads N]`.
"""

import math
import os
import resource
import statistics
import time
import warnings

import torch

from iclab.config import RunConfig, load_config
from iclab.training import resolve_device, train

# (preset, batch size, overrides beyond D = 8, K = 16)
CASES = (
    ("tiny", 64, ("task.n_dims=8", "task.noise_std=0.5")),
    ("small", 128, ()),
    ("base", 256, ()),
)
QUICK_PRESETS = ("tiny", "small")
DTYPES = ("float32", "bfloat16")
TARGETS = {("small", "float32"): 0.6, ("small", "bfloat16"): 0.5}
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def train_step_flops(config: RunConfig) -> int:
    """Matrix-product FLOPs of one train step (forward + backward) of a GPT config; see module."""
    b, k, d = config.train.batch_size, config.task.n_points, config.task.n_dims
    e, layers = config.model.n_embd, config.model.n_layers
    t = 2 * k
    embedding = 2 * b * t * (d + 1) * e
    layer = 24 * b * t * e * e + 4 * b * t * t * e
    head = 2 * b * k * e
    return 3 * (embedding + layers * layer + head) - embedding


def benchmark_config(preset: str, dtype: str, batch_size: int, extra=(), steps: int = 1):
    overrides = [
        "task.n_dims=8",
        "task.n_points=16",
        f"train.batch_size={batch_size}",
        f'train.dtype="{dtype}"',
        f"train.steps={steps}",
        "train.log_every=1",
        f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}",
        *extra,
    ]
    return load_config(preset, overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _MatmulReference:
    """Times x @ W^T for (rows, width) @ (width, 4 width) in `dtype`: FLOP/s over >= `seconds`."""

    def __init__(self, rows: int, width: int, dtype: torch.dtype, device: torch.device):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(rows, width, generator=generator).to(device, dtype)
        self.w = torch.randn(4 * width, width, generator=generator).to(device, dtype)
        self.flops = 2 * rows * width * 4 * width
        self.device = device
        self.shape = f"({rows}, {width}) @ ({width}, {4 * width})"

    def __call__(self, seconds: float) -> float:
        torch.mm(self.x, self.w.t())  # warm
        _sync(self.device)
        calls, started = 0, time.perf_counter()
        while True:
            torch.mm(self.x, self.w.t())
            calls += 1
            if calls % 4 == 0 or calls < 4:
                _sync(self.device)
                elapsed = time.perf_counter() - started
                if elapsed >= seconds:
                    return calls * self.flops / elapsed


class _SegmentTimer:
    """on_log callback of train() (log_every = 1): after `warmup` steps, times segments of
    `segment` steps and measures the reference matmul between them."""

    def __init__(self, warmup: int, segment: int, matmul: _MatmulReference, device):
        self.warmup, self.segment, self.matmul, self.device = warmup, segment, matmul, device
        self.step_seconds: list[float] = []
        self.matmul_flops: list[float] = []
        self.page_faults: list[float] = []
        self.started = None
        self.faults_started = 0

    def __call__(self, done: int, loss: float) -> None:
        now = time.perf_counter()
        if done < self.warmup or (done - self.warmup) % self.segment:
            return
        if self.started is not None:
            seconds = (now - self.started) / self.segment
            self.step_seconds.append(seconds)
            self.page_faults.append((_minor_faults() - self.faults_started) / self.segment)
            self.matmul_flops.append(self.matmul(max(0.2, seconds * self.segment)))
        elif done == self.warmup:  # one matmul measurement before the first segment too
            self.matmul_flops.append(self.matmul(0.2))
        _sync(self.device)
        self.faults_started = _minor_faults()
        self.started = time.perf_counter()


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(preset: str, dtype: str, batch_size: int, extra=(), quick: bool = False) -> dict:
    """One row: time the library's train loop on this config against the reference matmul."""
    config = benchmark_config(preset, dtype, batch_size, extra)
    flops = train_step_flops(config)
    device = resolve_device(config.train.device)
    tokens = batch_size * 2 * config.task.n_points
    matmul = _MatmulReference(tokens, config.model.n_embd, _TORCH_DTYPES[dtype], device)
    # Step counts from a rough step-time estimate (half the matmul rate), so slow rows stay short.
    estimate = flops / (0.5 * matmul(0.2))
    budget = 0.5 if quick else 2.0
    warmup = min(10, max(1, math.ceil(budget / estimate)))
    segment = min(200, max(1, round(budget / estimate)))
    rounds = 2 if quick else 3
    timer = _SegmentTimer(warmup, segment, matmul, device)
    config = benchmark_config(preset, dtype, batch_size, extra, steps=warmup + rounds * segment)
    with warnings.catch_warnings():  # the slow-bf16 warning: speed_vs_float32 shows it
        warnings.filterwarnings("ignore", "train.dtype = 'bfloat16'", RuntimeWarning)
        train(config, progress=False, on_log=timer)
    # Pair each segment with the mean of the matmul measurements just before and after it.
    ratios = [
        flops / seconds / statistics.mean(timer.matmul_flops[i : i + 2])
        for i, seconds in enumerate(timer.step_seconds)
    ]
    step_seconds = statistics.median(timer.step_seconds)
    target = TARGETS.get((preset, dtype))
    ratio = statistics.median(ratios)
    return {
        "benchmark": "train_step",
        "case": f"{preset}/{dtype}",
        "preset": preset,
        "dtype": dtype,
        "batch_size": batch_size,
        "n_dims": config.task.n_dims,
        "n_points": config.task.n_points,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps_timed": len(timer.step_seconds) * segment,
        "ms_per_step": round(1e3 * step_seconds, 3),
        "train_gflop_per_step": round(flops / 1e9, 4),
        "model_gflops": round(flops / step_seconds / 1e9, 3),
        "matmul_gflops": round(statistics.median(timer.matmul_flops) / 1e9, 3),
        "matmul_shape": matmul.shape,
        "ratio": round(ratio, 3),
        "speed_vs_float32": 1.0,  # set by run() for the other dtypes
        "page_faults_per_step": round(statistics.median(timer.page_faults)),
        "target": target,
        "meets_target": None if target is None else ratio >= target,
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def run(quick: bool, threads: int | None = None) -> list[dict]:
    """All rows; quick: tiny and small only, shorter segments. threads: torch threads (default:
    leave torch's setting)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows = [
            measure(preset, dtype, batch_size, extra, quick)
            for preset, batch_size, extra in CASES
            if not quick or preset in QUICK_PRESETS
            for dtype in DTYPES
        ]
    finally:
        torch.set_num_threads(previous)
    float32_ms = {row["preset"]: row["ms_per_step"] for row in rows if row["dtype"] == "float32"}
    for row in rows:
        row["speed_vs_float32"] = round(float32_ms[row["preset"]] / row["ms_per_step"], 3)
    return rows


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    columns = ("case", "threads", "ms_per_step", "model_gflops", "matmul_gflops", "ratio")
    columns += ("target", "speed_vs_float32", "page_faults_per_step", "load_avg_1min")
    print("  ".join(f"{c:>20}" for c in columns))
    for row in run(args.quick, args.threads):
        print("  ".join(f"{row[c]!s:>20}" for c in columns), flush=True)


if __name__ == "__main__":
    _main()
