"""Scan a captioning data set before a long run: the library side of `captioner.check_data`.

`scan_images` opens and decodes every image once, on a bounded pool of threads (Pillow's decoders
release the GIL), and hashes its bytes; `DataReport` gathers what a run would trip over or should
know about: images referenced but missing, images that do not decode, images listed more than
once, files with identical bytes under different names (across splits they leak test images into
training), captions that are empty after tokenization, and captions' lengths against what
training and decoding cut them to, and captions of Thai, Lao, Burmese, Khmer or Tibetan whose
words are not split by spaces. `DataReport.stops_training` says, for a ``data.bad_images``
policy, whether `captioner.train` would stop, and why.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from recurrent.errors import UserError

from .formats import in_several_splits
from .images import load_image
from .records import SPLITS, ImageRecord
from .vocab import Vocabulary, run_on_words, tokenize

OK, MISSING, BAD = "ok", "missing", "bad"


@dataclass(frozen=True)
class ImageCheck:
    """One image file: "ok", "missing" or "bad" (with load_image's reason), and its bytes' sha1."""

    path: str
    status: str
    reason: str = ""
    digest: str = ""


def check_image(path: str) -> ImageCheck:
    """Read `path` once: hash its bytes and decode them as `load_image` does for training."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return ImageCheck(path, MISSING, f"image '{path}' not found")
    except (OSError, ValueError) as err:  # a folder, no permission, a NUL in the name
        reason = getattr(err, "strerror", None) or str(err)
        return ImageCheck(path, BAD, f"cannot read '{path}' ({reason})")
    digest = hashlib.sha1(data).hexdigest()
    source = io.BytesIO(data)
    source.name = path  # so that messages name the file
    try:
        load_image(source)
    except UserError as err:
        return ImageCheck(path, BAD, " ".join(str(err).split()), digest)
    return ImageCheck(path, OK, "", digest)


def scan_images(
    paths: Iterable[str],
    workers: int,
    *,
    check: Callable[[str], ImageCheck] = check_image,
    on_done: Callable[[ImageCheck], None] | None = None,
) -> Iterator[ImageCheck]:
    """`check` every path on `workers` threads, at most 4 x workers in flight at once (memory stays
    bounded however many images there are); yields the results as they complete."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    pending: set[Future[ImageCheck]] = set()
    paths = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check_data") as pool:
        while True:
            for path in paths:
                pending.add(pool.submit(check, path))
                if len(pending) >= 4 * workers:
                    break
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                if on_done is not None:
                    on_done(result)
                yield result


@dataclass
class DataReport:
    """What a scan of `records` found (see the module docstring); paths are the records' own."""

    records: list[ImageRecord]
    checks: dict[str, ImageCheck]
    splits: dict[str, int] = field(default_factory=dict)  # images per split
    drawn: int = 0  # images whose split hashed_split drew (the annotations give none)
    captions: int = 0
    listed_twice: dict[str, list[str]] = field(default_factory=dict)  # path -> its records' splits
    same_bytes: list[list[str]] = field(default_factory=list)  # groups of paths, identical bytes
    empty_captions: list[tuple[str, str]] = field(default_factory=list)  # (path, caption)
    run_on: list[tuple[str, str]] = field(default_factory=list)  # words not split: `run_on_words`
    lengths: dict[str, list[int]] = field(default_factory=dict)  # split -> captions' tokens
    min_word_count: int = 1  # data.min_word_count: what `vocab` keeps
    vocab: Vocabulary | None = None  # the train split's, as captioner.train builds it

    @classmethod
    def build(
        cls, records: Sequence[ImageRecord], checks: dict[str, ImageCheck], min_word_count: int = 1
    ) -> DataReport:
        report = cls(list(records), dict(checks), min_word_count=min_word_count)
        counts: Counter[str] = Counter()  # the training captions' tokens, for `vocab`
        report.splits = dict(Counter(record.split for record in records))
        report.drawn = sum(record.drawn for record in records)
        report.captions = sum(len(record.captions) for record in records)
        splits_of: dict[str, list[str]] = defaultdict(list)
        for record in records:
            splits_of[record.image_path].append(record.split)
            lengths = report.lengths.setdefault(record.split, [])
            for text in record.captions:
                tokens = tokenize(text)
                lengths.append(len(tokens))
                if not tokens:
                    report.empty_captions.append((record.image_path, text))
                elif run_on_words(tokens):
                    report.run_on.append((record.image_path, text))
                if record.split == "train":
                    counts.update(tokens)
        report.vocab = Vocabulary.from_counts(counts, min_word_count)
        report.listed_twice = {path: s for path, s in splits_of.items() if len(s) > 1}
        by_digest: dict[str, list[str]] = defaultdict(list)
        for path in splits_of:
            check = checks.get(path)
            if check is not None and check.digest:
                by_digest[check.digest].append(path)
        report.same_bytes = sorted(sorted(group) for group in by_digest.values() if len(group) > 1)
        return report

    def caption_lengths(self, max_caption_length: int, max_length: int) -> dict[str, int]:
        """Captions' lengths in tokens (`tokenize`'s: a Chinese or Japanese caption's characters):
        the median, the 95th percentile and the longest of every split's; the training captions
        longer than ``max_caption_length`` (data.max_caption_length: training cuts them to it) and
        the val and test references longer than ``max_length`` (decode.max_length: no decoded
        caption is that long), with the longest of those."""
        every = sorted(length for lengths in self.lengths.values() for length in lengths)
        scored = [n for split in ("val", "test") for n in self.lengths.get(split, [])]
        return {
            "median": every[(len(every) - 1) // 2] if every else 0,
            "p95": every[math.ceil(0.95 * len(every)) - 1] if every else 0,
            "longest": every[-1] if every else 0,
            "train_cut": sum(n > max_caption_length for n in self.lengths.get("train", [])),
            "references_too_long": sum(n > max_length for n in scored),
            "longest_reference": max(scored, default=0),
        }

    def paths(self, status: str, splits: Sequence[str] = SPLITS) -> list[str]:
        """Image paths with a check status, in record order, among records of `splits`."""
        seen: dict[str, None] = {}
        for record in self.records:
            if record.split in splits and self.checks[record.image_path].status == status:
                seen[record.image_path] = None
        return list(seen)

    def split_of(self, path: str) -> list[str]:
        return sorted({record.split for record in self.records if record.image_path == path})

    def stops_training(self, bad_images: str) -> list[str]:
        """Why `captioner.train` would stop on this data (empty: it would run).

        The loader refuses a missing image of any split; training decodes the train and val
        images: a bad val image always stops it (validation decodes every image), a bad train
        image unless ``data.bad_images`` is "skip" (with or without the feature cache), and under
        "skip" a train split none of whose images decodes. A train split without one word seen
        ``min_word_count`` times stops it too.
        """
        reasons = []
        for split in ("train", "val"):
            if not self.splits.get(split):
                reasons.append(f"the {split} split has no images")
        if self.splits.get("train") and (lacking := self.vocab.lacks_words(self.min_word_count)):
            reasons.append(lacking.partition(";")[0])
        missing = self.paths(MISSING)
        if missing:
            reasons.append(f"{len(missing)} image(s) referenced but missing")
        bad_val = self.paths(BAD, ("val",))
        if bad_val:
            reasons.append(f"{len(bad_val)} val image(s) do not decode (validation reads them all)")
        bad_train = self.paths(BAD, ("train",))
        if bad_train and bad_images == "error":
            reasons.append(f"{len(bad_train)} train image(s) do not decode (data.bad_images=error)")
        if leaks := in_several_splits(self.records):
            reasons.append(
                f"{len(leaks)} image(s) listed in more than one split (training would see val or "
                "test images)"
            )
        train_images = {record.image_path for record in self.records if record.split == "train"}
        if bad_train and bad_images == "skip" and train_images <= set(bad_train):
            reasons.append(
                "no train image decodes, so data.bad_images=skip leaves none to train on"
            )
        return reasons

    def to_json(self, bad_images: str, lengths: dict[str, int]) -> dict[str, Any]:
        """A plain dict of the whole report, for --json (``lengths``: `caption_lengths`')."""
        return {
            "images": len({record.image_path for record in self.records}),
            "splits": self.splits,
            "drawn": self.drawn,
            "captions": self.captions,
            "missing": self.paths(MISSING),
            "bad": {path: self.checks[path].reason for path in self.paths(BAD)},
            "listed_twice": self.listed_twice,
            "same_bytes": self.same_bytes,
            "empty_captions": [list(item) for item in self.empty_captions],
            "run_on_captions": len(self.run_on),
            "caption_lengths": lengths,
            "stops_training": self.stops_training(bad_images),
        }


def default_workers() -> int:
    """Threads for decoding: the CPUs this process may use (Pillow decodes without the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
