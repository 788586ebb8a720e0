"""Benchmark: chips batched through the network (issue 15 item 4) against one chip at a time.

Times :func:`memcim.nn.evaluate.chip_outputs` for 20 chips of the reference MLP
(``mnist-mlp-500-300``, preset "generic") over the first 2,000 MNIST test images (batches of 1,000):

  * the peer: memcim's own one-chip loop (``chips_per_pass=1``), measured in the same run;
  * ``chips_per_pass=K, reads="exact"``: K chips per forward pass, each chip reading with its own
    generator (outputs bit-identical to the loop, checked here);
  * ``chips_per_pass=K, reads="stacked"``: the K chips' conductances stacked into one
    ``trials=K`` chip read by one ``mvm`` call (equal to the loop in distribution only).

Reports the median of ``--repeats`` timings and each variant's speed-up over the loop
(loop seconds / variant seconds; above 1 is faster), and the time per chip against one digital
pass of the same model over the same images (measured in the same run). Every variant's outputs
are compared with the loop's (``equal_to_loop``: bit for bit). Writes
bench/results/chips_batched.json (``--out`` to change).

With ``--profile``, each variant also runs once more under ``torch.profiler`` (``--profile-images``
images, one group of chips) and the JSON gets its 15 largest ops by self CPU time, each with its
input shapes (which tell the layer) and its share of the profiled time times the variant's
per-chip ratio (``over_digital_pass``: what the op costs per chip, in digital passes).

    .venv/bin/python bench/bench_chips_batched.py [--threads 2] [--repeats 3] [--device cpu]
    # issue 17: 100 chips of the reference CNN over the 10,000 test images, chips batched
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_chips_batched.py --model mnist-cnn-small --chips 100 \
        --images 10000 --variants 1:exact,5:exact,10:exact,20:exact --repeats 1 --threads 1 --profile \
        --out bench/results/chips_batched_cnn.json

What a batched pass shares (see :func:`memcim.nn.evaluate.chip_outputs`): in a flat sequential
model the modules before the first analog layer run once, that layer's input is unfolded once and
(``exact``) converted by the DAC once for all chips; on CPU the later layers run chip by chip.

On CPU with one thread, times are process CPU time (the machine is shared); otherwise wall time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
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


_clock = time.perf_counter


def run(model, x, hw, k, reads, device):
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    sync()
    t0 = _clock()
    outs = [o.clone() for _, _, o in chip_outputs(model, x, hw, chips=CHIPS, seed=0, batch_size=BATCH,
                                                  chips_per_pass=k, reads=reads, progress=False)]
    sync()
    return _clock() - t0, torch.stack(outs)


def profile_variant(model, x, hw, k, reads, scale, top=15):
    """The largest ops (self CPU time, grouped by op and input shapes) of one group of ``k`` chips on
    ``x``: each op's share of the profiled time and that share times ``scale`` (the variant's time per
    chip over one digital pass)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        for _ in chip_outputs(model, x, hw, chips=k, seed=0, batch_size=BATCH, chips_per_pass=k, reads=reads,
                              progress=False):
            pass
    ev = [e for e in p.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ev)
    ev.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "input_shapes": str(e.input_shapes), "calls": e.count,
             "share": e.self_cpu_time_total / total, "over_digital_pass": e.self_cpu_time_total / total * scale}
            for e in ev[:top]]


def main(argv=None):
    global CHIPS, _clock
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--chips", type=int, default=CHIPS)
    ap.add_argument("--images", type=int, default=N_IMAGES)
    ap.add_argument("--profile", action="store_true", help="profile one group of chips of each variant")
    ap.add_argument("--profile-images", type=int, default=1000)
    ap.add_argument("--variants", default="1:exact,5:exact,20:exact,5:stacked,20:stacked",
                    help="chips_per_pass:reads,... (the first is the peer, chips_per_pass=1)")
    a = ap.parse_args(argv)
    CHIPS = a.chips
    if a.device == "cpu" and a.threads == 1:
        _clock = time.process_time
    torch.set_num_threads(a.threads)
    model = get_reference_model(a.model).to(a.device).eval()
    test = load_dataset("mnist", "test", limit=a.images)
    x, y = test.x.to(a.device), test.y.to(a.device)
    hw = preset(PRESET)
    variants = [(int(k), r) for k, r in (v.split(":") for v in a.variants.split(","))]
    if variants[0] != (1, "exact"):
        variants.insert(0, (1, "exact"))
    run(model, x[:BATCH], hw, 1, "exact", a.device)  # warm-up
    digital = []
    with torch.no_grad():
        for _ in range(3):
            t0 = _clock()
            for i in range(0, x.shape[0], BATCH):
                model(x[i:i + BATCH])
            digital.append(_clock() - t0)
    t_dig = min(digital)
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
                     "seconds_per_chip": med / CHIPS, "per_chip_over_digital_pass": med / CHIPS / t_dig,
                     "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std())})
        print(f"chips_per_pass={k:2d} reads={reads:7s} {med:7.3f} s  per chip {med / CHIPS / t_dig:5.2f}x digital  "
              f"speed-up {loop / med:5.2f}x  "
              f"equal to loop: {rows[-1]['equal_to_loop']}  accuracy {float(acc.mean()):.4f}")
        if a.profile:
            rows[-1]["profile"] = profile_variant(model, x[:a.profile_images], hw, k, reads, med / CHIPS / t_dig)
            for r in rows[-1]["profile"][:8]:
                print(f"    {r['op']:22s} {r['over_digital_pass']:5.2f}x digital  {r['input_shapes'][:70]}")
    write_json(a.out, {"benchmark": "chips batched through the network (issue 15 item 4)", "model": a.model,
                       "preset": PRESET, "chips": CHIPS, "n_images": int(x.shape[0]), "batch_size": BATCH,
                       "digital_pass_seconds": t_dig, "timer": getattr(_clock, "__name__", str(_clock)),
                       "device": a.device, "threads": a.threads, "repeats": a.repeats,
                       "peer": "memcim chip_outputs one chip at a time (chips_per_pass=1), same run",
                       "command": "bench/bench_chips_batched.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "results": rows, "provenance": provenance()})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
