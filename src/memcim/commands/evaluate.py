"""``memcim evaluate``: accuracy and output MSE of a model on crossbar hardware, over many chips."""
from __future__ import annotations

import argparse
import json
import sys

from memcim.io import dumps, provenance, write_json


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy of a model on simulated crossbars, with error bars over chips",
        description="Convert a model's Linear/Conv2d layers to simulated crossbars, program N chips and "
                    "report accuracy and output MSE versus the digital model (mean, std, 95 % intervals). "
                    "--model is a reference model name (mnist-mlp-500-300, mnist-mlp-256-128, "
                    "mnist-cnn-small) or a file saved with torch.save(model). With a config that has wires (--preset "
                    "irdrop) every layer runs at circuit level (exact nodal solve of every tile); --method picks "
                    "the mapping (linear, dpe, representable) and --set KEY=VALUE changes any setting.")
    p.add_argument("--model", required=True, help="reference model name or torch.save(model) file")
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, digits or cifar10 (default mnist)")
    p.add_argument("--split", default="test", help="split to evaluate on (default test)")
    p.add_argument("--data-dir", default=None, help="directory with the dataset files")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="hardware config .toml/.json (repeatable)")
    p.add_argument("--preset", action="append", default=[], metavar="NAME",
                   help="hardware preset name (repeatable); default: realistic")
    p.add_argument("--method", default=None, metavar="METHOD",
                   help="mapping method for every config: linear | dpe | representable (mapping.method; "
                        "default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="dotted hardware override applied to every config, e.g. --set adc.bits=6 "
                        "--set wires.r_wire=2 (repeatable; VALUE is a number, true/false, none or a word)")
    p.add_argument("--chips", type=int, default=10, help="number of programmed chips (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the chips (default 0)")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N samples only")
    p.add_argument("--calib-samples", type=int, default=256,
                   help="training samples used to calibrate ADC full scales (default 256)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--trust-model-file", action="store_true",
                   help="allow full unpickling of --model (runs code from the file)")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument("--out", default=None, metavar="DIR", help="write evaluate.json there")
    p.set_defaults(func=run)


def parse_settings(items) -> dict:
    """``["adc.bits=6", "dac.enabled=false"]`` -> ``{"adc.bits": 6, "dac.enabled": False}``."""
    out = {}
    for item in items:
        key, eq, raw = str(item).partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise ValueError(f"--set: {item!r} is not allowed; use KEY=VALUE with a dotted key, e.g. adc.bits=6")
        if raw.lower() in ("none", "null"):
            value = None
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        out[key] = value
    return out


def _apply(hw, settings: dict, method: str | None):
    try:
        return hw.set(settings)
    except (ValueError, TypeError) as e:
        flag = "--method" if method is not None and "mapping.method" in str(e) else "--set"
        raise ValueError(f"{flag}: {e}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from memcim.config import HardwareConfig, preset
    from memcim.data.base import check_limit
    from memcim.data.datasets import load_dataset
    from memcim.nn.evaluate import evaluate_analog
    from memcim.nn.loading import load_model

    if args.chips < 1:
        raise ValueError(f"--chips: {args.chips} is not allowed; must be >= 1")
    if args.seed < 0:
        raise ValueError(f"--seed: {args.seed} is not allowed; must be >= 0")
    if args.calib_samples < 1:
        raise ValueError(f"--calib-samples: {args.calib_samples} is not allowed; must be >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: {args.batch_size} is not allowed; must be >= 1")
    if args.limit is not None:
        check_limit(args.limit)
    configs = [HardwareConfig.load(f) for f in args.config] + [preset(n) for n in args.preset]
    if not configs:
        configs = [preset("realistic")]
    settings = parse_settings(args.settings)
    if args.method is not None:
        settings["mapping.method"] = args.method
    if settings:
        configs = [_apply(hw, settings, args.method) for hw in configs]
    ds = load_dataset(args.dataset, args.split, root=args.data_dir, limit=args.limit)
    calib_split = "train" if args.split != "train" else "val"
    calib = load_dataset(args.dataset, calib_split, root=args.data_dir, limit=args.calib_samples).x
    model = load_model(args.model, trust_model_file=args.trust_model_file)
    try:
        with torch.no_grad():
            out = model.eval()(ds.x[:2])
    except Exception as e:
        raise ValueError(f"--model: does not accept --dataset {args.dataset} inputs of shape "
                         f"{tuple(ds.x.shape[1:])} ({type(e).__name__}: {e})") from None
    if out.ndim != 2 or out.shape[1] < ds.n_classes:
        raise ValueError(f"--model: output shape {tuple(out.shape)} does not fit {ds.n_classes} classes")
    results = []
    for hw in configs:
        r = evaluate_analog(model, ds, hw, chips=args.chips, seed=args.seed, calib_data=calib,
                            batch_size=args.batch_size)
        r["hardware"] = hw.name
        r["config"] = hw.to_dict()
        results.append(r)
    doc = {"model": str(args.model), "dataset": args.dataset, "split": args.split, "n_samples": len(ds),
           "digital_accuracy": results[0]["digital"]["accuracy"], "results": results,
           "provenance": provenance(seed=args.seed)}
    if args.out:
        write_json(f"{args.out}/evaluate.json", doc)
    if args.json:
        print(dumps(doc))
    else:
        print(f"{args.model} on {args.dataset}/{args.split} ({len(ds)} samples), {args.chips} chips, seed {args.seed}")
        print(f"  digital            accuracy {doc['digital_accuracy'] * 100:6.2f} %")
        for r in results:
            a, m = r["accuracy"], r["mse"]
            lo, hi = a["ci95_mean"]
            ci = f"95% CI of mean {lo * 100:.2f}-{hi * 100:.2f} %" if a["n"] > 1 else "one chip: no interval"
            print(f"  {r['hardware']:18s} accuracy {a['mean'] * 100:6.2f} ± {a['std'] * 100:.2f} % "
                  f"({ci}), output MSE {m['mean']:.4g} ± {m['std']:.2g}")
        dig = results[0]["conversion"]["digital"]
        if dig:
            print("  kept digital: " + ", ".join(f"{d['name']} ({d['reason']})" for d in dig), file=sys.stderr)
    return 0
