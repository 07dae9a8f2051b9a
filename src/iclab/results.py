"""Text tables for the terminal: plain aligned columns, and a run's evaluation summary."""

from iclab.evaluation import metric_labels


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain text table; floats with 4 significant digits."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def format_evaluation(evaluation: dict) -> str:
    """Every metric (position averages) per distribution, as a text table."""
    rows = []
    for distribution, result in evaluation["distributions"].items():
        for metric, label in metric_labels(evaluation).items():
            for name, value in result[f"{metric}_mean"].items():
                rows.append([distribution, f"{label} {name}", value])
    return format_table(["distribution", "metric (mean over positions)", "value"], rows)
