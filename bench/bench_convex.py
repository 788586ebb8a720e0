"""Solve time per layer of the convex window/FS design against a dense grid search (paper 003).

For every Linear layer of the reference MNIST MLP (784-256-128-10) on the convex_cim preset:
the cvxpy program (Clarabel), the fast exact solver, and a dense grid search of the exact closed
form (120 windows x 400 full scales), all at slack 0 (least MSE). Reports the solve times, their
ratios to the grid search and the MSE each finds. Writes bench/results/bench_convex.json.

    .venv/bin/python bench/bench_convex.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from torch import nn

from memcim.analysis.column_error import InputStats, LayerErrorModel
from memcim.config import preset
from memcim.data.datasets import load_dataset
from memcim.experiments.convex_cim import linear_inputs
from memcim.io import provenance, write_json
from memcim.nn.models import get_reference_model
from memcim.optimize.convex_range import DesignLimits, grid_search, optimize_layer


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--per-column", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    hw = preset("convex_cim")
    model = get_reference_model("mnist-mlp-256-128")
    acts = linear_inputs(model, load_dataset("mnist", "train", limit=2000).x)
    lim = DesignLimits(slack=0.0)
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        W = mod.weight.detach().double().numpy().T
        t0 = time.perf_counter()
        lm = LayerErrorModel(W, hw, InputStats.from_samples(acts[name], hw))
        t_model = time.perf_counter() - t0
        pc = args.per_column
        t_cvx, r_cvx = best_of(lambda: optimize_layer(lm, lim, method="cvxpy", per_column=pc), args.repeat)
        t_fast, r_fast = best_of(lambda: optimize_layer(lm, lim, method="fast", per_column=pc), args.repeat)
        t_grid, g = best_of(lambda: grid_search(lm, lim, n_window=120, n_fs=400, per_column=pc), 1)
        rows.append({"layer": name, "shape": list(W.shape), "tile_columns": int(lm.n_row_tiles * W.shape[1]),
                     "model_build_s": t_model,
                     "cvxpy_total_s": t_cvx, "cvxpy_solver_s": r_cvx.solve_seconds, "fast_s": t_fast,
                     "fast_solver_s": r_fast.solve_seconds, "grid_s": t_grid,
                     "grid_over_fast": t_grid / r_fast.solve_seconds, "grid_over_cvxpy": t_grid / r_cvx.solve_seconds,
                     "mse_cvxpy": r_cvx.terms["total"], "mse_fast": r_fast.terms["total"], "mse_grid": g["mse"],
                     "cvxpy_vs_grid": r_cvx.terms["total"] / g["mse"] - 1, "fast_vs_grid": r_fast.terms["total"] / g["mse"] - 1,
                     "g_max_uS": r_fast.design.g_max * 1e6, "improvement_vs_naive": r_fast.improvement})
    print(f"{'layer':6s} {'shape':>10s} {'cvxpy ms':>9s} {'fast ms':>8s} {'grid ms':>9s} {'grid/fast':>9s} "
          f"{'grid/cvx':>8s} {'cvx-grid':>9s} {'fast-grid':>9s}")
    for r in rows:
        print(f"{r['layer']:6s} {str(r['shape']):>10s} {1e3 * r['cvxpy_solver_s']:9.1f} {1e3 * r['fast_solver_s']:8.1f} "
              f"{1e3 * r['grid_s']:9.1f} {r['grid_over_fast']:9.1f} {r['grid_over_cvxpy']:8.1f} "
              f"{r['cvxpy_vs_grid']:+9.2e} {r['fast_vs_grid']:+9.2e}")
    out = Path(__file__).resolve().parent / "results" / ("bench_convex_per_column.json" if args.per_column
                                                         else "bench_convex.json")
    write_json(out, {"bench": "convex", "config": hw.to_dict(), "per_column": args.per_column,
                     "repeat": args.repeat, "rows": rows, "provenance": provenance(),
                     "note": "times are best-of-repeat wall seconds on a shared 2-core CPU"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
