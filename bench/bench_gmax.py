"""G_max optimizer benchmark (paper 001, Eq. 22, Fig. 4): the structured optimizer against the
paper's genetic algorithm, in one run, on the same predicted problem.

Set-up: the small CNN (mnist-cnn-small), 16 MNIST test inputs, sigma = 0.01 S, N = 128, objective
= mean over inputs of the max output MSE, budgets = expected power at a common G_max of 1 S and
3 S. For each budget and for one G_max per network and per layer:
* structured: bisection on the budget, then SLSQP in log G_max with exact autograd gradients;
* GA: pymoo, population 50 and 100 generations as in the paper.
Reported: each optimum, wall time, evaluations of the prediction, the GA's best-so-far history
and the first time it came within 1 % of the structured optimum (None: never). Single thread.

Run: ``.venv/bin/python bench/bench_gmax.py [--quick]`` (writes bench/results/bench_gmax.json).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from memcim.analysis.moments import predict_mse
from memcim.experiments.memse_figs import _model, load_inputs
from memcim.io import provenance, write_json
from memcim.optimize.gmax import GmaxProblem, optimize_gmax, time_to_reach


def main(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    sigma, levels, n_inputs = 0.01, 128, 8 if quick else 16
    pop, gen = (10, 5) if quick else (50, 100)
    x, _ = load_inputs("mnist", n_inputs)
    net = _model("mnist-cnn-small")
    budgets = [predict_mse(net, x, sigma=sigma, gmax=g, levels=levels).power["total_W"] for g in (1.0, 3.0)]
    rows = []
    for gran in ("network", "layer"):
        prob = GmaxProblem(net, x, sigma=sigma, levels=levels, granularity=gran)
        for b in budgets:
            s = optimize_gmax(None, None, sigma=sigma, power_budget=b, problem=prob)
            g = optimize_gmax(None, None, sigma=sigma, power_budget=b, problem=prob, method="ga", pop_size=pop,
                              n_gen=gen, seed=0)
            reach = time_to_reach(g.history, s.objective)
            row = {"granularity": gran, "budget_W": b,
                   "structured": {"mse_max": s.objective, "power_W": s.power_W, "wall_s": s.wall_s,
                                  "evaluations": s.evaluations, "gmax": s.gmax, "info": s.info},
                   "ga": {"mse_max": g.objective, "power_W": g.power_W, "wall_s": g.wall_s,
                          "evaluations": g.evaluations, "gmax": g.gmax, "feasible": g.feasible,
                          "history": g.history[::max(1, len(g.history) // 25)]},
                   "ga_over_structured_mse": g.objective / s.objective if g.feasible else None,
                   "ga_time_to_within_1pct_s": reach,
                   "time_ratio_ga_over_structured": g.wall_s / s.wall_s}
            rows.append(row)
            print(f"{gran:8s} budget {b:.3g} W: structured {s.objective:.4g} in {s.wall_s:.1f} s "
                  f"({s.evaluations} evals); GA {g.objective:.4g} in {g.wall_s:.1f} s ({g.evaluations} evals); "
                  f"GA within 1 %: {'never' if reach is None else f'{reach:.1f} s'}", flush=True)
    res = {"config": {"model": "mnist-cnn-small", "n_inputs": n_inputs, "sigma": sigma, "levels": levels,
                      "objective": "max", "ga_pop": pop, "ga_gen": gen, "threads": 1},
           "rows": rows, "provenance": provenance(seed=0)}
    write_json(Path(__file__).parent / "results" / ("bench_gmax_quick.json" if quick else "bench_gmax.json"), res)
    return res


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
