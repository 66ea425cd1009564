"""`python -m captioner.check_data`: a data set's problems found before a long run.

A tiny Karpathy-format set is planted with one of each problem (a missing image, a truncated one,
an image listed in two splits, two files with the same bytes, a caption with no words). The
report must list each, the exit status must say whether `captioner.train` would stop (it is
checked against `load_image` and against the trainer's own rules), and the parallel scan must give
the same result on any number of threads while keeping a bounded number of images in flight.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner import check_data
from captioner import evaluate as evaluate_cli
from captioner import train as train_cli
from captioner.data import CHECK_DATA, load_image
from captioner.data.check import BAD, MISSING, OK, DataReport, check_image, scan_images
from recurrent.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "captioner" / "tiny.yaml")


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _entry(name: str, split: str, *captions: str) -> dict:
    return {"filename": name, "split": split, "sentences": [{"raw": c} for c in captions]}


def _dataset(
    root: Path, *, missing: bool = True, bad_split: str = "train", leak: bool = True
) -> Path:
    """Images 0-5 (0-3 train, 4 val, 5 test) plus the planted problems; returns the JSON."""
    splits = ["train", "train", "train", "train", "val", "test"]
    images = [_entry(f"{i}.png", split, f"a red circle {i}") for i, split in enumerate(splits)]
    for i in range(len(splits)):
        (root / f"{i}.png").write_bytes(_png(i))
    (root / "truncated.png").write_bytes(_png(10)[:60])
    images.append(_entry("truncated.png", bad_split, "a blue square"))
    (root / "copy.png").write_bytes(_png(1))  # the same bytes as 1.png (train), listed as test
    images.append(_entry("copy.png", "test", "a green star", "..."))  # "..." has no word
    if leak:
        images.append(_entry("2.png", "test", "a red circle 2"))  # 2.png in train and test
    if missing:
        images.append(_entry("gone.png", "train", "a small cross"))
    annotations = root / "dataset.json"
    annotations.write_text(json.dumps({"images": images}))
    return annotations


def _check(
    annotations: Path | None, capsys, *overrides: str, json_out: bool = False
) -> tuple[int, str, str]:
    """check_data on ``annotations`` with the tiny config and ``overrides``; without annotations,
    on the arguments ``overrides`` alone."""
    argv = [
        "--config",
        TINY,
        "--quiet",
        "--workers",
        "3",
        "--set",
        f"data.annotations={annotations}",
    ]
    argv = [] if annotations is None else argv
    argv += [*overrides, *(["--json"] if json_out else [])]
    capsys.readouterr()
    try:
        code = run_cli(check_data.main, argv)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def run_main_train(annotations: Path, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    argv = ["--config", TINY, "--out-dir", str(annotations.parent / "run"), "--quiet", "--set",
            f"data.annotations={annotations}", "train.max_steps=1"]  # fmt: skip
    code = run_cli(train_cli.main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_planted_problem_is_reported_and_training_would_stop(tmp_path, capsys):
    annotations = _dataset(tmp_path)
    code, out, _ = _check(annotations, capsys)
    assert code == 1
    lines = out.splitlines()
    assert f"missing\t{tmp_path / 'gone.png'}" in lines
    [bad] = [line for line in lines if line.startswith("bad\t")]
    assert bad.startswith(f"bad\t{tmp_path / 'truncated.png'}\ttrain\t") and "truncated" in bad
    assert f"listed 2 times\t{tmp_path / '2.png'}\ttrain,test" in lines
    assert f"same bytes\t{tmp_path / '1.png'}\t{tmp_path / 'copy.png'}\ttest,train" in lines
    assert f"empty caption\t{tmp_path / 'copy.png'}\t'...'" in lines
    assert "10 records (train 6, val 1, test 3) of 9 image files, 11 captions" in out
    assert "7 fine, 1 missing, 1 do not decode" in out
    # the train captions' words: a red circle 0-3, a blue square, a small cross (not <pad>, ...)
    assert "vocabulary: 11 words and 4 special tokens (data.min_word_count=1)" in lines
    stop = lines[-1]
    assert stop.startswith("training would stop: ")
    assert "1 image(s) referenced but missing" in stop and "data.bad_images=error" in stop
    assert "1 image(s) listed in more than one split (training would see val or test" in stop
    # training refuses that image, which it used to train on and score
    (tmp_path / "leak").mkdir()
    code, _, err = run_main_train(_dataset(tmp_path / "leak", missing=False), capsys)
    assert code == 2 and err.count("\n") == 1
    assert (
        f"listed in more than one split, e.g. '{tmp_path / 'leak' / '2.png'}' (test, train)" in err
    )


def test_a_name_holding_a_tab_or_a_line_break_is_one_field_of_its_line(tmp_path, capsys):
    """The report's problem lines are tab-separated: a file named with a tab, a line break, a
    form feed or a space made a line of more fields, two lines, or a group of identical files
    that read as more files. Such a field is quoted as csv quotes it (`tab_separated`, caption's
    lines' rule), so a tab-separated reader gets each line's names back as written."""
    odd = ["tab\tname.png", "line\nbreak.png", "form\ffeed.png", "with space.png"]
    images = [_entry(f"{i}.png", split, f"a red circle {i}") for i, split in
              enumerate(["train", "train", "val", "test"])]  # fmt: skip
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    (tmp_path / odd[2]).write_bytes(_png(0))  # the same bytes as 0.png
    (tmp_path / odd[3]).write_bytes(_png(0))
    images += [_entry(name, "train", "a blue square") for name in odd]
    annotations = tmp_path / "dataset.json"
    annotations.write_text(json.dumps({"images": images}))
    code, out, _ = _check(annotations, capsys)
    assert code == 1
    rows = list(csv.reader(out.splitlines(keepends=True), delimiter="\t"))
    names = [str(tmp_path / name) for name in odd]
    assert ["missing", names[0]] in rows and ["missing", names[1]] in rows
    assert ["same bytes", str(tmp_path / "0.png"), names[2], names[3], "train"] in rows


THAI = "ผู้ชายกำลังขี่จักรยานบนถนน"  # a man is riding a bicycle on the road, written as Thai is
THAI_SPLIT = "ผู้ชาย กำลัง ขี่ จักรยาน บน ถนน"  # its words split by spaces, as a segmenter splits them


def test_captions_whose_words_are_not_split_by_spaces_are_counted(tmp_path, capsys):
    """Thai, Lao, Burmese, Khmer and Tibetan captions, written without spaces between words, are one
    token each (their letters are no words, unlike Chinese characters): check_data counts the
    captions with such a run (text and JSON) and says to split their words first. The same
    captions segmented, and a long English word, are not counted; nothing is said then."""
    from captioner.data.vocab import RUN_ON_LETTERS, run_on_words, tokenize

    run_on = [THAI, "បុរសម្នាក់កំពុងជិះកង់", "လူတစ်ယောက်စက်ဘီးစီးနေသည်", "ຜູ້ຊາຍກຳລັງຂີ່ລົດຖີບຢູ່ເທິງຖະໜົນ"]
    assert all(run_on_words(tokenize(text)) for text in run_on)
    assert not run_on_words(tokenize(THAI_SPLIT))
    assert not run_on_words(["pneumonoultramicroscopicsilicovolcanoconiosis"])
    assert not run_on_words([THAI[:RUN_ON_LETTERS]]) and run_on_words([THAI[: RUN_ON_LETTERS + 1]])
    assert run_on_words(tokenize("ཁྱི་གཅིག་ཐང་ལ་རྒྱུག་གི་འདུག།"))  # Tibetan: a dog runs on the plain
    blocks = [(0x0E00, 0x0EFF), (0x1000, 0x109F), (0xA9E0, 0xA9FF), (0xAA60, 0xAA7F),
              (0x1780, 0x17FF), (0x19E0, 0x19FF), (0x0F00, 0x0FFF)]  # fmt: skip
    for first, last in blocks:  # each block's first and last code point, and not those beside
        assert run_on_words([chr(first) * 17]) and run_on_words([chr(last) + "a" * 16])
    for beside in (0x0DFF, 0x10A0, 0xA9DF, 0xAA5F, 0xAA80, 0x1800, 0x19DF, 0x1A00):
        assert not run_on_words([chr(beside) * 17])
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    splits = ["train", "train", "val", "test"]
    for captions, counted in ((run_on, 4), ([THAI_SPLIT] * 4, 0)):
        images = [_entry(f"{i}.png", split, captions[i]) for i, split in enumerate(splits)]
        annotations = tmp_path / "dataset.json"
        annotations.write_text(json.dumps({"images": images}))
        code, out, _ = _check(annotations, capsys)
        said = [line for line in out.splitlines() if "not split by spaces" in line]
        if counted:
            assert said == [
                "captions of words not split by spaces: 4 (Thai, Lao, Burmese, Khmer or Tibetan "
                f"letters run on for more than {RUN_ON_LETTERS}: each run is one word to the "
                "tokenizer, so most become <unk>; split their words by spaces first, with a word "
                f"segmenter for the language), e.g. {str(tmp_path / '0.png')!r}: {THAI!r}"
            ]
        else:
            assert code == 0 and said == []
        code, out, _ = _check(annotations, capsys, json_out=True)
        assert json.loads(out)["run_on_captions"] == counted


def test_the_report_says_which_splits_were_drawn(tmp_path, capsys):
    """A Karpathy file gives every split; a CSV without the column has its splits drawn by hash,
    and the report says for how many images and with which settings."""
    given = _dataset(tmp_path, missing=False, leak=False)
    code, out, _ = _check(given, capsys, json_out=True)
    assert json.loads(out)["drawn"] == 0
    assert "drawn by a hash" not in _check(given, capsys)[1]
    rows = [f"{i}.png,a red circle {i}" for i in range(6) for _ in range(2)]
    (tmp_path / "captions.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    settings = ("data.format=csv", "data.split_seed=3", "data.val_fraction=0.2")
    code, out, _ = _check(tmp_path / "captions.csv", capsys, *settings, json_out=True)
    report = json.loads(out)
    assert report["drawn"] == 6 and sum(report["splits"].values()) == 6
    out = _check(tmp_path / "captions.csv", capsys, *settings)[1]
    assert (
        "  splits of 6 image(s) drawn by a hash of their paths (data.split_seed=3, "
        "val_fraction=0.2, test_fraction=0.05): adding images moves none of them"
    ) in out.splitlines()


def test_the_report_gives_caption_lengths_and_what_training_and_decoding_cut(tmp_path, capsys):
    """Captions longer than data.max_caption_length are cut in training, and val/test references
    longer than decode.max_length are longer than any caption decoding writes (a Chinese caption
    counts characters): the report says how many, with a setting that fits; following it, the
    note goes."""
    lengths = {"train": [3, 5, 9, 12, 2], "val": [4, 14], "test": [7, 9]}  # in tokens
    images, index = [], 0
    for split, counts in lengths.items():
        for count in counts:
            (tmp_path / f"{index}.png").write_bytes(_png(index))
            caption = "一只狗在草地上奔跑" if count == 9 else " ".join(["word"] * count) + "."
            images.append(_entry(f"{index}.png", split, caption))
            index += 1
    annotations = tmp_path / "dataset.json"
    annotations.write_text(json.dumps({"images": images}, ensure_ascii=False), encoding="utf-8")
    every = sorted(n for counts in lengths.values() for n in counts)  # 2 3 4 5 7 9 9 12 14
    limits = ("data.max_caption_length=8", "decode.max_length=8")
    code, out, _ = _check(annotations, capsys, *limits, json_out=True)
    assert code == 0
    assert json.loads(out)["caption_lengths"] == {
        "median": every[4], "p95": every[-1], "longest": 14, "train_cut": 2,
        "references_too_long": 2, "longest_reference": 14,
    }  # fmt: skip
    line = next(line for line in _check(annotations, capsys, *limits)[1].splitlines()
                if line.startswith("caption lengths:"))  # fmt: skip
    assert line == (
        "caption lengths: median 7 tokens, 95% at most 14, longest 14; 2 training caption(s) are "
        "longer than data.max_caption_length=8 and are cut to it; 2 val/test reference(s) are "
        "longer than decode.max_length=8, which no decoded caption can be (e.g. --set "
        "decode.max_length=14)"
    )
    out = _check(annotations, capsys, "data.max_caption_length=12", "decode.max_length=14")[1]
    assert "caption lengths: median 7 tokens, 95% at most 14, longest 14\n" in out


def test_caption_lengths_against_hand_worked_numbers() -> None:
    """Lengths 1-20, the longest a training caption: the median is the lower middle of an even
    count (10), the 95th percentile the nearest rank (the 19th of 20), a caption exactly at a
    limit is not past it, and the longest reference is the longest of val and test alone; a
    report of no captions is zeros (kills: the upper middle, the rank off by one, the longest of
    every split, an empty report's IndexError)."""
    report = DataReport(
        [], {}, lengths={"train": [*range(1, 17), 20], "val": [17, 18], "test": [19]}
    )
    assert report.caption_lengths(16, 18) == {
        "median": 10, "p95": 19, "longest": 20, "train_cut": 1, "references_too_long": 1,
        "longest_reference": 19,
    }  # fmt: skip
    assert set(DataReport([], {}).caption_lengths(1, 1).values()) == {0}


def test_the_reports_vocabulary_is_the_trainers_and_each_caption_is_tokenized_once(monkeypatch):
    """`DataReport.build`'s vocabulary is `Vocabulary.build` of the training captions alone, at
    its min_word_count (val and test words left out, ids in the same order), though it counts
    the tokens its lengths already made: each caption is tokenized once, not twice."""
    from captioner.data import check as check_module
    from captioner.data import vocab as vocab_module
    from captioner.data.records import ImageRecord
    from captioner.data.vocab import Vocabulary, tokenize

    captions = {
        "train": ["a dog runs", "A dog sits.", "two dogs run", "a cat"],
        "val": ["a zebra zebra zebra"],
        "test": ["a zebra"],
    }
    records = [
        ImageRecord(f"{split}.png", tuple(texts), split) for split, texts in captions.items()
    ]
    calls = []
    for module in (check_module, vocab_module):  # `Vocabulary.build` tokenizes in its own module
        monkeypatch.setattr(module, "tokenize", lambda text: calls.append(text) or tokenize(text))
    for min_count in (1, 2):
        calls.clear()
        report = DataReport.build(records, {}, min_count)
        assert sorted(calls) == sorted(t for texts in captions.values() for t in texts)
        expected = Vocabulary.build(captions["train"], min_count)
        assert report.vocab.to_list() == expected.to_list()
        assert "zebra" not in report.vocab.to_list() and "dog" in report.vocab.to_list()
    assert "runs" not in report.vocab.to_list()  # seen once: min_word_count 2 leaves it out


def test_the_setting_suggested_for_long_references_is_the_longest_reference(tmp_path, capsys):
    """References too long for decode.max_length while no training caption is cut: the note says
    so alone, and suggests the longest reference, not a longer training caption (kills: the
    reference note under the training count, the longest caption of every split suggested)."""
    images = []
    for index, (split, count) in enumerate((("train", 20), ("train", 3), ("val", 9), ("test", 2))):
        (tmp_path / f"{index}.png").write_bytes(_png(index))
        images.append(_entry(f"{index}.png", split, " ".join(["word"] * count) + "."))
    annotations = tmp_path / "dataset.json"
    annotations.write_text(json.dumps({"images": images}))
    code, out, _ = _check(annotations, capsys, "data.max_caption_length=20", "decode.max_length=6")
    assert code == 0
    assert (
        "caption lengths: median 3 tokens, 95% at most 20, longest 20; 1 val/test reference(s) are "
        "longer than decode.max_length=6, which no decoded caption can be (e.g. --set "
        "decode.max_length=9)\n"
    ) in out


def test_the_report_agrees_with_load_image(tmp_path, capsys):
    annotations = _dataset(tmp_path)
    code, out, _ = _check(annotations, capsys, json_out=True)
    report = json.loads(out)
    assert code == 1 and report["stops_training"]
    for path in sorted({str(p) for p in tmp_path.glob("*.png")} | set(report["missing"])):
        try:
            load_image(path)
            expected = OK
        except UserError as err:
            expected = MISSING if "not found" in str(err) else BAD
            if expected == BAD:
                assert report["bad"][path] == " ".join(str(err).split())
        assert check_image(path).status == expected
        assert (path in report["missing"]) == (expected == MISSING)
        assert (path in report["bad"]) == (expected == BAD)


@pytest.mark.parametrize(
    "bad_split, policy, would_run",
    [
        ("train", "skip", True),  # the trainer drops it
        ("train", "error", False),
        ("val", "skip", False),  # validation decodes every val image
        ("test", "error", True),  # training never reads test images
    ],
)
def test_exit_status_follows_the_trainers_rules(tmp_path, capsys, bad_split, policy, would_run):
    annotations = _dataset(tmp_path, missing=False, bad_split=bad_split, leak=False)
    code, out, err = _check(annotations, capsys, f"data.bad_images={policy}")
    assert code == (0 if would_run else 1), out + err
    last = out.splitlines()[-1]
    assert last.startswith("training would run" if would_run else "training would stop")
    if would_run and bad_split == "train":
        assert "skipping 1 train image(s)" in last
    if would_run and bad_split == "test":
        assert "1 test image(s) do not decode" in last
    code, out, _ = _check(annotations, capsys, f"data.bad_images={policy}", json_out=True)
    assert (json.loads(out)["stops_training"] == []) == would_run  # under the same policy


def test_no_val_split_would_stop_training(tmp_path, capsys):
    """Validation needs images: data whose val image moved to train would not train."""
    annotations = _dataset(tmp_path, missing=False, bad_split="test", leak=False)
    data = json.loads(annotations.read_text())
    for image in data["images"]:
        image["split"] = "train" if image["split"] == "val" else image["split"]
    annotations.write_text(json.dumps(data))
    code, out, _ = _check(annotations, capsys)
    assert code == 1 and "the val split has no images" in out.splitlines()[-1]


def test_bad_config_or_annotations_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = _check(tmp_path / "nowhere.json", capsys)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("error: ") and "nowhere.json" in err
    (tmp_path / "broken.json").write_text('{"images": [')
    code, _, err = _check(tmp_path / "broken.json", capsys)
    assert code == 2 and "malformed JSON" in err and err.count("\n") == 1
    code, _, err = _check(tmp_path / "broken.json", capsys, "data.bad_images=maybe")
    assert code == 2 and "data.bad_images" in err
    code, _, err = _check(tmp_path / "broken.json", capsys, "data.image_size=0")  # the config
    assert code == 2 and "data.image_size" in err and err.count("\n") == 1  # first, as train's
    # the encoder's weights as training reads them: a missing or foreign local file, a bad name
    (tmp_path / "notes.pth").write_text("not weights")
    for weights, expected in [
        ("nowhere.pth", "encoder weights file 'nowhere.pth' not found"),
        (tmp_path / "notes.pth", "is not a readable torch state_dict"),
        ("ResNet50_Weights.DEFAULT", "are not torchvision weights for resnet18"),
    ]:
        code, _, err = _check(tmp_path / "broken.json", capsys, f"model.weights={weights}")
        assert code == 2 and expected in err and err.count("\n") == 1


def test_parallel_scan_is_the_same_on_any_threads_and_bounded(tmp_path):
    paths = []
    for i in range(40):
        path = tmp_path / f"{i}.png"
        path.write_bytes(_png(i) if i % 7 else _png(i)[:50])  # every 7th truncated
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.png"))
    one = {c.path: c for c in scan_images(paths, 1)}
    many = {c.path: c for c in scan_images(paths, 4)}
    assert one == many and len(one) == len(paths)
    assert sum(c.status == BAD for c in one.values()) == 6 and one[paths[-1]].status == MISSING

    taken, done, in_flight, lock = [0], [0], [], threading.Lock()

    def feed():
        for path in paths:
            taken[0] += 1
            yield path

    def counting_check(path):
        with lock:
            in_flight.append(taken[0] - done[0])
        result = check_image(path)
        with lock:
            done[0] += 1
        return result

    workers = 2
    results = list(scan_images(feed(), workers, check=counting_check))
    assert len(results) == len(paths)
    assert max(in_flight) <= 4 * workers  # images taken from the list but not finished
    with pytest.raises(UserError, match="--workers"):
        list(scan_images(paths, 0))


def test_a_checkpoint_stands_in_for_its_config_as_evaluate_s_lines_advise(tmp_path, capsys):
    """evaluate reads a run's data from its checkpoint, and a user who has only the checkpoint
    follows its line to `check_data --checkpoint`: the same report as the run's --config gives."""
    annotations = _dataset(tmp_path, missing=False, bad_split="test", leak=False)
    assert run_main_train(annotations, capsys)[0] == 0
    data = json.loads(annotations.read_text())  # then an image of train is listed as test too
    data["images"].append(_entry("2.png", "test", "a red circle 2"))
    annotations.write_text(json.dumps(data))
    checkpoint = str(tmp_path / "run" / "last.pt")
    code = run_cli(evaluate_cli.main, ["--checkpoint", checkpoint, "--no-meteor", "--json"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "listed in more than one split" in err
    assert f"({CHECK_DATA} lists them)" in err
    by_config = _check(annotations, capsys, json_out=True)
    argv = ["--checkpoint", checkpoint, "--quiet", "--workers", "3", "--json"]
    by_checkpoint = _check(None, capsys, *argv)
    assert by_checkpoint == by_config and by_config[0] == 1
    assert str(tmp_path / "2.png") in json.loads(by_config[1])["listed_twice"]
    # evaluate's --annotations (another set, its images beside it, or under --image-root)
    (tmp_path / "other").mkdir()
    other = _dataset(tmp_path / "other", bad_split="val")  # a missing image, a leak of its own
    by_other = _check(other, capsys, json_out=True)
    argv = ["--checkpoint", checkpoint, "--annotations", str(other), "--quiet", "--json"]
    assert _check(None, capsys, *argv) == by_other != by_config
    (tmp_path / "lists").mkdir()
    listed = tmp_path / "lists" / "dataset.json"  # the same list, away from its images
    listed.write_text(other.read_text())
    argv = ["--checkpoint", checkpoint, "--quiet", "--json", "--image-root", str(other.parent)]
    assert _check(None, capsys, *argv, "--annotations", str(listed)) == by_other
    # --set applies to the checkpoint's settings as to a config file's
    argv = ["--checkpoint", checkpoint, "--quiet", "--set", "data.bad_images=skip", "--json"]
    assert (
        _check(None, capsys, *argv)[:2]
        == _check(annotations, capsys, "data.bad_images=skip", json_out=True)[:2]
    )
    # a --set value out of its bounds is refused as a config file's would be
    argv = ["--checkpoint", checkpoint, "--set", "data.val_fraction=1.5"]
    code, out, err = _check(None, capsys, *argv)
    assert code == 2 and not out and err.count("\n") == 1
    assert err == "error: config key 'data.val_fraction' must be in [0, 1), got 1.5\n"
    # a checkpoint whose saved config this version cannot read (a value of another type, or out
    # of its bounds): one line naming the file
    for key, value in (("image_size", "big"), ("val_fraction", 1.5)):
        payload = torch.load(checkpoint, weights_only=True)
        payload["config"]["data"][key] = value
        torch.save(payload, tmp_path / "edited.pt")
        code, out, err = _check(None, capsys, "--checkpoint", str(tmp_path / "edited.pt"))
        assert code == 2 and not out and err.count("\n") == 1
        assert err.startswith(f"error: {tmp_path / 'edited.pt'} does not fit this version")
        assert f"data.{key}" in err
    code, _, err = _check(None, capsys, "--checkpoint", checkpoint, "--config", TINY)
    assert code == 2 and "--config: not allowed with argument --checkpoint" in err


def test_a_checkpoint_evaluate_reads_is_checked_whatever_its_training_settings(
    tmp_path, capsys, scenes_annotations
):
    """check_data --checkpoint checks the data a run trained on; a training setting that a later
    version checks more strictly (train.heartbeat_timeout_s under 1 s was accepted before its
    minimum existed) does not concern the data, and evaluate reads the checkpoint: check_data
    refused it, with a line naming a config key as if of the user's --config."""
    payload = torch.load(REPO / "models" / "scenes_captioner.pt", weights_only=True)
    payload["config"]["train"]["heartbeat_timeout_s"] = 0.5
    checkpoint = tmp_path / "older.pt"
    torch.save(payload, checkpoint)
    root = scenes_annotations.parent
    argv = ["--checkpoint", str(checkpoint), "--quiet", "--set",
            f"data.annotations={scenes_annotations}", f"data.image_root={root}"]  # fmt: skip
    code, out, err = _check(None, capsys, *argv)
    assert code == 0, err
    assert "training would run" in out


def test_an_empty_config_path_is_one_line_as_for_train(capsys):
    """`--config "$CONFIG"` with the variable unset: `args.config` is "" (false), so check_data
    took the --checkpoint path with no checkpoint, and load_checkpoint(None) raised TypeError (a
    traceback); train says the config path is a folder."""
    code, out, err = _check(None, capsys, "--config", "")
    assert code == 2 and not out and err.startswith("error: config file ") and err.count("\n") == 1
