"""Huge and odd texts for the character models: chunked reading, small-dtype ids, resume checks.

The 1 GB figures (peak memory, time to the first step) come from bench/char_lm_huge_text.py, not
from here: these tests use the same code paths on texts of at most 100 MB, in seconds.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import char_lm.data as data
import char_lm.generate as generate_module
from char_lm.config import CharLMConfig, DataConfig, ModelConfig
from char_lm.data import (
    IGNORE_INDEX,
    StreamBatches,
    build_vocab,
    decode,
    encode,
    encode_file,
    id_dtype,
    load_corpus,
    read_text,
    scan_text,
)
from char_lm.generate import generate
from char_lm.model import CharLM
from char_lm.scoring import evaluate_text
from char_lm.train import train
from recurrent.config import load_config
from recurrent.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "char_lm"
MIXED = (
    "naïve café, Ωμέγα, Привет, 日本語, 👍🏽 \U0001f468\u200d\U0001f469\u200d\U0001f467 𝔘𝔫𝔦 ﬁ\r\n"
)


def corpus_of(path: Path, chunk_size: int = data.CHUNK_BYTES, val_fraction: float = 0.0):
    return load_corpus(DataConfig(path=str(path), val_fraction=val_fraction), chunk_size=chunk_size)


def all_ids(corpus) -> torch.Tensor:
    """The whole text's ids (train_ids is the whole text when val_fraction is 0)."""
    return corpus.train_ids


def peak_rss_rise(action) -> tuple[object, int]:
    """(action(), the peak resident memory it added in bytes), from Linux's VmHWM after a reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pytest.skip("this kernel cannot reset the peak-RSS counter (/proc/self/clear_refs)")

    def field(name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"{name} missing from /proc/self/status")

    before = field("VmRSS")
    result = action()
    return result, field("VmHWM") - before


# --- odd texts -----------------------------------------------------------------------------------


def test_a_file_of_one_repeated_character_trains_and_scores_zero_loss(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a" * 4000, encoding="utf-8")
    corpus = corpus_of(path, chunk_size=1000, val_fraction=0.1)
    assert corpus.vocab == ["a"] and corpus.chars == 4000
    assert corpus.train_ids.dtype == torch.uint8
    assert len(corpus.train_ids) == 3600 and len(corpus.val_ids) == 400
    assert not corpus.train_ids.any() and not corpus.val_ids.any()
    cfg = load_config(
        CharLMConfig,
        CONFIGS / "tiny.yaml",
        [f"data.path={path}", "train.max_steps=2", "train.eval_every=2", "train.eval_batches=1"],
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 2
    # One possible character: every prediction is certain, so the exact loss is 0 nats/char.
    assert summary["final_val_loss"] == pytest.approx(0.0, abs=1e-6)


def test_a_single_line_of_100_mb_loads_into_one_byte_per_character(tmp_path):
    # One line, no newline anywhere: a reader that splits lines would hold it all at once.
    pattern = ("the quick brown fox jumps over the lazy dog, déjà vu " * 20).encode("utf-8")
    writes = -(-100_000_000 // (1000 * len(pattern)))
    repeats = 1000 * writes
    path = tmp_path / "line.txt"
    with path.open("wb") as handle:
        for _ in range(writes):
            handle.write(pattern * 1000)
    assert path.stat().st_size >= 100_000_000

    corpus, rise = peak_rss_rise(lambda: corpus_of(path))
    ids = all_ids(corpus)
    pattern_text = pattern.decode("utf-8")
    assert corpus.vocab == build_vocab(pattern_text)
    assert corpus.chars == len(pattern_text) * repeats
    assert ids.dtype == torch.uint8 and ids.numel() == corpus.chars
    expected = encode(pattern_text, corpus.vocab).numpy().astype(np.uint8)
    assert (ids.numpy().reshape(repeats, -1) == expected).all()
    # Bounded memory: the ids (one byte a character) and a few 1 MiB chunks, never the text as a
    # str (~100 MB) next to int64 ids (~800 MB).
    assert rise < corpus.chars + 64 * 2**20, f"peak RSS rose {rise / 2**20:.0f} MiB"


def test_mixed_scripts_and_emoji_are_whole_code_points_at_every_chunk_split(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(MIXED.encode("utf-8"))
    for chunk_size in range(1, 9):  # every 4-byte character is cut at every place
        corpus = corpus_of(path, chunk_size=chunk_size)
        assert corpus.vocab == build_vocab(MIXED)
        assert decode(all_ids(corpus), corpus.vocab) == MIXED
    assert all(len(ch) == 1 and not 0xD800 <= ord(ch) <= 0xDFFF for ch in corpus.vocab)
    assert "\U0001f44d" in corpus.vocab and "\U0001f3fd" in corpus.vocab  # thumbs up, skin tone
    assert "\r" in corpus.vocab  # CRLF is two characters, kept as written


@settings(deadline=None)
@given(
    text=st.text(min_size=1, max_size=60),
    chunk_size=st.integers(1, 9),
    extra=st.text(max_size=300),
    order=st.randoms(use_true_random=False),
)
@example(text=MIXED, chunk_size=3, extra="", order=random.Random(0))
@example(text="\U0010ffff\x00\ufeff", chunk_size=2, extra="", order=random.Random(0))
def test_chunked_reading_round_trips_any_text(text, chunk_size, extra, order):
    raw = text.encode("utf-8")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.txt"
        path.write_bytes(raw)
        corpus = corpus_of(path, chunk_size=chunk_size)
        ids = all_ids(corpus)
        assert corpus.vocab == build_vocab(text)
        assert corpus.chars == len(text) == ids.numel()
        assert corpus.fingerprint == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert ids.dtype == id_dtype(len(corpus.vocab))
        assert ids.tolist() == encode(text, corpus.vocab).tolist()  # the str-based reference
        assert decode(ids, corpus.vocab) == text
        again = encode_file(path, corpus.vocab, chunk_size=chunk_size)  # scans the file itself
        assert torch.equal(again, ids)
        # A model's vocabulary: any superset in any order (up to ~360 characters: int16 ids).
        vocab = sorted(set(text + extra))
        order.shuffle(vocab)
        theirs = encode_file(path, vocab, chunk_size=chunk_size)
        assert theirs.dtype == id_dtype(len(vocab))
        assert theirs.tolist() == encode(text, vocab).tolist()


@settings(deadline=None)
@given(
    text=st.text(min_size=1, max_size=40),
    bad=st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80", b"\xf0\x9f\x98"]),
    where=st.integers(0, 40),
    chunk_size=st.integers(1, 7),
)
def test_bytes_that_are_not_utf8_are_refused_with_their_offset(text, bad, where, chunk_size):
    # Stray bytes, a cut 2-byte character, an encoded surrogate half (never decoded as a
    # character), a lone continuation byte and a cut emoji: at any place, cut by any chunk size.
    chars = text[: min(where, len(text))]
    head = chars.encode("utf-8")
    raw = head + bad + text[len(chars) :].encode("utf-8")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bad.txt"
        path.write_bytes(raw)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            offset = err.start  # Python's own decoder is the reference
        else:
            return  # the bad bytes happened to complete a character of the text
        with pytest.raises(UserError, match=rf"not UTF-8 text \(bad byte at offset {offset}\)"):
            scan_text(path, chunk_size)
        with pytest.raises(UserError, match=rf"bad byte at offset {offset}\)"):
            encode_file(path, build_vocab(text), chunk_size=chunk_size)


# The first and last code points of each UTF-8 length (1 to 4 bytes), around the surrogates, and
# the lead bytes 0xE0 and 0xF0 whose characters start a length.
BOUNDARIES = "".join(
    chr(c)
    for c in [0x7F, 0x80, 0x7FF, 0x800, 0x900, 0xFFF, 0x1000, 0xD7FF, 0xE000, 0xFFFF]
    + [0x10000, 0x3FFFF, 0x40000, 0x10FFFF]
)


def test_characters_at_every_utf8_length_boundary_are_whole_code_points(tmp_path):
    path = tmp_path / "boundaries.txt"
    path.write_bytes(("a" + BOUNDARIES + "z").encode("utf-8"))
    for chunk_size in range(1, 9):
        corpus = corpus_of(path, chunk_size=chunk_size)
        assert corpus.vocab == build_vocab("a" + BOUNDARIES + "z")
        assert decode(all_ids(corpus), corpus.vocab) == "a" + BOUNDARIES + "z"


@pytest.mark.parametrize(
    "raw",
    [
        b"ab\xc0cd",  # 0xC0 and 0xC1 only ever start overlong forms
        b"a\xc1\xbfz",
        b"a\xe0\x80\x80z",  # an overlong 3-byte form
        b"\xf4\x90\x80\x80",  # past U+10FFFF
        b"\xe4a\x80\x80",  # a lead byte cut short by an ASCII character, continuation bytes after
        b"xy\xe4a\x80\x80",
    ],
)
def test_overlong_and_interrupted_sequences_are_refused_at_every_chunk_size(tmp_path, raw):
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(UnicodeDecodeError) as caught:
        raw.decode("utf-8")
    offset = caught.value.start  # Python's own decoder is the reference
    for chunk_size in range(1, 6):
        with pytest.raises(UserError, match=rf"bad byte at offset {offset}\)"):
            scan_text(path, chunk_size)


def test_unknown_characters_are_all_named_even_in_later_chunks(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abc" * 100 + "Z" + "abc" * 100 + "é😀", encoding="utf-8")
    with pytest.raises(
        UserError, match=r"text has 3 character\(s\).*'Z' \(U\+005A\), 'é' \(U\+00E9\), '😀'"
    ):
        encode_file(path, ["a", "b", "c"], chunk_size=16)
    with pytest.raises(UserError, match="is empty"):
        (tmp_path / "empty.txt").write_bytes(b"")
        encode_file(tmp_path / "empty.txt", ["a"])


@pytest.mark.parametrize(
    ("text", "vocab", "hint"),
    [
        ("ab\r\nab", "ab\n", "its lines end in CR LF (Windows), the training text's in LF"),
        ("\ufeffab", "ab", "it begins with a byte-order mark: save it without one"),
        (
            "Rom\u00e9",
            "Rome\u0301",
            "writes its accented letters in NFD: unicodedata.normalize('NFD'",
        ),
        (
            "Rome\u0301",
            "Rom\u00e9e",
            "writes its accented letters in NFC: unicodedata.normalize('NFC'",
        ),
        ("abZ", "ab", "lacks: 'Z' (U+005A); use only characters from its training text"),
        # Hangul decomposes too, but into no U+0301: no NFC to suggest
        ("e\u0301", "e\ud55c", "lacks: '\u0301' (U+0301); use only characters from its"),
    ],
)
def test_characters_a_model_lacks_come_with_why_when_a_text_was_saved_otherwise(
    tmp_path, text, vocab, hint
):
    """A Windows-saved prompt or text (CR LF, a byte-order mark) or accented letters composed
    otherwise (which print alike) against a model's vocabulary: the line says what differs and
    what to do, with each character's code point; for a file and a string alike."""
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8", newline="")
    for call in (lambda: encode(text, list(vocab)), lambda: encode_file(path, list(vocab))):
        with pytest.raises(UserError) as refused:
            call()
        assert hint in str(refused.value)
        assert str(refused.value).endswith("use only characters from its training text")


def test_cr_lf_against_a_training_text_without_lines_is_not_said_to_be_windows_lines(tmp_path):
    """A CR LF prompt for a model whose training text has no LF either (the ship sentence, one
    line): converting its lines to LF would leave the LF it lacks, so the line says no such thing;
    it names both characters and what to do."""
    path = tmp_path / "t.txt"
    path.write_text("ab\r\nab", encoding="utf-8", newline="")
    for call in (lambda: encode("ab\r\nab", ["a", "b"]), lambda: encode_file(path, ["a", "b"])):
        with pytest.raises(UserError) as refused:
            call()
        said = str(refused.value)
        assert "CR LF" not in said
        assert "'\\n' (U+000A), '\\r' (U+000D); use only characters from its training text" in said


@pytest.mark.parametrize(
    ("head", "said"),
    [
        (b"\x1f\x8b\x08\x00", "it is gzip-compressed: decompress it (gunzip) first"),
        (b"\xff\xfea\x00b\x00", "it is UTF-16 text: re-save it as UTF-8"),
        (b"\xff\xfe\x00\x00a\x00\x00\x00", "it is UTF-32 text: re-save it as UTF-8"),
        (b"PK\x03\x04\xff", "it is a zip archive: extract the text from it first"),
        (b"ab\xff", "is not UTF-8 text (bad byte at offset 2); convert it to UTF-8 first"),
        (b"BZh91AY&SY\xff", "it is bzip2-compressed: decompress it (bunzip2) first"),
        (b"\xfd7zXZ\x00\x00\x04\xff", "it is xz-compressed: decompress it (unxz) first"),
        (b"\xfe\xff\x00a\x00b", "it is UTF-16 text: re-save it as UTF-8"),
        (b"ab\x1f\x8b\xff", "is not UTF-8 text (bad byte at offset 3); convert it to UTF-8 first"),
    ],
)
def test_a_file_that_is_not_utf8_says_what_it_is(tmp_path, head, said):
    """Each kind by its magic bytes at the start (xz's are 6 bytes), and no kind by magic bytes
    after the start."""
    path = tmp_path / "book.txt"
    path.write_bytes(head)
    for call in (lambda: scan_text(path), lambda: read_text(path)):
        with pytest.raises(UserError) as refused:
            call()
        assert said in str(refused.value)


@pytest.mark.parametrize("path", ["~/book.txt", "~nobody/book.txt"])
def test_a_text_path_beginning_with_a_tilde_says_it_is_not_expanded(path):
    with pytest.raises(UserError, match=rf"not found: {path}\ \(~ is not expanded here, as"):
        read_text(path)


# --- small dtypes and streams --------------------------------------------------------------------


@pytest.mark.parametrize(
    "vocab_size, dtype",
    [(1, torch.uint8), (256, torch.uint8), (257, torch.int16), (32768, torch.int16),
     (32769, torch.int32), (0x110000, torch.int32)],
)  # fmt: skip
def test_ids_take_the_smallest_dtype_that_holds_the_vocabulary(vocab_size, dtype):
    assert id_dtype(vocab_size) == dtype
    assert vocab_size - 1 <= (torch.iinfo(dtype).max)


def test_a_vocabulary_over_256_characters_is_int16_and_round_trips(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 3 + "abc"
    path = tmp_path / "cjk.txt"
    path.write_text(text, encoding="utf-8")
    corpus = corpus_of(path, chunk_size=5)
    assert len(corpus.vocab) == 303 and all_ids(corpus).dtype == torch.int16
    assert decode(all_ids(corpus), corpus.vocab) == text
    # A vocabulary that is not sorted (ASCII ids past 255) takes the table-lookup path.
    unsorted = corpus.vocab[3:] + corpus.vocab[:3]
    ids = encode_file(path, unsorted, chunk_size=7)
    assert ids[-3:].tolist() == [300, 301, 302]
    assert decode(ids, unsorted) == text
    # Exactly 256 characters still fit one byte each.
    full = "".join(chr(0x100 + i) for i in range(256))
    path.write_text(full, encoding="utf-8")
    assert encode_file(path, build_vocab(full)).dtype == torch.uint8
    assert encode_file(path, build_vocab(full)).tolist() == list(range(256))


def test_a_text_of_more_distinct_characters_than_a_model_takes_is_refused_before_encoding(
    tmp_path, monkeypatch
):
    """Every Unicode character once (4.4 MB) made the tiny config's model of 2,364 parameters one
    of 27.8 million, and the memory ran out at the first step, the message blaming the batch
    size. More than `data.MAX_VOCAB` distinct characters are refused after the scan, before the
    text is encoded; exactly that many load."""
    path = tmp_path / "every.txt"
    path.write_text("".join(chr(0x10000 + i) for i in range(65_537)), encoding="utf-8")
    encoded = []
    monkeypatch.setattr(data, "encode_file", lambda *args, **kwargs: encoded.append(args))
    with pytest.raises(UserError, match=r"has 65,537 distinct characters, more than a character"):
        corpus_of(path)
    assert encoded == []
    monkeypatch.undo()
    path.write_text("".join(chr(0x10000 + i) for i in range(65_536)), encoding="utf-8")
    assert len(corpus_of(path).vocab) == 65_536


@pytest.mark.parametrize("cover_all", [False, True])
def test_streams_over_small_dtype_ids_match_int64_and_never_copy_the_text(cover_all):
    ids64 = torch.randint(0, 200, (1003,), generator=torch.Generator().manual_seed(0))
    ids8 = ids64.to(torch.uint8)
    small = StreamBatches(ids8, 7, 16, cover_all=cover_all)
    reference = StreamBatches(ids64, 7, 16, cover_all=cover_all)
    assert small.ids.data_ptr() == ids8.data_ptr()  # a view of the caller's ids, not a copy
    assert len(small) == len(reference)
    for i in range(len(small)):
        (inputs, targets), (ref_inputs, ref_targets) = small.window(i), reference.window(i)
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs, ref_inputs) and torch.equal(targets, ref_targets)
    # Streams are contiguous runs of the text; every target is the character after its input.
    flat_inputs, flat_targets = small.inputs.flatten(), small.targets.flatten()
    real = flat_targets != IGNORE_INDEX
    positions = (torch.arange(small.streams)[:, None] * small.stream_length).expand(
        -1, small.stream_length
    ) + torch.arange(small.stream_length)
    positions = positions.flatten()[real]
    assert torch.equal(flat_inputs[real], ids64[positions])
    assert torch.equal(flat_targets[real], ids64[positions + 1])


def test_evaluate_text_on_small_dtype_ids_equals_int64():
    torch.manual_seed(0)
    model = CharLM(ModelConfig(cell="gru", num_layers=1, hidden_size=16, embed_size=8), 40).eval()
    ids64 = torch.randint(0, 40, (301,), generator=torch.Generator().manual_seed(1))
    for streams in (1, 4):
        small = evaluate_text(model, ids64.to(torch.uint8), 32, streams=streams)
        reference = evaluate_text(model, ids64, 32, streams=streams)
        assert small[1] == reference[1] == 300
        assert small[0] == pytest.approx(reference[0], abs=1e-6)


# --- the text behind a run -----------------------------------------------------------------------


def tiny_run(path: Path, steps: int) -> CharLMConfig:
    return load_config(
        CharLMConfig,
        CONFIGS / "tiny.yaml",
        [f"data.path={path}", f"train.max_steps={steps}", "train.eval_every=2",
         "train.eval_batches=1"],
    )  # fmt: skip


def test_resume_refuses_a_training_text_that_changed(tmp_path):
    path = tmp_path / "t.txt"
    text = "the cat sat on the mat. " * 20
    path.write_text(text, encoding="utf-8")
    train(tiny_run(path, 2), tmp_path / "run")
    # The same characters in another order: the vocabulary still matches, the data does not.
    path.write_text(text.replace("cat", "tac"), encoding="utf-8")
    with pytest.raises(UserError, match=r"training text .*t\.txt changed since the run started"):
        train(tiny_run(path, 4), tmp_path / "run", resume=True)
    # The same bytes again (a new mtime, another copy): the resume goes on.
    copy = tmp_path / "copy.txt"
    copy.write_text(text, encoding="utf-8")
    assert train(tiny_run(copy, 4), tmp_path / "run", resume=True)["steps"] == 4


def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("abcabc" * 50, encoding="utf-8")
    real_scan = data.scan_text

    def scan_then_edit(source, chunk_size):
        scan = real_scan(source, chunk_size)
        path.write_text("abcabc" * 49 + "abcab!", encoding="utf-8")
        return scan

    monkeypatch.setattr(data, "scan_text", scan_then_edit)
    with pytest.raises(UserError, match="changed while it was being read"):
        corpus_of(path)


@pytest.mark.parametrize(
    "changed",
    [
        b"abc\xc3\xa9!",  # one character more, in the same chunk
        b"\x80\xc3\xa9",  # a stray continuation byte before a character
    ],
)
def test_a_file_changed_after_its_scan_is_refused_however_it_changed(tmp_path, changed):
    path = tmp_path / "t.txt"
    path.write_bytes("abc\xe9".encode())
    scan = scan_text(path)
    path.write_bytes(changed)
    with pytest.raises(UserError, match="changed while it was being read"):
        encode_file(path, scan.vocab, scan=scan)


def test_the_download_path_gives_a_corpus_of_the_cached_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("CRNN_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "corpus.txt"
    source.write_text("to be or not to be, ça va\n" * 10, encoding="utf-8")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    config = DataConfig(path="", url=source.as_uri(), sha256=digest, val_fraction=0.1)
    corpus = load_corpus(config)
    assert Path(corpus.source).parent == tmp_path / "cache" / "char_lm"
    assert corpus.fingerprint == f"sha256:{digest}"
    whole = torch.cat([corpus.train_ids, corpus.val_ids])
    assert decode(whole, corpus.vocab) == source.read_text(encoding="utf-8")
    builtin = load_corpus(DataConfig(path="builtin:ship", val_fraction=0))
    assert decode(builtin.train_ids, builtin.vocab) == data.BUILTIN_TEXTS["ship"]


# --- prompts -------------------------------------------------------------------------------------


def test_a_prompt_longer_than_one_window_continues_as_if_fed_at_once(monkeypatch, record_calls):
    vocab = build_vocab(MIXED)
    torch.manual_seed(0)
    model = CharLM(ModelConfig(cell="lstm", num_layers=2, hidden_size=16, embed_size=8), len(vocab))
    prompt = MIXED * 60  # about 3,000 characters: three windows of PROMPT_WINDOW
    assert len(prompt) > 2 * generate_module.PROMPT_WINDOW
    windowed = "".join(generate(model, vocab, prompt, 40, greedy=True))
    monkeypatch.setattr(generate_module, "PROMPT_WINDOW", 10**9)
    at_once = "".join(generate(model, vocab, prompt, 40, greedy=True))
    assert windowed == at_once
    # an irregular prompt in windows of 7: the state must cross every window (the last window
    # alone, 6 characters, continues otherwise)
    draws = record_calls(generate_module, "sample_next")

    def first_logits(prompt: str) -> torch.Tensor:
        draws.clear()
        list(generate(model, vocab, prompt, 1, greedy=True))
        return draws[0].args[0]

    prompt = "".join(random.Random(0).choice(vocab) for _ in range(300))
    at_once = first_logits(prompt)
    monkeypatch.setattr(generate_module, "PROMPT_WINDOW", 7)
    torch.testing.assert_close(first_logits(prompt), at_once, atol=1e-5, rtol=0)
    assert not torch.allclose(first_logits(prompt[-6:]), at_once, atol=1e-3)


def _refusal(text: str, vocab: str) -> str:
    with pytest.raises(UserError) as refused:
        encode(text, list(vocab))
    return str(refused.value)


@pytest.mark.parametrize(
    ("text", "vocab"),
    [
        ("Z", "ab\u00e9"),  # kills: any missing character taken for a combining mark
        ("e\u0301", "abe"),  # kills: any known character taken for a composed letter
        (
            "\u212a",
            "Kab",
        ),  # KELVIN SIGN: NFD is 'K' alone, no accent (kills: len(parts) > 1 dropped)
    ],
)
def test_no_composition_hint_where_no_letter_is_composed_otherwise(text, vocab):
    """The NFC/NFD hint only where the missing characters are the vocabulary's letters composed
    otherwise: not for a plain letter beside accented ones, a combining mark where the vocabulary
    has no composed letter, or a compatibility character."""
    message = _refusal(text, vocab)
    assert "accented letters" not in message, message
    assert message.endswith("; use only characters from its training text")


def test_more_than_twenty_missing_characters_are_cut_with_an_ellipsis():
    vocab = "ab"
    assert " ..." not in _refusal("cdefghijklmnopqrstuv", vocab)  # 20: all shown
    message = _refusal("cdefghijklmnopqrstuvw", vocab)  # 21: the first 20 and ' ...'
    assert "21 character(s)" in message and "'v' (U+0076) ...;" in message
    assert "'w'" not in message
