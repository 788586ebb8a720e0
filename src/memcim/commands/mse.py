"""``memcim mse``: predicted (and optionally Monte Carlo) output MSE and power of a model on crossbars."""
from __future__ import annotations

import time


def register(sub) -> None:
    from memcim.commands._memse_common import add_model_args

    p = sub.add_parser("mse", help="fast analytic output MSE and power of a network on noisy crossbars (MemSE)",
                       description="Predict, by moment propagation (paper 001), the output MSE of a model whose "
                                   "Linear/Conv2d layers run on memristor crossbars with quantization to N+1 levels "
                                   "and programming noise sigma, and the expected device+TIA read power (the energy "
                                   "model's expectation). Optionally check both with a Monte Carlo over chips "
                                   "sampled and read by memcim's hardware simulator, the power measured on every chip.")
    add_model_args(p, sigma_required=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gmax", type=float, help="one G_max for every crossbar layer, S")
    g.add_argument("--gmax-per-layer", help="comma-separated G_max per crossbar layer, S")
    h = p.add_mutually_exclusive_group()
    h.add_argument("--preset", metavar="NAME",
                   help="predict on this hardware preset (memcim.analysis.predict: levels, programming noise, "
                        "stuck devices, RTN, read noise, DAC, one ADC per array); --sigma/--gmax/--levels then "
                        "override its device with MemSE's meaning (e.g. --preset memse --sigma 0.02 --gmax 3)")
    h.add_argument("--config", metavar="HW.toml", help="like --preset, from a hardware config file (.toml or .json)")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="with --preset/--config: inputs that calibrate the ADC full scales, .npy/.npz/.csv or "
                        "DATASET:N (first N training samples); default: the mapping's standard normal inputs")
    p.add_argument("--monte-carlo", type=int, default=0, metavar="T",
                   help="also run T chips through memcim's hardware simulator (output MSE, accuracy, and the "
                        "read power measured on every chip)")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (default 0)")
    p.add_argument("--act-method", default="taylor", help="taylor (default) or gh (Gauss-Hermite)")
    p.add_argument("--taylor-order", type=int, default=2, help="even Taylor order (default 2, the paper's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.analysis.moments import predict_mse
    from memcim.commands._memse_common import load, parse_floats
    from memcim.io import emit_result, provenance

    if args.monte_carlo < 0 or args.monte_carlo == 1:
        raise ValueError(f"--monte-carlo: {args.monte_carlo} is not allowed; use 0 (off) or >= 2 trials")
    if args.preset is not None or args.config is not None:
        return _run_hardware(args)
    if args.sigma is None:
        raise ValueError("--sigma: required (or give --preset/--config)")
    if args.gmax is None and args.gmax_per_layer is None:
        raise ValueError("--gmax: required, or --gmax-per-layer (or give --preset/--config)")
    if args.calib is not None:
        raise ValueError("--calib: only with --preset or --config (MemSE's crossbar has no ADC)")
    model, x, labels = load(args)
    args.levels = 128 if args.levels is None else args.levels
    gmax = args.gmax if args.gmax is not None else parse_floats(args.gmax_per_layer, "--gmax-per-layer")
    if args.gmax is not None and not args.gmax > 0:
        raise ValueError(f"--gmax: {args.gmax} is not allowed; must be > 0 S")
    t0 = time.perf_counter()
    pred = predict_mse(model, x, sigma=args.sigma, gmax=gmax, levels=args.levels, cov=args.cov, r=args.r,
                       act_method=args.act_method, taylor_order=args.taylor_order)
    pd = pred.to_dict()
    pd["wall_s"] = time.perf_counter() - t0
    out = {"predicted": pd}
    if args.monte_carlo:
        from memcim.analysis.memse_sim import monte_carlo_simulator

        mc = monte_carlo_simulator(model, x, sigma=args.sigma, gmax=gmax, levels=args.levels,
                                   trials=args.monte_carlo, seed=args.seed, labels=labels, power=True)
        out["monte_carlo"] = mc.to_dict()
    out["config"] = {"model": str(args.model), "inputs": str(args.inputs), "batch": int(x.shape[0]),
                     "sigma": args.sigma, "gmax": gmax, "levels": args.levels, "cov": args.cov, "r": args.r,
                     "monte_carlo": args.monte_carlo}
    out["provenance"] = provenance(seed=args.seed)
    if not emit_result(out, out=args.out, name="mse", as_json=args.json):
        _print(out, "predicted",
               f"power: read power per input of the devices and the TIA feedback resistors in paper 001's normalised "
               f"units (G in S, inputs in V, r = {args.r:g} Ohm, levels from 0 S): watts of those units, not of a "
               "real chip; use --preset/--config for a physical design")
    return 0


def _print(out: dict, head: str, power_note: str) -> None:
    """The human-readable result: the prediction, the Monte Carlo if run, and what the power means."""
    pd = out["predicted"]
    print(f"{head}: mse_mean={pd['mse_mean']:.6g} mse_max={pd['mse_max']:.6g} "
          f"power={_watts(pd['power']['total_W'])} ({pd['wall_s'] * 1e3:.1f} ms)")
    if "monte_carlo" in out:
        m = out["monte_carlo"]
        extra = f" accuracy={m['accuracy']:.4f}" if "accuracy" in m else ""
        if "mse_max" in m:
            extra += f" mse_max={m['mse_max']:.6g}"
        print(f"monte carlo, simulator ({m['trials']} chips): mse_mean={m['mse_mean']:.6g} "
              f"± {m['mse_mean_stderr']:.2g}{extra} power={_watts(m['power']['total_W'])} ({m['wall_s']:.2f} s)")
    print(power_note)


def _watts(p: float) -> str:
    """A power with an SI prefix."""
    for k, unit in ((1e9, "GW"), (1e6, "MW"), (1e3, "kW"), (1.0, "W"), (1e-3, "mW"), (1e-6, "uW"), (1e-9, "nW")):
        if abs(p) >= k:
            return f"{p / k:.4g} {unit}"
    return f"{p * 1e12:.4g} pW"


def _hardware(args):
    """The config of --preset/--config, with --sigma/--gmax/--levels applied as MemSE's device."""
    import math

    from memcim.config import HardwareConfig, preset

    flag = "--config" if args.config else "--preset"
    try:
        hw = HardwareConfig.load(args.config) if args.config else preset(args.preset)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None
    if args.gmax_per_layer is not None:
        raise ValueError("--gmax-per-layer: not with --preset/--config (one device per config); use --gmax")
    dev = {}
    if args.sigma is not None:
        dev["prog_sigma_abs"] = float(args.sigma)
    if args.gmax is not None:
        if not (math.isfinite(args.gmax) and args.gmax > 0):
            raise ValueError(f"--gmax: {args.gmax} is not allowed; must be > 0 S")
        dev["g_max"] = hw.device.g_min + float(args.gmax)
    if args.levels is not None:
        dev["levels"] = int(args.levels) + 1
    return hw.replace(device=dev) if dev else hw


@__import__("torch").no_grad()
def _hardware_monte_carlo(model, x, hw, trials: int, seed: int, calib, labels):
    """Per-chip output MSE, accuracy and read power through the simulator, in the one chips loop
    (:func:`memcim.nn.evaluate.chip_outputs`)."""
    import math

    import numpy as np
    import torch

    from memcim.analysis.memse_sim import ReadPowerProbe
    from memcim.nn.evaluate import chip_outputs

    t0 = time.perf_counter()
    ref = model(x)
    probe = ReadPowerProbe(x.shape[0])
    mses, accs, pw = [], [], []
    for _, analog, y in chip_outputs(model, x, hw, chips=trials, seed=seed, calib_data=calib, batch_size=x.shape[0],
                                     dtype=torch.float64, progress=False, on_program=probe):
        mses.append(float(((y - ref) ** 2).mean()))
        pw.append(probe.measure(analog).sum(0))
        if labels is not None:
            accs.append(float((y.argmax(1) == labels).double().mean()))
    m = np.asarray(mses)
    p = np.asarray(pw).mean(0)
    out = {"engine": "simulator", "trials": trials, "mse_mean": float(m.mean()),
           "mse_mean_stderr": float(m.std(ddof=1) / math.sqrt(trials)),
           "power": {"total_W": float(p.sum()), "device_W": float(p[0]), "tia_W": float(p[1])},
           "wall_s": time.perf_counter() - t0}
    if accs:
        out["accuracy"] = float(np.mean(accs))
        out["digital_accuracy"] = float((ref.argmax(1) == labels).double().mean())
    return out


def _run_hardware(args) -> int:
    from memcim.analysis.predict import predict
    from memcim.commands._memse_common import check_fits, load, load_inputs
    from memcim.io import emit_result, provenance

    hw = _hardware(args)
    model, x, labels = load(args)
    calib = None
    if args.calib is not None:
        calib, _ = load_inputs(args.calib, "--calib", "train")
        check_fits(model, calib.double(), "--calib")
        calib = calib.double()
    t0 = time.perf_counter()
    pred = predict(model, x.double(), hw, calib_data=calib, cov=args.cov, act_method=args.act_method,
                   taylor_order=args.taylor_order, power=True)
    pd = pred.to_dict()
    pd["wall_s"] = time.perf_counter() - t0
    out = {"predicted": pd}
    if args.monte_carlo:
        out["monte_carlo"] = _hardware_monte_carlo(model, x.double(), hw, args.monte_carlo, args.seed, calib, labels)
    out["config"] = {"model": str(args.model), "inputs": str(args.inputs), "batch": int(x.shape[0]),
                     "hardware": hw.to_dict(), "calib": args.calib, "cov": args.cov,
                     "monte_carlo": args.monte_carlo}
    out["provenance"] = provenance(seed=args.seed)
    if not emit_result(out, out=args.out, name="mse", as_json=args.json):
        _print(out, f"predicted ({hw.name})",
               f"power: read power per input of the devices and the TIA feedback resistors of this config "
               f"(v_read = {hw.array.v_read:g} V, r_tia = {hw.array.r_tia:g} Ohm, levels from g_min = "
               f"{hw.device.g_min:g} S, {'its' if hw.dac.x_range is None else 'x_range'} input scale), "
               "each read lasting one time unit")
    return 0
