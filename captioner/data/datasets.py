"""Torch datasets over `ImageRecord`s: (image, caption) pairs for training, images for decoding.

Images are decoded with `load_image_tensor` (EXIF-aware RGB, JPEGs by torchvision's decoder) and
transformed per item. For small data sets (the synthetic scenes) PNG decoding dominates CPU time,
so `cache_images=True` keeps the decoded images (uint8 tensors) in memory after first use. With
DataLoader workers each worker process fills its own copy of the cache, so use it with few workers
or `num_workers=0`.

Bad images (``data.bad_images``: error | skip). One corrupt file among 123k must neither kill a
DataLoader worker with a traceback nor, under ``skip``, stop the run. So a data set made with
``mark_bad_images=True`` returns a `BadImage` (path and one-line reason) in place of an item whose
image does not decode; the collate, wrapped in `DropBadImages`, drops those items (for
`CaptionGroups` the image's caption rows go with it) and returns ``(batch, bad images)``, where the
batch is None when every item was bad. Workers are separate processes, so the counting happens in
the main process, on what the collated batches carry: `BadImageLog.batches(loader)` yields the
batches and applies the policy, ``error`` (a `UserError` naming the first bad file, raised in the
main process: one line) or ``skip`` (a warning once per file, a count of dropped items and files,
`BadImageLog.summary()` for the end of training):

    log = BadImageLog(cfg.data.bad_images, warn=print)
    items = CaptionPairs(records, vocab, transform, mark_bad_images=True)
    loader = DataLoader(items, batch_size=8, collate_fn=DropBadImages(collate_pairs), num_workers=2)
    for batch in log.batches(loader):
        if batch is None:  # skip: every image of this batch was bad
            continue
        images, captions, lengths = batch
    print(log.summary())
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import pil_to_tensor

from recurrent.errors import UserError, shown

from .formats import CHECK_DATA
from .images import JPEG_START, MAX_IMAGE_PIXELS, costly_jpeg_error, load_image, size_error
from .records import ImageRecord
from .vocab import Vocabulary

Transform = Callable[[torch.Tensor], torch.Tensor]  # uint8 (3, H, W) -> float (3, S, S)
BAD_IMAGE_POLICIES = ("error", "skip")


def load_image_tensor(
    source: str | os.PathLike[str], *, max_pixels: int | None = None
) -> torch.Tensor:
    """`load_image` as a uint8 tensor (3, H, W): the same upright RGB pixels, the same errors.

    A JPEG that Pillow reads as RGB or grayscale, within the size limits and whole (its bytes end
    with the end-of-image marker), is decoded by `torchvision.io.decode_jpeg` with its EXIF
    orientation applied. Everything else goes through `load_image`: other formats, CMYK JPEGs
    (Pillow undoes Adobe's inverted CMYK), truncated or oversized files, and any JPEG that
    decode_jpeg refuses or warns about (then Pillow decodes it, or says what is wrong with it).
    """
    data = _clean_jpeg(source, MAX_IMAGE_PIXELS if max_pixels is None else max_pixels)
    if data is not None:
        try:
            with _libjpeg_quiet(), warnings.catch_warnings():
                warnings.simplefilter("error")  # libjpeg's "corrupt data" warnings: use Pillow
                # torchvision 0.29 deprecates its image decoders in favour of TorchCodec; while
                # decode_jpeg is there, it is used (the GPU machines' torchvision 0.26 has it)
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except (RuntimeError, Warning):
            pass
    return pil_to_tensor(load_image(source, max_pixels=max_pixels))


_QUIET = threading.Lock()


@contextlib.contextmanager
def _libjpeg_quiet() -> Iterator[None]:
    """This process's standard error (file descriptor 2) to /dev/null while decode_jpeg runs.

    libjpeg prints "Corrupt JPEG data: ..." there, without the file's name, for damaged JPEGs it
    still decodes (Pillow decodes them to the same pixels silently): COCO has some, and training
    would print the line again every epoch. One thread at a time, so that each restores what it
    saved; where descriptor 2 cannot be duplicated, nothing is redirected.
    """
    with _QUIET:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            yield
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


def _clean_jpeg(source: str | os.PathLike[str], limit: int) -> torch.Tensor | None:
    """The file's bytes (a uint8 tensor) if it is a JPEG decode_jpeg may decode, else None."""
    try:
        with open(source, "rb") as file, warnings.catch_warnings():
            if file.read(3) != JPEG_START:  # not a JPEG: no second parse of the header
                return None
            if costly_jpeg_error(file, "") is not None:  # read from its start, left there
                return None  # load_image refuses it before Pillow reads its header
            warnings.simplefilter("ignore")
            with Image.open(file) as image:  # reads the header only
                if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                    return None
                width, height = image.size
            # a file far larger than its pixels can need (say, gigabytes after a small image) is
            # left to Pillow, which reads only what it decodes
            too_long = os.fstat(file.fileno()).st_size > 8 * width * height + 65536
            if too_long or size_error("", width, height, limit) is not None:
                return None  # load_image refuses it, or decodes it
            file.seek(0)
            data = file.read()
    except Exception:  # noqa: BLE001 - load_image reads it again and says what is wrong
        return None
    if not data.endswith(b"\xff\xd9"):
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class BadImage(NamedTuple):
    """Stands in for a data-set item whose image does not decode (``mark_bad_images=True``)."""

    path: str
    reason: str  # load_image_tensor's one-line message, naming the file


class _ImageSource:
    """Decodes the images of `records` by index, optionally keeping them in memory.

    With `mark_bad_images`, an image that does not decode gives a `BadImage` instead of raising;
    it is remembered (in this process), so a bad file is not decoded again for every caption.
    """

    def __init__(
        self, records: Sequence[ImageRecord], cache_images: bool, mark_bad_images: bool = False
    ) -> None:
        self.records = list(records)
        self.mark_bad_images = mark_bad_images
        self._cache: dict[int, torch.Tensor] | None = {} if cache_images else None
        self._bad: dict[int, BadImage] = {}

    def image(self, index: int) -> torch.Tensor | BadImage:
        if index in self._bad:
            return self._bad[index]
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        path = self.records[index].image_path
        try:
            image = load_image_tensor(path)
        except UserError as err:
            if not self.mark_bad_images:
                raise
            self._bad[index] = BadImage(path, " ".join(str(err).split()))
            return self._bad[index]
        if self._cache is not None:
            self._cache[index] = image
        return image


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
    (record index, caption index) of item i. With `mark_bad_images`, an item whose image does not
    decode is a `BadImage` (see the module docstring).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        vocab: Vocabulary,
        transform: Transform,
        *,
        cache_images: bool = False,
        max_length: int | None = None,
        mark_bad_images: bool = False,
    ) -> None:
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must leave room for <start> and <end>, got {max_length}")
        self.vocab = vocab
        self.transform = transform
        self._images = _ImageSource(records, cache_images, mark_bad_images)
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | BadImage:
        record_index, _ = self.pairs[index]
        picture = self._images.image(record_index)
        if isinstance(picture, BadImage):
            return picture
        image = self.transform(picture)  # (3, H, W)
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
    With `mark_bad_images`, an image that does not decode gives a `BadImage` item: dropping it drops
    its k caption rows too.
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
        mark_bad_images: bool = False,
    ) -> None:
        if captions_per_image < 1:
            raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
        self.transform = transform
        self.captions_per_image = captions_per_image
        self._images = _ImageSource(records, cache_images, mark_bad_images)
        self._captions = [
            [encode_caption(vocab, caption, max_length) for caption in record.captions]
            for record in self._images.records
        ]

    @property
    def records(self) -> list[ImageRecord]:
        return self._images.records

    def __len__(self) -> int:
        return len(self._images.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[torch.Tensor]] | BadImage:
        references = self._captions[index]
        picks = pick_references(len(references), self.captions_per_image)
        picture = self._images.image(index)
        if isinstance(picture, BadImage):
            return picture
        image = self.transform(picture)  # (3, H, W)
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
    DataLoader collate turns a batch into `(images (B, 3, H, W), indices (B,))`. With
    `mark_bad_images`, an image that does not decode gives a `BadImage` item (collate with
    ``DropBadImages(default_collate)``).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Transform,
        *,
        cache_images: bool = False,
        mark_bad_images: bool = False,
    ) -> None:
        self.transform = transform
        self._images = _ImageSource(records, cache_images, mark_bad_images)

    @property
    def records(self) -> list[ImageRecord]:
        return self._images.records

    def __len__(self) -> int:
        return len(self._images.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | BadImage:
        picture = self._images.image(index)
        if isinstance(picture, BadImage):
            return picture
        return self.transform(picture), index  # (3, H, W), int


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


class DropBadImages:
    """A collate_fn that drops `BadImage` items and collates the rest with `collate`.

    Returns ``(batch, bad)``: the collated batch of the good items (None when there are none) and
    the list of dropped `BadImage`s, which travel with the batch from a worker process to the main
    process. A class rather than a closure, so it pickles for worker processes started by spawn.
    """

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[Any]) -> tuple[Any, list[BadImage]]:
        good = [item for item in items if not isinstance(item, BadImage)]
        bad = [item for item in items if isinstance(item, BadImage)]
        return (self.collate(good) if good else None), bad


class BadImageLog:
    """The main process's account of the bad images a `DropBadImages` loader reports.

    `policy` is ``data.bad_images``: "error" raises a `UserError` (one line, naming the file) at the
    first bad image; "skip" warns once per file through `warn` and counts `items` (dropped items:
    an image with five captions counts five times under `CaptionPairs`) and `files` (distinct
    files, kept in `paths` with their reasons).
    """

    def __init__(self, policy: str, warn: Callable[[str], None] = print) -> None:
        if policy not in BAD_IMAGE_POLICIES:
            raise UserError(
                f"data.bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)}, "
                f"got {shown(policy)}"
            )
        self.policy = policy
        self.warn = warn
        self.items = 0
        self.paths: dict[str, str] = {}  # bad file -> reason, in the order first seen

    @property
    def files(self) -> int:
        return len(self.paths)

    def record(self, bad: Iterable[BadImage]) -> None:
        """Apply the policy to one batch's dropped items."""
        for item in bad:
            if self.policy == "error":
                raise UserError(
                    f"{item.reason}; or set data.bad_images=skip to train without unreadable images"
                )
            self.items += 1
            if item.path not in self.paths:
                self.paths[item.path] = item.reason
                self.warn(
                    f"warning: skipping an unreadable image (data.bad_images=skip): {item.reason}"
                )

    def batches(self, loader: Iterable[tuple[Any, list[BadImage]]]) -> Iterator[Any]:
        """The batches of a `DropBadImages` loader, recording their bad images; None stands for a
        batch whose every item was bad (under "skip"), so that callers keep their batch count."""
        for batch, bad in loader:
            self.record(bad)
            yield batch

    def combine(self, logs: Iterable[tuple[int, dict[str, str]]]) -> None:
        """Become the union of several processes' logs, given as ``(items, paths)`` each (this
        one's among them): items add up, files are counted once."""
        logs = list(logs)
        self.items = sum(items for items, _ in logs)
        self.paths = {path: reason for _, paths in logs for path, reason in paths.items()}

    def summary(self) -> str:
        """One line for the end of a run: what was skipped."""
        if not self.items:
            return "bad images: none"
        return (
            f"bad images: skipped {self.items} item(s) of {self.files} unreadable image file(s) "
            f"(data.bad_images=skip); {CHECK_DATA} lists them"
        )
