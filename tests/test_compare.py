"""captioner.compare (two prediction files on the same references) and what captioner.evaluate
says it scored, end to end through the command lines' main functions."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_models import train_tiny_captioner

from captioner import compare as compare_cli
from captioner import evaluate as evaluate_cli
from captioner import scoring
from captioner.cider import corpus_cider_d
from captioner.config import DataConfig, DecodeConfig
from captioner.data import ImageRecord, load_records, select_split
from captioner.inference import load_captioner
from captioner.metrics import bleu_scores, repeat_share
from captioner.scenes import generate_dataset
from captioner.scoring import TOKENIZER, image_ids
from recurrent import precision
from recurrent.checkpoint import load_checkpoint, save_checkpoint
from recurrent.errors import run_cli


def test_image_ids_are_the_file_numbers_else_the_stems_else_the_paths():
    """COCO results need one image_id per image: numbers while they are unique (COCO's own files
    and the scenes), else the file stems, else the paths below the folder of the split's images;
    never two images with one id."""

    def ids(*paths: str) -> list[int | str]:
        return image_ids([ImageRecord(path, ("a caption",), "test") for path in paths])

    assert ids("val2014/COCO_val2014_000000000042.jpg", "b/000007.png") == [42, 7]
    assert ids("a/cat_1.png", "b/dog_1.png") == ["cat_1", "dog_1"]  # both would be 1
    assert ids("a/cat.png", "b/dog_2.png") == ["cat", "dog_2"]
    assert ids("data/a/x.png", "data/b/x.jpg") == ["a/x.png", "b/x.jpg"]  # below their folder
    assert ids("data/x.png", "data/x.jpg") == ["x.png", "x.jpg"]
    assert ids("data/x.png", "data/y.png") == ["x", "y"]
    # the last resort, names that stay alike (one file listed twice): the positions, from 0
    assert ids("data/x.png", "data/x.png") == [0, 1]
    assert ids("x.png", "x.png") == [0, 1]  # no folder in the name: the current one


def test_other_annotations_read_their_images_from_their_own_folder_unless_told_otherwise():
    """evaluate's (and check_data --checkpoint's) --annotations, --format and --image-root in
    place of a checkpoint's data: other annotations are read with their images beside them, not
    under the checkpoint's data.image_root (the training machine's folder), unless --image-root
    names a folder, whichever of the two flags comes first."""
    parser = argparse.ArgumentParser()
    scoring.add_data_arguments(parser)
    saved = DataConfig(annotations="/data/coco/karpathy.json", image_root="/data/coco/images")

    def data(*argv: str) -> DataConfig:
        return scoring.data_from_arguments(saved, parser.parse_args(argv))

    assert data() == saved
    other = dataclasses.replace(saved, annotations="o.csv", image_root="", format="csv")
    assert data("--annotations", "o.csv", "--format", "csv") == other
    rooted = dataclasses.replace(saved, annotations="o.json", image_root="/moved")
    assert data("--annotations", "o.json", "--image-root", "/moved") == rooted
    assert data("--image-root", "/moved", "--annotations", "o.json") == rooted
    assert data("--image-root", "/moved") == dataclasses.replace(saved, image_root="/moved")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    """30 scenes of 48 px with half of them in the test split: (annotations, test records)."""
    root = tmp_path_factory.mktemp("compare")
    annotations = generate_dataset(root, 30, seed=5, size=48, val_fraction=0.1, test_fraction=0.5)
    records = select_split(load_records("karpathy", annotations, None), "test")
    return annotations, records


def write(path: Path, ids, captions) -> str:
    items = [{"image_id": i, "caption": c} for i, c in zip(ids, captions, strict=True)]
    path.write_text(json.dumps(items), encoding="utf-8")
    return str(path)


def run_json(main, argv, capsys) -> dict:
    capsys.readouterr()
    assert run_cli(main, argv) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_scores_each_file_and_ranks_the_differences(split, tmp_path, capsys):
    annotations, records = split
    ids = image_ids(records)
    references = [list(r.captions) for r in records]
    good = [r.captions[0] for r in records]  # a reference itself
    # B: the reference for the first half, a wrong caption for the second, worse and worse.
    wrong = ["a large black cross", "a small white star above a large black cross", "a"]
    bad = [
        caption if index < len(records) // 2 else wrong[index % 3]
        for index, caption in enumerate(good)
    ]
    a, b = write(tmp_path / "a.json", ids, good), write(tmp_path / "b.json", ids, bad)
    report = run_json(
        compare_cli.main, ["--annotations", str(annotations), a, b, "--top", "3", "--json"], capsys
    )
    assert report["split"] == "test" and report["images"] == len(records) >= 10
    assert report["tokenizer"] == TOKENIZER
    for entry, captions in zip(report["files"], (good, bad), strict=True):
        corpus, _ = corpus_cider_d(references, captions)
        assert entry["scores"]["CIDEr-D"] == pytest.approx(100 * corpus, abs=1e-3)
        bleu = bleu_scores(references, captions)
        assert entry["scores"]["BLEU-4"] == pytest.approx(bleu["BLEU-4"], abs=1e-3)
    _, per_image_a = corpus_cider_d(references, good)
    _, per_image_b = corpus_cider_d(references, bad)
    gaps = sorted((abs(x - y) for x, y in zip(per_image_a, per_image_b, strict=True)), reverse=True)
    shown = report["differences"]
    assert len(shown) == 3
    assert [abs(d["cider_a"] - d["cider_b"]) for d in shown] == pytest.approx(
        [100 * gap for gap in gaps[:3]], abs=1e-3
    )
    assert all(d["a"] != d["b"] and d["references"] for d in shown)
    assert report["a_higher"] == len(records) - len(records) // 2 and report["b_higher"] == 0
    for d in shown:  # A is the reference caption and scores higher: each value under its file
        assert d["a"] == d["references"][0] and d["cider_a"] > d["cider_b"]
    # the files the other way round: the same images, the gaps by size whatever their sign; with
    # --top above the images that differ, those only (equal ones are left out)
    differing = len(records) - len(records) // 2
    swapped = run_json(
        compare_cli.main, ["--annotations", str(annotations), b, a, "--top", "99", "--json"], capsys
    )
    gaps_shown = [d["cider_b"] - d["cider_a"] for d in swapped["differences"]]
    assert len(gaps_shown) == differing and gaps_shown == sorted(gaps_shown, reverse=True)
    assert gaps_shown == pytest.approx([100 * gap for gap in gaps[:differing]], abs=1e-3)

    capsys.readouterr()
    assert run_cli(compare_cli.main, ["--annotations", str(annotations), a, b]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"test split of {annotations}: {len(records)} images, tokens:")
    assert lines[1].startswith("A ") and "CIDEr-D" in lines[1] and lines[2].startswith("B ")
    first = shown[0]
    a_line = next(line for line in lines if line.startswith("    A "))
    b_line = next(line for line in lines if line.startswith("    B "))
    assert a_line.endswith(first["a"]) and b_line.endswith(first["b"])


def test_compare_refuses_mismatched_files(split, tmp_path, capsys):
    annotations, records = split
    ids = image_ids(records)
    captions = [r.captions[0] for r in records]
    a = write(tmp_path / "a.json", ids, captions)
    fewer = write(tmp_path / "fewer.json", ids[:-1], captions[:-1])
    foreign = write(tmp_path / "foreign.json", [*ids[:-1], 999999], captions)
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    twice = write(tmp_path / "twice.json", [*ids[:-1], ids[0]], captions)
    flagged = tmp_path / "flagged.json"  # JSON true is no image id (Python would read it as 1)
    flagged.write_text(json.dumps([{"image_id": True, "caption": "a"}]), encoding="utf-8")
    cases = [
        ([a, fewer], "different images"),
        ([a, twice], f"captions image {ids[0]!r} twice"),
        ([a, str(flagged)], "flagged.json must be a list of {'image_id'"),
        ([a, a, "--top", "-1"], "--top must be 0 or more, got -1"),
        ([a, str(tmp_path / "empty.json")], "holds no predictions (an empty list)"),
        ([a, foreign], "not in the test split"),
        ([a, str(tmp_path / "broken.json")], "not a JSON prediction file"),
        ([a, str(tmp_path / "missing.json")], "not found"),
    ]
    for files, message in cases:
        capsys.readouterr()
        assert run_cli(compare_cli.main, ["--annotations", str(annotations), *files]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert run_cli(compare_cli.main, [a, a]) == 2  # no references given


def test_a_split_drawn_empty_says_what_evaluate_and_compare_can_pass(split, tmp_path, capsys):
    """A checkpoint whose data draws its splits by hash with data.test_fraction 0 has no test
    split. evaluate and compare read that fraction from the checkpoint and have no --set, so the
    line says to pass annotations that give the split (not to raise data.test_fraction, which
    they cannot, and which would draw training images into the test split); doing so scores."""
    annotations, _ = split
    checkpoint = train_tiny_captioner(tmp_path / "run", annotations)
    images = json.loads(Path(annotations).read_text(encoding="utf-8"))["images"]
    root = Path(annotations).parent
    rows = [(f"images/{image['filename']}", image["sentences"][0]["raw"]) for image in images]
    drawn = root / "drawn.csv"  # no split column: every image's split is drawn
    with drawn.open("w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([("image", "caption"), *rows])
    payload = load_checkpoint(checkpoint)
    data = payload["config"]["data"]
    data.update(format="csv", annotations=str(drawn), image_root="", test_fraction=0.0)
    save_checkpoint(payload, checkpoint)
    predictions = write(tmp_path / "p.json", [1], ["a caption"])
    for main, argv in (
        (evaluate_cli.main, ["--checkpoint", str(checkpoint), "--split", "test"]),
        (compare_cli.main, ["--checkpoint", str(checkpoint), predictions, predictions]),
    ):
        capsys.readouterr()
        assert run_cli(main, argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "data.test_fraction" not in err, err
        assert "pass --annotations whose rows give some images the 'test' split" in err, err
    given = root / "given.csv"  # the advice: the same rows, with a split column
    with given.open("w", newline="", encoding="utf-8") as stream:
        splits = ["test" if i < 4 else "train" for i in range(len(rows))]
        writer = csv.writer(stream)
        writer.writerows([("image", "caption", "split")])
        writer.writerows((*row, split) for row, split in zip(rows, splits, strict=True))
    argv = ["--checkpoint", str(checkpoint), "--split", "test", "--annotations", str(given)]
    assert run_json(evaluate_cli.main, [*argv, "--no-meteor", "--json"], capsys)["images"] == 4


def test_compare_reads_a_checkpoint_as_evaluate_does(split, tmp_path, capsys):
    """compare --checkpoint took the checkpoint's data config as it was: a config out of this
    version's bounds (here a val_fraction of 1.5, which drew every image into val) was scored
    anyway, and one without a config said "holds no usable data config". It now reads it as
    evaluate does, in the same line."""
    checkpoint = train_tiny_captioner(tmp_path / "run", split[0])
    predictions = write(tmp_path / "p.json", [1], ["a caption"])
    for name, edit, said in (
        ("out.pt", lambda saved: saved["config"]["data"].update(val_fraction=1.5), "does not fit"),
        ("lacking.pt", lambda saved: saved.pop("config"), "lacks 'config'"),
    ):
        payload = load_checkpoint(checkpoint)
        edit(payload)
        edited = str(tmp_path / name)
        save_checkpoint(payload, edited)
        lines = []
        for main, argv in (
            (evaluate_cli.main, ["--checkpoint", edited]),
            (compare_cli.main, ["--checkpoint", edited, predictions, predictions]),
        ):
            capsys.readouterr()
            assert run_cli(main, argv) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {edited} {said}") and err.count("\n") == 1, err
            lines.append(err)
        assert lines[0] == lines[1]


# The scenes' words in Chinese, several of them written in two or three characters.
CHINESE = {
    "a": "一个", "above": "上方", "and": "和", "below": "下方", "black": "黑色", "blue": "蓝色",
    "bottom": "底部", "circle": "圆形", "cross": "十字", "diamond": "菱形", "from": "从",
    "green": "绿色", "is": "是", "large": "大", "left": "左", "of": "的", "orange": "橙色",
    "purple": "紫色", "red": "红色", "right": "右", "single": "单个", "small": "小",
    "square": "正方形", "star": "星形", "the": "这", "there": "那里", "to": "到", "top": "顶部",
    "triangle": "三角形", "white": "白色", "yellow": "黄色",
}  # fmt: skip


def test_chinese_captions_train_caption_and_score_by_characters(split, tmp_path, capsys):
    """Captions written without spaces (Chinese, with the segmented tokens a Karpathy JSON of
    Chinese holds): each caption was one token, so the vocabulary held whole captions. Now the
    model learns characters, writes its captions without spaces, and a prediction scores the same
    written with or without spaces between its words."""
    annotations, records = split
    data = json.loads(Path(annotations).read_text(encoding="utf-8"))
    for image in data["images"]:
        for sentence in image["sentences"]:
            words = [CHINESE[word] for word in sentence["raw"].replace(",", "").split()]
            sentence["raw"], sentence["tokens"] = "，".join(words) + "。", words
    chinese = Path(annotations).with_name("chinese.json")
    chinese.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    characters = set("".join(CHINESE.values()))
    checkpoint = train_tiny_captioner(tmp_path / "run", chinese, "train.max_steps=30")
    words = load_checkpoint(checkpoint)["vocab"][4:]
    assert set(words) <= characters and len(words) > 20  # characters, not captions or words
    predictions = tmp_path / "model.json"
    argv = ["--checkpoint", str(checkpoint), "--no-meteor", "--predictions", str(predictions)]
    assert run_cli(evaluate_cli.main, argv) == 0
    written = [item["caption"] for item in json.loads(predictions.read_text(encoding="utf-8"))]
    assert any(len(caption) > 2 for caption in written)
    for caption in written:
        assert set(caption) <= characters, caption  # no spaces between them
    ids = image_ids(records)
    test = [next(image for image in data["images"] if r.image_path.endswith(image["filename"]))
            for r in records]  # fmt: skip
    unspaced = write(tmp_path / "a.json", ids, [image["sentences"][0]["raw"] for image in test])
    spaced = write(tmp_path / "b.json", ids, [" ".join(i["sentences"][0]["tokens"]) for i in test])
    report = run_json(
        compare_cli.main, ["--annotations", str(chinese), unspaced, spaced, "--json"], capsys
    )
    first, second = (entry["scores"] for entry in report["files"])
    assert first == second and first["BLEU-4"] == pytest.approx(100.0)


def test_evaluate_names_the_precision_it_ran_in(split, tmp_path, monkeypatch, capsys):
    """The report's precision is the one the model ran in: what it was trained in (its card's)
    where the device has it natively, else fp32."""
    checkpoint = train_tiny_captioner(tmp_path / "run", split[0])
    payload = load_checkpoint(checkpoint)
    payload["card"]["precision"] = "bf16"
    save_checkpoint(payload, checkpoint)
    argv = ["--checkpoint", str(checkpoint), "--no-meteor", "--json", "--max-images", "2"]
    for native, ran in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert run_json(evaluate_cli.main, argv, capsys)["precision"] == ran


class Terminal(io.StringIO):
    """A standard error that says it is a terminal (where tqdm draws its bars)."""

    def isatty(self) -> bool:
        return True


def test_evaluate_reports_what_it_scored_and_compare_agrees(split, tmp_path, capsys, monkeypatch):
    annotations, records = split
    checkpoint = str(train_tiny_captioner(tmp_path / "run", annotations))
    beam, greedy = str(tmp_path / "beam.json"), str(tmp_path / "greedy.json")
    common = ["--checkpoint", checkpoint, "--no-meteor", "--block-ngram-repeat", "2"]
    report = run_json(evaluate_cli.main, [*common, "--json", "--predictions", beam], capsys)
    assert (report["split"], report["images"]) == ("test", len(records))
    assert report["tokenizer"] == TOKENIZER
    assert report["decode"]["block_ngram_repeat"] == 2 and 0 <= report["repeated_word_share"] <= 1
    # every field says what ran: the checkpoint's annotations and decoding, the file written
    decode = load_checkpoint(checkpoint)["config"]["decode"]
    assert (report["annotations"], report["predictions"]) == (str(annotations), beam)
    assert (report["beam_size"], report["max_length"]) == (
        decode["beam_size"],
        decode["max_length"],
    )
    written = [item["caption"] for item in json.loads(Path(beam).read_text(encoding="utf-8"))]
    assert report["repeated_word_share"] == round(repeat_share(written), 4)
    capsys.readouterr()
    assert run_cli(evaluate_cli.main, [*common, "--beam-size", "1", "--predictions", greedy]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"test split of {annotations}: {len(records)} images, tokens: {TOKENIZER}"
    assert lines[1].startswith("decoding: beam 1, at most") and "no repeated 2-gram" in lines[1]
    assert lines[1].endswith(f", in {report['precision']}") and report["precision"] == "fp32"
    assert lines[2].startswith("scores (0-100): BLEU-1")
    hint = "  (install pycocoevalcap for METEOR and ROUGE-L)"  # ROUGE-L needs no Java
    assert (hint in lines) == ("ROUGE-L" not in report["scores"])
    assert sum(line.startswith("  e.g. ") for line in lines) == 3  # the first 3 captions
    assert lines[-1] == f"predictions: {greedy} (COCO results format)"
    compared = run_json(
        compare_cli.main, ["--checkpoint", checkpoint, beam, greedy, "--json"], capsys
    )
    for key in ("BLEU-4", "CIDEr-D"):  # the same images, references and tokens as evaluate's
        assert compared["files"][0]["scores"][key] == pytest.approx(report["scores"][key], abs=1e-4)
    assert compared["annotations"] == str(annotations)  # the checkpoint's, as evaluate's
    # no progress bar in a JSON run, even at a terminal; a text run shows one there
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_json(evaluate_cli.main, [*common, "--json", "--max-images", "2"], capsys)
    assert terminal.getvalue() == ""
    assert run_cli(evaluate_cli.main, [*common, "--max-images", "2"]) == 0
    assert "decoding" in terminal.getvalue()
    monkeypatch.undo()

    # The captions the length limit cut before their <end>: none where <end> always wins, every
    # one (each of --max-length words) where it never can
    payload = load_checkpoint(checkpoint)
    end = payload["vocab"].index("<end>")
    for bias, share in ((1e4, 0.0), (-1e4, 1.0)):
        payload["model"]["decoder.output.bias"][end] = bias
        changed = str(tmp_path / f"end_{bias:g}.pt")
        save_checkpoint(payload, changed)
        argv = ["--checkpoint", changed, "--no-meteor", "--max-length", "3", "--json"]
        ended = run_json(
            evaluate_cli.main, [*argv, "--predictions", str(tmp_path / "e.json")], capsys
        )
        assert ended["cut_at_max_length_share"] == share
        words = {
            len(item["caption"].split()) for item in json.loads((tmp_path / "e.json").read_text())
        }
        assert words == ({0} if share == 0 else {3})
        capsys.readouterr()
        assert run_cli(evaluate_cli.main, argv[:-1]) == 0
        cut_line = f"captions cut at 3 words before their end: {share:.1%}"
        assert cut_line in capsys.readouterr().out

    # A part of a split (--max-images) whose names alone would give other ids than the whole
    # split's (two cameras' folders with the same file names; the first two images' numbers are
    # unique, the split's are not): compare scores each caption against its own image's references
    names = ["cam0/0.png", "cam0/1.png", "cam1/0.png", "cam1/1.png", "cam0/2.png", "cam1/2.png"]
    cameras = []
    for name, record in zip(names, records, strict=False):
        image = tmp_path / "cameras" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(Path(record.image_path).read_bytes())
        sentences = [{"raw": caption} for caption in record.captions]
        folder, filename = name.split("/")
        cameras.append(
            {"filepath": folder, "filename": filename, "split": "test", "sentences": sentences}
        )
    moved = tmp_path / "cameras" / "dataset.json"
    moved.write_text(json.dumps({"images": cameras}), encoding="utf-8")
    part = ["--checkpoint", checkpoint, "--annotations", str(moved), "--max-images", "2"]
    scored = []
    for name, beam_size in (("part_beam.json", "3"), ("part_greedy.json", "1")):
        written = tmp_path / name
        argv = [*part, "--beam-size", beam_size, "--no-meteor", "--predictions", str(written)]
        scored.append(run_json(evaluate_cli.main, [*argv, "--json"], capsys))
        items = json.loads(written.read_text(encoding="utf-8"))
        assert [item["image_id"] for item in items] == names[:2]
    files = [report["predictions"] for report in scored]
    compared = run_json(compare_cli.main, ["--annotations", str(moved), *files, "--json"], capsys)
    assert compared["images"] == 2
    for entry, report in zip(compared["files"], scored, strict=True):
        for key in ("BLEU-4", "CIDEr-D"):
            assert entry["scores"][key] == pytest.approx(report["scores"][key], abs=1e-3)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_compare_reads_the_references_in_the_format_and_image_root_given(
    fmt, split, tmp_path, capsys
):
    """--format and --image-root reach the loader: the test split written as JSONL or CSV, its
    images named relative to another folder, scores exactly as the Karpathy file does."""
    annotations, records = split
    ids = image_ids(records)
    captions = [r.captions[0] for r in records]
    a = write(tmp_path / "a.json", ids, captions)
    b = write(tmp_path / "b.json", ids, captions[1:] + captions[:1])  # another image's caption
    refs = tmp_path / "refs" / f"captions.{fmt}"
    refs.parent.mkdir()
    rows = [
        {"image": Path(r.image_path).name, "caption": caption, "split": "test"}
        for r in records
        for caption in r.captions
    ]
    if fmt == "jsonl":
        refs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        with refs.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=["image", "caption", "split"])
            writer.writeheader()
            writer.writerows(rows)
    image_root = str(Path(records[0].image_path).parent)
    expected = run_json(
        compare_cli.main, ["--annotations", str(annotations), a, b, "--json"], capsys
    )
    given = ["--annotations", str(refs), "--format", fmt, "--image-root", image_root]
    report = run_json(compare_cli.main, [*given, a, b, "--json"], capsys)
    assert report["annotations"] == str(refs) and report["images"] == len(records)
    assert report["files"] == expected["files"] and report["differences"]
    assert report["differences"] == expected["differences"]


def test_the_text_report_says_what_the_json_report_holds(split, tmp_path, capsys):
    """The two output formats of one comparison: each line of the text form is a value of the
    JSON form (wins each way, the equal images, every shown image's block under its own file)."""
    annotations, records = split
    ids = image_ids(records)
    good = [r.captions[0] for r in records]
    # B: the same caption for the first third, another image's for the rest, a few repeated words
    mixed = [c if i < len(good) // 3 else good[i - 1] + " red red" for i, c in enumerate(good)]
    a, b = write(tmp_path / "a.json", ids, good), write(tmp_path / "b.json", ids, mixed)
    argv = ["--annotations", str(annotations), b, a, "--top", "4"]  # B's file first: A is mixed
    report = run_json(compare_cli.main, [*argv, "--json"], capsys)
    capsys.readouterr()
    assert run_cli(compare_cli.main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    images, wins = report["images"], (report["a_higher"], report["b_higher"])
    assert wins[0] < wins[1] and images - sum(wins) == len(good) // 3  # the same captions tie
    assert lines[0] == f"test split of {annotations}: {images} images, tokens: {TOKENIZER}"
    for line, label, entry in zip(lines[1:3], "AB", report["files"], strict=True):
        scores = "  ".join(f"{name} {value:.2f}" for name, value in entry["scores"].items())
        repeats = entry["repeated_word_share"]
        assert line == f"{label} {entry['path']}: {scores}  (word twice in a row: {repeats:.1%})"
    shares = [entry["repeated_word_share"] for entry in report["files"]]
    assert shares[0] > 0 and shares[1] == 0  # "red red": the mixed file's only
    assert lines[3] == (
        f"per-image CIDEr-D: A higher on {wins[0]} images, B higher on {wins[1]}, "
        f"equal on {images - sum(wins)}"
    )
    assert lines[4] == "the 4 images where they differ most (CIDEr-D, 0-100):"
    blocks = [lines[5 + 4 * k : 9 + 4 * k] for k in range(4)]
    assert len(lines) == 5 + 4 * 4
    for block, d in zip(blocks, report["differences"], strict=True):
        assert block == [
            f"  {d['image_id']} ({Path(d['image']).name})",
            f"    A {d['cider_a']:6.1f}  {d['a']}",
            f"    B {d['cider_b']:6.1f}  {d['b']}",
            f"    reference: {d['references'][0]}",
        ]


def test_evaluate_split_keeps_the_best_beams_finished_flag_and_gathers_it(
    split, tmp_path, monkeypatch
):
    """Each prediction's "finished" is its *best* beam's, also when the shares are gathered
    (a one-rank layout here), and ids are refused under a layout."""
    annotations, records = split
    captioner = load_captioner(str(train_tiny_captioner(tmp_path / "run", annotations)))
    records = records[:3]
    real = scoring.decode_features

    def decode(captioner_, features, settings, **kwargs):
        out = []
        for beams in real(captioner_, features, settings, **kwargs):
            best = dataclasses.replace(beams[0], finished=next(flags))
            out.append([best, dataclasses.replace(best, finished=not best.finished)])
        return out

    monkeypatch.setattr(scoring, "decode_features", decode)
    flags = iter([False, True, False])
    _, alone = scoring.evaluate_split(captioner, records, coco_metrics=False, batch_size=2)
    assert [item["finished"] for item in alone] == [False, True, False]
    layout = SimpleNamespace(enabled=True, all_gather_objects=lambda share: [share])
    flags = iter([False, True, False])
    _, gathered = scoring.evaluate_split(
        captioner, records, coco_metrics=False, batch_size=2, layout=layout
    )
    assert gathered == alone
    with pytest.raises(ValueError, match="ids name each record"):
        scoring.evaluate_split(
            captioner, records, coco_metrics=False, layout=layout, ids=image_ids(records)
        )


def test_prediction_files_hold_the_coco_results_keys_only(tmp_path):
    path = tmp_path / "preds.json"
    scoring.write_predictions([{"image_id": 7, "caption": "a cat", "finished": False}], path)
    assert json.loads(path.read_text(encoding="utf-8")) == [{"image_id": 7, "caption": "a cat"}]


def test_evaluate_prints_the_cut_share_with_the_decode_length_and_a_hint_only_when_cut(
    split, tmp_path, capsys, monkeypatch
):
    annotations, _ = split
    checkpoint = str(train_tiny_captioner(tmp_path / "run", annotations))
    real = evaluate_cli.evaluate_split
    cut_first = True

    def cut(*args, **kwargs):
        scores, predictions = real(*args, **kwargs)
        return scores, [  # each caption with a word twice in a row: a share of 1, not 1 in 3
            {**item, "finished": not (cut_first and i == 0), "caption": "a red red circle"}
            for i, item in enumerate(predictions)
        ]

    monkeypatch.setattr(evaluate_cli, "evaluate_split", cut)
    argv = ["--checkpoint", checkpoint, "--no-meteor", "--max-images", "3"]
    report = run_json(evaluate_cli.main, [*argv, "--json"], capsys)
    assert report["cut_at_max_length_share"] == 0.3333  # 1 of 3, 4 decimals
    assert report["repeated_word_share"] == 1.0
    length = report["max_length"]  # no --max-length: the checkpoint's decode.max_length
    assert run_cli(evaluate_cli.main, argv) == 0
    assert (
        f"captions cut at {length} words before their end: 33.3% (raise --max-length to let "
        "them end)\n" in capsys.readouterr().out
    )
    cut_first = False
    assert run_cli(evaluate_cli.main, argv) == 0
    assert f"captions cut at {length} words before their end: 0.0%\n" in capsys.readouterr().out


def test_evaluate_refuses_a_batch_of_no_images_and_a_negative_max_images(tmp_path, capsys):
    """Both are refused before the checkpoint is read (a batch of 0 ended in DataLoader's
    ValueError, a traceback)."""
    for flags, said in (
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--max-images", "-1"], "--max-images must be 0 (all) or more, got -1"),
    ):
        capsys.readouterr()
        argv = ["--checkpoint", str(tmp_path / "never_read.pt"), *flags]
        assert run_cli(evaluate_cli.main, argv) == 2
        assert capsys.readouterr().err == f"error: {said}\n"


def test_evaluate_describes_each_decoding_setting_only_when_it_is_on():
    """The "decoding:" line: the beam and the length always, each option only when on, with its
    own value (kills: an option shown when off or hidden when on, another setting's value)."""
    plain = DecodeConfig(beam_size=3, max_length=16)
    assert evaluate_cli.describe_decoding(plain) == "beam 3, at most 16 words"
    every = DecodeConfig(beam_size=4, max_length=20, length_penalty=1.25, block_ngram_repeat=3,
                         min_length=1, suppress_unk=True, diversity_groups=2,
                         diversity_strength=0.25)  # fmt: skip
    assert evaluate_cli.describe_decoding(every) == (
        "beam 4, at most 20 words, length penalty 1.25, no repeated 3-gram, at least 1 words, "
        "no <unk>, 2 diverse groups (strength 0.25)"
    )


def test_most_different_ranks_by_size_and_keeps_ties_in_split_order():
    """Largest difference first, whatever its sign; equal differences in the split's order;
    images scored alike left out, also within --top (kills: a sort reversed for its ties)."""
    comparison = compare_cli.Comparison(
        records=[], ids=[], captions=([], []), scores=({}, {}),
        per_image=([1.0, 5.0, 2.0, 7.0, 4.0, 3.0], [2.0, 4.0, 4.0, 7.0, 3.0, 6.0]),
    )  # fmt: skip
    # differences: 1, 1, 2, 0, 1, 3 (images 0, 1 and 4 tie)
    assert comparison.most_different(6) == [5, 2, 0, 1, 4]
    assert comparison.most_different(4) == [5, 2, 0, 1]
    assert comparison.most_different(0) == []


def test_a_prediction_file_not_in_utf8_or_not_a_list_is_one_line(tmp_path):
    """A file in Latin-1 is no JSON prediction file, one line (not a UnicodeDecodeError
    traceback); an empty JSON object or a number is no list, and a caption must be text (not "an
    empty list", nor a TypeError) (kills: the decoding error not caught, the emptiness checked before the type, the
    type not checked)."""
    latin = tmp_path / "latin.json"
    latin.write_bytes('[{"image_id": 1, "caption": "un caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(compare_cli.UserError, match=r"latin\.json is not a JSON prediction file "
                       r"\(.*\); pass what captioner\.evaluate --predictions writes$"):  # fmt: skip
        compare_cli.read_predictions(str(latin))
    for text in ("{}", "5", '[{"image_id": 1, "caption": null}]'):
        other = tmp_path / "other.json"
        other.write_text(text, encoding="utf-8")
        with pytest.raises(compare_cli.UserError, match=r"other\.json must be a list of"):
            compare_cli.read_predictions(str(other))


def test_files_of_different_images_name_one_whichever_file_lacks_it(split):
    """B captioning an image A does not, or A one B does not: the same line (kills: only the
    images of A missing from B counted, an IndexError where A has fewer)."""
    _, records = split
    ids = image_ids(records)
    every = {image_id: "a red circle" for image_id in ids}
    fewer = {image_id: "a red circle" for image_id in ids[1:]}
    for first, second in ((every, fewer), (fewer, every)):
        with pytest.raises(compare_cli.UserError, match=rf"^A and B caption different images "
                           rf"\(1 in one file only, e\.g\. {ids[0]}\); compare"):  # fmt: skip
            compare_cli.compare(records, first, second)


def test_a_file_written_in_another_order_is_scored_in_the_splits_order(split):
    """Each caption against its own image's references, the images in the split's order,
    whatever the file's order (kills: the file's order kept, captions taken in it)."""
    _, records = split
    ids = image_ids(records)
    captions = {
        image_id: record.captions[0] if index % 2 else "a small green star"
        for index, (image_id, record) in enumerate(zip(ids, records, strict=True))
    }
    in_order = compare_cli.compare(records, captions, captions)
    backwards = compare_cli.compare(records, dict(reversed(captions.items())), captions)
    assert backwards.ids == in_order.ids == ids
    assert backwards.captions == in_order.captions == ([captions[i] for i in ids],) * 2
    assert backwards.per_image == in_order.per_image and backwards.scores == in_order.scores


def test_references_from_both_flags_are_refused(split, tmp_path, capsys):
    """--annotations and --checkpoint together: which references would be meant? And a file of
    an image the split lacks is named by its path (kills: only neither refused, the
    checkpoint's data taken with the other annotations, the files' names not passed on)."""
    annotations, records = split
    a = write(tmp_path / "a.json", image_ids(records), [r.captions[0] for r in records])
    argv = ["--annotations", str(annotations), "--checkpoint", str(tmp_path / "run.pt"), a, a]
    capsys.readouterr()
    assert run_cli(compare_cli.main, argv) == 2
    assert capsys.readouterr().err == (
        "error: pass the references with exactly one of --annotations and --checkpoint\n"
    )
    # a file of an image the split lacks is named by its path (not "B")
    foreign = write(tmp_path / "foreign.json", [999999], ["a red circle"])
    assert run_cli(compare_cli.main, ["--annotations", str(annotations), a, foreign]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {foreign} captions 1 images that are not in the test split of {annotations} "
    )


def test_top_0_lists_no_image_and_the_default_ten(split, tmp_path, capsys):
    """--top 0 is allowed (the scores alone, no heading over no images); without --top, the 10
    images that differ most."""
    annotations, records = split
    ids = image_ids(records)
    a = write(tmp_path / "a.json", ids, [r.captions[0] for r in records])
    b = write(tmp_path / "b.json", ids, ["a small green star"] * len(records))
    argv = ["--annotations", str(annotations), a, b, "--json"]
    report = run_json(compare_cli.main, [*argv, "--top", "0"], capsys)
    assert report["differences"] == [] and report["a_higher"] > 10
    assert len(run_json(compare_cli.main, argv, capsys)["differences"]) == 10
    assert run_cli(compare_cli.main, [*argv[:-1], "--top", "0"]) == 0  # no heading for none
    assert "where they differ most" not in capsys.readouterr().out
