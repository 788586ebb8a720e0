"""The closed form's crossbar step at an older revision of memcim.analysis.moments against the current
one, in the same run: time and predicted MSE (small CNN on 64 MNIST images; the width sweep of
bench_predict_scaling.py). Used to keep a redesign's record (issue 17 item 3).

The older module is loaded from git (``git show REV:src/memcim/analysis/moments.py``) and its
``_crossbar_step`` (with its own factor compression), ``AvgPool`` and ``_sigmoid_poly`` are swapped in;
everything else (mapping, hardware step, activations) is today's. Interleaved min-of-N timings, one thread.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_predict_revisions.py [REV]`` (default ca300e8~1, the
revision before the speed work; writes bench/results/predict_revisions.json).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import memcim.analysis.moments as mo
from memcim.data.datasets import load_dataset
from memcim.io import provenance, write_json
from memcim.nn.loading import load_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_predict_scaling import cnn  # noqa: E402


def load_revision(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:src/memcim/analysis/moments.py"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent).stdout
    path = Path(tempfile.mkdtemp()) / "moments_rev.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("moments_rev", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["moments_rev"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(rev: str = "ca300e8~1") -> list:
    torch.set_num_threads(1)
    old = load_revision(rev)
    new = (mo._crossbar_step, mo.PoolLayer.apply, mo._sigmoid_poly)

    def old_pool(self, x, square=False):
        y = F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)
        return y / (self.kernel[0] * self.kernel[1]) if square else y

    def use(which):
        mo._crossbar_step, mo.PoolLayer.apply, mo._sigmoid_poly = (
            (old._crossbar_step, old_pool, old._sigmoid_poly) if which == "old" else new)

    g = torch.Generator().manual_seed(0)
    xc = torch.rand(64, 1, 32, 32, generator=g)
    cases = [("mnist-cnn-small", load_model("mnist-cnn-small").eval(), load_dataset("mnist", "test", limit=64).x.float(), 5)]
    for mult in (1, 2, 4, 8):
        torch.manual_seed(mult)
        cases.append((f"cnn width x{mult}", cnn(mult), xc, {1: 5, 2: 3, 4: 2, 8: 1}[mult]))
    rows = []
    try:
        for name, model, x, reps in cases:
            layers = mo.parse_model(model, torch.float32)
            t, mse = {"old": [], "new": []}, {}
            for _ in range(reps):
                for w in ("old", "new"):
                    use(w)
                    s = time.perf_counter()
                    p = mo.predict_mse(layers, x, sigma=0.01, gmax=3.0, levels=128, power=False, dtype=torch.float32)
                    t[w].append(time.perf_counter() - s)
                    mse[w] = p.mse_mean
            row = {"case": name, "old_s": min(t["old"]), "new_s": min(t["new"]), "speedup": min(t["old"]) / min(t["new"]),
                   "mse_old": mse["old"], "mse_new": mse["new"], "mse_rel_change": (mse["new"] - mse["old"]) / mse["old"]}
            print(row, flush=True)
            rows.append(row)
    finally:
        use("new")
    write_json(Path(__file__).parent / "results" / "predict_revisions.json",
               {"old_revision": rev, "provenance": provenance(seed=0), "rows": rows})
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:2])
