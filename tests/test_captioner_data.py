"""Tests of the captioner's data layer: formats, images, vocabulary, transforms, datasets, scenes.

Every fixture is written into tmp_path by the test itself (tiny PNGs drawn with PIL); nothing is
downloaded. CPU only, a few seconds in all.
"""

from __future__ import annotations

import codecs
import csv
import errno
import gzip
import io
import json
import os
import random
import struct
import subprocess
import sys
import threading
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.models import get_weight
from torchvision.transforms import v2

from captioner import scenes
from captioner.data import (
    CaptionPairs,
    ImageOnly,
    ImageRecord,
    Vocabulary,
    build_transforms,
    collate_pairs,
    hashed_split,
    join_words,
    load_aic,
    load_image,
    load_records,
    normalization_stats,
    select_split,
    tokenize,
)
from captioner.data import datasets as datasets_module
from captioner.data import images as images_module
from captioner.data import vocab as vocab_module
from captioner.data.datasets import load_image_tensor
from captioner.data.formats import (
    exact_split,
    in_several_splits,
    relative_names,
    sniff_format,
    split_draw,
    tab_separated,
)
from captioner.data.vocab import MAX_WORDS, SPECIALS, _treebank_words
from recurrent.errors import UserError, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def _raises_one_line(call, *needles: str) -> str:
    """Run `call`, expect a UserError with a one-line message containing every needle."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    for needle in needles:
        assert needle in message, message
    return message


# --------------------------------------------------------------------------------------------
# Karpathy


def _karpathy(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "dataset_test.json"
    path.write_text(json.dumps({"dataset": "test", "images": entries}))
    return path


def _entry(name: str, split: str, captions: list[str], filepath: str | None = "imgs") -> dict:
    entry = {
        "filename": name,
        "split": split,
        "sentences": [{"tokens": tokenize(c), "raw": c} for c in captions],
    }
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def test_karpathy_paths_splits_restval_and_scene_meta(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _png(tmp_path / "imgs" / name)
    _png(tmp_path / "e.png")
    entries = [
        _entry("a.png", "train", ["A dog.", "A brown dog runs."]),
        _entry("b.png", "restval", ["a cat"]),
        _entry("c.png", "val", ["a bird"]),
        _entry("d.png", "test", ["a fish"]),
        _entry("e.png", "train", ["no folder"], filepath=None),
    ]
    entries[0]["scene"] = {"objects": [{"shape": "circle"}]}
    del entries[3]["sentences"][0]["raw"]  # tokens only: joined
    path = _karpathy(tmp_path, entries)

    records = load_records("karpathy", path, tmp_path)
    assert [r.split for r in records] == ["train", "train", "val", "test", "train"]
    assert records[0].image_path == str(tmp_path / "imgs" / "a.png")
    assert records[4].image_path == str(tmp_path / "e.png")
    assert records[0].captions == ("A dog.", "A brown dog runs.")
    assert records[3].captions == ("a fish",)
    assert records[0].meta == {"objects": [{"shape": "circle"}]}
    assert records[1].meta is None

    dropped = load_records("karpathy", path, tmp_path, restval_to_train=False)
    assert [Path(r.image_path).name for r in dropped] == ["a.png", "c.png", "d.png", "e.png"]
    # image_root defaults to the annotation file's folder
    assert load_records("karpathy", path, None) == records


@pytest.mark.parametrize("fmt", ["csv", "karpathy", "jsonl"])
@pytest.mark.parametrize(
    "encode, said",
    [
        (gzip.compress, "1): it is gzip-compressed: decompress it (gunzip) first"),
        # Excel's "Unicode Text" and Notepad's "Unicode": UTF-16 with a BOM
        (lambda data: data.decode().encode("utf-16"), "0): it is UTF-16 text: re-save it as UTF-8"),
        # a BOM, then Latin-1: the offset counts the BOM's 3 bytes, as the file's bytes do
        (
            lambda data: codecs.BOM_UTF8 + data.replace(b"dog", b"d\xf6g"),
            "{offset}); convert it to UTF-8 first",
        ),
    ],
)
def test_annotations_that_are_not_utf8_say_what_they_are(tmp_path, fmt, encode, said) -> None:
    texts = {
        "csv": "image,caption\na.png,a dog\n",
        "karpathy": json.dumps({"images": [_entry("a.png", "train", ["a dog"])]}),
        "jsonl": json.dumps({"image": "a.png", "caption": "a dog"}) + "\n",
    }
    path = tmp_path / f"captions.{fmt}"
    path.write_bytes(encode(texts[fmt].encode()))
    offset = path.read_bytes().find(b"\xf6")
    message = _raises_one_line(lambda: load_records(fmt, path, tmp_path, check_images=False))
    assert message == f"{path} is not UTF-8 text (bad byte at offset " + said.format(offset=offset)


def test_karpathy_bad_input(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    missing = _karpathy(tmp_path, [_entry("a.png", "train", ["x"]), _entry("zz.png", "val", ["y"])])
    _raises_one_line(lambda: load_records("karpathy", missing, tmp_path), "zz.png", "not found")
    # without the check the missing image is accepted
    assert len(load_records("karpathy", missing, tmp_path, check_images=False)) == 2

    bad_split = _karpathy(tmp_path, [_entry("a.png", "training", ["x"])])
    _raises_one_line(lambda: load_records("karpathy", bad_split, tmp_path), "training", "restval")
    # one file in two splits (a test image trained on): found, for training to refuse
    leak = _karpathy(tmp_path, [_entry("a.png", "test", ["x"]), _entry("a.png", "restval", ["y"])])
    found = in_several_splits(load_records("karpathy", leak, tmp_path))
    assert found == {str(tmp_path / "imgs" / "a.png"): ["test", "train"]}

    malformed = tmp_path / "broken.json"
    malformed.write_text('{"images": [\n  {"filename": "a.png",, }\n]}')
    _raises_one_line(
        lambda: load_records("karpathy", malformed, tmp_path), "broken.json", "line 2 column"
    )
    no_images = tmp_path / "other.json"
    no_images.write_text('{"annotations": []}')
    _raises_one_line(lambda: load_records("karpathy", no_images, tmp_path), "'images'")
    no_sentences = _karpathy(tmp_path, [{"filename": "a.png", "split": "train"}])
    _raises_one_line(lambda: load_records("karpathy", no_sentences, tmp_path), "sentences")
    _raises_one_line(
        lambda: load_records("karpathy", tmp_path / "nope.json", tmp_path), "nope.json", "not found"
    )
    empty = _karpathy(tmp_path, [])
    _raises_one_line(lambda: load_records("karpathy", empty, tmp_path), "no captioned images")
    _raises_one_line(lambda: load_records("yaml", empty, tmp_path), "yaml", "karpathy")


def test_select_split(tmp_path: Path) -> None:
    records = [ImageRecord("/a.png", ("x",), "train"), ImageRecord("/b.png", ("y",), "val")]
    assert select_split(records, "val") == [records[1]]
    # splits the file gives: no fraction brings a test image (one said to raise it)
    _raises_one_line(
        lambda: select_split(records, "test", source="ann.json"),
        "the 'test' split of 'ann.json' has no images; give some of its images the 'test' split",
    )
    drawn = [ImageRecord(r.image_path, r.captions, r.split, drawn=True) for r in records]
    _raises_one_line(lambda: select_split(drawn, "test"), "raise data.test_fraction")
    _raises_one_line(lambda: select_split(drawn[:1], "val"), "raise data.val_fraction")
    _raises_one_line(lambda: select_split(records, "dev"), "dev")


def test_kaggles_flickr30k_results_csv_reads_as_the_same_rows_in_a_csv(tmp_path: Path) -> None:
    """Kaggle's Flickr30k: "image_name| comment_number| comment", cells after "| ", quoting
    nothing (a caption may begin with a quote); its one known broken line (the separator before
    the caption missing) is refused naming the line."""
    for name in ("1.jpg", "2.jpg"):
        _png(tmp_path / "images" / name)
    captions = ['"Stop" says a sign .', "A dog, running .", "Two men ."]
    rows = [("1.jpg", captions[0]), ("1.jpg", captions[1]), ("2.jpg", captions[2])]
    piped = tmp_path / "results.csv"
    lines = [f"{image}| {k}| {caption}" for k, (image, caption) in enumerate(rows)]
    piped.write_text("image_name| comment_number| comment\n" + "\n".join(lines) + "\n")
    plain = tmp_path / "plain.csv"
    with plain.open("w", newline="") as stream:
        csv.writer(stream).writerows([("image", "caption"), *rows])
    assert load_records("csv", piped, tmp_path / "images", seed=3) == load_records(
        "csv", plain, tmp_path / "images", seed=3
    )
    text = piped.read_text()
    piped.write_text(text + "2.jpg| 4   A dog runs across the grass .\n")
    _raises_one_line(
        lambda: load_records("csv", piped, tmp_path / "images"),
        "csv' line 5 has 2 fields, the header 3: a '|' is missing between its cells",
    )
    piped.write_text(text + "2.jpg| 4| Two men | one ball .\n")
    _raises_one_line(
        lambda: load_records("csv", piped, tmp_path / "images"),
        "csv' line 5 has 4 fields, the header 3; take the '|' out of its caption",
    )


# --------------------------------------------------------------------------------------------
# Flickr8k


def test_flickr8k(tmp_path: Path) -> None:
    names = ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    for name in names:
        _png(tmp_path / "Images" / name)
    token_lines = [
        f"{name}#{k}\tcaption {k} of {name}" for name in [*names, "stray.jpg"] for k in (0, 1)
    ]
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("\n".join(token_lines) + "\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("1.jpg\n2.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("3.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("4.jpg\n")

    records = load_records("flickr8k", token, tmp_path / "Images")
    assert [r.split for r in records] == ["train", "train", "val", "test"]
    assert records[2].captions == ("caption 0 of 3.jpg", "caption 1 of 3.jpg")
    assert records[0].image_path == str(tmp_path / "Images" / "1.jpg")

    # a name listed twice would be two records of one image (in two lists: trained and scored)
    (tmp_path / "Flickr_8k.testImages.txt").write_text("4.jpg\n1.jpg\n")
    _raises_one_line(
        lambda: load_records("flickr8k", token, tmp_path / "Images"),
        "Flickr_8k.testImages.txt' line 2",
        "'1.jpg' is already in the train list",
    )
    (tmp_path / "Flickr_8k.devImages.txt").unlink()
    _raises_one_line(
        lambda: load_records("flickr8k", token, tmp_path / "Images"), "Flickr_8k.devImages.txt"
    )
    # Flickr8k's token file wants its lists, even all of them gone (a different split than the
    # papers' would come silently); Flickr30k's has none and draws its splits
    for name in ("trainImages", "testImages"):
        (tmp_path / f"Flickr_8k.{name}.txt").unlink()
    _raises_one_line(
        lambda: load_records("flickr8k", token, tmp_path / "Images"), "Flickr_8k.trainImages.txt"
    )
    flickr30k = token.rename(tmp_path / "results_20130124.token")
    _raises_one_line(
        lambda: load_records("flickr8k", flickr30k, tmp_path / "Images"), "stray.jpg' not found"
    )
    _png(tmp_path / "Images" / "stray.jpg")
    drawn = load_records("flickr8k", flickr30k, tmp_path / "Images", val_fraction=0.3, seed=4)
    expected = hashed_split({name: name for name in [*names, "stray.jpg"]}, 0.3, 0.05, 4)
    assert {Path(r.image_path).name: r.split for r in drawn} == expected
    assert set(expected.values()) == {"train", "val", "test"}
    assert all(r.drawn for r in drawn)
    assert drawn[1].captions == ("caption 0 of 2.jpg", "caption 1 of 2.jpg")


def test_flickr8k_cn_loads_as_the_same_data_written_as_flickr8k(tmp_path: Path) -> None:
    """Flickr8k-CN (Li et al. 2016): Flickr8k's images, Chinese captions in lines of
    ``NAME#zhc#N caption`` (a space, not a tab; names without ".jpg") and split lists
    flickr7k{train,val,test}.txt of such names. It loads as the same captions written as the
    original Flickr8k's files load (the reference), the stray captioned image left out as there;
    a missing list is named, and the file read as another format is named a Flickr token file."""
    names = ["1000268201_693b08cb0e", "1001773457_577c3a7d70", "1002674143_1b742ab4b8",
             "1003163366_44323f5815"]  # fmt: skip
    for name in names:
        _png(tmp_path / "Images" / f"{name}.jpg")
    captions = {
        name: [f"一只狗在草地上奔跑{i}", f"两个 孩子 在 玩 {i}"] for i, name in enumerate(names)
    }
    captions["2258277193_586949ec62"] = ["不在任何列表中"]
    splits = {"train": names[:2], "val": names[2:3], "test": names[3:]}
    chinese, english = tmp_path / "cn", tmp_path / "en"
    chinese.mkdir()
    english.mkdir()
    token = chinese / "flickr8kzhc.caption.txt"
    token.write_text(
        "".join(f"{n}#zhc#{k} {c}\n" for n, texts in captions.items() for k, c in enumerate(texts)),
        encoding="utf-8",
    )
    for split, listed in splits.items():
        (chinese / f"flickr7k{split}.txt").write_text("".join(f"{n}\n" for n in listed))
        dev = {"val": "dev"}.get(split, split)
        (english / f"Flickr_8k.{dev}Images.txt").write_text("".join(f"{n}.jpg\n" for n in listed))
    (english / "Flickr8k.token.txt").write_text(
        "".join(
            f"{n}.jpg#{k}\t{c}\n" for n, texts in captions.items() for k, c in enumerate(texts)
        ),
        encoding="utf-8",
    )
    records = load_records("flickr8k", token, tmp_path / "Images")
    assert records == load_records("flickr8k", english / "Flickr8k.token.txt", tmp_path / "Images")
    assert [(Path(r.image_path).name, r.split) for r in records] == [
        (f"{names[0]}.jpg", "train"), (f"{names[1]}.jpg", "train"), (f"{names[2]}.jpg", "val"),
        (f"{names[3]}.jpg", "test"),
    ]  # fmt: skip
    assert records[3].captions == ("一只狗在草地上奔跑3", "两个 孩子 在 玩 3")
    assert sniff_format(token) == "flickr8k"
    _raises_one_line(
        lambda: load_records("karpathy", token, tmp_path / "Images"),
        f"'{token}' looks like a Flickr token file",
    )
    (chinese / "flickr7kval.txt").unlink()
    _raises_one_line(
        lambda: load_records("flickr8k", token, tmp_path / "Images"),
        f"Flickr8k split list '{chinese / 'flickr7kval.txt'}' not found; put flickr7kval.txt next",
    )
    for split in ("train", "test"):
        (chinese / f"flickr7k{split}.txt").unlink()
    _raises_one_line(
        lambda: load_records("flickr8k", token, tmp_path / "Images"),
        "put Flickr_8k.trainImages.txt (for Flickr8k-CN, its flickr8ktrain.txt) next to",
    )
    token.write_text(f"{names[0]}#zhc# 没有编号\n", encoding="utf-8")
    _raises_one_line(
        lambda: load_records("flickr8k", token, tmp_path / "Images"),
        "line 1 is not 'IMAGE.jpg#N<TAB>caption' (or Flickr8k-CN's 'IMAGE#zhc#N caption')",
    )


def test_flickr8k_cn_as_its_repository_holds_it(tmp_path: Path) -> None:
    """Flickr8k-CN as github.com/li-xirong/flickr8kcn's data/ folder holds it: caption lines
    ``1000268201_693b08cb0e.jpg#zhc#0 一个...`` (its names keep their ".jpg") and split lists
    flickr8k{train,val,test}.txt of names without it. The lists were looked for only as
    flickr7k{train,val,test}.txt, so the README's command stopped with 'put
    Flickr_8k.trainImages.txt (for Flickr8k-CN, its flickr7ktrain.txt) next to' a folder that holds
    every file it needs. It loads as the same captions written as Flickr8k's own files load."""
    names = ["1000268201_693b08cb0e", "1001773457_577c3a7d70", "1002674143_1b742ab4b8"]
    for name in names:
        _png(tmp_path / "Images" / f"{name}.jpg")
    data, english = tmp_path / "flickr8kcn" / "data", tmp_path / "en"
    data.mkdir(parents=True)
    english.mkdir()
    captions = {name: [f"一个小女孩穿着粉红色的衣服爬楼梯{i}", "两只狗在草地上"] for i, name in
                enumerate(names)}  # fmt: skip
    token = data / "flickr8kzhc.caption.txt"
    token.write_text(
        "".join(
            f"{n}.jpg#zhc#{k} {c}\n" for n, texts in captions.items() for k, c in enumerate(texts)
        ),
        encoding="utf-8",
    )
    (english / "Flickr8k.token.txt").write_text(
        "".join(
            f"{n}.jpg#{k}\t{c}\n" for n, texts in captions.items() for k, c in enumerate(texts)
        ),
        encoding="utf-8",
    )
    for split, name in zip(("train", "val", "test"), names, strict=True):
        (data / f"flickr8k{split}.txt").write_text(f"{name}\n", encoding="utf-8")
        dev = {"val": "dev"}.get(split, split)
        (english / f"Flickr_8k.{dev}Images.txt").write_text(f"{name}.jpg\n", encoding="utf-8")
    records = load_records("flickr8k", token, tmp_path / "Images")
    assert records == load_records("flickr8k", english / "Flickr8k.token.txt", tmp_path / "Images")
    assert [r.split for r in records] == ["train", "val", "test"]
    (data / "flickr8kval.txt").unlink()
    _raises_one_line(
        lambda: load_records("flickr8k", token, tmp_path / "Images"),
        f"Flickr8k split list '{data / 'flickr8kval.txt'}' not found; put flickr8kval.txt next",
    )


# --------------------------------------------------------------------------------------------
# COCO


def _by_draw(
    name: str, val_fraction: float, test_fraction: float, seed: int = 0, rest: str = "train"
) -> str:
    """The split an image's own draw gives it: test below test_fraction, then val."""
    draw = split_draw(name, seed)
    return (
        "test" if draw < test_fraction else "val" if draw < test_fraction + val_fraction else rest
    )


def _coco(path: Path, names: list[str]) -> Path:
    images = [{"id": i, "file_name": name} for i, name in enumerate(names)]
    annotations = [
        {"image_id": i, "id": 10 * i + k, "caption": f"caption {k} of {name} "}
        for i, name in enumerate(names)
        for k in range(2)
    ]
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_train_only_carves_val_and_test(tmp_path: Path) -> None:
    names = [f"COCO_train2014_{i:03d}.jpg" for i in range(20)]
    for name in names:
        _png(tmp_path / "train2014" / name)
    train = _coco(tmp_path / "captions_train2014.json", names)
    records = load_records("coco", train, tmp_path, val_fraction=0.1, test_fraction=0.1, seed=3)
    splits = [r.split for r in records]
    # each image's own draw, by its file name: the same however the image root is spelled
    assert splits == [_by_draw(name, 0.1, 0.1, seed=3) for name in names]
    assert set(splits) == {"train", "val", "test"} and all(r.drawn for r in records)
    inner = load_records("coco", train, tmp_path / "train2014", val_fraction=0.1,
                         test_fraction=0.1, seed=3)  # fmt: skip
    assert inner == records
    assert records[0].image_path == str(tmp_path / "train2014" / names[0])
    assert records[0].captions == (f"caption 0 of {names[0]}", f"caption 1 of {names[0]}")
    again = load_records("coco", [train], tmp_path, val_fraction=0.1, test_fraction=0.1, seed=3)
    assert [r.split for r in again] == splits


def test_coco_train_and_val_files(tmp_path: Path) -> None:
    train_names = [f"t{i}.jpg" for i in range(6)]
    val_names = [f"v{i}.jpg" for i in range(10)]
    for name in train_names + val_names:
        _png(tmp_path / name)  # flat image root, no train2014/ folder
    train = _coco(tmp_path / "captions_train2014.json", train_names)
    val = _coco(tmp_path / "captions_val2014.json", val_names)
    records = load_records("coco", [train, val], tmp_path)
    by_split = {
        s: [Path(r.image_path).name for r in records if r.split == s]
        for s in ("train", "val", "test")
    }
    assert by_split["train"] == train_names
    # the val file is shared between val and test in the proportion of their fractions: a val
    # image is test when its draw falls below test / (val + test), half by default
    assert by_split["test"] == [name for name in val_names if _by_draw(name, 0.0, 0.5) == "test"]
    assert by_split["val"] == [name for name in val_names if name not in by_split["test"]]
    assert by_split["val"] and by_split["test"]
    assert [r.drawn for r in records] == [False] * len(train_names) + [True] * len(val_names)
    skewed = load_records("coco", [train, val], tmp_path, val_fraction=0.2, test_fraction=0.6)
    assert [r.split for r in skewed[len(train_names) :]] == [
        _by_draw(name, 0.0, 0.75, rest="val") for name in val_names
    ]
    assert Counter(r.split for r in skewed)["test"] > len(by_split["test"])

    only_val = load_records("coco", val, tmp_path)
    assert {r.split for r in only_val} == {"val", "test"}
    _raises_one_line(
        lambda: select_split(only_val, "train", source=val), "train", "captions_val2014"
    )

    renamed = _coco(tmp_path / "my_captions.json", train_names)
    _raises_one_line(lambda: load_records("coco", renamed, tmp_path), "my_captions.json", "rename")

    # an image in both files would be trained on and scored: found, for training to refuse
    leaky = _coco(tmp_path / "captions_leaky_val2014.json", [*val_names, train_names[2]])
    found = in_several_splits(load_records("coco", [train, leaky], tmp_path))
    assert list(found) == [str(tmp_path / "t2.jpg")] and "train" in found[str(tmp_path / "t2.jpg")]
    # two ids naming one file: the captions of both (the second replaced the first)
    two_ids = _coco(tmp_path / "captions_twice_train2014.json", ["t0.jpg", "t1.jpg", "t0.jpg"])
    [twice] = [
        r for r in load_records("coco", two_ids, tmp_path) if r.image_path.endswith("t0.jpg")
    ]
    assert twice.captions == tuple(f"caption {k} of t0.jpg" for k in range(2)) * 2


# --------------------------------------------------------------------------------------------
# CSV and JSONL


def test_csv_with_split_column_merges_rows(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    absolute = _png(tmp_path / "elsewhere" / "b.png")
    path = tmp_path / "captions.csv"
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "caption", "split"])
        writer.writerow(["imgs/a.png", "a red square, small", "train"])
        writer.writerow([str(absolute), "a green one", "test"])
        writer.writerow(["imgs/a.png", "a red block", "train"])
    records = load_records("csv", path, tmp_path)
    assert records == [
        ImageRecord(
            str(tmp_path / "imgs" / "a.png"), ("a red square, small", "a red block"), "train"
        ),
        ImageRecord(str(absolute), ("a green one",), "test"),
    ]
    assert not any(record.drawn for record in records)  # the file's own splits

    # one image in two splits: a test image's captions would have been trained on
    leak = tmp_path / "leak.csv"
    leak.write_text("image,caption,split\nimgs/a.png,x,train\nimgs/a.png,y,test\n")
    _raises_one_line(
        lambda: load_records("csv", leak, tmp_path), "line 3", "'test'", "keep each image in one"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("image,caption,split\nimgs/a.png,x,holdout\n")
    _raises_one_line(lambda: load_records("csv", bad, tmp_path), "bad.csv", "line 2", "holdout")
    no_column = tmp_path / "nocol.csv"
    no_column.write_text("path,caption\nimgs/a.png,x\n")
    _raises_one_line(lambda: load_records("csv", no_column, tmp_path), "nocol.csv", "'image'")
    for separator, named in (("\t", "tabs"), (";", "semicolons")):  # a spreadsheet's export
        no_column.write_text(f"image{separator}caption\nimgs/a.png{separator}x\n")
        _raises_one_line(
            lambda: load_records("csv", no_column, tmp_path),
            f"separated by commas (its columns are separated by {named})",
        )
    missing = tmp_path / "missing.csv"
    missing.write_text("image,caption\nimgs/a.png,x\nimgs/gone.png,y\n")
    _raises_one_line(lambda: load_records("csv", missing, tmp_path), "line 3", "gone.png")
    # an unquoted comma in a caption cut it short without a word ("a dog")
    comma = tmp_path / "comma.csv"
    comma.write_text('image,caption\nimgs/a.png,"a cat, asleep"\nimgs/a.png,a dog, running\n')
    _raises_one_line(
        lambda: load_records("csv", comma, tmp_path), "comma.csv' line 3 has 3 fields", "quotes"
    )
    # rows that end with a comma (a spreadsheet's empty last column) lose nothing: accepted
    trailing = tmp_path / "trailing.csv"
    trailing.write_text(
        "image,caption,split\nimgs/a.png,a red block,train,\nimgs/a.png,a cube,train, ,\n"
    )
    assert load_records("csv", trailing, tmp_path) == [
        ImageRecord(str(tmp_path / "imgs" / "a.png"), ("a red block", "a cube"), "train")
    ]
    # a quote left open swallowed every row after it into one caption, without a word
    open_quote = tmp_path / "open.csv"
    open_quote.write_text('image,caption\nimgs/a.png,"a red block\nimgs/a.png,a cube\n')
    _raises_one_line(lambda: load_records("csv", open_quote, tmp_path), "open.csv", "quoting")
    # a name is read as written (it may begin with a space), and spaces around a name that
    # names no file are the file's layout ("imgs/a.png , a cube")
    _png(tmp_path / "imgs" / " b.png")
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("image,caption\nimgs/ b.png,a blue one\nimgs/a.png , a cube\n")
    assert [r.image_path for r in load_records("csv", spaced, tmp_path)] == [
        str(tmp_path / "imgs" / " b.png"),
        str(tmp_path / "imgs" / "a.png"),
    ]


def test_jsonl_hashed_split_is_deterministic(tmp_path: Path) -> None:
    lines = []
    for i in range(30):
        _png(tmp_path / f"{i}.png")
        lines += [json.dumps({"image": f"{i}.png", "caption": f"caption {k}"}) for k in range(2)]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    first = load_records("jsonl", path, tmp_path, val_fraction=0.2, test_fraction=0.1, seed=1)
    second = load_records("jsonl", path, tmp_path, val_fraction=0.2, test_fraction=0.1, seed=1)
    other = load_records("jsonl", path, tmp_path, val_fraction=0.2, test_fraction=0.1, seed=2)
    splits = [r.split for r in first]
    assert len(first) == 30 and all(len(r.captions) == 2 for r in first)
    assert splits == [r.split for r in second]
    assert splits != [r.split for r in other]
    assert splits == [_by_draw(f"{i}.png", 0.2, 0.1, seed=1) for i in range(30)]
    assert set(splits) == {"train", "val", "test"} and all(r.drawn for r in first)

    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + "\n" + '{"image": "1.png", "caption": }\n')
    _raises_one_line(lambda: load_records("jsonl", broken, tmp_path), "broken.jsonl", "line 2")


def test_a_split_moves_no_image_when_images_come_and_go_or_the_folder_moves(
    tmp_path: Path,
) -> None:
    """Data without a split column grows: the images already there keep their splits, so a model
    trained before never finds its training images in the new test split."""

    def write(folder: Path, numbers: range) -> Path:
        path = folder / "captions.csv"
        folder.mkdir(exist_ok=True)
        rows = [f"pics/{i}.jpg,caption {k} of {i}" for i in numbers for k in range(2)]
        path.write_text("image,caption\n" + "\n".join(rows) + "\n")
        return path

    def splits(path: Path, val_fraction: float = 0.1, root: Path | None = None) -> dict[str, str]:
        records = load_records(
            "csv", path, root, val_fraction=val_fraction, test_fraction=0.1, seed=7,
            check_images=False,
        )  # fmt: skip
        return {Path(r.image_path).relative_to(path.parent).as_posix(): r.split for r in records}

    before = splits(write(tmp_path / "a", range(0, 300)))
    after = splits(write(tmp_path / "b", range(40, 400)))  # 40 taken out, 100 added, moved
    common = set(before) & set(after)
    assert len(common) == 260 and all(before[name] == after[name] for name in common)
    (tmp_path / "b" / "pics").mkdir()  # the same root, spelled with a detour
    assert splits(tmp_path / "b" / "captions.csv", root=tmp_path / "b" / "pics" / "..") == after
    assert Counter(after.values())["test"] > 20  # about 10% of 360: the shares are kept
    # a larger val fraction takes train images only: no test image moves
    wider = splits(tmp_path / "b" / "captions.csv", val_fraction=0.3)
    assert {n for n, s in wider.items() if s == "test"} == {
        n for n, s in after.items() if s == "test"
    }
    assert {n for n, s in after.items() if s == "val"} < {n for n, s in wider.items() if s == "val"}


def test_split_keys_are_relative_and_in_posix_form(monkeypatch) -> None:
    """A key is the path below the root (a path outside it is its own key, unless written relative
    to the root), with '/' between its parts on every system, so one data set splits alike on
    Linux and Windows."""
    root = Path("/data/set")
    paths = ["/data/set/pics/a.jpg", "/elsewhere/b.jpg"]
    assert relative_names(paths, root / "x" / "..") == {
        paths[0]: "pics/a.jpg",
        paths[1]: "/elsewhere/b.jpg",
    }
    # one the annotations name relative to the root, leaving it: its name as written (normalised)
    written = {paths[0]: "/data/set/pics/a.jpg", paths[1]: "../../elsewhere/./b.jpg"}
    assert relative_names(paths, root, written) == {
        paths[0]: "pics/a.jpg",
        paths[1]: "../../elsewhere/b.jpg",
    }
    monkeypatch.setattr(os, "sep", "\\")  # as Windows' os.path.abspath would give them
    windows = "/data/set/pics\\a.jpg"
    assert relative_names([windows], root) == {windows: "pics/a.jpg"}


@given(
    names=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=40, unique=True),
    added=st.lists(st.text(min_size=1, max_size=6), max_size=40, unique=True),
    val_fraction=st.sampled_from([0.0, 0.05, 0.2, 0.45]),
    test_fraction=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 3),
)
def test_hashed_split_keeps_each_images_draw_and_fills_every_split(
    names: list[str], added: list[str], val_fraction: float, test_fraction: float, seed: int
) -> None:
    keys = {name: name for name in names}
    split = hashed_split(keys, val_fraction, test_fraction, seed)
    assert set(split) == set(names)
    # order plays no part
    assert hashed_split(dict(reversed(keys.items())), val_fraction, test_fraction, seed) == split
    wanted = {"train"} | {s for s, f in (("val", val_fraction), ("test", test_fraction)) if f}
    drawn = {name: _by_draw(name, val_fraction, test_fraction, seed) for name in names}
    if set(drawn.values()) >= wanted:  # every split drew an image: each keeps its own draw ...
        assert split == drawn
        grown = hashed_split(
            {name: name for name in [*names, *added]}, val_fraction, test_fraction, seed
        )
        assert all(grown[name] == split[name] for name in names)  # ... whatever is added
    else:  # small sets: exact counts in the order of the draws
        order = sorted(names, key=lambda name: (split_draw(name, seed), name))
        assert split == exact_split(order, val_fraction, test_fraction)
    # one image stays in train, and each positive fraction gets one whenever that leaves one
    counts = Counter(split.values())
    assert counts["train"] >= 1
    assert counts["val"] >= 1 or not val_fraction or len(names) < 2
    assert counts["test"] >= 1 or not test_fraction or len(names) < 2 + (val_fraction > 0)


def test_exact_split_counts_and_small_sets() -> None:
    keys = [f"k{i}" for i in range(40)]
    split = exact_split(keys, 0.1, 0.2)
    assert split == {
        k: "test" if i < 8 else "val" if i < 12 else "train" for i, k in enumerate(keys)
    }
    assert exact_split(["only", "two"], 0.05, 0.05) == {"only": "val", "two": "train"}
    assert exact_split(["a", "b", "c"], 0.05, 0.05) == {"a": "test", "b": "val", "c": "train"}
    assert exact_split(["x"], 0.3, 0.3) == {"x": "train"}
    assert exact_split([], 0.3, 0.3) == {}


# --------------------------------------------------------------------------------------------
# AI Challenger (AIC-ICC)

AIC_TRAIN = "caption_train_annotations_20170902"
AIC_VAL = "caption_validation_annotations_20170910"


def _aic(folder: Path, stem: str, names: list[str]) -> Path:
    """An AI Challenger caption file of `names` (two Chinese captions each, with the spaces and
    line breaks its captions have), its images in the folder its archive unpacks them to."""
    for name in names:
        _png(folder / stem.replace("annotations", "images") / name)
    items = [
        {"url": f"http://example.com/{name}", "image_id": name,
         "caption": [f"一个人在{name}前面\n", f" 图片{name}里有一个人"]}
        for name in names
    ]  # fmt: skip
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path


def test_aic_files_load_as_the_same_data_in_coco_files_do(tmp_path: Path) -> None:
    """AI Challenger's train and validation files (a JSON list of image_id, captions, url) are
    split as COCO's train and val files are: train from the training file, val and test drawn
    from the validation images; the same images and captions written as COCO files give the
    same records, in each file's images folder, the way both archives unpack."""
    train_names = [f"{i:040x}.jpg" for i in range(6)]
    val_names = [f"{i + 100:040x}.jpg" for i in range(12)]
    aic = [_aic(tmp_path / "aic" / "train", AIC_TRAIN, train_names),
           _aic(tmp_path / "aic" / "validation", AIC_VAL, val_names)]  # fmt: skip
    coco = tmp_path / "coco"
    for stem, names, folder in (("train", train_names, "train2014"), ("val", val_names, "val2014")):
        for name in names:
            _png(coco / folder / name)
        images = [{"id": i, "file_name": name} for i, name in enumerate(names)]
        annotations = [
            {"image_id": i, "id": 2 * i + k, "caption": caption.strip()}
            for i, name in enumerate(names)
            for k, caption in enumerate([f"一个人在{name}前面", f"图片{name}里有一个人"])
        ]
        (coco / f"captions_{stem}2014.json").write_text(
            json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False),
            encoding="utf-8",
        )
    files = [coco / "captions_train2014.json", coco / "captions_val2014.json"]
    for fractions in ((0.05, 0.05), (0.1, 0.4)):
        records = load_records("aic", aic, None, val_fraction=fractions[0],
                               test_fraction=fractions[1], seed=2)  # fmt: skip
        reference = load_records("coco", files, coco, val_fraction=fractions[0],
                                 test_fraction=fractions[1], seed=2)  # fmt: skip

        def seen(found: list[ImageRecord]) -> list[tuple]:
            return [(Path(r.image_path).name, r.captions, r.split, r.drawn) for r in found]

        assert seen(records) == seen(reference)
        assert {r.split for r in records} == {"train", "val", "test"}
    assert records[0].image_path == str(tmp_path / "aic/train/caption_train_images_20170902" /
                                        train_names[0])  # fmt: skip
    alone = load_records("aic", aic[0], None, val_fraction=0.2, test_fraction=0.2, seed=2)
    drawn = hashed_split({name: name for name in train_names}, 0.2, 0.2, 2)
    assert [r.split for r in alone] == [drawn[name] for name in train_names]
    flat = tmp_path / "flat"  # the images in the image root itself, a caption given alone
    _png(flat / "a.jpg")
    (flat / "my_train.json").write_text(json.dumps([{"image_id": "a.jpg", "caption": "一只狗"},
                                                    {"image_id": "b.jpg", "caption": []}]))  # fmt: skip
    [only] = load_records("aic", flat / "my_train.json", None, val_fraction=0, test_fraction=0)
    assert (only.image_path, only.captions) == (str(flat / "a.jpg"), ("一只狗",))


def test_aic_files_that_are_not_say_so_in_one_line(tmp_path: Path) -> None:
    """An AI Challenger file's mistakes name the file and what to do; given as another format,
    the file is named an AI Challenger caption file, and another format's file given as aic is
    named its own."""
    train = _aic(tmp_path, AIC_TRAIN, ["a.jpg"])
    for fmt in ("karpathy", "coco", "jsonl", "csv"):
        _raises_one_line(lambda fmt=fmt: load_records(fmt, train, None),
                         "looks like an AI Challenger caption file", "--format aic")  # fmt: skip
    bad = tmp_path / "caption_train_bad.json"
    for content, said in (
        ({"images": []}, "is not a JSON list of images; pass an AI Challenger caption file"),
        ([{"image_id": "a.jpg"}], "item [0] needs an 'image_id' file name and a 'caption' list"),
        ([{"image_id": "a.jpg", "caption": ["ok", 3]}], "item [0] needs an 'image_id'"),
        ([{"image_id": " ", "caption": ["ok"]}], "item [0] needs an 'image_id'"),
        ([{"image_id": "gone.jpg", "caption": ["ok"]}], "item [0]: image '"),
    ):
        bad.write_text(json.dumps(content))
        _raises_one_line(lambda: load_records("aic", bad, None), str(bad), said)
    unnamed = tmp_path / "annotations.json"
    unnamed.write_text(train.read_text(encoding="utf-8"), encoding="utf-8")
    _raises_one_line(lambda: load_records("aic", unnamed, tmp_path),
                     "cannot tell the split of AI Challenger file", "rename it")  # fmt: skip
    karpathy = tmp_path / "dataset.json"
    karpathy.write_text(json.dumps({"images": [{"filename": "a.jpg", "sentences": []}]}))
    _raises_one_line(lambda: load_records("aic", karpathy, tmp_path), "looks like Karpathy's")


# --------------------------------------------------------------------------------------------
# Vocabulary and tokenisation


def test_aic_loader_edges_are_coco_loader_edges(tmp_path: Path) -> None:
    """As load_coco: no files, or a file not found, is one line naming AI Challenger's files;
    load_aic refuses fractions out of bounds itself; an image in two items of one file keeps
    the captions of both, as COCO's annotations of one image do (kills: the empty-list line
    dropped, the file named a COCO one, the fractions unchecked, the later item's captions
    replacing the earlier's)."""
    _raises_one_line(lambda: load_records("aic", [], None), "no AI Challenger annotation files")
    gone = tmp_path / "caption_train_gone.json"
    _raises_one_line(lambda: load_records("aic", gone, None),
                     f"AI Challenger caption file '{gone}' not found")  # fmt: skip
    train = _aic(tmp_path, AIC_TRAIN, ["a.jpg"])
    for fractions in ((1.0, 0.0), (0.5, 0.5)):
        _raises_one_line(lambda fractions=fractions: load_aic(train, None, val_fraction=fractions[0],
                         test_fraction=fractions[1]), "val_fraction")  # fmt: skip
    items = json.loads(train.read_text(encoding="utf-8"))
    train.write_text(json.dumps([*items, {**items[0], "caption": ["一只狗"]}], ensure_ascii=False),
                     encoding="utf-8")  # fmt: skip
    [record] = load_records("aic", train, None, val_fraction=0, test_fraction=0)
    assert record.captions == (*(c.strip() for c in items[0]["caption"]), "一只狗")


def test_coco_files_without_a_year_find_their_images_by_their_split(tmp_path: Path) -> None:
    """captions_train.json and captions_val.json name no folder: each file's images are in its
    split's train2014 or val2014 (kills: the folder taken from one split for both)."""
    for split in ("train", "val"):
        _png(tmp_path / f"{split}2014" / f"{split}.jpg")
        coco = {"images": [{"id": 1, "file_name": f"{split}.jpg"}],
                "annotations": [{"image_id": 1, "id": 1, "caption": "a dog"}]}  # fmt: skip
        (tmp_path / f"captions_{split}.json").write_text(json.dumps(coco))
    files = [tmp_path / "captions_train.json", tmp_path / "captions_val.json"]
    records = load_records("coco", files, tmp_path, val_fraction=0.5, test_fraction=0)
    assert sorted(r.image_path for r in records) == [
        str(tmp_path / "train2014" / "train.jpg"), str(tmp_path / "val2014" / "val.jpg")
    ]  # fmt: skip


def test_stair_captions_are_coco_caption_files_of_japanese(tmp_path: Path) -> None:
    """STAIR Captions (Yoshikawa et al. 2017: Japanese captions of COCO 2014's images) are COCO
    caption files with a tokenized_caption beside each caption, named
    stair_captions_v1.2_{train,val}.json: data.format=coco reads them as they are, each file's
    images in train2014 / val2014 (the year its name lacks), captions as written (not the
    tokenized copy), and their tokens are the characters, as AI Challenger's are."""
    japanese = {"train": "木のテーブルの上にピザが置いてある。", "val": "犬が走っている"}
    files = []
    for split, caption in japanese.items():
        name = f"COCO_{split}2014_000000000042.jpg"
        _png(tmp_path / f"{split}2014" / name)
        stair = {"images": [{"id": 42, "file_name": name}],
                 "annotations": [{"image_id": 42, "id": 1, "caption": caption,
                                  "tokenized_caption": "木 の テーブル"}]}  # fmt: skip
        files.append(tmp_path / f"stair_captions_v1.2_{split}.json")
        files[-1].write_text(json.dumps(stair, ensure_ascii=False), encoding="utf-8")
    records = load_records("coco", files, tmp_path, val_fraction=0.5, test_fraction=0)
    assert [(r.image_path, r.captions, r.split) for r in records] == [
        (str(tmp_path / f"{split}2014" / f"COCO_{split}2014_000000000042.jpg"), (text,), split)
        for split, text in japanese.items()
    ]
    assert tokenize(records[1].captions[0]) == list("犬が走っている")


@given(fields=st.lists(st.text(alphabet='a \t"\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029'), min_size=1))
def test_tab_separated_lines_read_back_split_by_splitlines(fields: list[str]) -> None:
    """caption's and check_data's lines (`tab_separated`): one record of the fields as given,
    read back by csv from the text split at any of str.splitlines' boundaries. A carriage return
    was left unquoted (csv quotes it only as part of its line terminator, on Python 3.11 as
    here), so a name holding one ended its line there."""
    line = tab_separated(*fields)
    assert list(csv.reader(line.splitlines(keepends=True), delimiter="\t")) == [fields]
    assert list(csv.reader(io.StringIO(line + "\n", newline=""), delimiter="\t")) == [fields]


def test_tokenize() -> None:
    assert tokenize("A Dog, running -- on the beach.") == [
        "a",
        "dog",
        "running",
        "on",
        "the",
        "beach",
    ]
    assert tokenize("It's 3 o'clock!") == ["it", "'s", "3", "o'clock"]
    assert tokenize("  ") == []


def test_chinese_and_japanese_characters_are_tokens_of_their_own() -> None:
    """Chinese and Japanese are written without spaces: a caption of them was one token, so a
    data set's captions were mostly <unk>. Each Han character and kana is now a token (a kana's
    combining voicing mark with it), however the caption was segmented; punctuation of theirs is
    dropped as ours is, and join_words writes the tokens back without spaces between them."""
    dog = ["一", "只", "狗", "在", "草", "地", "上", "奔", "跑"]
    assert tokenize("一只狗在草地上奔跑。") == dog
    assert tokenize("一只 狗 在 草地 上 奔跑 。") == dog  # segmented by jieba, say
    assert tokenize("「犬」が\u3000走っている！") == ["犬", "が", "走", "っ", "て", "い", "る"]
    assert tokenize("あ\u3099ｶﾞ𠀋々") == ["あ\u3099", "ガ", "𠀋", "々"]  # marks, extension B
    assert tokenize("A dog 走る on a T恤, 3只.") == ["a", "dog", "走", "る", "on", "a", "t", "恤",
                                                   "3", "只"]  # fmt: skip
    assert tokenize("한국어 문장입니다") == ["한국어", "문장입니다"]  # Korean has spaces: words
    assert join_words(dog) == "一只狗在草地上奔跑"
    assert join_words(["a", "dog", "走", "る", "on", "t", "恤"]) == "a dog 走る on t 恤"
    assert join_words(["か\u3099", "く"]) == "か\u3099く"
    assert join_words([]) == ""
    vocab = Vocabulary.build(["一只狗在草地上。", "一只猫在草地上。"], min_count=2)
    assert vocab.to_list()[len(SPECIALS) :] == ["一", "上", "只", "在", "地", "草"]
    assert vocab.decode(vocab.encode("一只猫在草地上")) == "一只 <unk> 在草地上"


def test_every_han_character_and_kana_with_its_marks_is_a_token_on_either_path() -> None:
    """Characters from the corners of the blocks, side by side: extensions A and B, the twelve unified ideographs of the CJK
    Compatibility block (U+FA0E: NFC keeps them), the katakana phonetic extensions (Ainu's small
    kana), and the combining semi-voiced mark on a kana that has no precomposed form ("か゚", as
    phonetics writes the nasal g). Alone they take the fast path, after a word of ours the
    Treebank path: both give them as tokens (kills: a block or the semi-voiced mark dropped, the
    marks dropped from the characters the Treebank path spaces apart)."""
    for text, tokens in (
        ("\ufa0e\ufa0f", ["\ufa0e", "\ufa0f"]),
        ("\u31f0\u31f1", ["\u31f0", "\u31f1"]),
        ("\u3401\u4db5", ["\u3401", "\u4db5"]),  # extension A
        ("\U0002000b\U0002123d", ["\U0002000b", "\U0002123d"]),  # extension B
        ("か\u309aき\u309a", ["か\u309a", "き\u309a"]),
    ):
        assert unicodedata.normalize("NFC", text) == text
        assert tokenize(text) == tokens, text
        assert tokenize(f"a {text}") == ["a", *tokens], text
        assert join_words(tokens) == text


def test_a_caption_gives_the_same_tokens_however_its_characters_are_encoded() -> None:
    """The same text in other code points gave other tokens, so a vocabulary held both and a
    reference matched no caption written the other way: kana with a combining voicing mark (as
    macOS writes file names, NFD) against precomposed ones, decomposed accents and Hangul, and the
    fullwidth Latin and digits and halfwidth katakana that Japanese text mixes in."""
    for text in ("がっこうでパンを食べる", "a café in Paris", "한국어 문장", "ガラス"):
        assert tokenize(unicodedata.normalize("NFD", text)) == tokenize(text), text
    assert tokenize("Ｔシャツを２枚") == tokenize("Tシャツを2枚") == ["t", "シ", "ャ", "ツ", "を",
                                                               "2", "枚"]  # fmt: skip
    assert tokenize("ｶﾞﾗｽのｺｯﾌﾟ、１，０００円｡") == tokenize("ガラスのコップ、1,000円。")
    assert tokenize("ＡＢＣ ｄｏｇｓ") == ["abc", "dogs"]
    assert tokenize("①犬") == ["①", "犬"]  # only the width forms: NFKC would make "①" "1"


@given(st.text(alphabet=st.sampled_from(list("一只狗犬がかのｶﾞﾟ\u3099\u3000「」。，、Ａ１ ab1.,'-"))))
def test_chinese_and_japanese_captions_are_stable_under_joining_and_retokenizing(text):
    """A caption's tokens written by join_words (as decoded captions are) and by spaces give the
    same tokens again, so a caption scores the same written either way."""
    tokens = tokenize(text)
    assert tokenize(join_words(tokens)) == tokens == tokenize(" ".join(tokens))
    for token in tokens:  # never two characters in one token (voicing marks aside)
        assert token.isascii() or sum(c not in "\u3099\u309aﾞﾟ" for c in token) <= 1, token


def test_vocabulary_build_encode_decode() -> None:
    vocab = Vocabulary.build(["a red dog", "a blue dog", "A red cat."], min_count=2)
    assert vocab.to_list() == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "red"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert len(vocab) == 7
    ids = vocab.encode("A red cat")
    assert ids == [1, 4, 6, 3, 2]  # cat is rarer than min_count -> <unk>
    assert vocab.decode(ids) == "a red <unk>"
    assert vocab.decode([1, 4, 5, 2, 6, 6, 0]) == "a dog"  # stops at <end>
    assert vocab.decode(torch.tensor([1, 4, 0, 5])) == "a dog"  # skips <pad>, takes tensors

    full = Vocabulary.build(["the cat sat", "the dog"])
    caption = "The cat sat."
    assert full.decode(full.encode(caption)) == " ".join(tokenize(caption))
    restored = Vocabulary.from_list(full.to_list())
    assert restored == full and type(full.to_list()) is list
    _raises_one_line(lambda: Vocabulary.from_list(["a", "b"]), "vocabulary")


def test_a_vocabulary_refuses_what_no_vocabulary_holds_and_lends_out_copies() -> None:
    """A word listed twice, <unk> out of its place, a word that is not a string, a min_count
    below 1: each refused in one line; an unknown word is <unk>; the list `to_list` gives is the
    caller's own; and a decoded voicing mark alone is written apart from the kana before it."""
    _raises_one_line(lambda: Vocabulary([*SPECIALS, "a", "dog", "a"]), "lists a word twice")
    _raises_one_line(  # <unk> missing from its place (id 3)
        lambda: Vocabulary.from_list(["<pad>", "<start>", "<end>", "dog", "<unk>"]),
        "vocabulary must start with <pad>, <start>, <end>, <unk>;",
    )
    _raises_one_line(lambda: Vocabulary.from_list([*SPECIALS, "a", 5]), "list of strings")
    _raises_one_line(lambda: Vocabulary.from_list("<pad>"), "list of strings")
    _raises_one_line(lambda: Vocabulary.build(["a dog"], min_count=0), "min_count", "got 0")
    vocab = Vocabulary.build(["a dog", "a cat"])
    assert vocab.token_id("cat") == 5 and vocab.token_id("zebra") == vocab.unk_id == 3
    listed = vocab.to_list()
    listed.append("zebra")
    assert len(vocab) == 7 and vocab.to_list() == [*SPECIALS, "a", "cat", "dog"]
    assert vocab != Vocabulary([*SPECIALS, "a", "dog", "cat"])  # the same words, other ids
    # a voicing mark alone (an older vocabulary's token) stays apart from the kana before it
    assert join_words(["か", "\uff9e"]) == "か \uff9e"
    assert join_words(["か", "\u3099"]) == "か \u3099"


def test_a_vocabulary_of_one_word_to_max_words_trains_and_one_more_is_refused() -> None:
    """`lacks_words` counts the words besides the four special tokens: one word is enough to
    train on, `MAX_WORDS` is the most a captioner takes, and a word more names the count."""
    assert Vocabulary([*SPECIALS, "dog"]).lacks_words(1) is None
    assert "no training caption has a word" in Vocabulary(list(SPECIALS)).lacks_words(1)
    words = [f"w{i}" for i in range(MAX_WORDS + 1)]
    assert Vocabulary([*SPECIALS, *words[:-1]]).lacks_words(1) is None
    said = Vocabulary([*SPECIALS, *words]).lacks_words(3)
    assert said is not None and said.startswith(
        f"the training captions have {MAX_WORDS + 1:,} words seen at least 3 time(s) "
        f"(data.min_word_count), more than a captioner takes ({MAX_WORDS:,}"
    )


# --------------------------------------------------------------------------------------------
# Transforms and datasets


def test_transforms_shapes_and_weights_stats() -> None:
    image = Image.new("RGB", (40, 30), (128, 64, 32))
    for train in (True, False):
        tensor = build_transforms(24, train)(image)
        assert tensor.shape == (3, 24, 24) and tensor.dtype == torch.float32
    preset = get_weight("ResNet50_Weights.DEFAULT").transforms()
    assert normalization_stats("ResNet50_Weights.DEFAULT", "resnet50") == (
        list(preset.mean),
        list(preset.std),
    )
    assert normalization_stats(None, "resnet50") == (list(preset.mean), list(preset.std))
    assert normalization_stats("weights/encoder.pth", "resnet50") == (
        list(preset.mean),
        list(preset.std),
    )
    # a uniform mid-grey image normalises to (0.5 - mean) / std per channel
    grey = build_transforms(16, False, weights="ResNet50_Weights.DEFAULT", arch="resnet50")(
        Image.new("RGB", (16, 16), (255, 255, 255))
    )
    expected = (1.0 - torch.tensor(preset.mean)) / torch.tensor(preset.std)
    assert torch.allclose(grey.mean(dim=(1, 2)), expected, atol=1e-5)
    names = [type(t).__name__ for t in build_transforms(16, True, hflip=True).transforms]
    assert "RandomHorizontalFlip" in names
    assert "RandomHorizontalFlip" not in [
        type(t).__name__ for t in build_transforms(16, True).transforms
    ]
    _raises_one_line(
        lambda: build_transforms(16, False, weights="ResNet50_Weights.NOPE", arch="resnet50"),
        "NOPE",
    )


def test_datasets_and_collate(tmp_path: Path) -> None:
    records = [
        ImageRecord(str(_png(tmp_path / "a.png", size=20)), ("a red dog", "a dog"), "train"),
        ImageRecord(str(_png(tmp_path / "b.png", size=12)), ("a very red dog runs",), "train"),
    ]
    vocab = Vocabulary.build(c for r in records for c in r.captions)
    transform = build_transforms(16, False)
    pairs = CaptionPairs(records, vocab, transform, cache_images=True)
    assert len(pairs) == 3 and pairs.pairs == [(0, 0), (0, 1), (1, 0)]
    image, caption = pairs[2]
    assert image.shape == (3, 16, 16) and caption.dtype == torch.long
    assert vocab.decode(caption) == "a very red dog runs"
    images, captions, lengths = next(
        iter(DataLoader(pairs, batch_size=3, collate_fn=collate_pairs))
    )
    assert images.shape == (3, 3, 16, 16) and captions.shape == (3, 7)
    assert lengths.tolist() == [5, 4, 7]
    assert captions[1, 4:].tolist() == [0, 0, 0] and (captions[:, 0] == vocab.start_id).all()

    short = CaptionPairs(records, vocab, transform, max_length=4)
    assert short[2][1].tolist()[-1] == vocab.end_id and len(short[2][1]) == 4
    assert vocab.decode(short[2][1]) == "a very"
    exact = CaptionPairs(records, vocab, transform, max_length=7)  # <start>, 5 words, <end>
    assert vocab.decode(exact[2][1]) == "a very red dog runs"

    only = ImageOnly(records, transform)
    assert len(only) == 2 and only[1][1] == 1 and only[1][0].shape == (3, 16, 16)


def test_cached_images_are_decoded_once_and_give_the_same_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cache_images=True decodes each image once, whatever the number of its captions and of
    passes over the data, and gives the items decoding every time gives."""
    records = [
        ImageRecord(str(_png(tmp_path / "a.png", size=20)), ("a red dog", "a dog"), "train"),
        ImageRecord(str(_png(tmp_path / "b.png", (0, 90, 200), 12)), ("a blue cat",), "train"),
    ]
    vocab = Vocabulary.build(c for r in records for c in r.captions)
    transform = build_transforms(16, False)
    tries, real = [], datasets_module.load_image_tensor

    def counted(path, **kwargs):
        tries.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(datasets_module, "load_image_tensor", counted)
    cached = CaptionPairs(records, vocab, transform, cache_images=True)
    uncached = CaptionPairs(records, vocab, transform)
    for _ in range(2):
        for index in range(len(cached)):
            image, caption = cached[index]
            expected_image, expected_caption = uncached[index]
            assert torch.equal(image, expected_image) and torch.equal(caption, expected_caption)
    paths = [record.image_path for record in records]
    assert sorted(set(tries)) == paths and len(tries) == 2 + 2 * len(cached)  # cached: 1 each
    tries.clear()
    images = ImageOnly(records, transform, cache_images=True)
    assert [images[i][1] for i in (0, 1, 0, 1)] == [0, 1, 0, 1] and tries == paths


def test_a_caption_cut_to_max_length_keeps_start_and_end(tmp_path: Path) -> None:
    """max_length counts <start> and <end>: 2 keeps just them, 1 (no room for both) is refused,
    and any cut ends with <end> after the first max_length - 2 words."""
    vocab = Vocabulary.build(["a very red dog runs"])
    records = [ImageRecord(str(_png(tmp_path / "a.png")), ("a very red dog runs",), "train")]
    ids = vocab.encode("a very red dog runs")
    for max_length in range(2, 9):
        pairs = CaptionPairs(records, vocab, lambda image: image, max_length=max_length)
        kept = min(max_length, len(ids)) - 2
        assert pairs[0][1].tolist() == [*ids[: kept + 1], vocab.end_id], max_length
    for max_length in (1, 0):
        with pytest.raises(ValueError, match="must leave room for <start> and <end>"):
            CaptionPairs(records, vocab, lambda image: image, max_length=max_length)


# --------------------------------------------------------------------------------------------
# load_image


def _save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def test_load_image_modes(tmp_path: Path) -> None:
    def pixel(path: Path, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
        image = load_image(path)
        assert image.mode == "RGB"
        return image.getpixel(xy)

    cmyk = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    red = pixel(cmyk)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    sixteen = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
    assert sixteen.mode == "I;16"
    sixteen_path = _save(sixteen, tmp_path / "gray16.png")
    assert [pixel(sixteen_path, (x, 0)) for x in range(3)] == [
        (0, 0, 0),
        (128, 128, 128),
        (255, 255, 255),
    ]
    as_i = _save(sixteen.convert("I"), tmp_path / "gray_i.tiff")
    assert pixel(as_i, (1, 0)) == (128, 128, 128)

    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    rgba_path = _save(rgba, tmp_path / "rgba.png")
    assert pixel(rgba_path) == (255, 255, 255) and pixel(rgba_path, (1, 0)) == (0, 0, 255)

    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette_path = _save(palette, tmp_path / "palette.png", transparency=0)
    assert pixel(palette_path) == (255, 255, 255) and pixel(palette_path, (1, 0)) == (0, 255, 0)
    opaque_palette = _save(palette, tmp_path / "palette.gif")
    assert pixel(opaque_palette) == (255, 0, 0)

    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (0, 255))
    la_path = _save(la, tmp_path / "la.png")
    assert pixel(la_path) == (255, 255, 255) and pixel(la_path, (1, 0)) == (0, 0, 0)

    bits = Image.new("1", (2, 1), 1)
    bits.putpixel((1, 0), 0)
    bits_path = _save(bits, tmp_path / "bits.png")
    assert pixel(bits_path) == (255, 255, 255) and pixel(bits_path, (1, 0)) == (0, 0, 0)
    assert pixel(_save(Image.new("L", (2, 2), 77), tmp_path / "gray.png")) == (77, 77, 77)

    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    gif = _save(
        frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50
    )
    assert Image.open(gif).n_frames == 2
    assert pixel(gif) == (255, 0, 0)

    # 40 wide x 20 tall, left half red; EXIF orientation 6 means "rotate 90 degrees clockwise"
    photo = Image.new("RGB", (40, 20), (0, 0, 255))
    photo.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    photo_path = _save(photo, tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image(photo_path)
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60

    with open(rgba_path, "rb") as stream:  # file objects work too, from their start
        stream.read(5)
        assert load_image(stream).size == (2, 1)


def _with_associated_alpha(la_tiff: bytes) -> bytes:
    """A TIFF of Pillow's LA (ExtraSamples 2: unassociated alpha) marked as associated alpha
    (ExtraSamples 1), which Pillow decodes as the premultiplied mode La."""
    entry = struct.pack("<HHIH", 338, 3, 1, 2)  # ExtraSamples, SHORT, one value: 2
    assert la_tiff.count(entry) == 1
    return la_tiff.replace(entry, struct.pack("<HHIH", 338, 3, 1, 1))


def test_a_grayscale_tiff_with_associated_alpha_loads_composited_on_white() -> None:
    """Pillow decodes a grayscale TIFF with associated (premultiplied) alpha as La, which its
    convert("RGBA") refuses ("conversion from La to L not supported"): load_image raised that
    ValueError, not a UserError. It loads now as its unassociated twin does (the same gray and
    alpha, alpha 0 on white), within the rounding of Pillow's unpremultiplying."""
    gray, alpha = np.array([[0, 90, 200, 255]]), np.array([[0, 255, 128, 60]])
    straight = Image.fromarray(np.dstack([gray, alpha]).astype(np.uint8), "LA")
    buffer = io.BytesIO()
    straight.save(buffer, "TIFF")
    # the premultiplied values the file holds: gray * alpha / 255
    premultiplied = (gray * alpha + 127) // 255
    associated = Image.fromarray(np.dstack([premultiplied, alpha]).astype(np.uint8), "LA")
    held = io.BytesIO()
    associated.save(held, "TIFF")
    data = _with_associated_alpha(held.getvalue())
    assert Image.open(io.BytesIO(data)).mode == "La"
    loaded = np.asarray(load_image(io.BytesIO(data)), dtype=int)
    expected = np.asarray(load_image(io.BytesIO(buffer.getvalue())), dtype=int)
    on_white = np.rint(gray * alpha / 255 + 255 * (1 - alpha / 255))  # the reference's reference
    assert np.abs(expected[0, :, 0] - on_white[0]).max() <= 1
    assert loaded.shape == (1, 4, 3) and np.abs(loaded - expected).max() <= 2
    assert loaded[0, 0].tolist() == [255, 255, 255] and loaded[0, 1].tolist() == [90, 90, 90]


def _photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A smooth colour field, as photographs are (JPEG's subsampling shows on it)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def test_load_image_tensor_decodes_jpegs_with_torchvision_to_pillows_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clean JPEGs (every chroma subsampling, grayscale, progressive, each EXIF orientation) are
    decoded by torchvision's decode_jpeg (Pillow is made to fail) into Pillow's very pixels."""
    jpegs = {
        f"sub{sub}.jpg": lambda sub=sub: _photo().save(
            tmp_path / f"sub{sub}.jpg", quality=90, subsampling=sub
        )
        for sub in (0, 1, 2)
    }
    jpegs["gray.jpg"] = lambda: _photo().convert("L").save(tmp_path / "gray.jpg")
    jpegs["progressive.jpg"] = lambda: _photo().save(tmp_path / "progressive.jpg", progressive=True)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        jpegs[f"exif{orientation}.jpg"] = lambda name=f"exif{orientation}.jpg", exif=exif: _photo(
            40, 20
        ).save(tmp_path / name, exif=exif)
    expected = {}
    for name, write in jpegs.items():
        write()
        expected[name] = torch.from_numpy(np.array(load_image(tmp_path / name))).permute(2, 0, 1)

    def no_pillow(*args, **kwargs):
        raise AssertionError("Pillow decoded a clean JPEG")

    monkeypatch.setattr(datasets_module, "load_image", no_pillow)
    for name, pixels in expected.items():
        tensor = load_image_tensor(tmp_path / name)
        assert tensor.dtype == torch.uint8 and torch.equal(tensor, pixels), name
    assert expected["exif6.jpg"].shape == (3, 40, 20)  # turned upright: 20 wide, 40 tall


def test_load_image_tensor_leaves_every_other_file_to_pillow(tmp_path: Path) -> None:
    """CMYK JPEGs, other formats, JPEGs with bytes after the end marker, damaged, truncated or
    oversized JPEGs: the same pixels as load_image, or the same one-line error."""
    _photo().convert("CMYK").save(tmp_path / "cmyk.jpg")
    _photo().save(tmp_path / "photo.png")
    _photo().save(tmp_path / "good.jpg", quality=90)
    good = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "trailing.jpg").write_bytes(good + b"\x00" * 16)
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) * 2 // 3])
    scan = good.rindex(b"\xff\xda") + 40  # inside the entropy-coded data
    damaged = bytearray(good)
    damaged[scan : scan + 24] = bytes(range(200, 224))
    (tmp_path / "damaged.jpg").write_bytes(bytes(damaged))
    (tmp_path / "text.jpg").write_text("not a picture\n")
    for name in ("cmyk.jpg", "photo.png", "trailing.jpg", "truncated.jpg", "damaged.jpg",
                 "text.jpg", "good.jpg", "missing.jpg"):  # fmt: skip
        for max_pixels in (None, 100):  # 100: good.jpg is too large
            try:
                pil = np.array(load_image(tmp_path / name, max_pixels=max_pixels))
            except UserError as err:
                message = _raises_one_line(
                    lambda name=name, max_pixels=max_pixels: load_image_tensor(
                        tmp_path / name, max_pixels=max_pixels
                    )
                )
                assert message == str(err), name
                continue
            tensor = load_image_tensor(tmp_path / name, max_pixels=max_pixels)
            assert torch.equal(tensor, torch.from_numpy(pil).permute(2, 0, 1)), name


def test_load_image_tensor_reads_no_file_far_larger_than_its_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small JPEG followed by megabytes (ending with another end marker) is not read whole into
    memory for decode_jpeg: Pillow decodes it, reading what it needs."""
    _photo().save(tmp_path / "good.jpg", quality=90)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes((tmp_path / "good.jpg").read_bytes() + bytes(2_000_000) + b"\xff\xd9")

    def no_decode_jpeg(*args, **kwargs):
        raise AssertionError("decode_jpeg was handed the whole padded file")

    monkeypatch.setattr(datasets_module, "decode_jpeg", no_decode_jpeg)
    expected = torch.from_numpy(np.array(load_image(padded))).permute(2, 0, 1)
    assert torch.equal(load_image_tensor(padded), expected)


def _with_scans(jpeg: bytes, repeats: int) -> bytes:
    """``jpeg`` (a progressive JPEG) with its last scan repeated ``repeats`` more times."""
    last = jpeg.rindex(b"\xff\xda")
    return jpeg[:-2] + jpeg[last:-2] * repeats + b"\xff\xd9"


def _with_segments(jpeg: bytes, count: int) -> bytes:
    """``jpeg`` with ``count`` small EXIF segments after its start of image."""
    exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x00"
    return jpeg[:2] + (b"\xff\xe1" + struct.pack(">H", 2 + len(exif)) + exif) * count + jpeg[2:]


def test_jpegs_that_cost_far_more_than_their_size_are_refused_before_they_are_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each scan of a progressive JPEG is a pass over the whole image, and libjpeg takes any
    number: 2,000 repeats of a 31-byte scan (62 kB) took 19 s at 4000 x 4000 pixels, against
    0.2 s without them. Pillow reads the segments before the image data in Python and joins
    every EXIF segment's data by concatenation: 20 MB of a million small ones took 240 s to open.
    Such files are refused in one line, from a path or a file object, by both loaders, before
    Pillow opens them or either decoder runs; files of as many scans and segments as encoders
    write decode, and an ICC profile holding the bytes of a scan marker does not count."""
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", progressive=True)  # Pillow's script: 10 scans
    progressive = buffer.getvalue()
    ordinary = {name: tmp_path / f"{name}.jpg" for name in ("scans", "segments", "profiled")}
    ordinary["scans"].write_bytes(_with_scans(progressive, 90))  # 100 scans
    ordinary["segments"].write_bytes(_with_segments(progressive, 986))  # 1,000, its 8 tables
    # between scans counted
    _photo().save(ordinary["profiled"], icc_profile=b"\xff\xda" * 30_000)
    expected = {path: load_image(path) for path in ordinary.values()}
    hostile = {
        "many_scans.jpg": (_with_scans(progressive, 2000), "more than 100 scans"),
        "many_segments.jpg": (_with_segments(progressive, 20_000), "more than 1,000 segments"),
    }
    opened = []
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args))
    monkeypatch.setattr(datasets_module, "decode_jpeg", lambda *args, **kw: opened.append(args))
    for name, (data, said) in hostile.items():
        path = tmp_path / name
        path.write_bytes(data)
        message = _raises_one_line(lambda path=path: load_image(path), name, said)
        with path.open("rb") as stream:
            assert _raises_one_line(lambda stream=stream: load_image(stream)) == message
        assert _raises_one_line(lambda path=path: load_image_tensor(path)) == message
    assert opened == []
    monkeypatch.undo()
    for path, image in expected.items():
        assert np.array_equal(load_image_tensor(path).permute(1, 2, 0).numpy(), np.array(image))


def _segment(marker: int, body: bytes) -> bytes:
    """A JPEG segment: its marker, its length (two bytes, counting themselves) and its body."""
    return bytes([0xFF, marker]) + struct.pack(">H", 2 + len(body)) + body


JPEG_HEADER = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00") + _segment(0xDB, bytes(65))  # 2 segments
START_OF_SCAN = _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")


def test_jpeg_cost_counts_segments_to_the_first_scan_and_scans_to_the_end_of_image() -> None:
    """`jpeg_cost` of JPEGs built here, whose counts are known: fill bytes (0xFF, which the
    standard allows before any marker) hide no segment; a scan marker split between two reads
    of 1 MiB counts; what follows the end of image (a motion photo's video, say) is not read."""

    def cost(data: bytes) -> tuple[int, int]:
        return images_module.jpeg_cost(io.BytesIO(data))

    scan = START_OF_SCAN + b"\x12" * 50
    assert cost(JPEG_HEADER + scan + b"\xff\xd9") == (2, 1)
    assert cost(JPEG_HEADER + scan * 3 + b"\xff\xd9") == (2, 3)
    filled = b"\xff\xd8" + (b"\xff\xff\xff" + _segment(0xE1, b"Exif")) * 5 + scan + b"\xff\xd9"
    assert cost(filled) == (5, 1)
    # a baseline frame (SOF0) 65,497 pixels high (FF D9) is stepped over, as every segment is
    frame = _segment(0xC0, b"\x08\xff\xd9\x00\x01\x01\x01\x11\x00")
    assert cost(JPEG_HEADER + frame + scan * 3 + b"\xff\xd9") == (3, 3)
    # the scans are read in chunks of 1 MiB from just past the first scan's marker: the second
    # scan's marker starts on the last byte of the first chunk
    data = scan[:-50] + b"\x12" * (2**20 + 1 - len(START_OF_SCAN)) + scan + b"\xff\xd9"
    assert data.index(b"\xff\xda", 2) == 2 + 2**20 - 1
    assert cost(JPEG_HEADER + data) == (2, 2)
    for after in (b"", bytes(2**20)):  # in the chunk of the end of image, and in later ones
        assert cost(JPEG_HEADER + scan + b"\xff\xd9" + after + b"\xff\xda" * 200) == (2, 1)
    assert cost(b"\x89PNG\r\n\x1a\n" + bytes(100)) == (0, 0)


def test_a_jpeg_of_max_segments_is_opened_and_one_of_a_segment_more_is_refused() -> None:
    limit = images_module.MAX_JPEG_SEGMENTS
    for count, refused in ((limit, False), (limit + 1, True)):
        segments = b"".join(_segment(0xE1, b"Exif") for _ in range(count - 2))
        data = JPEG_HEADER + segments + START_OF_SCAN + b"\x12" + b"\xff\xd9"
        stream = io.BytesIO(data)
        error = images_module.costly_jpeg_error(stream, "'x.jpg'")
        assert (error is not None) == refused, count
        assert stream.tell() == 0  # left at its start, for a decoder to read
    assert str(error).startswith("'x.jpg' is a JPEG of more than 1,000 segments (a photograph")


class _Unseekable(io.RawIOBase):
    """A stream read once from its start, as a pipe is: seek raises."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._data.readinto(buffer)


def test_jpegs_read_as_pillow_reads_them_are_costed_so_too(tmp_path: Path) -> None:
    """A progressive JPEG followed by data holding many scan markers (a motion photo's video,
    which Pillow never reads) loads as the JPEG alone; a million segments behind fill bytes are
    refused as without them; and a stream that cannot seek loads, and is refused, as a file."""
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", progressive=True)
    progressive = buffer.getvalue()
    expected = np.array(load_image(io.BytesIO(progressive)))
    followed = tmp_path / "followed.jpg"
    followed.write_bytes(progressive + b"\xff\xda" * 200)
    assert np.array_equal(np.array(load_image(followed)), expected)
    assert np.array_equal(load_image_tensor(followed).permute(1, 2, 0).numpy(), expected)
    filled = b"\xff\xff" + _segment(0xE1, b"Exif\x00\x00")
    hidden = progressive[:2] + filled * 20_000 + progressive[2:]
    _raises_one_line(lambda: load_image(io.BytesIO(hidden)), "more than 1,000 segments")
    assert np.array_equal(np.array(load_image(_Unseekable(progressive))), expected)
    _raises_one_line(lambda: load_image(_Unseekable(hidden)), "more than 1,000 segments")


_ENTROPY = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=12).map(lambda data: data.replace(b"\xff", b"\xff\x00")),
        st.integers(0xD0, 0xD7).map(lambda marker: bytes([0xFF, marker])),  # restart markers
    ),
    max_size=4,
).map(b"".join)  # a scan's data: a 0xFF written as FF 00
_MARKED = st.one_of(
    st.tuples(st.sampled_from([0xC0, 0xC2, 0xC4, 0xDB, 0xDD, 0xFE]), st.binary(max_size=12)).map(
        lambda segment: _segment(*segment)  # frames, tables, a comment: any bytes, FF DA too
    ),
    st.sampled_from([0x01, 0x02, 0x4F, 0xBF]).map(  # markers of no length: TEM, reserved
        lambda marker: bytes([0xFF, marker])
    ),
)
_BETWEEN = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 2), _MARKED).map(  # fill bytes (0xFF) before a marker
            lambda filled: (b"\xff" * filled[0] + filled[1], 1)
        ),
        st.binary(min_size=1, max_size=3)  # stray bytes, which decoders skip
        .filter(lambda data: b"\xff" not in data)
        .map(lambda data: (data, 0)),
        st.just((b"\xff\x00", 0)),  # a stuffed 0xFF out of place: skipped too
    ),
    max_size=3,
)
_MARKER_BYTES = st.lists(st.sampled_from([b"\xff\xda", b"\xff\xd9", b"\xff", b"\x00"])).map(
    b"".join
)


@given(
    header=_BETWEEN,
    scans=st.lists(st.tuples(_ENTROPY, _BETWEEN), max_size=8),
    last=_ENTROPY,
    tail=_MARKER_BYTES,
    chunk=st.integers(1, 9),
)
def test_jpeg_cost_counts_the_segments_and_scans_a_decoder_reads(
    header, scans, last, tail, chunk
) -> None:
    """JPEGs built of segments (tables and comments of any bytes, scan and end markers among
    them), markers of no length (libjpeg skips the reserved ones without a length), fill bytes
    and stray bytes, scans' data (stuffed 0xFF, restart markers), ended by an end of image and
    anything after it: the segments and scans are those a decoder reads, read in chunks of any
    size, counted until one of them passes its limit. A comment holding scan markers' bytes was
    counted as that many scans; a reserved marker's next two bytes were read as a length that
    stepped over the scans after it; a stray byte before the first scan gave no scans at all."""
    events = ["segment"]  # the APP0 of the start: each marker's count, in order
    data = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00")
    for part, count in header:
        data, events = data + part, events + ["segment"] * count
    data, events = data + START_OF_SCAN, [*events, "scan"]
    for entropy, between in scans:
        data += entropy
        for part, count in between:
            data, events = data + part, events + ["segment"] * count
        data, events = data + START_OF_SCAN, [*events, "scan"]
    data += last + b"\xff\xd9" + tail
    counted = {"segment": 0, "scan": 0}
    for event in events:  # counted until either passes its limit (3 segments, 5 scans here)
        counted[event] += 1
        if counted["segment"] > 3 or counted["scan"] > 5:
            break
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(images_module, "READ_CHUNK", chunk)
        patch.setattr(images_module, "MAX_JPEG_SEGMENTS", 3)
        patch.setattr(images_module, "MAX_JPEG_SCANS", 5)
        cost = images_module.jpeg_cost(io.BytesIO(data))
    assert cost == (counted["segment"], counted["scan"])


def test_a_progressive_jpeg_with_scan_markers_in_a_comment_between_its_scans_loads() -> None:
    """The bytes of 150 scan markers in a comment before its second scan: a decoder steps over
    the comment, so its scans are its own 10, and it loads as Pillow decodes it; a marker of no
    length before 150 more scans hides none of them."""
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", progressive=True)
    progressive = buffer.getvalue()
    second = progressive.index(b"\xff\xda", progressive.index(b"\xff\xda") + 2)
    commented = progressive[:second] + _segment(0xFE, b"\xff\xda" * 150) + progressive[second:]
    assert images_module.jpeg_cost(io.BytesIO(commented))[1] == 10
    expected = np.array(load_image(io.BytesIO(progressive)))
    assert np.array_equal(np.array(load_image(io.BytesIO(commented))), expected)
    scan = START_OF_SCAN + b"\x12" * 4
    hidden = JPEG_HEADER + scan + b"\xff\x01" + scan * 150 + b"\xff\xd9"
    assert images_module.jpeg_cost(io.BytesIO(hidden))[1] == images_module.MAX_JPEG_SCANS + 1
    # nor does a comment whose length is under its own two bytes, which libjpeg steps past: Pillow
    # decoded the 150 scans after it, counted as none
    last = progressive.rindex(b"\xff\xda")
    for length in (0, 1):
        comment = b"\xff\xfe" + struct.pack(">H", length)
        hidden = progressive[:-2] + comment + progressive[last:-2] * 150 + b"\xff\xd9"
        with Image.open(io.BytesIO(hidden)) as image:
            image.load()  # decoded, every scan
        _raises_one_line(lambda hidden=hidden: load_image(io.BytesIO(hidden)), "100 scans")


def test_a_reserved_marker_in_scan_data_has_no_length_as_libjpeg_skips_it() -> None:
    """With a restart interval, libjpeg meets a reserved marker (0x02-0xBF) where a restart
    marker should be and resyncs (jpeg_resync_to_restart: "invalid marker", skipped without a
    length) to the next marker: a scan's. Taken for a segment, its next two bytes (FF DA: 65,498)
    stepped over every scan after it; Pillow decoded thousands of scans counted as one."""
    restart = _segment(0xDD, struct.pack(">H", 1))
    scan = START_OF_SCAN + b"\x12" * 4
    for reserved in (0x02, 0x4F, 0xBF):
        hidden = JPEG_HEADER + restart + scan + bytes([0xFF, reserved]) + scan * 150 + b"\xff\xd9"
        assert images_module.jpeg_cost(io.BytesIO(hidden)) == (4, images_module.MAX_JPEG_SCANS + 1)


def test_bytes_before_a_marker_that_decoders_skip_hide_no_scan() -> None:
    """Pillow's header parser and libjpeg (next_marker: "extraneous bytes before marker") skip a
    stray byte, or a stuffed FF 00, between two segments before the first scan; jpeg_cost
    returned no scans at all for such a file, so any number of scans passed the limit."""
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", progressive=True)
    progressive = buffer.getvalue()
    after_app0 = 4 + struct.unpack(">H", progressive[4:6])[0]
    expected = np.array(load_image(io.BytesIO(progressive)))
    for junk in (b"\x00", b"\x12\x34", b"\xff\x00"):
        strayed = progressive[:after_app0] + junk + progressive[after_app0:]
        assert np.array_equal(np.array(load_image(io.BytesIO(strayed))), expected)  # decodes
        assert images_module.jpeg_cost(io.BytesIO(strayed))[1] == 10, junk
    scan = START_OF_SCAN + b"\x12" * 4
    app0 = 2 + 9  # SOI, then the APP0 segment of JPEG_HEADER
    hidden = JPEG_HEADER[:app0] + b"\x00" + JPEG_HEADER[app0:] + scan * 150 + b"\xff\xd9"
    assert images_module.jpeg_cost(io.BytesIO(hidden))[1] == images_module.MAX_JPEG_SCANS + 1


def test_an_end_of_image_before_the_first_scan_hides_no_segment() -> None:
    """Pillow's header reader steps over an end of image (and a second start of image) met
    before the first scan, without a length, and reads on: jpeg_cost stopped at it, so a file
    whose start of image was followed by an end of image and 100,000 EXIF segments was read by
    Pillow, segment by segment (2 s; a million take minutes), instead of being refused."""

    def cost(data: bytes) -> tuple[int, int]:
        return images_module.jpeg_cost(io.BytesIO(data))

    scan = START_OF_SCAN + b"\x12" * 4
    for marker in (b"\xff\xd9", b"\xff\xd8"):  # each a segment of no length, as Pillow reads it
        assert cost(JPEG_HEADER + marker + scan + b"\xff\xd9") == (3, 1), marker
        assert cost(JPEG_HEADER[:2] + marker + JPEG_HEADER[2:] + scan * 2 + b"\xff\xd9") == (3, 2)
    assert cost(JPEG_HEADER + scan + b"\xff\xd9" + scan * 200) == (2, 1)  # after a scan: the end
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", progressive=True)
    hidden = _with_segments(buffer.getvalue(), 1001)
    hidden = hidden[:2] + b"\xff\xd9" + hidden[2:]
    _raises_one_line(lambda: load_image(io.BytesIO(hidden)), "more than 1,000 segments")


def test_a_file_that_starts_as_a_jpeg_without_a_marker_after_it_is_no_jpeg() -> None:
    """Pillow takes a file for a JPEG by its first three bytes, FF D8 FF: FF D8 then anything
    else is costed as no JPEG (Pillow does not read it as one)."""
    segments = _segment(0xE1, b"Exif") * 1001
    assert images_module.jpeg_cost(io.BytesIO(b"\xff\xd8\x00" + segments)) == (0, 0)
    assert images_module.jpeg_cost(io.BytesIO(b"\xff\xd8" + segments))[0] == 1001


def test_a_jpeg_of_too_many_scans_inside_another_container_is_refused_too() -> None:
    """Pillow opens any format it knows, and BLP1 (a game texture, in no list of accepted
    formats) decodes the JPEG it holds with JpegImageFile: jpeg_cost, which looks only at files
    that start as JPEGs, never saw its 150 scans, and Pillow decoded every one."""
    # an AC table of one code ('0': an end-of-band run of 2^14 + 14 extra bits), then scans of
    # the luma's AC bands, each ending every block at once: libjpeg decodes each (it warns)
    table = _segment(0xC4, bytes([0x13, 1, *bytes(15), 0xE0]))
    scan = _segment(0xDA, bytes([1, 1, 0x03, 1, 63, 0x00])) + b"\x7f\xff\x00"
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", progressive=True)
    jpeg = buffer.getvalue()[:-2] + table + scan * 150 + b"\xff\xd9"
    _raises_one_line(lambda: load_image(io.BytesIO(jpeg)), "more than 100 scans")
    with Image.open(io.BytesIO(jpeg)) as image:
        image.load()  # a JPEG Pillow decodes, all of its scans
    blp = b"BLP1" + struct.pack("<iIIIi", 0, 0, 64, 48, 5) + bytes(4)  # JPEG, no alpha, 64 x 48
    blp += struct.pack("<16I", 160, *[0] * 15) + struct.pack("<16I", len(jpeg), *[0] * 15)
    blp += struct.pack("<I", 0) + jpeg  # no shared JPEG header: the mipmap is the whole JPEG
    _raises_one_line(lambda: load_image(io.BytesIO(blp)), "")


def test_libjpeg_stays_quiet_about_damage_pillow_reads_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """A JPEG whose scan data ends early (COCO has such files): libjpeg inside decode_jpeg would
    print "Corrupt JPEG data: premature end of data segment" on the process's standard error
    (every epoch, without the file's name). The loader decodes it to Pillow's pixels, silently,
    and standard error works again afterwards."""
    _photo().save(tmp_path / "good.jpg", quality=90)
    good = (tmp_path / "good.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good[: good.rindex(b"\xff\xda") + 200] + b"\xff\xd9")
    expected = torch.from_numpy(np.array(load_image(cut))).permute(2, 0, 1)

    def no_pillow(*args, **kwargs):
        raise AssertionError("Pillow decoded it")

    monkeypatch.setattr(datasets_module, "load_image", no_pillow)
    capfd.readouterr()
    assert torch.equal(load_image_tensor(cut), expected)
    print("still here", file=sys.stderr, flush=True)
    os.write(2, b"and descriptor 2 too\n")  # capfd's sys.stderr does not write to it
    assert capfd.readouterr().err == "still here\nand descriptor 2 too\n"


def test_a_jpeg_whose_header_is_a_decompression_bomb_gets_load_images_line(
    tmp_path: Path,
) -> None:
    """A JPEG whose frame claims 30,000 x 30,000 pixels: Pillow's header reader raises its
    DecompressionBombError (no OSError) while the loader looks for a clean JPEG, and the file is
    refused with load_image's line, not that exception."""
    _photo().save(tmp_path / "photo.jpg", quality=90)
    data = bytearray((tmp_path / "photo.jpg").read_bytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", 30_000, 30_000)  # height, width
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(bytes(data))
    said = _raises_one_line(lambda: load_image(bomb), "too many pixels")
    assert _raises_one_line(lambda: load_image_tensor(bomb)) == said


def test_two_threads_decoding_at_once_leave_standard_error_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """Each decode redirects descriptor 2 to /dev/null and puts back what it saved: one thread at
    a time, else a second thread entering while the first is inside saves /dev/null, leaves
    last, and leaves standard error at /dev/null for the rest of the process."""
    _photo().save(tmp_path / "photo.jpg", quality=90)
    real = datasets_module.decode_jpeg
    first_inside, second_inside, first_done = (threading.Event() for _ in range(3))

    def decode(data, **kwargs):  # the first waits (a while) for the second to be inside too
        if threading.current_thread().name == "first":
            first_inside.set()
            second_inside.wait(0.5)
        else:
            second_inside.set()
            first_done.wait(5)
        return real(data, **kwargs)

    def first() -> None:
        load_image_tensor(tmp_path / "photo.jpg")
        first_done.set()

    monkeypatch.setattr(datasets_module, "decode_jpeg", decode)
    threads = [threading.Thread(target=first, name="first")]
    threads.append(threading.Thread(target=load_image_tensor, args=(tmp_path / "photo.jpg",)))
    capfd.readouterr()
    threads[0].start()
    assert first_inside.wait(5)
    threads[1].start()
    for thread in threads:
        thread.join(10)
    os.write(2, b"heard\n")
    assert capfd.readouterr().err == "heard\n"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_decoding_jpegs_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """Standard error's copy and /dev/null, opened for each decode_jpeg call, are closed again:
    a loader reading 100,000 JPEGs an epoch must not run out of file descriptors."""
    _photo().save(tmp_path / "good.jpg", quality=90)
    load_image_tensor(tmp_path / "good.jpg")
    before = _open_descriptors()
    for _ in range(20):
        load_image_tensor(tmp_path / "good.jpg")
    assert _open_descriptors() == before


def test_a_process_whose_standard_error_cannot_be_copied_still_decodes_jpegs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where descriptor 2 cannot be duplicated (closed: a daemon's), decode_jpeg runs without the
    redirection and gives the same pixels."""
    _photo().save(tmp_path / "good.jpg", quality=90)
    expected = load_image_tensor(tmp_path / "good.jpg")

    def closed(descriptor: int) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(os, "dup", closed)
    monkeypatch.setattr(datasets_module, "load_image", pytest.fail)
    assert torch.equal(load_image_tensor(tmp_path / "good.jpg"), expected)


def test_a_jpeg_decode_jpeg_warns_about_is_left_to_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warning from decode_jpeg (a build that reports libjpeg's "corrupt data" as one) means
    Pillow decodes the file: its pixels, not the warned decode's, and no warning escapes."""
    _photo().save(tmp_path / "photo.jpg", quality=90)
    expected = torch.from_numpy(np.array(load_image(tmp_path / "photo.jpg"))).permute(2, 0, 1)

    def warns(data, **kwargs):
        warnings.warn("Corrupt JPEG data: 12 extraneous bytes", UserWarning, stacklevel=2)
        return torch.zeros_like(expected)

    monkeypatch.setattr(datasets_module, "decode_jpeg", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load_image_tensor(tmp_path / "photo.jpg"), expected)


def test_transforms_give_pillows_resize_within_one_level_on_tensors() -> None:
    """The geometry runs on uint8 tensors: the same crops, downscaled and upscaled as Pillow does
    to within one level in 255; a PIL image and its tensor give the same output."""
    for size, out in (((640, 480), 224), ((333, 250), 96), ((50, 40), 64), ((96, 96), 96)):
        image = _photo(*size, seed=out)
        as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        for train in (False, True):
            transform = build_transforms(out, train)
            to_image, *steps, _, _ = transform.transforms  # ..., ToDtype, Normalize
            assert isinstance(to_image, v2.ToImage)
            geometry = v2.Compose(steps)
            torch.manual_seed(0)
            by_pillow = to_image(geometry(image))  # the order before: Pillow resized
            torch.manual_seed(0)
            by_torch = geometry(to_image(image))
            assert by_torch.shape == by_pillow.shape == (3, out, out)
            assert (by_torch.int() - by_pillow.int()).abs().max() <= 1, (size, out, train)
            torch.manual_seed(0)
            from_pil = transform(image)
            torch.manual_seed(0)
            assert torch.equal(from_pil, transform(as_tensor))


def test_load_image_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    _raises_one_line(lambda: load_image(text), "notes.png", "not an image")

    noise = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _raises_one_line(lambda: load_image(truncated), "cut.png", "truncated")

    _raises_one_line(lambda: load_image(tmp_path / "absent.jpg"), "absent.jpg", "not found")
    _raises_one_line(lambda: load_image(io.BytesIO(b"GIF89a nonsense")), "the uploaded image")

    big = _png(tmp_path / "big.png", size=20)  # 400 pixels
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 100)
    _raises_one_line(lambda: load_image(big), "big.png", "too large")
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # Pillow's own warning becomes an error
    _raises_one_line(lambda: load_image(big), "big.png", "too many pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # ... and so does its hard limit
    _raises_one_line(lambda: load_image(big), "big.png", "too many pixels")

    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 51)).save(strip)  # few pixels, but scaled to the model's size: huge
    _raises_one_line(lambda: load_image(strip), "strip.png", "too elongated")
    Image.new("RGB", (50, 1)).save(strip)  # 50:1 is still allowed
    assert load_image(strip).size == (50, 1)


def test_max_pixels_is_the_limit_of_both_readers_and_an_image_at_it_loads(tmp_path: Path) -> None:
    """`max_pixels` replaces `MAX_IMAGE_PIXELS` for `load_image` and `load_image_tensor`: an image
    of exactly that many pixels loads, one pixel fewer allowed refuses it, naming both numbers."""
    path = _png(tmp_path / "ten.png", size=10)  # 100 pixels
    assert load_image(path, max_pixels=100).size == (10, 10)
    assert load_image_tensor(path, max_pixels=100).shape == (3, 10, 10)
    said = f"'{path}' is too large (10 x 10 = 100 pixels, limit 99); downscale it first"
    for read in (load_image, load_image_tensor):
        with pytest.raises(UserError) as info:
            read(path, max_pixels=99)
        assert str(info.value) == said


def test_a_strip_elongated_either_way_past_the_ratio_is_refused() -> None:
    """51:1 is refused lying down as standing up; 50:1 either way loads."""
    for size in ((51, 1), (1, 51), (102, 2), (2, 102)):
        buffer = io.BytesIO()
        Image.new("RGB", size).save(buffer, "PNG")
        message = _raises_one_line(lambda buffer=buffer: load_image(buffer), "too elongated")
        assert message.startswith(f"the uploaded image is {size[0]} x {size[1]} pixels"), size
    for size in ((50, 1), (1, 50)):
        buffer = io.BytesIO()
        Image.new("RGB", size).save(buffer, "PNG")
        assert load_image(buffer).size == size


def test_paths_that_are_no_image_file_say_what_they_are_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NUL in the name, a folder and a file the process may not read: each its own line and its
    own advice, not "corrupt" and not the operating system's words."""
    _raises_one_line(
        lambda: load_image("photo\x00.png"),
        "image path 'photo\x00.png' contains a NUL character; fix the file name",
    )
    assert _raises_one_line(lambda: load_image(tmp_path)) == (
        f"'{tmp_path}' is a folder, not an image file; pass an image file"
    )
    path = _png(tmp_path / "locked.png")

    def refused(name, *args, **kwargs):  # as open() fails for a file of mode 000, not as root
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(name))

    monkeypatch.setattr(images_module, "open", refused, raising=False)
    monkeypatch.setattr(Image, "open", refused)
    assert _raises_one_line(lambda: load_image(path)) == (
        f"cannot read '{path}' (permission denied); check its permissions"
    )


@pytest.mark.parametrize(
    "raised, said",
    [
        (IndexError("tuple index out of range"), "is corrupt or truncated (tuple index out of "
         "range); re-save or re-upload the image"),
        (ValueError(""), "is corrupt or truncated (ValueError); re-save or re-upload the image"),
        (NotImplementedError("no decoder for this variant"), "is an image Pillow recognises as "
         "PNG but cannot decode on this machine (no decoder for this variant); convert it to PNG "
         "or JPEG"),
        (KeyError("tile"), "cannot be decoded (KeyError: 'tile'); re-save it as PNG or JPEG"),
    ],
)  # fmt: skip
def test_each_kind_of_decoding_failure_gets_its_own_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: Exception, said: str
) -> None:
    """What Pillow raises while decoding a file it opened, named as what it means: damaged data
    (an IndexError too), a variant this machine cannot decode (Pillow's NotImplementedError; the
    format named), anything else; an empty message gives the error's type."""
    path = _png(tmp_path / "photo.png")

    def fails(*args, **kwargs):
        raise raised

    monkeypatch.setattr(images_module.ImageOps, "exif_transpose", fails)
    assert _raises_one_line(lambda: load_image(path)) == f"'{path}' {said}"


def test_running_out_of_memory_while_decoding_is_the_machines_not_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MemoryError is raised as it is (run_cli says the machine ran out of memory), not turned
    into a line blaming the file."""
    path = _png(tmp_path / "photo.png")

    def fails(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(images_module.ImageOps, "exif_transpose", fails)
    with pytest.raises(MemoryError):
        load_image(path)


def test_an_upload_without_a_name_is_the_uploaded_image() -> None:
    for name in ("", None, 3):
        stream = io.BytesIO(b"not an image")
        if name is not None:
            stream.name = name
        message = _raises_one_line(lambda stream=stream: load_image(stream))
        assert message.startswith("the uploaded image is not an image Pillow can decode"), name
    stream = io.BytesIO(b"not an image")
    stream.name = "cat.png"
    assert _raises_one_line(lambda: load_image(stream)).startswith("'cat.png' is not an image")


def test_sixteen_bit_and_float_gray_are_scaled_to_eight_bits_rounded(tmp_path: Path) -> None:
    """16-bit gray is v / 257 rounded (not cut: 200 is 1, not 0); float gray of 0..1 is scaled
    by 255 (1.0 itself is still 0..1), float gray of 0..255 is kept; each rounded."""
    sixteen = np.array([[0, 128, 129, 200, 385, 386, 257 * 128 + 128, 65535]], dtype=np.uint16)
    expected = np.floor(sixteen / 257 + 0.5).astype(int)
    assert expected.tolist() == [[0, 0, 1, 1, 1, 2, 128, 255]]
    path = tmp_path / "gray16.png"
    Image.fromarray(sixteen).save(path)
    assert np.asarray(load_image(path))[..., 0].tolist() == expected.tolist()
    for values, eight in (
        ([0.0, 0.3, 0.5, 1.0], [0, 77, 128, 255]),  # 0.3 * 255 = 76.5
        ([0.0, 100.4, 100.6, 255.0], [0, 100, 101, 255]),
    ):
        floats = tmp_path / "float.tiff"
        Image.fromarray(np.array([values], dtype=np.float32), "F").save(floats)
        assert Image.open(floats).mode == "F"
        assert np.asarray(load_image(floats))[..., 0].tolist() == [eight], values


def test_a_palette_with_alpha_is_composited_on_white() -> None:
    """A PA image (a TIFF holds one): transparent pixels are white, as in RGBA and LA."""
    palette = Image.new("PA", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), (0, 0))  # red, transparent
    palette.putpixel((1, 0), (1, 255))  # blue, opaque
    buffer = io.BytesIO()
    palette.save(buffer, "TIFF")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "PA"
    loaded = load_image(buffer)
    assert [loaded.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 0, 255)]


# --------------------------------------------------------------------------------------------
# Synthetic scenes


def test_a_full_disk_while_writing_scenes_names_the_image_and_leaves_no_half_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """On a full tmpfs PIL's save fails as it closes the file, with an OSError that names none
    and leaving the image cut short (a traceback and exit status 1 before)."""
    real_save = Image.Image.save

    def save(image, fp, *args, **kwargs):
        if Path(fp).name == "000002.png":
            Path(fp).write_bytes(b"\x89PNG\r\n")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "scenes"
    argv = ["--out", str(out), "--num-images", "4", "--size", str(scenes.MIN_SIZE)]
    assert run_cli(scenes.main, argv) == 2
    image = out / scenes.IMAGE_FOLDER / "000002.png"
    assert capsys.readouterr().err == (
        f"error: the disk is full (writing {image}): No space left on device; free space on it "
        "and run again\n"
    )
    assert sorted(p.name for p in image.parent.iterdir()) == ["000000.png", "000001.png"]
    assert not (out / scenes.JSON_NAME).exists()


def test_a_second_scenes_command_writing_the_same_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, lock_held
) -> None:
    """Two `captioner.scenes` into one --out at once (a scheduler's overlapping jobs) each wrote
    its images and then its JSON: the JSON written last described 1000 images of 6000 that the
    other command had overwritten, exit status 0 for both. The second is refused; the first
    one's folder is left as it is, and a folder written whole is not held any more."""
    out = tmp_path / "scenes"
    out.mkdir()
    release = lock_held(out, ".dataset_scenes.json.lock")
    argv = ["--out", str(out), "--num-images", "2", "--size", str(scenes.MIN_SIZE)]
    assert run_cli(scenes.main, argv) == 2
    release()
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out '{out}' is being written by another captioner.scenes "
                          "command (process ")  # fmt: skip
    assert err.endswith("; wait for it to end, or pass another --out\n")
    assert sorted(p.name for p in out.iterdir()) == [".dataset_scenes.json.lock"]  # the holder's
    assert run_cli(scenes.main, argv) == 0  # its holder gone
    assert sorted(p.name for p in out.iterdir()) == [scenes.JSON_NAME, scenes.IMAGE_FOLDER]


def test_scenes_written_from_python_leave_the_folder_unheld(tmp_path: Path) -> None:
    """`generate_dataset` called from Python (a notebook, a fixture) gives its folder up when it
    returns, not at the interpreter's exit: no lock file is left beside the data, and another
    process may write the folder at once."""
    out = tmp_path / "scenes"
    scenes.generate_dataset(out, 2, size=scenes.MIN_SIZE)
    assert sorted(p.name for p in out.iterdir()) == [scenes.JSON_NAME, scenes.IMAGE_FOLDER]


def test_scene_is_deterministic_and_matches_its_pixels() -> None:
    image, scene, captions = scenes.render_random_scene(7, 64)
    again = scenes.render_random_scene(7, 64)
    assert image.tobytes() == again[0].tobytes() and scene == again[1] and captions == again[2]
    assert image.size == (64, 64) and image.mode == "RGB"
    for seed in range(150):
        image, scene, captions = scenes.render_random_scene(seed, 96)
        objects = scene["objects"]
        assert 1 <= len(objects) <= 3 and 3 <= len(captions) <= 5
        assert len({scenes.object_phrase(o) for o in objects}) == len(objects)
        for obj in objects:  # the centre pixel shows the object's colour
            assert image.getpixel(tuple(obj["position"])) == scenes.COLORS[obj["color"]]
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
        axis = {"row": 0, "column": 1}.get(scene["layout"])
        for first, second in zip(objects, objects[1:], strict=False):
            assert second["box"][axis] > first["box"][axis + 2]  # apart along the axis
            along = second["position"][axis] - first["position"][axis]
            across = abs(second["position"][1 - axis] - first["position"][1 - axis])
            assert across <= 0.4 * along  # one axis clearly dominates
        assert captions == scenes.scene_captions(scene)


def test_scene_captions_name_objects_correctly() -> None:
    for seed in range(60):
        _, scene, captions = scenes.render_random_scene(seed, 64)
        assert all(scenes.caption_names_objects_correctly(c, scene) for c in captions)
        first = scene["objects"][0]
        wrong = "red" if first["color"] != "red" else "blue"
        recoloured = captions[0].replace(
            f"{first['size']} {first['color']}", f"{first['size']} {wrong}", 1
        )
        assert not scenes.caption_names_objects_correctly(recoloured, scene)
        assert not scenes.caption_names_objects_correctly(
            captions[0] + " and a small red cross", scene
        )
        dropped = " ".join(scenes.object_phrase(o) for o in scene["objects"][1:])
        assert not scenes.caption_names_objects_correctly(dropped, scene)
    row = {
        "objects": [
            {"size": "small", "color": "red", "shape": "circle"},
            {"size": "large", "color": "blue", "shape": "square"},
        ],
        "layout": "row",
    }
    assert scenes.scene_captions(row)[:2] == [
        "a small red circle to the left of a large blue square",
        "a large blue square to the right of a small red circle",
    ]
    # every template, each relation the right way round (objects are listed left to right, or
    # top to bottom)
    a, b, c = "a small red circle", "a large blue square", "a small green triangle"
    third = {"size": "small", "color": "green", "shape": "triangle"}
    expected = {
        ("row", 2): [f"{a} to the left of {b}", f"{b} to the right of {a}",
                     f"there is {a} left of {b}", f"{a} is to the left of {b}"],
        ("column", 2): [f"{a} above {b}", f"{b} below {a}", f"there is {a} above {b}",
                        f"{a} is above {b}"],
        ("row", 3): [f"{a} to the left of {b} to the left of {c}",
                     f"{c} to the right of {b} to the right of {a}",
                     f"from left to right, {a}, {b} and {c}", f"{a}, {b} and {c} from left to right",
                     f"there is {a} left of {b} left of {c}"],
        ("column", 3): [f"{a} above {b} above {c}", f"{c} below {b} below {a}",
                        f"from top to bottom, {a}, {b} and {c}",
                        f"{a}, {b} and {c} from top to bottom", f"there is {a} above {b} above {c}"],
    }  # fmt: skip
    for (layout, count), captions in expected.items():
        objects = [*row["objects"], third][:count]
        assert scenes.scene_captions({"objects": objects, "layout": layout}) == captions
    # the hard preset's sentences (A, B, C in layout order; F in front of K)
    be = ["is", "is", "is"]
    lines = {
        ("row", 2): ["A to the left of B", "B to the right of A", "there is A left of B",
                     "A is on the left and B is on the right",
                     "we can see A on the left and B on the right"],
        ("column", 2): ["A above B", "B below A", "there is A above B",
                        "A is at the top and B is at the bottom", "we can see B under A"],
        ("row", 3): ["A to the left of B to the left of C", "C to the right of B to the right of A",
                     "from left to right, A, B and C", "A, B and C from left to right",
                     "this image contains A, B and C in a row"],
        ("column", 3): ["A above B above C", "C below B below A", "from top to bottom, A, B and C",
                        "A, B and C from top to bottom", "this image contains A, B and C in a column"],
    }  # fmt: skip
    for (layout, count), captions in lines.items():
        nouns = ["A", "B", "C"][:count]
        assert [scenes._line_caption(layout, nouns, be, v) for v in range(5)] == captions
    assert [scenes._overlap_caption(["F", "K"], be, v) for v in range(5)] == [
        "F in front of K", "K behind F", "F partly covering K", "K partly hidden by F",
        "there is F overlapping K",
    ]  # fmt: skip
    corners = [
        scenes._corners_caption(["A", "B"], ["top left", "bottom right"], v) for v in range(5)
    ]
    assert corners == [
        "A in the top left corner and B in the bottom right corner",
        "there is A in the top left corner and B in the bottom right corner",
        "A at the top left and B at the bottom right",
        "in the upper left corner A and in the lower right corner B",
        "we see A at the top left and B at the bottom right",
    ]
    assert not scenes.caption_names_objects_correctly(
        "a red circle left of a large blue square", row
    )


def test_scenes_dataset_is_byte_identical(tmp_path: Path) -> None:
    first = scenes.generate_dataset(tmp_path / "one", 5, seed=4, size=64)
    second = scenes.generate_dataset(tmp_path / "two", 5, seed=4, size=64)
    assert first.read_bytes() == second.read_bytes()
    for name in sorted(p.name for p in (tmp_path / "one" / "images").iterdir()):
        assert (tmp_path / "one" / "images" / name).read_bytes() == (
            tmp_path / "two" / "images" / name
        ).read_bytes()


def test_scenes_interrupted_over_an_earlier_set_leave_no_captions_of_other_images(
    tmp_path: Path, monkeypatch
) -> None:
    """Generating over an earlier data set and stopping half-way (SIGTERM, a crash) left the old
    JSON beside new images, every caption describing another picture; now no JSON is left."""
    json_path = scenes.generate_dataset(tmp_path, 4, seed=0, size=64)
    real = scenes._generator("demo")
    drawn = []

    def stops_at_the_third(rng, size):
        if len(drawn) == 2:
            raise KeyboardInterrupt
        drawn.append(1)
        return real(rng, size)

    monkeypatch.setattr(scenes, "_generator", lambda preset: stops_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        scenes.generate_dataset(tmp_path, 4, seed=1, size=64)
    assert not json_path.exists()
    with pytest.raises(UserError, match="not found"):
        load_records("karpathy", json_path, None)


def test_scenes_cli_writes_karpathy_json(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "captioner.scenes", "--out", str(tmp_path / "data")]
    command += ["--num-images", "10", "--seed", "3", "--size", "64"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = load_records("karpathy", tmp_path / "data" / "dataset_scenes.json", None)
    assert len(records) == 10
    assert [r.split for r in records].count("test") == 1
    assert all(Path(r.image_path).is_file() for r in records)
    for record in records:
        assert record.meta is not None
        assert all(scenes.caption_names_objects_correctly(c, record.meta) for c in record.captions)

    bad = subprocess.run(
        [*command[:5], "--size", "10"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --size") and bad.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("suffix", "kind"), [("csv", "csv"), ("jsonl", "jsonl"), ("txt", "flickr8k")]
)
def test_another_formats_file_read_as_json_says_which_format_to_give(tmp_path, suffix, kind):
    path = tmp_path / f"captions.{suffix}"
    path.write_text("0.png a red circle\n")  # no format's look: the suffix tells
    with pytest.raises(
        UserError, match=rf"not read as JSON: give its format \({kind}: --format {kind}"
    ):
        load_records("karpathy", str(path), tmp_path, check_images=False)


def _files_of_every_format(folder: Path) -> dict[str, Path]:
    """One small annotations file of each format (the names each format's users have), over the
    images 0.png and 1.png of `folder`."""
    names = ["0.png", "1.png"]
    for name in names:
        _png(folder / name)
    files = {
        "karpathy": _karpathy(folder, [_entry(n, "train", ["a red circle"], None) for n in names]),
        "coco": _coco(folder / "captions_train2017.json", names),
        "csv": folder / "captions.txt",  # Kaggle's Flickr8k: a CSV named .txt
        "jsonl": folder / "captions.jsonl",
        "flickr8k": folder / "results_20130124.token",  # Flickr30k's: no split lists
    }
    files["csv"].write_text("image,caption\n" + "".join(f"{n},a red circle\n" for n in names))
    files["jsonl"].write_text(
        "".join(json.dumps({"image": n, "caption": "a red circle"}) + "\n" for n in names)
    )
    files["flickr8k"].write_text("".join(f"{n}#0\ta red circle\n" for n in names))
    return files


def test_a_pipe_given_as_annotations_is_refused_at_once(tmp_path: Path) -> None:
    """The loader's refusal stands: the file is not sniffed for another format's look, which
    read a pipe for ever (a regression of the sniffing, found by its review)."""
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    done: list[str] = []

    def load() -> None:
        with pytest.raises(UserError) as refused:
            load_records("karpathy", fifo, tmp_path)
        done.append(str(refused.value))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert done and done[0].endswith(
        "fifo.json' is not a regular file (a pipe?); check the annotations path"
    )


def test_a_file_given_in_another_format_is_refused_naming_its_own(tmp_path: Path) -> None:
    """Every format's file read as every other format: one line naming the format the file looks
    like, in place of the other loader's advice to mend a file that is fine (Kaggle's
    captions.txt under the default karpathy said to give the flickr8k format, whose loader then
    asked for the original Flickr8k.token.txt); and each file loads as its own format."""
    files = _files_of_every_format(tmp_path)
    for looks, file in files.items():
        assert len(load_records(looks, file, tmp_path)) == 2
        for fmt in set(files) - {looks}:
            _raises_one_line(
                lambda fmt=fmt, file=file: load_records(fmt, file, tmp_path),
                f"'{file}' looks like ",
                f"give its format ({looks}: --format {looks} or --set data.format={looks})",
            )


def test_a_name_that_begins_with_a_space_is_read_as_written_in_csv_and_jsonl(
    tmp_path: Path,
) -> None:
    """A whole name beginning with a space (the CSV beside its images) is read as written, in
    CSV and JSONL, and a name of blanks only is an empty image, not the folder."""
    images = tmp_path / "imgs"
    _png(images / " b.png")
    table = images / "captions.csv"
    table.write_text("image,caption\n b.png,a blue one\n", encoding="utf-8")
    lines = images / "captions.jsonl"
    lines.write_text(json.dumps({"image": " b.png", "caption": "a blue one"}) + "\n")
    for kind, file in (("csv", table), ("jsonl", lines)):
        records = load_records(kind, file, images, check_images=True)
        assert [record.image_path for record in records] == [str(images / " b.png")], kind
    blank = images / "blank.csv"
    blank.write_text("image,caption\n   ,a caption\n", encoding="utf-8")
    _raises_one_line(
        lambda: load_records("csv", blank, images, check_images=False), "line 2", "empty image"
    )


def _fixed_point(text: str) -> list[str]:
    """The reference: Treebank's kept tokens of the text (whitespace made single spaces), joined
    by spaces and tokenized again until that changes nothing (no fast path, no shortcut)."""
    words = _treebank_words(" ".join(text.lower().split()))
    for _ in range(100):
        again = _treebank_words(" ".join(words))
        if again == words:
            return words
        words = again
    raise AssertionError(f"no fixed point for {text!r}")


PIECES = list("ab0 1.,'\"-:;!?`()[]{}&$%#@/\\\t\n\x1fnts") + [
    "n't", "can", "not", "cannot", "gonna", "'s", "'ll", "--", "...", "''", "``", "  ", "\u00a0",
    "A", "D",
]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "t's'lln't'll''{",  # settles only after three passes (kills: _MAX_PASSES = 2)
        "\na's'll:",  # "a's" is no settled word: Treebank splits "'s" off
        "Dn's'll}cannot$\\,\xa0'''",
        "0.,",
        "0.'.:",
        ",,a",
        "0'\x1f",
        "A dog, running -- on the beach.",
    ],
)
def test_tokenize_is_the_fixed_point_of_treebank(text):
    assert tokenize(text) == _fixed_point(text)


def test_tokenize_is_the_fixed_point_of_treebank_on_punctuation_heavy_text():
    """Random texts of words, contractions and punctuation (kills: a settled-word pattern that
    takes an apostrophe inside a word, or words not separated by spaces, for settled)."""
    rng = random.Random(20261207)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 14)))
        assert tokenize(text) == _fixed_point(text), text


CJK_PIECES = [*PIECES, "一", "狗", "が", "ｶﾞ", "\u3099", "々", "。", "「", "ー", "Ｔ", "\u3000"]


def test_chinese_and_japanese_text_is_the_fixed_point_of_treebank_in_one_pass(monkeypatch):
    """A caption mixing Chinese or Japanese characters with ours (which the fast path of theirs
    alone does not take) took a second Treebank pass over them: its characters are settled
    words, as ours are. The tokens stay those of Treebank's fixed point over the characters set
    apart, on random text of them and our punctuation."""
    passes = []
    treebank = vocab_module._treebank_words
    monkeypatch.setattr(vocab_module, "_treebank_words", lambda text: passes.append(text) or
                        treebank(text))  # fmt: skip
    assert tokenize("3只狗在草地上奔跑，がっこう。") == list("3只狗在草地上奔跑がっこう")
    assert len(passes) == 1
    monkeypatch.undo()
    rng = random.Random(20261208)
    for _ in range(2000):
        text = "".join(rng.choice(CJK_PIECES) for _ in range(rng.randint(1, 14)))
        spaced = vocab_module._UNSPACED_CHARACTER.sub(r" \1 ", vocab_module._normalized(text))
        assert tokenize(text) == _fixed_point(spaced), text


# --- the day's formats changes: gaps a mutation audit found ---


def test_an_absolute_name_outside_the_root_is_its_own_key_even_when_written() -> None:
    """Only a name written relative to the root becomes a ``../`` key; one written as an absolute
    path outside it stays its own key (kills: the isabs check dropped, which gave
    '../../elsewhere/b.jpg')."""
    root = Path("/data/set")
    paths = ["/elsewhere/b.jpg", "/data/other/c.jpg"]
    written = {paths[0]: "/elsewhere/b.jpg", paths[1]: "../other/c.jpg"}
    assert relative_names(paths, root, written) == {
        paths[0]: "/elsewhere/b.jpg",
        paths[1]: "../other/c.jpg",
    }


def test_a_flickr30k_token_file_naming_images_outside_the_root_keeps_its_split_when_moved(
    tmp_path: Path,
) -> None:
    """Flickr30k's drawn splits, names relative to the image root that leave it (``../images``):
    drawn from the names as written (split_key, as csv rows), so the copy elsewhere splits alike
    (kills: `relative_names` without the written names, or split_key not kept)."""
    names = [f"{i}.jpg" for i in range(40)]

    def project(where: Path) -> Path:
        for name in names:
            _png(where / "images" / name)
        token = where / "ann" / "results_20130124.token"
        token.parent.mkdir(parents=True)
        token.write_text("".join(f"../images/{n}#0\ta picture of {n}\n" for n in names))
        return token

    first, moved = project(tmp_path / "a"), project(tmp_path / "elsewhere" / "deeper" / "b")

    def splits(token: Path) -> dict[str, str]:
        records = load_records("flickr8k", token, None, val_fraction=0.2, test_fraction=0.2, seed=1)
        assert all(r.split_key == f"../images/{Path(r.image_path).name}" for r in records)
        return {Path(r.image_path).name: r.split for r in records}

    assert splits(first) == splits(moved)
    assert set(splits(first).values()) == {"train", "val", "test"}


@pytest.mark.parametrize(
    "header",
    [
        "image,caption,source|notes",  # a '|' beside commas: not Kaggle's '|'-separated header
        "image,caption,comment",  # Kaggle's names stand in only where image and caption lack
    ],
)
def test_a_csv_that_names_image_and_caption_is_read_by_them(tmp_path: Path, header: str) -> None:
    _png(tmp_path / "a.png")
    table = tmp_path / "captions.csv"
    table.write_text(f"{header}\na.png,a red square,checked|by hand\n")
    [record] = load_records("csv", table, tmp_path)
    assert record.captions == ("a red square",)


def _kaggle_results(folder: Path) -> Path:
    for name in ("1.jpg", "2.jpg"):
        _png(folder / name)
    piped = folder / "results.csv"
    piped.write_text("image_name| comment_number| comment\n1.jpg| 0| A dog .\n2.jpg| 0| A cat .\n")
    return piped


@pytest.mark.parametrize("fmt", ["karpathy", "flickr8k", "coco", "jsonl"])
def test_kaggles_flickr30k_results_csv_given_as_another_format_is_named_a_csv(
    tmp_path: Path, fmt: str
) -> None:
    """Its '|'-separated header (image_name| comment_number| comment) looks like a CSV (kills:
    sniffing only ',' or only 'image'/'caption')."""
    piped = _kaggle_results(tmp_path)
    assert len(load_records("csv", piped, tmp_path)) == 2
    _raises_one_line(
        lambda: load_records(fmt, piped, tmp_path),
        f"'{piped}' looks like a CSV of images and captions",
        "give its format (csv: --format csv or --set data.format=csv)",
    )


def test_a_coco_image_info_file_is_not_said_to_look_like_karpathys(tmp_path: Path) -> None:
    """COCO's image_info_test2015.json has images and no annotations: no format's look, so the coco
    loader's own line stands (kills: any 'images' list of objects taken for Karpathy's JSON)."""
    for name, said in (
        ("image_info_test2015.json", "cannot tell the split of COCO file"),
        ("captions_train2014.json", "the test image_info files carry no captions"),
    ):
        info = tmp_path / name
        info.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}]}))
        message = _raises_one_line(lambda info=info: load_records("coco", info, tmp_path), said)
        assert "looks like" not in message


def test_a_predictions_file_is_not_said_to_look_like_ai_challengers(tmp_path: Path) -> None:
    """COCO's results format, which evaluate --predictions writes ([{"image_id", "caption"}],
    the id a number or a stem, the caption one string), given as annotations: no format's look,
    not AI Challenger's, whose --format aic would refuse it too (kills: any list of objects with
    both keys taken for AI Challenger's)."""
    for image_id, caption in ((391895, "a dog"), ("1000268201_693b08cb0e", "a dog"),
                              (391895, ["a dog"])):  # fmt: skip
        predictions = tmp_path / "predictions.json"
        predictions.write_text(json.dumps([{"image_id": image_id, "caption": caption}]))
        message = _raises_one_line(lambda p=predictions: load_records("karpathy", p, tmp_path))
        assert "looks like" not in message


def test_a_file_that_begins_with_blank_lines_is_still_recognised(tmp_path: Path) -> None:
    """The look comes from the first line that holds something (kills: the first line taken
    as it is)."""
    _png(tmp_path / "a.png")
    table = tmp_path / "captions.txt"
    table.write_text("\n\nimage,caption\na.png,a red square\n")
    _raises_one_line(
        lambda: load_records("karpathy", table, tmp_path),
        "looks like a CSV of images and captions",
    )


def test_a_json_line_without_a_caption_does_not_look_like_json_lines(tmp_path: Path) -> None:
    """JSON lines need both 'image' and 'caption' to be named as such (kills: 'image' alone)."""
    lines = tmp_path / "data.jsonl"
    lines.write_text(json.dumps({"image": "a.png", "text": "a red square"}) + "\n")
    message = _raises_one_line(lambda: load_records("karpathy", lines, tmp_path))
    assert "looks like" not in message


def test_an_empty_drawn_split_beside_given_ones_says_to_raise_its_fraction() -> None:
    """COCO's train and val files: train images come from the file, val and test are drawn; an
    empty test split says to raise data.test_fraction (kills: `any` turned `all`, which asked to
    give images a split the file cannot give)."""
    records = [
        ImageRecord("/train/a.jpg", ("x",), "train", drawn=False),
        ImageRecord("/val/b.jpg", ("y",), "val", drawn=True),
    ]
    _raises_one_line(lambda: select_split(records, "test"), "raise data.test_fraction")


def test_an_absolute_name_padded_with_spaces_splits_as_the_same_name_unpadded(
    tmp_path: Path,
) -> None:
    """Spaces of a file's layout before an absolute name outside the root are not part of the
    name as written: its key is the path itself, as without them (kills: the row's name before
    stripping kept as written, which drew a '../' key)."""
    image = _png(tmp_path / "elsewhere" / "a.png")
    root = tmp_path / "root"
    root.mkdir()
    plain, padded = tmp_path / "plain.csv", tmp_path / "padded.csv"
    plain.write_text(f"image,caption\n{image},a red square\n")
    padded.write_text(f"image,caption\n   {image},a red square\n")
    keys = [load_records("csv", table, root)[0].split_key for table in (plain, padded)]
    assert keys == [str(image), str(image)]
