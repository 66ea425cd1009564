"""Caption images from the command line with a trained checkpoint.

    python -m captioner.caption --checkpoint runs/captioner/scenes_demo/best.pt a.png b.png

Prints one ``path<TAB>caption`` line per image, or one JSON object with --json. The library API
(`load_captioner`, `caption_images`) lives in `captioner.inference`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from captioner.data import load_image
from captioner.decode import check_decode_settings
from captioner.inference import (
    CaptionResult,
    add_decode_arguments,
    caption_images,
    decode_arguments,
    load_captioner,
)
from recurrent.errors import run_cli


def _result_json(path: str, result: CaptionResult) -> dict[str, Any]:
    return {
        "image": path,
        "caption": result.caption,
        "beams": [
            {"caption": text, "logprob": round(logprob, 4)} for text, logprob in result.beams
        ],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m captioner.caption",
        description="Caption images with a trained captioner checkpoint (beam search). Prints one "
        "'path<TAB>caption' line per image, or one JSON object with --json.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to caption")
    parser.add_argument(
        "--checkpoint", required=True, help="a best.pt / last.pt written by captioner.train"
    )
    parser.add_argument(
        "--beam-size", type=int, default=3, help="beam width (default: 3; 1 = greedy)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="most words per caption (default: the checkpoint's decode.max_length)",
    )
    parser.add_argument(
        "--n-best",
        type=int,
        default=1,
        help="print the K best captions per image, each with its log-probability (default: 1)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of lines"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    max_length = 1 if args.max_length is None else args.max_length  # checked again after loading
    check_decode_settings(args.beam_size, max_length, args.n_best)
    captioner = load_captioner(args.checkpoint, args.device)
    images = [load_image(path) for path in args.images]  # a bad file stops here, named
    results = caption_images(
        captioner,
        images,
        beam_size=args.beam_size,
        max_length=args.max_length,
        n_best=args.n_best,
        **decode_arguments(args),
    )
    if args.json:
        payload = {
            "checkpoint": args.checkpoint,
            "beam_size": args.beam_size,
            "results": [
                _result_json(path, r) for path, r in zip(args.images, results, strict=True)
            ],
        }
        print(json.dumps(payload, indent=2))
        return
    _print_lines(args.images, results, args.n_best, sys.stdout)


def _print_lines(paths: Iterable[str], results: Iterable[CaptionResult], n_best: int, out) -> None:
    for path, result in zip(paths, results, strict=True):
        if n_best == 1:
            print(f"{path}\t{result.caption}", file=out)
            continue
        for text, logprob in result.beams:
            print(f"{path}\t{text}\t{logprob:.3f}", file=out)


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
