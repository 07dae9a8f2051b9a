"""Malformed files in a sweep or run directory (truncated, binary, or JSON of the wrong shape) get
one line naming the file and its run, exit status 1, and nothing written: no traceback, and a
corrupt metrics.jsonl is caught by every command that reads it."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import snapshot

from iclab.cli import main
from iclab.sweeps.executors import LocalExecutor
from iclab.sweeps.runner import run_sweep
from iclab.sweeps.spec import load_spec

BINARY = bytes(range(256)) * 4
TINY = dict(
    n_dims=4,
    n_points=4,
    n_layers=1,
    n_embd=16,
    n_heads=2,
    steps=4,
    batch_size=16,
    log_every=2,
    eval_every=2,
    eval_sequences=16,
    checkpoint_every=2,
    n_sequences=32,
    device='"cpu"',
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A completed sweep of two tiny runs (n_tasks 1 and 2)."""
    root = tmp_path_factory.mktemp("sweep")
    fixed = "\n".join(f"{key} = {value}" for key, value in TINY.items())
    spec = root / "s.toml"
    spec.write_text(f'base = "tiny"\n[set]\n{fixed}\n[grid]\nn_tasks = [1, 2]\n')
    outcome = run_sweep(
        load_spec(spec), root / "out", LocalExecutor(threads_per_run=1), progress=False
    )
    assert len(outcome.completed) == 2
    return root / "out"


def _first_run(out: Path) -> str:
    return next(iter(json.loads((out / "sweep.json").read_text())["runs"]))


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _without_step(data: bytes) -> bytes:
    record = json.loads(data.decode().splitlines()[0])
    del record["step"]
    return data + (json.dumps(record) + "\n").encode()


def _an_eval_mean_as_infinity(data: bytes) -> bytes:
    lines = data.decode().splitlines()
    records = [json.loads(line) for line in lines]
    record = next(r for r in reversed(records) if "eval" in r)
    means = next(iter(record["eval"]["distributions"].values()))["mse_mean"]
    means[next(iter(means))] = float("inf")
    return (data.decode() + json.dumps(record) + "\n").encode()


def _wrong(text: str):
    return lambda data: text.encode()


# (file, corruption: old bytes -> new bytes, words of the message)
def _a_mean_as(value):
    def replace(data: bytes) -> bytes:
        evaluation = json.loads(data)
        means = next(iter(evaluation["distributions"].values()))["mse_mean"]
        means[next(iter(means))] = value
        return json.dumps(evaluation).encode()

    return replace


EVAL_CASES = [
    ("eval.json", lambda data: BINARY, "not UTF-8"),
    ("eval.json", _a_mean_as("abc"), "is not a finite number"),
    ("eval.json", _a_mean_as(float("nan")), "is not a finite number"),
    ("eval.json", _wrong('{"n": ' + "9" * 5000 + "}"), "more than 4300 digits"),
    ("eval.json", _truncated, "not valid JSON at line"),
    ("eval.json", _wrong("[1, 2]"), "'distributions' object"),
    ("eval.json", _wrong('{"distributions": 5}'), "'distributions' object"),
    ("eval.json", _wrong('{"distributions": {"true": {"mse_mean": {}}}}'), "'delta_mean'"),
]
METRICS_CASES = [
    ("metrics.jsonl", lambda data: data[:-10], "not valid JSON at line 2"),
    ("metrics.jsonl", lambda data: BINARY, "not UTF-8"),
    ("metrics.jsonl", lambda data: data + b"[1, 2]\n", "line 3: not a JSON object"),
    ("metrics.jsonl", _without_step, "line 3: no integer 'step'"),
    ("metrics.jsonl", lambda data: data + b'{"step": 6}\n', "line 3: 'eval' is not"),
    ("metrics.jsonl", _an_eval_mean_as_infinity, "is not a finite number"),
]
FAILED_CASES = [
    ("failed.json", _wrong('{"error": "boom"}'), "string 'traceback'"),
    ("failed.json", _wrong('{"traceback": "Trace'), "not valid JSON at line 1"),
]
SWEEP_CASES = [
    ("sweep.json", _truncated, "not valid JSON"),
    ("sweep.json", _wrong("[]"), '{"runs": {run hash: {grid values}}}'),
    ("sweep.json", _wrong('{"runs": {"abc": 5}}'), '{"runs": {run hash: {grid values}}}'),
    ("sweep.json", _wrong('{"runs": {"../../victim": {}}}'), "is not a run hash"),
]
# Exit status of (status, results, plot): status shows no metrics and results none of a failed
# run, so those read no such file and succeed; status lists a run with a corrupt eval.json or
# failed.json as "corrupt", with the message, beside the other runs.
EXPECTED = {"eval.json": (0, 1, 1), "metrics.jsonl": (0, 0, 1), "failed.json": (0, 0, 0)}
EXPECTED["sweep.json"] = (1, 1, 1)


def _corrupt(out: Path, name: str, corruption) -> tuple[Path, str | None]:
    """Apply corruption to `name` of the first run (sweep.json: of the sweep); returns the path
    and the run hash (None for sweep.json)."""
    if name == "sweep.json":
        path, run_hash = out / name, None
    else:
        run_hash = _first_run(out)
        path = out / "runs" / run_hash / name
    if name == "failed.json":  # a failed run: no eval.json, and a failure record
        (path.parent / "eval.json").unlink()
        path.write_text(json.dumps({"traceback": "Traceback...\nValueError: boom\n"}))
    path.write_bytes(corruption(path.read_bytes()))
    return path, run_hash


@pytest.mark.parametrize("command", ["status", "results", "plot"])
@pytest.mark.parametrize(
    ("name", "corruption", "words"), EVAL_CASES + METRICS_CASES + FAILED_CASES + SWEEP_CASES
)
def test_a_corrupt_file_in_a_sweep_is_named(
    sweep, tmp_path, capsys, command, name, corruption, words
):
    out = tmp_path / "out"
    shutil.copytree(sweep, out)
    path, run_hash = _corrupt(out, name, corruption)
    before = snapshot(out)
    code = main([command, str(out)])
    captured = capsys.readouterr()
    err, printed = captured.err, captured.out
    assert code == EXPECTED[name][["status", "results", "plot"].index(command)], err
    after = snapshot(out)
    assert {key: after.get(key) for key in before} == before  # nothing there rewritten
    if command == "status" and name in ("eval.json", "failed.json"):
        row = next(line for line in printed.splitlines() if line.startswith(run_hash))
        assert "corrupt" in row and str(path) in row
    if code:
        assert after == before  # and nothing written
        assert err.count("\n") == 1 and err.startswith("iclab: ")  # one line, no traceback
        assert str(path) in err and "is corrupt" in err and words in err
        assert run_hash is None or run_hash in err


@pytest.mark.parametrize(("name", "corruption", "words"), METRICS_CASES)
def test_a_corrupt_metrics_file_stops_a_resume_and_not_an_eval(
    sweep, tmp_path, capsys, name, corruption, words
):
    run_dir = tmp_path / "run"
    shutil.copytree(sweep / "runs" / _first_run(sweep), run_dir)
    (run_dir / "eval.json").unlink()  # an interrupted run: resuming a complete one reads nothing
    path = run_dir / name
    path.write_bytes(corruption(path.read_bytes()))
    before = snapshot(run_dir)
    config = tmp_path / "config.toml"
    shutil.copy(run_dir / "config.toml", config)
    train = ["train", str(config), "--resume", "--out", str(run_dir), "--no-progress"]
    code = main(train)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and str(path) in err and words in err
    after = snapshot(run_dir)
    after.pop(".lock", None)  # the run directory's lock, taken before the files are read
    assert after == {k: v for k, v in before.items() if k != ".lock"}

    # iclab eval re-evaluates the checkpoint and reads no metrics: it works, and leaves them be
    code = main(["eval", str(run_dir), "--n-sequences", "16"])
    err = capsys.readouterr().err
    assert code == 0, err
    after = snapshot(run_dir)
    assert {key: after.get(key) for key in before} == before


def test_a_complete_run_without_metrics_is_named_by_plot(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(sweep, out)
    path = out / "runs" / _first_run(out) / "metrics.jsonl"
    path.write_text("")
    before = snapshot(out)
    assert main(["plot", str(out)]) == 1  # it raised ValueError (unpacking no records)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "no evaluation records" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("garbage", [b"\xff" * 64, (2**40).to_bytes(8, "little") + b"{}"])
def test_a_garbage_checkpoint_is_listed_corrupt_and_kept_by_the_sweep(
    sweep, tmp_path, capsys, garbage
):
    """A checkpoint that is not one (even with a header length of 2^40) is named by status; the
    sweep fails that run, naming the file, and goes on with the others: it does not start the
    run over, which would overwrite the file."""
    out = tmp_path / "out"
    shutil.copytree(sweep, out)
    run_dir = out / "runs" / _first_run(out)
    (run_dir / "eval.json").unlink()
    (run_dir / "checkpoint.safetensors").write_bytes(garbage)
    assert main(["status", str(out)]) == 0
    row = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith(run_dir.name)
    )
    assert "corrupt" in row and "checkpoint.safetensors" in row
    spec = out.parent / "s.toml"
    spec.write_text((sweep.parent / "s.toml").read_text())
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 1
    assert (run_dir / "checkpoint.safetensors").read_bytes() == garbage
    assert "checkpoint.safetensors" in (run_dir / "failed.json").read_text()
    assert not (run_dir / "eval.json").exists()
