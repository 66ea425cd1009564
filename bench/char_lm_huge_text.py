"""Peak memory and time to the first step when a character model trains on, or scores, a 1 GB text.

    python bench/char_lm_huge_text.py                  # 1 GB text in /tmp, deleted afterwards
    python bench/char_lm_huge_text.py --gigabytes 0.2 --baseline-mb 0

Writes a text of ``--gigabytes`` GB (10^9 bytes) to a temporary folder: random English-like words,
about 1 word in 100 replaced by one with multi-byte characters (accents, Greek, Cyrillic, CJK,
emoji), with newlines; 16 distinct 1 MB blocks, cycled. Then, each in a fresh subprocess so its
peak resident memory (Linux VmHWM) belongs to that task alone:

- train: ``char_lm.train.train`` with ``configs/char_lm/shakespeare.yaml`` (2-layer LSTM, hidden
  512) on the file, ``train.max_steps=1``. Timed from the process's start (Python and torch
  imports included): the import, `load_corpus` (wrapped to time it), the moment the first
  training step starts (the model's first forward call) and `train` returning (after one
  validation window and writing last.pt and best.pt).
- evaluate: what ``python -m char_lm.evaluate`` does (load the checkpoint just written, encode the
  file in chunks with `encode_file`, `evaluate_text`) but scoring only the first window of 256
  characters, not all 10^9 predictions (hours on a CPU): peak memory and time to that window.
- baseline (``--baseline-mb``, default 64, 0 to skip): a text of that many MB written the same
  way, loaded by the previous version's code path (the whole text as a ``str`` with `read_text`,
  then `encode` into int64, as train.py did) and by `load_corpus`, side by side. The peak per MB
  of text shows what 1 GB would have needed.

Targets (issue 9): peak RSS < 2.5 GB and time to the first step < 60 s for the 1 GB text.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTED = time.perf_counter()  # before torch is imported: a child's times count its imports too
BLOCK_BYTES = 1_000_000
BLOCKS = 16
WORDS = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at "
    "which but have an had they you were their one all we can her has there been if more when "
    "will would who so no ROMEO JULIET Thou art thy love night day, light; dark: sweet! O?"
).split()
WIDE_WORDS = "café naïve déjà Ωμέγα Привет мир 日本語 中文 😀 👍🏽 ﬁne €5 ½ — “quoted”".split()


def write_text(path: Path, size: int, seed: int = 0) -> int:
    """A mostly ASCII text of ``size`` bytes (cut at a character boundary); returns its size."""
    rng = random.Random(seed)
    blocks = []
    for _ in range(BLOCKS):
        parts, length = [], 0
        while length < BLOCK_BYTES:
            word = rng.choice(WIDE_WORDS) if rng.random() < 0.01 else rng.choice(WORDS)
            piece = word + ("\n" if rng.random() < 0.1 else " ")
            parts.append(piece)
            length += len(piece.encode("utf-8"))
        blocks.append("".join(parts).encode("utf-8"))
    written = 0
    with path.open("wb") as handle:
        while written < size:
            block = blocks[(written // BLOCK_BYTES) % BLOCKS]
            if len(block) > size - written:  # the last block: cut it, but never inside a character
                block = block[: size - written].decode("utf-8", errors="ignore").encode("utf-8")
            handle.write(block)
            written += len(block)
            if not block:
                break
    return written


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the measured tasks, each run in its own process ---------------------------------------------


def child_train(text: Path, out_dir: Path) -> dict:
    import char_lm.train as train_module
    from char_lm.config import CharLMConfig
    from char_lm.model import CharLM
    from recurrent.config import load_config

    timings = {"imported_s": time.perf_counter() - STARTED}
    load_corpus, forward = train_module.load_corpus, CharLM.forward

    def timed_load_corpus(*args, **kwargs):
        start = time.perf_counter()
        corpus = load_corpus(*args, **kwargs)
        timings["load_corpus_s"] = time.perf_counter() - start
        timings["chars"] = corpus.chars
        timings["vocab"] = len(corpus.vocab)
        timings["dtype"] = str(corpus.train_ids.dtype)
        return corpus

    def timed_forward(self, *args, **kwargs):  # the first call is the first training step's
        timings.setdefault("first_step_starts_s", time.perf_counter() - STARTED)
        return forward(self, *args, **kwargs)

    train_module.load_corpus = timed_load_corpus
    CharLM.forward = timed_forward
    cfg = load_config(
        CharLMConfig,
        REPO / "configs/char_lm/shakespeare.yaml",
        [f"data.path={text}", "train.max_steps=1", "train.eval_every=1", "train.eval_batches=1",
         "train.device=cpu"],
    )  # fmt: skip
    summary = train_module.train(cfg, out_dir)
    return {
        **timings,
        "steps": summary["steps"],
        "returned_s": time.perf_counter() - STARTED,
        "peak_rss": peak_rss_bytes(),
    }


def child_evaluate(text: Path, checkpoint: Path) -> dict:
    from char_lm.data import encode_file
    from char_lm.generate import load_char_lm
    from char_lm.scoring import evaluate_text

    imported = time.perf_counter() - STARTED
    model, vocab, _ = load_char_lm(checkpoint)
    start = time.perf_counter()
    ids = encode_file(text, vocab, what=f"text {text}")
    encode_s = time.perf_counter() - start
    loss, count = evaluate_text(model, ids, 256, max_windows=1)
    return {
        "imported_s": imported,
        "encode_s": encode_s,
        "chars": len(ids),
        "dtype": str(ids.dtype),
        "first_window_s": time.perf_counter() - STARTED,
        "loss": loss,
        "predicted": count,
        "peak_rss": peak_rss_bytes(),
    }


def child_load(text: Path, way: str) -> dict:
    from char_lm.config import DataConfig
    from char_lm.data import build_vocab, encode, load_corpus, read_text, split_ids

    start = time.perf_counter()
    if way == "old":  # the previous version's train.py: a str, then int64 ids
        whole = read_text(text)
        ids = encode(whole, build_vocab(whole))
        train_ids, _ = split_ids(ids, 0.1)
    else:
        train_ids = load_corpus(DataConfig(path=str(text), val_fraction=0.1)).train_ids
    return {
        "load_s": time.perf_counter() - start,
        "dtype": str(train_ids.dtype),
        "peak_rss": peak_rss_bytes(),
    }


def child_idle() -> dict:
    import torch  # noqa: F401  the baseline every child pays: Python and torch

    from char_lm import data, scoring, train  # noqa: F401

    return {"peak_rss": peak_rss_bytes()}


# --- the parent ----------------------------------------------------------------------------------


def run_child(*args: str) -> dict:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{result.stdout}\n{result.stderr}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["wall_s"] = time.perf_counter() - start
    return report


def gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.0, help="size of the text (10^9 B)")
    parser.add_argument("--baseline-mb", type=int, default=64, help="old vs new on this many MB")
    parser.add_argument("--dir", default=None, help="folder for the text (default: the temp dir)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        task, *rest = args.child
        report = {
            "train": lambda: child_train(Path(rest[0]), Path(rest[1])),
            "evaluate": lambda: child_evaluate(Path(rest[0]), Path(rest[1])),
            "load": lambda: child_load(Path(rest[0]), rest[1]),
            "idle": child_idle,
        }[task]()
        print(json.dumps(report))
        return

    from bench.recurrent_core import machine

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start")
    folder = Path(tempfile.mkdtemp(prefix="crnn-huge-text-", dir=args.dir))
    try:
        text = folder / "huge.txt"
        start = time.perf_counter()
        size = write_text(text, int(args.gigabytes * 1e9))
        os.sync()  # flushed to disk before anything is timed (it stays in the page cache)
        print(f"text: {text} ({size:,} bytes) written in {time.perf_counter() - start:.1f} s")

        idle = run_child("idle")
        print(
            f"\nPython + torch + char_lm imported, nothing loaded: peak RSS {gb(idle['peak_rss'])}"
        )

        trained = run_child("train", str(text), str(folder / "run"))
        print(
            f"\ntrain (shakespeare config, 1 step): {trained['chars']:,} characters, vocabulary "
            f"{trained['vocab']}, ids {trained['dtype']}\n"
            f"  Python, torch and char_lm imported {trained['imported_s']:7.1f} s\n"
            f"  load_corpus (2 chunked passes)     {trained['load_corpus_s']:7.1f} s\n"
            f"  process start -> first step starts {trained['first_step_starts_s']:7.1f} s"
            f"  (target < 60)\n"
            f"  process start -> train() returned  {trained['returned_s']:7.1f} s"
            f"  (+ 1 val window, 2 checkpoints)\n"
            f"  peak RSS                           {gb(trained['peak_rss']):>9}  (target < 2.5 GB)"
        )

        scored = run_child("evaluate", str(text), str(folder / "run" / "best.pt"))
        print(
            f"\nevaluate (encode_file + the first 256-character window): ids {scored['dtype']}\n"
            f"  Python, torch and char_lm imported {scored['imported_s']:7.1f} s\n"
            f"  encode_file (scan + encode pass)   {scored['encode_s']:7.1f} s\n"
            f"  process start -> first window done {scored['first_window_s']:7.1f} s  (target < 60)\n"
            f"  peak RSS                           {gb(scored['peak_rss']):>9}  (target < 2.5 GB)"
        )

        if args.baseline_mb > 0:
            small = folder / "small.txt"
            small_size = write_text(small, args.baseline_mb * 1_000_000)
            old = run_child("load", str(small), "old")
            new = run_child("load", str(small), "new")
            mb = small_size / 1e6
            old_rise, new_rise = (r["peak_rss"] - idle["peak_rss"] for r in (old, new))
            print(
                f"\nloading {mb:.0f} MB, side by side (peak RSS above the idle process):\n"
                f"  previous version (str + int64)   {old['load_s']:6.1f} s  "
                f"{old_rise / 1e6:7.0f} MB = {old_rise / small_size:4.1f} bytes per byte of text\n"
                f"  load_corpus ({new['dtype']})          {new['load_s']:6.1f} s  "
                f"{new_rise / 1e6:7.0f} MB = {new_rise / small_size:4.1f} bytes per byte of text\n"
                f"  ratio old / new                  {old['load_s'] / new['load_s']:6.1f}x "
                f"{old_rise / new_rise:7.1f}x"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; {folder} deleted")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from recurrent.errors import run_cli

    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
