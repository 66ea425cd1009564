"""The GPU session's script, run small on the CPU, so that it works the day a GPU is lent.

A lent GPU machine gives a session minutes, not hours: `scripts/gpu_session.sh` (the `cuda` tests,
then `bench/gpu.py`) must run there the first time. Here it runs with ``--device cpu --quick``
(ResNet-18 at 64 px, a few JPEGs and steps): every section must produce its figures, and the
`cuda` tests must be collected (and skipped, without CUDA) from the script's own command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_session_script_runs_every_section(tmp_path):
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "GPU_BENCH_ARGS": "--device cpu --quick",
        "WHEELS": str(tmp_path / "no_wheels"),
        # the script calls python3, as on the GPU machine: here it is this interpreter
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "scripts/gpu_session.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, log
    assert "pytest -m cuda exit 0; bench/gpu.py exit 0" in result.stdout, log
    assert "skipped" in (tmp_path / "pytest_cuda.log").read_text()  # collected, no CUDA here
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["failed"] == [] and set(report["tf32"]) == {
        "cudnn.allow_tf32",
        "float32_matmul_precision",
    }
    rows = report["rows"]
    sections = {row["section"] for row in rows}
    assert sections == {
        "captioner training",
        "char LM training",
        "data loader alone",
        "captioner.train.train on the JPEGs",
        "JPEG decoding",
    }, log
    for row in rows:
        rates = [value for key, value in row.items() if key.endswith("_per_s")]
        assert len(rates) == 1 and rates[0] > 0, row
    captioner = [row for row in rows if row["section"] == "captioner training"]
    assert {row["precision"] for row in captioner} == {"fp32", "bf16"}
    top_down = [row["model"].endswith("top-down attention") for row in captioner]
    assert top_down == [False, False, True]  # ResNet-101's top-down decoder, in the last precision
    assert {row["precision"] for row in rows if row["section"] == "JPEG decoding"} == {
        "Pillow (load_image)",
        "decode_jpeg, CPU",
    }


def test_the_gpu_bench_starts_without_nltk():
    """The lent machine has no nltk unless its wheel travels along: the captioner's sections then
    fail one by one, but the script starts and the char LM's runs (it died at import)."""
    code = "import sys; sys.modules['nltk'] = None; import bench.gpu; print('imported')"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]
