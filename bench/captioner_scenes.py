"""Train the scenes demo captioner on CPU for M minutes and report speed and caption quality.

    python bench/captioner_scenes.py --minutes 15
    python bench/captioner_scenes.py --minutes 15 --preset hard --num-images 8000  # the hard set

Generates a synthetic scenes set (train / val / test, from one seed; ``--preset hard`` for the
hard benchmark, trained with configs/captioner/scenes_hard.yaml unless --config says otherwise),
trains configs/captioner/scenes_<preset>.yaml within the time budget (the cosine schedule follows
the budget), then on the test images, never seen in training, reports: corpus BLEU-1..4 with beam
3 (nltk, 0-100, lowercase Treebank tokens), CIDEr-D, and METEOR and ROUGE-L (with pycocoevalcap;
METEOR needs Java), the share of captions with a word twice in a row, the share of captions that
name every object's size, colour and shape correctly (counts included) and no other object (the
generator knows the truth), the share that equal one of the references exactly, training
images/s, and caption latency per image (one image at a time, beam 3) and per image in batches of
32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.demo_export import export_demo_model  # noqa: E402
from bench.recurrent_core import machine  # noqa: E402
from captioner.config import BOUNDS, CaptionerConfig, check_config  # noqa: E402
from captioner.data import load_image, load_records, select_split  # noqa: E402
from captioner.inference import caption_images, load_captioner  # noqa: E402
from captioner.metrics import repeat_share  # noqa: E402
from captioner.scenes import caption_names_objects_correctly, generate_dataset  # noqa: E402
from captioner.scoring import evaluate_split  # noqa: E402
from captioner.train import train  # noqa: E402
from recurrent.config import load_config  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    parser.add_argument("--num-images", type=int, default=4000, help="scenes to generate")
    parser.add_argument("--size", type=int, default=96, help="scene images' side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="scenes generator seed")
    parser.add_argument(
        "--preset", default="demo", choices=("demo", "hard"), help="captioner.scenes --preset"
    )
    parser.add_argument("--config", help="default: configs/captioner/scenes_<preset>.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out-dir", default="runs/bench/captioner_scenes")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument(
        "--export", help="also write a serving copy of the best checkpoint here (a demo model)"
    )
    args = parser.parse_args(argv)
    args.config = args.config or f"configs/captioner/scenes_{args.preset}.yaml"

    out_dir = Path(args.out_dir)
    preset = "" if args.preset == "demo" else f"{args.preset}-"
    scenes_dir = out_dir / f"scenes-{preset}{args.num_images}-{args.size}-{args.seed}"
    annotations = scenes_dir / "dataset_scenes.json"
    run_dir = out_dir / "run"
    overrides = [
        f"data.annotations={annotations}",
        "data.image_root=",
        f"train.time_budget_s={args.minutes * 60}",
        "train.epochs=1000",  # the time budget ends the run
        "train.patience=0",
        *args.set,
    ]
    cfg = load_config(CaptionerConfig, args.config, overrides, bounds=BOUNDS)
    check_config(cfg)  # a mistake in --set is said before minutes of drawing scenes, not after
    if not annotations.is_file():
        generate_dataset(
            scenes_dir, args.num_images, seed=args.seed, size=args.size, preset=args.preset
        )
    print(f"machine: {machine()}")
    summary = train(cfg, run_dir, overwrite=True)

    captioner = load_captioner(summary["best_checkpoint"])
    records = load_records("karpathy", annotations, None)
    test = select_split(records, "test")
    scores, predictions = evaluate_split(captioner, test, beam_size=args.beam_size)
    captions = [p["caption"] for p in predictions]
    correct = sum(
        caption_names_objects_correctly(c, r.meta) for c, r in zip(captions, test, strict=True)
    )
    exact = sum(c in r.captions for c, r in zip(captions, test, strict=True))

    images = [load_image(r.image_path) for r in test[:64]]
    caption_images(captioner, images[:2], beam_size=args.beam_size)  # warm-up
    single = []
    for image in images:
        start = time.perf_counter()
        caption_images(captioner, [image], beam_size=args.beam_size)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    caption_images(captioner, images, beam_size=args.beam_size, batch_size=32)
    batched = (time.perf_counter() - start) / len(images)

    print()
    print(f"config: {args.config} {' '.join('--set ' + o for o in args.set)}".strip())
    print(
        f"data: {args.num_images} scenes of {args.size} px (seed {args.seed}): "
        f"{len(select_split(records, 'train'))} train, {len(test)} test"
    )
    print(
        f"training: {summary['steps']} steps, {summary['epochs']:.1f} epochs in "
        f"{summary['elapsed_s']:.0f} s; {summary['images_per_s']:.1f} images/s; "
        f"best val BLEU-4 {summary['best_bleu4']:.1f} at step {summary['best_step']}"
    )
    bleu = ", ".join(
        f"{name} {scores[name]:.1f}" for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
    )
    print(f"test (beam {args.beam_size}, {len(test)} unseen images): {bleu}")
    others = ", ".join(
        f"{name} {scores[name]:.1f}" for name in ("CIDEr-D", "METEOR", "ROUGE-L") if name in scores
    )
    print(f"  {others}; captions with a word twice in a row: {repeat_share(captions):.1%}")
    print(f"captions naming every object's size, colour and shape: {correct / len(test):.1%}")
    print(f"captions equal to a reference: {exact / len(test):.1%}")
    print(
        f"latency: {statistics.median(single) * 1e3:.1f} ms per image alone (median of {len(single)}), "
        f"{batched * 1e3:.1f} ms per image in batches of 32; torch threads {torch.get_num_threads()}"
    )
    for prediction, record in list(zip(predictions, test, strict=True))[:5]:
        print(
            f"  {Path(record.image_path).name}: {prediction['caption']!r}  (ref: {record.captions[0]!r})"
        )

    if args.export:
        export_demo_model(summary["best_checkpoint"], args.export)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a config key, a file): one line, exit status 2
