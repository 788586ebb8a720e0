"""The closed form (memcim.analysis.moments + memcim.analysis.predict) at an older revision against the current
one, in the same run: time and predicted MSE (small CNN on 64 MNIST images; the width sweep of
bench_predict_scaling.py). Used to keep a redesign's record (issue 17 item 3).

Both modules of the older revision are loaded from git (``git show REV:src/memcim/analysis/{moments,predict}.py``)
as separate module objects; each timed call runs with one revision's pair installed in ``sys.modules`` (and
on the ``memcim.analysis`` package), so the old ``predict_mse`` reaches its own ``predict``. Everything else
(mapping, devices, activations' helpers outside these two files) is today's. Interleaved min-of-N timings of
process CPU time, one thread.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_predict_revisions.py [REV]`` (default 830ba0d, the last
revision of both files before the channel-local factors; writes bench/results/predict_revisions.json).
"""
from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import memcim.analysis as pkg
import memcim.analysis.moments as mo
import memcim.analysis.predict as pr
from memcim.data.datasets import load_dataset
from memcim.io import provenance, write_json
from memcim.nn.loading import load_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_predict_scaling import cnn  # noqa: E402

NAMES = ("moments", "predict")      # in import order: the old predict imports the old moments


@contextlib.contextmanager
def installed(mods: dict):
    """Install ``mods`` (short name -> module) as memcim.analysis.<name> for the duration."""
    saved = {n: (sys.modules.get(f"memcim.analysis.{n}"), getattr(pkg, n, None)) for n in NAMES}
    try:
        for n, m in mods.items():
            sys.modules[f"memcim.analysis.{n}"] = m
            setattr(pkg, n, m)
        yield
    finally:
        for n, (m, a) in saved.items():
            sys.modules[f"memcim.analysis.{n}"] = m
            setattr(pkg, n, a)


def load_revision(rev: str) -> dict:
    root = Path(__file__).parent.parent
    tmp = Path(tempfile.mkdtemp())
    old: dict = {}
    for n in NAMES:
        src = subprocess.run(["git", "show", f"{rev}:src/memcim/analysis/{n}.py"], capture_output=True, text=True,
                             check=True, cwd=root).stdout
        path = tmp / f"{n}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"memcim.analysis.{n}", path)
        mod = importlib.util.module_from_spec(spec)
        with installed({**old, n: mod}):
            spec.loader.exec_module(mod)
        old[n] = mod
    return old


def main(rev: str = "830ba0d") -> list:
    torch.set_num_threads(1)
    revs = {"old": load_revision(rev), "new": {"moments": mo, "predict": pr}}
    g = torch.Generator().manual_seed(0)
    xc = torch.rand(64, 1, 32, 32, generator=g)
    cases = [("mnist-cnn-small", load_model("mnist-cnn-small").eval(), load_dataset("mnist", "test", limit=64).x.float(), 9)]
    for mult in (1, 2, 4, 8):
        torch.manual_seed(mult)
        cases.append((f"cnn width x{mult}", cnn(mult), xc, {1: 9, 2: 5, 4: 3, 8: 2}[mult]))
    rows = []
    for name, model, x, reps in cases:
        t, p = {"old": [], "new": []}, {}
        layers = {w: revs[w]["moments"].parse_model(model, torch.float32) for w in revs}
        for i in range(reps + 1):              # the first round warms up
            for w in ("old", "new") if i % 2 == 0 else ("new", "old"):
                with installed(revs[w]):
                    s = time.process_time()
                    p[w] = revs[w]["moments"].predict_mse(layers[w], x, sigma=0.01, gmax=3.0, levels=128, power=False,
                                                          dtype=torch.float32)
                    if i:
                        t[w].append(time.process_time() - s)
        dev = float(((p["new"].per_output - p["old"].per_output).abs().max() / p["old"].per_output.abs().max()))
        row = {"case": name, "old_s": min(t["old"]), "new_s": min(t["new"]), "speedup": min(t["old"]) / min(t["new"]),
               "old_s_median": sorted(t["old"])[len(t["old"]) // 2], "new_s_median": sorted(t["new"])[len(t["new"]) // 2],
               "mse_old": p["old"].mse_mean, "mse_new": p["new"].mse_mean,
               "mse_rel_change": (p["new"].mse_mean - p["old"].mse_mean) / p["old"].mse_mean,
               "per_output_max_rel_change": dev, "repeats": reps}
        print(row, flush=True)
        rows.append(row)
    write_json(Path(__file__).parent / "results" / "predict_revisions.json",
               {"old_revision": rev, "timer": "time.process_time, interleaved, min (and median) of repeats",
                "provenance": provenance(seed=0), "rows": rows})
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:2])
