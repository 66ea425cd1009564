"""The issue's GPU figures in one run, for the day the device tool lends a GPU.

    python bench/gpu.py --json gpu.json      # on a CUDA machine (scripts/gpu_session.sh runs it)
    python bench/gpu.py --device cpu --quick # the script itself, small, on any machine (a test)

Each section is measured side by side in this one run, and stands alone: one that fails prints
one line saying why, and the next one runs. What it measures:

1. **captioner training** at 224 px with `configs/captioner/coco.yaml`'s model (soft-attention
   LSTM 512, layer4 fine-tuned, 96 images a step, captions of 10-18 words, a 10,000-word
   vocabulary) on ResNet-50 and ResNet-101 (random weights: nothing is downloaded), fp32 against
   bf16 autocast: images/s of full training steps (forward, backward, AdamW on the trainer's
   parameter groups) on a batch already on the device, and the peak memory they allocate; and
   ResNet-101 with the top-down decoder (`model.top_down`) in bf16, whose step costs 1.41x soft
   attention's on the 2-core CPU (docs/benchmarks.md);
2. **char LM**, 2 x LSTM 512 (`configs/char_lm/shakespeare.yaml`'s model), fp32 against bf16:
   characters/s of full training steps, 64 and 256 streams of 128 characters;
3. **does the GPU wait for the data loader?** JPEGs of COCO's usual size (640 x 480) through the
   trainer's own data path (`CaptionPairs`, `build_transforms`, `collate_pairs`, pinned memory,
   persistent workers, prefetch): images/s of the loader alone with 0 to 12 workers, against
   section 1's training images/s; then `captioner.train.train` itself on those JPEGs (bf16,
   ResNet-101, coco.yaml's 12 workers), whose images/s shows what a real run gets;
4. **JPEG decoding**: Pillow (`load_image`, what the loader uses) against
   `torchvision.io.decode_jpeg` on the CPU, and batched on the GPU.

`--quick` shrinks every section (ResNet-18 at 64 px, a few images and steps) to check the script
on a CPU in seconds; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from char_lm.config import CharLMConfig  # noqa: E402
from char_lm.model import CharLM  # noqa: E402
from recurrent.config import load_config  # noqa: E402
from recurrent.engine import build_optimizer, parameter_groups, read_metrics  # noqa: E402
from recurrent.errors import RunStopped, loader_workers  # noqa: E402
from recurrent.precision import Precision  # noqa: E402

if TYPE_CHECKING:
    from captioner.config import CaptionerConfig

# The captioner's modules are imported by the sections that use them: they need nltk (the
# tokenizer), which the lent GPU machine lacks unless its wheel travels along, and without it the
# char LM section still runs.

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "configs/captioner/coco.yaml"
VOCAB = 10_000  # COCO's vocabulary at min_word_count 5 is about this size


class Setup:
    """The sizes of one run: the real ones, or --quick's."""

    def __init__(self, device: torch.device, quick: bool) -> None:
        self.device = device
        self.archs = ["resnet18"] if quick else ["resnet50", "resnet101"]
        self.image_size = 64 if quick else 224
        self.batch = 4 if quick else 96
        self.warmup, self.steps = (1, 2) if quick else (3, 10)
        self.char_streams = [4] if quick else [64, 256]
        self.char_window = 16 if quick else 128
        self.jpegs = 16 if quick else 1536
        self.jpeg_size = (96, 64) if quick else (640, 480)
        self.workers = [0, 2] if quick else [0, 4, 8, 12]
        self.loader_batches = 3 if quick else 12
        self.train_steps = 2 if quick else 40

    def precisions(self) -> list[str]:
        cuda = self.device.type == "cuda"
        return (
            ["fp32", "bf16"]
            if not cuda or torch.cuda.is_bf16_supported(including_emulation=False)
            else ["fp32"]
        )

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def captioner_config(self, arch: str, *overrides: str) -> CaptionerConfig:
        from captioner.config import CaptionerConfig

        return load_config(
            CaptionerConfig,
            COCO,
            [
                f"model.encoder={arch}",
                "model.weights=null",
                f"data.image_size={self.image_size}",
                f"train.batch_size={self.batch}",
                *overrides,
            ],
        )


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    inputs: tuple[torch.Tensor, ...],
) -> Callable[[], None]:
    """One full training step on ``inputs`` (both models return the loss second)."""

    def step() -> None:
        with precision.autocast():
            loss = model(*inputs)[1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(setup: Setup, step: Callable[[], None]) -> tuple[float, int | None]:
    """Seconds per step after a warm-up, and the peak bytes allocated on a GPU (None on a CPU)."""
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(setup.warmup):
        step()
    setup.sync()
    started = time.perf_counter()
    for _ in range(setup.steps):
        step()
    setup.sync()
    seconds = (time.perf_counter() - started) / setup.steps
    return seconds, torch.cuda.max_memory_allocated() if cuda else None


def captioner_training(setup: Setup) -> list[dict[str, Any]]:
    from captioner.model import CaptionModel
    from captioner.train import parameter_parts

    rows = []
    # each encoder in every precision, then the largest one's top-down decoder in the last
    variants = [(arch, (), setup.precisions()) for arch in setup.archs]
    variants.append((setup.archs[-1], ("model.top_down=true",), setup.precisions()[-1:]))
    for arch, overrides, precisions in variants:
        cfg = setup.captioner_config(arch, *overrides)
        decoder = ", top-down attention" if overrides else ""
        for name in precisions:
            torch.manual_seed(0)
            model = CaptionModel(cfg, VOCAB).to(setup.device).train()
            optimizer = build_optimizer(
                parameter_groups(parameter_parts(model, cfg), cfg.train.weight_decay), cfg.train
            )
            precision = Precision.choose(name, setup.device)
            size = setup.image_size
            images = torch.randn(setup.batch, 3, size, size, device=setup.device)
            lengths = torch.randint(12, 21, (setup.batch,), device=setup.device)  # 10-18 words
            captions = torch.randint(4, VOCAB, (setup.batch, 20), device=setup.device)
            step = training_step(model, optimizer, precision, (images, captions, lengths))
            seconds, peak = timed(setup, step)
            rows.append(
                {
                    "section": "captioner training",
                    "model": f"{arch} at {size} px, batch {setup.batch}{decoder}",
                    "precision": name,
                    "images_per_s": setup.batch / seconds,
                    "peak_gib": peak / 2**30 if peak is not None else None,
                }
            )
            print_row(rows[-1])
            del model, optimizer
    return rows


def char_lm_training(setup: Setup) -> list[dict[str, Any]]:
    cfg = load_config(CharLMConfig, ROOT / "configs/char_lm/shakespeare.yaml")
    rows = []
    for streams in setup.char_streams:
        for name in setup.precisions():
            torch.manual_seed(0)
            model = CharLM(cfg.model, 65).to(setup.device).train()
            optimizer = build_optimizer(
                parameter_groups([("model", model, cfg.train.lr)], cfg.train.weight_decay),
                cfg.train,
            )
            precision = Precision.choose(name, setup.device)
            shape = (streams, setup.char_window)
            x = torch.randint(0, 65, shape, device=setup.device)
            y = torch.randint(0, 65, shape, device=setup.device)
            seconds, peak = timed(setup, training_step(model, optimizer, precision, (x, y)))
            rows.append(
                {
                    "section": "char LM training",
                    "model": f"2 x LSTM 512, {streams} x {setup.char_window} characters",
                    "precision": name,
                    "chars_per_s": streams * setup.char_window / seconds,
                    "peak_gib": peak / 2**30 if peak is not None else None,
                }
            )
            print_row(rows[-1])
    return rows


def data_path(setup: Setup, training: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    from bench.image_loading import write_jpegs
    from captioner.data import Vocabulary, load_karpathy
    from captioner.data.datasets import CaptionPairs, collate_pairs
    from captioner.data.transforms import build_transforms
    from captioner.train import train

    annotations = write_jpegs(folder, setup.jpegs, setup.jpeg_size)
    records = [r for r in load_karpathy(annotations) if r.split == "train"]
    vocab = Vocabulary.build(caption for r in records for caption in r.captions)
    arch = setup.archs[-1]
    transform = build_transforms(setup.image_size, train=True, hflip=True, arch=arch)
    pairs = CaptionPairs(records, vocab, transform, max_length=22)
    rows = []
    for workers in setup.workers:
        loader = DataLoader(
            pairs,
            batch_size=setup.batch,
            shuffle=True,
            collate_fn=collate_pairs,
            pin_memory=setup.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            drop_last=True,
            **loader_workers(workers),  # as training starts them
        )
        batches = iter(loader)
        next(batches)  # the workers start
        started, images = time.perf_counter(), 0
        for _ in range(setup.loader_batches):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            images += batch[0].size(0)
        rows.append(
            {
                "section": "data loader alone",
                "model": f"{setup.jpeg_size[0]} x {setup.jpeg_size[1]} JPEGs -> {arch}'s "
                f"{setup.image_size} px crops",
                "precision": f"{workers} workers",
                "images_per_s": images / (time.perf_counter() - started),
            }
        )
        print_row(rows[-1])
        del batches, loader
    for row in training:
        if row["model"].startswith(arch):
            print(f"  training alone, {row['precision']}: {row['images_per_s']:.0f} images/s")
    cfg = setup.captioner_config(
        arch,
        f"data.annotations={annotations}",
        "data.image_root=",
        "data.min_word_count=1",
        f"train.max_steps={setup.train_steps}",
        "train.time_budget_s=0",
        "train.eval_every=0",
        "train.eval_max_images=8",
        f"train.log_every={max(1, setup.train_steps // 8)}",
        "train.checkpoint_every_s=0",
        f"train.device={setup.device.type}",
        "train.precision=bf16",
        f"data.num_workers={max(setup.workers)}",
    )
    summary = train(cfg, folder / "run", overwrite=True, quiet=True)
    # the logged windows' throughput after the first (the workers' start and the prefetch fill
    # are in the first; the final validation and checkpoint writes in none): a steady state
    logged = read_metrics(folder / "run" / "metrics.jsonl")
    windows = [r["throughput"] for r in logged if r.get("kind") == "train" and "throughput" in r]
    rows.append(
        {
            "section": "captioner.train.train on the JPEGs",
            "model": f"{arch} at {setup.image_size} px, batch {setup.batch}, "
            f"{max(setup.workers)} workers, {setup.train_steps} steps",
            "precision": "bf16",
            "images_per_s": statistics.median(windows[1:] or windows),
            "images_per_s_whole_run": summary["images_per_s"],
        }
    )
    print_row(rows[-1])
    return rows


def jpeg_decoding(setup: Setup, folder: Path) -> list[dict[str, Any]]:
    from captioner.data.images import load_image

    files = sorted((folder / "images").glob("*.jpg"))
    encoded = [torchvision.io.read_file(str(path)) for path in files]
    ways: dict[str, Callable[[], None]] = {
        "Pillow (load_image)": lambda: [load_image(path) for path in files],
        "decode_jpeg, CPU": lambda: [torchvision.io.decode_jpeg(data) for data in encoded],
    }
    if setup.device.type == "cuda":
        ways["decode_jpeg, GPU, batched"] = lambda: torchvision.io.decode_jpeg(
            encoded, device=setup.device
        )
    rows = []
    for name, way in ways.items():
        way()  # warm-up (the GPU decoder's start)
        setup.sync()
        started = time.perf_counter()
        way()
        setup.sync()
        rows.append(
            {
                "section": "JPEG decoding",
                "model": f"{len(files)} JPEGs of {setup.jpeg_size[0]} x {setup.jpeg_size[1]}",
                "precision": name,
                "images_per_s": len(files) / (time.perf_counter() - started),
            }
        )
        print_row(rows[-1])
    return rows


def print_row(row: dict[str, Any]) -> None:
    figures = ", ".join(
        f"{value:.2f} {key.removesuffix('_gib')} GiB" if key.endswith("_gib") else
        f"{value:.0f} {key.replace('_per_s', '/s')}"
        for key, value in row.items()
        if isinstance(value, float)
    )  # fmt: skip
    print(f"  {row['section']}: {row['model']}, {row['precision']}: {figures}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script")
    parser.add_argument("--json", type=Path, help="also write the rows here, after each section")
    args = parser.parse_args(argv)
    setup = Setup(torch.device(args.device), args.quick)
    gpu = torch.cuda.get_device_name() if setup.device.type == "cuda" else "no GPU"
    print(f"machine: {machine()}; {gpu}; torchvision {torchvision.__version__}", flush=True)
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    report = {"machine": machine(), "gpu": gpu, "torch": torch.__version__, "rows": rows}
    report["tf32"] = {  # what "fp32" means on the GPU
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    report["failed"] = failed
    with tempfile.TemporaryDirectory() as tmp:
        sections = {
            "captioner training": lambda: captioner_training(setup),
            "char LM training": lambda: char_lm_training(setup),
            "data path": lambda: data_path(setup, rows, Path(tmp)),
            "JPEG decoding": lambda: jpeg_decoding(setup, Path(tmp)),
        }
        for title, section in sections.items():
            print(f"{title}:", flush=True)
            started = time.perf_counter()
            try:
                rows.extend(section())
            except RunStopped:  # a SIGTERM (the session's time limit) stops the whole run
                raise
            except Exception as err:  # noqa: BLE001 - the other sections still run
                where = traceback.extract_tb(err.__traceback__)[-1]
                said = f"{type(err).__name__}: {err} ({where.filename}:{where.lineno})"
                failed.append({"section": title, "error": said})
                print(f"  FAILED: {said}")
            print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
            if args.json:
                args.json.write_text(json.dumps(report, indent=1))
            if setup.device.type == "cuda":
                with contextlib.suppress(RuntimeError):
                    torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
