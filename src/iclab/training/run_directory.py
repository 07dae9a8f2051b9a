"""One run is a directory, and RunDirectory is the only code that knows its layout:

    config.toml               the resolved config (its hash names the run)
    metrics.jsonl             one JSON object per periodic evaluation
    checkpoint.safetensors    model and optimizer state and the step count
    checkpoint-step-N.safetensors   kept copies at the evaluation steps (train.keep_checkpoints)
    eval.json                 the final evaluation; written last, it marks the run complete
    failed.json               a sweep's record of a failed attempt (removed when a retry succeeds)
    *.png, analysis.json      figures and analyses beside them

Every file is written atomically, so a killed process never leaves a half-written one behind.
Training, evaluation, analysis and sweeps open and write runs through this class.
"""

import json
import math
from pathlib import Path

import torch

from iclab.checkpoints import (
    CheckpointInfo,
    checkpoint_step,
    restore_checkpoint,
    save_checkpoint,
)
from iclab.config import ConfigError, RunConfig, config_to_toml, load_config
from iclab.evaluation import metric_labels
from iclab.files import (
    atomic_write_bytes,
    atomic_write_text,
    corrupt,
    read_json,
    read_jsonl,
    require_empty,
    write_json,
)

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"
KEPT_CHECKPOINT_PREFIX = "checkpoint-step-"
KEPT_CHECKPOINT_FORMAT = KEPT_CHECKPOINT_PREFIX + "{step:08d}.safetensors"
EVAL_FILE = "eval.json"
REEVALUATION_FILE = "reevaluation.json"
FAILED_FILE = "failed.json"
# The files a run resumes from (what a sweep worker ships back at every checkpoint), in the
# order they are written: the metrics before the checkpoint, so that a kill in between leaves
# records beyond the checkpoint (dropped on resume), never a checkpoint beyond its records.
RESUME_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE)
STATUSES = ("complete", "failed", "interrupted", "pending")


def _evaluation_problem(evaluation) -> str | None:
    """What is wrong with the shape of an evaluation (eval.json, a metrics record's "eval")."""
    distributions = evaluation.get("distributions") if isinstance(evaluation, dict) else None
    if not isinstance(distributions, dict):
        return "expected a JSON object with a 'distributions' object"
    labels = metric_labels(evaluation)
    if not (isinstance(labels, dict) and labels):
        return "'metric_labels' is not a non-empty object"
    keys = [f"{metric}_mean" for metric in labels]
    for name, result in distributions.items():
        if not (isinstance(result, dict) and all(isinstance(result.get(k), dict) for k in keys)):
            return f"distribution {name!r} lacks one of the objects {keys}"
        for key in [*keys, *labels]:  # the means, and the per-position lists where present
            table = result.get(key, {})
            if not isinstance(table, dict):
                return f"{name}.{key} is not an object"
            for estimator, values in table.items():
                numbers = values if key in labels and isinstance(values, list) else [values]
                if not all(_is_number(v) for v in numbers):
                    return f"{name}.{key}.{estimator} is not a finite number or a list of them"
    return None


def _is_number(value) -> bool:
    """A finite JSON number: evaluations never hold NaN or infinities (a run stops at a
    non-finite loss), so one that does was damaged."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _steps_problem(steps: list[int], expected: list[int]) -> str:
    def listed(values: list[int]) -> str:
        return ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "") or "none"

    return (
        f"its records are at steps {listed(steps)}, the run evaluates at steps {listed(expected)}"
    )


def _metrics_problem(record) -> str | None:
    """What is wrong with the shape of one line of metrics.jsonl."""
    if not isinstance(record, dict):
        return "not a JSON object"
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return "no integer 'step'"
    problem = _evaluation_problem(record.get("eval"))
    return None if problem is None else f"'eval' is not an evaluation: {problem}"


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of a file of this run (figures, analyses)."""
        return self.path / name

    # -- creation and identity -----------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: RunConfig, resume: bool) -> "RunDirectory":
        """A directory for a new run of `config`, or with `resume` the existing run of the same
        config. Refuses to start a fresh run where one exists, so nothing is overwritten."""
        run = cls(path)
        if run.has_config():
            if not resume:
                raise ConfigError(
                    f"run directory {str(run.path)!r} already holds a run; pass --resume to "
                    "continue it or choose another --out"
                )
            existing = run.config()
            if existing.run_hash() != config.run_hash():
                raise ConfigError(
                    f"cannot resume {str(run.path)!r}: its config (hash {existing.run_hash()}) "
                    f"differs from the requested one (hash {config.run_hash()})"
                )
            return run
        if resume:
            raise ConfigError(f"cannot resume: {str(run.path / CONFIG_FILE)!r} does not exist")
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError(f"run directory {str(run.path)!r} is a file; choose another --out")
        require_empty(run.path, f"no iclab run ({CONFIG_FILE})")
        run.write_config(config)
        return run

    def has_config(self) -> bool:
        return (self.path / CONFIG_FILE).exists()

    def config(self) -> RunConfig:
        if not self.has_config():
            raise ConfigError(
                f"{str(self.path)!r} is not an iclab run directory (no {CONFIG_FILE})"
            )
        return load_config(self.path / CONFIG_FILE)

    def write_config(self, config: RunConfig) -> None:
        atomic_write_text(self.path / CONFIG_FILE, config_to_toml(config))

    def status(self) -> str:
        """One of STATUSES: complete (eval.json), failed, interrupted (a checkpoint), pending."""
        if (self.path / EVAL_FILE).exists():
            return "complete"
        if (self.path / FAILED_FILE).exists():
            return "failed"
        if self.has_checkpoint():
            return "interrupted"
        return "pending"

    # -- metrics -------------------------------------------------------------------------------
    def metrics(self) -> list[dict]:
        """The periodic evaluations so far; a complete run has at least its last step's."""
        return self._metrics_and_steps()[0]

    def _metrics_and_steps(self) -> tuple[list[dict], list[int]]:
        """The records of metrics.jsonl, checked to be one per evaluation step of the run in
        order (a line lost or moved is damage), and the run's evaluation steps."""
        path = self.path / METRICS_FILE
        records = read_jsonl(path, "metrics file", _metrics_problem) if path.exists() else []
        if not records and self.status() == "complete":
            raise corrupt(path, "metrics file", "no evaluation records in a complete run")
        expected = self.config().train.evaluation_steps() if self.has_config() else []
        steps = [r["step"] for r in records]
        if self.has_config() and steps != expected[: len(steps)]:
            raise corrupt(path, "metrics file", _steps_problem(steps, expected))
        return records, expected

    def write_metrics(self, records: list[dict]) -> None:
        text = "".join(json.dumps(record) + "\n" for record in records)
        atomic_write_text(self.path / METRICS_FILE, text)

    def append_metrics(self, record: dict) -> None:
        """Add one evaluation record (rewrites the small file atomically rather than appending)."""
        self.write_metrics([*self.metrics(), record])

    def drop_metrics_after(self, step: int) -> None:
        """On resume: records after the checkpoint's step (0 without one) will be written again
        by this run."""
        records, steps = self._metrics_and_steps()
        kept = [r for r in records if r["step"] <= step]
        expected = [s for s in steps if s <= step]
        if len(kept) != len(expected):  # records lost before the checkpoint would stay lost
            found = [r["step"] for r in kept]
            raise corrupt(self.path / METRICS_FILE, "metrics file", _steps_problem(found, expected))
        self.write_metrics(kept)

    # -- checkpoint ----------------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT_FILE).exists()

    def save_checkpoint(
        self, model, optimizer, step: int, run_hash: str | None = None, train_losses=None
    ) -> None:
        """Write the checkpoint, tied to the run of run_hash (default: this run's config)."""
        run_hash = self.config().run_hash() if run_hash is None else run_hash
        save_checkpoint(self.path / CHECKPOINT_FILE, model, optimizer, step, run_hash, train_losses)

    def save_kept_checkpoint(self, model, optimizer, step: int, run_hash: str) -> None:
        """Keep a copy of the state after `step` steps (train.keep_checkpoints): a later run of
        the same steps (a resume) writes the same file again."""
        path = self.path / KEPT_CHECKPOINT_FORMAT.format(step=step)
        save_checkpoint(path, model, optimizer, step, run_hash)

    def kept_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every kept checkpoint, by step."""
        kept = []
        for path in self.path.glob(KEPT_CHECKPOINT_FORMAT.replace("{step:08d}", "*")):
            stem = path.name.removeprefix(KEPT_CHECKPOINT_PREFIX).removesuffix(".safetensors")
            if stem.isdigit():
                kept.append((int(stem), path))
        return sorted(kept)

    def load_checkpoint(
        self, model: torch.nn.Module, optimizer=None, run_hash: str | None = None
    ) -> int:
        """Restore the checkpoint into model (and optimizer); returns its step count. The
        checkpoint must belong to the run of run_hash (default: this run's config)."""
        return self.restore_checkpoint(model, optimizer, run_hash).step

    def restore_checkpoint(
        self, model: torch.nn.Module, optimizer=None, run_hash: str | None = None
    ) -> CheckpointInfo:
        """load_checkpoint, checked against run_hash (default: this run's config), returning all
        the checkpoint holds besides tensors."""
        if run_hash is None and self.has_config():
            run_hash = self.config().run_hash()
        return restore_checkpoint(self.path / CHECKPOINT_FILE, model, optimizer, run_hash)

    def checkpoint_step(self) -> int:
        """Steps done by the last checkpoint (0 without one)."""
        return checkpoint_step(self.path / CHECKPOINT_FILE) if self.has_checkpoint() else 0

    # -- evaluation and failures ---------------------------------------------------------------
    def evaluation(self) -> dict:
        path = self.path / EVAL_FILE
        evaluation = read_json(path, "evaluation file")
        if (problem := _evaluation_problem(evaluation)) is not None:
            raise corrupt(path, "evaluation file", problem)
        return evaluation

    def write_evaluation(self, evaluation: dict) -> None:
        """Write eval.json; call it last: a run directory with eval.json is complete."""
        write_json(self.path / EVAL_FILE, evaluation)

    def write_reevaluation(self, evaluation: dict) -> Path:
        """Write a later evaluation of the checkpoint (`iclab eval`) beside eval.json, which it
        never replaces; returns its path."""
        path = self.path / REEVALUATION_FILE
        write_json(path, evaluation)
        return path

    def failure(self) -> str:
        path = self.path / FAILED_FILE
        failure = read_json(path, "failure record")
        if not (isinstance(failure, dict) and isinstance(failure.get("traceback"), str)):
            raise corrupt(
                path, "failure record", "expected a JSON object with a string 'traceback'"
            )
        return failure["traceback"]

    def write_failure(self, error: str) -> None:
        write_json(self.path / FAILED_FILE, {"traceback": error})

    # -- moving runs between processes ---------------------------------------------------------
    def read_files(self, names=None) -> dict[str, bytes]:
        """{file name: bytes} of the run's files (all, or those of `names` that exist)."""
        if not self.path.is_dir():
            return {}
        paths = sorted(p for p in self.path.iterdir() if p.is_file() and not p.name.startswith("."))
        return {p.name: p.read_bytes() for p in paths if names is None or p.name in names}

    def write_files(self, files: dict[str, bytes]) -> None:
        """Write files shipped from another process; eval.json last (it marks completion), and a
        complete run no longer carries a failure record."""
        for name, data in files.items():
            if name != EVAL_FILE:
                atomic_write_bytes(self.path / name, data)
        if EVAL_FILE in files:
            (self.path / FAILED_FILE).unlink(missing_ok=True)
            atomic_write_bytes(self.path / EVAL_FILE, files[EVAL_FILE])
