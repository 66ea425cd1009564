"""Shared test fixtures."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tests run tiny models: one thread is faster than two on a 2-core machine doing other work
    too (up to 10x on a loaded one). Subprocesses (CLI tests, the app server) inherit it."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@dataclass
class Call:
    args: tuple
    kwargs: dict[str, Any]
    result: Any


@pytest.fixture
def record_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[object, str], list[Call]]:
    """``record_calls(owner, name)``: ``owner.name`` (a module's function, say) still runs, and
    every call's arguments and result are appended to the list returned, for the test's run."""

    def record(owner: object, name: str) -> list[Call]:
        calls: list[Call] = []
        real = getattr(owner, name)

        def recorded(*args, **kwargs):
            result = real(*args, **kwargs)
            calls.append(Call(args, kwargs, result))
            return result

        monkeypatch.setattr(owner, name, recorded)
        return calls

    return record


@pytest.fixture
def reader_gone() -> io.StringIO:
    """A standard output whose reader has gone (`... | head -1` after its line): every write
    raises BrokenPipeError, as a pipe's does; for ``monkeypatch.setattr(sys, "stdout", ...)``."""
    return _ReaderGone()


class _ReaderGone(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


class _DiskWithRoom(io.RawIOBase):
    """A file on a disk with room for ``room`` more bytes: a write takes what fits, as the
    kernel's does, and the next one fails with ENOSPC, as on a disk that filled up."""

    def __init__(self, file: io.FileIO, room: int) -> None:
        super().__init__()
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.file.fileno()

    def write(self, data: Any) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file name, as the kernel's
        written = self.file.write(bytes(memoryview(data)[: self.room]))
        self.room -= written
        return written

    def close(self) -> None:
        self.file.close()
        super().close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """``full_disk(room)``: for the rest of the test, each file `recurrent.files.atomic_write`
    writes lies on a disk with room for ``room`` bytes; the real buffered handle, and whatever
    library writes into it (torch.save, say), meet the failure as they would on a real disk."""
    from recurrent import files

    def fill(room: int) -> None:
        real = files._Temporary
        monkeypatch.setattr(files, "_Temporary", lambda file: real(_DiskWithRoom(file, room)))

    return fill


@pytest.fixture
def lock_held() -> Iterator[Callable[[Path, str], Callable[[], None]]]:
    """``lock_held(folder, name)``: another process takes ``folder``'s lock ``name`` (as
    `recurrent.files.hold` does for a command writing there) and keeps it until the function
    returned is called (its process ends), or the test ends."""
    holders: list[subprocess.Popen] = []

    def end(holder: subprocess.Popen) -> None:
        holder.kill()
        holder.wait()
        holder.stdout.close()

    def hold(folder: Path, name: str) -> Callable[[], None]:
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from pathlib import Path; from recurrent "
             "import files; files.hold(Path(sys.argv[1]), SystemExit, name=sys.argv[2]); "
             "print('held', flush=True); time.sleep(60)", str(folder), name],
            stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )  # fmt: skip
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return lambda: end(holder)

    yield hold
    for holder in holders:
        if holder.returncode is None:
            end(holder)


@pytest.fixture(scope="session")
def scenes_annotations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic scenes data set, generated once per test session (24 images of 48 px:
    20 train, 2 val, 2 test); returns its Karpathy-format dataset_scenes.json."""
    from captioner.scenes import MIN_SIZE, generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("scenes"), 24, seed=0, size=MIN_SIZE)


# Property-based tests (hypothesis): "default" keeps CI cheap, `pytest --hypothesis-profile=long`
# runs thousands of examples per property (docs/robustness.md records a long run). Deadlines are
# off: the test machine is small and shared, and a slow example is not a failure.
settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every CI run: a failure reproduces
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    derandomize=False,  # new examples on every run
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")  # `--hypothesis-profile=long` loads the other one afterwards


@pytest.fixture(scope="session", autouse=True)
def same_examples_whatever_ran_before():
    """Under the derandomized profile, hypothesis draws no "local constants".

    Hypothesis also draws, now and then, constants it reads from the project's modules that are
    loaded at the time (file names, strings, numbers), kept in sets whose order follows Python's
    string hashing, which changes from process to process. So the same derandomized test drew
    other examples depending on which tests had run before it in its process: under pytest-xdist,
    on how the tests fell to the two processes (the tokenizer property met "0.," in one run of
    five: docs/robustness.md, 19). The `long` profile, new examples on every run, keeps
    them. (A private hook of hypothesis: where a version lacks it, nothing changes.)"""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # pragma: no cover - another hypothesis layout
        providers = None
    with pytest.MonkeyPatch.context() as patch:
        if settings.default.derandomize and hasattr(providers, "_get_local_constants"):
            patch.setattr(providers, "_get_local_constants", Constants)  # an empty pool
        yield
