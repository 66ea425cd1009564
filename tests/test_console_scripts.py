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


MISTAKES = {
    "char-lm-sample": ["--checkpoint", "missing.pt", "--prompt", "a"],
    "char-lm-evaluate": ["--checkpoint", "missing.pt", "--text", "missing.txt"],
    "char-lm-train": ["--config", "missing.yaml"],
    "captioner-caption": ["--checkpoint", "missing.pt", "missing.png"],
    "captioner-evaluate": ["--checkpoint", "missing.pt"],
    "captioner-train": ["--config", "missing.yaml"],
    "captioner-scenes": ["--out", "x", "--num-images", "0"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[int, str, str]]:
    """The installed scripts run as real processes, each once, all started at once (each imports
    torch: run one after the other, they take a minute): a mistake for those in MISTAKES, --help
    for the others; (kind, name) -> (status, stdout, stderr)."""
    cwd = tmp_path_factory.mktemp("cli")
    commands = {("help", name): [BIN / name, "--help"] for name in SCRIPTS if name not in MISTAKES}
    commands |= {("mistake", name): [BIN / name, *args] for name, args in MISTAKES.items()}
    started = {
        key: subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for key, command in commands.items()
    }
    results = {}
    for key, process in started.items():
        out, err = process.communicate(timeout=180)
        results[key] = (process.returncode, out, err)
    return results


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_describes_the_command(name, runs, monkeypatch, capsys):
    if ("help", name) in runs:
        status, out, err = runs["help", name]
    else:  # its installed script ran as a process for its mistake: the entry point, in here
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        entry_point = next(ep for ep in distribution("crnn").entry_points if ep.name == name)
        with pytest.raises(SystemExit) as exited:
            entry_point.load()()
        status, (out, err) = exited.value.code, capsys.readouterr()
    assert status == 0, err
    assert "usage:" in out


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_user_mistake_is_one_line(name, runs):
    status, _, err = runs["mistake", name]
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
