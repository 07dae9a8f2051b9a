"""The best smoothed pool Bayes estimator of a run (the paper's smoothed dMMSE).

Smoothed dMMSE is the Bayes estimator of the pool blurred into a mixture of isotropic Gaussians
N(w_i, s^2 I) around the pool's tasks. Its blur s is chosen, as in the paper's appendix, to do
best on the true distribution: over SMOOTHING_GRID (multiples of prior_std), the s of smallest
error on new tasks. If the PT were only a blurred dMMSE, the best blur would be as close to the
prior's Bayes estimator (Ridge) as the PT is; the study reports Delta_{Smoothed dMMSE, Ridge}
beside Delta_{PT, Ridge}. Results are cached per run in the sweep directory (SMOOTHING_FILE).
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from iclab.evaluation import evaluate, metric_labels
from iclab.families import family_of, make_task
from iclab.files import corrupt, read_json, write_json
from iclab.studies.task_diversity.pairs import study_pairs
from iclab.sweeps.store import SweepStore
from iclab.training import resolve_device

# s / prior_std, from a dMMSE-like blur to wider than the prior: for a small pool the best blur
# is wide (at M = 1 about sqrt(1 + |w_1|^2 / (D prior_std^2)) prior_std); 1.3 was too narrow.
SMOOTHING_GRID = (0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5)
SEARCH_SEQUENCES = 4096
SMOOTHING_FILE = "smoothed_bayes.json"
WHAT = "smoothed Bayes file"


@dataclass(frozen=True)
class Smoothing:
    """The best blur of one run's pool and how close its estimator is to the prior's Bayes one."""

    name: str  # the family's name of the estimator (regression: Smoothed dMMSE)
    n_tasks: int  # M, the size of the pool blurred
    smoothing_std: float  # the best s
    error: dict[str, float]  # distribution -> its error (the family's first metric), mean
    to_prior_bayes: dict[str, float]  # distribution -> Delta_{smoothed, prior's Bayes}, mean
    errors_on_true: dict[float, float]  # every s tried -> its error on the true distribution


def best_smoothing(task, seed: int, n_sequences: int = SEARCH_SEQUENCES) -> Smoothing | None:
    """Search SMOOTHING_GRID for the task's pool (None at M = infinity or for a family without a
    smoothed estimator); evaluated on n_sequences of each distribution from `seed`."""
    family = family_of(task.config)
    if family.smoothed_bayes is None or task.pool is None:
        return None
    pairs = study_pairs(task.config)
    stds = [fraction * task.config.prior_std for fraction in SMOOTHING_GRID]
    candidates = {f"s={s:.6g}": family.smoothed_baseline(task, s) for s in stds}
    prior_bayes = family.baselines(task)[pairs.prior_bayes]
    evaluation = evaluate(
        task,
        {**candidates, pairs.prior_bayes: prior_bayes},
        tuple((name, pairs.prior_bayes) for name in candidates),
        n_sequences,
        seed,
    )
    error = next(iter(metric_labels(evaluation)))
    on_true = evaluation["distributions"]["true"][f"{error}_mean"]
    errors = {s: on_true[name] for s, name in zip(stds, candidates, strict=True)}
    best_std = min(errors, key=errors.get)
    best = f"s={best_std:.6g}"
    return Smoothing(
        name=family.smoothed_bayes,
        n_tasks=task.config.n_tasks,
        smoothing_std=best_std,
        error={d: r[f"{error}_mean"][best] for d, r in evaluation["distributions"].items()},
        to_prior_bayes={
            d: r["delta_mean"][f"{best},{pairs.prior_bayes}"]
            for d, r in evaluation["distributions"].items()
        },
        errors_on_true=errors,
    )


def _from_json(data: dict) -> Smoothing:
    return Smoothing(
        **{**data, "errors_on_true": {float(k): v for k, v in data["errors_on_true"].items()}}
    )


def read_smoothing(out_dir: str | Path) -> dict[str, Smoothing | None]:
    """Run hash -> Smoothing of the runs in the sweep's SMOOTHING_FILE (None for a run without a
    pool to blur; an empty map if there is no such file)."""
    path = Path(out_dir) / SMOOTHING_FILE
    if not path.exists():
        return {}
    data = read_json(path, WHAT)
    try:
        return {key: None if value is None else _from_json(value) for key, value in data.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise corrupt(path, WHAT, "not a map of run hash -> smoothing") from None


def sweep_smoothing(out_dir: str | Path) -> dict[str, Smoothing | None]:
    """Run hash -> the best smoothing of every completed run of the sweep in out_dir (None at
    M = infinity), computed for the runs not yet in its SMOOTHING_FILE (or searched there over
    another grid) and added there."""
    cached = read_smoothing(out_dir)
    store = SweepStore(out_dir)
    found = {}
    for run_hash in store.grid_values():
        run = store.run(run_hash)
        if run.status() != "complete":
            continue
        config = run.config()
        grid = {fraction * config.task.prior_std for fraction in SMOOTHING_GRID}
        if run_hash in cached and (
            cached[run_hash] is None or set(cached[run_hash].errors_on_true) == grid
        ):
            found[run_hash] = cached[run_hash]
            continue
        task = make_task(config.task, resolve_device(config.train.device))
        found[run_hash] = best_smoothing(task, config.eval.eval_seed)
    if found != cached:
        data = {k: None if v is None else asdict(v) for k, v in found.items()}
        write_json(Path(out_dir) / SMOOTHING_FILE, data)
    return found
