"""The Training curves page's helpers: the runs under the models directory that have metrics.

A run is any folder below the models directory (searched as `crnn_app.models_dir.walk_models_dir`
searches for checkpoints) that holds a ``metrics.jsonl`` (see `recurrent.plot`): a training run's
output folder (``--out-dir``), or, for the bundled demo models, ``models/<model name>/`` beside
``models/<model name>.pt``. Its name is its path relative to the models directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crnn_app.models_dir import walk_models_dir
from recurrent.checkpoint import is_utf8
from recurrent.plot import METRICS_FILE

LIVE_WITHIN_S = 120.0  # a run whose last line is this recent is shown as still training


def find_runs(models_dir: Path, max_runs: int = 100) -> list[str]:
    """Names (relative to ``models_dir``, "." for the folder itself) of the folders below it that
    hold a metrics.jsonl, sorted; at most ``max_runs``."""
    root = models_dir.resolve()
    found = sorted(
        folder.relative_to(models_dir).as_posix()
        for folder, files in walk_models_dir(models_dir)
        if METRICS_FILE in files
        and is_utf8(folder.relative_to(models_dir).as_posix())  # Streamlit cannot send others
        and (folder / METRICS_FILE).is_file()
        and (folder / METRICS_FILE).resolve().is_relative_to(root)  # no link to elsewhere
    )
    return found[:max_runs]


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


def summarize(records: Sequence[Mapping[str, Any]]) -> RunSummary:
    """A run's `RunSummary` from its metrics lines (`recurrent.plot.read_metrics`). Metrics derived
    after the fact say where they come from in ``source`` (the bundled demo models' do)."""
    evals = sum(record["kind"] == "eval" for record in records)
    notes: list[str] = []
    for record in records:
        note = record.get("source")
        if isinstance(note, str) and note not in notes:
            notes.append(note)
    last = records[-1] if records else {}
    stamp = last.get("timestamp")
    return RunSummary(
        step=last.get("step"),
        trains=len(records) - evals,
        evals=evals,
        stamp=float(stamp)
        if isinstance(stamp, int | float) and not isinstance(stamp, bool)
        else None,
        notes=tuple(notes),
    )
