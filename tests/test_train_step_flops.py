"""benchmarks/train_step.py's FLOP formula against a brute-force count of the real model."""

import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_overrides
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from iclab.config import apply_overrides, config_from_dict
from iclab.families import make_task
from iclab.training import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed
from benchmarks.train_step import train_step_flops  # noqa: E402


@pytest.mark.parametrize(
    "extra",
    [
        dict(n_dims=4, n_points=8, n_layers=1, n_embd=16, n_heads=2, batch_size=3),
        dict(n_dims=8, n_points=16, n_layers=3, n_embd=48, n_heads=4, batch_size=5),
    ],
)
def test_train_step_flops_equals_flop_counter_on_the_real_model(extra):
    config = config_from_dict(apply_overrides({}, tiny_overrides(**extra)))
    model = build_model(config, torch.device("cpu"))
    task = make_task(config.task, "cpu")
    batch = task.train_batch(0, 0, config.train.batch_size)
    # FlopCounterMode counts mm, addmm and bmm (2mkn each, backward included) but has no formula
    # for the CPU flash-attention kernel; SDPA's math backend runs attention as bmm instead.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        task.loss(model, batch).backward()
    counted = counter.get_total_flops()
    assert counted > 0
    assert train_step_flops(config) == counted


def test_the_readme_gpu_cost_table_is_the_flop_count_of_the_bundled_specs():
    import re

    from iclab.sweeps.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    table = re.findall(
        r"^\| `sweeps/(\S+)` \| (\d+) \| ([\d.e+]+) \| (\d+) \|$",
        (root / "README.md").read_text(),
        re.M,
    )
    assert len(table) >= 9
    for name, runs, flops, hours in table:
        spec = load_spec(root / "src" / "iclab" / "presets" / "sweeps" / name)
        total = sum(r.config.train.steps * train_step_flops(r.config) for r in spec.runs())
        assert len(spec.runs()) == int(runs)
        assert total == pytest.approx(float(flops), rel=0.05)
        assert total / 30e12 / 3600 == pytest.approx(int(hours), abs=0.5)
