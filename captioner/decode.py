"""Caption generation over `CaptionDecoder.step`: greedy decoding, batched beam search (plain or
diverse), and multinomial sampling for self-critical training.

Greedy decoding and beam search are pure functions under ``torch.no_grad()``: they take the
decoder, the encoded images and the search settings, and read no globals. Put the decoder in eval
mode first (dropout would make them random). `sample_captions` keeps the autograd graph when
gradients are enabled: self-critical training differentiates the log-probabilities it returns.

Conventions shared by all:

- ``max_length`` is the number of decoding steps, so a caption holds at most ``max_length`` words;
  one that reaches it without emitting <end> is returned unfinished (``finished=False``) and its
  log-probability has no <end> term.
- <start> and <pad> are never emitted, nor the ``suppress_ids`` (the CLIs' ``--suppress-unk``
  passes <unk>). In greedy decoding and beam search their probability is not renormalised away, so
  every ``logprob`` is exactly what teacher forcing the returned caption (plus <end> when finished)
  gives. `sample_captions` draws from the distribution renormalised over the allowed words, and
  returns the log-probabilities of that distribution (the policy of self-critical training: its
  gradient must be that of the probabilities the samples were drawn with).
- Constraints (greedy decoding and beam search): ``min_length`` forbids <end> before that many
  words; ``block_ngram_repeat`` N > 0 forbids any word that would complete an N-gram of words
  already in the caption (OpenNMT's ``block_ngram_repeat``; N = 1: no word twice). A forbidden
  continuation gets probability 0, so beam search returns the most likely captions among those
  that keep the constraints (a test checks this against brute force).
- Length penalty: ``score = logprob / length ** length_penalty``, where ``length`` counts the words
  plus the <end> token when there is one. 0 ranks by raw log-probability, which favours short
  captions; 1 ranks by the mean log-probability per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageFeatures
from recurrent.errors import UserError
from recurrent.sampling import draw

NEG_INF = float("-inf")


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


def setting_name(key: str, value: object = None) -> str:
    """A decoding setting as error lines name it, in words and by the flag that sets it, with its
    value where given: ``"min length (--min-length)"``, ``"max length (--max-length: 24)"``
    (``key``: the ``decode.*`` key of a config, e.g. ``min_length``)."""
    flag = f"--{key.replace('_', '-')}" + ("" if value is None else f": {value}")
    return f"{key.replace('_', ' ')} ({flag})"


def check_decode_settings(
    beam_size: int,
    max_length: int,
    n_best: int = 1,
    *,
    block_ngram_repeat: int = 0,
    min_length: int = 0,
    diversity_groups: int = 1,
    diversity_strength: float = 0.0,
) -> None:
    """Decoding settings no search can use are a UserError (callers may check before encoding).

    Each line names the setting by its words and its flag (`setting_name`), as the command lines
    and the app's settings (of the same words) set them."""
    beam = f"the {setting_name('beam_size', beam_size)}"
    if max_length < 1:
        raise UserError(f"{setting_name('max_length')} must be at least 1 word, got {max_length}")
    if beam_size < 1:
        raise UserError(f"{setting_name('beam_size')} must be at least 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise UserError(
            f"{setting_name('n_best')} must be between 1 and {beam}, got {n_best}; raise "
            "the beam size or ask for fewer captions"
        )
    if block_ngram_repeat < 0:
        raise UserError(
            f"{setting_name('block_ngram_repeat')} must be 0 (off) or more, got "
            f"{block_ngram_repeat}"
        )
    if not 0 <= min_length <= max_length:
        raise UserError(
            f"{setting_name('min_length')} must be between 0 and the "
            f"{setting_name('max_length', max_length)}, got {min_length}"
        )
    if diversity_groups < 1 or beam_size % diversity_groups:
        raise UserError(
            f"{setting_name('diversity_groups')} must divide {beam}, got {diversity_groups}"
        )
    if diversity_strength < 0:
        raise UserError(
            f"{setting_name('diversity_strength')} must not be negative, got {diversity_strength}"
        )


class _Constraints:
    """What a step may not emit: fixed ids, <end> before ``min_length``, repeated N-grams."""

    def __init__(
        self,
        decoder: CaptionDecoder,
        start_id: int,
        end_id: int,
        suppress_ids: Sequence[int],
        min_length: int,
        block_ngram_repeat: int,
    ) -> None:
        self.blocked = sorted({start_id, decoder.pad_id, *suppress_ids} - {end_id})
        self.end_id = end_id
        self.min_length = min_length
        self.ngram = block_ngram_repeat

    def log_probs(self, logits: Tensor, step: int, history: Tensor | None) -> Tensor:
        """Log-softmax of ``logits`` (R, V), forbidden continuations at -inf.

        ``history`` (R, step) holds each row's words so far (None: no N-gram blocking needed).
        """
        logp = torch.log_softmax(logits.float(), dim=-1)
        if logp.requires_grad:  # sampling for training: keep the log-softmax output intact
            blocked = torch.zeros(logp.size(-1), dtype=torch.bool, device=logp.device)
            blocked[self.blocked] = True
            if step < self.min_length:
                blocked[self.end_id] = True
            return logp.masked_fill(blocked, NEG_INF)
        logp[:, self.blocked] = NEG_INF
        if step < self.min_length:
            logp[:, self.end_id] = NEG_INF
        n = self.ngram
        if n and history is not None and history.size(1) >= n:
            # Windows of n words; where the first n-1 equal the caption's last n-1 words, the
            # window's last word would repeat that n-gram.
            windows = history.unfold(1, n, 1)  # (R, W, n)
            if n > 1:
                last = history[:, history.size(1) - (n - 1) :]  # (R, n-1)
                match = (windows[:, :, :-1] == last.unsqueeze(1)).all(dim=-1)  # (R, W)
            else:
                match = torch.ones_like(windows[:, :, 0], dtype=torch.bool)
            hits = torch.zeros_like(logp).scatter_add_(1, windows[:, :, -1], match.float())
            logp.masked_fill_(hits > 0, NEG_INF)
        return logp


def _needs_history(constraints: _Constraints) -> bool:
    return constraints.ngram > 0


@torch.no_grad()
def greedy_decode(
    decoder: CaptionDecoder,
    features: ImageFeatures,
    *,
    max_length: int,
    start_id: int,
    end_id: int,
    block_ngram_repeat: int = 0,
    min_length: int = 0,
    suppress_ids: Sequence[int] = (),
) -> list[Caption]:
    """The most likely allowed next word at every step, for all B images at once: one `Caption`
    each (the same as `beam_search` with beam size 1). Where the constraints leave an image no
    allowed word before it ends (beam search then has no caption for it), its caption stops there
    unfinished, with log-probability -inf."""
    check_decode_settings(
        1, max_length, block_ngram_repeat=block_ngram_repeat, min_length=min_length
    )
    constraints = _Constraints(
        decoder, start_id, end_id, suppress_ids, min_length, block_ngram_repeat
    )
    batch = features.grid.size(0)
    device = features.grid.device
    state = decoder.init_state(features)
    keys = decoder.attention_keys(features)
    tokens = torch.full((batch,), start_id, dtype=torch.long, device=device)
    logprob = torch.zeros(batch, device=device)
    words = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    stuck = torch.zeros(batch, dtype=torch.bool, device=device)  # every next word forbidden
    history, alphas = [], []
    for step in range(max_length):
        logits, state, alpha = decoder.step(tokens, state, features, keys)
        so_far = torch.stack(history, dim=1) if history and _needs_history(constraints) else None
        logp = constraints.log_probs(logits, step, so_far)
        best, tokens = logp.max(dim=-1)  # (B,), (B,)
        active = ~(finished | stuck)
        logprob += torch.where(active, best, torch.zeros_like(best))  # -inf where it gets stuck
        stuck |= active & torch.isneginf(best)
        grows = active & ~stuck
        is_end = tokens == end_id
        words += (grows & ~is_end).long()
        finished |= grows & is_end
        history.append(tokens)
        if alpha is not None:
            alphas.append(alpha.float())
        if bool((finished | stuck).all()):
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
    block_ngram_repeat: int = 0,
    min_length: int = 0,
    suppress_ids: Sequence[int] = (),
    diversity_groups: int = 1,
    diversity_strength: float = 0.0,
) -> list[list[Caption]]:
    """Beam search for all B images at once; per image its ``n_best`` captions, best first.

    The B x K beams are B*K rows that advance together; every beam reads its image's features
    without copies (`CaptionDecoder.step` with one feature row per image). At step 0 only one beam
    per image (per group) is live, and the decoder runs once per image. At each step every live
    beam proposes every allowed word; each image keeps its K best candidates by score. A beam that
    emitted <end> is finished: it proposes only itself, with its log-probability and score
    unchanged, so it keeps its place until K better candidates push it out. An image is settled
    once its result cannot change: when its ``n_best`` best beams are finished (without length
    penalty or diversity, where live beams' scores only fall) or when all its beams are. Settled
    images leave the batch, so the decoder runs only for images still searching. The search ends
    when all are settled or after ``max_length`` steps; then each image's K beams, finished or
    not, are ranked by score, so ``n_best`` captions come back even when none ever emitted <end>
    (fewer only when fewer than ``n_best`` allowed captions exist, or when diverse groups ended
    on the same caption: it is returned once, at its best place).

    Diverse beam search (Vijayakumar et al. 2018, "Diverse Beam Search"), with
    ``diversity_groups`` G > 1: the K beams form G groups of K/G that each start from <start>. At
    every step the groups choose in turn; group g ranks its candidates by their log-probability
    minus ``diversity_strength`` times the number of beams of groups 0..g-1 that chose the same word
    at this step (Hamming diversity; <end> is not penalised), summed over the steps. Within a
    group this augmented score takes the place of the log-probability; the returned ``logprob``
    and ``score`` are the model's own, and the K beams of all groups are ranked by that score.
    """
    check_decode_settings(
        beam_size,
        max_length,
        n_best,
        block_ngram_repeat=block_ngram_repeat,
        min_length=min_length,
        diversity_groups=diversity_groups,
        diversity_strength=diversity_strength,
    )
    constraints = _Constraints(
        decoder, start_id, end_id, suppress_ids, min_length, block_ngram_repeat
    )
    batch, beams, groups = features.grid.size(0), beam_size, diversity_groups
    width = beams // groups  # beams per group
    diverse = groups > 1 and diversity_strength > 0
    device = features.grid.device
    # Only without length penalty and groups do live beams' scores only fall, so that an image's
    # result is final once its n_best best beams are finished.
    early_stop = length_penalty == 0 and groups == 1
    keys = decoder.attention_keys(features)  # (B, N, A) or None
    state = decoder.init_state(features)  # (S, L, B, H): one row per image until step 0 is done
    tokens = torch.full((batch,), start_id, dtype=torch.long, device=device)
    beam_logprob = torch.full((batch, beams), NEG_INF, device=device)
    beam_logprob[:, ::width] = 0.0  # one live beam per group at the start
    beam_score = beam_logprob.clone()  # the ranking score (augmented with diversity)
    beam_augmented = beam_logprob.clone() if diverse else beam_logprob
    finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    words = torch.zeros(batch, beams, dtype=torch.long, device=device)
    history = torch.zeros(batch, 0, dtype=torch.long, device=device)  # (rows, steps so far)
    alpha_history: Tensor | None = None
    images = torch.arange(batch, device=device)  # the original index of each searching image
    results: list[list[Caption]] = [[] for _ in range(batch)]
    beam_offset = torch.arange(beams, device=device)
    for step in range(max_length):
        searching = images.size(0)
        logits, state, alpha = decoder.step(tokens, state, features, keys)
        so_far = history if _needs_history(constraints) else None
        logp = constraints.log_probs(logits, step, so_far)  # (R, V)
        vocab = logp.size(-1)
        if step == 0:
            end_column = torch.arange(vocab, device=device) == end_id  # (V,)
        rows_per_image = logp.size(0) // searching  # 1 at step 0, then K
        logp = logp.view(searching, rows_per_image, vocab).expand(searching, beams, vocab)
        done = finished.unsqueeze(-1)  # (B, K, 1)
        divisor = float(step + 1) ** length_penalty  # every live beam has step + 1 tokens now
        chosen_counts = torch.zeros(searching, vocab, device=device) if diverse else None
        picks = []
        for group in range(groups):
            part = slice(group * width, (group + 1) * width)
            cand_logprob = beam_logprob[:, part].unsqueeze(-1) + logp[:, part]  # (B, W, V)
            cand_augmented = cand_logprob
            if diverse:
                cand_augmented = beam_augmented[:, part].unsqueeze(-1) + logp[:, part]
                if group:
                    cand_augmented = cand_augmented - diversity_strength * chosen_counts[:, None]
            cand_score = cand_augmented / divisor
            # A finished beam's only candidate is itself, unchanged, in the <end> column.
            group_done = done[:, part]
            cand_logprob = torch.where(
                group_done,
                torch.where(end_column, beam_logprob[:, part].unsqueeze(-1), NEG_INF),
                cand_logprob,
            )
            cand_score = torch.where(
                group_done,
                torch.where(end_column, beam_score[:, part].unsqueeze(-1), NEG_INF),
                cand_score,
            )
            score, best = cand_score.view(searching, -1).topk(width, dim=-1)  # (B, W), sorted
            origin = best // vocab + group * width  # (B, W) parent beam (index among all K)
            token = best % vocab
            new_logprob = cand_logprob.view(searching, -1).gather(1, best)
            if diverse:
                cand_augmented = torch.where(
                    group_done,
                    torch.where(end_column, beam_augmented[:, part].unsqueeze(-1), NEG_INF),
                    cand_augmented,
                )
                new_augmented = cand_augmented.view(searching, -1).gather(1, best)
                chose = ~finished.gather(1, origin) & (token != end_id) & (score > NEG_INF)
                chosen_counts.scatter_add_(1, token, chose.float())
            else:
                new_augmented = new_logprob
            picks.append((score, origin, token, new_logprob, new_augmented))
        beam_score, origin, token, beam_logprob, beam_augmented = (
            (torch.cat(parts, dim=1) if groups > 1 else parts[0])
            for parts in zip(*picks, strict=True)
        )
        if not diverse:
            beam_augmented = beam_logprob
        was_finished = finished.gather(1, origin)
        is_end = token == end_id
        words = words.gather(1, origin) + (~was_finished & ~is_end).long()
        finished = was_finished | is_end
        # Rows of the parents among this step's rows (one per image at step 0, then K).
        image_rows = torch.arange(searching, device=device).unsqueeze(1) * rows_per_image
        parent = (image_rows + origin * int(rows_per_image > 1)).view(-1)  # (B*K,)
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
        over = finished | (beam_logprob == NEG_INF)  # finished, or an empty beam
        settled = over[:, :n_best].all(dim=1) if early_stop else over.all(dim=1)  # (B,)
        if step == max_length - 1:
            settled = torch.ones_like(settled)
        if not bool(settled.any()):
            continue
        # Hand the settled images their captions and drop them from the search.
        done_index = settled.nonzero().squeeze(1)
        done_rows = (done_index.unsqueeze(1) * beams + beam_offset).view(-1)
        _collect(
            results,
            images[done_index].tolist(),
            history.index_select(0, done_rows),
            None if alpha_history is None else alpha_history.index_select(0, done_rows),
            words[done_index],
            finished[done_index],
            beam_logprob[done_index],
            length_penalty,
            n_best,
        )
        if bool(settled.all()):
            break
        keep = (~settled).nonzero().squeeze(1)
        keep_rows = (keep.unsqueeze(1) * beams + beam_offset).view(-1)
        images = images[keep]
        features = features.index_select(keep)
        keys = None if keys is None else keys.index_select(0, keep)
        state = state.index_select(2, keep_rows)
        tokens = tokens[keep_rows]
        history = history[keep_rows]
        alpha_history = None if alpha_history is None else alpha_history[keep_rows]
        beam_logprob, beam_score, finished, words = (
            beam_logprob[keep],
            beam_score[keep],
            finished[keep],
            words[keep],
        )
        beam_augmented = beam_augmented[keep] if diverse else beam_logprob
    return results


def _collect(
    results: list[list[Caption]],
    images: list[int],
    history: Tensor,
    alpha_history: Tensor | None,
    words: Tensor,
    finished: Tensor,
    beam_logprob: Tensor,
    length_penalty: float,
    n_best: int,
) -> None:
    """Fill ``results[image]`` with the ``n_best`` best of each image's K beams as `Caption`s,
    ranked by ``logprob / length ** length_penalty`` (a stable sort, so equal scores keep the
    beam order); empty beams (-inf: fewer allowed captions than beams) are left out, and so is a
    caption already taken (diverse groups, each a beam search of its own, can end on the same
    one, above all at a low diversity strength)."""
    beams = words.size(1)
    history = history.cpu()
    alpha_history = None if alpha_history is None else alpha_history.cpu()
    words, finished, beam_logprob = words.cpu(), finished.cpu(), beam_logprob.cpu()
    lengths = (words + finished.long()).clamp(min=1).double()
    scores = beam_logprob.double() / lengths**length_penalty  # (B, K)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    for position, image in enumerate(images):
        captions: list[Caption] = []
        taken: set[tuple[int, ...]] = set()
        for beam in order[position].tolist():
            logprob = float(beam_logprob[position, beam])
            row, length = position * beams + beam, int(words[position, beam])
            tokens = tuple(history[row, :length].tolist())
            if logprob == NEG_INF or len(captions) == n_best or tokens in taken:
                continue
            taken.add(tokens)
            captions.append(
                Caption(
                    tokens=list(tokens),
                    logprob=logprob,
                    score=float(scores[position, beam]),
                    attention=None
                    if alpha_history is None
                    else alpha_history[row, :length].clone(),
                    finished=bool(finished[position, beam]),
                )
            )
        results[image] = captions


# --------------------------------------------------------------------------------------------
# Sampling (self-critical training)


@dataclass
class SampledCaptions:
    """k captions per image drawn by `sample_captions`; rows j*k .. j*k + k-1 are image j's.

    tokens: (R, T) word ids, <end> included where a caption finished, <pad> after it.
    logprobs: (R, T) log-probability of each drawn token (0 at padding); differentiable when
        sampled with gradients enabled.
    mask: (R, T) True at the drawn tokens, <end> included: the actions of the policy gradient.
    words: (R,) number of words (tokens before <end>).
    finished: (R,) whether the caption emitted <end> (False: cut at ``max_length`` words).
    """

    tokens: Tensor
    logprobs: Tensor
    mask: Tensor
    words: Tensor
    finished: Tensor

    def token_lists(self) -> list[list[int]]:
        """Each caption's word ids, without <end> and padding."""
        tokens, words = self.tokens.cpu(), self.words.cpu().tolist()
        return [tokens[row, :length].tolist() for row, length in enumerate(words)]

    def sequence_logprobs(self) -> Tensor:
        """(R,) log-probability of each whole caption (its <end> included)."""
        return self.logprobs.sum(dim=1)


def sample_captions(
    decoder: CaptionDecoder,
    features: ImageFeatures,
    *,
    samples_per_image: int,
    max_length: int,
    start_id: int,
    end_id: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    suppress_ids: Sequence[int] = (),
) -> SampledCaptions:
    """Draw ``samples_per_image`` captions for each of the B images by multinomial sampling, all
    B * k at once (the policy of self-critical training, Rennie et al. 2017).

    Every step draws the next word from softmax(logits / temperature) renormalised over the
    allowed words (<start>, <pad> and ``suppress_ids`` never), with ``generator`` for reproducible
    draws. The returned log-probs are those of that distribution, the one actually sampled from
    (not teacher forcing's, which keeps the forbidden words' share); with gradients enabled
    they carry the graph back into the decoder (sample in train mode for dropout, as
    self-critical.pytorch does, or in eval mode).
    """
    check_decode_settings(samples_per_image, max_length)
    if not temperature > 0:  # NaN too
        raise UserError(f"sampling temperature must be > 0, got {temperature}")
    constraints = _Constraints(decoder, start_id, end_id, suppress_ids, 0, 0)
    batch = features.grid.size(0)
    rows = batch * samples_per_image
    device = features.grid.device
    keys = decoder.attention_keys(features)
    state = decoder.init_state(features).repeat_interleave(samples_per_image, dim=2)
    tokens = torch.full((rows,), start_id, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    words = torch.zeros(rows, dtype=torch.long, device=device)
    step_tokens, step_logprobs, step_masks = [], [], []
    for step in range(max_length):
        logits, state, _ = decoder.step(tokens, state, features, keys)
        logp = constraints.log_probs(logits / temperature, step, None)  # (R, V)
        # the distribution the draw is made from: renormalised over the allowed words (REINFORCE
        # needs its log-probabilities; the forbidden words' share would otherwise get a gradient)
        logp = logp - logp.logsumexp(dim=-1, keepdim=True)
        with torch.no_grad():
            drawn = draw(logp.exp(), generator)  # (R,)
        active = ~finished
        token_logp = logp.gather(1, drawn.unsqueeze(1)).squeeze(1)
        step_logprobs.append(torch.where(active, token_logp, torch.zeros_like(token_logp)))
        step_tokens.append(torch.where(active, drawn, torch.full_like(drawn, decoder.pad_id)))
        step_masks.append(active)
        is_end = drawn == end_id
        words += (active & ~is_end).long()
        finished = finished | (active & is_end)
        tokens = drawn
        if bool(finished.all()):
            break
    return SampledCaptions(
        tokens=torch.stack(step_tokens, dim=1),
        logprobs=torch.stack(step_logprobs, dim=1),
        mask=torch.stack(step_masks, dim=1),
        words=words,
        finished=finished,
    )
