"""Small pieces every training script shares: seeding, device choice, autocast, LR schedule, RNG."""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from recurrent.errors import UserError, shown


def set_seed(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and every CUDA device)."""
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu`` / ``cuda`` / ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # torch knows meta, mps, xla, ...
        raise UserError(f"unknown device {shown(name)}; use auto, cpu or cuda (cuda:N for GPU N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {shown(name)} was asked for but CUDA is not available; use auto or cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"device {shown(name)}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            "numbered from 0; use auto or cuda:N with N below that"
        )
    return device


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def rng_state(device: torch.device) -> dict[str, Any]:
    """The process's random-number state, as plain values and tensors (checkpoint-safe): Python's,
    torch's CPU generator and, on a CUDA ``device``, that GPU's generator (the one the process
    draws from; under torchrun every process saves its own)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s ``state``; its GPU generator's state goes to ``device`` if that is a
    CUDA device. (Checkpoints written before 2026-12-05 hold one state per visible GPU: the one of
    ``device``'s index is used, and none if the run now sees fewer GPUs.)"""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or device.type != "cuda":
        return
    if isinstance(saved, list | tuple):
        index = device.index if device.index is not None else torch.cuda.current_device()
        saved = saved[index] if index < len(saved) else None
    if saved is not None:
        torch.cuda.set_rng_state(saved, device)
