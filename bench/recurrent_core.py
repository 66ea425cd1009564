"""Forward + backward time of the core's two backends against a bare torch.nn module.

    python bench/recurrent_core.py [--batch 32 --steps 128 --input 256 --hidden 512 --layers 2]

For each cell (rnn, lstm, gru) it times the same work through raw `torch.nn.RNN/LSTM/GRU`, the
core's `fused` backend and its `explicit` backend, with the three runs interleaved round by round
so that machine noise hits them alike, and prints the median time per iteration and the ratios to
raw torch.nn. Target: fused adds at most 5% over raw torch.nn.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recurrent.core import CELLS, RecurrentCore  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402

TORCH_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def fwd_bwd(module: nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    out = module(x)[0]
    out.sum().backward()


def time_once(module: nn.Module, x: torch.Tensor, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fwd_bwd(module, x)
    return (time.perf_counter() - start) / iters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32, help="sequences per batch")
    parser.add_argument("--steps", type=int, default=128, help="time steps per sequence")
    parser.add_argument("--input", type=int, default=256, help="input features per step")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size")
    parser.add_argument("--layers", type=int, default=2, help="stacked layers")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--iters", type=int, default=3, help="iterations per round")
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    args = parser.parse_args(argv)

    print(f"machine: {machine()}")
    print(
        f"size: batch {args.batch}, steps {args.steps}, input {args.input}, hidden {args.hidden}, "
        f"layers {args.layers}, float32, forward + backward"
    )
    print(
        f"{'cell':<5} {'torch.nn ms':>12} {'fused ms':>10} {'explicit ms':>12} {'fused/raw':>10} {'explicit/raw':>13}"
    )
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.input)
    for cell in args.cells:
        raw = TORCH_MODULES[cell](args.input, args.hidden, num_layers=args.layers, batch_first=True)
        fused = RecurrentCore(cell, args.input, args.hidden, args.layers, backend="fused")
        explicit = RecurrentCore(cell, args.input, args.hidden, args.layers, backend="explicit")
        fused.rnn.load_state_dict(raw.state_dict())
        explicit.rnn.load_state_dict(raw.state_dict())
        modules = {"raw": raw, "fused": fused, "explicit": explicit}
        for module in modules.values():  # warm-up
            fwd_bwd(module, x)
        times: dict[str, list[float]] = {name: [] for name in modules}
        for _ in range(args.rounds):
            for name, module in modules.items():
                times[name].append(time_once(module, x, args.iters))
        med = {name: statistics.median(values) for name, values in times.items()}
        print(
            f"{cell:<5} {med['raw'] * 1e3:>12.1f} {med['fused'] * 1e3:>10.1f} {med['explicit'] * 1e3:>12.1f}"
            f" {med['fused'] / med['raw']:>10.3f} {med['explicit'] / med['raw']:>13.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
