"""Text in, character ids out, cut into streams for truncated backpropagation through time.

- `load_corpus` is what training calls: the text a config names (a UTF-8 file, a built-in toy text
  ``builtin:hihello`` / ``builtin:ship``, or, when ``data.path`` is empty, a download of
  ``data.url`` kept in a cache and checked by sha256), as character ids split for training and
  validation, with its vocabulary and a fingerprint of the file. It never holds the text as one
  Python ``str``: the file is read twice in chunks of `CHUNK_BYTES`, once to find the vocabulary,
  count the characters and hash the bytes, once to encode it into a preallocated tensor in the
  smallest dtype that holds the vocabulary (`id_dtype`: one byte per character for up to 256
  distinct characters). A 1 GB text takes about 1 GB of ids (docs/benchmarks.md).
- Both passes work on the bytes with numpy (`_characters`), a few times faster than decoding:
  a character cut by the end of a chunk is carried into the next one, the first pass checks the
  bytes are UTF-8 (naming the first bad byte, found by Python's own decoder), and one character is
  one Unicode code point (as in Python's ``str``), never a surrogate half or a byte.
- The vocabulary is the sorted unique characters of the text, kept in checkpoints as a list of str.
- `split_ids` is a contiguous split: the first 90% trains, the last 10% validates (like nanoGPT's
  shakespeare_char).
- `StreamBatches` cuts a text into ``batch_size`` contiguous parallel streams (char-rnn, and the
  ``batchify`` of PyTorch's word_language_model example) and walks each stream in consecutive
  windows of ``block_size`` characters, so the hidden state at the end of one window is the right
  state to start the next window of the same stream. It keeps the ids in their own dtype and hands
  out each window as int64.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from char_lm.config import BUILTIN_PREFIX, DataConfig
from recurrent.errors import UserError, not_utf8, shown

BUILTIN_TEXTS = {
    # The first toy task of the lecture material: learn to continue "h" into "hihello".
    "hihello": "hihello",
    # The lecture's "long sequence" toy, learned in windows of 10 characters.
    "ship": (
        "if you want to build a ship, don't drum up people together to collect wood and don't "
        "assign them tasks and work, but rather teach them to long for the endless immensity of "
        "the sea."
    ),
}
IGNORE_INDEX = -1  # target of padding positions (only in evaluation streams)
CHUNK_BYTES = 1 << 20  # bytes read at a time when a text file is scanned or encoded (1 MiB)
CONTINUATION = bytes(range(0x80, 0xC0))  # the bytes that continue a UTF-8 character


# --- reading and downloading ---------------------------------------------------------------------


def cache_dir() -> Path:
    """Where downloads are kept: ``$CRNN_CACHE``, else ``~/.cache/crnn``."""
    return Path(os.environ.get("CRNN_CACHE") or Path.home() / ".cache" / "crnn")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, sha256: str = "", cache: Path | None = None) -> Path:
    """Fetch ``url`` into the cache once and return the local file; a cached copy is reused.

    With ``sha256`` set, the file must have that digest (a cached copy that does not is fetched
    again; a download that does not is deleted and reported). Any failure is a `UserError` that
    says how to pass a local copy instead.
    """
    cache = cache_dir() if cache is None else cache
    try:
        name = Path(urllib.parse.urlparse(url).path).name or "download.txt"
    except ValueError as err:  # e.g. "http://[::1": an unclosed IPv6 address
        raise UserError(
            f"data.url {shown(url)} is not a valid URL ({err}); fix it, or pass a local "
            "copy of the text with --set data.path=FILE"
        ) from None
    target = cache / "char_lm" / (f"{sha256[:16]}-{name}" if sha256 else name)
    if target.is_file() and (not sha256 or _sha256(target) == sha256):
        return target
    instead = "download it yourself and pass it with --set data.path=FILE"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as err:
        raise UserError(
            f"cannot write the download cache {target.parent} ({err.strerror}); set "
            f"$CRNN_CACHE to a writable folder, or {instead}"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                handle.write(block)
        if sha256 and (actual := _sha256(tmp)) != sha256:
            raise UserError(
                f"the file downloaded from {url} has sha256 {actual}, not the expected {sha256} "
                f"(data.sha256); {instead}"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"could not download {url} ({reason}); offline? {instead}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _builtin(spec: str) -> str:
    name = spec[len(BUILTIN_PREFIX) :]
    if name not in BUILTIN_TEXTS:
        known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_TEXTS)
        raise UserError(f"unknown built-in text {shown(spec)}; use one of {known} or a file path")
    return BUILTIN_TEXTS[name]


def _check_file(path: Path) -> None:
    if not path.exists():
        tilde = " (~ is not expanded here, as in --set KEY=~/...: give the whole path)"
        hint = tilde if str(path).startswith("~") else " (pass a UTF-8 text file)"
        raise UserError(f"text file not found: {path}{hint}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a UTF-8 text file")


def _empty(source: str | Path) -> UserError:
    return UserError(f"{source} is empty; pass a text file with some characters in it")


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, or ``builtin:NAME``; an empty, unreadable or non-UTF-8 file is a UserError.

    The whole text as one ``str``: for prompts and small texts. Training and evaluation read files
    in chunks instead (`load_corpus`, `encode_file`).
    """
    spec = str(path)
    if spec.startswith(BUILTIN_PREFIX):
        return _builtin(spec)
    path = Path(path)
    _check_file(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror})") from None
    if not text:
        raise _empty(path)
    return text


def text_source(config: DataConfig) -> str:
    """The text a config names: ``data.path`` (file or built-in), else ``data.url`` downloaded once
    into the cache (the local file's path)."""
    if config.path:
        return config.path
    if not config.url:
        raise UserError(
            "no text to train on: set data.path to a file (or builtin:ship) or data.url"
        )
    return str(download(config.url, config.sha256))


def load_text(config: DataConfig) -> str:
    """The text a config names, as one ``str`` (see `text_source`; `load_corpus` for training)."""
    return read_text(text_source(config))


def _byte_chunks(source: str | Path, chunk_size: int) -> Iterator[bytes]:
    """The UTF-8 bytes of a file or ``builtin:NAME``, ``chunk_size`` bytes at a time."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    spec = str(source)
    if spec.startswith(BUILTIN_PREFIX):
        data = _builtin(spec).encode("utf-8")
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]
        return
    path = Path(source)
    _check_file(path)
    if not path.is_file():  # a pipe (/dev/stdin, <(...)): training and evaluation read it twice
        raise UserError(
            f"{path} is not a regular file (a pipe?); the text is read twice, so save it to a "
            "file first and pass that"
        )
    try:
        with path.open("rb") as handle:
            while block := handle.read(chunk_size):
                yield block
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror})") from None


def _sequence_length(lead: np.ndarray | int) -> np.ndarray | int:
    """Bytes of the UTF-8 sequence a lead byte (>= 0xC0) starts: 2, 3 or 4."""
    return 2 + (lead >= 0xE0) + (lead >= 0xF0)


class _Characters(NamedTuple):
    """The whole characters in one chunk of a file, as bytes and byte-level arrays."""

    raw: bytes  # their bytes
    ascii: bool  # every byte is an ASCII character
    leads: np.ndarray  # (m,) int64: where the characters of 2-4 bytes start in `raw`
    keys: np.ndarray  # (m,) uint32: those characters' bytes, big-endian, zero-padded


def _characters(
    source: str | Path, chunk_size: int, digest: hashlib._Hash | None = None
) -> Iterator[_Characters]:
    """The file's characters chunk by chunk, found in its bytes with numpy, not decoded: a few
    times faster than Python's decoder. Only `scan_text` checks the bytes are UTF-8; on other
    bytes the characters found are meaningless (but never out of range).

    A character cut by the end of a chunk is carried into the next one; one cut by the end of the
    file comes last, alone (its key is not UTF-8). ``digest`` is updated with every byte read.
    """
    no_leads, no_keys = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint32)
    carry = b""
    for block in _byte_chunks(source, chunk_size):
        if digest is not None:
            digest.update(block)
        if not carry and block.isascii():  # the common case: every byte is a character
            yield _Characters(block, True, no_leads, no_keys)
            continue
        data = carry + block if carry else block
        arr = np.frombuffer(data, dtype=np.uint8)
        leads = np.flatnonzero(arr >= 0xC0)
        lengths = _sequence_length(arr[leads])
        cut = len(arr)
        if len(leads) and leads[-1] + lengths[-1] > cut:  # the last character goes on next chunk
            cut = int(leads[-1])
            leads, lengths = leads[:-1], lengths[:-1]
        carry = data[cut:]
        keys = arr[leads].astype(np.uint32) << 24
        for k in (1, 2, 3):  # a bad lead byte may point past the end: clipped, it stays bad
            following = arr[np.minimum(leads + k, max(cut - 1, 0))].astype(np.uint32)
            keys |= np.where(lengths > k, following, 0).astype(np.uint32) << (24 - 8 * k)
        yield _Characters(data[:cut], False, leads, keys)
    if carry:
        yield _Characters(carry, False, np.zeros(1, dtype=np.int64), _key(carry[:4]))


def _key(raw: bytes) -> np.ndarray:
    """The key (as in `_Characters`) of one character's bytes, as a (1,) array."""
    return np.array([int.from_bytes(raw.ljust(4, b"\0"), "big")], dtype=np.uint32)


def _key_text(key: int) -> str:
    """The character a `_Characters` key stands for (UnicodeDecodeError if it is not UTF-8)."""
    raw = key.to_bytes(4, "big")
    return raw[: _sequence_length(raw[0])].decode("utf-8")


# --- vocabulary ----------------------------------------------------------------------------------


def build_vocab(text: str) -> list[str]:
    """Sorted unique characters of ``text``; id i stands for vocab[i]."""
    return sorted(set(text))


def id_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype that holds ids 0 .. vocab_size - 1 (uint8, int16 or int32)."""
    if vocab_size <= 1 << 8:
        return torch.uint8
    if vocab_size <= 1 << 15:
        return torch.int16
    return torch.int32


@dataclass(frozen=True)
class TextScan:
    """One streaming pass over a text: what encoding it needs first."""

    vocab: list[str]  # sorted unique characters, as `build_vocab` would give
    chars: int  # characters (code points)
    fingerprint: str  # "sha256:<hex digest of the file's bytes>"


def scan_text(source: str | Path, chunk_size: int = CHUNK_BYTES) -> TextScan:
    """Vocabulary, character count and fingerprint of a UTF-8 file (or ``builtin:NAME``), read in
    chunks; an empty file, or one that is not UTF-8, is a `UserError` (naming the first bad byte).

    The ASCII characters are the byte values below 0x80 that occur (`bytes.translate` deletes the
    ones already met, so a chunk costs one copy), the others the distinct multi-byte sequences
    (`_characters`), each decoded once. The bytes are UTF-8 exactly when every sequence decodes
    to one character and every continuation byte belongs to one: stray, overlong, surrogate-half
    and cut sequences all fail one of the two.
    """
    digest = hashlib.sha256()
    byte_values = bytearray()  # the distinct byte values met so far
    keys: set[int] = set()  # the distinct multi-byte characters met so far
    size = chars = spanned = 0  # bytes; characters; continuation bytes inside characters
    for found in _characters(source, chunk_size, digest):
        size += len(found.raw)
        chars += len(found.raw)
        if not found.ascii:  # minus the continuation bytes (0x80-0xBF)
            chars -= int(np.count_nonzero(np.frombuffer(found.raw, dtype=np.int8) < -64))
        new = found.raw.translate(None, byte_values)
        while new:
            byte_values.append(new[0])
            new = new.translate(None, new[:1])
        if len(found.keys):
            spanned += int((_sequence_length(found.keys >> 24) - 1).sum())
            keys.update(np.unique(found.keys).tolist())
    vocab = [chr(value) for value in byte_values if value < 0x80]
    valid = size - chars == spanned
    for key in keys:
        try:
            vocab.append(_key_text(key))
        except UnicodeDecodeError:
            valid = False
    if not valid:
        raise not_utf8(source, chunk_size=chunk_size)
    if not chars:
        raise _empty(source)
    vocab.sort()
    return TextScan(vocab, chars, f"sha256:{digest.hexdigest()}")


def _missing_error(what: str, missing: list[str], vocab: list[str]) -> UserError:
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[:20])
    shown += " ..." if len(missing) > 20 else ""
    known = set(vocab)
    hints = []
    if "\r" in missing and "\n" in known:  # with no LF of its own, converting would not do
        hints.append("its lines end in CR LF (Windows), the training text's in LF: convert them")
    if "\ufeff" in missing:
        hints.append("it begins with a byte-order mark: save it without one")
    # the same letters composed otherwise: e + U+0301 against U+00E9 (the two print alike)
    for form, fits in (("NFD", _decomposes_into), ("NFC", _composes_with)):
        if any(fits(ch, known) for ch in missing):
            hints.append(
                f"the training text writes its accented letters in {form}: "
                f"unicodedata.normalize('{form}', text) gives them"
            )
    hints.append("use only characters from its training text")
    return UserError(
        f"the {what} has {len(missing)} character(s) the model's vocabulary lacks: {shown}; "
        + "; ".join(hints)
    )


def _decomposes_into(character: str, known: set[str]) -> bool:
    """Whether ``character`` (é) is, decomposed, characters ``known`` has (e, U+0301)."""
    parts = unicodedata.normalize("NFD", character)
    return len(parts) > 1 and set(parts) <= known


def _composes_with(character: str, known: set[str]) -> bool:
    """Whether ``character`` is a combining mark (U+0301) that letters ``known`` has hold when
    decomposed (é)."""
    return unicodedata.combining(character) > 0 and any(
        character in unicodedata.normalize("NFD", ch)[1:] for ch in known
    )


def encode(text: str, vocab: list[str], what: str = "text") -> Tensor:
    """Characters -> ids (int64); characters outside ``vocab`` are a UserError naming them.

    For prompts and short texts held as a ``str``; files go through `encode_file`.
    """
    index = {ch: i for i, ch in enumerate(vocab)}
    missing = sorted({ch for ch in text if ch not in index})
    if missing:
        raise _missing_error(what, missing, vocab)
    return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def _changed(source: str | Path) -> UserError:
    return UserError(f"{source} changed while it was being read; read it again when it is done")


def encode_file(
    source: str | Path,
    vocab: list[str],
    *,
    what: str = "text",
    scan: TextScan | None = None,
    chunk_size: int = CHUNK_BYTES,
) -> Tensor:
    """A UTF-8 file (or ``builtin:NAME``) -> ids in the dtype `id_dtype` picks for ``vocab``.

    ``scan`` is the file's `scan_text` (made here when not given): it checks the bytes are UTF-8,
    counts the characters and finds them all, so characters outside ``vocab`` are a `UserError`
    naming them (and ``what``) before anything is encoded. Then the ids tensor is allocated once
    and filled chunk by chunk: ASCII characters through a 256-byte `bytes.translate` table (which
    also deletes continuation bytes), the others by their byte sequences; the ids plus a few
    chunks of memory, never the text as a ``str`` or int64. A file whose bytes differ from
    the scan's (sha256) is a `UserError` too.
    """
    if scan is None:
        scan = scan_text(source, chunk_size)
    index = {ch: i for i, ch in enumerate(vocab)}
    missing = sorted(set(scan.vocab) - set(index))
    if missing:
        raise _missing_error(what, missing, vocab)
    dtype = id_dtype(len(vocab))
    ascii_ids = np.zeros(256, dtype=np.int64)  # byte -> id, for ASCII characters
    multibyte = {}  # key (as in `_Characters`) -> id
    for ch in scan.vocab:
        if ord(ch) < 0x80:
            ascii_ids[ord(ch)] = index[ch]
        else:
            multibyte[int(_key(ch.encode("utf-8"))[0])] = index[ch]
    known_keys = np.array(sorted(multibyte) or [0], dtype=np.uint32)  # [0]: never a key
    key_ids = np.array([multibyte.get(int(key), 0) for key in known_keys], dtype=np.int64)
    # A sorted vocabulary puts ASCII first (ids < 128): then one byte holds each ASCII id, and
    # `bytes.translate` maps a chunk's bytes to ids at the speed of a copy.
    byte_table = bytes(ascii_ids.astype(np.uint8)) if ascii_ids.max() < 256 else None

    digest = hashlib.sha256()
    ids = torch.empty(scan.chars, dtype=dtype)
    out = ids.numpy()
    position = 0
    for found in _characters(source, chunk_size, digest):
        # One byte per character (continuation bytes deleted): an ASCII character's id, or a lead
        # byte whose character is filled in below.
        if byte_table is not None:
            firsts = np.frombuffer(found.raw.translate(byte_table, CONTINUATION), dtype=np.uint8)
        else:
            firsts = ascii_ids[np.frombuffer(found.raw.translate(None, CONTINUATION), np.uint8)]
        count = len(firsts)
        if position + count > scan.chars:
            raise _changed(source)
        chunk = out[position : position + count]
        chunk[:] = firsts
        if len(found.keys):
            # In UTF-8 every continuation byte before a lead belongs to an earlier character.
            lengths = _sequence_length(found.keys >> 24)
            at = found.leads - np.concatenate([[0], np.cumsum(lengths - 1)[:-1]])  # (m,)
            at = at.clip(0, count - 1)  # only a changed file could need it
            where = np.searchsorted(known_keys, found.keys).clip(max=len(known_keys) - 1)
            chunk[at] = key_ids[where]
        position += count
    if position != scan.chars or f"sha256:{digest.hexdigest()}" != scan.fingerprint:
        raise _changed(source)
    return ids


def decode(ids: Tensor | list[int], vocab: list[str]) -> str:
    return "".join(vocab[i] for i in (ids.tolist() if isinstance(ids, Tensor) else ids))


def split_ids(ids: Tensor, val_fraction: float) -> tuple[Tensor, Tensor]:
    """Contiguous split: the first ``1 - val_fraction`` trains, the rest validates (views of ids).

    With ``val_fraction == 0`` (the toy texts) the validation text is the training text.
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return ids, ids
    n_train = int(len(ids) * (1 - val_fraction))
    train, val = ids[:n_train], ids[n_train:]
    if len(val) < 2:
        raise UserError(
            f"the validation split has {len(val)} character(s), too few to predict one; raise "
            f"data.val_fraction, use a longer text, or set data.val_fraction=0"
        )
    return train, val


# --- the text training reads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """A training text as ids: what `load_corpus` returns and the trainer uses.

    ``train_ids`` and ``val_ids`` are views of one tensor of ``chars`` ids in `id_dtype`'s dtype;
    ``fingerprint`` ("sha256:<hex>" of the file's bytes) changes whenever the file's content does,
    so a resume can refuse a checkpoint trained on another version of the text.
    """

    vocab: list[str]
    train_ids: Tensor
    val_ids: Tensor
    chars: int
    source: str  # the file read: data.path, builtin:NAME, or the downloaded copy of data.url
    fingerprint: str


# Each character of the vocabulary is a row of the model's input and output layers, and a column of
# its logits at every position of a batch: a 4.4 MB file of every Unicode character (1,112,031)
# made the tiny config's model of 2,364 parameters one of 27.8 million, and the shakespeare config's
# logits alone 9 GB a step. Texts in a language have tens to a few thousand distinct characters, a
# Chinese one under ten thousand; all CJK ideographs are about 98,000.
MAX_VOCAB = 1 << 16


def load_corpus(config: DataConfig, *, chunk_size: int = CHUNK_BYTES) -> Corpus:
    """The text ``config`` names (`text_source`), encoded and split by ``data.val_fraction``.

    Two passes over the file in chunks (`scan_text`, then `encode_file`); peak memory is the ids
    plus a few chunks. A file that changes between the two passes is a `UserError`.
    """
    source = text_source(config)
    scan = scan_text(source, chunk_size)
    if len(scan.vocab) > MAX_VOCAB:
        raise UserError(
            f"{source} has {len(scan.vocab):,} distinct characters, more than a character model "
            f"takes ({MAX_VOCAB:,}: each is a row of its input and output layers; a text in one "
            "language has at most a few thousand); check that it is the text you meant"
        )
    ids = encode_file(source, scan.vocab, scan=scan, chunk_size=chunk_size)
    train_ids, val_ids = split_ids(ids, config.val_fraction)
    return Corpus(
        vocab=scan.vocab,
        train_ids=train_ids,
        val_ids=val_ids,
        chars=scan.chars,
        source=source,
        fingerprint=scan.fingerprint,
    )


# --- truncated-BPTT streams ----------------------------------------------------------------------


def _too_short(
    chars: int, batch_size: int, block_size: int, what: str, longer: str, processes: int = 1
) -> UserError:
    """The line for a training text that cannot fill one window of each stream: ``longer`` (the
    caller's way to a longer text), and the settings that fit, where any do (one character fits
    none: each stream needs a character before its first target). Under torchrun the streams
    are shared by ``processes``: a batch size it suggests is a multiple of them."""
    have = f"the {what} has {chars:,} character{'' if chars == 1 else 's'}"
    fits = chars - 1  # the targets the text holds: batch_size x block_size must not exceed it
    if fits < 1:
        return UserError(f"{have}, and training needs at least 2; {longer}")

    def shared(streams: int) -> int:  # the most streams up to these that the processes share
        return streams // processes * processes

    if fits // batch_size >= 1 and batch_size % processes == 0:
        fit = f"data.block_size={fits // batch_size}"
    elif shared(fits // block_size) >= 1:
        fit = f"data.batch_size={shared(fits // block_size)}"
    elif shared(fits) >= 1:
        fit = f"data.batch_size={shared(fits)} data.block_size=1"
    else:
        return UserError(
            f"{have}, too few for {processes} processes: each trains on streams of one window "
            f"at least (needs at least {processes + 1:,}); {longer}, or run fewer processes"
        )
    return UserError(
        f"{have}, too few for data.batch_size={batch_size} streams of one "
        f"data.block_size={block_size} window (needs at least {batch_size * block_size + 1:,}); "
        f"{longer}, or lower data.batch_size x data.block_size to at most {fits:,} (e.g. --set "
        f"{fit})"
    )


class StreamBatches:
    """A text as ``batch_size`` contiguous streams, walked in windows of ``block_size`` characters.

    Stream b holds characters ``b*L .. b*L + L`` (L = stream length): ``inputs[b, t]`` is character
    ``b*L + t`` and ``targets[b, t]`` the character after it. Window i covers columns
    ``i*block_size`` up to ``(i+1)*block_size`` (the last window of an epoch may be shorter), so
    window i+1 of a stream starts right where window i ended: carry the hidden state across them,
    detached, and reset it when the walk wraps around to window 0.

    With ``cover_all=False`` (training) the < batch_size characters that do not fill the streams
    are dropped, and each stream must hold at least one full window. With ``cover_all=True``
    (evaluation) every character but the first is a target exactly once: the last stream is padded
    with `IGNORE_INDEX` targets, and there are fewer streams if the text is short.

    ``ids`` may have any integer dtype (a `Corpus` holds uint8 / int16 / int32) and is never copied:
    each window is gathered from it and converted to int64 on its own, (B, T) at a time.
    ``processes`` (torchrun's, which share the streams) only shapes the settings that a text too
    short suggests.
    """

    def __init__(
        self,
        ids: Tensor,
        batch_size: int,
        block_size: int,
        *,
        cover_all: bool = False,
        what: str = "training text",
        longer: str = "use a longer text",
        processes: int = 1,
    ) -> None:
        if batch_size < 1 or block_size < 1:
            raise UserError("data.batch_size and data.block_size must be at least 1")
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex:
            raise TypeError(f"ids must be a 1-D tensor of integers, got {ids.dtype} {ids.shape}")
        predicted = len(ids) - 1  # characters that have a character before them
        if cover_all:
            if predicted < 1:
                raise UserError(f"the {what} has {len(ids)} character(s); it needs at least 2")
            streams = min(batch_size, predicted)
            length = -(-predicted // streams)  # ceil; the last stream is padded
        else:
            streams, length = batch_size, predicted // batch_size
            if length < block_size:
                raise _too_short(len(ids), batch_size, block_size, what, longer, processes)
        self.ids = ids
        self.block_size = block_size
        self.predicted = predicted if cover_all else streams * length  # inputs 0 .. predicted-1
        self._length = length
        self._starts = torch.arange(streams, device=ids.device) * length  # (B,) first inputs

    @property
    def streams(self) -> int:
        return self._starts.numel()

    @property
    def stream_length(self) -> int:
        return self._length

    def __len__(self) -> int:
        """Windows per pass over the streams."""
        return -(-self.stream_length // self.block_size)

    def window(self, i: int) -> tuple[Tensor, Tensor]:
        """Window i: inputs and targets, each (B, T) int64 with T = block_size (or less for the
        last); padding (evaluation only) has input 0 and target `IGNORE_INDEX`."""
        start = i * self.block_size
        end = min(start + self.block_size, self._length)
        columns = torch.arange(start, end, device=self._starts.device)
        positions = self._starts[:, None] + columns[None, :]  # (B, T) text index of each input
        real = positions < self.predicted
        inputs = self.ids[positions.clamp(max=self.predicted - 1)].long()
        targets = self.ids[(positions + 1).clamp(max=self.predicted)].long()
        # always masked (asking whether any position is padding would wait for a GPU each step)
        inputs = inputs.masked_fill(~real, 0)
        targets = targets.masked_fill(~real, IGNORE_INDEX)
        return inputs, targets

    @property
    def inputs(self) -> Tensor:
        """All inputs as one (B, L) int64 tensor: a copy, for looking at small texts."""
        return torch.cat([self.window(i)[0] for i in range(len(self))], dim=1)

    @property
    def targets(self) -> Tensor:
        """All targets as one (B, L) int64 tensor: a copy, for looking at small texts."""
        return torch.cat([self.window(i)[1] for i in range(len(self))], dim=1)

    def select_streams(self, rows: slice) -> StreamBatches:
        """Keep only streams ``rows`` (a torchrun process's share); the text is shared, not copied."""
        self._starts = self._starts[rows]
        return self

    def to(self, device: torch.device | str) -> StreamBatches:
        self.ids = self.ids.to(device)
        self._starts = self._starts.to(device)
        return self
