"""Checkpoints: one dict of plain values and state dicts, written atomically, loaded weights_only.

Every checkpoint holds at least ``format_version``, ``task`` ("char_lm" or "captioner"),
``config`` (a plain dict) and ``vocab`` (a list of strings), plus the task's state dicts, step and
best score. Never a pickled module: `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from recurrent.config import MAX_REPEATED_VALUES, value_counts
from recurrent.errors import UserError, binary_size, out_of_memory, shown
from recurrent.files import atomic_write

FORMAT_VERSION = 2  # 2: training runs of recurrent.engine (1, their predecessors, still load)
TASK_TRAINERS = {"char_lm": "python -m char_lm.train", "captioner": "python -m captioner.train"}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (`recurrent.files.atomic_write`)."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(
    path: str | Path, task: str | None = None, *, mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint on the CPU; any problem with the file is a one-line `UserError`.

    Refused, each with its own reason: a missing file or a folder; a truncated file (a full disk,
    an interrupted copy); bytes changed since it was written (every zip member's CRC-32 is checked,
    which torch.load does not do: a flipped byte in a tensor would otherwise load as a silently
    different weight); compressed members (torch.save stores them: a zip bomb's few MB would
    inflate to GBs), refused from the zip's directory; a zip that lacks a member; a pickle that
    would build anything but tensors and plain values (`torch.load(weights_only=True)` refuses it
    without running it); a file of another program; a checkpoint of the other task (with
    `task`); a newer `format_version`; a payload whose config, vocabulary or model state is not a
    dict / list of str / dict of tensors; and weights that are NaN or infinite (no run saves
    them: its guards stop it first). Whether the tensors' shapes fit the config is the loading
    model's check (`load_state_dict`, or `check_state_dict` without loading). With ``mmap`` the
    tensors are mapped from the file rather than copied into memory, for a reader that only looks
    at them (the app's listing of 19 files of 530 MB: half the peak memory and 13% less time).
    """
    path = Path(path)
    trainer = TASK_TRAINERS.get(task or "", "the project's train command")
    written_by = f"pass a .pt file written by {trainer}"
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} ({written_by})")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; pass a .pt file such as {path}/best.pt")
    _check_archive(path, written_by)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - torch's reader raises many types on foreign bytes
        if out_of_memory(err) is not None:  # the machine's, not the file's
            raise
        # (torch 2.4's weights-only reader raises its reader's errors as UnpicklingError too)
        missing = re.search(r"failed locating file ([^:]+): file not found", str(err))
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # weights_only refused to import it
        if found and isinstance(err, pickle.UnpicklingError) and not missing:
            raise UserError(
                f"{path} holds objects a checkpoint never contains ({found.group(1)}): code or "
                f"classes that loading would run, so it was refused unread; {written_by}"
            ) from None
        problem = (
            f": it lacks its part '{missing.group(1)}', as in an incomplete copy or a rebuilt zip"
            if missing
            else " (corrupt, truncated or not written by this project)"
        )
        raise UserError(f"{path} is not a readable checkpoint{problem}; {written_by}") from None
    if not isinstance(payload, dict) or "format_version" not in payload or "task" not in payload:
        raise UserError(f"{path} is not a checkpoint of this project; {written_by}")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path} has a damaged format_version ({shown(version)}); {written_by}")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {shown(version)}, newer than this version reads "
            f"({FORMAT_VERSION}); upgrade the project"
        )
    if payload["task"] not in TASK_TRAINERS:
        raise UserError(
            f"{path} is a checkpoint for an unknown task {shown(payload['task'])} (this project "
            f"has {', '.join(TASK_TRAINERS)}); {written_by}"
        )
    if task is not None and payload["task"] != task:
        raise UserError(
            f"{path} is a {payload['task']} checkpoint, but this command needs a {task} "
            f"checkpoint (written by {trainer})"
        )
    _check_payload(payload, path, written_by)
    return payload


def _check_archive(path: Path, written_by: str) -> None:
    """Refuse a checkpoint whose zip is cut short or whose members fail their CRC-32.

    torch.save writes a zip whose every member carries the CRC-32 of its bytes, but torch.load
    never checks them. Reading the file once more makes `load_checkpoint` 1.6-3.2x as slow as a
    bare torch.load (8-400 MB; `bench/checkpoint_integrity.py`, docs/benchmarks.md).
    """
    with path.open("rb") as handle:
        signature = handle.read(4)
    if signature != b"PK\x03\x04":
        return  # not a zip: torch.load says what it is
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not a readable checkpoint (truncated: its zip directory is missing, as "
            f"after a full disk or an interrupted copy); {written_by}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            refuse_compressed(archive, path, written_by)
            damaged = archive.testzip()  # the first member whose bytes fail their CRC-32
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile raises many types on damaged archives
        detail = " ".join(str(err).split()) or type(err).__name__
        raise UserError(
            f"{path} is not a readable checkpoint (a damaged zip: {detail}); {written_by}"
        ) from None
    if damaged is not None:
        raise UserError(
            f"{path} is damaged: its part '{damaged}' fails its checksum (bytes changed since it "
            f"was written, by a bad disk or copy or by hand); {written_by}"
        )


def refuse_compressed(archive: zipfile.ZipFile, path: Path, advice: str) -> None:
    """Refuse a torch file with compressed zip members unread, saying ``advice`` after why:
    torch.save stores every member as it is, and a file rebuilt with compression may be a zip
    bomb (6 MB that torch.load inflated to 2 GB of memory before a single check; tens of MB fill
    any machine's). The app's mapped reading could not read such a file, while the commands
    loaded it."""
    members = archive.infolist()
    packed = [info for info in members if info.compress_type != zipfile.ZIP_STORED]
    if packed:
        inflated = sum(info.file_size for info in members)
        raise UserError(
            f"{path} has compressed parts ({len(packed)} of {len(members)}, "
            f"{binary_size(inflated)} once inflated from {binary_size(path.stat().st_size)}), "
            "which torch.save never writes: it was rebuilt by another tool, or is a zip bomb, so "
            f"it was refused unread; {advice}"
        )


# A pickle writes an object once and then refers to it: ten references to a list of ten
# references ... are 10^9 values in a few hundred bytes, and a million references to one string of
# a megabyte are 10^12 characters in 3 MB, which reading the checkpoint expands (its config checked
# item by item: the machine's memory ran out; each word of its vocabulary checked: 24 s for one
# such 10 MB file, against 2 s). torch.save shares little (the same key string across records):
# refused where what it holds, counted as read, is more than this many times what it writes out.
MAX_SHARING = 16


def _check_payload(payload: dict[str, Any], path: Path, written_by: str) -> None:
    """The keys every checkpoint has, of the right kinds (a tampered file may hold anything)."""
    expanded, written = value_counts(payload)
    if expanded > MAX_SHARING * written + MAX_REPEATED_VALUES:
        read = "endless" if expanded == math.inf else f"{expanded:,.0f}"
        raise UserError(
            f"{path} refers to the same data over and over ({written:,} values written out, "
            f"{read} once read), as no checkpoint written by training does; {written_by}"
        )
    problems = {
        "config": isinstance(payload.get("config"), dict),
        "vocab": isinstance(payload.get("vocab"), list)
        and all(isinstance(token, str) and is_utf8(token) for token in payload["vocab"]),
        "model": isinstance(payload.get("model"), dict)
        and all(
            isinstance(name, str) and isinstance(value, torch.Tensor)
            for name, value in payload["model"].items()
        ),
    }
    kinds = {"config": "a dict", "vocab": "a list of valid strings", "model": "a dict of tensors"}
    for key, fine in problems.items():
        if not fine:
            state = "lacks" if key not in payload else "has a damaged"
            raise UserError(
                f"{path} {state} '{key}' (it must be {kinds[key]}); the file is damaged or was "
                f"edited, so {written_by}"
            )
    weights = payload["model"].items()
    diverged = next((k for k, v in weights if v.is_floating_point() and not v.isfinite().all()), "")
    if diverged:
        raise UserError(
            f"{path} holds non-finite weights (NaN or inf in '{diverged}'), as a run that diverged "
            f"would; use an earlier checkpoint of that run, or {written_by}"
        )


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: a str may hold lone surrogates (a pickled one, a
    JSON ``"\\ud800"`` escape, a file name that is not UTF-8), which no file, terminal or browser
    takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name: str) -> str:
    """A file name (or any text holding one) as text any file, terminal or browser takes: bytes
    of it that are not UTF-8 (lone surrogates in the str, `is_utf8`) shown as U+FFFD."""
    try:
        return os.fsencode(name).decode("utf-8", errors="replace")
    except UnicodeEncodeError:  # a lone surrogate no file name holds (an escaped one in JSON)
        return name.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")


def first_difference(first: list[str], second: list[str]) -> int | None:
    """The first index at which two vocabularies differ, an entry one of them lacks counting as a
    difference (so the shorter one's length where it is the other's beginning); None if equal."""
    if first == second:
        return None
    shorter = min(len(first), len(second))
    return next((i for i in range(shorter) if first[i] != second[i]), shorter)


def check_state_dict(
    expected: Mapping[str, torch.Tensor], saved: Mapping[str, Any], source: str | Path
) -> None:
    """Raise a one-line `UserError` unless `saved` has exactly the tensors of `expected` (a
    model's ``state_dict()``, which may live on the meta device), each of the same shape."""
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    if missing or unexpected:
        which = f"lacks '{missing[0]}'" if missing else f"has an unexpected '{unexpected[0]}'"
        raise UserError(
            f"{source}'s weights do not fit its config: it {which} "
            f"({len(missing)} missing, {len(unexpected)} unexpected); the file is damaged or was "
            "edited, so retrain"
        )
    for name, tensor in expected.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(tensor.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise UserError(
                f"{source}'s weights do not fit its config: '{name}' is {shape}, its config needs "
                f"{tuple(tensor.shape)}; the file is damaged or was edited, so retrain"
            )


def check_same_architecture(
    saved: dict[str, Any],
    current: dict[str, Any],
    keys: list[str],
    path: str | Path,
    *,
    action: str = "resume from",
    remedy: str = "drop --resume or use the checkpoint's value",
) -> None:
    """Refuse a checkpoint (to resume from, or to start from) whose architecture fields differ
    from the config's, naming the field."""
    for key in keys:
        section, name = key.split(".")
        old = saved.get(section, {}).get(name)
        new = current.get(section, {}).get(name)
        if old != new:
            raise UserError(
                f"cannot {action} {path}: {key} is {shown(old)} in the checkpoint but "
                f"{shown(new)} in the config; {remedy}"
            )


def export_checkpoint(source: str | Path, target: str | Path, *, half: bool = True) -> Path:
    """Write a serving copy of a training checkpoint: no optimizer, scheduler or RNG state, and
    (with ``half``) floating-point weights stored as float16 to halve the file.

    Loading casts the weights back to the model's float32 parameters (``load_state_dict`` copies
    with a cast), so the copy serves like the original up to float16 rounding. It cannot be resumed.
    """
    payload = load_checkpoint(source)
    keep = {"task", "config", "vocab", "split_rule", "trained_names", "step", "model", "card"}
    exported = {key: value for key, value in payload.items() if key in keep}
    for key in ("best_val_loss", "best_scores", "best_step", "history"):
        if key in payload:
            exported[key] = payload[key]
    if half:
        exported["model"] = {
            name: tensor.half() if tensor.is_floating_point() else tensor
            for name, tensor in payload["model"].items()
        }
    exported["exported_from"] = str(source)
    save_checkpoint(exported, target)
    return Path(target)
