"""Greedy decoding, batched beam search and the caption metrics, against references and properties."""

from __future__ import annotations

import itertools
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from captioner.config import ModelConfig
from captioner.decode import Caption, beam_search, greedy_decode
from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageFeatures
from captioner.metrics import (
    bleu_scores,
    cider_d_score,
    coco_scores,
    repeat_share,
    repeats_a_word,
)
from recurrent.errors import UserError

PAD, START, END, UNK = 0, 1, 2, 3
VOCAB = 12
# The decoders as `make_decoder` takes them: show and tell, soft attention, top-down attention.
DECODERS = [False, True, "top_down"]


def make_decoder(
    attention: bool | str,
    vocab: int = VOCAB,
    seed: int = 0,
    end_bias: float = 0.0,
    attention_size: int = 8,
    cell: str = "lstm",
    hidden_size: int = 16,
    channels: int = 10,
):
    """A tiny random decoder, its outputs made to depend more on the image and the state than a
    fresh init does, so that images get different captions, some ending early, some cut off."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        attention=bool(attention),
        top_down=attention == "top_down",
        cell=cell,
        embed_size=8,
        hidden_size=hidden_size,
        attention_size=attention_size,
        dropout=0.0,
    )
    decoder = CaptionDecoder(cfg, vocab, feature_channels=channels).eval()
    with torch.no_grad():
        decoder.output.weight.mul_(2.0)
        decoder.init_proj.weight.mul_(3.0)
        decoder.output.bias[END] += end_bias
    return decoder


def random_features(batch: int = 4, positions: int = 6, channels: int = 10, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    grid = 3 * torch.randn(batch, positions, channels, generator=generator)
    return ImageFeatures(grid.mean(dim=1), grid, (2, positions // 2))


@torch.no_grad()
def teacher_forced(decoder, features: ImageFeatures, row: int, tokens: list[int], finished: bool):
    """Log-probability of <start> tokens (<end>) for image ``row`` by teacher forcing, and the
    attention weights of each step (None without attention)."""
    one = features.index_select(torch.tensor([row]))
    ids = torch.tensor([[START, *tokens, *([END] if finished else [])]])
    logits, _ = decoder(one, ids, torch.tensor([ids.size(1)]))
    logprob = F.log_softmax(logits[0], dim=-1).gather(1, ids[0, 1:, None]).sum()
    alphas = None
    if decoder.attention is not None:
        state, steps = decoder.init_state(one), []
        for t in range(len(tokens)):
            _, state, alpha = decoder.step(ids[0, t : t + 1], state, one)
            steps.append(alpha[0])
        alphas = torch.stack(steps) if steps else torch.zeros(0, features.grid.size(1))
    return float(logprob), alphas


def assert_same_captions(got: list[Caption], expected: list[Caption]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.tokens == b.tokens and a.finished == b.finished
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.score == pytest.approx(b.score, abs=1e-4)
        if b.attention is None:
            assert a.attention is None
        else:
            torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=1e-4)


# --- decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", DECODERS)
def test_greedy_equals_beam_size_one(attention):
    decoder, features = make_decoder(attention), random_features(batch=6)
    greedy = greedy_decode(decoder, features, max_length=7, start_id=START, end_id=END)
    beams = beam_search(decoder, features, beam_size=1, max_length=7, start_id=START, end_id=END)
    assert {c.finished for c in greedy} == {True, False}  # both kinds are exercised
    assert_same_captions([b[0] for b in beams], greedy)


@pytest.mark.parametrize("vocab,min_length,exists", [(VOCAB, 3, True), (6, 3, True), (6, 4, False)])
def test_greedy_equals_beam_size_one_under_constraints_that_may_forbid_every_word(
    vocab, min_length, exists
):
    """No repeated word and a minimum length: with 3 words (vocab 6) no caption of 4 exists, and
    beam search has none; greedy's caption then stops unfinished at -inf, never emitting <pad>."""
    decoder, features = make_decoder(False, vocab=vocab), random_features(batch=6)
    settings = dict(max_length=6, start_id=START, end_id=END, block_ngram_repeat=1,
                    min_length=min_length)  # fmt: skip
    greedy = greedy_decode(decoder, features, **settings)
    beams = beam_search(decoder, features, beam_size=1, **settings)
    for found, caption in zip(beams, greedy, strict=True):
        if found:
            assert_same_captions(found, [caption])
        else:
            assert caption.logprob == -math.inf and not caption.finished
            assert PAD not in caption.tokens and len(set(caption.tokens)) == len(caption.tokens)
    assert all(beams) if exists else not any(beams)


@pytest.mark.parametrize("attention", DECODERS)
@pytest.mark.parametrize("beam_size,n_best,length_penalty", [(3, 2, 0.0), (5, 5, 0.7)])
def test_batched_beam_search_equals_one_image_at_a_time(
    attention, beam_size, n_best, length_penalty
):
    decoder, features = make_decoder(attention), random_features(batch=4)
    settings = dict(
        beam_size=beam_size,
        max_length=6,
        start_id=START,
        end_id=END,
        length_penalty=length_penalty,
        n_best=n_best,
    )
    batched = beam_search(decoder, features, **settings)
    assert len(batched) == 4
    for row in range(4):
        alone = beam_search(decoder, features.index_select(torch.tensor([row])), **settings)
        assert len(batched[row]) == n_best
        assert_same_captions(batched[row], alone[0])
        scores = [c.score for c in batched[row]]
        assert scores == sorted(scores, reverse=True)  # best first
        assert len({tuple(c.tokens) for c in batched[row]}) == n_best  # no duplicate beams


@pytest.mark.parametrize("attention", DECODERS)
def test_batched_beam_search_in_bf16_gives_one_image_at_a_time_exactly(attention):
    """Under bf16 autocast (how `auto` decodes on a CPU with native bf16) every row of a decoding
    step is computed the same whatever else is in the batch: 8 images x 5 beams (more rows than
    the fp32 limit of the LSTM's equations) give each image the same captions, log-probabilities
    and attention, bit for bit, as searching it alone. (6 positions x 32 attention units: torch's
    CPU sigmoid computes the last elements of a tensor whose size is not a multiple of 32 floats
    on a scalar path, which rounds differently; the bundled captioner's 36 x 128 is aligned too.)"""
    decoder, features = make_decoder(attention, attention_size=32), random_features(batch=8)
    settings = dict(beam_size=5, max_length=6, start_id=START, end_id=END, n_best=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batched = beam_search(decoder, features, **settings)
        alone = [
            beam_search(decoder, features.index_select(torch.tensor([row])), **settings)[0]
            for row in range(8)
        ]
    for got, expected in zip(batched, alone, strict=True):
        assert [(c.tokens, c.finished, c.logprob) for c in got] == [
            (c.tokens, c.finished, c.logprob) for c in expected
        ]
        for a, b in zip(got, expected, strict=True):
            assert (a.attention is None) == (b.attention is None)
            assert a.attention is None or torch.equal(a.attention, b.attention)


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_attention_matches_the_training_formula(beams):
    """Without gradients on the CPU the attention energy is computed in float32 as
    2 sigmoid(2x) - 1 (faster than torch's tanh): the same weights and context as the tanh the
    training step differentiates, for one query per image and for beams sharing their image."""
    decoder, features = make_decoder(attention=True), random_features(batch=4)
    attention, keys = decoder.attention, decoder.attention_keys(features)
    hidden = torch.randn(4 * beams, 16)
    with torch.enable_grad():
        hidden.requires_grad_()
        expected = attention(features.grid, keys, hidden)  # torch.tanh, as in training
    with torch.no_grad():
        got = attention(features.grid, keys, hidden.detach())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b.detach(), atol=2e-6, rtol=1e-6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        context, alpha = attention(features.grid, keys, hidden.detach())
        # as decoding computes them: the keys and the query both bf16 under autocast
        low_keys = decoder.attention_keys(features)
        _, low_alpha = attention(features.grid, low_keys, hidden.detach())
    assert alpha.dtype == torch.float32  # the energy and the scores stay float32 under autocast
    torch.testing.assert_close(alpha, expected[1].detach(), atol=2e-2, rtol=0)
    assert low_keys.dtype == torch.bfloat16 and low_alpha.dtype == torch.float32
    torch.testing.assert_close(low_alpha, expected[1].detach(), atol=2e-2, rtol=0)


@pytest.mark.parametrize("attention", DECODERS)
def test_logprob_score_and_attention_match_teacher_forcing(attention):
    """Each returned caption's logprob is the sum of the step log-probabilities that teacher
    forcing its tokens (and <end> when finished) gives; its score is logprob / length**penalty;
    its attention rows are the weights of each word's step, summing to 1 over the positions."""
    decoder, features = make_decoder(attention), random_features(batch=3)
    penalty = 0.5
    results = beam_search(
        decoder,
        features,
        beam_size=4,
        max_length=6,
        start_id=START,
        end_id=END,
        length_penalty=penalty,
        n_best=4,
    )
    finished_seen = set()
    for row, captions in enumerate(results):
        for caption in captions:
            finished_seen.add(caption.finished)
            assert START not in caption.tokens and PAD not in caption.tokens
            assert END not in caption.tokens
            logprob, alphas = teacher_forced(
                decoder, features, row, caption.tokens, caption.finished
            )
            assert caption.logprob == pytest.approx(logprob, abs=1e-4)
            length = len(caption.tokens) + caption.finished
            assert caption.score == pytest.approx(caption.logprob / length**penalty, abs=1e-5)
            if attention:
                assert caption.attention.shape == (len(caption.tokens), 6)
                torch.testing.assert_close(
                    caption.attention.sum(dim=1), torch.ones(len(caption.tokens))
                )
                torch.testing.assert_close(caption.attention, alphas, atol=1e-5, rtol=1e-4)
            else:
                assert caption.attention is None
    assert finished_seen == {True, False}


@pytest.mark.parametrize("attention", [True, "top_down"])
@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_wide_beam_search_is_exhaustive(penalty, attention):
    """With a beam as wide as the whole search space, beam search must rank every possible caption
    exactly as brute force does. Vocabulary: 4 specials + 2 words, so <unk> and the 2 words can be
    emitted (<start> and <pad> never are): 1 + 3 + 9 captions end within 3 steps, 27 are cut at 3
    words; 40 in all."""
    decoder, features = make_decoder(attention, vocab=6, end_bias=0.5), random_features(batch=2)
    words, max_length = [UNK, 4, 5], 3
    candidates = [
        (tokens, True) for n in range(max_length) for tokens in itertools.product(words, repeat=n)
    ]
    candidates += [(tokens, False) for tokens in itertools.product(words, repeat=max_length)]
    assert len(candidates) == 40
    results = beam_search(
        decoder,
        features,
        beam_size=40,
        max_length=max_length,
        start_id=START,
        end_id=END,
        length_penalty=penalty,
        n_best=10,
    )
    for row in range(2):
        brute = []
        for tokens, finished in candidates:
            logprob, _ = teacher_forced(decoder, features, row, list(tokens), finished)
            score = logprob / (len(tokens) + finished) ** penalty
            brute.append((score, list(tokens), finished))
        brute.sort(key=lambda item: -item[0])
        got = [(c.score, c.tokens, c.finished) for c in results[row]]
        assert [g[1:] for g in got] == [b[1:] for b in brute[:10]]
        assert [g[0] for g in got] == pytest.approx([b[0] for b in brute[:10]], abs=1e-4)


@pytest.mark.parametrize("attention", DECODERS)
def test_end_never_winning_still_gives_n_best_captions(attention):
    decoder, features = make_decoder(attention), random_features(batch=3)
    with torch.no_grad():
        decoder.output.bias[END] = -1e9
    results = beam_search(
        decoder, features, beam_size=4, max_length=5, start_id=START, end_id=END, n_best=3
    )
    for captions in results:
        assert len(captions) == 3
        assert len({tuple(c.tokens) for c in captions}) == 3
        for caption in captions:
            assert len(caption.tokens) == 5 and not caption.finished
            assert caption.logprob > -1e6  # no <end> term in it
    for caption in greedy_decode(decoder, features, max_length=5, start_id=START, end_id=END):
        assert len(caption.tokens) == 5 and not caption.finished


class TableDecoder(torch.nn.Module):
    """A stand-in decoder whose next-word distribution depends only on the previous word:
    ``log_probs[previous]``. The state is a dummy (1, 1, B, 1) tensor, reordered like a real one."""

    pad_id = PAD

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.log_probs = log_probs

    def init_state(self, features: ImageFeatures) -> torch.Tensor:
        return features.grid.new_zeros(1, 1, features.grid.size(0), 1)

    def attention_keys(self, features: ImageFeatures) -> None:
        return None

    def step(self, tokens, state, features, keys=None):
        return self.log_probs[tokens], state, None


def test_length_penalty_prefers_longer_captions():
    """Words A=4, B=5, C=6, D=7. Two candidate captions:
    short  "A <end>":       log(0.4) + log(0.6)                      = -1.427, 2 tokens, -0.713 each
    long   "B C D <end>":   log(0.4) + log(0.7) + log(0.7) + log(0.95) = -1.681, 4 tokens, -0.420 each
    Raw log-probability (penalty 0) prefers the short one; per-token (penalty 1) the long one."""
    table = torch.full((8, 8), 1e-9)
    table[START, [4, 5, UNK]] = torch.tensor([0.4, 0.4, 0.2])
    table[4, [END, UNK]] = torch.tensor([0.6, 0.4])
    table[5, [6, UNK]] = torch.tensor([0.7, 0.3])
    table[6, [7, UNK]] = torch.tensor([0.7, 0.3])
    table[7, [END, UNK]] = torch.tensor([0.95, 0.05])
    table[UNK, [END, UNK]] = torch.tensor([0.5, 0.5])
    table[[PAD, END]] = 1.0 / 8
    decoder = TableDecoder(table.log())
    features = random_features(batch=2)
    short = math.log(0.4) + math.log(0.6)
    long = math.log(0.4) + 2 * math.log(0.7) + math.log(0.95)
    for penalty, tokens, logprob, length in [(0.0, [4], short, 2), (1.0, [5, 6, 7], long, 4)]:
        results = beam_search(
            decoder,
            features,
            beam_size=3,
            max_length=6,
            start_id=START,
            end_id=END,
            length_penalty=penalty,
        )
        for captions in results:
            assert captions[0].tokens == tokens and captions[0].finished
            assert captions[0].logprob == pytest.approx(logprob, abs=1e-4)
            assert captions[0].score == pytest.approx(logprob / length**penalty, abs=1e-4)


def test_decode_rejects_bad_settings():
    decoder, features = make_decoder(False), random_features(batch=1)
    common = dict(start_id=START, end_id=END)
    with pytest.raises(UserError, match=r"^n best \(--n-best\) must be between 1 and the beam "
                       r"size \(--beam-size: 2\), got 3"):  # fmt: skip
        beam_search(decoder, features, beam_size=2, max_length=4, n_best=3, **common)
    with pytest.raises(UserError, match=r"^beam size \(--beam-size\) must be at least 1, got 0"):
        beam_search(decoder, features, beam_size=0, max_length=4, **common)
    with pytest.raises(UserError, match=r"^max length \(--max-length\) must be at least 1 word"):
        greedy_decode(decoder, features, max_length=0, **common)


# --- metrics ------------------------------------------------------------------------------------


def test_bleu_matches_hand_worked_example():
    references = [
        ["The cat is sitting on the mat.", "There is a cat on the mat!"],
        ["A dog runs in a park", "the dog is running in the park"],
    ]
    hypotheses = ["The cat sat on the mat.", "a dog runs in the park"]
    # Sentence 1, hypothesis "the cat sat on the mat" (6 words), references of 7 words each:
    #   1-grams: the x2 (clip 2), cat, sat (0), on, mat -> 5/6
    #   2-grams: the cat, cat sat (0), sat on (0), on the, the mat -> 3/5
    #   3-grams: the cat sat, cat sat on, sat on the: 0; on the mat: 1 -> 1/4
    #   4-grams: the cat sat on, cat sat on the, sat on the mat -> 0/3
    # Sentence 2, hypothesis "a dog runs in the park" (6 words), references of 6 and 7 words:
    #   1-grams: a, dog, runs, in, the, park -> 6/6
    #   2-grams: a dog, dog runs, runs in (ref 1); in the, the park (ref 2) -> 5/5
    #   3-grams: a dog runs, dog runs in (ref 1), in the park (ref 2); runs in the: 0 -> 3/4
    #   4-grams: a dog runs in (ref 1); dog runs in the, runs in the park: 0 -> 1/3
    # Corpus precisions: p1 = 11/12, p2 = 8/10, p3 = 4/8, p4 = 1/6.
    # Lengths: c = 6 + 6 = 12, closest reference lengths r = 7 + 6 = 13, BP = exp(1 - 13/12).
    p1, p2, p3, p4 = 11 / 12, 8 / 10, 4 / 8, 1 / 6
    bp = math.exp(1 - 13 / 12)
    expected = {
        "BLEU-1": 100 * bp * p1,
        "BLEU-2": 100 * bp * (p1 * p2) ** (1 / 2),
        "BLEU-3": 100 * bp * (p1 * p2 * p3) ** (1 / 3),
        "BLEU-4": 100 * bp * (p1 * p2 * p3 * p4) ** (1 / 4),
    }
    scores = bleu_scores(references, hypotheses)
    assert scores.keys() == expected.keys()
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-9), name


def test_bleu_edge_cases():
    exact = bleu_scores([["a red circle above a square"]], ["A red circle, above a square."])
    assert exact == pytest.approx(
        {"BLEU-1": 100.0, "BLEU-2": 100.0, "BLEU-3": 100.0, "BLEU-4": 100.0}
    )
    # A 3-word hypothesis has no 4-gram: BLEU-4 is 0 without smoothing, BLEU-1 to 3 are the
    # brevity penalty exp(1 - 7/3) times precisions of 1.
    scores = bleu_scores([["a red circle above a blue square"]], ["a red circle"])
    assert scores["BLEU-4"] == 0.0
    assert scores["BLEU-3"] == pytest.approx(100 * math.exp(1 - 7 / 3))
    with pytest.raises(ValueError, match="reference sets"):
        bleu_scores([["a"], ["b"]], ["a"])


def test_coco_scores_reference_values_and_fallbacks(monkeypatch):
    pytest.importorskip("pycocoevalcap")
    references = [["a c d e f", "x y"], ["a red circle", "one red circle"]]
    hypotheses = ["A b c d.", "a red circle"]
    scores = coco_scores(references, hypotheses, meteor=False)
    assert set(scores) == {"CIDEr-D", "ROUGE-L"}
    # ROUGE-L of "a b c d" against "a c d e f": LCS "a c d" = 3, precision 3/4, recall 3/5,
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 0.45 / 1.68; the second pair matches exactly (1).
    rouge_1 = 2.44 * 0.75 * 0.6 / (0.6 + 1.44 * 0.75)
    assert scores["ROUGE-L"] == pytest.approx(100 * (rouge_1 + 1.0) / 2, abs=1e-6)
    better = coco_scores(references, ["a c d e f", "a red circle"], meteor=False)
    assert better["CIDEr-D"] > scores["CIDEr-D"] > 0
    assert coco_scores(references, ["", "!"], meteor=False)["ROUGE-L"] == 0.0  # nothing to match
    # Without java, METEOR is left out rather than failing.
    monkeypatch.setenv("PATH", "")
    assert "METEOR" not in coco_scores(references, hypotheses)


def test_metrics_refuse_references_that_are_not_lists_and_score_no_images_as_nothing():
    """One list of reference captions per hypothesis: a bare string (its characters would be
    taken for captions) or an empty list is refused by every metric; no images score 0 (BLEU)
    or nothing at all (CIDEr-D, ROUGE-L)."""
    for metric in (bleu_scores, cider_d_score, coco_scores):
        with pytest.raises(ValueError, match=r"references\[1\] must be a non-empty list"):
            metric([["a red circle"], "a blue square"], ["a red circle", "a blue square"])
        with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
            metric([[]], ["a red circle"])
        with pytest.raises(ValueError, match="1 reference sets but 2 hypotheses"):
            metric([["a"]], ["a", "b"])
    assert bleu_scores([], []) == {f"BLEU-{n}": 0.0 for n in range(1, 5)}
    assert cider_d_score([], []) == {} and coco_scores([], []) == {}


class FakeMeteor:
    """pycocoevalcap's Meteor without Java: its lock, and a score of 0.25 (or a failure)."""

    calls: list = []
    made: list = []
    fail: type[Exception] | None = None

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        FakeMeteor.made.append(self)

    def compute_score(self, gts, res):
        FakeMeteor.calls.append((gts, res))
        self.lock.acquire()  # as the real one does, released only when it succeeds
        if FakeMeteor.fail is not None:
            raise FakeMeteor.fail("java died")
        self.lock.release()
        return 0.25, [0.25] * len(res)


def test_rouge_and_meteor_read_the_tokenised_captions_and_meteor_is_left_out_when_it_fails(
    monkeypatch,
):
    pytest.importorskip("pycocoevalcap")
    module = types.ModuleType("pycocoevalcap.meteor.meteor")
    module.Meteor = FakeMeteor
    monkeypatch.setitem(sys.modules, "pycocoevalcap.meteor.meteor", module)
    monkeypatch.setattr("captioner.metrics.shutil.which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(FakeMeteor, "calls", [])
    monkeypatch.setattr(FakeMeteor, "made", [])
    references, hypotheses = [["A red circle.", "one circle"], ["a b"]], ["a Red circle!", "?"]
    rouge = coco_scores([["A red circle."]], ["a RED circle!"], meteor=False)["ROUGE-L"]
    assert rouge == pytest.approx(100.0)  # ROUGE-L reads the same tokens
    assert coco_scores(references, hypotheses)["METEOR"] == pytest.approx(25.0)
    assert FakeMeteor.calls == [
        ({0: ["a red circle", "one circle"], 1: ["a b"]}, {0: ["a red circle"], 1: ["<empty>"]})
    ]
    assert "METEOR" not in coco_scores(references, hypotheses, meteor=False)
    assert len(FakeMeteor.calls) == 1  # not even started
    for failure in (OSError, ValueError):  # java started, then failed: no score, lock released
        monkeypatch.setattr(FakeMeteor, "fail", failure)
        assert "METEOR" not in coco_scores(references, hypotheses)
        assert not FakeMeteor.made[-1].lock.locked()

    def no_jar():
        raise OSError("no java")

    monkeypatch.setattr(module, "Meteor", no_jar)  # the jar or java could not start
    assert "METEOR" not in coco_scores(references, hypotheses)
    monkeypatch.setattr(module, "Meteor", FakeMeteor)
    monkeypatch.setattr(FakeMeteor, "fail", None)
    monkeypatch.setattr("captioner.metrics.shutil.which", lambda name: None)
    assert "METEOR" not in coco_scores(references, hypotheses)


def test_a_word_twice_in_a_row_is_counted_on_the_tokenised_caption():
    """Case and punctuation do not hide a repeat ("A a", "circle, circle"); no captions: 0."""
    assert repeats_a_word("A a red circle") and repeats_a_word("a circle, circle")
    assert not repeats_a_word("a red a") and not repeats_a_word(["a"]) and not repeats_a_word("")
    assert repeat_share([]) == 0.0 and repeat_share(["a A", "a b"]) == 0.5


def test_coco_scores_without_pycocoevalcap(monkeypatch):
    """CIDEr-D is the project's own (captioner.cider); ROUGE-L and METEOR need pycocoevalcap."""
    monkeypatch.setitem(sys.modules, "pycocoevalcap.rouge.rouge", None)  # import fails
    assert set(coco_scores([["a b"], ["c d"]], ["a b", "c"])) == {"CIDEr-D"}
