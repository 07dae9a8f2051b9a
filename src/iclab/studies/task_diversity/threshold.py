"""Task-diversity threshold M*: bisection over log2 M, training only the runs it needs.

Criteria, evaluated on the true distribution (new tasks) at M = 2^e, named here for regression (the
family's Bayes estimators in general: studies.task_diversity.pairs):
- "batch_doubling" (the paper's operational one): doubling the batch size lowers Delta_PT,Ridge;
  below M* more data per task pushes the PT toward dMMSE (away from Ridge), above it toward Ridge.
- "fraction": Delta_PT,Ridge < fraction x Delta_dMMSE,Ridge at the smaller batch size: the PT is
  much closer to Ridge than its own pool's Bayes estimator is.

Bisection assumes the criterion fails below M* and holds above it; the result is the bracket
(largest exponent seen failing, smallest seen holding) and every evaluation behind it.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from iclab.config import ConfigError
from iclab.files import corrupt, read_json, write_json
from iclab.studies.task_diversity.pairs import StudyPairs, study_pairs
from iclab.sweeps.runner import run_runs
from iclab.sweeps.spec import SweepRun, SweepSpec
from iclab.sweeps.store import SweepError, SweepStore

CRITERIA = ("batch_doubling", "fraction")
THRESHOLD_FILE = "threshold.json"
DEFAULT_FRACTION = 0.5


@dataclass
class Evaluation:
    log2_tasks: int
    holds: bool
    explanation: str
    runs: list[str]  # run hashes behind it


@dataclass
class Threshold:
    criterion: str
    low: int | None  # largest log2 M where the criterion fails (None: it held everywhere)
    high: int | None  # smallest log2 M where it holds (None: it failed everywhere)
    evaluations: dict[int, Evaluation] = field(default_factory=dict)

    def describe(self) -> str:
        if self.high is None:
            return f"M* > 2^{self.low} ({self.criterion} fails at every M tried)"
        if self.low is None:
            return f"M* <= 2^{self.high} ({self.criterion} holds at every M tried)"
        return f"2^{self.low} < M* <= 2^{self.high}"


def bisect(holds: Callable[[int], bool], low: int, high: int) -> tuple[int | None, int | None]:
    """(largest failing, smallest holding) exponent found by bisection on [low, high]; each
    exponent is evaluated at most once, the ends first."""
    if low > high:
        raise ValueError(f"empty range: log2 M from {low} to {high}")
    if holds(low):
        return None, low
    if not holds(high):
        return high, None
    while high - low > 1:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle
    return low, high


def judge(
    criterion: str,
    fraction: float,
    batch_sizes: list[int],
    true_deltas: list[dict],
    pairs: StudyPairs,
) -> tuple[bool, str]:
    """Whether the criterion holds at one M, with the numbers that decide it. true_deltas[i]:
    the Delta means on the true prior ({"PT,Ridge": ..., ...}) of the run at batch_sizes[i]."""
    to_prior = [deltas[pairs.to_prior] for deltas in true_deltas]
    if criterion == "batch_doubling":
        ok = to_prior[1] < to_prior[0]
        return ok, (
            f"Delta_{pairs.to_prior}(true) batch {batch_sizes[0]}: {to_prior[0]:.4g}, batch "
            f"{batch_sizes[1]}: {to_prior[1]:.4g} ({'lower' if ok else 'not lower'})"
        )
    reference = true_deltas[0][pairs.reference]
    ok = to_prior[0] < fraction * reference
    return ok, (
        f"Delta_{pairs.to_prior}(true) = {to_prior[0]:.4g} {'<' if ok else '>='} {fraction:g} x "
        f"Delta_{pairs.reference}(true) = {fraction * reference:.4g}"
    )


def threshold_settings(spec: SweepSpec) -> dict:
    """criterion, fraction, batch sizes and the log2 M range, from [threshold] and the grid."""
    settings = dict(spec.threshold)
    unknown = set(settings) - {"criterion", "fraction", "log2_min", "log2_max", "batch_sizes"}
    if unknown:
        raise ConfigError(f"unknown key(s) in [threshold]: {', '.join(sorted(unknown))}")
    criterion = settings.setdefault("criterion", "batch_doubling")
    if criterion not in CRITERIA:
        raise ConfigError(f"threshold.criterion = {criterion!r} is not allowed: one of {CRITERIA}")
    fraction = settings.setdefault("fraction", DEFAULT_FRACTION)
    if type(fraction) not in (int, float) or not 0 < fraction < 1:
        raise ConfigError(f"threshold.fraction = {fraction!r} is not allowed: a number in (0, 1)")
    batch_sizes = settings.setdefault(
        "batch_sizes", spec.grid.get("batch_size", [spec.config({}).train.batch_size])
    )
    if (
        not isinstance(batch_sizes, list)
        or not batch_sizes
        or not all(type(b) is int and b >= 1 for b in batch_sizes)
    ):
        raise ConfigError(
            f"threshold.batch_sizes = {batch_sizes!r} is not allowed: a list of integers >= 1"
        )
    if criterion == "batch_doubling" and (
        len(batch_sizes) != 2 or batch_sizes[1] != 2 * batch_sizes[0]
    ):
        raise ConfigError(
            f"threshold.batch_sizes = {batch_sizes} is not allowed for batch_doubling: "
            "expected [B, 2B]"
        )
    finite = [m for m in spec.grid.get("n_tasks", []) if isinstance(m, int)]
    settings.setdefault("log2_min", min(finite).bit_length() - 1 if finite else 0)
    settings.setdefault("log2_max", max(finite).bit_length() - 1 if finite else 15)
    low, high = settings["log2_min"], settings["log2_max"]
    if not all(type(value) is int and value >= 0 for value in (low, high)) or low > high:
        raise ConfigError(
            f"threshold.log2_min = {low!r}, log2_max = {high!r} is not allowed: "
            "integers with 0 <= log2_min <= log2_max"
        )
    return settings


def find_threshold(
    spec: SweepSpec, out_dir: str | Path, executor=None, progress: bool = True
) -> Threshold:
    """Bisect for M* with the spec's [threshold] settings; runs go to (and come from) out_dir."""
    settings = threshold_settings(spec)
    criterion, fraction = settings["criterion"], settings["fraction"]
    batch_sizes = settings["batch_sizes"][: 2 if criterion == "batch_doubling" else 1]
    # Other grid keys (seed, ...) take their first value.
    fixed = {k: v[0] for k, v in spec.grid.items() if k not in ("n_tasks", "batch_size")}
    store = SweepStore(out_dir)
    result = Threshold(criterion, None, None)
    pairs = study_pairs(spec.config({}).task)

    def runs_at(exponent: int) -> list[SweepRun]:
        assignments = ({**fixed, "n_tasks": 2**exponent, "batch_size": b} for b in batch_sizes)
        return [SweepRun(spec.config(values), values) for values in assignments]

    def holds(exponent: int) -> bool:
        if exponent in result.evaluations:
            return result.evaluations[exponent].holds
        runs = runs_at(exponent)
        outcome = run_runs(runs, out_dir, executor, spec.ensemble, progress=progress)
        if outcome.failed:
            raise SweepError(
                f"threshold search: runs at M = 2^{exponent} failed; see `iclab status {out_dir}`"
            )
        true = [store.run(run.run_hash).evaluation()["distributions"]["true"] for run in runs]
        ok, text = judge(criterion, fraction, batch_sizes, [t["delta_mean"] for t in true], pairs)
        result.evaluations[exponent] = Evaluation(
            exponent, ok, text, [run.run_hash for run in runs]
        )
        return ok

    low, high = settings["log2_min"], settings["log2_max"]
    # Completed runs (a sweep's grid) cost nothing: bracket with them first, then bisect inside.
    for exponent in range(low, high + 1):
        if all(store.run(run.run_hash).status() == "complete" for run in runs_at(exponent)):
            holds(exponent)
    holding = [e for e, evaluation in result.evaluations.items() if evaluation.holds]
    if holding:
        high = min(holding)
        low = max((e for e in result.evaluations if e < high), default=low)
    result.low, result.high = bisect(holds, low, high)
    return result


def write_threshold(out_dir: str | Path, result: Threshold) -> Path:
    path = Path(out_dir) / THRESHOLD_FILE
    write_json(path, dataclasses.asdict(result))
    return path


def read_threshold(out_dir: str | Path) -> Threshold | None:
    """The last threshold search written to out_dir, if any."""
    path = Path(out_dir) / THRESHOLD_FILE
    if not path.exists():
        return None
    data = read_json(path, "threshold file")
    try:  # anything but what write_threshold wrote is damage
        evaluations = {int(e): Evaluation(**v) for e, v in data.pop("evaluations").items()}
        return Threshold(**data, evaluations=evaluations)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise corrupt(path, "threshold file", f"not a threshold search ({error!r})") from None
