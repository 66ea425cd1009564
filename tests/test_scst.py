"""The training objectives beyond plain cross-entropy: label smoothing, and the pieces of
self-critical sequence training (sampling, rewards, baselines, the policy-gradient loss)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_captioner_decode import (
    DECODERS,
    END,
    PAD,
    START,
    TableDecoder,
    make_decoder,
    random_features,
)

from captioner.cider import CiderD
from captioner.config import CaptionerConfig, check_config
from captioner.data import Vocabulary
from captioner.decode import SampledCaptions, greedy_decode, sample_captions
from captioner.scst import SelfCritical, mean_of_others, policy_gradient_loss, scst_loss
from recurrent.config import load_config
from recurrent.errors import UserError

COMMON = dict(start_id=START, end_id=END)

# --- label smoothing ----------------------------------------------------------------------------


@pytest.mark.parametrize("attention", DECODERS)
def test_label_smoothing_matches_its_definition_and_ignores_padding(attention):
    decoder = make_decoder(attention)
    decoder.alpha_c = 0.0  # the cross-entropy alone
    features = random_features(batch=3)
    captions = torch.tensor(
        [[START, 4, 5, END, PAD], [START, 6, END, PAD, PAD], [START, 7, 8, 9, END]]
    )
    lengths = torch.tensor([4, 3, 5])
    eps = 0.2
    logits, loss = decoder(features, captions, lengths, label_smoothing=eps)
    _, plain = decoder(features, captions, lengths)
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T-1, V)
    targets = captions[:, 1:]
    real = targets != PAD
    nll = -logp.gather(2, targets.unsqueeze(-1)).squeeze(-1)[real]
    uniform = -logp.mean(dim=-1)[real]  # cross-entropy against the uniform distribution
    assert loss.item() == pytest.approx(((1 - eps) * nll + eps * uniform).mean().item(), rel=1e-5)
    assert plain.item() == pytest.approx(nll.mean().item(), rel=1e-5)
    # Whatever the padding positions hold, the loss stays the same.
    garbage = captions.clone()
    garbage[0, 4], garbage[1, 3:] = 9, 5
    assert decoder(features, garbage, lengths, label_smoothing=eps)[1].item() == pytest.approx(
        loss.item(), rel=1e-6
    )


# --- sampling -----------------------------------------------------------------------------------


def drawn_logprob(decoder, features, row: int, tokens: list[int], finished: bool) -> float:
    """Log-probability of drawing <start> tokens (<end>) word by word for image ``row`` from the
    teacher-forced distribution renormalised over the words sampling may emit (not <start>, <pad>):
    the probability of the policy the samples come from."""
    one = features.index_select(torch.tensor([row]))
    ids = torch.tensor([[START, *tokens, *([END] if finished else [])]])
    logits, _ = decoder(one, ids, torch.tensor([ids.size(1)]))
    forbidden = torch.zeros(logits.size(-1), dtype=torch.bool)
    forbidden[[START, PAD]] = True
    logits = logits[0].float().masked_fill(forbidden, float("-inf"))
    return float(F.log_softmax(logits.detach(), dim=-1).gather(1, ids[0, 1:, None]).sum())


@pytest.mark.parametrize("attention", DECODERS)
def test_samples_carry_the_log_probs_they_were_drawn_with_and_masks(attention):
    decoder, features = make_decoder(attention, end_bias=1.0), random_features(batch=3)
    generator = torch.Generator().manual_seed(0)
    samples = sample_captions(
        decoder, features, samples_per_image=4, max_length=6, generator=generator, **COMMON
    )
    assert samples.tokens.shape[0] == 12 and samples.logprobs.requires_grad
    seen = set()
    for row, tokens in enumerate(samples.token_lists()):
        finished = bool(samples.finished[row])
        seen.add(finished)
        expected = drawn_logprob(decoder, features, row // 4, tokens, finished)
        assert float(samples.sequence_logprobs()[row].detach()) == pytest.approx(expected, abs=1e-4)
        steps = len(tokens) + finished  # the drawn tokens, <end> included
        assert samples.mask[row].tolist() == [t < steps for t in range(samples.mask.size(1))]
        assert (samples.tokens[row, steps:] == PAD).all()
        assert (samples.logprobs[row, steps:] == 0).all()
        assert START not in tokens and PAD not in tokens and END not in tokens
    assert seen == {True, False}
    again = sample_captions(
        decoder,
        features,
        samples_per_image=4,
        max_length=6,
        generator=torch.Generator().manual_seed(0),
        **COMMON,
    )
    assert torch.equal(again.tokens, samples.tokens)
    with torch.no_grad():  # weights gone NaN: NaN log-probs for the engine's guard to stop on, not
        decoder.output.bias[0] = float("nan")  # multinomial's RuntimeError (CUDA: device assert)
    broken = sample_captions(decoder, features, samples_per_image=2, max_length=3, **COMMON)
    assert broken.sequence_logprobs().isnan().all()


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan])
def test_sampling_refuses_a_temperature_that_is_not_positive(temperature):
    """Logits divided by 0 are not a distribution (greedy decoding is the temperature-0 limit);
    NaN drew `<pad>` ids with NaN log-probabilities, unrefused."""
    decoder, features = make_decoder(False), random_features(batch=1)
    with pytest.raises(UserError, match="temperature must be > 0"):
        sample_captions(
            decoder, features, samples_per_image=2, max_length=3, temperature=temperature, **COMMON
        )


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampling_follows_the_model_distribution(temperature):
    """First words drawn from a table decoder: frequencies match the probabilities, sharpened or
    flattened by the temperature (softmax(log p / temperature))."""
    probs = torch.full((8, 8), 1e-12)
    probs[START, [4, 5, 6]] = torch.tensor([0.6, 0.3, 0.1])
    probs[4:7, END] = 1.0
    probs[[PAD, END, 3, 7]] = 1.0 / 8
    decoder = TableDecoder(probs.log())
    features = random_features(batch=2)
    samples = sample_captions(
        decoder,
        features,
        samples_per_image=3000,
        max_length=3,
        temperature=temperature,
        generator=torch.Generator().manual_seed(1),
        **COMMON,
    )
    first = samples.tokens[:, 0]
    frequencies = torch.stack([(first == word).float().mean() for word in (4, 5, 6)])
    expected = torch.softmax(torch.tensor([0.6, 0.3, 0.1]).log() / temperature, dim=0)
    torch.testing.assert_close(frequencies, expected, atol=0.02, rtol=0)
    assert bool(samples.finished.all()) and (samples.words == 1).all()


def test_the_policy_gradient_is_that_of_the_distribution_sampled_from():
    """<start> and <pad> hold half the first step's probability but are never drawn: a sample's
    log-probability is that of the words it can be drawn among (log 0.6, log 0.4: its draw
    frequencies), and REINFORCE's gradient leaves the forbidden words' logits alone. (Scored
    with teacher forcing's log 0.3 and log 0.2, a negative advantage, as when samples lose to the
    greedy baseline, would raise <start> and <pad> step after step.)"""
    probs = torch.full((8, 8), 1e-12)
    probs[START, [START, PAD, 4, 5]] = torch.tensor([0.25, 0.25, 0.3, 0.2])
    probs[4:6, END] = 1.0
    probs[[PAD, END, 3, 6, 7]] = 1.0 / 8
    table = probs.log().requires_grad_()
    decoder = TableDecoder(table)
    samples = sample_captions(
        decoder, random_features(batch=1), samples_per_image=2000, max_length=2,
        generator=torch.Generator().manual_seed(0), **COMMON,
    )  # fmt: skip
    first = samples.tokens[:, 0]
    assert (first == 4).float().mean().item() == pytest.approx(0.6, abs=0.03)  # renormalised
    expected = torch.where(first == 4, torch.tensor(0.6).log(), torch.tensor(0.4).log())
    torch.testing.assert_close(samples.logprobs[:, 0].detach(), expected)
    policy_gradient_loss(samples, torch.full((first.numel(),), -1.0)).backward()
    # the reference: the same loss on the policy softmax over the allowed words, by hand
    reference = probs.log().requires_grad_()
    forbidden = torch.zeros(8, dtype=torch.bool)
    forbidden[[START, PAD]] = True
    allowed = reference[START].masked_fill(forbidden, float("-inf")).log_softmax(dim=0)
    logp = torch.where(first == 4, allowed[4], allowed[5])  # then <end>, with probability 1
    (logp.sum() / samples.mask.sum()).backward()  # -(-1) * sum log p / tokens
    assert table.grad[START, [START, PAD]].abs().max().item() < 1e-6  # 0.125 with log 0.3, log 0.2
    torch.testing.assert_close(table.grad[START], reference.grad[START])


# --- rewards, baselines and the policy gradient -------------------------------------------------


def test_mean_of_others_baseline():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    expected = torch.tensor([[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]])
    torch.testing.assert_close(mean_of_others(rewards), expected)
    with pytest.raises(ValueError):
        mean_of_others(torch.ones(2, 1))


def test_policy_gradient_is_the_advantage_times_the_mask():
    logprobs = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    samples = SampledCaptions(
        tokens=torch.zeros(3, 4, dtype=torch.long),
        logprobs=logprobs,
        mask=mask,
        words=mask.sum(1) - 1,
        finished=torch.ones(3, dtype=torch.bool),
    )
    advantages = torch.tensor([2.0, -1.0, 0.5])
    loss = policy_gradient_loss(samples, advantages)
    loss.backward()
    expected = -advantages[:, None] * mask.float() / mask.sum()
    torch.testing.assert_close(logprobs.grad, expected)
    weighted = advantages[:, None] * logprobs.detach() * mask
    assert loss.item() == pytest.approx(float(-weighted.sum() / mask.sum()))


def test_under_torchrun_the_loss_counts_the_whole_batchs_tokens():
    """Two processes with 3 and 1 samples: each normalises by the job's mean token count (an
    all-reduce), and DDP's mean of their gradients is the one-process gradient of the whole batch
    (each normalised by its own count, the two disagreed)."""
    logprobs = torch.randn(4, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    mask = mask.bool()
    advantages = torch.tensor([2.0, -1.0, 0.5, 1.5])

    def samples(rows: slice) -> SampledCaptions:
        return SampledCaptions(
            tokens=torch.zeros_like(mask[rows], dtype=torch.long), logprobs=logprobs[rows],
            mask=mask[rows], words=mask[rows].sum(1) - 1, finished=torch.ones(len(mask[rows])),
        )  # fmt: skip

    class TwoProcesses:  # the all-reduce of the job: these shares' token counts, summed
        enabled, world_size = True, 2

        def all_reduce_sum(self, tensor):
            return tensor.new_tensor(float(mask.sum()))

    policy_gradient_loss(samples(slice(None)), advantages).backward()
    whole = logprobs.grad.clone()
    logprobs.grad = None
    for rows in (slice(0, 3), slice(3, 4)):
        loss = policy_gradient_loss(samples(rows), advantages[rows], TwoProcesses())
        (loss / 2).backward()  # DDP averages the processes' gradients
    torch.testing.assert_close(logprobs.grad, whole)


def _vocab_and_cider():
    """A vocabulary of the tiny decoders' 12 ids and references that reward word 'w4'."""
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(4, 12)]])
    references = {
        0: ["w4 w4 w5", "w4 w5", "w4"],
        1: ["w6 w7", "w6 w7 w8"],
        "other": ["w9 w10 w11"],  # makes the idf of the others positive
    }
    return vocab, CiderD(references)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_scst_step_raises_the_reward(baseline):
    """Plain gradient steps on the SCST loss raise the mean CIDEr-D of samples and of greedy
    captions: the gradient points towards high-reward captions."""
    torch.manual_seed(0)
    vocab, cider = _vocab_and_cider()
    decoder = make_decoder(True, seed=3)
    features = random_features(batch=2)
    optimizer = torch.optim.SGD(decoder.parameters(), lr=1.0)
    generator = torch.Generator().manual_seed(0)

    def greedy_reward() -> float:
        greedy = greedy_decode(decoder, features, max_length=5, **COMMON)
        return sum(cider.scores([vocab.decode_tokens(c.tokens) for c in greedy], [0, 1])) / 2

    before = greedy_reward()
    decoder.train()
    rewards = []
    for _ in range(40):
        loss, stats = scst_loss(
            decoder,
            features,
            [0, 1],
            cider,
            vocab,
            samples_per_image=8,
            baseline=baseline,
            max_length=5,
            generator=generator,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(stats["reward"])
    assert sum(rewards[-5:]) > 2 * sum(rewards[:5])
    assert greedy_reward() > before
    assert set(stats) >= {"reward", "baseline", "advantage", "repeat_share", "sample_words"}
    assert ("greedy_reward" in stats) == (baseline == "greedy")


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_scst_loss_weighs_each_sample_by_its_reward_minus_its_own_baseline(baseline):
    """The loss, rebuilt from its parts: each sample's CIDEr-D against its own image's references,
    minus its own baseline (its image's greedy caption's reward, or the mean of its image's other
    samples), times its log-probability. One baseline for the whole batch, or a mean that counts
    the sample itself, gives another loss."""
    vocab, cider = _vocab_and_cider()
    decoder, features = make_decoder(True, seed=3).eval(), random_features(batch=2)
    settings = dict(samples_per_image=4, max_length=5)
    loss, stats = scst_loss(
        decoder, features, [0, 1], cider, vocab, baseline=baseline,
        generator=torch.Generator().manual_seed(4), **settings,
    )  # fmt: skip
    samples = sample_captions(
        decoder, features, generator=torch.Generator().manual_seed(4), **settings, **COMMON
    )
    words = [vocab.decode_tokens(tokens) for tokens in samples.token_lists()]
    rewards = torch.tensor(cider.scores(words, [0] * 4 + [1] * 4)).float().view(2, 4)
    if baseline == "greedy":
        greedy = greedy_decode(decoder, features, max_length=5, **COMMON)
        greedy_words = [vocab.decode_tokens(caption.tokens) for caption in greedy]
        base = torch.tensor(cider.scores(greedy_words, [0, 1])).float()[:, None].expand(2, 4)
    else:
        base = torch.stack([(row.sum() - row) / 3 for row in rewards])
    assert len(set(base.flatten().tolist())) > 1  # the images' baselines differ: the test bites
    advantages = (rewards - base).flatten()
    expected = policy_gradient_loss(samples, advantages)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["advantage"] == pytest.approx(float(advantages.abs().mean()), rel=1e-5)
    assert stats["reward"] == pytest.approx(float(rewards.mean()), rel=1e-5)


def test_scst_statistics_describe_the_samples_drawn():
    """The figures a run logs, counted by hand from the same draws (3 samples of each of 2
    images, at most 4 words): words twice in a row, words per sample, samples that ended."""
    vocab, cider = _vocab_and_cider()
    decoder, features = make_decoder(True, seed=3).eval(), random_features(batch=2)
    settings = dict(samples_per_image=3, max_length=4)
    _, stats = scst_loss(
        decoder, features, [0, 1], cider, vocab, generator=torch.Generator().manual_seed(1),
        **settings,
    )  # fmt: skip
    samples = sample_captions(
        decoder, features, generator=torch.Generator().manual_seed(1), **settings, **COMMON
    )
    captions = samples.token_lists()
    repeated = [any(a == b for a, b in zip(c, c[1:], strict=False)) for c in captions]
    ended = [END in row for row in samples.tokens.tolist()]
    assert 0 < sum(repeated) and 0 < sum(ended) < 3  # neither half nor none: the test bites
    assert stats["repeat_share"] == pytest.approx(sum(repeated) / 6)
    assert stats["sample_words"] == pytest.approx(sum(map(len, captions)) / 6)
    assert stats["finished_share"] == pytest.approx(sum(ended) / 6)
    greedy = greedy_decode(decoder, features, max_length=4, **COMMON)
    greedy_words = [vocab.decode_tokens(c.tokens) for c in greedy]
    assert stats["baseline"] == pytest.approx(sum(cider.scores(greedy_words, [0, 1])) / 2)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_a_runs_objective_passes_every_setting_on(baseline):
    """`SelfCritical.bind`, what training calls, gives `scst_loss` with the run's baseline,
    sample count, length, <unk> suppression and torchrun layout (whose all-reduce here says the
    job has 3 times this process's tokens), its figures named scst_<stat>."""

    class Job:
        enabled, world_size = True, 2

        def all_reduce_sum(self, tensor):
            return 3 * tensor

    vocab, cider = _vocab_and_cider()
    decoder, features = make_decoder(True, seed=3).eval(), random_features(batch=2)
    settings = dict(
        samples_per_image=3, baseline=baseline, max_length=4, layout=Job(), suppress_ids=(5,)
    )
    torch.manual_seed(7)
    loss, stats = SelfCritical(cider, vocab, **settings).bind([0, 1])(decoder, features)
    torch.manual_seed(7)
    expected, expected_stats = scst_loss(decoder, features, [0, 1], cider, vocab, **settings)
    assert loss.item() == pytest.approx(expected.item())
    assert stats == {f"scst_{name}": value for name, value in expected_stats.items()}
    assert ("scst_greedy_reward" in stats) == (baseline == "greedy")
    torch.manual_seed(7)
    alone, _ = scst_loss(decoder, features, [0, 1], cider, vocab, **{**settings, "layout": None})
    assert alone.item() == pytest.approx(1.5 * loss.item())  # 3/2 of the tokens per process


def test_scst_loss_refuses_settings_it_cannot_score():
    """As many image keys as images, a known baseline, and two samples an image for the mean
    baseline: each refused with its own reason before any caption is sampled."""
    vocab, cider = _vocab_and_cider()
    decoder, features = make_decoder(True, seed=3).eval(), random_features(batch=2)
    for keys in ([0], [0, 1, 0]):
        with pytest.raises(ValueError, match=f"2 images but {len(keys)} image keys"):
            scst_loss(decoder, features, keys, cider, vocab, samples_per_image=2)
    with pytest.raises(ValueError, match="baseline must be 'greedy' or 'mean', got 'max'"):
        scst_loss(decoder, features, [0, 1], cider, vocab, baseline="max")
    with pytest.raises(ValueError, match="samples_per_image >= 2"):
        scst_loss(decoder, features, [0, 1], cider, vocab, samples_per_image=1, baseline="mean")


def test_scst_gradient_favours_the_sample_above_the_baseline():
    """One step on a loss whose advantages are known raises the log-probability of the sample
    with a positive advantage and lowers the one with a negative advantage."""
    decoder, features = make_decoder(False, seed=5, end_bias=1.0), random_features(batch=1)
    samples = sample_captions(
        decoder,
        features,
        samples_per_image=2,
        max_length=4,
        generator=torch.Generator().manual_seed(2),
        **COMMON,
    )
    tokens = samples.token_lists()
    assert tokens[0] != tokens[1]
    loss = policy_gradient_loss(samples, torch.tensor([1.0, -1.0]))
    loss.backward()
    with torch.no_grad():
        for param in decoder.parameters():
            param -= 0.1 * param.grad
    for row, sign in ((0, 1), (1, -1)):
        before = float(samples.sequence_logprobs()[row].detach())
        after = drawn_logprob(decoder, features, 0, tokens[row], bool(samples.finished[row]))
        assert sign * (after - before) > 0


def test_greedy_baseline_uses_eval_mode_and_restores_training():
    vocab, cider = _vocab_and_cider()
    decoder = make_decoder(True)
    decoder.train()
    decoder.dropout.p = 0.5
    features = random_features(batch=2)
    _, stats = scst_loss(decoder, features, [0, 1], cider, vocab, samples_per_image=2, max_length=4)
    assert decoder.training
    greedy = greedy_decode(decoder.eval(), features, max_length=4, **COMMON)
    words = [vocab.decode_tokens(c.tokens) for c in greedy]
    assert stats["greedy_reward"] == pytest.approx(sum(cider.scores(words, [0, 1])) / 2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.label_smoothing=1.0"], "train.label_smoothing"),
        (["train.label_smoothing=-0.1"], "train.label_smoothing"),
        (["train.scst_samples=0"], "train.scst_samples"),
        (["train.scst_baseline=mean", "train.scst_samples=1"], "scst_samples >= 2"),
        (["train.objective=reinforce"], "train.objective"),
        (["train.best_metric=meteor"], "train.best_metric"),
    ],
)
def test_config_bounds_of_the_training_objectives(overrides, message):
    with pytest.raises(UserError, match=message):
        check_config(load_config(CaptionerConfig, None, ["data.annotations=x.json", *overrides]))
