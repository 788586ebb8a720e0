"""Benchmark on a CUDA device (issue 17, item 7): what ``bench/gpu_check.sh`` runs on a lent GPU.

Measured in the same run on the same GPU, each against its peer:

* simulated MVM (``generic`` preset, every non-ideality on, and with read noise off), W 784x500 and
  1024x1024, a batch of 10,000 inputs, 1 and 100 chips: time of ``chip.mvm`` over a plain
  ``x @ W`` on the GPU (CUDA events, after a warm-up);
* the reference MLP (``mnist-mlp-256-128``) over 10,000 inputs, 10 chips, on the GPU: time per chip
  over one digital forward pass on the GPU (recorded as an error entry if a layer cannot move).

Without a CUDA device it writes nothing and says so (exit 0): nothing in memcim depends on a GPU.

    .venv/bin/python bench/bench_gpu.py          # writes bench/results/gpu.json
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "gpu.json"
BATCH = 10_000
REPEATS = 5


def _timed(fn, repeats: int = REPEATS) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs on the GPU (synchronised), seconds."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def mvm_rows() -> list[dict]:
    from memcim.config import preset
    from memcim.mapping.crossbar import map_matrix
    from memcim.simulate import program

    rows = []
    for variant in ("generic", "no_read_noise"):
        hw = preset("generic")
        if variant == "no_read_noise":
            hw = hw.without("thermal", "shot")
        for n, m in ((784, 500), (1024, 1024)):
            g = torch.Generator().manual_seed(0)
            W = torch.randn(n, m, generator=g)
            x = torch.randn(BATCH, n, generator=g)
            mapped = map_matrix(W.double(), hw, calib_inputs=x[:512])
            Wc, xc = W.cuda(), x.cuda()
            mm = _timed(lambda: xc @ Wc)
            for chips in (1, 100):
                chip = program(mapped, seed=0, trials=min(chips, 10), device="cuda")
                reads = max(1, chips // chip.trials)
                t = _timed(lambda: [chip.mvm(xc) for _ in range(reads)], repeats=3)
                rows.append({"variant": variant, "shape": [n, m], "batch": BATCH, "chips": chips,
                             "matmul_s": mm * chips, "memcim_s": t, "ratio": t / (mm * chips)})
                print(f"{variant:14s} {n}x{m} chips {chips:3d}: ratio {rows[-1]['ratio']:.2f}x", flush=True)
    return rows


def network_row() -> dict:
    """The reference MLP's chip loop (``memcim.nn.evaluate.chip_outputs``) with model and inputs on the GPU."""
    try:
        from memcim.config import preset
        from memcim.data.datasets import load_dataset
        from memcim.nn.evaluate import chip_outputs
        from memcim.nn.models import get_reference_model

        model = get_reference_model("mnist-mlp-256-128").eval()
        ds = load_dataset("mnist", "test", limit=BATCH)
        x = torch.as_tensor(ds.x).float().reshape(len(ds.x), -1)
        xc, mc = x.cuda(), model.cuda()
        with torch.no_grad():
            dig = _timed(lambda: mc(xc))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = sum(1 for _ in chip_outputs(mc, xc, preset("generic"), chips=10, batch_size=BATCH, progress=False))
        torch.cuda.synchronize()
        per_chip = (time.perf_counter() - t0) / n
        return {"model": "mnist-mlp-256-128", "chips": n, "images": len(x), "digital_s": dig,
                "per_chip_s": per_chip, "ratio": per_chip / dig}
    except Exception as e:  # recorded, not hidden: the row says why the network could not run on the GPU
        return {"model": "mnist-mlp-256-128", "error": f"{type(e).__name__}: {e}"}


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (run bench/gpu_check.sh on a GPU machine)")
        return 0
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "memcim on a CUDA device vs torch on the same device",
              "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "host": platform.node(), "commit": commit,
              "mvm": mvm_rows(), "network": network_row()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
