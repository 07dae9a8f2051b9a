"""The bundled autoregressive presets are the runs of `iclab reproduce autoregressive` their
comments name: same task, same model, same optimisation (device and evaluation sizes aside)."""

import pytest

from iclab.config import load_config
from iclab.studies.autoregressive.reproduction import FULL
from iclab.studies.autoregressive.runs import diagonal_config, linear_config, pe_config

OPTIMISATION = ("steps", "batch_size", "lr", "schedule", "warmup_fraction", "seed")


@pytest.mark.parametrize(
    ("preset", "study_run"),
    [
        ("autoregressive-linear", lambda: linear_config("unitary", 5, "fixed", FULL)),
        ("autoregressive-diagonal", lambda: diagonal_config("unitary", 10, 0.01, FULL)),
        ("autoregressive-pe-only", lambda: pe_config(50.0, FULL)),
    ],
)
def test_each_autoregressive_preset_is_its_reproduction_run(preset, study_run):
    bundled, study = load_config(preset), study_run()
    assert bundled.task == study.task
    assert bundled.model == study.model
    for field in OPTIMISATION:
        assert getattr(bundled.train, field) == getattr(study.train, field), field
