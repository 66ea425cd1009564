"""Feature cache against recomputing the CNN: per-epoch training time, side by side in one run.

    python bench/feature_cache.py --threads 1          # the issue's set-up, ~15 min on 2 cores
    python bench/feature_cache.py --threads 1 --config configs/captioner/flickr8k.yaml --size 256 \
        --num-images 20 --images-per-step 8 --random-weights --set data.image_root=

Trains a config with a *frozen* encoder on synthetic scenes (``data.cache_images=false``, as the
issue measured) four ways with the library's data sets and the trainer's step:

- ``uncached k=4``: `CaptionGroups` + `collate_groups`: B images per step, each encoded once for 4
  of its references (`train.captions_per_image`);
- ``cached k=4``: `FeatureGroups` + `FeatureCollate` over a freshly filled `FeatureCache`;
- ``tutorials k=0``: `CaptionPairs`: one (image, caption) pair per item, the CNN recomputed for every
  pair, 4B pairs per step (the same captions per step as k=4): the way the popular tutorials train;
- ``cached k=0``: `FeaturePairs`, the same pairs from the cache.

How it is timed. A shared 2-core machine changes speed from minute to minute, so the four runs
advance *in lockstep*: one step of each in turn, each timed from fetching its batch (data loading,
image decoding, feature reads) to the end of its optimizer step. An epoch's time is the sum of its
steps; the cached runs' first epoch also counts filling the cache (encoding every train and val
image, as `captioner.train` does before its first step), which advances in the same lockstep, one
`FeatureCache.ensure` of B images per turn. Each run keeps its own RNG state, data
order generator and per-item seeding (`SeededItems`), so a cached and an uncached run of one k
train on the same batches; random augmentation is off (the uncached runs use the eval transform,
as the cache does), so their losses agree up to the float16 rounding of the cached features.
Validation's beam search is left out (the same in all four), but what it reads is not: at the end
of every epoch an uncached run encodes the val images (as its validation would, eval mode, no
gradients) and a cached run reads their features from its cache, and that time is in the epoch.
``--random-weights`` (offline: no pretrained weights) gives the encoder random weights whose BatchNorm statistics are re-estimated on
the bench's train images, as a trained network's are; raw random ResNet-101 activations at layer4
exceed float16's range, which the cache refuses. The step is `captioner.train`'s
(`CaptionModel.forward`: the encoder unless cached, then the decoder over k references per image;
backward, clipping, AdamW) in ``--precision`` (float32 unless told: the cache encodes in it too,
as the trainer's does); the learning rate is constant.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from captioner.config import BOUNDS, CaptionerConfig, check_config  # noqa: E402
from captioner.data import (  # noqa: E402
    CaptionGroups,
    CaptionPairs,
    ImageOnly,
    Vocabulary,
    collate_groups,
    collate_pairs,
    load_image,
    load_records,
    select_split,
)
from captioner.features import (  # noqa: E402
    FeatureCache,
    FeatureCollate,
    FeatureGroups,
    FeaturePairs,
    features_to,
)
from captioner.inference import eval_transform  # noqa: E402
from captioner.model import CaptionModel  # noqa: E402
from captioner.scenes import generate_dataset  # noqa: E402
from captioner.train import SeededItems, epoch_batches, parameter_parts  # noqa: E402
from recurrent.config import load_config  # noqa: E402
from recurrent.engine import parameter_groups  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402
from recurrent.precision import Precision  # noqa: E402

VARIANTS = {  # name: (feature cache, captions_per_image, batch size in units of --images-per-step)
    "uncached k=4": (False, 4, 1),
    "cached k=4": (True, 4, 1),
    "tutorials k=0": (False, 0, 4),
    "cached k=0": (True, 0, 4),
}


@dataclass
class Run:
    """One of the four training runs, advanced one step at a time. A cached run first fills its
    cache, one batch of images per step, then builds its data set with `make_dataset`."""

    name: str
    cached: bool
    model: CaptionModel
    optimizer: torch.optim.Optimizer
    make_dataset: Callable[[], tuple[Any, Any]]  # () -> (SeededItems data set, collate)
    batch_size: int
    order: torch.Generator
    rng: torch.Tensor  # this run's global-generator state (dropout), swapped in for its steps
    precision: Precision = field(default_factory=lambda: Precision("fp32", torch.device("cpu")))
    fill: list[Callable[[], int]] = field(default_factory=list)  # pending cache-fill chunks
    # what the run's validation does before its beam search, once per epoch: encode the val
    # images (uncached) or read their features from the cache
    val_inputs: Callable[[], None] = lambda: None
    dataset: Any = None
    collate: Any = None
    epoch: int = -1
    loader: Any = None
    epoch_s: list[float] = field(default_factory=list)
    fill_s: float = 0.0
    reads_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader = None
        self.epoch_s.append(0.0)
        self.reads_s.append(0.0)

    def step(self) -> bool:
        """One training step (or cache-fill chunk); False when the epoch is over."""
        torch.set_rng_state(self.rng)
        start = time.perf_counter()
        if self.fill:
            self.fill.pop(0)()
            spent = time.perf_counter() - start
            self.epoch_s[-1] += spent
            self.fill_s += spent
            self.rng = torch.get_rng_state()
            return True
        if self.dataset is None:
            self.dataset, self.collate = self.make_dataset()
        if self.loader is None:
            keys = epoch_batches(len(self.dataset), self.batch_size, self.order)
            self.loader = iter(
                DataLoader(
                    self.dataset,
                    batch_sampler=[[(self.epoch, i) for i in batch] for batch in keys],
                    collate_fn=self.collate,
                    generator=torch.Generator(),
                )
            )
        try:
            inputs, captions, lengths = next(self.loader)
        except StopIteration:
            self.val_inputs()
            self.epoch_s[-1] += time.perf_counter() - start
            return False
        fetched = time.perf_counter()
        if self.cached:
            inputs = features_to(inputs, torch.device("cpu"))
        with self.precision.autocast():  # the encoder unless cached, then the decoder
            _, loss = self.model(inputs, captions, lengths)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]], 5.0
        )
        self.optimizer.step()
        self.losses.append(loss.item())
        self.epoch_s[-1] += time.perf_counter() - start
        if self.cached:
            self.reads_s[-1] += fetched - start
        self.rng = torch.get_rng_state()
        return True


def calibrated_weights(arch: str, images: torch.Tensor, path: Path) -> Path:
    """A random torchvision `arch` whose BatchNorm running statistics are averaged over `images`
    (train-mode passes), saved as a state_dict for ``model.weights``."""
    if path.is_file():
        return path
    backbone = torchvision.models.get_model(arch, weights=None)
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the passes
    backbone.train()
    with torch.no_grad():
        for batch in images.split(8):
            backbone(batch)
    torch.save(backbone.state_dict(), path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/captioner/scenes_demo.yaml")
    parser.add_argument("--num-images", type=int, default=1000, help="scenes (80%% train)")
    parser.add_argument("--size", type=int, default=96, help="scene images' side in pixels")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images-per-step", type=int, default=16, help="B (k=0: 4B pairs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16", "auto"], help="train.precision"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random encoder weights with BatchNorm statistics of the train images",
    )
    parser.add_argument("--out-dir", default="runs/bench/feature_cache")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    out_dir = Path(args.out_dir)
    scenes_dir = out_dir / f"scenes-{args.num_images}-{args.size}"
    annotations = scenes_dir / "dataset_scenes.json"
    overrides = [
        f"data.annotations={annotations}",
        f"train.precision={args.precision}",  # --set train.precision=... may say otherwise
        *args.set,
        "model.finetune=frozen",
    ]
    cfg = load_config(CaptionerConfig, args.config, overrides, bounds=BOUNDS)
    check_config(cfg)  # a mistake in --set is said before the scenes are drawn, not after
    if not annotations.is_file():
        generate_dataset(scenes_dir, args.num_images, seed=0, size=args.size)
    records = load_records("karpathy", annotations)
    train_records = select_split(records, "train")
    val_records = select_split(records, "val")
    if args.random_weights:
        images = torch.stack([eval_transform(cfg)(load_image(r.image_path)) for r in train_records])
        weights = out_dir / f"{cfg.model.encoder}-{args.size}-random-bn.pth"
        calibrated_weights(cfg.model.encoder, images[:32], weights)
        cfg = load_config(CaptionerConfig, args.config, [*overrides, f"model.weights={weights}"])
    vocab = Vocabulary.build(
        (c for record in train_records for c in record.captions), cfg.data.min_word_count
    )
    transform = eval_transform(cfg)  # augmentation off: the cache's preprocessing for every run
    precision = Precision.choose(cfg.train.precision, torch.device("cpu"))
    max_ids = cfg.data.max_caption_length + 2
    seed = cfg.train.seed
    print(f"machine: {machine()} (shared with other jobs)")
    print(
        f"config {args.config} {' '.join(args.set)}, frozen encoder; {len(train_records)} train "
        f"images of {args.size} px, {args.epochs} epochs, {precision.name}"
    )

    shutil.rmtree(out_dir / "features", ignore_errors=True)  # every cache starts empty
    runs: list[Run] = []
    for name, (cached, per_image, units) in VARIANTS.items():
        torch.manual_seed(seed)
        model = CaptionModel(cfg, len(vocab), pad_id=vocab.pad_id).train()
        groups = parameter_groups(parameter_parts(model, cfg), cfg.train.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr)
        batch_size = args.images_per_step * units
        fill: list[Callable[[], int]] = []
        if cached:
            cache = FeatureCache(
                out_dir / "features" / name.replace(" ", "_"), model.encoder, cfg, transform
            )
            everything = [*train_records, *val_records]  # what captioner.train encodes
            for start in range(0, len(everything), args.images_per_step):
                chunk = everything[start : start + args.images_per_step]
                fill.append(
                    functools.partial(
                        cache.ensure, chunk, device=torch.device("cpu"), progress=False
                    )
                )

            def val_inputs(cache=cache) -> None:
                for _ in cache.batches(val_records, args.images_per_step):
                    pass

            def make_dataset(cache=cache, per_image=per_image):
                store = cache.store(train_records)
                dataset = (
                    FeatureGroups(train_records, vocab, store, per_image, max_length=max_ids)
                    if per_image
                    else FeaturePairs(train_records, vocab, store, max_length=max_ids)
                )
                return SeededItems(dataset, seed), FeatureCollate(store, vocab.pad_id)
        else:

            @torch.no_grad()
            def val_inputs(model=model) -> None:
                model.encoder.eval()
                loader = DataLoader(ImageOnly(val_records, transform), args.images_per_step)
                for images, _ in loader:
                    with precision.autocast():
                        model.encoder(images)
                model.encoder.train()

            def make_dataset(per_image=per_image):
                dataset = (
                    CaptionGroups(train_records, vocab, transform, per_image, max_length=max_ids)
                    if per_image
                    else CaptionPairs(train_records, vocab, transform, max_length=max_ids)
                )
                return SeededItems(dataset, seed), collate_groups if per_image else collate_pairs

        runs.append(
            Run(
                name,
                cached,
                model,
                optimizer,
                make_dataset,
                batch_size,
                torch.Generator().manual_seed(seed),
                torch.get_rng_state(),
                precision,
                fill,
                val_inputs,
            )
        )

    for epoch in range(args.epochs):
        for run in runs:
            run.start_epoch(epoch)
        active = list(runs)
        while active:  # one step of each run in turn
            active = [run for run in active if run.step()]
        line = " | ".join(f"{run.name} {run.epoch_s[-1]:6.1f} s" for run in runs)
        print(f"epoch {epoch + 1}: {line}", flush=True)

    print()
    by_name = {run.name: run for run in runs}
    for run in runs:
        steps = len(run.losses) // args.epochs
        times = " ".join(f"{t:6.1f}" for t in run.epoch_s)
        reads = ""
        if run.cached and args.epochs > 1:
            share = sum(run.reads_s[1:]) / sum(run.epoch_s[1:])
            reads = f"; reading features: {share * 100:.1f}% of epochs 2+"
        fill = f" (epoch 1: {run.fill_s:.1f} s filling the cache)" if run.cached else ""
        print(f"{run.name:14s} {steps} steps/epoch, epoch times (s): {times}{reads}{fill}")
    print()
    for cached, reference in (
        ("cached k=4", "uncached k=4"),
        ("cached k=4", "tutorials k=0"),
        ("cached k=0", "tutorials k=0"),
    ):
        old, new = by_name[reference].epoch_s, by_name[cached].epoch_s
        ratios = " ".join(f"{a / b:5.1f}x" for a, b in zip(old, new, strict=True))
        print(f"{reference:>13s} / {cached}, per epoch: {ratios}")
    for cached, reference in (("cached k=4", "uncached k=4"), ("cached k=0", "tutorials k=0")):
        a = torch.tensor(by_name[cached].losses)
        b = torch.tensor(by_name[reference].losses)
        print(
            f"{cached} vs {reference}: {len(a)} and {len(b)} steps, largest loss difference "
            f"{(a - b).abs().max().item():.2e}, final losses {a[-1]:.4f} and {b[-1]:.4f}"
        )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a config key, a file): one line, exit status 2
