"""Performance benchmarks, run as `python -m benchmarks [NAME ...] [--quick] [--json PATH]`.

Never part of the test suite. Each module benchmarks/<name>.py defines `run(quick: bool) ->
list[dict]`: one flat dict per measured case, with at least "benchmark", "case" and the measured
numbers (plus targets and pass/fail where the project sets one). `quick` shrinks every size so the
whole module runs in seconds (a smoke test, numbers not meaningful). Register a new module with one
line in benchmarks/__main__.py's BENCHMARKS.

Timings on a shared machine are noisy: compare cases measured in one run (ratios), and read the
"load_1min" column (the machine's load average when the case started) before trusting seconds.
This module holds helpers for the benchmark modules: `measure` (wall and CPU seconds, peak
memory), `best_seconds`, `torch_threads`, `load_1min` and `environment`.
"""

import gc
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

MIB = 2**20
SAMPLE_SECONDS = 0.005


def _rss_reader() -> tuple[Callable[[], int] | None, str]:
    """A function returning this process's current RSS in bytes, and its name."""
    try:
        import psutil

        process = psutil.Process()
        return (lambda: process.memory_info().rss), "psutil"
    except ImportError:
        pass
    if os.path.exists("/proc/self/statm"):
        page = os.sysconf("SC_PAGE_SIZE")

        def read() -> int:
            with open("/proc/self/statm") as file:
                return int(file.read().split()[1]) * page

        return read, "/proc/self/statm"
    return None, "none"


def _max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS, where this slightly overstates nothing we use).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(fn: Callable[[], Any]) -> tuple[Any, dict]:
    """Run fn() once: (its result, {"seconds", "cpu_seconds", "peak_mib", "rss_before_mib",
    "memory_method"}).

    peak_mib: the peak resident set size during the call minus rss_before_mib, the size just
    before it (interpreter, torch, inputs, and memory freed earlier but kept by the allocator, which
    the call may reuse). The peak is the process's lifetime peak (ru_maxrss) if that rose during the
    call (then exact); otherwise the highest RSS sampled every 5 ms by a background thread (psutil,
    else /proc/self/statm); without a sampler, only the rise of ru_maxrss (0 if none).
    """
    gc.collect()
    read_rss, method = _rss_reader()
    base = read_rss() if read_rss else _max_rss_bytes()
    max_before = _max_rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], read_rss())

    sampler = threading.Thread(target=sample, daemon=True) if read_rss else None
    if sampler:
        sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        result = fn()
    finally:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stop.set()
        if sampler:
            sampler.join()
    max_after = _max_rss_bytes()
    if max_after > max_before:
        peak_bytes, method = max_after, "ru_maxrss"
    elif read_rss:
        peak_bytes, method = max(peak[0], read_rss()), f"{method} sampled"
    else:
        peak_bytes, method = base, "ru_maxrss (no rise)"
    stats = {
        "seconds": wall,
        "cpu_seconds": cpu,
        "peak_mib": max(0, peak_bytes - base) / MIB,
        "rss_before_mib": base / MIB,
        "memory_method": method,
    }
    return result, stats


def best_seconds(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """(fn()'s last result, the lowest wall time of `repeats` calls): for calls of milliseconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch.set_num_threads(n) inside the block, the previous count after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_1min() -> float | None:
    """The machine's 1-minute load average (None where the OS does not report it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def environment() -> dict:
    """What the numbers depend on: versions, CPU count, torch threads."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_1min": load_1min(),
    }
