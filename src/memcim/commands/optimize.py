"""``memcim optimize range|gmax|lowrank``: design optimizers.

* ``optimize range``: globally optimal conductance window and ADC full scale per layer (paper 003,
  convex program, :mod:`memcim.optimize.convex_range`).
* ``optimize gmax``: G_max per network / layer / column under a power budget (paper 001, Eq. 22,
  :mod:`memcim.optimize.gmax`); the budget is in the units ``memcim predict mse`` prints.
* ``optimize lowrank``: rank, repetitions and split of paper 000's two-step scheme under a device
  budget.
"""
from __future__ import annotations

from memcim import validate
from memcim.commands import _shared as sh
from memcim.commands import predict as pr


def register(sub) -> None:
    p = sub.add_parser("optimize", help="design optimizers: conductance window and ADC range (range), G_max under "
                                        "a power budget (gmax), low-rank scheme under a device budget (lowrank)",
                       description="Design optimizers: optimize range (paper 003), optimize gmax (paper 001), "
                                   "optimize lowrank (paper 000).")
    ps = p.add_subparsers(dest="what", metavar="WHAT", parser_class=type(p))
    _register_range(ps)
    _register_gmax(ps)
    pr._register_lowrank(ps, optimize=True)


# ============================================================================ optimize range
def _register_range(ps) -> None:
    p = ps.add_parser(
        "range", help="globally optimal [G_min, G_max] and ADC full scale per layer (convex program, paper 003)",
        description="For every Linear layer of --model, solve the convex program of paper 003 for the conductance "
                    "window and the ADC full scale that minimise the closed-form output error (then the read power "
                    "within --slack of it), and report the design, the predicted error by term, the improvement "
                    "against the naive mapping (full window, FS = largest possible output) and the solve time.")
    sh.add_model(p)
    sh.add_data(p, default="mnist:train:2000", calib=False)
    sh.add_inputs(p, "model inputs X (N, ...) .npy/.npz/.csv for the layers' input statistics (instead of --data)")
    sh.add_hw(p, default="convex_cim")
    p.add_argument("--per-column", action="store_true", help="one FS per array column instead of one per layer")
    p.add_argument("--solver", default="cvxpy", choices=("cvxpy", "fast"),
                   help="solver: cvxpy (default) or fast (closed-form line search)")
    p.add_argument("--slack", type=float, default=0.05,
                   help="accept this fraction more MSE than the least for less read power (default 0.05)")
    p.add_argument("--snr-db", type=float, default=None,
                   help="required output SNR [dB]: minimise read power subject to it")
    p.add_argument("--onoff-max", type=float, default=None, help="largest G_max/G_min ratio of the device")
    p.add_argument("--min-window", type=float, default=None, help="smallest G_max - G_min [S]")
    p.add_argument("--power-max", type=float, default=None, help="read-power budget per layer [W]")
    p.add_argument("--saturation", default="gaussian", choices=("gaussian", "empirical"),
                   help="output model of the saturation term (default gaussian)")
    sh.add_out(p)
    p.set_defaults(func=run_range)


def compute_range(args) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from memcim.analysis.column_error import InputStats, LayerErrorModel
    from memcim.experiments.convex_cim import linear_inputs
    from memcim.io import load_array, provenance
    from memcim.optimize.convex_range import DesignLimits, optimize_layer

    hw = sh.hardware(args, default="convex_cim")
    limits = DesignLimits(onoff_max=args.onoff_max, min_window=args.min_window, power_max=args.power_max,
                          snr_db=args.snr_db, slack=args.slack)
    if args.inputs is not None:
        X = torch.from_numpy(load_array(args.inputs, "inputs", ndim=(2, 3, 4))).float()
        src, flag = str(args.inputs), "inputs"
    else:
        X = sh.data(args).x.float()
        src, flag = args.data, "data"
    model = sh.model(args, tuple(X.shape[1:])).eval()
    try:
        acts = linear_inputs(model, X)
    except Exception as e:  # noqa: BLE001 - a shape mismatch between model and inputs
        raise ValueError(f"{flag}: the model does not accept inputs of shape {tuple(X.shape)} "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    layers = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        W = mod.weight.detach().double().numpy().T
        lm = LayerErrorModel(W, hw, InputStats.from_samples(acts[name], hw, name=f"{flag} (layer {name})"),
                             saturation=args.saturation)
        try:
            r = optimize_layer(lm, limits, per_column=args.per_column, method=args.solver)
        except ValueError as e:
            raise ValueError(f"layer {name}: {e}") from None
        d = r.to_dict()
        d["layer"] = name
        d["shape"] = list(W.shape)
        d["signal_power"] = lm.signal_power(per="layer")
        d["snr_db"] = float(10 * np.log10(d["signal_power"] / r.terms["total"]))
        layers.append(d)
    skipped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return {"command": "optimize range", "model": str(args.model), "inputs": src, "hw": hw.to_dict(),
            "limits": limits.__dict__, "per_column": args.per_column, "method": args.solver, "layers": layers,
            "skipped_conv_layers": skipped, "units": "MSE in the units of each layer's output (x W); power in W",
            "config": {"model": str(args.model), "inputs": src, "normalize": args.normalize, "hw": hw.name},
            "provenance": provenance()}


def _text_range(doc: dict) -> str:
    import numpy as np

    hw = doc["hw"]
    lines = [(f"{doc['model']} on {hw.get('name')!r} ({hw['adc']['bits']}-bit ADC), method {doc['method']}"
             f"{', per column' if doc['per_column'] else ''}"),
             (f"{'layer':8s} {'G_min uS':>9s} {'G_max uS':>9s} {'FS V':>9s} {'MSE':>10s} {'naive MSE':>10s} "
             f"{'improv.':>8s} {'SNR dB':>7s} {'solve ms':>9s}")]
    for d in doc["layers"]:
        fs = float(np.max(d["fs_volts"]))
        lines.append(f"{d['layer']:8s} {d['g_min'] * 1e6:9.3f} {d['g_max'] * 1e6:9.3f} {fs:9.4g} "
                     f"{d['predicted_mse']['total']:10.4g} {d['naive_mse']['total']:10.4g} "
                     f"{100 * d['mse_improvement_vs_naive']:7.1f}% {d['snr_db']:7.2f} {1e3 * d['solve_seconds']:9.1f}")
        terms = ", ".join(f"{k} {v:.3g}" for k, v in d["predicted_mse"].items() if k != "total" and v > 0)
        lines.append(f"         by term: {terms}")
    if doc["skipped_conv_layers"]:
        lines.append(f"skipped (Conv2d, not covered by the column model): {', '.join(doc['skipped_conv_layers'])}")
    return "\n".join(lines)


def _plot_range(doc: dict, path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from memcim.io import savefig

    names = [d["layer"] for d in doc["layers"]]
    opt = [d["predicted_mse"]["total"] for d in doc["layers"]]
    naive = [d["naive_mse"]["total"] for d in doc["layers"]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.2))
    ax.bar(x - 0.2, naive, 0.4, label="naive mapping")
    ax.bar(x + 0.2, opt, 0.4, label="optimized range")
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("predicted MSE per output")
    ax.legend(fontsize=8)
    savefig(fig, path)


def run_range(args) -> int:
    doc = compute_range(args)
    return sh.emit(args, "range", doc, plot=_plot_range if doc["layers"] else None, text=_text_range)


# ============================================================================ optimize gmax
def _register_gmax(ps) -> None:
    p = ps.add_parser("gmax", help="minimise the predicted output MSE over G_max under a read-power budget "
                                   "(paper 001, Eq. 22)",
                      description="Solve min max- (or mean-) MSE s.t. expected read power <= --power-budget over "
                                  "one G_max per network, per crossbar layer or per column, with the structured "
                                  "solver (bisection + SLSQP in log G_max with exact gradients) and/or the "
                                  "paper's genetic algorithm (pymoo). The hardware is MemSE's crossbar from --hw "
                                  "(default memse): sigma = device.prog_sigma_abs, N + 1 = device.levels levels "
                                  "over [g_min, g_min + G_max], r_tia, v_read; the power is the one "
                                  "`memcim predict mse` prints for the same --hw (one array per layer: array.rows "
                                  "is raised to the largest fan-in).")
    sh.add_model(p)
    sh.add_data(p, default="mnist:test:64", calib=False)
    sh.add_hw(p, default="memse")
    p.add_argument("--power-budget", type=float, required=True, metavar="P",
                   help="expected read-power budget, in the units `memcim predict mse` prints for this --hw "
                        "(W for a physical config; normalised units for the memse preset)")
    p.add_argument("--granularity", default="layer", choices=("network", "layer", "column"),
                   help="one G_max per network, per crossbar layer (default) or per column")
    p.add_argument("--objective", default="max", choices=("max", "mean"),
                   help="max (default: mean over inputs of the max over outputs) or mean")
    p.add_argument("--solver", default="structured", choices=("structured", "ga", "both"),
                   help="structured (default), ga (pymoo genetic algorithm) or both")
    p.add_argument("--gmax-bounds", default=None, metavar="LO,HI",
                   help="G_max search range in the config's units (default 10 sigma, 1e4 sigma)")
    p.add_argument("--cov", default="lowrank", choices=("lowrank", "exact", "diagonal"),
                   help="covariance kept through the network (default lowrank)")
    p.add_argument("--pop-size", type=int, default=50, metavar="N", help="GA population (default 50, the paper's)")
    p.add_argument("--generations", type=int, default=100, metavar="N",
                   help="GA generations (default 100, the paper's)")
    sh.add_seed(p)
    sh.add_out(p)
    p.set_defaults(func=run_gmax)


def memse_parameters(hw) -> dict:
    """MemSE's (sigma, N, r, v_read, g_offset) of ``hw``; a one-line error when ``hw`` has a
    non-ideality MemSE's closed form (and so the optimizer) does not model."""
    d = hw.device
    bad = [(k, v) for k, v in (("device.prog_sigma_rel", d.prog_sigma_rel), ("device.stuck_at_min", d.stuck_at_min),
                               ("device.stuck_at_max", d.stuck_at_max), ("device.rtn_amplitude", d.rtn_amplitude),
                               ("device.thermal_noise", d.thermal_noise), ("device.shot_noise", d.shot_noise),
                               ("adc.enabled", hw.adc.enabled), ("dac.enabled", hw.dac.enabled),
                               ("device.prog_sigma_table", d.prog_sigma_table)) if v]
    if bad:
        k, v = bad[0]
        raise ValueError(f"hw: {k} = {v} is not modelled by the G_max optimizer (MemSE: levels and programming "
                         "noise only); use --hw memse or --set it off")
    if d.levels is None and d.bits is None:
        raise ValueError("hw: device.levels is not set; MemSE needs N + 1 levels (e.g. --set device.levels=129)")
    levels = d.levels if d.levels is not None else 2 ** d.bits
    if hw.mapping.scheme != "differential":
        raise ValueError("hw: mapping.scheme must be 'differential' for the G_max optimizer")
    if hw.dac.x_range is None:
        raise ValueError("hw: dac.x_range must be set (inputs in volts: --set dac.x_range=1)")
    if not d.prog_sigma_abs > 0:
        raise ValueError("hw: device.prog_sigma_abs must be > 0 for the G_max optimizer")
    return {"sigma": float(d.prog_sigma_abs), "levels": int(levels) - 1, "r": float(hw.array.r_tia),
            "v_read": float(hw.array.v_read) / float(hw.dac.x_range), "g_offset": float(d.g_min)}


def fan_in(model) -> int:
    from torch import nn

    out = 1
    for m in model.modules():
        if isinstance(m, nn.Linear):
            out = max(out, m.in_features)
        elif isinstance(m, nn.Conv2d):
            out = max(out, m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
    return out


def compute_gmax(args) -> dict:
    from memcim.analysis.moments import parse_model
    from memcim.io import provenance
    from memcim.optimize.gmax import GmaxProblem, optimize_gmax, time_to_reach

    validate.integer("pop_size", args.pop_size, lo=2, hi=100_000)
    validate.integer("generations", args.generations, lo=1, hi=100_000)
    validate.number("power_budget", args.power_budget, lo=0, lo_open=True)
    bounds = tuple(validate.floats("gmax_bounds", args.gmax_bounds, n=2)) if args.gmax_bounds else None
    hw = sh.hardware(args, default="memse")
    ms = memse_parameters(hw)
    ds = sh.data(args)
    x = ds.x.double()
    model = sh.model(args, tuple(x.shape[1:])).double().eval()
    parse_model(model)
    rows = max(hw.array.rows, fan_in(model))
    if rows != hw.array.rows:
        hw = hw.set({"array.rows": rows})
    prob = GmaxProblem(model, x, sigma=ms["sigma"], levels=ms["levels"], granularity=args.granularity,
                       objective=args.objective, cov=args.cov, r=ms["r"], bounds=bounds, v_read=ms["v_read"],
                       g_offset=ms["g_offset"])
    methods = ["structured", "ga"] if args.solver == "both" else [args.solver]
    results = {}
    for m in methods:
        results[m] = optimize_gmax(None, None, sigma=ms["sigma"], power_budget=args.power_budget, method=m,
                                   problem=prob, pop_size=args.pop_size, n_gen=args.generations,
                                   seed=args.seed).to_dict()
    if len(methods) == 2:
        results["ga"]["time_to_structured_optimum_s"] = time_to_reach(results["ga"]["history"],
                                                                      results["structured"]["objective_mse"])
    pu = pr.power_units(hw)
    return {"command": "optimize gmax", "results": results, "power_units": pu,
            "config": {"model": str(args.model), "data": args.data, "normalize": args.normalize,
                       "batch": int(x.shape[0]), "hw": hw.to_dict(), "memse": ms, "power_budget": args.power_budget,
                       "granularity": args.granularity, "objective": args.objective, "bounds": prob.bounds,
                       "cov": args.cov, "crossbar_layers": pr.crossbar_names(model)},
            "provenance": provenance(seed=args.seed)}


def _text_gmax(out: dict) -> str:
    pu, cfg = out["power_units"], out["config"]
    u = "W" if not pu["normalised"] else "(normalised)"
    lines = []
    for m, r in out["results"].items():
        g = r["gmax"]
        gs = ", ".join(f"{v:.4g}" if isinstance(v, float) else f"[{len(v)} columns]" for v in g)
        lines.append(f"{m}: {cfg['objective']} MSE {r['objective_mse']:.6g} at power {r['power_W']:.6g} {u} "
                     f"(budget {cfg['power_budget']:.6g} {u}) in {r['wall_s']:.2f} s; G_max = {gs}"
                     f"{'' if r['feasible'] else '  INFEASIBLE'}")
    lines.append("power: " + pu["note"])
    lines.append("check: memcim predict mse --hw ... --set array.rows=" f"{cfg['hw']['array']['rows']} "
                 "--gmax-per-layer <G_max above> prints the same power")
    return "\n".join(lines)


def _plot_gmax(out: dict, path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from memcim.io import savefig

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    names = out["config"]["crossbar_layers"]
    for i, (m, r) in enumerate(out["results"].items()):
        g = [float(np.mean(v)) for v in r["gmax"]]
        if len(g) == 1 and len(names) > 1:
            g = g * len(names)
        ax.plot(np.arange(len(g)), g, "o-", label=f"{m} (mean over columns)" if r["granularity"] == "column" else m)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_xlabel("crossbar layer")
    ax.set_ylabel("G_max (config units)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    savefig(fig, path)


def run_gmax(args) -> int:
    out = compute_gmax(args)
    return sh.emit(args, "gmax", out, plot=_plot_gmax, text=_text_gmax)
