"""CIDEr-D (Vedantam et al. 2015), computed exactly as pycocoevalcap's ``CiderScorer``, with the
document frequencies fixed once and each image's reference vectors cached: the reward of
self-critical training and the per-image score of ``captioner.compare``.

    cider = CiderD(references)                  # references[i]: the captions of image i
    cider.scores(["a red circle", ...], [0, ...])  # CIDEr-D of each candidate against its image

Definition (pycocoevalcap ``cider_scorer.py``, the COCO server's CIDEr-D). Captions become words
with `captioner.data.tokenize` (the project's one tokenisation; pass a list of words to skip it).
For n = 1..4, a caption's n-gram vector holds tf * idf per n-gram: tf its count in the caption,
idf = log(number of images) - log(max(1, df)), df the number of images whose references contain
the n-gram. Against each reference of the image, per n:

    sim_n = sum_g min(h_g, r_g) * r_g / (|h_n| |r_n|) * exp(-(l_h - l_r)^2 / (2 * 6^2))

(the clipping of "-D", and a Gaussian length penalty with sigma 6; the lengths l are the
captions' numbers of bigrams, which is what pycocoevalcap counts, i.e. words - 1). A candidate's
CIDEr-D is 10 * mean over n of the mean over the image's references of sim_n; a corpus score is the
mean over images. Papers report it x100.

The document frequencies are the "corpus" mode of pycocoevalcap: computed from the references the
`CiderD` is built with. Built from the training references (self-critical training), a score
differs from pycocoevalcap's on a test set, which takes them from the test references; built from
the scored set's references (`corpus_cider_d`), it equals it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

from captioner.data import tokenize

Caption = str | Sequence[str]  # a caption string, or its words already tokenised
NGRAM_ORDER = 4
SIGMA = 6.0


def caption_words(caption: Caption) -> list[str]:
    """`tokenize` a caption string; a list of words is taken as it is."""
    return tokenize(caption) if isinstance(caption, str) else list(caption)


def ngram_counts(words: Sequence[str], order: int = NGRAM_ORDER) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of ``words`` for n = 1..order (pycocoevalcap's ``precook``)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, order + 1):
        counts.update(zip(*(words[start:] for start in range(n)), strict=False))
    return counts


class _Vector:
    """A caption's tf-idf n-gram vector: values per n-gram, norm per order, length in bigrams."""

    __slots__ = ("values", "norms", "length")

    def __init__(self, counts: Counter[tuple[str, ...]], idf: Mapping, default_idf: float) -> None:
        values = {}
        squares = [0.0] * (NGRAM_ORDER + 1)  # by n-gram order n = 1..4
        length = 0
        for gram, count in counts.items():
            value = count * idf.get(gram, default_idf)
            values[gram] = value
            n = len(gram)
            squares[n] += value * value
            if n == 2:
                length += count
        self.values = values
        self.norms = [math.sqrt(square) for square in squares]
        self.length = length


class _ImageReferences:
    """One image's references, inverted: n-gram -> (its order n, [(reference, tf-idf value)])."""

    __slots__ = ("postings", "norms", "lengths")

    def __init__(self, vectors: list[_Vector]) -> None:
        self.postings: dict[tuple[str, ...], tuple[int, list[tuple[int, float]]]] = {}
        for index, vector in enumerate(vectors):
            for gram, value in vector.values.items():
                entry = self.postings.get(gram)
                if entry is None:
                    entry = self.postings[gram] = (len(gram), [])
                entry[1].append((index, value))
        self.norms = [vector.norms for vector in vectors]
        self.lengths = [vector.length for vector in vectors]


class CiderD:
    """CIDEr-D with document frequencies from ``references`` (one list of captions per image).

    ``references`` is a sequence (image keys 0, 1, ...) or a mapping {key: captions}. The n-gram
    statistics and every image's reference vectors are computed once here; `scores` then costs
    one pass over each candidate's n-grams and the references that share them.
    """

    def __init__(
        self, references: Sequence[Sequence[Caption]] | Mapping[Hashable, Sequence[Caption]]
    ) -> None:
        items = references.items() if isinstance(references, Mapping) else enumerate(references)
        words = {key: [caption_words(caption) for caption in captions] for key, captions in items}
        if not words:
            raise ValueError("CiderD needs the references of at least one image")
        for key, captions in words.items():
            if not captions:
                raise ValueError(f"image {key!r} has no reference captions")
        document_frequency: Counter[tuple[str, ...]] = Counter()
        counts = {key: [ngram_counts(caption) for caption in refs] for key, refs in words.items()}
        for image_counts in counts.values():
            document_frequency.update({gram for count in image_counts for gram in count})
        self.num_images = len(words)
        self.log_images = math.log(float(self.num_images))
        self.idf = {
            gram: self.log_images - math.log(max(1.0, df))
            for gram, df in document_frequency.items()
        }
        self._images = {
            key: _ImageReferences([self._vector(count) for count in image_counts])
            for key, image_counts in counts.items()
        }

    def __contains__(self, key: Hashable) -> bool:
        return key in self._images

    def _vector(self, counts: Counter[tuple[str, ...]]) -> _Vector:
        # An n-gram no reference holds has df 0 -> max(1, 0) = 1: idf log(number of images).
        return _Vector(counts, self.idf, self.log_images)

    def score(self, candidate: Caption, key: Hashable) -> float:
        """CIDEr-D of one candidate against the references of image ``key``."""
        references = self._images[key]
        vector = self._vector(ngram_counts(caption_words(candidate)))
        width = NGRAM_ORDER + 1
        overlap = [0.0] * (len(references.lengths) * width)  # [reference * width + n]
        postings = references.postings
        for gram, value in vector.values.items():
            entry = postings.get(gram)
            if entry is not None:
                n, shared = entry
                for index, ref_value in shared:
                    overlap[index * width + n] += (
                        value if value < ref_value else ref_value
                    ) * ref_value
        total = 0.0
        norms = vector.norms
        for index, (ref_length, ref_norms) in enumerate(
            zip(references.lengths, references.norms, strict=True)
        ):
            delta = float(vector.length - ref_length)
            penalty = math.exp(-(delta * delta) / (2 * SIGMA**2))
            for n in range(1, width):
                value = overlap[index * width + n]
                if norms[n] != 0 and ref_norms[n] != 0:
                    value /= norms[n] * ref_norms[n]
                total += value * penalty
        return 10.0 * total / NGRAM_ORDER / len(references.lengths)

    def scores(self, candidates: Sequence[Caption], keys: Iterable[Hashable]) -> list[float]:
        """CIDEr-D of each candidate against the references of its image (``keys[i]``)."""
        keys = list(keys)
        if len(keys) != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {len(keys)} image keys")
        return [self.score(candidate, key) for candidate, key in zip(candidates, keys, strict=True)]


def corpus_cider_d(
    references: Sequence[Sequence[Caption]], candidates: Sequence[Caption]
) -> tuple[float, list[float]]:
    """(corpus CIDEr-D, per-image CIDEr-D) of ``candidates[i]`` against ``references[i]``, with
    document frequencies from these references: pycocoevalcap's ``Cider().compute_score``."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} reference sets but {len(candidates)} candidates")
    if not candidates:
        return 0.0, []
    per_image = CiderD(references).scores(candidates, range(len(candidates)))
    return sum(per_image) / len(per_image), per_image
