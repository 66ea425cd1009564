"""A look inside a character model: states, gates and probabilities, one character at a time.

`trace` runs a `CharLM` over a text step by step with the cell equations of `recurrent.core` (the
``explicit`` backend's, written out once more here so that every gate is kept) and returns, per
layer, the hidden state h, the LSTM cell state c and the gate activations after every character,
with the logits of the next character. It reads the model's parameters and changes nothing: the
model's own forward gives the same logits and final state (tests/test_app_pages.py checks it for
rnn, lstm and gru).

The rest is what the app's "Inside a character model" page shows, after Karpathy, Johnson and
Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks":

- `char_probabilities`: each character's probability under the model (its surprise) and the top
  candidates for the character after it;
- `text_features` and `rank_units`: which hidden units track quotes, line starts or the position
  in a line (Pearson correlation of a unit's activation with the feature over the text);
- `gate_saturation`: for each unit of each gate, the fraction of steps it is left-saturated
  (< 0.1) or right-saturated (> 0.9) (the paper's figure 3).

HTML for the coloured text (`coloured_text_html`) lives here too: the page only places it.
"""

from __future__ import annotations

import contextlib
import html
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import altair as alt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from char_lm.data import encode
from char_lm.model import CharLM

GATES = {
    "rnn": (),
    "lstm": ("input", "forget", "cell", "output"),
    "gru": ("reset", "update", "new"),
}
# Gates squashed by a sigmoid: their saturation (< 0.1, > 0.9) is what the paper plots. The LSTM's
# cell candidate g and the GRU's new state n are tanh outputs, not gates that open or close.
SIGMOID_GATES = {"rnn": (), "lstm": ("input", "forget", "output"), "gru": ("reset", "update")}
LN2 = math.log(2)


@dataclass
class LayerTrace:
    """One layer over T steps (a batch of one). Each tensor's row t is the value after step t."""

    inputs: Tensor  # (T, input_size): what the layer reads (one-hot, embedding, layer below's h)
    h: Tensor  # (T, H)
    c: Tensor | None  # (T, H) for an LSTM, else None
    gates: dict[str, Tensor] = field(default_factory=dict)  # name -> (T, H) activations
    x_part: Tensor | None = None  # (T, G*H): W_ih x_t + b_ih, with ``parts``
    h_part: Tensor | None = None  # (T, G*H): W_hh h_{t-1} + b_hh, with ``parts``


@dataclass
class Trace:
    """A `CharLM` run over ``ids`` (T,): per-layer states and gates, logits (T, V) of the next
    character after each step, and the core's state (S, L, 1, H) before and after."""

    cell: str
    ids: Tensor
    layers: list[LayerTrace]
    logits: Tensor
    initial_state: Tensor
    state: Tensor


def _layer_weights(model: CharLM, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    rnn = model.core.rnn
    return tuple(
        getattr(rnn, f"{name}_l{layer}")
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )


def model_inputs(model: CharLM, ids: Tensor) -> Tensor:
    """What the core reads for ``ids`` (T,): one-hot vectors (T, V) or embeddings (T, E)."""
    if model.embedding is None:
        return F.one_hot(ids, model.vocab_size).to(model.head.weight.dtype)
    return model.embedding(ids)


# `one_thread` is entered by several sessions at once (each runs in a thread of the server): the
# setting it changes is the process's, so the first one in saves it and the last one out restores
# it.
_one_thread_lock = threading.Lock()
_one_thread_users = 0
_threads_before = 1


def process_threads() -> int:
    """torch's number of CPU threads for the process: what a thread that has not run torch yet
    starts with. `torch.get_num_threads` answers for the calling thread, which keeps the setting
    it first ran torch under (1, if that was while another session was in `one_thread`)."""
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    reader.start()
    reader.join()
    return seen[0]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread meanwhile: step-by-step work on small matrices only waits on
    other threads (bench/app_threads.py measures it: docs/benchmarks.md). The setting is
    process-wide: the first of the sessions in `one_thread` at once saves it and the last one out
    restores it (each restoring what it found would leave the process on one thread for good when
    two overlap)."""
    global _one_thread_users, _threads_before
    with _one_thread_lock:
        if _one_thread_users == 0:
            _threads_before = process_threads()
        _one_thread_users += 1
        torch.set_num_threads(1)
    try:
        yield
    finally:
        with _one_thread_lock:
            _one_thread_users -= 1
            if _one_thread_users == 0:
                torch.set_num_threads(_threads_before)


def trace(
    model: CharLM,
    ids: Tensor,
    state: Tensor | None = None,
    *,
    gates: bool = True,
    parts: bool = False,
) -> Trace:
    """Run ``model`` over ``ids`` (T,) one step at a time, keeping what each layer computes.

    ``state`` (S, L, 1, H) is the core's state before the first step (zeros by default). With
    ``gates`` the gate activations are kept (LSTM input, forget, cell, output; GRU reset, update,
    new); with ``parts`` also the two halves of every pre-activation, W_ih x_t + b_ih and
    W_hh h_{t-1} + b_hh (the lecture toys print them). Dropout is never applied (as in eval mode),
    and the model's mode and parameters are left as they are. Runs on one CPU thread (`one_thread`).
    """
    with one_thread(), torch.no_grad():
        return _trace(model, ids, state, gates=gates, parts=parts)


def _trace(
    model: CharLM,
    ids: Tensor,
    state: Tensor | None = None,
    *,
    gates: bool = True,
    parts: bool = False,
) -> Trace:
    """The body of `trace`."""
    core = model.core
    device = model.head.weight.device
    ids = ids.to(device)
    if state is None:
        state = core.init_state(1, model.head.weight)
    steps, size = ids.numel(), core.hidden_size
    layer_input = model_inputs(model, ids)  # (T, input_size)
    layers: list[LayerTrace] = []
    final = []
    for layer in range(core.num_layers):
        w_ih, w_hh, b_ih, b_hh = _layer_weights(model, layer)
        x_part = F.linear(layer_input, w_ih, b_ih)  # (T, G*H), all steps in one product
        h = state[0, layer, 0]  # (H,)
        c = state[1, layer, 0] if core.cell == "lstm" else None
        hs, cs, h_parts = [], [], []
        kept: dict[str, list[Tensor]] = {name: [] for name in GATES[core.cell]}
        for t in range(steps):
            h_part = F.linear(h, w_hh, b_hh)  # (G*H,)
            if core.cell == "lstm":  # recurrent.core.lstm_cell, gates kept
                pre = x_part[t] + h_part
                i, f, g, o = pre.chunk(4)
                values = (torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o))
                c = values[1] * c + values[0] * values[2]
                h = values[3] * torch.tanh(c)
                cs.append(c)
            elif core.cell == "gru":  # recurrent.core.gru_cell, gates kept
                x_r, x_z, x_n = x_part[t].chunk(3)
                h_r, h_z, h_n = h_part.chunk(3)
                r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
                n = torch.tanh(x_n + r * h_n)
                values = (r, z, n)
                h = (1 - z) * n + z * h
            else:  # recurrent.core.rnn_cell
                values = ()
                h = torch.tanh(x_part[t] + h_part)
            hs.append(h)
            if parts:
                h_parts.append(h_part)
            if gates:
                for name, value in zip(GATES[core.cell], values, strict=True):
                    kept[name].append(value)
        layer_h = torch.stack(hs) if hs else layer_input.new_zeros(0, size)  # (T, H)
        layers.append(
            LayerTrace(
                inputs=layer_input,
                h=layer_h,
                c=(torch.stack(cs) if cs else layer_input.new_zeros(0, size))
                if core.cell == "lstm"
                else None,
                gates={name: torch.stack(values) for name, values in kept.items() if values},
                x_part=x_part if parts else None,
                h_part=(torch.stack(h_parts) if h_parts else None) if parts else None,
            )
        )
        final.append((h, c) if core.cell == "lstm" else (h,))
        layer_input = layer_h
    logits = model.head(layer_input)  # (T, V)
    new_state = torch.stack(
        [torch.stack([s[part] for s in final]) for part in range(core.state_parts)]
    ).unsqueeze(2)  # (S, L, 1, H)
    return Trace(core.cell, ids, layers, logits, state, new_state)


# --------------------------------------------------------------------------------------------
# Probabilities of the characters of a text


@dataclass
class TracedText:
    """A text traced after a context the model is conditioned on (not part of the text)."""

    text: str
    context: str
    trace: Trace

    def rows(self) -> slice:
        """The trace's rows that belong to the text (after its context)."""
        return slice(len(self.context), len(self.context) + len(self.text))


def trace_text(model: CharLM, vocab: list[str], text: str, *, parts: bool = False) -> TracedText:
    """Trace ``text``, conditioned on a newline when the vocabulary has one (so that even its
    first character has a probability: "the start of a line", as generation starts)."""
    context = "\n" if "\n" in vocab else ""
    ids = encode(context + text, vocab, what="text")
    return TracedText(text, context, trace(model, ids, parts=parts))


def char_probabilities(
    traced: TracedText, vocab: Sequence[str], top: int = 5
) -> tuple[list[float | None], list[list[tuple[str, float]]]]:
    """For each character of the text: its probability given everything before it (None for a
    first character without context), and the ``top`` most likely characters to follow it."""
    log_probs = torch.log_softmax(traced.trace.logits.float(), dim=-1)  # (T, V)
    ids = traced.trace.ids
    start = len(traced.context)
    probabilities: list[float | None] = []
    candidates: list[list[tuple[str, float]]] = []
    k = min(top, len(vocab))
    for position in range(start, start + len(traced.text)):
        if position == 0:
            probabilities.append(None)
        else:
            probabilities.append(float(log_probs[position - 1, ids[position]].exp()))
        values, indices = log_probs[position].exp().topk(k)
        candidates.append(
            [(vocab[i], float(p)) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]
        )
    return probabilities, candidates


def bits(probability: float) -> float:
    """Surprise in bits: -log2 p."""
    return -math.log2(max(probability, 1e-12))


# --------------------------------------------------------------------------------------------
# Interesting units


def text_features(text: str) -> dict[str, np.ndarray]:
    """Features of the state after each character of ``text``, as float arrays (len(text),):

    - "inside quotes": 1 between an opening double quote (included) and its closing one
      (excluded), i.e. an odd number of '"' read so far;
    - "start of a line": 1 right after a newline is read (the next character begins a line);
    - "position in line": characters read since the last newline.
    """
    inside, line_start, position = [], [], []
    quotes, column = 0, 0
    for char in text:
        quotes += char == '"'
        column = 0 if char == "\n" else column + 1
        inside.append(quotes % 2)
        line_start.append(char == "\n")
        position.append(column)
    return {
        "inside quotes": np.asarray(inside, dtype=np.float64),
        "start of a line": np.asarray(line_start, dtype=np.float64),
        "position in line": np.asarray(position, dtype=np.float64),
    }


@dataclass(frozen=True)
class UnitScore:
    layer: int  # 0-based
    state: str  # "h" or "c"
    unit: int
    correlation: float  # Pearson correlation of the unit's activation with the feature


def correlations(activations: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``activations`` (T, H) with ``feature`` (T,);
    NaN for a constant column (or when the feature is constant)."""
    a = activations - activations.mean(axis=0)
    f = feature - feature.mean()
    denominator = np.sqrt((a * a).sum(axis=0) * (f * f).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * f[:, None]).sum(axis=0) / denominator, np.nan)


def unit_states(traced: TracedText) -> dict[tuple[int, str], np.ndarray]:
    """(layer, "h" | "c") -> activations (T_text, H) over the text's characters."""
    rows = traced.rows()
    states = {}
    for index, layer in enumerate(traced.trace.layers):
        states[(index, "h")] = layer.h[rows].float().cpu().numpy()
        if layer.c is not None:
            states[(index, "c")] = layer.c[rows].float().cpu().numpy()
    return states


def rank_units(traced: TracedText, feature: str, top: int = 10) -> list[UnitScore]:
    """The ``top`` units (over every layer, h and c) whose activation correlates most strongly,
    by absolute value, with the text feature ``feature`` (`text_features`); [] when the feature
    does not vary over the text (no quotes, a single line)."""
    values = text_features(traced.text)[feature]
    if len(values) < 3 or values.std() == 0:
        return []
    scores = []
    for (layer, state), activations in unit_states(traced).items():
        for unit, correlation in enumerate(correlations(activations, values)):
            if math.isfinite(correlation):
                scores.append(UnitScore(layer, state, unit, float(correlation)))
    scores.sort(key=lambda score: -abs(score.correlation))
    return scores[:top]


# --------------------------------------------------------------------------------------------
# Gate saturation


def gate_saturation(
    trace_: Trace, rows: slice | None = None, low: float = 0.1, high: float = 0.9
) -> list[dict]:
    """One row per (layer, gate, unit): the fractions of steps (of ``rows``) with the gate below
    ``low`` ("left") and above ``high`` ("right"). Sigmoid gates only (`SIGMOID_GATES`)."""
    rows = rows or slice(None)
    table = []
    for index, layer in enumerate(trace_.layers):
        for name in SIGMOID_GATES[trace_.cell]:
            values = layer.gates[name][rows].float()  # (T, H)
            if values.numel() == 0:
                continue
            left = (values < low).float().mean(dim=0).tolist()
            right = (values > high).float().mean(dim=0).tolist()
            for unit, (l_frac, r_frac) in enumerate(zip(left, right, strict=True)):
                table.append(
                    {
                        "layer": f"layer {index + 1}",
                        "gate": name,
                        "unit": unit,
                        "left": l_frac,
                        "right": r_frac,
                    }
                )
    return table


# --------------------------------------------------------------------------------------------
# Coloured text


MAX_SURPRISE_BITS = 8.0  # surprise colours saturate at this many bits (p = 1/256)


def _show(char: str) -> str:
    """A character as it is drawn: a newline as a return arrow and a line break."""
    if char == "\n":
        return "↵<br>"
    return html.escape(char)


def _label(char: str) -> str:
    return repr(char) if char in "\n\t " else f"'{char}'"


def surprise_colour(probability: float | None) -> str:
    """White for a certain character, deepening to red at `MAX_SURPRISE_BITS` of surprise."""
    if probability is None:
        return "rgb(235, 235, 235)"
    level = min(1.0, bits(probability) / MAX_SURPRISE_BITS)
    other = round(255 * (1 - level) + 60 * level)
    return f"rgb(255, {other}, {other})"


def activation_colour(value: float) -> str:
    """Blue for -1, white for 0, red for +1 (values outside are clipped)."""
    value = max(-1.0, min(1.0, value))
    fade = round(255 * (1 - abs(value)))
    return f"rgb(255, {fade}, {fade})" if value >= 0 else f"rgb({fade}, {fade}, 255)"


def coloured_text_html(chars: str, colours: Sequence[str], titles: Sequence[str]) -> str:
    """The text with each character on its own background colour and hover title."""
    spans = [
        f'<span style="background:{colour}" title="{html.escape(title)}">{_show(char)}</span>'
        for char, colour, title in zip(chars, colours, titles, strict=True)
    ]
    style = "font-family:monospace;white-space:pre-wrap;line-height:1.6;font-size:0.95rem"
    return f'<div style="{style}">{"".join(spans)}</div>'


def surprise_html(
    text: str,
    probabilities: Sequence[float | None],
    candidates: Sequence[Sequence[tuple[str, float]]],
) -> str:
    """Characters coloured by surprise; hovering shows p, bits and the top candidates after it."""
    titles = []
    for char, probability, top in zip(text, probabilities, candidates, strict=True):
        head = (
            f"{_label(char)}: p = {probability:.3f} ({bits(probability):.1f} bits)"
            if probability is not None
            else f"{_label(char)}: first character, no context"
        )
        following = ", ".join(f"{_label(c)} {p:.2f}" for c, p in top)
        titles.append(f"{head}\nnext: {following}")
    colours = [surprise_colour(p) for p in probabilities]
    return coloured_text_html(text, colours, titles)


def activation_html(text: str, values: Sequence[float], scale: float = 1.0) -> str:
    """Characters coloured by a unit's activation after reading each (divided by ``scale``)."""
    scale = scale if scale > 0 else 1.0
    colours = [activation_colour(value / scale) for value in values]
    titles = [f"{_label(char)}: {value:+.3f}" for char, value in zip(text, values, strict=True)]
    return coloured_text_html(text, colours, titles)


def saturation_chart(table: Sequence[dict], width: int = 190) -> alt.HConcatChart:
    """One scatter per gate (`gate_saturation` rows): x the fraction of steps left-saturated, y
    right-saturated, a point per unit, coloured by layer (Karpathy et al. 2015, figure 3)."""
    frame = pd.DataFrame(list(table))
    panels = []
    for gate in dict.fromkeys(frame["gate"]):  # gate order as computed
        axis = alt.Scale(domain=[0, 1])
        panels.append(
            alt.Chart(frame[frame["gate"] == gate], title=f"{gate} gate")
            .mark_circle(size=28, opacity=0.6)
            .encode(
                x=alt.X("left:Q", title="fraction < 0.1 (left-saturated)", scale=axis),
                y=alt.Y("right:Q", title="fraction > 0.9 (right-saturated)", scale=axis),
                color=alt.Color(
                    "layer:N",
                    title=None,
                    scale=alt.Scale(scheme="category10"),
                    legend=alt.Legend(orient="bottom"),
                ),
                tooltip=[
                    "layer:N",
                    "unit:Q",
                    alt.Tooltip("left:Q", format=".2f"),
                    alt.Tooltip("right:Q", format=".2f"),
                ],
            )
            .properties(width=width, height=width)
        )
    return alt.hconcat(*panels)
