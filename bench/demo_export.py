"""A bundled demo model from a benchmark run: its serving checkpoint and its training curves.

`bench/captioner_scenes.py` and `bench/char_lm_shakespeare.py` call `export_demo_model` with
``--export models/<name>.pt`` (`make demo-models`): the best checkpoint becomes ``models/<name>.pt``
(`recurrent.checkpoint.export_checkpoint`: float16 weights, no optimizer state) and the run's
``metrics.jsonl`` becomes ``models/<name>/metrics.jsonl``, which the app's Training curves page
shows (train and eval lines, with wall time).
"""

from __future__ import annotations

from pathlib import Path

from recurrent.checkpoint import export_checkpoint
from recurrent.files import atomic_write_text
from recurrent.plot import METRICS_FILE


def export_demo_model(best_checkpoint: str | Path, target: str | Path) -> Path:
    """Write ``target`` (a serving copy of ``best_checkpoint``) and, beside it in a folder of the
    same name, the run's metrics; print what was written."""
    path = export_checkpoint(best_checkpoint, target)
    curves = path.with_suffix("") / METRICS_FILE
    curves.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(curves, (Path(best_checkpoint).parent / METRICS_FILE).read_text())
    size = path.stat().st_size / 1e6
    print(f"exported the best checkpoint to {path} ({size:.1f} MB) and its curves to {curves}")
    return path
