"""Experiment tracking, optional: every periodic evaluation of a run, its config and its final
evaluation and figures, sent to TensorBoard or Weights & Biases. metrics.jsonl stays the source of
truth; a tracker only mirrors it, and whoever owns the run's files feeds it (the training process
for `iclab train`, the sweep driver for a sweep, from the records its workers report).

Scalars are named DISTRIBUTION/METRIC_NAME (e.g. "true/delta_PT,Ridge"), plus train_loss and lr;
the final evaluation's under "final/". TensorBoard writes event files to LOG_DIR/NAME (LOG_DIR is
`tensorboard/` in the run directory, or in the sweep directory with one NAME per run); wandb runs
in offline mode unless WANDB_MODE says otherwise (`wandb sync` uploads later), one wandb run per
iclab run, identified by the run hash and its directory and grouped by sweep.
"""

import hashlib
import os
import warnings
from pathlib import Path

from iclab.config import RunConfig, config_to_toml
from iclab.evaluation import flat_means
from iclab.validation import ConfigError

BACKENDS = ("tensorboard", "wandb")
LOG_DIR = "tensorboard"
WANDB_PROJECT = "iclab"


def scalars(record: dict) -> dict[str, float]:
    """The scalars of a metrics.jsonl record."""
    values = {key: record[key] for key in ("train_loss", "lr") if key in record}
    return {**values, **flat_means(record["eval"], separator="/")}


class TensorBoardTracker:
    def __init__(self, root: Path, name: str, group: str | None, config: RunConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(root / LOG_DIR / name))
        self.writer.add_text("config", f"```\n{config_to_toml(config)}```")

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, step: int, final: dict[str, float], figures: list[Path]) -> None:
        import matplotlib.image

        self.log(step, {f"final/{key}": value for key, value in final.items()})
        for figure in figures:
            image = matplotlib.image.imread(figure)[..., :3]  # RGB, floats in [0, 1]
            self.writer.add_image(figure.stem, image, step, dataformats="HWC")
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()


def wandb_id(config: RunConfig, root: Path) -> str:
    """The run hash and a key of the directory it is tracked from: the same config trained in two
    places stays two wandb runs."""
    place = hashlib.blake2b(str(Path(root).resolve()).encode(), digest_size=3).hexdigest()
    return f"{config.run_hash()}-{place}"


class WandbTracker:
    def __init__(self, root: Path, name: str, group: str | None, config: RunConfig):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=WANDB_PROJECT,
            name=name,
            id=wandb_id(config, root),
            group=group,
            config=config.to_dict(),
            dir=str(root),
            mode=os.environ.get("WANDB_MODE", "offline"),
            resume="allow",
            reinit="create_new",
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def finish(self, step: int, final: dict[str, float], figures: list[Path]) -> None:
        images = {figure.stem: self.wandb.Image(str(figure)) for figure in figures}
        self.run.log({**{f"final/{k}": v for k, v in final.items()}, **images}, step=step)
        self.run.summary.update(final)
        self.run.finish()

    def abort(self) -> None:
        self.run.finish(exit_code=1)


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


class RunTracker:
    """The tracker of one run, named by its hash, under root (the run or sweep directory):
    `log(record)` per periodic evaluation, `finish(run)` once its eval.json and figures are
    written, or `abort()` when the run failed or was interrupted (a no-op once finished). The
    backend starts at the first call, once the run directory exists."""

    def __init__(self, backend: str, root: str | Path, config: RunConfig, group: str | None = None):
        check_backend(backend)
        self.backend, self.root, self.config, self.group = backend, Path(root), config, group
        self._tracker = None
        self._closed = False

    def _started(self):
        if self._tracker is None:
            backend = TRACKERS[self.backend]
            self._tracker = backend(self.root, self.config.run_hash(), self.group, self.config)
        return self._tracker

    def log(self, record: dict) -> None:
        self._started().log(record["step"], scalars(record))

    def finish(self, run) -> None:
        """run: the RunDirectory, complete."""
        figures = sorted(run.path.glob("*.png"))
        final = flat_means(run.evaluation(), separator="/")
        self._started().finish(self.config.train.steps, final, figures)
        self._closed = True

    def abort(self) -> None:
        """Closes a started backend of a run that did not finish (wandb marks it failed). A
        backend that fails to close is warned about, so that the run's own error stays the one
        raised and the other runs' trackers still close."""
        if self._tracker is not None and not self._closed:
            try:
                self._tracker.abort()
            except Exception as error:
                warnings.warn(f"could not close the {self.backend} tracker: {error}", stacklevel=2)
        self._closed = True


def check_backend(backend: str | None) -> None:
    """A ConfigError, before any work, for an unknown backend or one whose package is missing."""
    if backend is None:
        return
    if backend not in TRACKERS:
        raise ConfigError(f"--log-to {backend!r} is not allowed: expected one of {BACKENDS}")
    package = "torch.utils.tensorboard" if backend == "tensorboard" else "wandb"
    try:
        module = __import__(package)
    except ImportError:
        raise ConfigError(
            f"--log-to {backend} needs the {backend} package: pip install 'iclab[{backend}]'"
        ) from None
    mode = os.environ.get("WANDB_MODE")
    if backend == "wandb" and mode is not None:
        try:  # wandb's own check; a bad mode failed at the first evaluation, mid-training
            module.Settings(mode=mode)
        except Exception as error:
            lines = [line.strip() for line in str(error).splitlines() if "should" in line]
            raise ConfigError(
                f"WANDB_MODE = {mode!r} is not allowed: {lines[0] if lines else error}"
            ) from None
