"""Property-based tests (hypothesis) of every parser of user data.

Each parser gets hostile input: random unicode, empty and huge captions, missing and extra fields,
wrong types, duplicated ids, BOMs, CRLF line ends, NUL bytes, truncated and byte-flipped files,
deep nesting and huge numbers. The property: the input is parsed (and what comes out is well
formed) or rejected with a `UserError` that names the file (or, for `--set`, the key); never any
other exception. Where the input is valid by construction, the parse must give back exactly what
was written (a round trip through each annotation format).

Profiles (tests/conftest.py): "default" runs a few hundred examples per property, cheap enough for
every test run; ``pytest tests/test_fuzz_parsers.py --hypothesis-profile=long`` runs thousands
(docs/robustness.md records such a run).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from captioner.config import CaptionerConfig
from captioner.config import check_config as check_captioner_config
from captioner.data import SPLITS, ImageRecord, Vocabulary, load_records, tokenize
from captioner.data.formats import FLICKR8K_CN_SPLIT_FILES, FLICKR8K_SPLIT_FILES, KARPATHY_SPLITS
from captioner.data.vocab import SPECIALS
from char_lm.config import CharLMConfig, ModelConfig
from char_lm.data import build_vocab, decode, encode, read_text
from char_lm.generate import generate
from char_lm.model import CharLM
from recurrent.config import load_config, value_counts
from recurrent.errors import UserError

# --------------------------------------------------------------------------------------------
# Strategies


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a valid value, sometimes any JSON value (a wrong type)."""
    return st.one_of(valid, valid, json_values)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
# Captions: ordinary words, random unicode (NUL, surrogate escapes, line separators...), blanks,
# and a few huge ones.
words = st.lists(st.sampled_from(["a", "dog", "red", "circle", "Left", "of", "the", "n't"]))
captions = st.one_of(
    words.map(" ".join),
    st.text(max_size=40),
    st.text(alphabet=" \t\r\n\x00\ufeff\u2028\x85", max_size=5),
    st.builds(lambda word, n: word * n, st.text(min_size=1, max_size=6), st.integers(1, 20_000)),
)
IMAGE_NAMES = ["a.jpg", "b.png", "sub/c.jpg", "missing.jpg"]  # images a.jpg, b.png, sub/c.jpg exist
image_names = st.one_of(st.sampled_from(IMAGE_NAMES), st.text(max_size=12))
extra_fields = st.dictionaries(st.text(max_size=8), json_values, max_size=2)


def with_extras(base: st.SearchStrategy) -> st.SearchStrategy:
    """A dict strategy with random extra keys added (the known keys win)."""
    return st.builds(lambda known, extra: {**extra, **known}, base, extra_fields)


sentences = st.one_of(
    with_extras(
        st.fixed_dictionaries(
            {}, optional={"raw": maybe(captions), "tokens": maybe(st.lists(captions, max_size=3))}
        )
    ),
    json_values,
)
karpathy_images = with_extras(
    st.fixed_dictionaries(
        {},
        optional={
            "filename": maybe(image_names),
            "filepath": maybe(st.sampled_from(["", ".", "sub"])),
            "split": maybe(st.sampled_from(KARPATHY_SPLITS)),
            "sentences": maybe(st.lists(sentences, max_size=3)),
            "scene": json_values,
        },
    )
)
karpathy_docs = st.one_of(
    with_extras(st.fixed_dictionaries({"images": maybe(st.lists(karpathy_images, max_size=5))})),
    json_values,
)
coco_ids = st.one_of(st.integers(0, 4), json_values)  # a small range: duplicated ids are common
coco_docs = st.one_of(
    with_extras(
        st.fixed_dictionaries(
            {
                "images": maybe(
                    st.lists(
                        with_extras(
                            st.fixed_dictionaries(
                                {}, optional={"id": coco_ids, "file_name": maybe(image_names)}
                            )
                        ),
                        max_size=5,
                    )
                ),
                "annotations": maybe(
                    st.lists(
                        with_extras(
                            st.fixed_dictionaries(
                                {},
                                optional={
                                    "image_id": coco_ids,
                                    "caption": maybe(captions),
                                    "id": coco_ids,
                                },
                            )
                        ),
                        max_size=6,
                    )
                ),
            }
        )
    ),
    json_values,
)
aic_docs = st.one_of(
    st.lists(
        with_extras(
            st.fixed_dictionaries(
                {},
                optional={
                    "image_id": maybe(image_names),
                    "caption": maybe(st.one_of(captions, st.lists(maybe(captions), max_size=3))),
                    "url": json_values,
                },
            )
        ),
        max_size=5,
    ),
    json_values,
)
jsonl_rows = st.one_of(
    with_extras(
        st.fixed_dictionaries(
            {},
            optional={
                "image": maybe(image_names),
                "caption": maybe(captions),
                "split": maybe(st.sampled_from(["train", "val", "test", "", "TRAIN", "dev"])),
            },
        )
    ),
    json_values,
)
# Raw contents no structured strategy produces: deep nesting, huge numbers, binary junk.
SPECIAL_CONTENTS = [
    b"",
    b"\xef\xbb\xbf",
    b"[" * 5000,
    b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"images": [], "x": ' + b"9" * 5000 + b"}",
    b'{"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "\\ud800"}]}]}',
    b"\x00" * 64,
    b"\xff\xfe\x00\x00",
    b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    b"a.jpg#0\t" + b"x" * 200_000,
    b'image,caption\na.jpg,"' + b"x" * 200_000 + b'"',
    b"image,caption\n" + b'"' * 9,
    b"image,caption\r\na.jpg,a dog\r\nb.png\r\n,\r\n\x00,\x00\r\n",
]


@st.composite
def serialized(
    draw: st.DrawFn,
    documents: st.SearchStrategy,
    dump: Callable[..., str],
    specials: list[bytes] = SPECIAL_CONTENTS,
) -> bytes:
    """A document dumped to bytes, then maybe given CRLF, a BOM, and a mutation (truncated, bytes
    inserted or overwritten with NULs or random bytes), or replaced by a special content."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(specials))
    text = dump(draw(documents), draw)
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    mutation = draw(st.sampled_from(["none", "none", "truncate", "insert", "overwrite"]))
    if mutation != "none" and data:
        at = draw(st.integers(0, len(data) - 1))
        if mutation == "truncate":
            data = data[:at]
        else:
            junk = draw(st.one_of(st.binary(min_size=1, max_size=4), st.just(b"\x00")))
            data = data[:at] + junk + data[at + (len(junk) if mutation == "overwrite" else 0) :]
    return data


def dump_json(document: object, draw: st.DrawFn) -> str:
    return json.dumps(
        document, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1]))
    )


def dump_jsonl(rows: list, draw: st.DrawFn) -> str:
    ascii_only = draw(st.booleans())
    return "\n".join(json.dumps(row, ensure_ascii=ascii_only) for row in rows)


def dump_csv(rows: list, draw: st.DrawFn) -> str:
    """A header (maybe with odd or missing columns), then rows of random cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    writer.writerow(draw(st.sampled_from([["image", "caption"], [" Image ", "CAPTION", "split"]])))
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def dump_lines(lines: list, draw: st.DrawFn) -> str:
    return "\n".join(lines)


csv_cells = st.one_of(image_names, captions, st.sampled_from(["train", "val", "test", ""]))
csv_rows = st.lists(st.lists(csv_cells, max_size=4), max_size=5)
token_lines = st.lists(
    st.one_of(
        st.builds(lambda n, i, c: f"{n}#{i}\t{c}", image_names, st.integers(0, 5), captions),
        st.text(max_size=20),
    ),
    max_size=6,
)
split_lines = st.lists(image_names, max_size=4)


# --------------------------------------------------------------------------------------------
# The property


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every example writes its files into (overwriting the previous example's, which
    is much cheaper than a folder per example), with the images a.jpg, b.png and sub/c.jpg."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "sub").mkdir()
    for image in ("a.jpg", "b.png", "sub/c.jpg"):
        (folder / image).write_bytes(b"\xff\xd8")  # the loaders never decode images
    return folder


def parsed_or_named(parse: Callable[[], list[ImageRecord]], *files: Path) -> list[ImageRecord]:
    """Run a loader: a UserError must name one of `files`; records must be well formed."""
    try:
        records = parse()
    except UserError as err:
        message = str(err)
        assert message.strip()
        assert any(str(file) in message for file in files), message
        return []
    assert isinstance(records, list) and records
    for record in records:
        assert isinstance(record, ImageRecord)
        assert record.split in SPLITS
        assert os.path.isabs(record.image_path)
        assert record.captions and all(isinstance(caption, str) for caption in record.captions)
    return records


def load_annotations(root: Path, fmt: str, data: bytes, name: str, check_images: bool) -> None:
    file = root / name
    file.write_bytes(data)
    parsed_or_named(lambda: load_records(fmt, str(file), check_images=check_images, seed=1), file)


@given(data=serialized(karpathy_docs, dump_json), check_images=st.booleans())
def test_karpathy_json_is_parsed_or_named(root, data, check_images):
    load_annotations(root, "karpathy", data, "dataset.json", check_images)


@given(data=serialized(coco_docs, dump_json), check_images=st.booleans())
def test_coco_json_is_parsed_or_named(root, data, check_images):
    load_annotations(root, "coco", data, "captions_train2014.json", check_images)


@given(data=serialized(aic_docs, dump_json), check_images=st.booleans())
def test_aic_json_is_parsed_or_named(root, data, check_images):
    load_annotations(root, "aic", data, "caption_train_annotations_20170902.json", check_images)


@given(data=serialized(st.lists(jsonl_rows, max_size=6), dump_jsonl), check_images=st.booleans())
def test_jsonl_is_parsed_or_named(root, data, check_images):
    load_annotations(root, "jsonl", data, "captions.jsonl", check_images)


@given(data=serialized(csv_rows, dump_csv), check_images=st.booleans())
def test_csv_is_parsed_or_named(root, data, check_images):
    load_annotations(root, "csv", data, "captions.csv", check_images)


@given(
    tokens=serialized(token_lines, dump_lines),
    split_lists=st.lists(
        st.one_of(serialized(split_lines, dump_lines), st.none()), min_size=3, max_size=3
    ),
    check_images=st.booleans(),
)
def test_flickr8k_files_are_parsed_or_named(root, tokens, split_lists, check_images):
    token_file = root / "Flickr8k.token.txt"
    token_file.write_bytes(tokens)
    files = [token_file]
    for list_name, data in zip(FLICKR8K_SPLIT_FILES.values(), split_lists, strict=True):
        list_file = root / list_name
        if data is None:  # the split list is missing
            list_file.unlink(missing_ok=True)
        else:
            list_file.write_bytes(data)
        files.append(list_file)
    parsed_or_named(
        lambda: load_records("flickr8k", str(token_file), check_images=check_images), *files
    )


# --------------------------------------------------------------------------------------------
# Round trips: valid annotations written in each format load back as exactly those records

# Names and captions a valid file may hold: no surrounding blanks (the loaders strip them), no
# line breaks where the format is line based, no NUL (not part of a file name).
name_chars = st.characters(
    blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="/\\"
)
clean_names = st.text(name_chars, min_size=1, max_size=12).filter(
    lambda name: name == name.strip() and name not in (".", "..") and "#" not in name
)
clean_captions = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=30,
).filter(lambda caption: caption == caption.strip())
line_captions = clean_captions.filter(lambda caption: "\n" not in caption and "\r" not in caption)


@st.composite
def record_sets(
    draw: st.DrawFn, caption_strategy: st.SearchStrategy
) -> list[tuple[str, str, list]]:
    """(image name, split, captions) for 1-5 distinct images, at least one in each split."""
    names = draw(st.lists(clean_names, min_size=3, max_size=6, unique_by=str.casefold))
    splits = [
        "train",
        "val",
        "test",
        *draw(st.lists(st.sampled_from(SPLITS), min_size=len(names) - 3, max_size=len(names) - 3)),
    ]
    return [
        (name, split, draw(st.lists(caption_strategy, min_size=1, max_size=3)))
        for name, split in zip(names, splits, strict=True)
    ]


def expected_records(root: Path, items) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        os.path.abspath(root / name): (split, tuple(captions)) for name, split, captions in items
    }


def as_dict(records: list[ImageRecord]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {record.image_path: (record.split, record.captions) for record in records}


# Valid files exercise fewer paths than hostile ones: a quarter of the profile's examples.
fewer_examples = settings(max_examples=max(25, settings.default.max_examples // 4))


def round_trip(root: Path, fmt: str, name: str, data: bytes) -> dict:
    file = root / name
    file.write_bytes(data)
    return as_dict(load_records(fmt, str(file), check_images=False))


@fewer_examples
@given(items=record_sets(clean_captions), ascii_only=st.booleans(), bom=st.booleans())
def test_karpathy_round_trip(root, items, ascii_only, bom):
    document = {
        "images": [
            {"filename": name, "split": split, "sentences": [{"raw": c} for c in caps]}
            for name, split, caps in items
        ]
    }
    data = b"\xef\xbb\xbf" * bom + json.dumps(document, ensure_ascii=ascii_only).encode()
    assert round_trip(root, "karpathy", "dataset.json", data) == expected_records(root, items)


@fewer_examples
@given(items=record_sets(clean_captions), crlf=st.booleans(), bom=st.booleans())
def test_csv_round_trip(root, items, crlf, bom):
    buffer = io.StringIO(newline="")
    # QUOTE_ALL: with "\n" line ends csv.writer leaves a bare "\r" in a cell unquoted.
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["image", "caption", "split"])
    for name, split, caps in items:
        writer.writerows([name, caption, split] for caption in caps)
    data = b"\xef\xbb\xbf" * bom + buffer.getvalue().encode()
    assert round_trip(root, "csv", "captions.csv", data) == expected_records(root, items)


@fewer_examples
@given(items=record_sets(clean_captions), ascii_only=st.booleans(), crlf=st.booleans())
def test_jsonl_round_trip(root, items, ascii_only, crlf):
    lines = [
        json.dumps({"image": name, "caption": caption, "split": split}, ensure_ascii=ascii_only)
        for name, split, caps in items
        for caption in caps
    ]
    data = ("\r\n" if crlf else "\n").join(lines).encode()
    assert round_trip(root, "jsonl", "captions.jsonl", data) == expected_records(root, items)


@fewer_examples
@given(items=record_sets(line_captions), crlf=st.booleans())
def test_flickr8k_round_trip(root, items, crlf):
    newline = "\r\n" if crlf else "\n"
    for split, list_name in FLICKR8K_SPLIT_FILES.items():
        names = [name for name, image_split, _ in items if image_split == split]
        (root / list_name).write_bytes(newline.join(names).encode())
    tokens = [f"{name}#{i}\t{c}" for name, _, caps in items for i, c in enumerate(caps)]
    data = newline.join(tokens).encode()
    loaded = round_trip(root, "flickr8k", "Flickr8k.token.txt", data)
    assert loaded == expected_records(root, items)


@fewer_examples
@given(
    items=record_sets(line_captions).filter(
        lambda items: not any(ch.isspace() for name, _, _ in items for ch in name)
    ),
    crlf=st.booleans(),
    tag=st.sampled_from(["zhc", "zhb", "zhg", "enc"]),
)
def test_flickr8k_cn_round_trip(root, items, crlf, tag):
    """Flickr8k-CN's ``NAME#zhc#N caption`` lines and its split lists: any name without a space
    (one without an extension is its ".jpg" file) and any one-line caption load as written."""
    newline = "\r\n" if crlf else "\n"
    for list_name in FLICKR8K_SPLIT_FILES.values():  # the English round trip's: read first
        (root / list_name).unlink(missing_ok=True)
    for split, list_name in FLICKR8K_CN_SPLIT_FILES.items():
        names = [name for name, image_split, _ in items if image_split == split]
        (root / list_name).write_bytes(newline.join(names).encode())
    lines = [f"{name}#{tag}#{i} {c}" for name, _, caps in items for i, c in enumerate(caps)]
    loaded = round_trip(root, "flickr8k", "flickr8kzhc.caption.txt", newline.join(lines).encode())
    files = [(n if os.path.splitext(n)[1] else f"{n}.jpg", split, caps) for n, split, caps in items]
    assert loaded == expected_records(root, files)


@fewer_examples
@given(items=record_sets(clean_captions), ascii_only=st.booleans())
def test_coco_round_trip(root, items, ascii_only):
    """A train file alone: val and test are carved from it, so only paths and captions are
    compared (the hashed split is tested in test_captioner_data.py)."""
    images = [{"id": 100 + i, "file_name": name} for i, (name, _, _) in enumerate(items)]
    annotations = [
        {"id": j, "image_id": 100 + i, "caption": caption}
        for i, (_, _, caps) in enumerate(items)
        for j, caption in enumerate(caps)
    ]
    document = {"images": images, "annotations": annotations, "info": {}}
    data = json.dumps(document, ensure_ascii=ascii_only).encode()
    loaded = round_trip(root, "coco", "captions_train2014.json", data)
    expected = expected_records(root, items)
    assert {path: caps for path, (_, caps) in loaded.items()} == {
        path: caps for path, (_, caps) in expected.items()
    }


# --------------------------------------------------------------------------------------------
# Tokenizer and vocabulary


@given(st.one_of(captions, st.text()))
@example("0'\x1f")  # a quote before a tab or other whitespace than a space (a long run found it)
@example("0.,")  # "0." (not at the end of the text), which alone is "0" (a suite run found it)
@example("0.'.:")  # settles after two more passes
@example(",,a")  # ",a", which alone is "a"
def test_tokenize_gives_lowercase_words_stable_under_retokenizing(text):
    tokens = tokenize(text)
    for token in tokens:
        assert token and not any(c.isspace() for c in token)
        assert any(c.isalnum() for c in token)
    # Decoded captions are words joined by spaces, scored after tokenizing again: the same words.
    assert tokenize(" ".join(tokens)) == tokens


@given(
    st.lists(st.one_of(captions, st.text()), max_size=6),
    st.integers(1, 3),
    st.one_of(captions, st.text()),
)
def test_vocabulary_encodes_and_decodes_its_words(training, min_count, caption):
    vocab = Vocabulary.build(training, min_count)
    assert vocab.to_list()[: len(SPECIALS)] == list(SPECIALS)
    assert Vocabulary.from_list(vocab.to_list()) == vocab
    ids = vocab.encode(caption)
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    expected = [word if word in vocab else SPECIALS[vocab.unk_id] for word in tokenize(caption)]
    assert vocab.decode_tokens(ids) == expected


@given(json_values)
def test_vocabulary_from_list_is_restored_or_refused(tokens):
    try:
        vocab = Vocabulary.from_list(tokens)
    except UserError as err:
        assert "vocabulary" in str(err)
        return
    assert vocab.to_list() == list(tokens)


# --------------------------------------------------------------------------------------------
# Configs: --set overrides and YAML files

CAPTIONER_KEYS = [
    f"{section}.{name}"
    for section, fields in yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs/captioner/tiny.yaml").read_text()
    ).items()
    for name in fields
]
override_keys = st.one_of(
    st.sampled_from(CAPTIONER_KEYS),
    st.sampled_from(["data", "model", "train", "decode"]),
    st.text(max_size=15),
)
yaml_values = st.one_of(
    st.sampled_from(["1", "-1", "0.5", "1e400", ".nan", "true", "null", "~", "[1, 2]", "{a: 1}"]),
    st.sampled_from(["'x'", "!!python/object:os.system", "&a [*a]", "{format: 1}", "[" * 100]),
    st.sampled_from(['"\\U7fffffff"', "!!timestamp 2001-13-99", "!!binary AAAA", "9" * 5000]),
    st.text(max_size=20),
)
overrides = st.one_of(
    st.builds(lambda key, value: f"{key}={value}", override_keys, yaml_values),
    st.text(max_size=20),
)


def assert_names_key_or_item(message: str, items: list[str]) -> None:
    """The message quotes an override's key (or a dotted key below it) or the whole item."""
    keys = [item.split("=", 1)[0].strip() for item in items]
    assert any(
        repr(key)[:-1] in message or repr(item) in message
        for key, item in zip(keys, items, strict=True)
    ), message


@given(st.lists(overrides, min_size=1, max_size=3))
def test_set_overrides_are_applied_or_named(items):
    try:
        cfg = load_config(CaptionerConfig, None, items)
    except UserError as err:
        assert_names_key_or_item(str(err), items)
        return
    assert isinstance(cfg, CaptionerConfig)
    try:
        check_captioner_config(cfg)
    except UserError as err:
        assert str(err).strip()


yaml_documents = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(["data", "model", "train", "decode"]), json_scalars),
        st.one_of(
            st.dictionaries(
                st.one_of(
                    st.sampled_from([k.split(".")[1] for k in CAPTIONER_KEYS]), st.text(max_size=5)
                ),
                json_values,
                max_size=4,
            ),
            json_values,
        ),
        max_size=4,
    ),
    json_values,
)


def dump_yaml(document: object, draw: st.DrawFn) -> str:
    return yaml.safe_dump(document, allow_unicode=draw(st.booleans()))


# PyYAML is pure Python here: SPECIAL_CONTENTS' 200 kB lines would cost seconds, so smaller ones.
YAML_SPECIALS = [
    b"",
    b"\x00",
    b"[" * 1200,
    b"train: {epochs: " + b"9" * 5000 + b"}",
    b'data: {format: "\\U7fffffff"}',
    b"train: {seed: !!timestamp 2001-13-99}",
    b"data: !!python/object/apply:os.system [echo]",
    b"a: &x [*x]",
    b"- 1\n- 2\n",
]
yaml_contents = serialized(yaml_documents, dump_yaml, YAML_SPECIALS)


@given(data=yaml_contents, config_class=st.sampled_from([CaptionerConfig, CharLMConfig]))
def test_yaml_config_is_loaded_or_named(root, data, config_class):
    file = root / "config.yaml"
    file.write_bytes(data)
    try:
        cfg = load_config(config_class, file)
    except UserError as err:
        message = str(err)
        # A problem with the file names it; a bad key or value names the key.
        assert str(file) in message or "config key" in message, message
        return
    assert isinstance(cfg, config_class)


# PyYAML raises errors other than YAMLError on these; recurrent.config turns them into one line.
DEEP_YAML = "[" * 1200
HUGE_INT = "9" * 5000


def test_deeply_nested_yaml_config_is_a_user_error(tmp_path):
    file = tmp_path / "deep.yaml"
    file.write_text(DEEP_YAML)
    with pytest.raises(UserError, match="deep.yaml"):
        load_config(CaptionerConfig, file)


def test_deeply_nested_set_value_is_a_user_error():
    with pytest.raises(UserError, match="data.format"):
        load_config(CaptionerConfig, None, [f"data.format={DEEP_YAML}"])


def test_huge_yaml_integer_is_a_user_error(tmp_path):
    file = tmp_path / "huge.yaml"
    file.write_text(f"train:\n  epochs: {HUGE_INT}\n")
    with pytest.raises(UserError, match="train.epochs|huge.yaml"):
        load_config(CaptionerConfig, file)


def test_huge_set_integer_is_a_user_error():
    with pytest.raises(UserError, match="train.epochs"):
        load_config(CaptionerConfig, None, [f"train.epochs={HUGE_INT}"])


def _laughs(levels: int) -> str:
    """A YAML list whose aliases repeat ten x's 10^levels times: "billion laughs" at nine."""
    anchors = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(anchors) + "]"


@pytest.mark.parametrize("key", ["train.lr", "data.annotations"])
def test_yaml_aliases_that_repeat_a_value_millions_of_times_are_refused(tmp_path, key):
    """Aliases repeat what their anchor holds without copying it: 400 bytes made 10^9 values,
    which reading the config expanded (the items of a list field checked one by one, an error
    quoting the value), until the machine's memory ran out. Refused in one line, naming the file
    or the --set key, before any value is checked; aliases that repeat little still load."""
    section, name = key.split(".")
    file = tmp_path / "laughs.yaml"
    file.write_text(f"{section}:\n  {name}: {_laughs(6)}\n")  # 10^6 values in 290 bytes
    with pytest.raises(UserError) as refused:
        load_config(CaptionerConfig, file)
    message = str(refused.value)
    assert message.startswith(f"config file {file}: its aliases (*name) repeat more than "), message
    assert len(message.replace(str(file), "")) < 200, message  # not the value quoted
    with pytest.raises(UserError) as refused:
        load_config(CaptionerConfig, None, [f"{key}={_laughs(6)}"])
    message = str(refused.value)
    assert key in message and "aliases" in message and len(message) < 200, message
    file.write_text("data:\n  annotations: [&a a.json, *a, *a]\n  format: &f karpathy\n")
    assert load_config(CaptionerConfig, file).data.annotations == ["a.json"] * 3
    overrides = ["data.annotations=[&a a.json, *a, *a]"]
    assert load_config(CaptionerConfig, None, overrides).data.annotations == ["a.json"] * 3


def _expanded(item) -> int:
    """value_counts' expanded count by brute force: every part walked as often as it appears."""
    if isinstance(item, dict):
        parts = [*item.keys(), *item.values()]
    elif isinstance(item, (list, tuple)):
        parts = list(item)
    else:
        return len(item) if isinstance(item, str) else 1
    return len(parts) + sum(_expanded(part) for part in parts)


def _written(item) -> int:
    """value_counts' written count by brute force: each container and string once (by identity),
    each number once where it is an item."""
    containers, strings, total, stack = set(), set(), 0, [item]
    while stack:
        node = stack.pop()
        if id(node) in containers:
            continue
        containers.add(id(node))
        parts = [*node.keys(), *node.values()] if isinstance(node, dict) else list(node)
        total += len(parts)
        for part in parts:
            if isinstance(part, (dict, list, tuple)):
                stack.append(part)
            elif isinstance(part, str):
                total += 0 if id(part) in strings else len(part)
                strings.add(id(part))
            else:
                total += 1
    return total


@st.composite
def shared_structures(draw):
    """Nested lists, tuples and dicts built bottom-up from a pool, so that parts are shared (as
    YAML aliases and a pickle's memo share them), and the last one built."""
    pool = [draw(st.integers()), draw(st.text(max_size=5)), draw(st.text(max_size=5))]
    for _ in range(draw(st.integers(1, 12))):
        picks = draw(st.lists(st.sampled_from(pool), max_size=5))
        kind = draw(st.sampled_from(["list", "tuple", "dict"]))
        if kind == "dict":
            keys = draw(st.lists(st.text(max_size=3), min_size=len(picks), max_size=len(picks)))
            pool.append(dict(zip(keys, picks, strict=True)))
        else:
            pool.append(list(picks) if kind == "list" else tuple(picks))
    return pool[-1]


@given(shared_structures())
def test_value_counts_agrees_with_walking_every_shared_part(data):
    """What the alias and pickle checks measure: the expanded count of a structure whose parts
    are shared, sized once each, is the count a walk that follows every reference finds."""
    assert value_counts(data) == (_expanded(data), _written(data))


def test_value_counts_finds_a_part_that_holds_itself_endless():
    loop: list = [1, "ab"]
    loop.append([loop])
    assert value_counts(loop)[0] == math.inf


def test_a_yaml_set_is_sized_by_its_items_and_named_as_a_value_of_the_wrong_type(tmp_path):
    """``!!set {a, b}`` loads as a Python set: value_counts sizes it as the list of its items
    (the walk took it for no container, and failed on it), and the config names its key."""
    assert value_counts([{"ab", "c"}, frozenset({1})]) == value_counts([["ab", "c"], [1]])
    file = tmp_path / "set.yaml"
    file.write_text("data:\n  annotations: !!set {a.json, b.json}\n")
    with pytest.raises(UserError, match=r"config key 'data.annotations': expected str \| list"):
        load_config(CaptionerConfig, file)


@pytest.mark.parametrize("value", ['"\\U7fffffff"', '"\\UFFFFFFFF"', "!!timestamp 2001-13-99"])
def test_yaml_value_pyyaml_cannot_build_is_a_user_error(value):
    with pytest.raises(UserError, match="data.format"):
        load_config(CaptionerConfig, None, [f"data.format={value}"])


# --------------------------------------------------------------------------------------------
# char_lm: text files, encoding, prompts


@given(
    data=st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(lambda text: text.encode("utf-8")),
        st.text(max_size=64).map(lambda text: ("\ufeff" + text.replace("\n", "\r\n")).encode()),
    )
)
def test_text_file_is_read_exactly_or_named(root, data):
    file = root / "text.txt"
    file.write_bytes(data)
    try:
        text = read_text(file)
    except UserError as err:
        assert str(file) in str(err)
        return
    decoded = data.decode("utf-8")
    assert text in (decoded, decoded.removeprefix("\ufeff"))  # a BOM may be dropped
    assert text and not any("\ud800" <= ch <= "\udfff" for ch in text)  # no surrogate halves


@given(st.text(min_size=1), st.text())
def test_encode_round_trips_or_names_missing_characters(training, other):
    vocab = build_vocab(training)
    assert decode(encode(training, vocab), vocab) == training
    try:
        ids = encode(other, vocab)
    except UserError as err:
        missing = sorted(set(other) - set(vocab))
        assert missing and repr(missing[0]) in str(err)
        return
    assert decode(ids, vocab) == other


@pytest.fixture(scope="module")
def tiny_char_lm() -> tuple[CharLM, list[str]]:
    torch.manual_seed(0)
    vocab = build_vocab("the cat sat on the mat.\nÉmile 🐍\x00")
    model = CharLM(ModelConfig(hidden_size=8, embed_size=4, num_layers=1), len(vocab)).eval()
    return model, vocab


@given(prompt=st.text(max_size=30), length=st.integers(0, 3), greedy=st.booleans())
def test_prompt_is_continued_or_refused(tiny_char_lm, prompt, length, greedy):
    model, vocab = tiny_char_lm
    generator = torch.Generator().manual_seed(0)
    try:
        characters = list(
            generate(model, vocab, prompt, length, greedy=greedy, generator=generator)
        )
    except UserError as err:
        message = str(err)
        missing = sorted(set(prompt) - set(vocab))
        assert (missing and repr(missing[0]) in message) or (not prompt and "prompt" in message)
        return
    assert len(characters) == length and all(ch in vocab for ch in characters)
