"""What an executor runs: one job (a single run, or a stacked ensemble of runs) in a scratch
directory of the worker's own. Workers never touch the sweep directory, so they need no shared
filesystem: a job starts from the files the driver sends (a resumed run's config, checkpoint and
metrics), reports progress and every checkpoint's files through `report`, and returns each run's
final files. The driver writes them (iclab.sweeps.store).

Messages passed to report: ("progress", run_hash, steps done), ("files", run_hash, files) and
("evaluation", run_hash, the metrics.jsonl record of a periodic evaluation)."""

import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from iclab.config import RunConfig
from iclab.training.run_directory import RESUME_FILES, RunDirectory


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


def execute(job: Job, report: Callable) -> Outcome:
    """Run a job; never raises for a failing run: the traceback comes back in the Outcome."""
    import torch

    from iclab.experiment import finish_run
    from iclab.training import train_runs

    hashes = job.run_hashes
    threads_before = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="iclab-run-") as scratch:
            run_dirs = [Path(scratch) / run_hash for run_hash in hashes]
            for run_dir, files in zip(run_dirs, job.files, strict=True):
                run_dir.mkdir()
                RunDirectory(run_dir).write_files(files)
            resume = any(job.files)

            def on_log(done: int, _loss: float) -> None:
                for run_hash in hashes:
                    report(("progress", run_hash, done))

            def on_checkpoint(_step: int) -> None:
                for run_hash, run_dir in zip(hashes, run_dirs, strict=True):
                    report(("files", run_hash, RunDirectory(run_dir).read_files(RESUME_FILES)))

            def on_evaluation(index: int, record: dict) -> None:
                report(("evaluation", hashes[index], record))

            callbacks = (on_log, on_checkpoint, on_evaluation)
            results = train_runs(job.configs, run_dirs, resume, False, None, *callbacks)
            for config, run_dir, result in zip(job.configs, run_dirs, results, strict=True):
                finish_run(config, run_dir, result.model, result.task, result.steps_per_second)
            return Outcome(files=[RunDirectory(run_dir).read_files() for run_dir in run_dirs])
    except Exception:
        return Outcome(error=traceback.format_exc())
    finally:
        torch.set_num_threads(threads_before)  # the in-process executor shares the driver's
