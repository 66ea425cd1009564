"""GPU runs of both trainers (the captioner's top-down decoder with scheduled sampling too),
resume, mixed precision, torch.compile, caption and sample.

Marked ``cuda`` and skipped where CUDA is absent (CI has no GPU); run them on a GPU machine with
``pytest -m cuda``. ``CRNN_CUDA_TESTS_DEVICE=cpu pytest -m cuda tests/test_cuda.py`` rehearses the
command-line runs on the CPU (fp16 and the CUDA-only checks skipped), so that a mistake in a test
does not cost a lent GPU's minutes: the first rehearsal found that `sample` needs a prompt here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DEVICE = os.environ.get("CRNN_CUDA_TESTS_DEVICE", "cuda")  # "cpu": a rehearsal without a GPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.cuda] + ([needs_cuda] if DEVICE == "cuda" else [])

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "fp16"])
def test_char_lm_trains_resumes_and_samples_on_the_gpu(tmp_path, precision):
    if precision == "fp16" and DEVICE != "cuda":
        pytest.skip("fp16 needs a CUDA device")
    args = ["-m", "char_lm.train", "--config", str(ROOT / "configs/char_lm/tiny.yaml"), "--quiet"]
    common = ["--set", f"train.device={DEVICE}", f"train.precision={precision}"]
    common += ["train.eval_every=2"]
    cli(*args, *common, "train.max_steps=2", "--out-dir", "run", cwd=tmp_path)
    cli(*args, *common, "train.max_steps=4", "--out-dir", "run", "--resume", cwd=tmp_path)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["step"] == 4
    assert all(t.dtype == torch.float32 for t in saved["model"].values() if t.is_floating_point())
    out = cli(
        "-m", "char_lm.sample", "--checkpoint", "run/last.pt", "--device", DEVICE, "--seed", "1",
        "--prompt", "the ", "--length", "20", cwd=tmp_path,
    )  # fmt: skip
    assert len(out.stdout) >= 20


def test_captioner_trains_resumes_compiles_and_captions_on_the_gpu(tmp_path):
    cli("-m", "captioner.scenes", "--out", "scenes", "--num-images", "24", "--size", "48",
        cwd=tmp_path)  # fmt: skip
    args = [
        "-m", "captioner.train", "--config", str(ROOT / "configs/captioner/tiny.yaml"), "--quiet",
        "--set", "data.annotations=scenes/dataset_scenes.json", f"train.device={DEVICE}",
        "train.eval_every=2",
    ]  # fmt: skip
    cli(*args, "train.max_steps=2", "--out-dir", "run", cwd=tmp_path)
    cli(*args, "train.max_steps=4", "--out-dir", "run", "--resume", cwd=tmp_path)
    cli(*args, "train.max_steps=2", "train.compile=true", "--out-dir", "compiled", cwd=tmp_path)
    saved = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)
    assert not any(name.startswith("_orig_mod") for name in saved["model"])  # no compile prefix
    cli(*args, "train.max_steps=2", "model.top_down=true", "train.scheduled_sampling=0.5",
        "--out-dir", "top_down", cwd=tmp_path)  # fmt: skip
    image = next((tmp_path / "scenes" / "images").glob("*.png"))
    for run in ("run", "top_down"):
        out = cli("-m", "captioner.caption", "--checkpoint", f"{run}/last.pt", "--device", DEVICE,
                  str(image), cwd=tmp_path)  # fmt: skip
        assert str(image) in out.stdout


@needs_cuda
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bf16_autocast_never_runs_the_fused_cell_in_float16(cell):
    """CUDA autocast casts cuDNN RNNs to float16 even when asked for bf16 (no gradient scaler is
    on then): the core runs its cell in float32 there, and its gradients match float32's."""
    from recurrent.core import RecurrentCore

    torch.manual_seed(0)
    core = RecurrentCore(cell, 16, 32, 2, 0.0, "fused").cuda()
    x = torch.randn(4, 7, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs, state = core(x)
    assert outputs.dtype == torch.float32 and state.dtype == torch.float32
    outputs.sum().backward()
    low = [p.grad.clone() for p in core.parameters()]
    core.zero_grad()
    reference, _ = core(x)
    reference.sum().backward()
    torch.testing.assert_close(outputs, reference, atol=1e-3, rtol=1e-3)  # TF32 at most
    for grad, parameter in zip(low, core.parameters(), strict=True):
        torch.testing.assert_close(grad, parameter.grad, atol=1e-2, rtol=1e-2)


@needs_cuda
def test_sampling_with_a_cpu_generator_from_a_gpu_model_matches_the_cpu():
    """The app seeds a CPU generator whatever the model's device: the draw runs on it, so the
    same seed gives the same tokens on the GPU as on the CPU (it raised on the GPU)."""
    from recurrent.sampling import sample_next

    logits = torch.randn(8, 50)
    on_cpu = sample_next(logits, top_k=10, generator=torch.Generator().manual_seed(3))
    on_gpu = sample_next(logits.cuda(), top_k=10, generator=torch.Generator().manual_seed(3))
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu)
