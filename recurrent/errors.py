"""User-facing errors and the CLI wrapper that turns them into one line on stderr.

A user mistake (bad file, flag, checkpoint, image or text) raises `UserError` with a message that
names the problem and says what to do. `run_cli` prints that message as one line, exits non-zero and
shows no traceback. So does a file the system refuses (an `OSError` with a file name: a folder
without write permission, a full disk, a path that cannot exist), wherever it is met, and a full
disk with no file name (a write to a redirected stdout). Internal bugs are neither and still raise
normally.
"""

from __future__ import annotations

import argparse
import codecs
import errno
import math
import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn


class UserError(Exception):
    """A mistake in what the user passed in; the message is shown to them as is.

    A DataLoader worker's error reaches the main process as a new exception of the same class whose
    message is torch's "Caught UserError in DataLoader worker process 0. Original Traceback ...";
    such a message is reduced to the original one, so the user sees the same line as without
    workers.
    """

    def __init__(self, message: object = "") -> None:
        if isinstance(message, str):
            worker = _WORKER_WRAPPED.match(message)
            if worker:
                message = worker.group(1)
        super().__init__(message)


# torch.utils.data._utils.ExceptionWrapper.reraise: the wrapper's text, then the original
# traceback, whose last line is "<module>.UserError: <the original message>".
_WORKER_WRAPPED = re.compile(
    r"\ACaught UserError in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n.*"
    r"\n[\w.]*UserError: (.*?)\n?\Z",
    re.DOTALL,
)


# What the first bytes of a file that is not UTF-8 say it is, and what to do with it.
NOT_UTF8_KINDS = {
    b"\x1f\x8b": "gzip-compressed: decompress it (gunzip) first",
    b"BZh": "bzip2-compressed: decompress it (bunzip2) first",
    b"\xfd7zXZ\x00": "xz-compressed: decompress it (unxz) first",
    b"PK\x03\x04": "a zip archive: extract the text from it first",
    b"\xff\xfe\x00\x00": "UTF-32 text: re-save it as UTF-8",
    b"\x00\x00\xfe\xff": "UTF-32 text: re-save it as UTF-8",
    b"\xff\xfe": "UTF-16 text: re-save it as UTF-8",
    b"\xfe\xff": "UTF-16 text: re-save it as UTF-8",
}


def not_utf8(source: str | Path, *, chunk_size: int = 1 << 20) -> UserError:
    """The error for a text file (a text, annotations) that is not UTF-8: what its first bytes say
    it is (compressed, an archive, UTF-16 or -32) and what to do, and where in the file its first
    bad byte is (`first_bad_byte`, reading ``chunk_size`` bytes at a time)."""
    offset = first_bad_byte(source, chunk_size)
    try:
        with open(source, "rb") as stream:
            head = stream.read(8)
    except (OSError, TypeError, ValueError):
        head = b""
    return not_utf8_bytes(source, head, offset)


def not_utf8_bytes(source: str | Path, head: bytes, offset: int | None) -> UserError:
    """`not_utf8`'s error from a text's first bytes and the offset of its first bad byte, for a
    text read whole rather than from a file (the standard input)."""
    where = "" if offset is None else f" (bad byte at offset {offset})"
    kind = next((kind for magic, kind in NOT_UTF8_KINDS.items() if head.startswith(magic)), None)
    if kind is not None:
        return UserError(f"{source} is not UTF-8 text{where}: it is {kind}")
    return UserError(f"{source} is not UTF-8 text{where}; convert it to UTF-8 first")


def first_bad_byte(source: str | Path, chunk_size: int = 1 << 20) -> int | None:
    """The offset in the file of its first byte that is not UTF-8, by Python's own decoder (a BOM
    counts as the bytes it is), read ``chunk_size`` bytes at a time; None where every byte is, or
    the file cannot be read."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = pending = 0  # bytes of the file before this chunk; of a character cut by it
    try:
        with open(source, "rb") as stream:
            while block := stream.read(chunk_size):
                pending = len(decoder.getstate()[0])
                decoder.decode(block)
                offset += len(block)
        pending = len(decoder.getstate()[0])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:  # err.start counts from the pending bytes
        return offset - pending + err.start
    except (OSError, TypeError, ValueError):
        return None
    return None


EXIT_USER_ERROR = 2


class JobNotFormed(UserError):
    """This process's torchrun job could not form: another process stopped before joining it, or
    never came (`recurrent.distributed.setup`)."""


class OutOfMemory(UserError):
    """A command ran out of memory: the message is `out_of_memory`'s account of it, to which
    `run_cli` adds what to lower (its ``memory`` hint), then ``kept``: what is left of a run."""

    def __init__(self, said: str, kept: str = "") -> None:
        super().__init__(said)
        self.kept = kept


# torch's accounts of an allocation that failed: a GPU's ("CUDA out of memory. Tried to allocate
# 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.10 GiB is free. ..."), Apple's
# ("MPS backend out of memory (...). Tried to allocate 256.00 MiB on private pool. ..."), and the
# CPU allocator's ("DefaultCPUAllocator: can't allocate memory: you tried to allocate
# 4503599627370496 bytes. Error code 12 ..."); and CUDA's own, outside torch's allocator ("CUDA
# error: out of memory" as a context is made, cuBLAS's handle, cuDNN's workspace)
_DEVICE_OUT_OF_MEMORY = re.compile(
    r"\b(?P<device>CUDA|MPS backend|XPU) out of memory\b"
    r"|\bCUDA error: out of memory\b|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED"
)
_CPU_OUT_OF_MEMORY = "DefaultCPUAllocator: can't allocate memory"
_ASKED = re.compile(r"tried to allocate (\d+ bytes|\d+(?:\.\d+)? [KMGTP]?i?B\b)", re.IGNORECASE)
# a GPU's capacity and free memory, as torch 2.1 and later say them, and as older ones did
# ("(GPU 0; 7.93 GiB total capacity; 130.35 MiB already allocated; 47.06 MiB free; ...")
_FREE = re.compile(
    r"total capacity of (?P<total>\S+ \S+) of which (?P<free>\S+ \S+) is free"
    r"|(?P<total_then>\S+ \S+) total capacity;.*?(?P<free_then>\S+ \S+) free;"
)


def out_of_memory(err: BaseException) -> str | None:
    """What ran out of memory and how much it asked for, in words, when ``err`` says that an
    allocation failed (torch's OutOfMemoryError on a GPU, its CPU allocator's RuntimeError,
    Python's MemoryError, raised here or in a DataLoader worker); else None.

    The operating system may also end a process that takes too much memory with SIGKILL (Linux's
    OOM killer), which no process can answer: this covers an allocation refused outright."""
    if isinstance(err, MemoryError):
        return "the machine ran out of memory"
    if not isinstance(err, RuntimeError):
        return None
    text = str(err)
    device = _DEVICE_OUT_OF_MEMORY.search(text)
    if device is None and _CPU_OUT_OF_MEMORY not in text:
        return None
    what = "the machine" if device is None else f"the {_DEVICE_NAMES[device['device'] or 'CUDA']}"
    details = []
    if asked := _ASKED.search(text):
        amount = asked.group(1)
        if amount.endswith(" bytes"):
            amount = binary_size(int(amount.split()[0]))
        details.append(f"it asked for {amount} more")
    if free := _FREE.search(text):
        total = free.group("total") or free.group("total_then")
        details.append(f"{free.group('free') or free.group('free_then')} of its {total} was free")
    return f"{what} ran out of memory" + (f" ({'; '.join(details)})" if details else "")


_DEVICE_NAMES = {"CUDA": "GPU", "MPS backend": "GPU (MPS)", "XPU": "GPU (XPU)"}


def binary_size(size: int) -> str:
    """``size`` bytes as torch writes a GPU's sizes: "20.00 MiB", "4.00 PiB" (and messages of
    other sizes, to read alike)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            return f"{size} bytes" if unit == "bytes" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} PiB"


class RunStopped(BaseException):
    """A run ended early on purpose (a signal, a non-finite loss): its message is shown as one
    line and the command exits with ``exit_code``; the run's last checkpoint is intact.

    A BaseException, as KeyboardInterrupt is: the SIGTERM handler raises it wherever the command
    is, and the ``except Exception`` that turns whatever Pillow or torch raises on a bad file into
    one line must not take it for a bad file (as a subclass of Exception it did: a SIGTERM while a
    folder's image decoded skipped that image as undecodable, and the job went on to its end)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @property
    def signal_name(self) -> str | None:
        """The name of the signal that stopped the command (``SIGTERM``: exit status 128 + its
        number, the shell's convention), or None where no signal did (a non-finite loss)."""
        try:
            return signal.Signals(self.exit_code - 128).name if self.exit_code > 128 else None
        except ValueError:
            return None


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose mistakes (an unknown flag, a value of the wrong type, a missing
    argument) raise `UserError`, so that `run_cli` says them in one line like any other mistake,
    not after argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}; `{self.prog} --help` lists the arguments")


# A standard output whose reader has gone (`train ... | head`, a `tee` that died): what a run that
# stops for it says, and SIGPIPE's exit status (128 + 13; Windows' signal module has no SIGPIPE).
READER_GONE = "SIGPIPE (the standard output's reader has gone)"
READER_GONE_STATUS = 141

# What a stop outside a training loop says after its signal (`run_cli`'s ``stopped``): a
# trainer's setup says how to go on, a command that reads or writes in one go that nothing is
# half-written.
STOPPED = "no file is left half-written (each is written whole or not at all)"
TRAINING_STOPPED = (
    "every file is written whole or not at all, so run the same command again to go on"
)

# What to lower when a command runs out of memory (`run_cli`'s ``memory``); each command that has
# settings for it names them.
MEMORY = "use a smaller model or smaller inputs, or free memory on the machine"

# The signals that stop a command as Ctrl-C does, saved: a scheduler's or torchrun's stop, `kill`,
# and a hang-up (the terminal closed: an ssh connection lost), which `nohup` leaves ignored.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def signal_said(signum: int) -> str:
    """A stopping signal as a `stopped:` line names it: SIGTERM, or SIGHUP with what sent it and
    what keeps a run going.

    torchrun's agent passes a hang-up on to its processes even when `nohup` left it ignored (it
    handles each signal of its ``--signals-to-handle``, SIGHUP among them by default; before
    torch 2.9 it had no such flag and always handled SIGHUP), so under torchrun nohup alone does
    not keep a run going: said so, with the flag that does where there is one."""
    name = signal.Signals(signum).name
    if name != "SIGHUP":
        return name
    keeps = "nohup, tmux or screen keep a run going"
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a process of a torchrun job
        handled = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")  # None: no such flag
        passed_on = [other.strip() for other in (handled or "").split(",") if other.strip()]
        if handled is None or name in passed_on:
            keeps = "torchrun passes it on even under nohup: tmux or screen keep a run going"
        if handled is not None and name in passed_on:
            others = ",".join(other for other in passed_on if other != name) or "SIGTERM"
            keeps += f", or nohup torchrun --signals-to-handle={others}"
    return f"{name} (its terminal was closed; {keeps})"


def run_cli(
    main: Callable[[Sequence[str] | None], object],
    argv: Sequence[str] | None = None,
    *,
    stopped: str = STOPPED,
    memory: str = MEMORY,
) -> int:
    """Call `main(argv)`; a `UserError` becomes `error: <message>` on stderr and exit status 2, and
    so does a refused file, as `error: cannot use <path>: <reason>; check ...` (`error: the disk
    is full (writing <path>): ...` for a full disk), and an allocation that failed, as `error:
    the GPU ran out of memory (it asked for ...); <memory>`: what to lower.

    Under torchrun, a process that stops before its job has formed (a mistake, a signal, a bug)
    also tells the job's other processes, which are waiting to form it, possibly on other
    machines where torchrun does not stop them: they stop at once with its line
    (`recurrent.distributed.tell_failure`), not after the whole timeout.

    A SIGTERM ends the command with ``stopped: SIGTERM; <stopped>`` and status 143, a SIGHUP
    likewise with 129 (`_stop_on_signals`)."""
    ended = [False]  # whether `main` has returned or raised (a box the signal handler reads)
    previous = _stop_on_signals(ended, stopped)
    streams = _guard_standard_streams()
    try:
        return _run(main, argv, ended, stopped, memory)
    except Exception as err:  # a bug: its traceback follows
        _tell_job(f"{type(err).__name__}: {first_line(err, 'no message')} (a traceback follows)")
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _unguard_standard_streams(streams)
        from recurrent.files import release_all

        release_all()  # the run folder of a run that stopped or was refused
        drop_unwritable_stdout()


def _run(
    main: Callable[[Sequence[str] | None], object],
    argv: Sequence[str] | None,
    ended: list[bool],
    stopped: str,
    memory: str,
) -> int:
    """`run_cli`'s call of ``main``, with what each way of failing says and returns; ``ended``
    is set the moment ``main`` returns or raises (a plain store: no signal handler runs before
    it); ``stopped`` is what a stopping signal or a Ctrl-C says after its name, ``memory`` what
    to lower when memory ran out."""
    try:
        try:
            main(argv)
        finally:
            ended[0] = True
        _flush_stdout()  # what is left of its output fails here (a full disk), not at exit
    except JobNotFormed as err:  # the job's own failure to form: the others know it already
        say(f"error: {' '.join(str(err).split())}")
        return EXIT_USER_ERROR
    except OutOfMemory as err:  # a run's: where it was and what it kept
        kept = f"; {err.kept}" if err.kept else ""
        _report(f"error: {' '.join(str(err).split())}; {memory}{kept}")
        return EXIT_USER_ERROR
    except UserError as err:
        _report(f"error: {' '.join(str(err).split())}")  # always exactly one line
        return EXIT_USER_ERROR
    except RunStopped as stop:
        _report(f"stopped: {' '.join(str(stop).split())}", job_wide=True)  # signals, NaN: agreed
        return stop.exit_code
    except KeyboardInterrupt:  # Ctrl-C: what a SIGTERM says of the files and of going on
        _report(f"stopped: interrupted; {stopped}", job_wide=True)
        return 130
    except UnicodeEncodeError as err:
        held = _stream_that_cannot_hold(err)
        if held is None:
            raise
        stream, encoding = held
        _report(
            f"error: the standard {stream} is {encoding} text, which cannot hold U+"
            f"{ord(err.object[err.start]):04X}; set PYTHONIOENCODING=utf-8 (or PYTHONUTF8=1) "
            "and run again"
        )
        return EXIT_USER_ERROR
    except BrokenPipeError:  # e.g. `sample ... | head`
        return 0
    except OSError as err:
        # without a path: a bug or the machine's state, unless the disk is full (a write, say
        # to a redirected stdout, names no file)
        if err.filename is None and err.errno not in DISK_FULL:
            raise
        _report(f"error: {os_error_message(err)}")
        return EXIT_USER_ERROR
    except (RuntimeError, MemoryError) as err:
        if (said := out_of_memory(err)) is not None:
            _report(f"error: {' '.join(said.split())}; {memory}")
            return EXIT_USER_ERROR
        lost = _lost_peer(err) if isinstance(err, RuntimeError) else None
        if lost is None:
            raise
        say(
            f"error: lost contact with another process of this torchrun job ({lost}); "
            "torchrun's report names the process that failed first"
        )
        return EXIT_LOST_PEER
    return 0


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _stream_that_cannot_hold(err: UnicodeEncodeError) -> tuple[str, str] | None:
    """Which standard stream, "output" or "error", cannot hold the character ``err`` failed on
    (a terminal or a redirection in latin-1 or cp1252 given a Chinese text), with its encoding;
    None for a lone surrogate, which no encoding holds (a name not shown through `shown_name`),
    or a character both hold (the project writes its files in UTF-8). The streams are tried
    with the character: a codec's error may call it by another name (cp1252's, "charmap")."""
    character = err.object[err.start] if isinstance(err.object, str) else "\ud800"
    if "\ud800" <= character <= "\udfff":
        return None
    for name, stream in (("output", sys.stdout), ("error", sys.stderr)):
        encoding = getattr(stream, "encoding", None)
        if not isinstance(encoding, str):
            continue
        try:
            character.encode(encoding)
        except UnicodeEncodeError:
            return name, encoding
        except LookupError:
            continue
    return None


def _flush_stdout() -> None:
    """Flush stdout, whose guard (`_StandardStream`) names it in its error: redirected to a file,
    it is written in blocks, and its last block would fail only in the interpreter's flush at
    exit, which says "Exception ignored" and exits with status 120."""
    try:
        sys.stdout.flush()
    except (AttributeError, ValueError):  # no stdout (pythonw), or one closed
        pass


def drop_unwritable_stdout(*, gone: bool = False) -> None:
    """Point stdout at os.devnull when it cannot be written (a full disk, a reader gone, as in
    `sample ... | head`): the command has ended (or a training run stops at its next step), and
    the interpreter's flush at exit would fail on what its buffer still holds, with a traceback
    and exit status 120. ``gone``: a write has failed already; an unbuffered stdout (`python -u`,
    PYTHONUNBUFFERED) holds nothing for a flush to fail on, and its next write would fail too."""
    if not gone:
        try:
            sys.stdout.flush()
            return
        except OSError:
            pass
        except (AttributeError, ValueError):  # no stdout (pythonw), or one closed
            return
    _point_at_devnull(sys.stdout)


def _point_at_devnull(stream: Any) -> None:
    """Point ``stream``'s descriptor at os.devnull, so that its next write and the interpreter's
    flush at exit succeed, writing nothing."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (AttributeError, OSError, ValueError):  # a stream with no descriptor (a test's capture)
        pass


def output_gone(err: BaseException, stream: Any) -> bool:
    """Whether ``err``, raised writing to ``stream`` (a standard stream), says that no one reads
    it any more: a pipe's reader that has gone (`train ... | head`, a `tee` that died:
    BrokenPipeError), or a terminal that was closed (an ssh connection lost: EIO from a terminal,
    where from a file it is a failing disk)."""
    if isinstance(err, BrokenPipeError):
        return True
    if not (isinstance(err, OSError) and err.errno == errno.EIO):
        return False
    try:
        return stat.S_ISCHR(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # a stream with no descriptor, or closed
        return False


class _StandardStream:
    """A standard stream (``sys.stdout``, ``sys.stderr``) as `run_cli` guards it while a command
    runs.

    Once its terminal is closed with no hang-up reaching the command (a job put in the background
    and `disown`ed, its ssh connection then lost), it writes nothing, as under ``nohup``: the
    command goes on and ends as it would have, as a training run goes on (`Run.log`). Without it,
    the first line written after the close (a caption, the last summary) raised EIO: a traceback
    and exit status 1, and `caption --csv` lost its CSV. A pipe's reader gone (BrokenPipeError)
    still stops the command (`sample ... | head`). Any other failure of a write names the stream
    (``> /dev/full``: "the disk is full (writing the standard output)"), which the system's error
    does not, unless the stream is flushed only at the end."""

    def __init__(self, stream: Any, name: str) -> None:
        self._stream, self._name = stream, name

    def __getattr__(self, name: str) -> Any:
        if name in ("_stream", "_name"):  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def _guarded(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            if not output_gone(err, self._stream):
                if err.filename is not None:
                    raise
                if err.errno in DISK_FULL:
                    from recurrent.files import named

                    raise named(err, self._name) from None
                raise UserError(  # a descriptor closed (`>&-`), or one that will not block
                    f"cannot write to {self._name} ({err.strerror or type(err).__name__}); "
                    "check what it is redirected to"
                ) from None
        _point_at_devnull(self._stream)
        call(*args)  # to os.devnull now, with what the buffer held
        return len(args[0]) if args else None


class _ClosedOutput:
    """sys.stdout where the command was started with its standard output closed (``>&-``), which
    Python leaves as None: the first write is one line, not an AttributeError's traceback."""

    def write(self, text: str) -> int:
        raise UserError(
            "cannot write to the standard output (it is closed: started with >&-); send it to a "
            "file or to /dev/null instead"
        )

    def flush(self) -> None:
        pass


class _ClosedError:
    """sys.stderr where the command was started with its standard error closed (``2>&-``, None
    in Python): what is said there goes nowhere, and the command ends with its own status (1, an
    AttributeError's, before)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _guard_standard_streams() -> tuple[Any, Any]:
    """Put `_StandardStream` around sys.stdout and sys.stderr (`_ClosedOutput` and `_ClosedError`
    in place of closed ones); returns what they were."""
    saved = sys.stdout, sys.stderr
    if sys.stdout is None:
        sys.stdout = _ClosedOutput()
    elif not isinstance(sys.stdout, (_StandardStream, _ClosedOutput)):
        sys.stdout = _StandardStream(sys.stdout, "the standard output")
    if sys.stderr is None:
        sys.stderr = _ClosedError()
    elif not isinstance(sys.stderr, (_StandardStream, _ClosedError)):
        sys.stderr = _StandardStream(sys.stderr, "the standard error")
    return saved


def _unguard_standard_streams(saved: tuple[Any, Any]) -> None:
    """Give sys.stdout and sys.stderr back as they were before `_guard_standard_streams`, unless
    something else replaced them meanwhile."""
    if isinstance(sys.stdout, (_StandardStream, _ClosedOutput)):
        sys.stdout = saved[0]
    if isinstance(sys.stderr, (_StandardStream, _ClosedError)):
        sys.stderr = saved[1]


EXIT_LOST_PEER = 1
# gloo's and NCCL's words for a peer that went away (killed, crashed, its machine lost)
_TRANSPORT = re.compile(r"gloo|nccl|connection (reset|closed|refused)|broken pipe", re.IGNORECASE)


def _lost_peer(err: RuntimeError) -> str | None:
    """The reason, when `err` is a collective of a formed torchrun job failing because another
    process went away (its own traceback says nothing the user can act on); else None."""
    dist = _formed_job()
    if dist is None:
        return None
    text = str(err)
    if not (isinstance(err, getattr(dist, "DistError", ())) or _TRANSPORT.search(text)):
        return None
    # "[.../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:33163: Connection reset by
    # peer. This is typically caused by ..." -> the part after the (last) source location, to its
    # stop; DDP's gradient exchange puts "Got the following error when running the callback:
    # RuntimeError: " before it
    reason = _SOURCE_LOCATION.split(text.strip())[-1]
    return " ".join(reason.split(". ")[0].split()) or type(err).__name__


_SOURCE_LOCATION = re.compile(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*")


def _formed_job() -> Any:
    """``torch.distributed`` once this process's torchrun job has formed its process group; else
    None (without importing torch: a CLI may fail before it does)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


_SAID_LAST = threading.Event()  # the process said its last line (`say(..., last=True)`)
_SAYING = threading.RLock()


def say(line: str, *, job_wide: bool = False, last: bool = False) -> None:
    """Write ``line`` to stderr in one call (torchrun's processes share the terminal: a message
    and its newline written apart could run into another process's line).

    Under torchrun, what every rank may meet alike (an error before the job formed, from the same
    arguments and config everywhere, or a signal that stops the job: ``job_wide``) is said once
    per machine, by its first process (``LOCAL_RANK`` 0): each machine's output is its own, and
    a file may be missing on one machine only. Before the job has formed, when the processes run
    apart, the machine's other processes wait until it has said it (`_machines_first_said`), and
    say it themselves when it has not in time; a formed job's processes stop together. Anything
    else every rank says. A rank other than 0 puts its rank in front.

    After a ``last`` line nothing more is said: a heartbeat ends the job with it (`recurrent.
    distributed.end_job`) while the main thread may still fail in its collective ("lost contact")
    or meet torchrun's SIGTERM, which would only say the same end less well.
    """
    with _SAYING:  # the heartbeat's thread and the main one: one of them says the last line
        if _SAID_LAST.is_set():
            return
        if last:
            _SAID_LAST.set()
        _say_now(line, job_wide)


def _say_now(line: str, job_wide: bool) -> None:
    """`say` ``line`` now (no last line said)."""
    rank = os.environ.get("RANK", "0")
    first = os.environ.get("LOCAL_RANK", rank) == "0"
    forming = _formed_job() is None
    if rank != "0":
        leaves_it = (job_wide or forming) and not first  # to the machine's first process
        if leaves_it and (not forming or _machines_first_said()):
            return
        line = f"[rank {rank}] {line}"
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except OSError as err:  # `... 2>&1 | head`, a closed terminal: no one is left to tell
        if not output_gone(err, sys.stderr):
            raise
        _point_at_devnull(sys.stderr)
    if forming and first:
        _note_said()


SAID_TIMEOUT_S = 15.0  # how long a process leaving its line to its machine's first one waits


def _said_marker() -> Path | None:
    """The file by which a machine's first process tells the others of its torchrun job's
    attempt on that machine that it has said its line: beside the folders of their
    ``TORCHELASTIC_ERROR_FILE``s (``.../attempt_N/LOCAL_RANK/error.json``), which torchrun
    makes per machine and attempt. None outside torchrun."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file or "LOCAL_RANK" not in os.environ:
        return None
    return Path(error_file).parent.parent / "crnn-said"


def _note_said() -> None:
    marker = _said_marker()
    if marker is not None:
        try:
            marker.touch()
        except OSError:  # the folder is gone or read-only: the others say their own line
            pass


def _machines_first_said() -> bool:
    """Whether this machine's first process has said its line (`_note_said`): waited for, up to
    `SAID_TIMEOUT_S`, or until a SIGTERM comes (torchrun stopping the job).

    torchrun's agent stops the other processes as soon as one exits. A process that came to an
    error first and exited at once, leaving the line to its machine's first process (which was
    slower to come to the same error, or would quote it), made torchrun stop that one before it
    said anything: the output held no line of the project's at all, or `stopped: SIGTERM`. False
    where there is nothing to wait for (outside torchrun)."""
    marker = _said_marker()
    if marker is None:
        return False
    stopped = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    try:
        deadline = time.monotonic() + SAID_TIMEOUT_S
        while not marker.exists():
            if stopped.is_set() or time.monotonic() > deadline:
                return marker.exists()
            time.sleep(0.05)
        return True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _report(line: str, *, job_wide: bool = False) -> None:
    """`say` ``line``, and tell it to the job's other processes if it has not formed yet: first,
    since a process that leaves its line to its machine's first process waits in `say` until that
    one has said it, and that one may be waiting to hear of this failure, to quote it."""
    _tell_job(line)
    say(line, job_wide=job_wide)


def _tell_job(line: str) -> None:
    """Under torchrun, before this process's job has formed: tell its other processes that this
    one stops, saying ``line`` (`recurrent.distributed.tell_failure`)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or _formed_job() is not None:
        return
    from recurrent.distributed import tell_failure

    tell_failure(line)


def _stop_on_signals(ended: list[bool], stopped: str) -> dict[int, Any]:
    """Make each of `STOP_SIGNALS` (SIGTERM: a scheduler's or torchrun's stop, `kill`; SIGHUP:
    the terminal closed) end the command with one ``stopped:`` line and status 128 + its number
    wherever it lands in ``main``, as it does in a training loop (which installs its own handler
    to save last.pt first); return the handlers it replaces, none outside the main thread, where
    handlers cannot be set. A SIGHUP that is ignored (`nohup`) stays ignored.

    Once ``main`` has ended (``ended[0]``) a signal is let pass: the command is already ending,
    with its own line and status. A SIGTERM came there under torchrun, whose agent stops the other
    processes when one fails: raised while a process said that it lost contact with the failed
    one, or while it put the handler back, it escaped as a worker traceback."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum: int, frame: Any) -> None:
        if ended[0]:
            return
        raise RunStopped(f"{signal_said(signum)}; {stopped}", exit_code=128 + signum)

    return {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS if stops_on(signum)}


def stops_on(signum: int) -> bool:
    """Whether a command takes ``signum`` to stop on: every stopping signal but a SIGHUP left
    ignored, as `nohup` leaves it (a SIGINT or SIGTERM ignored, as a shell script's background
    job has SIGINT, is taken all the same, as it always was)."""
    return not (
        signum == getattr(signal, "SIGHUP", None) and signal.getsignal(signum) is signal.SIG_IGN
    )


# A loader worker can wait for SIGTERM and tell who sent it (Linux; not macOS), and so leave a
# group's SIGTERM to its main process (`loader_worker_init`), which must be its parent.
WORKERS_LEAVE_SIGTERM = hasattr(signal, "sigwaitinfo")


def loader_workers(num_workers: int) -> dict[str, Any]:
    """A DataLoader's worker arguments: ``num_workers`` processes that `loader_worker_init`
    starts, forked from this process where that leaves a group's SIGTERM to it (Linux), whatever
    the Python; elsewhere Python's default (macOS: spawn).

    Python 3.14 starts them by default through a "forkserver" process, their parent, which sits
    in the main process's group: a scheduler's SIGTERM to the group ended it, after which the
    main process took its workers for ended and finished without them, and they outlived it,
    printing `FileNotFoundError` tracebacks from a temporary folder it had removed (one stop in
    two here). Forked, they are the main process's children, as on Python 3.11 to 3.13.
    """
    options: dict[str, Any] = {"num_workers": num_workers, "worker_init_fn": loader_worker_init}
    if num_workers > 0 and WORKERS_LEAVE_SIGTERM:
        options["multiprocessing_context"] = "fork"
    return options


def loader_worker_init(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn`` that leaves a SIGTERM sent to the whole process group (a
    scheduler's pre-emption, ``kill -- -PGID``) to the main process, which finishes its step,
    saves and stops with one line; the worker ends when its loader shuts it down.

    torch's own handler ends a worker at any SIGTERM, and the main process then fails wherever it
    is ("DataLoader worker ... is killed by signal: Terminated"), with a traceback and its last
    steps unsaved. Here a thread waits for SIGTERM instead (blocked in this thread, so delivered
    to none) and ends the worker only when its main process sent it, as torch does at shutdown.

    A hang-up (the terminal closed), which goes to the whole foreground group, is ignored: it
    ended the worker, with the same traceback, before the main process could save.
    """
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not WORKERS_LEAVE_SIGTERM:  # macOS: torch's handler stays
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait, name="sigterm", daemon=True).start()


SHOWN_CHARS = 80  # the most of a quoted value that an error line shows
SHOWN_PATH_CHARS = 240  # the most of a path (longer ones are refused: "File name too long")


def shown(value: object, limit: int = SHOWN_CHARS, *, quote: bool = True) -> str:
    """``repr(value)`` (``str`` without ``quote``) for an error line, cut where it runs over
    ``limit`` characters to its start, "...", its end and its length: a file pasted into a --set,
    or a tampered checkpoint's field, made a line of megabytes."""
    if isinstance(value, int) and value.bit_length() > 10_000:  # past what Python writes out
        return f"an integer of about {round(value.bit_length() * math.log10(2)):,} digits"
    text = repr(value) if quote else str(value)
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, str) else len(text)
    cut = f"{text[: limit - 24]}...{text[-8:]} ({length:,} characters)"
    return cut if len(cut) < len(text) else text


def first_line(err: BaseException, empty: str | None = None) -> str:
    """The first line of ``err``'s message, for a one-line error that quotes it (torch's load
    errors run over many lines); ``empty`` (default: the exception's class name) if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else empty or type(err).__name__


def os_error_message(err: OSError) -> str:
    """One line for a file the system refused: the path, the reason and what to check."""
    path = None if err.filename is None else shown(err.filename, SHOWN_PATH_CHARS, quote=False)
    if err.filename2 is not None:
        path = f"{path} -> {shown(err.filename2, SHOWN_PATH_CHARS, quote=False)}"
    reason = err.strerror or type(err).__name__
    if err.errno in DISK_FULL:
        writing = "" if path is None else f" (writing {path})"
        return f"the disk is full{writing}: {reason}; free space on it and run again"
    if err.errno == errno.ENAMETOOLONG:
        return (
            f"cannot use {path}: {reason}; shorten it (a file or folder name of at most 255 bytes, "
            "a path of at most 4,096 on most systems)"
        )
    return (
        f"cannot use {path}: {reason}; check that the path exists and is on a disk with free "
        "space that you may read and write"
    )
