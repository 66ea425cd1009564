"""The character-level language model's typed config; configs/char_lm/*.yaml mirror it key for key.

Load one with ``recurrent.config.load_config(CharLMConfig, "configs/char_lm/ship.yaml", ["a.b=v"])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recurrent.config import check_bounds
from recurrent.engine import RunSettings
from recurrent.errors import UserError

# The canonical public copy of tiny-shakespeare (Karpathy's char-rnn) and its sha256.
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


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


def architecture_keys(config: dict, saved: dict) -> list[str]:
    """The architecture fields to compare on resume (embed_size only matters with embeddings)."""
    uses_embedding = "embedding" in (config["model"]["input"], saved["model"].get("input"))
    return [k for k in ARCHITECTURE_KEYS if uses_embedding or k != "model.embed_size"]


def check_config(config: CharLMConfig) -> None:
    """Values the types allow but training cannot use are a UserError naming the key."""
    data, model, train = config.data, config.model, config.train
    at_least_one = {
        "data.block_size": data.block_size,
        "data.batch_size": data.batch_size,
        "model.embed_size": model.embed_size,
        "model.num_layers": model.num_layers,
        "model.hidden_size": model.hidden_size,
        "train.log_every": train.log_every,
    }
    not_negative = {
        "train.max_steps": train.max_steps,
        "train.time_budget_s": train.time_budget_s,
        "train.lr_decay_steps": train.lr_decay_steps,
        "train.weight_decay": train.weight_decay,
        "train.warmup_steps": train.warmup_steps,
        "train.grad_clip": train.grad_clip,
        "train.eval_batches": train.eval_batches,
        "train.eval_every": train.eval_every,
        "train.patience": train.patience,
        "train.checkpoint_every": train.checkpoint_every,
        "train.checkpoint_every_s": train.checkpoint_every_s,
    }
    check_bounds(at_least_one, not_negative)
    if not 0 <= model.dropout < 1:
        raise UserError(f"config key 'model.dropout' must be in [0, 1), got {model.dropout}")
    if not 0 <= data.val_fraction < 1:
        raise UserError(
            f"config key 'data.val_fraction' must be in [0, 1), got {data.val_fraction}"
        )
    if not 0 <= train.min_lr_ratio <= 1:
        raise UserError(
            f"config key 'train.min_lr_ratio' must be in [0, 1], got {train.min_lr_ratio}"
        )
    if train.lr <= 0:
        raise UserError(f"config key 'train.lr' must be > 0, got {train.lr}")
    if train.max_steps == 0 and train.time_budget_s == 0:
        raise UserError(
            "set train.max_steps or train.time_budget_s (both are 0: training never ends)"
        )
