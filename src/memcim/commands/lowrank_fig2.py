"""``memcim lowrank-fig2``: reproduce paper 000's Fig. 2 (error vs rank, closed form and Monte Carlo)."""
from __future__ import annotations

import sys


def register(sub):
    p = sub.add_parser("lowrank-fig2", help="paper 000 Fig. 2: low-rank error vs k (closed form + Monte Carlo)",
                       description="Error of the low-rank two-step scheme against the rank k for a harmonic "
                       "matrix, normalised to the baseline, closed form and Monte Carlo; writes "
                       "lowrank_fig2.json and lowrank_fig2.png into --out.")
    p.add_argument("--out", metavar="DIR", help="output directory (JSON + PNG)")
    p.add_argument("--size", type=int, default=256, help="n = m (default 256)")
    p.add_argument("--matrix-rank", type=int, help="rank of W (default n)")
    p.add_argument("--alpha", type=float, help="s_i = alpha / i (default n)")
    p.add_argument("--sigma", type=float, default=1.0, help="noise std per entry, weight units (default 1)")
    p.add_argument("--split", default="balanced", choices=["balanced", "left", "right"])
    p.add_argument("--trials", type=int, default=1000, help="Monte Carlo trials per k (default 1000)")
    p.add_argument("--points", type=int, default=14, help="k values checked by Monte Carlo (default 14)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.experiments.lowrank_fig2 import plot_fig2, run_fig2
    from memcim.io import emit_result, require_output

    require_output(args)
    if args.matrix_rank is not None and not 1 <= args.matrix_rank <= args.size:
        raise ValueError(f"--matrix-rank: {args.matrix_rank} is not allowed; must be 1 <= matrix-rank <= "
                         f"--size = {args.size}")
    if args.alpha is not None and not args.alpha > 0:
        raise ValueError(f"--alpha: {args.alpha} is not allowed; must be > 0")
    res = run_fig2(size=args.size, matrix_rank=args.matrix_rank, alpha=args.alpha, sigma=args.sigma,
                   split=args.split, trials=args.trials, n_points=args.points, seed=args.seed,
                   progress=sys.stderr.isatty())
    if not emit_result(res, out=args.out, name="lowrank_fig2", as_json=args.json, plot=plot_fig2):
        print(f"optimal k = {res['k_opt']} (r1 = {res['r1_opt']}, r2 = {res['r2_opt']}): error / baseline = "
              f"{res['best_normalized']:.4f} (improvement x{res['improvement']:.2f}); "
              f"Monte Carlo max |rel diff| = {res['max_abs_rel_diff']}; wrote {args.out}")
    return 0
