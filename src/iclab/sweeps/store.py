"""A sweep directory, written only by the driver:

    DIR/sweep.json              every run ever asked of this directory: hash -> grid values
    DIR/runs/HASH/              one run directory per config hash (iclab.results layout)
    DIR/runs/HASH/failed.json   the traceback of a failed attempt (removed when a retry succeeds)

A run is complete when its eval.json exists; every file is written atomically and eval.json last,
so a killed sweep never leaves a half-written result and never redoes a complete run.
"""

import json
from pathlib import Path

from iclab.checkpoints import CheckpointError, checkpoint_step
from iclab.config import RunConfig, config_to_toml, load_config
from iclab.results import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    atomic_write_bytes,
    atomic_write_text,
    write_json,
)

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
FAILED_FILE = "failed.json"
STATUSES = ("complete", "failed", "interrupted", "pending")


class SweepError(RuntimeError):
    """A sweep directory is missing, not a sweep, or lacks the runs asked for."""


class SweepStore:
    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)

    def run_dir(self, run_hash: str) -> Path:
        return self.out_dir / RUNS_DIR / run_hash

    def grid_values(self, must_exist: bool = True) -> dict[str, dict]:
        """hash -> grid values of every run registered in this directory, in order."""
        path = self.out_dir / SWEEP_FILE
        if not path.exists():
            if must_exist:
                raise SweepError(
                    f"{str(self.out_dir)!r} is not a sweep directory (no {SWEEP_FILE})"
                )
            return {}
        try:
            return json.loads(path.read_text())["runs"]
        except (json.JSONDecodeError, KeyError) as error:
            raise SweepError(f"{str(path)!r} is not a sweep index: {error}") from None

    def register(self, runs) -> None:
        """Record runs (SweepRun) in sweep.json and write each new run's config.toml."""
        known = self.grid_values(must_exist=False)
        for run in runs:
            known.setdefault(run.run_hash, run.grid_values)
            config_path = self.run_dir(run.run_hash) / CONFIG_FILE
            if not config_path.exists():
                atomic_write_text(config_path, config_to_toml(run.config))
        write_json(self.out_dir / SWEEP_FILE, {"runs": known})

    def config(self, run_hash: str) -> RunConfig:
        return load_config(self.run_dir(run_hash) / CONFIG_FILE)

    def status(self, run_hash: str) -> str:
        run_dir = self.run_dir(run_hash)
        if (run_dir / EVAL_FILE).exists():
            return "complete"
        if (run_dir / FAILED_FILE).exists():
            return "failed"
        if (run_dir / CHECKPOINT_FILE).exists():
            return "interrupted"
        return "pending"

    def checkpoint_step(self, run_hash: str) -> int:
        """Steps done by the last checkpoint (0 without one)."""
        path = self.run_dir(run_hash) / CHECKPOINT_FILE
        return checkpoint_step(path) if path.exists() else 0

    def evaluation(self, run_hash: str) -> dict:
        return json.loads((self.run_dir(run_hash) / EVAL_FILE).read_text())

    def failure(self, run_hash: str) -> str:
        return json.loads((self.run_dir(run_hash) / FAILED_FILE).read_text())["traceback"]

    def resume_files(self, run_hash: str) -> dict[str, bytes]:
        """The files a worker needs to continue a run: its config, checkpoint and metrics."""
        run_dir = self.run_dir(run_hash)
        names = (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE)
        files = {name: (run_dir / name).read_bytes() for name in names if (run_dir / name).exists()}
        if CHECKPOINT_FILE in files:
            try:
                checkpoint_step(run_dir / CHECKPOINT_FILE)
            except CheckpointError:  # cannot happen with atomic writes, but never resume from it
                del files[CHECKPOINT_FILE]
        return files

    def write_checkpoint_files(self, run_hash: str, files: dict[str, bytes]) -> None:
        """A worker's checkpoint report; ignored once the run is complete."""
        if self.status(run_hash) == "complete":
            return
        for name in (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE):
            if name in files:
                atomic_write_bytes(self.run_dir(run_hash) / name, files[name])

    def write_final_files(self, run_hash: str, files: dict[str, bytes]) -> None:
        """A finished run's files, eval.json last (it marks the run complete)."""
        run_dir = self.run_dir(run_hash)
        for name, data in files.items():
            if name != EVAL_FILE:
                atomic_write_bytes(run_dir / name, data)
        (run_dir / FAILED_FILE).unlink(missing_ok=True)
        atomic_write_bytes(run_dir / EVAL_FILE, files[EVAL_FILE])

    def write_failure(self, run_hash: str, error: str) -> None:
        write_json(self.run_dir(run_hash) / FAILED_FILE, {"traceback": error})
