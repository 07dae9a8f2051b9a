"""Bad input gets one clear message naming what was wrong, exit status 2, and nothing written."""

import hashlib
from pathlib import Path

import pytest

from iclab.cli import main


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("n_tasks=-inf", "task.n_tasks = -inf"),
        ("n_tasks=1e400", "task.n_tasks = '1e400'"),
        ("n_tasks=nan", "task.n_tasks = nan"),
        ("lr=inf", "train.lr = inf"),
        ("noise_std=inf", "task.noise_std = inf"),
        ("weight_decay=inf", "train.weight_decay = inf"),
        ("prior_std=inf", "task.prior_std = inf"),
        ("warmup_fraction=nan", "train.warmup_fraction = nan"),
    ],
)
def test_values_that_are_not_finite_are_refused_before_any_work(tmp_path, capsys, override, named):
    (tmp_path / "keep.txt").write_text("unrelated")
    before = snapshot(tmp_path)
    code, text = run_cli(
        ["train", "tiny", "--set", override, "--out", str(tmp_path / "run")], capsys
    )
    assert code == 2
    assert named in text and ("finite" in text or "integer" in text)
    assert text.count("\n") == 1  # one line, no traceback
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "run").exists()


def test_an_autoregressive_mu_of_inf_is_refused(tmp_path, capsys):
    config = tmp_path / "ar.toml"
    config.write_text(
        '[task]\nfamily = "autoregressive"\nmu = inf\n[model]\nfamily = "linear_attention"\n'
    )
    before = snapshot(tmp_path)
    code, text = run_cli(["train", str(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "task.mu = inf" in text
    assert snapshot(tmp_path) == before


def test_minus_inf_in_a_sweep_grid_is_refused(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('base = "tiny"\n[grid]\nn_tasks = [4, -inf]\n')
    before = snapshot(tmp_path)
    code, text = run_cli(["sweep", str(spec), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "task.n_tasks = -inf" in text
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (bytes(range(256)) * 4, "not UTF-8"),
        (b"task = 5\n", "[task] in config file"),
        (b'task = "abc"\n', "must be a table"),
        (b"[task\nn_dims = 4\n", "is not valid TOML"),
    ],
)
def test_malformed_config_files_name_the_file(tmp_path, capsys, content, named):
    config = tmp_path / "bad.toml"
    config.write_bytes(content)
    before = snapshot(tmp_path)
    code, text = run_cli(["train", str(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and named in text and "bad.toml" in text
    assert snapshot(tmp_path) == before


def test_a_sweep_base_of_random_bytes_names_the_file(tmp_path, capsys):
    (tmp_path / "base.toml").write_bytes(bytes(range(256)) * 4)
    spec = tmp_path / "s.toml"
    spec.write_text('base = "base.toml"\n[grid]\nseed = [0]\n')
    before = snapshot(tmp_path)
    code, text = run_cli(["sweep", str(spec), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "base.toml" in text and "not UTF-8" in text
    assert snapshot(tmp_path) == before
