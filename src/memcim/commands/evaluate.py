"""``memcim evaluate``: accuracy and output MSE of a model on crossbar hardware, over many chips.

With ``--time T ...`` each chip is programmed once and read at every time (seconds after
programming; the first read ``device.drift_t0`` always included); ``--compensation`` evaluates each
drift-compensation mode on the same chips, and ``--out`` also writes ``evaluate.png``: accuracy
against log time, one band (mean ± std over chips) per hardware and compensation mode.
"""
from __future__ import annotations

import argparse
import sys

from memcim import validate
from memcim.commands import _shared

#: flags of the old ``evaluate`` -> their replacement
GONE = {"--preset": "--hw", "--config": "--hw", "--dataset": "--data DATASET[:SPLIT][:N]",
        "--split": "--data DATASET:SPLIT", "--limit": "--data DATASET:SPLIT:N"}


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy of a model on simulated crossbars, with error bars over chips",
        description="Convert a model's Linear/Conv2d layers to simulated crossbars, program --chips chips of "
                    "each --hw and report accuracy and output MSE versus the digital model (mean, std, 95 % "
                    "interval of the mean). --model is a reference model (mnist-mlp-500-300, mnist-mlp-256-128, "
                    "mnist-cnn-small; shipped trained) or your torch.save(model) file; an MLP whose first layer "
                    "is Linear gets flattened inputs, --input-shape reshapes them otherwise. Hardware with wires "
                    "(--hw irdrop) runs every layer at circuit level. Data without labels (--data X.npy) gives "
                    "the output MSE but no accuracy.")
    _shared.add_model(p)
    _shared.add_hw(p, repeat=True)
    p.add_argument("--method", default=None, metavar="METHOD",
                   help="mapping method for every --hw: linear | dpe | representable (a shortcut for "
                        "--set mapping.method=METHOD; default: the hardware's)")
    _shared.add_chips(p, 10)
    _shared.add_seed(p)
    p.add_argument("--data", default=_shared.DEFAULT_DATA, metavar="SPEC",
                   help=f"DATASET[:SPLIT][:N] (mnist, fashion-mnist, digits, cifar10) or X.npy,Y.npy with your "
                        f"own inputs and labels, X.npy alone for output MSE only (default {_shared.DEFAULT_DATA}: "
                        f"the first 1000 test images; mnist:test for all 10,000)")
    p.add_argument("--normalize", default=None, metavar="MEAN,STD",
                   help="feed (x - MEAN) / STD to the model, as it was trained (e.g. 0.1307,0.3081 for MNIST)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="directory of the dataset files")
    p.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="training samples that calibrate the ADC full scales (default 256; with your own "
                        "X.npy the first N inputs)")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N", help="inference batch size (default 1000)")
    p.add_argument("--time", nargs="+", type=float, default=None, metavar="SECONDS", dest="time",
                   help="read the same chips at each time after programming, in seconds (e.g. 3600 86400 3.15e7; "
                        "not before the hardware's device.drift_t0, the first read, which is always included); "
                        "--out also writes evaluate.png, accuracy against log time")
    p.add_argument("--compensation", nargs="+", default=None, metavar="MODE",
                   help="drift compensation modes to evaluate, each as one band on the same chips: none, global, "
                        "column, as a list or comma-separated (default: the hardware's compensation.drift)")
    _shared.add_out(p)
    p._option_string_actions["--out"].help = "directory to write evaluate.json into (one entry per --hw)"
    from memcim.commands.simulate import add_gone

    add_gone(p, GONE)
    p.set_defaults(func=run)


def _parse_compensation(values) -> list[str] | None:
    from memcim.config import DRIFT_COMPENSATION

    if values is None:
        return None
    modes = [v.strip() for item in values for v in str(item).split(",")]
    if not modes or any(not m for m in modes):
        raise ValueError(f"compensation: {' '.join(values)!r} is not allowed; give modes among "
                         f"{', '.join(DRIFT_COMPENSATION)}, e.g. none,global,column")
    for m in modes:
        validate.choice("compensation", m, DRIFT_COMPENSATION)
    return list(dict.fromkeys(modes))


def _check_times(times, configs) -> list[float] | None:
    """``--time`` values: finite, non-negative, not before any --hw's device.drift_t0."""
    import math

    if times is None:
        return None
    for t in times:
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"time: {t!r} is not allowed; read times are finite, non-negative seconds after "
                             "programming")
        for hw in configs:
            t0 = hw.device.drift_t0
            if t < t0:
                raise ValueError(f"time: {t:g} s is before device.drift_t0 = {t0:g} s of --hw {hw.name}; the first "
                                 f"read (t0) is always included, give times >= {t0:g}")
    return [float(t) for t in times]


def _label(r: dict) -> str:
    return r["hardware"] + (f" [{r['compensation']}]" if r.get("compensation") else "")


def _time_lines(r: dict) -> list[str]:
    lines = []
    for o in r["over_time"]:
        t = o["t"]
        when = f"{t:g} s" + (" (t0)" if t == r["t0"] else "")
        a, m = o["accuracy"], o["mse"]
        acc = "" if a is None else f"accuracy {a['mean'] * 100:6.2f} ± {a['std'] * 100:.2f} %, "
        lines.append(f"    t = {when:14s} {acc}output MSE {m['mean']:.4g}")
    return lines


def _text(doc: dict) -> str:
    lines = [f"{doc['model']} on {doc['dataset']}/{doc['split']} ({doc['n_samples']} samples), {doc['chips']} chip(s), "
             f"seed {doc['seed']}"]
    if doc["labelled"]:
        lines.append(f"  {'digital':18s} accuracy {doc['digital_accuracy'] * 100:6.2f} %")
    else:
        lines.append("  no labels in --data: accuracy is not available, output MSE is (give --data X.npy,Y.npy)")
    for r in doc["results"]:
        if "over_time" in r:
            lines.append(f"  {_label(r)}, {r['chips']} chip(s) read at each time:")
            lines += _time_lines(r)
            continue
        m = r["mse"]
        mse = f"output MSE {m['mean']:.4g}" + (f" ± {m['std']:.2g}" if m["n"] > 1 else "")
        a = r["accuracy"]
        if a is None:
            lines.append(f"  {_label(r):18s} {mse}")
            continue
        if a["ci95_mean"] is not None:
            lo, hi = a["ci95_mean"]
            acc = f"accuracy {a['mean'] * 100:6.2f} ± {a['std'] * 100:.2f} % (95% CI of mean {lo * 100:.2f}-{hi * 100:.2f} %)"
        else:
            acc = f"accuracy {a['mean'] * 100:6.2f} % (one chip: no interval; --chips N for error bars)"
        lines.append(f"  {_label(r):18s} {acc}, {mse}")
        if r.get("energy"):
            e = r["energy"]
            lines.append(f"  {'':18s} energy {e['energy_per_inference_j'] * 1e9:.4g} nJ/inference, latency "
                         f"{e['latency_s'] * 1e6:.4g} us, area {e['area_m2'] * 1e6:.4g} mm^2 (hardware.energy)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from memcim import validate
    from memcim.config import MAPPING_METHODS
    from memcim.io import provenance
    from memcim.nn.evaluate import evaluate_analog
    from memcim.nn.loading import fit_input, load_model

    validate.integer("calib_samples", args.calib_samples, lo=1, hi=1_000_000)
    validate.integer("batch_size", args.batch_size, lo=1, hi=10_000_000)
    modes = _parse_compensation(args.compensation)
    extra = None
    if args.method is not None:
        validate.choice("method", args.method, MAPPING_METHODS)
        extra = {"mapping.method": args.method}
    try:
        configs = _shared.hardware_list(args, extra_settings=extra)
    except ValueError as e:
        msg = str(e)
        if args.method is not None and "mapping.method" in msg:
            raise ValueError(f"method: {msg.split(': ', 1)[-1]}") from None
        raise
    times = _check_times(args.time, configs)
    model = load_model(args.model, trust_model_file=args.trust_model_file,
                       import_modules=tuple(args.import_modules))          # a bad model fails before data loads
    _shared.check_finite_model(model, args.model)
    ds = _shared.data(args)
    calib = _shared.calibration(args)
    model = fit_input(model, ds.input_shape, input_shape=args.input_shape).float().eval()
    labelled = bool(ds.meta.get("labelled", True))
    with torch.no_grad():
        out = model(ds.x[:2])
    if out.ndim != 2 or (labelled and out.shape[1] < ds.n_classes):
        raise ValueError(f"model: output shape {tuple(out.shape)} does not fit {ds.n_classes} classes; the model "
                         "must return (batch, n_classes) scores")
    lo, hi = float(ds.x.min()), float(ds.x.max())
    results = []
    for hw in configs:
        for mode in modes or [None]:
            h = hw if mode is None else hw.replace(compensation={"drift": mode})
            r = evaluate_analog(model, ds, h, chips=args.chips, seed=args.seed, calib_data=calib,
                                batch_size=args.batch_size, times=times)
            head = {"hardware": hw.name} if mode is None else {"hardware": hw.name, "compensation": mode}
            results.append({**head, **r, "config": h.to_dict()})
    doc = {"model": str(args.model), "data": args.data, "dataset": ds.name, "split": ds.split,
           "n_samples": len(ds), "normalize": ds.meta.get("normalize"), "input_range": [lo, hi],
           "labelled": labelled, "chips": args.chips, "seed": args.seed,
           "digital_accuracy": results[0]["digital"]["accuracy"], "results": results,
           **({"times": sorted({t for r in results for t in r["times"]})} if times is not None else {}),
           "provenance": provenance(seed=args.seed)}
    dig = results[0]["conversion"]["digital"]
    if dig and not args.json:
        print("  kept digital: " + ", ".join(f"{d['name']} ({d['reason']})" for d in dig), file=sys.stderr)
    plot = None
    if times is not None:
        from memcim.experiments.drift import plot_evaluate

        plot = plot_evaluate
    return _shared.emit(args, "evaluate", doc, text=_text, plot=plot)
