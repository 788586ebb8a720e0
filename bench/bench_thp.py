"""Benchmark: torch's large CPU allocations with and without ``THP_MEM_ALLOC_ENABLE=1`` (huge pages).

One float32 buffer of 140 MB (35 M entries) allocated and first touched (``fill_``), best of 5, one
thread, process CPU time; each setting in its own process (torch reads the variable at start). The
peer is the same allocation without the variable. Writes bench/results/thp.json.

    .venv/bin/python bench/bench_thp.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "thp.json"
CHILD = ("import time, torch\ntorch.set_num_threads(1)\nbest = 1e9\nfor _ in range(5):\n"
         "    s = time.process_time(); a = torch.empty(35_000_000); a.fill_(1.0); del a\n"
         "    best = min(best, time.process_time() - s)\nprint(best)\n")


def _time(thp: bool) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    from memcim.io import provenance, write_json

    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        mode = "unknown"
    plain, thp = _time(False), _time(True)
    doc = {"benchmark": "140 MB allocation + first touch, THP_MEM_ALLOC_ENABLE", "thp_mode": mode,
           "seconds_plain": plain, "seconds_thp": thp, "speedup": plain / thp,
           "timer": "process CPU time, best of 5, one thread", "provenance": provenance(seed=0)}
    write_json(OUT, doc)
    print(json.dumps({k: doc[k] for k in ("thp_mode", "seconds_plain", "seconds_thp", "speedup")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
