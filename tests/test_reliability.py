"""Bad input gets one clear message naming what was wrong, exit status 2, and nothing written."""

from pathlib import Path

import pytest
from helpers import snapshot

from iclab.cli import main


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
        ("steps=" + "9" * 5000, "override 'steps' is not valid"),  # Python reads <= 4300 digits
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


@pytest.mark.parametrize(
    ("config", "override", "named"),
    [
        # Finite, but beyond the float32 / int64 the run computes in (lr = 1e39 failed in Adam).
        ("tiny", "lr=1e39", "train.lr = 1e+39"),
        ("tiny", "lr=1e38", "train.lr = 1e+38"),  # within float32, but Adam's step overflowed
        ("tiny", "weight_decay=1e300", "train.weight_decay = 1e+300"),
        ("tiny", "n_sequences=99999999999999999999", "eval.n_sequences = 99999999999999999999"),
        # Accepted before, then failed at the first evaluation, after the training steps.
        ("tiny", "noise_std=0 --set n_tasks=16", "task.noise_std = 0.0"),  # dMMSE needs noise
        ("tiny", "noise_std=1e-5", "task.noise_std = 1e-05"),  # ridge's solve was singular
        ("tiny", "prior_std=1e4", "task.noise_std"),  # the same lambda, from the other side
        ("tiny", "prior_std=1e-300", "task.prior_std = 1e-300"),
        ("classification-tiny", "prior_std=1e-300", "task.prior_std = 1e-300"),
        ("autoregressive-linear", "n_steps=1", "task.n_steps = 1"),
        # A family must be a name: a list or table raised TypeError (unhashable).
        ("tiny", 'model.family=["gpt"]', "model.family = ['gpt']"),
        ("tiny", "task.family={a=1}", "task.family = {'a': 1}"),
        ("tiny", "optimizer=" + "x" * 100_000, "train.optimizer = 'xxx"),  # echoed, cut short
    ],
)
def test_values_the_run_cannot_compute_with_are_refused_before_any_work(
    tmp_path, capsys, config, override, named
):
    before = snapshot(tmp_path)
    overrides = [a for s in override.split(" --set ") for a in ("--set", s)]
    code, text = run_cli(["train", config, *overrides, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and named in text, text
    assert text.count("\n") == 1 and len(text) < 1000  # one line, no traceback, no 100 kB echo
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("config", "override"),
    [
        ("tiny", "noise_std=1e-3"),  # the smallest noise allowed at prior_std = 1: ridge solves
        ("tiny", "noise_std=0 --set n_tasks=inf"),  # noiseless at M = infinity: a pseudo-inverse
        ("tiny", "prior_std=1e-6"),
        ("autoregressive-linear", "n_steps=2"),
    ],
)
def test_values_at_the_edge_of_the_allowed_range_train_and_evaluate(tmp_path, config, override):
    steps = ["steps=2", "eval_every=2", "checkpoint_every=2", "n_sequences=64"]
    if config == "tiny":
        steps = ["n_tasks=16", *steps, "eval_sequences=32"]
    overrides = [a for s in [*steps, *override.split(" --set ")] for a in ("--set", s)]
    args = ["train", config, *overrides, "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    assert (tmp_path / "run" / "eval.json").exists()


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


def test_a_config_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    from iclab.config import load_config

    text = "[train]\nsteps = 7\n"
    (tmp_path / "plain.toml").write_text(text)
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_config(tmp_path / "bom.toml") == load_config(tmp_path / "plain.toml")


def test_a_sweep_base_of_random_bytes_names_the_file(tmp_path, capsys):
    (tmp_path / "base.toml").write_bytes(bytes(range(256)) * 4)
    spec = tmp_path / "s.toml"
    spec.write_text('base = "base.toml"\n[grid]\nseed = [0]\n')
    before = snapshot(tmp_path)
    code, text = run_cli(["sweep", str(spec), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "base.toml" in text and "not UTF-8" in text
    assert snapshot(tmp_path) == before


TINY = ["--set", "steps=4", "--set", "n_sequences=64", "--set", "eval_sequences=32"]


@pytest.mark.parametrize("kind", ["file", "foreign directory", "under a file", "unwritable"])
def test_output_paths_that_cannot_hold_a_run_are_refused(tmp_path, capsys, kind):
    (tmp_path / "a_file").write_text("not a run")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "eval.json").write_text("someone else's results")
    out = {
        "file": tmp_path / "a_file",
        "foreign directory": tmp_path / "foreign",
        "under a file": tmp_path / "a_file" / "run",
        "unwritable": Path("/proc/iclab-test-run"),  # root ignores permissions; /proc does not
    }[kind]
    before = snapshot(tmp_path)
    code, text = run_cli(["train", "tiny", *TINY, "--out", str(out), "--no-progress"], capsys)
    assert code == 2
    assert "Traceback" not in text
    assert [line for line in text.splitlines() if line.startswith("iclab:")]
    assert snapshot(tmp_path) == before


def test_cuda_without_a_gpu_is_a_config_error(tmp_path, capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, text = run_cli(
        ["train", "tiny", "--set", "device=cuda", "--out", str(tmp_path / "r")], capsys
    )
    assert code == 2 and "train.device = 'cuda'" in text
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "RUN", "--n-sequences", "-5"],
        ["eval", "RUN", "--n-sequences", "0"],
        ["analyze", "RUN", "--n-sequences", "0"],
        ["sweep", "spec.toml", "--out", "OUT", "--workers", "0"],
        ["sweep", "spec.toml", "--out", "OUT", "--threads-per-run", "0"],
        ["sweep", "spec.toml", "--out", "OUT", "--gpus-per-run", "nan"],
        ["plot", "OUT", "--m", "abc"],
    ],
)
def test_bad_command_line_values_are_refused_before_any_work(tmp_path, capsys, args):
    args = [str(tmp_path / a) if a in ("RUN", "OUT", "spec.toml") else a for a in args]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "is not allowed" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_more_threads_than_cores_are_refused_before_any_work(tmp_path, capsys):
    spec = (
        Path(__file__).parents[1]
        / "src"
        / "iclab"
        / "presets"
        / "sweeps"
        / "task_diversity_cpu.toml"
    )
    before = snapshot(tmp_path)
    args = ["sweep", str(spec), "--out", str(tmp_path / "out"), "--threads-per-run", "100000"]
    code, text = run_cli(args, capsys)  # 100000 threads crashed torch: a segfault, no message
    assert code == 2 and "--threads-per-run = 100000 is not allowed" in text
    assert snapshot(tmp_path) == before
    assert main(["bench", "train_step", "--threads", "100000"]) == 2
    assert "--threads must be from 1 to the" in capsys.readouterr().err


def test_options_that_would_be_ignored_or_run_without_end_are_refused(tmp_path, capsys):
    out = str(tmp_path / "out")
    for args, message in [
        (["reproduce", "autoregressive", "--preset", "cpu", "--out", out], "--preset cpu is an"),
        (["analyze", out, "--llc-steps", "5"], "--llc-steps sets the --llc part"),
        (["analyze", out, "--gd-steps", "100000"], "--gd-steps 100000 is not allowed"),
    ]:
        code, text = run_cli(args, capsys)
        assert code == 2 and message in text, text
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    import iclab.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(iclab.cli, "_presets", interrupted)
    code, text = run_cli(["presets"], capsys)
    assert code == 130
    assert "interrupted" in text and "--resume" in text and "Traceback" not in text


def test_a_full_disk_gives_one_message_and_keeps_what_was_written(tmp_path, capsys):
    """On a file system too small for the checkpoint: exit 2 naming the problem, the files
    written before it intact, and no half-written temp file left behind."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        out = disk / "run"
        small = ["steps=8", "checkpoint_every=4", "eval_every=4", "eval_sequences=16"]
        args = [arg for value in small for arg in ("--set", value)]
        code, text = run_cli(["train", "tiny", *args, "--out", str(out), "--no-progress"], capsys)
        assert code == 2 and "No space left on device" in text and "Traceback" not in text
        assert (out / "config.toml").read_text().startswith("[task]")
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        assert not (out / "checkpoint.safetensors").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_resuming_a_complete_run_rewrites_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["steps=2", "eval_every=2", "checkpoint_every=2", "n_sequences=64", "eval_sequences=32"]
    args = ["train", "tiny", "--out", str(run), "--no-progress"]
    args += [a for s in small for a in ("--set", s)]
    assert main(args) == 0
    lock = str(Path("run") / ".lock")  # the lock file holds the last holder's pid

    def files():
        return {name: digest for name, digest in snapshot(tmp_path).items() if name != lock}

    before = files()
    code, text = run_cli([*args, "--resume"], capsys)
    assert code == 0 and "the run was complete: nothing to resume" in text
    assert files() == before  # eval.json was re-evaluated and replaced before
    code, text = run_cli([*args, "--resume", "--set", "lr=0.002"], capsys)
    assert code == 2 and "differs from the requested one" in text and "was complete" not in text
    assert files() == before


def test_more_work_at_once_than_memory_holds_is_one_message(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["steps=2", "eval_every=2", "checkpoint_every=2", "n_sequences=64", "eval_sequences=32"]
    overrides = [a for s in [*small, "n_tasks=16"] for a in ("--set", s)]
    assert main(["train", "tiny", "--out", str(run), "--no-progress", *overrides]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    huge = str(10**13)  # beyond the 128 TiB address space: refused whatever the overcommit policy
    for args in (
        ["analyze", str(run), "--n-sequences", huge],
        ["interpolate", str(run), "--pairs", huge],
    ):
        code, text = run_cli(args, capsys)
        assert code == 2 and text.startswith("iclab: out of memory (you tried to allocate")
        assert text.count("\n") == 1  # one line, no traceback
    assert snapshot(tmp_path) == before


def test_a_write_that_fails_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    import errno
    import tempfile

    from iclab.files import write_json

    def refused(dir, prefix, suffix):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as caught:
        write_json(tmp_path / "out.json", {})
    assert caught.value.filename == str(tmp_path / "out.json")


def test_paths_that_are_not_what_a_command_reads_are_named(tmp_path, capsys):
    code, text = run_cli(["eval", str(tmp_path)], capsys)
    assert code == 2 and "is not an iclab run directory (no config.toml)" in text
    assert "presets" not in text
    code, text = run_cli(["train", str(tmp_path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "is a directory, not a TOML file" in text


def test_a_run_that_diverges_before_its_first_checkpoint_says_how_to_go_on(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["steps=20", "eval_every=10", "checkpoint_every=10", "lr=1e10", "n_sequences=32"]
    args = ["train", "tiny", "--out", str(run), "--no-progress"]
    code, text = run_cli([*args, *(a for s in small for a in ("--set", s))], capsys)
    assert code == 1 and "loss became nan" in text
    assert f"nothing in {str(run)!r} can be resumed: remove it, or choose another --out" in text
