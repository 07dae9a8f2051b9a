"""The Ray executor, against a real local Ray started on 127.0.0.1 by the executor itself."""

import json
import sys

import pytest
from helpers import tiny_overrides
from safetensors.torch import load_file

from iclab.config import ConfigError
from iclab.sweeps.executors import (
    LocalExecutor,
    RayExecutor,
    infeasible_request,
    unused_gpus_warning,
)
from iclab.sweeps.runner import run_sweep
from iclab.sweeps.spec import load_spec
from iclab.sweeps.store import SweepStore


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'iclab\[ray\]'"):
        RayExecutor()


def test_a_cluster_with_gpus_that_the_runs_do_not_ask_for_is_named():
    assert "has 4 GPU(s) but --gpus-per-run is 0" in unused_gpus_warning(4.0, 0)
    assert unused_gpus_warning(4.0, 0.25) is None and unused_gpus_warning(0, 0) is None


def test_requests_no_node_can_take_and_addresses_where_nothing_answers_are_named():
    nodes = [{"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert infeasible_request(nodes, 8, 1) is None and infeasible_request(nodes, 0.5, 0) is None
    assert "the largest node of the Ray cluster has 8 CPUs" in infeasible_request(nodes, 64, 0)
    assert "and 1 GPUs, so no run could start" in infeasible_request(nodes, 1, 2)
    assert infeasible_request([], 1, 0) is not None
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'iclab[ray]')")
    with pytest.raises(ConfigError, match="--address 127.0.0.1:1 is not allowed: nothing answers"):
        RayExecutor(address="127.0.0.1:1")  # ray.init retried for ever there


def test_ray_and_local_executors_give_identical_results(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'iclab[ray]')")
    fixed = "\n".join(tiny_overrides(steps=40))
    (tmp_path / "s.toml").write_text(
        f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [1, 2, "inf"]\n'
    )
    spec = load_spec(tmp_path / "s.toml")
    local = run_sweep(spec, tmp_path / "local", LocalExecutor(2, threads_per_run=1), progress=False)
    ray = run_sweep(spec, tmp_path / "ray", RayExecutor(cpus_per_run=1), progress=False)
    assert len(ray.completed) == len(local.completed) == 3 and not ray.failed
    for run in spec.runs():
        a = SweepStore(tmp_path / "local").run(run.run_hash).path
        b = SweepStore(tmp_path / "ray").run(run.run_hash).path
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        weights_a, weights_b = (
            load_file(a / "checkpoint.safetensors"),
            load_file(b / "checkpoint.safetensors"),
        )
        assert weights_a.keys() == weights_b.keys()
        assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)
        assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
        eval_a, eval_b = (json.loads((d / "eval.json").read_text()) for d in (a, b))
        assert eval_a["distributions"] == eval_b["distributions"]
