"""Files that are never half-written: write a temporary file beside the target, fsync, rename.

A crash or ``kill -9`` at any moment leaves either the old file or the new one, never a mix; the
temporary file of an interrupted write is a hidden ``.NAME.HOST-PID.*.tmp`` that readers never pick
up and that the next complete write of the same file removes once its writer is gone (so processes
writing the same file at once, say the ranks of a torchrun job, never remove each other's).
"""

from __future__ import annotations

import glob
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

HOST = socket.gethostname()
FOREIGN_TEMP_AGE_S = 24 * 3600  # another machine's temporary file (a shared disk): stale after this


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # A process killed mid-write (kill -9, an out-of-memory kill) leaves its temporary file
    # behind, as large as the file; the next complete write of the same file removes it.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _abandoned(stale, path.name):
            stale.unlink(missing_ok=True)
    return path


def _abandoned(temporary: Path, name: str) -> bool:
    """Whether the temporary file of a write of ``name`` was left by a writer that is gone: a
    process of this machine that no longer runs, or (on a shared disk) one of another machine or an
    older version of this module, a day after its last change."""
    owner = temporary.name[len(name) + 2 : -len(".tmp")].rpartition(".")[0]  # HOST-PID
    host, _, pid = owner.rpartition("-")
    if host == HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False
    try:
        return time.time() - temporary.stat().st_mtime > FOREIGN_TEMP_AGE_S
    except OSError:
        return False


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
