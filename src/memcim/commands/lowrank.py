"""``memcim lowrank``: predict (and Monte-Carlo check) the low-rank two-step scheme of paper 000.

Examples
--------
    memcim lowrank --profile harmonic --size 256 --sigma 1.0 --optimize --json
    memcim lowrank --matrix W.npy --inputs X.npy --sigma 0.3 --rank 8 --reps 4 3 --split left --json
"""
from __future__ import annotations

import math
import sys


DESCRIPTION = """Compute y = x W as x A B with A B the truncated SVD of W, each factor programmed r1 / r2
times and the outputs averaged (paper 000). Prints the closed-form expected squared output error
E||y_hat - y||^2 (per input vector, additive N(0, sigma^2) noise per programmed entry, weight
units) of this scheme and of the baseline (W programmed once), each checked by Monte Carlo, and the
devices each uses. --optimize picks the rank, repetitions and split under a device budget."""


def register(sub):
    p = sub.add_parser("lowrank", help="low-rank two-step VMM with repetition averaging (paper 000)",
                       description=DESCRIPTION)
    src = p.add_argument_group("matrix (one of)")
    src.add_argument("--matrix", metavar="W.npy", help="target matrix W (n inputs x m outputs), .npy/.npz/.csv")
    src.add_argument("--profile", choices=["harmonic"], help="generate W with singular values alpha/i")
    src.add_argument("--size", type=int, help="n = m of the generated matrix")
    src.add_argument("--matrix-rank", type=int, help="rank of the generated matrix (default: --size)")
    src.add_argument("--alpha", type=float, help="scale alpha of s_i = alpha/i (default: --size)")
    src.add_argument("--matrix-seed", type=int, default=0, help="seed of the generated matrix (default 0)")
    inp = p.add_argument_group("inputs (default: white, R = I)")
    inp.add_argument("--inputs", metavar="X.npy", help="input rows X (N, n): R = X^T X / N; the Monte Carlo "
                     "draws --batch rows per trial")
    inp.add_argument("--second-moment", metavar="R.npy", help="input second moment R = E[x^T x] (n, n)")
    p.add_argument("--sigma", type=float, help="noise std per programmed entry (weight units); baseline and "
                   "both steps unless --sigma1/--sigma2")
    p.add_argument("--sigma1", type=float, help="noise std on the A (first-step) arrays")
    p.add_argument("--sigma2", type=float, help="noise std on the B (second-step) arrays")
    p.add_argument("--rank", type=int, help="rank k of the approximation")
    p.add_argument("--reps", type=int, nargs=2, metavar=("R1", "R2"), help="repetitions of the two steps")
    p.add_argument("--split", default=None, choices=["balanced", "left", "right"],
                   help="singular values: sqrt on each side (balanced, default), in A (left) or in B (right)")
    p.add_argument("--optimize", action="store_true", help="choose k, r1, r2 and the split (exact search)")
    p.add_argument("--budget", type=int, help="device budget r1 n k + r2 k m <= B (default n m)")
    p.add_argument("--trials", type=int, default=500, help="Monte Carlo trials (0 skips; default 500)")
    p.add_argument("--batch", type=int, default=32, help="input vectors per Monte Carlo trial (default 32)")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="DIR", help="write lowrank.json and lowrank.png into DIR")
    p.set_defaults(func=run)


def _finite(v, name, positive=False):
    if v is None:
        return None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name}: {v} is not allowed; must be finite and {'> 0' if positive else '>= 0'}")
    return float(v)


def _load_matrix(args):
    from memcim.analysis.lowrank import harmonic_matrix
    from memcim.io import load_array

    if (args.matrix is None) == (args.profile is None):
        raise ValueError("--matrix/--profile: give exactly one of --matrix W.npy or --profile harmonic")
    if args.matrix is not None:
        for opt in ("size", "matrix_rank", "alpha"):
            if getattr(args, opt) is not None:
                raise ValueError(f"--{opt.replace('_', '-')}: only applies to --profile harmonic")
        return load_array(args.matrix, "--matrix", ndim=2), {"matrix": str(args.matrix)}
    if args.size is None or args.size < 2:
        raise ValueError(f"--size: {args.size} is not allowed; --profile harmonic needs --size N >= 2")
    if args.size > 8192:
        raise ValueError(f"--size: {args.size} is not allowed; at most 8192")
    r = args.size if args.matrix_rank is None else args.matrix_rank
    if not 1 <= r <= args.size:
        raise ValueError(f"--matrix-rank: {r} is not allowed; must be 1 <= matrix-rank <= --size = {args.size}")
    alpha = _finite(args.alpha, "--alpha", positive=True)
    W = harmonic_matrix(args.size, args.size, rank=r, alpha=alpha, seed=args.matrix_seed)
    return W, {"profile": "harmonic", "size": args.size, "matrix_rank": r,
               "alpha": float(args.size) if alpha is None else alpha, "matrix_seed": args.matrix_seed}


def compute(args) -> dict:
    """Everything ``memcim lowrank`` prints, as a dict (also used by tests and the docs)."""
    from memcim.analysis.lowrank import (baseline_error, check_second_moment, devices_used, factorize,
                                         lowrank_terms, second_moment, svd_stats)
    from memcim.analysis.lowrank_montecarlo import mc_baseline, mc_lowrank
    from memcim.io import load_array, provenance
    from memcim.optimize.lowrank import optimize_lowrank

    W, wsrc = _load_matrix(args)
    n, m = W.shape
    p = min(n, m)
    sigma = _finite(args.sigma, "--sigma")
    s1 = _finite(args.sigma1, "--sigma1")
    s2 = _finite(args.sigma2, "--sigma2")
    if sigma is None and (s1 is None or s2 is None):
        raise ValueError("--sigma: required unless both --sigma1 and --sigma2 are given")
    s1 = sigma if s1 is None else s1
    s2 = sigma if s2 is None else s2
    s_base = sigma if sigma is not None else s1
    if args.trials < 0:
        raise ValueError(f"--trials: {args.trials} is not allowed; must be >= 0 (0 skips the Monte Carlo)")
    if args.batch < 1:
        raise ValueError(f"--batch: {args.batch} is not allowed; must be >= 1")
    X = R = None
    if args.inputs is not None and args.second_moment is not None:
        raise ValueError("--inputs/--second-moment: give at most one")
    if args.inputs is not None:
        X = load_array(args.inputs, "--inputs", ndim=2)
        if X.shape[1] != n:
            raise ValueError(f"--inputs: {X.shape[1]} columns do not match the matrix's {n} rows (inputs)")
        R = second_moment(X)
    elif args.second_moment is not None:
        R = check_second_moment(load_array(args.second_moment, "--second-moment", ndim=2), n, "--second-moment")
    st = svd_stats(W, R)

    if args.optimize:
        for opt, val in (("--rank", args.rank), ("--reps", args.reps)):
            if val is not None:
                raise ValueError(f"{opt}: not allowed with --optimize (the optimizer chooses it)")
        if args.budget is not None and args.budget < n + m:
            raise ValueError(f"--budget: {args.budget} fits no scheme; the smallest (k = r1 = r2 = 1) needs "
                             f"n + m = {n + m} devices")
        splits = (args.split,) if args.split else ("balanced", "left", "right")
        choice = optimize_lowrank(st, s1, s2, budget=args.budget, splits=splits)
        k, r1, r2, split = choice.k, choice.r1, choice.r2, choice.split
        budget = choice.budget
    else:
        if args.rank is None or args.reps is None:
            raise ValueError("--rank/--reps: give --rank K and --reps R1 R2, or --optimize")
        if not 1 <= args.rank <= p:
            raise ValueError(f"--rank: {args.rank} is not allowed; must be 1 <= rank <= min(n, m) = {p}")
        r1, r2 = args.reps
        if r1 < 1 or r2 < 1:
            raise ValueError(f"--reps: {r1} {r2} is not allowed; both repetitions must be >= 1")
        k, split = args.rank, args.split or "balanced"
        budget = args.budget
        if budget is not None and devices_used(n, m, k, r1, r2) > budget:
            raise ValueError(f"--budget: {budget} is exceeded: rank {k}, reps {r1} {r2} use "
                             f"{devices_used(n, m, k, r1, r2)} devices")
    terms = lowrank_terms(st, k, r1, r2, s1, s2, split)
    base = baseline_error(n, m, s_base, trR=st.trR)
    out = {"shape": [n, m], "k": k, "r1": r1, "r2": r2, "split": split,
           "sigma": s_base, "sigma1": s1, "sigma2": s2,
           "devices": {"lowrank": devices_used(n, m, k, r1, r2), "baseline": n * m, "budget": budget},
           "baseline": {"predicted": base, "monte_carlo": None},
           "lowrank": {"predicted": terms.total, "monte_carlo": None, "terms": terms.to_dict()},
           "improvement_predicted": base / terms.total if terms.total > 0 else None,
           "inputs": "data" if X is not None else ("second_moment" if R is not None else "white (R = I)")}
    if args.optimize:
        out["optimizer"] = {"candidates": choice.candidates}
    if args.trials > 0:
        A, B = factorize(st, k, split)
        kw = dict(trials=args.trials, X=X, R=R if X is None else None, batch=args.batch)
        mb = mc_baseline(W, s_base, seed=args.seed, **kw)
        ml = mc_lowrank(W, A, B, r1, r2, s1, s2, seed=args.seed + 1, **kw)
        out["baseline"]["monte_carlo"] = mb.to_dict()
        out["lowrank"]["monte_carlo"] = ml.to_dict()
    out["config"] = {**wsrc, "trials": args.trials, "batch": args.batch, "optimize": bool(args.optimize)}
    out["provenance"] = provenance(seed=args.seed)
    return out


def _plot(out, path):
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    t = out["lowrank"]["terms"]
    names = ["truncation", "first_step", "second_step", "product"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = 0.0
    for nm in names:
        ax.bar(["low-rank"], [t[nm]], bottom=bottom, label=nm)
        bottom += t[nm]
    ax.bar(["baseline"], [out["baseline"]["predicted"]], color="k", label="baseline")
    for i, key in enumerate(["lowrank", "baseline"]):
        mc = out[key]["monte_carlo"]
        if mc:
            ax.errorbar([1 - i], [mc["mean"]], yerr=[4 * mc["stderr"]], fmt="o", color="r",
                        label="Monte Carlo" if i == 0 else None)
    ax.set_ylabel("E||y_hat - y||^2 per input")
    ax.set_title(f"k={out['k']}, r1={out['r1']}, r2={out['r2']}, {out['split']}")
    ax.legend(fontsize=7)
    savefig(fig, path)


def run(args) -> int:
    from memcim.io import emit_result

    out = compute(args)
    if not emit_result(out, out=args.out, name="lowrank", as_json=args.json, plot=_plot):
        b, lr = out["baseline"], out["lowrank"]
        print(f"W {out['shape'][0]}x{out['shape'][1]}  k={out['k']} r1={out['r1']} r2={out['r2']} "
              f"split={out['split']}  devices {out['devices']['lowrank']} (baseline {out['devices']['baseline']})")
        for name, d in (("baseline", b), ("low-rank", lr)):
            mc = d["monte_carlo"]
            mcs = f"  MC {mc['mean']:.6g} +- {mc['stderr']:.2g}" if mc else ""
            print(f"  {name:9s} predicted {d['predicted']:.6g}{mcs}")
        print("  terms: " + ", ".join(f"{k}={v:.4g}" for k, v in lr["terms"].items()))
        if out["improvement_predicted"]:
            print(f"  baseline / low-rank = {out['improvement_predicted']:.3f}", file=sys.stdout)
    return 0
