"""Benchmark: chips batched through the network (issue 15 item 4) against one chip at a time.

Times :func:`memcim.nn.evaluate.chip_outputs` for 20 chips of the reference MLP
(``mnist-mlp-500-300``, preset "generic") over the first 2,000 MNIST test images (batches of 1,000):

  * the peer: memcim's own one-chip loop (``chips_per_pass=1``), measured in the same run;
  * ``chips_per_pass=K, reads="exact"``: K chips per forward pass, each chip reading with its own
    generator (outputs bit-identical to the loop, checked here);
  * ``chips_per_pass=K, reads="stacked"``: the K chips' conductances stacked into one
    ``trials=K`` chip read by one ``mvm`` call (equal to the loop in distribution only).

Reports the median of ``--repeats`` timings and each variant's speed-up over the loop
(loop seconds / variant seconds; above 1 is faster). Writes bench/results/chips_batched.json.

    .venv/bin/python bench/bench_chips_batched.py [--threads 2] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from memcim.config import preset
from memcim.data.datasets import load_dataset
from memcim.io import provenance, write_json
from memcim.nn.evaluate import chip_outputs
from memcim.nn.models import get_reference_model

OUT = Path(__file__).resolve().parent / "results" / "chips_batched.json"
CHIPS, N_IMAGES, BATCH, MODEL, PRESET = 20, 2000, 1000, "mnist-mlp-500-300", "generic"


def run(model, x, hw, k, reads, device):
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    sync()
    t0 = time.perf_counter()
    outs = [o.clone() for _, _, o in chip_outputs(model, x, hw, chips=CHIPS, seed=0, batch_size=BATCH,
                                                  chips_per_pass=k, reads=reads, progress=False)]
    sync()
    return time.perf_counter() - t0, torch.stack(outs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = get_reference_model(MODEL).to(a.device)
    test = load_dataset("mnist", "test", limit=N_IMAGES)
    x, y = test.x.to(a.device), test.y.to(a.device)
    hw = preset(PRESET)
    variants = [(1, "exact"), (5, "exact"), (20, "exact"), (5, "stacked"), (20, "stacked")]
    run(model, x[:BATCH], hw, 1, "exact", a.device)  # warm-up
    times = {v: [] for v in variants}
    outs = {}
    for _ in range(a.repeats):          # interleaved, so drift of the machine hits every variant alike
        for v in variants:
            s, outs[v] = run(model, x, hw, *v, a.device)
            times[v].append(s)
    loop = statistics.median(times[(1, "exact")])
    ref = outs[(1, "exact")]
    rows = []
    for k, reads in variants:
        o = outs[(k, reads)]
        acc = (o.argmax(-1) == y).float().mean(dim=1)
        med = statistics.median(times[(k, reads)])
        rows.append({"chips_per_pass": k, "reads": reads, "seconds_median": med, "seconds": times[(k, reads)],
                     "speedup_over_one_chip_loop": loop / med, "equal_to_loop": bool(torch.equal(o, ref)),
                     "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std())})
        print(f"chips_per_pass={k:2d} reads={reads:7s} {med:7.3f} s  speed-up {loop / med:5.2f}x  "
              f"equal to loop: {rows[-1]['equal_to_loop']}  accuracy {float(acc.mean()):.4f}")
    write_json(a.out, {"benchmark": "chips batched through the network (issue 15 item 4)", "model": MODEL,
                       "preset": PRESET, "chips": CHIPS, "n_images": N_IMAGES, "batch_size": BATCH,
                       "device": a.device, "threads": a.threads, "repeats": a.repeats,
                       "peer": "memcim chip_outputs one chip at a time (chips_per_pass=1), same run",
                       "results": rows, "provenance": provenance()})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
