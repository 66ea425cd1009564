"""COCO at full size on the data path, with synthetic data of COCO's real sizes (no CNN runs).

    python bench/coco_scale.py --out /tmp/coco_scale        # ~15 min, ~4 GB of disk while it runs

What it builds, in ``--out``:

- a Karpathy split file of COCO's size: 123,287 images (82,783 train, 30,504 restval, 5,000 val,
  5,000 test) and 616,767 captions (five per image, six for 332), of 8-18 words drawn from a
  Zipf-distributed 25,000-word vocabulary; 88% end with a period, 8% have a comma, 3% a possessive
  "'s", and the first word is capitalised. The same captions as COCO's own caption files
  (captions_train2014.json, captions_val2014.json). Every image is an empty file (the loaders check
  that images exist, the cache keys them by path, size and modification time);
- ResNet-101 features at 224 px: a 7x7 grid of 2048 channels plus the pooled vector, float16, i.e.
  50 x 2048 x 2 = 204,800 bytes an image, written straight into the cache format:
  - for all 123,287 images, as *sparse* shards (the files' data are holes: no disk space, no
    writes), to time indexing and the start of a run, which read no feature data;
  - for the first ``--data-images`` train images, as real shards with random values, and for the
    same images in the old one-file-per-image format (``torch.save`` of {"pooled", "grid",
    "grid_hw"} per image, read with ``torch.load`` per item) to measure how fast each format feeds
    training, from the page cache ("warm") and from disk ("cold": the files' pages are dropped
    with ``posix_fadvise(DONTNEED)`` before each measurement).

What it measures: the annotation loaders (Karpathy and COCO formats), the vocabulary, the
tokenizer before and after (nltk's Treebank tokenizer against `tokenize`, on a sample, extrapolated),
the time to index the cache and start `captioner.train.train` (up to its first training step), the
memory held by the training data set, and images/s fed through a DataLoader with 0, 2 and 4
workers (batches of 64 images, 5 references each, random order, as training draws them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from nltk.tokenize import TreebankWordTokenizer
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import captioner.data.vocab as vocab_module  # noqa: E402
from bench.recurrent_core import machine  # noqa: E402
from captioner.config import CaptionerConfig  # noqa: E402
from captioner.data import Vocabulary, load_coco, load_karpathy, select_split  # noqa: E402
from captioner.data.datasets import encode_caption, pick_references  # noqa: E402
from captioner.decoder import CaptionDecoder  # noqa: E402
from captioner.encoder import ImageEncoder, ImageFeatures  # noqa: E402
from captioner.features import (  # noqa: E402
    SHARD_BYTES,
    FeatureCache,
    FeatureCollate,
    FeatureGroups,
    write_shard,
)
from captioner.inference import eval_transform  # noqa: E402
from captioner.train import SeededItems, epoch_batches, train  # noqa: E402
from recurrent.config import load_config  # noqa: E402
from recurrent.errors import loader_workers, run_cli  # noqa: E402

SPLITS = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}  # Karpathy's COCO
NUM_CAPTIONS = 616_767
GRID, CHANNELS = 7, 2048  # ResNet-101 at 224 px
ROW_SHAPE = (1 + GRID * GRID, CHANNELS)
ROW_BYTES = ROW_SHAPE[0] * ROW_SHAPE[1] * 2
BATCH_IMAGES, CAPTIONS_PER_IMAGE = 64, 5


class FirstStep(Exception):
    """Raised at the first training step: what is measured is the time to get there."""


def timed(what: str, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    print(f"  {what}: {time.perf_counter() - start:.2f} s", flush=True)
    return result


# --------------------------------------------------------------------------------------------
# Synthetic annotations


def synthetic_captions(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(list(letters), rng.integers(2, 10))) for _ in range(30_000)})
    words = words[:25_000]
    weights = 1.0 / np.arange(1, len(words) + 1)
    lengths = rng.integers(8, 19, count)
    draws = rng.choice(len(words), size=int(lengths.sum()), p=weights / weights.sum())
    kinds = rng.random((count, 4))
    captions, position = [], 0
    for index, length in enumerate(lengths):
        caption = [words[i] for i in draws[position : position + length]]
        position += length
        if kinds[index, 1] < 0.08:
            caption[length // 2] += ","
        if kinds[index, 2] < 0.03:
            caption[1] += "'s"
        text = " ".join(caption)
        text = text[0].upper() + text[1:] + ("." if kinds[index, 0] < 0.88 else "")
        captions.append(text)
    return captions


def write_annotations(out: Path, seed: int, scale: float) -> tuple[Path, list[Path]]:
    """dataset_coco.json, captions_{train,val}2014.json and empty image files under out/images."""
    splits = {split: max(1, round(size * scale)) for split, size in SPLITS.items()}
    num_images = sum(splits.values())
    extra = min(num_images, round((NUM_CAPTIONS - 5 * sum(SPLITS.values())) * scale))
    captions = synthetic_captions(5 * num_images + extra, seed)
    counts = [5] * num_images
    for index in random.Random(seed).sample(range(num_images), extra):
        counts[index] += 1
    images, coco = [], {"train2014": ([], []), "val2014": ([], [])}
    position, image_id = 0, 0
    for split, size in splits.items():
        folder = "train2014" if split == "train" else "val2014"
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        for _ in range(size):
            name = f"COCO_{folder}_{image_id:012d}.jpg"
            own = captions[position : position + counts[image_id]]
            position += counts[image_id]
            sentences = [
                {"tokens": text.lower().rstrip(".").split(), "raw": text, "imgid": image_id}
                for text in own
            ]
            images.append(
                {
                    "filepath": folder,
                    "filename": name,
                    "imgid": image_id,
                    "split": split,
                    "sentences": sentences,
                    "cocoid": image_id,
                }
            )
            coco[folder][0].append({"id": image_id, "file_name": name})
            coco[folder][1].extend({"image_id": image_id, "caption": text} for text in own)
            (out / "images" / folder / name).touch()
            image_id += 1
    karpathy = out / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    coco_files = []
    for folder, (entries, notes) in coco.items():
        path = out / f"captions_{folder}.json"
        path.write_text(json.dumps({"images": entries, "annotations": notes}), "utf-8")
        coco_files.append(path)
    return karpathy, coco_files


# --------------------------------------------------------------------------------------------
# Cache formats


def write_sparse_shards(cache: FeatureCache, records) -> None:
    """Full-size shards in the cache format whose data are holes: keys and shapes only."""
    per_shard = max(1, SHARD_BYTES // ROW_BYTES)
    cache.shard_dir.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(records), per_shard)):
        chunk = records[start : start + per_shard]
        name = f"sparse-{number:05d}"
        rows = np.lib.format.open_memmap(
            cache.shard_dir / f"{name}.npy",
            mode="w+",
            dtype=np.float16,
            shape=(len(chunk), *ROW_SHAPE),
        )
        del rows  # numpy sizes the file with a seek: its data stay holes
        index = {
            "keys": [cache.key(r) for r in chunk],
            "grid_hw": [GRID, GRID],
            "shape": [len(chunk), *ROW_SHAPE],
        }
        (cache.shard_dir / f"{name}.json").write_text(json.dumps(index), encoding="utf-8")


def write_real_shards(cache: FeatureCache, records) -> float:
    """Real shards of random float16 rows through `write_shard`; returns seconds spent writing."""
    per_shard = max(1, SHARD_BYTES // ROW_BYTES)
    block = torch.randn(per_shard, *ROW_SHAPE, generator=torch.Generator().manual_seed(0))
    block = block.half().numpy()
    seconds = 0.0
    for start in range(0, len(records), per_shard):
        chunk = records[start : start + per_shard]
        began = time.perf_counter()
        write_shard(
            cache.shard_dir, [cache.key(r) for r in chunk], block[: len(chunk)], (GRID, GRID)
        )
        seconds += time.perf_counter() - began
    return seconds


def old_path(root: Path, key: str) -> Path:
    return root / key[:2] / f"{key}.pt"


def write_old_files(root: Path, cache: FeatureCache, records) -> float:
    """The previous format: one torch.save per image ({"pooled", "grid", "grid_hw"})."""
    row = torch.randn(*ROW_SHAPE, generator=torch.Generator().manual_seed(0)).half()
    seconds = 0.0
    for record in records:
        path = old_path(root, cache.key(record))
        path.parent.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        payload = {"pooled": row[0].clone(), "grid": row[1:].clone(), "grid_hw": [GRID, GRID]}
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        seconds += time.perf_counter() - began
    return seconds


class OldFeatureGroups(Dataset):
    """The old read path at its best: one torch.load per image (the old FeaturePairs without
    preloading), with the same caption handling as `FeatureGroups`."""

    def __init__(self, paths: list[Path], groups: FeatureGroups) -> None:
        self.paths = [str(path) for path in paths]
        self.captions = groups.captions
        self.k = groups.captions_per_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        payload = torch.load(self.paths[index], map_location="cpu", weights_only=True)
        picks = pick_references(self.captions.count(index), self.k)
        return payload, [self.captions.caption(index, p) for p in picks]


def collate_old(batch):
    pooled = torch.stack([payload["pooled"] for payload, _ in batch])
    grid = torch.stack([payload["grid"] for payload, _ in batch])
    captions = [caption for _, group in batch for caption in group]
    padded = torch.nn.utils.rnn.pad_sequence(captions, batch_first=True)
    lengths = torch.tensor([len(c) for c in captions])
    return ImageFeatures(pooled, grid, (GRID, GRID)), padded, lengths


def drop_from_page_cache(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(paths) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(16 << 20):
                pass


def feed_rate(dataset, collate, num_items: int, batches: int, workers: int, epoch: int) -> float:
    """Images/s through a DataLoader as training draws them (random batches of 64 images)."""
    order = torch.Generator().manual_seed(epoch)
    keys = [[(epoch, i) for i in b] for b in epoch_batches(num_items, BATCH_IMAGES, order)][
        :batches
    ]
    loader = DataLoader(
        dataset,
        batch_sampler=keys,
        collate_fn=collate,
        generator=torch.Generator(),
        **loader_workers(workers),  # as training starts them
    )
    start = time.perf_counter()
    images = 0
    for features, _, _ in loader:
        images += features.grid.size(0)
    return images / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/coco_scale", help="working folder")
    parser.add_argument("--data-images", type=int, default=8192, help="images with real data")
    parser.add_argument("--batches", type=int, default=60, help="batches of 64 per measurement")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2, 4])
    parser.add_argument("--repeats", type=int, default=3, help="measurements per cell (median)")
    parser.add_argument("--keep", action="store_true", help="keep the real feature data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO (smoke tests)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # 4 on 2 cores
    torch.set_num_threads(args.threads)  # the loaders' work is single-threaded copies
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {machine()} (shared with other jobs); disk: {shutil.disk_usage(out).free / 1e9:.0f} GB free"
    )

    # ---- annotations
    karpathy = out / "dataset_coco.json"
    coco_files = [out / "captions_train2014.json", out / "captions_val2014.json"]
    if not karpathy.is_file():
        print("writing the synthetic annotations and 123,287 empty image files ...", flush=True)
        karpathy, coco_files = write_annotations(out, args.seed, args.scale)
    records = timed("load_karpathy (Karpathy split JSON)", load_karpathy, karpathy, out / "images")
    timed(
        "load_coco (captions_train2014.json + captions_val2014.json)",
        load_coco,
        coco_files,
        out / "images",
    )
    train_records = select_split(records, "train")
    val_records = select_split(records, "val")
    print(
        f"  {karpathy.stat().st_size / 1e6:.0f} MB Karpathy JSON: {len(records):,} images, "
        f"{sum(len(r.captions) for r in records):,} captions"
    )
    train_captions = [c for r in train_records for c in r.captions]
    slow: list[str] = []
    real_treebank = vocab_module._TREEBANK.tokenize
    vocab_module._TREEBANK.tokenize = lambda text: slow.append(text) or real_treebank(text)
    vocab = timed(
        f"Vocabulary.build over {len(train_captions):,} train captions (min count 5)",
        Vocabulary.build,
        train_captions,
        5,
    )
    vocab_module._TREEBANK.tokenize = real_treebank
    sample = train_captions[:5000]
    seconds = {}
    for name, function in (
        ("before", lambda text: TreebankWordTokenizer().tokenize(text.lower())),
        ("now", vocab_module.tokenize),
    ):
        start = time.perf_counter()
        for text in sample:
            function(text)
        seconds[name] = (time.perf_counter() - start) / len(sample) * len(train_captions)
    print(
        f"  {len(vocab):,} words; {len(slow) / len(train_captions) * 100:.1f}% of captions left "
        f"the fast path; tokenizing all train captions once: nltk's Treebank tokenizer "
        f"{seconds['before']:.0f} s, now {seconds['now']:.1f} s (from {len(sample)} captions)"
    )

    # ---- the cache's index and the start of a run, at full size (sparse shards)
    weights = out / "resnet101_random.pth"
    if not weights.is_file():
        torch.save(torchvision.models.resnet101(weights=None).state_dict(), weights)
    overrides = [
        f"data.annotations={karpathy}",
        f"data.image_root={out / 'images'}",
        "data.image_size=224",
        "data.num_workers=0",
        f"model.weights={weights}",
        "model.finetune=frozen",
        "train.feature_cache=true",
        f"train.feature_cache_dir={out / 'features_sparse'}",
        f"train.captions_per_image={CAPTIONS_PER_IMAGE}",
        f"train.batch_size={BATCH_IMAGES}",
        "train.max_steps=1",
        "train.eval_max_images=1",
        "train.device=cpu",
        "decode.beam_size=1",
    ]
    cfg = load_config(CaptionerConfig, "configs/captioner/coco.yaml", overrides)
    transform = eval_transform(cfg)
    encoder = ImageEncoder(cfg.model).eval()
    everything = [*train_records, *val_records]
    print(
        f"\ncache index at full size: {len(everything):,} train + val images, ResNet-101 7x7x2048 float16"
    )
    cache = FeatureCache(out / "features_sparse", encoder, cfg, transform)
    if cache.missing(everything):
        write_sparse_shards(cache, everything)
    num_shards = len(list(cache.shard_dir.glob("*.json")))
    full_bytes = len(everything) * ROW_BYTES
    print(
        f"  size on disk at full size: {full_bytes / 1e9:.1f} GB of features in {num_shards} shards "
        f"(+ {sum(p.stat().st_size for p in cache.shard_dir.glob('*.json')) / 1e6:.1f} MB of index; "
        "the shards here are sparse)"
    )
    cache = timed(
        "FeatureCache(): fingerprint of ResNet-101 + read the shard indexes",
        FeatureCache,
        out / "features_sparse",
        encoder,
        cfg,
        transform,
    )
    missing = timed(
        f"missing() over {len(everything):,} images (one stat each)", cache.missing, everything
    )
    assert not missing
    store = timed("store(train)", cache.store, train_records)
    groups = timed(
        "FeatureGroups(train, k=5) (encodes every caption)",
        FeatureGroups,
        train_records,
        vocab,
        store,
        CAPTIONS_PER_IMAGE,
        max_length=52,
    )
    del groups, store
    tracemalloc.start()  # once more, traced: what the data set keeps once built
    store = cache.store(train_records)
    groups = FeatureGroups(train_records, vocab, store, CAPTIONS_PER_IMAGE, max_length=52)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"  memory held by the data set: {held / 1e6:.0f} MB (peak while building "
        f"{peak / 1e6:.0f} MB): captions {groups.captions.nbytes / 1e6:.0f} MB as int32 + "
        f"offsets, shard locations {store.locations.nbytes / 1e6:.1f} MB; preloaded: "
        f"{store.preloaded} (a DataLoader worker shares it: no Python object per caption)"
    )
    del groups, store
    tracemalloc.start()  # what the old FeaturePairs kept: Python lists of pairs and of ids
    old_pairs, old_ids = [], []
    for record_index, record in enumerate(train_records):
        for caption_index, caption in enumerate(record.captions):
            old_pairs.append((record_index, caption_index))
            old_ids.append(encode_caption(vocab, caption, 52))
    old_held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"  the old data set's lists of pairs and caption ids: {old_held / 1e6:.0f} MB")
    del old_pairs, old_ids
    real_forward = CaptionDecoder.forward

    def stop_at_first_step(self, *args, **kwargs):
        if self.training:
            raise FirstStep(time.perf_counter())
        return real_forward(self, *args, **kwargs)

    CaptionDecoder.forward = stop_at_first_step
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    encoded: list[int] = []
    real_ensure = FeatureCache.ensure
    FeatureCache.ensure = lambda *a, **k: encoded.append(real_ensure(*a, **k)) or encoded[-1]
    start = time.perf_counter()
    try:
        train(cfg, run_dir, quiet=True)
    except FirstStep as reached:
        print(
            f"  captioner.train.train until its first training step: {reached.args[0] - start:.1f}"
            f" s (encoded {sum(encoded)} images; loads the annotations, builds the vocabulary and "
            "ResNet-101, fingerprints it, indexes the cache, builds the data set and its first "
            "batch)"
        )
    finally:
        CaptionDecoder.forward = real_forward
        FeatureCache.ensure = real_ensure

    # ---- feeding rate: real data, new format against the old one
    subset = train_records[: args.data_images]
    print(f"\nfeeding training: the first {len(subset):,} train images with real data")
    real = FeatureCache(out / "features_real", encoder, cfg, transform)
    if real.missing(subset):
        seconds = write_real_shards(real, subset)
        print(
            f"  wrote {len(subset) * ROW_BYTES / 1e9:.2f} GB of shards in {seconds:.1f} s "
            f"({len(subset) * ROW_BYTES / 1e6 / seconds:.0f} MB/s, fsync'ed): the full "
            f"{full_bytes / 1e9:.1f} GB would take {full_bytes / (len(subset) * ROW_BYTES / seconds) / 60:.0f} min "
            "to write, on top of encoding"
        )
    old_root = out / "features_old"
    old_paths = [old_path(old_root, real.key(r)) for r in subset]
    if not all(p.is_file() for p in old_paths):
        seconds = write_old_files(old_root, real, subset)
        print(f"  wrote the old format: {len(subset):,} files in {seconds:.1f} s")
    store = real.store(subset, preload_bytes=0)
    new_set = SeededItems(
        FeatureGroups(subset, vocab, store, CAPTIONS_PER_IMAGE, max_length=52), args.seed
    )
    new_collate = FeatureCollate(store)
    old_set = SeededItems(OldFeatureGroups(old_paths, new_set.dataset), args.seed)
    shard_paths = store.shard_paths
    results: dict[tuple[str, str, int], float] = {}
    epoch = 0
    for state in ("cold", "warm"):
        for workers in args.workers:
            rates: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.repeats):  # the two formats alternate: the machine is shared
                for fmt, dataset, collate, paths in (
                    ("old", old_set, collate_old, old_paths),
                    ("new", new_set, new_collate, shard_paths),
                ):
                    if state == "cold":
                        drop_from_page_cache(paths)
                    else:
                        read_all(paths)
                    epoch += 1  # other batches every time
                    rates[fmt].append(
                        feed_rate(dataset, collate, len(subset), args.batches, workers, epoch)
                    )
            for fmt, values in rates.items():
                results[(state, fmt, workers)] = statistics.median(values)
                runs = " ".join(f"{v:.0f}" for v in values)
                print(f"  {state} {fmt} format, {workers} workers: {runs} images/s", flush=True)
    print("\nimages/s fed to training (batches of 64 images x 5 captions; median of the runs):")
    print(
        "| page cache | workers | old: torch.load per image | new: memory-mapped shards | new / old |"
    )
    print("| --- | --- | --- | --- | --- |")
    for state in ("warm", "cold"):
        for workers in args.workers:
            old, new = results[(state, "old", workers)], results[(state, "new", workers)]
            print(f"| {state} | {workers} | {old:.0f} | {new:.0f} | {new / old:.1f}x |")
    if not args.keep:
        shutil.rmtree(out / "features_real", ignore_errors=True)
        shutil.rmtree(old_root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
