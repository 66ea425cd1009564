"""Caption metrics: corpus BLEU-1..4 (nltk), CIDEr-D (`captioner.cider`, equal to pycocoevalcap's),
and METEOR / ROUGE-L when pycocoevalcap is installed (``pip install 'crnn[metrics]'``).

Every metric sees the same words: references and hypotheses are tokenised with
`captioner.data.tokenize` (lowercase, Penn Treebank split, punctuation dropped), the tokenisation
the vocabulary is built with. So the scores are comparable between runs of this project, but not
digit for digit with papers that use the COCO server's PTB tokenizer (which keeps some
punctuation-free tokens differently). All scores are on a 0-100 scale.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Sequence

from nltk.translate.bleu_score import corpus_bleu

from captioner.cider import corpus_cider_d
from captioner.data import tokenize

_NO_MATCH = 1e-70
BLEU_WEIGHTS = {
    "BLEU-1": (1.0, 0.0, 0.0, 0.0),
    "BLEU-2": (1 / 2, 1 / 2, 0.0, 0.0),
    "BLEU-3": (1 / 3, 1 / 3, 1 / 3, 0.0),
    "BLEU-4": (1 / 4, 1 / 4, 1 / 4, 1 / 4),
}


def _check_lengths(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} reference sets but {len(hypotheses)} hypotheses; pass one "
            "list of references per hypothesis"
        )
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{index}] must be a non-empty list of caption strings")


def bleu_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 (Papineni et al. 2002) on a 0-100 scale.

    ``references[i]`` are the reference captions of the image whose generated caption is
    ``hypotheses[i]``. Both are tokenised with `captioner.data.tokenize` (lowercased nltk
    TreebankWordTokenizer, tokens without a letter or digit dropped), then scored with nltk's
    ``corpus_bleu``: modified n-gram precisions summed over the corpus, geometric mean with uniform
    weights over n = 1..N, times the corpus brevity penalty exp(1 - r/c) when the hypotheses' total
    length c is below the closest-reference length r. No smoothing: a BLEU-N whose some n-gram
    order up to N has no match at all is 0.
    """
    _check_lengths(references, hypotheses)
    if not hypotheses:
        return {name: 0.0 for name in BLEU_WEIGHTS}
    refs = [[tokenize(ref) for ref in image_refs] for image_refs in references]
    hyps = [tokenize(hyp) for hyp in hypotheses]
    scores = {}
    with warnings.catch_warnings():  # nltk warns about zero n-gram counts; the score is then 0
        warnings.simplefilter("ignore")
        for name, weights in BLEU_WEIGHTS.items():
            value = float(corpus_bleu(refs, hyps, weights=weights))
            # For an order without any match nltk multiplies in the smallest float instead of 0,
            # giving at most ~1e-77 (2.2e-308 ** 1/4); no real BLEU is that small, so report 0.
            scores[name] = 100.0 * value if math.isfinite(value) and value > _NO_MATCH else 0.0
    return scores


def cider_d_score(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str]
) -> dict[str, float]:
    """{"CIDEr-D": corpus CIDEr-D on a 0-100 scale}, document frequencies from these references.

    The CIDEr-D the COCO evaluation server reports (Vedantam et al. 2015), computed by
    `captioner.cider` exactly as pycocoevalcap's ``Cider`` (a test compares them): tf-idf weighted
    n-gram (1-4) cosine similarity with clipped hypothesis counts and a Gaussian length penalty
    (sigma 6), times 10; reported x100 as in papers (e.g. 94.0). Needs no optional package.
    """
    _check_lengths(references, hypotheses)
    if not hypotheses:
        return {}
    return {"CIDEr-D": 100.0 * corpus_cider_d(references, hypotheses)[0]}


def coco_scores(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], *, meteor: bool = True
) -> dict[str, float]:
    """CIDEr-D (always), and ROUGE-L and METEOR from pycocoevalcap when it is installed; 0-100.

    - "CIDEr-D": see `cider_d_score`.
    - "ROUGE-L": longest-common-subsequence F-measure (beta 1.2), best reference per image.
    - "METEOR": METEOR 1.5 (needs ``java`` on the PATH; left out when it cannot run). Set
      ``meteor=False`` to skip its few seconds of start-up.

    Captions are tokenised with `captioner.data.tokenize` and joined by spaces, so pycocoevalcap's
    Java PTBTokenizer is not needed. A hypothesis or reference that tokenises to nothing becomes a
    placeholder word that matches nothing.
    """
    scores = cider_d_score(references, hypotheses)
    if not hypotheses:
        return scores
    try:
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        return scores
    gts = {i: [_joined(ref) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [_joined(hyp)] for i, hyp in enumerate(hypotheses)}
    scores["ROUGE-L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    if meteor:
        value = _meteor(gts, res)
        if value is not None:
            scores["METEOR"] = 100.0 * value
    return scores


_EMPTY = "<empty>"  # never produced by `tokenize`, so it matches no real word


def _joined(caption: str) -> str:
    return " ".join(tokenize(caption)) or _EMPTY


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float | None:
    """METEOR through pycocoevalcap's Java wrapper; None when Java or the jar cannot run."""
    if shutil.which("java") is None:
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
    except (ImportError, OSError):  # the jar or java could not start
        return None
    try:
        return float(scorer.compute_score(gts, res)[0])
    except (OSError, ValueError):  # java started but failed (e.g. too little memory): no score
        return None
    finally:
        if scorer.lock.locked():  # a failed compute_score keeps its lock; its __del__ needs it
            scorer.lock.release()


def repeats_a_word(caption: str | Sequence[str]) -> bool:
    """Whether a caption (a string, or its words) has the same word twice in a row ("a a red
    circle", "of of"): the degenerate repetition self-critical training is known to cause.
    Legitimate repeats further apart ("a red circle above a red square") do not count."""
    words = tokenize(caption) if isinstance(caption, str) else list(caption)
    return any(first == second for first, second in zip(words, words[1:], strict=False))


def repeat_share(captions: Sequence[str]) -> float:
    """Share of ``captions`` that `repeats_a_word` (0 for no captions)."""
    return sum(repeats_a_word(caption) for caption in captions) / len(captions) if captions else 0.0
