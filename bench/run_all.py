"""Run every benchmark in bench/ (what ``make bench`` calls), one after the other.

Each benchmark is its own script, measures its peer in the same run and writes its JSON into
bench/results/; this runner only starts them, shows which one is running, keeps going when one
fails, and writes bench/results/run_all.json (command, exit status and wall time of each).

    .venv/bin/python bench/run_all.py                  # all of them (the GA of bench_gmax alone takes ~45 min)
    .venv/bin/python bench/run_all.py --only mvm nn    # a subset, by name without the bench_ prefix
    .venv/bin/python bench/run_all.py --skip gmax

aihwkit (the peer of bench_nn) is optional: without it bench_nn times memcim and plain torch only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Benchmark names (``bench_<name>.py``), sorted."""
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    names = available()
    ap = argparse.ArgumentParser(description="Run the benchmarks in bench/ one after the other.")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"run only these ({', '.join(names)})")
    ap.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these out")
    a = ap.parse_args(argv)
    for n in (a.only or []) + a.skip:
        if n not in names:
            print(f"run_all: error: {n!r} is not a benchmark; choose from {', '.join(names)}", file=sys.stderr)
            return 2
    chosen = [n for n in (a.only or names) if n not in a.skip]
    rows = []
    for i, n in enumerate(chosen, 1):
        cmd = [sys.executable, str(HERE / f"bench_{n}.py")]
        print(f"[{i}/{len(chosen)}] bench_{n}.py", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd).returncode
        except KeyboardInterrupt:
            rows.append({"benchmark": n, "rc": 130, "seconds": time.perf_counter() - t0})
            print("run_all: interrupted; the finished benchmarks' results are kept", file=sys.stderr)
            break
        rows.append({"benchmark": n, "rc": rc, "seconds": round(time.perf_counter() - t0, 1)})
        if rc:
            print(f"run_all: bench_{n}.py exited with {rc}; going on", file=sys.stderr)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "run_all.json").write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    failed = [r["benchmark"] for r in rows if r["rc"]]
    print(f"run_all: {len(rows) - len(failed)} of {len(chosen)} benchmarks ran; "
          + (f"failed: {', '.join(failed)}" if failed else "none failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
