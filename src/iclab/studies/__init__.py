"""Studies: the science of each paper reproduced here (checks, criteria, figures, reports)."""

from pathlib import Path

from iclab.validation import ConfigError

STUDIES = ("task-diversity", "autoregressive")


LLC_STEPS = 200  # SGLD steps per chain of `analyze --llc`
# The GD families of the algorithm fit: k = 1..gd_steps, each a fit of its own (100000 ran for
# minutes with no end in sight); the fits settle within a few dozen steps at K = 16.
MAX_GD_STEPS = 1024


def reproduce(
    study: str,
    out: str | Path | None = None,
    preset: str | None = None,
    executor=None,
    progress: bool = True,
    pdf: bool = False,
    quick: bool = False,
):
    """Run a study's reproduction (`iclab reproduce STUDY`); returns its report, which has
    `summary` (text), `path` (report.md) and `seconds`. preset (default "cpu"), executor and pdf
    apply to the task-diversity study; the autoregressive one runs its fixed CPU settings in this
    process.
    quick: a miniature of every part, to check the pipeline in seconds (not the science)."""
    if study == "task-diversity":
        from iclab.studies.task_diversity.reproduction import reproduce_task_diversity

        preset = preset or "cpu"
        out = out or Path(f"task_diversity_{preset}_out")
        return reproduce_task_diversity(
            preset, out, executor, progress=progress, pdf=pdf, quick=quick
        )
    if study == "autoregressive":
        from iclab.studies.autoregressive.reproduction import FULL, MINI, reproduce_autoregressive

        if preset is not None:
            raise ConfigError(
                f"--preset {preset} is an option of the task-diversity study; the autoregressive "
                "one has fixed CPU settings (--quick for a miniature): leave it out"
            )
        out = out or Path("autoregressive_out")
        return reproduce_autoregressive(out, progress, settings=MINI if quick else FULL)
    raise ConfigError(f"study = {study!r} is not allowed: one of {STUDIES}")


def analyze(
    run_dir: str | Path,
    n_sequences: int = 2048,
    gd_steps: int | None = None,
    llc: bool = False,
    llc_steps: int | None = None,
) -> str:
    """What a trained run computes (`iclab analyze`): for an autoregressive run the one-step GD
    fit and weight structure, for a regression run the algorithm fit, probes and attention (on a
    sweep directory: of each regression run, with the curves against M); writes analysis.json
    and figures there and returns the summary text. gd_steps (regression only) is the largest k
    of the GD families, GD_STEPS where None. llc (a run directory): also the local learning
    coefficient at each checkpoint the run kept (iclab.llc, llc_steps SGLD steps per chain;
    llc.json and llc.png)."""
    from iclab.checkpoints import verify_checkpoint
    from iclab.sweeps.store import SWEEP_FILE
    from iclab.training import RunDirectory
    from iclab.training.run_directory import CHECKPOINT_FILE

    if llc_steps is not None and not llc:
        raise ConfigError("--llc-steps sets the --llc part: give --llc too, or leave it out")
    if gd_steps is not None and gd_steps > MAX_GD_STEPS:
        raise ConfigError(f"--gd-steps {gd_steps} is not allowed: at most {MAX_GD_STEPS}")
    llc_steps = llc_steps or LLC_STEPS
    run = RunDirectory(run_dir)
    regression_options = {} if gd_steps is None else {"gd_steps": gd_steps}
    if not run.has_config() and (Path(run_dir) / SWEEP_FILE).exists():
        if llc:
            raise ConfigError(f"--llc reads one run directory; {str(run_dir)!r} is a sweep")
        from iclab.studies.task_diversity.analysis import analyze_sweep, format_sweep_analysis

        rows = analyze_sweep(run_dir, n_sequences, **regression_options)["runs"]
        return format_sweep_analysis(rows)
    if not run.has_config():
        raise ConfigError(
            f"{str(run.path)!r} is neither an iclab run directory (config.toml) nor a sweep "
            "directory (sweep.json)"
        )
    if not run.has_checkpoint():
        raise ConfigError(f"{str(run.path)!r} has no checkpoint to analyse: train the run first")
    config = run.config()
    # A damaged checkpoint fails here, before the --llc part writes its results.
    verify_checkpoint(run.file(CHECKPOINT_FILE), config.run_hash())
    family = config.task.family
    if regression_options and family != "regression":
        raise ConfigError(
            f"--gd-steps is an option of the regression analysis; {str(run.path)!r} is a run of "
            f"task.family = {family!r}: leave the option out"
        )
    if family not in ("regression", "autoregressive"):
        raise ConfigError(
            f"task.family = {family!r} in {str(run.path)!r} has no analysis: "
            "iclab analyze reads regression and autoregressive runs"
        )
    llc_summary = ""
    if llc:  # first: a run that kept no checkpoints fails before the longer analysis
        from iclab.llc import SGLDSettings, format_llc, llc_over_training

        settings = SGLDSettings(n_steps=llc_steps, burn_in=llc_steps // 2)
        llc_summary = "\n\nLocal learning coefficient over training (SGLD)\n" + format_llc(
            llc_over_training(run_dir, settings)
        )
    if family == "regression":
        from iclab.studies.task_diversity.analysis import (
            analyze_regression_run,
            format_regression_analysis,
        )

        result = analyze_regression_run(run_dir, n_sequences, **regression_options)
        return format_regression_analysis(result) + llc_summary
    from iclab.studies.autoregressive.analysis import analyze_run, format_analysis

    return format_analysis(analyze_run(run_dir, n_sequences)) + llc_summary
