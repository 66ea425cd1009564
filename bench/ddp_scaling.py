"""Multi-process scaling: the same char LM run in 1 process and in N torchrun processes (gloo).

    python bench/ddp_scaling.py [--processes 2] [--steps 60]

Both runs train the same global batch (64 streams of 128 characters, hidden 512) for the same
steps; with N processes each trains on 64 / N streams and the gradients are averaged. It prints
each run's training characters per second (from its metrics.jsonl, after the first logged
interval) and the ratio. On a machine with as many cores as processes, N processes share the
cores a single process already uses, so expect little or no gain on a CPU: the point of torchrun
is several GPUs or machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(processes: int, steps: int, out_dir: Path, text: Path) -> float:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // processes)
    subprocess.run(
        [
            *launcher, "-m", "char_lm.train", "--config", str(ROOT / "configs/char_lm/tiny.yaml"),
            "--quiet", "--out-dir", str(out_dir), "--set", f"data.path={text}",
            "data.batch_size=64", "data.block_size=128", "model.hidden_size=512",
            "model.embed_size=128", "model.num_layers=2", "model.dropout=0",
            f"train.max_steps={steps}", f"train.eval_every={steps}", "train.log_every=10",
            "train.eval_batches=1",
        ],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["throughput"] for r in lines if r["kind"] == "train"][1:]  # skip the warm-up
    return sum(rates) / len(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        words = ("the quick brown fox jumps over the lazy dog and runs away " * 40_000)[:2_000_000]
        text.write_text(words)
        single = run(1, args.steps, Path(tmp) / "one", text)
        multi = run(args.processes, args.steps, Path(tmp) / "many", text)
    print(f"machine: {machine()}")
    print(f"1 process:  {single:9.0f} chars/s")
    print(f"{args.processes} processes: {multi:9.0f} chars/s  ({multi / single:.2f}x)")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
