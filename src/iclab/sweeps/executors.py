"""Executors run sweep jobs and hand back (job, outcome) pairs as jobs finish.

- LocalExecutor: in this process (workers = 1), or a pool of worker processes.
- RayExecutor: each job is a Ray task with declared resources (CPUs, a GPU fraction), on a
  cluster at `address` or on a local Ray started here. Workers ship files back through a Ray
  queue, so no shared filesystem is needed.

Both call on_message(message) in the driver for every report a worker makes (iclab.sweeps.worker),
always before the outcome of the job that made it. Results are bit-identical across executors for
equal torch threads per run (torch's CPU kernels may split sums by thread count): in-process runs use
this process's torch threads, a local pool of N workers on C cores C // N, a Ray task
int(cpus_per_run).
"""

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from iclab.config import ConfigError
from iclab.sweeps.worker import Job, Outcome, execute

RAY_MISSING = (
    "the ray executor needs Ray, which is an optional extra: pip install 'iclab[ray]' "
    "(or pip install 'ray[default]')"
)


class LocalExecutor:
    def __init__(self, workers: int = 1, threads_per_run: int | None = None):
        """threads_per_run: torch threads of each run; by default this process's setting when
        workers = 1, else the cores shared out among the workers."""
        if workers < 1:
            raise ConfigError(f"--workers = {workers} is not allowed: expected an integer >= 1")
        if threads_per_run is not None and threads_per_run < 1:
            raise ConfigError(
                f"--threads-per-run = {threads_per_run} is not allowed: expected an integer >= 1"
            )
        self.workers = workers
        if threads_per_run is None and workers == 1:
            import torch

            threads_per_run = torch.get_num_threads()  # in this process: its own setting
        self.threads_per_run = threads_per_run or max(1, (os.cpu_count() or 1) // workers)

    def run(self, jobs: list[Job], on_message: Callable) -> Iterator[tuple[Job, Outcome]]:
        if self.workers == 1:
            for job in jobs:
                yield job, execute(job, on_message)
            return
        # spawn, not fork: forking a process that has started torch's thread pools can deadlock.
        context = multiprocessing.get_context("spawn")
        with (
            context.Manager() as manager,
            ProcessPoolExecutor(max_workers=self.workers, mp_context=context) as pool,
        ):
            messages = manager.Queue()
            futures = {pool.submit(execute, job, messages.put): job for job in jobs}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=1.0)
                # A worker's puts complete before its future does: drain them first.
                while not messages.empty():
                    on_message(messages.get())
                for future in finished:
                    try:
                        outcome = future.result()
                    except BrokenProcessPool as error:
                        outcome = Outcome(error=f"the worker process died: {error!r}")
                    yield futures[future], outcome


class RayExecutor:
    def __init__(
        self, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0
    ):
        if cpus_per_run <= 0 or gpus_per_run < 0:
            raise ConfigError(
                f"--cpus-per-run = {cpus_per_run} and --gpus-per-run = {gpus_per_run} are not "
                "allowed: expected CPUs > 0 and a GPU fraction >= 0"
            )
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_MISSING) from None
        self.address, self.cpus_per_run, self.gpus_per_run = address, cpus_per_run, gpus_per_run
        self.threads_per_run = max(1, int(cpus_per_run))

    def run(self, jobs: list[Job], on_message: Callable) -> Iterator[tuple[Job, Outcome]]:
        import ray
        from ray.util.queue import Queue

        started_here = not ray.is_initialized()
        if started_here:
            if self.address is None:  # a local Ray on loopback, stopped when the sweep ends
                # Ray starts its workers at niceness 15; beside any busy process they starve
                # (torch's import alone took 90 s here). A sweep's workers are the work.
                os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(
                    address="local",
                    _node_ip_address="127.0.0.1",
                    include_dashboard=False,
                    log_to_driver=False,
                )
            else:
                ray.init(address=self.address, log_to_driver=False)
        try:
            messages = Queue(actor_options={"num_cpus": 0})
            task = ray.remote(execute).options(
                num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0
            )
            references = {task.remote(job, messages.put): job for job in jobs}
            while references:
                finished, _ = ray.wait(list(references), num_returns=1, timeout=1.0)
                # A worker's puts return before its task does: drain them first.
                while not messages.empty():
                    on_message(messages.get())
                for reference in finished:
                    try:
                        outcome = ray.get(reference)
                    except ray.exceptions.RayError as error:
                        outcome = Outcome(error=f"the Ray task failed: {error}")
                    yield references.pop(reference), outcome
        finally:
            if started_here:
                ray.shutdown()


def make_executor(
    name: str = "local",
    workers: int = 1,
    address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
    threads_per_run: int | None = None,
):
    if name == "local":
        return LocalExecutor(workers, threads_per_run)
    if name == "ray":
        return RayExecutor(address, cpus_per_run, gpus_per_run)
    raise ConfigError(f"--executor = {name!r} is not allowed: expected 'local' or 'ray'")
