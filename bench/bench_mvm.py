"""Benchmark: simulated-MVM throughput against a plain torch matmul and against the read's floor, same run.

Shapes W 784x500 and 1024x1024, a batch of 10,000 inputs, the ``generic`` preset (every
array-level non-ideality on: 64 levels, programming noise, stuck devices, thermal and shot read
noise, 8-bit DAC and calibrated 8-bit ADC, 128x128 tiles), with 1 and with 100 Monte Carlo trials.
Each case runs in its own subprocess (its peak memory, max RSS, is its own), one torch thread by
default (``--threads``; the machine is shared), timed in process CPU time, minimum over interleaved
repeats, so the matmul and memcim see the same load.

    .venv/bin/python bench/bench_mvm.py            # writes bench/results/mvm.json

Reported ratio = simulated time / matmul time for the same work (100 trials = 100 matmuls).
A second variant, ``no_read_noise``, switches thermal and shot noise off (1 trial). ``--only VARIANT``
reruns one variant and merges it into the JSON.

**Floor.** Each 1-trial case also times, alone, the parts no read can skip: the tiled product
``u @ G`` of the row tiles (into a buffer, as the read does), one Gaussian draw of the per-tile
output size (row tiles x batch x columns, ``normal_``), the ADC's elementwise passes on that size and
the digital sum of the tiles. The floor is two tiled products (signal and shot-noise variance) plus
the draw with read noise on, one tiled product without; ``floor_ratio`` is floor / matmul and
``over_floor`` is memcim / floor.

**Profile.** Each 1-trial case also profiles one read (``torch.profiler``, self CPU time per op),
reported as each op's share of the read and as that share of the best read time over the matmul.

**Before.** ``--before REV`` also times, in the same subprocess and interleaved, the read of
``src/memcim/simulate.py`` at git revision ``REV`` (loaded as a module of its own; the rest of
memcim is the working tree's), on the same mapped matrix and inputs: ``before.ratio``.

    .venv/bin/python bench/bench_mvm.py --before 661ce9e
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
REPEATS = 5
THREADS = 1


VARIANTS = {"generic": (1, 100), "no_read_noise": (1,)}


def _hw(variant: str):
    from memcim.config import preset

    hw = preset("generic")
    return hw if variant == "generic" else hw.without("thermal", "shot")


def _before_module(rev: str):
    """``memcim.simulate`` as it was at git revision ``rev``, loaded under another module name, with
    the converters and device modules of that revision (the read calls them; their signatures move
    with it)."""
    import importlib.util
    import tempfile

    def show(path):
        return subprocess.run(["git", "show", f"{rev}:src/memcim/{path}"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parent).stdout

    tmp = Path(tempfile.mkdtemp())

    def load(name, src):
        for dep in ("converters", "device"):   # the revision's own helpers
            src = src.replace(f"memcim.hardware.{dep}", f"memcim._before_{dep}")
        path = tmp / f"{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"memcim.{name}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod

    load("_before_converters", show("hardware/converters.py"))
    load("_before_device", show("hardware/device.py"))
    return load("_simulate_before", show("simulate.py"))


def _profile(chip, x, scale: float) -> dict:
    """Self CPU time of each op of one read: its share of the read, and that share times ``scale``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as p:
        chip.mvm(x)
    ev = [(e.key, e.self_cpu_time_total) for e in p.key_averages() if e.self_cpu_time_total > 0]
    total = sum(t for _, t in ev)
    ev.sort(key=lambda kt: -kt[1])
    return {k: {"share": t / total, "over_matmul": t / total * scale} for k, t in ev[:12]}


def _case(n: int, m: int, trials: int, variant: str = "generic", before: str | None = None) -> dict:
    import torch

    from memcim.hardware.converters import adc_convert
    from memcim.mapping.crossbar import map_matrix
    from memcim.simulate import program

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    W = torch.randn(n, m, dtype=torch.float32)
    x = torch.randn(BATCH, n, dtype=torch.float32)
    hw = _hw(variant)
    t0 = time.process_time()
    mapped = map_matrix(W.double(), hw, calib_inputs=x[:512])
    t_map = time.process_time() - t0
    nrt, R, op = mapped.n_row_tiles, mapped.tile_rows, mapped.out_pad
    chunk = min(trials, 10)
    chip = program(mapped, seed=0, trials=chunk)
    chip.mvm(x[:100])  # warm-up
    # the floor's parts, each alone, on buffers allocated once (as the read's workspace is)
    ut = torch.nn.functional.pad(x, (0, nrt * R - n)).reshape(BATCH, nrt, R).transpose(0, 1)
    gd = chip.effective_difference()[0].contiguous()
    J = torch.empty(nrt, BATCH, op)
    gen = torch.Generator().manual_seed(0)
    fs = (mapped.full_scale / (hw.array.r_tia * hw.array.v_read)).float().unsqueeze(1)
    gain = 1.0 / mapped.scale.float().unsqueeze(1)
    parts = {"matmul": lambda: x @ W,
             "tiled_matmul": lambda: torch.matmul(ut, gd, out=J),
             "randn_tile_outputs": lambda: J.normal_(generator=gen),
             "adc_elementwise": lambda: adc_convert(J, fs, hw.adc, inplace=True, gain=gain),
             "tile_sum": lambda: J.sum(dim=0)}
    old = None
    if before is not None and trials == 1:
        mod = _before_module(before)
        old = mod.program(mapped, seed=0, trials=chunk)
        old.mvm(x[:100])
        parts["before"] = lambda: old.mvm(x)
    best = {k: float("inf") for k in parts}
    best["memcim"] = float("inf")
    t_prog = 0.0
    for _ in range(REPEATS if trials == 1 else 1):    # interleaved repeats, minimum of each
        for k, f in parts.items():
            if trials > 1 and k != "matmul":
                continue
            t0 = time.process_time()
            r = f()
            best[k] = min(best[k], time.process_time() - t0)
            del r
        t_read = 0.0
        done = 0
        while done < trials:
            t0 = time.process_time()
            chip = program(mapped, seed=done, trials=min(chunk, trials - done))
            t1 = time.process_time()
            y = chip.mvm(x)
            t2 = time.process_time()
            t_prog += t1 - t0
            t_read += t2 - t1
            done += chip.trials
            del y
        best["memcim"] = min(best["memcim"], t_read)
    mm = best["matmul"]
    out = {"matmul": {"seconds": mm * trials, "seconds_per_trial": mm},
           "memcim": {"seconds": best["memcim"], "seconds_per_trial": best["memcim"] / trials,
                      "program_seconds": t_prog, "map_seconds": t_map},
           "ratio": best["memcim"] / (mm * trials)}
    if old is not None and trials == 1:
        out["before"] = {"revision": before, "seconds": best["before"], "ratio": best["before"] / mm,
                         "speedup": best["before"] / best["memcim"]}
    if trials == 1:
        noisy = hw.device.thermal_noise or hw.device.shot_noise
        floor = (2 if hw.device.shot_noise else 1) * best["tiled_matmul"] + (best["randn_tile_outputs"] if noisy else 0)
        out["profile"] = _profile(chip, x, best["memcim"] / mm)
        out["floor"] = {"parts_seconds": {k: best[k] for k in parts if k not in ("matmul", "before")},
                        "parts_over_matmul": {k: best[k] / mm for k in parts if k not in ("matmul", "before")},
                        "definition": ("2 tiled products + 1 draw of the per-tile outputs" if noisy else
                                       "1 tiled product"),
                        "seconds": floor}
        out["floor_ratio"] = floor / mm
        out["over_floor"] = best["memcim"] / floor
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(only: str | None = None, before: str | None = None) -> None:
    import torch

    from memcim.io import provenance, write_json

    path = Path(__file__).parent / "results" / "mvm.json"
    rows = []
    if only and path.exists():
        rows = [r for r in json.loads(path.read_text())["rows"] if r.get("variant", "generic") != only]
    for variant, trial_counts in VARIANTS.items():
        if only and variant != only:
            continue
        for n, m in SHAPES:
            for trials in trial_counts:
                cmd = [sys.executable, __file__, "--case", str(n), str(m), str(trials), variant]
                p = subprocess.run(cmd + ([before] if before else []), capture_output=True, text=True, check=True)
                res = json.loads(p.stdout.strip().splitlines()[-1])
                rows.append({"variant": variant, "shape": [n, m], "batch": BATCH, "trials": trials, **res})
                r = rows[-1]
                fl = f"  floor {r['floor_ratio']:.2f}x, memcim/floor {r['over_floor']:.2f}" if "floor" in r else ""
                bf = f"  (before {r['before']['ratio']:.2f}x)" if "before" in r else ""
                print(f"{variant:14s} W {n}x{m} batch {BATCH} trials {trials:3d}: matmul {r['matmul']['seconds']:.3f} s "
                      f"memcim {r['memcim']['seconds']:.3f} s ({r['peak_rss_mb']:.0f} MB)  ratio {r['ratio']:.2f}x{fl}{bf}",
                      flush=True)
    out = {"benchmark": "simulated MVM vs torch matmul", "preset": "generic", "dtype": "float32",
           "threads": THREADS, "timer": "process CPU time, min over interleaved repeats",
           "goal": "1 trial: <= 3x the matmul with every non-ideality on, <= 1.5x with read noise off",
           "command": "bench/bench_mvm.py" + (f" --only {only}" if only else "") + (f" --before {before}" if before else ""),
           "torch": str(torch.__version__), "rows": rows, "provenance": provenance(seed=0)}
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    import argparse

    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        print(json.dumps(_case(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
                               sys.argv[6] if len(sys.argv) > 6 else None)))
    else:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--only", choices=sorted(VARIANTS), help="rerun one variant, merged into the JSON")
        ap.add_argument("--before", help="git revision whose simulate.py is timed in the same run")
        a = ap.parse_args()
        main(a.only, a.before)
