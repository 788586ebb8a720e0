"""External check of accuracy over time against aihwkit (issue 14, item 7): memcim's ``pcm`` preset
beside aihwkit 1.1.0's ``PCMLikeNoiseModel``, both with global drift compensation.

aihwkit is a benchmark peer only: it is imported here, never from ``src/``.

The reference MLP (``mnist-mlp-256-128``) is programmed on ``--chips`` chips in each toolkit; each
chip is read at t0 = 20 s (the first read), 1 hour, 1 day and 1 year after programming on the first
``--n`` MNIST test images. Both toolkits are configured alike:

* the device: memcim's ``pcm`` preset (Joshi et al. 2020 / Nandakumar et al. 2019: g_max = 25 uS,
  programming-noise polynomial, drift exponent mean and spread against ln G, 1/f read noise with
  t_read = 250 ns, t0 = 20 s) and ``PCMLikeNoiseModel(g_max=25)`` (the same paper model);
* perfect I/O: memcim's pcm has no DAC, ADC, wires or thermal/shot noise; aihwkit's
  ``forward.is_perfect = True``;
* one differential pair per weight, the unused device programmed to 0 S (both);
* global drift compensation: ``compensation.drift = "global"`` and ``GlobalDriftCompensation()``;
* the biases added digitally (``mapping.digital_bias``).

Time: memcim reads at ``t`` seconds after programming (``t >= t0``); aihwkit's ``t_inference`` counts
from t0 (its devices are at ``t_inference + t0``), so aihwkit gets ``t_inference = t - t0``.

Two set-ups:

``tiles128``
    each toolkit's own way on 128 x 128 tiles: memcim's preset as shipped (one weight scale per layer
    matrix, compensation per layer with the layer's calibration inputs as reference reads), aihwkit
    with ``max_input_size = max_output_size = 128`` (one weight scale and one compensation factor per
    tile, reference read with one-hot inputs).
``matched``
    one tile per layer in both (1024 x 1024 arrays, ``max_*_size = 1024``), so the weight scale and
    the compensation are per layer in both, and memcim's reference inputs are one-hot vectors as
    aihwkit's: the closest the two can be configured.

``matched-no-1f``
    ``matched`` with the 1/f read noise off in both: programming noise and drift only.

Writes ``bench/results/drift_aihwkit.json`` and prints the side-by-side table::

    .venv/bin/python bench/bench_drift_aihwkit.py            # 20 chips, 5000 images, under a minute on 1 thread
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TIMES = (20.0, 3600.0, 86400.0, 3.15e7)
NAMES = {20.0: "t0 = 20 s", 3600.0: "1 hour", 86400.0: "1 day", 3.15e7: "1 year"}


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (difference as _difference, mnist_test, outputs as _outputs, pcm_rpu_config, peer_args,  # noqa: E402
                     read as _read, summary as _summary)


def run_memcim(model, x, y, ref, calib, hw, chips, seed, one_hot_reference, batch):
    """Accuracy per chip and time: each chip programmed once, read at every time (t0 first)."""
    from memcim.nn.analog import (
        analog_layers,
        convert_to_analog,
        layer_seed,
        program,
        read_time,
    )

    analog = convert_to_analog(model, hw, calib_data=calib).eval()
    acc, err = {t: [] for t in TIMES}, {t: [] for t in TIMES}
    for c in range(chips):
        program(analog, layer_seed(seed, c))
        if one_hot_reference:
            for _, layer in analog_layers(analog):
                layer.chip.reference_inputs = torch.eye(layer.chip.mapped.in_features, dtype=torch.float64)
        for t in TIMES:
            with read_time(analog, t):
                a, e = _read(analog, x, y, ref, batch)
            acc[t].append(a)
            err[t].append(e)
    return acc, err


def run_aihwkit(model, x, y, ref, chips, seed, tile, batch, read_noise=True):
    from aihwkit.nn.conversion import convert_to_analog

    rpu = pcm_rpu_config(tile, TIMES[0], read_noise)
    analog = convert_to_analog(copy.deepcopy(model), rpu).eval()
    acc, err = {t: [] for t in TIMES}, {t: [] for t in TIMES}
    for c in range(chips):
        torch.manual_seed(10_000 * (seed + 1) + c)
        analog.program_analog_weights()                       # one chip: programming noise, drift exponents
        for t in TIMES:
            analog.drift_analog_weights(t - TIMES[0])         # the same chip at t (aihwkit counts from t0)
            a, e = _read(analog, x, y, ref, batch)
            acc[t].append(a)
            err[t].append(e)
    return acc, err


def compare(m, a, me, ae):
    """Per time: the difference of the mean accuracies, the spread over chips (the larger std), the
    standard error of the difference and whether they agree within the spread over chips; the same
    for the relative output error (``error_*``)."""
    rows = []
    for t in TIMES:
        em, ea = _summary(me[t]), _summary(ae[t])
        sm, sa = _summary(m[t]), _summary(a[t])
        rows.append({"t": t, "memcim": sm, "aihwkit": sa, **_difference(sm, sa),
                     "error_memcim": em, "error_aihwkit": ea, "error_ratio": em["mean"] / ea["mean"],
                     "error_within_spread": abs(em["mean"] - ea["mean"]) <= max(em["std"], ea["std"])})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    peer_args(ap, chips=20, n=5000, out=str(ROOT / "bench" / "results" / "drift_aihwkit.json"))
    ap.add_argument("--setups", default="tiles128,matched,matched-no-1f")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    import aihwkit

    from memcim.config import preset
    from memcim.io import provenance
    from memcim.nn.loading import fit_input
    from memcim.nn.models import get_reference_model

    spec = f"mnist:test:{args.n}"
    ds, calib = mnist_test(args.n)
    model = fit_input(get_reference_model("mnist-mlp-256-128"), ds.input_shape).float().eval()
    x, y = ds.x, ds.y
    ref = _outputs(model, x, 1000)
    digital = float((ref.argmax(1) == y).float().mean())
    pcm = preset("pcm")
    assert pcm.compensation.drift == "global" and pcm.device.drift_t0 == TIMES[0]
    setups = {
        "tiles128": {"hw": pcm, "tile": 128, "one_hot": False,
                         "note": "each toolkit's own way on 128x128 tiles: memcim one weight scale per layer and "
                              "calibration inputs as reference; aihwkit one scale and one compensation factor per "
                              "tile, one-hot reference"},
        "matched": {"hw": pcm.replace(array={"rows": 1024, "cols": 1024}), "tile": 1024, "one_hot": True,
                        "note": "one tile per layer in both (scale and compensation per layer), one-hot reference "
                             "inputs in both"},
        "matched-no-1f": {"hw": pcm.replace(array={"rows": 1024, "cols": 1024}).without("flicker"), "tile": 1024,
                              "one_hot": True, "read_noise": False,
                              "note": "matched, with the 1/f read noise off in both (memcim without flicker, aihwkit "
                                   "read_noise_scale = 0): programming noise and drift only"},
    }
    doc = {"what": "accuracy of mnist-mlp-256-128 over time on PCM: memcim pcm preset vs aihwkit PCMLikeNoiseModel, "
                   "global drift compensation, perfect I/O",
           "command": "python bench/bench_drift_aihwkit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "aihwkit_version": aihwkit.__version__, "data": spec, "chips": args.chips, "seed": args.seed,
           "digital_accuracy": digital, "times": list(TIMES),
           "time_convention": "memcim reads at t seconds after programming (t >= t0 = 20 s); aihwkit gets "
                              "t_inference = t - t0 (its devices are at t_inference + t0)",
           "memcim_hw": pcm.to_dict(), "setups": {}, "provenance": provenance(seed=args.seed)}
    for name in [s for s in args.setups.split(",") if s]:
        s = setups[name]
        t_start = time.perf_counter()
        m, me = run_memcim(model, x, y, ref, calib, s["hw"], args.chips, args.seed, s["one_hot"], 1000)
        t_mid = time.perf_counter()
        a, ae = run_aihwkit(model, x, y, ref, args.chips, args.seed, s["tile"], 1000, s.get("read_noise", True))
        t_end = time.perf_counter()
        doc["setups"][name] = {"note": s["note"], "tile": s["tile"], "rows": compare(m, a, me, ae),
                               "seconds": {"memcim": t_mid - t_start, "aihwkit": t_end - t_mid}}
        print(f"{name}: memcim {t_mid - t_start:.1f} s, aihwkit {t_end - t_mid:.1f} s", file=sys.stderr)
    lines = [f"mnist-mlp-256-128 on {spec}, {args.chips} chips each, digital accuracy {digital * 100:.2f} %",
             (f"{'setup':13s} {'time':10s} {'memcim %':>16s} {'aihwkit %':>16s} {'diff':>7s} {'spread':>7s} "
              f"{'z':>6s} within | rel. output error memcim / aihwkit  within")]
    for name, sd in doc["setups"].items():
        for r in sd["rows"]:
            mm, aa = r["memcim"], r["aihwkit"]
            z = "n/a" if r["z"] is None else f"{r['z']:.1f}"
            lines.append(f"{name:13s} {NAMES[r['t']]:10s} {mm['mean'] * 100:8.2f} ± {mm['std'] * 100:4.2f} "
                         f"{aa['mean'] * 100:8.2f} ± {aa['std'] * 100:4.2f} {r['difference'] * 100:+7.2f} "
                         f"{r['spread'] * 100:7.2f} {z:>6s} {'yes' if r['within_spread'] else 'NO':6s} | "
                         f"{r['error_memcim']['mean']:.4f} ± {r['error_memcim']['std']:.4f} / "
                         f"{r['error_aihwkit']['mean']:.4f} ± {r['error_aihwkit']['std']:.4f}  "
                         f"{'yes' if r['error_within_spread'] else 'NO'}")
    doc["table"] = lines
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
