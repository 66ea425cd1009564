"""`CharLM`: characters in (one-hot or embedded), the shared recurrent core, a linear head out."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from char_lm.config import ModelConfig
from char_lm.data import IGNORE_INDEX
from recurrent.core import RecurrentCore


class CharLM(nn.Module):
    """Predicts the next character at every position of a batch of character-id sequences.

    ``forward(idx, targets=None, state=None) -> (logits, loss, state)``: idx (B, T) int64;
    logits (B, T, V); loss the mean cross-entropy in nats/char over the targets that are not
    `IGNORE_INDEX` (None without targets); state the core's (S, L, B, H) state after the last
    step, to pass into the next window of the same streams (detach it first when training).
    """

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        if config.input not in ("onehot", "embedding"):
            raise ValueError(f"model.input must be onehot or embedding, got {config.input!r}")
        self.vocab_size = vocab_size
        self.input = config.input
        # One-hot input (the lectures) feeds V-wide vectors; an embedding feeds embed_size-wide ones.
        self.embedding = (
            nn.Embedding(vocab_size, config.embed_size) if config.input == "embedding" else None
        )
        input_size = vocab_size if self.embedding is None else config.embed_size
        self.core = RecurrentCore(
            config.cell,
            input_size,
            config.hidden_size,
            config.num_layers,
            config.dropout,
            config.backend,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, vocab_size)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        if self.embedding is None:
            x = F.one_hot(idx, self.vocab_size).to(self.head.weight.dtype)  # (B, T, V)
        else:
            x = self.embedding(idx)  # (B, T, E)
        outputs, state = self.core(x, state)  # (B, T, H), (S, L, B, H)
        logits = self.head(self.dropout(outputs))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, self.vocab_size), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return logits, loss, state

    def init_state(self, batch_size: int, like: Tensor) -> Tensor:
        """Zero state (S, L, B, H) with the dtype and device of ``like`` (a float tensor)."""
        return self.core.init_state(batch_size, like)
