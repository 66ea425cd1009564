"""Retrain the two demo models bundled in models/ (`make demo-models`; CPU, about 28 minutes).

    python -m bench.make_demo_models --models-dir models --shakespeare ../shared/data/tinyshakespeare.txt

Each demo model is the best checkpoint of its benchmark run, exported for serving (float16
weights, no optimizer state; under 8 MB each), with its run's metrics.jsonl in
models/<name>/ (`bench.demo_export`):

- models/scenes_captioner.pt: bench/captioner_scenes.py --minutes 15 (configs/captioner/scenes_demo.yaml
  on 4000 generated scenes of 96 px, seed 0)
- models/shakespeare_char.pt: bench/char_lm_shakespeare.py --minutes 10
  (configs/char_lm/shakespeare.yaml on tiny-shakespeare)

The benchmarks print the models' measured quality; docs/benchmarks.md records it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import captioner_scenes, char_lm_shakespeare
from recurrent.errors import UserError, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", default="models", help="where the demo models go")
    parser.add_argument(
        "--shakespeare",
        default=char_lm_shakespeare.SHAKESPEARE_TEXT,
        help="tiny-shakespeare text",
    )
    parser.add_argument("--only", choices=["captioner", "char_lm"], help="make just one of the two")
    args = parser.parse_args(argv)
    models = Path(args.models_dir)
    if args.only in (None, "char_lm") and not Path(args.shakespeare).is_file():
        # said now, not after the captioner's 15 minutes of training
        raise UserError(
            f"no tiny-shakespeare text at {args.shakespeare}: pass --shakespeare FILE "
            "(make demo-models SHAKESPEARE=FILE), or --only captioner"
        )
    if args.only in (None, "captioner"):
        captioner_scenes.main(["--minutes", "15", "--export", str(models / "scenes_captioner.pt")])
    if args.only in (None, "char_lm"):
        char_lm_shakespeare.main(
            [
                "--minutes",
                "10",
                "--data",
                args.shakespeare,
                "--export",
                str(models / "shakespeare_char.pt"),
            ]
        )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
