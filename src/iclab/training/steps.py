"""How one optimisation step is taken: a single model, or N runs of one model shape stacked.

The train loop (training/loop.py) is the same for both; a step strategy owns the parameters it
updates and hands back one loss per run:

- SingleStep: the model's own parameters and optimizer, bf16 autocast when configured.
- StackedStep: every parameter gets a leading member axis; one forward (the model's own stacked
  forward where it has one, as models.gpt does, else torch.func.vmap over the model), one backward
  and one optimizer step serve all members. Adam is elementwise, the loss is the sum of the
  members' losses (so each member's gradient is that of its own loss), gradient clipping is per
  member, and member i sees exactly the batches and initial weights of its run trained alone.
  sync() copies each member's slice of the weights and optimizer state back into its own model
  and optimizer, so a member can be evaluated, checkpointed and resumed alone. This is the layout
  that fills a GPU with many small models.
"""

import json

import torch
from torch.func import functional_call, vmap

from iclab.config import RunConfig
from iclab.families import family_of
from iclab.training.optimization import autocast, build_optimizer


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


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class SingleStep:
    def __init__(self, model, optimizer, task, config: RunConfig, device: torch.device):
        self.model, self.optimizer, self.task = model, optimizer, task
        self.config, self.device = config.train, device

    def step(self, batches: list[tuple], lr: float) -> torch.Tensor:
        """One optimizer step on batches[0]; returns its loss as a (1,) tensor (not detached)."""
        _set_lr(self.optimizer, lr)
        with autocast(self.config, self.device):
            loss = self.task.loss(self.model, batches[0])
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
    def __init__(self, members, optimizers, task, config: RunConfig):
        """members and optimizers: the runs' own models and optimizers, as built (or resumed);
        task: the first member's (it computes every member's loss from its predictions)."""
        self.members, self.optimizers, self.config = members, optimizers, config.train
        self.template = members[0]
        self.stacked = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in members])
            .clone()
            .requires_grad_()
            for name, _ in self.template.named_parameters()
        }
        self.optimizer = build_optimizer(
            _StackedParameters(self.template, self.stacked), self.config
        )
        self._stack_optimizer_states()

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

    def _stack_optimizer_states(self) -> None:
        """Stacked optimizer state from the members' (after a resume; none on a fresh start)."""
        for name, parameter in self.stacked.items():
            states = [
                o.state.get(dict(m.named_parameters())[name], {})
                for m, o in zip(self.members, self.optimizers, strict=True)
            ]
            if states[0]:
                self.optimizer.state[parameter] = {
                    key: value.clone() if value.ndim == 0 else torch.stack([s[key] for s in states])
                    for key, value in states[0].items()
                }

    def step(self, batches: list[tuple], lr: float) -> torch.Tensor:
        """One step of every member on its own batch; returns the (n_members,) losses."""
        _set_lr(self.optimizer, lr)
        stacked_batch = tuple(torch.stack(parts) for parts in zip(*batches, strict=True))
        losses = self.losses(self.stacked, *stacked_batch)
        losses.sum().backward()
        if self.config.grad_clip > 0:
            norms = torch.stack([p.grad.flatten(1).square().sum(1) for p in self.stacked.values()])
            scale = (self.config.grad_clip / (norms.sum(0).sqrt() + 1e-6)).clamp(max=1.0)
            for parameter in self.stacked.values():
                parameter.grad.mul_(scale.view(-1, *[1] * (parameter.ndim - 1)))
        self.optimizer.step()
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
