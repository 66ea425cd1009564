"""Torch datasets over `ImageRecord`s: (image, caption) pairs for training, images for decoding.

Images are decoded with `load_image` (EXIF-aware RGB) and transformed per item. For small data
sets (the synthetic scenes) PNG decoding dominates CPU time, so `cache_images=True` keeps the
decoded PIL images in memory after first use. With DataLoader workers each worker process fills its
own copy of the cache, so use it with few workers or `num_workers=0`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import load_image
from .records import ImageRecord
from .vocab import Vocabulary

Transform = Callable[[Image.Image], torch.Tensor]


class _ImageSource:
    """Decodes the images of `records` by index, optionally keeping them in memory."""

    def __init__(self, records: Sequence[ImageRecord], cache_images: bool) -> None:
        self.records = list(records)
        self._cache: dict[int, Image.Image] | None = {} if cache_images else None

    def image(self, index: int) -> Image.Image:
        if self._cache is None:
            return load_image(self.records[index].image_path)
        if index not in self._cache:
            self._cache[index] = load_image(self.records[index].image_path)
        return self._cache[index]


def encode_caption(vocab: Vocabulary, caption: str, max_length: int | None) -> list[int]:
    """<start> words <end> ids, cut to ``max_length`` ids keeping the final <end>."""
    ids = vocab.encode(caption)
    if max_length is not None and len(ids) > max_length:
        ids = [*ids[: max_length - 1], vocab.end_id]
    return ids


class CaptionPairs(Dataset):
    """One item per (image, reference caption) pair: `(image (3, H, W) float, ids (T,) long)`.

    The caption ids include <start> and <end> (`Vocabulary.encode`). With `max_length`, longer
    captions are cut to `max_length` ids, keeping the final <end>. `pairs[i]` is the
    (record index, caption index) of item i.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        vocab: Vocabulary,
        transform: Transform,
        *,
        cache_images: bool = False,
        max_length: int | None = None,
    ) -> None:
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must leave room for <start> and <end>, got {max_length}")
        self.vocab = vocab
        self.transform = transform
        self._images = _ImageSource(records, cache_images)
        self.pairs: list[tuple[int, int]] = []
        self._captions: list[list[int]] = []
        for record_index, record in enumerate(self._images.records):
            for caption_index, caption in enumerate(record.captions):
                ids = encode_caption(vocab, caption, max_length)
                self.pairs.append((record_index, caption_index))
                self._captions.append(ids)

    @property
    def records(self) -> list[ImageRecord]:
        return self._images.records

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record_index, _ = self.pairs[index]
        image = self.transform(self._images.image(record_index))  # (3, H, W)
        caption = torch.tensor(self._captions[index], dtype=torch.long)  # (T,)
        return image, caption


def pick_references(num_references: int, k: int) -> list[int]:
    """``k`` reference indices of an image: a shuffle of its ``num_references`` drawn without
    repetition, cycling through the same shuffle again when it has fewer than ``k``.

    The shuffle uses torch's global generator, so under per-item seeding (captioner.train's
    `SeededItems`) it depends only on (seed, epoch, item). `CaptionGroups` and the feature cache's
    `FeatureGroups` both pick with it, as the first random draw of an item, so a cached and an
    uncached run train on the same references.
    """
    order = torch.randperm(num_references).tolist()
    return [order[i % len(order)] for i in range(k)]


class CaptionGroups(Dataset):
    """One item per image with ``captions_per_image`` of its references:
    `(image (3, H, W) float, [ids (T_j,) long] * k)`.

    Training on k references per encoder pass (self-critical.pytorch's ``seq_per_img``) runs the
    CNN once for k captions instead of k times. The k are drawn by `pick_references` before the
    image's random augmentation, so they do not depend on the transform.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        vocab: Vocabulary,
        transform: Transform,
        captions_per_image: int,
        *,
        cache_images: bool = False,
        max_length: int | None = None,
    ) -> None:
        if captions_per_image < 1:
            raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
        self.transform = transform
        self.captions_per_image = captions_per_image
        self._images = _ImageSource(records, cache_images)
        self._captions = [
            [encode_caption(vocab, caption, max_length) for caption in record.captions]
            for record in self._images.records
        ]

    @property
    def records(self) -> list[ImageRecord]:
        return self._images.records

    def __len__(self) -> int:
        return len(self._images.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        references = self._captions[index]
        picks = pick_references(len(references), self.captions_per_image)
        image = self.transform(self._images.image(index))  # (3, H, W)
        return image, [torch.tensor(references[i], dtype=torch.long) for i in picks]


def collate_groups(
    batch: Sequence[tuple[torch.Tensor, list[torch.Tensor]]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack `CaptionGroups` items into `(images (B, 3, H, W), captions (B*k, T), lengths (B*k,))`;
    caption rows j*k .. j*k + k-1 belong to image j."""
    images = torch.stack([image for image, _ in batch])  # (B, 3, H, W)
    captions = [caption for _, group in batch for caption in group]
    padded = torch.nn.utils.rnn.pad_sequence(captions, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(caption) for caption in captions], dtype=torch.long)  # (B*k,)
    return images, padded, lengths  # (B, 3, H, W), (B*k, T), (B*k,)


class ImageOnly(Dataset):
    """One item per image: `(image (3, H, W) float, record index)`, for decoding and evaluation.

    The index points into `records`, whose `captions` are the references for scoring. The default
    DataLoader collate turns a batch into `(images (B, 3, H, W), indices (B,))`.
    """

    def __init__(
        self, records: Sequence[ImageRecord], transform: Transform, *, cache_images: bool = False
    ) -> None:
        self.transform = transform
        self._images = _ImageSource(records, cache_images)

    @property
    def records(self) -> list[ImageRecord]:
        return self._images.records

    def __len__(self) -> int:
        return len(self._images.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self._images.image(index)), index  # (3, H, W), int


def collate_pairs(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack `CaptionPairs` items into `(images (B, 3, H, W), captions (B, T), lengths (B,))`.

    Captions are right-padded with `pad_id` (the vocabulary's <pad> = 0) to the longest one; T is
    that length and `lengths` counts each caption's ids including <start> and <end>. The batch is
    kept in its given order, not sorted by length: the loss masks padding with `ignore_index`, and
    `pack_padded_sequence(..., enforce_sorted=False)` accepts unsorted lengths if packing is wanted.
    """
    images = torch.stack([image for image, _ in batch])  # (B, 3, H, W)
    captions = torch.nn.utils.rnn.pad_sequence(
        [caption for _, caption in batch], batch_first=True, padding_value=pad_id
    )  # (B, T)
    lengths = torch.tensor([len(caption) for _, caption in batch], dtype=torch.long)  # (B,)
    return images, captions, lengths
