"""The one record type every annotation format is loaded into.

Each loader in `captioner.data.formats` turns its own file layout into a list of `ImageRecord`s, so
training, evaluation and the app never see format-specific structures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image with its reference captions.

    Attributes:
        image_path: absolute path of the image file.
        captions: the raw reference captions, untokenised (tokenise with `captioner.data.tokenize`).
        split: "train", "val" or "test".
        meta: free-form extra information kept from the annotations (for the synthetic scenes: the
            ground-truth scene dict); not part of equality or hashing.
        drawn: whether `split` was drawn by `captioner.data.formats.hashed_split` (the
            annotations give none) rather than read from the annotations; not part of equality.
        split_key: the name the drawn split was drawn from (`captioner.data.formats.relative_names`:
            the path below the image root, ``../`` where the annotations name it so); None when the
            split was read. Not part of equality.
    """

    image_path: str
    captions: tuple[str, ...]
    split: str
    meta: dict[str, Any] | None = field(default=None, compare=False)
    drawn: bool = field(default=False, compare=False)
    split_key: str | None = field(default=None, compare=False)
