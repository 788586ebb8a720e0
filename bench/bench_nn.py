"""Benchmark: analog evaluation of the 784-500-300-10 MNIST MLP on 10,000 test images.

Times one inference pass over the MNIST test set (batches of 1,000) with
  * plain digital torch (the peer everything is divided by),
  * memcim analog layers: 128x128 arrays, 8-bit DAC and ADC, 64 levels, programming noise,
    stuck devices, thermal and shot read noise (preset "generic"); the same with thermal read
    noise only, and without read noise,
  * aihwkit's TorchInferenceRPUConfig with comparable settings (128x128 tiles, 8-bit input and
    output resolution, PCM-like programming noise, output read noise, dynamic input scaling,
    no iterative bound management) when aihwkit is importable; skipped otherwise.
Reports the fastest of ``--repeats`` timings (process CPU time with one thread, since the machine
is shared; wall time otherwise), the ratio to digital, and each variant's accuracy. The matched
comparison with aihwkit (``aihwkit_over_memcim_matched``) is memcim with thermal read noise only:
like aihwkit's ``out_noise``, one Gaussian per array output whose variance does not depend on the
input (no ``|u| @ G`` product). Peer: one digital pass (the ratio's denominator).

The network's floor, timed in the same run (``floor``): the digital pass plus, per analog layer, what
bench_mvm.py's floor adds to its product: with all noise one more tiled product (the shot-noise
variance, ``|u| @ (G+ + G-)``) and one normal draw of the per-tile outputs (batch x row tiles x padded
outputs); at the matched settings (thermal read noise only) the draw alone. Each part is timed alone
on buffers allocated once, over the same batches, minimum of ``--repeats``. ``memcim_over_floor`` is
how far memcim is from it, and ``aihwkit_over_floor_matched`` caps what ``aihwkit_over_memcim_matched``
can reach on this machine. Writes bench/results/bench_nn.json.

    .venv/bin/python bench/bench_nn.py [--threads 1] [--repeats 5] [--before REV]

``--before REV`` also times the same programmed chips (all noise; thermal only) read by
``src/memcim/simulate.py`` as it was at git revision ``REV`` (bench_mvm's loader), in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from memcim.config import preset
from memcim.data.datasets import load_dataset
from memcim.io import provenance, write_json
from memcim.nn.analog import convert_to_analog, program
from memcim.nn.models import get_reference_model

OUT = Path(__file__).resolve().parent / "results" / "bench_nn.json"


CLOCK = time.perf_counter


def timed(fn, x, repeats, batch):
    """Fastest time of running ``fn`` over ``x`` in batches (all timings kept), and the last outputs."""
    times = []
    out = None
    with torch.no_grad():
        fn(x[:batch])  # warm-up
        for _ in range(repeats):
            t0 = CLOCK()
            out = torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
            times.append(CLOCK() - t0)
    timed.all = times
    return min(times), out


def floor_parts(analog, x, batch: int, repeats: int) -> dict:
    """Seconds (min over ``repeats``) over ``x`` in batches of the read floor's parts beyond the digital
    pass, summed over the analog layers: ``tiled_product`` (one more product of the layer's input rows
    by its array tiles) and ``draw`` (one normal per tile output), each on buffers allocated once."""
    from memcim.nn.analog import AnalogLinear

    gen = torch.Generator().manual_seed(0)
    parts = {"tiled_product": [], "draw": []}
    for layer in (m for m in analog.modules() if isinstance(m, AnalogLinear)):
        mapped = layer.chip.mapped
        nrt, R, op = mapped.n_row_tiles, mapped.tile_rows, mapped.out_pad
        gd = layer.chip.effective_difference()[0].to(torch.float32).contiguous()
        u = torch.rand(nrt, batch, R, generator=gen)
        J = torch.empty(nrt, batch, op)
        parts["tiled_product"].append(lambda u=u, gd=gd, J=J: torch.matmul(u, gd, out=J))
        parts["draw"].append(lambda J=J: J.normal_(generator=gen))
    n_batches = -(-x.shape[0] // batch)
    best = {}
    for _ in range(repeats):
        for k, fns in parts.items():
            t0 = CLOCK()
            for _b in range(n_batches):
                for f in fns:
                    f()
            best[k] = min(best.get(k, float("inf")), CLOCK() - t0)
    return best


def aihwkit_model(model):
    try:
        from aihwkit.nn.conversion import convert_to_analog as aihw_convert
        from aihwkit.simulator.configs import TorchInferenceRPUConfig
        from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType
    except Exception as e:  # noqa: BLE001 - any import failure means: skip the column
        return None, f"aihwkit not importable ({type(e).__name__}: {e})"
    rpu = TorchInferenceRPUConfig()
    rpu.mapping.max_input_size = 128
    rpu.mapping.max_output_size = 128
    rpu.forward.inp_res = 1 / (2 ** 8 - 2)
    rpu.forward.out_res = 1 / (2 ** 8 - 2)
    rpu.forward.noise_management = NoiseManagementType.ABS_MAX
    rpu.forward.bound_management = BoundManagementType.NONE
    rpu.forward.out_noise = 0.01
    a = aihw_convert(model, rpu).eval()
    torch.manual_seed(0)  # aihwkit draws its programming noise from the global RNG
    a.program_analog_weights()
    return a, None


_BEFORE = {}


def before_chips(analog, rev):
    """``analog`` with its chips (the same conductances and read-noise state) read by ``simulate.py``
    at git revision ``rev``: swaps them in; returns the function that swaps the originals back."""
    from bench_mvm import _before_module
    from memcim.nn.analog import analog_layers

    if rev not in _BEFORE:
        _BEFORE[rev] = _before_module(rev)
    mod = _BEFORE[rev]
    kept = []
    for _, layer in analog_layers(analog):
        c = layer.chip
        gen = torch.Generator(device=c.device)
        gen.set_state(c.generator.get_state())
        kept.append((layer, c))
        layer.chip = mod.ProgrammedChip(mapped=c.mapped, g_pos=c.g_pos, g_neg=c.g_neg, generator=gen,
                                        nu_pos=c.nu_pos, nu_neg=c.nu_neg, reference_inputs=c.reference_inputs)

    def restore():
        for layer, c in kept:
            layer.chip = c
    return restore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--before", help="git revision whose simulate.py reads the same chips in the same run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    if args.threads == 1:
        CLOCK = time.process_time

    model = get_reference_model("mnist-mlp-500-300").eval()
    test = load_dataset("mnist", "test")
    calib = load_dataset("mnist", "train", limit=256).x
    x, y = test.x, test.y
    hw = preset("generic").replace(array={"rows": 128, "cols": 128}, dac={"bits": 8}, adc={"bits": 8},
                                     name="bench-128x128-8bit")
    rows = []

    def record(name, t, out, note=""):
        acc = float((out.argmax(1) == y).float().mean())
        rows.append({"variant": name, "seconds": t, "seconds_all": list(timed.all), "accuracy": acc, "note": note})

    t_dig, out = timed(model, x, args.repeats, args.batch)
    record("digital torch", t_dig, out)

    analog = program(convert_to_analog(model, hw, calib_data=calib), seed=0).eval()
    t, out = timed(analog, x, args.repeats, args.batch)
    record("memcim analog", t, out, "programming + stuck + thermal + shot read noise, 8-bit DAC/ADC")

    therm = program(convert_to_analog(model, hw.without("shot"), calib_data=calib), seed=0).eval()
    t, out = timed(therm, x, args.repeats, args.batch)
    record("memcim analog, thermal read noise", t, out, "as above without shot noise (no |u| @ G product)")

    quiet = program(convert_to_analog(model, hw.without("thermal", "shot"), calib_data=calib), seed=0).eval()
    t, out = timed(quiet, x, args.repeats, args.batch)
    record("memcim analog, no read noise", t, out, "programming + stuck, 8-bit DAC/ADC")

    if args.before:   # the same chips read now and at the revision, interleaved repeats
        for name, net in (("memcim analog", analog), ("memcim analog, thermal read noise", therm)):
            now, then = [], []
            with torch.no_grad():
                for _ in range(args.repeats):
                    for times in (now, then):
                        restore = before_chips(net, args.before) if times is then else (lambda: None)
                        t0 = CLOCK()
                        out = torch.cat([net(x[i:i + args.batch]) for i in range(0, x.shape[0], args.batch)])
                        times.append(CLOCK() - t0)
                        restore()
            timed.all = then
            record(f"{name} (before {args.before})", min(then), out, "the same chips read by simulate.py at "
                   + args.before + ", repeats interleaved with the current read")
            rows[-1]["interleaved_current_seconds"] = min(now)
            rows[-1]["speedup_after"] = min(then) / min(now)

    fp = floor_parts(analog, x, args.batch, args.repeats)
    floor = {"definition": "digital pass + per analog layer: one more tiled product (shot-noise variance) and "
                           "one normal draw of the per-tile outputs; matched: digital pass + the draw",
             "parts_seconds": fp, "seconds": t_dig + fp["tiled_product"] + fp["draw"],
             "seconds_matched": t_dig + fp["draw"]}
    floor["over_digital"] = floor["seconds"] / t_dig
    floor["matched_over_digital"] = floor["seconds_matched"] / t_dig

    aihw, why = aihwkit_model(model)
    if aihw is not None:
        t, out = timed(aihw, x, args.repeats, args.batch)
        record("aihwkit TorchInferenceRPUConfig", t, out, "128x128 tiles, 8-bit in/out, PCM-like programming "
               "noise, out_noise 0.01")
    else:
        print(f"skipping aihwkit: {why}", file=sys.stderr)
    for r in rows:
        r["ratio_to_digital"] = r["seconds"] / t_dig
    mem = next(r for r in rows if r["variant"] == "memcim analog")
    matched = next(r for r in rows if r["variant"] == "memcim analog, thermal read noise")
    aih = next((r for r in rows if r["variant"].startswith("aihwkit")), None)
    doc = {"benchmark": "bench_nn", "model": "mnist-mlp-500-300", "n_images": len(test),
           "batch": args.batch, "threads": args.threads, "repeats": args.repeats, "config": hw.to_dict(),
           "results": rows, "memcim_over_digital": mem["ratio_to_digital"],
           "aihwkit_over_memcim": aih["seconds"] / mem["seconds"] if aih else None,
           "aihwkit_over_memcim_matched": aih["seconds"] / matched["seconds"] if aih else None,
           "timer": "process CPU time" if args.threads == 1 else "wall time",
           "goal": "memcim (all noise) <= 3x digital; aihwkit / memcim (matched) >= 2.5",
           "floor": floor, "memcim_over_floor": mem["seconds"] / floor["seconds"],
           "memcim_matched_over_floor_matched": matched["seconds"] / floor["seconds_matched"],
           "aihwkit_over_floor_matched": aih["seconds"] / floor["seconds_matched"] if aih else None,
           "aihwkit_skipped": why, "torch": str(torch.__version__), "before": args.before,
           "command": " ".join(["bench/bench_nn.py"] + sys.argv[1:]), "provenance": provenance(seed=0)}
    write_json(OUT, doc)
    print(f"{'variant':34s} {'seconds':>9s} {'x digital':>10s} {'accuracy':>9s}")
    for r in rows:
        print(f"{r['variant']:34s} {r['seconds']:9.4f} {r['ratio_to_digital']:10.2f} {r['accuracy'] * 100:8.2f}%")
    for r in rows:
        if "speedup_after" in r:
            print(f"{r['variant']}: current read {r['speedup_after']:.2f}x faster (interleaved: "
                  f"{r['interleaved_current_seconds'] / t_dig:.2f}x digital now, {r['ratio_to_digital']:.2f}x before)")
    print(f"floor {floor['over_digital']:.2f}x digital (matched {floor['matched_over_digital']:.2f}x); memcim / floor "
          f"{doc['memcim_over_floor']:.2f} (matched {doc['memcim_matched_over_floor_matched']:.2f})")
    if aih:
        print(f"aihwkit / matched floor {doc['aihwkit_over_floor_matched']:.2f} (the most aihwkit / memcim matched can be)")
        print(f"aihwkit / memcim time: {doc['aihwkit_over_memcim']:.2f} (all noise), "
              f"{doc['aihwkit_over_memcim_matched']:.2f} (matched: thermal read noise only)")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
