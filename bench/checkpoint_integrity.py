"""What `load_checkpoint`'s CRC-32 check of every zip member costs, next to torch.load itself.

    python bench/checkpoint_integrity.py [--megabytes 7 100 400] [--rounds 5]

torch.load never checks the CRC-32 that torch.save writes for each zip member, so a flipped byte
in a tensor loads as a silently different weight. `recurrent.checkpoint.load_checkpoint` reads the
file once more through `zipfile.ZipFile.testzip` first. For checkpoints of several sizes (one
float32 tensor per 4 MiB, written with `save_checkpoint` to a temporary folder and deleted after)
this prints the median time of torch.load alone, of the CRC scan alone, and of `load_checkpoint`
(both, plus its checks of the payload), interleaved round by round so that machine noise hits
them alike, and the ratio of `load_checkpoint` to torch.load. The files are read from the page
cache after the first round: the ratio is that of CPU work, not of disk reads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from recurrent.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402


def write_checkpoint(path: Path, megabytes: int) -> None:
    tensors = max(1, megabytes // 4)
    generator = torch.Generator().manual_seed(0)
    model = {
        f"layer{i}.weight": torch.randn(1024, 1024, generator=generator) for i in range(tensors)
    }
    save_checkpoint({"task": "char_lm", "config": {}, "vocab": ["a"], "model": model}, path)


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def crc_scan(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, nargs="+", default=[8, 100, 400])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(
        "| checkpoint MiB | torch.load ms | CRC scan ms | load_checkpoint ms | load_checkpoint / torch.load |"
    )
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for megabytes in args.megabytes:
            path = Path(folder) / f"{megabytes}.pt"
            write_checkpoint(path, megabytes)
            size = path.stat().st_size / 2**20
            times: dict[str, list[float]] = {"torch": [], "crc": [], "ours": []}
            for _ in range(args.rounds):
                load = timed(torch.load, path, map_location="cpu", weights_only=True)
                times["torch"].append(load)
                times["crc"].append(timed(crc_scan, path))
                times["ours"].append(timed(load_checkpoint, path))
            median = {key: statistics.median(values) * 1000 for key, values in times.items()}
            print(
                f"| {size:.0f} | {median['torch']:.1f} | {median['crc']:.1f} | {median['ours']:.1f} "
                f"| {median['ours'] / median['torch']:.2f} |"
            )
            path.unlink()


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
