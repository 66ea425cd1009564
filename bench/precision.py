"""fp32 against bf16 training throughput on this machine, measured side by side in one run.

    python bench/precision.py [--repeats 5]

Times full training steps (forward, backward, AdamW) of the real models, interleaving the
variants so that load on the machine hits them alike, and prints each one's best time per step
and its ratio to fp32:
- the char LM at hidden 512 (2 layers, 64 streams x 128 characters): the fused cell (oneDNN's
  kernel, run on bf16 copies of the float32 weights) and the explicit backend (every per-step
  matrix product in bf16);
- the scenes captioner of configs/captioner/scenes_demo.yaml (ResNet-18 to layer3 at 96 px, 16
  images x 4 references, soft-attention LSTM 256);
- that captioner's CNN trunk alone in both memory layouts, NCHW against the channels-last (NHWC)
  layout the encoder uses: a training step of the 16 images (forward, backward) and the forward of
  32 images without gradients (captioning), in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from captioner.config import CaptionerConfig  # noqa: E402
from captioner.model import CaptionModel  # noqa: E402
from char_lm.config import ModelConfig  # noqa: E402
from char_lm.model import CharLM  # noqa: E402
from recurrent.config import load_config  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def char_case(backend: str, bf16: bool):
    torch.manual_seed(0)
    model = CharLM(ModelConfig(hidden_size=512, num_layers=2, backend=backend), 65)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.randint(0, 65, (64, 128)), torch.randint(0, 65, (64, 128))

    def step() -> None:
        with autocast(bf16):
            _, loss, _ = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, 64 * 128, "chars"


def captioner_case(bf16: bool):
    cfg = load_config(CaptionerConfig, ROOT / "configs/captioner/scenes_demo.yaml")
    torch.manual_seed(0)
    model = CaptionModel(cfg, 60)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images = torch.randn(16, 3, 96, 96)
    captions = torch.randint(3, 60, (64, 16))
    lengths = torch.full((64,), 16)

    def step() -> None:
        with autocast(bf16):
            _, loss = model(images, captions, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, 16, "images"


def trunk_case(bf16: bool, channels_last: bool, training: bool):
    cfg = load_config(CaptionerConfig, ROOT / "configs/captioner/scenes_demo.yaml")
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    trunk = CaptionModel(cfg, 60).encoder.body.to(memory_format=layout).train(training)
    images = torch.randn(16 if training else 32, 3, 96, 96).contiguous(memory_format=layout)

    def step() -> None:
        with autocast(bf16), torch.set_grad_enabled(training):
            loss = trunk(images).float().square().mean()
        if training:
            loss.backward()

    return step, images.size(0), "images"


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    groups = {
        "char LM, hidden 512": {
            "fused fp32": char_case("fused", False),
            "fused bf16": char_case("fused", True),
            "explicit fp32": char_case("explicit", False),
            "explicit bf16": char_case("explicit", True),
        },
        "scenes captioner": {"fp32": captioner_case(False), "bf16": captioner_case(True)},
    }
    for training, what in ((True, "training step"), (False, "forward, no gradients")):
        groups[f"scenes CNN trunk, {what}"] = {
            f"{layout} {precision}": trunk_case(precision == "bf16", layout == "NHWC", training)
            for precision in ("fp32", "bf16")
            for layout in ("NCHW", "NHWC")
        }
    print(f"machine: {machine()}")
    for title, cases in groups.items():
        times = {name: [] for name in cases}
        for step, _, _ in cases.values():
            step()  # warm-up
        for _ in range(args.repeats):
            for name, (step, _, _) in cases.items():
                started = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - started)
        base = min(next(iter(times.values())))
        print(f"{title}:")
        for name, (_, items, unit) in cases.items():
            best = min(times[name])
            print(
                f"  {name:28s} {best * 1000:7.0f} ms/step  {items / best:9.0f} {unit}/s  "
                f"{base / best:4.2f}x"
            )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
