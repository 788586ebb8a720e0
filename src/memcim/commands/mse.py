"""``memcim mse``: predicted (and optionally Monte Carlo) output MSE and power of a model on crossbars."""
from __future__ import annotations

import sys
import time


def register(sub) -> None:
    from memcim.commands._memse_common import add_model_args

    p = sub.add_parser("mse", help="fast analytic output MSE and power of a network on noisy crossbars (MemSE)",
                       description="Predict, by moment propagation (paper 001), the output MSE of a model whose "
                                   "Linear/Conv2d layers run on memristor crossbars with quantization to N+1 levels "
                                   "and programming noise sigma, and the expected device+TIA power. Optionally "
                                   "check it with a Monte Carlo over chips sampled and read by memcim's hardware "
                                   "simulator (and/or the faster vectorised re-implementation).")
    add_model_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--gmax", type=float, help="one G_max for every crossbar layer, S")
    g.add_argument("--gmax-per-layer", help="comma-separated G_max per crossbar layer, S")
    p.add_argument("--monte-carlo", type=int, default=0, metavar="T", help="also run T Monte Carlo chips")
    p.add_argument("--mc-engine", default="both", choices=None, metavar="ENGINE",
                   help="simulator: chips sampled and read by memcim's hardware simulator (memcim.nn / "
                        "memcim.simulate); vectorised: MemSE's semantics re-implemented with trials batched, "
                        "faster, and it measures the power on every chip; both (default)")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (default 0)")
    p.add_argument("--act-method", default="taylor", help="taylor (default) or gh (Gauss-Hermite)")
    p.add_argument("--taylor-order", type=int, default=2, help="even Taylor order (default 2, the paper's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.analysis.memse_mc import monte_carlo
    from memcim.analysis.moments import predict_mse
    from memcim.commands._memse_common import load, parse_floats
    from memcim.io import emit_result, provenance

    if args.monte_carlo < 0 or args.monte_carlo == 1:
        raise ValueError(f"--monte-carlo: {args.monte_carlo} is not allowed; use 0 (off) or >= 2 trials")
    if args.mc_engine not in ("simulator", "vectorised", "both"):
        raise ValueError(f"--mc-engine: {args.mc_engine!r} is not allowed; choose simulator, vectorised or both")
    model, x, labels = load(args)
    gmax = args.gmax if args.gmax is not None else parse_floats(args.gmax_per_layer, "--gmax-per-layer")
    if args.gmax is not None and not args.gmax > 0:
        raise ValueError(f"--gmax: {args.gmax} is not allowed; must be > 0 S")
    t0 = time.perf_counter()
    pred = predict_mse(model, x, sigma=args.sigma, gmax=gmax, levels=args.levels, cov=args.cov, r=args.r,
                       act_method=args.act_method, taylor_order=args.taylor_order)
    pd = pred.to_dict()
    pd["wall_s"] = time.perf_counter() - t0
    out = {"predicted": pd}
    if args.monte_carlo and args.mc_engine in ("simulator", "both"):
        from memcim.analysis.memse_sim import monte_carlo_simulator

        mc = monte_carlo_simulator(model, x, sigma=args.sigma, gmax=gmax, levels=args.levels,
                                   trials=args.monte_carlo, seed=args.seed, labels=labels)
        out["monte_carlo"] = mc.to_dict()
    if args.monte_carlo and args.mc_engine in ("vectorised", "both"):
        mc = monte_carlo(model, x, sigma=args.sigma, gmax=gmax, levels=args.levels, trials=args.monte_carlo,
                         seed=args.seed, power=True, r=args.r, labels=labels)
        out["monte_carlo" if args.mc_engine == "vectorised" else "monte_carlo_vectorised"] = mc.to_dict()
    out["config"] = {"model": str(args.model), "inputs": str(args.inputs), "batch": int(x.shape[0]),
                     "sigma": args.sigma, "gmax": gmax, "levels": args.levels, "cov": args.cov, "r": args.r,
                     "monte_carlo": args.monte_carlo, "mc_engine": args.mc_engine}
    out["provenance"] = provenance(seed=args.seed)
    if not emit_result(out, out=args.out, name="mse", as_json=args.json):
        print(f"predicted: mse_mean={pd['mse_mean']:.6g} mse_max={pd['mse_max']:.6g} "
              f"power={pd['power']['total_W']:.6g} W ({pd['wall_s'] * 1e3:.1f} ms)")
        for key in ("monte_carlo", "monte_carlo_vectorised"):
            if key in out:
                m = out[key]
                engine = m["config"].get("engine", "vectorised")
                pw = f" power={m['power']['total_W']:.6g} W" if m.get("power") else ""
                print(f"monte carlo, {engine} ({m['trials']} chips): mse_mean={m['mse_mean']:.6g} "
                      f"± {m['mse_mean_stderr']:.2g} mse_max={m['mse_max']:.6g}{pw} ({m['wall_s']:.2f} s)")
    return 0
