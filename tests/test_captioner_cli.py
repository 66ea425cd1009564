"""The captioner's command lines, end to end: scenes -> train -> evaluate -> caption, and bad input.

The happy path runs real `python -m ...` processes. Bad input must give one line on stderr that
starts with ``error:``, a non-zero exit and no traceback; one case runs as a real process, the
others call the same `main` through `run_cli` in-process (starting Python + torch costs seconds
on the test machine).
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from captioner import caption, check_data, evaluate, scoring
from captioner import train as train_cli
from captioner.data import Vocabulary, load_image
from captioner.decode import Caption
from captioner.inference import CaptionResult, caption_images, load_captioner, to_result
from recurrent.checkpoint import load_checkpoint, save_checkpoint
from recurrent.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "captioner" / "tiny.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def run_main(main: Callable, argv: Sequence[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_cli(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m captioner.scenes` then `python -m captioner.train` (tiny, 3 steps)."""
    root = tmp_path_factory.mktemp("cli")
    run(
        *"-m captioner.scenes --num-images 16 --seed 3 --size 48 --out".split(),
        str(root / "scenes"),
    )
    annotations = root / "scenes" / "dataset_scenes.json"
    out_dir = str(root / "run")
    args = ["--config", TINY, "--out-dir", out_dir, "--quiet", "--set", "train.max_steps=3"]
    result = run("-m", "captioner.train", *args, f"data.annotations={annotations}")
    assert "done: 3 steps (stopped by max_steps)" in result.stdout
    assert "val BLEU" in result.stdout  # the validation line
    return {"root": root, "annotations": annotations, "checkpoint": root / "run" / "best.pt"}


def test_training_for_the_best_cider_reports_cider(trained: dict[str, Path], tmp_path, capsys):
    """With train.best_metric=cider the validation lines show CIDEr-D and the summary names the
    best CIDEr-D, the score best.pt was kept for (it used to print BLEU-4 alone)."""
    argv = ["--config", TINY, "--out-dir", str(tmp_path / "run"), "--set", "train.max_steps=2",
            "train.eval_every=1", "train.best_metric=cider", f"data.annotations={trained['annotations']}"]  # fmt: skip
    code, out, err = run_main(train_cli.main, argv, capsys)
    assert code == 0, err
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["best_scores"]
    assert re.search(r"val BLEU-1\.\.4 [\d./]+, CIDEr-D \d+\.\d, e\.g\.", out)
    assert f"best val CIDEr-D {best['CIDEr-D']:.2f} at step" in out


def test_evaluate_json_and_predictions(trained: dict[str, Path], capsys):
    predictions = trained["root"] / "preds.json"
    flags = ["--json", "--no-meteor", "--predictions", str(predictions)]
    result = run("-m", "captioner.evaluate", "--checkpoint", str(trained["checkpoint"]), *flags)
    report = json.loads(result.stdout)
    assert report["split"] == "test" and report["images"] == 2
    assert "Treebank" in report["tokenization"] and "lowercase" in report["tokenization"]
    scores = report["scores"]
    assert {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"} <= set(scores)
    assert all(0.0 <= value <= 100.0 for key, value in scores.items() if key != "CIDEr-D")
    assert "METEOR" not in scores
    results = json.loads(predictions.read_text())
    assert isinstance(results, list) and len(results) == 2
    assert all(set(item) == {"image_id", "caption"} for item in results)
    assert all(isinstance(item["caption"], str) for item in results)
    # The scenes' files are 000005.png ...: COCO-style integer ids from the file names.
    test_ids = {
        int(image["filename"].split(".")[0])
        for image in json.loads(trained["annotations"].read_text())["images"]
        if image["split"] == "test"
    }
    assert {item["image_id"] for item in results} == test_ids
    # --split val scores the val images (and says so)
    code, out, _ = run_main(
        evaluate.main,
        ["--checkpoint", str(trained["checkpoint"]), "--split", "val", *flags],
        capsys,
    )
    val_ids = {
        int(image["filename"].split(".")[0])
        for image in json.loads(trained["annotations"].read_text())["images"]
        if image["split"] == "val"
    }
    assert code == 0 and json.loads(out)["split"] == "val"
    assert {item["image_id"] for item in json.loads(predictions.read_text())} == val_ids != test_ids


def test_a_predictions_path_that_cannot_be_written_is_refused_before_decoding(
    trained: dict[str, Path], capsys, monkeypatch
):
    """`--predictions runs/hard/` (the run folder, by tab completion) was refused after the whole
    split was decoded and scored, and the scores were never printed: minutes of a COCO test split
    lost. It is refused before the checkpoint is read, as is a path where no file can be made."""
    monkeypatch.setattr(evaluate, "evaluate_split", lambda *a, **k: pytest.fail("decoded"))
    folder = trained["root"] / "run"
    argv = ["--checkpoint", str(trained["checkpoint"]), "--predictions", f"{folder}/"]
    code, out, err = run_main(evaluate.main, argv, capsys)
    assert_one_line_error(code, err, f"--predictions {folder} is a folder; pass a file name")
    assert out == ""
    # where no file can be made (a file named as a folder here; a read-only file system alike)
    argv[-1] = str(trained["annotations"] / "preds.json")
    code, out, err = run_main(evaluate.main, argv, capsys)
    said = f"cannot write predictions to {argv[-1]} ({trained['annotations']} is a file, not a"
    assert_one_line_error(code, err, said)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(scoring.tempfile, "TemporaryFile", read_only)
    argv[-1] = str(folder / "preds.json")
    code, out, err = run_main(evaluate.main, argv, capsys)
    said = f"cannot write predictions to {argv[-1]} (Read-only file system); pick another path"
    assert_one_line_error(code, err, said)
    assert out == ""
    assert out == ""


def test_a_predictions_path_in_a_folder_not_made_yet_is_accepted(tmp_path: Path):
    """The check before decoding makes the folders of a new --predictions path, as the writing
    would (without them its trial file could not be made: the path was refused)."""
    path = tmp_path / "runs" / "eval" / "preds.json"
    scoring.check_predictions_path(path)
    assert path.parent.is_dir() and list(path.parent.iterdir()) == []
    scoring.write_predictions([{"image_id": 1, "caption": "a red circle"}], path)
    assert json.loads(path.read_text()) == [{"image_id": 1, "caption": "a red circle"}]


def test_caption_two_images(trained: dict[str, Path], capsys):
    images = sorted((trained["root"] / "scenes" / "images").glob("*.png"))[:2]
    result = run(
        "-m", "captioner.caption", "--checkpoint", str(trained["checkpoint"]), *map(str, images)
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, image in zip(lines, images, strict=True):
        path, text = line.split("\t")
        assert path == str(image) and "<" not in text  # no <start>/<pad> tokens in captions

    code, out, _ = run_main(
        caption.main,
        ["--checkpoint", str(trained["checkpoint"]), str(images[0]), "--json", "--n-best", "2"],
        capsys,
    )
    assert code == 0
    payload = json.loads(out)
    [item] = payload["results"]
    assert item["image"] == str(images[0]) and len(item["beams"]) == 2
    assert item["beams"][0]["caption"] == item["caption"]
    assert item["beams"][0]["logprob"] >= item["beams"][1]["logprob"]  # best first
    # each beam says whether it ended with <end>: every one, where <end> always wins; none, each
    # of --max-length words, where it never can
    weights = load_checkpoint(trained["checkpoint"])
    end = weights["vocab"].index("<end>")
    for bias, ended in ((1e4, True), (-1e4, False)):
        weights["model"]["decoder.output.bias"][end] = bias
        changed = trained["root"] / f"end_{bias:g}.pt"
        save_checkpoint(weights, changed)
        argv = ["--checkpoint", str(changed), str(images[0]), "--json", "--n-best", "2"]
        code, out, _ = run_main(caption.main, [*argv, "--max-length", "3"], capsys)
        [item] = json.loads(out)["results"]
        assert code == 0 and [beam["finished"] for beam in item["beams"]] == [ended, ended]
        if not ended:
            assert [len(beam["caption"].split()) for beam in item["beams"]] == [3, 3]
    # the beam defaults to the checkpoint's decode.beam_size (2 in tiny.yaml), as evaluate's does:
    # a fixed 3 broke checkpoints whose diversity groups do not divide 3
    assert payload["beam_size"] == 2
    code, out, err = run_main(
        caption.main,
        ["--checkpoint", str(trained["checkpoint"]), str(images[0]), "--json",
         "--diversity-groups", "2", "--diversity-strength", "0.5"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert len(json.loads(out)["results"]) == 1
    # --beam-size is the one the report names; the text form of --n-best: a line per beam
    code, out, err = run_main(
        caption.main,
        ["--checkpoint", str(trained["checkpoint"]), str(images[0]), "--beam-size", "3",
         "--n-best", "3"],
        capsys,
    )  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(rows) == 3 and all(row[0] == str(images[0]) for row in rows), err
    logprobs = [float(row[2]) for row in rows]
    assert logprobs == sorted(logprobs, reverse=True)
    argv = ["--checkpoint", str(trained["checkpoint"]), str(images[0]), "--beam-size", "3"]
    code, out, _ = run_main(caption.main, [*argv, "--json"], capsys)
    assert json.loads(out)["beam_size"] == 3


def test_a_top_down_captioner_trains_resumes_and_captions(
    trained: dict[str, Path], tmp_path: Path, capsys
):
    """model.top_down through the command lines: training, a resume that keeps it (another value
    is refused, naming the key), the model card, and captions with one attention map per word."""
    out_dir = tmp_path / "run"
    argv = ["--config", TINY, "--out-dir", str(out_dir), "--quiet", "--set", "model.top_down=true",
            "train.max_steps=2", f"data.annotations={trained['annotations']}"]  # fmt: skip
    code, out, err = run_main(train_cli.main, argv, capsys)
    assert code == 0 and "done: 2 steps" in out and " pairs/s, " in out, err
    assert re.search(r"pairs/s, \d+\.\d images/s, ", out)  # through its trainable encoder
    # a frozen encoder's features come from the cache: no image runs through it (0.0 was said)
    frozen = ["--out-dir", str(tmp_path / "frozen"), "--set", "model.finetune=frozen"]
    code, frozen_out, err = run_main(train_cli.main, [*argv, *frozen], capsys)
    assert code == 0 and " pairs/s, " in frozen_out and "images/s" not in frozen_out, err
    code, _, err = run_main(
        train_cli.main, [*argv, "--resume", "--set", "model.top_down=false"], capsys
    )
    assert_one_line_error(code, err, "model.top_down")
    code, out, err = run_main(
        train_cli.main, [*argv, "--resume", "--set", "train.max_steps=3"], capsys
    )
    assert code == 0 and "done: 3 steps" in out, err
    code, out, err = run_main(  # nothing to do: no rates (it said 0.0 pairs/s, 0.0 images/s)
        train_cli.main, [*argv, "--resume", "--set", "train.max_steps=3"], capsys
    )
    assert code == 0 and "done: 3 steps" in out and "pairs/s" not in out, err
    assert "images/s" not in out
    payload = torch.load(out_dir / "last.pt", weights_only=True)
    assert "top-down attention" in payload["card"]["architecture"]
    assert any(name.startswith("decoder.attention_core.") for name in payload["model"])
    image = sorted((trained["root"] / "scenes" / "images").glob("*.png"))[0]
    captioner = load_captioner(str(out_dir / "best.pt"))
    [result] = caption_images(captioner, [load_image(image)], beam_size=2, min_length=3)
    assert result.attention is not None and len(result.words) >= 3
    assert result.attention.shape[0] == len(result.words)
    torch.testing.assert_close(
        result.attention.sum(dim=(1, 2)), torch.ones(len(result.words)), atol=1e-5, rtol=0
    )
    code, out, err = run_main(
        caption.main,
        ["--checkpoint", str(out_dir / "best.pt"), str(image), "--min-length", "3"],
        capsys,
    )
    assert code == 0 and out.split("\t")[1].strip() == result.caption, err


def test_corrupt_image_as_a_real_process(trained: dict[str, Path]):
    bad = trained["root"] / "not_an_image.png"
    bad.write_bytes(b"this is not a PNG file")
    result = run(
        "-m", "captioner.caption", "--checkpoint", str(trained["checkpoint"]), str(bad), check=False
    )
    assert_one_line_error(result.returncode, result.stderr, str(bad))


def _karpathy(path: Path, images: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    return path


def test_bad_input_one_line_errors(trained: dict[str, Path], tmp_path: Path, capsys):
    scenes = trained["root"] / "scenes"
    entries = json.loads(trained["annotations"].read_text())["images"]
    out_dir = str(tmp_path / "run")

    def train_with(annotations: Path, *overrides: str) -> tuple[int, str, str]:
        argv = ["--config", TINY, "--out-dir", out_dir, "--quiet", "--set"]
        return run_main(
            train_cli.main, [*argv, f"data.annotations={annotations}", *overrides], capsys
        )

    # An image listed in the annotations but missing on disk.
    missing = dict(entries[0], filename="gone.png")
    annotations = _karpathy(scenes / "missing.json", [*entries, missing])
    code, _, err = train_with(annotations)
    assert_one_line_error(code, err, "gone.png", "not found")

    # Malformed annotations JSON.
    broken = scenes / "broken.json"
    broken.write_text('{"images": [', encoding="utf-8")
    code, _, err = train_with(broken)
    assert_one_line_error(code, err, "broken.json", "malformed JSON")

    # No val images: training has nothing to validate on.
    train_only = _karpathy(
        scenes / "train_only.json", [dict(entry, split="train") for entry in entries]
    )
    code, _, err = train_with(train_only)
    assert_one_line_error(code, err, "'val' split", "train_only.json")
    # ... and evaluating a split the annotations lack is the same clear error.
    code, _, err = run_main(
        evaluate.main,
        ["--checkpoint", str(trained["checkpoint"]), "--annotations", str(train_only)],
        capsys,
    )
    assert_one_line_error(code, err, "'test' split")

    # A char_lm checkpoint given to the captioner's commands.
    foreign = tmp_path / "char_lm.pt"
    save_checkpoint({"task": "char_lm", "config": {}, "vocab": ["a", "b"], "model": {}}, foreign)
    image = str(next((scenes / "images").glob("*.png")))
    code, _, err = run_main(caption.main, ["--checkpoint", str(foreign), image], capsys)
    assert_one_line_error(code, err, "char_lm checkpoint", "captioner")
    code, _, err = run_main(evaluate.main, ["--checkpoint", str(foreign)], capsys)
    assert_one_line_error(code, err, "char_lm checkpoint")

    # A missing checkpoint, and a missing config file.
    code, _, err = run_main(
        caption.main, ["--checkpoint", str(tmp_path / "nope.pt"), image], capsys
    )
    assert_one_line_error(code, err, "checkpoint not found", "nope.pt")
    code, _, err = run_main(train_cli.main, ["--config", str(tmp_path / "nope.yaml")], capsys)
    assert_one_line_error(code, err, "nope.yaml")

    # An unknown config key, a bad type in an override, and a bad decoding setting.
    code, _, err = run_main(train_cli.main, ["--config", TINY, "--set", "model.colour=red"], capsys)
    assert_one_line_error(code, err, "unknown config key 'model.colour'")
    code, _, err = run_main(
        train_cli.main, ["--config", TINY, "--set", "train.batch_size=many"], capsys
    )
    assert_one_line_error(code, err, "train.batch_size")
    code, _, err = run_main(
        caption.main,
        ["--checkpoint", str(trained["checkpoint"]), image, "--beam-size", "0"],
        capsys,
    )
    assert_one_line_error(code, err, "beam size")
    # The config's bounds hold for the decoding flags too: inf, NaN and huge values used to crash
    # (IndexError), decode garbage or run for minutes.
    for flags, message in [
        (
            ["--length-penalty", "inf"],
            "length penalty (--length-penalty) must be in [0, 10], got inf",
        ),
        (["--length-penalty", "nan"], "must be in [0, 10], got nan"),
        (["--diversity-strength", "inf"], "diversity strength (--diversity-strength) must be in"),
        (["--beam-size", "101"], "beam size (--beam-size) must be in [1, 100], got 101"),
        (["--min-length", "5000", "--max-length", "5001"], "max length (--max-length) must be in"),
        # within bounds, but no caption of 200 words repeats no word of a tiny vocabulary
        (
            ["--min-length", "200", "--max-length", "210", "--block-ngram-repeat", "1"],
            "no caption meets these decoding settings (min_length 200 with block_ngram_repeat 1",
        ),
    ]:
        argv = ["--checkpoint", str(trained["checkpoint"]), image, *flags]
        assert_one_line_error(*run_main(caption.main, argv, capsys)[::2], message)
    # evaluate scored such captions as empty (BLEU 0, exit 0), and training validated on them
    impossible = ["--min-length", "200", "--max-length", "210", "--block-ngram-repeat", "1"]
    argv = ["--checkpoint", str(trained["checkpoint"]), "--no-meteor", *impossible]
    assert_one_line_error(*run_main(evaluate.main, argv, capsys)[::2], "no caption meets these")
    code, _, err = train_with(
        trained["annotations"], "decode.block_ngram_repeat=1", "decode.min_length=200",
        "decode.max_length=210",
    )  # fmt: skip
    assert_one_line_error(code, err, "no caption meets these decoding settings (min_length 200")
    # one image per step through a trainable encoder with a 1 x 1 last feature map: BatchNorm
    # cannot normalise it (torch raised at the first step)
    code, _, err = train_with(
        trained["annotations"], "train.batch_size=1", "model.encoder_stages=4"
    )
    assert_one_line_error(code, err, "its BatchNorm cannot normalise one value; raise")

    # Captions without one word the vocabulary keeps: every caption would be empty or <unk>.
    no_words = _karpathy(
        scenes / "no_words.json",
        [dict(e, sentences=[{"raw": "!!! ..."}] * len(e["sentences"])) for e in entries],
    )
    code, _, err = train_with(no_words)
    assert_one_line_error(code, err, "no training caption has a word seen at least 1 time(s)")
    with pytest.raises(SystemExit) as stop:  # check_data's verdict is its exit status
        check_data.main(["--config", TINY, "--set", f"data.annotations={no_words}", "--quiet"])
    code, out = stop.value.code, capsys.readouterr().out
    assert code == 1 and "training would stop: " in out and "no training caption has a word" in out
    code, _, err = run_main(
        evaluate.main,
        ["--checkpoint", str(trained["checkpoint"]), "--annotations", str(no_words)],
        capsys,
    )
    assert_one_line_error(code, err, "no reference caption of the test split has a word")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_more_words_than_a_captioner_takes_stop_before_the_model_is_built(
    trained: dict[str, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    """5 MB of captions of random words made the tiny config's decoder 33 times its size (475,000
    words: 24 million parameters and checkpoints of 296 MB). More words than `MAX_WORDS` stop
    training in one line, naming data.min_word_count, before any model is built, and check_data
    says training would stop; raising the count trains on the words seen that often."""
    scenes = trained["root"] / "scenes"
    entries = json.loads(trained["annotations"].read_text())["images"]
    train = [entry for entry in entries if entry["split"] == "train"]
    per = 200_000 // len(train) + 1  # (MAX_WORDS) distinct words in each training caption
    words = iter(f"w{i:06x}" for i in range(per * len(train)))
    many = [
        dict(entry, sentences=[{"raw": " ".join(next(words) for _ in range(per))}])
        if entry in train
        else entry
        for entry in entries
    ]
    annotations = _karpathy(scenes / "many_words.json", many)
    built = []
    monkeypatch.setattr(train_cli, "CaptionModel", lambda *args, **kwargs: built.append(args))
    argv = ["--config", TINY, "--out-dir", str(tmp_path / "run"), "--quiet", "--set"]
    argv.append(f"data.annotations={annotations}")
    code, _, err = run_main(train_cli.main, argv, capsys)
    assert_one_line_error(code, err, "words seen at least 1 time(s)", "raise data.min_word_count")
    assert built == [] and not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(SystemExit) as stop:
        check_data.main(["--config", TINY, "--set", f"data.annotations={annotations}", "--quiet"])
    assert stop.value.code == 1 and "more than a captioner takes" in capsys.readouterr().out


def test_a_chinese_caption_is_written_as_its_best_beam_is():
    """`to_result`'s caption is its words written by join_words, none between two Chinese
    characters, as each beam's text is: beams[0][0] == caption (kills: the caption's words
    joined by spaces)."""
    vocab = Vocabulary.build(["a dog 一只狗"])
    beams = [Caption(vocab.encode("a dog 一只狗")[1:-1], -1.0, -1.0, finished=True)]
    result = to_result(vocab, beams, (1, 1))
    assert result.caption == result.beams[0][0] == "a dog 一只狗"
    assert result.words == ["a", "dog", "一", "只", "狗"]


def test_each_beam_keeps_its_own_finished_flag(trained: dict[str, Path]):
    """A best beam cut at the length limit over a runner-up that ended: the flags stay with
    their beams, in `to_result` and in caption --json."""
    vocab = load_captioner(str(trained["checkpoint"])).vocab
    tokens = [len(vocab) - 1]
    beams = [
        Caption(tokens, -1.0, -1.0, finished=False),
        Caption(tokens, -2.0, -2.0, finished=True),
    ]
    result = to_result(vocab, beams, (1, 1))
    assert result.finished == [False, True]
    mixed = CaptionResult("a b", [("a b", -1.0), ("a", -2.0)], None, ["a", "b"], [False, True])
    item = caption._result_json("x.png", mixed)
    assert [beam["finished"] for beam in item["beams"]] == [False, True]
