"""A sweep directory, written only by the driver:

    DIR/sweep.json              every run ever asked of this directory: hash -> grid values
    DIR/runs/HASH/              one run directory per config hash (training.RunDirectory)

A run is complete when its eval.json exists; every file is written atomically and eval.json last,
so a killed sweep never leaves a half-written result and never redoes a complete run.
"""

import re
from pathlib import Path

from iclab.files import corrupt, read_json, require_empty, write_json
from iclab.locks import LOCK_FILE
from iclab.training.run_directory import RESUME_FILES, RunDirectory
from iclab.validation import ConfigError

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
RUN_HASH = re.compile("[0-9a-f]{12}")


class SweepError(RuntimeError):
    """A sweep's runs failed, or its directory lacks the completed runs a study needs."""


class SweepStore:
    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)

    def run(self, run_hash: str) -> RunDirectory:
        return RunDirectory(self.out_dir / RUNS_DIR / run_hash)

    def grid_values(self, must_exist: bool = True) -> dict[str, dict]:
        """hash -> grid values of every run registered in this directory, in order."""
        path = self.out_dir / SWEEP_FILE
        if not path.exists():
            if must_exist:  # a wrong path given: a user error
                raise ConfigError(
                    f"{str(self.out_dir)!r} is not a sweep directory (no {SWEEP_FILE})"
                )
            return {}
        index = read_json(path, "sweep index")
        runs = index.get("runs") if isinstance(index, dict) else None
        if not (isinstance(runs, dict) and all(isinstance(v, dict) for v in runs.values())):
            raise corrupt(path, "sweep index", 'expected {"runs": {run hash: {grid values}}}')
        # The hashes name run directories: anything else could point outside the sweep.
        if bad := [key for key in runs if not RUN_HASH.fullmatch(key)]:
            raise corrupt(path, "sweep index", f"{bad[0]!r} is not a run hash (12 hex digits)")
        return runs

    def register(self, runs) -> None:
        """Record runs (SweepRun) in sweep.json and write each new run's config.toml. A directory
        without sweep.json must be new or empty (its lock file aside): nothing else's files are
        mixed with a sweep's."""
        if not (self.out_dir / SWEEP_FILE).exists():
            require_empty(self.out_dir, f"no sweep ({SWEEP_FILE})", ignore=(LOCK_FILE,))
        known = self.grid_values(must_exist=False)
        for sweep_run in runs:
            known.setdefault(sweep_run.run_hash, sweep_run.grid_values)
            run = self.run(sweep_run.run_hash)
            if not run.has_config():
                run.write_config(sweep_run.config)
        write_json(self.out_dir / SWEEP_FILE, {"runs": known})

    def write_checkpoint_files(self, run_hash: str, files: dict[str, bytes]) -> None:
        """A worker's checkpoint report; ignored once the run is complete."""
        run = self.run(run_hash)
        if run.status() != "complete":
            run.write_files({name: files[name] for name in RESUME_FILES if name in files})
