"""CIDEr-D (captioner.cider) against pycocoevalcap's CiderScorer, on random captions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner.cider import CiderD, corpus_cider_d, ngram_counts
from captioner.data import tokenize
from captioner.metrics import cider_d_score, coco_scores, repeat_share, repeats_a_word

pycocoevalcap_cider = pytest.importorskip("pycocoevalcap.cider.cider")

# Few words, so that captions share n-grams of every order; punctuation and case go through
# the project tokenizer on both sides.
WORDS = ["a", "red", "Blue", "circle", "square", "left", "of", "the", "two", "circles,"]
captions = st.lists(st.sampled_from(WORDS), min_size=0, max_size=9).map(" ".join)
# pycocoevalcap cannot score a corpus whose references hold no word at all.
nonempty = st.lists(st.sampled_from(WORDS), min_size=1, max_size=9).map(" ".join)
images = st.lists(
    st.tuples(captions, st.lists(nonempty, min_size=1, max_size=5)), min_size=1, max_size=7
)


def reference_scores(references, candidates):
    """pycocoevalcap's corpus CIDEr-D and per-image scores on the project's tokens."""
    gts = {i: [" ".join(tokenize(ref)) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(tokenize(candidate))] for i, candidate in enumerate(candidates)}
    score, per_image = pycocoevalcap_cider.Cider().compute_score(gts, res)
    return float(score), [float(value) for value in per_image]


@settings(max_examples=60, deadline=None)
@given(images)
def test_equals_pycocoevalcap_on_random_captions(data):
    candidates = [candidate for candidate, _ in data]
    references = [refs for _, refs in data]
    expected, expected_per_image = reference_scores(references, candidates)
    corpus, per_image = corpus_cider_d(references, candidates)
    assert per_image == pytest.approx(expected_per_image, rel=1e-9, abs=1e-12)
    assert corpus == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # The same through a CiderD keyed by image, with pre-tokenised candidates.
    cider = CiderD({f"image{i}": refs for i, refs in enumerate(references)})
    keyed = cider.scores([tokenize(c) for c in candidates], [f"image{i}" for i in range(len(data))])
    assert keyed == pytest.approx(expected_per_image, rel=1e-9, abs=1e-12)


def test_document_frequencies_come_from_the_references_it_is_built_with():
    """Built from other (training) references, the idf is theirs: an n-gram in every training
    image's references weighs nothing, one in none weighs log(number of images)."""
    train = [["a red circle"], ["a blue square"], ["a red square"]]
    cider = CiderD(train)
    assert cider.idf[("a",)] == 0.0
    assert cider.idf[("red",)] == pytest.approx(math.log(3) - math.log(2))
    assert ("green",) not in cider.idf  # unseen: idf log(3), as pycocoevalcap's max(1, df)
    # A candidate equal to its only reference: cosine 1 for n = 1, 2, 3 ("a" has idf 0, but
    # "red" and "circle" carry the 1-grams) and 0 for n = 4 (a 3-word caption has no 4-gram):
    # 10 * (1 + 1 + 1 + 0) / 4.
    assert cider.score("a red circle", 0) == pytest.approx(7.5)
    assert cider.score("", 0) == 0.0
    assert cider.score("green green", 0) == 0.0


def test_corpus_score_is_the_mean_of_the_image_scores_and_metrics_use_it():
    references = [["a red circle left of a blue square", "a blue square"], ["two red circles"]]
    candidates = ["a red circle", "two red circles"]
    corpus, per_image = corpus_cider_d(references, candidates)
    assert corpus == pytest.approx(sum(per_image) / 2)
    assert cider_d_score(references, candidates) == {"CIDEr-D": pytest.approx(100 * corpus)}
    assert coco_scores(references, candidates, meteor=False)["CIDEr-D"] == pytest.approx(
        100 * corpus
    )


def test_bad_input():
    with pytest.raises(ValueError, match="at least one image"):
        CiderD([])
    with pytest.raises(ValueError, match="no reference"):
        CiderD([["a"], []])
    with pytest.raises(ValueError, match="image keys"):
        CiderD([["a"]]).scores(["a", "b"], [0])
    with pytest.raises(ValueError, match="2 reference sets but 1 candidates"):
        corpus_cider_d([["a"], ["b"]], ["a"])
    # no images at all: nothing to score, not an error (a CiderD needs at least one image)
    assert corpus_cider_d([], []) == (0.0, [])


def test_ngram_counts_and_repeats():
    assert ngram_counts(["a", "b", "a"], order=2) == {
        ("a",): 2,
        ("b",): 1,
        ("a", "b"): 1,
        ("b", "a"): 1,
    }
    assert repeats_a_word("a a red circle") and repeats_a_word(["of", "of"])
    assert not repeats_a_word("a red circle above a red square")
    assert repeat_share(["a a", "a b", "b b", "c"]) == 0.5
