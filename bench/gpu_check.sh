#!/usr/bin/env bash
# The GPU check of issue 17 (item 7): run it on a machine with a CUDA device (the `device` tool's
# lent GPU), from the repository root, after `make venv`. It runs the CUDA tests and the GPU
# benchmark, and writes bench/results/gpu.json (quote its figures with the GPU's name, in "gpu").
# Nothing in memcim depends on a GPU: without one the tests skip and the benchmark says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv || echo "gpu_check: nvidia-smi not found"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_simulate.py
"$PY" bench/bench_gpu.py
