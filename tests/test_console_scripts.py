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


AS_PROCESSES = ("captioner-caption", "char-lm-sample")  # one installed script of each package


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """The mistakes of `AS_PROCESSES` made through the installed scripts as real processes, both
    started at once; name -> (status, stdout, stderr). The other scripts run in here (each process
    imports torch, the captioner's torchvision too: all nine as processes took 16 s of the suite)."""
    cwd = tmp_path_factory.mktemp("cli")
    started = {
        name: subprocess.Popen(
            [BIN / name, *MISTAKES[name]],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in AS_PROCESSES
    }
    results = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=180)
        results[name] = (process.returncode, out, err)
    return results


def in_here(name: str, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """The installed script ``name``'s entry point called in this process with ``args``."""
    monkeypatch.setattr(sys, "argv", [name, *args])
    entry_point = next(ep for ep in distribution("crnn").entry_points if ep.name == name)
    with pytest.raises(SystemExit) as exited:
        entry_point.load()()
    out, err = capsys.readouterr()
    return exited.value.code, out, err


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_describes_the_command(name, monkeypatch, capsys):
    status, out, err = in_here(name, ["--help"], monkeypatch, capsys)
    assert status == 0, err
    assert "usage:" in out


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_user_mistake_is_one_line(name, runs, monkeypatch, capsys, tmp_path):
    if name in runs:
        status, _, err = runs[name]
    else:
        monkeypatch.chdir(tmp_path)
        status, _, err = in_here(name, MISTAKES[name], monkeypatch, capsys)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
