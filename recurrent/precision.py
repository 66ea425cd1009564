"""Numeric precision of training and inference: ``train.precision: auto | fp32 | bf16 | fp16``.

- ``fp32``: plain float32.
- ``bf16``: matrix products under ``torch.autocast`` in bfloat16 (CUDA, or a CPU with native
  bf16 such as avx512_bf16 / AMX); weights, optimizer state and the loss stay float32. On the CPU
  the fused recurrent cell runs oneDNN's bf16 kernel on bf16 copies of its weights
  (`recurrent.core.RecurrentCore`), since CPU autocast leaves torch.nn's RNN modules alone.
- ``fp16``: autocast in float16 with a gradient scaler (CUDA only); weights and optimizer state stay
  float32, so checkpoints are the same whatever the precision and load in any of them.
- ``auto``: bf16 on CUDA devices that support it and on CPUs with native bf16
  (`cpu_has_native_bf16`: avx512_bf16 or AMX, where a bf16 training step was measured 1.5-1.9x as
  fast as fp32's and bf16 trained better at equal time; see docs/benchmarks.md), else fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from recurrent.errors import UserError, shown

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
AUTO_BF16_ON_CPU = True  # measured in bench/precision.py; see docs/benchmarks.md


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (Linux /proc/cpuinfo flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve(setting: str, device: torch.device) -> str:
    """``auto`` / ``fp32`` / ``bf16`` / ``fp16`` -> the precision this device will use."""
    if setting not in (*DTYPES, "auto"):
        raise UserError(f"unknown precision {shown(setting)}; use auto, fp32, bf16 or fp16")
    if setting == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
        return "bf16" if AUTO_BF16_ON_CPU and cpu_has_native_bf16() else "fp32"
    if setting == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if (
        setting == "bf16"
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise UserError("this GPU does not support bf16; use fp16 or fp32")
    return setting


def recorded_precision(payload: Mapping[str, Any]) -> str | None:
    """The precision a checkpoint's weights were trained in where the checkpoint says so: what
    its run resolved ``train.precision`` to (its card's ``precision``, recorded since 2026-12-07),
    else its ``train.precision`` where that names one; None for ``auto`` or none at all (what
    ``auto`` chose was not recorded). A checkpoint is user input: a value of another kind is not
    a record."""
    card = payload.get("card")
    recorded = card.get("precision") if isinstance(card, Mapping) else None
    if isinstance(recorded, str) and recorded in DTYPES:
        return recorded
    config = payload.get("config")
    train = config.get("train") if isinstance(config, Mapping) else None
    setting = train.get("precision") if isinstance(train, Mapping) else None
    return setting if isinstance(setting, str) and setting in DTYPES else None


def trained_in(payload: Mapping[str, Any]) -> str:
    """The precision to serve a checkpoint in (`Precision.for_inference`): `recorded_precision`,
    else fp32, which ``auto`` was on every CPU until 2026-12-05 and which every device runs."""
    return recorded_precision(payload) or "fp32"


@dataclass
class Precision:
    """A resolved precision on a device: its autocast context and its gradient scaler."""

    name: str
    device: torch.device
    scaler_state: dict[str, Any] | None = None

    @classmethod
    def choose(cls, setting: str, device: torch.device) -> Precision:
        return cls(resolve(setting, device), device)

    @classmethod
    def for_inference(cls, setting: str, device: torch.device) -> Precision:
        """A checkpoint's ``train.precision`` on the device it now runs on: the same precision
        where the device runs it natively, else what ``auto`` picks there (fp16 trained on a GPU
        or bf16 trained on a bf16 CPU, served on a CPU without native bf16: fp32)."""
        try:
            chosen = cls.choose(setting, device)
        except UserError:
            return cls.choose("auto", device)
        if chosen.name == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            return cls.choose("auto", device)
        return chosen

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (a pass-through otherwise)."""
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")
        if self.scaler_state is not None and scaler.is_enabled():
            scaler.load_state_dict(self.scaler_state)
        return scaler
