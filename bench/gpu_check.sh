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
# item 2 on the GPU: 100 chips of the reference CNN over the 10,000 test images, one at a time and batched
# (bit-identical to the loop for "exact" reads; "stacked" reads one trials=K chip per pass). Not yet run
# on a GPU: a failure here leaves gpu.json above intact.
"$PY" bench/bench_chips_batched.py --device cuda --model mnist-cnn-small --chips 100 --images 10000 \
    --variants 1:exact,10:exact,10:stacked --repeats 1 --out bench/results/chips_batched_cnn_gpu.json \
    || echo "gpu_check: the batched-chips benchmark failed on this GPU (see above)"
