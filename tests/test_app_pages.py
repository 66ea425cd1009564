"""The app's pages that look inside the models (issue 11), and the library code behind them.

- `crnn_app.inside.trace` against the model's own forward (same logits, same final state) for rnn,
  lstm and gru; the probabilities, unit rankings and gate statistics it feeds;
- `crnn_app.toys`: a toy trained in memory reproduces "hihello"; the equations carry the trace's
  numbers;
- model cards (`crnn_app.cards`), for checkpoints with and without one, the bundled ones included;
- AppTest runs of the Training curves page (a run with a half-written last line, runs without
  wall time, the follow toggle, remembered runs that are gone, a run that vanishes while drawn),
  the Inside a character model page (saturating gates, a checkpoint rewritten in place), the
  Lecture toys page (a two-layer toy at a step it gets wrong) and the model cards in the
  sidebar, each compared with what the library computes.
"""

from __future__ import annotations

import copy
import html
import itertools
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import streamlit
import torch
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest
from tiny_models import train_tiny_char_lm

from bench.char_lm_shakespeare import SHAKESPEARE_TEXT
from captioner.config import CaptionerConfig
from captioner.config import ModelConfig as CaptionerModelConfig
from captioner.model import CaptionModel
from char_lm.config import ModelConfig
from char_lm.generate import generate, load_char_lm
from char_lm.model import CharLM
from crnn_app import cards, curves, inside, toys
from crnn_app.curves import LIVE_WITHIN_S, MetricsTail, find_runs, summarize
from crnn_app.models_dir import ENV_VAR, list_checkpoints
from crnn_app.settings import SAVED_PREFIX, keep
from recurrent.checkpoint import load_checkpoint, save_checkpoint
from recurrent.config import to_dict
from recurrent.engine import read_metrics
from recurrent.errors import UserError
from recurrent.plot import MAX_POINTS, METRICS_FILE, PANEL_TITLES, metrics_frame

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TIMEOUT = 90  # seconds per script run: the machine is small and shared
QUOTES_TEXT = 'he said "hi there" to me.\nshe said "no" and left.\nthen "why" he asked.\n' * 8
CARD = {
    "task": "char_lm",
    "architecture": "1-layer LSTM, hidden 16, embedding 8",
    "data": {"name": "quotes", "path": "quotes.txt", "size": 1234, "unit": "characters"},
    "steps": 3,
    "best_scores": {"val_loss": 2.5},
    "trained_at": "2026-11-22T05:10:00Z",
}


def _train_line(step: int, now: float) -> dict:
    return {
        "kind": "train",
        "step": step,
        "time_s": 0.5 * step,
        "timestamp": now - 30 + step * 0.01,
        "lr": 0.001,
        "loss": 4.0 / step,
        "grad_norm": 1.0,
        "throughput": 100.0,
        "throughput_unit": "chars/s",
    }


def _write_lines(path: Path, lines: list[dict], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + tail, encoding="utf-8")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pages")
    models_dir = root / "models"
    lstm = train_tiny_char_lm(models_dir / "quotes_lstm", root / "q.txt", text=QUOTES_TEXT)
    rnn = train_tiny_char_lm(
        models_dir / "quotes_rnn", root / "r.txt", "model.cell=rnn", text=QUOTES_TEXT
    )
    payload = load_checkpoint(lstm)
    payload.pop("card", None)  # as written before the trainers wrote cards
    uncarded = models_dir / "uncarded" / "model.pt"
    save_checkpoint(payload, uncarded)
    payload["card"] = CARD
    carded = models_dir / "carded" / "model.pt"
    save_checkpoint(payload, carded)
    # the tiny models' gates stay within 0.1..0.9; the same weights scaled up saturate them
    payload["model"] = {
        name: value * 10 if name.startswith("core.") else value
        for name, value in payload["model"].items()
    }
    saturated = models_dir / "saturated" / "model.pt"
    save_checkpoint(payload, saturated)
    # a vocabulary without a newline (as hihello's): a text's first character has no context
    payload = load_checkpoint(lstm)
    payload["vocab"] = ["Z" if char == "\n" else char for char in payload["vocab"]]
    no_newline = models_dir / "no_newline" / "model.pt"
    save_checkpoint(payload, no_newline)
    now = time.time()
    live = [_train_line(step, now) for step in (10, 20, 30)]
    live.insert(2, {"kind": "eval", "step": 20, "time_s": 11.0, "scores": {"val_loss": 0.3}})
    _write_lines(models_dir / "runs" / "live" / METRICS_FILE, live, '{"kind": "train", "st')
    derived = [
        {"kind": "eval", "step": step, "scores": {"val_loss": 3.0 - step / 100}, "source": "a note"}
        for step in (100, 200)
    ]
    _write_lines(models_dir / "runs" / "derived" / METRICS_FILE, derived)
    _write_lines(models_dir / ".hidden" / METRICS_FILE, derived)
    return {
        "dir": models_dir,
        "lstm": lstm,
        "rnn": rnn,
        "carded": carded,
        "uncarded": uncarded,
        "saturated": saturated,
        "no_newline": no_newline,
    }


@pytest.fixture
def app(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(ENV_VAR, str(models["dir"]))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [item.value for item in at.exception]
    assert not at.error, [item.value for item in at.error]
    return at


def _page(at: AppTest, page: str) -> AppTest:
    _run(at)
    at.radio(key="page").set_value(page)
    return _run(at)


def _inside(at: AppTest, checkpoint: str, text: str) -> AppTest:
    """The Inside page of `checkpoint` (its name under the models folder) on `text`."""
    at = _page(at, "Inside a character model")
    at.selectbox(key="char_lm_checkpoint").set_value(checkpoint)
    _run(at)
    at.text_area(key=f"inside_text:{checkpoint}").set_value(text)
    return _run(at)


def _charts(at: AppTest) -> list[tuple[dict, list]]:
    """(spec, [rows of each dataset]) of every Altair chart on the page."""
    charts = []
    for element in at.get("vega_lite_chart"):
        rows = [
            pa.ipc.open_stream(dataset.data.data).read_all().to_pylist()
            for dataset in element.proto.datasets
        ]
        charts.append((json.loads(element.proto.spec), rows))
    return charts


def _panel(spec: dict) -> str | None:
    """The curves page's panel a chart draws, from its y-axis title."""
    layers = spec.get("layer") or [{}]
    y_title = layers[0].get("encoding", {}).get("y", {}).get("title")
    return {title: panel for panel, title in PANEL_TITLES.items()}.get(y_title)


def _titles(body: str) -> list[str]:
    return [html.unescape(title) for title in re.findall(r'title="([^"]*)"', body)]


# --------------------------------------------------------------------------------------------
# The trace: the model's own numbers, read step by step


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
def test_trace_gives_the_models_own_logits_and_final_state(cell: str, input_kind: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        input=input_kind, embed_size=5, cell=cell, num_layers=2, hidden_size=7, dropout=0.3
    )
    model = CharLM(config, vocab_size=11)
    ids = torch.randint(0, 11, (13,))
    state = torch.randn(2 if cell == "lstm" else 1, 2, 1, 7)
    before = copy.deepcopy(model.state_dict())
    model.train()  # the trace applies no dropout, and leaves the mode alone
    traced = inside.trace(model, ids, state, parts=True)
    assert model.training
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    model.eval()
    logits, _, final = model(ids.unsqueeze(0), state=state)
    assert torch.allclose(traced.logits, logits[0], atol=1e-5)
    assert torch.allclose(traced.state, final, atol=1e-5)
    assert torch.equal(traced.initial_state, state)
    # every layer's h is the input of the next, and the top layer's h gives the logits
    for lower, upper in zip(traced.layers, traced.layers[1:], strict=False):
        assert torch.equal(lower.h, upper.inputs)
    assert torch.allclose(model.head(traced.layers[-1].h), traced.logits)
    assert set(traced.layers[0].gates) == set(inside.GATES[cell])
    for layer in traced.layers:  # the parts add up to the pre-activations of the gates
        assert layer.x_part.shape == layer.h_part.shape == (13, len(inside.GATES[cell] or "h") * 7)
    if cell == "lstm":  # c' = f c + i g and h' = o tanh(c'), row by row
        layer = traced.layers[0]
        c_prev = torch.cat([state[1, 0], layer.c[:-1]])
        gates = layer.gates
        assert torch.allclose(
            layer.c, gates["forget"] * c_prev + gates["input"] * gates["cell"], atol=1e-6
        )
        assert torch.allclose(layer.h, gates["output"] * torch.tanh(layer.c), atol=1e-6)


def test_trace_matches_the_explicit_backend_too() -> None:
    torch.manual_seed(1)
    config = ModelConfig(cell="gru", num_layers=1, hidden_size=6, embed_size=4, backend="explicit")
    model = CharLM(config, vocab_size=9).eval()
    ids = torch.randint(0, 9, (20,))
    logits, _, final = model(ids.unsqueeze(0))
    traced = inside.trace(model, ids)
    assert torch.allclose(traced.logits, logits[0], atol=1e-6)
    assert torch.allclose(traced.state, final, atol=1e-6)


def test_trace_runs_on_one_thread_and_restores_the_setting() -> None:
    threads = torch.get_num_threads()
    with inside.one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def _threads_of_a_new_session() -> int:
    """torch's CPU threads in a thread that has not run torch yet (each script run of a Streamlit
    session is one): what the next session's captions and texts run on."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_sessions_in_one_thread_at_once_leave_torch_its_threads() -> None:
    """Sessions trace or train toys at once, each in its own thread of the server: A enters
    `one_thread`, B enters, A leaves, B leaves. B found one thread (A's setting): restoring it
    left every later session on one thread. So did a session whose thread first ran torch during
    A's turn and traced after A left. Afterwards new sessions must get the process's setting, as
    after one session alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with inside.one_thread():
            pass
        alone = _threads_of_a_new_session()
        assert alone == 2
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def session_a() -> None:
            with inside.one_thread():
                a_in.set()
                assert b_in.wait(10)
            a_out.set()

        def session_b() -> None:
            assert a_in.wait(10)
            with inside.one_thread():
                b_in.set()
                assert a_out.wait(10)

        def session_c() -> None:
            assert a_in.wait(10)
            torch.get_num_threads()  # this thread's first torch call, during A's turn
            b_in.set()
            assert a_out.wait(10)
            with inside.one_thread():
                pass

        failures: list[BaseException] = []

        def run(session: Callable[[], None]) -> None:
            try:
                session()
            except BaseException as err:  # noqa: BLE001 - reported by the test's thread
                failures.append(err)

        for second in (session_b, session_c):
            for event in (a_in, b_in, a_out):
                event.clear()
            threads = [threading.Thread(target=run, args=(f,)) for f in (session_a, second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not failures
            assert _threads_of_a_new_session() == alone, second.__name__
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_session_entering_one_thread_while_another_is_in_runs_on_one_thread() -> None:
    """B's thread ran torch before A entered `one_thread` (it keeps the setting it started
    with); B enters while A is in: B's own work must run on one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    a_in, b_done = threading.Event(), threading.Event()
    seen: list[int] = []

    def session_a() -> None:
        with inside.one_thread():
            a_in.set()
            b_done.wait(10)

    def session_b() -> None:
        seen.append(torch.get_num_threads())  # this thread's first torch call, before A's turn
        a_in.wait(10)
        with inside.one_thread():
            seen.append(torch.get_num_threads())
        b_done.set()

    try:
        b = threading.Thread(target=session_b)
        b.start()
        while not seen:  # B has started torch
            time.sleep(0.01)
        a = threading.Thread(target=session_a)
        a.start()
        for thread in (a, b):
            thread.join(20)
    finally:
        b_done.set()
        torch.set_num_threads(before)
    assert seen == [2, 1]


def test_char_probabilities_follow_the_models_softmax(models: dict[str, Path]) -> None:
    model, vocab, _ = load_char_lm(models["lstm"])
    text = 'she said "hi"'
    traced = inside.trace_text(model, vocab, text)
    probabilities, candidates = inside.char_probabilities(traced, vocab)
    ids = [vocab.index(char) for char in "\n" + text]
    with torch.no_grad():
        logits, _, _ = model(torch.tensor([ids]))
    expected = torch.softmax(logits[0], dim=-1)  # row k: the character after position k
    for k, char in enumerate(text):
        assert probabilities[k] == pytest.approx(float(expected[k, vocab.index(char)]), rel=1e-5)
        top = expected[k + 1].topk(5)
        assert [c for c, _ in candidates[k]] == [vocab[i] for i in top.indices.tolist()]
        assert [p for _, p in candidates[k]] == pytest.approx(top.values.tolist(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Interesting units and gate saturation


def test_text_features_by_hand() -> None:
    features = inside.text_features('a "b"\ncd')
    assert features["inside quotes"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert features["start of a line"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert features["position in line"].tolist() == [1, 2, 3, 4, 5, 0, 1, 2]


def _fake_traced(text: str, h: np.ndarray, gates: dict | None = None) -> inside.TracedText:
    steps = len(text)
    layer = inside.LayerTrace(
        inputs=torch.zeros(steps, 1),
        h=torch.tensor(h, dtype=torch.float32),
        c=None,
        gates={name: torch.tensor(value) for name, value in (gates or {}).items()},
    )
    trace = inside.Trace("gru", torch.zeros(steps), [layer], torch.zeros(steps, 2), None, None)
    return inside.TracedText(text, "", trace)


def test_rank_units_finds_a_planted_unit_and_its_sign() -> None:
    text = 'ab "cd" e\nfg "h"\nijk\n'
    features = inside.text_features(text)
    rng = np.random.default_rng(0)
    h = rng.normal(size=(len(text), 6)) * 0.1
    h[:, 4] = features["position in line"] / 10 + rng.normal(size=len(text)) * 0.01
    h[:, 1] = -features["inside quotes"]
    h[:, 2] = 0.5  # constant: never ranked
    traced = _fake_traced(text, h)
    [top, *_] = inside.rank_units(traced, "position in line")
    assert (top.layer, top.state, top.unit) == (0, "h", 4) and top.correlation > 0.95
    [top, *_] = inside.rank_units(traced, "inside quotes")
    assert top.unit == 1 and top.correlation == pytest.approx(-1.0)
    assert all(score.unit != 2 for score in inside.rank_units(traced, "inside quotes", top=6))
    assert inside.rank_units(_fake_traced("no quotes", h[:9]), "inside quotes") == []


def test_gate_saturation_counts_the_fractions() -> None:
    reset = np.array([[0.05, 0.5], [0.95, 0.5], [0.02, 0.99], [0.5, 0.97]], dtype=np.float32)
    update = np.full((4, 2), 0.5, dtype=np.float32)
    traced = _fake_traced("abcd", np.zeros((4, 2)), {"reset": reset, "update": update})
    table = inside.gate_saturation(traced.trace)
    by_key = {(row["gate"], row["unit"]): (row["left"], row["right"]) for row in table}
    assert by_key == {
        ("reset", 0): (0.5, 0.25),
        ("reset", 1): (0.0, 0.5),
        ("update", 0): (0.0, 0.0),
        ("update", 1): (0.0, 0.0),
    }
    assert inside.gate_saturation(traced.trace, slice(2, 4))[0] == {
        "layer": "layer 1", "gate": "reset", "unit": 0, "left": 0.5, "right": 0.0,
    }  # fmt: skip


def test_coloured_text_escapes_html_and_keeps_every_character() -> None:
    text = '<b>&"x\n'
    body = inside.activation_html(text, [0.5, -1.0, 0.0, 2.0, 0.1, -0.3, 0.0], scale=1.0)
    assert "<b>" not in body and ">&lt;</span>" in body and ">&amp;</span>" in body
    titles = _titles(body)
    assert len(titles) == len(text) and titles[1].startswith("'b': -1.000")
    assert "rgb(255, 0, 0)" in body  # 2.0 clipped to the full red
    assert inside.surprise_colour(1.0) == "rgb(255, 255, 255)"
    assert inside.surprise_colour(2**-8) == inside.surprise_colour(2**-20) == "rgb(255, 60, 60)"


def test_unit_states_are_the_rows_of_the_text_after_its_context(models: dict[str, Path]) -> None:
    """A text is traced after a newline it is conditioned on: its units' activations are the
    trace's rows after that context, one per character of the text."""
    model, vocab, _ = load_char_lm(models["lstm"])
    text = 'he said "hi"'
    traced = inside.trace_text(model, vocab, text)
    assert traced.context == "\n" and traced.rows() == slice(1, 1 + len(text))
    states = inside.unit_states(traced)
    layer = traced.trace.layers[0]
    assert np.array_equal(states[(0, "h")], layer.h[1:].numpy())
    assert np.array_equal(states[(0, "c")], layer.c[1:].numpy())


def test_a_character_of_probability_zero_is_the_most_surprising_not_an_error() -> None:
    """A float32 softmax rounds a very unlikely character's probability to 0: its surprise is
    capped (log2 of 0 raised "math domain error" and took the page down)."""
    assert inside.bits(0.0) == pytest.approx(-math.log2(1e-12))
    assert inside.surprise_colour(0.0) == "rgb(255, 60, 60)"
    body = inside.surprise_html("ab", [None, 0.0], [[("b", 0.6), ("a", 0.4)], [("a", 1.0)]])
    assert _titles(body) == [
        "'a': first character, no context\nnext: 'b' 0.60, 'a' 0.40",  # every candidate
        "'b': p = 0.000 (39.9 bits)\nnext: 'a' 1.00",
    ]


def test_rank_units_gives_the_top_units_by_the_strength_of_their_correlation() -> None:
    """Exactly ``top`` units, strongest first whatever the sign, each with numpy's Pearson
    correlation."""
    text = 'ab "cd" e\nfg "h"\nijk\n'
    h = np.random.default_rng(1).normal(size=(len(text), 6))
    feature = inside.text_features(text)["position in line"]
    expected = sorted(
        ((np.corrcoef(h[:, unit], feature)[0, 1], unit) for unit in range(6)),
        key=lambda pair: -abs(pair[0]),
    )[:4]
    ranked = inside.rank_units(_fake_traced(text, h), "position in line", top=4)
    assert [score.unit for score in ranked] == [unit for _, unit in expected]
    assert [score.correlation for score in ranked] == pytest.approx([c for c, _ in expected])


def test_a_newline_is_drawn_as_an_arrow_and_no_steps_give_no_saturation_rows() -> None:
    body = inside.coloured_text_html("a\nb", ["red"] * 3, ["x"] * 3)
    assert ">a</span>" in body and ">↵<br></span>" in body and ">b</span>" in body
    reset = np.full((4, 2), 0.05, dtype=np.float32)
    traced = _fake_traced("abcd", np.zeros((4, 2)), {"reset": reset, "update": reset})
    assert inside.gate_saturation(traced.trace, slice(4, 4)) == []  # not NaN fractions


def test_activation_colours_clip_at_both_ends_and_a_tab_is_named_as_python_writes_it() -> None:
    assert inside.activation_colour(-2.0) == inside.activation_colour(-1.0) == "rgb(0, 0, 255)"
    assert inside.activation_colour(2.0) == "rgb(255, 0, 0)"
    assert inside.activation_colour(0.0) == "rgb(255, 255, 255)"
    titles = _titles(inside.activation_html("\t \n", [0.1, 0.2, 0.3]))
    assert [title.split(":")[0] for title in titles] == ["'\\t'", "' '", "'\\n'"]


# --------------------------------------------------------------------------------------------
# The lecture toys


def test_hihello_toy_learns_the_word_and_leaves_the_random_state_alone() -> None:
    state = torch.get_rng_state()
    run = toys.train_toy(toys.toy_config("hihello.yaml"), "hihello")
    assert torch.equal(torch.get_rng_state(), state)
    assert len(run.losses) == 100 and run.losses[-1] < 0.1 * run.losses[0]
    assert toys.greedy_check(run) == ("h", "hihello")  # the lecture's test
    again = toys.train_toy(toys.toy_config("hihello.yaml"), "hihello")
    assert again.losses == run.losses  # seeded by the config


NUMBER = r"\(?-?\d+\.\d+\)?"


def _read(text: str) -> list[float]:
    """The numbers written in a piece of an equation, in order."""
    return [float(number.strip("()")) for number in re.findall(NUMBER, text)]


def _computed(expression: str) -> Decimal:
    """An expression of written numbers, as a reader computes it: sums and products exactly (as
    by hand), tanh, the sigmoid and exp in floating point."""
    python = re.sub(r"\\frac\{e\^\{(\S+?)\}\}\{(\S+?)\}", r"exp(\1)/(\2)", expression)
    python = python.replace(r"\tanh", "tanh").replace(r"\sigma", "sigma").replace(r"\cdot", "*")
    assert re.fullmatch(r"[\d.+\-*/() a-z]*", python), python
    python = re.sub(r"(\d+\.\d+)", r'D("\1")', python)  # each number exactly as written

    def real(function):
        return lambda value: Decimal(function(float(value)))

    names = {
        "D": Decimal,
        "tanh": real(math.tanh),
        "sigma": real(lambda v: 0.5 * (1 + math.tanh(v / 2))),
        "exp": real(math.exp),
    }
    return eval(python, {"__builtins__": {}}, names)  # numbers, operators and those three only


def _written(value: Decimal, decimals: int) -> str:
    """``value`` written by hand with ``decimals`` decimals (half away from zero, no -0)."""
    rounded = value.quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)
    return format(rounded if rounded else abs(rounded), "f")


def checks_by_hand(latex: str) -> int:
    """Every "=" between two pieces of written numbers holds for the numbers as written: the left
    piece computed, written with the right piece's decimals, reads as the right piece computed
    (inside the same function, its arguments). Returns the most decimals written."""
    latex = latex.split(r", \quad")[0]
    pieces = re.split(r" (=|\\approx) ", latex)
    assert r"\approx" not in pieces, latex  # 7 decimals always did here
    numeric = [piece for piece in pieces[2::2] if _read(piece)]
    for left, right in itertools.pairwise(numeric):
        outer = re.fullmatch(r"(\\tanh|\\sigma)\((.*)\)", right)
        if outer and left.startswith(outer.group(1) + "("):
            left, right = left[len(outer.group(1)) + 1 : -1], outer.group(2)
        decimals = len(re.findall(NUMBER, right)[-1].strip("()").split(".")[1])
        assert _written(_computed(left), decimals) == _written(_computed(right), decimals), latex
    return max(len(n.strip("()").split(".")[1]) for n in re.findall(NUMBER, latex))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cell_equations_carry_the_traces_numbers(cell: str) -> None:
    run = toys.train_toy(toys.toy_config("hihello.yaml", cell, max_steps=20), "hihello")
    traced = toys.trace_toy(run)
    assert traced.ids.numel() == 6  # reads "hihell", predicts "ihello"
    layer = traced.layers[0]
    for step in (0, 3):
        equations = {eq.name: eq for eq in toys.cell_equations(traced, 0, step, unit=2)}
        for equation in equations.values():  # the result written is the value held
            assert equation.latex.endswith(f"= {equation.value:.3f}")
            checks_by_hand(equation.latex)
        assert equations["h"].value == pytest.approx(float(layer.h[step, 2]))
        if cell == "lstm":
            assert list(equations) == ["i", "f", "g", "o", "c", "h"]
            c_prev = float(layer.c[step - 1, 2]) if step else 0.0
            values = {name: eq.value for name, eq in equations.items()}
            assert values["c"] == pytest.approx(
                values["f"] * c_prev + values["i"] * values["g"], abs=1e-6
            )
            assert values["h"] == pytest.approx(values["o"] * math.tanh(values["c"]), abs=1e-6)
            # the numbers written in: each gate in its place, the cell state of the step before
            written = _read(equations["c"].latex.split(" = ", 2)[2])
            expected = [values["f"], c_prev, values["i"], values["g"], values["c"]]
            assert written == pytest.approx(expected, abs=5e-4)
        elif cell == "gru":
            assert list(equations) == ["r", "z", "n", "h"]
            h_prev = float(layer.h[step - 1, 2]) if step else 0.0
            r, z, n = (equations[name].value for name in "rzn")
            assert equations["h"].value == pytest.approx((1 - z) * n + z * h_prev, abs=1e-6)
            written = _read(equations["h"].latex.split(" = ", 2)[2])
            assert written == pytest.approx([1 - z, n, z, h_prev, equations["h"].value], abs=5e-4)
            a = float(layer.x_part[step, 2 * 8 + 2])
            written = _read(equations["n"].latex.split(" = ", 2)[2])
            assert written[:2] == pytest.approx([a, r], abs=5e-4)
        else:
            assert list(equations) == ["h"]
        # the pre-activation of the first equation is x part + h part of the trace, the sum
        # written as by hand ("0.520 - 0.310" for a negative h part), then as one number
        size = layer.h.size(1)
        x_part, h_part = float(layer.x_part[step, 2]), float(layer.h_part[step, 2])
        first = next(iter(equations.values())).latex
        sign = "-" if h_part < 0 else "+"
        written = re.search(r"\((\S+) ([+-]) (\S+)\) = \\\w+\((\S+)\)", first)
        assert written[2] == sign
        assert [float(written[i]) for i in (1, 3, 4)] == pytest.approx(
            [x_part, abs(h_part), x_part + h_part], abs=5e-4
        )
        assert size == 8
    target = "ihello"[3]
    output = toys.output_equation(traced, 3, run.vocab, run.vocab.index(target))
    checks_by_hand(output.latex)
    probabilities = torch.softmax(traced.logits[3], dim=-1)
    assert output.value == pytest.approx(float(probabilities[run.vocab.index(target)]))
    unlikely = int(traced.logits[3].argmin())  # its own logit, not the largest
    written = toys.output_equation(traced, 3, run.vocab, unlikely).latex
    exponent = re.search(r"\\frac\{e\^\{(-?\d+\.\d+)\}\}", written)[1]
    assert float(exponent) == pytest.approx(float(traced.logits[3][unlikely]), abs=5e-4)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_every_equation_of_a_two_layer_toy_checks_by_hand(cell: str) -> None:
    """A student multiplies the written numbers out: on a two-layer toy whose LSTM cell states
    grow past 10, where 3 decimals of each factor missed the written product by up to 0.006,
    every line's arithmetic gives the next number as written (more decimals where needed,
    negative factors in parentheses), and a layer above the first reads the h_t below it."""
    text = "hello world, hello recurrent networks."
    run = toys.train_toy(toys.toy_config("ship.yaml", cell, max_steps=60), text)
    traced = toys.trace_toy(run)
    assert len(traced.layers) == 2
    most = 3
    for layer in (0, 1):
        for step in range(0, traced.ids.numel(), 3):
            for unit in range(0, run.config.model.hidden_size, 4):
                for equation in toys.cell_equations(traced, layer, step, unit):
                    most = max(most, checks_by_hand(equation.latex))
                    reads = equation.name in {"rnn": "h", "lstm": "ifgo", "gru": "rzn"}[cell]
                    assert ("x_{t}" in equation.latex) == (reads and layer == 0)
                    assert ("h^{(1)}_{t}" in equation.latex) == (reads and layer == 1)
                    assert not re.search(r"\\cdot -", equation.latex), equation.latex
        for step in range(traced.ids.numel()):
            char_id = int(traced.ids[step + 1]) if step + 1 < traced.ids.numel() else 0
            most = max(
                most, checks_by_hand(toys.output_equation(traced, step, run.vocab, char_id).latex)
            )
    if cell == "lstm":
        assert float(traced.layers[1].c.abs().max()) > 5 and most > 3  # what needed them


def test_equations_of_extreme_values_check_by_hand_and_never_overflow() -> None:
    """Saturated gates, a logit past exp's float range (800), parts that sum to a tie at 3
    decimals, values that round to zero: each line is written, checks by hand, and shows no
    negative zero; logits above 10 are written less the largest (e^{y - m}), so no number is
    dozens of digits long."""
    for squash in (r"\tanh", r"\sigma"):
        for a, b in ((-800.0, 0.5), (0.357036, 0.714464), (-0.0003, -0.0001), (3.0, -2.9995)):
            function = math.tanh if squash == r"\tanh" else (lambda v: 0.5 * (1 + math.tanh(v / 2)))
            line = "x = y = " + toys._squashed(squash, a, b, function(a + b))
            checks_by_hand(line)
            assert "-0.000 " not in line and "(-0.000" not in line, line
    traced = SimpleNamespace(
        logits=torch.tensor([[800.0, 1.0, 2.0], [3.0, 1.0, 2.0], [60.0, 59.0, -5.0]])
    )
    for step, shifted in ((0, True), (1, False), (2, True)):
        for char_id in range(3):
            equation = toys.output_equation(traced, step, ["a", "b", "c"], char_id)
            checks_by_hand(equation.latex)
            assert ("y_k - m" in equation.latex) == shifted and "inf" not in equation.latex
            assert max(len(number) for number in re.findall(r"\d+\.\d+", equation.latex)) < 12
            expected = torch.softmax(traced.logits[step].double(), dim=-1)[char_id]
            assert equation.value == pytest.approx(float(expected))


def test_chart_labels_stay_apart_when_the_text_holds_their_signs() -> None:
    assert toys.char_labels(["a", " ", "\n"]) == ["a", "␣", "↵"]
    # a text with a space and the sign that shows one: each bar keeps a label of its own
    assert toys.char_labels([" ", "␣", "\t"]) == ["' '", "␣", "⇥"]


def test_the_windows_a_toy_trains_in_are_what_the_page_says() -> None:
    """The Training steps help names the window the text trains in: a short text trains in
    shorter windows than the config's."""
    cfg = toys.toy_config("ship.yaml")
    short = "hello"
    assert toys.toy_window(cfg, len(short)) < cfg.data.block_size
    seen = []
    real = toys.StreamBatches

    class Recording(real):
        def __init__(self, ids, batch_size, block_size, **kwargs):
            seen.append(block_size)
            super().__init__(ids, batch_size, block_size, **kwargs)

    toys.StreamBatches = Recording
    try:
        toys.train_toy(toys.toy_config("ship.yaml", max_steps=1), short)
    finally:
        toys.StreamBatches = real
    assert seen == [toys.toy_window(cfg, len(short))]


def test_toy_text_limits() -> None:
    with pytest.raises(toys.UserError, match="at least 3"):
        toys.check_toy_text("ab")
    with pytest.raises(toys.UserError, match="at most 300"):
        toys.check_toy_text("x" * 301)
    assert toys.latex_char("_") == r"\_"


def test_equations_write_a_space_and_a_quote_as_katex_shows_them() -> None:
    """KaTeX has no \\textvisiblespace: a space in an equation showed the command, in red; and
    it writes ' as ’ in text mode, \\texttt too (a bug hunt, 2026-12-07)."""
    assert toys.latex_char(" ") == "␣"
    assert toys.latex_char("'") == r'$\mathtt{\char"27}$'  # in math mode ' stays straight


# --------------------------------------------------------------------------------------------
# Model cards and remembered settings


def test_cards_of_the_bundled_checkpoints_come_from_their_configs() -> None:
    # Both bundled models were trained after trainers began writing cards: theirs are recorded.
    captioner = cards.model_card(load_checkpoint(REPO / "models" / "scenes_captioner.pt"))
    assert captioner["recorded"] is True and captioner["task"] == "captioner"
    # recorded by an older trainer as "resnet18 (3 stages, all) -> 1-layer LSTM 256, soft
    # attention": the app describes every checkpoint from its config, in the same words
    assert captioner["architecture"] == (
        "ResNet-18 encoder (to layer3, all trained) + soft attention, 1-layer LSTM decoder, "
        "hidden 256"
    )
    assert captioner["data"]["synthetic_scenes"] and cards.knows_only_scenes(captioner)
    assert captioner["steps"] == 3000 and captioner["best_scores"]["BLEU-4"] > 99
    assert dict(cards.card_rows(captioner))["trained"] == "2026-12-05 07:19 UTC"
    char_lm = cards.model_card(load_checkpoint(REPO / "models" / "shakespeare_char.pt"))
    assert char_lm["recorded"] is True
    assert char_lm["architecture"] == "2-layer LSTM, hidden 512, embedding 128"
    rows = dict(cards.card_rows(char_lm))
    # recorded as `make demo-models` trained it: on the shared copy its recipe names (the file is
    # not read here)
    assert rows["data"] == f"tinyshakespeare ({SHAKESPEARE_TEXT}), 1,115,394 characters"
    assert rows["best scores"] == "val loss 1.401 nats/char (2.021 bpc)"
    assert rows["trained"] == "2026-12-05 06:02 UTC" and rows["steps"] == "2,865"


def test_the_step_of_the_best_scores_is_said_where_it_is_another() -> None:
    """A last.pt after its run's best: its card and the picker's line say where the best scores
    were measured, an older card from the checkpoint's progress; -1 (no evaluation yet), the
    checkpoint's own step or True (an edited file) add nothing."""
    from crnn_app.models_dir import _summary

    def card_and_line(task: str, best_step, own: dict | None = None) -> tuple[str, str]:
        scores = {"val_loss": 1.5} if task == "char_lm" else {"BLEU-4": 21.0}
        payload = {"task": task, "step": 6, "best_scores": scores, "config": {},
                   "progress": {"best_step": best_step}}  # fmt: skip
        if task == "char_lm":
            payload["best_val_loss"] = 1.5
        if own is not None:
            payload["card"] = own
        card = cards.model_card(payload)
        return dict(cards.card_rows(card))["best scores"], _summary(
            payload, cards.best_elsewhere(card)
        )

    best, line = card_and_line("char_lm", 3)
    assert best.endswith("(at step 3, not these weights')") and line.endswith("(best, at step 3)")
    best, line = card_and_line("captioner", 3, own={"steps": 6, "best_scores": {"BLEU-4": 21.0}})
    assert best.endswith("(at step 3, not these weights')")
    assert line.endswith("val BLEU-4 21.0 (best, at step 3)")
    for nothing in (-1, 6, True):
        best, line = card_and_line("char_lm", nothing)
        assert "at step" not in best and "at step" not in line
    best, _ = card_and_line("char_lm", 3, own={"best_step": -1, "steps": 6})  # the card's own
    assert "at step" not in best


def test_an_older_captioners_last_pt_says_where_its_best_scores_were_measured(
    tmp_path: Path,
) -> None:
    """A captioner's last.pt from before the run loop (2026-11-21/22) kept the step of the run's
    best scores in its own `best_step` (progress came later), as its exported copy does: a last.pt
    written after the best says so, as a current one does."""
    from crnn_app.models_dir import _summary
    from recurrent.checkpoint import export_checkpoint

    scores = {"BLEU-1": 42.4, "BLEU-4": 27.1}
    payload = {"task": "captioner", "config": {}, "model": {"w": torch.zeros(1)}, "vocab": [],
               "step": 300, "best_scores": scores, "best_step": 250}  # fmt: skip
    save_checkpoint(payload, tmp_path / "last.pt")
    export_checkpoint(tmp_path / "last.pt", tmp_path / "exported.pt")
    for name in ("last.pt", "exported.pt"):
        saved = load_checkpoint(tmp_path / name)
        card = cards.model_card(saved)
        assert not card["recorded"]
        rows = dict(cards.card_rows(card))
        assert rows["steps"] == "300"
        assert rows["best scores"].endswith("BLEU-4 27.1 (at step 250, not these weights')"), name
        line = _summary(saved, cards.best_elsewhere(card))
        assert line.endswith("val BLEU-4 27.1 (best, at step 250)"), name
    # its best.pt, written at the best: nothing to add
    card = cards.model_card({**payload, "step": 250})
    assert "at step" not in dict(cards.card_rows(card))["best scores"]


def test_the_pickers_line_names_what_the_checkpoint_holds_and_no_loss_before_an_evaluation() -> (
    None
):
    """The picker's line for a checkpoint: its model, vocabulary, step (0 is a step) and best
    score. A character model saved before its first evaluation holds best_val_loss inf
    (`char_lm.train`): its line said "val loss inf nats/char"."""
    from crnn_app.models_dir import _summary

    model = {"cell": "lstm", "hidden_size": 16}
    payload = {"task": "char_lm", "config": {"model": model}, "vocab": ["a", "b"], "step": 5,
               "best_val_loss": math.inf}  # fmt: skip
    assert _summary(payload) == "character-level language model, lstm 16, 2 tokens, step 5"
    line = _summary({**payload, "step": 0, "best_val_loss": 1.25}, best_step=3)
    assert line.endswith("2 tokens, step 0, val loss 1.250 nats/char (best, at step 3)")
    captioner = {"task": "captioner", "config": {"model": {**model, "attention": False}},
                 "best_scores": {"BLEU-4": 27.06}}  # fmt: skip
    assert _summary(captioner) == "image captioner, lstm 16, no attention, val BLEU-4 27.1"


def test_architecture_lines_name_every_setting_that_shapes_the_model() -> None:
    base = {"encoder": "resnet101", "encoder_stages": 4, "attention": True, "cell": "gru"}
    base |= {"num_layers": 2, "hidden_size": 512}
    frozen = cards.captioner_architecture({**base, "finetune": "frozen"})
    assert frozen == (
        "ResNet-101 encoder (to layer4, frozen) + soft attention, 2-layer GRU decoder, hidden 512"
    )
    for settings, words in (
        ({"finetune": "all"}, "(to layer4, all trained)"),
        ({"finetune": "last", "finetune_stages": 1}, "(to layer4, last stage trained)"),
        ({"finetune": "last", "finetune_stages": 2}, "(to layer4, last 2 stages trained)"),
    ):
        assert words in cards.captioner_architecture({**base, **settings})
    top_down = cards.captioner_architecture({**base, "finetune": "frozen", "top_down": True})
    assert top_down == (
        "ResNet-101 encoder (to layer4, frozen) + top-down attention, attention GRU + 2-layer GRU "
        "decoder, hidden 512"
    )
    show_and_tell = cards.captioner_architecture({"encoder": "resnet50", "attention": False})
    assert show_and_tell == "ResNet-50 encoder (show and tell), recurrent decoder"
    char_model = {"cell": "rnn", "num_layers": 1, "hidden_size": 8, "input": "onehot"}
    assert cards.char_lm_architecture(char_model) == "1-layer RNN, hidden 8, one-hot input"


def test_the_checkpoint_listing_names_a_top_down_captioner(tmp_path: Path) -> None:
    model_cfg = CaptionerModelConfig(
        encoder="resnet18", encoder_stages=1, top_down=True, embed_size=4, hidden_size=6,
        attention_size=4,
    )  # fmt: skip
    cfg, vocab = CaptionerConfig(model=model_cfg), ["<pad>", "<start>", "<end>", "<unk>", "a"]
    weights = CaptionModel(cfg, len(vocab)).state_dict()
    payload = {"task": "captioner", "config": to_dict(cfg), "vocab": vocab, "model": weights}
    save_checkpoint(payload, tmp_path / "top_down.pt")
    [entry] = list_checkpoints(tmp_path).entries
    assert entry.summary.startswith("image captioner, lstm 6, top-down attention"), entry.summary


def test_data_lines_name_the_data_and_every_annotation_file() -> None:
    coco = {
        "format": "coco",
        "annotations": ["c/captions_train2014.json", "c/captions_val2014.json"],
    }
    assert cards.captioner_data(coco) == {
        "name": "captions_train2014", "path": "c/captions_train2014.json, c/captions_val2014.json",
        "size": None, "unit": "images", "synthetic_scenes": False,
    }  # fmt: skip
    flickr = cards.captioner_data({"annotations": "data/dataset_flickr8k.json"})
    assert flickr["name"] == "flickr8k" and not flickr["synthetic_scenes"]
    mine = cards.captioner_data({"annotations": "my_scenes/dataset_my_scenes.json"})
    assert mine["name"] == "my_scenes" and not mine["synthetic_scenes"]  # only the generator's file
    assert cards.char_lm_data({"path": "builtin:hihello"})["name"] == "hihello (built-in toy text)"


def test_a_recorded_card_gives_what_the_run_knew_and_the_config_the_rest(
    models: dict[str, Path],
) -> None:
    card = cards.model_card(load_checkpoint(models["carded"]))
    assert card["recorded"] and card["architecture"] == CARD["architecture"]
    rows = dict(cards.card_rows(card))
    # the card says "quotes (quotes.txt)", its config data.path q.txt: the config names the data,
    # the card gives what only the run knew (the size read, the date, the scores)
    text = Path(load_checkpoint(models["carded"])["config"]["data"]["path"])
    assert text.name == "q.txt" and rows["data"] == f"q ({text}), 1,234 characters"
    assert rows["trained"] == "2026-11-22 05:10 UTC"
    assert rows["best scores"] == "val loss 2.500 nats/char (3.607 bpc)"
    partial = cards.model_card(
        {"task": "captioner", "config": {"data": {"annotations": "x/dataset_scenes.json"}},
         "card": {"task": "captioner", "data": {"name": "my scenes"}, "steps": 7}}
    )  # fmt: skip
    # what the config decides is described from the config, in the app's words
    assert partial["data"]["name"] == "synthetic scenes (coloured shapes)"
    assert (
        partial["data"]["synthetic_scenes"] and partial["data"]["path"] == "x/dataset_scenes.json"
    )
    assert partial["steps"] == 7 and partial["trained_at"] is None


def test_readme_section_is_the_image_captioning_text() -> None:
    section = cards.readme_section(REPO / "README.md", "Image captioning")
    assert section is not None and "python -m captioner.train" in section
    assert "## " not in section  # stops before the next section
    assert cards.readme_section(REPO / "README.md", "No such section") is None


def test_card_rows_write_dates_data_and_scores_as_recorded() -> None:
    """A date with its zone is written in UTC (07:10 at +02:00 was called 07:10 UTC), one without as it was recorded (not called UTC),
    anything else as written; a data name that holds its path does not repeat it; every score
    is listed, a loss in nats/char and bits/char."""
    card = {
        "task": "char_lm",
        "data": {"name": "texts/q.txt", "path": "texts/q.txt", "size": 12345, "unit": "characters"},
        "best_scores": {"val_loss": math.log(2) * 1.5, "BLEU-4": 27.06},
        "trained_at": "2026-11-22T05:10:00",
    }
    rows = dict(cards.card_rows(card))
    assert rows["data"] == "texts/q.txt, 12,345 characters"
    assert rows["best scores"] == "val loss 1.040 nats/char (1.500 bpc), BLEU-4 27.1"
    assert rows["trained"] == "2026-11-22 05:10:00"
    for stamp, shown in [("2026-11-22T07:10:00+02:00", "2026-11-22 05:10 UTC"),
                         ("last Tuesday", "last Tuesday"), (None, "not recorded")]:  # fmt: skip
        assert dict(cards.card_rows({**card, "trained_at": stamp}))["trained"] == shown
    unscored = {**card, "best_scores": {}, "best_step": 3, "steps": 6}  # a last.pt of no score
    assert dict(cards.card_rows(unscored))["best scores"] == "not recorded"


def test_a_date_with_its_zone_is_written_in_utc_on_a_machine_in_another_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Converted to the machine's own zone, 07:10 at +02:00 was called 10:40 UTC in India."""
    monkeypatch.setenv("TZ", "IST-5:30")  # a POSIX rule: UTC+05:30, no zone database needed
    time.tzset()
    try:
        rows = dict(cards.card_rows({"task": "char_lm", "trained_at": "2026-11-22T07:10:00+02:00"}))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert rows["trained"] == "2026-11-22 05:10 UTC"


def test_best_elsewhere_is_any_other_step_the_best_was_measured_at() -> None:
    """Step 0 (an evaluation before the first update that stayed the best) is a step; -1 (no
    evaluation yet), the checkpoint's own step and a step that is no int are none."""
    assert cards.best_elsewhere({"best_step": 0, "steps": 6}) == 0
    assert cards.best_elsewhere({"best_step": 5, "steps": 6}) == 5
    for nothing in (-1, 6, None, 2.0):
        assert cards.best_elsewhere({"best_step": nothing, "steps": 6}) is None, nothing


def test_markdown_escapes_leave_text_as_written() -> None:
    """What Markdown or Streamlit would read as a sign is escaped (a list marker or heading
    underline at a line's start, ``&``, ``$``, a colon opening an emoji, a colour or an icon),
    and a code span is fenced and padded as CommonMark needs; the card's lines are escaped."""
    for text, escaped in [
        ("1) x\n 2. y", "1\\) x\n 2\\. y"),
        ("- a\n+ b\n= c", "\\- a\n\\+ b\n\\= c"),
        ("a & b $x$ ~y~ |z| <i> #h", "a \\& b \\$x\\$ \\~y\\~ \\|z\\| \\<i\\> \\#h"),
        (":smile: :red[x] :x{ a: b", "&#58;smile: &#58;red\\[x\\] &#58;x{ a: b"),
        ("my_file*.txt\\", "my\\_file\\*.txt\\\\"),
    ]:
        assert cards.escape_markdown(text) == escaped, text
    for text, code in [("a", "`a`"), ("a`b", "``a`b``"), ("x``y", "```x``y```"),
                       ("`a", "`` `a ``"), ("b`", "`` b` ``"), (" a ", "`  a  `"), ("  ", "`  `")]:  # fmt: skip
        assert cards.inline_code(text) == code, text
    card = {"task": "char_lm", "data": {"name": "*big*", "path": "my_data/x.txt"}, "recorded": True}
    assert "- **data**: \\*big\\* (my\\_data/x.txt), size not recorded" in cards.card_markdown(card)


def test_only_a_captioner_whose_card_says_so_knows_only_scenes() -> None:
    """A card that does not say (an older one, no data recorded) is no scenes-only model."""
    assert cards.knows_only_scenes({"data": {"synthetic_scenes": True}})
    for card in ({"data": {"synthetic_scenes": False}}, {"data": {}}, {"data": None}, {}):
        assert not cards.knows_only_scenes(card), card


def test_a_readme_section_runs_to_the_next_section_over_its_subsections(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# T\n## A (b)\ntext\n### Sub\nmore\n## B\nother\n", encoding="utf-8")
    assert cards.readme_section(readme, "A (b)") == "text\n### Sub\nmore"
    assert cards.readme_section(readme, "B") == "other"
    assert cards.readme_section(tmp_path / "missing.md", "A (b)") is None


def test_keep_restores_clamps_and_checks_options() -> None:
    state: dict = {}
    assert keep(state, "beam", 3, bounds=(1, 10)) == "beam" and state["beam"] == 3
    state["beam"] = 7  # the user moves the slider
    keep(state, "beam", 3, bounds=(1, 10))
    del state["beam"]  # Streamlit drops the widget's value on another page
    keep(state, "beam", 3, bounds=(1, 10))
    assert state["beam"] == 7  # back from the other page
    del state["beam"]
    keep(state, "beam", 3, bounds=(1, 5))
    assert state["beam"] == 5  # clamped into the new range
    keep(state, "beam", 3, bounds=(1, 10))
    assert state["beam"] == 7  # and given back where it fits again (it stayed 5)
    keep(state, "beam", 3, bounds=(1, 5))
    state["beam"] = 4  # the user's own value, inside the new range: nothing to give back
    keep(state, "beam", 3, bounds=(1, 5))
    keep(state, "beam", 3, bounds=(1, 10))
    assert state["beam"] == 4
    state[SAVED_PREFIX + "model"] = "gone.pt"
    keep(state, "model", "a.pt", options=["a.pt", "b.pt"])
    assert state["model"] == "a.pt"
    keep(state, "model", "b.pt", options=["a.pt", "b.pt"])  # a new first default: no following
    assert state["model"] == "a.pt"
    # another checkpoint, another default: a following value left at the default follows it (the
    # caption page kept the first checkpoint's decoding settings), one the user set stays, also
    # through a checkpoint whose default equals it
    keep(state, "beam_size", 2, follow=True)
    keep(state, "beam_size", 5, follow=True)
    assert state["beam_size"] == 5
    state["beam_size"] = 4  # the user's own
    for default in (5, 4, 2):
        keep(state, "beam_size", default, follow=True)
        assert state["beam_size"] == 4


# --------------------------------------------------------------------------------------------
# AppTest: the pages


def test_sidebar_shows_a_card_for_every_checkpoint(app: AppTest, models: dict[str, Path]) -> None:
    at = _page(app, "Generate text")
    at.selectbox(key="char_lm_checkpoint").set_value("carded/model.pt")
    _run(at)
    sidebar = " ".join(element.value for element in at.sidebar.caption)
    assert "**architecture**: 1-layer LSTM, hidden 16, embedding 8" in sidebar
    assert "1,234 characters" in sidebar and "2026-11-22 05:10 UTC" in sidebar
    assert "older checkpoint" not in sidebar
    at.selectbox(key="char_lm_checkpoint").set_value("uncarded/model.pt")
    _run(at)
    sidebar = " ".join(element.value for element in at.sidebar.caption)
    assert "**architecture**: 1-layer LSTM, hidden 16, embedding 8" in sidebar  # from its config
    assert "**trained**: not recorded" in sidebar and "older checkpoint without a card" in sidebar
    saved = load_checkpoint(models["uncarded"])["best_val_loss"]  # such a checkpoint's own field
    assert f"**best scores**: val loss {saved:.3f} nats/char" in sidebar, sidebar


def _replace(path: Path, source: Path) -> None:
    """Overwrite ``path`` with ``source``'s bytes, a second later by its modification time (as a
    training run rewrites its best.pt), so that a cache keyed on the file sees a new file."""
    before = path.stat().st_mtime_ns
    shutil.copy(source, path)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_a_checkpoint_rewritten_in_place_gets_a_fresh_card_and_trace(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidebar's card and the Inside page's trace are cached by the file's path, modification
    time and size: a checkpoint rewritten under the same name (a run saving a better best.pt, of
    the same size when only the weights change) is described and traced anew, never served from
    the old file's cache entry."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    served = models_dir / "m.pt"
    shutil.copy(models["uncarded"], served)
    payload = load_checkpoint(models["carded"])
    for value in payload["model"].values():
        value.mul_(0.5)  # in place: the tensors stored as before, so the file keeps its size
    retrained = tmp_path / "retrained.pt"  # the same architecture, other weights
    save_checkpoint(payload, retrained)
    assert retrained.stat().st_size == models["carded"].stat().st_size
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = _page(AppTest.from_file(APP, default_timeout=TIMEOUT), "Inside a character model")

    def sidebar() -> str:
        return " ".join(element.value for element in at.sidebar.caption)

    assert "older checkpoint without a card" in sidebar()
    _replace(served, models["carded"])
    _run(at)
    assert "1,234 characters" in sidebar() and "older checkpoint" not in sidebar()

    text = 'he said "no".\n'
    at.text_area(key="inside_text:m.pt").set_value(text)
    _run(at)

    def expected(source: Path) -> list[str]:
        model, vocab, _ = load_char_lm(source)
        probabilities, _ = inside.char_probabilities(inside.trace_text(model, vocab, text), vocab)
        return [f"{p:.3f}" for p in probabilities]

    def shown() -> list[str]:
        return [re.search(r"p = ([0-9.]+)", t).group(1) for t in _titles(at.html[0].proto.body)]

    assert shown() == expected(models["carded"]) != expected(retrained)
    _replace(served, retrained)
    _run(at)
    assert shown() == expected(retrained)

    served.write_bytes(bytes(served.stat().st_size))  # damaged in place: zeros, the same size
    os.utime(served, ns=(served.stat().st_mtime_ns + 10**9,) * 2)
    _run(at)
    assert any(t.value.startswith("skipped: m.pt: ") for t in at.text)
    assert "No char_lm checkpoint" in " ".join(element.value for element in at.info)


def test_curves_page_plots_runs_and_skips_a_half_written_line(
    app: AppTest, models: dict[str, Path]
) -> None:
    at = _page(app, "Training curves")
    runs = at.multiselect(key="curve_runs")
    assert {"runs/live", "runs/derived"} <= set(runs.options)
    assert ".hidden" not in runs.options
    runs.set_value(["runs/live"])
    _run(at)
    captions = " ".join(element.value for element in at.caption)
    assert "**runs/live**: step 30, 3 train and 1 eval lines, still training" in captions
    charts = {_panel(spec): rows for spec, rows in _charts(at)}
    assert set(charts) == {"loss", "learning rate", "throughput", "gradient norm"}
    [loss_rows] = charts["loss"]
    assert sorted((row["series"], row["step"]) for row in loss_rows) == [
        ("train loss", 10), ("train loss", 20), ("train loss", 30), ("val loss", 20),
    ]  # fmt: skip

    # the run goes on: the page rereads the grown file
    path = models["dir"] / "runs" / "live" / METRICS_FILE
    grown = path.read_text().rsplit("\n", 1)[0] + "\n" + json.dumps(_train_line(40, time.time()))
    path.write_text(grown + "\n")
    _run(at)
    assert "step 40, 4 train and 1 eval lines" in " ".join(e.value for e in at.caption)

    at.radio(key="curve_x").set_value("time")
    at.multiselect(key="curve_runs").set_value(["runs/live", "runs/derived"])
    _run(at)
    [loss] = [rows for spec, rows in _charts(at) if _panel(spec) == "loss"]
    assert {row["run"] for row in loss[0]} == {"runs/live"}  # the derived run has no wall time
    # both of the derived run's lines carry the same source note: the caption names it once
    [derived] = [e.value for e in at.caption if e.value.startswith("**runs/derived**")]
    assert derived.endswith(" (a note)") and derived.count("(a note)") == 1, derived
    at.multiselect(key="curve_runs").set_value(["runs/derived"])
    _run(at)
    assert "no time" in " ".join(e.value for e in at.info) and not _charts(at)


def test_curves_page_redraws_on_a_timer_only_while_following_runs(
    app: AppTest, record_calls
) -> None:
    """The toggle "Follow runs in progress" (on by default) draws the curves in a fragment that
    Streamlit reruns every few seconds (the period the toggle's help names); off, the curves are
    drawn once and stay still."""
    import streamlit

    fragments = record_calls(streamlit, "fragment")
    at = _page(app, "Training curves")
    follow = at.toggle(key="curve_follow")
    assert follow.value is True
    period = float(re.search(r"Redraw every ([0-9.]+) s", follow.proto.help).group(1))
    assert period > 0 and fragments[-1].kwargs == {"run_every": period}
    follow.set_value(False)
    _run(at)
    assert fragments[-1].kwargs == {"run_every": None} and _charts(at)
    at.radio(key="page").set_value("Generate text")
    _run(at)
    at.radio(key="page").set_value("Training curves")
    _run(at)
    assert at.toggle(key="curve_follow").value is False  # kept across the page switch
    assert fragments[-1].kwargs == {"run_every": None}


def test_a_run_whose_metrics_vanish_after_listing_is_a_warning(
    app: AppTest, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run removed between the listing of runs and the reading of its file (a user cleaning up
    while the page follows it): a warning names it, and the other runs are still drawn."""
    real = curves.find_runs
    monkeypatch.setattr(
        curves, "find_runs", lambda root: ([*real(root)[0], "runs/vanished"], real(root)[1] + 1)
    )
    at = _page(app, "Training curves")
    at.multiselect(key="curve_runs").set_value(["runs/derived", "runs/vanished"])
    _run(at)
    [warning] = [e.value for e in at.warning]
    assert warning.startswith("runs/vanished: ") and METRICS_FILE in warning, warning
    assert any(e.value.startswith("**runs/derived**") for e in at.caption)
    assert [_panel(spec) for spec, _ in _charts(at)] == ["loss"]


def test_remembered_runs_that_are_gone_give_way_to_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs picked are kept across page switches; when one of them has gone meanwhile (its
    folder deleted), the page falls back to the default pick rather than failing on a choice
    that is no longer offered."""
    models_dir = tmp_path / "models"
    for name in ("a", "b", "c"):
        _write_lines(models_dir / name / METRICS_FILE, [_train_line(10, time.time())])
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = _page(AppTest.from_file(APP, default_timeout=TIMEOUT), "Training curves")
    assert at.multiselect(key="curve_runs").value == ["a", "b", "c"]  # all (few) by default
    at.multiselect(key="curve_runs").set_value(["a", "c"])
    _run(at)
    at.radio(key="page").set_value("Generate text")
    _run(at)
    at.radio(key="page").set_value("Training curves")
    _run(at)
    assert at.multiselect(key="curve_runs").value == ["a", "c"]  # kept
    at.radio(key="page").set_value("Generate text")
    _run(at)
    shutil.rmtree(models_dir / "c")
    at.radio(key="page").set_value("Training curves")
    _run(at)
    runs = at.multiselect(key="curve_runs")
    assert runs.options == ["a", "b"] and runs.value == ["a", "b"]
    captions = [e.value for e in at.caption if e.value.startswith("**")]
    assert [caption.split("**")[1] for caption in captions] == ["a", "b"]


def test_a_long_run_reaches_the_page_thinned_and_follows_its_growth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of more lines than a chart needs (a day of a fast run has tens of thousands) is sent
    to the browser thinned (`recurrent.plot.thin`): each series at most `MAX_POINTS` points, with
    its first and last step and a spike; the status counts every line, and a line written since
    is read on the next redraw."""
    models_dir, now = tmp_path / "models", time.time()
    lines = [_train_line(step, now - 60) for step in range(1, 5001)]
    lines[2345]["loss"] = 99.0
    lines += [{**_train_line(step, now - 60), "kind": "eval", "scores": {"val_loss": 1.0 / step}}
              for step in range(100, 5001, 100)]  # fmt: skip
    path = models_dir / "long" / METRICS_FILE
    _write_lines(path, lines)
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = _page(AppTest.from_file(APP, default_timeout=TIMEOUT), "Training curves")
    assert "step 5,000, 5000 train and 50 eval lines" in " ".join(e.value for e in at.caption)
    charts = {_panel(spec): rows for spec, [rows] in _charts(at)}
    assert set(charts) == {"loss", "learning rate", "throughput", "gradient norm"}
    for panel, rows in charts.items():
        for series in {row["series"] for row in rows}:
            steps = [row["step"] for row in rows if row["series"] == series]
            assert len(steps) <= MAX_POINTS and {steps[0], steps[-1]} <= {1, 100, 5000}, panel
    assert max(row["value"] for row in charts["loss"]) == 99.0
    assert len([row for row in charts["loss"] if row["series"] == "val loss"]) == 50  # whole

    with path.open("a") as stream:
        stream.write(json.dumps(_train_line(5001, time.time())) + "\n")
    _run(at)
    assert "step 5,001, 5001 train and 50 eval lines" in " ".join(e.value for e in at.caption)
    [loss] = [rows for spec, [rows] in _charts(at) if _panel(spec) == "loss"]
    assert 5001 in {row["step"] for row in loss}


def _rows(frame: pd.DataFrame) -> list:
    """A frame's rows as a sorted list (NaN as None), to compare row sets."""
    values = frame.astype(object).where(frame.notna(), None).values.tolist()
    return sorted(map(tuple, values), key=repr)


TAIL_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4)),  # whole lines
        st.tuples(st.just("partial"), st.integers(1, 60)),  # the start of a line, no newline
        st.tuples(st.just("partial"), st.just(-1)),  # a whole line but for its newline
        st.tuples(st.just("finish"), st.just(0)),  # the rest of that line
        st.tuples(st.just("garbage"), st.just(0)),  # a line that is not JSON
        st.tuples(st.just("replace"), st.integers(0, 6)),  # a new file of the first n lines
        st.tuples(st.just("edit"), st.integers(0, 10**6)),  # one byte changed in place
        st.tuples(st.just("truncate"), st.integers(0, 10**6)),  # cut in place
    ),
    max_size=14,
)


@hypothesis_settings(max_examples=60, deadline=None)
@given(ops=TAIL_OPS)
def test_following_a_file_reads_what_reading_it_whole_reads(tmp_path_factory, ops) -> None:
    """After any writes, the page's reader of a run (`MetricsTail`, which parses only what was
    appended) gives what reading the whole file gives: the same summary and the same rows. The
    writes are what a training run does (lines appended, a line caught half-written, a new file
    on resume or restart) and what it never does (a byte changed or the file cut in place)."""
    path = tmp_path_factory.mktemp("tail") / METRICS_FILE
    path.write_bytes(b"")
    tail, step, pending = MetricsTail(path, "run"), 0, b""

    def line() -> bytes:
        nonlocal step
        step += 1
        return (json.dumps({**_train_line(step, 1000.0), "source": f"s{step % 3}"}) + "\n").encode()

    for op, number in ops:
        data = path.read_bytes()
        if op == "append":
            data += pending + b"".join(line() for _ in range(number))
            pending = b""
        elif op == "partial" and not pending:
            whole = line()
            data, pending = data + whole[:number], whole[number:]
        elif op == "finish":
            data, pending = data + pending, b""
        elif op == "garbage":
            data += pending + b'{"kind": "train", "st\n'
            pending = b""
        elif op == "replace":
            kept = b"".join(data.splitlines(keepends=True)[:number])
            (path.parent / "new").write_bytes(kept)
            os.replace(path.parent / "new", path)
            data, pending = kept, b""
        elif op in ("edit", "truncate") and data:
            at = number % len(data)
            data = data[:at] + (b"" if op == "truncate" else b"}" + data[at + 1 :])
            pending = b""
        if op not in ("replace",):
            with path.open("r+b") as stream:  # in place: the same file
                stream.write(data)
                stream.truncate()
        summary, frame = tail.read()
        records = read_metrics(path)
        assert summary == summarize(records), ops
        assert _rows(frame) == _rows(metrics_frame({"run": records})), ops


def test_find_runs_and_status(tmp_path: Path) -> None:
    for name in ("b", "a/x", ".hidden", "a/features", "features"):
        _write_lines(tmp_path / name / METRICS_FILE, [])
    (tmp_path / "a" / "features" / "meta.json").write_text("{}")  # a cache; "features": a run
    assert find_runs(tmp_path) == (["a/x", "b", "features"], 3)
    now = 1000.0
    lines = [{"kind": "train", "step": 5, "timestamp": 990.0}, {"kind": "eval", "step": 5}]
    assert summarize(lines).status(now) == "step 5, 1 train and 1 eval lines"
    lines.append({"kind": "train", "step": 6, "timestamp": 995.0, "source": "x"})
    assert summarize(lines).status(now).endswith("still training (last line 5 s ago)")
    assert summarize(lines).notes == ("x",)
    assert summarize([]).status(now) == "no metrics lines yet"
    lines += [{"kind": "eval", "step": 6, "source": "y"}, {"kind": "eval", "step": 6, "source": 3}]
    lines.append({"kind": "eval", "step": 6, "source": "x"})
    assert summarize(lines).notes == ("x", "y")  # each once, in order; a non-text note is none
    assert summarize(lines).status(now) == "step 6, 2 train and 4 eval lines"  # no timestamp


def test_find_runs_offers_the_latest_runs_of_a_folder_of_too_many(tmp_path: Path) -> None:
    """More runs than the page offers: those whose metrics changed last, in name order, and the
    count of all (the first 100 by name were offered, without a word, hiding the newest)."""
    for age, name in enumerate(["e", "d", "c", "b", "a"]):  # "e" written last
        path = tmp_path / name / METRICS_FILE
        _write_lines(path, [])
        os.utime(path, ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    assert find_runs(tmp_path, max_runs=3) == (["c", "d", "e"], 5)
    assert find_runs(tmp_path) == (["a", "b", "c", "d", "e"], 5)


def test_the_picker_lists_the_latest_checkpoints_of_a_folder_of_too_many(tmp_path: Path) -> None:
    """More checkpoint files than the app lists: those written last, in name order, as the
    curves page offers its runs (the first ones by name were listed, hiding the newest runs)."""
    for age, name in enumerate(["e", "d", "c", "b", "a"]):  # "e" written last
        path = tmp_path / name / "best.pt"
        path.parent.mkdir()
        path.write_bytes(b"")
        os.utime(path, ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    listing = list_checkpoints(tmp_path, describe=lambda path: ("char_lm", "", {}), max_files=3)
    assert [entry.name for entry in listing.entries] == ["c/best.pt", "d/best.pt", "e/best.pt"]
    assert listing.truncated
    listing = list_checkpoints(tmp_path, describe=lambda path: ("char_lm", "", {}))
    assert len(listing.entries) == 5 and not listing.truncated


def test_the_listing_says_by_its_name_why_each_file_is_skipped(tmp_path: Path) -> None:
    """A file `describe` refuses is listed by its name with the reason on one line (its full
    path taken out), one it cannot read says so, and a folder of exactly ``max_files`` files is
    listed whole, not cut."""
    for name in ("a.pt", "b.pt", "c.pt"):
        (tmp_path / name).write_bytes(b"")

    def describe(path: Path) -> tuple[str, str, dict]:
        if path.name == "a.pt":
            raise UserError(f"{path} is damaged:\n  its zip is cut short")
        if path.name == "b.pt":
            raise PermissionError(13, "Permission denied", str(path))
        return "char_lm", "", {}

    listing = list_checkpoints(tmp_path, describe=describe, max_files=3)
    assert listing.skipped == [
        ("a.pt", "a.pt is damaged: its zip is cut short"),
        ("b.pt", "cannot be read (Permission denied)"),
    ]
    assert [entry.name for entry in listing.entries] == ["c.pt"] and not listing.truncated


def test_the_picker_keeps_the_files_written_last_whatever_their_names(tmp_path: Path) -> None:
    """Cut to ``max_files``, the listing keeps the files written last, not the last by name."""
    for age, name in enumerate(["a", "c", "d", "b"]):  # "a" written last, "b" first
        path = tmp_path / f"{name}.pt"
        path.write_bytes(b"")
        os.utime(path, ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    listing = list_checkpoints(tmp_path, describe=lambda path: ("char_lm", "", {}), max_files=2)
    assert [entry.name for entry in listing.entries] == ["a.pt", "c.pt"] and listing.truncated


def test_the_picker_dates_a_link_by_its_target_and_a_broken_one_by_itself(tmp_path: Path) -> None:
    """Only ``*.pt`` files count. A link to a checkpoint is as new as the checkpoint; a broken
    link is as new as the link (it is listed, as broken), not the oldest file."""

    def stamp(path: Path, age: int) -> None:
        os.utime(path, ns=(10**18 - age * 10**9,) * 2, follow_symlinks=False)

    for name in ("notes.pt.bak", "x.ptx"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "old.pt").write_bytes(b"")
    stamp(tmp_path / "old.pt", 5)
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "target.pt"
    target.write_bytes(b"")
    stamp(target, 1)
    (tmp_path / "link.pt").symlink_to(target)
    stamp(tmp_path / "link.pt", 9)  # the link is older than old.pt, its target newer
    (tmp_path / "broken.pt").symlink_to(tmp_path / "gone")
    stamp(tmp_path / "broken.pt", 2)
    listing = list_checkpoints(tmp_path, describe=lambda path: ("char_lm", "", {}), max_files=3)
    assert [entry.name for entry in listing.entries] == ["kept/target.pt", "link.pt"]
    assert [name for name, _ in listing.skipped] == ["broken.pt"] and listing.truncated
    assert len(list_checkpoints(tmp_path, describe=lambda path: ("char_lm", "", {})).entries) == 3


def test_a_pt_link_to_another_kind_of_file_is_skipped_not_the_whole_listing(
    tmp_path: Path,
) -> None:
    """A ``.pt`` name linked to a file of the folder that is no ``.pt`` file: the listing raised
    `checkpoint_path`'s refusal, and the pages showed that error instead of every checkpoint."""
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "odd.pt").symlink_to(tmp_path / "notes.txt")
    (tmp_path / "good.pt").write_bytes(b"")
    listing = list_checkpoints(tmp_path, describe=lambda path: ("char_lm", "", {}))
    assert [entry.name for entry in listing.entries] == ["good.pt"]
    assert listing.skipped == [
        ("odd.pt", "links to a file that is not a .pt checkpoint, so it is never loaded")
    ]


def test_the_picker_lists_200_checkpoint_files(tmp_path: Path) -> None:
    """The README's number: 200 files listed, the 201st cut."""
    for number in range(201):
        (tmp_path / f"run{number:03d}.pt").write_bytes(b"")
    listing = list_checkpoints(tmp_path, describe=lambda path: ("char_lm", "", {}))
    assert len(listing.entries) == 200 and listing.truncated


def test_the_pickers_line_of_a_last_pt_after_its_best_says_where_the_best_was(
    tmp_path: Path,
) -> None:
    """Read from the file (`describe_checkpoint`), a last.pt written after its run's best says
    the step the best score was measured at, as its card does."""
    from char_lm.config import CharLMConfig

    cfg = CharLMConfig(model=ModelConfig(cell="gru", hidden_size=6, embed_size=4))
    payload = {"task": "char_lm", "config": to_dict(cfg), "vocab": ["a", "b", "c"],
               "model": CharLM(cfg.model, 3).state_dict(), "step": 6, "best_val_loss": 1.5,
               "progress": {"best_step": 3}}  # fmt: skip
    save_checkpoint(payload, tmp_path / "last.pt")
    [entry] = list_checkpoints(tmp_path).entries
    assert entry.summary.endswith("step 6, val loss 1.500 nats/char (best, at step 3)")


def test_a_checkpoint_rewritten_within_the_same_mtime_gets_another_cache_key(
    tmp_path: Path,
) -> None:
    """On a file system with coarse timestamps a file rewritten at once keeps its mtime: its
    size still tells the caches that it changed."""
    from crnn_app.models_dir import file_key

    path = tmp_path / "last.pt"
    path.write_bytes(b"one")
    os.utime(path, ns=(10**18, 10**18))
    before = file_key(path)
    path.write_bytes(b"three")
    os.utime(path, ns=(10**18, 10**18))
    assert file_key(path) != before and file_key(path) == (10**18, 5)


def test_a_captioner_trained_from_pretrained_weights_is_listed_without_fetching_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing checks a checkpoint's tensors against its config's architecture only: the
    encoder's pretrained weights its config names are not loaded (nor downloaded: none here)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_cache"))
    model_cfg = CaptionerModelConfig(encoder="resnet18", encoder_stages=1, embed_size=4,
                                     hidden_size=6, attention_size=4)  # fmt: skip
    cfg, vocab = CaptionerConfig(model=model_cfg), ["<pad>", "<start>", "<end>", "<unk>", "a"]
    weights = CaptionModel(cfg, len(vocab)).state_dict()
    config = to_dict(cfg)
    config["model"]["weights"] = "ResNet18_Weights.DEFAULT"
    models_dir = tmp_path / "models"
    save_checkpoint({"task": "captioner", "config": config, "vocab": vocab, "model": weights},
                    models_dir / "pretrained.pt")  # fmt: skip
    listing = list_checkpoints(models_dir)
    assert [entry.name for entry in listing.entries] == ["pretrained.pt"], listing.skipped


def test_the_curves_page_says_when_it_offers_some_runs_only(
    app: AppTest, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = curves.find_runs
    monkeypatch.setattr(curves, "find_runs", lambda root: real(root, max_runs=1))
    at = _page(app, "Training curves")
    assert len(at.multiselect(key="curve_runs").options) == 1
    [said] = [c.value for c in at.caption if " runs are offered" in c.value]
    found = real(models["dir"])[1]
    assert found > 1 and said.startswith(
        f"1 of the {found} runs are offered: those whose metrics changed last"
    ), said


def test_a_run_whose_lines_hold_no_value_yet_is_summarized_then_drawn(tmp_path: Path) -> None:
    """A diverged run's first lines can hold no value to draw (an evaluation whose loss is NaN,
    no scores): the page said "No objects to concatenate" and dropped the run. Its summary
    counts them, its frame stays empty, and the first value drawn arrives as it is written."""
    path = tmp_path / "run" / METRICS_FILE
    nan_eval = {"kind": "eval", "step": 50, "time_s": 5.0, "scores": {"val_loss": math.nan}}
    _write_lines(path, [nan_eval])
    tail = MetricsTail(path, "run")
    summary, frame = tail.read()
    assert (summary.step, summary.trains, summary.evals, frame.empty) == (50, 0, 1, True)
    with path.open("a") as handle:
        handle.write(json.dumps({"kind": "eval", "step": 60, "scores": {}}) + "\n")
    summary, frame = tail.read()
    assert (summary.step, summary.evals, frame.empty) == (60, 2, True)
    with path.open("a") as handle:
        handle.write(json.dumps({"kind": "train", "step": 70, "loss": 2.5}) + "\n")
    summary, frame = tail.read()
    assert (summary.step, summary.trains) == (70, 1)
    assert frame[["step", "series", "value"]].values.tolist() == [[70, "train loss", 2.5]]


def test_a_timestamp_no_float_holds_is_no_timestamp() -> None:
    """JSON allows an int of 400 digits as a timestamp: the page dropped the run (OverflowError)."""
    summary = summarize([{"kind": "train", "step": 3, "timestamp": 10**400}])
    assert summary.stamp is None and summary.status(1000.0) == "step 3, 1 train and 0 eval lines"


def test_a_run_stamped_in_the_future_is_not_shown_as_training() -> None:
    """A last line stamped ahead of the clock (a run copied from a machine whose clock runs
    fast) says nothing about whether the run is still writing: only a line at most
    LIVE_WITHIN_S old, and not from the future, marks a run as still training."""
    now = 1000.0

    def status(age: float) -> str:
        return summarize([{"kind": "train", "step": 1, "timestamp": now - age}]).status(now)

    assert status(0).endswith("still training (last line 0 s ago)")
    assert status(LIVE_WITHIN_S).endswith(f"still training (last line {LIVE_WITHIN_S:.0f} s ago)")
    for age in (-1, -LIVE_WITHIN_S / 2, LIVE_WITHIN_S + 1):
        assert status(age) == "step 1, 1 train and 0 eval lines", age


def test_find_runs_never_offers_a_metrics_file_linked_from_outside(tmp_path: Path) -> None:
    """A metrics.jsonl that is a symlink to a file outside the models directory is not a run of
    it (the app reads nothing from elsewhere, as for checkpoints); a link that stays inside is."""
    models_dir = tmp_path / "models"
    _write_lines(models_dir / "a" / METRICS_FILE, [])
    _write_lines(tmp_path / "outside" / METRICS_FILE, [])
    (models_dir / "linked_out").mkdir()
    (models_dir / "linked_out" / METRICS_FILE).symlink_to(tmp_path / "outside" / METRICS_FILE)
    (models_dir / "linked_in").mkdir()
    (models_dir / "linked_in" / METRICS_FILE).symlink_to(models_dir / "a" / METRICS_FILE)
    (models_dir / "dangling").mkdir()
    (models_dir / "dangling" / METRICS_FILE).symlink_to(tmp_path / "nowhere.jsonl")
    assert find_runs(models_dir) == (["a", "linked_in"], 2)


def test_inside_page_colours_text_by_surprise_and_by_units(
    app: AppTest, models: dict[str, Path]
) -> None:
    at = _page(app, "Inside a character model")
    at.selectbox(key="char_lm_checkpoint").set_value("quotes_lstm/best.pt")
    _run(at)
    text = 'she said "hi there".\nthen "no" he said.\n'
    text_key = "inside_text:quotes_lstm/best.pt"
    at.text_area(key=text_key).set_value(text)
    _run(at)
    model, vocab, _ = load_char_lm(models["lstm"])
    traced = inside.trace_text(model, vocab, text)
    probabilities, candidates = inside.char_probabilities(traced, vocab)
    # the summary: the mean surprise over the characters that have a probability, in bits and nats
    known = [p for p in probabilities if p is not None]
    mean_bits = sum(-math.log2(p) for p in known) / len(known)
    mean_nats = sum(-math.log(p) for p in known) / len(known)
    summary = f"{len(text)} characters, {mean_bits:.2f} bits per character on average "
    assert any(c.value.startswith(summary + f"({mean_nats:.3f} nats)") for c in at.caption)

    surprise, units = (element.proto.body for element in at.html)
    titles = _titles(surprise)
    assert len(titles) == len(text)
    for title, probability, top in zip(titles, probabilities, candidates, strict=True):
        assert f"p = {probability:.3f}" in title
        assert title.split("next: ")[1].startswith(f"{top[0][0]!r} {top[0][1]:.2f}")
    at.slider(key="inside_position").set_value(4)
    _run(at)
    [table] = [t.value for t in at.table if "next character" in t.value.columns]
    assert list(table["next character"]) == [repr(c) for c, _ in candidates[3]]
    shown = f"Character 4: `{text[3]!r}`, p = {probabilities[3]:.3f}"
    assert any(element.value.startswith(shown) for element in at.markdown)

    # unit view: layer 1, c, unit 5
    at.radio(key="inside_state").set_value("c")
    at.number_input(key="inside_unit").set_value(5)
    _run(at)
    values = traced.trace.layers[0].c[traced.rows(), 5].tolist()
    unit_titles = _titles(at.html[1].proto.body)
    assert [float(title.split(": ")[1]) for title in unit_titles] == pytest.approx(values, abs=1e-3)
    # c is unbounded: its colours are scaled by its largest magnitude over the text, as said (a
    # unit whose largest magnitude is negative too: its scale is not its largest value)
    cells = traced.trace.layers[0].c[traced.rows()]
    negative = int((cells.amin(dim=0) + cells.amax(dim=0)).argmin())
    assert -float(cells[:, negative].min()) > float(cells[:, negative].max())
    for unit in (5, negative):
        at.number_input(key="inside_unit").set_value(unit)
        _run(at)
        values = cells[:, unit].tolist()
        scale = max(abs(value) for value in values)
        said = f"(scaled by its largest magnitude here, {scale:.2f})."
        assert any(element.value.endswith(said) for element in at.markdown), unit
        colours = re.findall(r'background:([^"]*)"', at.html[1].proto.body)
        assert colours == [inside.activation_colour(value / scale) for value in values], unit

    # interesting units: the table is rank_units', and the button shows the best one
    at.selectbox(key="inside_feature").set_value("inside quotes")
    _run(at)
    ranked = inside.rank_units(traced, "inside quotes")
    [table] = [t.value for t in at.table if "correlation" in t.value.columns]
    assert list(table["unit"]) == [score.unit for score in ranked]
    assert list(table["correlation"]) == pytest.approx([s.correlation for s in ranked], abs=1e-3)
    at.selectbox(key="inside_feature").set_value("position in line")  # not the default feature
    _run(at)
    [table] = [t.value for t in at.table if "correlation" in t.value.columns]
    assert list(table["unit"]) == [s.unit for s in inside.rank_units(traced, "position in line")]
    at.selectbox(key="inside_feature").set_value("inside quotes")
    _run(at)
    at.button(key="inside_show_best").click()
    _run(at)
    best = ranked[0]
    assert at.number_input(key="inside_unit").value == best.unit
    assert at.radio(key="inside_state").value == best.state
    assert at.number_input(key="inside_layer").value == best.layer + 1

    # gate saturation: one point per unit of each sigmoid gate, the library's fractions
    [(spec, datasets)] = [chart for chart in _charts(at) if "hconcat" in chart[0]]
    points = [row for rows in datasets for row in rows]
    expected = inside.gate_saturation(traced.trace, traced.rows())
    assert len(points) == len(expected) == 3 * 16
    key = lambda row: (row["gate"], row["unit"])  # noqa: E731
    for got, want in zip(sorted(points, key=key), sorted(expected, key=key), strict=True):
        assert got["left"] == pytest.approx(want["left"]) and got["right"] == want["right"]


def test_the_interesting_units_table_gives_the_correlations_to_its_4_decimals(
    app: AppTest, models: dict[str, Path]
) -> None:
    """The table writes 4 decimals: each correlation is numpy's Pearson coefficient of the unit's
    state with the feature to all 4 (rounded to 3, the 4th was always a false 0)."""
    text = 'she said "hi there".\nthen "no" he said.\n'
    at = _inside(app, "quotes_lstm/best.pt", text)
    at.selectbox(key="inside_feature").set_value("inside quotes")
    _run(at)
    [table] = [t.value for t in at.table if "correlation" in t.value.columns]
    model, vocab, _ = load_char_lm(models["lstm"])
    traced = inside.trace_text(model, vocab, text)
    feature = inside.text_features(text)["inside quotes"]
    states = inside.unit_states(traced)
    for layer, state, unit, shown in zip(
        table["layer"], table["state"], table["unit"], table["correlation"], strict=True
    ):
        values = states[(layer - 1, state)][:, unit].astype(np.float64)
        assert shown == pytest.approx(np.corrcoef(values, feature)[0, 1], abs=5e-5 + 1e-6)


def test_inside_page_shows_the_layer_asked_for(tmp_path: Path, monkeypatch) -> None:
    """A 2-layer model: the unit view colours by the layer picked, and the best unit's button
    picks its layer (the other tests' models have one layer, where any layer is the first)."""
    path = train_tiny_char_lm(
        tmp_path / "models" / "two", tmp_path / "q.txt", "model.num_layers=2", text=QUOTES_TEXT
    )
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "models"))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = _page(AppTest.from_file(APP, default_timeout=TIMEOUT), "Inside a character model")
    text = 'she said "hi".\n'
    at.text_area(key="inside_text:two/best.pt").set_value(text)
    at.number_input(key="inside_layer").set_value(1)
    at.number_input(key="inside_unit").set_value(3)
    _run(at)
    model, vocab, _ = load_char_lm(path)
    traced = inside.trace_text(model, vocab, text)
    for layer in (0, 1):
        at.number_input(key="inside_layer").set_value(layer + 1)
        _run(at)
        values = traced.trace.layers[layer].h[traced.rows(), 3].tolist()
        shown = [float(title.split(": ")[1]) for title in _titles(at.html[1].proto.body)]
        assert shown == pytest.approx(values, abs=1e-3), layer
    at.number_input(key="inside_layer").set_value(1)
    layers = {
        f: [u.layer for u in inside.rank_units(traced, f)[:1]] for f in inside.text_features("")
    }
    feature = next(f for f, best in layers.items() if best == [1])
    at.selectbox(key="inside_feature").set_value(feature)  # its best unit is in layer 2
    _run(at)
    at.button(key="inside_show_best").click()
    _run(at)
    assert at.number_input(key="inside_layer").value == 2


def test_inside_page_reads_a_model_without_a_newline_and_averages_over_known_characters(
    app: AppTest, models: dict[str, Path]
) -> None:
    """A model without a newline in its vocabulary (as hihello's) opens on the Inside page (its
    sample of its own starts from its first character, as generate() has no newline to start
    from), and reads a text from nothing: its first character has no probability, so the bits
    (and nats) per character average over the others, and the slider's first character says so."""
    at = _page(app, "Inside a character model")
    at.selectbox(key="char_lm_checkpoint").set_value("no_newline/model.pt")
    _run(at)
    model, vocab, _ = load_char_lm(models["no_newline"])
    sample = generate(
        model, vocab, vocab[0], 399, temperature=0.8, generator=torch.Generator().manual_seed(0)
    )
    assert at.text_area(key="inside_text:no_newline/model.pt").value == vocab[0] + "".join(sample)
    text = 'he said "no" to me.'
    at.text_area(key="inside_text:no_newline/model.pt").set_value(text)
    _run(at)
    assert "\n" not in vocab
    probabilities, _ = inside.char_probabilities(inside.trace_text(model, vocab, text), vocab)
    assert probabilities[0] is None and None not in probabilities[1:]
    mean_bits = sum(-math.log2(p) for p in probabilities[1:]) / (len(text) - 1)
    mean_nats = sum(-math.log(p) for p in probabilities[1:]) / (len(text) - 1)
    summary = f"{len(text)} characters, {mean_bits:.2f} bits per character on average "
    assert any(c.value.startswith(summary + f"({mean_nats:.3f} nats)") for c in at.caption)
    shown = "Character 1: `'h'`, the first character (no context)."
    assert any(element.value.startswith(shown) for element in at.markdown)


def test_generate_page_starts_a_model_without_a_newline_from_its_first_character(
    app: AppTest, models: dict[str, Path]
) -> None:
    """The Generate page's prompt for a model without a newline (as hihello's), whose vocabulary
    lacks the default ROMEO: too, is its first character, which generates; an empty prompt,
    which cannot (it starts from a newline), is never left in the box, also when kept from
    another model (the page said both that the text starts from a new line and that it cannot)."""
    at = _page(app, "Generate text")
    at.selectbox(key="char_lm_checkpoint").set_value("no_newline/model.pt")
    _run(at)
    _, vocab, _ = load_char_lm(models["no_newline"])
    assert at.text_area(key="prompt").value == vocab[0]
    at.button(key="generate").click()
    _run(at)
    assert at.code[0].value.startswith(vocab[0]) and not at.info
    at.text_area(key="prompt").set_value("")
    _run(at)
    assert at.text_area(key="prompt").value == vocab[0]


def test_an_emptied_prompt_stays_empty_for_a_model_with_a_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """A model whose vocabulary has a newline (and the letters of ROMEO:, the default prompt)
    generates from an empty prompt, from a new line: the emptied box is kept, not refilled with
    ROMEO: (kills: the prompt's check `bool(text) or "\\n" in vocab` cut to `bool(text)`)."""
    best = train_tiny_char_lm(tmp_path / "run", tmp_path / "text.txt")
    payload = load_checkpoint(best)
    vocab = payload["vocab"]
    assert "\n" in vocab
    # the default prompt's letters, in place of five others (the weights stay as they are)
    others = [char for char in vocab if char not in "ROMEO:\n"][:5]
    swap = dict(zip(others, "ROME:", strict=True))
    payload["vocab"] = [swap.get(char, char) for char in vocab]
    assert len(set(payload["vocab"])) == len(vocab) and set("ROMEO:") <= set(payload["vocab"])
    models_dir = tmp_path / "models"
    save_checkpoint(payload, models_dir / "romeo.pt")
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    at.radio(key="page").set_value("Generate text")
    _run(at)
    assert at.text_area(key="prompt").value == "ROMEO:"
    at.text_area(key="prompt").set_value("")
    _run(at)
    assert at.text_area(key="prompt").value == ""
    at.button(key="generate").click()
    _run(at)
    assert "starts from the beginning of a new line" in " ".join(i.value for i in at.info)
    assert at.code[0].value.strip()  # a text came


def test_inside_page_plots_the_saturation_of_gates_that_saturate(
    app: AppTest, models: dict[str, Path]
) -> None:
    """The gate-saturation chart's points are the library's fractions over the text's own
    characters (not the newline the text is read after). A model whose gates saturate (its
    recurrent weights scaled up) tells the counts apart: the tiny models' gates never leave
    0.1..0.9, where every fraction is 0."""
    text = 'she said "hi there".\nthen "no" he said.\n'
    at = _inside(app, "saturated/model.pt", text)
    model, vocab, _ = load_char_lm(models["saturated"])
    traced = inside.trace_text(model, vocab, text)
    expected = inside.gate_saturation(traced.trace, traced.rows())
    assert any(0 < row["left"] < 1 for row in expected)  # the counts are put to the test
    assert any(0 < row["right"] < 1 for row in expected)
    assert expected != inside.gate_saturation(traced.trace)  # ... and the rows counted
    [(spec, datasets)] = [chart for chart in _charts(at) if "hconcat" in chart[0]]
    points = {(r["layer"], r["gate"], r["unit"]): r for rows in datasets for r in rows}
    assert len(points) == len(expected) == 3 * 16  # input, forget, output: 16 units each
    for want in expected:
        got = points[want["layer"], want["gate"], want["unit"]]
        assert (got["left"], got["right"]) == pytest.approx((want["left"], want["right"]))


def test_inside_page_for_an_rnn_says_it_has_no_gates(app: AppTest, models: dict[str, Path]) -> None:
    at = _page(app, "Inside a character model")
    at.selectbox(key="char_lm_checkpoint").set_value("quotes_rnn/best.pt")
    _run(at)
    # the example passage has characters this model never saw: it reads a sample of its own
    model, vocab, _ = load_char_lm(models["rnn"])
    sample = generate(
        model, vocab, "", 400, temperature=0.8, generator=torch.Generator().manual_seed(0)
    )
    assert at.text_area(key="inside_text:quotes_rnn/best.pt").value == "".join(sample)
    note = "The example passage uses characters this model never saw: here is a sample of its own."
    assert note in [element.value for element in at.caption]
    assert "has no gates" in " ".join(element.value for element in at.info)
    state = at.radio(key="inside_state")
    assert state.value == "h" and state.options == ["hidden state h"]  # no cell state c
    at.text_area(key="inside_text:quotes_rnn/best.pt").set_value("he said no.")
    _run(at)
    assert note not in [element.value for element in at.caption]  # the user's own text now


def test_inside_page_writes_a_backslash_as_python_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table of likely next characters renders Markdown: a backslash, which Python's repr
    writes as two, showed as one (a bug hunt, 2026-12-07)."""
    train_tiny_char_lm(tmp_path / "models" / "slashes", tmp_path / "text.txt", text="a\\b\\" * 80)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "models"))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = _inside(AppTest.from_file(APP, default_timeout=TIMEOUT), "slashes/best.pt", "a\\b")
    shown = set(at.table[0].value["next character"])
    assert shown == {"'a'", "'b'", "'\\\\\\\\'"}  # repr's two backslashes, each escaped


def test_inside_page_names_characters_the_model_never_saw(app: AppTest) -> None:
    at = _page(app, "Inside a character model")
    at.selectbox(key="char_lm_checkpoint").set_value("quotes_lstm/best.pt")
    _run(at)
    at.text_area(key="inside_text:quotes_lstm/best.pt").set_value("she said Q")
    at.run()
    errors = [element.value for element in at.error]
    assert len(errors) == 1 and "'Q'" in errors[0] and not at.exception


def test_toys_page_trains_hihello_and_steps_through_it(app: AppTest) -> None:
    at = _page(app, "Lecture toys")
    assert "Press **Train**" in " ".join(element.value for element in at.info)
    at.radio(key="toy").set_value("hihello")
    at.radio(key="toy_cell").set_value("gru")
    at.slider(key="toy_steps:hihello").set_value(100)
    at.button(key="toy_train").click()
    _run(at)
    markdown = " ".join(element.value for element in at.markdown)
    assert "Greedy from `'h'`: `'hihello'`: **reproduces the text**" in markdown
    trained = at.session_state["toy_run"]
    run, traced = trained["run"], trained["trace"]
    assert run.config.model.cell == "gru" and len(run.losses) == 100

    at.slider(key="toy_step").set_value(6)  # reads the second 'l', predicts 'o'
    at.number_input(key="toy_unit").set_value(3)
    _run(at)
    markdown = " ".join(element.value for element in at.markdown)
    assert "Step 6 reads `'l'` and should predict `'o'`" in markdown
    chosen = run.vocab[int(traced.logits[5].argmax())]
    assert ("**right**." in markdown) == (chosen == "o") != ("**wrong**." in markdown)
    latex = [element.value.strip("$\n") for element in at.latex]  # st.latex wraps in $$
    expected = toys.cell_equations(traced, 0, 5, 3)
    assert latex[: len(expected)] == [equation.latex for equation in expected]
    assert "texttt{o}" in latex[-1]
    vocab = run.vocab
    assert latex[-1] == toys.output_equation(traced, 5, vocab, vocab.index("o")).latex
    strips = {
        spec.get("title"): [row for rows in datasets for row in rows]
        for spec, datasets in _charts(at)
        if spec.get("title", "").startswith(("hidden", "input"))
    }
    assert len(strips) == 2  # the input and one layer
    one_hot = {row["label"]: row["value"] for row in strips["input x_t (one-hot)"]}
    labels = toys.char_labels(vocab)
    assert one_hot == {label: float(c == "l") for c, label in zip(vocab, labels, strict=True)}
    hidden = [row["value"] for row in strips["hidden state h_t, layer 1"]]
    assert hidden == pytest.approx(traced.layers[0].h[5].tolist())

    at.radio(key="toy").set_value("your own text")
    _run(at)
    at.text_input(key="toy_text").set_value("ab")
    at.button(key="toy_train").click()
    at.run()
    assert "at least 3" in " ".join(element.value for element in at.error)
    # a text too short for the config's windows: the help names the window it trains in, and
    # its space is labelled as one
    text = "ab ab"
    at.text_input(key="toy_text").set_value(text)
    _run(at)
    window = toys.toy_window(toys.toy_config(toys.TOYS["your own text"][0]), len(text))
    [steps] = [slider for slider in at.slider if str(slider.key).startswith("toy_steps:")]
    assert f"windows of {window} characters" in steps.help and window == 4
    at.button(key="toy_train").click()
    _run(at)
    inputs = [rows for spec, rows in _charts(at) if spec.get("title", "").startswith("input")]
    assert {row["label"] for rows in inputs[0] for row in rows} == {"a", "b", "␣"}


def test_toys_page_shows_a_texts_backticks_as_typed(app: AppTest) -> None:
    """A text's backtick ended the code span its character was written in, and what followed
    was Markdown: `$x$` became math (a bug hunt, 2026-12-07); now the span's fence is longer."""
    at = _page(app, "Lecture toys")
    at.radio(key="toy").set_value("your own text")
    _run(at)
    at.text_input(key="toy_text").set_value("`$x$` and `$y$`")
    at.slider(key="toy_steps:your own text").set_value(10)
    at.button(key="toy_train").click()
    _run(at)
    markdown = " ".join(element.value for element in at.markdown)
    assert "Greedy from ``'`$x$` and '``: " in markdown, markdown  # (its prompt)
    assert "Step 1 reads ``'`'`` and should predict `'$'`" in markdown, markdown


def test_toys_page_steps_through_a_two_layer_toy_where_it_is_wrong(
    app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The toys' configs have one layer, where any layer picked is the first: with two layers
    (the config patched), the equations and heat strips are the layer's asked for. After 10
    steps the model still mispredicts: at such a step the page says so, highlights the right next
    character's bar (not the model's choice) and writes p of the right character. Changed
    settings leave the trained model on show, with a caption naming what it was trained on."""
    real = toys.toy_config

    def two_layers(*args, **kwargs):
        cfg = real(*args, **kwargs)
        cfg.model.num_layers = 2
        return cfg

    monkeypatch.setattr(toys, "toy_config", two_layers)
    at = _page(app, "Lecture toys")
    at.radio(key="toy").set_value("hihello")
    at.radio(key="toy_cell").set_value("gru")
    at.slider(key="toy_steps:hihello").set_value(10)
    at.button(key="toy_train").click()
    _run(at)
    assert not any(c.value.startswith("Showing the model") for c in at.caption)
    trained = at.session_state["toy_run"]
    run = trained["run"]
    traced = toys.trace_toy(run)  # what the page shows, read from the model anew
    assert len(traced.layers) == 2 and len(run.losses) == 10
    vocab = run.vocab
    targets = [vocab.index(char) for char in run.text[1:]]
    wrong = [t for t, target in enumerate(targets) if int(traced.logits[t].argmax()) != target]
    assert wrong, "the toy learnt hihello in 10 steps: pick a step where it is wrong otherwise"
    t = wrong[0]
    target_id, chosen_id = targets[t], int(traced.logits[t].argmax())
    at.slider(key="toy_step").set_value(t + 1)
    at.number_input(key="toy_layer").set_value(2)
    at.number_input(key="toy_unit").set_value(3)
    _run(at)
    markdown = " ".join(element.value for element in at.markdown)
    assert f"should predict `{vocab[target_id]!r}`" in markdown and "**wrong**." in markdown
    assert f"most likely next character is `{vocab[chosen_id]!r}`" in markdown
    latex = [element.value.strip("$\n") for element in at.latex]
    expected = toys.cell_equations(traced, 1, t, 3)  # layer 2
    assert latex[: len(expected)] == [equation.latex for equation in expected]
    assert latex[-1] == toys.output_equation(traced, t, vocab, target_id).latex
    charts = {spec.get("title"): [r for rows in data for r in rows] for spec, data in _charts(at)}
    for layer in (0, 1):
        hidden = [row["value"] for row in charts[f"hidden state h_t, layer {layer + 1}"]]
        assert hidden == pytest.approx(traced.layers[layer].h[t].tolist())
    probabilities = torch.softmax(traced.logits[t], dim=-1).tolist()
    for title, values in (
        ("output logits y_t", traced.logits[t].tolist()),
        ("softmax: p(next character)", probabilities),
    ):
        bars = charts[title]
        assert [row["value"] for row in bars] == pytest.approx(values)
        highlighted = [row["character"] for row in bars if row["is"] == "the next character"]
        assert highlighted == [toys.char_labels(vocab)[target_id]], title

    at.radio(key="toy_cell").set_value("lstm")  # not trained yet: the GRU stays on show
    _run(at)
    shown = "Showing the model trained on hihello with a GRU for 10 steps; press Train"
    assert any(caption.value.startswith(shown) for caption in at.caption)
    assert at.session_state["toy_run"] is trained and at.latex


def test_toys_settings_and_run_survive_a_page_switch(app: AppTest) -> None:
    at = _page(app, "Lecture toys")
    at.radio(key="toy").set_value("hihello")
    at.slider(key="toy_steps:hihello").set_value(30)
    at.button(key="toy_train").click()
    _run(at)
    at.slider(key="toy_step").set_value(4)
    _run(at)
    at.radio(key="page").set_value("Training curves")
    _run(at)
    at.radio(key="page").set_value("Lecture toys")
    _run(at)
    assert at.slider(key="toy_steps:hihello").value == 30 and at.slider(key="toy_step").value == 4
    assert "Step 4 reads" in " ".join(element.value for element in at.markdown)


def test_find_runs_offers_up_to_200_runs(tmp_path: Path) -> None:
    """The page offers 200 runs (the README's number), and counts the rest."""
    for number in range(201):
        _write_lines(tmp_path / f"run{number:03d}" / METRICS_FILE, [])
    runs, found = find_runs(tmp_path)
    assert (len(runs), found) == (200, 201)


def test_find_runs_skips_a_metrics_file_that_is_a_pipe_or_a_link_loop(tmp_path: Path) -> None:
    """A pipe named metrics.jsonl would hang the page that reads it; a link to itself raised
    RuntimeError from Path.resolve (Python 3.11) and took the page down."""
    _write_lines(tmp_path / "a" / METRICS_FILE, [])
    (tmp_path / "pipe").mkdir()
    os.mkfifo(tmp_path / "pipe" / METRICS_FILE)
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / METRICS_FILE).symlink_to(tmp_path / "loop" / METRICS_FILE)
    assert find_runs(tmp_path) == (["a"], 1)


def test_a_run_whose_first_lines_hold_no_value_keeps_the_frames_column_types(
    tmp_path: Path,
) -> None:
    """The empty frame of the lines before must not be concatenated: it turned every column,
    step and value included, into `object`."""
    path = tmp_path / "run" / METRICS_FILE
    _write_lines(path, [{"kind": "eval", "step": 50, "scores": {"val_loss": math.nan}}])
    tail = MetricsTail(path, "run")
    tail.read()
    line = {"kind": "train", "step": 70, "loss": 2.5}
    with path.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    _, frame = tail.read()
    assert frame.dtypes.equals(metrics_frame({"run": [line]}).dtypes), frame.dtypes


def test_the_curves_page_says_nothing_of_runs_left_out_when_it_offers_them_all(
    app: AppTest, models: dict[str, Path]
) -> None:
    """No note of runs left out where none is."""
    at = _page(app, "Training curves")
    assert len(at.multiselect(key="curve_runs").options) == find_runs(models["dir"])[1]
    assert not [c.value for c in at.caption if " runs are offered" in c.value]


# --- the Training curves page's warnings (a mutation audit's gaps) ---


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models_dir = tmp_path / "models"
    for name in ("good", "bad"):
        path = models_dir / name / METRICS_FILE
        path.parent.mkdir(parents=True)
        lines = [_train_line(step, time.time()) for step in (10, 20)]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    streamlit.cache_data.clear()  # the page keeps each run's rows, and a reader of each file
    streamlit.cache_resource.clear()
    return models_dir


def _curves_of(runs: list[str]) -> AppTest:
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    at.radio(key="page").set_value("Training curves")
    _run(at)
    at.multiselect(key="curve_runs").set_value(runs)
    return _run(at)


def test_a_run_removed_after_listing_is_said_to_be_gone(two_runs, monkeypatch):
    """Its own words for a file gone, not an unreadable file's (kills: the FileNotFoundError
    branch dropped, which said "cannot read its metrics.jsonl (No such file or directory)")."""
    real = curves.find_runs
    monkeypatch.setattr(
        curves, "find_runs", lambda root: ([*real(root)[0], "vanished"], real(root)[1] + 1)
    )
    at = _curves_of(["good", "vanished"])
    assert [w.value for w in at.warning] == [
        f"vanished: its {METRICS_FILE} is gone (the run was moved or removed)"
    ]
    assert any(e.value.startswith("**good**: step 20") for e in at.caption)


def test_a_gone_runs_name_is_shown_as_written(two_runs, monkeypatch):
    """A name that begins "1. " was a numbered list, :red[x] red text (a bug hunt, 2026-12-07)."""
    real = curves.find_runs
    name = "1. :red[gone]"
    monkeypatch.setattr(curves, "find_runs", lambda root: ([*real(root)[0], name], 3))
    at = _curves_of(["good", name])
    assert [w.value for w in at.warning] == [
        f"1\\. &#58;red\\[gone\\]: its {METRICS_FILE} is gone (the run was moved or removed)"
    ]


def test_a_runs_name_is_shown_as_written(two_runs):
    """Streamlit's Markdown makes :smile: an emoji, :red[c] red text and &amp; an ampersand (a
    bug hunt, 2026-12-07): the run's status line now shows the folder's name as it is written."""
    name = ":smile:_:red[c]_&amp;"
    (two_runs / "good").rename(two_runs / name)
    at = _curves_of([name])
    expected = "**&#58;smile&#58;\\_&#58;red\\[c\\]\\_\\&amp;**: step 20"
    assert any(e.value.startswith(expected) for e in at.caption), [e.value for e in at.caption]


def test_a_line_exactly_live_within_s_old_is_still_training():
    now = 1000.0
    lines = [{"kind": "train", "step": 5, "timestamp": now - LIVE_WITHIN_S}]
    assert (
        summarize(lines)
        .status(now)
        .endswith(f"still training (last line {LIVE_WITHIN_S:.0f} s ago)")
    )
    lines[0]["timestamp"] = now - LIVE_WITHIN_S - 0.5
    assert "still training" not in summarize(lines).status(now)


def test_a_summary_taken_in_parts_is_the_summary_of_all_the_lines() -> None:
    """`summarize(later, summarize(first))` is `summarize(first + later)` wherever the lines are
    cut, an empty part included (what following a growing file relies on); a run's first line
    may be at step 0, which is a step, not "no lines"."""
    lines = [
        {"kind": "eval", "step": 0, "timestamp": 990.0},
        {"kind": "train", "step": 1, "source": "x"},
        {"kind": "train", "step": 2, "timestamp": 995.0, "source": "y"},
        {"kind": "eval", "step": 2, "source": "x"},
    ]
    for cut in range(len(lines) + 1):
        first = summarize(lines[:cut])
        assert summarize(lines[cut:], first) == summarize(lines), cut
        assert summarize([], first) == first, cut
    assert summarize(lines[:1]).status(10_000.0) == "step 0, 0 train and 1 eval lines"


def test_following_a_file_parses_only_the_lines_written_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `MetricsTail.read` parses the whole lines added since the one before, not the file
    again (a run of 60,000 lines took about 1 s a read); a changed start is read again whole."""
    path = tmp_path / "run" / METRICS_FILE
    lines = [{"kind": "train", "step": step, "loss": 2.0} for step in range(1, 4)]
    _write_lines(path, lines)
    parsed: list[str] = []
    real = curves.parse_metrics
    monkeypatch.setattr(curves, "parse_metrics", lambda text: parsed.append(text) or real(text))
    tail = MetricsTail(path, "run")
    tail.read()
    for step in (4, 5):
        new = json.dumps({"kind": "train", "step": step, "loss": 1.5}) + "\n"
        with path.open("a") as handle:
            handle.write(new)
        parsed.clear()
        summary, _ = tail.read()
        assert [text for text in parsed if text] == [new] and summary.trains == step
    path.write_text(path.read_text().replace('"loss": 2.0', '"loss": 3.0', 1))  # same inode
    parsed.clear()
    summary, frame = tail.read()
    assert len([text for text in parsed if text]) == 1 and parsed[0].count("\n") == 5
    assert summary.trains == 5 and frame["value"].tolist()[0] == 3.0


def test_lines_that_need_more_decimals_get_them_and_those_that_never_check_say_approx() -> None:
    r"""7 decimals where 6 do not give the written result; "\approx" (and the numbers at 7
    decimals) where 7 do not either; a part that rounds to zero is added, not subtracted."""
    assert toys._products([(10000.0, 0.00012344951)], 10000.0 * 0.00012344951) == (
        r"10000.0000000 \cdot 0.0001234 = 1.234"
    )
    assert toys._products([(1e7, 1.2344951e-8)], 1e7 * 1.2344951e-8) == (
        r"10000000.0000000 \cdot 0.0000000 \approx 0.123"
    )
    # a value no written total gives (a trace in bf16, say): both steps say \approx
    assert toys._squashed(r"\tanh", 0.1, 0.2, 0.5) == (
        r"\tanh(0.1000000 + 0.2000000) \approx \tanh(0.3000000) \approx 0.500"
    )
    assert toys._squashed(r"\tanh", 0.5, -0.0001, math.tanh(0.4999)) == (
        r"\tanh(0.500 + 0.000) = \tanh(0.500) = 0.462"
    )


def test_only_logits_above_10_are_shifted_and_only_then_is_m_written() -> None:
    traced = SimpleNamespace(
        logits=torch.tensor([[10.0, 1.0, 2.0], [3.0, 1.0, 2.0], [800.0, 1.0, 2.0]])
    )
    for step, shifted in ((0, False), (1, False), (2, True)):
        latex = toys.output_equation(traced, step, ["a", "b", "c"], 0).latex
        assert ("y_k - m" in latex) == shifted == ("m = " in latex), latex
    assert r"m = \max_k y_k = 800.000, \quad" in latex
