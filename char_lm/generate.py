"""Loading a trained `CharLM` and generating text from it, one character at a time.

`generate` is pure: it reads the model, the prompt and the sampling settings it is given, and draws
randomness only from the `torch.Generator` passed in (makemore's ``generate``, nanoGPT's
``sample.py``). The Streamlit app and ``python -m char_lm.sample`` both stream its characters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from char_lm.config import BOUNDS, CharLMConfig
from char_lm.data import encode
from char_lm.model import CharLM
from recurrent.checkpoint import check_state_dict, load_checkpoint
from recurrent.config import check_bounds, from_dict
from recurrent.errors import UserError
from recurrent.precision import Precision, trained_in
from recurrent.sampling import sample_next

# With an empty prompt the model is conditioned on this character (the start of a new line), which
# is not part of the output. A vocabulary without it needs a prompt.
EMPTY_PROMPT_START = "\n"
# A prompt is fed through the model this many characters at a time, the state carried: a pasted
# book costs the memory of one window of activations and logits, not of the whole prompt.
PROMPT_WINDOW = 1024


def read_checkpoint(path: str | Path) -> dict:
    """`load_checkpoint` for task char_lm (a one-line UserError for any unusable file)."""
    return load_checkpoint(path, task="char_lm")


def load_char_lm(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[CharLM, list[str], CharLMConfig]:
    """A checkpoint written by ``char_lm.train`` -> (model in eval mode on ``device``, vocab, config)."""
    payload = read_checkpoint(path)
    try:
        config = from_dict(CharLMConfig, payload["config"])
        check_bounds(config, BOUNDS)
        config.train.precision = trained_in(payload)  # what "auto" was where it trained
        vocab = list(payload["vocab"])
        if not vocab or len(set(vocab)) != len(vocab) or any(len(ch) != 1 for ch in vocab):
            raise UserError("its vocabulary must be distinct single characters")
        model = CharLM(config.model, len(vocab))
    except (KeyError, RuntimeError, TypeError, ValueError, UserError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UserError(
            f"{path} is a char_lm checkpoint this version cannot load ({reason}); retrain with "
            f"python -m char_lm.train"
        ) from None
    check_state_dict(model.state_dict(), payload["model"], path)  # names the tensor that differs
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), vocab, config


def trained_precision(model: CharLM, config: CharLMConfig) -> Precision:
    """The precision ``sample``, ``evaluate`` and the app run ``model`` in: the one it was trained
    in, where its device runs that natively (`Precision.for_inference`)."""
    return Precision.for_inference(config.train.precision, model.head.weight.device)


def generate(
    model: CharLM,
    vocab: list[str],
    prompt: str,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    precision: Precision | None = None,
) -> Iterator[str]:
    """Yield ``length`` characters that continue ``prompt`` (the prompt itself is not yielded).

    The prompt is fed through the model once (in windows of `PROMPT_WINDOW` characters with the
    state carried, so a huge prompt needs no more memory than a short one); then each sampled
    character is fed back one step at a time with the core's carried state. ``greedy`` takes the
    most likely character; otherwise the next character is drawn from softmax(logits /
    temperature), restricted to the ``top_k`` most likely and to the ``top_p`` nucleus when given.
    An empty prompt starts from a newline when the vocabulary has one. Prompt characters outside
    the vocabulary are a `UserError` naming them. The model is switched to eval mode (no
    dropout). The model runs in ``precision`` (the CLI and the app pass `trained_precision`),
    float32 when None. The arguments are checked at the call, before the first character is
    asked for, so a bad prompt fails before anything is printed.
    """
    if not greedy and not temperature > 0:  # NaN too
        raise UserError(f"temperature must be > 0, got {temperature}; use greedy decoding instead")
    if top_k is not None and top_k < 0:
        raise UserError(f"top-k must be >= 0 (0: off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top-p must be in (0, 1] (1: off), got {top_p}")
    if not prompt:
        if EMPTY_PROMPT_START not in vocab:
            raise UserError(
                "an empty prompt starts from a newline, but this model's vocabulary has none; "
                "pass a prompt"
            )
        prompt = EMPTY_PROMPT_START
    top_k = top_k or None  # 0: off
    top_p = top_p if top_p is not None and top_p < 1 else None  # 1: off
    ids = encode(prompt, vocab, what="prompt")
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    return _continue(
        model, vocab, ids, length, temperature, top_k, top_p, greedy, generator, autocast
    )


@torch.no_grad()
def _continue(
    model: CharLM,
    vocab: list[str],
    ids: torch.Tensor,
    length: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    greedy: bool,
    generator: torch.Generator | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> Iterator[str]:
    """The generator behind `generate`: prompt ids (P,) in, ``length`` characters out. Each model
    call runs inside ``autocast()``, entered and left around the call: the caller's code between
    two characters never runs in it."""
    model.eval()
    device = model.head.weight.device
    state = None
    for start in range(0, len(ids), PROMPT_WINDOW):
        window = ids[start : start + PROMPT_WINDOW].to(device).unsqueeze(0)  # (1, T)
        with autocast():
            logits, _, state = model(window, state=state)  # (1, T, V)
    logits = logits[:, -1]  # (1, V): after the prompt's last character
    for position in range(length):
        next_id = sample_next(
            logits.float(),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            generator=generator,
        )  # (1,)
        yield vocab[next_id.item()]
        if position + 1 < length:
            with autocast():
                logits, _, state = model(next_id.view(1, 1), state=state)
            logits = logits[:, -1]
