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

A local pool's processes (its workers and the message queue's manager) die with the driver, even
when it is killed by SIGKILL. When a worker dies, only the job it was running comes back failed;
the jobs that just lost their pool (not started yet, or running in a worker the broken pool
terminated) do not come back at all: they are still to do (iclab.sweeps.runner reruns them).
"""

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.managers import SyncManager

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
        cores = os.cpu_count() or 1
        if threads_per_run is not None and not 1 <= threads_per_run <= cores:
            raise ConfigError(  # 100000 threads crashed torch (a segfault, no message)
                f"--threads-per-run = {threads_per_run} is not allowed: expected an integer from 1 "
                f"to this machine's {cores} cores"
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
        driver = (os.getpid(),)
        manager = SyncManager(ctx=context)
        manager.start(_die_with_parent, driver)
        with manager, ProcessPoolExecutor(self.workers, context, _die_with_parent, driver) as pool:
            messages = manager.Queue()
            futures = {
                pool.submit(_execute_and_report_pid, index, job, messages.put): index
                for index, job in enumerate(jobs)
            }
            # pid -> Process of each worker: the pool's own table (the dict outlives shutdown).
            workers = pool._processes
            started = {}  # job index -> pid of the worker that took it

            def drain() -> None:
                # A worker's puts complete before its future does: drain them first.
                while not messages.empty():
                    message = messages.get()
                    if message[0] == "started":
                        started[message[1]] = message[2]
                    else:
                        on_message(message)

            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=1.0)
                drain()
                for future in finished:
                    index = futures[future]
                    try:
                        outcome = future.result()
                    except BrokenProcessPool as error:
                        # A worker died and the pool failed every unfinished future. Once the
                        # pool has terminated (SIGTERM) and reaped its other workers, only a job
                        # whose worker ended otherwise (SIGKILL, a crash, an exit) failed.
                        pool.shutdown(wait=True)
                        drain()
                        pid = started.get(index)
                        if pid is None or not _died_by_itself(workers.get(pid)):
                            continue  # not started, or stopped by the pool: still to do
                        outcome = Outcome(error=f"the worker process died: {error!r}")
                    yield jobs[index], outcome


def _execute_and_report_pid(index: int, job: Job, report: Callable) -> Outcome:
    """What a pool worker runs: tells the driver which process took job `index`, then runs it."""
    report(("started", index, os.getpid()))
    return execute(job, report)


def _died_by_itself(process) -> bool:
    """Whether a pool worker ended other than by the broken pool's terminate() (SIGTERM). A
    process missing from the pool's table counts as dead."""
    if process is None:
        return True
    return process.exitcode not in (None, -signal.SIGTERM)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Initializer of a pool's workers and of its manager: end this process when the driver (pid
    `parent`) dies, even by SIGKILL. On Linux the kernel kills it when the thread that started it
    exits (the one iterating LocalExecutor.run, which outlives the pool); elsewhere a daemon
    thread polls the parent pid."""
    armed = False
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the driver died before this process could ask
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


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
        if address not in (None, "auto", "local"):
            _require_reachable(address)
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
            nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
            too_large = infeasible_request(nodes, self.cpus_per_run, self.gpus_per_run)
            if too_large:  # Ray would wait for such a node for ever, silently
                raise ConfigError(too_large)
            unused = unused_gpus_warning(ray.cluster_resources().get("GPU", 0), self.gpus_per_run)
            if unused:
                warnings.warn(unused, RuntimeWarning, stacklevel=2)
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


def _require_reachable(address: str) -> None:
    """ConfigError unless something listens at a Ray address host:port (ray:// included): on
    an address where nothing answers ray.init retries for ever."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        return  # not host:port: left to Ray to judge
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise ConfigError(
            f"--address {address} is not allowed: nothing answers there ({error}); give the "
            "address of a running Ray cluster's head (ray start --head prints it)"
        ) from None


def infeasible_request(nodes: list[dict], cpus_per_run: float, gpus_per_run: float) -> str | None:
    """Why no node of a Ray cluster (each node's resources: {"CPU": n, "GPU": n, ...}) can take
    one run's request, else None."""
    largest_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    largest_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    if cpus_per_run > largest_cpus or gpus_per_run > largest_gpus:
        return (
            f"--cpus-per-run {cpus_per_run:g} and --gpus-per-run {gpus_per_run:g} are not "
            f"allowed: the largest node of the Ray cluster has {largest_cpus:g} CPUs and "
            f"{largest_gpus:g} GPUs, so no run could start"
        )
    return None


def unused_gpus_warning(cluster_gpus: float, gpus_per_run: float) -> str | None:
    """The warning for a Ray cluster with GPUs whose runs ask for none, else None."""
    if cluster_gpus > 0 and gpus_per_run == 0:
        return (
            f"the Ray cluster has {cluster_gpus:g} GPU(s) but --gpus-per-run is 0: Ray reserves "
            "no GPU for the runs, so they may train on CPUs; pass --gpus-per-run G (a fraction "
            "such as 0.25 shares each GPU among runs)"
        )
    return None


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
