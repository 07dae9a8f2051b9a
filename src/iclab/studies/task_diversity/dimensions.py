"""The dimension study: does the task-diversity threshold M* grow with the dimension D?

One threshold sweep per D (sweeps/task_diversity_dimensions*_dD.toml, K = 2D and sigma^2 = D/32,
the signal-to-noise ratio of the paper's D = 8, sigma^2 = 0.25), each in its own subdirectory
`D<n>` of the output. The paper (12 layers, width 256) finds M* about 2^14, 2^15, 2^16 at
D = 8, 16, 32, and at its largest M that Delta_dMMSE,Ridge grows with D while Delta_PT,Ridge
stays roughly flat.
"""

import math
from pathlib import Path

from iclab.results import format_table
from iclab.studies.task_diversity.figures import plot_sweep, task_diversity_rows
from iclab.studies.task_diversity.pairs import study_pairs
from iclab.studies.task_diversity.threshold import find_threshold, write_threshold
from iclab.sweeps.runner import run_sweep
from iclab.sweeps.store import SweepError

DIMENSION_SPECS = {
    "dimensions-cpu": ("task_diversity_dimensions-cpu_d2", "task_diversity_dimensions-cpu_d4",
                       "task_diversity_dimensions-cpu_d8"),
    "dimensions": ("task_diversity_dimensions_d8", "task_diversity_dimensions_d16",
                   "task_diversity_dimensions_d32"),
}  # fmt: skip


def _bracket(low: int | None, high: int | None) -> str:
    """log2 bracket of M* as (2^low, 2^high]; a side that the grid did not find is left open."""
    if high is None:
        return "never held" if low is None else f"> 2^{low}"
    return f"<= 2^{high}" if low is None else f"(2^{low}, 2^{high}]"


def reproduce_dimensions(
    specs: list, out_dir: str | Path, executor=None, progress=True, pdf=False
) -> tuple[str, str]:
    """Each spec's sweep and threshold search in out_dir/D<n_dims>; returns the report's
    Markdown body and a short summary."""
    out_dir = Path(out_dir)
    rows, sections = [], []
    for spec in specs:
        task = spec.config({}).task
        sub = out_dir / f"D{task.n_dims}"
        sweep = run_sweep(spec, sub, executor, progress=progress)
        if sweep.failed:
            raise SweepError(f"runs {', '.join(sweep.failed)} failed; see `iclab status {sub}`")
        threshold = find_threshold(spec, sub, executor, progress=progress)
        write_threshold(sub, threshold)
        figures = plot_sweep(sub, pdf=pdf)
        pairs = study_pairs(task)
        at_largest = max(
            (r for r in task_diversity_rows(sub) if r["n_tasks"] is not None),
            key=lambda r: (r["n_tasks"], -r["batch_size"]),
        )
        rows.append(
            [
                task.n_dims,
                task.n_points,
                task.noise_std**2,
                _bracket(threshold.low, threshold.high),
                f"2^{math.log2(at_largest['n_tasks']):g}",
                at_largest[f"true:{pairs.to_prior}"],
                at_largest[f"true:{pairs.reference}"],
            ]
        )
        sections.append(
            f"### D = {task.n_dims}\n\nThreshold ({threshold.criterion}): "
            f"{threshold.describe()}\n\n![task diversity, D = {task.n_dims}]"
            f"({sub.name}/{figures[0].name})\n"
        )
    header = ["D", "K", "sigma^2", "M* bracket", "largest M", "Delta PT,Ridge (true)",
              "Delta dMMSE,Ridge (true)"]  # fmt: skip
    table = format_table(header, rows)
    lows = [r[3] for r in rows]
    body = (
        "| D | M* bracket |\n|---|---|\n"
        + "".join(f"| {r[0]} | {r[3]} |\n" for r in rows)
        + f"\n```\n{table}\n```\n\n"
        + "Deltas are means over positions on the true prior at the largest finite M of each "
        "grid, smallest batch size.\n\n" + "\n".join(sections)
    )
    return body, f"{table}\nM* brackets by D: {', '.join(lows)}"
