"""The benchmark scripts (`make bench`, `make bench-long`, `make demo-models`) end a user's mistake
as the CLIs do: one line on stderr, exit status 2, nothing written, and before their work.

A misspelt `--set` key came as a traceback after minutes of drawing 8000 scenes, and a checkpoint
that is not there as a traceback too.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))
TAKES_SET = [p.name for p in SCRIPTS if 'parser.add_argument("--set"' in p.read_text()]
TAKES_CHECKPOINT = [
    p.name for p in SCRIPTS if 'parser.add_argument("--checkpoint"' in p.read_text()
]


def run_script(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python bench/<name> <argv>`` in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", [f"bench/{name}", *argv])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repository first
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(str(ROOT / "bench" / name), run_name="__main__")
    return ended.value.code


def test_the_scripts_are_found():
    assert TAKES_SET == ["captioner_scenes.py", "char_lm_shakespeare.py", "feature_cache.py"]
    assert TAKES_CHECKPOINT == ["app_threads.py", "beam_search.py", "decode_options.py"]


@pytest.mark.parametrize("name", TAKES_SET)
def test_a_misspelt_set_key_is_one_line_before_any_work(name, monkeypatch, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--set", "train.bestmetric=cider", "--out-dir", str(out)]
    assert run_script(name, argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'train.bestmetric' (")
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("name", TAKES_CHECKPOINT)
def test_a_missing_checkpoint_is_one_line(name, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_script(name, ["--checkpoint", "missing.pt"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found: missing.pt (") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_make_demo_models_says_a_missing_text_before_training_the_captioner(
    monkeypatch, tmp_path, capsys
):
    """The captioner trains first, for 15 minutes: a wrong tiny-shakespeare path was met after."""
    argv = ["--models-dir", str(tmp_path / "models"), "--shakespeare", str(tmp_path / "none.txt")]
    assert run_script("make_demo_models.py", argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: no tiny-shakespeare text at {tmp_path / 'none.txt'}: pass --shakespeare FILE "
        "(make demo-models SHAKESPEARE=FILE), or --only captioner\n"
    )
    assert list(tmp_path.iterdir()) == []
