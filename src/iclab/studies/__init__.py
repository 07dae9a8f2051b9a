"""Studies: the science of each paper reproduced here (checks, criteria, figures, reports)."""

from pathlib import Path

from iclab.validation import ConfigError

STUDIES = ("task-diversity", "autoregressive")


def reproduce(
    study: str,
    out: str | Path | None = None,
    preset: str = "cpu",
    executor=None,
    progress: bool = True,
    pdf: bool = False,
):
    """Run a study's reproduction (`iclab reproduce STUDY`); returns its report, which has
    `summary` (text), `path` (report.md) and `seconds`. preset, executor and pdf apply to the
    task-diversity study; the autoregressive one runs its fixed CPU settings in this process."""
    if study == "task-diversity":
        from iclab.studies.task_diversity.reproduction import reproduce_task_diversity

        out = out or Path(f"task_diversity_{preset}_out")
        return reproduce_task_diversity(preset, out, executor, progress=progress, pdf=pdf)
    if study == "autoregressive":
        from iclab.studies.autoregressive.reproduction import reproduce_autoregressive

        return reproduce_autoregressive(out or Path("autoregressive_out"), progress)
    raise ConfigError(f"study = {study!r} is not allowed: one of {STUDIES}")
