"""k references per image: the decoder's work shared per image against repeated per caption row.

    python bench/shared_references.py [--threads 2] [--repeats 10]

With ``train.captions_per_image`` = k, a training step holds k captions of each image. The
teacher-forced decoder computes the initial state and the attention keys (the grid's projection,
images x positions x channels x attention units) once per image and lets the k caption rows attend
to their image's grid without copies (`CaptionDecoder.forward`; self-critical.pytorch does the
same with its ``seq_per_img``). The usual way, and this project's until 2026-12-05, repeats every
image's features k times first and computes all of it per caption row.

Times one training step of the decoder alone (forward and backward, from cached features of the
encoder's real shapes) both ways, alternating them so that load on the machine hits both alike,
in fp32 and bf16, for two configs:
- configs/captioner/scenes_demo.yaml: ResNet-18 to layer3 at 96 px (a 6x6 grid of 256 channels),
  attention LSTM 256, 16 images x 4 references;
- configs/captioner/flickr8k.yaml's decoder: ResNet-101 at 256 px (an 8x8 grid of 2048 channels),
  attention LSTM 512, 10 images x 5 references (Flickr8k's five).
Prints the mean time per step of each way and their ratio, and the largest difference between the
two ways' losses and gradient elements (the same computation, summed in another order).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from captioner.config import CaptionerConfig  # noqa: E402
from captioner.decoder import CaptionDecoder  # noqa: E402
from captioner.encoder import ImageFeatures  # noqa: E402
from recurrent.config import load_config  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# name: (config, images per step, references per image, grid side, channels, vocabulary, length)
CASES = {
    "scenes demo": ("configs/captioner/scenes_demo.yaml", 16, 4, 6, 256, 60, 14),
    "flickr8k (ResNet-101)": ("configs/captioner/flickr8k.yaml", 10, 5, 8, 2048, 2500, 20),
}


def step(
    decoder: CaptionDecoder,
    features: ImageFeatures,
    captions: torch.Tensor,
    lengths: torch.Tensor,
    bf16: bool,
) -> tuple[float, list[torch.Tensor]]:
    """One training step's forward and backward: -> the loss and the gradients."""
    decoder.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks both ways
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        _, loss = decoder(features, captions, lengths)
    loss.backward()
    return loss.item(), [p.grad for p in decoder.parameters() if p.grad is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps of each way")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    for name, (config, images, k, side, channels, vocab, length) in CASES.items():
        cfg = load_config(CaptionerConfig, ROOT / config)
        torch.manual_seed(0)
        decoder = CaptionDecoder(cfg.model, vocab, channels).train()
        grid = torch.randn(images, side * side, channels).relu()  # a ReLU network's features
        features = ImageFeatures(grid.mean(dim=1), grid, (side, side))
        captions = torch.randint(4, vocab, (images * k, length))
        captions[:, 0] = 1
        lengths = torch.randint(length // 2, length + 1, (images * k,))
        repeated = features.index_select(torch.arange(images).repeat_interleave(k))
        for dtype in ("fp32", "bf16"):
            batch = (captions, lengths, dtype == "bf16")
            times = {"repeated": 0.0, "shared": 0.0}
            for repeat in range(args.repeats + 2):  # the first two warm up
                for way, inputs in (("repeated", repeated), ("shared", features)):
                    start = time.perf_counter()
                    step(decoder, inputs, *batch)
                    if repeat >= 2:
                        times[way] += time.perf_counter() - start
            loss_a, grads_a = step(decoder, repeated, *batch)
            loss_b, grads_b = step(decoder, features, *batch)
            largest = max(a.abs().max().item() for a in grads_a)
            grad_diff = max(
                (a - b).abs().max().item() for a, b in zip(grads_a, grads_b, strict=True)
            )
            per_step = {way: t / args.repeats * 1000 for way, t in times.items()}
            print(
                f"{name:22s} {dtype}: features repeated k times {per_step['repeated']:6.1f} ms, "
                f"shared per image {per_step['shared']:6.1f} ms: "
                f"{per_step['repeated'] / per_step['shared']:.2f}x; loss difference "
                f"{abs(loss_a - loss_b):.1e}, largest gradient difference {grad_diff:.1e} "
                f"(largest gradient {largest:.1e})",
                flush=True,
            )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
