"""What a run trains with: its device, initial model, optimizer, learning-rate schedule and
mixed-precision context, each a pure function of the config (and the step)."""

import contextlib
import ctypes
import math
import warnings

import torch

from iclab.config import RunConfig, TrainConfig
from iclab.models import make_model
from iclab.seeding import INIT_STREAM, derive_seed
from iclab.validation import ConfigError


def reuse_freed_memory() -> None:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB for reuse (CPU training).

    By default it hands large blocks back to the system when they are freed, so every train step
    page-faulted its activations in anew: on the small preset that was ~200k faults and ~11% of a
    step here (220 against 195 ms), more for stacked ensembles, whose activations are N times a
    member's. The setting holds for the rest of the process; without glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest allowed value
    libc.mallopt(m_trim_threshold, 2**30)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device = 'cuda' is not allowed: no CUDA device is available here; use 'cpu' "
            "or 'auto'"
        )
    return torch.device(name)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate of `step` (0-based) under the configured schedule."""
    progress = step / config.steps
    warmup = config.warmup_fraction
    if config.schedule == "constant":
        return config.lr
    if progress < warmup:  # both triangle and cosine warm up linearly from ~0
        return config.lr * (step + 1) / (warmup * config.steps)
    decay = (progress - warmup) / max(1.0 - warmup, 1e-12)
    if config.schedule == "triangle":
        return config.lr * max(0.0, 1.0 - decay)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * decay))


def build_model(config: RunConfig, device: torch.device) -> torch.nn.Module:
    """The initial model: initialised on the CPU from the init seed, so it is device-independent."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.train.seed, INIT_STREAM))
        model = make_model(config.model, config.task)
    return model.to(device)


def build_optimizer(model, config: TrainConfig, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam (L2 penalty) or AdamW (decoupled decay); decay only where the model says so.
    capturable: for a compiled step (training/steps.py), the learning rate is a tensor on the
    parameters' device and Adam's step counts live there too, so no update reads the host."""
    if hasattr(model, "parameter_groups"):
        groups = model.parameter_groups(config.weight_decay)
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    device = next(iter(model.parameters())).device
    if capturable:  # torch.compile fuses the foreach update into a few kernels
        lr = torch.tensor(config.lr, device=device)
        return optimizer_class(groups, lr=lr, foreach=True, capturable=True)
    if device.type == "cuda":  # one fused kernel for the whole update
        return optimizer_class(groups, lr=config.lr, fused=True)
    # foreach: one multi-tensor call per operation instead of a Python loop over the parameters;
    # on the CPU it gives bit-identical results to the loop (fused=True would not) and saves ~5%
    # of a small-preset step (benchmarks/train_step.py).
    return optimizer_class(groups, lr=config.lr, foreach=True)


def autocast(config: TrainConfig, device: torch.device):
    """bf16 autocast when train.dtype asks for it (master weights and losses stay fp32)."""
    if config.dtype != "bfloat16":
        return contextlib.nullcontext()
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # Without AVX-512 (or AMX) PyTorch's CPU bf16 matrix products skip oneDNN for a scalar
        # fallback: 10-25x slower than float32 on an AVX2 EPYC, a train step ~6x slower
        # (benchmarks/train_step.py). Shown once per process (the default warnings filter).
        warnings.warn(
            "train.dtype = 'bfloat16' on a CPU without native bf16 matrix products (AVX-512 "
            "or AMX): PyTorch falls back to slow bf16 kernels, training runs several times "
            "slower than with train.dtype = 'float32'",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
