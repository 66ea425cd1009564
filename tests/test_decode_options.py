"""Decoding options (n-gram blocking, minimum length, <unk> suppression, diverse beam search)
against brute force and a plain reference implementation, in the batched beam search."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_captioner_decode import (
    DECODERS,
    END,
    START,
    UNK,
    assert_same_captions,
    make_decoder,
    random_features,
)

import captioner.inference as inference
from captioner import caption as caption_cli
from captioner.config import CaptionerConfig, DecodeConfig, check_config
from captioner.decode import (
    beam_search,
    check_decode_settings,
    greedy_decode,
    sample_captions,
    setting_name,
)
from recurrent import precision
from recurrent.config import load_config
from recurrent.errors import UserError

COMMON = dict(start_id=START, end_id=END)


def has_repeated_ngram(tokens, n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def allowed(tokens, finished, *, ngram, min_length, suppress):
    if ngram and has_repeated_ngram(tokens, ngram):
        return False
    if finished and len(tokens) < min_length:
        return False
    return not (suppress and UNK in tokens)


@torch.no_grad()
def teacher_forced_logprobs(decoder, features, row, candidates):
    """Log-probability of each (tokens, finished) candidate for image ``row``, in one batch."""
    ids = [[START, *tokens, *([END] if finished else [])] for tokens, finished in candidates]
    longest = max(len(seq) for seq in ids)
    padded = torch.tensor([seq + [0] * (longest - len(seq)) for seq in ids])
    lengths = torch.tensor([len(seq) for seq in ids])
    one = features.index_select(torch.full((len(ids),), row))
    logits, _ = decoder(one, padded, lengths)
    logp = F.log_softmax(logits.float(), dim=-1).gather(2, padded[:, 1:, None]).squeeze(2)
    valid = torch.arange(longest - 1)[None, :] < (lengths - 1)[:, None]
    return (logp * valid).sum(dim=1).tolist()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    attention=st.sampled_from(DECODERS),
    ngram=st.sampled_from([0, 1, 2]),
    min_length=st.integers(0, 3),
    suppress=st.booleans(),
    penalty=st.sampled_from([0.0, 0.8]),
    end_bias=st.floats(-1.0, 2.0),
)
def test_wide_beam_with_constraints_equals_brute_force(
    seed, attention, ngram, min_length, suppress, penalty, end_bias
):
    """A beam as wide as the search space, under the constraints, ranks exactly the captions that
    keep them, as enumerating every caption does. Vocabulary: 4 specials + 2 words, so <unk> and
    the 2 words can be emitted: 40 captions of at most 3 words before the constraints."""
    decoder = make_decoder(attention, vocab=6, seed=seed, end_bias=end_bias)
    features = random_features(batch=2, seed=seed + 1)
    words, max_length, n_best = [UNK, 4, 5], 3, 6
    candidates = [
        (list(tokens), True)
        for n in range(max_length)
        for tokens in itertools.product(words, repeat=n)
    ]
    candidates += [(list(t), False) for t in itertools.product(words, repeat=max_length)]
    options = dict(ngram=ngram, min_length=min_length, suppress=suppress)
    candidates = [c for c in candidates if allowed(*c, **options)]
    results = beam_search(
        decoder,
        features,
        beam_size=40,
        max_length=max_length,
        length_penalty=penalty,
        n_best=n_best,
        block_ngram_repeat=ngram,
        min_length=min_length,
        suppress_ids=[UNK] if suppress else [],
        **COMMON,
    )
    for row in range(2):
        brute = []
        if candidates:
            logprobs = teacher_forced_logprobs(decoder, features, row, candidates)
            for (tokens, finished), logprob in zip(candidates, logprobs, strict=True):
                score = logprob / max(1, len(tokens) + finished) ** penalty
                brute.append((score, tokens, finished))
        brute.sort(key=lambda item: -item[0])
        got = [(c.score, c.tokens, c.finished) for c in results[row]]
        assert [g[1:] for g in got] == [b[1:] for b in brute[:n_best]]
        assert [g[0] for g in got] == pytest.approx([b[0] for b in brute[:n_best]], abs=1e-4)


OPTIONS = [
    dict(block_ngram_repeat=1),
    dict(block_ngram_repeat=2, min_length=4),
    dict(min_length=3, suppress_ids=[UNK], length_penalty=0.6),
    dict(diversity_groups=3, diversity_strength=0.8),
    dict(diversity_groups=2, diversity_strength=2.0, block_ngram_repeat=2, min_length=2),
]


@pytest.mark.parametrize("attention", DECODERS)
@pytest.mark.parametrize("options", OPTIONS)
def test_batched_equals_one_image_at_a_time_with_every_option(attention, options):
    decoder, features = make_decoder(attention, end_bias=0.5), random_features(batch=5)
    settings = dict(beam_size=6, max_length=7, n_best=3, **COMMON, **options)
    batched = beam_search(decoder, features, **settings)
    for row in range(5):
        alone = beam_search(decoder, features.index_select(torch.tensor([row])), **settings)
        assert_same_captions(batched[row], alone[0])
        for caption in batched[row]:
            ngram = options.get("block_ngram_repeat", 0)
            assert not (ngram and has_repeated_ngram(caption.tokens, ngram))
            assert not caption.finished or len(caption.tokens) >= options.get("min_length", 0)
            assert UNK not in caption.tokens or UNK not in options.get("suppress_ids", [])


@pytest.mark.parametrize("attention", DECODERS)
def test_greedy_equals_beam_size_one_with_constraints(attention):
    decoder, features = make_decoder(attention), random_features(batch=6)
    options = dict(max_length=8, block_ngram_repeat=1, min_length=2, suppress_ids=[UNK], **COMMON)
    greedy = greedy_decode(decoder, features, **options)
    beams = beam_search(decoder, features, beam_size=1, **options)
    assert_same_captions([b[0] for b in beams], greedy)


@torch.no_grad()
def next_log_probs(decoder, features, row, prefix):
    one = features.index_select(torch.tensor([row]))
    state = decoder.init_state(one)
    for token in [START, *prefix]:
        logits, state, _ = decoder.step(torch.tensor([token]), state, one)
    return F.log_softmax(logits[0].float(), dim=-1)


def diverse_reference(decoder, features, row, *, beam_size, groups, strength, max_length, penalty):
    """Diverse beam search for one image, written out with lists (Vijayakumar et al.)."""
    width = beam_size // groups
    # A beam: (augmented log-prob, log-prob, tokens, finished, selection score).
    beams = [[(0.0, 0.0, [], False, 0.0)] for _ in range(groups)]
    for step in range(max_length):
        chosen = {}  # word -> how many beams of earlier groups chose it at this step
        for group in range(groups):
            candidates = []
            for augmented, logprob, tokens, finished, score in beams[group]:
                if finished:
                    candidates.append((score, augmented, logprob, tokens, True, False))
                    continue
                logp = next_log_probs(decoder, features, row, tokens)
                for word in range(logp.numel()):
                    if word in (START, 0) or logp[word] == -math.inf:
                        continue
                    value = float(logp[word])
                    new_aug = augmented + value - strength * chosen.get(word, 0)
                    ended = word == END
                    new_tokens = tokens if ended else [*tokens, word]
                    new_score = new_aug / (step + 1) ** penalty
                    candidates.append(
                        (new_score, new_aug, logprob + value, new_tokens, ended, True)
                    )
            candidates.sort(key=lambda c: -c[0])
            kept = candidates[:width]
            for _, _, _, tokens, ended, fresh in kept:
                if fresh and not ended:
                    chosen[tokens[-1]] = chosen.get(tokens[-1], 0) + 1
            beams[group] = [(c[1], c[2], c[3], c[4], c[0]) for c in kept]
    flat = [beam for group in beams for beam in group]
    ranked = sorted(
        flat, key=lambda b: -b[1] / max(1, len(b[2]) + b[3]) ** penalty
    )  # by the model's own score
    return [(tokens, finished, logprob) for _, logprob, tokens, finished, _ in ranked]


def distinct_reference(decoder, features, row, beam_size, groups, strength, max_length, penalty):
    """`diverse_reference`'s ranking with each caption once: one that two groups ended on is
    returned once."""
    ranked = diverse_reference(
        decoder,
        features,
        row,
        beam_size=beam_size,
        groups=groups,
        strength=strength,
        max_length=max_length,
        penalty=penalty,
    )
    seen: set[tuple[int, ...]] = set()
    return [e for e in ranked if not (tuple(e[0]) in seen or seen.add(tuple(e[0])))]


@pytest.mark.parametrize("attention", DECODERS)
@pytest.mark.parametrize(
    "beam_size,groups,strength,penalty",
    [(6, 2, 1.5, 0.0), (6, 3, 0.7, 0.5), (2, 1, 0.0, 1.0), (3, 1, 0.0, 0.6)],
)  # one group: a narrow plain beam with a length penalty, where a live beam can overtake a done one
def test_diverse_beam_search_equals_a_plain_reference(
    attention, beam_size, groups, strength, penalty
):
    decoder, features = make_decoder(attention, vocab=8, end_bias=0.8), random_features(batch=3)
    max_length = 4
    settings = dict(
        beam_size=beam_size,
        max_length=max_length,
        length_penalty=penalty,
        diversity_groups=groups,
        diversity_strength=strength,
        **COMMON,
    )
    results = beam_search(decoder, features, n_best=beam_size, **settings)
    # With n_best 1 the search may settle an image early only where no live beam can overtake.
    best = beam_search(decoder, features, n_best=1, **settings)
    for row in range(3):
        expected = distinct_reference(
            decoder, features, row, beam_size, groups, strength, max_length, penalty
        )
        got = results[row]
        assert [(c.tokens, c.finished) for c in got] == [e[:2] for e in expected]
        assert [c.logprob for c in got] == pytest.approx([e[2] for e in expected], abs=1e-4)
        assert [(c.tokens, c.finished) for c in best[row]] == [expected[0][:2]]


@pytest.mark.parametrize(
    "seed,vocab,end_bias,beam_size,groups,strength",
    [
        (0, 12, 0.0, 4, 2, 1.5),  # n_best 3 spans both groups: no early stop on group 0's best
        (3, 12, 0.0, 6, 3, 0.3),
        (0, 8, 0.8, 6, 2, 0.3),  # a weak strength, not 1: it scales the penalty
        (0, 5, 0.0, 8, 2, 1.5),  # fewer allowed words than beams: empty beams choose no word
        (0, 12, 0.0, 4, 2, 0.3),  # an image settles first: the others keep their diversity
    ],
)
def test_diverse_beam_search_gives_the_head_of_the_references_ranking_for_every_n_best(
    seed, vocab, end_bias, beam_size, groups, strength
):
    """Without length penalty, for each n_best the search returns the first n_best captions of
    the reference's ranking: live beams of later groups can still overtake group 0's finished
    ones, so an image is not settled on its first beams alone."""
    decoder = make_decoder(False, vocab=vocab, end_bias=end_bias, seed=seed)
    features = random_features(batch=4, seed=seed + 1)
    settings = dict(
        beam_size=beam_size,
        max_length=6,
        diversity_groups=groups,
        diversity_strength=strength,
        **COMMON,
    )
    expected = []
    for row in range(4):
        ranked = distinct_reference(decoder, features, row, beam_size, groups, strength, 6, 0.0)
        expected.append([e[:2] for e in ranked])
    for n_best in range(1, beam_size + 1):
        results = beam_search(decoder, features, n_best=n_best, **settings)
        for row in range(4):
            got = [(c.tokens, c.finished) for c in results[row]]
            assert got == expected[row][:n_best], (n_best, row)


def test_diversity_strength_zero_gives_independent_copies_of_a_narrower_search():
    """At strength 0 the groups are copies of a beam search of K/G: their captions come back once
    each (they came back G times: a table of identical rows in the app)."""
    decoder, features = make_decoder(True, end_bias=0.3), random_features(batch=3)
    diverse = beam_search(
        decoder, features, beam_size=4, max_length=6, n_best=4, diversity_groups=2, **COMMON
    )
    plain = beam_search(decoder, features, beam_size=2, max_length=6, n_best=2, **COMMON)
    for got, narrow in zip(diverse, plain, strict=True):
        assert [c.tokens for c in got] == [c.tokens for c in narrow]
        assert [c.logprob for c in got] == [c.logprob for c in narrow]


def test_strong_diversity_makes_the_groups_start_differently():
    decoder, features = make_decoder(False), random_features(batch=4)
    settings = dict(beam_size=3, max_length=5, n_best=3, min_length=1, **COMMON)
    plain = beam_search(decoder, features, **settings)
    diverse = beam_search(
        decoder, features, diversity_groups=3, diversity_strength=50.0, **settings
    )
    for captions in diverse:
        assert len({c.tokens[0] for c in captions}) == 3
    # Plain beam search often keeps one first word for all its beams; diversity never does.
    assert any(len({c.tokens[0] for c in captions}) < 3 for captions in plain)


@pytest.mark.parametrize("attention", DECODERS)
def test_end_among_the_suppressed_ids_is_still_allowed(attention):
    """Only words are suppressed: <end> in ``suppress_ids`` is ignored (captions could otherwise
    never finish), in greedy decoding, beam search and sampling alike."""
    decoder, features = make_decoder(attention, end_bias=1.0), random_features(batch=3)
    without, with_end = dict(suppress_ids=(UNK,)), dict(suppress_ids=(UNK, END))
    greedy = greedy_decode(decoder, features, max_length=6, **without, **COMMON)
    assert any(c.finished for c in greedy)
    assert_same_captions(
        greedy_decode(decoder, features, max_length=6, **with_end, **COMMON), greedy
    )
    beams = dict(beam_size=3, n_best=3, max_length=6, **COMMON)
    for got, plain in zip(
        beam_search(decoder, features, **beams, **with_end),
        beam_search(decoder, features, **beams, **without),
        strict=True,
    ):
        assert_same_captions(got, plain)
    samples = [
        sample_captions(
            decoder,
            features,
            samples_per_image=4,
            max_length=6,
            generator=torch.Generator().manual_seed(0),
            **suppress,
            **COMMON,
        )
        for suppress in (without, with_end)
    ]
    assert bool(samples[0].finished.any())
    assert torch.equal(samples[0].tokens, samples[1].tokens)


def test_bad_settings_are_user_errors(capsys):
    """Each line names the setting by the words and the flag that set it (caption, evaluate)."""
    with pytest.raises(UserError, match=r"^min length \(--min-length\) must be between 0 and "
                       r"the max length \(--max-length: 5\), got 6$"):  # fmt: skip
        check_decode_settings(3, 5, min_length=6)
    with pytest.raises(UserError, match=r"^block ngram repeat \(--block-ngram-repeat\) must"):
        check_decode_settings(3, 5, block_ngram_repeat=-1)
    with pytest.raises(UserError, match=r"^diversity groups \(--diversity-groups\) must divide "
                       r"the beam size \(--beam-size: 4\), got 3$"):  # fmt: skip
        check_decode_settings(4, 5, diversity_groups=3)
    with pytest.raises(UserError, match=r"^diversity strength \(--diversity-strength\) must"):
        check_decode_settings(4, 5, diversity_groups=2, diversity_strength=-1.0)
    with pytest.raises(SystemExit):
        caption_cli.main(["--help"])
    usage = capsys.readouterr().out
    for key in ("beam_size", "max_length", "n_best", "min_length", "block_ngram_repeat"):
        assert f"[{setting_name(key).split('(')[1].rstrip(')')} " in usage  # a flag caption has


@pytest.mark.parametrize(
    "override, message",
    [
        ("decode.min_length=40", "decode.min_length"),
        ("decode.block_ngram_repeat=-1", "decode.block_ngram_repeat"),
        ("decode.diversity_groups=2", "multiple of decode.diversity_groups"),
        ("decode.diversity_groups=0", "decode.diversity_groups"),
        ("decode.diversity_strength=-0.5", "decode.diversity_strength"),
    ],
)
def test_config_rejects_decoding_options_no_search_can_use(override, message):
    cfg = load_config(CaptionerConfig, None, ["data.annotations=x.json", override])
    with pytest.raises(UserError, match=message):
        check_config(cfg)


def test_a_beam_the_checkpoints_diversity_groups_do_not_divide_names_them():
    """`caption --beam-size 1` on a checkpoint decoding with 3 diversity groups said the groups
    must divide the beam without saying the 3 came from the checkpoint, nor how to override it."""
    from types import SimpleNamespace

    from captioner.config import DecodeConfig
    from captioner.inference import decode_settings

    decode = DecodeConfig(beam_size=3, diversity_groups=3, diversity_strength=0.5)
    checkpoint = SimpleNamespace(cfg=SimpleNamespace(decode=decode))
    with pytest.raises(UserError, match=r"checkpoint's decode.diversity_groups \(3\) must divide "
                       r"the beam size \(1\); pass --diversity-groups 1"):  # fmt: skip
        decode_settings(checkpoint, beam_size=1)
    assert decode_settings(checkpoint, beam_size=1, diversity_groups=1).beam_size == 1
    assert decode_settings(checkpoint) == decode


def test_diversity_groups_given_that_do_not_divide_the_beam_are_the_flags_fault():
    """Groups passed with the call (--diversity-groups) that do not divide the beam are named as
    the flag's, not blamed on the checkpoint's decode section."""
    from types import SimpleNamespace

    from captioner.config import DecodeConfig
    from captioner.inference import decode_settings

    checkpoint = SimpleNamespace(cfg=SimpleNamespace(decode=DecodeConfig(beam_size=4)))
    with pytest.raises(UserError) as caught:
        decode_settings(checkpoint, diversity_groups=3)
    assert str(caught.value) == (
        "diversity groups (--diversity-groups) must divide the beam size (--beam-size: 4), got 3"
    )


def test_every_decoding_setting_reaches_the_search(record_calls):
    """`caption_images` (the `caption` command and the app) runs the search with the checkpoint's
    decode section, and with each setting given in its place, zeros and False included; and
    suppress_unk keeps <unk> out of captions of a model that would emit it everywhere."""
    bundled = Path(__file__).resolve().parents[1] / "models" / "scenes_captioner.pt"
    captioner = inference.load_captioner(str(bundled))
    saved = DecodeConfig(beam_size=4, max_length=9, length_penalty=0.5, block_ngram_repeat=2,
                         min_length=2, suppress_unk=True, diversity_groups=2,
                         diversity_strength=0.3)  # fmt: skip
    captioner.cfg = dataclasses.replace(captioner.cfg, decode=saved)
    searches = record_calls(inference, "beam_search")
    images = list(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8,
                                generator=torch.Generator().manual_seed(0)))  # fmt: skip
    unk = captioner.vocab.unk_id

    def expected(config: DecodeConfig, suppress: list[int]) -> dict:
        fields = dataclasses.asdict(config)
        del fields["suppress_unk"]
        return {**fields, "suppress_ids": suppress}

    inference.caption_images(captioner, images)
    assert searches[-1].kwargs.items() >= expected(saved, [unk]).items()
    overrides = dict(beam_size=3, max_length=7, length_penalty=0.0, block_ngram_repeat=0,
                 min_length=0, suppress_unk=False, diversity_groups=1, diversity_strength=0.0)  # fmt: skip
    inference.caption_images(captioner, images, **overrides)
    assert searches[-1].kwargs.items() >= expected(DecodeConfig(**overrides), []).items()

    with torch.no_grad():
        captioner.model.decoder.output.bias[unk] += 50.0  # <unk> is every word's best now
    free = inference.caption_images(captioner, images, suppress_unk=False)
    assert all("<unk>" in result.words for result in free)
    suppressed = inference.caption_images(captioner, images)  # the checkpoint's suppress_unk
    assert all(result.words and "<unk>" not in result.words for result in suppressed)


def test_images_are_encoded_in_cpu_chunks_and_any_mode_as_rgb(monkeypatch, record_calls):
    """On a CPU a batch is encoded in chunks of at most CPU_ENCODE_CHUNK images, whose features
    are joined in order: 5 images in chunks of 2 caption as one batch of 5 does; a grayscale or
    palette PIL image is captioned as its RGB conversion."""
    from PIL import Image

    bundled = Path(__file__).resolve().parents[1] / "models" / "scenes_captioner.pt"
    captioner = inference.load_captioner(str(bundled))
    generator = torch.Generator().manual_seed(0)
    images = list(torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8, generator=generator))
    whole = inference.caption_images(captioner, images, beam_size=2, n_best=2)
    encodes = record_calls(inference, "encode_images")
    monkeypatch.setattr(inference, "CPU_ENCODE_CHUNK", 2)
    chunked = inference.caption_images(captioner, images, beam_size=2, n_best=2)
    assert [len(call.args[1]) for call in encodes] == [2, 2, 1]
    assert [result.beams for result in chunked] == [result.beams for result in whole]
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert captioner.precision().name == "bf16"  # as the bundled captioner was trained
    features = inference.encode_images(captioner, images[:2])
    assert features.pooled.dtype == features.grid.dtype == torch.float32  # served in float32
    gray = Image.fromarray(images[0][0].numpy(), "L")
    palette = Image.fromarray(images[1].permute(1, 2, 0).numpy()).convert("P")
    for image in (gray, palette):
        [result] = inference.caption_images(captioner, [image], beam_size=2, n_best=2)
        [expected] = inference.caption_images(captioner, [image.convert("RGB")], beam_size=2,
                                              n_best=2)  # fmt: skip
        assert result.beams == expected.beams
