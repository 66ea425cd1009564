"""The app against a hostile models folder (found by a bug hunt, 2026-12-05): every page shows a
message or skips the file, never an exception.

- File and run-folder names that are not UTF-8 (Python sees lone surrogates, which Streamlit
  cannot send) used to break every page; now such a checkpoint is listed as skipped and such a run
  is not offered.
- Model cards whose fields have other types (an edited file) broke the pages that show the card;
  now those fields are left out.
- metrics.jsonl lines that json reads but nothing can use (5000-digit or 10**30 steps, deep
  nesting, escaped lone surrogates) broke the Training curves page; now they are skipped.
- A one-character text on the Inside page asked Streamlit for a slider from 1 to 1.
- A folder this user may not search no longer breaks the listing (os.walk skips it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import streamlit
import torch
from streamlit.testing.v1 import AppTest
from tiny_models import train_tiny_char_lm

from crnn_app import curves
from crnn_app.cards import model_card
from crnn_app.curves import find_runs
from crnn_app.models_dir import ENV_VAR, list_checkpoints, walk_models_dir
from recurrent.checkpoint import load_checkpoint, save_checkpoint
from recurrent.engine import parse_metrics
from recurrent.errors import UserError

REPO = Path(__file__).resolve().parents[1]
GOOD_LINE = '{"kind": "train", "step": 1, "loss": 2.0}'
HOSTILE_LINES = [
    '{"kind": "train", "step": ' + "9" * 5000 + "}",  # json refuses: over 4300 digits
    '{"kind": "train", "step": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # RecursionError
    '{"kind": "train", "step": 1000000000000000000000000000000, "loss": 1.0}',  # beyond int64
    '{"kind": "train", "step": 2, "loss": 1.0, "source": "\\ud800"}',  # a lone surrogate
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    models = root / "models"
    good = train_tiny_char_lm(models / "good", root / "text.txt")
    payload = load_checkpoint(good)
    payload["card"].update(
        best_scores={"val_loss": 10**400, 1: 2.0, "BLEU-4": "x"}, task=["x"], steps="many"
    )
    payload["card"]["data"] = {"size": "big", "name": 7}
    save_checkpoint(payload, models / "odd_card.pt")
    payload = load_checkpoint(good)  # trained on a text whose name is not UTF-8
    payload["config"]["data"]["path"] = os.fsdecode(b"texts/bad\xffname.txt")
    save_checkpoint(payload, models / "text_name.pt")
    bad_name = os.path.join(os.fsencode(models), b"bad\xffname.pt")
    shutil.copy(good, bad_name)
    run = os.path.join(os.fsencode(models), b"run\xff")
    os.mkdir(run)
    with open(os.path.join(run, b"metrics.jsonl"), "w") as handle:
        handle.write(GOOD_LINE + "\n")
    (models / "hostile_run").mkdir()
    (models / "hostile_run" / "metrics.jsonl").write_text("\n".join([GOOD_LINE, *HOSTILE_LINES]))
    return models


@pytest.fixture
def app(hostile: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(ENV_VAR, str(hostile))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=60)


def _run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [item.value for item in at.exception]
    assert not [e.value for e in at.error], [e.value for e in at.error]
    return at


def _page(app: AppTest, page: str, checkpoint: str | None = None) -> AppTest:
    """The app on ``page``, with ``checkpoint`` picked when given."""
    at = _run(app)
    at.radio(key="page").set_value(page)
    _run(at)
    if checkpoint is not None:
        at.selectbox(key="char_lm_checkpoint").set_value(checkpoint)
        _run(at)
    return at


def test_every_page_lists_the_checkpoints_and_skips_a_name_that_is_not_utf8(app, hostile):
    at = _run(app)
    for page in ("Generate text", "Inside a character model", "Training curves"):
        at.radio(key="page").set_value(page)
        _run(at)
    skipped = [t.value for t in at.text if t.value.startswith("skipped:")]
    assert skipped == ["skipped: bad\ufffdname.pt: has a name that is not UTF-8; rename it"]
    assert find_runs(hostile)[0] == ["good", "hostile_run"]  # not the one whose name is not UTF-8


def test_a_card_with_fields_of_other_types_shows_what_it_can(app):
    at = _page(app, "Generate text", "odd_card.pt")
    card = next(c.value for c in at.sidebar.caption if "**architecture**" in c.value)
    assert "**task**: character-level language model" in card
    assert "**steps**: 3" in card and "**best scores**: not recorded" in card  # its step
    assert "size not recorded" in card


def test_a_model_trained_on_a_text_whose_name_is_not_utf8_opens_on_its_pages(app):
    """Its card names the text from the config, byte 0xff shown as U+FFFD (Streamlit refused
    the page, 'surrogates not allowed', on Generate and Inside alike)."""
    at = _page(app, "Generate text", "text_name.pt")
    card = next(c.value for c in at.sidebar.caption if "**architecture**" in c.value)
    assert "texts/bad\ufffdname.txt" in card
    at.radio(key="page").set_value("Inside a character model")
    _run(at)


def test_model_card_keeps_only_fields_of_their_types():
    payload = {"task": "char_lm", "config": {}, "step": 7}
    payload["card"] = {"best_scores": {"val_loss": 1.5, "bad": float("nan"), 2: 1.0, "big": 10**400},
                       "steps": True, "trained_at": "\ud800", "architecture": 3}  # fmt: skip
    card = model_card(payload)
    assert card["best_scores"] == {"val_loss": 1.5}
    assert card["steps"] == 7 and card["trained_at"] is None  # from the checkpoint, or none
    assert isinstance(card["architecture"], str)


def test_an_older_checkpoints_scores_keep_only_finite_numbers_named_by_text():
    """A checkpoint without a card: its best scores are kept as a card's are (a NaN, a name
    that is no text, a number no float holds, True, a name that is not UTF-8, a loss as text
    or infinite: left out)."""
    scores = {"BLEU-4": 21.0, "bad": float("nan"), 2: 1.0, "big": 10**400, "yes": True,
              "\ud800": 1.0}  # fmt: skip
    card = model_card({"task": "captioner", "config": {}, "step": 7, "best_scores": scores})
    assert not card["recorded"] and card["best_scores"] == {"BLEU-4": 21.0}
    # a char_lm checkpoint saved before its first evaluation holds best_val_loss inf: its card
    # said "val loss inf nats/char (inf bpc)"
    for loss in ("1.5", float("inf"), float("nan"), True):
        card = model_card({"task": "char_lm", "config": {}, "best_val_loss": loss})
        assert card["best_scores"] == {}, loss
    card = model_card({"task": "char_lm", "config": {}, "best_val_loss": 1.5})
    assert card["best_scores"] == {"val_loss": 1.5}


def test_a_card_built_from_a_config_of_other_types_shows_what_it_can():
    """A config section that is no dict counts as missing, a step that is no int as none, and
    a card's own data adds to what the config says (the config's name is kept)."""
    card = model_card({"task": "char_lm", "config": {"model": "lstm", "data": [1]}, "step": "7"})
    assert card["steps"] is None and isinstance(card["architecture"], str)
    own = {"data": {"size": 5, "unit": "characters"}}
    card = model_card({"task": "char_lm", "config": {}, "card": own})
    assert card["data"] == {**model_card({"task": "char_lm", "config": {}})["data"], **own["data"]}


def test_hostile_metrics_lines_are_skipped_and_the_good_runs_drawn(app):
    assert parse_metrics("\n".join([GOOD_LINE, *HOSTILE_LINES])) == [json.loads(GOOD_LINE)]
    emoji = '{"kind": "eval", "step": 3, "source": "\\ud83d\\ude00"}'  # an escaped pair is fine
    assert parse_metrics(emoji)[0]["source"] == "\U0001f600"
    at = _page(app, "Training curves")
    at.multiselect(key="curve_runs").set_value(["hostile_run"])
    _run(at)
    assert any("**hostile\\_run**: step 1" in c.value for c in at.caption)
    assert at.get("vega_lite_chart")  # the good line is drawn


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (ValueError("a bug\nsecond line"), "ValueError: a bug second line"),
        (KeyError("step"), "KeyError: 'step'"),  # any exception, not only a ValueError
    ],
)
def test_a_run_that_fails_to_draw_is_named_and_the_others_drawn(app, monkeypatch, failure, said):
    """A failure inside the curves' fragment (here building one run's rows raises) is a warning
    naming the run and the failure, not Streamlit's error box; the other run is drawn."""
    real = curves.metrics_frame

    def fails_for_one(runs):
        if "hostile_run" in runs:
            raise failure
        return real(runs)

    monkeypatch.setattr(curves, "metrics_frame", fails_for_one)
    streamlit.cache_data.clear()  # the page keeps each run's rows: an earlier test drew these
    streamlit.cache_resource.clear()  # and its reader of each file, which has read them
    at = _page(app, "Training curves")
    at.multiselect(key="curve_runs").set_value(["good", "hostile_run"])
    _run(at)
    assert [w.value for w in at.warning] == [f"hostile\\_run cannot be drawn ({said})."]
    charts = at.get("vega_lite_chart")
    runs = {
        row["run"]
        for chart in charts
        for dataset in chart.proto.datasets
        for row in pa.ipc.open_stream(dataset.data.data).read_all().to_pylist()
    }
    assert charts and runs == {"good"}


def test_a_one_character_text_on_the_inside_page(app):
    at = _page(app, "Inside a character model", "good/best.pt")
    at.text_area(key="inside_text:good/best.pt").set_value("t")
    _run(at)
    assert any(c.value.startswith("1 character, ") for c in at.caption)


def test_a_folder_the_user_may_not_search_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "theirs").mkdir()
    real = Path.is_file

    def is_file(path: Path) -> bool:  # as Python 3.11 raises for a 0700 folder of another user
        if "theirs" in path.parts:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    assert [folder.name for folder, _ in walk_models_dir(tmp_path)][1:] == ["mine", "theirs"]
    assert list_checkpoints(tmp_path).entries == []


def test_a_vocabulary_with_a_lone_surrogate_is_a_damaged_checkpoint(hostile, tmp_path):
    payload = load_checkpoint(hostile / "good" / "best.pt")
    payload["vocab"][1] = "\ud800"
    torch.save(payload, tmp_path / "surrogate.pt")
    with pytest.raises(UserError, match="has a damaged 'vocab' \\(it must be a list of valid"):
        load_checkpoint(tmp_path / "surrogate.pt")


def test_memory_that_runs_out_is_one_message_saying_what_to_lower(app, monkeypatch):
    """A text too long or a model too big for the machine (here torch's CPU allocator refuses
    1 PiB for real): "Something went wrong (RuntimeError: [enforce fail at alloc_cpu.cpp:127] err
    == 0. DefaultCPUAllocator: ...)". Now what ran out, how much it asked for and what to lower;
    the page goes on working."""
    import char_lm.generate

    def hungry(*args, **kwargs):
        torch.empty(1 << 50, dtype=torch.uint8)

    at = _page(app, "Generate text", "good/best.pt")
    with monkeypatch.context() as patched:
        patched.setattr(char_lm.generate, "generate", hungry)
        at.button(key="generate").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "The machine ran out of memory (it asked for 1.00 PiB more): lower the beam size, the "
        "ensemble or the text's length, or pick a smaller model."
    ]
    at.button(key="generate").click()
    _run(at)
    assert "generated" in at.session_state


def test_an_internal_failure_is_one_message_not_a_traceback(app, monkeypatch):
    """A bug or a failing disk inside a page (here the listing of runs raises): the page shows one
    line naming the failure, and the other pages go on working."""

    def fails(root):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(curves, "find_runs", fails)
    at = app.run()
    at.radio(key="page").set_value("Training curves")
    at.run()
    assert not at.exception
    expected = "Something went wrong (RuntimeError: disk on fire second line)."  # one line
    assert [e.value for e in at.error] == [expected]
    at.radio(key="page").set_value("Generate text")
    _run(at)
