"""One writer per directory: an exclusive lock on DIR/.lock, which holds the writer's pid.

The lock is an flock(2) on the open file, so the kernel releases it when its holder exits, however
it exits (kill -9 included): a lock left behind by a dead process is stale by construction and the
next writer simply takes it. The pid in the file is only there to name the holder in the message.
"""

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from iclab.validation import ConfigError

LOCK_FILE = ".lock"


class DirectoryBusy(ConfigError):
    """Another live process is writing to the directory."""


@contextmanager
def exclusive(directory: str | Path, what: str):
    """Hold DIR/.lock for the block; DirectoryBusy if another process holds it. `what` names the
    directory in the message ("run directory", "sweep directory")."""
    path = Path(directory) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 64, 0).decode(errors="replace").strip() or "another process"
            raise DirectoryBusy(
                f"{what} {str(directory)!r} is in use by process {holder}; wait for it to finish "
                "(or stop it) and run again"
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(handle)  # closing releases the lock
