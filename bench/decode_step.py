"""One decoding step of the recurrent core on the CPU: oneDNN's fused kernel against the equations.

    python bench/decode_step.py [--calls 200]

Sampling a character and each beam-search step run the core for one time step without gradients.
For that call the fused backend's LSTM runs the written-out equations up to
`recurrent.core.EQUATIONS_MAX_ROWS` rows in fp32, because oneDNN's kernel has a large fixed cost per
call, and at every size under bf16 autocast, where the equations give a row the same bits whatever
the batch. This prints, measured side by side in one run:
- milliseconds per one-step call of a 2 x 512 LSTM and GRU (input 128) at batch 1, 15 (3 images x
  beam 5) and 256, in fp32 and bf16 autocast: oneDNN's kernel (`torch.nn`) against the equations;
- with gradients (the attention captioner's teacher-forced training, self-critical sampling), where
  the fused LSTM runs the equations at every size: milliseconds for 15 one-step calls, forward and
  backward, of a 1 x 256 LSTM (input 384, the scenes captioner's cell) at 16 to 1024 rows;
- the bundled models end to end, in fp32 and bf16: characters/s sampled by
  models/shakespeare_char.pt (500 characters after "ROMEO:") and milliseconds per image captioned
  by models/scenes_captioner.pt (beam 3, one image at a time, median of 40 scenes, and in a batch
  of 32).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from captioner.inference import caption_images, load_captioner  # noqa: E402
from captioner.scenes import render_random_scene  # noqa: E402
from char_lm.generate import generate, load_char_lm  # noqa: E402
from recurrent.core import RecurrentCore  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402
from recurrent.precision import Precision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def per_call_ms(call: Callable[[], object], calls: int) -> float:
    for _ in range(5):
        call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1000


def kernel_step(
    core: RecurrentCore, x: torch.Tensor, state: torch.Tensor, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of oneDNN's kernel as the core runs it for longer sequences: under bf16 on bf16
    copies of the weights."""
    low = torch.bfloat16 if bf16 else torch.float32
    weights = core._low_precision_weights(low) if bf16 else None
    return core._run_fused(x.to(low), state.to(low), None, weights)


def step_times(core: RecurrentCore, batch: int, bf16: bool, calls: int) -> tuple[float, float]:
    """ms per one-step call without gradients: oneDNN's kernel and the written-out equations."""
    x = torch.randn(batch, 1, 128)
    state = core.init_state(batch, x)
    with torch.no_grad(), autocast(bf16):
        kernel = per_call_ms(lambda: kernel_step(core, x, state, bf16), calls)
        equations = per_call_ms(lambda: core._forward_explicit(x, state, None), calls)
    return kernel, equations


def core_steps(calls: int) -> None:
    print("one step of a 2 x 512 core, ms per call: oneDNN kernel / equations")
    for cell in ("lstm", "gru"):
        torch.manual_seed(0)
        core = RecurrentCore(cell, 128, 512, num_layers=2).eval()
        for batch in (1, 15, 256):
            for bf16 in (False, True):
                kernel, equations = step_times(core, batch, bf16, calls)
                print(
                    f"  {cell} batch {batch:3d} {'bf16' if bf16 else 'fp32'}: "
                    f"{kernel:6.3f} / {equations:6.3f} ms  ({kernel / equations:4.1f}x)"
                )


def grad_step_times(
    core: RecurrentCore, rows: int, bf16: bool, repeats: int
) -> tuple[float, float]:
    """Best ms for 15 one-step calls and the backward through them: oneDNN's kernel and the
    written-out equations."""
    x = torch.randn(rows, 15, core.input_size, requires_grad=True)

    def kernel(step_x: torch.Tensor, state: torch.Tensor):
        return kernel_step(core, step_x, state, bf16)

    def equations(step_x: torch.Tensor, state: torch.Tensor):
        return core._forward_explicit(step_x, state, None)

    def run(one_step: Callable) -> None:
        with autocast(bf16):
            state, outputs = core.init_state(rows, x), []
            for t in range(x.size(1)):
                output, state = one_step(x[:, t : t + 1], state)
                outputs.append(output)
            loss = torch.cat(outputs, dim=1).float().square().sum()
        loss.backward()

    cases = {"kernel": kernel, "equations": equations}
    for one_step in cases.values():
        run(one_step)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, one_step in cases.items():
            started = time.perf_counter()
            run(one_step)
            times[name].append(time.perf_counter() - started)
    return min(times["kernel"]) * 1000, min(times["equations"]) * 1000


def training_steps(repeats: int) -> None:
    print("15 one-step calls with gradients, forward + backward, 1 x 256 LSTM, input 384, ms:")
    print("  oneDNN kernel / equations")
    torch.manual_seed(0)
    core = RecurrentCore("lstm", 384, 256)
    for rows in (16, 64, 256, 1024):
        for bf16 in (False, True):
            kernel, equations = grad_step_times(core, rows, bf16, repeats)
            print(
                f"  {rows:4d} rows {'bf16' if bf16 else 'fp32'}: {kernel:7.1f} / "
                f"{equations:7.1f} ms  ({kernel / equations:4.2f}x)"
            )


def bundled_models() -> None:
    model, vocab, _ = load_char_lm(ROOT / "models" / "shakespeare_char.pt")
    captioner = load_captioner(ROOT / "models" / "scenes_captioner.pt")
    images = [render_random_scene(seed)[0] for seed in range(40)]
    print("bundled models:")
    for name in ("fp32", "bf16"):
        precision = Precision.choose(name, CPU)
        generator = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        text = generate(model, vocab, "ROMEO:", 500, generator=generator, precision=precision)
        chars_per_s = len("".join(text)) / (time.perf_counter() - started)
        captioner.cfg.train.precision = name
        caption_images(captioner, images[:2])  # warm-up
        alone = []
        for image in images:
            started = time.perf_counter()
            caption_images(captioner, [image])
            alone.append(time.perf_counter() - started)
        started = time.perf_counter()
        caption_images(captioner, images[:32], batch_size=32)
        batched = (time.perf_counter() - started) / 32
        print(
            f"  {name}: sampling {chars_per_s:6.0f} chars/s; captioning "
            f"{statistics.median(alone) * 1000:5.1f} ms per image alone, "
            f"{batched * 1000:4.1f} ms per image in a batch of 32"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs with gradients")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    core_steps(args.calls)
    training_steps(args.repeats)
    bundled_models()


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
