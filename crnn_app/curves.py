"""The Training curves page's helpers: the runs under the models directory that have metrics.

A run is any folder below the models directory (searched as `crnn_app.models_dir.walk_models_dir`
searches for checkpoints) that holds a ``metrics.jsonl`` (see `recurrent.plot`): a training run's
output folder (``--out-dir``), or, for the bundled demo models, ``models/<model name>/`` beside
``models/<model name>.pt``. Its name is its path relative to the models directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def run_status(records: Sequence[Mapping[str, Any]], now: float) -> str:
    """One line about a run's metrics: how far it got, and whether it is still writing."""
    if not records:
        return "no metrics lines yet"
    last = records[-1]
    evals = sum(record["kind"] == "eval" for record in records)
    trains = len(records) - evals
    parts = [f"step {last['step']:,}", f"{trains} train and {evals} eval lines"]
    stamp = last.get("timestamp")
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        age = now - float(stamp)
        if 0 <= age <= LIVE_WITHIN_S:
            parts.append(f"still training (last line {age:.0f} s ago)")
    return ", ".join(parts)


def sources(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The distinct ``source`` notes of a run's lines (metrics derived after the fact say where
    they come from, e.g. the bundled demo models'), in order of appearance."""
    notes: list[str] = []
    for record in records:
        note = record.get("source")
        if isinstance(note, str) and note not in notes:
            notes.append(note)
    return notes
