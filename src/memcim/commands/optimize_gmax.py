"""``memcim optimize-gmax``: choose G_max per network/layer/column under an expected-power budget."""
from __future__ import annotations


def register(sub) -> None:
    from memcim.commands._memse_common import add_model_args

    p = sub.add_parser("optimize-gmax", help="minimise the predicted output MSE under a power budget over G_max",
                       description="Solve min max-(or mean-)MSE s.t. expected power <= budget (paper 001, Eq. 22) "
                                   "over one G_max per network, per crossbar layer or per column, with the "
                                   "structured solver (bisection + SLSQP in log G_max with exact gradients) and/or "
                                   "the paper's genetic algorithm (pymoo).")
    add_model_args(p)
    p.add_argument("--power-budget", type=float, required=True, help="expected power budget, W")
    p.add_argument("--granularity", default="layer", help="network, layer (default) or column")
    p.add_argument("--objective", default="max", help="max (default: mean over inputs of max over outputs) or mean")
    p.add_argument("--method", default="structured", help="structured (default), ga, or both")
    p.add_argument("--gmax-bounds", default=None, help="lo,hi G_max range in S (default 10*sigma,1e4*sigma)")
    p.add_argument("--pop-size", type=int, default=50, help="GA population (default 50, the paper's)")
    p.add_argument("--generations", type=int, default=100, help="GA generations (default 100, the paper's)")
    p.add_argument("--seed", type=int, default=0, help="GA seed (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.commands._memse_common import load, parse_floats
    from memcim.io import emit_result, provenance
    from memcim.optimize.gmax import GmaxProblem, optimize_gmax, time_to_reach

    if args.method not in ("structured", "ga", "both"):
        raise ValueError(f"--method: {args.method!r} is not allowed; choose structured, ga or both")
    if args.pop_size < 2 or args.generations < 1:
        raise ValueError(f"--pop-size/--generations: {args.pop_size}/{args.generations} not allowed; need >= 2 and >= 1")
    bounds = None
    if args.gmax_bounds:
        b = parse_floats(args.gmax_bounds, "--gmax-bounds")
        if len(b) != 2:
            raise ValueError(f"--gmax-bounds: {args.gmax_bounds!r} must be two numbers lo,hi")
        bounds = tuple(b)
    model, x, _ = load(args)
    args.levels = 128 if args.levels is None else args.levels
    prob = GmaxProblem(model, x, sigma=args.sigma, levels=args.levels, granularity=args.granularity,
                       objective=args.objective, cov=args.cov, r=args.r, bounds=bounds)
    methods = ["structured", "ga"] if args.method == "both" else [args.method]
    results = {}
    for m in methods:
        results[m] = optimize_gmax(None, None, sigma=args.sigma, power_budget=args.power_budget, method=m,
                                   problem=prob, pop_size=args.pop_size, n_gen=args.generations,
                                   seed=args.seed).to_dict()
    if len(methods) == 2:
        results["ga"]["time_to_structured_optimum_s"] = time_to_reach(results["ga"]["history"],
                                                                      results["structured"]["objective_mse"])
    out = {"results": results, "config": {"model": str(args.model), "inputs": str(args.inputs), "sigma": args.sigma,
                                          "levels": args.levels, "power_budget_W": args.power_budget,
                                          "granularity": args.granularity, "objective": args.objective,
                                          "bounds": prob.bounds, "cov": args.cov},
           "provenance": provenance(seed=args.seed)}
    if not emit_result(out, out=args.out, name="optimize_gmax", as_json=args.json):
        for m, r in results.items():
            print(f"{m}: {args.objective} MSE {r['objective_mse']:.6g} at {r['power_W']:.6g} W "
                  f"(budget {args.power_budget:.6g} W) in {r['wall_s']:.2f} s, G_max = {r['gmax']}")
    return 0
