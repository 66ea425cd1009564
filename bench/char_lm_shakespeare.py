"""Train the shakespeare config on tiny-shakespeare for M minutes and report speed and quality.

    python bench/char_lm_shakespeare.py --minutes 10 --data ../shared/data/tinyshakespeare.txt

Prints, measured in this one run: the CPU's float32 matrix-multiply peak (best of square GEMMs,
before and after training),
training characters/s, achieved GFLOP/s and its share of that peak, the best validation loss in
nats/char and bits/char (the best checkpoint evaluated on the whole validation text, the last 10%
as in nanoGPT's shakespeare_char, with the state carried from the start of the text), and a
300-character sample. FLOPs count the matrix products of forward and backward (3x forward):
per character and layer 2 * G*H * (input + H) with G = 4 (LSTM), 3 (GRU) or 1 (RNN), plus the
head's 2 * H * V; element-wise work is not counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.demo_export import export_demo_model  # noqa: E402
from bench.recurrent_core import machine  # noqa: E402
from char_lm.config import BOUNDS, CharLMConfig, check_config  # noqa: E402
from char_lm.data import build_vocab, encode, load_text, split_ids  # noqa: E402
from char_lm.generate import generate, load_char_lm  # noqa: E402
from char_lm.scoring import evaluate_text  # noqa: E402
from char_lm.train import train  # noqa: E402
from recurrent.config import load_config  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
SHAKESPEARE_TEXT = "../shared/data/tinyshakespeare.txt"  # the shared copy, beside the checkout


def matmul_peak_gflops(sizes: tuple[int, ...] = (1024, 2048), seconds: float = 3.0) -> float:
    """Best float32 GEMM rate over a few square sizes, in GFLOP/s."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        for _ in range(3):
            iters, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 3 / len(sizes) or iters < 2:
                a @ b
                iters += 1
            best = max(best, 2 * n**3 * iters / (time.perf_counter() - start) / 1e9)
    return best


def bare_torch_chars_per_s(cfg: CharLMConfig, vocab_size: int, seconds: float = 30.0) -> float:
    """Characters/s of a bare torch.nn training loop (embedding, nn.LSTM/GRU/RNN, linear, AdamW)
    at the same sizes: what the project's own layers are measured against."""
    model_cfg, data_cfg = cfg.model, cfg.data
    torch.manual_seed(0)
    input_size = vocab_size if model_cfg.input == "onehot" else model_cfg.embed_size
    embed = torch.nn.Embedding(vocab_size, input_size)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[model_cfg.cell](
        input_size, model_cfg.hidden_size, model_cfg.num_layers, batch_first=True
    )
    head = torch.nn.Linear(model_cfg.hidden_size, vocab_size)
    params = [*embed.parameters(), *rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    shape = (data_cfg.batch_size, data_cfg.block_size)
    inputs, targets = torch.randint(vocab_size, shape), torch.randint(vocab_size, shape)

    def step() -> None:
        outputs, _ = rnn(embed(inputs))
        loss = torch.nn.functional.cross_entropy(head(outputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    step()  # warm-up
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * inputs.numel() / (time.perf_counter() - start)


def train_flops_per_char(cfg: CharLMConfig, vocab_size: int) -> float:
    model = cfg.model
    input_size = vocab_size if model.input == "onehot" else model.embed_size
    gates, hidden = GATES[model.cell], model.hidden_size
    forward = 0.0
    for layer in range(model.num_layers):
        layer_input = input_size if layer == 0 else hidden
        forward += 2 * gates * hidden * (layer_input + hidden)
    forward += 2 * hidden * vocab_size
    return 3 * forward


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--data", default=SHAKESPEARE_TEXT, help="tiny-shakespeare text file")
    parser.add_argument("--config", default="configs/char_lm/shakespeare.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out-dir", default="runs/bench/char_lm_shakespeare")
    parser.add_argument(
        "--export", help="also write a serving copy of the best checkpoint here (a demo model)"
    )
    args = parser.parse_args(argv)

    overrides = [
        f"data.path={args.data}",
        "train.max_steps=0",
        f"train.time_budget_s={args.minutes * 60}",
        *args.set,
    ]
    cfg = load_config(CharLMConfig, args.config, overrides, bounds=BOUNDS)
    check_config(cfg)  # a mistake in --set is said before anything is measured
    print(f"machine: {machine()}")
    peak_before = matmul_peak_gflops()
    summary = train(cfg, args.out_dir, overwrite=True)
    bare = bare_torch_chars_per_s(cfg, len(build_vocab(load_text(cfg.data))))
    peak = max(peak_before, matmul_peak_gflops())  # before and after: a busy moment reads low
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s (before training {peak_before:.1f})")

    model, vocab, _ = load_char_lm(summary["best_checkpoint"])
    _, val_ids = split_ids(encode(load_text(cfg.data), vocab), cfg.data.val_fraction)
    start = time.perf_counter()
    val_loss, count = evaluate_text(model, val_ids, cfg.data.block_size)
    eval_s = time.perf_counter() - start
    chars_per_s = summary["chars_per_s"]
    flops_per_char = train_flops_per_char(cfg, len(vocab))
    gflops = chars_per_s * flops_per_char / 1e9
    bare_gflops = bare * flops_per_char / 1e9
    generator = torch.Generator().manual_seed(1)
    sample = "".join(
        generate(model, vocab, "ROMEO:", 300, temperature=0.8, top_k=40, generator=generator)
    )
    print()
    print(f"config: {args.config} {' '.join('--set ' + o for o in args.set)}".strip())
    print(f"training: {summary['steps']} steps in {summary['elapsed_s']:.0f} s")
    print(f"characters/s: {chars_per_s:.0f}")
    print(f"achieved: {gflops:.1f} GFLOP/s = {gflops / peak:.1%} of the measured matmul peak")
    print(
        f"bare torch.nn loop, same sizes: {bare:.0f} characters/s, {bare_gflops:.1f} GFLOP/s = "
        f"{bare_gflops / peak:.1%} of peak; the project's training runs at {chars_per_s / bare:.1%} of it"
    )
    print(
        f"best val loss: {val_loss:.4f} nats/char = {val_loss / torch.log(torch.tensor(2.0)).item():.4f} bpc"
        f" ({count} characters, evaluated in {eval_s:.0f} s)"
    )
    print(f"sample (temperature 0.8, top-k 40, seed 1):\nROMEO:{sample}")
    if args.export:
        export_demo_model(summary["best_checkpoint"], args.export)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a config key, a file): one line, exit status 2
