"""The early-stopping time t* of the task-diversity study (papers.md, section A).

Below the task-diversity threshold, Delta_PT,Ridge on new tasks first falls (the PT learns to
regress) and then rises again (it specialises to its pool): the paper finds its minimum at a step
t* that grows like M^0.47. Per run, t* is the evaluation step with the smallest Delta between the
PT and the prior's Bayes estimator (pairs.to_prior), read from the periodic evaluations of
metrics.jsonl (log-spaced with train.evals_per_doubling). The minimum is interior when the final
value exceeds it by more than INTERIOR_STANDARD_ERRORS standard errors of the difference (taken
as independent, which overstates it: every evaluation of a run reuses the same sequences). A
log-log least-squares fit over the runs with interior minima gives the exponent with its 95%
confidence interval.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from iclab.files import atomic_write_text
from iclab.plots import plt, save_figure
from iclab.results import format_table
from iclab.studies.task_diversity.pairs import StudyPairs, study_pairs
from iclab.sweeps.store import SweepError, SweepStore

INTERIOR_STANDARD_ERRORS = 2.0
DISTRIBUTIONS = ("true", "pretrain")
TSTAR_FIGURE = "tstar.png"
TSTAR_TABLE = "tstar.md"
PAPER_EXPONENT = 0.47
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's).
T_QUANTILES = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True)
class EarlyStopping:
    """t* of one run on one distribution, with the values that decide whether it is interior."""

    n_tasks: int | None  # None: M = infinity
    step: int  # t*, the evaluation step with the smallest Delta
    value: float  # Delta at t*
    standard_error: float
    final_step: int
    final_value: float
    final_standard_error: float

    @property
    def rise(self) -> float:
        """How far Delta rose from its minimum to the final evaluation."""
        return self.final_value - self.value

    @property
    def rise_standard_error(self) -> float:
        return math.hypot(self.standard_error, self.final_standard_error)

    @property
    def interior(self) -> bool:
        """The final value exceeds the minimum by more than INTERIOR_STANDARD_ERRORS standard
        errors (False where the evaluations carry none)."""
        return self.rise > INTERIOR_STANDARD_ERRORS * self.rise_standard_error


def early_stopping(
    records: list[dict], pair: str, distribution: str, n_tasks: int | None
) -> EarlyStopping:
    """t* over the periodic evaluations `records` (metrics.jsonl) of Delta `pair`."""
    points = []
    for record in records:
        result = record["eval"]["distributions"][distribution]
        standard_error = result.get("delta_mean_se", {}).get(pair, math.nan)
        points.append((record["step"], result["delta_mean"][pair], standard_error))
    if not points:
        raise SweepError("no periodic evaluations to find t* in")
    best = min(points, key=lambda point: point[1])
    final = max(points, key=lambda point: point[0])
    return EarlyStopping(n_tasks, *best, *final)


@dataclass(frozen=True)
class PowerLaw:
    """log t* = intercept + exponent log M, fitted by least squares over `n_runs` runs."""

    exponent: float
    low: float  # 95% confidence interval of the exponent (nan with fewer than 3 runs)
    high: float
    intercept: float
    n_runs: int

    def __call__(self, n_tasks: float) -> float:
        return math.exp(self.intercept) * n_tasks**self.exponent


def fit_power_law(n_tasks: list[int], steps: list[int]) -> PowerLaw | None:
    """Least-squares fit of log t* against log M; None with fewer than two distinct M."""
    if len(set(n_tasks)) < 2:
        return None
    xs, ys = [math.log(m) for m in n_tasks], [math.log(t) for t in steps]
    n = len(xs)
    x_bar, y_bar = sum(xs) / n, sum(ys) / n
    sxx = sum((x - x_bar) ** 2 for x in xs)
    exponent = sum((x - x_bar) * (y - y_bar) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = y_bar - exponent * x_bar
    if n < 3:
        return PowerLaw(exponent, math.nan, math.nan, intercept, n)
    residuals = sum((y - intercept - exponent * x) ** 2 for x, y in zip(xs, ys, strict=True))
    slope_se = math.sqrt(residuals / (n - 2) / sxx)
    quantile = T_QUANTILES[n - 3] if n - 2 <= len(T_QUANTILES) else 1.96
    return PowerLaw(
        exponent, exponent - quantile * slope_se, exponent + quantile * slope_se, intercept, n
    )


@dataclass
class TstarStudy:
    """t* of every completed run of a sweep, per distribution, with the fits."""

    pairs: StudyPairs
    runs: dict[str, list[EarlyStopping]]  # distribution -> one per run, in increasing M
    curves: dict[str, dict]  # distribution -> {n_tasks: [(step, Delta), ...]} (first run per M)
    fits: dict[str, PowerLaw | None]  # distribution -> fit over the interior, finite-M runs


def _m_order(n_tasks: int | None) -> float:
    return math.inf if n_tasks is None else n_tasks


def tstar_study(out_dir: str | Path) -> TstarStudy:
    """t* of the completed runs of the sweep in out_dir, on both distributions."""
    store = SweepStore(out_dir)
    runs: dict[str, list] = {d: [] for d in DISTRIBUTIONS}
    curves: dict[str, dict] = {d: {} for d in DISTRIBUTIONS}
    pairs = None
    for run_hash in store.grid_values():
        run = store.run(run_hash)
        if run.status() != "complete":
            continue
        config = run.config()
        pairs = pairs or study_pairs(config.task)
        records = run.metrics()
        for distribution in DISTRIBUTIONS:
            found = early_stopping(records, pairs.to_prior, distribution, config.task.n_tasks)
            runs[distribution].append(found)
            curves[distribution].setdefault(
                config.task.n_tasks,
                [
                    (
                        r["step"],
                        r["eval"]["distributions"][distribution]["delta_mean"][pairs.to_prior],
                    )
                    for r in records
                ],
            )
    if pairs is None:
        raise SweepError(f"no completed runs in {str(out_dir)!r}; run `iclab sweep` first")
    fits = {}
    for distribution, found in runs.items():
        found.sort(key=lambda e: _m_order(e.n_tasks))
        interior = [e for e in found if e.interior and e.n_tasks is not None]
        fits[distribution] = fit_power_law(
            [e.n_tasks for e in interior], [e.step for e in interior]
        )
    return TstarStudy(pairs, runs, curves, fits)


def _m_label(n_tasks: int | None) -> str:
    return "inf" if n_tasks is None else str(n_tasks)


def describe_fit(fit: PowerLaw | None) -> str:
    if fit is None:
        return "no fit: fewer than two task diversities with an interior minimum"
    interval = "" if math.isnan(fit.low) else f", 95% interval [{fit.low:.2f}, {fit.high:.2f}]"
    return f"t* ~ M^{fit.exponent:.2f}{interval} over {fit.n_runs} runs (paper: M^{PAPER_EXPONENT})"


def format_tstar(study: TstarStudy) -> str:
    """The t* table of both distributions and their fits, as Markdown."""
    sections = []
    pair = study.pairs.to_prior
    header = ["M", "t*", f"Delta_{pair} at t*", "SE", "final step", "final Delta", "SE",
              "rise / its SE", "interior"]  # fmt: skip
    for distribution in DISTRIBUTIONS:
        rows = [
            [
                _m_label(e.n_tasks),
                e.step,
                e.value,
                e.standard_error,
                e.final_step,
                e.final_value,
                e.final_standard_error,
                e.rise / e.rise_standard_error if e.rise_standard_error > 0 else math.nan,
                "yes" if e.interior else "no",
            ]  # fmt: skip
            for e in study.runs[distribution]
        ]
        sections.append(
            f"### Evaluated on the {'true prior' if distribution == 'true' else 'pretraining pool'}"
            f"\n\n```\n{format_table(header, rows)}\n```\n\n{describe_fit(study.fits[distribution])}"
        )
    criterion = (
        f"t* is the evaluation step with the smallest Delta_{pair}; it is interior when the final "
        f"value exceeds it by more than {INTERIOR_STANDARD_ERRORS:g} standard errors."
    )
    return criterion + "\n\n" + "\n\n".join(sections) + "\n"


def plot_tstar(study: TstarStudy, path: Path, pdf: bool = False) -> Path:
    """Left: Delta_PT,Ridge on the true prior over training, one line per M, t* marked (open
    marker where the minimum is not interior). Right: t* against M on log-log axes with the fit,
    for both distributions."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    curves = study.curves["true"]
    order = sorted(curves, key=_m_order)
    colors = dict(
        zip(
            order,
            plt.cm.viridis([i / max(1, len(order) - 1) for i in range(len(order))]),
            strict=True,
        )
    )
    for n_tasks in order:
        steps, values = zip(*curves[n_tasks], strict=True)
        label = "M = $\\infty$" if n_tasks is None else f"M = 2^{math.log2(n_tasks):g}"
        left.plot(steps, values, color=colors[n_tasks], label=label)
    for e in study.runs["true"]:
        face = colors[e.n_tasks] if e.interior else "none"
        left.plot(e.step, e.value, marker="o", color=colors[e.n_tasks], mfc=face, ls="")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("training step")
    left.set_ylabel(f"$\\Delta_{{{study.pairs.to_prior}}}$ on the true prior")
    left.set_title("$t^*$ marked (filled: interior minimum)")
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    for distribution, color in zip(DISTRIBUTIONS, ("tab:blue", "tab:red"), strict=True):
        found = [e for e in study.runs[distribution] if e.n_tasks is not None and e.interior]
        name = "true prior" if distribution == "true" else "pretraining pool"
        if found:
            right.plot(
                [e.n_tasks for e in found], [e.step for e in found], "o", color=color,
                label=f"$t^*$, {name}",
            )  # fmt: skip
        fit = study.fits[distribution]
        if fit is not None:
            ms = sorted(e.n_tasks for e in found)
            right.plot(
                ms, [fit(m) for m in ms], color=color, ls="--",
                label=f"fit $M^{{{fit.exponent:.2f}}}$ ({name})",
            )  # fmt: skip
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("task diversity M (log2 scale)")
    right.set_ylabel("$t^*$ (training step)")
    right.set_title(f"early-stopping time (paper: $t^* \\propto M^{{{PAPER_EXPONENT}}}$)")
    right.grid(alpha=0.3)
    if right.lines:
        right.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path, pdf)


def write_tstar(out_dir: str | Path, pdf: bool = False) -> tuple[TstarStudy, list[Path]]:
    """tstar.md and tstar.png in out_dir."""
    out_dir = Path(out_dir)
    study = tstar_study(out_dir)
    table = out_dir / TSTAR_TABLE
    atomic_write_text(table, "# Early-stopping time t*\n\n" + format_tstar(study))
    return study, [table, plot_tstar(study, out_dir / TSTAR_FIGURE, pdf)]


def reproduce_tstar(
    spec, out_dir: str | Path, expectation: str, executor=None, progress=True, pdf=False
) -> tuple[str, str]:
    """The sweep `spec` (its runs evaluated at log-spaced steps), then t* of every run: returns
    the report's Markdown body and a short summary."""
    from iclab.sweeps.runner import run_sweep

    out_dir = Path(out_dir)
    sweep = run_sweep(spec, out_dir, executor, progress=progress)
    if sweep.failed:
        failed = ", ".join(sweep.failed)
        raise SweepError(f"runs {failed} failed; see `iclab status {out_dir}` and retry")
    study, paths = write_tstar(out_dir, pdf)
    fits = "\n".join(f"- {d}: {describe_fit(study.fits[d])}" for d in DISTRIBUTIONS)
    body = (
        f"{expectation}\n\n![t*]({paths[1].name})\n\n{format_tstar(study)}\n"
        f"## The exponent\n\n{fits}\n"
    )
    summary = f"{format_tstar(study)}\n{fits}"
    return body, summary
