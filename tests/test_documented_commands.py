"""Every command the README, docs/ and the Makefile show still parses as written.

A flag renamed, a choice dropped, a config key moved or a config file renamed would leave the
documentation showing a command that no longer runs, and nothing would say so. Each `python -m
MODULE ...`, `torchrun ... -m MODULE ...` and `python bench/SCRIPT.py ...` in a code block of
README.md or docs/*.md or in the README's Results table, and each `$(PY) ...` line of the Makefile,
runs here up to the end of its argument parsing: its parser must accept the arguments, and the
config of a command that trains (a trainer, a training benchmark) must load with its `--set`
overrides and pass the task's checks. Nothing trains: the run stops where the work would start.
Commands that hold a placeholder (`...`, `[--flag]`, `C`, `P`, `$variable`) are not commands to
copy and are left out.
"""

from __future__ import annotations

import argparse
import importlib
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the modules and scripts whose commands are the project's (pip's, say, are not)
OURS = re.compile(r"^(char_lm|captioner|recurrent|bench)\.")
# "...", "[--images 300]", C, =P, and a shell loop's $variable
PLACEHOLDER = re.compile(r"^(\.\.\.|\[.*|[A-Z]|.*=[A-Z]|.*\$.*)$")
MAKE_VARIABLES = {"$(PY)": "python", "$(MODELS_DIR)": "models", "$(SHAKESPEARE)": "text.txt"}


def code_lines(text: str) -> list[str]:
    """The lines of ``text``'s fenced code blocks (indented ones too, under a list item),
    continuation lines (a trailing backslash) joined."""
    lines, fenced, joined = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        lines.append(joined)
        joined = ""
    return lines


def as_command(line: str) -> tuple[str, list[str]] | None:
    """``(module or script, arguments)`` of a command line of ours, None for anything else."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an unclosed quote: prose, not a command
        return None
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # OMP_NUM_THREADS=1 python ...
        words = words[1:]
    if words[:1] == ["torchrun"] and "-m" in words:
        words = ["python", *words[words.index("-m") :]]
    if words[:2] == ["python", "-m"] and len(words) > 2 and OURS.match(words[2]):
        return words[2], words[3:]
    if words[:1] == ["python"] and len(words) > 1 and re.fullmatch(r"bench/\w+\.py", words[1]):
        return words[1], words[2:]
    return None


def results_commands(readme: str) -> list[str]:
    """The commands of the README's Results table: the code in each row's last cell."""
    section = readme.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [code for row in rows for code in re.findall(r"`([^`]+)`", row.rsplit("|", 2)[1])]


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, module or script, arguments)`` of every complete command the documents show."""
    found = []
    for document in DOCUMENTS:
        lines = code_lines(document.read_text())
        if document.name == "README.md":
            lines += results_commands(document.read_text())
        for line in lines:
            command = as_command(line)
            if command and not any(PLACEHOLDER.match(word) for word in command[1]):
                found.append((document.name, *command))
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t$(PY) "):
            for variable, value in MAKE_VARIABLES.items():
                line = line.replace(variable, value)
            command = as_command(line.strip())
            if command:
                found.append(("Makefile", *command))
    return found


COMMANDS = documented_commands()


class Parsed(Exception):
    """Raised where the command's work would begin."""


# the commands that load a config before their work: they stop at its check (`check_config`),
# which a trainer's `train` makes first and these benchmarks before drawing scenes or measuring
CONFIGURED = {"bench/captioner_scenes.py", "bench/char_lm_shakespeare.py", "bench/feature_cache.py"}


def stop_where_the_work_begins(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Make ``target`` raise `Parsed` where its work would begin: a command that loads a config
    once the config (the file, then the `--set` overrides, types and bounds checked) has passed
    the task's `check_config`; any other once its parser has accepted the arguments."""
    if target.endswith(".train") or target in CONFIGURED:
        for task in ("captioner", "char_lm"):
            for module in (f"{task}.config", f"{task}.train"):  # the trainer's own name for it
                checked = importlib.import_module(module)
                real_check = checked.check_config

                def check_config(cfg, real_check=real_check):
                    real_check(cfg)
                    raise Parsed

                monkeypatch.setattr(checked, "check_config", check_config)
        return
    real_parse = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        real_parse(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)


def test_the_documents_show_commands_of_every_kind():
    """The extraction finds what it is for (an empty list would make the test below vacuous)."""
    where = {(place, target.split(".")[0]) for place, target, _ in COMMANDS}
    for task in ("char_lm", "captioner", "recurrent"):
        assert ("README.md", task) in where
    assert {("Makefile", "bench/precision"), ("benchmarks.md", "bench/precision")} <= where
    assert any(target == "captioner.train" and "--set" in args for _, target, args in COMMANDS)
    results = [as_command(code) for code in results_commands((ROOT / "README.md").read_text())]
    assert sum(command is not None for command in results) >= 10  # the Results table's commands
    readme = code_lines((ROOT / "README.md").read_text())
    torchrun = [line for line in readme if line.startswith("torchrun")]
    assert len(torchrun) == 2 and all(as_command(line) for line in torchrun)


@pytest.mark.parametrize(
    ("where", "target", "argv"),
    COMMANDS,
    ids=[f"{where}: {target} {' '.join(argv)}"[:90] for where, target, argv in COMMANDS],
)
def test_a_documented_command_parses(where, target, argv, monkeypatch, tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)  # its relative paths: an empty folder but for the configs
    stop_where_the_work_begins(monkeypatch, target)
    with pytest.raises(Parsed):
        if target.endswith(".py"):
            monkeypatch.setattr(sys, "argv", [target, *argv])
            monkeypatch.setattr(sys, "path", list(sys.path))  # it puts the repository first
            runpy.run_path(str(ROOT / target), run_name="__main__")
        else:
            importlib.import_module(target).main(argv)
