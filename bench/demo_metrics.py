"""Training metrics for the bundled demo models, derived from what their checkpoints recorded.

    python -m bench.demo_metrics                    # models/*.pt -> models/<name>/metrics.jsonl

The demo models in models/ were trained before the trainers wrote ``metrics.jsonl``. Their
checkpoints still hold the evaluations: ``history`` (step, train_loss, val_loss at every
evaluation) for the char LM, and only the best validation scores and their step for the
captioner. This script writes those as ``"kind": "eval"`` lines of ``models/<name>/metrics.jsonl``
(the format of `recurrent.plot`), so the app's Training curves page has something to show on a
fresh machine. Nothing is made up: there are no train lines (no learning rate, throughput or
gradient norm was recorded), no wall time, and every line says where it comes from in its
``source`` key. Metrics written by a real training run replace these files when the demo models
are retrained (copy ``RUN_DIR/metrics.jsonl`` to ``models/<name>/``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recurrent.checkpoint import load_checkpoint
from recurrent.plot import METRICS_FILE

SOURCE = (
    "derived by bench/demo_metrics.py from the evaluations recorded in {checkpoint}: eval lines "
    "only, no wall time"
)


def eval_lines(payload: dict[str, Any], checkpoint: str) -> list[dict[str, Any]]:
    """The eval lines a checkpoint's recorded evaluations give (see the module docstring)."""
    source = SOURCE.format(checkpoint=checkpoint)
    lines: list[dict[str, Any]] = []
    history = payload.get("history")
    if isinstance(history, list) and history:  # char LM: every evaluation
        best = math.inf
        for entry in history:
            val_loss = float(entry["val_loss"])
            improved = val_loss < best
            best = min(best, val_loss)
            lines.append(
                {
                    "kind": "eval",
                    "step": int(entry["step"]),
                    "best": improved,
                    "scores": {"val_loss": val_loss},
                    "source": source,
                }
            )
    elif isinstance(payload.get("best_scores"), dict):  # captioner: the best evaluation only
        step = payload.get("best_step", payload.get("step"))
        scores = {name: float(value) for name, value in payload["best_scores"].items()}
        lines.append(
            {"kind": "eval", "step": int(step), "best": True, "scores": scores, "source": source}
        )
    return lines


def write_metrics(checkpoint: Path, out_dir: Path) -> Path:
    """Write ``out_dir/metrics.jsonl`` from ``checkpoint``'s recorded evaluations; return it."""
    lines = eval_lines(load_checkpoint(checkpoint), checkpoint.name)
    if not lines:
        raise SystemExit(f"{checkpoint} records no evaluations: nothing to write")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / METRICS_FILE
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", default="models", help="folder of the demo .pt files")
    parser.add_argument(
        "--names",
        nargs="+",
        default=["scenes_captioner", "shakespeare_char"],
        help="demo models (file names without .pt) to derive metrics for",
    )
    args = parser.parse_args(argv)
    models = Path(args.models_dir)
    for name in args.names:
        path = write_metrics(models / f"{name}.pt", models / name)
        count = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"wrote {path} ({count} eval lines)")


if __name__ == "__main__":
    main()
