"""What an executor runs: one job (a single run, or a stacked ensemble of runs) in a scratch
directory of the worker's own. Workers never touch the sweep directory, so they need no shared
filesystem: a job starts from the files the driver sends (a resumed run's config, checkpoint and
metrics), reports progress and every checkpoint's files through `report`, and returns each run's
final files. The driver writes them (iclab.sweeps.store).

Messages passed to report: ("progress", run_hash, steps done) and ("files", run_hash, files).
"""

import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from iclab.config import RunConfig
from iclab.results import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE

# Files a checkpoint report carries: enough to resume the run elsewhere.
RESUME_FILES = (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE)


@dataclass
class Job:
    configs: list[RunConfig]  # one run, or the members of an ensemble
    files: list[dict[str, bytes]]  # per run: the files it resumes from (empty: a fresh start)
    threads: int = 1

    @property
    def run_hashes(self) -> list[str]:
        return [config.run_hash() for config in self.configs]


@dataclass
class Outcome:
    files: list[dict[str, bytes]] = field(default_factory=list)  # per run, when it succeeded
    error: str | None = None  # the traceback, when it failed


def read_files(run_dir: Path, names=None) -> dict[str, bytes]:
    """{file name: bytes} of a run directory's files (all, or those in `names` that exist)."""
    paths = sorted(p for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    return {p.name: p.read_bytes() for p in paths if names is None or p.name in names}


def execute(job: Job, report: Callable) -> Outcome:
    """Run a job; never raises for a failing run: the traceback comes back in the Outcome."""
    import torch

    from iclab.ensemble import train_ensemble
    from iclab.experiment import finish_run, run

    hashes = job.run_hashes
    threads_before = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="iclab-run-") as scratch:
            run_dirs = [Path(scratch) / run_hash for run_hash in hashes]
            for run_dir, files in zip(run_dirs, job.files, strict=True):
                run_dir.mkdir()
                for name, data in files.items():
                    (run_dir / name).write_bytes(data)
            resume = any(job.files)

            def on_log(done: int, _loss: float) -> None:
                for run_hash in hashes:
                    report(("progress", run_hash, done))

            def on_checkpoint(_step: int) -> None:
                for run_hash, run_dir in zip(hashes, run_dirs, strict=True):
                    report(("files", run_hash, read_files(run_dir, RESUME_FILES)))

            if len(job.configs) == 1:
                run(job.configs[0], run_dirs[0], resume, False, on_log, on_checkpoint)
            else:
                results = train_ensemble(
                    job.configs, run_dirs, resume, on_log=on_log, on_checkpoint=on_checkpoint
                )
                for config, run_dir, result in zip(job.configs, run_dirs, results, strict=True):
                    finish_run(config, run_dir, result.model, result.task, result.steps_per_second)
            return Outcome(files=[read_files(run_dir) for run_dir in run_dirs])
    except Exception:
        return Outcome(error=traceback.format_exc())
    finally:
        torch.set_num_threads(threads_before)  # the in-process executor shares the driver's
