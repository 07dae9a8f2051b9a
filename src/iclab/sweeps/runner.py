"""Run what a sweep directory still lacks, on an executor, and summarise its state."""

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from iclab.checkpoints import CheckpointError, verify_checkpoint
from iclab.config import ConfigError
from iclab.families import family_of
from iclab.files import CorruptFile
from iclab.locks import exclusive
from iclab.sweeps.executors import LocalExecutor
from iclab.sweeps.spec import SweepRun, SweepSpec
from iclab.sweeps.store import SweepStore
from iclab.sweeps.worker import Job
from iclab.tracking import RunTracker, check_backend
from iclab.training import ensemble_key
from iclab.training.run_directory import CHECKPOINT_FILE, RESUME_FILES


@dataclass
class SweepOutcome:
    completed: list[str] = field(default_factory=list)  # run hashes completed by this call
    failed: dict[str, str] = field(default_factory=dict)  # run hash -> traceback
    skipped: list[str] = field(default_factory=list)  # complete before, or failed (no retry)
    seconds: float = 0.0


def _checkpoint_problem(run: SweepRun, store: SweepStore) -> str | None:
    """Why the run's checkpoint cannot be resumed from (the CheckpointError's message), or None
    when it has none or a sound one. Such a run fails: starting it over would overwrite the file."""
    directory = store.run(run.run_hash)
    if not directory.has_checkpoint():
        return None
    try:
        verify_checkpoint(directory.file(CHECKPOINT_FILE), run.run_hash)
    except CheckpointError as error:
        return f"{error}; remove it to train the run from the start"
    return None


def make_jobs(runs: list[SweepRun], store: SweepStore, ensemble: bool, threads: int) -> list[Job]:
    """One job per run, or with `ensemble` one per group of runs that can train stacked (same
    ensemble_key, and resuming from the same checkpoint step). Each job ships its runs'
    checkpoints as they are: the worker refuses a corrupt one rather than starting over."""
    groups: dict = defaultdict(list)
    for index, run in enumerate(runs):
        key = ensemble_key(run.config) if ensemble else None
        group = (key, store.run(run.run_hash).checkpoint_step()) if key is not None else index
        groups[group].append(run)
    return [
        Job(
            configs=[run.config for run in members],
            files=[store.run(run.run_hash).read_files(RESUME_FILES) for run in members],
            threads=threads,
        )
        for members in groups.values()
    ]


def run_runs(
    runs: list[SweepRun],
    out_dir: str | Path,
    executor=None,
    ensemble: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    log_to: str | None = None,
) -> SweepOutcome:
    """Train and evaluate every run of `runs` that out_dir does not hold complete yet; with
    log_to (iclab.tracking.BACKENDS) mirror each run's evaluations and figures to that tracker,
    grouped by the sweep directory's name.

    Failed runs are recorded (failed.json) and skipped on later calls unless retry_failed; the
    rest goes on. Interrupted runs resume from their last checkpoint. Runs the executor hands
    back no outcome for (a local pool broke when one of its workers died) run again, from their
    last checkpoint, as long as each round settles at least one run. The sweep directory is
    locked meanwhile (iclab.locks): a second driver on it is refused."""
    check_backend(log_to)
    with exclusive(out_dir, "sweep directory"):
        return _run_runs(runs, out_dir, executor, ensemble, retry_failed, progress, log_to)


def _run_runs(runs, out_dir, executor, ensemble: bool, retry_failed, progress: bool, log_to):
    started = time.perf_counter()
    executor = executor or LocalExecutor()
    store = SweepStore(out_dir)
    store.register(runs)
    outcome = SweepOutcome()
    todo = []
    for run in runs:
        status = store.run(run.run_hash).status()
        if status == "complete" or (status == "failed" and not retry_failed):
            outcome.skipped.append(run.run_hash)
        elif (problem := _checkpoint_problem(run, store)) is not None:
            store.run(run.run_hash).write_failure(problem)
            outcome.failed[run.run_hash] = problem
        else:
            todo.append(run)
    trackers = {}
    if log_to is not None:
        group = Path(out_dir).resolve().name
        trackers = {run.run_hash: RunTracker(log_to, out_dir, run.config, group) for run in todo}
    try:
        _run_rounds(todo, store, executor, ensemble, trackers, outcome, progress)
    finally:
        for tracker in trackers.values():
            tracker.abort()  # a no-op once finished: closes the failed and interrupted runs'
    outcome.seconds = time.perf_counter() - started
    return outcome


def _run_rounds(
    todo, store, executor, ensemble: bool, trackers: dict, outcome, progress: bool
) -> None:
    """Runs todo in rounds of jobs with a progress bar, recording each outcome in store and outcome and feeding
    the runs' trackers, until every run is settled or a round settles none."""
    steps = {run.run_hash: store.run(run.run_hash).checkpoint_step() for run in todo}
    total = {run.run_hash: run.config.train.steps for run in todo}
    with tqdm(
        total=sum(total.values()),
        initial=sum(steps.values()),
        disable=not progress,
        unit="step",
        desc=f"sweep ({len(todo)} runs)",
        dynamic_ncols=True,
    ) as bar:

        def on_message(message) -> None:
            kind, run_hash, payload = message
            if kind == "progress":
                steps[run_hash] = payload
            elif kind == "files":
                store.write_checkpoint_files(run_hash, payload)
            elif kind == "evaluation" and run_hash in trackers:
                trackers[run_hash].log(payload)
            bar.update(sum(steps.values()) - bar.n)

        while todo:
            jobs = make_jobs(todo, store, ensemble, executor.threads_per_run)
            settled = set()
            for job, result in executor.run(jobs, on_message):
                for index, run_hash in enumerate(job.run_hashes):
                    if result.error is None:
                        store.run(run_hash).write_files(result.files[index])
                        outcome.completed.append(run_hash)
                        if run_hash in trackers:
                            trackers[run_hash].finish(store.run(run_hash))
                        steps[run_hash] = total[run_hash]
                    else:
                        store.run(run_hash).write_failure(result.error)
                        if run_hash in trackers:
                            trackers[run_hash].abort()
                        outcome.failed[run_hash] = result.error
                    settled.add(run_hash)
                bar.update(sum(steps.values()) - bar.n)
                bar.set_postfix_str(f"{len(outcome.completed)} done, {len(outcome.failed)} failed")
            if not settled:
                break  # no progress: leave the rest pending rather than retry forever
            todo = [run for run in todo if run.run_hash not in settled]


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    executor=None,
    retry_failed: bool = False,
    progress: bool = True,
    log_to: str | None = None,
) -> SweepOutcome:
    return run_runs(spec.runs(), out_dir, executor, spec.ensemble, retry_failed, progress, log_to)


def status_rows(out_dir: str | Path) -> tuple[list[str], list[list]]:
    """(header, rows) of `iclab status`: one row per registered run, with the headline metrics
    of its task family (the union over the families in the sweep). A run whose files cannot be
    read is listed as "corrupt", with the message, beside the others."""
    store = SweepStore(out_dir)
    grid = store.grid_values()
    keys = list(dict.fromkeys(key for values in grid.values() for key in values))
    configs = {}
    for run_hash in grid:
        try:
            configs[run_hash] = store.run(run_hash).config()
        except ConfigError as error:
            configs[run_hash] = error
    families = [family_of(c.task) for c in configs.values() if not isinstance(c, ConfigError)]
    shown = list(dict.fromkeys(m for family in families for m in family.status_metrics))
    header = ["run", "status", *keys, "step", *(f"{d} {pair}" for d, pair in shown), "note"]
    rows = []
    for run_hash, values in grid.items():
        status, step, metrics, note = _status_row(store.run(run_hash), configs[run_hash], shown)
        rows.append([run_hash, status, *(values.get(k, "") for k in keys), step, *metrics, note])
    return header, rows


def _step_shown(run, status: str) -> int | str:
    """The checkpoint's step; blank for a failed run's corrupt one (its note says why)."""
    try:
        return run.checkpoint_step()
    except CheckpointError:
        if status != "failed":
            raise
        return ""


def _status_row(run, config, shown) -> tuple[str, int | str, list, str]:
    """(status, steps done, the shown metrics, a note) of one run."""
    metrics = [""] * len(shown)
    try:
        if isinstance(config, ConfigError):
            raise config
        status = run.status()
        if status == "complete":
            distributions = run.evaluation()["distributions"]
            metrics = [distributions.get(d, {}).get("delta_mean", {}).get(p, "") for d, p in shown]
            return status, config.train.steps, metrics, ""
        note = run.failure().strip().splitlines()[-1:] if status == "failed" else []
        return status, _step_shown(run, status), metrics, "".join(note)[:60]
    except (ConfigError, CorruptFile, CheckpointError) as error:
        return "corrupt", "", metrics, str(error)
