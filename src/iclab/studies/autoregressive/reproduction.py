"""`iclab reproduce autoregressive`: Sander et al. 2024 in miniature on a CPU, as a Markdown report.

One part per acceptance point of issue 3 (parts.py), every claim a Check: (a) one-layer linear
attention against one-step GD, (b) the diagonal model's closed form and its minimisers, (c) the
diagonal model trained on sampled sequences, (d) positional-encoding-only attention. Training runs
live in OUT/runs/NAME (runs.py); OUT/report.md links the figures (report.py); OUT/report.json
holds every number.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from iclab.files import require_empty, write_json
from iclab.studies.autoregressive.figures import plot_head_cosines
from iclab.studies.autoregressive.parts import (
    Check,
    closed_form_checks,
    part_diagonal,
    part_linear,
    part_pe_only,
)
from iclab.studies.autoregressive.report import write_report
from iclab.sweeps.store import SWEEP_FILE


@dataclass(frozen=True)
class Settings:
    """Sizes and step counts. FULL runs in a few minutes on 2 CPU cores; MINI is for tests."""

    # (family, d, start): the reference code's fixed start, and a random one for comparison.
    linear: tuple[tuple[str, int, str], ...] = (
        ("unitary", 5, "fixed"),
        ("rotations", 6, "fixed"),
        ("unitary", 5, "random"),
        ("rotations", 6, "random"),
    )
    linear_n_steps: int = 20
    linear_train_steps: int = 1000
    diagonal_dims: int = 10
    diagonal_n_steps: int = 20
    # (family, heads, init_std): H = d and H < d for unitary from a small init, H = d also from a
    # large one (head orthogonality), H = d / 2 for rotations.
    diagonal_runs: tuple[tuple[str, int, float], ...] = (
        ("unitary", 10, 0.01),
        ("unitary", 10, 1.0),
        ("unitary", 5, 0.01),
        ("rotations", 5, 0.01),
    )
    diagonal_train_steps: int = 600
    pe_n_steps: int = 30
    pe_mus: tuple[float, ...] = (50.0, 300.0)
    pe_train_steps: int = 1000
    theory_dims: int = 10
    theory_n_steps: int = 20
    minimiser_steps: int = 300
    eval_sequences: int = 4096


FULL = Settings()
MINI = Settings(
    linear=(("unitary", 2, "fixed"),),
    linear_n_steps=4,
    linear_train_steps=10,
    diagonal_dims=2,
    diagonal_n_steps=4,
    diagonal_runs=(("unitary", 2, 0.01), ("unitary", 2, 1.0), ("rotations", 1, 0.01)),
    diagonal_train_steps=10,
    pe_n_steps=5,
    pe_mus=(50.0, 300.0),
    pe_train_steps=10,
    theory_dims=2,
    theory_n_steps=3,
    minimiser_steps=10,
    eval_sequences=64,
)


@dataclass
class Report:
    """What a reproduction wrote (report.md at path) and found."""

    path: Path
    checks: list[Check]
    seconds: float
    numbers: dict = field(default_factory=dict)

    @property
    def all_hold(self) -> bool:
        return all(check.holds for check in self.checks)

    @property
    def summary(self) -> str:
        """One line per check: holds / DOES NOT HOLD, name, numbers."""
        return "\n".join(
            f"{'holds' if c.holds else 'DOES NOT HOLD':>13}  {c.name}: {c.numbers}"
            for c in self.checks
        )


def reproduce_autoregressive(
    out: str | Path, progress: bool = True, *, settings: Settings = FULL, threads: int = 1
) -> Report:
    """Run parts (a)-(d), write OUT/report.md, OUT/report.json and the figures; see the module
    docstring. threads: torch threads while it runs (these tiny models gain nothing from more)."""
    out = Path(out)
    runs = out / "runs"
    # OUT is new, empty, or an earlier reproduction of this study (whose runs it reuses); a
    # task-diversity sweep has runs/ and a report too, but also sweep.json.
    earlier = (runs.is_dir() or (out / "report.json").exists()) and not (out / SWEEP_FILE).exists()
    if not earlier:
        require_empty(out, "no reproduction of this study (runs/, report.json)")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    try:
        clock = time.perf_counter()
        linear, linear_checks = part_linear(settings, runs, progress)
        seconds["a"] = time.perf_counter() - clock
        clock = time.perf_counter()
        theory, theory_checks = closed_form_checks(settings)
        seconds["b"] = time.perf_counter() - clock
        clock = time.perf_counter()
        diagonal, diagonal_checks = part_diagonal(settings, runs, progress)
        plot_head_cosines(diagonal, out / "head_cosines.png")
        seconds["c"] = time.perf_counter() - clock
        clock = time.perf_counter()
        pe = part_pe_only(settings, runs, out, progress)
        seconds["d"] = time.perf_counter() - clock
    finally:
        torch.set_num_threads(previous_threads)
    total = time.perf_counter() - started
    checks = linear_checks + theory_checks + diagonal_checks
    numbers = {
        "linear": linear,
        "theory": theory,
        "diagonal": diagonal,
        "pe_only": pe,
        "seconds": seconds | {"total": total},
    }
    note = (
        ""
        if settings == FULL
        else (
            "**Not the study's settings** (e.g. `--quick`): a pipeline check, not a measurement; "
            "its checks are expected to fail."
        )
    )
    path = write_report(out, numbers, checks, total, threads, note)
    write_json(
        out / "report.json",
        numbers | {"checks": [c.__dict__ for c in checks], "settings": settings.__dict__},
    )
    return Report(path, checks, total, numbers)
