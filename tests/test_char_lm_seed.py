"""`python -m char_lm.sample` without --seed draws a fresh seed and prints it, so a sample repeats.

Issue 13: the app and the CLI gave the same text every time. The CLI now keeps `--seed N` as it
was, and without it prints `seed: N` to stderr (never into the text on stdout).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tiny_models import train_tiny_char_lm

from char_lm import sample
from char_lm.generate import generate, load_char_lm, trained_precision
from recurrent.errors import run_cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    root = tmp_path_factory.mktemp("seed")
    return train_tiny_char_lm(root / "run", root / "text.txt")


def _sample(capsys: pytest.CaptureFixture, checkpoint: Path, *args: str) -> tuple[str, str]:
    common = ["--checkpoint", str(checkpoint), "--prompt", "the ", "--length", "60"]
    sample.main([*common, "--temperature", "1.0", "--device", "cpu", *args])
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_without_seed_the_drawn_seed_is_printed_and_repeats_the_sample(
    capsys: pytest.CaptureFixture, checkpoint: Path
) -> None:
    first_text, first_err = _sample(capsys, checkpoint)
    second_text, second_err = _sample(capsys, checkpoint)
    seeds = [
        int(re.fullmatch(r"seed: (\d+) \(.*\)\n", err).group(1)) for err in (first_err, second_err)
    ]
    assert seeds[0] != seeds[1] and first_text != second_text  # a fresh seed every run
    assert all(0 <= seed < sample.SEED_RANGE for seed in seeds)
    assert "seed" not in first_text  # stdout is the text alone
    for seed, text in zip(seeds, (first_text, second_text), strict=True):
        repeated, err = _sample(capsys, checkpoint, "--seed", str(seed))
        assert repeated == text and err == ""  # --seed keeps its meaning and prints nothing


def test_help_says_which_seed_applies_without_the_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        sample.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: a fresh random seed every run, printed to stderr" in help_text


def test_a_bad_prompt_is_still_one_line_without_a_seed(
    capsys: pytest.CaptureFixture, checkpoint: Path
) -> None:
    status = run_cli(sample.main, ["--checkpoint", str(checkpoint), "--prompt", "XYZ"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1  # no seed line


def test_greedy_sampling_prints_no_seed(capsys: pytest.CaptureFixture, checkpoint: Path) -> None:
    text, err = _sample(capsys, checkpoint, "--greedy")
    again, _ = _sample(capsys, checkpoint, "--greedy")
    assert err == "" and text == again  # no randomness, so no seed to repeat it by


def test_a_seed_draws_on_the_cpu_whatever_the_device(
    capsys: pytest.CaptureFixture, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sample --seed N` on a GPU drew from a CUDA generator: another text than the app's (which
    seeds a CPU generator on every device, `recurrent.sampling.sample_next`) and than the CPU's
    for the same seed. The device is only named here (the model stays on the CPU)."""
    monkeypatch.setattr(sample, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(sample, "load_char_lm", lambda path, device: load_char_lm(path, "cpu"))
    text, _ = _sample(capsys, checkpoint, "--seed", "7")
    model, vocab, config = load_char_lm(checkpoint)
    characters = generate(
        model,
        vocab,
        "the ",
        60,
        temperature=1.0,
        generator=torch.Generator().manual_seed(7),
        precision=trained_precision(model, config),
    )
    assert text == "the " + "".join(characters) + "\n"  # the app's text for seed 7
