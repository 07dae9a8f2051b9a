"""`iclab make-example-data`: two small synthetic CSVs for `iclab predict` and `iclab forecast`.

regression.csv: 4 features in their own units (offsets and scales differ), a target that is a
known linear rule of them plus noise (EXAMPLE_RULE), CONTEXT_ROWS rows with the target and
QUERY_ROWS without. series.csv: 3 channels of s_{t+1} = W s_t + noise with W a rotation by
SERIES_ANGLE about a fixed axis (orthogonal, as an `orthogonal` autoregressive run assumes).
"""

import csv
import io
import math
from pathlib import Path

import numpy as np

from iclab.files import atomic_write_text
from iclab.user_data.csv_table import refuse_existing

REGRESSION_FILE = "regression.csv"
SERIES_FILE = "series.csv"
FEATURE_OFFSETS = (0.0, 5.0, -1.0, 100.0)
FEATURE_SCALES = (1.0, 2.0, 0.5, 10.0)
EXAMPLE_RULE = (1.5, (0.8, -1.2, 0.5, 1.0))  # intercept, weights on the standardised features
TARGET_NOISE = 0.35
CONTEXT_ROWS, QUERY_ROWS = 30, 5
SERIES_ROWS, SERIES_ANGLE, SERIES_NOISE = 60, 0.35, 0.01


def regression_rows(seed: int = 0) -> tuple[list[str], list[list[float | None]], np.ndarray]:
    """Header, rows (target None in the query rows) and the true targets of every row."""
    rng = np.random.default_rng(seed)
    n = CONTEXT_ROWS + QUERY_ROWS
    standard = rng.standard_normal((n, len(FEATURE_SCALES)))
    features = standard * FEATURE_SCALES + FEATURE_OFFSETS
    intercept, weights = EXAMPLE_RULE
    target = intercept + standard @ np.array(weights) + TARGET_NOISE * rng.standard_normal(n)
    rows = [
        [*map(float, x), float(y) if i < CONTEXT_ROWS else None]
        for i, (x, y) in enumerate(zip(features, target, strict=True))
    ]
    return [f"x{j + 1}" for j in range(len(FEATURE_SCALES))] + ["y"], rows, target


def series_rows(seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Header and states (SERIES_ROWS, 3) of the rotation series."""
    rng = np.random.default_rng(seed)
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    w = np.eye(3) + math.sin(SERIES_ANGLE) * cross + (1 - math.cos(SERIES_ANGLE)) * cross @ cross
    state = rng.standard_normal(3)
    states = [state / np.linalg.norm(state)]
    for _ in range(SERIES_ROWS - 1):
        states.append(w @ states[-1] + SERIES_NOISE * rng.standard_normal(3))
    return ["a", "b", "c"], np.array(states)


def _csv(header: list[str], rows) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else f"{v:.6g}" for v in row])
    return text.getvalue()


def write_example_data(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """regression.csv and series.csv in out_dir (refused if either exists)."""
    out_dir = Path(out_dir)
    paths = [out_dir / REGRESSION_FILE, out_dir / SERIES_FILE]
    refuse_existing(*paths)
    header, rows, _ = regression_rows(seed)
    atomic_write_text(paths[0], _csv(header, rows))
    header, states = series_rows(seed)
    atomic_write_text(paths[1], _csv(header, states.tolist()))
    return paths
