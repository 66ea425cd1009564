"""Load caption annotations of the common public formats into `ImageRecord`s.

Every loader returns `list[ImageRecord]` with absolute image paths, raw captions and a split in
train/val/test, so the rest of the captioner never sees a format-specific structure. Bad input
(a missing file, malformed JSON, a missing key or column, a listed image missing on disk, an
unknown split, no records at all) raises `UserError` with one line naming the file and what to do.

Formats (`load_records(fmt, ...)`):

- ``karpathy``: the split JSON of Karpathy & Fei-Fei (dataset_coco.json, dataset_flickr8k.json,
  dataset_flickr30k.json), also written by `python -m captioner.scenes`.
- ``flickr8k``: the original Flickr8k.token.txt plus the Flickr_8k.{train,dev,test}Images.txt lists;
  also Flickr30k's results_20130124.token, whose splits are drawn, and Flickr8k-CN's Chinese
  caption files (flickr8kzhc.caption.txt) with their flickr8k{train,val,test}.txt lists (or
  flickr7k{train,val,test}.txt).
- ``coco``: one or more COCO caption files (captions_train2014.json, captions_val2014.json, ...).
- ``aic``: the AI Challenger 2017 Chinese caption files (AIC-ICC:
  caption_train_annotations_20170902.json, caption_validation_annotations_20170910.json), one or
  both, split as COCO's.
- ``csv`` / ``jsonl``: one row per (image, caption), optional split column (also Kaggle's
  Flickr30k results.csv).

When `image_root` is None, relative image paths are resolved against the annotation file's folder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recurrent.errors import UserError, not_utf8, shown

from .records import SPLITS, ImageRecord

PathLike = str | os.PathLike[str]

FORMATS = ("karpathy", "flickr8k", "coco", "aic", "csv", "jsonl")
SEVERAL_FILES = ("coco", "aic")  # the formats whose train and val files are given together
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
# Flickr8k-CN (Li et al. 2016, "Adding Chinese Captions to Images"; github.com/li-xirong/
# flickr8kcn): the same images, captions in lines of ``NAME.jpg#zhc#N caption`` (zhb, zhg: machine
# translations; enc: the English; some copies drop the ".jpg"), and split lists of names without
# their ".jpg": flickr8k{train,val,test}.txt in the repository's data/ folder, flickr7k... in
# some copies (`FLICKR8K_CN_OTHER_SPLIT_FILES`).
FLICKR8K_CN_SPLIT_FILES = {
    "train": "flickr8ktrain.txt",
    "val": "flickr8kval.txt",
    "test": "flickr8ktest.txt",
}
FLICKR8K_CN_OTHER_SPLIT_FILES = {
    "train": "flickr7ktrain.txt",
    "val": "flickr7kval.txt",
    "test": "flickr7ktest.txt",
}
_FLICKR8K_CN_LINE = re.compile(r"([^\s#]+)#[a-z]+#\d+ +(\S.*)")
KARPATHY_SPLITS = (*SPLITS, "restval")
# Recorded in every captioner checkpoint (`split_rule`): the splits that no file gives are drawn by
# `hashed_split`. Checkpoints without it were trained when they were a shuffle of the whole set;
# a run started (--init-from) from such weights on drawn data records OLDER_WEIGHTS instead.
SPLIT_RULE = "hash of relative names"
OLDER_WEIGHTS = "hash, from weights trained on an earlier split"
# The rule before SPLIT_RULE: images outside the image root that the annotations name relative to
# it (``../images/a.jpg``) drew their splits from their absolute paths; the others, as now.
PATHS_OUTSIDE_ABSOLUTE = "hash"

# The command an error line sends the user to for every file it counts: with the run's config,
# or, for a user who has only the checkpoint, with evaluate's arguments.
CHECK_DATA = (
    "python -m captioner.check_data with train's --config and --set, or evaluate's --checkpoint, "
    "--annotations and --image-root"
)


# --------------------------------------------------------------------------------------------
# Shared helpers


def _existing_file(path: PathLike, what: str) -> Path:
    """Return `path` as a Path, or raise a UserError when it is not an existing file."""
    if not os.fspath(path):
        raise UserError(f"no {what} given; pass the path of the annotations")
    file = Path(path)
    if not file.is_file():
        problem = (
            "is a folder, not a file"
            if file.is_dir()
            else "is not a regular file (a pipe?)"
            if file.exists()
            else "not found"
        )
        raise UserError(f"{what} '{file}' {problem}; check the annotations path")
    return file


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from spreadsheet tools
    except UnicodeDecodeError:
        raise not_utf8(file) from None  # the bad byte's offset in the file, the BOM counted


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file: lines end at LF (a CR before it is dropped), as editors
    count them; unlike `str.splitlines`, separators such as U+2028 or U+0085 stay in the line."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _parse_json(text: str, where: str, *, one_line: bool = False) -> Any:
    """json.loads, with every way it fails on hostile text as a UserError naming `where` (and the
    position; `one_line`: `where` names the line already)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f"column {err.colno}" if one_line else f"line {err.lineno} column {err.colno}"
        fix = "write one JSON object per line" if one_line else "fix or re-download the file"
        suffix = Path(where.strip("'")).suffix.lower().lstrip(".")
        if not one_line and suffix in ("csv", "jsonl", "txt", "token"):  # another format's file
            kind = {"txt": "flickr8k", "token": "flickr8k"}.get(suffix, suffix)
            fix = (
                f"a .{suffix} file is not read as JSON: give its format ({kind}: --format {kind} "
                f"or --set data.format={kind})"
            )
        raise UserError(f"{where} is malformed JSON at {at} ({err.msg}); {fix}") from None
    except RecursionError:
        raise UserError(
            f"{where} nests JSON lists or objects too deeply to read; fix or re-download the file"
        ) from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise UserError(
            f"{where} holds a JSON value Python cannot read ({err}); fix the file"
        ) from None


def _read_json(file: Path) -> Any:
    return _parse_json(_read_text(file), f"'{file}'")


def _image_root(image_root: PathLike | None, annotations: Path) -> Path:
    """The folder relative image paths are resolved against (the annotations' folder if None)."""
    root = annotations.parent if image_root is None else Path(image_root)
    if not root.is_dir():
        raise UserError(f"image root '{root}' is not a folder; pass the folder holding the images")
    return root.absolute()


def _image_path(root: Path, name: str) -> str:
    """Absolute, normalised path of `name` (absolute names are kept, relative ones joined)."""
    return os.path.abspath(os.path.join(root, name))


def _check_image(path: str, where: str, check_images: bool) -> None:
    if check_images and not os.path.isfile(path):
        raise UserError(
            f"{where}: image '{path}' not found; check data.image_root or remove the entry "
            f"({CHECK_DATA} lists every missing image)"
        )


def validate_fractions(val_fraction: float, test_fraction: float) -> None:
    """Both fractions in [0, 1) and leaving images for training, else a UserError."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {value}; pass e.g. 0.05")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(
            f"val_fraction + test_fraction must be below 1 (got {val_fraction} + {test_fraction}); "
            "leave images for training"
        )


def relative_names(
    paths: Iterable[str], root: Path, written: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Each path's name for `hashed_split`: the path relative to the folder `root` when it lies
    inside it, or when the annotations wrote it relative to `root` (``written``: path -> name as
    written; ``../images/a.jpg``, which `caption --csv` writes beside the images' folder), so a
    data set moved elsewhere keeps its split; else (an absolute path outside `root`) the path
    itself. In POSIX form, so that one data set splits alike on every system."""
    prefix = os.path.join(os.path.abspath(root), "")  # as normalised as the image paths
    written = written or {}

    def name(path: str) -> str:
        if path.startswith(prefix):
            return path[len(prefix) :]
        if path in written and not os.path.isabs(written[path]):
            return os.path.relpath(path, prefix)
        return path

    names = {path: name(path) for path in paths}
    if os.sep != "/":  # Windows: the separators of the loaders' os.path.abspath
        names = {path: name.replace(os.sep, "/") for path, name in names.items()}
    return names


def _split_count(num: int, fraction: float) -> int:
    """How many of `num` items a fraction takes: at least one whenever the fraction is positive."""
    return 0 if fraction <= 0.0 or num == 0 else max(1, round(num * fraction))


def exact_split(
    order: Sequence[str], val_fraction: float, test_fraction: float, rest: str = "train"
) -> dict[str, str]:
    """The first round(test_fraction x n) keys of `order` to "test", the next round(val_fraction
    x n) to "val", the others to `rest`; a positive fraction takes at least one key while one
    stays in `rest` (on a tie val keeps its key, as training selects models by it)."""
    num = len(order)
    num_val, num_test = _split_count(num, val_fraction), _split_count(num, test_fraction)
    while num_val + num_test > max(num - 1, 0) and num_val + num_test > 0:
        if num_test >= num_val:
            num_test -= 1
        else:
            num_val -= 1
    assignment = dict.fromkeys(order[:num_test], "test")
    assignment.update(dict.fromkeys(order[num_test : num_test + num_val], "val"))
    assignment.update(dict.fromkeys(order[num_test + num_val :], rest))
    return assignment


def split_draw(name: str, seed: int) -> float:
    """The number in [0, 1) that `hashed_split` draws for an image named `name`: 64 bits of the
    BLAKE2b hash of the seed and the name's file-system bytes."""
    digest = hashlib.blake2b(f"{seed}".encode() + b"\0" + os.fsencode(name), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64


def hashed_split(
    names: Mapping[str, str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    rest: str = "train",
) -> dict[str, str]:
    """Assign each key (an image) of `names` to "test", "val" or `rest` by a hash of its name.

    Each key's name (`relative_names`) and the seed draw a number in [0, 1) (`split_draw`): "test"
    below `test_fraction`, "val" below `test_fraction + val_fraction`, else `rest`. A key's split
    depends on nothing else: images added to a data set, or taken out of it, leave every other
    image where it was, so with the same seed and fractions a checkpoint trained before never
    meets its training images among the test ones; and a change of `val_fraction` never moves a
    test image. The fractions are therefore expected shares, not exact counts.

    Small sets, where a split drew no key (or every key drew val or test): `exact_split` of the
    keys in the order of their draws. Those keys may move when images are added, so a set of a few
    dozen images that will grow wants a split column.
    """
    draws = {key: split_draw(name, seed) for key, name in names.items()}
    assignment = {
        key: "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else rest
        for key, u in draws.items()
    }
    fractions = (("val", val_fraction), ("test", test_fraction))
    if set(assignment.values()) >= {rest, *(split for split, part in fractions if part > 0)}:
        return assignment
    by_draw = sorted(draws, key=lambda key: (draws[key], key))
    return exact_split(by_draw, val_fraction, test_fraction, rest)


def _is_id(value: object) -> bool:
    """An image id of a JSON annotation file: an integer or a string (never a bool)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_name(value: object) -> bool:
    """An image file name: a string that is not blank."""
    return isinstance(value, str) and bool(value.strip())


# --------------------------------------------------------------------------------------------
# Karpathy split JSON


def load_karpathy(
    annotations: PathLike,
    image_root: PathLike | None = None,
    *,
    restval_to_train: bool = True,
    check_images: bool = True,
) -> list[ImageRecord]:
    """Load a Karpathy split file (dataset_coco.json / dataset_flickr8k.json / ...).

    Image path = image_root / filepath / filename (`filepath` may be absent). The "restval" split
    (COCO val images Karpathy did not put in val/test) goes to train when `restval_to_train`, else
    it is dropped. A per-image `scene` dict (the synthetic scenes' ground truth) is kept as `meta`.
    Captions are the sentences' `raw` text, or their `tokens` joined by spaces when `raw` is absent.
    """
    file = _existing_file(annotations, "Karpathy split file")
    data = _read_json(file)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(
            f"'{file}' has no top-level 'images' list; it is not a Karpathy split file "
            "(dataset_coco.json style), so pick the matching format"
        )
    root = _image_root(image_root, file)
    records = []
    for index, entry in enumerate(images):
        where = f"'{file}' image #{index}"
        if not isinstance(entry, dict) or not _is_name(entry.get("filename")):
            raise UserError(f"{where} has no 'filename' string; every image needs one")
        where = f"{where} ({entry['filename']})"
        filepath = entry.get("filepath")
        if filepath is not None and not isinstance(filepath, str):
            raise UserError(f"{where} has a 'filepath' that is not a string; fix or remove it")
        split = entry.get("split")
        if split not in KARPATHY_SPLITS:
            raise UserError(
                f"{where} has split {shown(split)}; use one of {', '.join(KARPATHY_SPLITS)}"
            )
        if split == "restval":
            if not restval_to_train:
                continue
            split = "train"
        captions = tuple(_karpathy_captions(entry.get("sentences"), where))
        path = _image_path(root, os.path.join(filepath or "", entry["filename"]))
        _check_image(path, where, check_images)
        scene = entry.get("scene")
        meta = None if scene is None else scene if isinstance(scene, dict) else {"scene": scene}
        records.append(ImageRecord(path, captions, split, meta))
    return records


def _karpathy_captions(sentences: object, where: str) -> Iterator[str]:
    if not isinstance(sentences, list) or not sentences:
        raise UserError(f"{where} has no 'sentences' list of captions; every image needs some")
    for number, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
            if not isinstance(tokens, list):
                raise UserError(f"{where} sentence #{number} has neither 'raw' nor 'tokens'")
            raw = " ".join(str(token) for token in tokens)
        yield raw.strip()


# --------------------------------------------------------------------------------------------
# Flickr8k original files


def load_flickr8k(
    annotations: PathLike,
    image_root: PathLike | None = None,
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    check_images: bool = True,
) -> list[ImageRecord]:
    """Load Flickr8k from `Flickr8k.token.txt` and the split lists found next to it, Flickr8k-CN
    from `flickr8kzhc.caption.txt` and its lists, or Flickr30k from its `results_20130124.token`.

    Lines of the token file are ``IMAGE.jpg#N<TAB>caption``, or Flickr8k-CN's ``IMAGE.jpg#zhc#N
    caption`` (a name without an extension is a ".jpg"). The split lists
    Flickr_8k.trainImages.txt, Flickr_8k.devImages.txt (-> "val") and Flickr_8k.testImages.txt, or
    Flickr8k-CN's flickr8ktrain.txt, flickr8kval.txt and flickr8ktest.txt (or flickr7k...:
    `FLICKR8K_CN_SPLIT_FILES`, `FLICKR8K_CN_OTHER_SPLIT_FILES`; the first set of the three that
    is there is read, Flickr8k's first), must sit in the same folder. Captioned images that no
    split list names are left out (the official token file has a few such stray entries); a
    listed image without captions is an error. Flickr30k comes with no split lists: a token file
    whose name does not say Flickr8k, with none of them beside it, has its splits drawn by
    `hashed_split` (as a CSV without a split column).
    """
    file = _existing_file(annotations, "Flickr8k token file")
    captions: dict[str, list[str]] = {}
    for number, line in _lines(_read_text(file)):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        chinese = _FLICKR8K_CN_LINE.fullmatch(line.strip())
        if chinese:
            key, caption = _flickr8k_cn_name(chinese[1]), chinese[2]
        elif not tab or not key.strip() or not caption.strip():
            raise UserError(
                f"'{file}' line {number} is not 'IMAGE.jpg#N<TAB>caption' (or Flickr8k-CN's "
                "'IMAGE#zhc#N caption'); pass the original Flickr8k.token.txt"
            )
        name = key.strip().rpartition("#")[0] or key.strip()
        captions.setdefault(name, []).append(caption.strip())
    root = _image_root(image_root, file)
    layouts = (FLICKR8K_SPLIT_FILES, FLICKR8K_CN_SPLIT_FILES, FLICKR8K_CN_OTHER_SPLIT_FILES)
    split_files = next(
        (
            layout
            for layout in layouts
            if any((file.parent / name).exists() for name in layout.values())
        ),
        FLICKR8K_SPLIT_FILES,
    )
    chinese_lists = split_files is not FLICKR8K_SPLIT_FILES
    lists = [file.parent / name for name in split_files.values()]
    if "flickr8k" not in file.name.lower() and not any(path.exists() for path in lists):
        # Flickr30k: the rows of a CSV without a split column
        rows = (
            CsvRow(f"'{file}'", name, caption, None)
            for name, texts in captions.items()
            for caption in texts
        )
        return _load_rows(rows, file, image_root, val_fraction, test_fraction, seed, check_images)
    records, seen = [], {}
    for split, list_name in split_files.items():
        list_file = file.parent / list_name
        if not list_file.is_file():
            others = (
                "" if chinese_lists else f" (for Flickr8k-CN, its {FLICKR8K_CN_SPLIT_FILES[split]})"
            )
            raise UserError(
                f"Flickr8k split list '{list_file}' not found; "
                f"put {list_name}{others} next to '{file.name}'"
            )
        for number, line in _lines(_read_text(list_file)):
            name = line.strip()
            if name and chinese_lists:
                name = _flickr8k_cn_name(name)
            if not name:
                continue
            where = f"'{list_file}' line {number}"
            if name in seen:
                raise UserError(f"{where}: image '{name}' is already in the {seen[name]} list")
            if name not in captions:
                raise UserError(
                    f"{where}: '{file.name}' has no caption for image '{name}'; "
                    "use matching Flickr8k files"
                )
            seen[name] = split
            path = _image_path(root, name)
            _check_image(path, where, check_images)
            records.append(ImageRecord(path, tuple(captions[name]), split))
    return records


def _flickr8k_cn_name(name: str) -> str:
    """The file of an image Flickr8k-CN names: its names lack Flickr8k's ".jpg"
    (``1000268201_693b08cb0e``)."""
    return f"{name}.jpg" if name and not os.path.splitext(name)[1] else name


# --------------------------------------------------------------------------------------------
# COCO caption files


def _file_split(file: Path, kind: str, example: str) -> str:
    """train/val from the file name of a ``kind`` file (a COCO or AI Challenger one): exactly one
    of "train" and "val" ("validation" too) must appear in it."""
    name = file.name.lower()
    found = [split for split in ("train", "val") if split in name]
    if len(found) != 1:
        raise UserError(
            f"cannot tell the split of {kind} file '{file}' from its name; rename it to contain "
            f"'train' or 'val' (like {example}) or use the csv/jsonl format"
        )
    return found[0]


def load_coco(
    annotations: PathLike | Sequence[PathLike],
    image_root: PathLike | None = None,
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    check_images: bool = True,
) -> list[ImageRecord]:
    """Load one or more COCO caption files (captions_train2014.json style).

    Each file's split comes from its name ("train" or "val"). The public COCO test images have no
    captions, so the test split is always carved out, by `hashed_split` of the images' file
    names (their paths in the folder they are read from, however `image_root` is spelled), with
    `seed`:

    - images of train files are train; when no val file is given, `val_fraction` and
      `test_fraction` of them become val and test;
    - images of val files are divided between val and test in the ratio
      val_fraction : test_fraction (half and half by default), as Karpathy's split does with
      val2014. So a val file on its own gives val and test but no train, which suits evaluation;
      and there a change of either fraction moves images between val and test (never to train).

    Images are looked up at image_root/<train2014|val2014...>/file_name when that folder exists (the
    folder name is taken from the annotation file name), else at image_root/file_name. Images
    without any caption are left out: they can be neither trained nor scored.
    """
    return _load_split_files(
        annotations,
        image_root,
        val_fraction,
        test_fraction,
        seed,
        kind="COCO",
        example="captions_train2014.json",
        folder_of=_coco_folder,
        read=lambda file, base: _coco_captions(file, base, check_images),
    )


def _coco_folder(file: Path, split: str) -> str:
    """The folder of a COCO caption file's images, from its name: train2014, val2017, ..."""
    folder = re.search(r"(train|val)\d{4}", file.name.lower())
    return folder.group(0) if folder else f"{split}2014"


def _load_split_files(
    annotations: PathLike | Sequence[PathLike],
    image_root: PathLike | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    kind: str,
    example: str,
    folder_of: Callable[[Path, str], str],
    read: Callable[[Path, Path], dict[str, list[str]]],
) -> list[ImageRecord]:
    """The records of train and val caption files of one ``kind`` (COCO's, AI Challenger's; a
    file of it named like ``example``), split as `load_coco` says: a file's split from its name,
    ``folder_of`` the folder below the image root that holds its images (used when it exists),
    ``read`` its image paths and captions below a folder."""
    validate_fractions(val_fraction, test_fraction)
    files = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations)
    if not files:
        raise UserError(f"no {kind} annotation files given; pass {example} or similar")
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}}
    names: dict[str, str] = {}  # image path -> its path in the folder it is read from
    for annotation in files:
        file = _existing_file(annotation, f"{kind} caption file")
        split = _file_split(file, kind, example)
        root = _image_root(image_root, file)
        subfolder = root / folder_of(file, split)
        base = subfolder if subfolder.is_dir() else root
        found = read(file, base)
        for path, captions in found.items():
            by_split[split].setdefault(path, []).extend(captions)
        names.update(relative_names(found, base))  # the file_name: however image_root is spelled
    if by_split["val"]:
        total = val_fraction + test_fraction
        share = test_fraction / total if total > 0 else 0.0
        val_names = {path: names[path] for path in by_split["val"]}
        val_splits = hashed_split(val_names, 0.0, share, seed, rest="val")
        train_splits = dict.fromkeys(by_split["train"], "train")
    else:
        val_splits = {}
        train_splits = hashed_split(names, val_fraction, test_fraction, seed)
    records = []
    for images, splits, drawn in (
        (by_split["train"], train_splits, not by_split["val"]),
        (by_split["val"], val_splits, True),
    ):
        records.extend(
            ImageRecord(
                path,
                tuple(caps),
                splits[path],
                drawn=drawn,
                split_key=names[path] if drawn else None,
            )
            for path, caps in images.items()
        )
    return records


def _coco_captions(file: Path, base: Path, check_images: bool) -> dict[str, list[str]]:
    """Image path -> captions of one COCO caption file, in the file's image order."""
    data = _read_json(file)
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise UserError(
                f"'{file}' has no top-level '{key}' list; pass a COCO captions_*.json file "
                "(the test image_info files carry no captions)"
            )
    names: dict[int | str, str] = {}
    for index, image in enumerate(data["images"]):
        if (
            not isinstance(image, dict)
            or not _is_id(image.get("id"))
            or not _is_name(image.get("file_name"))
        ):
            raise UserError(
                f"'{file}' images[{index}] needs an 'id' (a number or string) and a 'file_name' "
                "string"
            )
        image_id, name = image["id"], image["file_name"]
        if names.setdefault(image_id, name) != name:
            raise UserError(
                f"'{file}' images[{index}] reuses id {shown(image_id)} of '{names[image_id]}' for "
                f"'{name}'; every image needs its own id, so fix or re-download the file"
            )
    captions: dict[int | str, list[str]] = {}
    for index, annotation in enumerate(data["annotations"]):
        if (
            not isinstance(annotation, dict)
            or not _is_id(annotation.get("image_id"))
            or not isinstance(annotation.get("caption"), str)
        ):
            raise UserError(
                f"'{file}' annotations[{index}] needs an 'image_id' (a number or string) and a "
                "'caption' string"
            )
        if annotation["image_id"] not in names:
            raise UserError(
                f"'{file}' annotations[{index}] refers to image_id "
                f"{shown(annotation.get('image_id'))}, "
                "which is not in 'images'; re-download the file"
            )
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    result = {}
    for image_id, name in names.items():
        if image_id in captions:
            path = _image_path(base, name)
            _check_image(path, f"'{file}' image id {image_id}", check_images)
            result.setdefault(path, []).extend(captions[image_id])  # two ids, one file: both
    return result


# --------------------------------------------------------------------------------------------
# AI Challenger 2017 caption files (AIC-ICC, Chinese)


def load_aic(
    annotations: PathLike | Sequence[PathLike],
    image_root: PathLike | None = None,
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    check_images: bool = True,
) -> list[ImageRecord]:
    """Load the AI Challenger 2017 image caption files (AIC-ICC: 210,000 training and 30,000
    validation images, five Chinese captions each): caption_train_annotations_20170902.json and
    caption_validation_annotations_20170910.json, one or both.

    Each is a JSON list of ``{"image_id": "<file name>.jpg", "caption": [...], "url": ...}``. The
    splits are COCO's (`load_coco`): a file's split from its name ("train" or "val", as in
    "validation"), and the test split carved from the validation images (whose test captions
    were never published) by a hash of their names. Images are looked up in the folder beside the
    file that its name gives (caption_train_images_20170902 for
    caption_train_annotations_20170902.json, as the archives unpack) when it exists below the
    image root, else in the image root itself.
    """
    return _load_split_files(
        annotations,
        image_root,
        val_fraction,
        test_fraction,
        seed,
        kind="AI Challenger",
        example="caption_train_annotations_20170902.json",
        folder_of=lambda file, split: file.stem.replace("annotations", "images"),
        read=lambda file, base: _aic_captions(file, base, check_images),
    )


def _aic_captions(file: Path, base: Path, check_images: bool) -> dict[str, list[str]]:
    """Image path -> captions of one AI Challenger caption file, in the file's order."""
    data = _read_json(file)
    if not isinstance(data, list):
        raise UserError(
            f"'{file}' is not a JSON list of images; pass an AI Challenger caption file "
            "(caption_train_annotations_20170902.json style)"
        )
    result: dict[str, list[str]] = {}
    for index, item in enumerate(data):
        captions = item.get("caption") if isinstance(item, dict) else None
        if isinstance(captions, str):
            captions = [captions]
        if (
            not isinstance(item, dict)
            or not _is_name(item.get("image_id"))
            or not isinstance(captions, list)
            or not all(isinstance(caption, str) for caption in captions)
        ):
            raise UserError(
                f"'{file}' item [{index}] needs an 'image_id' file name and a 'caption' list of "
                "strings"
            )
        if captions:  # an image without a caption can be neither trained nor scored
            path = _image_path(base, item["image_id"])
            _check_image(path, f"'{file}' item [{index}]", check_images)
            result.setdefault(path, []).extend(caption.strip() for caption in captions)
    return result


# --------------------------------------------------------------------------------------------
# CSV and JSONL: one row per (image, caption)


@dataclass(frozen=True)
class CsvRow:
    where: str  # "'file' line N", for error messages
    image: str
    caption: str
    split: str | None


# Kaggle's Flickr30k results.csv: "image_name| comment_number| comment", separated by "| "
CSV_ALIASES = {"image_name": "image", "comment": "caption"}
PIPED = {"delimiter": "|", "skipinitialspace": True, "quoting": csv.QUOTE_NONE}  # it quotes nothing


# Where str.splitlines ends a line: a reader that splits the output so would cut a name holding
# one of them (a carriage return, a form feed, U+2028) in two. "\r" too: csv quotes it only as
# part of its line terminator (Python 3.11).
_LINE_BOUNDARIES = "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def tab_separated(*fields: str) -> str:
    """One line of tab-separated fields; a field holding a tab, a line break or a double quote
    (a file's name may) is quoted as the csv module quotes it, so that the line still reads as
    one line of as many fields (``csv.reader(lines, delimiter="\\t")`` reads them back, lines
    split by ``str.splitlines`` too: csv quotes a field that holds any character of its line
    terminator, so every such boundary is given as one, and the terminator cut off)."""
    line = io.StringIO()
    csv.writer(line, delimiter="\t", lineterminator=_LINE_BOUNDARIES).writerow(fields)
    return line.getvalue()[: -len(_LINE_BOUNDARIES)]


def read_csv_rows(file: Path) -> list[CsvRow]:
    """The rows of a CSV of ``image,caption[,split]`` (a header names the columns; others are
    ignored), or of Kaggle's Flickr30k ``results.csv`` (``image_name| comment_number| comment``)."""
    with file.open(newline="", encoding="utf-8-sig") as stream:
        try:
            header = stream.readline()
            stream.seek(0)
            piped = "|" in header and "," not in header
            # strict: a quote left open swallowed every row after it into one caption, silently
            reader = csv.DictReader(stream, strict=True, **(PIPED if piped else {}))
            if reader.fieldnames is None:
                raise UserError(f"'{file}' is empty; write a header line 'image,caption[,split]'")
            names = [name.strip().lower() for name in reader.fieldnames]
            if not {"image", "caption"} & set(names):
                names = [CSV_ALIASES.get(name, name) for name in names]
            reader.fieldnames = names
            missing = [name for name in ("image", "caption") if name not in reader.fieldnames]
            if missing:
                separated = next((s for s in _SEPARATORS if s in header), None)
                by = (
                    f" (its columns are separated by {_SEPARATORS[separated]})" if separated else ""
                )
                raise UserError(
                    f"'{file}' has no column {' or '.join(repr(m) for m in missing)}; the header "
                    f"must name 'image' and 'caption' (and optionally 'split')"
                    + (f", separated by commas{by}" if separated else "")
                )
            has_split = "split" in reader.fieldnames
            rows = []
            for row in reader:
                where = f"'{file}' line {reader.line_num}"
                if any((extra or "").strip() for extra in row.get(None, ())):  # beyond the header
                    fix = (
                        "take the '|' out of its caption ('|' separates this file's columns)"
                        if piped
                        else 'put a caption that holds a comma in double quotes ("a dog, running")'
                    )
                    raise UserError(
                        f"{where} has {len(reader.fieldnames) + len(row[None])} fields, the "
                        f"header {len(reader.fieldnames)}; {fix}"
                    )
                if piped and row["caption"] is None:  # a "|" missing: its caption elsewhere
                    fields = sum(value is not None for value in row.values())
                    raise UserError(
                        f"{where} has {fields} fields, the header {len(reader.fieldnames)}: a '|' "
                        "is missing between its cells (Kaggle's Flickr30k results.csv has one "
                        "such line); put it back"
                    )
                rows.append(
                    CsvRow(
                        where,
                        row["image"] or "",  # as written: a name may begin with a space
                        (row["caption"] or "").strip(),
                        (row["split"] or "").strip().lower() if has_split else None,
                    )
                )
            return rows
        except csv.Error as err:  # from the reader's rows, so once it is made
            raise UserError(
                f"'{file}' line {reader.line_num}: {err}; fix the CSV quoting"
            ) from None
        except UnicodeDecodeError:
            raise not_utf8(file) from None


_SEPARATORS = {"\t": "tabs", ";": "semicolons"}


def _read_jsonl_rows(file: Path) -> Iterator[CsvRow]:
    for number, line in _lines(_read_text(file)):
        if not line.strip():
            continue
        where = f"'{file}' line {number}"
        row = _parse_json(line, where, one_line=True)
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) for k in ("image", "caption")
        ):
            raise UserError(
                f"{where} needs an object with string keys 'image' and 'caption' (JSON lines: one "
                "object per line)"
            )
        split = row.get("split")
        yield CsvRow(
            where,
            row["image"],
            row["caption"].strip(),
            None if split is None else str(split).strip().lower(),
        )


def _load_rows(
    rows: Iterable[CsvRow],
    file: Path,
    image_root: PathLike | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    check_images: bool,
) -> list[ImageRecord]:
    """Merge rows by image; use their split column, or `hashed_split` if none."""
    validate_fractions(val_fraction, test_fraction)
    root = _image_root(image_root, file)
    captions: dict[str, list[str]] = {}
    splits: dict[str, str | None] = {}
    written: dict[str, str] = {}  # path -> its first row's name, as written
    with_split: bool | None = None  # whether rows carry a split: the same for every row
    for row in rows:
        if not row.image.strip() or not row.caption:
            raise UserError(f"{row.where} has an empty image or caption; fill it in or delete it")
        split = row.split or None  # an empty split cell counts as none
        if with_split is None:
            with_split = split is not None
        elif with_split != (split is not None):
            raise UserError(
                f"{row.where} {'has a' if split else 'lacks the'} split the rows before "
                f"{'lack' if split else 'have'}; give every row a split or none"
            )
        if split is not None and split not in SPLITS:
            raise UserError(f"{row.where} has split '{split}'; use one of {', '.join(SPLITS)}")
        image = row.image
        path = _image_path(root, image)
        if image != image.strip() and not os.path.exists(path):
            image = image.strip()  # the spaces were the file's layout
            path = _image_path(root, image)
        if path not in captions:
            _check_image(path, row.where, check_images)
            captions[path], splits[path], written[path] = [], split, image
        elif splits[path] != split:
            raise UserError(
                f"{row.where} puts image '{row.image}' in split '{split}', an earlier row in "
                f"'{splits[path]}'; keep each image in one split"
            )
        captions[path].append(row.caption)
    keys: dict[str, str] = {}
    if not with_split:
        keys = relative_names(captions, root, written)
        splits = hashed_split(keys, val_fraction, test_fraction, seed)
    return [
        ImageRecord(
            path, tuple(caps), str(splits[path]), drawn=not with_split, split_key=keys.get(path)
        )
        for path, caps in captions.items()
    ]


def load_csv(
    annotations: PathLike,
    image_root: PathLike | None = None,
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    check_images: bool = True,
) -> list[ImageRecord]:
    """Load a CSV with header columns `image`, `caption` and optionally `split`.

    Several rows may name one image: their captions are merged into one record. Image paths are
    absolute or relative to `image_root`. Without a split column, images are split with
    `hashed_split` of their paths relative to the image root (val_fraction, test_fraction, seed).
    """
    file = _existing_file(annotations, "CSV annotations file")
    return _load_rows(
        read_csv_rows(file), file, image_root, val_fraction, test_fraction, seed, check_images
    )


def load_jsonl(
    annotations: PathLike,
    image_root: PathLike | None = None,
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    check_images: bool = True,
) -> list[ImageRecord]:
    """Load JSON Lines: one object per line with keys `image`, `caption` and optionally `split`.

    Merging, paths and splits work as in `load_csv`.
    """
    file = _existing_file(annotations, "JSONL annotations file")
    return _load_rows(
        _read_jsonl_rows(file), file, image_root, val_fraction, test_fraction, seed, check_images
    )


# --------------------------------------------------------------------------------------------
# Dispatch and split selection


def load_records(
    fmt: str,
    annotations: PathLike | Sequence[PathLike],
    image_root: PathLike | None = None,
    *,
    restval_to_train: bool = True,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    check_images: bool = True,
) -> list[ImageRecord]:
    """Load `annotations` of format `fmt` (one of `FORMATS`) into records of all splits.

    Only the coco and aic formats accept several annotation files (a one-item list suits any).
    Options that a format does not use are ignored: `restval_to_train` applies to karpathy only,
    the fractions and seed to the formats that carve splits (coco, aic, a Flickr30k token file, and
    csv/jsonl without a split column). No records at all is an error.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown annotation format '{fmt}'; use one of {', '.join(FORMATS)}")
    validate_fractions(val_fraction, test_fraction)
    if fmt not in SEVERAL_FILES and not isinstance(annotations, (str, os.PathLike)):
        if len(annotations) != 1:
            raise UserError(
                f"the {fmt} format takes one annotations file; only {' and '.join(SEVERAL_FILES)} "
                "take several"
            )
        annotations = annotations[0]
    try:
        if fmt == "karpathy":
            records = load_karpathy(
                annotations,
                image_root,
                restval_to_train=restval_to_train,
                check_images=check_images,
            )
        else:
            loader = {
                "flickr8k": load_flickr8k,
                "coco": load_coco,
                "aic": load_aic,
                "csv": load_csv,
                "jsonl": load_jsonl,
            }[fmt]
            records = loader(
                annotations,
                image_root,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                seed=seed,
                check_images=check_images,
            )
    except UserError:
        _refuse_another_format(fmt, annotations)  # the likelier mistake, when it is one
        raise
    if not records:
        raise UserError(
            f"no captioned images found in {_describe(annotations)}; check the file and the format "
            f"('{fmt}')"
        )
    return records


FORMAT_NAMES = {
    "karpathy": "Karpathy's split JSON",
    "flickr8k": "a Flickr token file",
    "coco": "a COCO caption file",
    "aic": "an AI Challenger caption file",
    "csv": "a CSV of images and captions",
    "jsonl": "JSON lines of images and captions",
}


def sniff_format(file: Path) -> str | None:
    """The format among `FORMATS` that `file` looks like, from its first line (its JSON for a
    JSON file); None when it looks like none of them. For error messages only: a file whose format
    is given is read as that format."""
    if not file.is_file():  # a pipe or a terminal would be read for ever (the loader said why)
        return None
    try:
        with file.open("rb") as stream:
            head = stream.read(1 << 16).decode("utf-8-sig", errors="replace")
    except OSError:
        return None
    first = next((line.strip() for line in head.split("\n") if line.strip()), "")
    if first.startswith("{"):
        with contextlib.suppress(ValueError, RecursionError):
            row = json.loads(first)
            if isinstance(row, dict) and {"image", "caption"} <= row.keys():
                return "jsonl"
        try:
            data = json.loads(file.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            return None
        if isinstance(data.get("annotations"), list):
            return "coco"
        return (
            "karpathy"
            if images and isinstance(images[0], dict) and "sentences" in images[0]
            else None
        )
    if first.startswith("["):
        try:
            data = json.loads(file.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError, RecursionError):
            return None
        item = data[0] if isinstance(data, list) and data else None
        # AI Challenger's image_id is a file name and its caption a list; COCO's results format
        # (what evaluate --predictions writes) has a number or a stem and one string
        return (
            "aic"
            if isinstance(item, dict)
            and _is_name(item.get("image_id"))
            and isinstance(item.get("caption"), list)
            else None
        )
    if re.match(r"[^\t]+#\d+\t", first) or _FLICKR8K_CN_LINE.fullmatch(first):
        return "flickr8k"
    for separator in (",", "|"):
        names = {name.strip().lower() for name in first.split(separator)}
        if {"image", "caption"} <= names or set(CSV_ALIASES) <= names:
            return "csv"
    return None


def _refuse_another_format(fmt: str, annotations: PathLike | Sequence[PathLike]) -> None:
    """A UserError saying that an annotations file that `fmt`'s loader refused looks like another
    format's (the loader's own message would send the user to mend a file that is fine)."""
    files = [annotations] if isinstance(annotations, (str, os.PathLike)) else annotations
    for annotation in files:
        looks = sniff_format(Path(annotation))
        if looks is not None and looks != fmt:
            raise UserError(
                f"'{annotation}' looks like {FORMAT_NAMES[looks]}, not {FORMAT_NAMES[fmt]}; give "
                f"its format ({looks}: --format {looks} or --set data.format={looks})"
            )


def _describe(annotations: PathLike | Sequence[PathLike]) -> str:
    if isinstance(annotations, (str, os.PathLike)):
        return f"'{annotations}'"
    return ", ".join(f"'{annotation}'" for annotation in annotations)


def in_several_splits(records: Sequence[ImageRecord]) -> dict[str, list[str]]:
    """Image path -> its splits, for every image listed in more than one split (a val or test
    image that training would see: Karpathy and COCO files can say so; the other formats refuse
    it as they load)."""
    splits: dict[str, set[str]] = {}
    for record in records:
        splits.setdefault(record.image_path, set()).add(record.split)
    return {path: sorted(found) for path, found in splits.items() if len(found) > 1}


def select_split(
    records: Sequence[ImageRecord],
    split: str,
    *,
    source: PathLike | Sequence[PathLike] | None = None,
    fractions_fixed: bool = False,
) -> list[ImageRecord]:
    """The records of `split`; an unknown or empty split is a UserError.

    `source` (the annotations) is only used to name them in the error message. With
    ``fractions_fixed`` (evaluate and compare, which read a checkpoint's data config and have no
    --set) a split drawn empty is not mended by raising its fraction, which those commands cannot
    do (and which would draw a trained model's training images into it): the message says to
    pass annotations that give the split instead.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    selected = [record for record in records if record.split == split]
    if not selected:
        where = "the annotations" if source is None else _describe(source)
        drawn = any(record.drawn for record in records)
        if drawn and fractions_fixed:
            fix = (
                f"its images' splits are drawn, and none drew '{split}'; pass --annotations whose "
                f"rows give some images the '{split}' split (a split column), or another --split"
            )
        elif drawn:
            fix = f"raise data.{'val' if split == 'val' else 'test'}_fraction, which draws it, or add images"
        else:  # the file gives every image its split
            fix = f"give some of its images the '{split}' split, or use annotations that have one"
        raise UserError(f"the '{split}' split of {where} has no images; {fix}")
    return selected
