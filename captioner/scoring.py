"""Decode a split and score it: the library side of `captioner.evaluate`, used by training too.

BLEU is corpus BLEU (nltk ``corpus_bleu``, all reference captions of an image) on a 0-100 scale,
over the tokens of `captioner.data.tokenize` (`TOKENIZATION`); the references and the generated
captions are tokenised alike.

Predictions use the COCO results format, ``[{"image_id": ..., "caption": ...}, ...]``. The image_id
is, per split: the number at the end of the file names when every name ends in one and they are
all different (COCO's ``COCO_val2014_000000391895.jpg`` -> 391895, as the official COCO evaluation
expects); else the file stem when the stems are all different (Flickr's
``1000268201_693b08cb0e``, the scenes' ``000042``); else the path below the folder that holds
all the split's images (``cam1/5.png``). The ids are those of the whole split: a part of it
(``evaluate --max-images``) keeps its images' ids in the split, which ``compare`` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from captioner.config import DataConfig, DecodeConfig
from captioner.data import (
    OLDER_WEIGHTS,
    PATHS_OUTSIDE_ABSOLUTE,
    SPLIT_RULE,
    ImageOnly,
    ImageRecord,
    load_records,
)
from captioner.data.formats import CHECK_DATA, FORMATS, in_several_splits
from captioner.encoder import ImageFeatures
from captioner.inference import Captioner, decode_features, decode_settings
from captioner.metrics import bleu_scores, cider_d_score, coco_scores
from recurrent.distributed import Distributed
from recurrent.errors import UserError, loader_workers
from recurrent.files import atomic_write_text

TOKENIZATION = (
    "lowercase, nltk TreebankWordTokenizer, Chinese and Japanese characters one token each, "
    "alphanumeric tokens only"
)
TOKENIZER = f"captioner.data.tokenize ({TOKENIZATION})"
BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
SCORE_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "METEOR", "ROUGE-L")
# What "better" compares for train.best_metric, in order (later keys break ties).
BEST_METRIC_KEYS = {
    "bleu4": ("BLEU-4", "BLEU-3", "BLEU-2", "BLEU-1"),
    "cider": ("CIDEr-D", "BLEU-4", "BLEU-3", "BLEU-2", "BLEU-1"),
}

FeatureBatches = Iterable[tuple[list[int], ImageFeatures]]


def image_ids(records: Sequence[ImageRecord]) -> list[int | str]:
    """The COCO-results image_id of each record of a split (see the module docstring for the
    rule; pass the whole split, since the rule that keeps ids unique depends on all its names)."""
    stems = [Path(record.image_path).stem for record in records]
    numbers = [re.search(r"(\d+)$", stem) for stem in stems]
    if all(numbers):
        ids = [int(match.group(1)) for match in numbers]
        if len(set(ids)) == len(ids):
            return ids
    if len(set(stems)) == len(stems):
        return stems
    paths = [os.path.abspath(record.image_path) for record in records]
    folder = os.path.commonpath(paths) if len(set(paths)) > 1 else os.path.dirname(paths[0])
    names = [Path(os.path.relpath(path, folder)).as_posix() for path in paths]
    if len(set(names)) == len(names):
        return names
    return list(range(len(records)))  # one image listed twice (no loader yields that)


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
    # Its own generator: a validation leaves the global one (training's dropout) untouched.
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        generator=torch.Generator(),
        **loader_workers(num_workers),  # a group's SIGTERM is the main process's to handle
    )
    model = captioner.model
    for images, indices in loader:
        with torch.no_grad(), captioner.autocast():
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
    decode: DecodeConfig | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    batches: FeatureBatches | None = None,
    coco_metrics: bool = True,
    cider: bool = False,
    meteor: bool = True,
    progress: bool = False,
    layout: Distributed | None = None,
    ids: Sequence[int | str] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Decode `records` (no teacher forcing) and score the captions against their references.

    Returns ``(scores, predictions)``: scores holds "BLEU-1".."BLEU-4" (0-100), "CIDEr-D" with
    `coco_metrics` or `cider` (the project's own, no optional package; `cider` is for training's
    validation, which otherwise scores BLEU only), and with `coco_metrics` and pycocoevalcap
    installed "ROUGE-L" and (with `meteor` and Java) "METEOR"; predictions is one
    ``{"image_id", "caption", "finished"}`` dict per record, in order: the COCO results format
    (what `write_predictions` writes), and whether the caption ended with <end> rather than at
    the length limit. The image ids are `ids` (default: `image_ids` of `records`, right where
    they are a whole split; pass those of the split for a part of it).
    Decoding settings: `decode` (default: the checkpoint's ``decode`` section), with
    `beam_size`, `max_length` and `length_penalty` in place of its values when given. `batches`
    may supply the image features (e.g. from the feature cache) as `(record indices,
    ImageFeatures)`; by default the images are loaded and encoded.

    Under torchrun (`layout`), each process passes its share of the split, ``split[rank::N]``: the
    shares are decoded in parallel, gathered, and every process scores the whole split.
    """
    base = captioner if decode is None else _with_decode(captioner, decode)
    settings = decode_settings(
        base, beam_size=beam_size, max_length=max_length, length_penalty=length_penalty
    )
    distributed = layout is not None and layout.enabled
    if ids is not None and (distributed or len(ids) != len(records)):
        raise ValueError("ids name each record, in one process")
    if not records and not distributed:  # under torchrun a share may be empty: 1 image, 2 ranks
        raise UserError("no images to evaluate; check the split and --max-images")
    was_training = captioner.model.training
    captioner.model.eval()
    if batches is None:
        batches = image_batches(captioner, records, batch_size, num_workers=num_workers)
    hypotheses: list[str | None] = [None] * len(records)
    finished = [True] * len(records)  # False: cut at max_length words without <end>
    total = (len(records) + batch_size - 1) // batch_size
    try:
        for indices, features in tqdm(
            batches, total=total, desc="decoding", unit="batch", disable=not progress or None
        ):
            decoded = decode_features(captioner, features, settings)
            for index, beams in zip(indices, decoded, strict=True):
                hypotheses[index] = captioner.vocab.decode(beams[0].tokens)
                finished[index] = beams[0].finished
    finally:
        captioner.model.train(was_training)
    if any(hypothesis is None for hypothesis in hypotheses):
        raise RuntimeError("the feature batches did not cover every record")
    if distributed:  # put the shares back in the split's order
        shares = layout.all_gather_objects((list(records), hypotheses, finished))
        count = sum(len(share[0]) for share in shares)
        records, hypotheses, finished = (
            [shares[i % len(shares)][part][i // len(shares)] for i in range(count)]
            for part in range(3)
        )
    references = [list(record.captions) for record in records]
    scores = dict(bleu_scores(references, hypotheses))
    if coco_metrics:
        scores.update(coco_scores(references, hypotheses, meteor=meteor))
    elif cider:
        scores.update(cider_d_score(references, hypotheses))
    predictions = [
        {"image_id": image_id, "caption": caption, "finished": ended}
        for image_id, caption, ended in zip(
            image_ids(records) if ids is None else ids, hypotheses, finished, strict=True
        )
    ]
    return scores, predictions


def _with_decode(captioner: Captioner, decode: DecodeConfig) -> Captioner:
    cfg = dataclasses.replace(captioner.cfg, decode=decode)
    return dataclasses.replace(captioner, cfg=cfg)


def score_key(scores: dict[str, float], best_metric: str = "bleu4") -> tuple[float, ...]:
    """What "better" compares for ``train.best_metric`` (bleu4 | cider): the metric first, then
    BLEU-4..1 to break ties (so progress counts while BLEU-4 is still 0). Validation must have
    scored CIDEr-D for "cider" (`evaluate_split(..., cider=True)`)."""
    return tuple(scores[name] for name in BEST_METRIC_KEYS[best_metric])


def describe_scores(scores: dict[str, float]) -> str:
    """ "BLEU-1 71.2  BLEU-2 ...  CIDEr-D 153.4": the scores in a fixed order, 0-100 scale."""
    names = [name for name in SCORE_ORDER if name in scores]
    names += sorted(name for name in scores if name not in SCORE_ORDER)
    return "  ".join(f"{name} {scores[name]:.2f}" for name in names)


def what_was_scored(split: str, images: int, source: str) -> str:
    """The one-line description every score report starts with: split, images, tokenizer."""
    return f"{split} split of {source}: {images} images, tokens: {TOKENIZER}"


def check_predictions_path(path: str | os.PathLike[str]) -> None:
    """Refuse a ``--predictions`` path that cannot be written before decoding, not after it (its
    scores were never printed): a folder, or a place where no file can be made (a read-only file
    system, a file named as a folder). The folder is made, as the writing would."""
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"--predictions {path} is a folder; pass a file name such as {path}/preds.json"
        )
    existing = next((folder for folder in path.parents if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(
            f"cannot write predictions to {path} ({existing} is a file, not a folder); pick "
            "another path"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise _unwritable(path, err) from None


def write_predictions(predictions: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write COCO-results JSON (``image_id`` and ``caption`` of each) atomically (a temp file,
    then a rename)."""
    path = Path(path)
    check_predictions_path(path)
    try:
        items = [{key: item[key] for key in ("image_id", "caption")} for item in predictions]
        atomic_write_text(path, json.dumps(items, indent=1))
    except OSError as err:
        raise _unwritable(path, err) from None


def _unwritable(path: Path, err: OSError) -> UserError:
    return UserError(f"cannot write predictions to {path} ({err.strerror}); pick another path")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--annotations, --image-root and --format: other data than a checkpoint's (evaluate's, and
    check_data's with --checkpoint), applied by `data_from_arguments`."""
    parser.add_argument(
        "--annotations",
        default=None,
        help="these annotations instead of the training ones (same format as data.format of "
        "the checkpoint, unless --format is given)",
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
        help=f"annotation format of --annotations: {', '.join(FORMATS[:-1])} or {FORMATS[-1]}",
    )


def data_from_arguments(data: DataConfig, args: argparse.Namespace) -> DataConfig:
    """``data`` with `add_data_arguments`' flags in place: --annotations reads its images from
    its own folder unless --image-root says otherwise."""
    if args.annotations is not None:
        data = dataclasses.replace(data, annotations=args.annotations, image_root="")
    if args.format is not None:
        data = dataclasses.replace(data, format=args.format)
    if args.image_root is not None:
        data = dataclasses.replace(data, image_root=args.image_root)
    return data


def load_data_records(
    data, *, check_images: bool = True, report: bool = False
) -> list[ImageRecord]:
    """`load_records` with a `DataConfig` (an empty image_root: the annotations' folder).

    An image listed in more than one split is refused (it would be trained on and scored), except
    for a `report` (`captioner.check_data`, which lists every such image).
    """
    records = load_records(
        data.format,
        data.annotations,
        data.image_root or None,
        restval_to_train=data.restval_to_train,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.split_seed,
        check_images=check_images,
    )
    if not report and (leaks := in_several_splits(records)):
        path, splits = next(iter(leaks.items()))
        raise UserError(
            f"{len(leaks)} image(s) of {data.annotations} are listed in more than one split, "
            f"e.g. '{path}' ({', '.join(splits)}), so training would see val or test images; "
            f"keep each image in one split ({CHECK_DATA} lists them)"
        )
    return records


def image_key(path: str) -> int | None:
    """63 bits of the BLAKE2b hash of an image file's name (its last path part, as the file
    system spells it) and size in bytes: what a checkpoint keeps of each image it trained on
    (`trained_names`), which a copy of the image elsewhere keeps too; None when the file cannot
    be looked at."""
    try:
        size = os.stat(path).st_size
    except (OSError, ValueError):
        return None
    digest = hashlib.blake2b(os.fsencode(os.path.basename(path)), digest_size=8)
    digest.update(b"\0%d" % size)
    return int.from_bytes(digest.digest(), "big") >> 1


def trained_names(
    records: Iterable[ImageRecord], earlier: torch.Tensor | None = None
) -> torch.Tensor:
    """The `image_key`s of the training images of `records` (sorted, int64), with ``earlier``
    (those of the weights a run started from): a captioner checkpoint's ``trained_names``, by
    which `seen_in_training` tells the images it trained on among others. 8 bytes an image: 0.9
    MB for COCO's 113,000."""
    keys = {image_key(record.image_path) for record in records if record.split == "train"}
    keys.discard(None)
    if _names_tensor(earlier):
        keys.update(earlier.tolist())
    return torch.tensor(sorted(keys), dtype=torch.int64)


def _names_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.int64 and value.dim() == 1


def seen_in_training(payload: dict[str, Any], records: Sequence[ImageRecord]) -> list[str]:
    """The image paths of `records` whose file names and sizes are among those of the images
    the checkpoint `payload` trained on (its ``trained_names``; none known in a checkpoint
    without them)."""
    known = payload.get("trained_names")
    if not _names_tensor(known) or not records:
        return []
    keys = [image_key(record.image_path) for record in records]
    looked = [(record, key) for record, key in zip(records, keys, strict=True) if key is not None]
    if not looked:
        return []
    hits = torch.isin(torch.tensor([key for _, key in looked], dtype=torch.int64), known)
    return [
        record.image_path for (record, _), hit in zip(looked, hits.tolist(), strict=True) if hit
    ]


def seen_note(
    payload: dict[str, Any], records: Sequence[ImageRecord], what: str = "images"
) -> str | None:
    """How many of `records` (``what``) bear the file name and size of an image the checkpoint
    `payload` trained on, as a note's words; None when none does (or it keeps no names)."""
    if not (seen := seen_in_training(payload, records)):
        return None
    return (
        f"{len(seen)} of the {len(records)} {what} have the file name and size of an image its "
        f"weights trained on (like '{os.path.basename(seen[0])}')"
    )


def older_split(payload: dict[str, Any], records: Sequence[ImageRecord]) -> str | None:
    """Why the val and test images of `records` may include images the weights of the checkpoint
    `payload` were trained on, or None: its weights (or those it started from) predate
    `SPLIT_RULE`, and the training images of these records were drawn (no file gives them), by
    another rule than the one that chose that checkpoint's training images."""
    drawn = any(record.drawn and record.split == "train" for record in records)
    rule = payload.get("split_rule")
    if rule == SPLIT_RULE or not drawn:
        return None
    if rule == PATHS_OUTSIDE_ABSOLUTE:
        outside = [key for r in records if r.drawn and (key := r.split_key or "").startswith("../")]
        if not outside:
            return None  # the rules drew the same splits
        return (
            f"its weights were trained when the {len(outside)} image(s) that the annotations name "
            f"outside the image root (like '{outside[0]}') drew their splits from their absolute "
            "paths, which change when the data moves; they are now drawn from the names as "
            "written, so some of the images it trained on may be val or test images here"
        )
    if rule == OLDER_WEIGHTS:  # which earlier rule, the run that started from them knew
        return (
            "its weights started from a checkpoint whose splits of this data were drawn by an "
            "earlier rule, so some of the images they trained on may be val or test images here"
        )
    return (
        "its weights were trained when the splits of data without a split column were a shuffle "
        "of the whole set; they are now drawn by a hash of each image's path, so some of the "
        "images it trained on are val or test images here"
    )
