"""Files that are never half-written: write a temporary file beside the target, fsync, rename.

A crash or ``kill -9`` at any moment leaves either the old file or the new one, never a mix; the
temporary file of an interrupted write is a hidden ``.NAME.*.tmp`` that readers never pick up and
that the next complete write of the same file removes.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        stale.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
