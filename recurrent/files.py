"""Files that are never half-written: write a temporary file beside the target, fsync, rename.

A crash or ``kill -9`` at any moment leaves either the old file or the new one, never a mix; the
temporary file of an interrupted write is a hidden ``.NAME.HOST-PID.*.tmp`` that readers never pick
up and that the next complete write of the same file removes once its writer is gone (so processes
writing the same file at once, say the ranks of a torchrun job, never remove each other's).

`hold` and `release` lock a folder for one process: a training run's, so that a second run started
into it is refused instead of mixing its checkpoints and metrics with the first's (or one file in
it: the CSV that `captioner.caption --csv` rewrites).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import glob
import io
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from recurrent.errors import UserError

HOST = socket.gethostname()
FOREIGN_TEMP_AGE_S = 24 * 3600  # another machine's temporary file (a shared disk): stale after this
UMASK = os.umask(0)  # reading the umask means setting it: once, at import, and put straight back
os.umask(UMASK)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    A write the system refuses (a full disk) raises its `OSError` naming ``path``, also when the
    library writing turned it into an error of its own; the old file stays as it was. A symlink is
    written through, as ``open`` writes (the link stays, its target is replaced); a path that is
    a pipe, a device or a socket is refused (`NotARegularFile`): the rename would replace it with
    a file (``/dev/full`` as root), and a reader waiting on the pipe would wait for ever."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not (path.is_file() or path.is_dir()):  # a folder: the rename says so
        raise NotARegularFile(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.{HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
    except OSError as err:
        raise named(err, path) from None
    handle = _Temporary(io.FileIO(fd, "wb"))
    try:
        with handle:
            # mkstemp makes the file private (0600); give it the mode a plain open() would: the
            # old file's, or what the umask allows
            os.fchmod(handle.fileno(), _mode_for(path))
            write(handle)
            if handle.failure is not None:  # a write failed, and the library went on
                raise handle.failure
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        Path(tmp_name).unlink(missing_ok=True)
        refused = err if isinstance(err, OSError) else None
        if isinstance(err, Exception) and handle.failure is not None:
            refused = handle.failure  # what the library's own error came of
        if refused is not None:  # a full disk: the write names no file, the error will
            raise named(refused, path) from None
        raise
    # A process killed mid-write (kill -9, an out-of-memory kill) leaves its temporary file
    # behind, as large as the file; the next complete write of the same file removes it.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _abandoned(stale, path.name):
            stale.unlink(missing_ok=True)
    return path


class NotARegularFile(UserError):
    """A path to write whole that is a pipe, a device or a socket (`atomic_write`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} is not a regular file but a pipe, a device or a socket, which a file written "
            "whole would replace; name a file to write"
        )


class _Temporary(io.BufferedWriter):
    """`atomic_write`'s handle: a buffered file that keeps the first error its writes met.

    A library may turn that error into its own: torch.save meets a full disk as this `OSError`,
    then fails closing its zip with "RuntimeError: [enforce fail at inline_container.cc:672] .
    unexpected pos 18368 vs 18320", which says nothing of a disk. Kept here, the failure is
    known whatever the library raises, and also when it goes on as if the write had been made.
    """

    failure: OSError | None = None

    def write(self, data: Any, /) -> int:
        try:
            return super().write(data)
        except OSError as err:
            self.failure = self.failure or err
            raise

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as err:
            self.failure = self.failure or err
            raise


def read_standard_input(what: str, content: str) -> bytes:
    """All of the standard input, for a flag given ``-`` (``what`` names it, ``content`` says what
    to pipe into it): a closed one (``<&-``) or one that cannot be read is a one-line UserError,
    and a terminal is told how to end what is typed (else it waits in silence)."""
    if sys.stdin is None:
        raise UserError(f"{what} is closed; pipe {content} into the command")
    try:
        if sys.stdin.isatty():
            print(f"reading {content} from the terminal; end with Ctrl-D", file=sys.stderr)
        return sys.stdin.buffer.read()
    except OSError as err:
        raise UserError(f"cannot read {what} ({err.strerror})") from None


def named(err: OSError, path: str | os.PathLike[str]) -> OSError:
    """``err`` naming ``path``, the file being written, for `run_cli`'s one line: not a hidden
    temporary file, and not nothing (a write that fills the disk names no file)."""
    return type(err)(err.errno, err.strerror or str(err), str(path))


def _mode_for(path: Path) -> int:
    """The permission bits of ``path`` if it exists, else 0o666 less the process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~UMASK


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


def abandoned(temporary: Path) -> bool:
    """Whether a temporary file of `atomic_write` (``.NAME.HOST-PID.*.tmp``), whatever NAME it was
    writing, was left by a writer that is gone (`_abandoned`): for folders of files with names of
    their own, which no later write of the same name cleans (the feature cache's shards)."""
    at = temporary.name.rfind(f".{HOST}-")
    return _abandoned(temporary, temporary.name[1:at] if at > 0 else "")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


@dataclasses.dataclass
class _Hold:
    fd: int  # the open .lock, flocked
    made: list[Path]  # the folders `hold` created for it, innermost first


_HELD: dict[Path, _Hold] = {}  # the lock files this process holds (`hold`)


def hold(folder: Path, refusal: Callable[[str], Exception], name: str = ".lock") -> None:
    """Take ``folder``'s lock (``folder/.lock``, created with the folder) for this process, or
    raise ``refusal(holder)`` if another process holds it; ``holder`` names that process. Another
    ``name`` is the lock of one file in the folder (``.OUT.csv.lock``).

    The lock is an advisory ``flock``: the system drops it when its process ends, however it ends
    (kill -9 included), so a crashed run never leaves its folder locked. `release` removes the
    ``.lock`` file, and so does `release_all` for a run that raised, at the end of its command or
    process (a refused start also removes the folders it created when nothing else was written
    into them). A process that holds the folder already keeps it (a run started again in the same
    process, as the tests do). File systems without ``flock`` are not locked.
    """
    key = folder.resolve() / name
    if key in _HELD:
        return
    made = _make_folders(folder)
    lock = folder / name
    try:
        fd = _lock(lock, refusal)
    except BaseException:
        _remove_empty(made)  # nothing held: the folders made for it go
        raise
    if fd is None:
        return
    _HELD[key] = _Hold(fd, made)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {HOST}\n".encode())
    except OSError as err:  # a full disk: the write names no file
        release(folder, name)  # the .lock and the folders made for it go
        raise named(err, lock) from None


def _lock(lock: Path, refusal: Callable[[str], Exception]) -> int | None:
    """The descriptor of ``lock``, opened (created if need be) and flocked; None where the file
    system has no ``flock``."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            name = _holder_name(fd)
            os.close(fd)
            raise refusal(name) from None
        except OSError:  # no flock on this file system (some network mounts)
            os.close(fd)
            return None
        try:  # the file locked is still the folder's .lock, not one its holder removed meanwhile
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


def holder(folder: Path, name: str = ".lock") -> str | None:
    """Who holds ``folder``'s lock (as `hold`'s refusal names it), or None when no other process
    does."""
    import fcntl

    if folder.resolve() / name in _HELD:
        return None
    try:
        fd = os.open(folder / name, os.O_RDONLY)
    except OSError:  # no lock file (or none to read): nobody holds the folder
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_name(fd)
    except OSError:  # no flock on this file system: not locked
        return None
    finally:
        os.close(fd)  # (drops a lock it took)
    return None


def _holder_name(fd: int) -> str:
    """What the holder of the lock file open as ``fd`` wrote into it: "process PID on HOST"."""
    return os.read(fd, 200).decode("utf-8", errors="replace").strip() or "another process"


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; return the folders it created, innermost first (as written: "a/../b"
    creates a and b)."""
    made = []
    written = folder.absolute()
    for path in reversed((written, *written.parents)):
        if path.exists():
            continue
        try:
            path.mkdir()
        except FileExistsError:  # made meanwhile by another process: not ours
            continue
        except OSError:  # a full disk, a folder without write permission
            _remove_empty(made[::-1])
            raise
        made.append(path)
    return made[::-1]


def _remove_empty(made: list[Path]) -> None:
    """Remove the folders `_make_folders` made, innermost first, as far as they are empty."""
    for path in made:
        try:
            path.rmdir()
        except OSError:  # something else was written into it: it stays, and so do its parents
            break


def release(folder: Path, name: str = ".lock") -> None:
    """Give up ``folder``'s lock taken by `hold` and remove ``.lock`` (nothing if this process
    does not hold it); the folders `hold` created go too if they hold nothing else."""
    held = _HELD.pop(folder.resolve() / name, None)
    if held is None:
        return
    with contextlib.suppress(OSError):  # removed while locked: `hold` checks what it locked
        os.unlink(folder / name)
    os.close(held.fd)
    _remove_empty(held.made)


def release_all() -> None:
    """Release what runs that raised still hold: at the end of a command (`run_cli`) and of the
    process."""
    for lock in list(_HELD):
        release(lock.parent, lock.name)


atexit.register(release_all)
