"""The train loop: one run, or several runs of one model shape as a stacked ensemble, with
periodic evaluation, checkpoints and resume. How a step is taken is the step strategy's
(training/steps.py); everything around it is shared.

Determinism: the initial weights come from (seed, INIT_STREAM) and the batch of step n from
(seed, n), and the learning rate is a function of the step, so a run stopped after a checkpoint and
resumed (`resume=True`) reaches the same final weights as an uninterrupted run on the same device.
Each member of an ensemble keeps its own run directory in the format of a single run. A
checkpoint also holds the loss accumulator (sum and count since the last log, and the last logged
losses), so that metrics.jsonl of a resumed run equals that of an uninterrupted one.
"""

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from iclab.checkpoints import CheckpointError
from iclab.config import RunConfig
from iclab.evaluation import evaluate_model
from iclab.families import make_task
from iclab.locks import exclusive
from iclab.training.memory import check_memory
from iclab.training.optimization import (
    build_model,
    build_optimizer,
    learning_rate,
    resolve_device,
    reuse_freed_memory,
)
from iclab.training.run_directory import CHECKPOINT_FILE, RunDirectory
from iclab.training.steps import SingleStep, StackedStep, ensemble_key


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite."""


@dataclass
class TrainResult:
    model: torch.nn.Module
    task: object
    final_loss: float
    steps_per_second: float


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
    run: RunDirectory, model, task, config: RunConfig, done: int, loss: float
) -> dict:
    """Append the periodic evaluation after `done` steps (train.eval_sequences) to metrics.jsonl;
    returns the record. loss, its train_loss, is the mean training loss of the steps since the
    log before (_Losses.recent)."""
    evaluation = evaluate_as_configured(model, task, config, config.train.eval_sequences)
    lr = learning_rate(config.train, done - 1)
    record = {"step": done, "train_loss": loss, "lr": lr, "eval": evaluation}
    run.append_metrics(record)
    return record


@dataclass
class _Losses:
    """The loss accumulator: per-member sums and their count since the last log, and the losses
    logged last."""

    sums: torch.Tensor
    count: int
    last: list[float]

    def recent(self) -> list[float]:
        """Per member, the mean loss of the steps since the last log, or the losses logged last
        when there are none (the evaluation falls on a log step)."""
        return [total / self.count for total in self.sums.tolist()] if self.count else self.last

    def member_state(self, index: int) -> dict:
        """What member `index`'s checkpoint holds (exact: JSON round-trips floats)."""
        return {"sum": self.sums[index].item(), "count": self.count, "last": self.last[index]}


def _resume(
    runs: list[RunDirectory], configs: list[RunConfig], models, optimizers, losses: _Losses
) -> int:
    """Load and verify every run's checkpoint (all or none must have one, at one step), restore
    the loss accumulator, and only then drop the metrics records the resumed run writes again.
    Returns the step to go on from."""
    found = [run.has_checkpoint() for run in runs]
    if not any(found):
        for run in runs:  # training restarts at step 0 and writes every record again
            run.drop_metrics_after(0)
        return 0
    if not all(found):
        raise CheckpointError("some ensemble members have a checkpoint and some do not")
    infos = [
        run.restore_checkpoint(model, optimizer, config.run_hash())
        for run, config, model, optimizer in zip(runs, configs, models, optimizers, strict=True)
    ]
    steps = {info.step for info in infos}
    if len(steps) != 1:
        raise CheckpointError(f"ensemble members resume from different steps: {steps}")
    start = steps.pop()
    total = configs[0].train.steps
    for run, info in zip(runs, infos, strict=True):
        path = str(run.file(CHECKPOINT_FILE))
        if start > total:
            raise CheckpointError(
                f"checkpoint {path!r} holds step {start}, beyond train.steps = {total}"
            )
        if info.train_losses is not None and info.train_losses["count"] > start:
            raise CheckpointError(
                f"checkpoint {path!r} is corrupt: its loss count exceeds its step {start}"
            )
    states = [info.train_losses for info in infos]
    if all(state is not None for state in states):
        if len({state["count"] for state in states}) != 1:
            raise CheckpointError("ensemble members resume with different loss counts")
        sums = [state["sum"] for state in states]
        losses.sums = torch.tensor(sums, dtype=losses.sums.dtype, device=losses.sums.device)
        losses.count = states[0]["count"]
        losses.last = [float(state["last"]) for state in states]
    # else a checkpoint of the old format: the partial sums since the last log are lost
    for run in runs:
        run.drop_metrics_after(start)
    return start


def _kept(runs: list[RunDirectory] | None) -> str:
    """What a diverged run leaves behind, for its message."""
    if runs is None:
        return "no run directory, nothing saved"
    kept = [str(run.path) for run in runs if run.has_checkpoint()]
    if not kept:
        paths = ", ".join(repr(str(run.path)) for run in runs)
        return (
            f"no checkpoint had been written yet, so nothing in {paths} can be resumed: remove "
            "it, or choose another --out, to train with other settings"
        )
    return f"the last good checkpoint is kept in {', '.join(repr(k) for k in kept)}"


def train_runs(
    configs: list[RunConfig],
    run_dirs: list[str | Path] | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_log: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    on_evaluation: Callable[[int, dict], None] | None = None,
) -> list[TrainResult]:
    """Train one config, or several with one ensemble_key as a stacked ensemble; with run_dirs
    (one per config) write metrics, checkpoints and config there.

    stop_after: stop (after checkpointing) once this many steps are done, as an interruption would;
    used to test that resuming equals an uninterrupted run. on_log: called with (steps done, mean
    loss since the last call, averaged over members) every log_every steps, e.g. to report progress
    from a worker process. on_checkpoint: called with the step after each checkpoint is written,
    e.g. to ship the run directories' files from a worker to the sweep driver. on_evaluation:
    called with (member index, record) after each periodic evaluation is appended to
    metrics.jsonl, e.g. to mirror it to a tracker (iclab.tracking). Each run
    directory is locked while it trains (iclab.locks): a second writer is refused.
    """
    if len(configs) > 1:
        keys = {ensemble_key(config) for config in configs}
        if None in keys or len(keys) != 1:
            raise ValueError(
                "an ensemble needs runs that differ only in seed and task distribution"
            )
    device = resolve_device(configs[0].train.device)  # a bad device fails before any file
    check_memory(configs, device)  # so does a run that cannot fit (on a sweep worker: its own)
    with ExitStack() as locks:
        runs = None
        if run_dirs is not None:
            runs = [
                RunDirectory.create(d, c, resume) for d, c in zip(run_dirs, configs, strict=True)
            ]
            for run in runs:
                locks.enter_context(exclusive(run.path, "run directory"))
        callbacks = (on_log, on_checkpoint, on_evaluation)
        return _train(configs, runs, device, resume, progress, stop_after, *callbacks)


def _train(
    configs: list[RunConfig],
    runs: list[RunDirectory] | None,
    device: torch.device,
    resume: bool,
    progress: bool,
    stop_after: int | None,
    on_log: Callable[[int, float], None] | None,
    on_checkpoint: Callable[[int], None] | None,
    on_evaluation: Callable[[int, dict], None] | None,
) -> list[TrainResult]:
    """The loop of train_runs, on run directories already created and locked."""
    train_config = configs[0].train
    if device.type == "cpu":
        reuse_freed_memory()
    tasks = [make_task(config.task, device) for config in configs]
    models = [build_model(config, device) for config in configs]
    optimizers = [build_optimizer(model, train_config) for model in models]
    losses = _Losses(torch.zeros(len(configs), device=device), 0, [math.nan] * len(configs))
    start = 0
    if runs is not None and resume:
        start = _resume(runs, configs, models, optimizers, losses)
    stacks = ensemble_key(configs[0]) is not None
    compiled = train_config.compile and device.type == "cuda" and stacks
    if len(configs) == 1 and not compiled:
        stepper = SingleStep(models[0], optimizers[0], tasks[0], configs[0], device)
    else:  # a compiled step is a stacked one, of one member or more
        stepper = StackedStep(models, optimizers, tasks, configs, device, compiled)
    end = train_config.steps if stop_after is None else min(stop_after, train_config.steps)

    for model in models:
        model.train()
    reported = losses.last  # what was last handed to on_log: the result's final_loss
    bar = tqdm(
        total=train_config.steps,
        initial=start,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    evaluation_steps = set(train_config.evaluation_steps())
    started = time.perf_counter()
    for step in range(start, end):
        lr = learning_rate(train_config, step)
        losses.sums += stepper.step(step, lr).detach()
        losses.count += 1
        done = step + 1
        # Read the losses back only every log_every steps: a host-device sync per step is slow
        # on a GPU. Stopping early (stop_after) reports the losses so far but keeps accumulating
        # them, as an uninterrupted run would: the checkpoint carries them on.
        log_now = done % train_config.log_every == 0 or done == train_config.steps
        if log_now or done == end:
            reported = losses.recent()
            if log_now:
                losses.last = reported
                losses.sums.zero_()
                losses.count = 0
            _check_finite(reported, done, train_config.lr, runs)
            mean_loss = sum(reported) / len(reported)
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
            if on_log is not None:
                on_log(done, mean_loss)
        bar.update()
        if runs is None:
            continue
        evaluate_now = done in evaluation_steps
        checkpoint_now = done % train_config.checkpoint_every == 0 or done == end
        if evaluate_now or checkpoint_now:
            stepper.sync(lr)
        if evaluate_now:
            recent = losses.recent()
            _check_finite(recent, done, train_config.lr, runs)
            for index, (run, model, task, config, loss) in enumerate(
                zip(runs, models, tasks, configs, recent, strict=True)
            ):
                record = record_evaluation(run, model, task, config, done, loss)
                if on_evaluation is not None:
                    on_evaluation(index, record)
            if train_config.keep_checkpoints:
                for run, model, optimizer, config in zip(
                    runs, models, optimizers, configs, strict=True
                ):
                    run.save_kept_checkpoint(model, optimizer, done, config.run_hash())
        if checkpoint_now:
            if not stepper.all_finite():
                raise TrainingDiverged(f"weights became NaN/inf before step {done}; {_kept(runs)}")
            for index, (run, model, optimizer, config) in enumerate(
                zip(runs, models, optimizers, configs, strict=True)
            ):
                state = losses.member_state(index)
                run.save_checkpoint(model, optimizer, done, config.run_hash(), state)
            if on_checkpoint is not None:
                on_checkpoint(done)
    bar.close()
    stepper.sync(learning_rate(train_config, end - 1))
    steps_per_second = (end - start) / max(time.perf_counter() - started, 1e-9)
    return [
        TrainResult(model, task, loss, steps_per_second)
        for model, task, loss in zip(models, tasks, reported, strict=True)
    ]


def _check_finite(losses: list[float], done: int, lr: float, runs) -> None:
    if not all(math.isfinite(loss) for loss in losses):
        raise TrainingDiverged(
            f"training loss became {losses if len(losses) > 1 else losses[0]} "
            f"by step {done} (lr {lr}); {_kept(runs)}"
        )


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_log: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    on_evaluation: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train one run (see train_runs)."""
    run_dirs = None if run_dir is None else [run_dir]
    callbacks = (on_log, on_checkpoint, on_evaluation)
    return train_runs([config], run_dirs, resume, progress, stop_after, *callbacks)[0]
