r"""The lecture toys, step by step: train "hihello", the ship sentence or a short text in seconds,
then walk through it one time step at a time with the actual numbers of the cell's equations.

`train_toy` trains a `CharLM` the way ``char_lm.train`` does (the text as ``data.batch_size``
streams of ``data.block_size`` windows with the state carried across windows, AdamW, warmup +
cosine, gradient clipping) but in memory, calling back after every step so the app can draw the
loss curve as it falls; it never writes a checkpoint. `toy_config` reads the toys' YAML files
(configs/char_lm/hihello.yaml, ship.yaml) with ``model.cell`` and ``train.max_steps`` overridden.

`cell_equations` writes the chosen cell's equations for one unit at one time step with the numbers
a `crnn_app.inside.trace` (with ``parts=True``) recorded, as LaTeX lines for ``st.latex``. Each line
checks by hand: its numbers are written with as many decimals (3 to 7) as it takes for the
arithmetic of the numbers as written to give the next value as written (``0.9391 \cdot (-10.7102)``
where 3 decimals of a large cell state would be 0.006 off), and with "\approx" where 7 do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import altair as alt
import pandas as pd
import torch
from torch import nn

from char_lm.config import CharLMConfig, ModelConfig, check_config
from char_lm.data import BUILTIN_TEXTS, StreamBatches, build_vocab, encode
from char_lm.model import CharLM
from crnn_app.inside import Trace, one_thread, trace
from recurrent.config import load_config
from recurrent.errors import UserError
from recurrent.training import warmup_cosine

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs" / "char_lm"
# name -> (config file, text): the typed text trains with the ship sentence's settings.
TOYS = {
    "hihello": ("hihello.yaml", BUILTIN_TEXTS["hihello"]),
    "the ship sentence": ("ship.yaml", BUILTIN_TEXTS["ship"]),
    "your own text": ("ship.yaml", None),
}
MAX_TOY_CHARS = 300
MIN_TOY_CHARS = 3


def toy_config(
    config_file: str, cell: str | None = None, max_steps: int | None = None
) -> CharLMConfig:
    """A toy's config from configs/char_lm/, on the CPU, with the cell and step count chosen."""
    overrides = ["train.device=cpu"]
    if cell:
        overrides.append(f"model.cell={cell}")
    if max_steps:
        overrides.append(f"train.max_steps={max_steps}")
    cfg = load_config(CharLMConfig, CONFIGS / config_file, overrides)
    check_config(cfg)
    return cfg


def check_toy_text(text: str) -> str:
    """A typed toy text, or a `UserError` saying what is wrong with it."""
    if len(text) < MIN_TOY_CHARS:
        raise UserError(f"type at least {MIN_TOY_CHARS} characters for the model to learn")
    if len(text) > MAX_TOY_CHARS:
        raise UserError(
            f"the text has {len(text)} characters; the toys learn at most {MAX_TOY_CHARS} in seconds"
        )
    return text


@dataclass
class ToyRun:
    """A trained toy: the model (eval mode), its vocabulary and text, the loss of every step."""

    model: CharLM
    vocab: list[str]
    text: str
    config: CharLMConfig
    losses: list[float] = field(default_factory=list)


def train_toy(
    cfg: CharLMConfig, text: str, on_step: Callable[[int, float], None] | None = None
) -> ToyRun:
    """Train a fresh model on ``text`` for ``cfg.train.max_steps`` steps; ``on_step(step, loss)``
    after each. Seeded by ``cfg.train.seed`` without touching the global random state."""
    with one_thread():
        return _train_toy(cfg, text, on_step)


def seeded_model(config: ModelConfig, vocab_size: int, seed: int) -> CharLM:
    """``CharLM(config, vocab_size)`` with the weights it gets after ``torch.manual_seed(seed)``
    (as ``char_lm.train`` starts), drawn from a generator of its own: torch's global generator is
    the process's, shared by every session of the app. Seeding it and then drawing from it gave
    another toy when another session trained a toy or loaded a model meanwhile. The model is
    built on the meta device (no draw at all) and each module initialised as its own
    ``reset_parameters`` does, in the order the constructors run."""
    with torch.device("meta"):
        model = CharLM(config, vocab_size)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, generator=generator)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].fill_(0)
        elif isinstance(module, nn.RNNBase):
            bound = 1.0 / math.sqrt(module.hidden_size) if module.hidden_size > 0 else 0
            for weight in module.parameters():
                nn.init.uniform_(weight, -bound, bound, generator=generator)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"seeded_model cannot initialise a {type(module).__name__}")
    return model


def toy_window(cfg: CharLMConfig, length: int) -> int:
    """The window a toy trains in on a text of ``length`` characters: ``data.block_size``, or
    shorter where the text's streams are shorter than that."""
    return min(cfg.data.block_size, max(1, (length - 1) // cfg.data.batch_size))


def _train_toy(
    cfg: CharLMConfig, text: str, on_step: Callable[[int, float], None] | None
) -> ToyRun:
    tc = cfg.train
    vocab = build_vocab(text)
    ids = encode(text, vocab)
    batches = StreamBatches(ids, cfg.data.batch_size, toy_window(cfg, len(ids)), what="toy text")
    model = seeded_model(cfg.model, len(vocab), tc.seed)
    beta2 = getattr(tc, "adam_beta2", 0.99)  # a config key of the newer trainers; 0.99 before
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=(0.9, beta2), weight_decay=tc.weight_decay
    )
    run = ToyRun(model, vocab, text, cfg)
    state, position = None, 0
    model.train()
    for step in range(tc.max_steps):
        scale = warmup_cosine(
            step,
            warmup_steps=tc.warmup_steps,
            total_steps=tc.max_steps,
            min_ratio=tc.min_lr_ratio,
        )
        for group in optimizer.param_groups:
            group["lr"] = tc.lr * scale
        if position == 0:
            state = None  # a new pass over the text starts from a zero state
        inputs, targets = batches.window(position)  # (B, T) each
        _, loss, state = model(inputs, targets, state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        state = state.detach()  # truncated BPTT: carry the state, not its graph
        position = (position + 1) % len(batches)
        run.losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, run.losses[-1])
    model.eval()
    return run


@torch.no_grad()
def greedy_continuation(run: ToyRun, prompt: str, length: int) -> str:
    """The most likely ``length`` characters after ``prompt`` (what the lectures check)."""
    ids = encode(prompt, run.vocab, what="prompt")
    logits, _, state = run.model(ids.unsqueeze(0))
    out = []
    for _ in range(length):
        next_id = logits[0, -1].argmax()
        out.append(run.vocab[next_id.item()])
        logits, _, state = run.model(next_id.view(1, 1), state=state)
    return "".join(out)


def greedy_check(run: ToyRun) -> tuple[str, str]:
    """(prompt, greedy text of the text's length): does the model reproduce its text? The prompt
    is the first character, or the first window for a text longer than one (the lectures start
    the ship sentence from "if you wan")."""
    block = run.config.data.block_size
    prompt = run.text[:1] if len(run.text) <= block + 1 else run.text[:block]
    return prompt, prompt + greedy_continuation(run, prompt, len(run.text) - len(prompt))


def trace_toy(run: ToyRun) -> Trace:
    """The toy's text read by its model from a zero state, every input but the last character:
    step t reads character t and predicts character t + 1 (what training taught it)."""
    ids = encode(run.text, run.vocab)
    return trace(run.model, ids[:-1], parts=True)


# --------------------------------------------------------------------------------------------
# The equations with numbers


@dataclass(frozen=True)
class Equation:
    name: str  # "i", "f", "g", "o", "c", "h", "r", "z", "n", "p"
    latex: str
    value: float  # the left-hand side's value, as the trace holds it


MOST_DECIMALS = 7  # a line whose arithmetic needs more is written with "\approx"


def _n(value: float | Decimal, decimals: int = 3) -> str:
    """``value`` written with ``decimals`` decimals as by hand: rounded half away from zero (the
    exact value, so ``0.357036 + 0.714464`` is 1.072 at 3), and a zero without a sign."""
    rounded = Decimal(value).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)
    return format(rounded if rounded else abs(rounded), "f")


def _factor(value: float, decimals: int) -> str:
    r"""A number written as a factor: in parentheses when negative (``0.939 \cdot (-10.710)``)."""
    text = _n(value, decimals)
    return f"({text})" if text.startswith("-") else text


def _read(value: float, decimals: int) -> Decimal:
    """``value`` as a reader reads it written with ``decimals`` decimals (sums and products of
    these are exact, as by hand)."""
    return Decimal(_n(value, decimals))


def _sigmoid(value: float) -> float:
    return 0.5 * (1.0 + math.tanh(value / 2))  # no overflow, however large the value


def _decimals(
    result: float, written: Callable[[int], float | Decimal], result_decimals: int = 3
) -> int:
    r"""The fewest decimals (3 to `MOST_DECIMALS`) for the numbers of an expression such that
    ``written(d)``, the expression computed from its numbers as written with ``d`` decimals,
    reads as ``result`` written with ``result_decimals``; 0 where none does (the line then says
    "\approx")."""
    for decimals in range(3, MOST_DECIMALS + 1):
        if _n(written(decimals), result_decimals) == _n(result, result_decimals):
            return decimals
    return 0


def _is(decimals: int) -> str:
    return "=" if decimals else r"\approx"


def _squashed(squash: str, a: float, b: float, value: float, r: float | None = None) -> str:
    r"""``squash(a + b) = squash(a + b as one number) = value`` (``a + r \cdot b`` with ``r``,
    GRU's candidate), each step checking by hand."""
    function = math.tanh if squash == r"\tanh" else _sigmoid
    gain = 1.0 if r is None else r
    total = a + gain * b

    def parts(d: int) -> Decimal:
        return _read(a, d) + (_read(b, d) if r is None else _read(r, d) * _read(b, d))

    # the total as one number with the fewest decimals for which both steps check (its parts
    # may round to a total a decimal further: 0.357036 + 0.714464 is 1.0715, not the 1.071 of
    # the true 1.07149999...)
    for shown_total in range(3, MOST_DECIMALS + 1):
        inner = _n(function(float(_read(total, shown_total)))) == _n(value)
        outer = _decimals(_read(total, shown_total), parts, shown_total) if inner else 0
        if outer:
            break
    d = outer or MOST_DECIMALS
    if r is None:
        sign = "-" if _n(b, d).startswith("-") else "+"
        written = f"{_n(a, d)} {sign} {_n(abs(b), d)}"
    else:
        written = f"{_n(a, d)} + {_n(r, d)} \\cdot {_factor(b, d)}"
    return (
        rf"{squash}({written}) {_is(outer)} {squash}({_n(total, shown_total)}) "
        rf"{_is(int(inner))} {_n(value)}"
    )


def _input(t: str, layer: int) -> str:
    """What a layer reads at step t: the one-hot x_t, or above the first the h_t of the layer
    below (numbered from 1, as the page's layers are)."""
    return rf"x_{{{t}}}" if layer == 0 else rf"h^{{({layer})}}_{{{t}}}"


def _pre(t: str, j: int, gate: str, layer: int) -> str:
    return (
        rf"[W_{{i{gate}}} {_input(t, layer)} + b_{{i{gate}}}]_{{{j}}} + "
        rf"[W_{{h{gate}}} h_{{{t}-1}} + b_{{h{gate}}}]_{{{j}}}"
    )


def _products(pairs: Sequence[tuple[float, float]], result: float) -> str:
    """``a b + c d + ... = result`` with numbers that check by hand."""
    total = lambda d: sum(_read(x, d) * _read(y, d) for x, y in pairs)  # noqa: E731 (exact)
    d = _decimals(result, total)
    w = d or MOST_DECIMALS
    written = " + ".join(f"{_factor(x, w)} \\cdot {_factor(y, w)}" for x, y in pairs)
    return rf"{written} {_is(d)} {_n(result)}"


def cell_equations(trace_: Trace, layer: int, step: int, unit: int) -> list[Equation]:
    """The equations of layer ``layer`` (0-based) at ``step`` (0-based) for ``unit``, with the
    numbers of the trace (which must have been made with ``parts=True``)."""
    record = trace_.layers[layer]
    if record.x_part is None or record.h_part is None:
        raise ValueError("cell_equations needs a trace made with parts=True")
    size = record.h.size(1)
    t = "t"
    x = record.x_part[step].tolist()
    h = record.h_part[step].tolist()
    h_prev = (
        float(record.h[step - 1, unit])
        if step > 0
        else float(trace_.initial_state[0, layer, 0, unit])
    )
    h_now = float(record.h[step, unit])
    j = unit

    def part(index: int) -> tuple[float, float]:
        return x[index * size + unit], h[index * size + unit]

    equations = []
    if trace_.cell == "rnn":
        a, b = part(0)
        equations.append(
            Equation(
                "h",
                rf"h_{{{t},{j}}} = \tanh\big([W_{{ih}} {_input(t, layer)} + b_{{ih}}]_{{{j}}} + "
                rf"[W_{{hh}} h_{{{t}-1}} + b_{{hh}}]_{{{j}}}\big) = "
                + _squashed(r"\tanh", a, b, h_now),
                h_now,
            )
        )
        return equations
    if trace_.cell == "lstm":
        names = {
            "i": ("input", r"\sigma"),
            "f": ("forget", r"\sigma"),
            "g": ("cell", r"\tanh"),
            "o": ("output", r"\sigma"),
        }
        values = {}
        for index, (symbol, (gate, squash)) in enumerate(names.items()):
            a, b = part(index)
            value = float(record.gates[gate][step, unit])
            values[symbol] = value
            equations.append(
                Equation(
                    symbol,
                    rf"{symbol}_{{{t},{j}}} = {squash}\big({_pre(t, j, symbol, layer)}\big) = "
                    + _squashed(squash, a, b, value),
                    value,
                )
            )
        c_prev = (
            float(record.c[step - 1, unit])
            if step > 0
            else float(trace_.initial_state[1, layer, 0, unit])
        )
        c_now = float(record.c[step, unit])
        equations.append(
            Equation(
                "c",
                rf"c_{{{t},{j}}} = f_{{{t},{j}}}\, c_{{{t}-1,{j}}} + i_{{{t},{j}}}\, g_{{{t},{j}}} = "
                + _products([(values["f"], c_prev), (values["i"], values["g"])], c_now),
                c_now,
            )
        )
        d = _decimals(
            h_now, lambda d: float(_read(values["o"], d)) * math.tanh(float(_read(c_now, d)))
        )
        w = d or MOST_DECIMALS
        equations.append(
            Equation(
                "h",
                rf"h_{{{t},{j}}} = o_{{{t},{j}}} \tanh(c_{{{t},{j}}}) = "
                rf"{_n(values['o'], w)} \cdot \tanh({_n(c_now, w)}) {_is(d)} {_n(h_now)}",
                h_now,
            )
        )
        return equations
    # GRU (PyTorch's form: the reset gate multiplies W_hn h + b_hn)
    r = float(record.gates["reset"][step, unit])
    z = float(record.gates["update"][step, unit])
    n = float(record.gates["new"][step, unit])
    for symbol, index, value in (("r", 0, r), ("z", 1, z)):
        a, b = part(index)
        equations.append(
            Equation(
                symbol,
                rf"{symbol}_{{{t},{j}}} = \sigma\big({_pre(t, j, symbol, layer)}\big) = "
                + _squashed(r"\sigma", a, b, value),
                value,
            )
        )
    a, b = part(2)
    equations.append(
        Equation(
            "n",
            rf"n_{{{t},{j}}} = \tanh\big([W_{{in}} {_input(t, layer)} + b_{{in}}]_{{{j}}} + "
            rf"r_{{{t},{j}}}\,[W_{{hn}} h_{{{t}-1}} + b_{{hn}}]_{{{j}}}\big) = "
            + _squashed(r"\tanh", a, b, n, r=r),
            n,
        )
    )
    equations.append(
        Equation(
            "h",
            rf"h_{{{t},{j}}} = (1 - z_{{{t},{j}}})\, n_{{{t},{j}}} + z_{{{t},{j}}}\, h_{{{t}-1,{j}}}"
            " = " + _products([(1 - z, n), (z, h_prev)], h_now),
            h_now,
        )
    )
    return equations


SHIFT_ABOVE = 10.0  # logits above this are written less the largest, so e^y stays readable


def output_equation(trace_: Trace, step: int, vocab: list[str], char_id: int) -> Equation:
    """p(character) at ``step``: the softmax of the top layer's logits y = W_hy h_t + b_y. Where a
    logit exceeds `SHIFT_ABOVE` (e^30 has 14 digits before the point), the largest, m, is taken
    from each first, which leaves every ratio as it was."""
    logits = trace_.logits[step].double()
    probability = float(torch.softmax(logits, dim=-1)[char_id])
    largest = float(logits.max())
    shift = largest if largest > SHIFT_ABOVE else 0.0
    total = float(torch.exp(logits - shift).sum())
    char = latex_char(vocab[char_id])
    y = float(logits[char_id]) - shift
    d = _decimals(probability, lambda d: math.exp(float(_read(y, d))) / float(_read(total, d)))
    w = d or MOST_DECIMALS
    fraction = rf"\frac{{e^{{y_{{{char_id}}}}}}}{{\sum_k e^{{y_k}}}} = "
    if shift:
        fraction += rf"\frac{{e^{{y_{{{char_id}}} - m}}}}{{\sum_k e^{{y_k - m}}}} = "
    return Equation(
        "p",
        rf"p(x_{{t+1}} = \texttt{{{char}}}) = {fraction}"
        rf"\frac{{e^{{{_n(y, w)}}}}}{{{_n(total, w)}}} {_is(d)} {_n(probability)}, \quad "
        + (rf"m = \max_k y_k = {_n(shift)}, \quad " if shift else "")
        + r"y = W_{hy} h_t + b_y",
        probability,
    )


LATEX_TEXT_ESCAPES = {
    "\\": r"\textbackslash{}",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    " ": "\u2423",  # ␣ itself: KaTeX has no \textvisiblespace (it showed the command, in red)
    "'": r'$\mathtt{\char"27}$',  # KaTeX's text mode, \texttt and \verb too, writes ' as ’
    "\n": r"\hookleftarrow",
    **{char: "\\" + char for char in "{}$%#_&"},
}


def latex_char(char: str) -> str:
    """A character as KaTeX text-mode input (a space shows as ␣, a newline as an arrow)."""
    escaped = LATEX_TEXT_ESCAPES.get(char, char)
    return f"${escaped}$" if char == "\n" else escaped


# --------------------------------------------------------------------------------------------
# Charts of one time step


# Charts drawn at the page's width: fit the width only, so that ``height`` is the plot's own
# (Streamlit's default "fit" squeezes the title, axes and legend into it, leaving no plot).
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")


def strip_chart(
    values: Sequence[float],
    labels: Sequence[str],
    title: str,
    domain: tuple[float, float] = (-1.0, 1.0),
    scheme: str = "redblue",
) -> alt.LayerChart:
    """A vector as one row of coloured cells (a heat strip), each labelled and its value shown."""
    frame = pd.DataFrame({"position": range(len(values)), "label": list(labels), "value": values})
    x = alt.X("label:N", sort=list(labels), title=None, axis=alt.Axis(labelAngle=0))
    base = alt.Chart(frame).encode(x=x)
    cells = base.mark_rect().encode(
        color=alt.Color(
            "value:Q",
            scale=alt.Scale(
                domain=list(domain), scheme=scheme, reverse=scheme == "redblue", clamp=True
            ),
            legend=None,
        ),
        tooltip=["label:N", alt.Tooltip("value:Q", format=".3f")],
    )
    layers = [cells]
    if len(values) <= 24:
        dark = abs(alt.datum.value) > 0.6 * max(abs(domain[0]), abs(domain[1]))
        layers.append(
            base.mark_text(fontSize=10).encode(
                text=alt.Text("value:Q", format=".2f"),
                color=alt.condition(dark, alt.value("white"), alt.value("black")),
            )
        )
    return alt.layer(*layers).properties(title=title, height=40, autosize=FIT_WIDTH)


def bars_chart(
    values: Sequence[float], labels: Sequence[str], title: str, highlight: int
) -> alt.Chart:
    """One bar per character, the ``highlight`` one (the right next character) in another colour."""
    frame = pd.DataFrame(
        {
            "character": list(labels),
            "value": values,
            "is": ["the next character" if i == highlight else "other" for i in range(len(values))],
        }
    )
    return (
        alt.Chart(frame, title=title)
        .mark_bar()
        .encode(
            x=alt.X("character:N", sort=list(labels), title=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("value:Q", title=None),
            color=alt.Color(
                "is:N",
                scale=alt.Scale(
                    domain=["the next character", "other"], range=["#d6604d", "#92a8d1"]
                ),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            tooltip=["character:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(height=140, autosize=FIT_WIDTH)
    )


def loss_curve_spec(losses: Sequence[float], height: int = 200) -> dict:
    """A Vega-Lite spec of the training loss by step, data inline. Built by hand, not with Altair
    or st.line_chart: the live curve is redrawn dozens of times while a toy trains, and this costs
    ~3 ms a draw against ~0.5 s for st.line_chart (measured in one AppTest run)."""
    return {
        "data": {"values": [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]},
        "mark": {"type": "line"},
        "encoding": {
            "x": {"field": "step", "type": "quantitative", "title": "step"},
            "y": {"field": "loss", "type": "quantitative", "title": "loss (nats/char)"},
        },
        "height": height,
    }


CHAR_SIGNS = {" ": "␣", "\n": "↵", "\t": "⇥"}


def char_labels(vocab: Sequence[str]) -> list[str]:
    """How each character of a vocabulary is labelled on a chart axis: a space as ␣, a newline as
    ↵, a tab as ⇥, unless the vocabulary holds that sign itself, when the character is written as
    Python writes it (``' '``): two bars with one label would be drawn as one."""
    return [
        CHAR_SIGNS.get(char, char) if CHAR_SIGNS.get(char) not in vocab else repr(char)
        for char in vocab
    ]
