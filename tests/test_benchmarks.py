"""Smoke test of the benchmark harness: quick estimator rows, the per-prefix references, the CLI."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed
from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import estimators  # noqa: E402
from iclab.estimators.pool_posterior import DMMSE  # noqa: E402
from iclab.estimators.regression import Ridge  # noqa: E402

CASES = {"dmmse paper scale", "dmmse vs per-prefix", "ridge all prefixes"}


def test_quick_estimator_rows_have_the_measurements_and_agree():
    rows = estimators.run(quick=True)
    assert {row["case"] for row in rows} == CASES
    by_case = {row["case"]: row for row in rows}
    for row in rows:
        assert row["benchmark"] == "estimators"
        assert row["seconds"] > 0
        json.dumps(row)  # rows must be JSON-ready
    paper = by_case["dmmse paper scale"]
    assert paper["finite"] and paper["peak_mib"] >= 0 and paper["memory_method"]
    assert paper["meets_target"] is None  # targets apply to the full size only
    for case in ("dmmse vs per-prefix", "ridge all prefixes"):
        row = by_case[case]
        assert row["reference_seconds"] > 0 and row["speedup"] > 0
        assert row["agree"] and row["max_abs_diff"] <= row["tolerance"] < 1e-2


def test_per_prefix_references_match_the_library_at_tiny_noise_too():
    # noise_std = 0.05: energies of order 1e3, so both need their running log-sum-exp.
    pool, xs, _ = estimators.make_data(3, 512, 16)
    noise = torch.randn(16, 16, generator=torch.Generator().manual_seed(4))
    ys = torch.einsum("bkd,d->bk", xs, pool[7]) + 0.05 * noise
    ref = estimators.per_prefix_dmmse(pool, xs, ys, 0.05, chunk_elements=1000)
    torch.testing.assert_close(DMMSE(pool, 0.05)(xs, ys), ref, rtol=0, atol=2e-3)
    ridge = estimators.per_prefix_ridge(xs.double(), ys.double(), 0.05)
    torch.testing.assert_close(Ridge(0.05)(xs.double(), ys.double()), ridge)


def test_cli_rejects_unknown_names_and_formats_tables(capsys):
    assert cli.main(["no_such_benchmark"]) == 2
    assert "no_such_benchmark" in capsys.readouterr().err
    assert "estimators" in cli.BENCHMARKS
    table = cli.format_table(
        [
            {"benchmark": "b", "case": "one", "x": 1.23456},
            {"benchmark": "b", "case": "2", "y": None},
        ]
    ).splitlines()
    assert table == ["case    one  2", "x     1.235  -", "y         -  -"]


def fake_benchmark(monkeypatch, run) -> None:
    """Register a benchmark "fake" whose module's run is `run`."""
    monkeypatch.setitem(cli.BENCHMARKS, "fake", "fake_benchmark_module")
    monkeypatch.setitem(sys.modules, "fake_benchmark_module", type(sys)("fake_benchmark_module"))
    sys.modules["fake_benchmark_module"].run = run


def fake_rows(quick):
    return [{"benchmark": "fake", "case": "c", "quick": quick}]


def test_cli_writes_rows_to_json(tmp_path, monkeypatch):
    fake_benchmark(monkeypatch, fake_rows)
    out = tmp_path / "rows.json"
    assert cli.main(["fake", "--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["rows"] == [{"benchmark": "fake", "case": "c", "quick": True}]
    assert data["quick"] is True and "torch" in data["environment"]


def test_a_json_path_that_exists_or_cannot_be_written_is_refused_before_anything_runs(
    tmp_path, monkeypatch, capsys
):
    fake_benchmark(monkeypatch, lambda quick: pytest.fail("the benchmark ran"))
    kept = tmp_path / "keep.json"
    kept.write_text("mine")
    blocker = tmp_path / "a_file"  # a parent that is a file blocks writing, as root too
    blocker.write_text("")
    for path, message in ((kept, "exists"), (blocker / "b.json", "is not a directory")):
        assert cli.main(["fake", "--json", str(path)]) == 2
        error = capsys.readouterr().err
        assert f"--json {str(path)!r}" in error and message in error, error
        assert error.count("\n") == 1
    assert kept.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a_file",
        "keep.json",
    ]


def test_the_default_json_is_replaced(tmp_path, monkeypatch):
    fake_benchmark(monkeypatch, fake_rows)
    monkeypatch.chdir(tmp_path)
    (tmp_path / cli.DEFAULT_JSON).write_text("an earlier run")
    assert cli.main(["fake"]) == 0
    assert json.loads((tmp_path / cli.DEFAULT_JSON).read_text())["rows"] == fake_rows(False)


def test_quick_training_length_rows_and_figure(tmp_path):
    from benchmarks import training_length

    rows = training_length.run(quick=True)
    assert [r["steps"] for r in rows] == [40, 80]
    assert all(r["wall minutes (1 thread)"] > 0 for r in rows)
    assert all(r["PT / Ridge MSE (true, M = inf)"] > 1.0 for r in rows)  # 80 steps: far from Ridge
    assert training_length.plot(rows, tmp_path / "curve.png").stat().st_size > 5_000
