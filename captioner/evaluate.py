"""Score a trained captioner on a split: corpus BLEU-1..4, plus CIDEr-D / METEOR / ROUGE-L when the
optional ``pycocoevalcap`` is installed.

    python -m captioner.evaluate --checkpoint runs/captioner/scenes_demo/best.pt --split test

Captions are decoded for real (beam search, no teacher forcing). BLEU is corpus BLEU (nltk
``corpus_bleu``, all reference captions of an image) on a 0-100 scale, over the tokens of
`captioner.data.tokenize`: lowercase, nltk's TreebankWordTokenizer, alphanumeric tokens only; the
references and the generated captions are tokenised alike.

``--predictions OUT.json`` writes the captions in the COCO results format,
``[{"image_id": ..., "caption": ...}, ...]``. The image_id is, per split: the number at the end of
the file names when every name ends in one and they are all different (COCO's
``COCO_val2014_000000391895.jpg`` -> 391895, as the official COCO evaluation expects); else the
file stem when the stems are all different (Flickr's ``1000268201_693b08cb0e``, the scenes'
``000042``); else the image's position in the split (0, 1, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from captioner.caption import Captioner, captioner_from_payload, decode_features
from captioner.data import ImageOnly, ImageRecord, load_records, select_split
from captioner.decode import check_decode_settings
from captioner.encoder import ImageFeatures
from captioner.metrics import bleu_scores, coco_scores
from recurrent.checkpoint import load_checkpoint
from recurrent.errors import UserError, run_cli
from recurrent.training import autocast

TOKENIZATION = "lowercase, nltk TreebankWordTokenizer, alphanumeric tokens only"
BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")

FeatureBatches = Iterable[tuple[list[int], ImageFeatures]]


def image_ids(records: Sequence[ImageRecord]) -> list[int | str]:
    """The COCO-results image_id of each record (see the module docstring for the rule)."""
    stems = [Path(record.image_path).stem for record in records]
    numbers = [re.search(r"(\d+)$", stem) for stem in stems]
    if all(numbers):
        ids = [int(match.group(1)) for match in numbers]
        if len(set(ids)) == len(ids):
            return ids
    if len(set(stems)) == len(stems):
        return stems
    return list(range(len(records)))


def image_batches(
    captioner: Captioner,
    records: Sequence[ImageRecord],
    batch_size: int,
    *,
    num_workers: int = 0,
    dataset: ImageOnly | None = None,
) -> Iterator[tuple[list[int], ImageFeatures]]:
    """Encode `records`' images (eval transform) batch by batch: `(record indices, features)`.

    Pass `dataset` (an `ImageOnly` over the same records) to reuse its in-memory image cache.
    """
    dataset = ImageOnly(records, captioner.transform) if dataset is None else dataset
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    model = captioner.model
    for images, indices in loader:
        with torch.no_grad(), autocast(captioner.device):
            features = model.encode(images.to(captioner.device))
        features = ImageFeatures(features.pooled.float(), features.grid.float(), features.grid_hw)
        yield indices.tolist(), features


@torch.no_grad()
def evaluate_split(
    captioner: Captioner,
    records: Sequence[ImageRecord],
    beam_size: int | None = None,
    max_length: int | None = None,
    *,
    length_penalty: float | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    batches: FeatureBatches | None = None,
    coco_metrics: bool = True,
    meteor: bool = True,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Decode `records` (no teacher forcing) and score the captions against their references.

    Returns ``(scores, predictions)``: scores holds "BLEU-1".."BLEU-4" (0-100) and, with
    `coco_metrics` and pycocoevalcap installed, "CIDEr-D", "ROUGE-L" and (with `meteor` and Java)
    "METEOR"; predictions is one
    ``{"image_id", "caption"}`` dict per record, in order (the COCO results format).
    Decoding settings default to the checkpoint's ``decode`` section. `batches` may supply the
    image features (e.g. from the feature cache) as `(record indices, ImageFeatures)`; by default the
    images are loaded and encoded.
    """
    decode = captioner.cfg.decode
    beam_size = decode.beam_size if beam_size is None else beam_size
    max_length = decode.max_length if max_length is None else max_length
    penalty = decode.length_penalty if length_penalty is None else length_penalty
    check_decode_settings(beam_size, max_length)
    if not records:
        raise UserError("no images to evaluate; check the split and --max-images")
    was_training = captioner.model.training
    captioner.model.eval()
    if batches is None:
        batches = image_batches(captioner, records, batch_size, num_workers=num_workers)
    hypotheses: list[str | None] = [None] * len(records)
    total = (len(records) + batch_size - 1) // batch_size
    try:
        for indices, features in tqdm(
            batches, total=total, desc="decoding", unit="batch", disable=not progress or None
        ):
            decoded = decode_features(
                captioner,
                features,
                beam_size=beam_size,
                max_length=max_length,
                length_penalty=penalty,
            )
            for index, beams in zip(indices, decoded, strict=True):
                hypotheses[index] = captioner.vocab.decode(beams[0].tokens) if beams else ""
    finally:
        captioner.model.train(was_training)
    if any(hypothesis is None for hypothesis in hypotheses):
        raise RuntimeError("the feature batches did not cover every record")
    references = [list(record.captions) for record in records]
    scores = dict(bleu_scores(references, hypotheses))
    if coco_metrics:
        scores.update(coco_scores(references, hypotheses, meteor=meteor))
    predictions = [
        {"image_id": image_id, "caption": caption}
        for image_id, caption in zip(image_ids(records), hypotheses, strict=True)
    ]
    return scores, predictions


def write_predictions(predictions: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write COCO-results JSON atomically (a temp file, then a rename)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"--predictions {path} is a folder; pass a file name such as {path}/preds.json"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(predictions, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(
            f"cannot write predictions to {path} ({err.strerror}); pick another path"
        ) from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m captioner.evaluate",
        description="Decode a split with a trained captioner and report corpus BLEU-1..4 (0-100; "
        f"tokens: {TOKENIZATION}), and CIDEr-D, METEOR, ROUGE-L when pycocoevalcap is installed.",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a best.pt / last.pt of captioner.train"
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="which split to score (default: test)",
    )
    parser.add_argument(
        "--beam-size",
        type=int,
        default=None,
        help="beam width (default: the checkpoint's decode.beam_size; 1 = greedy)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="most words per caption (default: the checkpoint's decode.max_length)",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=0,
        help="score only the first N images of the split (0: all)",
    )
    parser.add_argument(
        "--annotations",
        default=None,
        help="evaluate on these annotations instead of the training ones (same format as "
        "data.format of the checkpoint, unless --format is given)",
    )
    parser.add_argument(
        "--image-root",
        default=None,
        help="folder the annotations' image paths are relative to (default: the checkpoint's "
        "data.image_root, or the annotations' folder when --annotations is given)",
    )
    parser.add_argument(
        "--format",
        default=None,
        help="annotation format of --annotations: karpathy, flickr8k, coco, csv or jsonl",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images decoded at once (default: 32)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--no-meteor",
        action="store_true",
        help="skip METEOR (its Java start-up takes seconds); CIDEr-D and ROUGE-L are still computed",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--predictions",
        default=None,
        metavar="OUT.json",
        help="write the captions in the COCO results format [{image_id, caption}, ...]",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_images < 0:
        raise UserError(f"--max-images must be 0 (all) or more, got {args.max_images}")
    payload = load_checkpoint(args.checkpoint, task="captioner")
    captioner = captioner_from_payload(payload, args.device, source=args.checkpoint)
    data = captioner.cfg.data
    if args.annotations is not None:
        data = dataclasses.replace(data, annotations=args.annotations, image_root="")
    if args.format is not None:
        data = dataclasses.replace(data, format=args.format)
    if args.image_root is not None:
        data = dataclasses.replace(data, image_root=args.image_root)
    records = load_data_records(data)
    records = select_split(records, args.split, source=data.annotations)
    if args.max_images:
        records = records[: args.max_images]
    beam_size = captioner.cfg.decode.beam_size if args.beam_size is None else args.beam_size
    max_length = captioner.cfg.decode.max_length if args.max_length is None else args.max_length
    scores, predictions = evaluate_split(
        captioner,
        records,
        beam_size,
        max_length,
        batch_size=args.batch_size,
        num_workers=data.num_workers,
        meteor=not args.no_meteor,
        progress=not args.json,
    )
    if args.predictions:
        write_predictions(predictions, args.predictions)
    report = {
        "checkpoint": args.checkpoint,
        "annotations": data.annotations,
        "split": args.split,
        "images": len(records),
        "beam_size": beam_size,
        "max_length": max_length,
        "tokenization": TOKENIZATION,
        "scores": {key: round(float(value), 4) for key, value in scores.items()},
        "predictions": args.predictions,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{args.split} split of {data.annotations}: {len(records)} images, beam {beam_size}, "
            f"at most {max_length} words"
        )
        print(f"corpus BLEU (0-100; tokens: {TOKENIZATION}):")
        for key, value in scores.items():
            print(f"  {key:8s} {value:6.2f}")
        if not any(key not in BLEU_KEYS for key in scores):
            print("  (install pycocoevalcap for CIDEr-D, METEOR and ROUGE-L)")
        for prediction in predictions[:3]:
            print(f"  e.g. {prediction['image_id']}: {prediction['caption']}")
        if args.predictions:
            print(f"predictions: {args.predictions} (COCO results format)")


def load_data_records(data) -> list[ImageRecord]:
    """`load_records` with a `DataConfig` (an empty image_root: the annotations' folder)."""
    return load_records(
        data.format,
        data.annotations,
        data.image_root or None,
        restval_to_train=data.restval_to_train,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.split_seed,
    )


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
