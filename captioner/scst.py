"""Self-critical sequence training (Rennie et al. 2017, "Self-critical Sequence Training for Image
Captioning"): the policy gradient of the CIDEr-D of sampled captions, against a baseline.

One training step of ``train.objective: scst``, given the batch's image features and the keys of
its images in a `CiderD` built once from the training references:

    cider = CiderD([record.captions for record in train_records])   # once per run
    loss, stats = scst_loss(model.decoder, features, image_keys, cider, vocab,
                            samples_per_image=cfg.train.scst_samples,
                            baseline=cfg.train.scst_baseline,
                            max_length=cfg.decode.max_length, generator=generator)
    loss.backward()

For each image it samples k captions (`captioner.decode.sample_captions`, multinomial, with the
decoder in its current mode: train mode keeps dropout, as self-critical.pytorch samples), rewards
each with its CIDEr-D against that image's references, and subtracts a baseline:

- ``"greedy"``: the CIDEr-D of the image's greedy caption, decoded in eval mode without gradients
  (Rennie et al.'s self-critical baseline);
- ``"mean"``: the mean reward of the image's other k - 1 samples (the "new SCST" of
  self-critical.pytorch, after Luo 2020 and Kool et al. 2019's leave-one-out baseline); it costs no
  extra decoding.

The loss is REINFORCE with that baseline, ``-sum_i (r_i - b_i) * sum_t log p(w_t^i)`` over the
sampled tokens (<end> included, nothing after it), divided by the number of those tokens
(self-critical.pytorch's ``RewardCriterion``). Its gradient raises the log-probability of samples
that beat the baseline and lowers that of the others. Under torchrun the count is the whole
batch's, as cross-entropy's is. The samples are drawn from each process's own random stream (as
dropout masks are), so they depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from captioner.cider import CiderD
from captioner.data import Vocabulary
from captioner.decode import SampledCaptions, greedy_decode, sample_captions
from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageFeatures
from captioner.metrics import repeats_a_word
from recurrent.distributed import Distributed

Baseline = Literal["greedy", "mean"]


def mean_of_others(rewards: Tensor) -> Tensor:
    """rewards (B, k) -> for each sample the mean reward of its image's other k - 1 samples."""
    k = rewards.size(1)
    if k < 2:
        raise ValueError("the mean baseline needs at least 2 samples per image")
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def policy_gradient_loss(
    samples: SampledCaptions, advantages: Tensor, layout: Distributed | None = None
) -> Tensor:
    """REINFORCE loss of the sampled tokens: -sum(advantage * log p * mask) / sum(mask).

    advantages (R,): reward minus baseline of each sample, a constant (no gradient flows into it).
    Under torchrun (`layout`) sum(mask) is the processes' mean token count, so that the gradients
    DDP averages are those of one process normalising by the whole batch's tokens.
    """
    mask = samples.mask.float()  # (R, T)
    weighted = samples.logprobs * mask * advantages.detach().unsqueeze(1)  # (R, T)
    tokens = mask.sum()
    if layout is not None and layout.enabled:
        tokens = layout.all_reduce_sum(tokens.detach().clone()) / layout.world_size
    return -weighted.sum() / tokens.clamp(min=1.0)


def scst_loss(
    decoder: CaptionDecoder,
    features: ImageFeatures,
    image_keys: Sequence[Hashable],
    cider: CiderD,
    vocab: Vocabulary,
    *,
    samples_per_image: int = 5,
    baseline: Baseline = "greedy",
    max_length: int = 30,
    generator: torch.Generator | None = None,
    layout: Distributed | None = None,
    suppress_ids: Sequence[int] = (),
) -> tuple[Tensor, dict[str, float]]:
    """The SCST loss of one batch of B images (see the module docstring) and its statistics.

    features: the B images' `ImageFeatures` (with gradients if the encoder trains);
    image_keys: each image's key in ``cider`` (the index of its training record, say);
    suppress_ids: ids neither the samples nor the greedy baseline may emit (``decode.suppress_unk``
    passes <unk>, as validation decodes), so the policy is that of the captions it is scored on.

    Returns ``(loss, stats)``; stats holds floats: "reward" (mean CIDEr-D of the samples),
    "baseline" (mean baseline), "greedy_reward" (greedy baseline only), "advantage" (mean
    absolute reward minus baseline), "repeat_share" (share of samples with a word twice in a row,
    the degenerate repetition SCST is known for), "sample_words" (mean words per sample) and
    "finished_share" (share of samples that emitted <end> within ``max_length``).
    """
    if len(image_keys) != features.grid.size(0):
        raise ValueError(f"{features.grid.size(0)} images but {len(image_keys)} image keys")
    if baseline not in ("greedy", "mean"):
        raise ValueError(f"baseline must be 'greedy' or 'mean', got {baseline!r}")
    if baseline == "mean" and samples_per_image < 2:
        raise ValueError("the mean baseline needs samples_per_image >= 2")
    settings = dict(
        max_length=max_length,
        start_id=vocab.start_id,
        end_id=vocab.end_id,
        suppress_ids=tuple(suppress_ids),
    )
    samples = sample_captions(
        decoder, features, samples_per_image=samples_per_image, generator=generator, **settings
    )
    sampled_words = [vocab.decode_tokens(tokens) for tokens in samples.token_lists()]
    sample_keys = [key for key in image_keys for _ in range(samples_per_image)]
    rewards = torch.tensor(cider.scores(sampled_words, sample_keys), dtype=torch.float32)
    rewards = rewards.view(len(image_keys), samples_per_image)  # (B, k)
    stats: dict[str, float] = {}
    if baseline == "greedy":
        was_training = decoder.training
        decoder.eval()
        try:
            with torch.no_grad():
                greedy = greedy_decode(decoder, _detached(features), **settings)
        finally:
            decoder.train(was_training)
        greedy_words = [vocab.decode_tokens(caption.tokens) for caption in greedy]
        greedy_rewards = torch.tensor(cider.scores(greedy_words, image_keys))
        base = greedy_rewards.float().unsqueeze(1).expand_as(rewards)
        stats["greedy_reward"] = float(greedy_rewards.mean())
    else:
        base = mean_of_others(rewards)
    advantages = (rewards - base).reshape(-1).to(samples.logprobs.device)  # (B*k,)
    loss = policy_gradient_loss(samples, advantages, layout)
    stats.update(
        reward=float(rewards.mean()),
        baseline=float(base.mean()),
        advantage=float(advantages.abs().mean()),
        repeat_share=sum(repeats_a_word(words) for words in sampled_words) / len(sampled_words),
        sample_words=float(samples.words.float().mean()),
        finished_share=float(samples.finished.float().mean()),
    )
    return loss, stats


@dataclass
class SelfCritical:
    """The self-critical objective of a run, bound per batch to the keys of its images:
    ``model(inputs, self_critical=objective.bind(keys))`` returns `scst_loss`'s (loss, figures),
    the figures named ``scst_<stat>`` for the run's metrics.

    Sampling draws from the global torch generator, whose state the checkpoints keep, so a resumed
    run samples what the uninterrupted one would have.
    """

    cider: CiderD
    vocab: Vocabulary
    samples_per_image: int
    baseline: Baseline
    max_length: int
    layout: Distributed | None = None  # under torchrun: the loss's token count is the job's
    suppress_ids: Sequence[int] = ()  # decode.suppress_unk: <unk>, in samples and baseline alike

    def bind(
        self, image_keys: Sequence[Hashable]
    ) -> Callable[[CaptionDecoder, ImageFeatures], Any]:
        def objective(decoder: CaptionDecoder, features: ImageFeatures) -> Any:
            loss, stats = scst_loss(
                decoder, features, image_keys, self.cider, self.vocab,
                samples_per_image=self.samples_per_image, baseline=self.baseline,
                max_length=self.max_length, layout=self.layout, suppress_ids=self.suppress_ids,
            )  # fmt: skip
            return loss, {f"scst_{name}": value for name, value in stats.items()}

        return objective


def _detached(features: ImageFeatures) -> ImageFeatures:
    return ImageFeatures(features.pooled.detach(), features.grid.detach(), features.grid_hw)
