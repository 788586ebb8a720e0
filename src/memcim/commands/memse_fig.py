"""``memcim memse-fig fig2|fig3|fig4 --out DIR``: the paper-001 (MemSE) figure reproductions."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("memse-fig", help="reproduce MemSE Fig. 2 / 3 / 4 (JSON + PNG)",
                       description="fig2: output MSE vs sigma, predicted and Monte Carlo, with accuracy; "
                                   "fig3: max MSE vs G_max for several sigma; fig4: max-MSE vs power Pareto front "
                                   "(structured optimizer and GA). Models: memcim reference models on MNIST.")
    p.add_argument("figure", help="fig2, fig3 or fig4")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--quick", action="store_true", help="fewer points/trials (smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=None, help="Monte Carlo chips per point")
    p.add_argument("--inputs", type=int, default=None, help="number of MNIST test inputs")
    p.add_argument("--ga-pop", type=int, default=None, help="fig4: GA population (paper: 50)")
    p.add_argument("--ga-gen", type=int, default=None, help="fig4: GA generations (paper: 100)")
    p.add_argument("--budgets", type=int, default=None, help="fig4: number of power budgets")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.experiments import memse_figs as mf

    if args.figure not in ("fig2", "fig3", "fig4"):
        raise ValueError(f"figure: {args.figure!r} is not allowed; choose fig2, fig3 or fig4")
    if args.trials is not None and args.trials < 2:
        raise ValueError(f"--trials: {args.trials} is not allowed; must be >= 2")
    if args.inputs is not None and args.inputs < 1:
        raise ValueError(f"--inputs: {args.inputs} is not allowed; must be >= 1")
    for name in ("ga_pop", "ga_gen", "budgets"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: {v} is not allowed; must be >= 1")
        if v is not None and args.figure != "fig4":
            raise ValueError(f"--{name.replace('_', '-')}: only applies to fig4")
    kw = {"seed": args.seed, "quick": args.quick}
    if args.inputs:
        kw["n_inputs"] = args.inputs
    if args.figure == "fig2":
        kw["trials"] = args.trials or (50 if args.quick else 200)
        res = mf.fig2(args.out, **kw)
    elif args.figure == "fig3":
        kw["trials"] = args.trials or (30 if args.quick else 100)
        res = mf.fig3(args.out, **kw)
    else:
        if args.trials:
            kw["mc_trials"] = args.trials
        for name, key in (("ga_pop", "pop_size"), ("ga_gen", "n_gen"), ("budgets", "n_budgets")):
            if getattr(args, name) is not None:
                kw[key] = getattr(args, name)
        res = mf.fig4(args.out, **kw)
    print(f"wrote {args.out}/memse_{args.figure}.json and .png ({len(res['rows'])} rows)")
    return 0
