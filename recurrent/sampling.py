"""Pure sampling helpers: temperature, top-k and top-p (nucleus) filtering of logits.

These never read globals: randomness comes from the `torch.Generator` the caller passes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Scale by 1/temperature and set disallowed tokens to -inf.  logits: (B, V) -> (B, V).

    top_k keeps the k most likely tokens; top_p keeps the smallest set of most likely tokens whose
    probability adds up to at least p (Holtzman et al. 2020). The most likely token always stays.
    Each filter is off where it would keep every token, and where None or 0 (as Hugging Face's
    `top_k=0`; a top_p of exactly 0 is off too, where any p above it keeps the most likely token
    alone: the CLIs and the app refuse it).
    """
    if not temperature > 0:  # NaN too
        raise ValueError("temperature must be > 0 (use greedy decoding for temperature 0)")
    logits = logits.float()
    # Shifted so that the largest is 0: a tiny temperature then sends the others to -inf instead
    # of overflowing to inf - inf = NaN (softmax, top-k and top-p do not change with the shift).
    # (And a temperature below float32's smallest normal number would round to a division by 0.)
    temperature = max(temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False  # the most likely: also where top_p is below float32's least
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One id per row of probabilities (B, V) -> (B,), drawn with ``generator``, for training.

    A row that is not finite (a model whose weights went NaN) is drawn from a uniform stand-in,
    where `torch.multinomial` would raise (a device-side assert on CUDA): the loss it feeds is NaN
    all the same, and the training loop's guard stops the run on that with its one line.
    """
    finite = probs.isfinite().all(dim=-1, keepdim=True)
    return torch.multinomial(torch.where(finite, probs, 1.0), 1, generator=generator).squeeze(-1)


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token for each row.  logits: (B, V) -> ids (B,).

    The draw runs on ``generator``'s device (a CPU generator with a model on a GPU, as the app
    seeds it): the same seed then gives the same text on every device, up to the logits' rounding.
    """
    if greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    if generator is None or generator.device == probs.device:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    drawn = torch.multinomial(probs.to(generator.device), 1, generator=generator)
    return drawn.squeeze(-1).to(probs.device)
