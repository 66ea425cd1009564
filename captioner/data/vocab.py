"""Caption tokenisation and the word vocabulary of the captioner.

`tokenize` is the one tokenisation used everywhere captions become words: building the vocabulary,
encoding training targets, and the BLEU evaluation (references and hypotheses alike), so scores
measure words and not punctuation or casing.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from nltk.tokenize import TreebankWordTokenizer

from recurrent.errors import UserError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # their ids are their positions: 0, 1, 2, 3
# Each word is a row of the decoder's embedding and output layers: 5 MB of captions of random
# words (475,000 of them) made the tiny config's model of 0.73 million parameters one of 24
# million, and each of its checkpoints 296 MB (8.9 MB for as many captions of 300 words). COCO's
# training captions have about 25,000 distinct words, under 10,000 of them seen five times.
MAX_WORDS = 200_000


def _stdlib_rules(rules: list) -> list:
    """nltk's (pattern, substitution) rules compiled by the standard `re` (nltk compiles them with
    `regex` in its re-compatible V0 mode, so the syntax and matches are the same)."""
    return [
        (re.compile(getattr(rule, "pattern", rule)), substitution) for rule, substitution in rules
    ]


class _Treebank(TreebankWordTokenizer):
    """nltk's `TreebankWordTokenizer`, its own rules and code, with the rules run by the standard
    `re` instead of nltk's timeout-guarded `regex` wrapper (about twice as fast): these rules have
    no nested quantifiers, so they cannot backtrack catastrophically. Tests compare it with nltk's
    tokenizer on random text."""

    STARTING_QUOTES = _stdlib_rules(TreebankWordTokenizer.STARTING_QUOTES)
    PUNCTUATION = _stdlib_rules(TreebankWordTokenizer.PUNCTUATION)
    PARENS_BRACKETS = _stdlib_rules([TreebankWordTokenizer.PARENS_BRACKETS])[0]
    CONVERT_PARENTHESES = _stdlib_rules(TreebankWordTokenizer.CONVERT_PARENTHESES)
    DOUBLE_DASHES = _stdlib_rules([TreebankWordTokenizer.DOUBLE_DASHES])[0]
    ENDING_QUOTES = _stdlib_rules(TreebankWordTokenizer.ENDING_QUOTES)


_TREEBANK = _Treebank()  # stateless and data-free (needs no nltk_data download)
# Plain captions (lowercase letters, digits, spaces, commas before neither a digit nor a comma, one
# final period) take a fast path: for them the Treebank rules come down to splitting on spaces,
# commas and the final period, unless a contraction rule ("cannot" -> "can" "not") applies.
# Most captions are plain; for them the fast path is ~25x faster than nltk's tokenizer (5 us
# against 130 us a caption: 3 s instead of 75 s for COCO's 566k training captions).
_PLAIN = re.compile(r"[a-z0-9 ,]*\.? *")
_COMMA_BEFORE = re.compile(r",[0-9,]")  # Treebank keeps "1,5" whole and ",,x" as "," ",x"
# Words of letters and digits, hyphenated or not, and the contractions Treebank splits off ("'s",
# "n't"), each after a space: none of its rules looks at them again (tests check on random text).
_SETTLED_WORD = r"(?:[a-z0-9]+(?:-[a-z0-9]+)*|'(?:s|m|d|ll|re|ve)|n't)"
# Treebank's passes over its own words in `tokenize`: of 300,000 random punctuation-heavy texts,
# 98% needed none, the rest one or two.
_MAX_PASSES = 8


def _split_words() -> frozenset[str] | None:
    """The apostrophe-free words Treebank's contraction rules split ("cannot", "gonna", ...), read
    from its rules ``\\b(can)(?#X)(not)\\b``; None (no fast path) for a rule of another shape."""
    words = set()
    for rule in (*TreebankWordTokenizer.CONTRACTIONS2, *TreebankWordTokenizer.CONTRACTIONS3):
        parts = re.findall(r"\(([a-z']+)\)", rule.pattern)
        if len(parts) != 2:
            return None
        if "'" not in "".join(parts):
            words.add("".join(parts))
    return frozenset(words)


_SPLIT_WORDS = _split_words()


# Chinese and Japanese are written without spaces between words: every Han character (hanzi,
# kanji, with their iteration marks) and every kana of the usual blocks is a token of its own,
# as BERT's tokenizer makes each Han character (Devlin et al. 2019), so such captions train and
# score by characters with no word segmenter to install (a caption of them was one token: most
# of a data set's captions were <unk>). Their punctuation, fullwidth forms too, is split off and
# dropped as ours is. A kana's voicing mark stays with it. `join_words` writes such tokens side
# by side.
_UNSPACED = (
    "\u3001-\u303f"  # their punctuation (dropped, as ours is), the iteration mark, zero
    "\u3040-\u30ff"  # hiragana, katakana
    "\u31f0-\u31ff"  # katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    # fullwidth and halfwidth punctuation, halfwidth katakana: `tokenize` makes them the usual
    # forms first (`_normalized`); a vocabulary's tokens written by `join_words` may hold them
    "\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
    "\uff66-\uff9f"
    "\U00020000-\U0003ffff"  # CJK extensions B to I and the compatibility supplement
)
_VOICING_MARKS = "\u3099\u309a\uff9e\uff9f"  # combining, and halfwidth katakana's
_UNSPACED_CHARACTER = re.compile(f"([{_UNSPACED}][{_VOICING_MARKS}]*)")
_UNSPACED_TOKEN = re.compile(f"[{_UNSPACED}][{_VOICING_MARKS}]*")
# Thai, Lao, Burmese, Khmer and Tibetan are written without spaces between words too, but their
# letters are no words (vowels and tones are combining marks, a syllable several characters): a
# caption of them stays one token, and its words must be split by spaces before training. A token
# of more than `RUN_ON_LETTERS` characters of these scripts is taken for words not split
# (`check_data` counts such captions); their common words are shorter.
_RUN_ON_SCRIPTS = re.compile(
    "[\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f\ua9e0-\ua9ff\uaa60-\uaa7f"  # Myanmar, its Extended-B and -A
    "\u1780-\u17ff\u19e0-\u19ff"  # Khmer, Khmer Symbols
    "\u0f00-\u0fff]"  # Tibetan (its tsheg marks syllables, not words)
)
RUN_ON_LETTERS = 16


def run_on_words(tokens: Iterable[str]) -> bool:
    """Whether a caption's `tokenize` tokens hold Thai, Lao, Burmese, Khmer or Tibetan words not
    split by spaces: a token of more than `RUN_ON_LETTERS` characters that starts with one of
    theirs."""
    return any(len(token) > RUN_ON_LETTERS and _RUN_ON_SCRIPTS.match(token) for token in tokens)


# A caption of these characters, whitespace and ASCII punctuation alone (fullwidth punctuation is
# ASCII's once `_normalized`) takes a fast path: no Treebank rule reads these characters, and
# its rules only split punctuation apart, so the tokens are the characters that hold a letter or
# digit (10 us for a caption of AI Challenger's, 8x less than the rules: bench/tokenize_scale.py).
_UNSPACED_ONLY = re.compile(rf"[{_UNSPACED}\s!-/:-@\[-`{{-~]*")
# A Chinese or Japanese character between spaces is settled too: no Treebank rule looks at it (a
# caption mixing them with ours took a second pass over its characters).
_SETTLED_WORD = rf"(?:{_SETTLED_WORD}|{_UNSPACED_TOKEN.pattern})"
_SETTLED = re.compile(rf"{_SETTLED_WORD}(?: {_SETTLED_WORD})*")
# Unicode's Halfwidth and Fullwidth Forms: fullwidth Latin letters, digits and punctuation, and
# halfwidth katakana and Hangul, which Japanese and Korean text mixes with the usual forms.
_WIDTH_FORMS = re.compile("[\uff00-\uffef]+")


def _normalized(text: str) -> str:
    """``text`` with one spelling per character: NFC, so a kana and its combining voicing mark (as
    macOS file systems and some editors write it) is the kana that holds it, and "é" is one code
    point; and the Halfwidth and Fullwidth Forms made the usual ones (their NFKC: "ｶﾞ" is "ガ",
    "Ｔ" "T", "１" "1"). Not NFKC throughout, which would also rewrite what has a meaning of its
    own ("①", "™", and Hangul's compatibility jamo as conjoining ones)."""
    if _WIDTH_FORMS.search(text):
        text = _WIDTH_FORMS.sub(lambda forms: unicodedata.normalize("NFKC", forms[0]), text)
    return unicodedata.normalize("NFC", text)


def join_words(words: Iterable[str]) -> str:
    """A caption's text from its tokens: joined by spaces, but none between two Chinese or
    Japanese characters (`tokenize` splits them again: ``tokenize(join_words(w)) == w``).

    >>> join_words(["a", "dog", "一", "只", "狗"])
    'a dog 一只狗'
    """
    text: list[str] = []
    unspaced_before = False
    for word in words:
        unspaced = _UNSPACED_TOKEN.fullmatch(word) is not None
        # a voicing mark alone stays apart, or it would join the kana before it (`tokenize` keeps
        # none alone: "か.ﾞ" is "か"; a vocabulary of an older version may hold "ﾞ")
        if text and not (unspaced and unspaced_before and word[0] not in _VOICING_MARKS):
            text.append(" ")
        text.append(word)
        unspaced_before = unspaced
    return "".join(text)


def tokenize(text: str) -> list[str]:
    """Split a caption into lowercase word tokens.

    The text is lowercased, each character given one spelling (NFC, and fullwidth "Ｔ１" and
    halfwidth "ｶﾞ" are "t1" and "ガ"), its whitespace made single spaces, and split with nltk's
    `TreebankWordTokenizer` (the Penn Treebank conventions: "don't" -> "do", "n't"; "dog." ->
    "dog", "."; each Chinese or Japanese character a token of its own), then only tokens
    containing at least one letter or digit are kept, which drops punctuation such as "," "."
    "``" "。" and "--". Evaluation (BLEU) tokenises references and generated captions with this
    same function, and a caption's tokens joined by spaces give the same tokens again: whitespace
    is made spaces first (Treebank's rules see only spaces: "dogs'" before a tab stayed one token,
    before a space it is "dogs" and "'"), and the kept tokens are tokenized again, joined by
    spaces, until that changes nothing ("0.," gives "0." at first).

    >>> tokenize("A dog, running on the beach.")
    ['a', 'dog', 'running', 'on', 'the', 'beach']
    """
    text = text.lower()
    if not text.isascii():
        text = _normalized(text)
        if _UNSPACED_ONLY.fullmatch(text):
            return [t for t in _UNSPACED_TOKEN.findall(text) if t.isalnum() or _has_alnum(t)]
        text = _UNSPACED_CHARACTER.sub(r" \1 ", text)
    if "  " in text or not text.isprintable():  # a tab, newline, NBSP...: other whitespace
        text = " ".join(text.split())
    if _SPLIT_WORDS is not None and _PLAIN.fullmatch(text) and not _COMMA_BEFORE.search(text):
        words = text.replace(",", " ").replace(".", " ").split()
        if _SPLIT_WORDS.isdisjoint(words):
            return words
    words = _treebank_words(text)
    # Treebank's rules read context (a period that ends the text, a comma before a character),
    # which the dropped punctuation changes: "0.," gave "0.", and "0." gives "0". The words are
    # joined by spaces (what `join_words` writes tokenizes alike) and tokenized again until that
    # changes nothing.
    for _ in range(_MAX_PASSES):
        joined = " ".join(words)
        if _SETTLED.fullmatch(joined) and _SPLIT_WORDS and _SPLIT_WORDS.isdisjoint(words):
            break  # words no rule splits, whatever is around them: Treebank would keep them
        again = _treebank_words(joined)
        if again == words:
            break
        words = again
    return words


def _treebank_words(text: str) -> list[str]:
    """The Treebank tokens of ``text`` that hold a letter or a digit."""
    return [token for token in _TREEBANK.tokenize(text) if _has_alnum(token)]


def _has_alnum(token: str) -> bool:
    return any(c.isalnum() for c in token)


class Vocabulary:
    """Word <-> id mapping with the specials <pad>=0, <start>=1, <end>=2, <unk>=3.

    Build it from the training captions only (`Vocabulary.build`), store it in a checkpoint with
    `to_list()` (a plain list of strings, loadable with `torch.load(weights_only=True)`) and restore
    it with `Vocabulary.from_list`.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        """`tokens[i]` is the word of id i; the first four must be `SPECIALS` in order."""
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise UserError(
                f"vocabulary must start with {', '.join(SPECIALS)}; the checkpoint's vocabulary is "
                "damaged or from another program, so retrain or use a matching checkpoint"
            )
        if len(set(tokens)) != len(tokens):
            raise UserError("vocabulary lists a word twice; the checkpoint's vocabulary is damaged")
        self._tokens = tokens
        self._ids = {token: index for index, token in enumerate(tokens)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Vocabulary of the words in `captions` (the training captions only).

        Words seen fewer than `min_count` times are left out and so encode to <unk>. Words are
        ordered by count, most frequent first, ties alphabetically, so the ids are deterministic.
        """
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(tokenize(caption))
        return cls.from_counts(counts, min_count)

    @classmethod
    def from_counts(cls, counts: Counter[str], min_count: int = 1) -> Vocabulary:
        """`build`'s vocabulary from the training captions' token counts already made (so a
        caller that tokenizes the captions for its own sake does not tokenize them twice)."""
        if min_count < 1:
            raise UserError(f"min_count must be at least 1, got {min_count}")
        words = sorted(
            (word for word, count in counts.items() if count >= min_count and word not in SPECIALS),
            key=lambda word: (-counts[word], word),
        )
        return cls([*SPECIALS, *words])

    def lacks_words(self, min_count: int) -> str | None:
        """Why a model cannot train on this (built) vocabulary, or None: it has no word at all,
        only the special tokens, so every caption would be empty or <unk>; or more words than
        `MAX_WORDS`."""
        words = len(self._tokens) - len(SPECIALS)
        if words > MAX_WORDS:
            return (
                f"the training captions have {words:,} words seen at least {min_count} time(s) "
                f"(data.min_word_count), more than a captioner takes ({MAX_WORDS:,}: each is a "
                "row of its embedding and output layers); check the annotations' captions, or "
                "raise data.min_word_count"
            )
        if words:
            return None
        return (
            f"no training caption has a word seen at least {min_count} time(s) "
            "(data.min_word_count), so every caption would be empty or <unk>; check the "
            "annotations' captions, or lower data.min_word_count"
        )

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> Vocabulary:
        """Restore a vocabulary saved with `to_list()`."""
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
            raise UserError("vocabulary must be a list of strings; the checkpoint is damaged")
        return cls(tokens)

    def to_list(self) -> list[str]:
        """The words in id order, as a plain list for checkpoints."""
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(tuple(self._tokens))

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def start_id(self) -> int:
        return 1

    @property
    def end_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def token_id(self, token: str) -> int:
        """The id of `token`, or `unk_id` for unknown words."""
        return self._ids.get(token, self.unk_id)

    def token(self, token_id: int) -> str:
        """The word of `token_id`."""
        return self._tokens[token_id]

    def encode(self, caption: str) -> list[int]:
        """Ids of `tokenize(caption)`, wrapped in <start> ... <end>."""
        ids, unk = self._ids, self.unk_id
        return [self.start_id, *[ids.get(token, unk) for token in tokenize(caption)], self.end_id]

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """Words of `ids`, skipping <start> and <pad> and stopping at the first <end>.

        `ids` may be any iterable of ints, including a 1-D tensor.
        """
        words = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == self.end_id:
                break
            if token_id not in (self.start_id, self.pad_id):
                words.append(self._tokens[token_id])
        return words

    def decode(self, ids: Iterable[int]) -> str:
        """The caption of `ids` as one string, its words joined by `join_words`."""
        return join_words(self.decode_tokens(ids))
