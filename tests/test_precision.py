"""train.precision: the choice of precision, bf16 training on the CPU, checkpoints across precisions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from char_lm.config import CharLMConfig
from char_lm.generate import load_char_lm
from char_lm.train import train
from recurrent import precision
from recurrent.config import load_config
from recurrent.core import RecurrentCore
from recurrent.errors import UserError
from recurrent.precision import Precision

TINY = Path(__file__).resolve().parents[1] / "configs" / "char_lm" / "tiny.yaml"
CPU = torch.device("cpu")


def test_resolution_rules(monkeypatch):
    assert precision.resolve("fp32", CPU) == "fp32"
    assert precision.resolve("bf16", CPU) == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        precision.resolve("fp16", CPU)
    monkeypatch.setattr(precision, "AUTO_BF16_ON_CPU", True)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", CPU) == "fp32"  # no native bf16: fp32
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("auto", CPU) == "bf16"
    # A checkpoint trained in fp16 on a GPU is served on a CPU in what the CPU can do.
    assert Precision.for_inference("fp16", CPU).name in ("fp32", "bf16")
    scaler = Precision.choose("bf16", CPU).grad_scaler()
    assert not scaler.is_enabled()  # only fp16 scales gradients


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fused_core_runs_under_cpu_bf16_autocast_like_fp32(cell):
    """oneDNN refuses bf16 fused RNNs on the CPU: the core runs the cell in float32 there."""
    torch.manual_seed(0)
    core = RecurrentCore(cell, 8, 16, num_layers=2)
    x = torch.randn(3, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, state = core(x)
    reference, reference_state = core(x)
    torch.testing.assert_close(outputs, reference)
    torch.testing.assert_close(state, reference_state)


def test_bf16_training_on_the_cpu_and_its_checkpoint_in_fp32(tmp_path):
    overrides = ["train.max_steps=4", "train.eval_every=2", "train.precision=bf16"]
    summary = train(load_config(CharLMConfig, TINY, overrides), tmp_path / "bf16", quiet=True)
    assert summary["precision"] == "bf16" and summary["steps"] == 4
    model, _, cfg = load_char_lm(tmp_path / "bf16" / "last.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    # The same run resumes in fp32 (checkpoints are interchangeable across precisions).
    more = [*overrides[:2], "train.max_steps=6", "train.precision=fp32"]
    resumed = train(
        load_config(CharLMConfig, TINY, more), tmp_path / "bf16", resume=True, quiet=True
    )
    assert resumed["steps"] == 6 and resumed["precision"] == "fp32"
