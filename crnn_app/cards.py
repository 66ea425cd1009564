"""Model cards: what a checkpoint is, what it was trained on, how far and how well.

A checkpoint written by the current trainers holds a ``card`` (a plain dict, see the trainers):

    {"task": "char_lm" | "captioner",
     "architecture": "2-layer LSTM, hidden 512, embedding 128",
     "data": {"name": "tinyshakespeare", "path": "...", "size": 1003854,
              "unit": "training characters" | "images", "synthetic_scenes": false},
     "steps": 5000, "best_scores": {"val_loss": 1.44} | {"BLEU-4": 41.2, ...},
     "trained_at": "2026-11-22T05:10:00Z"}

Older checkpoints have none: `model_card` builds the same fields from what they do hold (config,
step, best_val_loss / best_scores); what they never recorded (data size, training date) stays None
and is shown as "not recorded". What the config decides (the architecture line, the data's name
and path, whether it is the synthetic scenes) always comes from the saved config, through the
task's `describe_model` and `describe_data` (which the trainers record too), so that every
checkpoint is described in the same words, whichever version of the trainer wrote its card; the
card gives what only the run knew (the data's size, in the unit it was counted in: a character
model's card before 2026-12-07 counted its whole text, in "characters"; steps, scores, date). A
captioner counts as trained on the synthetic scenes when its annotation file is the one
``python -m captioner.scenes`` writes (``dataset_scenes.json``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from captioner.config import describe_data as captioner_data
from captioner.config import describe_model as captioner_architecture
from char_lm.config import describe_data as char_lm_data
from char_lm.config import describe_model as char_lm_architecture
from recurrent.checkpoint import is_utf8, shown_name

LN2 = math.log(2)
TASK_TITLES = {"captioner": "image captioner", "char_lm": "character-level language model"}
NOT_RECORDED = "not recorded"


def _section(payload: Mapping[str, Any], name: str) -> dict[str, Any]:
    config = payload.get("config")
    section = config.get(name) if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


def best_val_loss(payload: Mapping[str, Any]) -> float | None:
    """A char model checkpoint's best validation loss, or None: not recorded, or inf where the
    run had not evaluated yet (`char_lm.train` saves it so)."""
    val_loss = payload.get("best_val_loss")
    return val_loss if isinstance(val_loss, float) and math.isfinite(val_loss) else None


def card_from_config(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The card of a checkpoint written before cards existed, from its config, step and scores."""
    task = payload.get("task")
    model, data = _section(payload, "model"), _section(payload, "data")
    if task == "captioner":
        architecture, data_card = captioner_architecture(model), captioner_data(data)
        scores = payload.get("best_scores")
        best = _scores(scores) if isinstance(scores, dict) else {}
    else:
        architecture, data_card = char_lm_architecture(model), char_lm_data(data)
        val_loss = best_val_loss(payload)
        best = {} if val_loss is None else {"val_loss": val_loss}
    progress = payload.get("progress")
    step = payload.get("step")
    # where the best scores were measured: the run loop's progress, or the payload's own best_step
    # (a captioner's checkpoints before the run loop, 2026-11-21/22, and their exported copies)
    recorded = progress if isinstance(progress, dict) else payload
    best_step = _typed(recorded, {"best_step": int}).get("best_step")
    return {
        "task": task,
        "architecture": architecture,
        "data": data_card,
        "steps": step if isinstance(step, int) else None,
        "best_scores": best,
        "best_step": best_step,
        "trained_at": None,
    }


def model_card(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's card, every field present: its own ``card`` where it has one (fields it
    lacks come from the config), else one built from the config (`card_from_config`).

    ``card["recorded"]`` says whether the checkpoint carried a card. The architecture and the
    data's description come from the config wherever the checkpoint has one (see the module
    docstring).
    """
    derived = card_from_config(payload)
    own = payload.get("card")
    if not isinstance(own, dict):
        return {**derived, "recorded": False}
    card = {**derived, **_typed(own, CARD_TYPES)}
    if isinstance(own.get("best_scores"), dict):
        card["best_scores"] = _scores(own["best_scores"])
    own_data = _typed(own["data"], DATA_TYPES) if isinstance(own.get("data"), dict) else {}
    card["data"] = {**derived["data"], **own_data}
    # What the config decides is described from it, in today's words: the same for every
    # checkpoint, whichever version of the trainer recorded its card.
    if _section(payload, "model"):
        card["architecture"] = derived["architecture"]
    if _section(payload, "data"):  # (the size is counted as its card says: its own unit)
        described = {k: v for k, v in derived["data"].items() if k not in ("size", "unit")}
        card["data"] = {**card["data"], **described}
    card["recorded"] = True
    return card


# The type of each card field: a checkpoint is user input, and a field of another type (an
# edited or damaged file) is left out, so the config's value or "not recorded" shows instead.
CARD_TYPES = {"task": str, "architecture": str, "steps": int, "best_step": int, "trained_at": str}
DATA_TYPES = {"name": str, "path": str, "size": int, "unit": str, "synthetic_scenes": bool}


def _typed(fields: Mapping[Any, Any], types: Mapping[str, type]) -> dict[str, Any]:
    return {
        key: value
        for key, kind in types.items()
        if isinstance(value := fields.get(key), kind)
        and (kind is bool or not isinstance(value, bool))
        and (kind is not str or is_utf8(value))
    }


def _scores(scores: Mapping[Any, Any]) -> dict[str, float]:
    """The card's best scores that are named by text and are finite numbers."""
    kept = {}
    for name, value in scores.items():
        if isinstance(name, str) and is_utf8(name) and isinstance(value, int | float):
            try:
                number = float(value)  # 10**400 overflows
            except OverflowError:
                continue
            if not isinstance(value, bool) and math.isfinite(number):
                kept[name] = number
    return kept


def format_score(name: str, value: Any) -> str:
    """One best score as shown: losses in nats/char with bits/char, BLEU and CIDEr to 0.1."""
    if not isinstance(value, int | float):
        return f"{name} {value}"
    if name.endswith("loss"):
        label = name.replace("_", " ")
        return f"{label} {value:.3f} nats/char ({value / LN2:.3f} bpc)"
    return f"{name} {value:.1f}"


def _format_date(value: Any) -> str:
    if not value:
        return NOT_RECORDED
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is None:  # no zone recorded: as written
        return moment.isoformat(" ")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def card_rows(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows of a card, in the order shown: task, architecture, data, steps, best
    scores, training date. Missing values read "not recorded"."""
    data = card.get("data") or {}
    data_text = str(data.get("name") or NOT_RECORDED)
    if data.get("path") and data.get("path") not in data_text:
        data_text += f" ({data['path']})"
    size = data.get("size")
    unit = data.get("unit") or ""
    data_text += f", {size:,} {unit}" if isinstance(size, int) else f", size {NOT_RECORDED}"
    scores = card.get("best_scores") or {}
    steps, best_step = card.get("steps"), best_elsewhere(card)
    best = ", ".join(format_score(name, value) for name, value in scores.items())
    if best and best_step is not None:
        best += f" (at step {best_step:,}, not these weights')"  # a last.pt after its best
    return [
        ("task", TASK_TITLES.get(card.get("task"), str(card.get("task")))),
        ("architecture", str(card.get("architecture") or NOT_RECORDED)),
        ("data", data_text),
        ("steps", f"{steps:,}" if isinstance(steps, int) else NOT_RECORDED),
        ("best scores", best or NOT_RECORDED),
        ("trained", _format_date(card.get("trained_at"))),
    ]


def best_elsewhere(card: Mapping[str, Any]) -> int | None:
    """The step at which a card's best scores were measured, where that is not the checkpoint's
    own (a last.pt after its run's best); None where it is, or is not known (-1: no evaluation)."""
    best_step = card.get("best_step")
    if isinstance(best_step, int) and best_step >= 0 and best_step != card.get("steps"):
        return best_step
    return None


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as a Markdown list (the sidebar shows it under the checkpoint picker)."""
    # a text from the config may hold a path that is not UTF-8 (Streamlit refused the page)
    rows = card_rows(card)
    lines = [f"- **{label}**: {escape_markdown(shown_name(text))}" for label, text in rows]
    if not card.get("recorded"):
        lines.append("- *an older checkpoint without a card: these lines come from its config*")
    return "\n".join(lines)


def escape_markdown(text: str) -> str:
    """Markdown-inert text (paths hold underscores and asterisks), as Streamlit renders it.

    Besides Markdown's own signs (and ``&``, which starts an entity such as ``&amp;``), a colon
    that could open Streamlit's ``:smile:`` emoji, ``:red[x]`` colour or ``:material/home:``
    icon is written as the entity ``&#58;`` (a backslash before it stops the first two only),
    and a list marker or a heading underline at the start of a line (``1. x``, ``- x``) is
    escaped.
    """
    text = MARKDOWN_SIGN.sub(_escaped, text)
    text = re.sub(r"^([ \t]*\d+)([.)])", r"\1\\\2", text, flags=re.M)
    return re.sub(r"^([ \t]*)([-+=])", r"\1\\\2", text, flags=re.M)


MARKDOWN_SIGN = re.compile(r"[\\`*_\[\]<>#|~$&]|:(?=[\w+/-]*[:\[{])")


def _escaped(sign: re.Match[str]) -> str:
    return "&#58;" if sign[0] == ":" else "\\" + sign[0]


def inline_code(text: str) -> str:
    """``text`` as a Markdown code span, shown verbatim whatever backticks it holds: fenced by one
    backtick more than its longest run of them, and padded with a space where it begins or ends
    with one, or with a space at both ends (which Markdown strips; CommonMark, "Code spans")."""
    fence = "`" * (1 + max(map(len, re.findall(r"`+", text)), default=0))
    spaced = text[:1] == text[-1:] == " " and text.strip() != ""  # Markdown strips one each
    pad = " " if text[:1] == "`" or text[-1:] == "`" or spaced else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def knows_only_scenes(card: Mapping[str, Any]) -> bool:
    """Whether a captioner was trained on the synthetic scenes only (so photographs get shapes)."""
    return bool((card.get("data") or {}).get("synthetic_scenes"))


def readme_section(readme: Path, title: str) -> str | None:
    """The Markdown of the README section ``## title`` (up to the next ``## ``), or None."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    return match.group(1).strip() if match else None
