"""Reproduction of paper 000, Fig. 2: error of the low-rank two-step scheme against the rank k.

A square matrix with the harmonic singular-value profile ``s_i = alpha / i`` is approximated at
rank ``k``; for every ``k`` the repetitions ``(r1, r2)`` are the exact best under the baseline's
device budget ``n^2``. The closed-form error (every feasible ``k``) and a Monte Carlo estimate
(a grid of ``k``) are normalised to the baseline error ``sigma^2 n tr(R)``. The curve is U-shaped:
truncation dominates at small ``k``, accumulated noise at large ``k``; the optimum is marked.

The paper's exact parameters were lost in extraction; the defaults (``n = 256``, full rank,
``alpha = n`` so entries have RMS ~1.3, ``sigma1 = sigma2 = 1``, white inputs) are ours.
"""
from __future__ import annotations

import time

import numpy as np

from memcim.registry import register

__all__ = ["plot_fig2", "run_fig2"]


def _summary(res: dict) -> dict:
    return {"optimal rank k (r1, r2)": f"{res['k_opt']} ({res['r1_opt']}, {res['r2_opt']})",
            "error at the optimum / baseline": res["best_normalized"],
            "improvement over the baseline": res["improvement"],
            "closed form vs Monte Carlo, max abs rel. diff": res["max_abs_rel_diff"]}


@register("000/fig2", title="low-rank two-step scheme: error vs rank k, closed form and Monte Carlo",
          plot=lambda r, png: plot_fig2(r, png), summary=_summary,
          quick={"size": 128, "trials": 300, "n_points": 8},
          reference={"optimal rank k (r1, r2)": "U-shape, interior optimal rank",
                     "error at the optimum / baseline": "< 1 (low rank wins)",
                     "improvement over the baseline": "> 1",
                     "closed form vs Monte Carlo, max abs rel. diff": "(not reported)"})
def run_fig2(size: int = 256, matrix_rank: int | None = None, alpha: float | None = None, sigma: float = 1.0,
             split: str = "balanced", trials: int = 1000, batch: int = 32, n_points: int = 14, seed: int = 0,
             progress: bool = False) -> dict:
    """Compute the Fig. 2 data.

    Parameters
    ----------
    size : n = m. matrix_rank : rank of W (default n). alpha : profile scale (default n).
    sigma : noise std per entry on both steps and the baseline (weight units).
    split : singular-value split of the factors.
    trials : Monte Carlo trials per k (0 skips). batch : Gaussian inputs per trial (R = I).
    n_points : number of k values (geometric grid plus the optimum) checked by Monte Carlo.
    seed : seed of the matrix and the Monte Carlo.

    Returns
    -------
    dict with ``k`` (every feasible rank), ``r1``, ``r2``, ``normalized`` (closed form / baseline),
    the terms, ``mc`` (grid of k with normalised mean and stderr), ``k_opt``, ``best_normalized``.
    """
    from memcim import validate
    from memcim.analysis.lowrank import (
        baseline_error,
        factorize,
        harmonic_matrix,
        svd_stats,
    )
    from memcim.analysis.lowrank_montecarlo import mc_baseline, mc_lowrank
    from memcim.io import provenance
    from memcim.optimize.lowrank import best_reps_per_k

    size = validate.integer("size", size, lo=2, hi=4096)
    sigma = validate.number("sigma", sigma, lo=0.0, lo_open=True)
    trials = validate.integer("trials", trials, lo=0)
    n_points = validate.integer("n_points", n_points, lo=1)
    if matrix_rank is not None:
        matrix_rank = validate.integer("matrix_rank", matrix_rank, lo=1, hi=size)
    if alpha is not None:
        alpha = validate.number("alpha", alpha, lo=0.0, lo_open=True)
    split = validate.choice("split", split, ("balanced", "left", "right"))
    t0 = time.perf_counter()
    W = harmonic_matrix(size, size, rank=matrix_rank, alpha=alpha, seed=seed)
    st = svd_stats(W)
    n = m = size
    base = baseline_error(n, m, sigma, trR=st.trR)
    per_k = best_reps_per_k(st, sigma, sigma, split, n * m)
    if per_k["k"].size == 0:
        raise ValueError(f"size: {size} admits no rank under the budget n^2")
    norm = per_k["error"] / base
    i_opt = int(np.argmin(norm))
    k_all = per_k["k"]
    grid = np.unique(np.round(np.geomspace(1, k_all[-1], n_points)).astype(int))
    grid = np.unique(np.concatenate([grid, [k_all[i_opt]]]))
    grid = grid[np.isin(grid, k_all)]
    mc = []
    if trials > 0:
        from tqdm import tqdm

        mb = mc_baseline(W, sigma, trials=trials, batch=batch, seed=seed + 1)
        for k in tqdm(grid, desc="fig2 Monte Carlo", disable=not progress):
            j = int(np.searchsorted(k_all, k))
            A, B = factorize(st, int(k), split)
            r = mc_lowrank(W, A, B, int(per_k["r1"][j]), int(per_k["r2"][j]), sigma, sigma, trials=trials,
                           batch=batch, seed=seed + 2 + int(k))
            mc.append({"k": int(k), "r1": int(per_k["r1"][j]), "r2": int(per_k["r2"][j]),
                       "predicted": float(per_k["error"][j]), "mean": r.mean, "stderr": r.stderr,
                       "normalized": r.mean / base, "normalized_stderr": r.stderr / base,
                       "rel_diff": (r.mean - per_k["error"][j]) / per_k["error"][j]})
        baseline_mc = mb.to_dict()
    else:
        baseline_mc = None
    return {
        "config": {"size": size, "matrix_rank": matrix_rank or size, "alpha": alpha or float(size),
                   "sigma1": sigma, "sigma2": sigma, "split": split, "budget": n * m, "trials": trials,
                   "batch": batch, "inputs": "white Gaussian, R = I", "seed": seed},
        "baseline": {"predicted": base, "monte_carlo": baseline_mc},
        "k": k_all, "r1": per_k["r1"], "r2": per_k["r2"], "normalized": norm,
        "terms_normalized": {t: per_k[t] / base for t in ("truncation", "first_step", "second_step", "product")},
        "k_opt": int(k_all[i_opt]), "r1_opt": int(per_k["r1"][i_opt]), "r2_opt": int(per_k["r2"][i_opt]),
        "best_normalized": float(norm[i_opt]), "improvement": float(1.0 / norm[i_opt]),
        "mc": mc, "max_abs_rel_diff": max((abs(p["rel_diff"]) for p in mc), default=None),
        "seconds": time.perf_counter() - t0, "provenance": provenance(seed=seed),
    }


def plot_fig2(res: dict, path) -> None:
    """Write the Fig. 2 PNG: normalised error vs k, closed form and Monte Carlo, optimum marked."""
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    k = np.asarray(res["k"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(k, res["normalized"], "-", color="C0", lw=2, label="low-rank, closed form")
    styles = {"truncation": ("C1", ":"), "first_step": ("C4", "--"), "second_step": ("C5", "-."),
              "product": ("C7", ":")}
    for t, (col, ls) in styles.items():
        ax.plot(k, res["terms_normalized"][t], ls=ls, color=col, lw=1, label=f"  term: {t}")
    if res["mc"]:
        ax.errorbar([p["k"] for p in res["mc"]], [p["normalized"] for p in res["mc"]],
                    yerr=[4 * p["normalized_stderr"] for p in res["mc"]], fmt="o", ms=4, color="C3",
                    label=f"low-rank, Monte Carlo ({res['config']['trials']} trials)")
    ax.axhline(1.0, color="k", lw=1.5, label="baseline (normalised to 1)")
    ax.plot([res["k_opt"]], [res["best_normalized"]], "*", ms=14, color="C2",
            label=f"optimum k={res['k_opt']} (r1={res['r1_opt']}, r2={res['r2_opt']}): "
                  f"{res['best_normalized']:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(max(1e-3, 0.1 * float(np.min(res["normalized"]))), 3 * float(np.max(res["normalized"])))
    c = res["config"]
    ax.set_xlabel("rank k (repetitions r1, r2: best under budget n^2)")
    ax.set_ylabel("E||y_hat - y||^2 / baseline")
    ax.set_title(f"Fig. 2: n={c['size']}, rank {c['matrix_rank']}, s_i={c['alpha']:g}/i, "
                 f"sigma={c['sigma1']:g}, {c['split']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    savefig(fig, path)
