"""One CPU thread against torch's default for the app's step-by-step work (crnn_app.inside.one_thread).

    python bench/app_threads.py [--chars 400] [--toy-steps 100] [--rounds 3]

The Inside a character model page traces a text through the model one character at a time, and
the Lecture toys page trains a toy whose matrices are tiny: thousands of small matrix products in
a row. Both run under `crnn_app.inside.one_thread`. This script times the two with torch's
default number of threads and with one, interleaved round by round, and prints the medians and
their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from char_lm.data import BUILTIN_TEXTS
from char_lm.generate import load_char_lm
from crnn_app import inside, toys
from recurrent.errors import run_cli

REPO = Path(__file__).resolve().parents[1]


def _timed(threads: int, work) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=400, help="characters traced (default 400)")
    parser.add_argument("--toy-steps", type=int, default=100, help="ship toy steps (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "shakespeare_char.pt"))
    args = parser.parse_args(argv)

    default_threads = torch.get_num_threads()
    model, vocab, _ = load_char_lm(args.checkpoint)
    ids = torch.randint(0, len(vocab), (args.chars,), generator=torch.Generator().manual_seed(0))
    cfg = toys.toy_config("ship.yaml", max_steps=args.toy_steps)
    jobs = {
        f"trace {args.chars} characters ({args.checkpoint})": lambda: inside._trace(model, ids),
        f"train the ship toy, {args.toy_steps} steps": lambda: toys._train_toy(
            cfg, BUILTIN_TEXTS["ship"], None
        ),
    }
    print(f"torch {torch.__version__}, default threads {default_threads}, {args.rounds} rounds")
    for name, work in jobs.items():
        times: dict[int, list[float]] = {default_threads: [], 1: []}
        for _ in range(args.rounds):
            for threads in times:
                with torch.no_grad() if name.startswith("trace") else torch.enable_grad():
                    times[threads].append(_timed(threads, work))
        many, one = statistics.median(times[default_threads]), statistics.median(times[1])
        print(
            f"{name}: {default_threads} threads {many:.2f} s, 1 thread {one:.2f} s, "
            f"1 thread is {many / one:.1f}x as fast"
        )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
