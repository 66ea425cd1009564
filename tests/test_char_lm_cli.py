"""The char_lm command lines: a real train -> sample -> evaluate run, and one-line user errors."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import train_tiny_char_lm

from char_lm import evaluate, sample
from char_lm import train as train_cli
from char_lm.config import describe_data, describe_model
from char_lm.data import encode, load_corpus
from char_lm.generate import generate, load_char_lm, trained_precision
from char_lm.scoring import evaluate_text
from recurrent import precision as precision_module
from recurrent.checkpoint import load_checkpoint, save_checkpoint
from recurrent.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "char_lm" / "tiny.yaml")
TEXT = "the quick brown fox jumps over the lazy dog.\n" * 12


def run(module: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models; the machine is small and shared
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Two steps of tiny.yaml on a text the test writes, through the real CLI."""
    folder = tmp_path_factory.mktemp("cli")
    text_file = folder / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out_dir = folder / "run"
    result = run(
        "char_lm.train",
        "--config", TINY,
        "--set", f"data.path={text_file}",
        "--set", "train.max_steps=2",
        "--set", "train.eval_every=1",
        "--out-dir", str(out_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "step 1: train" in result.stdout and "step 2: train" in result.stdout
    assert "bpc" in result.stdout and "nats/char" in result.stdout
    assert "done: 2 steps" in result.stdout
    assert (out_dir / "last.pt").is_file() and (out_dir / "best.pt").is_file()
    return text_file, out_dir / "last.pt"


def test_train_writes_checkpoints(trained):
    _, checkpoint = trained
    model, vocab, cfg = load_char_lm(checkpoint)
    assert vocab == sorted(set(TEXT))
    assert cfg.train.max_steps == 2 and cfg.data.block_size == 16
    saved = load_checkpoint(checkpoint)
    assert saved["card"]["architecture"] == describe_model(saved["config"]["model"])
    assert saved["card"]["architecture"] == "1-layer LSTM, hidden 16, embedding 8"
    train_chars = len(load_corpus(cfg.data).train_ids)  # the validation part is not counted
    assert 0 < train_chars < len(TEXT)
    data = {**describe_data(saved["config"]["data"]), "size": train_chars}
    assert saved["card"]["data"] == data and data["name"] == "text"
    assert data["unit"] == "training characters"


def test_a_resume_with_nothing_to_do_gives_no_rate(trained, tmp_path, capsys):
    """A resume of a run already at its max_steps trains nothing: its done line gives no
    characters per second (it said 0 chars/s)."""
    text_file, checkpoint = trained
    out_dir = tmp_path / "run"
    shutil.copytree(checkpoint.parent, out_dir)
    argv = ["--config", TINY, "--set", f"data.path={text_file}", "--set", "train.max_steps=2",
            "--out-dir", str(out_dir), "--resume"]  # fmt: skip
    assert run_cli(train_cli.main, argv) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "done: 2 steps (stopped by max_steps), best val" in out
    assert "chars/s" not in out


def test_sample_streams_prompt_and_seeded_text(trained):
    _, checkpoint = trained
    result = run(
        "char_lm.sample",
        "--checkpoint", str(checkpoint),
        "--prompt", "the ",
        "--length", "40",
        "--temperature", "0.9",
        "--top-k", "10",
        "--seed", "7",
        "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, vocab, _ = load_char_lm(checkpoint)
    expected = "".join(
        generate(model, vocab, "the ", 40, temperature=0.9, top_k=10,
                 generator=torch.Generator().manual_seed(7))
    )  # fmt: skip
    assert result.stdout == "the " + expected + "\n"


def test_several_samples_of_a_prompt_file_are_the_library_texts_of_consecutive_seeds(
    trained, tmp_path, capsys
):
    """--num-samples 3 --seed 5: samples of seeds 5, 6 and 7, each followed by a line of dashes;
    --prompt-file: the file's whole text (two lines here) is the prompt."""
    _, checkpoint = trained
    prompt = "the lazy dog.\nthe "
    (tmp_path / "prompt.txt").write_text(prompt, encoding="utf-8")
    argv = ["--checkpoint", str(checkpoint), "--prompt-file", str(tmp_path / "prompt.txt"),
            "--length", "30", "--temperature", "1.2", "--top-p", "0.9",
            "--device", "cpu"]  # fmt: skip
    assert run_cli(sample.main, [*argv, "--num-samples", "3", "--seed", "5"]) == 0
    model, vocab, _ = load_char_lm(checkpoint)
    texts = [
        prompt + "".join(generate(model, vocab, prompt, 30, temperature=1.2, top_p=0.9,
                                  generator=torch.Generator().manual_seed(seed)))
        for seed in (5, 6, 7)
    ]  # fmt: skip
    assert len(set(texts)) == 3
    assert capsys.readouterr().out == "".join(f"{text}\n{'-' * 15}\n" for text in texts)
    assert run_cli(sample.main, [*argv, "--seed", "6"]) == 0  # the second, alone
    assert capsys.readouterr().out == texts[1] + "\n"
    assert run_cli(sample.main, [*argv, "--num-samples", "2"]) == 0  # a drawn seed covers both
    assert "to repeat these samples" in capsys.readouterr().err


def test_a_prompt_piped_in_is_a_prompt_file_of_the_same_text(trained, monkeypatch, capsys):
    """--prompt-file -: the standard input's whole text is the prompt (a real pipe gives the
    text the library gives; a terminal is told how to end it); standard input that is empty,
    closed, not UTF-8 or unreadable is one line naming it."""
    _, checkpoint = trained
    prompt = "the lazy dog.\nthe "
    argv = ["--checkpoint", str(checkpoint), "--prompt-file", "-", "--length", "30",
            "--seed", "3", "--device", "cpu"]  # fmt: skip
    result = run("char_lm.sample", *argv, stdin=prompt)
    assert result.returncode == 0, result.stderr
    model, vocab, _ = load_char_lm(checkpoint)
    generated = generate(model, vocab, prompt, 30, temperature=0.8,
                         generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert result.stdout == prompt + "".join(generated) + "\n"

    class Terminal(io.BytesIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(Terminal(prompt.encode())))
    assert run_cli(sample.main, argv) == 0  # typed at a terminal: told how to end it
    out, err = capsys.readouterr()
    assert out == result.stdout and "reading the prompt from the terminal; end with Ctrl-D" in err

    class Unreadable(io.BytesIO):
        def read(self, *args):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    source = "the standard input (--prompt-file -)"
    for given, said in (
        (io.BytesIO(b""), f"{source} is empty; pipe the prompt into the command"),
        (None, f"{source} is closed; pipe the prompt into the command"),
        (io.BytesIO(b"th\xe9 "), f"{source} is not UTF-8 text (bad byte at offset 2); convert"),
        (io.BytesIO(b"\xff\xfet\x00"), f"{source} is not UTF-8 text (bad byte at offset 0): it is "
         "UTF-16 text: re-save it as UTF-8"),
        (Unreadable(), f"cannot read {source} (Input/output error)"),
    ):  # fmt: skip
        monkeypatch.setattr(sys, "stdin", given and io.TextIOWrapper(given))
        assert run_cli(sample.main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}") and err.count("\n") == 1, err


def test_every_sample_of_several_is_one_seed_repeats_alone(trained, capsys):
    """Sample i is drawn with seed + i and repeated alone with --seed seed + i: a seed whose later
    samples' seeds --seed refuses (2**63 and up) is refused with --num-samples too."""
    _, checkpoint = trained
    argv = ["--checkpoint", str(checkpoint), "--prompt", "the ", "--length", "20",
            "--temperature", "1.2", "--device", "cpu"]  # fmt: skip
    assert run_cli(sample.main, [*argv, "--seed", str(2**63 - 1), "--num-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert "--seed must be an integer from 0 to 2**63 - 2 with --num-samples 2" in err
    assert run_cli(sample.main, [*argv, "--seed", str(2**63 - 2), "--num-samples", "2"]) == 0
    second = capsys.readouterr().out.split(f"\n{'-' * 15}\n")[1]
    assert run_cli(sample.main, [*argv, "--seed", str(2**63 - 1)]) == 0  # the largest, alone
    assert capsys.readouterr().out == second + "\n"


def test_evaluate_names_the_precision_it_ran_in(trained, tmp_path, monkeypatch, capsys):
    """What the model was trained in (its card's) where the device has it natively, else fp32."""
    text_file, checkpoint = trained
    payload = load_checkpoint(checkpoint)
    payload["card"]["precision"] = "bf16"
    save_checkpoint(payload, tmp_path / "bf16.pt")
    argv = ["--checkpoint", str(tmp_path / "bf16.pt"), "--text", str(text_file)]
    for native, ran in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda native=native: native)
        capsys.readouterr()
        assert run_cli(evaluate.main, [*argv, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["precision"] == ran
        assert run_cli(evaluate.main, argv) == 0
        assert capsys.readouterr().out.rstrip().endswith(f"bits/char (in {ran})")


def test_evaluate_json_matches_the_library(trained, capsys):
    text_file, checkpoint = trained
    result = run("char_lm.evaluate", "--checkpoint", str(checkpoint), "--text", str(text_file),
                 "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    model, vocab, _ = load_char_lm(checkpoint)
    loss, count = evaluate_text(model, encode(TEXT, vocab), block_size=256)
    assert report["characters"] == count == len(TEXT) - 1
    assert report["loss_nats"] == pytest.approx(loss, abs=1e-6)
    assert report["bits_per_char"] == pytest.approx(loss / 0.6931471805599453, abs=1e-6)
    assert report["precision"] == "fp32"  # the tiny config's
    # --streams 5: five streams, each from a zero state (a little worse than one)
    argv = ["--checkpoint", str(checkpoint), "--text", str(text_file), "--json", "--streams", "5"]
    assert run_cli(evaluate.main, argv) == 0
    streamed = json.loads(capsys.readouterr().out)["loss_nats"]
    expected, _ = evaluate_text(model, encode(TEXT, vocab), block_size=256, streams=5)
    assert streamed == pytest.approx(expected, abs=1e-6) and expected != pytest.approx(loss)


def test_evaluate_reports_its_numbers_and_refuses_what_it_cannot_score(trained, tmp_path, capsys):
    """The text line and the JSON object against the library's loss, worked out here; --streams
    or --block-size below 1, an unknown device and a text of one character each one line that
    says so (kills: a bound off by one, the count or the nats line from another number, the
    JSON's names, --device not passed on, the advice changed)."""
    text_file, checkpoint = trained
    model, vocab, _ = load_char_lm(checkpoint)
    loss, count = evaluate_text(model, encode(TEXT, vocab), block_size=256)
    argv = ["--checkpoint", str(checkpoint), "--text", str(text_file)]
    capsys.readouterr()
    assert run_cli(evaluate.main, argv) == 0
    assert capsys.readouterr().out == (
        f"{text_file}: {len(TEXT) - 1} characters predicted, loss {loss:.4f} nats/char, "
        f"{loss / math.log(2):.4f} bits/char (in fp32)\n"
    )
    assert run_cli(evaluate.main, [*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "checkpoint": str(checkpoint), "text": str(text_file), "characters": count,
        "loss_nats": pytest.approx(loss, abs=1e-6),
        "bits_per_char": pytest.approx(loss / math.log(2), abs=1e-6), "precision": "fp32",
    }  # fmt: skip
    (tmp_path / "one.txt").write_text("t", encoding="utf-8")
    (tmp_path / "unseen.txt").write_text("the Zebra", encoding="utf-8")
    for extra, said in (
        (["--streams", "0"], "--streams and --block-size must be at least 1"),
        (["--block-size", "0"], "--streams and --block-size must be at least 1"),
        (["--device", "meta"], "unknown device 'meta'; use auto, cpu or cuda"),
        (["--text", str(tmp_path / "one.txt")],
         f"{tmp_path / 'one.txt'} has 1 character(s); it needs at least 2 to predict one"),
        (["--text", str(tmp_path / "unseen.txt")],
         f"the text {tmp_path / 'unseen.txt'} has 1 character(s) the model's vocabulary lacks: "
         "'Z' (U+005A)"),
    ):  # fmt: skip
        assert run_cli(evaluate.main, [*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}") and err.count("\n") == 1, err


def test_evaluate_scores_in_the_precision_it_names(trained, tmp_path, monkeypatch, capsys):
    """A bf16-trained model on a CPU with native bf16 is scored under bf16 autocast, as the
    library scores it there, not in fp32 under bf16's name (kills: the autocast dropped)."""
    text_file, checkpoint = trained
    payload = load_checkpoint(checkpoint)
    payload["card"]["precision"] = "bf16"
    save_checkpoint(payload, tmp_path / "bf16.pt")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    model, vocab, config = load_char_lm(tmp_path / "bf16.pt")
    ids = encode(TEXT, vocab)
    fp32, _ = evaluate_text(model, ids, 256)
    with trained_precision(model, config).autocast():
        bf16, _ = evaluate_text(model, ids, 256)
    assert abs(bf16 - fp32) > 1e-5  # the two precisions score apart
    argv = ["--checkpoint", str(tmp_path / "bf16.pt"), "--text", str(text_file), "--json"]
    capsys.readouterr()
    assert run_cli(evaluate.main, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "bf16" and report["loss_nats"] == pytest.approx(bf16, abs=1e-7)


def test_user_error_through_a_real_process(tmp_path):
    result = run("char_lm.sample", "--checkpoint", str(tmp_path / "missing.pt"))
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: checkpoint not found:")
    assert "Traceback" not in result.stderr


# --- bad input: one line on stderr, `error:`, non-zero exit, no traceback ------------------------


def bad_inputs(
    tmp_path: Path, trained: tuple[Path, Path]
) -> dict[str, tuple[object, list[str], str]]:
    text_file, checkpoint = trained
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("na\xefve caf\xe9 ".encode("latin-1") * 50)
    (tmp_path / "short.txt").write_text("too short")
    (tmp_path / "unseen.txt").write_text("Zebra Quagga")
    (tmp_path / "not_a_checkpoint.pt").write_text("hello")
    save_checkpoint({"task": "captioner", "config": {}, "vocab": ["<pad>"]}, tmp_path / "cap.pt")
    (tmp_path / "same_characters.txt").write_text(TEXT * 2)  # same vocabulary, another text
    (tmp_path / "other_characters.txt").write_text(TEXT.replace("z", "Z"))  # as many characters
    (tmp_path / "one_more_character.txt").write_text(TEXT + "~")  # sorted last: a longer list
    edited = {  # the trained checkpoint with impossible contents, each saved the normal way
        "nan_weights.pt": lambda p: p["model"]["head.weight"].fill_(float("nan")),
        "negative_size.pt": lambda p: p["config"]["model"].update(hidden_size=-5),
        "repeated_vocab.pt": lambda p: p["vocab"].__setitem__(1, p["vocab"][0]),
    }
    for name, edit in edited.items():
        payload = load_checkpoint(checkpoint)
        edit(payload)
        save_checkpoint(payload, tmp_path / name)
    os.mkfifo(tmp_path / "pipe")  # never opened: a reader would wait for a writer
    out = ["--out-dir", str(tmp_path / "run")]
    return {
        "empty file": (
            train_cli, ["--config", TINY, "--set", f"data.path={tmp_path / 'empty.txt'}", *out],
            "is empty",
        ),
        "non-UTF-8 file": (
            train_cli, ["--config", TINY, "--set", f"data.path={tmp_path / 'latin1.txt'}", *out],
            "is not UTF-8",
        ),
        "text shorter than one window": (
            train_cli, ["--config", TINY, "--set", f"data.path={tmp_path / 'short.txt'}",
                        "--set", "data.val_fraction=0", *out],
            "the training text has 9 characters, too few for data.batch_size=4 streams of one "
            "data.block_size=16 window (needs at least 65); use a longer text, or lower",
        ),
        "training split too short to train on": (
            train_cli, ["--config", TINY, "--set", f"data.path={tmp_path / 'short.txt'}",
                        "--set", "data.val_fraction=0.9", *out],
            "the training split has 0 characters, and training needs at least 2; use a longer "
            "text or lower data.val_fraction",
        ),
        "unknown --set key": (
            train_cli, ["--config", TINY, "--set", "model.hiden_size=3", *out],
            "unknown config key 'model.hiden_size'",
        ),
        "bad --set type": (
            train_cli, ["--config", TINY, "--set", "train.max_steps=many", *out],
            "config key 'train.max_steps': expected int",
        ),
        "missing config file": (
            train_cli, ["--config", str(tmp_path / "nope.yaml"), *out], "config file not found",
        ),
        "unknown prompt characters": (
            sample, ["--checkpoint", str(checkpoint), "--prompt", "the ZEBRA"],
            "prompt has 5 character(s) the model's vocabulary lacks: 'A' (U+0041), 'B' (U+0042), "
            "'E' (U+0045), 'R' (U+0052), 'Z' (U+005A); use only characters from its training "
            "text",
        ),
        "missing checkpoint": (
            evaluate, ["--checkpoint", str(tmp_path / "gone.pt"), "--text", str(text_file)],
            "checkpoint not found",
        ),
        "prompt file not UTF-8": (
            sample, ["--checkpoint", str(checkpoint),
                     "--prompt-file", str(tmp_path / "latin1.txt")],
            "latin1.txt is not UTF-8 text (bad byte at offset 2)",
        ),
        "missing prompt file": (
            sample, ["--checkpoint", str(checkpoint), "--prompt-file", str(tmp_path / "gone.txt")],
            "text file not found",
        ),
        "--prompt and --prompt-file": (
            sample, ["--checkpoint", str(checkpoint), "--prompt", "the",
                     "--prompt-file", str(text_file)],
            "argument --prompt-file: not allowed with argument --prompt",
        ),
        "no samples": (
            sample, ["--checkpoint", str(checkpoint), "--num-samples", "0"],
            "--num-samples must be at least 1, got 0",
        ),
        "several greedy samples": (
            sample, ["--checkpoint", str(checkpoint), "--greedy", "--num-samples", "2"],
            "--greedy gives the same text every time",
        ),
        "file that is not a checkpoint": (
            sample, ["--checkpoint", str(tmp_path / "not_a_checkpoint.pt")],
            "is not a readable checkpoint",
        ),
        "captioner checkpoint": (
            sample, ["--checkpoint", str(tmp_path / "cap.pt")],
            "is a captioner checkpoint, but this command needs a char_lm checkpoint",
        ),
        "evaluate text with unseen characters": (
            evaluate, ["--checkpoint", str(checkpoint), "--text", str(tmp_path / "unseen.txt"),
                       "--json"],
            "lacks: 'Q' (U+0051), 'Z' (U+005A)",
        ),
        "a pipe as the text": (
            evaluate, ["--checkpoint", str(checkpoint), "--text", str(tmp_path / "pipe")],
            "is not a regular file (a pipe?); the text is read twice",
        ),
        "temperature NaN": (
            sample, ["--checkpoint", str(checkpoint), "--temperature", "nan"],
            "--temperature must be > 0, got nan",
        ),
        "temperature 0, which greedy decoding is": (
            sample, ["--checkpoint", str(checkpoint), "--temperature", "0"],
            "--temperature must be > 0, got 0.0; for the most likely character at every step "
            "pass --greedy",
        ),
        "seed out of range": (
            sample, ["--checkpoint", str(checkpoint), "--seed", str(2**64)],
            "--seed must be an integer from 0 to 2**63 - 1",
        ),
        "device torch knows but the project does not run on": (
            sample, ["--checkpoint", str(checkpoint), "--device", "meta"],
            "unknown device 'meta'; use auto, cpu or cuda",
        ),
        "--init-from a model of as many characters, not the same": (
            train_cli, ["--config", TINY, "--set", f"data.path={tmp_path / 'other_characters.txt'}",
                        "--init-from", str(checkpoint), *out],
            "another vocabulary than the checkpoint's (entry 3 is 'Z', the checkpoint's 'a')",
        ),
        "--init-from a model of one character fewer": (
            train_cli, ["--config", TINY, "--set", f"data.path={tmp_path / 'one_more_character.txt'}",
                        "--init-from", str(checkpoint), *out],
            f"another vocabulary than the checkpoint's ({len(set(TEXT)) + 1} entries, the "
            f"checkpoint has {len(set(TEXT))})",
        ),
        "config is a folder": (
            train_cli, ["--config", str(tmp_path), *out], f"config file {tmp_path} is a folder",
        ),
        "malformed data.url": (
            train_cli, ["--config", TINY, "--set", "data.path=", "--set", "data.url=http://[::1",
                        *out],
            "data.url 'http://[::1' is not a valid URL",
        ),
        "checkpoint with NaN weights": (
            evaluate, ["--checkpoint", str(tmp_path / "nan_weights.pt"), "--text", str(text_file),
                       "--json"],
            "holds non-finite weights (NaN or inf in 'head.weight')",
        ),
        "checkpoint whose config is out of bounds": (
            sample, ["--checkpoint", str(tmp_path / "negative_size.pt")],
            "config key 'model.hidden_size' must be in [1, 8192], got -5",
        ),
        "checkpoint whose vocabulary repeats a character": (
            sample, ["--checkpoint", str(tmp_path / "repeated_vocab.pt")],
            "its vocabulary must be distinct single characters",
        ),
        "resume on another text": (
            train_cli, ["--config", TINY, "--set", f"data.path={tmp_path / 'same_characters.txt'}",
                        "--out-dir", str(checkpoint.parent), "--resume"],
            f"it was trained on {text_file}, and {tmp_path / 'same_characters.txt'} is another "
            f"text; pass --set data.path={text_file}",
        ),
    }  # fmt: skip


CASES = [
    "empty file",
    "non-UTF-8 file",
    "text shorter than one window",
    "training split too short to train on",
    "unknown --set key",
    "bad --set type",
    "missing config file",
    "unknown prompt characters",
    "missing checkpoint",
    "prompt file not UTF-8",
    "missing prompt file",
    "--prompt and --prompt-file",
    "no samples",
    "several greedy samples",
    "file that is not a checkpoint",
    "captioner checkpoint",
    "evaluate text with unseen characters",
    "temperature NaN",
    "seed out of range",
    "device torch knows but the project does not run on",
    "config is a folder",
    "malformed data.url",
    "checkpoint with NaN weights",
    "checkpoint whose config is out of bounds",
    "checkpoint whose vocabulary repeats a character",
    "resume on another text",
    "--init-from a model of as many characters, not the same",
    "--init-from a model of one character fewer",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line(case, tmp_path, trained, capsys):
    module, argv, message = bad_inputs(tmp_path, trained)[case]
    capsys.readouterr()
    status = run_cli(module.main, argv)
    captured = capsys.readouterr()
    assert status != 0
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "run" / "last.pt").exists()


BF16_LENGTH = 1500  # long enough that bf16's rounding changes a draw of the tiny model


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    if not precision_module.cpu_has_native_bf16():
        pytest.skip("this CPU serves a bf16 checkpoint in fp32: nothing to tell apart")
    root = tmp_path_factory.mktemp("bf16")
    return train_tiny_char_lm(root / "run", root / "text.txt", "train.precision=bf16")


def test_sample_runs_a_bf16_trained_model_in_bf16(bf16_checkpoint, capsys):
    """The CLI's text is generate()'s in `trained_precision` (bf16 here), not fp32's (kills:
    precision not passed to generate)."""
    model, vocab, config = load_char_lm(bf16_checkpoint)
    precision = trained_precision(model, config)
    assert precision.name == "bf16"

    def text(seed: int, precision=None) -> str:
        generator = torch.Generator().manual_seed(seed)
        return "".join(generate(model, vocab, "the ", BF16_LENGTH, temperature=1.0,
                                generator=generator, precision=precision))  # fmt: skip

    for seed in range(6):  # a seed whose bf16 text differs from the fp32 one
        expected = text(seed, precision)
        if expected != text(seed):
            break
    else:
        pytest.skip("bf16 and fp32 drew the same texts")
    argv = ["--checkpoint", str(bf16_checkpoint), "--prompt", "the ", "--length", str(BF16_LENGTH),
            "--temperature", "1.0", "--seed", str(seed), "--device", "cpu"]  # fmt: skip
    capsys.readouterr()
    assert run_cli(sample.main, argv) == 0
    assert capsys.readouterr().out == "the " + expected + "\n"


def test_greedy_sampling_ignores_a_temperature_of_0(trained, capsys):
    """--temperature must be > 0 for sampling only: --greedy never divides by it."""
    _, checkpoint = trained
    argv = ["--checkpoint", str(checkpoint), "--prompt", "the ", "--length", "20", "--greedy"]
    capsys.readouterr()
    assert run_cli(sample.main, [*argv, "--temperature", "0", "--device", "cpu"]) == 0
    with_zero = capsys.readouterr().out
    assert run_cli(sample.main, [*argv, "--device", "cpu"]) == 0
    assert with_zero == capsys.readouterr().out and with_zero.startswith("the ")
