"""Text in, character ids out, cut into streams for truncated backpropagation through time.

- `load_text` reads a UTF-8 file, a built-in toy text (``builtin:hihello``, ``builtin:ship``), or
  (when ``data.path`` is empty) downloads ``data.url`` once into a cache, checked by sha256.
- The vocabulary is the sorted unique characters of the text, kept in checkpoints as a list of str.
- `split_ids` is a contiguous split: the first 90% trains, the last 10% validates (like nanoGPT's
  shakespeare_char).
- `StreamBatches` cuts a text into ``batch_size`` contiguous parallel streams (char-rnn, and the
  ``batchify`` of PyTorch's word_language_model example) and walks each stream in consecutive
  windows of ``block_size`` characters, so the hidden state at the end of one window is the right
  state to start the next window of the same stream.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from torch import Tensor

from char_lm.config import DataConfig
from recurrent.errors import UserError

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
BUILTIN_PREFIX = "builtin:"
IGNORE_INDEX = -1  # target of padding positions (only in evaluation streams)


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
    name = Path(urllib.parse.urlparse(url).path).name or "download.txt"
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


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, or ``builtin:NAME``; an empty, unreadable or non-UTF-8 file is a UserError."""
    spec = str(path)
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_TEXTS:
            known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_TEXTS)
            raise UserError(f"unknown built-in text {spec!r}; use one of {known} or a file path")
        return BUILTIN_TEXTS[name]
    path = Path(path)
    if not path.exists():
        raise UserError(f"text file not found: {path} (pass a UTF-8 text file)")
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a UTF-8 text file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8 first"
        ) from None
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror})") from None
    if not text:
        raise UserError(f"{path} is empty; pass a text file with some characters in it")
    return text


def load_text(config: DataConfig) -> str:
    """The text a config names: ``data.path`` (file or built-in), else a download of ``data.url``."""
    if config.path:
        return read_text(config.path)
    if not config.url:
        raise UserError(
            "no text to train on: set data.path to a file (or builtin:ship) or data.url"
        )
    return read_text(download(config.url, config.sha256))


# --- vocabulary ----------------------------------------------------------------------------------


def build_vocab(text: str) -> list[str]:
    """Sorted unique characters of ``text``; id i stands for vocab[i]."""
    return sorted(set(text))


def encode(text: str, vocab: list[str], what: str = "text") -> Tensor:
    """Characters -> ids (int64); characters outside ``vocab`` are a UserError naming them."""
    index = {ch: i for i, ch in enumerate(vocab)}
    missing = sorted({ch for ch in text if ch not in index})
    if missing:
        shown = ", ".join(repr(ch) for ch in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise UserError(
            f"the {what} has {len(missing)} character(s) the model's vocabulary lacks: {shown}; "
            f"use only characters from its training text"
        )
    return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def decode(ids: Tensor | list[int], vocab: list[str]) -> str:
    return "".join(vocab[i] for i in (ids.tolist() if isinstance(ids, Tensor) else ids))


def split_ids(ids: Tensor, val_fraction: float) -> tuple[Tensor, Tensor]:
    """Contiguous split: the first ``1 - val_fraction`` trains, the rest validates.

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


# --- truncated-BPTT streams ----------------------------------------------------------------------


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
    """

    def __init__(
        self,
        ids: Tensor,
        batch_size: int,
        block_size: int,
        *,
        cover_all: bool = False,
        what: str = "training text",
    ) -> None:
        if batch_size < 1 or block_size < 1:
            raise UserError("data.batch_size and data.block_size must be at least 1")
        ids = ids.long()
        predicted = len(ids) - 1  # characters that have a character before them
        self.block_size = block_size
        if cover_all:
            if predicted < 1:
                raise UserError(f"the {what} has {len(ids)} character(s); it needs at least 2")
            streams = min(batch_size, predicted)
            length = -(-predicted // streams)  # ceil
            pad = streams * length - predicted
            inputs = torch.cat([ids[:-1], ids.new_zeros(pad)])
            targets = torch.cat([ids[1:], ids.new_full((pad,), IGNORE_INDEX)])
        else:
            streams, length = batch_size, predicted // batch_size
            if length < block_size:
                raise UserError(
                    f"the {what} has {len(ids)} characters, too few for data.batch_size={batch_size} "
                    f"streams of one data.block_size={block_size} window (needs at least "
                    f"{batch_size * block_size + 1}); use a longer text or lower data.block_size or "
                    f"data.batch_size"
                )
            inputs = ids[: streams * length]
            targets = ids[1 : streams * length + 1]
        self.inputs = inputs.view(streams, length)  # (B, L)
        self.targets = targets.view(streams, length)  # (B, L)

    @property
    def streams(self) -> int:
        return self.inputs.size(0)

    @property
    def stream_length(self) -> int:
        return self.inputs.size(1)

    def __len__(self) -> int:
        """Windows per pass over the streams."""
        return -(-self.stream_length // self.block_size)

    def window(self, i: int) -> tuple[Tensor, Tensor]:
        """Window i: inputs and targets, each (B, T) with T = block_size (or less for the last)."""
        start = i * self.block_size
        end = start + self.block_size
        return self.inputs[:, start:end], self.targets[:, start:end]

    def to(self, device: torch.device | str) -> StreamBatches:
        self.inputs = self.inputs.to(device)
        self.targets = self.targets.to(device)
        return self
