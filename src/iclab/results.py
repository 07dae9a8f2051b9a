"""Run directories: config.toml, metrics.jsonl, checkpoint.safetensors, eval.json, figures.

Every file is written atomically (temp file in the same directory, fsync, rename), so a killed
process never leaves a half-written result behind.
"""

import json
import os
import tempfile
from pathlib import Path

from iclab.config import ConfigError, RunConfig, config_to_toml, load_config

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"
EVAL_FILE = "eval.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def prepare_run_dir(run_dir: str | Path, config: RunConfig, resume: bool) -> Path:
    """Create a run directory for `config`, or check that `resume` continues the same config.

    Refuses to start a fresh run in a directory that already holds one, so nothing is overwritten.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        if not resume:
            raise ConfigError(
                f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        existing = load_config(config_path)
        if existing.run_hash() != config.run_hash():
            raise ConfigError(
                f"cannot resume {str(run_dir)!r}: its config (hash {existing.run_hash()}) differs "
                f"from the requested one (hash {config.run_hash()})"
            )
        return run_dir
    if resume:
        raise ConfigError(f"cannot resume: {str(config_path)!r} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, config_to_toml(config))
    return run_dir


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run_dir: str | Path, records: list[dict]) -> None:
    text = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write_text(Path(run_dir) / METRICS_FILE, text)


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Add one evaluation record (rewrites the small file atomically rather than appending)."""
    write_metrics(run_dir, [*read_metrics(run_dir), record])


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain text table; floats with 4 significant digits."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def format_evaluation(evaluation: dict) -> str:
    """MSE/D and Delta (position averages) per distribution, as a text table."""
    rows = []
    for distribution, result in evaluation["distributions"].items():
        for name, value in result["mse_mean"].items():
            rows.append([distribution, f"MSE/D {name}", value])
        for name, value in result["delta_mean"].items():
            rows.append([distribution, f"Delta {name}", value])
    return format_table(["distribution", "metric (mean over positions)", "value"], rows)
