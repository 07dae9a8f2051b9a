"""The tidy results table of a sweep: one row per completed run and evaluated distribution.

Columns: run (hash), family (task.family), the family's key settings (regression: n_tasks, written
"inf" for M = infinity, and n_dims), batch_size, seed, the sweep's other grid keys, distribution, and
METRIC_NAME for every metric of the family (regression: mse_NAME, MSE/D averaged over positions, per
predictor, and delta_A,B, Delta/D averaged over positions, per metric pair).
"""

import csv
import io
from pathlib import Path

from iclab.evaluation import metric_means
from iclab.families import family_of
from iclab.files import atomic_write_text
from iclab.sweeps.store import SweepError, SweepStore

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"


def results_rows(out_dir: str | Path) -> list[dict]:
    store = SweepStore(out_dir)
    rows = []
    for run_hash, grid_values in store.grid_values().items():
        run = store.run(run_hash)
        if run.status() != "complete":
            continue
        config = run.config()
        settings = {
            "run": run_hash,
            "family": config.task.family,
            **family_of(config.task).settings(config.task),
            "batch_size": config.train.batch_size,
            "seed": config.train.seed,
        }
        settings.update({k: v for k, v in grid_values.items() if k not in settings})
        evaluation = run.evaluation()
        for distribution in evaluation["distributions"]:
            rows.append(
                {**settings, "distribution": distribution, **metric_means(evaluation, distribution)}
            )
    return rows


def write_results(out_dir: str | Path) -> list[Path]:
    """results.csv (and results.parquet when pyarrow is installed) in out_dir; returns the paths."""
    rows = results_rows(out_dir)
    if not rows:
        raise SweepError(f"no completed runs in {str(out_dir)!r}; run `iclab sweep` first")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    written = [Path(out_dir) / RESULTS_CSV]
    atomic_write_text(written[0], text.getvalue())
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = {c: [None if row.get(c) is None else str(row.get(c)) for row in rows] for c in columns}
    for column in columns:
        values = [row.get(column) for row in rows]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            table[column] = values
    pq.write_table(pa.table(table), Path(out_dir) / RESULTS_PARQUET)
    return [*written, Path(out_dir) / RESULTS_PARQUET]
