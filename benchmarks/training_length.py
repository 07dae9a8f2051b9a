"""What a longer run buys: the demo recipe (`tiny`) at M = infinity trained for 0.5x, 1x and 2x its
steps (each a full schedule), one thread per run: wall minutes against the PT's mean MSE/D on the
true prior as a multiple of Ridge's (the Bayes-optimal error there), with the figure
training_length.png beside the JSON. --quick: 1-layer width-16 models for 40 and 80 steps, a smoke
test of the path."""

import tempfile
import time
from pathlib import Path

import torch

from iclab.config import load_config
from iclab.experiment import run as run_experiment
from iclab.plots import plt, save_figure

MULTIPLES = (0.5, 1, 2)
QUICK = ["model.n_layers=1", "model.n_embd=16", "train.eval_every=20", "eval.n_sequences=256"]


def run(quick: bool) -> list[dict]:
    base = load_config("tiny", ["task.n_tasks=inf"])
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="iclab-bench-") as scratch:
            for multiple in (1, 2) if quick else MULTIPLES:
                steps = round((40 if quick else base.train.steps) * multiple)
                overrides = ["task.n_tasks=inf", f"train.steps={steps}", *(QUICK if quick else [])]
                config = load_config("tiny", overrides)
                started = time.perf_counter()
                evaluation = run_experiment(
                    config, Path(scratch) / f"x{multiple:g}", progress=False
                )
                minutes = (time.perf_counter() - started) / 60
                mse = evaluation["distributions"]["true"]["mse_mean"]
                rows.append(
                    {
                        "benchmark": "training_length",
                        "case": f"{multiple:g}x ({steps} steps)",
                        "steps": steps,
                        "wall minutes (1 thread)": minutes,
                        "PT / Ridge MSE (true, M = inf)": mse["PT"] / mse["Ridge"],
                    }
                )
    finally:
        torch.set_num_threads(threads)
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(5, 3.5))
    minutes = [r["wall minutes (1 thread)"] for r in rows]
    ratios = [r["PT / Ridge MSE (true, M = inf)"] for r in rows]
    axis.plot(minutes, ratios, marker="o", label="PT (tiny preset, M = $\\infty$)")
    for r, x, y in zip(rows, minutes, ratios, strict=True):
        axis.annotate(f"{r['steps']} steps", (x, y), textcoords="offset points", xytext=(4, 4))
    axis.axhline(1.0, color="black", ls="--", label="Ridge (Bayes-optimal)")
    axis.axhline(1.1, color="gray", ls=":", label="1.10 x Ridge")
    axis.set_xlabel("training time per run (minutes, one CPU thread)")
    axis.set_ylabel("MSE/D of PT / MSE/D of Ridge (true prior)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return save_figure(figure, path, pdf=False)


if __name__ == "__main__":  # python -m benchmarks.training_length OUT.png
    import json
    import sys

    measured = run(quick="--quick" in sys.argv)
    print(json.dumps(measured, indent=1))
    print(plot(measured, Path(next(a for a in sys.argv[1:] if a.endswith(".png")))))
