"""Reading a training image, before and after: Pillow and PIL geometry against decode_jpeg and
tensor geometry, measured side by side in one run.

    python bench/image_loading.py [--images 300] [--repeats 4]

What one DataLoader worker does per item of `CaptionPairs` (decode the file, upright RGB, the
train transform: RandomResizedCrop to 224 px, flip, to float, normalise), three ways, interleaved,
on one thread:

- **before** (until 2026-12-05): `load_image` (Pillow), the crop and resize on the PIL image,
  then the conversion to a tensor;
- **Pillow, tensor geometry**: `load_image`, converted to a uint8 tensor first, the crop and resize
  by torchvision on the tensor (what `build_transforms` does now);
- **now**: `load_image_tensor` (what the data sets call: a clean JPEG decoded by
  `torchvision.io.decode_jpeg`, anything else by Pillow), then `build_transforms`.

On COCO-sized JPEGs (640 x 480, photo-like, quality 90, ~90 KB) and on the synthetic scenes'
96 px PNGs (the demo configs' images, which Pillow decodes in every way).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from captioner import scenes  # noqa: E402
from captioner.data import build_transforms, load_image, load_image_tensor  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402

WORDS = [f"w{i}" for i in range(2000)]


def write_jpegs(
    folder: Path, count: int, size: tuple[int, int] = (640, 480), words: Sequence[str] = WORDS
) -> Path:
    """``count`` photo-like JPEGs of ``size`` (smooth colour fields with grain, quality 90, ~90 KB
    at 640 x 480) in ``folder``/images, and a Karpathy split file for them (90% train, 10% val)
    with five captions of 10-18 ``words`` each; returns the split file's path."""
    rng = np.random.default_rng(0)
    width, height = size
    entries = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
        pixels = pixels + rng.integers(-12, 13, pixels.shape, dtype=np.int16)
        name = f"{index:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
            folder / "images" / name, quality=90
        )
        sentences = [{"raw": " ".join(rng.choice(words, rng.integers(10, 19)))} for _ in range(5)]
        split = "val" if index % 10 == 9 else "train"
        entries.append({"filepath": "images", "filename": name, "split": split,
                        "sentences": sentences})  # fmt: skip
    annotations = folder / "dataset_jpegs.json"
    annotations.write_text(json.dumps({"images": entries}))
    return annotations


def ways(size: int) -> dict[str, Callable[[Path], torch.Tensor]]:
    transform = build_transforms(size, train=True, hflip=True, arch="resnet101")
    to_image, *geometry, to_dtype, normalize = transform.transforms
    before = v2.Compose([*geometry, to_image, to_dtype, normalize])  # Pillow crops and resizes
    return {
        "before: Pillow, PIL geometry": lambda path: before(load_image(path)),
        "Pillow, tensor geometry": lambda path: transform(load_image(path)),
        "now: load_image_tensor": lambda path: transform(load_image_tensor(path)),
    }


def measure(title: str, files: list[Path], size: int, repeats: int) -> None:
    cases = ways(size)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for read in cases.values():
        read(files[0])  # warm-up
    for _ in range(repeats):
        for name, read in cases.items():
            started = time.perf_counter()
            for path in files:
                read(path)
            rates[name].append(len(files) / (time.perf_counter() - started))
    base = statistics.median(next(iter(rates.values())))
    print(f"{title} ({len(files)} files, {size} px crops), median of {repeats}:")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:32s} {median:6.0f} images/s  {median / base:4.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one DataLoader worker's share
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp) / "jpegs", args.images)
        jpegs = sorted((Path(tmp) / "jpegs" / "images").glob("*.jpg"))
        measure("JPEG, 640 x 480", jpegs, 224, args.repeats)
        scenes.generate_dataset(Path(tmp) / "scenes", num_images=args.images, seed=0, size=96)
        pngs = sorted((Path(tmp) / "scenes" / "images").glob("*.png"))
        measure("PNG scenes, 96 x 96", pngs, 96, args.repeats)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
