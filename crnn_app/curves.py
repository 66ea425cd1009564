"""The Training curves page's helpers: the runs under the models directory that have metrics.

A run is any folder below the models directory (searched as `crnn_app.models_dir.walk_models_dir`
searches for checkpoints) that holds a ``metrics.jsonl`` (see `recurrent.plot`): a training run's
output folder (``--out-dir``), or, for the bundled demo models, ``models/<model name>/`` beside
``models/<model name>.pt``. Its name is its path relative to the models directory.
"""

from __future__ import annotations

import os
import stat
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from crnn_app.models_dir import walk_models_dir
from recurrent.checkpoint import is_utf8
from recurrent.engine import parse_metrics
from recurrent.plot import METRICS_FILE, finite_number, metrics_frame

LIVE_WITHIN_S = 120.0  # a run whose last line is this recent is shown as still training


def find_runs(models_dir: Path, max_runs: int = 200) -> tuple[list[str], int]:
    """Names (relative to ``models_dir``, "." for the folder itself) of the folders below it that
    hold a metrics.jsonl, sorted, and how many there are: where more than ``max_runs``, the
    ``max_runs`` whose metrics changed last (a folder of many runs: the latest are the ones to
    follow)."""
    root = models_dir.resolve()
    found = []
    for folder, files in walk_models_dir(models_dir):
        name = folder.relative_to(models_dir).as_posix()
        path = folder / METRICS_FILE
        if METRICS_FILE not in files or not is_utf8(name):  # Streamlit cannot send others
            continue
        try:
            if not path.resolve().is_relative_to(root):  # no link to elsewhere
                continue
            status = path.stat()
        except (OSError, RuntimeError):  # gone meanwhile, unreadable, a symlink loop
            continue
        if stat.S_ISREG(status.st_mode):
            found.append((status.st_mtime_ns, name))
    latest = sorted(found, reverse=True)[:max_runs]
    return sorted(name for _, name in latest), len(found)


@dataclass(frozen=True)
class RunSummary:
    """What the page says of a run beside its curves, taken from its metrics lines once."""

    step: int | None  # of the last line; None without lines
    trains: int  # train lines
    evals: int  # eval lines
    stamp: float | None  # the last line's timestamp, when it has one
    notes: tuple[str, ...]  # distinct ``source`` notes, in order of appearance

    def status(self, now: float) -> str:
        """One line: how far the run got, and whether it is still writing."""
        if self.step is None:
            return "no metrics lines yet"
        parts = [f"step {self.step:,}", f"{self.trains} train and {self.evals} eval lines"]
        if self.stamp is not None and 0 <= now - self.stamp <= LIVE_WITHIN_S:
            parts.append(f"still training (last line {now - self.stamp:.0f} s ago)")
        return ", ".join(parts)


NO_LINES = RunSummary(step=None, trains=0, evals=0, stamp=None, notes=())


def summarize(records: Sequence[Mapping[str, Any]], before: RunSummary = NO_LINES) -> RunSummary:
    """A run's `RunSummary` from its metrics lines (`recurrent.plot.read_metrics`), or of the lines
    ``before`` summarizes followed by ``records``. Metrics derived after the fact say where they
    come from in ``source`` (the bundled demo models' do)."""
    if not records:
        return before
    evals = sum(record["kind"] == "eval" for record in records)
    notes = list(before.notes)
    for record in records:
        note = record.get("source")
        if isinstance(note, str) and note not in notes:
            notes.append(note)
    stamp = records[-1].get("timestamp")
    return RunSummary(
        step=records[-1]["step"],
        trains=before.trains + len(records) - evals,
        evals=before.evals + evals,
        stamp=finite_number(stamp),
        notes=tuple(notes),
    )


class MetricsTail:
    """A run's metrics.jsonl followed as it grows (what the Training curves page redraws every few
    seconds): each `read` parses only the whole lines written since the one before, and the whole
    file again when it was replaced (a resumed or restarted run writes a new file) or any byte read
    before has changed (a CRC-32 of them, cheap next to parsing). Parsing 60,000 lines whole took
    about 1 s here, each time the file grew by a line. One object per file serves every session of
    the app: `read` holds a lock."""

    CHUNK = 1 << 24  # bytes read at a time to check what was read before

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self._lock = threading.Lock()
        self._start(None)

    def _start(self, identity: tuple[int, int] | None) -> None:
        self._identity, self._offset, self._crc = identity, 0, 0
        self._summary, self._frame = NO_LINES, metrics_frame({})

    def _add(
        self, summary: RunSummary, frame: pd.DataFrame, text: bytes
    ) -> tuple[RunSummary, pd.DataFrame]:
        records = parse_metrics(text.decode("utf-8", errors="replace"))
        if not records:
            return summary, frame
        # an empty frame would make every column `object`; lines with no usable value make one
        frames = [part for part in (frame, metrics_frame({self.name: records})) if not part.empty]
        if frames:
            frame = pd.concat(frames, ignore_index=True)
        return summarize(records, summary), frame

    def _same_start(self, stream: BinaryIO) -> bool:
        """Whether the file still begins with the bytes read before (the stream is left after
        them)."""
        crc, left = 0, self._offset
        while left:
            chunk = stream.read(min(left, self.CHUNK))
            if not chunk:
                return False  # shorter than before
            crc, left = zlib.crc32(chunk, crc), left - len(chunk)
        return crc == self._crc

    def read(self) -> tuple[RunSummary, pd.DataFrame]:
        """The summary of every line so far and their rows (`recurrent.plot.metrics_frame`)."""
        with self._lock:
            with self.path.open("rb") as stream:
                status = os.fstat(stream.fileno())
                identity = (status.st_dev, status.st_ino)
                if identity != self._identity or not self._same_start(stream):
                    self._start(identity)
                    stream.seek(0)
                new = stream.read()
            whole = new[: new.rfind(b"\n") + 1]
            if whole:
                self._summary, self._frame = self._add(self._summary, self._frame, whole)
                self._offset += len(whole)
                self._crc = zlib.crc32(whole, self._crc)
            # a last line without its newline counts as `read_metrics` counts it (one still being
            # written is not JSON yet), and is read again next time, when it may have grown
            return self._add(self._summary, self._frame, new[len(whole) :])
