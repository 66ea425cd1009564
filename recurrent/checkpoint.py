"""Checkpoints: one dict of plain values and state dicts, written atomically, loaded weights_only.

Every checkpoint holds at least ``format_version``, ``task`` ("char_lm" or "captioner"),
``config`` (a plain dict) and ``vocab`` (a list of strings), plus the task's state dicts, step and
best score. Never a pickled module: `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recurrent.errors import UserError
from recurrent.files import atomic_write

FORMAT_VERSION = 2  # 2: training runs of recurrent.engine (1, their predecessors, still load)
TASK_TRAINERS = {"char_lm": "python -m char_lm.train", "captioner": "python -m captioner.train"}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (`recurrent.files.atomic_write`)."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """Read a checkpoint on the CPU; any problem with the file is a one-line `UserError`."""
    path = Path(path)
    trainer = TASK_TRAINERS.get(task or "", "the project's train command")
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} (pass a .pt file written by {trainer})")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; pass a .pt file such as {path}/best.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch's unpickler raises many types on foreign bytes
        raise UserError(
            f"{path} is not a readable checkpoint (corrupt, truncated or not written by this "
            f"project); pass a .pt file written by {trainer}"
        ) from None
    if not isinstance(payload, dict) or "format_version" not in payload or "task" not in payload:
        raise UserError(
            f"{path} is not a checkpoint of this project; pass a .pt file written by {trainer}"
        )
    if payload["format_version"] > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {payload['format_version']}, newer than this version "
            f"reads ({FORMAT_VERSION}); upgrade the project"
        )
    if task is not None and payload["task"] != task:
        raise UserError(
            f"{path} is a {payload['task']} checkpoint, but this command needs a {task} "
            f"checkpoint (written by {trainer})"
        )
    return payload


def check_same_architecture(
    saved: dict[str, Any], current: dict[str, Any], keys: list[str], path: str | Path
) -> None:
    """On resume, refuse a checkpoint whose architecture fields differ, naming the field."""
    for key in keys:
        section, name = key.split(".")
        old = saved.get(section, {}).get(name)
        new = current.get(section, {}).get(name)
        if old != new:
            raise UserError(
                f"cannot resume from {path}: {key} is {old!r} in the checkpoint but {new!r} in the "
                f"config; drop --resume or use the checkpoint's value"
            )


def export_checkpoint(source: str | Path, target: str | Path, *, half: bool = True) -> Path:
    """Write a serving copy of a training checkpoint: no optimizer, scheduler or RNG state, and
    (with ``half``) floating-point weights stored as float16 to halve the file.

    Loading casts the weights back to the model's float32 parameters (``load_state_dict`` copies
    with a cast), so the copy serves like the original up to float16 rounding. It cannot be resumed.
    """
    payload = load_checkpoint(source)
    keep = {"task", "config", "vocab", "step", "model", "card"}
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
