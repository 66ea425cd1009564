"""Multi-process training with torchrun: who this process is, and the few collectives runs need.

    torchrun --standalone --nproc_per_node=2 -m char_lm.train --config ... --out-dir runs/x

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them a run is one process and every
function here is a cheap no-op. The process group uses ``nccl`` when the run is on CUDA devices and
``gloo`` otherwise (the CPU), chosen automatically. Rank 0 alone prints, writes metrics and
checkpoints; every rank computes. A collective call bounded by ``timeout`` turns a rank that died
or hangs into an error on the others instead of a job that waits forever.

Under torchrun the processes join the job through the store its agent serves: each waits for the
others in Python and stops at once, saying why, when one stops before joining (`tell_failure`),
and each attempt of a job that torchrun restarts (``--max-restarts``) joins through keys of its
own. Once the job has formed, each process beats in the store and watches another's beats
(`Heartbeat`): a process that is frozen, or whose machine is lost, ends the job after
``train.heartbeat_timeout_s``, not at the collective's timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recurrent.errors import STOP_SIGNALS, JobNotFormed, UserError, output_gone

# how a line says to run the same command again: it goes on from last.pt, or starts afresh
RESUME_AUTO = "--resume auto"
DEFAULT_TIMEOUT_S = 1800.0  # a rank that does not answer a collective in this time fails the job
TELL_TIMEOUT_S = 5.0  # to reach the job's store and tell it of a failure before the job formed
REACH_TIMEOUT_S = 60.0  # to reach the job's store when joining (torchrun serves it beforehand)


@contextlib.contextmanager
def _unpickling_our_own() -> Iterator[None]:
    """Quiet torch's FutureWarning about ``torch.load(weights_only=False)`` that torch before
    2.6 or so prints once per process from the object collectives, which unpickle what another
    process of this job sent (the project's own values, never a file)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="You are using `torch.load` with `weights_only=False`",
            category=FutureWarning,
        )
        yield


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (and returned)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order; ``[value]`` in one process."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        with _unpickling_our_own():
            dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        with _unpickling_our_own():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def sharing(self, folder: Path) -> list[int] | None:
        """The ranks that see the same ``folder`` as this one, this one included, in rank order:
        all of them on a file system the machines share, those of this machine where each has
        its own disk. None where what the ranks see does not split into such groups (a network
        file system that shows one rank's files to another later), and every rank then agrees on
        None. Each rank leaves a marker file in ``folder`` and looks for the others'."""
        if not self.enabled:
            return [0]
        token = self.broadcast_object(secrets.token_hex(8) if self.is_main else None)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f".rank-{token}-{self.rank}"
        marker.touch()
        self.barrier()
        seen = sorted(int(path.name.rsplit("-", 1)[1]) for path in folder.glob(f".rank-{token}-*"))
        self.barrier()  # every rank has looked before the markers go
        marker.unlink(missing_ok=True)
        return seen if form_groups(self.all_gather_objects(seen)) else None

    def shard(self, count: int, what: str) -> slice:
        """This rank's contiguous share of ``count`` equal parts (``count`` must divide evenly)."""
        if count % self.world_size:
            raise UserError(
                f"{what} is {count}, which does not split evenly over {self.world_size} "
                f"processes; make it a multiple of {self.world_size}"
            )
        per_rank = count // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def form_groups(views: list[list[int]]) -> bool:
    """Whether ``views[r]``, the ranks that rank r saw in a folder, split the ranks into groups:
    every rank it names saw the same ranks (and so a folder is seen whole or not at all)."""
    return all(rank in view for rank, view in enumerate(views)) and all(
        views[other] == view for view in views for other in view
    )


def from_environment() -> Distributed:
    """The job layout torchrun put in the environment (one process when it is absent)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)"
        ) from None
    return Distributed(rank, world_size, local_rank)


def setup(
    device_name: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    heartbeat_timeout_s: float = 0.0,
    resume: str = RESUME_AUTO,
) -> tuple[Distributed, torch.device]:
    """Join the job (if torchrun started one) and pick this rank's device.

    ``device_name`` is the config's ``train.device``: with ``auto`` or ``cuda`` each rank takes
    GPU ``LOCAL_RANK``; the backend is nccl on CUDA and gloo on the CPU. With
    ``heartbeat_timeout_s`` (the config's ``train.heartbeat_timeout_s``; 0: none) a process of a
    torchrun job that goes that long without a sign of life ends the job (`Heartbeat`), saying
    to run the same command with ``resume``.
    """
    from recurrent.training import pick_device

    layout = from_environment()
    device = pick_device(device_name)
    if device.type == "cuda" and layout.enabled:
        if layout.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {layout.local_rank} but only {torch.cuda.device_count()} GPU(s); "
                "lower --nproc_per_node"
            )
        device = torch.device("cuda", layout.local_rank)
        torch.cuda.set_device(device)
    if layout.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            store = _job_store(timeout_s)
            if store is None:  # not started by torchrun: torch's own joining (env://)
                dist.init_process_group(backend=backend, timeout=timeout)
            else:
                with _native_stderr_held():
                    _wait_for_everyone(store, layout, timeout_s)
                # the group's keys apart from an earlier attempt's: after a restart of the job
                # (torchrun's --max-restarts) the agent's store still holds them, and torch's
                # own joining read them (gloo: "connectFullMesh failed ... Connection refused",
                # or a hang; 2 of 3 restarts of a plain two-process script here)
                dist.init_process_group(
                    backend=backend,
                    store=dist.PrefixStore(_attempt_key("group"), store),
                    rank=layout.rank,
                    world_size=layout.world_size,
                    timeout=timeout,
                )
            if heartbeat_timeout_s > 0:
                _start_heartbeat(layout, heartbeat_timeout_s, resume)
        except dist.DistStoreError:  # torch's "wait timeout after ...ms, keys: /default_pg/..."
            raise JobNotFormed(_never_joined(timeout_s)) from None
        except dist.DistNetworkError:  # "Failed to recv, got 0 bytes. Connection was likely ..."
            # the job's store went away before every process joined: the torchrun that held it
            # ended (on the first machine under the static rendezvous), its process having failed
            raise JobNotFormed(STORE_CLOSED) from None
    return layout, device


def _start_heartbeat(layout: Distributed, timeout_s: float, resume: str = RESUME_AUTO) -> None:
    """Start this process's `Heartbeat`, on a connection of its own to the job's store (its
    thread's requests never meet the main thread's)."""
    global _heartbeat

    def connect() -> dist.TCPStore:
        store = _job_store(DEFAULT_TIMEOUT_S)
        if store is None:  # torch's own joining (env://; torchrun before torch 2.5 or so):
            # rank 0's process serves the store at the same address
            reach = datetime.timedelta(seconds=REACH_TIMEOUT_S)
            address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            with _native_stderr_held():
                store = dist.TCPStore(address, port, is_master=False, timeout=reach)
        return store

    where = f" at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    _heartbeat = Heartbeat(
        connect(), layout, timeout_s, where=where, reconnect=connect, resume=resume
    )
    _heartbeat.start()


STORE_CLOSED = (
    "the torchrun job's rendezvous store closed before every process joined it: a process failed "
    "before joining (the first machine's output says why) and its torchrun ended; start the job "
    "again on every machine"
)


def _never_joined(timeout_s: float) -> str:
    return (
        f"the other processes of this torchrun job did not all join it within {timeout_s:.0f} s: "
        "one failed before joining (its machine's output says why) or was never started; start "
        "the job again on every machine"
    )


def _job_store(timeout_s: float) -> dist.TCPStore | None:
    """A client of the store that torchrun's agent serves its job's processes at MASTER_ADDR and
    MASTER_PORT, its requests bounded by ``timeout_s``; None where no agent serves one (a job not
    started by torchrun).

    Raises `JobNotFormed` where the store cannot be reached within `REACH_TIMEOUT_S` (or
    ``timeout_s``, if shorter): the torchrun that served it has ended. The agent serves it before
    it starts a process, so it does not come later; torch's client alone would try again for the
    job's whole timeout, 30 minutes, deaf to SIGTERM. (A plain connection would tell sooner, but
    torch's store server, met by connections that say nothing, stalled every request for 5 s at
    about every 50th of them here, or warned of each.)"""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    reach = datetime.timedelta(seconds=min(timeout_s, REACH_TIMEOUT_S))
    try:
        with _native_stderr_held():
            store = dist.TCPStore(address, port, is_master=False, timeout=reach)
    except dist.DistError:
        raise JobNotFormed(STORE_CLOSED) from None
    store.set_timeout(datetime.timedelta(seconds=timeout_s))
    return store


@contextlib.contextmanager
def _native_stderr_held() -> Iterator[None]:
    """Hold what is written to the file descriptor of stderr within, and write it there after
    all unless the block raised: torch's store client prints a C++ exception dump there at every
    try that fails, before it raises the error this module turns into one line."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        stderr = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()  # Python's own writes within go to the held file too
            os.dup2(stderr, 2)
            os.close(stderr)
        held.seek(0)
        if said := held.read():
            try:
                os.write(2, said)
            except OSError as err:  # a terminal that closed: dropped, as run_cli drops its lines
                if not output_gone(err, sys.stderr):
                    raise


def _attempt_key(name: str) -> str:
    """A key of this attempt of the job in its store (a restarted job's store holds the last's)."""
    return f"recurrent/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


def _wait_for_everyone(store: dist.TCPStore, layout: Distributed, timeout_s: float) -> None:
    """Wait until every process of the job has come to join it, and stop with the line of one
    that stopped before (`tell_failure`).

    torch's own joining waits in C++ for the whole timeout when a process never comes: under
    torchrun on several machines, one that failed (its config or data missing on its machine)
    left the others waiting 30 minutes, deaf to SIGTERM, then failing with a timeout that did not
    say why. Here the wait is Python's: a look at the store every 0.1 s at first, then less often,
    down to once a second, so that a job of many processes waiting for a slow one does not
    flood the store that serves them all."""
    joined = store.add(_attempt_key("joined"), 1)
    deadline = time.monotonic() + timeout_s
    pause = 0.1
    while joined < layout.world_size:
        if store.check([_attempt_key("failed")]):
            rank, line = store.get(_attempt_key("failed")).decode().split("\t", 1)
            raise JobNotFormed(
                f"rank {rank} of this torchrun job stopped before the job formed, saying "
                f'"{line}"; put that right on its machine and start the job again on every '
                "machine"
            )
        if time.monotonic() > deadline:
            raise JobNotFormed(_never_joined(timeout_s))
        time.sleep(pause)
        pause = min(pause * 1.2, 1.0)
        joined = store.add(_attempt_key("joined"), 0)


def tell_failure(line: str) -> None:
    """Tell the processes of this torchrun job, waiting to form it, that this one stops before
    joining, saying ``line``: they stop too, with it (`_wait_for_everyone`). The first process
    to tell is the one they quote. Nothing where the job's store cannot be reached."""
    try:
        if not from_environment().enabled:
            return
        store = _job_store(TELL_TIMEOUT_S)
        if store is not None:
            rank = os.environ.get("RANK", "0")
            store.compare_set(_attempt_key("failed"), "", f"{rank}\t{line}")
    except (UserError, KeyError, ValueError, RuntimeError):  # torch's DistError is one
        pass


HEARTBEAT_PERIOD_S = 5.0  # at most this long between a process's beats (less for short timeouts)
HEARTBEAT_END_WAIT_S = 10.0  # an ending process waits this long at most to tell its watcher


def heartbeat_period(timeout_s: float) -> float:
    """Seconds between two beats of a process: a tenth of the timeout, from 0.1 s to 5 s."""
    return max(0.1, min(HEARTBEAT_PERIOD_S, timeout_s / 10))


class Heartbeat:
    """Each process of a formed torchrun job beats, a count of its own in the job's store, from a
    thread of its own, and watches the next rank's count (rank + 1, around the ring: every rank is
    watched by one other). A rank whose count has not moved for ``timeout_s`` (the process
    frozen, its machine lost or cut off from the others) ends the job: its watcher tells the store
    why, and every process that looks next ends with that line (`look`, then `end_job`). So does a
    process whose store has not answered for as long (`unanswered`: the machine that serves it,
    torchrun's on the first machine, lost; a request to it then never returns, so a second thread
    keeps the time).

    Time counts only while this process runs (`_ran`): one that was itself stopped (SIGSTOP, a
    paused virtual machine, a whole job suspended) and goes on does not take the silence it did
    not see for the others'. Without heartbeats such a job waited for the collective's timeout, 30
    minutes, on every machine: a process that ends closes its connections and the others learn it
    at once, but one that is frozen or whose machine went away says nothing. A process at work
    beats all along, however long its work (a checkpoint written to a slow disk, a feature cache
    filled), since torch's long calls let the thread run; a process that ends its command marks
    itself ended first (`end`, from `finish` or at exit), so that it is not waited for.
    """

    def __init__(
        self,
        store: dist.Store,
        layout: Distributed,
        timeout_s: float,
        clock: Any = time.monotonic,
        where: str = "",
        reconnect: Any = None,
        resume: str = RESUME_AUTO,
    ) -> None:
        self.store = store
        self.rank = layout.rank
        self.watched = (layout.rank + 1) % layout.world_size
        self.timeout_s = timeout_s
        self.period_s = heartbeat_period(timeout_s)
        self.clock = clock
        self.where = where  # the store's address, for its line
        self.reconnect = reconnect  # () -> a new connection to the store, after one broke
        self.ending = heartbeat_ending(resume)  # what its line says to do
        self.seen_count = -1
        self.seen_at = self.answered_at = self.ran_at = clock()
        self.watching = True
        self.ended = threading.Event()
        self._ending = threading.Lock()  # held by whoever ends first: the job, or the command
        self._told = threading.Event()  # the watcher was told that this process ended
        self._times = threading.Lock()

    def _key(self, name: str) -> str:
        return _attempt_key(f"heartbeat/{name}")

    def _ran(self) -> None:
        """Note that this process runs; after a gap of more than three beats it was stopped
        itself (or starved), and what it measures starts again from now."""
        with self._times:
            now = self.clock()
            if now - self.ran_at > 3 * self.period_s:
                self.seen_at = self.answered_at = now
            self.ran_at = now

    def look(self) -> str | None:
        """Beat once, and look at the watched rank and at the job: the line to end the job with,
        or None while every process is heard from. Raises torch's error where the store fails."""
        self._ran()
        self.store.add(self._key(f"beat-{self.rank}"), 1)
        if self.store.check([self._key("lost")]):  # another process's watcher spoke first
            return self.store.get(self._key("lost")).decode()
        if self.watching and self.store.check([self._key(f"ended-{self.watched}")]):
            self.watching = False  # it ended its command: nothing more to hear from it
        if self.watching:
            count = self.store.add(self._key(f"beat-{self.watched}"), 0)
            self._ran()  # (the requests may have waited on a store that was stopped)
            if count != self.seen_count:
                self.seen_count, self.seen_at = count, self.clock()
            elif self.clock() - self.seen_at > self.timeout_s:
                self.store.compare_set(self._key("lost"), "", self._silent(self.watched))
                return self.store.get(self._key("lost")).decode()  # the first to tell
        self.answered_at = self.clock()
        return None

    def unanswered(self) -> str | None:
        """The line to end the job with where the store has not answered a look for the
        timeout while this process ran; else None."""
        self._ran()
        if self.clock() - self.answered_at <= self.timeout_s:
            return None
        return (
            f"the torchrun job's store{self.where} has not answered for {self.timeout_s:g} s (what "
            "serves it on the first machine, torchrun or rank 0, frozen, lost or cut off), so the "
            f"job ends here{self.ending}"
        )

    def _silent(self, rank: int) -> str:
        return (
            f"rank {rank} of this torchrun job has given no sign of life for "
            f"{self.timeout_s:g} s (the process frozen, or its machine lost or cut off), so the "
            f"job ends here{self.ending}"
        )

    def start(self) -> None:
        for target, name in ((self._beat, "heartbeat"), (self._keep_time, "heartbeat-store")):
            threading.Thread(target=target, name=name, daemon=True).start()
        atexit.register(self.end)  # a command that ends with a traceback skips `finish`

    def _beat(self) -> None:
        """Look once a period until the process ends, then tell the watcher so (this thread
        alone uses the connection). A connection that breaks is made again once; a second
        failure leaves the store to `_keep_time` (each try prints torch's C++ dump)."""
        reconnected = False
        try:
            while not self.ended.wait(self.period_s):
                try:
                    line = self.look()
                except (dist.DistError, RuntimeError):
                    if reconnected or self.reconnect is None:
                        raise
                    self.store, reconnected = self.reconnect(), True
                    continue
                if line is not None:
                    # the others read it at their next look: wait for them before ending, or
                    # they would meet this process gone in their collective ("lost contact")
                    self._end(line, grace_s=1.5 * self.period_s)
            self.tell_ended()
        except (dist.DistError, RuntimeError, UserError):  # the store is gone
            pass  # `_keep_time` ends the job at the timeout, unless the process ends first
        finally:
            self._told.set()

    def tell_ended(self) -> None:
        """Tell this process's watcher that it has ended its command: not to wait for it."""
        self.store.set(self._key(f"ended-{self.rank}"), "1")

    def _keep_time(self) -> None:
        while not self.ended.wait(self.period_s):
            line = self.unanswered()
            if line is not None:
                self._end(line, grace_s=0.0)  # nobody can read the store to hear it

    def _end(self, line: str, grace_s: float) -> None:
        if self._ending.acquire(blocking=False):
            if self.ended.is_set():  # the command ended meanwhile: let it
                self._ending.release()
                return
            end_job(line, grace_s)

    def end(self) -> None:
        """This process ends its command: stop beating, and tell its watcher not to wait for it
        (waiting for that at most `HEARTBEAT_END_WAIT_S`: a store that does not answer does not
        hold the process). Nothing where the job is being ended already (`end_job`)."""
        if not self._ending.acquire(blocking=False):
            return
        self.ended.set()
        self._told.wait(HEARTBEAT_END_WAIT_S)


def heartbeat_ending(resume: str) -> str:
    """The end of a heartbeat's line: how the same command goes on, with ``resume`` (the
    engine's "--resume auto in place of --overwrite" where the command had --overwrite, which
    argparse refuses beside --resume)."""
    return (
        f" (train.heartbeat_timeout_s); run the same command with {resume} to go on from the "
        "run's last.pt, or to start again where it has none"
    )


_heartbeat: Heartbeat | None = None  # this process's, once its job has formed (`setup`)


def end_job(line: str, grace_s: float = 0.0) -> None:
    """End this process with ``line`` (`Heartbeat`), the last it says, after ``grace_s`` seconds:
    its main thread is waiting in a collective for a process that will not come, which no signal
    can interrupt. What the process has written is left as a kill leaves it: every file whole or
    not at all."""
    from recurrent.errors import EXIT_LOST_PEER, say

    say(f"error: {line}", last=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    time.sleep(grace_s)
    os._exit(EXIT_LOST_PEER)


def finish(exit_code: int) -> int:
    """A training CLI's exit: ``exit_code`` as is in one process; a torchrun worker ends here.

    A worker runs the exit handlers (files, DataLoader workers) and exits without the
    interpreter's final clean-up, and without leaving the process group: the exit closes its
    connections. Both clean-ups race gloo's worker threads, which can still be freeing the tensors
    of the last finished collective and then need the GIL. At the interpreter's clean-up the rank
    aborted ("terminate called without an active exception", 3 of 10 resume launches on this
    CPU); `dist.destroy_process_group` waits for those threads while holding the GIL, and under torch
    2.4.1 the rank hung there for good (about 1 launch in 2 of a job that torchrun restarts).
    DistributedDataParallel keeps the group, and so those threads, alive until the exit.

    A stopping signal is let pass from here on, as `recurrent.errors.run_cli` lets it once the
    command has ended: the worker has said its line and ends with its own status. torchrun's
    agent sends SIGTERM to the others as soon as one worker ends, and a rank still running these
    clean-ups was killed by it (its report gave -15 for a rank that had stopped, saved, as 141).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return exit_code
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if _heartbeat is not None:
        _heartbeat.end()
    gc.collect()  # iterators' DataLoader workers are shut down here, still by Python
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
            pass
    os._exit(exit_code)
