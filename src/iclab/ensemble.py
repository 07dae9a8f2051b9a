"""The train loop for a stacked ensemble: N runs of the same model shape trained as one.

Every parameter gets a leading member axis; one forward (the model's own stacked forward where it
has one, as models.gpt does, else torch.func.vmap over the model), one backward and one optimizer
step serve all members. Adam is elementwise, the loss is the sum of the
members' losses (so each member's gradient is that of its own loss), gradient clipping is per
member, and member i sees exactly the batches and initial weights of its run trained alone. Each
member keeps its own run directory, in the format of a single run: metrics, checkpoints (its slice
of the weights and optimizer state) and evaluations, so a member can be resumed, evaluated or
analysed alone. This is the layout that fills a GPU with many small models.
"""

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from iclab.checkpoints import load_checkpoint, save_checkpoint
from iclab.config import RunConfig
from iclab.families import family_of, make_task
from iclab.results import (
    CHECKPOINT_FILE,
    prepare_run_dir,
)
from iclab.training import (
    TrainingDiverged,
    TrainResult,
    build_model,
    build_optimizer,
    drop_metrics_after,
    learning_rate,
    record_evaluation,
    resolve_device,
    reuse_freed_memory,
)


def ensemble_key(config: RunConfig) -> str | None:
    """Runs with the same key can train as one ensemble: the same model, data shapes and
    optimisation, differing only in the seed and the task fields that the family lets members
    vary (its member_fields: the task distribution). None when the run must train alone (a family
    that does not stack; dropout, whose random masks a stacked forward would not reproduce; bf16
    autocast)."""
    member_fields = family_of(config.task).member_fields
    if member_fields is None or getattr(config.model, "dropout", 0.0) > 0:
        return None
    if config.train.dtype != "float32":  # the stacked step has no autocast: train such runs alone
        return None
    data = config.to_dict()
    shapes = {k: v for k, v in data["task"].items() if k not in member_fields}
    train = {k: v for k, v in data["train"].items() if k != "seed"}
    return json.dumps({"task": shapes, "model": data["model"], "train": train}, sort_keys=True)


class _StackedParameters:
    """Duck-types the part of a model that training.build_optimizer uses."""

    def __init__(self, template: torch.nn.Module, stacked: dict[str, torch.Tensor]):
        self.template, self.stacked = template, stacked

    def parameters(self):
        return iter(self.stacked.values())

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        if not hasattr(self.template, "parameter_groups"):
            return [{"params": list(self.stacked.values()), "weight_decay": weight_decay}]
        name_of = {id(p): name for name, p in self.template.named_parameters()}
        groups = self.template.parameter_groups(weight_decay)
        return [
            {**g, "params": [self.stacked[name_of[id(p)]] for p in g["params"]]} for g in groups
        ]


def _stack(members, optimizers, optimizer, stacked) -> None:
    """Stacked weights and optimizer state from the members' (after a resume)."""
    with torch.no_grad():
        for name, parameter in stacked.items():
            parameter.copy_(torch.stack([dict(m.named_parameters())[name] for m in members]))
            states = [
                o.state.get(dict(m.named_parameters())[name], {})
                for m, o in zip(members, optimizers, strict=True)
            ]
            if states[0]:
                optimizer.state[parameter] = {
                    key: value.clone() if value.ndim == 0 else torch.stack([s[key] for s in states])
                    for key, value in states[0].items()
                }


def _unstack(members, optimizers, optimizer, stacked, lr: float) -> None:
    """Copy each member's slice of the weights and optimizer state into its own model/optimizer."""
    with torch.no_grad():
        for index, (member, member_optimizer) in enumerate(zip(members, optimizers, strict=True)):
            parameters = dict(member.named_parameters())
            for name, parameter in stacked.items():
                parameters[name].copy_(parameter[index])
                state = optimizer.state.get(parameter, {})
                member_optimizer.state[parameters[name]] = {
                    key: value.clone() if value.ndim == 0 else value[index].clone()
                    for key, value in state.items()
                }
            for group in member_optimizer.param_groups:
                group["lr"] = lr


def train_ensemble(
    configs: list[RunConfig],
    run_dirs: list[str | Path] | None = None,
    resume: bool = False,
    progress: bool = False,
    on_log: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    stop_after: int | None = None,
) -> list[TrainResult]:
    """Train configs (equal `ensemble_key`) as one stacked ensemble; see the module docstring.

    run_dirs: one per config, written as training.train writes a single run's. With resume, every
    member must have a checkpoint at the same step (or none has one). on_log gets (steps done,
    mean loss over members); on_checkpoint the step after all members' checkpoints are written.
    stop_after: stop (after checkpointing) once this many steps are done, as an interruption would.
    """
    keys = {ensemble_key(config) for config in configs}
    if None in keys or len(keys) != 1:
        raise ValueError("an ensemble needs runs that differ only in seed and task distribution")
    train_config = configs[0].train
    device = resolve_device(train_config.device)
    if device.type == "cpu":
        reuse_freed_memory()
    tasks = [make_task(config.task, device) for config in configs]
    members = [build_model(config, device) for config in configs]
    optimizers = [build_optimizer(member, train_config) for member in members]
    template = members[0]
    stacked = {
        name: torch.stack([dict(m.named_parameters())[name].detach() for m in members])
        .clone()
        .requires_grad_()
        for name, _ in template.named_parameters()
    }
    optimizer = build_optimizer(_StackedParameters(template, stacked), train_config)
    start = 0
    if run_dirs is not None:
        run_dirs = [prepare_run_dir(d, c, resume) for d, c in zip(run_dirs, configs, strict=True)]
        found = [(d / CHECKPOINT_FILE).exists() for d in run_dirs]
        if resume and any(found):
            if not all(found):
                raise ValueError("some ensemble members have a checkpoint and some do not")
            steps = {
                load_checkpoint(d / CHECKPOINT_FILE, m, o)
                for d, m, o in zip(run_dirs, members, optimizers, strict=True)
            }
            if len(steps) != 1:
                raise ValueError(f"ensemble members resume from different steps: {steps}")
            start = steps.pop()
            _stack(members, optimizers, optimizer, stacked)
            for d in run_dirs:
                drop_metrics_after(d, start)

    def member_loss_of(predictions, xs, ys):
        return tasks[0].loss(lambda *_: predictions, (xs, ys))

    def member_loss(parameters, xs, ys):
        return member_loss_of(functional_call(template, parameters, (xs, ys)), xs, ys)

    def stacked_loss(parameters, xs, ys):
        predictions = functional_call(template, parameters, (xs, ys))
        return vmap(member_loss_of)(predictions, xs, ys)

    # Models that take the member axis themselves run one stacked forward; under vmap, PyTorch
    # has no batching rule for the CPU attention kernel and loops over the members.
    batched_loss = (
        stacked_loss if getattr(template, "supports_member_axis", False) else vmap(member_loss)
    )
    n_members = len(configs)
    end = train_config.steps if stop_after is None else min(stop_after, train_config.steps)
    loss_sums = torch.zeros(n_members, device=device)
    loss_count, last_losses = 0, [math.nan] * n_members
    bar = tqdm(
        total=train_config.steps,
        initial=start,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    for step in range(start, end):
        lr = learning_rate(train_config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [
            task.train_batch(config.train.seed, step, train_config.batch_size)
            for task, config in zip(tasks, configs, strict=True)
        ]
        xs = torch.stack([xs for xs, _ in batches])
        ys = torch.stack([ys for _, ys in batches])
        losses = batched_loss(stacked, xs, ys)
        losses.sum().backward()
        if train_config.grad_clip > 0:
            norms = torch.stack([p.grad.flatten(1).square().sum(1) for p in stacked.values()])
            scale = (train_config.grad_clip / (norms.sum(0).sqrt() + 1e-6)).clamp(max=1.0)
            for parameter in stacked.values():
                parameter.grad.mul_(scale.view(-1, *[1] * (parameter.ndim - 1)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sums += losses.detach()
        loss_count += 1
        done = step + 1
        if done % train_config.log_every == 0 or done == end:
            last_losses = (loss_sums / loss_count).tolist()
            loss_sums.zero_()
            loss_count = 0
            diverged = [i for i, loss in enumerate(last_losses) if not math.isfinite(loss)]
            if diverged:
                names = ", ".join(str(run_dirs[i]) if run_dirs else f"member {i}" for i in diverged)
                raise TrainingDiverged(
                    f"training loss became NaN/inf by step {done} (lr {train_config.lr}) in "
                    f"{names}; the last good checkpoints are kept"
                )
            if on_log is not None:
                on_log(done, sum(last_losses) / n_members)
        bar.update()
        evaluate_now = done % train_config.eval_every == 0 or done == train_config.steps
        checkpoint_now = done % train_config.checkpoint_every == 0 or done == end
        if run_dirs is not None and (evaluate_now or checkpoint_now):
            _unstack(members, optimizers, optimizer, stacked, lr)
        if run_dirs is not None and evaluate_now:
            for member, task, config, run_dir, loss in zip(
                members, tasks, configs, run_dirs, last_losses, strict=True
            ):
                record_evaluation(run_dir, member, task, config, done, loss)
        if run_dirs is not None and checkpoint_now:
            if not all(bool(torch.isfinite(p).all()) for p in stacked.values()):
                raise TrainingDiverged(
                    f"weights became NaN/inf before step {done}; the last good checkpoints are kept"
                )
            for member, member_optimizer, run_dir in zip(
                members, optimizers, run_dirs, strict=True
            ):
                save_checkpoint(run_dir / CHECKPOINT_FILE, member, member_optimizer, done)
            if on_checkpoint is not None:
                on_checkpoint(done)
    bar.close()
    _unstack(members, optimizers, optimizer, stacked, learning_rate(train_config, end - 1))
    seconds = max(time.perf_counter() - started, 1e-9)
    return [
        TrainResult(member, task, loss, (end - start) / seconds)
        for member, task, loss in zip(members, tasks, last_losses, strict=True)
    ]
