"""Refuse, before any work, a run whose memory cannot fit on the device that trains it.

`estimate_memory(configs)` is an upper-bound-ish estimate, in bytes (each family's
Family.memory gives its parts), of what a run (or a stacked
ensemble of len(configs) members: every part times the member count) needs at its peak, in four
parts. Everything is computed in Python ints, so huge settings cannot overflow. With B the
training batch, C the evaluation chunk (eval.eval_batch_size, at most the larger of
eval.n_sequences and train.eval_sequences), N layers, H heads, E the width, D the task's n_dims,
and 4 bytes a float32 value (8 for complex64 states; 16 for the float64 / complex128 baselines):

  parameters   P parameters x 5 copies (weights, gradients, Adam's two moments, a foreach
               temporary) x 4 bytes
  training     the batch's saved activations, (N + 1) layers (the +1: gradients in flight in the
               backward pass) of
                 gpt:               20 B L E + 2 B H L^2 floats, L = 2 K (interleaved x, y tokens),
                                    plus 6 B K (D + 1) floats of inputs and tokens
                 linear_attention:  8 B L E + 4 B H L^2 values, L = n_steps (pe_only: one layer of
                                    4 B L^2 + 4 B L D values)
                 diagonal_attention: 2 x (3 B H L^2 + 2 B L^2 D) values (its einsum keeps a
                                    (batch, L, L, D) intermediate; x 2 for the backward pass)
               plus the sampled batch (autoregressive: 3 B (L + 1) D + 2 B D^2 values, the W's)
  task pool    regression with n_tasks = M: 2 M D floats (drawing it holds two copies)
  evaluation   C sequences through the model without saved activations (one layer's worth,
               as above without the (N + 1)) and the baselines: regression Ridge 3 C K D^2
               floats (prefix Gram matrices, their temporaries and the solve), dMMSE its bounded
               tiles (2 x min(2^25, 32 M) floats per worker thread); autoregressive 4 C D^2 +
               3 C L^2 + 4 C L D float64 / complex128 values (least squares, one-step GD)

The estimate needs to be right only within a small factor: it is compared with the memory the
device has (CPU: MemAvailable of /proc/meminfo, else os.sysconf; CUDA: torch.cuda.mem_get_info),
and a run whose estimate exceeds it is refused with a ConfigError that names the setting whose
reduction to its minimum shrinks the estimate most, the estimate and its largest part. On a
small GPT run the estimate is about 1.5-3x the measured peak (tests/test_memory_estimate.py).
"""

import os

import torch

from iclab.families import family_of
from iclab.validation import ConfigError

# The integer settings an estimate reads, as they are named in configs and messages.
_SETTINGS = {
    "task": ("n_dims", "n_points", "n_steps", "n_tasks"),
    "model": ("n_layers", "n_embd", "n_heads"),
    "train": ("batch_size",),
    "eval": ("eval_batch_size",),
}


def sizes_of(config) -> dict[str, int]:
    """The integer settings of a config that the estimate depends on, by their dotted names."""
    sizes = {}
    for section, names in _SETTINGS.items():
        for name in names:
            value = getattr(getattr(config, section), name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                sizes[f"{section}.{name}"] = value
    return sizes


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
    """The setting whose reduction to its minimum (1, or no pool) shrinks the estimate most."""
    config = configs[0]
    sizes = sizes_of(config)
    best, best_total = None, None
    for key in sizes:
        if sizes[key] == 0:
            continue  # already at its minimum (n_tasks: no pool) or automatic (n_embd = 0)
        reduced = dict(sizes, **{key: 0 if key == "task.n_tasks" else 1})
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
