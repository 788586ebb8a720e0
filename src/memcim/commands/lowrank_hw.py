"""``memcim lowrank-hw``: the low-rank two-step scheme through the hardware simulator vs the additive theory."""
from __future__ import annotations


def register(sub):
    p = sub.add_parser("lowrank-hw", help="low-rank scheme on simulated hardware vs the additive-noise theory",
                       description="Run the baseline and the low-rank two-step scheme (paper 000) through the "
                       "crossbar simulator for a ladder of hardware configurations (programming noise only -> "
                       "quantized levels -> DAC/ADC -> realistic preset) and compare the Monte Carlo error with "
                       "the additive-noise prediction. Writes lowrank_hw.json and lowrank_hw.png into --out.")
    p.add_argument("--out", metavar="DIR", help="output directory")
    p.add_argument("--size", type=int, default=64, help="n = m of the harmonic matrix (default 64)")
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8, 16], help="ranks to run (default 2 4 8 16)")
    p.add_argument("--sigma-abs", type=float, default=3e-6, help="programming noise std [S] (default 3e-6)")
    p.add_argument("--trials", type=int, default=200, help="programmed systems per point (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.experiments.lowrank_hw import plot_hw, run_hw
    from memcim.io import emit_result, require_output

    require_output(args)
    if not args.sigma_abs >= 0:
        raise ValueError(f"--sigma-abs: {args.sigma_abs} is not allowed; must be >= 0")
    bad = [k for k in args.ranks if not 1 <= k <= args.size]
    if bad:
        raise ValueError(f"--ranks: {bad[0]} is not allowed; must be 1 <= rank <= --size = {args.size}")
    res = run_hw(size=args.size, ranks=tuple(args.ranks), sigma_abs=args.sigma_abs, trials=args.trials,
                 seed=args.seed)
    if not emit_result(res, out=args.out, name="lowrank_hw", as_json=args.json, plot=plot_hw):
        print(f"{'config':18s} {'scheme':9s} {'k':>3s} {'r1':>3s} {'r2':>3s} {'MC':>10s} {'pred':>10s} "
              f"{'pred+q':>10s} {'MC/pred+q':>9s}")
        for r in res["rows"]:
            print(f"{r['config']:18s} {r['scheme']:9s} {str(r['k'] or '-'):>3s} {str(r['r1'] or '-'):>3s} "
                  f"{str(r['r2'] or '-'):>3s} {r['mc']:10.4g} {r['pred_ideal']:10.4g} {r['pred_realized']:10.4g} "
                  f"{r['ratio_realized']:9.3f}")
    return 0
