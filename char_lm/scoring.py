"""The exact loss of a character model on a text, in nats/char: used by training and evaluate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from char_lm.data import IGNORE_INDEX, StreamBatches
from char_lm.model import CharLM


@torch.no_grad()
def evaluate_text(
    model: CharLM,
    ids: Tensor,
    block_size: int,
    *,
    streams: int = 1,
    max_windows: int = 0,
    what: str = "text",
) -> tuple[float, int]:
    """Mean cross-entropy (nats/char) over the predicted characters of ``ids``, and their count.

    ``ids`` is cut into ``streams`` contiguous streams walked in windows of ``block_size`` with the
    state carried (`StreamBatches` with ``cover_all``); ``max_windows > 0`` stops after that many
    windows (the same ones every time). Runs in eval mode and restores the model's mode after; the caller chooses the precision
    (the engine's, or `recurrent.precision.Precision.for_inference`).
    """
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    batches = StreamBatches(ids, streams, block_size, cover_all=True, what=what).to(device)
    windows = len(batches) if max_windows <= 0 else min(max_windows, len(batches))
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    state = None
    for i in range(windows):
        inputs, targets = batches.window(i)
        logits, _, state = model(inputs, state=state)
        total += F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total.item() / max(count, 1), count
