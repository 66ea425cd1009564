"""The installed console scripts go through run_cli: a user mistake is one line, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

SCRIPTS = {
    ep.name: ep.value for ep in distribution("crnn").entry_points if ep.group == "console_scripts"
}
BIN = Path(sys.executable).parent


def test_every_cli_is_installed_through_run_cli():
    assert len(SCRIPTS) == 9
    assert all(value.endswith(":cli") for value in SCRIPTS.values())


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_describes_the_command(name):
    result = subprocess.run([BIN / name, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize(
    "name, args",
    [
        ("char-lm-sample", ["--checkpoint", "missing.pt", "--prompt", "a"]),
        ("char-lm-evaluate", ["--checkpoint", "missing.pt", "--text", "missing.txt"]),
        ("char-lm-train", ["--config", "missing.yaml"]),
        ("captioner-caption", ["--checkpoint", "missing.pt", "missing.png"]),
        ("captioner-evaluate", ["--checkpoint", "missing.pt"]),
        ("captioner-train", ["--config", "missing.yaml"]),
        ("captioner-scenes", ["--out", "x", "--num-images", "0"]),
    ],
)
def test_user_mistake_is_one_line(name, args, tmp_path):
    result = subprocess.run(
        [BIN / name, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
