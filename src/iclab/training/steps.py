"""How one optimisation step is taken: a single model, or N runs of one model shape stacked.

The train loop (training/loop.py) is the same for both; a step strategy owns the parameters it
updates, draws the batches of a step and hands back one loss per run:

- SingleStep: the model's own parameters and optimizer, bf16 autocast when configured.
- StackedStep: every parameter gets a leading member axis; one forward (the model's own stacked
  forward where it has one, as models.gpt does, else torch.func.vmap over the model), one backward
  and one optimizer step serve all members. Adam is elementwise, the loss is the sum of the
  members' losses (so each member's gradient is that of its own loss), gradient clipping is per
  member, and member i sees exactly the batches and initial weights of its run trained alone.
  sync() copies each member's slice of the weights and optimizer state back into its own model
  and optimizer, so a member can be evaluated, checkpointed and resumed alone. This is the layout
  that fills a GPU with many small models.

A StackedStep can be compiled (train.compile on CUDA; any device when asked directly): the
batch draw, the forward, and the clipping with Adam's update each become one
torch.compile'd function (mode "reduce-overhead" on CUDA: CUDA graphs, so a step is a few graph
launches instead of hundreds of kernel launches). A captured step cannot seed a host generator,
so it draws its batches with seeding.CounterDraws from a device tensor holding the step: batch n
is still a pure function of (seed, n). The optimizer is then `capturable` with its learning rate
a device tensor, and nothing in the step reads a value back to the host. Building a compiled
StackedStep resets torch.compile's caches in the process (torch._dynamo.reset): one compiled
stepper trains at a time, and any other compiled function recompiles on its next call.
"""

import functools
import json

import torch
from torch.func import functional_call, vmap

from iclab.config import RunConfig
from iclab.families import family_of
from iclab.seeding import TRAIN_STREAM, CounterDraws, derive_seed
from iclab.training.optimization import autocast, build_optimizer


def ensemble_key(config: RunConfig) -> str | None:
    """Runs with the same key can train as one ensemble: the same model, data shapes and
    optimisation, differing only in the seed and the task fields that the family lets members
    vary (its member_fields: the task distribution). None when the run must train alone (a family
    that does not stack; dropout, whose random masks a stacked forward would not reproduce)."""
    member_fields = family_of(config.task).member_fields
    if member_fields is None or getattr(config.model, "dropout", 0.0) > 0:
        return None
    data = config.to_dict()
    shapes = {k: v for k, v in data["task"].items() if k not in member_fields}
    train = {k: v for k, v in data["train"].items() if k != "seed"}
    return json.dumps({"task": shapes, "model": data["model"], "train": train}, sort_keys=True)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # a captured step reads it on the device
        else:
            group["lr"] = lr


class SingleStep:
    def __init__(self, model, optimizer, task, config: RunConfig, device: torch.device):
        self.model, self.optimizer, self.task = model, optimizer, task
        self.config, self.device = config.train, device

    def step(self, step: int, lr: float) -> torch.Tensor:
        """One optimizer step on the batch of `step`; returns its loss as a (1,) tensor."""
        _set_lr(self.optimizer, lr)
        batch = self.task.train_batch(self.config.seed, step, self.config.batch_size)
        with autocast(self.config, self.device):
            loss = self.task.loss(self.model, batch)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.reshape(1)

    def sync(self, lr: float) -> None:
        """Nothing to do: the model is its own parameters."""

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())


class _StackedParameters:
    """Duck-types the part of a model that optimization.build_optimizer uses."""

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


class StackedStep:
    def __init__(
        self,
        members,
        optimizers,
        tasks,
        configs: list[RunConfig],
        device: torch.device,
        compiled: bool = False,
        counter_draws: bool | None = None,
    ):
        """members and optimizers: the runs' own models and optimizers, as built (or resumed);
        tasks: theirs (the first one computes every member's loss from its predictions).
        compiled: torch.compile the step (see the module docstring); counter_draws: draw the
        batches with CounterDraws (default: when compiled), so that an eager step can be compared
        with a compiled one on the same batches."""
        self.members, self.optimizers, self.tasks = members, optimizers, tasks
        self.config, self.device = configs[0].train, device
        self.seeds = [config.train.seed for config in configs]
        self.template = members[0]
        self.stacked = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in members])
            .clone()
            .requires_grad_()
            for name, _ in self.template.named_parameters()
        }
        self.optimizer = build_optimizer(
            _StackedParameters(self.template, self.stacked), self.config, capturable=compiled
        )
        self._stack_optimizer_states()
        task = tasks[0]

        def member_loss_of(predictions, *batch):
            return task.loss(lambda *_: predictions, batch)

        def member_loss(parameters, *batch):
            return member_loss_of(functional_call(self.template, parameters, batch), *batch)

        def stacked_loss(parameters, *batch):
            predictions = functional_call(self.template, parameters, batch)
            return vmap(member_loss_of)(predictions, *batch)

        # Models that take the member axis themselves run one stacked forward; under vmap, PyTorch
        # has no batching rule for the CPU attention kernel and loops over the members.
        supports = getattr(self.template, "supports_member_axis", False)
        self.losses = stacked_loss if supports else vmap(member_loss)

        self.counter_draws = compiled if counter_draws is None else counter_draws
        if self.counter_draws:
            self.keys = [derive_seed(seed, TRAIN_STREAM) for seed in self.seeds]
            self.step_tensor = torch.zeros((), dtype=torch.int64, device=device)
        self.draw, self.forward, self.update = self._draw, self._forward, self._update
        self.cuda_graphs = compiled and device.type == "cuda"
        if compiled:
            # Every instance recompiles these methods: after Dynamo's recompile limit (8 per code
            # object) a further stepper in this process would silently run eagerly. One compiled
            # stepper trains at a time, so the earlier ones' graphs (and CUDA-graph memory) go.
            torch._dynamo.reset()
            # On CUDA "triton.cudagraphs" is mode="reduce-overhead". The draws' integer hash
            # reuses each intermediate; inlined, its code grows exponentially (a cold compile took
            # minutes on CPU): realizing intermediates beyond 10 operations keeps it to seconds.
            options = {"triton.cudagraphs": self.cuda_graphs}
            draw_options = {**options, "realize_opcount_threshold": 10}
            compile_static = functools.partial(torch.compile, dynamic=False)  # fixed shapes
            self.draw = compile_static(self._draw, options=draw_options)
            self.forward = compile_static(self._forward, options=options)
            self.update = compile_static(self._update, options=options)

    def _stack_optimizer_states(self) -> None:
        """Stacked optimizer state from the members' (after a resume; none on a fresh start)."""
        for name, parameter in self.stacked.items():
            states = [
                o.state.get(dict(m.named_parameters())[name], {})
                for m, o in zip(self.members, self.optimizers, strict=True)
            ]
            if states[0]:
                self.optimizer.state[parameter] = {
                    key: value.clone().to(parameter.device)
                    if value.ndim == 0
                    else torch.stack([s[key] for s in states])
                    for key, value in states[0].items()
                }

    def _draw(self, step) -> tuple[torch.Tensor, ...]:
        """The members' batches of `step` (an int, or the step tensor), stacked."""
        size = self.config.batch_size
        if self.counter_draws:
            sources = [CounterDraws(key, step) for key in self.keys]
            batches = [
                t.train_batch_from(s, size) for t, s in zip(self.tasks, sources, strict=True)
            ]
        else:
            batches = [
                t.train_batch(seed, step, size)
                for t, seed in zip(self.tasks, self.seeds, strict=True)
            ]
        return tuple(torch.stack(parts) for parts in zip(*batches, strict=True))

    def _forward(self, *stacked_batch: torch.Tensor) -> torch.Tensor:
        """The members' losses on their stacked batches."""
        with autocast(self.config, self.device):
            return self.losses(self.stacked, *stacked_batch)

    def _update(self) -> None:
        """Per-member gradient clipping, then Adam on the stacked parameters."""
        if self.config.grad_clip > 0:
            norms = torch.stack([p.grad.flatten(1).square().sum(1) for p in self.stacked.values()])
            scale = (self.config.grad_clip / (norms.sum(0).sqrt() + 1e-6)).clamp(max=1.0)
            for parameter in self.stacked.values():
                parameter.grad.mul_(scale.view(-1, *[1] * (parameter.ndim - 1)))
        self.optimizer.step()

    def step(self, step: int, lr: float) -> torch.Tensor:
        """One step of every member on its own batch of `step`; returns the (n_members,) losses
        (with a compiled step on CUDA, read them before the next step overwrites them)."""
        _set_lr(self.optimizer, lr)
        if self.cuda_graphs:
            # One CUDA-graph generation per step: without the mark, each compiled call would
            # start one and free the outputs of the one before (the batch, the losses, the
            # gradients) while they are still in use.
            torch.compiler.cudagraph_mark_step_begin()
        if self.counter_draws:
            self.step_tensor.fill_(step)
            step = self.step_tensor
        losses = self.forward(*self.draw(step))
        losses.sum().backward()
        self.update()
        self.optimizer.zero_grad(set_to_none=True)
        return losses

    @torch.no_grad()
    def sync(self, lr: float) -> None:
        """Copy each member's slice of the weights and optimizer state into its own model and
        optimizer (whose learning rate becomes lr)."""
        for index, (member, member_optimizer) in enumerate(
            zip(self.members, self.optimizers, strict=True)
        ):
            parameters = dict(member.named_parameters())
            for name, parameter in self.stacked.items():
                parameters[name].copy_(parameter[index])
                state = self.optimizer.state.get(parameter, {})
                member_optimizer.state[parameters[name]] = {
                    key: value.clone() if value.ndim == 0 else value[index].clone()
                    for key, value in state.items()
                }
            _set_lr(member_optimizer, lr)

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.stacked.values())
