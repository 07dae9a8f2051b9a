"""The local learning coefficient (LLC) of a trained model, by SGLD (Lau et al. 2023; measured on
in-context linear regression over training by Carroll et al. 2025).

At weights w* with loss L, the estimate is

    llc = n_beta * (E_w[L(w)] - L(w*)),

the expectation over the tempered posterior localised at w*,
p(w) ~ exp(-n_beta L(w) - gamma / 2 |w - w*|^2), sampled by stochastic gradient Langevin dynamics:

    w <- w - (step_size / 2) (n_beta grad L_B(w) + gamma (w - w*)) + N(0, step_size),

with a fresh pretraining batch B each step. L(w) - L(w*) is taken on the same batch (the paired
difference has far less variance than either loss), averaged over the steps after burn_in and over
chains; the standard error is that of the chains' means. For a regular model (a quadratic loss) it
is d / 2 for d effective parameters; tests/test_llc.py checks that on a linear model, also with
parameters that the loss ignores (which count 0).

llc_over_training estimates it at every checkpoint a run kept (train.keep_checkpoints), the
developmental signal: drops and plateaus of the LLC over training mark changes of the solution.
"""

import dataclasses
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.func import functional_call

from iclab.files import write_json
from iclab.plots import plt, save_figure
from iclab.seeding import make_generator
from iclab.training import TrainingDiverged

LLC_STREAM = 9  # the SGLD chains' batches and noise
LLC_FILE, LLC_FIGURE = "llc.json", "llc.png"


@dataclass(frozen=True)
class SGLDSettings:
    """n_beta: inverse temperature times the sample size (None: batch_size / log(batch_size),
    the usual beta* = 1 / log n with n the batch size); gamma: localisation strength."""

    n_beta: float | None = None
    gamma: float = 100.0
    step_size: float = 1e-4
    n_steps: int = 200
    burn_in: int = 100
    n_chains: int = 4
    batch_size: int = 256

    def resolved_n_beta(self) -> float:
        if self.n_beta is not None:
            return self.n_beta
        return self.batch_size / math.log(self.batch_size)


def estimate_llc(model: torch.nn.Module, loss, draw_batch, settings: SGLDSettings, seed: int):
    """The LLC at model's weights (left unchanged). loss(predictor, batch) -> scalar tensor, with
    predictor called as the model is; draw_batch(generator, batch_size) -> a batch. Returns (llc,
    its standard error over chains, the per-step mean over chains of L(w) - L(w*))."""
    n_beta = settings.resolved_n_beta()
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    anchor = {name: p.detach().clone() for name, p in named.items()}
    device = next(iter(anchor.values())).device

    def at_anchor(*inputs):
        return functional_call(model, anchor, inputs)

    parameters, anchors = list(named.values()), list(anchor.values())
    chain_means, traces = [], []
    try:
        for chain in range(settings.n_chains):
            generator = make_generator(device, seed, LLC_STREAM, chain)
            _set(named, anchor)
            differences = []
            for _ in range(settings.n_steps):
                batch = draw_batch(generator, settings.batch_size)
                value = loss(model, batch)
                gradients = torch.autograd.grad(value, parameters, allow_unused=True)
                with torch.no_grad():
                    differences.append(value.detach() - loss(at_anchor, batch))
                    # None: the loss does not use the parameter, only the localisation pulls it
                    drifts = [
                        torch.zeros_like(p) if g is None else n_beta * g
                        for p, g in zip(parameters, gradients, strict=True)
                    ]
                    offsets = torch._foreach_sub(parameters, anchors)
                    torch._foreach_add_(drifts, offsets, alpha=settings.gamma)
                    noise = [
                        torch.randn(p.shape, generator=generator, device=device) for p in parameters
                    ]
                    torch._foreach_add_(parameters, drifts, alpha=-0.5 * settings.step_size)
                    torch._foreach_add_(parameters, noise, alpha=math.sqrt(settings.step_size))
            differences = torch.stack(differences).tolist()
            kept = differences[settings.burn_in :]
            if not all(math.isfinite(d) for d in kept):
                raise TrainingDiverged(
                    "the LLC's SGLD chain diverged (a non-finite loss): lower the step size or "
                    "raise gamma"
                )
            chain_means.append(sum(kept) / len(kept))
            traces.append(differences)
    finally:
        _set(named, anchor)
    estimates = [n_beta * mean for mean in chain_means]
    error = statistics.stdev(estimates) / math.sqrt(len(estimates)) if len(estimates) > 1 else 0.0
    trace = [statistics.fmean(step) for step in zip(*traces, strict=True)]
    return statistics.fmean(estimates), error, trace


@torch.no_grad()
def _set(parameters: dict, values: dict) -> None:
    for name, parameter in parameters.items():
        parameter.copy_(values[name])


def llc_over_training(
    run_dir: str | Path, settings: SGLDSettings | None = None, progress: bool = True
) -> dict:
    """estimate_llc at every kept checkpoint of a run (on its pretraining distribution, at the
    run's batch size); writes llc.json and llc.png in the run directory."""
    from tqdm.auto import tqdm

    from iclab.checkpoints import restore_checkpoint
    from iclab.families import make_task
    from iclab.training import RunDirectory, build_model
    from iclab.training.optimization import resolve_device
    from iclab.validation import ConfigError

    run = RunDirectory(run_dir)
    kept = run.kept_checkpoints()
    if not kept:
        raise ConfigError(
            f"{str(run.path)!r} kept no checkpoints over training: train it with "
            "train.keep_checkpoints = true (and evals_per_doubling for log-spaced steps)"
        )
    config = run.config()
    settings = dataclasses.replace(settings or SGLDSettings(), batch_size=config.train.batch_size)
    device = resolve_device(config.train.device)
    task = make_task(config.task, device)
    model = build_model(config, device)
    rows = []
    for step, path in tqdm(kept, desc="LLC", unit="checkpoint", disable=not progress):
        restore_checkpoint(path, model, None, config.run_hash())
        model.train()  # as in training (dropout, if any, as the loss saw it)
        llc, error, trace = estimate_llc(
            model, task.loss, task.train_batch_from, settings, config.eval.eval_seed
        )
        rows.append({"step": step, "llc": llc, "llc_se": error, "trace": trace})
    result = {"settings": asdict(settings) | {"n_beta": settings.resolved_n_beta()}, "rows": rows}
    write_json(run.file(LLC_FILE), result)
    plot_llc(rows, run.file(LLC_FIGURE))
    return result


def plot_llc(rows: list[dict], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    steps = [row["step"] for row in rows]
    values = [row["llc"] for row in rows]
    errors = [2 * row["llc_se"] for row in rows]
    axis.errorbar(steps, values, yerr=errors, marker="o", capsize=3, label="LLC (+- 2 SE)")
    axis.set_xscale("log")
    axis.set_xlabel("training step")
    axis.set_ylabel("local learning coefficient")
    axis.legend()
    figure.tight_layout()
    return save_figure(figure, path, pdf=False)


def format_llc(result: dict) -> str:
    lines = ["step      LLC      SE"]
    lines += [f"{r['step']:>7}  {r['llc']:7.3f}  {r['llc_se']:6.3f}" for r in result["rows"]]
    return "\n".join(lines)
