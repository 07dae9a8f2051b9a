"""Atomic file writes: a temp file in the same directory, fsync, rename. A killed process never
leaves a half-written file behind, and a reader sees the old file or the new one."""

import json
import os
import sys
import tempfile
from pathlib import Path

from iclab.validation import ConfigError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write data to path through a temporary file beside it and a rename, so that path holds
    either its old contents or all of data; an OSError names path, not the temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error
    try:
        os.chmod(temp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except OSError as error:
        Path(temp_name).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def require_empty(directory: str | Path, missing: str, ignore: tuple[str, ...] = ()) -> None:
    """ConfigError unless directory is new or holds nothing but the names in ignore: an output
    directory that lacks `missing` (what would make it one of ours, e.g. "no sweep (sweep.json)")
    is never mixed with someone else's files."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    names = sorted(p.name for p in directory.iterdir() if p.name not in ignore)
    if not names:
        return
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise ConfigError(
        f"{str(directory)!r} holds files ({shown}) but {missing}; choose an empty or new "
        "directory for --out"
    )


class CorruptFile(RuntimeError):
    """A file iclab wrote cannot be read back: not UTF-8, not JSON, or not of the shape expected.
    The message names the file (and so the run or sweep directory it is in)."""


def corrupt(path: str | Path, what: str, problem: str) -> CorruptFile:
    """The error for `what` (e.g. "evaluation file") at path, which is wrong in `problem`."""
    return CorruptFile(f"{what} {str(path)!r} is corrupt: {problem}")


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of path (OSError if it cannot be read, CorruptFile if it is not UTF-8)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise corrupt(path, what, f"not UTF-8 (byte {error.start})") from None


def _parse(text: str, path, what: str, line: int | None = None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        at = (
            f"{error.lineno}, column {error.colno}"
            if line is None
            else f"{line}, column {error.colno}"
        )
        raise corrupt(path, what, f"not valid JSON at line {at}: {error.msg}") from None
    except ValueError:  # an integer of more digits than Python converts
        at = "" if line is None else f" at line {line}"
        limit = sys.get_int_max_str_digits()
        raise corrupt(path, what, f"an integer{at} has more than {limit} digits") from None


def read_json(path: str | Path, what: str):
    """The JSON value in path; CorruptFile naming the file if it is not UTF-8 JSON."""
    return _parse(read_text(path, what), path, what)


def read_jsonl(path: str | Path, what: str, check=None) -> list:
    """The JSON values of path's non-blank lines; CorruptFile naming the file and line if one
    is not JSON (a truncated last line included) or check(value), a problem or None, says so."""
    values = []
    for number, line in enumerate(read_text(path, what).splitlines(), 1):
        if line.strip():
            value = _parse(line, path, what, number)
            if check is not None and (problem := check(value)) is not None:
                raise corrupt(path, what, f"line {number}: {problem}")
            values.append(value)
    return values
