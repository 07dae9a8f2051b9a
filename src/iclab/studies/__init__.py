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
    quick: bool = False,
):
    """Run a study's reproduction (`iclab reproduce STUDY`); returns its report, which has
    `summary` (text), `path` (report.md) and `seconds`. preset, executor and pdf apply to the
    task-diversity study; the autoregressive one runs its fixed CPU settings in this process.
    quick: a miniature of every part, to check the pipeline in seconds (not the science)."""
    if study == "task-diversity":
        from iclab.studies.task_diversity.reproduction import reproduce_task_diversity

        out = out or Path(f"task_diversity_{preset}_out")
        return reproduce_task_diversity(
            preset, out, executor, progress=progress, pdf=pdf, quick=quick
        )
    if study == "autoregressive":
        from iclab.studies.autoregressive.reproduction import FULL, MINI, reproduce_autoregressive

        out = out or Path("autoregressive_out")
        return reproduce_autoregressive(out, progress, settings=MINI if quick else FULL)
    raise ConfigError(f"study = {study!r} is not allowed: one of {STUDIES}")
