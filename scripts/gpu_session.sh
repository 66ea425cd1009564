#!/usr/bin/env bash
# The GPU checks and figures of the scale-and-speed work, in one bounded run on a lent GPU machine
# (the device tool; docs/benchmarks.md, "GPU", says how to start it):
#   1. the `cuda` tests (tests/test_cuda.py: both trainers, resume, bf16, fp16, torch.compile,
#      caption and sample on the GPU), at most 200 s, 4 at a time where pytest-xdist is there;
#   2. bench/gpu.py (captioner images/s and peak memory with ResNet-50/101, char LM chars/s, the data
#      loader against training, JPEG decoding on the GPU), at most 300 s.
# Logs and gpu.json go to $OUT (the device tool's folder that comes back), else ./gpu_out.
# GPU_BENCH_ARGS are added to bench/gpu.py's (tests/test_gpu_bench.py runs this script on a CPU
# with "--device cpu --quick"); WHEELS names the wheel folder (default .whl).
#
# That machine has torch, torchvision, Pillow, PyYAML, tqdm, pytest and hypothesis but not nltk
# and no package registry: carry nltk's wheel in .whl/ (see docs/benchmarks.md). The project is
# not installed there, so the repository root goes on PYTHONPATH (the tests run the CLIs with
# `python -m` from temporary folders).
set -u
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
wheels=${WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$wheels"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import nltk; print('nltk', nltk.__version__)" 2>&1 | tee "$out/nltk.txt"  # the captioner needs it
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" 2>&1 | tee -a "$out/gpu.txt"
parallel=()
# pytest-xdist: 4 CLI runs at a time on the GPU machine (without CUDA every test is skipped, and
# starting 4 workers to skip them took 13 s of the CPU test's 25)
python3 -c "import torch, xdist; assert torch.cuda.is_available()" 2>/dev/null && parallel=(-n 4)
timeout -k 10 200 python3 -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider "${parallel[@]}" 2>&1 |
    tee "$out/pytest_cuda.log"
tests=${PIPESTATUS[0]}
# shellcheck disable=SC2086 # GPU_BENCH_ARGS holds several arguments
timeout -k 10 300 python3 bench/gpu.py --json "$out/gpu.json" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$out/bench_gpu.log"
bench=${PIPESTATUS[0]}
echo "pytest -m cuda exit $tests; bench/gpu.py exit $bench" | tee -a "$out/gpu.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
