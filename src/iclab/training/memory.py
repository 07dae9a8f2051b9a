"""Refuse, before any work, a run whose memory cannot fit on the device that trains it.

`estimate_memory(configs)` estimates, in bytes, what a run (or a stacked ensemble: the members'
estimates summed) needs at its peak, in four parts: parameters with gradients and Adam state,
the training batch's activations, the task pool, and one evaluation chunk through the model and
the baselines. The formulas are the task family's (Family.memory, in iclab.families, documented
there), computed in Python ints from the config's integer settings, so huge settings cannot
overflow. The estimate needs to be right only within a small factor (1.4-2.2x the measured peak
on small GPT runs, tests/test_memory_estimate.py): it is compared with the memory the device has
(CPU: MemAvailable of /proc/meminfo, else os.sysconf; CUDA: torch.cuda.mem_get_info), and a run
whose estimate exceeds it is refused with a ConfigError naming the setting whose reduction to 1
shrinks the estimate most, the estimate and its largest part. Each process checks its own device
(a sweep worker checks when it starts its run), so concurrent runs are not summed.
"""

import os

import torch

from iclab.families import family_of
from iclab.validation import ConfigError


def sizes_of(config) -> dict[str, int]:
    """Every integer setting of a config, by its dotted name ("task.n_dims")."""
    return {
        f"{section}.{name}": value
        for section, values in config.to_dict().items()
        for name, value in values.items()
        if isinstance(value, int) and not isinstance(value, bool)
    }


def _parts(config, sizes: dict[str, int], threads: int) -> dict[str, int]:
    s = dict(sizes)
    n_sequences = max(config.eval.n_sequences, config.train.eval_sequences)
    s["chunk"] = min(s["eval.eval_batch_size"], n_sequences)
    return family_of(config.task).memory(config, s, threads)


def estimate_memory(configs: list, threads: int | None = None) -> dict[str, int]:
    """Bytes per part (PARAMETERS, ACTIVATIONS, POOL, EVALUATION) that training and evaluating
    `configs` (one run, or the members of a stacked ensemble) needs; see the module docstring."""
    threads = torch.get_num_threads() if threads is None else threads
    total: dict[str, int] = {}
    for config in configs:
        for part, size in _parts(config, sizes_of(config), threads).items():
            total[part] = total.get(part, 0) + size
    return total


def available_memory(device: torch.device) -> int | None:
    """Bytes the device can still allocate (CPU: MemAvailable; CUDA: free memory), or None when
    it cannot be told."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: int) -> str:
    """1.5 GiB; exact for any int (no float overflow)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    index = 0
    while index < len(units) - 1 and n >= 1024 ** (index + 1):
        index += 1
    if n.bit_length() > 1000:  # beyond what a float holds in EiB
        return f"about 2^{n.bit_length() - 1} B"
    return f"{n / 1024**index:.1f} {units[index]}"


def _dominant(configs: list, threads: int) -> tuple[str, int]:
    """The setting whose reduction to 1 shrinks the estimate most."""
    config = configs[0]
    sizes = sizes_of(config)
    best, best_total = None, None
    for key in sizes:
        if sizes[key] <= 1:
            continue  # at its minimum already, or 0 = automatic
        reduced = dict(sizes, **{key: 1})
        total = sum(_parts(config, reduced, threads).values())
        if best_total is None or total < best_total:
            best, best_total = key, total
    return best, sizes[best]


def check_memory(configs: list, device: torch.device) -> None:
    """Raise ConfigError when training and evaluating `configs` on `device` needs more memory
    than it has available (see the module docstring); do nothing when that cannot be told."""
    available = available_memory(device)
    if available is None:
        return
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    parts = estimate_memory(configs, threads)
    needed = sum(parts.values())
    if needed <= available:
        return
    key, value = _dominant(configs, threads)
    largest = max(parts, key=parts.get)
    who = "the run" if len(configs) == 1 else f"the {len(configs)}-member ensemble"
    where = "the CPU" if device.type == "cpu" else f"the CUDA device {device}"
    raise ConfigError(
        f"{key} = {value!r} is not allowed: {who} needs about {format_bytes(needed)} of memory "
        f"({largest}: {format_bytes(parts[largest])}) and {where} has "
        f"{format_bytes(available)} available"
    )
