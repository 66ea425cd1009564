"""Images that do not decode, inside a data set (data.bad_images), and images that do.

Bad files of five kinds (corrupt, truncated, zero bytes, text named .jpg, a decompression bomb) are
mixed into a tiny training set. Under "skip" the DataLoader (0 and 2 worker processes) yields
exactly the items of the good images, the count of dropped items and files is right, and each
bad file is warned about once; under "error" the first bad file stops iteration with one line,
raised in the main process (no worker traceback). One real `captioner.train` run does the same
end to end.

Then the other side (issue 9, 3b): every still format Pillow decodes is accepted, multi-page TIFF
included (its first page), with the same pixels Pillow itself decodes.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image, ImageOps, features
from torch.utils.data import DataLoader, default_collate

from captioner import caption
from captioner import check_data as check_data_cli
from captioner import train as train_cli
from captioner.config import CaptionerConfig
from captioner.data import (
    BadImage,
    BadImageLog,
    CaptionGroups,
    CaptionPairs,
    DropBadImages,
    ImageOnly,
    ImageRecord,
    Vocabulary,
    build_transforms,
    collate_groups,
    collate_pairs,
    load_image,
    load_records,
)
from captioner.data.datasets import load_image_tensor
from captioner.data.images import ACCEPTED_FORMATS, MAX_IMAGE_PIXELS, UNCHECKED_JPEG_HOLDERS
from captioner.train import train
from recurrent.checkpoint import load_checkpoint
from recurrent.config import load_config
from recurrent.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "captioner" / "tiny.yaml")
DEMO_CAPTIONER = REPO / "models" / "scenes_captioner.pt"
SIZE = 32


def _png(seed: int, size: int = SIZE) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(side: int = 20_000) -> bytes:
    """A valid PNG header announcing side x side pixels (400 M at 20,000: over the limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _corrupt(png: bytes) -> bytes:
    """The same PNG with its pixel data overwritten: the IDAT's zlib stream no longer inflates."""
    start = png.index(b"IDAT") + 4
    return png[:start] + bytes(64) + png[start + 64 :]


def _truncated_jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_png(seed))).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


BAD_FILES = {
    "corrupt.png": lambda: _corrupt(_png(100)),
    "truncated.jpg": lambda: _truncated_jpeg(101),
    "empty.jpg": lambda: b"",
    "text.jpg": lambda: b"a caption is not a picture\n" * 10,
    "bomb.png": _bomb_png,
}
GOOD = 6  # good images, each with 2 captions (and the bad ones 3, so a mix-up shows in counts)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Good and bad images interleaved, as records with captions that name the image."""
    root = tmp_path_factory.mktemp("bad_images")
    records, bad_paths = [], []
    bad_names = list(BAD_FILES)
    for index in range(GOOD + len(bad_names)):
        if index % 2 == 1 and bad_names:  # every other image is bad while bad ones are left
            name = bad_names.pop(0)
            (root / name).write_bytes(BAD_FILES[name]())
            bad_paths.append(str(root / name))
            captions = tuple(f"bad {name} caption {j}" for j in range(3))
        else:
            name = f"good{index}.png"
            (root / name).write_bytes(_png(index))
            captions = tuple(f"good image {index} caption {j}" for j in range(2))
        records.append(ImageRecord(str(root / name), captions, "train"))
    good = [record for record in records if str(record.image_path) not in bad_paths]
    vocab = Vocabulary.build(caption for record in records for caption in record.captions)
    transform = build_transforms(SIZE, train=False)
    return {"records": records, "good": good, "bad": bad_paths, "vocab": vocab, "tf": transform}


def test_each_bad_file_is_refused_with_its_kind(dataset):
    reasons = {Path(path).name: path for path in dataset["bad"]}
    expected = {
        "corrupt.png": "corrupt or truncated",
        "truncated.jpg": "corrupt or truncated",
        "empty.jpg": "not an image Pillow can decode",
        "text.jpg": "not an image Pillow can decode",
        "bomb.png": "too many pixels",
    }
    for name, fragment in expected.items():
        with pytest.raises(UserError) as caught:
            load_image(reasons[name])
        message = str(caught.value)
        assert fragment in message and reasons[name] in message and "\n" not in message
    assert 20_000 * 20_000 > MAX_IMAGE_PIXELS


def _rows(batch, kind: str) -> list[tuple[bytes, tuple[int, ...]]]:
    """(image bytes, caption ids) per caption row of a collated batch, padding removed."""
    images, captions, lengths = batch
    per_image = captions.size(0) // images.size(0)
    return [
        (images[row // per_image].numpy().tobytes(), tuple(captions[row, : lengths[row]].tolist()))
        for row in range(captions.size(0))
    ]


def _make(kind: str, records, dataset, mark: bool):
    common = {"mark_bad_images": mark}
    if kind == "pairs":
        return CaptionPairs(records, dataset["vocab"], dataset["tf"], **common), collate_pairs
    return CaptionGroups(records, dataset["vocab"], dataset["tf"], 2, **common), collate_groups


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["pairs", "groups"])
def test_skip_yields_exactly_the_good_items_and_counts_the_bad(dataset, kind, num_workers):
    items, collate = _make(kind, dataset["records"], dataset, mark=True)
    warnings: list[str] = []
    log = BadImageLog("skip", warn=warnings.append)
    loader = DataLoader(
        items, batch_size=4, collate_fn=DropBadImages(collate), num_workers=num_workers
    )
    epochs = 2
    rows, empty_batches = [], 0
    torch.manual_seed(0)
    for _ in range(epochs):
        for batch in log.batches(loader):
            if batch is None:
                empty_batches += 1
            else:
                rows.extend(_rows(batch, kind))

    # The reference: the same data set built over the good records only, no bad-image handling.
    reference, _ = _make(kind, dataset["good"], dataset, mark=False)
    expected = []
    for _ in range(epochs):
        for index in range(len(reference)):
            image, captions = reference[index]
            captions = captions if isinstance(captions, list) else [captions]
            expected.extend((image.numpy().tobytes(), tuple(c.tolist())) for c in captions)
    if kind == "pairs":  # captions are fixed: the rows match one for one
        assert sorted(rows) == sorted(expected)
    else:  # k references drawn at random per item: the images and the caption set match
        assert sorted(image for image, _ in rows) == sorted(image for image, _ in expected)
        assert {ids for _, ids in rows} <= {ids for _, ids in expected}

    bad_items_per_epoch = len(dataset["bad"]) * (3 if kind == "pairs" else 1)
    assert log.items == epochs * bad_items_per_epoch
    assert list(log.paths) == sorted(log.paths, key=dataset["bad"].index)  # first-seen order
    assert set(log.paths) == set(dataset["bad"]) and log.files == len(dataset["bad"])
    assert len(warnings) == len(dataset["bad"])  # once per file, across workers and epochs
    assert all(any(path in line for line in warnings) for path in dataset["bad"])
    assert f"skipped {log.items} item(s) of {log.files}" in log.summary()


def _stop_workers(batches) -> None:
    """Stop the workers of a DataLoader iterator that raised, now. The exception's traceback holds
    the iterator in a reference cycle, and when the garbage collector frees it, its queues may go
    first: its workers then wait out torch's 5 s join timeout each (10 s in another test)."""
    getattr(batches, "_shutdown_workers", lambda: None)()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_error_stops_at_the_first_bad_file_with_one_line(dataset, num_workers):
    items, collate = _make("pairs", dataset["records"], dataset, mark=True)
    loader = DataLoader(
        items, batch_size=4, collate_fn=DropBadImages(collate), num_workers=num_workers
    )
    log = BadImageLog("error", warn=pytest.fail)
    batches = iter(loader)
    with pytest.raises(UserError) as caught:
        for _ in log.batches(batches):
            pass
    _stop_workers(batches)
    message = str(caught.value)
    first_bad = next(r.image_path for r in dataset["records"] if r.image_path in dataset["bad"])
    assert first_bad in message and "data.bad_images=skip" in message
    assert "\n" not in message and "Traceback" not in message and "worker" not in message


def test_an_unmarked_loader_with_workers_raises_the_same_line_as_without(dataset):
    """Validation and evaluation read images unmarked: a bad image raises in the worker, and torch
    re-raises it in the main process with the worker's traceback in the message. The user sees the
    original line all the same."""
    bad_records = [r for r in dataset["records"] if r.image_path in dataset["bad"]][:1]
    messages = []
    for num_workers in (0, 2):
        loader = DataLoader(ImageOnly(bad_records, dataset["tf"]), num_workers=num_workers)
        batches = iter(loader)
        with pytest.raises(UserError) as caught:
            next(batches)
        _stop_workers(batches)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert bad_records[0].image_path in messages[1] and "Traceback" not in messages[1]
    # another exception class from a worker keeps torch's text; so does a UserError's own text
    assert UserError("Caught UserError somewhere: x").args == ("Caught UserError somewhere: x",)


def test_a_batch_of_only_bad_images_is_none_and_image_only_data_sets_drop_too(dataset):
    bad_records = [r for r in dataset["records"] if r.image_path in dataset["bad"]]
    log = BadImageLog("skip", warn=lambda line: None)
    items, collate = _make("pairs", bad_records, dataset, mark=True)
    loader = DataLoader(items, batch_size=3, collate_fn=DropBadImages(collate))
    assert list(log.batches(loader)) == [None] * 5  # 15 items of bad images, 3 per batch
    assert log.items == 15 and log.files == 5

    images = ImageOnly(dataset["records"], dataset["tf"], mark_bad_images=True)
    loader = DataLoader(images, batch_size=4, collate_fn=DropBadImages(default_collate))
    log = BadImageLog("skip", warn=lambda line: None)
    kept = [index for batch in log.batches(loader) if batch is not None for index in batch[1]]
    good_indices = [
        i for i, r in enumerate(dataset["records"]) if r.image_path not in dataset["bad"]
    ]
    assert kept == good_indices and log.items == log.files == 5


def test_without_marking_a_bad_image_raises_and_policies_are_checked(dataset):
    items, _ = _make("pairs", dataset["records"], dataset, mark=False)
    bad_index = next(
        i for i, (r, _) in enumerate(items.pairs) if items.records[r].image_path in dataset["bad"]
    )
    with pytest.raises(UserError):
        items[bad_index]
    marked, _ = _make("pairs", dataset["records"], dataset, mark=True)
    assert isinstance(marked[bad_index], BadImage)
    with pytest.raises(UserError, match="data.bad_images"):
        BadImageLog("ignore")


def test_a_bad_image_is_decoded_once_however_many_captions_it_has(dataset, monkeypatch):
    """A marked data set remembers an image that does not decode: its three caption items read
    the file once (a bad file among 123k is not decoded again for every caption), and each item
    is the same BadImage."""
    from captioner.data import datasets as datasets_module

    bad_records = [r for r in dataset["records"] if r.image_path in dataset["bad"]][:1]
    tries, real = [], datasets_module.load_image_tensor

    def counted(path, **kwargs):
        tries.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(datasets_module, "load_image_tensor", counted)
    items, _ = _make("pairs", bad_records, dataset, mark=True)
    marked = [items[index] for index in range(len(items))]
    assert len(marked) == 3 and len(set(marked)) == 1 and isinstance(marked[0], BadImage)
    assert tries == [bad_records[0].image_path]


def test_a_bad_images_reason_is_one_line_even_when_its_name_holds_a_line_break(tmp_path):
    """The reason a BadImage carries (warned about, counted, shown by check_data) is one line:
    a file name with a line break in it has the break read as a space."""
    path = tmp_path / "holiday\nbeach.png"
    path.write_bytes(b"not a picture")
    with pytest.raises(UserError) as caught:
        load_image(path)
    items = ImageOnly([ImageRecord(str(path), ("a caption",), "train")], lambda x: x,
                      mark_bad_images=True)  # fmt: skip
    bad = items[0]
    assert isinstance(bad, BadImage) and bad.path == str(path)
    assert "\n" in str(caught.value) and bad.reason == " ".join(str(caught.value).split())


def test_several_processes_logs_combine_into_their_union_and_its_summary():
    """Each torchrun process logs the bad images of its share: combined, the items add up (this
    process's among them, counted once), each file is counted once, in the order first seen."""
    from captioner.data import CHECK_DATA

    log = BadImageLog("skip", warn=lambda line: None)
    assert log.summary() == "bad images: none"
    log.record([BadImage("a.png", "'a.png' is corrupt"), BadImage("a.png", "'a.png' is corrupt")])
    other = (3, {"b.png": "'b.png' is truncated", "a.png": "'a.png' is corrupt"})
    log.combine([(log.items, log.paths), other])
    assert log.items == 5 and list(log.paths) == ["a.png", "b.png"] and log.files == 2
    assert log.summary() == (
        "bad images: skipped 5 item(s) of 2 unreadable image file(s) (data.bad_images=skip); "
        f"{CHECK_DATA} lists them"
    )


def test_under_error_the_batch_holding_the_bad_image_is_never_yielded(dataset):
    """The policy is applied to a batch's bad images before the batch is handed on: under
    "error" nothing of the batch that holds the first bad image is trained on."""
    items, collate = _make("pairs", dataset["records"], dataset, mark=True)
    loader = DataLoader(items, batch_size=4, collate_fn=DropBadImages(collate))
    first_bad = next(i for i, (r, _) in enumerate(items.pairs) if items.records[r].image_path in
                     dataset["bad"])  # fmt: skip
    yielded = []
    with pytest.raises(UserError):
        for batch in BadImageLog("error", warn=pytest.fail).batches(loader):
            yielded.append(batch)
    assert len(yielded) == first_bad // 4


# --------------------------------------------------------------------------------------------
# End to end: captioner.train over scenes with a bad file


@pytest.fixture
def scenes_with_a_bad_image(scenes_annotations: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the session's scenes set whose first train image is truncated."""
    folder = tmp_path / "scenes"
    shutil.copytree(scenes_annotations.parent, folder)
    annotations = folder / scenes_annotations.name
    entry = next(e for e in json.loads(annotations.read_text())["images"] if e["split"] == "train")
    bad = folder / entry.get("filepath", "") / entry["filename"]
    bad.write_bytes(bad.read_bytes()[:100])
    return annotations, str(bad)


def _scenes_to_garble(scenes_annotations: Path, tmp_path: Path) -> tuple[Path, Callable]:
    """A copy of the session's scenes set, and ``garble(chosen)``, which overwrites the train
    images whose index ``chosen`` picks with bytes no decoder reads."""
    folder = tmp_path / "scenes"
    shutil.copytree(scenes_annotations.parent, folder)
    annotations = folder / scenes_annotations.name
    entries = [e for e in json.loads(annotations.read_text())["images"] if e["split"] == "train"]

    def garble(chosen: Callable[[int], bool]) -> None:
        for index, entry in enumerate(entries):
            if chosen(index):
                (folder / entry.get("filepath", "") / entry["filename"]).write_bytes(b"garbage")

    return annotations, garble


def _train(annotations: Path, out_dir: Path, capsys, *overrides: str) -> tuple[int, str, str]:
    capsys.readouterr()
    argv = ["--config", TINY, "--out-dir", str(out_dir), "--quiet", "--set"]
    argv += [f"data.annotations={annotations}", "train.max_steps=3", *overrides]
    code = run_cli(train_cli.main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_training_skips_a_bad_image_and_reports_it(scenes_with_a_bad_image, tmp_path, capsys):
    annotations, bad = scenes_with_a_bad_image
    code, out, err = _train(
        annotations,
        tmp_path / "run",
        capsys,
        "data.bad_images=skip",
        "data.num_workers=2",
        "data.cache_images=false",
    )
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 1 and bad in warnings[0]
    assert "bad images: skipped" in out and "of 1 unreadable image file(s)" in out
    assert "done: 3 steps (stopped by max_steps)" in out
    assert (tmp_path / "run" / "last.pt").is_file()
    assert not multiprocessing.active_children()  # the loader's persistent workers stopped


def test_skip_passes_over_a_batch_left_one_image_a_trainable_batch_norm_cannot_take(
    scenes_annotations, tmp_path, capsys
):
    """Batches of two images through a trainable encoder with a 1 x 1 last feature map: skipping
    one bad image left BatchNorm one value per channel, and the run died with torch's traceback
    (ValueError: Expected more than 1 value per channel) in the middle of the epoch."""
    annotations, garble = _scenes_to_garble(scenes_annotations, tmp_path)
    garble(lambda index: index % 2 == 0)  # half of them: some batch keeps one good image
    overrides = [
        "data.bad_images=skip", "model.encoder_stages=3", "data.image_size=16",
        "model.finetune=all", "train.batch_size=2", "train.captions_per_image=1",
        "train.max_steps=0", "train.epochs=1", "train.eval_max_images=1",
    ]  # fmt: skip
    code, out, err = _train(annotations, tmp_path / "run", capsys, *overrides)
    assert code == 0, err
    assert "(stopped by epochs)" in out
    # one good image left: every batch holding it is passed over, and the run stops saying why
    # (it said that no training image decodes)
    garble(lambda index: index >= 2)
    code, out, err = _train(annotations, tmp_path / "run2", capsys, *overrides)
    assert code == 2
    assert err.startswith("error: no training step in a whole epoch: ") and err.count("\n") == 1
    assert "left 1 batch(es) a single image" in err and "BatchNorm" in err


def test_skip_with_accumulated_batches_keeps_every_step_inside_its_epoch(
    scenes_annotations, tmp_path
):
    """grad_accum_steps 3 over batches of one image, two in three of them bad: a step planned
    to take the epoch's last three batches met passed-over ones and took the next epoch's first
    batches (one epoch ran 1.02 epochs); it now ends with the epoch."""
    annotations, garble = _scenes_to_garble(scenes_annotations, tmp_path)
    garble(lambda index: index % 3 > 0)
    cfg = load_config(CaptionerConfig, TINY, [
        f"data.annotations={annotations}", "data.bad_images=skip", "train.batch_size=1",
        "train.captions_per_image=1", "train.grad_accum_steps=3", "train.epochs=1",
        "train.max_steps=0", "train.feature_cache=false", "train.eval_max_images=1",
    ])  # fmt: skip
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert (summary["epochs"], summary["stop_reason"]) == (1.0, "epochs")


@pytest.mark.parametrize("frozen", [False, True])
def test_skip_with_no_train_image_that_decodes_stops_with_one_line(
    scenes_annotations, tmp_path, capsys, frozen
):
    """Every train image bad under "skip" (a folder of HEIC files named .jpg, say): check_data says
    training would stop, and training does, in one line; it looped forever over empty batches,
    deaf to SIGTERM (with the feature cache: over an empty epoch)."""
    folder = tmp_path / "scenes"
    shutil.copytree(scenes_annotations.parent, folder)
    annotations = folder / scenes_annotations.name
    for entry in json.loads(annotations.read_text())["images"]:
        if entry["split"] in ("train", "restval"):
            (folder / entry.get("filepath", "") / entry["filename"]).write_bytes(b"garbage")
    overrides = ["data.bad_images=skip", "train.max_steps=0", "train.epochs=2"]
    if frozen:
        overrides += ["model.finetune=frozen", "train.feature_cache=true"]
    code, _, err = _train(annotations, tmp_path / "run", capsys, *overrides)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: no training image decodes") and "skipped" in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(SystemExit) as stop:
        check_data_cli.main(["--config", TINY, "--quiet", "--set", f"data.annotations={annotations}",
                             "data.bad_images=skip"])  # fmt: skip
    assert stop.value.code == 1
    assert "training would stop: no train image decodes" in capsys.readouterr().out


def test_training_stops_at_a_bad_image_under_error(scenes_with_a_bad_image, tmp_path, capsys):
    annotations, bad = scenes_with_a_bad_image
    code, out, err = _train(annotations, tmp_path / "run", capsys, "data.bad_images=error")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad in lines[0], err
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_feature_cache_skips_a_bad_image_too(
    scenes_with_a_bad_image, tmp_path, capsys, num_workers
):
    """A frozen encoder's feature cache meets the bad image while it fills: under "skip" it warns
    once naming the file, leaves the image out of the cache and of training, and says so at the
    end; a second run over the same cache warns again (the image is still bad) and trains (with
    no worker processes: the fill is the same with them)."""
    annotations, bad = scenes_with_a_bad_image
    cached = ("model.finetune=frozen", "train.feature_cache=true", "train.captions_per_image=2")
    overrides = (*cached, "data.bad_images=skip", f"data.num_workers={num_workers}")
    for run in ("first", "again") if num_workers == 0 else ("first",):
        code, out, err = _train(annotations, tmp_path / run, capsys, *overrides,
                                f"train.feature_cache_dir={tmp_path / 'features'}")  # fmt: skip
        assert code == 0, err
        warnings = [line for line in out.splitlines() if line.startswith("warning: skipping")]
        assert len(warnings) == 1 and bad in warnings[0], out
        assert "of 1 unreadable image file(s)" in out and "done: 3 steps" in out
    train_images = sum(
        entry["split"] in ("train", "restval")
        for entry in json.loads(annotations.read_text())["images"]
    )
    card = load_checkpoint(tmp_path / "first" / "last.pt", task="captioner")["card"]
    assert card["data"]["size"] == train_images - 1  # trained on every image but the bad one


def test_the_feature_cache_stops_at_a_bad_image_under_error(
    scenes_with_a_bad_image, tmp_path, capsys
):
    annotations, bad = scenes_with_a_bad_image
    code, _, err = _train(
        annotations,
        tmp_path / "run",
        capsys,
        "data.bad_images=error",
        "model.finetune=frozen",
        "train.feature_cache=true",
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and bad in lines[0], err
    assert not (tmp_path / "run" / "last.pt").exists()


# --------------------------------------------------------------------------------------------
# 3b: every still format Pillow decodes is accepted; multi-page files give their first page


def _reference(data: bytes) -> Image.Image:
    """What Pillow itself decodes: the first frame, upright, as RGB (the test images are opaque).
    The decoded mode is kept in ``info["decoded_mode"]``."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
        rgb.info["decoded_mode"] = image.mode
        return rgb


def _picture() -> Image.Image:
    """24 x 16 pixels of distinct colour blocks: lossy codecs keep them close, lossless exact."""
    pixels = np.zeros((16, 24, 3), dtype=np.uint8)
    for block, colour in enumerate([(230, 30, 30), (30, 200, 60), (40, 60, 220), (250, 250, 250)]):
        pixels[:, block * 6 : block * 6 + 6] = colour
    return Image.fromarray(pixels)


def _writable_formats() -> list[str]:
    Image.init()
    return sorted(Image.SAVE)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Pillow retires IM in 2028
@pytest.mark.parametrize("fmt", _writable_formats())
def test_every_still_format_pillow_decodes_is_accepted(fmt):
    for mode in ("RGB", "P", "L", "1"):  # the first mode the format can store
        buffer = io.BytesIO()
        try:
            _picture().convert(mode).save(buffer, format=fmt)
            break
        except (OSError, ValueError, KeyError) as err:  # a mode or format this build cannot write
            reason = str(err)
    else:
        pytest.skip(f"Pillow cannot write {fmt} here: {reason}")
    data = buffer.getvalue()
    try:
        expected = _reference(data)
    except Exception:  # noqa: BLE001 - written but not read back by Pillow (PDF, ...): not accepted
        pytest.skip(f"Pillow does not decode {fmt}")
        return
    if fmt in UNCHECKED_JPEG_HOLDERS:  # refused, one line naming the kind and what to do
        with pytest.raises(
            UserError, match=f"^the uploaded image is a {fmt} file, .*; convert it to"
        ):
            load_image(io.BytesIO(data))
        return
    loaded = load_image(io.BytesIO(data))
    assert loaded.mode == "RGB" and loaded.size == expected.size
    difference = np.abs(np.asarray(loaded, dtype=int) - np.asarray(expected, dtype=int))
    # Float images (SPIDER stores float32): load_image rounds where Pillow's convert truncates.
    assert difference.max() <= (1 if expected.info["decoded_mode"] == "F" else 0), fmt


def _tiff(pages: list[np.ndarray], planar: int = 1) -> bytes:
    """A baseline uncompressed little-endian TIFF of (H, W, 3) uint8 or uint16 pages, written by
    hand: Pillow cannot write 16-bit RGB or planar TIFFs, which scanners and microscopes do."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    next_pointer = 4
    for page in pages:
        height, width, channels = page.shape
        bits = page.dtype.itemsize * 8
        layout = page.transpose(2, 0, 1) if planar == 2 else page
        data = np.ascontiguousarray(layout).astype(page.dtype.newbyteorder("<")).tobytes()
        data_at = len(out)
        out += data
        plane = len(data) // (channels if planar == 2 else 1)
        offsets = [data_at + i * plane for i in range(channels if planar == 2 else 1)]
        arrays_at = len(out)
        out += struct.pack(f"<{channels}H", *[bits] * channels)
        out += struct.pack(f"<{len(offsets)}I", *offsets)
        out += struct.pack(f"<{len(offsets)}I", *[plane] * len(offsets))
        bits_at, offsets_at = arrays_at, arrays_at + 2 * channels
        counts_at = offsets_at + 4 * len(offsets)
        single = len(offsets) == 1
        entries = [
            (256, 4, 1, width),
            (257, 4, 1, height),
            (258, 3, channels, bits_at),
            (259, 3, 1, 1),  # no compression
            (262, 3, 1, 2),  # RGB
            (273, 4, len(offsets), offsets[0] if single else offsets_at),
            (277, 3, 1, channels),
            (278, 4, 1, height),
            (279, 4, len(offsets), plane if single else counts_at),
            (284, 3, 1, planar),
        ]
        if len(out) % 2:
            out += b"\0"
        ifd_at = len(out)
        struct.pack_into("<I", out, next_pointer, ifd_at)
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            packed = (
                struct.pack("<H", value) + b"\0\0"
                if kind == 3 and count == 1
                else struct.pack("<I", value)
            )
            out += struct.pack("<HHI", tag, kind, count) + packed
        next_pointer = len(out)
        out += b"\0\0\0\0"
    return bytes(out)


@pytest.mark.parametrize(
    "dtype, planar", [(np.uint8, 1), (np.uint16, 1), (np.uint8, 2), (np.uint16, 2)]
)
def test_multipage_rgb_tiff_gives_its_first_page(dtype, planar):
    rng = np.random.default_rng(7)
    top = np.iinfo(dtype).max
    first = rng.integers(0, top, (20, 30, 3), dtype=dtype, endpoint=True)
    second = np.full((12, 18, 3), top // 3, dtype=dtype)  # another size: a page is not a frame
    data = _tiff([first, second, first[::-1]], planar=planar)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    loaded = load_image(io.BytesIO(data))
    assert loaded.size == (30, 20)
    assert np.array_equal(np.asarray(loaded), np.asarray(_reference(data)))
    if dtype == np.uint8:
        assert np.array_equal(np.asarray(loaded), first)


def test_pillow_written_multipage_tiffs_and_their_messages(tmp_path):
    picture, other = _picture(), _picture().transpose(Image.Transpose.ROTATE_180)
    for compression in ["raw", "tiff_lzw", "tiff_deflate", "jpeg", "packbits"]:
        if compression != "raw" and not features.check("libtiff"):
            continue
        path = tmp_path / f"{compression}.tif"
        picture.save(path, save_all=True, append_images=[other], compression=compression)
        loaded = load_image(path)
        assert np.array_equal(np.asarray(loaded), np.asarray(_reference(path.read_bytes())))
    # What Pillow does not decode keeps a true message, which names what is accepted (Pillow
    # 11.0 reads this header as a TIFF's and calls its dimensions invalid: corrupt, also true).
    with pytest.raises(UserError) as caught:
        load_image(io.BytesIO(b"II*\x00" + b"\xff" * 20))
    message = str(caught.value)
    assert "is corrupt or truncated (Invalid dimensions)" in message or (
        "is not an image Pillow can decode" in message and ACCEPTED_FORMATS in message
    )
    assert "TIFF" in ACCEPTED_FORMATS


def test_a_format_pillow_recognises_but_cannot_decode_here_says_so():
    buffer = io.BytesIO()
    _picture().save(buffer, format="EPS")
    if EpsImagePlugin.has_ghostscript():
        assert load_image(buffer).size == (24, 16)
        return
    with pytest.raises(UserError, match="recognises as EPS but cannot decode on this machine"):
        load_image(buffer)


@pytest.mark.skipif(not DEMO_CAPTIONER.is_file(), reason="the bundled demo captioner is missing")
def test_caption_cli_captions_a_multipage_tiff(tmp_path, capsys):
    path = tmp_path / "scan.tiff"
    _picture().save(path, save_all=True, append_images=[_picture()], compression="tiff_lzw")
    code = run_cli(
        caption.main, ["--checkpoint", str(DEMO_CAPTIONER), str(path), "--beam-size", "1"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    [line] = out.splitlines()
    assert line.startswith(f"{path}\t") and len(line.split("\t")[1]) > 0


# --------------------------------------------------------------------------------------------
# Fuzzing load_image: any bytes give an RGB image or a one-line UserError naming the file


def _samples() -> dict[str, bytes]:
    """One small image per common format (the ones users upload), as bytes to mutate."""
    picture = _picture()
    options = {
        "PNG": {},
        "JPEG": {"quality": 90},
        "GIF": {"save_all": True, "append_images": [picture.rotate(180)]},
        "WEBP": {},
        "TIFF": {"save_all": True, "append_images": [picture], "compression": "tiff_lzw"},
        "BMP": {},
        "ICO": {},
        "PPM": {},
        "TGA": {},
        "QOI": {},
    }
    samples = {}
    Image.init()
    for fmt, kwargs in options.items():
        if fmt not in Image.SAVE:  # QOI: only recent Pillows write it
            continue
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **kwargs)
        samples[fmt] = buffer.getvalue()
    return samples


SAMPLES = _samples()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[at : at + 8] = draw(
                st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff"])
            )
    return bytes(data)


@given(data=mutated_images())
def test_any_bytes_decode_to_rgb_or_one_named_line(data):
    source = io.BytesIO(data)
    source.name = "upload.bin"
    try:
        image = load_image(source)
    except UserError as err:
        message = str(err)
        assert "'upload.bin'" in message and "\n" not in message
        return
    assert image.mode == "RGB" and min(image.size) >= 1


@st.composite
def mutated_jpegs(draw: st.DrawFn) -> bytes:
    """The JPEG sample, mutated inside: flipped bits and overwritten runs that keep its length
    and end marker, so that decode_jpeg gets them (truncations are covered above)."""
    data = bytearray(SAMPLES["JPEG"])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 3))
        if draw(st.booleans()):
            data[at] ^= 1 << draw(st.integers(0, 7))
        else:
            run = draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff"]))
            data[at : at + len(run)] = run[: len(data) - 2 - at]
    return bytes(data)


@given(data=mutated_jpegs())
def test_damaged_jpegs_read_by_the_loaders_as_pillow_reads_them(data):
    """What the data loaders read (`load_image_tensor`, decode_jpeg for clean JPEGs) is what
    `load_image` (Pillow; the app and check_data) gives: the same pixels or the same one line."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "photo.jpg"
        path.write_bytes(data)
        try:
            expected = torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1)
        except UserError as err:
            with pytest.raises(UserError) as info:
                load_image_tensor(path)
            assert str(info.value) == str(err)
            return
        assert torch.equal(load_image_tensor(path), expected)


def test_batches_of_only_bad_images_keep_the_epoch_count(scenes_with_a_bad_image, tmp_path):
    """Batches of one pair: every pair of the bad image is a batch with nothing left, which the
    trainer must step over (no step) while still counting it towards the epoch."""
    annotations, bad = scenes_with_a_bad_image
    overrides = [
        f"data.annotations={annotations}",
        "data.bad_images=skip",
        "train.batch_size=1",
        "train.epochs=1",
        "train.eval_max_images=2",
    ]
    cfg = load_config(CaptionerConfig, TINY, overrides)
    records = load_records("karpathy", str(annotations))
    train_pairs = sum(len(r.captions) for r in records if r.split == "train")
    bad_pairs = sum(len(r.captions) for r in records if r.image_path == bad)
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert summary["stop_reason"] == "epochs" and summary["epochs"] == 1.0
    assert summary["steps"] == train_pairs - bad_pairs
    assert summary["skipped_items"] == bad_pairs and summary["skipped_images"] == [bad]


def test_a_path_the_system_cannot_open_is_named_as_such_not_as_a_damaged_image(tmp_path):
    """A symlink loop (or a name too long) is not a corrupt image: the message says the path."""
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    looped = f"cannot open '{tmp_path / 'a.jpg'}' (Too many levels of symbolic links); check"
    for read in (load_image, load_image_tensor):
        with pytest.raises(UserError, match=looped.replace("(", r"\(").replace(")", r"\)")):
            read(tmp_path / "a.jpg")
