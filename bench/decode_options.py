"""Each decoding option's effect on a split's scores, with one trained captioner.

    python bench/decode_options.py --checkpoint runs/captioner/scenes_hard/best.pt

Encodes the split's images once, then decodes them with every setting of the table below (the
checkpoint's other decode settings unchanged) and prints, per setting: corpus BLEU-4, CIDEr-D and
ROUGE-L (0-100; ROUGE-L with pycocoevalcap), for the scenes the share of captions that name every
object correctly (counts included), the share with a word twice in a row, the mean caption length
and the decoding time per image. The settings are what docs/benchmarks.md records; ``--only``
picks some by name.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from captioner.data import select_split  # noqa: E402
from captioner.inference import decode_settings, load_captioner  # noqa: E402
from captioner.metrics import repeat_share  # noqa: E402
from captioner.scenes import caption_names_objects_correctly  # noqa: E402
from captioner.scoring import evaluate_split, image_batches, load_data_records  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402

SETTINGS = {
    "greedy": dict(beam_size=1),
    "beam 3": dict(beam_size=3),
    "beam 5": dict(beam_size=5),
    "beam 3, length penalty 0.5": dict(beam_size=3, length_penalty=0.5),
    "beam 3, length penalty 1": dict(beam_size=3, length_penalty=1.0),
    "beam 3, block 2-grams": dict(beam_size=3, block_ngram_repeat=2),
    "beam 3, block 3-grams": dict(beam_size=3, block_ngram_repeat=3),
    "beam 3, block 5-grams": dict(beam_size=3, block_ngram_repeat=5),
    "beam 3, min length 8": dict(beam_size=3, min_length=8),
    "beam 3, suppress <unk>": dict(beam_size=3, suppress_unk=True),
    "beam 6, 3 diverse groups, strength 0.5": dict(
        beam_size=6, diversity_groups=3, diversity_strength=0.5
    ),
    "beam 6, 3 diverse groups, strength 2": dict(
        beam_size=6, diversity_groups=3, diversity_strength=2.0
    ),
}
OFF = dict(
    length_penalty=0.0, block_ngram_repeat=0, min_length=0, suppress_unk=False, diversity_groups=1
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole split")
    parser.add_argument("--only", nargs="*", help="names of the settings to run")
    args = parser.parse_args(argv)

    captioner = load_captioner(args.checkpoint)
    records = select_split(load_data_records(captioner.cfg.data), args.split)
    if args.max_images:
        records = records[: args.max_images]
    batches = list(image_batches(captioner, records, 64))  # the CNN runs once for all settings
    scenes = all(record.meta and "objects" in record.meta for record in records)
    print(f"machine: {machine()}")
    print(f"checkpoint: {args.checkpoint}; {args.split} split, {len(records)} images")
    header = "| setting | BLEU-4 | CIDEr-D | ROUGE-L | objects named correctly | word twice in a row | words | ms/image (decode + score) |"
    print(header)
    print("|" + " --- |" * 8)
    for name, overrides in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        settings = dataclasses.replace(
            decode_settings(captioner), **{**OFF, "diversity_strength": 0.0, **overrides}
        )
        start = time.perf_counter()
        scores, predictions = evaluate_split(
            captioner, records, decode=settings, batches=batches, meteor=False
        )
        per_image = (time.perf_counter() - start) / len(records)
        captions = [p["caption"] for p in predictions]
        correct = (
            f"{statistics.mean(caption_names_objects_correctly(c, r.meta) for c, r in zip(captions, records, strict=True)):.1%}"
            if scenes
            else "-"
        )
        words = statistics.mean(len(c.split()) for c in captions)
        rouge = f"{scores['ROUGE-L']:.1f}" if "ROUGE-L" in scores else "-"
        print(
            f"| {name} | {scores['BLEU-4']:.1f} | {scores['CIDEr-D']:.1f} | {rouge} | {correct} | "
            f"{repeat_share(captions):.1%} | {words:.1f} | {per_image * 1e3:.1f} |"
        )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
