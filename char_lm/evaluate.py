"""Loss of a trained character model on a text, in nats/char and bits/char.

    python -m char_lm.evaluate --checkpoint runs/char_lm/shakespeare/best.pt --text play.txt [--json]

Every character of the text but the first is predicted exactly once, with the hidden state carried
from the start of its stream, and the loss is the exact average over those predictions. By
default the whole text is one stream (each prediction sees the whole text before it); ``--streams
N`` cuts it into N contiguous streams that run as one batch: faster, but each stream starts from an
empty state. bits/char = nats/char / ln 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from char_lm.data import encode_file
from char_lm.generate import load_char_lm, trained_precision
from char_lm.scoring import evaluate_text
from recurrent.errors import ArgumentParser, UserError, run_cli
from recurrent.training import pick_device


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m char_lm.evaluate",
        description="Print a character model's loss on a text in nats/char and bits/char.",
    )
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by char_lm.train")
    parser.add_argument("--text", required=True, help="a UTF-8 text file (or builtin:NAME)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--streams",
        type=int,
        default=1,
        help="contiguous streams run as one batch (default 1: exact full-context loss; more is "
        "faster, each stream starting from an empty state)",
    )
    parser.add_argument(
        "--block-size", type=int, default=256, help="characters per forward call (default 256)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.block_size < 1:
        raise UserError("--streams and --block-size must be at least 1")
    device = pick_device(args.device)
    model, vocab, cfg = load_char_lm(args.checkpoint, device)
    ids = encode_file(args.text, vocab, what=f"text {args.text}")  # read in chunks, small dtype
    if len(ids) < 2:
        raise UserError(
            f"{args.text} has {len(ids)} character(s); it needs at least 2 to predict one"
        )
    precision = trained_precision(model, cfg)  # as it was trained
    with precision.autocast():
        loss, count = evaluate_text(model, ids, args.block_size, streams=args.streams)
    result = {
        "checkpoint": str(args.checkpoint),
        "text": str(args.text),
        "characters": count,
        "loss_nats": loss,
        "bits_per_char": loss / math.log(2),
        "precision": precision.name,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.text}: {count} characters predicted, loss {loss:.4f} nats/char, "
            f"{result['bits_per_char']:.4f} bits/char (in {precision.name})"
        )


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(
        run_cli(main, memory="lower --streams or --block-size, or free memory on the machine")
    )


if __name__ == "__main__":
    cli()
