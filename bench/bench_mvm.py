"""Benchmark: simulated-MVM throughput against a plain torch matmul, measured in the same run.

Shapes W 784x500 and 1024x1024, a batch of 10,000 inputs, the ``generic`` preset (every
array-level non-ideality on: 64 levels, programming noise, stuck devices, thermal and shot read
noise, 8-bit DAC and calibrated 8-bit ADC, 128x128 tiles), with 1 and with 100 Monte Carlo trials.
Each case runs in its own subprocess so its peak memory (max RSS) is its own.

    .venv/bin/python bench/bench_mvm.py            # writes bench/results/mvm.json

Reported ratio = simulated time / matmul time for the same work (100 trials = 100 matmuls).
A second variant, ``no_read_noise``, switches thermal and shot noise off (1 trial) to show what
the per-read Gaussian draws cost. ``--only VARIANT`` reruns one variant and merges it into the JSON.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPES = [(784, 500), (1024, 1024)]
BATCH = 10_000
REPEATS = 3


VARIANTS = {"generic": (1, 100), "no_read_noise": (1,)}


def _hw(variant: str):
    from memcim.config import preset

    hw = preset("generic")
    return hw if variant == "generic" else hw.without("thermal", "shot")


def _case(kind: str, n: int, m: int, trials: int, variant: str = "generic") -> dict:
    import torch

    from memcim.mapping.crossbar import map_matrix
    from memcim.simulate import program

    torch.manual_seed(0)
    W = torch.randn(n, m, dtype=torch.float32)
    x = torch.randn(BATCH, n, dtype=torch.float32)
    if kind == "matmul":
        x @ W
        t0 = time.perf_counter()
        for _ in range(REPEATS):
            y = x @ W
        dt = (time.perf_counter() - t0) / REPEATS
        out = {"seconds": dt * trials, "seconds_per_trial": dt}
    else:
        hw = _hw(variant)
        t0 = time.perf_counter()
        mapped = map_matrix(W.double(), hw, calib_inputs=x[:512])
        t_map = time.perf_counter() - t0
        chunk = min(trials, 10)
        chip = program(mapped, seed=0, trials=chunk)
        chip.mvm(x[:100])  # warm-up
        t_read = t_prog = 0.0
        reps = REPEATS if trials == 1 else 1
        for _ in range(reps):
            done = 0
            while done < trials:
                t0 = time.perf_counter()
                chip = program(mapped, seed=done, trials=min(chunk, trials - done))
                t1 = time.perf_counter()
                y = chip.mvm(x)
                t2 = time.perf_counter()
                t_prog += t1 - t0
                t_read += t2 - t1
                done += chip.trials
                del y
        out = {"seconds": t_read / reps, "seconds_per_trial": t_read / reps / trials,
               "program_seconds": t_prog / reps, "map_seconds": t_map}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(only: str | None = None) -> None:
    import torch

    path = Path(__file__).parent / "results" / "mvm.json"
    rows = []
    if only and path.exists():
        rows = [r for r in json.loads(path.read_text())["rows"] if r.get("variant", "generic") != only]
    for variant, trial_counts in VARIANTS.items():
        if only and variant != only:
            continue
        for n, m in SHAPES:
          for trials in trial_counts:
            res = {}
            for kind in ("matmul", "memcim"):
                p = subprocess.run([sys.executable, __file__, "--case", kind, str(n), str(m), str(trials), variant],
                                   capture_output=True, text=True, check=True)
                res[kind] = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append({"variant": variant, "shape": [n, m], "batch": BATCH, "trials": trials, "matmul": res["matmul"],
                         "memcim": res["memcim"], "ratio": res["memcim"]["seconds"] / res["matmul"]["seconds"]})
            r = rows[-1]
            print(f"{variant:14s} W {n}x{m} batch {BATCH} trials {trials:3d}: matmul {r['matmul']['seconds']:.3f} s "
                  f"({r['matmul']['peak_rss_mb']:.0f} MB)  memcim {r['memcim']['seconds']:.3f} s "
                  f"({r['memcim']['peak_rss_mb']:.0f} MB)  ratio {r['ratio']:.2f}x", flush=True)
    out = {"benchmark": "simulated MVM vs torch matmul", "preset": "generic", "dtype": "float32",
           "threads": torch.get_num_threads(), "goal": "1 trial within 3x of the matmul", "rows": rows}
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        print(json.dumps(_case(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])))
    elif len(sys.argv) > 2 and sys.argv[1] == "--only":
        main(sys.argv[2])
    else:
        main()
