"""Compare two prediction files on the same references: corpus scores of each, and the images where
they differ most by per-image CIDEr-D, side by side.

    python -m captioner.compare --annotations data/scenes_hard/dataset_scenes.json --split test \\
        runs/xe/test_predictions.json runs/scst/test_predictions.json
    python -m captioner.compare --checkpoint runs/xe/best.pt A.json B.json --top 5 --json

The prediction files are what ``captioner.evaluate --predictions`` writes (the COCO results format,
``[{"image_id": ..., "caption": ...}, ...]``), with the image ids of that split (see
`captioner.scoring.image_ids`). The references come from ``--annotations`` (any format the
loaders read) or from the data a checkpoint was trained on (``--checkpoint``). Both files must
caption the same images of the split. Scores: corpus BLEU-1..4 and CIDEr-D (0-100, the document
frequencies from these images' references, as pycocoevalcap computes them) over the tokens of
`captioner.data.tokenize`; the per-image CIDEr-D is the same computation for one image, so a
file's CIDEr-D is the mean of its per-image scores.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.cider import CiderD
from captioner.config import DataConfig
from captioner.data import FORMATS, ImageRecord, select_split
from captioner.inference import saved_config
from captioner.metrics import bleu_scores, repeat_share
from captioner.scoring import (
    TOKENIZER,
    data_from_arguments,
    describe_scores,
    image_ids,
    load_data_records,
    what_was_scored,
)
from recurrent.checkpoint import load_checkpoint
from recurrent.errors import ArgumentParser, UserError, run_cli, shown


@dataclass
class Comparison:
    """Two prediction files scored on the same images (in the split's order)."""

    records: list[ImageRecord]
    ids: list[int | str]
    captions: tuple[list[str], list[str]]  # file A's and file B's caption of each image
    per_image: tuple[list[float], list[float]]  # CIDEr-D (0-100) of each caption
    scores: tuple[dict[str, float], dict[str, float]]  # corpus BLEU-1..4 and CIDEr-D

    def most_different(self, top: int) -> list[int]:
        """Positions of the ``top`` images whose CIDEr-D differs most between A and B (largest
        difference first; equal differences in split order). Images scored alike are left out."""
        a, b = self.per_image
        order = sorted(range(len(a)), key=lambda i: -abs(a[i] - b[i]))
        return [i for i in order[:top] if a[i] != b[i]]


def read_predictions(path: str) -> dict[int | str, str]:
    """{image_id: caption} from a COCO-results JSON file; a bad file is a one-line UserError."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"prediction file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = " ".join(str(err).split())
        raise UserError(
            f"{path} is not a JSON prediction file ({reason}); pass what captioner.evaluate "
            "--predictions writes"
        ) from None
    shape_error = UserError(
        f"{path} must be a list of {{'image_id': ..., 'caption': ...}} objects (the COCO results "
        "format captioner.evaluate --predictions writes)"
    )
    if isinstance(items, list) and not items:
        raise UserError(f"{path} holds no predictions (an empty list); pass a file with some")
    if not isinstance(items, list):
        raise shape_error
    captions: dict[int | str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("caption"), str):
            raise shape_error
        image_id = item.get("image_id")
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise shape_error
        if image_id in captions:
            raise UserError(
                f"{path} captions image {shown(image_id)} twice; keep one caption per image"
            )
        captions[image_id] = item["caption"]
    return captions


def compare(
    records: Sequence[ImageRecord],
    first: dict[int | str, str],
    second: dict[int | str, str],
    *,
    names: tuple[str, str] = ("A", "B"),
    source: str = "the split",
) -> Comparison:
    """Score two {image_id: caption} maps against the references of `records` (a split)."""
    ids = image_ids(records)
    position = {image_id: index for index, image_id in enumerate(ids)}
    for name, predictions in zip(names, (first, second), strict=True):
        unknown = [image_id for image_id in predictions if image_id not in position]
        if unknown:
            raise UserError(
                f"{name} captions {len(unknown)} images that are not in {source} (e.g. "
                f"{shown(unknown[0])}); pass the split and annotations the predictions were made on"
            )
    if set(first) != set(second):
        only = sorted(map(str, set(first) ^ set(second)))
        raise UserError(
            f"{names[0]} and {names[1]} caption different images ({len(only)} in one file only, "
            f"e.g. {only[0]}); compare predictions of the same images"
        )
    chosen = sorted(position[image_id] for image_id in first)  # the split's order
    records = [records[index] for index in chosen]
    chosen_ids = [ids[index] for index in chosen]
    references = [list(record.captions) for record in records]
    cider = CiderD(references)
    captions, per_image, scores = [], [], []
    for predictions in (first, second):
        texts = [predictions[image_id] for image_id in chosen_ids]
        values = [100.0 * value for value in cider.scores(texts, range(len(texts)))]
        captions.append(texts)
        per_image.append(values)
        scores.append({**bleu_scores(references, texts), "CIDEr-D": sum(values) / len(values)})
    return Comparison(records, chosen_ids, tuple(captions), tuple(per_image), tuple(scores))


def load_split(args: argparse.Namespace) -> tuple[list[ImageRecord], str]:
    """The records of ``--split`` from ``--annotations`` or the checkpoint's training data."""
    if (args.annotations is None) == (args.checkpoint is None):
        raise UserError("pass the references with exactly one of --annotations and --checkpoint")
    if args.checkpoint is not None:
        payload = load_checkpoint(args.checkpoint, task="captioner")
        data = saved_config(payload, args.checkpoint).data  # checked as every reader checks it
    else:
        data = DataConfig(format="karpathy")  # --annotations: Karpathy JSON unless --format
    data = data_from_arguments(data, args)  # evaluate's way with the three flags
    records = select_split(
        load_data_records(data), args.split, source=data.annotations, fractions_fixed=True
    )
    return records, str(data.annotations)


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m captioner.compare",
        description="Score two prediction files (captioner.evaluate --predictions) on the same "
        "references and show the images where they differ most by per-image CIDEr-D.",
    )
    parser.add_argument("first", metavar="A.json", help="predictions of the first system")
    parser.add_argument("second", metavar="B.json", help="predictions of the second system")
    parser.add_argument(
        "--annotations", help="the references: an annotation file (Karpathy JSON unless --format)"
    )
    parser.add_argument(
        "--checkpoint", help="or take the references from the data this checkpoint trained on"
    )
    parser.add_argument(
        "--format",
        default=None,
        help=f"{', '.join(FORMATS[:-1])} or {FORMATS[-1]} (with --annotations)",
    )
    parser.add_argument("--image-root", default=None, help="folder of the annotations' images")
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="the split the predictions caption (default: test)",
    )
    parser.add_argument(
        "--top", type=int, default=10, help="how many differing images to show (default: 10)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.top < 0:
        raise UserError(f"--top must be 0 or more, got {args.top}")
    first, second = read_predictions(args.first), read_predictions(args.second)
    records, source = load_split(args)
    result = compare(
        records,
        first,
        second,
        names=(args.first, args.second),
        source=f"the {args.split} split of {source}",
    )
    shown = result.most_different(args.top)
    a, b = result.per_image
    pairs = list(zip(a, b, strict=True))
    wins = (sum(x > y for x, y in pairs), sum(y > x for x, y in pairs))
    if args.json:
        print(json.dumps(_report(args, result, source, shown, wins)))
        return
    print(what_was_scored(args.split, len(result.records), source))
    for label, path, scores, captions in zip(
        "AB", (args.first, args.second), result.scores, result.captions, strict=True
    ):
        repeats = repeat_share(captions)
        print(f"{label} {path}: {describe_scores(scores)}  (word twice in a row: {repeats:.1%})")
    same = len(a) - wins[0] - wins[1]
    print(
        f"per-image CIDEr-D: A higher on {wins[0]} images, B higher on {wins[1]}, equal on {same}"
    )
    if shown:
        print(f"the {len(shown)} images where they differ most (CIDEr-D, 0-100):")
    for index in shown:
        record = result.records[index]
        print(f"  {result.ids[index]} ({Path(record.image_path).name})")
        print(f"    A {a[index]:6.1f}  {result.captions[0][index]}")
        print(f"    B {b[index]:6.1f}  {result.captions[1][index]}")
        print(f"    reference: {record.captions[0]}")


def _report(
    args: argparse.Namespace,
    result: Comparison,
    source: str,
    shown: list[int],
    wins: tuple[int, int],
) -> dict[str, Any]:
    a, b = result.per_image
    return {
        "annotations": source,
        "split": args.split,
        "images": len(result.records),
        "tokenizer": TOKENIZER,
        "files": [
            {
                "path": path,
                "scores": {key: round(value, 4) for key, value in scores.items()},
                "repeated_word_share": round(repeat_share(captions), 4),
            }
            for path, scores, captions in zip(
                (args.first, args.second), result.scores, result.captions, strict=True
            )
        ],
        "a_higher": wins[0],
        "b_higher": wins[1],
        "differences": [
            {
                "image_id": result.ids[index],
                "image": result.records[index].image_path,
                "a": result.captions[0][index],
                "b": result.captions[1][index],
                "cider_a": round(a[index], 4),
                "cider_b": round(b[index], 4),
                "references": list(result.records[index].captions),
            }
            for index in shown
        ],
    }


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
