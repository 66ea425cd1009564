"""Feature cache against recomputing the CNN: per-epoch time of the real trainer, in one run.

    python bench/feature_cache.py --threads 1                         # the issue's set-up
    python bench/feature_cache.py --threads 1 --config configs/captioner/flickr8k.yaml --size 256 \
        --num-images 100 --set model.weights=null --set data.image_root=  # Flickr8k's model

Trains a config with a *frozen* encoder (`model.finetune=frozen`, `data.cache_images=false`, no
time budget, no early stopping) four ways on the same synthetic scenes, one after the other in
this process, and times every epoch:

- ``uncached k=4``: the image path, B images x 4 references per step (`train.captions_per_image`);
- ``cached k=4``: the same with `train.feature_cache` (a fresh cache: epoch 1 encodes every train
  and val image, then trains);
- ``tutorials k=0``: the way the popular tutorials train, one (image, caption) pair per item, the
  CNN recomputed for every pair, 4B pairs per step (the same captions per step as k=4);
- ``cached k=0``: the same pairs from the cache.

How epochs are timed: the real `captioner.train.train`, validating after every epoch
(`train.eval_every=0`). The bench wraps `evaluate_split`, `save_checkpoint`, `FeatureCache.ensure`
and `FeatureCollate.__call__` to timestamp them. An epoch's *training* time runs from the end of
the previous epoch's validation and checkpoints (for epoch 1: the call of `train`, so it includes
loading the annotations, building the model and filling the cache) to the start of its
validation; its *total* adds its validation (beam search over ``--eval-images`` val images; the
uncached runs encode them every time, the cached runs read them) and checkpoints. "reads" is the
time the cached runs spent gathering features (`FeatureCollate`), "decoder" the rest of a cached
epoch: what no data path can remove.

Random augmentation is off in the uncached runs (their train transform is the eval transform, as
the cache's), so a cached and an uncached run of one k train on the same batches and give the same
losses up to the float16 rounding of the cached features; the bench prints the largest difference.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import captioner.train as train_module  # noqa: E402
from bench.recurrent_core import machine  # noqa: E402
from captioner.config import CaptionerConfig  # noqa: E402
from captioner.features import FeatureCache, FeatureCollate  # noqa: E402
from captioner.scenes import generate_dataset  # noqa: E402
from recurrent.config import load_config  # noqa: E402

VARIANTS = {  # name: (feature cache, captions_per_image, batch size in units of --images-per-step)
    "uncached k=4": (False, 4, 1),
    "cached k=4": (True, 4, 1),
    "tutorials k=0": (False, 0, 4),
    "cached k=0": (True, 0, 4),
}


class Clock:
    """Timestamps of the trainer's validations, checkpoints, cache fills and feature reads."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pauses: list[list[float]] = []  # [validation start, end of its checkpoints]
        self.fill_s = 0.0
        self.reads: list[float] = []  # (time, seconds) of each feature read
        self.read_times: list[float] = []

    def install(self) -> None:
        real_evaluate = train_module.evaluate_split
        real_save = train_module.save_checkpoint
        real_ensure = FeatureCache.ensure
        real_collate = FeatureCollate.__call__

        def timed_evaluate(*args, **kwargs):
            self.pauses.append([time.perf_counter(), 0.0])
            result = real_evaluate(*args, **kwargs)
            self.pauses[-1][1] = time.perf_counter()
            return result

        def timed_save(*args, **kwargs):
            result = real_save(*args, **kwargs)
            self.pauses[-1][1] = time.perf_counter()
            return result

        def timed_ensure(cache, *args, **kwargs):
            start = time.perf_counter()
            result = real_ensure(cache, *args, **kwargs)
            self.fill_s += time.perf_counter() - start
            return result

        def timed_collate(collate, batch):
            start = time.perf_counter()
            result = real_collate(collate, batch)
            self.reads.append(start)
            self.read_times.append(time.perf_counter() - start)
            return result

        train_module.evaluate_split = timed_evaluate
        train_module.save_checkpoint = timed_save
        FeatureCache.ensure = timed_ensure
        FeatureCollate.__call__ = timed_collate

    def epochs(self, started: float) -> list[dict[str, float]]:
        result = []
        begin = started
        for pause_start, pause_end in self.pauses:
            reads = sum(
                seconds
                for at, seconds in zip(self.reads, self.read_times, strict=True)
                if begin <= at < pause_start
            )
            result.append(
                {"train": pause_start - begin, "total": pause_end - begin, "reads": reads}
            )
            begin = pause_end
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/captioner/scenes_demo.yaml")
    parser.add_argument("--num-images", type=int, default=1000, help="scenes (80%% train)")
    parser.add_argument("--size", type=int, default=96, help="scene images' side in pixels")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images-per-step", type=int, default=16, help="B (k=0: 4B pairs)")
    parser.add_argument("--eval-images", type=int, default=50, help="val images decoded per epoch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out-dir", default="runs/bench/feature_cache")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run only these")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    out_dir = Path(args.out_dir)
    scenes_dir = out_dir / f"scenes-{args.num_images}-{args.size}"
    annotations = scenes_dir / "dataset_scenes.json"
    if not annotations.is_file():
        generate_dataset(scenes_dir, args.num_images, seed=0, size=args.size)
    real_build = train_module.build_transforms
    # augmentation off: the uncached runs see the cache's (eval) preprocessing
    train_module.build_transforms = lambda size, train, **kw: real_build(size, train=False, **kw)
    clock = Clock()
    clock.install()

    print(f"machine: {machine()}; config {args.config} {' '.join(args.set)}")
    print(
        f"data: {args.num_images} scenes of {args.size} px (80% train), {args.epochs} epochs, "
        f"{args.eval_images} val images decoded per epoch"
    )
    results = {}
    for name, (cache, per_image, batch_units) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        run_dir = out_dir / name.replace(" ", "_").replace("=", "")
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh cache and run every time
        overrides = [
            f"data.annotations={annotations}",
            *args.set,
            "data.cache_images=false",
            "model.finetune=frozen",
            f"train.feature_cache={str(cache).lower()}",
            "train.feature_cache_dir=",
            f"train.captions_per_image={per_image}",
            f"train.batch_size={args.images_per_step * batch_units}",
            f"train.epochs={args.epochs}",
            "train.max_steps=0",
            "train.time_budget_s=0",
            "train.patience=0",
            "train.eval_every=0",
            f"train.eval_max_images={args.eval_images}",
        ]
        cfg = load_config(CaptionerConfig, args.config, overrides)
        clock.reset()
        started = time.perf_counter()
        summary = train_module.train(cfg, run_dir, progress=False, log=lambda line: None)
        epochs = clock.epochs(started)
        results[name] = {"epochs": epochs, "losses": summary["losses"]}
        print(
            f"\n{name}: {summary['steps']} steps of {cfg.train.batch_size} "
            f"{'images' if per_image else 'pairs'}, cache fill {clock.fill_s:.1f} s "
            f"({summary['encoded_images']} images), final loss {summary['final_loss']:.4f}",
            flush=True,
        )
        for number, epoch in enumerate(epochs, start=1):
            reads = f" | reads {epoch['reads']:5.2f} s" if cache else ""
            print(
                f"  epoch {number}: training {epoch['train']:7.1f} s | with validation and "
                f"checkpoints {epoch['total']:7.1f} s{reads}",
                flush=True,
            )

    print()
    for cached, reference in (
        ("cached k=4", "uncached k=4"),
        ("cached k=4", "tutorials k=0"),
        ("cached k=0", "tutorials k=0"),
    ):
        if cached not in results or reference not in results:
            continue
        for part in ("train", "total"):
            ratios = [
                old[part] / new[part]
                for old, new in zip(
                    results[reference]["epochs"], results[cached]["epochs"], strict=True
                )
            ]
            text = " ".join(f"{ratio:5.1f}x" for ratio in ratios)
            what = "training" if part == "train" else "with validation"
            print(f"{reference:>13s} / {cached}, per epoch, {what:15s}: {text}")
    for cached, reference in (("cached k=4", "uncached k=4"), ("cached k=0", "tutorials k=0")):
        if cached in results and reference in results:
            a = torch.tensor(results[cached]["losses"])
            b = torch.tensor(results[reference]["losses"])
            print(
                f"{cached} vs {reference}: {len(a)} and {len(b)} steps, largest loss "
                f"difference {(a - b).abs().max().item():.2e} (float16 features)"
            )


if __name__ == "__main__":
    main()
