"""The character-level language model's typed config; configs/char_lm/*.yaml mirror it key for key.

Load one with ``recurrent.config.load_config(CharLMConfig, "configs/char_lm/ship.yaml", ["a.b=v"])``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from recurrent.config import check_bounds, data_name, describe_cell
from recurrent.engine import RUN_BOUNDS, RunSettings, check_run_settings
from recurrent.errors import UserError

# The canonical public copy of tiny-shakespeare (Karpathy's char-rnn) and its sha256.
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# What a checkpoint written before a key existed ran with, where the key's default is not that
# (`recurrent.config.older_defaults`): streams whose state never restarted.
OLDER_DEFAULTS = {"data.state_reset": 0.0}


@dataclass
class DataConfig:
    # A UTF-8 text file, or builtin:hihello / builtin:ship. Empty: download `url` once into the
    # cache ($CRNN_CACHE, else ~/.cache/crnn) and check it against `sha256`.
    path: str = ""
    url: str = TINY_SHAKESPEARE_URL
    sha256: str = TINY_SHAKESPEARE_SHA256  # empty: no check
    val_fraction: float = 0.1  # the last 10% validates; 0: validate on the train text
    block_size: int = 128  # characters per truncated-BPTT window
    batch_size: int = 64  # parallel contiguous streams the train text is cut into
    # Chance that a stream's carried state restarts from zero at a window: a prompt (or a text to
    # score) is read from a zero state, which stateful training otherwise hardly ever shows.
    state_reset: float = 0.02


@dataclass
class ModelConfig:
    input: Literal["onehot", "embedding"] = "embedding"  # one-hot vectors, or a learned embedding
    embed_size: int = 128  # with input=embedding
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    num_layers: int = 2
    hidden_size: int = 512
    dropout: float = 0.2  # between stacked layers and on the core's output
    backend: Literal["fused", "explicit"] = "fused"  # torch.nn kernels, or the equations


@dataclass
class TrainConfig(RunSettings):
    """The run rules shared with the captioner (`recurrent.engine.RunSettings`, see the README's
    "How a run works") with char_lm's defaults, and its own evaluation size."""

    max_steps: int = 5000  # 0: no step limit (then time_budget_s must be set)
    seed: int = 1337
    lr: float = 2e-3
    adam_beta2: float = 0.99  # nanoGPT's shakespeare_char: small batches, short runs
    eval_every: int = 250  # steps between evaluations (0: at every pass over the text)
    eval_batches: int = 20  # windows of the val stream per evaluation; 0: the whole val stream


@dataclass
class CharLMConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Fields that define the network: a checkpoint whose values differ cannot be resumed.
ARCHITECTURE_KEYS = [
    "model.input",
    "model.embed_size",
    "model.cell",
    "model.num_layers",
    "model.hidden_size",
]


BUILTIN_PREFIX = "builtin:"  # data.path builtin:hihello names a text that ships with the code


def describe_model(model: Mapping[str, Any]) -> str:
    """The model card's architecture line, from the ``model`` section of a config (a dict, as
    checkpoints save it): "2-layer LSTM, hidden 512, embedding 128" (or "one-hot input"). The
    trainer records it, and the app shows it for any checkpoint, cards or not."""
    parts = [describe_cell(model)]
    if model.get("hidden_size"):
        parts.append(f"hidden {model['hidden_size']}")
    if model.get("input") == "onehot":
        parts.append("one-hot input")
    elif model.get("embed_size"):
        parts.append(f"embedding {model['embed_size']}")
    return ", ".join(parts)


def describe_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """The model card's data, from the ``data`` section of a config (a dict): its name and path
    (size None: the trainer adds the number of characters it trained on, the validation part
    left out, as a captioner's card counts its training images; older cards counted the whole
    text, in "characters")."""
    path = str(data.get("path") or "")
    if path.startswith(BUILTIN_PREFIX):
        name = f"{path.removeprefix(BUILTIN_PREFIX)} (built-in toy text)"
    elif path:
        name = data_name(path)
    elif data.get("url") == TINY_SHAKESPEARE_URL:
        name, path = "tinyshakespeare", str(data["url"])
    else:
        name, path = data_name(str(data.get("url") or "")) or "unknown", str(data.get("url", ""))
    return {"name": name, "path": path, "size": None, "unit": "training characters"}


def architecture_keys(config: dict, saved: dict) -> list[str]:
    """The architecture fields to compare on resume (embed_size only matters with embeddings)."""
    uses_embedding = "embedding" in (config["model"]["input"], saved["model"].get("input"))
    return [k for k in ARCHITECTURE_KEYS if uses_embedding or k != "model.embed_size"]


# Where each number must lie, in interval notation ("(0, 10]": 0 < lr <= 10), checked by
# `recurrent.config.check_bounds`. The caps on sizes refuse values that would only allocate
# gigabytes and crash; "[0, inf)" is any finite value. Every int and float field has a row.
BOUNDS = {
    **RUN_BOUNDS,
    "data.val_fraction": "[0, 1)",
    "data.block_size": "[1, 16384]",
    "data.batch_size": "[1, 16384]",
    "data.state_reset": "[0, 1]",
    "model.embed_size": "[1, 8192]",
    "model.num_layers": "[1, 32]",
    "model.hidden_size": "[1, 8192]",
    "model.dropout": "[0, 1)",
    "train.eval_batches": "[0, 1e9]",
}


def check_config(config: CharLMConfig) -> None:
    """Values the types allow but training cannot use are a UserError naming the key."""
    check_bounds(config, BOUNDS)
    check_run_settings(config.train)
    if config.train.max_steps == 0 and config.train.time_budget_s == 0:
        raise UserError(
            "set train.max_steps or train.time_budget_s (both are 0: training never ends)"
        )
