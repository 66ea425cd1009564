"""Print text from a trained character model, streamed as it is generated.

    python -m char_lm.sample --checkpoint runs/char_lm/shakespeare/best.pt --prompt "ROMEO:" \
        --length 500 --temperature 0.8 --top-k 40 --top-p 0.95 --seed 1

    python -m char_lm.sample --checkpoint best.pt --prompt-file opening.txt --num-samples 3

Without ``--seed`` every run draws a fresh random seed and prints it to stderr
(``seed: 123456789``), so a sample worth keeping can be repeated with ``--seed 123456789`` and the
same settings. Prints the prompt, then the generated characters one at a time (flushed as they
come), then a newline. An empty prompt conditions the model on a newline (not printed) when its
vocabulary has one; otherwise a prompt is required. Prompt characters the model never saw are an
error naming them. ``--prompt-file`` reads the prompt from a UTF-8 file (several lines, say), or
from the standard input for ``-`` (``fortune | python -m char_lm.sample ... --prompt-file -``).
``--num-samples N`` prints N samples of the same prompt, each followed by a line of dashes (as
nanoGPT's sample.py): sample i is drawn with seed + i, so its text is the one ``--seed`` (seed + i)
gives alone.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator, Sequence

import torch

from char_lm.data import read_text
from char_lm.generate import generate, load_char_lm, trained_precision
from recurrent.errors import ArgumentParser, UserError, not_utf8_bytes, run_cli
from recurrent.files import read_standard_input
from recurrent.training import pick_device

SEED_RANGE = 2**31  # seeds drawn without --seed are in [0, 2**31), short enough to copy
STDIN = "-"  # --prompt-file's name for the standard input
SEPARATOR = "-" * 15  # the line after each of several samples (nanoGPT's)


def draw_seed() -> int:
    """A fresh random seed for a run without ``--seed`` (from the OS, not torch's global state)."""
    return secrets.randbelow(SEED_RANGE)


def read_prompt(path: str) -> str:
    """--prompt-file's text: a UTF-8 file's whole text, or the standard input's for ``-``."""
    if path != STDIN:
        return read_text(path)
    source = "the standard input (--prompt-file -)"
    data = read_standard_input(source, "the prompt")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise not_utf8_bytes(source, data[:8], err.start) from None
    if not text:
        raise UserError(f"{source} is empty; pipe the prompt into the command")
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m char_lm.sample",
        description="Generate text from a character model trained with char_lm.train.",
    )
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by char_lm.train")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument(
        "--prompt",
        default="",
        help="text to continue (default empty: start as if at the beginning of a line)",
    )
    prompts.add_argument(
        "--prompt-file",
        help="a UTF-8 text file whose whole text is the prompt (-: the standard input's)",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="samples of the prompt to print, each followed by a line of dashes; sample i is "
        "drawn with seed + i (default 1: one sample, no dashes)",
    )
    parser.add_argument(
        "--length", type=int, default=500, help="characters to generate (default 500)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="divide the logits by this; lower is more conservative (default 0.8)",
    )
    parser.add_argument(
        "--top-k", type=int, default=0, help="sample only from the k most likely (0: off)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="sample only from the smallest set of characters with this much probability (1: off)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed: the same seed and settings give the same text (default: a fresh "
        "random seed every run, printed to stderr so the sample can be repeated)",
    )
    parser.add_argument(
        "--greedy", action="store_true", help="always take the most likely character"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    args = parser.parse_args(argv)
    if args.length < 0:
        raise UserError(f"--length must be >= 0, got {args.length}")
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.seed is not None and not 0 <= args.seed <= 2**63 - args.num_samples:
        # sample i is drawn with seed + i, which --seed must take to repeat it alone
        most = "2**63 - 1" if args.num_samples == 1 else f"2**63 - {args.num_samples}"
        each = "" if args.num_samples == 1 else f" with --num-samples {args.num_samples}"
        raise UserError(f"--seed must be an integer from 0 to {most}{each}, got {args.seed}")
    if not args.greedy and not args.temperature > 0:  # NaN too
        raise UserError(
            f"--temperature must be > 0, got {args.temperature}; for the most likely character at "
            "every step pass --greedy"
        )
    if args.greedy and args.num_samples > 1:
        raise UserError("--greedy gives the same text every time; drop --greedy or --num-samples")
    prompt = args.prompt if args.prompt_file is None else read_prompt(args.prompt_file)
    device = pick_device(args.device)
    model, vocab, config = load_char_lm(args.checkpoint, device)
    seed = draw_seed() if args.seed is None else args.seed
    precision = trained_precision(model, config)  # as it was trained

    def sample(index: int) -> Iterator[str]:
        return generate(
            model,
            vocab,
            prompt,
            args.length,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            greedy=args.greedy,
            # a CPU generator on every device, as the app seeds: its draws are the same everywhere
            generator=torch.Generator().manual_seed(seed + index),
            precision=precision,
        )  # checks the prompt and settings before anything is printed

    characters = sample(0)
    if args.seed is None and not args.greedy:  # a drawn seed, so a good sample can be repeated
        these = "this sample" if args.num_samples == 1 else "these samples"
        print(f"seed: {seed} (pass --seed {seed} to repeat {these})", file=sys.stderr)
    out = sys.stdout
    for index in range(args.num_samples):
        if index:
            characters = sample(index)
        out.write(prompt)
        out.flush()
        for ch in characters:
            out.write(ch)
            out.flush()
        out.write("\n" if args.num_samples == 1 else f"\n{SEPARATOR}\n")
        out.flush()


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main, memory="use a shorter prompt, or free memory on the machine"))


if __name__ == "__main__":
    cli()
