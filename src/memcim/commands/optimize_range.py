"""``memcim optimize-range``: optimal conductance window and ADC full scale per layer (paper 003)."""
from __future__ import annotations

import argparse
import sys

from memcim.io import dumps, provenance


def register(sub) -> None:
    p = sub.add_parser(
        "optimize-range", help="globally optimal [G_min, G_max] and ADC full scale per layer (convex program)",
        description="For every Linear layer of --model, solve the convex program of paper 003 for the conductance "
                    "window and the ADC full scale that minimise the closed-form output error (then the read power "
                    "within --slack of it), and print the design, the predicted error by term, the improvement "
                    "against the naive mapping (full window, FS = largest possible output) and the solve time.")
    p.add_argument("--model", required=True, help="reference model name or torch.save(model) file")
    p.add_argument("--config", default="convex_cim", help="hardware .toml/.json file or preset name "
                                                          "(default convex_cim)")
    p.add_argument("--inputs", default=None, help="model inputs X.npy (N, ...) for the input statistics "
                                                  "(default: 2000 training images of --dataset)")
    p.add_argument("--dataset", default="mnist", help="dataset for the default inputs (default mnist)")
    p.add_argument("--per-column", action="store_true", help="one FS per array column instead of one per layer")
    p.add_argument("--method", default="cvxpy", choices=("cvxpy", "fast"), help="solver (default cvxpy)")
    p.add_argument("--slack", type=float, default=0.05,
                   help="accept this fraction more MSE than the least for less read power (default 0.05)")
    p.add_argument("--snr-db", type=float, default=None, help="required output SNR [dB]: minimise read power "
                                                              "subject to it")
    p.add_argument("--onoff-max", type=float, default=None, help="largest G_max/G_min ratio of the device")
    p.add_argument("--min-window", type=float, default=None, help="smallest G_max - G_min [S]")
    p.add_argument("--power-max", type=float, default=None, help="read-power budget per layer [W]")
    p.add_argument("--saturation", default="gaussian", choices=("gaussian", "empirical"),
                   help="output model of the saturation term (default gaussian)")
    p.add_argument("--trust-model-file", action="store_true", help="allow full unpickling of --model")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from torch import nn

    from memcim.analysis.column_error import InputStats, LayerErrorModel
    from memcim.config import resolve_config
    from memcim.experiments.convex_cim import linear_inputs
    from memcim.io import load_array
    from memcim.nn.loading import load_model
    from memcim.optimize.convex_range import DesignLimits, optimize_layer

    hw = resolve_config(args.config, default="convex_cim")
    limits = DesignLimits(onoff_max=args.onoff_max, min_window=args.min_window, power_max=args.power_max,
                          snr_db=args.snr_db, slack=args.slack)
    model = load_model(args.model, trust_model_file=args.trust_model_file).eval()
    if args.inputs is not None:
        X = torch.from_numpy(load_array(args.inputs, "--inputs", ndim=(2, 3, 4))).float()
    else:
        from memcim.data.datasets import load_dataset

        X = load_dataset(args.dataset, "train", limit=2000).x
    try:
        acts = linear_inputs(model, X)
    except Exception as e:  # shape mismatch between model and inputs
        raise ValueError(f"--inputs: the model does not accept inputs of shape {tuple(X.shape)} "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    layers = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        W = mod.weight.detach().double().numpy().T
        lm = LayerErrorModel(W, hw, InputStats.from_samples(acts[name], hw, name=f"--inputs (layer {name})"),
                             saturation=args.saturation)
        try:
            r = optimize_layer(lm, limits, per_column=args.per_column, method=args.method)
        except ValueError as e:
            raise ValueError(f"layer {name}: {e}") from None
        d = r.to_dict()
        d["layer"] = name
        d["shape"] = list(W.shape)
        d["signal_power"] = lm.signal_power(per="layer")
        d["snr_db"] = float(10 * np.log10(d["signal_power"] / r.terms["total"]))
        layers.append(d)
    skipped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    doc = {"model": str(args.model), "config": hw.to_dict(), "limits": limits.__dict__, "per_column": args.per_column,
           "method": args.method, "layers": layers, "skipped_conv_layers": skipped, "provenance": provenance()}
    if args.json:
        print(dumps(doc))
        return 0
    print(f"{args.model} on {hw.name!r} ({hw.adc.bits}-bit ADC), method {args.method}"
          f"{', per column' if args.per_column else ''}")
    print(f"{'layer':8s} {'G_min uS':>9s} {'G_max uS':>9s} {'FS V':>9s} {'MSE':>10s} {'naive MSE':>10s} "
          f"{'improv.':>8s} {'SNR dB':>7s} {'solve ms':>9s}")
    for d in layers:
        fs = d["fs_volts"] if isinstance(d["fs_volts"], float) else float(np.max(d["fs_volts"]))
        print(f"{d['layer']:8s} {d['g_min'] * 1e6:9.3f} {d['g_max'] * 1e6:9.3f} {fs:9.4g} "
              f"{d['predicted_mse']['total']:10.4g} {d['naive_mse']['total']:10.4g} "
              f"{100 * d['mse_improvement_vs_naive']:7.1f}% {d['snr_db']:7.2f} {1e3 * d['solve_seconds']:9.1f}")
        terms = ", ".join(f"{k} {v:.3g}" for k, v in d["predicted_mse"].items() if k != "total" and v > 0)
        print(f"         by term: {terms}")
    if skipped:
        print(f"skipped (Conv2d, not covered by the column model): {', '.join(skipped)}", file=sys.stderr)
    return 0
