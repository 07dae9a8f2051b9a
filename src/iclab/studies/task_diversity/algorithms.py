"""Which algorithm a trained regression transformer runs: the member of each algorithm family
closest to the PT's predictions, in the paper's Delta (mean squared difference of predictions / D).

Families and their free parameters (no training: closed forms and searches):
- Ridge: lambda (Ridge with noise_std^2 / prior_std^2 = lambda);
- GD: k steps of gradient descent from w = 0 on the prefix's mean squared error, k = 1..gd_steps
  (GD_STEPS unless `iclab analyze --gd-steps` says otherwise), and the step size;
- Preconditioned GD: k steps preconditioned by (G / n + lambda I)^-1, with lambda and the step size
  (one step of size 1 is ridge with regulariser n lambda);
- dMMSE: the posterior mean over the run's pool with the noise level (the temperature) free;
- Smoothed dMMSE: the posterior mean of the pool blurred by N(0, s^2 I), s free (at the run's
  noise level).
The pool families need a finite pool (M < infinity). Each search evaluates a log-spaced grid and
then refines the best value by golden-section search on the log scale between its grid
neighbours (the discrete k and the 2-D preconditioned search refine one coordinate at a time).
Per position, the best member of each family (grid or refined) is reported too. The grids of
preconditioned GD (13 x 13) and of the pool families (17 points) are coarser than GRID_POINTS.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from iclab.estimators.pool_posterior import DMMSE, SmoothedDMMSE
from iclab.estimators.regression import Ridge, gd_iterates
from iclab.families import MODEL_NAME, family_of

GD_STEPS = 16  # k = 1..GD_STEPS (the tiny model has 4 layers; at 8 the best k of GD sat at 8)
GRID_POINTS = 25
GOLDEN_ITERATIONS = 20
REFINEMENT_ROUNDS = 3  # of the 2-D search, one coordinate at a time
REFINED_STEPS = 3  # values of k refined in the 2-D search
RANGES = {  # log-spaced search ranges of the continuous parameters
    "ridge": (1e-4, 1e3),
    "step_size": (1e-3, 4.0),
    "preconditioner_ridge": (1e-3, 1e2),
    "noise_std": (0.03, 30.0),  # times the run's noise_std
    "smoothing_std": (0.01, 5.0),  # times the run's prior_std
}


@dataclass
class AlgorithmFit:
    """The best member of one family: its parameters, its Delta to the PT averaged over positions
    and per position, and per position the best grid member's parameters and Delta."""

    family: str
    parameters: dict
    delta: float
    delta_per_position: list[float]
    best_per_position: list[dict]

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _log_grid(low: float, high: float, n: int = GRID_POINTS) -> list[float]:
    return [
        math.exp(math.log(low) + (math.log(high) - math.log(low)) * i / (n - 1)) for i in range(n)
    ]


def _golden(f: Callable[[float], float], low: float, high: float) -> float:
    """The minimiser of f on [low, high] (log scale) by golden-section search."""
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(GOLDEN_ITERATIONS):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(math.exp(d))
    return math.exp((a + b) / 2)


def _neighbours(grid: list[float], value: float) -> tuple[float, float]:
    i = grid.index(value)
    return grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]


class Reference:
    """Sequences xs (batch, n_points, n_dims), ys (batch, n_points) and the predictions
    (batch, n_points) to fit (the PT's); Delta is divided by `scale` (D)."""

    def __init__(self, xs, ys, reference, scale: float):
        self.xs, self.ys, self.reference, self.scale = xs, ys, reference, scale

    def delta_per_position(self, predictions: torch.Tensor) -> torch.Tensor:
        squared = (predictions.double() - self.reference.double()).square()
        squared = torch.nan_to_num(squared, nan=math.inf)  # a divergent member loses
        return squared.mean(0) / self.scale

    def delta(self, predictions: torch.Tensor) -> float:
        return float(self.delta_per_position(predictions).mean())


def _fit(family: str, data: Reference, members: dict) -> AlgorithmFit:
    """members: parameters (a tuple of (name, value) pairs) -> their predictions."""
    per_position = {key: data.delta_per_position(p) for key, p in members.items()}
    best = min(per_position, key=lambda key: float(per_position[key].mean()))
    table = torch.stack(list(per_position.values()))  # (members, positions)
    keys = list(per_position)
    winners = table.argmin(0).tolist()
    return AlgorithmFit(
        family,
        dict(best),
        float(per_position[best].mean()),
        per_position[best].tolist(),
        [{"parameters": dict(keys[w]), "delta": float(table[w, k])} for k, w in enumerate(winners)],
    )


def fit_ridge(data: Reference) -> AlgorithmFit:
    def predict(ridge: float) -> torch.Tensor:
        return Ridge(noise_std=math.sqrt(ridge), prior_std=1.0)(data.xs, data.ys)

    grid = _log_grid(*RANGES["ridge"])
    members = {(("ridge", r),): predict(r) for r in grid}
    best = min(members, key=lambda key: data.delta(members[key]))[0][1]
    refined = _golden(lambda r: data.delta(predict(r)), *_neighbours(grid, best))
    members[(("ridge", refined),)] = predict(refined)
    return _fit("Ridge", data, members)


def _gd_members(data: Reference, step_sizes, gd_steps: int, preconditioner_ridge=None) -> dict:
    members = {}
    for step_size in step_sizes:
        iterates = gd_iterates(data.xs, data.ys, step_size, gd_steps, preconditioner_ridge)
        for steps, predictions in enumerate(iterates, 1):
            key = (("steps", steps), ("step_size", step_size))
            if preconditioner_ridge is not None:
                key += (("preconditioner_ridge", preconditioner_ridge),)
            members[key] = predictions
    return members


def _gd_delta(data: Reference, steps: int, step_size: float, ridge: float | None = None) -> float:
    *_, last = gd_iterates(data.xs, data.ys, step_size, steps, ridge)
    return data.delta(last)


def _best_per_steps(members: dict, data: Reference) -> dict[int, dict]:
    """Per number of steps k, the parameters of its member closest to the reference."""
    best = {}
    for key, predictions in members.items():
        parameters = dict(key)
        delta = data.delta(predictions)
        if parameters["steps"] not in best or delta < best[parameters["steps"]][0]:
            best[parameters["steps"]] = (delta, parameters)
    return {steps: parameters for steps, (_, parameters) in best.items()}


def fit_gd(data: Reference, gd_steps: int = GD_STEPS) -> AlgorithmFit:
    grid = _log_grid(*RANGES["step_size"])
    members = _gd_members(data, grid, gd_steps)
    for steps, best in _best_per_steps(members, data).items():
        step_size = _golden(
            lambda eta, k=steps: _gd_delta(data, k, eta), *_neighbours(grid, best["step_size"])
        )
        *_, predictions = gd_iterates(data.xs, data.ys, step_size, steps)
        members[(("steps", steps), ("step_size", step_size))] = predictions
    return _fit("GD", data, members)


def _step_and_ridge(parameters: dict) -> tuple[float, float]:
    return parameters["step_size"], parameters["preconditioner_ridge"]


def fit_preconditioned_gd(data: Reference, gd_steps: int = GD_STEPS) -> AlgorithmFit:
    """A grid over lambda and the step size, then for the REFINED_STEPS values of k with the
    closest grid members REFINEMENT_ROUNDS alternating refinements of lambda and of the step
    size. (k, step, lambda) are not identifiable from predictions alone: more, smaller steps
    with another lambda come close to fewer, larger ones.)"""
    ridges = _log_grid(*RANGES["preconditioner_ridge"], n=13)
    step_sizes = _log_grid(0.05, 2.0, n=13)
    members = {}
    for ridge in ridges:
        members.update(_gd_members(data, step_sizes, gd_steps, ridge))
    spread = (ridges[1] / ridges[0], step_sizes[1] / step_sizes[0])  # grid spacing ratios
    per_steps = _best_per_steps(members, data)
    ranked = sorted(per_steps, key=lambda k: _gd_delta(data, k, *_step_and_ridge(per_steps[k])))
    for steps in ranked[:REFINED_STEPS]:
        step_size, ridge = _step_and_ridge(per_steps[steps])
        for round_ in range(REFINEMENT_ROUNDS):  # one coordinate at a time, brackets shrinking
            f_ridge, f_step = (factor ** (0.5**round_) for factor in spread)
            ridge = _golden(
                lambda r, k=steps, eta=step_size: _gd_delta(data, k, eta, r),
                ridge / f_ridge,
                ridge * f_ridge,
            )
            step_size = _golden(
                lambda eta, k=steps, r=ridge: _gd_delta(data, k, eta, r),
                step_size / f_step,
                step_size * f_step,
            )
        *_, predictions = gd_iterates(data.xs, data.ys, step_size, steps, ridge)
        key = (("steps", steps), ("step_size", step_size), ("preconditioner_ridge", ridge))
        members[key] = predictions
    return _fit("Preconditioned GD", data, members)


def _fit_1d(family: str, name: str, data: Reference, make, low: float, high: float) -> AlgorithmFit:
    """A family with one continuous parameter `name`: make(value) is its predictor."""
    grid = _log_grid(low, high, n=17)
    members = {((name, v),): make(v)(data.xs, data.ys) for v in grid}
    best = min(members, key=lambda key: data.delta(members[key]))[0][1]
    refined = _golden(lambda v: data.delta(make(v)(data.xs, data.ys)), *_neighbours(grid, best))
    members[((name, refined),)] = make(refined)(data.xs, data.ys)
    return _fit(family, data, members)


def fit_algorithms(model, task, n_sequences: int, seed: int, gd_steps: int = GD_STEPS) -> dict:
    """Per evaluation distribution: every family's AlgorithmFit and the winner (the smallest
    Delta), on n_sequences evaluation sequences (eval seed `seed`); the GD families take
    k = 1..gd_steps."""
    config = task.config
    family = family_of(config)
    scale = family.metric_scale(config)
    results = {}
    for distribution in family.distributions:
        if distribution == "pretrain" and task.pool is None:  # at M = inf it is the prior
            continue
        (xs, ys), _ = task.prediction_batch(distribution, seed, 0, n_sequences)
        with torch.inference_mode():
            reference = family.model_predictor(model)(xs, ys).float()
        data = Reference(xs, ys, reference, scale)
        fits = [fit_ridge(data), fit_gd(data, gd_steps), fit_preconditioned_gd(data, gd_steps)]
        if task.pool is not None:
            noise, prior = config.noise_std, config.prior_std
            low, high = RANGES["noise_std"]
            fits.append(
                _fit_1d(
                    "dMMSE",
                    "noise_std",
                    data,
                    lambda v: DMMSE(task.pool, v),
                    low * noise,
                    high * noise,
                )
            )
            low, high = RANGES["smoothing_std"]
            fits.append(
                _fit_1d(
                    "Smoothed dMMSE", "smoothing_std", data,
                    lambda v, noise=noise: SmoothedDMMSE(task.pool, noise, v), low * prior, high * prior,
                )
            )  # fmt: skip
        results[distribution] = {
            "fits": {fit.family: fit.to_json() for fit in fits},
            "winner": min(fits, key=lambda fit: fit.delta).family,
            "reference": MODEL_NAME,
        }
    return results
