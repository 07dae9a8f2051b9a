"""The train loop: one model on one task, with periodic evaluation, checkpoints and resume.

Determinism: the initial weights come from (seed, INIT_STREAM) and the batch of step n from
(seed, n), and the learning rate is a function of the step, so a run stopped after a checkpoint and
resumed (`resume=True`) reaches the same final weights as an uninterrupted run on the same device.
"""

import contextlib
import ctypes
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from iclab.checkpoints import load_checkpoint, save_checkpoint
from iclab.config import RunConfig, TrainConfig
from iclab.evaluation import evaluate_model
from iclab.families import make_task
from iclab.models import make_model
from iclab.results import (
    CHECKPOINT_FILE,
    append_metrics,
    prepare_run_dir,
    read_metrics,
    write_metrics,
)
from iclab.seeding import INIT_STREAM, derive_seed


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite."""


@dataclass
class TrainResult:
    model: torch.nn.Module
    task: object
    final_loss: float
    steps_per_second: float


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
        raise RuntimeError(
            "train.device = 'cuda' but no CUDA device is available; use 'cpu' or 'auto'"
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


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (L2 penalty) or AdamW (decoupled decay); decay only where the model says so."""
    if hasattr(model, "parameter_groups"):
        groups = model.parameter_groups(config.weight_decay)
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    # foreach: one multi-tensor call per operation instead of a Python loop over the parameters;
    # on the CPU it gives bit-identical results to the loop (fused=True would not) and saves ~5%
    # of a small-preset step (benchmarks/train_step.py). On CUDA it is already the default.
    return optimizer_class(groups, lr=config.lr, foreach=True)


def _autocast(config: TrainConfig, device: torch.device):
    if config.dtype != "bfloat16":
        return contextlib.nullcontext()
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        import warnings

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


def drop_metrics_after(run_dir: Path, step: int) -> None:
    """On resume: records after the checkpoint's step will be written again by this run."""
    write_metrics(run_dir, [r for r in read_metrics(run_dir) if r["step"] <= step])


def evaluate_as_configured(model, task, config: RunConfig, n_sequences: int) -> dict:
    """evaluate_model on n_sequences with the run's evaluation seed and batch size."""
    return evaluate_model(
        model,
        task,
        n_sequences,
        seed=config.eval.eval_seed,
        batch_size=config.eval.eval_batch_size,
    )


def record_evaluation(
    run_dir: Path, model, task, config: RunConfig, done: int, loss: float
) -> None:
    """Append the periodic evaluation after `done` steps (train.eval_sequences) to metrics.jsonl."""
    evaluation = evaluate_as_configured(model, task, config, config.train.eval_sequences)
    lr = learning_rate(config.train, done - 1)
    append_metrics(run_dir, {"step": done, "train_loss": loss, "lr": lr, "eval": evaluation})


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_log: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `config`'s model; with a run_dir, write metrics, checkpoints and config there.

    stop_after: stop (after checkpointing) once this many steps are done, as an interruption would;
    used to test that resuming equals an uninterrupted run.
    on_log: called with (steps done, mean loss since the last call) every log_every steps, e.g. to
    report progress from a worker process.
    on_checkpoint: called with the step after each checkpoint is written, e.g. to ship the run
    directory's files from a worker to the sweep driver.
    """
    train_config = config.train
    device = resolve_device(train_config.device)
    if device.type == "cpu":
        reuse_freed_memory()
    task = make_task(config.task, device)
    model = build_model(config, device)
    optimizer = build_optimizer(model, train_config)
    start = 0
    if run_dir is not None:
        run_dir = prepare_run_dir(run_dir, config, resume)
        checkpoint = run_dir / CHECKPOINT_FILE
        if resume and checkpoint.exists():
            start = load_checkpoint(checkpoint, model, optimizer)
            drop_metrics_after(run_dir, start)
    end = train_config.steps if stop_after is None else min(stop_after, train_config.steps)

    def checkpoint_now(step: int) -> None:
        if run_dir is None:
            return
        if not _all_finite(model):
            raise TrainingDiverged(
                f"weights became NaN/inf before step {step}; the last good checkpoint in "
                f"{str(run_dir)!r} is kept"
            )
        save_checkpoint(run_dir / CHECKPOINT_FILE, model, optimizer, step)
        if on_checkpoint is not None:
            on_checkpoint(step)

    model.train()
    loss_sum = torch.zeros((), device=device)
    loss_count, last_loss = 0, float("nan")
    bar = tqdm(
        total=train_config.steps,
        initial=start,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    for step in range(start, end):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(train_config, step)
        batch = task.train_batch(train_config.seed, step, train_config.batch_size)
        with _autocast(train_config, device):
            loss = task.loss(model, batch)
        loss.backward()
        if train_config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_count += 1
        done = step + 1
        # Read the loss back only every log_every steps: a host-device sync per step is slow on GPU.
        if done % train_config.log_every == 0 or done == end:
            last_loss = loss_sum.item() / loss_count
            loss_sum.zero_()
            loss_count = 0
            if not math.isfinite(last_loss):
                raise TrainingDiverged(
                    f"training loss became {last_loss} by step {done} (lr {train_config.lr}); "
                    + (
                        f"the last good checkpoint in {str(run_dir)!r} is kept"
                        if run_dir is not None
                        else "no run directory, nothing saved"
                    )
                )
            bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            if on_log is not None:
                on_log(done, last_loss)
        bar.update()
        if run_dir is not None and (
            done % train_config.eval_every == 0 or done == train_config.steps
        ):
            record_evaluation(run_dir, model, task, config, done, last_loss)
        if done % train_config.checkpoint_every == 0 or done == end:
            checkpoint_now(done)
    bar.close()
    elapsed = time.perf_counter() - started
    return TrainResult(model, task, last_loss, (end - start) / max(elapsed, 1e-9))
