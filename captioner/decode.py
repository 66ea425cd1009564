"""Caption generation: greedy decoding and batched beam search over `CaptionDecoder.step`.

Pure functions under ``torch.no_grad()``: they take the decoder, the encoded images and the search
settings, and read no globals. Put the decoder in eval mode first (dropout would make them random).

Conventions shared by both:

- ``max_length`` is the number of decoding steps, so a caption holds at most ``max_length`` words;
  one that reaches it without emitting <end> is returned unfinished (``finished=False``) and its
  log-probability has no <end> term.
- <start> and <pad> are never emitted. Their probability is not renormalised away, so every
  ``logprob`` is exactly what teacher forcing the returned caption (plus <end> when finished)
  gives.
- Length penalty: ``score = logprob / length ** length_penalty``, where ``length`` counts the words
  plus the <end> token when there is one. 0 ranks by raw log-probability, which favours short
  captions; 1 ranks by the mean log-probability per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageFeatures
from recurrent.errors import UserError


@dataclass
class Caption:
    """One decoded caption.

    tokens: word ids, without <start> and <end>.
    logprob: natural-log probability of the tokens (and of <end> when finished) under the model.
    score: the ranking score, ``logprob / length ** length_penalty`` (see the module docstring).
    attention: (len(tokens), N) attention weights over the grid positions for each word, for
        attention decoders; None otherwise.
    finished: whether the caption ended with <end> (False: cut at ``max_length`` words).
    """

    tokens: list[int]
    logprob: float
    score: float
    attention: Tensor | None = None
    finished: bool = True


def _log_probs(logits: Tensor, blocked: list[int]) -> Tensor:
    """Log-softmax over the vocabulary, then the never-emitted tokens set to -inf.  (R, V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp[:, blocked] = float("-inf")
    return logp


def _blocked_ids(decoder: CaptionDecoder, start_id: int, end_id: int) -> list[int]:
    return sorted({start_id, decoder.pad_id} - {end_id})


def check_decode_settings(beam_size: int, max_length: int, n_best: int = 1) -> None:
    """Decoding settings no search can use are a UserError (callers may check before encoding)."""
    if max_length < 1:
        raise UserError(f"max_length must be at least 1 word, got {max_length}")
    if beam_size < 1:
        raise UserError(f"beam size must be at least 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise UserError(
            f"n_best must be between 1 and the beam size ({beam_size}), got {n_best}; "
            "raise the beam size or ask for fewer captions"
        )


@torch.no_grad()
def greedy_decode(
    decoder: CaptionDecoder,
    features: ImageFeatures,
    *,
    max_length: int,
    start_id: int,
    end_id: int,
) -> list[Caption]:
    """The most likely next word at every step, for all B images at once: one `Caption` each."""
    check_decode_settings(1, max_length)
    blocked = _blocked_ids(decoder, start_id, end_id)
    batch = features.grid.size(0)
    device = features.grid.device
    state = decoder.init_state(features)
    keys = decoder.attention_keys(features)
    tokens = torch.full((batch,), start_id, dtype=torch.long, device=device)
    logprob = torch.zeros(batch, device=device)
    words = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    history, alphas = [], []
    for _ in range(max_length):
        logits, state, alpha = decoder.step(tokens, state, features, keys)
        best, tokens = _log_probs(logits, blocked).max(dim=-1)  # (B,), (B,)
        active = ~finished
        logprob += torch.where(active, best, torch.zeros_like(best))
        is_end = tokens == end_id
        words += (active & ~is_end).long()
        finished |= is_end
        history.append(tokens)
        if alpha is not None:
            alphas.append(alpha.float())
        if bool(finished.all()):
            break
    history_cpu = torch.stack(history, dim=1).cpu()  # (B, steps)
    alphas_cpu = torch.stack(alphas, dim=1).cpu() if alphas else None  # (B, steps, N)
    captions = []
    for row in range(batch):
        length = int(words[row])
        captions.append(
            Caption(
                tokens=history_cpu[row, :length].tolist(),
                logprob=float(logprob[row]),
                score=float(logprob[row]),
                attention=None if alphas_cpu is None else alphas_cpu[row, :length].clone(),
                finished=bool(finished[row]),
            )
        )
    return captions


@torch.no_grad()
def beam_search(
    decoder: CaptionDecoder,
    features: ImageFeatures,
    *,
    beam_size: int,
    max_length: int,
    start_id: int,
    end_id: int,
    length_penalty: float = 0.0,
    n_best: int = 1,
) -> list[list[Caption]]:
    """Beam search for all B images at once; per image its ``n_best`` captions, best first.

    The B x K beams are B*K rows that advance together (each image's features repeated K times).
    At step 0 only one beam per image is live, so the K beams start from K different words. At each
    step every live beam proposes every word; each image keeps its K best candidates by score. A
    beam that emitted <end> is finished: it proposes only itself, with its log-probability and score
    unchanged, so it keeps its place until K better candidates push it out. The search stops after
    ``max_length`` steps, or earlier once the result cannot change: when every image's ``n_best``
    best beams are finished (without length penalty, where live beams' scores only fall) or when
    all beams are (with one). Then the K beams, finished or not, are ranked by score, so ``n_best``
    captions come back even when none ever emitted <end>.
    """
    check_decode_settings(beam_size, max_length, n_best)
    blocked = _blocked_ids(decoder, start_id, end_id)
    batch, beams = features.grid.size(0), beam_size
    device = features.grid.device
    rows = torch.arange(batch, device=device).repeat_interleave(beams)  # (B*K,) image of each row
    features = features.index_select(rows)
    keys = decoder.attention_keys(features)
    state = decoder.init_state(features)  # (S, L, B*K, H)
    tokens = torch.full((batch * beams,), start_id, dtype=torch.long, device=device)
    neg_inf = float("-inf")
    beam_logprob = torch.full((batch, beams), neg_inf, device=device)
    beam_logprob[:, 0] = 0.0  # one live beam per image at the start
    beam_score = beam_logprob.clone()
    finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    words = torch.zeros(batch, beams, dtype=torch.long, device=device)
    history = torch.zeros(batch * beams, 0, dtype=torch.long, device=device)
    alpha_history: Tensor | None = None
    row_offset = torch.arange(batch, device=device).unsqueeze(1) * beams  # (B, 1)
    for step in range(max_length):
        logits, state, alpha = decoder.step(tokens, state, features, keys)
        logp = _log_probs(logits, blocked)
        vocab = logp.size(-1)
        cand_logprob = beam_logprob.unsqueeze(-1) + logp.view(batch, beams, vocab)  # (B, K, V)
        # Every live beam has step + 1 tokens now, so one divisor serves them all.
        cand_score = cand_logprob / float(step + 1) ** length_penalty
        # A finished beam's only candidate is itself, unchanged, in the <end> column.
        end_column = torch.arange(vocab, device=device) == end_id  # (V,)
        done = finished.unsqueeze(-1)  # (B, K, 1)
        itself = torch.where(end_column, beam_logprob.unsqueeze(-1), neg_inf)  # (B, K, V)
        cand_logprob = torch.where(done, itself, cand_logprob)
        itself = torch.where(end_column, beam_score.unsqueeze(-1), neg_inf)
        cand_score = torch.where(done, itself, cand_score)
        beam_score, best = cand_score.view(batch, -1).topk(beams, dim=-1)  # (B, K), sorted
        beam_logprob = cand_logprob.view(batch, -1).gather(1, best)  # (B, K)
        origin, token = best // vocab, best % vocab  # (B, K) parent beam and its new word
        was_finished = finished.gather(1, origin)
        is_end = token == end_id
        words = words.gather(1, origin) + (~was_finished & ~is_end).long()
        finished = was_finished | is_end
        parent = (row_offset + origin).view(-1)  # (B*K,) rows of the parents
        state = state.index_select(2, parent)
        tokens = token.view(-1)
        history = torch.cat([history.index_select(0, parent), tokens.unsqueeze(1)], dim=1)
        if alpha is not None:
            alpha = alpha.float().index_select(0, parent).unsqueeze(1)  # (B*K, 1, N)
            alpha_history = (
                alpha
                if alpha_history is None
                else torch.cat([alpha_history.index_select(0, parent), alpha], dim=1)
            )
        # Without a length penalty a live beam's score only falls, so once each image's n_best
        # best beams are finished nothing can overtake them; with one, wait for all beams.
        settled = finished[:, :n_best] if length_penalty == 0 else finished
        if bool(settled.all()):
            break
    return _collect(history, alpha_history, words, finished, beam_logprob, beam_score, n_best)


def _collect(
    history: Tensor,
    alpha_history: Tensor | None,
    words: Tensor,
    finished: Tensor,
    beam_logprob: Tensor,
    beam_score: Tensor,
    n_best: int,
) -> list[list[Caption]]:
    """The ``n_best`` best of each image's beams (already sorted by score) as `Caption`s."""
    batch, beams = beam_score.shape
    history = history.cpu()
    alpha_history = None if alpha_history is None else alpha_history.cpu()
    words, finished = words.cpu(), finished.cpu()
    beam_logprob, beam_score = beam_logprob.cpu(), beam_score.cpu()
    results = []
    for image in range(batch):
        captions = []
        for beam in range(beams):
            score = float(beam_score[image, beam])
            if score == float("-inf") or len(captions) == n_best:
                continue  # -inf: an empty beam (fewer usable words than beams)
            row, length = image * beams + beam, int(words[image, beam])
            captions.append(
                Caption(
                    tokens=history[row, :length].tolist(),
                    logprob=float(beam_logprob[image, beam]),
                    score=score,
                    attention=None
                    if alpha_history is None
                    else alpha_history[row, :length].clone(),
                    finished=bool(finished[image, beam]),
                )
            )
        results.append(captions)
    return results
