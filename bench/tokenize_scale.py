"""Chinese captions at AI Challenger's size through the tokenizer and the vocabulary.

    python bench/tokenize_scale.py            # ~1 min here

AI Challenger 2017 (AIC-ICC) has 1,050,000 training and 150,000 validation captions, five per
image, of about 10-40 Chinese characters with a comma or two and often a final full stop. This
script draws 1,200,000 such captions from a Zipf-distributed set of 4,000 characters, then times,
on the same captions:

- `tokenize` as it is: a caption of Chinese characters, their punctuation and whitespace alone
  takes a fast path;
- the general path it would otherwise take: the characters spaced apart, then nltk's Treebank
  rules until the words settle (`tokenize` of the caption with one ASCII letter added, whose
  token is then dropped), on a sample of ``--sample`` captions, extrapolated;
- `Vocabulary.build` over the training captions, as `captioner.train` and `check_data` build it;
- `load_records("aic", ...)` of the captions written as AI Challenger's two caption files
  (210,000 and 30,000 images, five captions each; the images are not looked for);
- `check_data`'s report of those records (`DataReport.build`: every caption's length, the
  training vocabulary), which tokenizes each caption once, against the way before 2026-12-08:
  the lengths, then `Vocabulary.build` tokenizing the training captions again.

Both paths must give the same tokens (checked on the sample; tests/test_feature_cache.py checks
it against nltk itself).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from captioner.data import load_records  # noqa: E402
from captioner.data.check import DataReport  # noqa: E402
from captioner.data.vocab import Vocabulary, tokenize  # noqa: E402
from recurrent.errors import ArgumentParser, UserError, run_cli  # noqa: E402

TRAIN_CAPTIONS, VAL_CAPTIONS = 1_050_000, 150_000
AIC_TRAIN = "caption_train_annotations_20170902"
AIC_VAL = "caption_validation_annotations_20170910"
FIRST_HAN = 0x4E00


def synthetic_captions(count: int, seed: int) -> list[str]:
    """``count`` captions of 10-40 characters of a Zipf-distributed 4,000, with commas and (most
    of them) a final full stop, as AI Challenger's."""
    rng = np.random.default_rng(seed)
    characters = [chr(FIRST_HAN + i) for i in rng.permutation(20_000)[:4_000]]
    weights = 1.0 / np.arange(1, len(characters) + 1)
    lengths = rng.integers(10, 41, count)
    draws = rng.choice(len(characters), size=int(lengths.sum()), p=weights / weights.sum())
    ends = rng.random(count)
    captions, position = [], 0
    for index, length in enumerate(lengths):
        text = [characters[i] for i in draws[position : position + length]]
        position += length
        text.insert(length // 2, "，")
        captions.append("".join(text) + ("。" if ends[index] < 0.7 else ""))
    return captions


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=20_000, help="captions the slow path takes")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of AI Challenger")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale must be in (0, 1], got {args.scale}")
    if args.sample < 1:
        raise UserError(f"--sample must be at least 1, got {args.sample}")
    print(machine())
    count = round((TRAIN_CAPTIONS + VAL_CAPTIONS) * args.scale)
    started = time.perf_counter()
    captions = synthetic_captions(count, args.seed)
    print(f"{count:,} synthetic captions drawn in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    tokens = [tokenize(caption) for caption in captions]
    fast = time.perf_counter() - started
    sample = captions[: args.sample]
    started = time.perf_counter()
    general = [tokenize("x" + caption)[1:] for caption in sample]  # "x" leaves the fast path
    slow = (time.perf_counter() - started) / len(sample) * count
    if general != tokens[: len(sample)]:
        raise SystemExit("the fast path and the general path gave different tokens")
    print(f"tokenize, fast path: {fast:.1f} s ({fast / count * 1e6:.1f} us a caption)")
    print(
        f"tokenize, general path: {slow:.1f} s extrapolated from {len(sample):,} captions "
        f"({slow / count * 1e6:.1f} us a caption): the fast path is {slow / fast:.1f}x faster"
    )
    train = captions[: round(TRAIN_CAPTIONS * args.scale)]
    started = time.perf_counter()
    vocab = Vocabulary.build(train, min_count=5)
    print(
        f"Vocabulary.build over {len(train):,} training captions: "
        f"{time.perf_counter() - started:.1f} s, {len(vocab) - 4:,} characters seen 5 times"
    )
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for stem, part in ((AIC_TRAIN, train), (AIC_VAL, captions[len(train) :])):
            items = [
                {"url": "", "image_id": f"{stem}_{i:07d}.jpg", "caption": part[i : i + 5]}
                for i in range(0, len(part), 5)
            ]
            files.append(Path(folder) / f"{stem}.json")
            files[-1].write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
        size = sum(file.stat().st_size for file in files) / 1e6
        started = time.perf_counter()
        records = load_records("aic", files, folder, check_images=False)
        print(
            f"load_records('aic') of the two files ({size:.0f} MB, {len(records):,} images): "
            f"{time.perf_counter() - started:.1f} s"
        )
    started = time.perf_counter()
    report = DataReport.build(records, {}, min_word_count=5)
    once = time.perf_counter() - started
    started = time.perf_counter()
    lengths = [len(tokenize(text)) for record in records for text in record.captions]
    twice_vocab = Vocabulary.build(
        (text for record in records if record.split == "train" for text in record.captions), 5
    )
    twice = time.perf_counter() - started
    if report.vocab.to_list() != twice_vocab.to_list() or sorted(lengths) != sorted(
        n for split in report.lengths.values() for n in split
    ):
        raise SystemExit("the report's vocabulary or lengths differ from the way before")
    print(
        f"check_data's report (DataReport.build): {once:.1f} s, tokenizing each caption once; "
        f"the way before (the lengths, then Vocabulary.build): {twice:.1f} s ({twice / once:.2f}x)"
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
