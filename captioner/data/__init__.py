"""The captioner's data layer: annotation formats, images, vocabulary, transforms and datasets.

`load_records` reads any supported annotation format into `ImageRecord`s, `select_split` picks a
split, `Vocabulary.build` makes the word list from training captions, `build_transforms` the
preprocessing, and `CaptionPairs` / `CaptionGroups` / `ImageOnly` the torch datasets (with
`DropBadImages` and `BadImageLog` for images that do not decode: ``data.bad_images``).

The torch-based names (datasets, transforms) are imported on first use, so tools that only need
records, images or the vocabulary (such as `python -m captioner.scenes`) start without loading
torch and torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .formats import (
    CHECK_DATA,
    FORMATS,
    OLDER_WEIGHTS,
    PATHS_OUTSIDE_ABSOLUTE,
    SPLIT_RULE,
    hashed_split,
    load_aic,
    load_coco,
    load_csv,
    load_flickr8k,
    load_jsonl,
    load_karpathy,
    load_records,
    select_split,
    validate_fractions,
)
from .images import MAX_IMAGE_PIXELS, load_image
from .records import SPLITS, ImageRecord
from .vocab import SPECIALS, Vocabulary, join_words, tokenize

if TYPE_CHECKING:
    from .datasets import (
        BadImage,
        BadImageLog,
        CaptionGroups,
        CaptionPairs,
        DropBadImages,
        ImageOnly,
        collate_groups,
        collate_pairs,
        load_image_tensor,
    )
    from .transforms import build_transforms, normalization_stats, resolve_weights

_LAZY = {
    "BadImage": "datasets",
    "BadImageLog": "datasets",
    "DropBadImages": "datasets",
    "CaptionGroups": "datasets",
    "CaptionPairs": "datasets",
    "ImageOnly": "datasets",
    "collate_groups": "datasets",
    "collate_pairs": "datasets",
    "load_image_tensor": "datasets",
    "build_transforms": "transforms",
    "normalization_stats": "transforms",
    "resolve_weights": "transforms",
}


def __getattr__(name: str) -> Any:
    """Import the torch-based names on first access (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHECK_DATA",
    "FORMATS",
    "MAX_IMAGE_PIXELS",
    "OLDER_WEIGHTS",
    "PATHS_OUTSIDE_ABSOLUTE",
    "SPECIALS",
    "SPLIT_RULE",
    "SPLITS",
    "BadImage",
    "BadImageLog",
    "CaptionGroups",
    "CaptionPairs",
    "DropBadImages",
    "ImageOnly",
    "ImageRecord",
    "Vocabulary",
    "build_transforms",
    "collate_groups",
    "collate_pairs",
    "hashed_split",
    "join_words",
    "load_aic",
    "load_coco",
    "load_csv",
    "load_flickr8k",
    "load_image",
    "load_image_tensor",
    "load_jsonl",
    "load_karpathy",
    "load_records",
    "normalization_stats",
    "resolve_weights",
    "select_split",
    "tokenize",
    "validate_fractions",
]
