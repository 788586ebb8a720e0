"""MemSE benchmark: analytic MSE prediction vs the Monte Carlo needed for the same accuracy.

Set-up (paper 001, Sec. V-A): the small CNN (mnist-cnn-small reference model: 2-4-8-16-16
filters, MNIST zero-padded to 32x32), batch of 64 test inputs, sigma = 0.01 S, N = 128. The Monte
Carlo peer is the Monte Carlo of record: chips through memcim's hardware simulator (memcim.nn analog
layers on memcim.simulate chips, float32, the one chips loop memcim.nn.evaluate.chip_outputs). The
number of trials needed to be within 2 % of the true MSE 98 % of the time is derived from the
per-chip MSE variance of a pilot run: T = (z_0.99 * CV / 0.02)^2; then T chips are run and timed.
Also: accuracy of each covariance mode against that MC, the prediction's state memory, and its
time vs network width and depth. Single thread for both sides.

Run: ``.venv/bin/python bench/bench_memse.py`` (writes bench/results/bench_memse.json).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from memcim.analysis.memse_sim import monte_carlo_simulator, trials_needed
from memcim.analysis.moments import parse_model, predict_mse, propagate
from memcim.data.datasets import load_dataset
from memcim.io import provenance, write_json
from memcim.nn.loading import load_model


def best_time(fn, reps=5):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def state_bytes(layers, x, **kw):
    _, states = propagate(layers, x, return_all=True, **kw)
    peak = 0
    for s in states:
        n = sum(t.numel() * t.element_size() for t in (s.mean, s.var, s.cov, s.factors) if t is not None)
        peak = max(peak, n)
    return peak


def main(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seed = 0
    sigma, levels, gmax = 0.01, 128, 3.0
    net = load_model("mnist-cnn-small").eval()
    ds = load_dataset("mnist", "test", limit=64)
    x, y = ds.x, ds.y
    res = {"config": {"model": "mnist-cnn-small", "batch": 64, "sigma": sigma, "gmax": gmax, "levels": levels,
                      "threads": 1}, "provenance": provenance(seed=seed)}
    # --- Monte Carlo: pilot for the variance, then the needed run
    pilot = monte_carlo_simulator(net, x, sigma=sigma, gmax=gmax, levels=levels, trials=200 if quick else 500,
                                  seed=seed, labels=y)
    t_need = trials_needed(pilot.trial_mse, 0.02, 0.98)
    sim = monte_carlo_simulator(net, x, sigma=sigma, gmax=gmax, levels=levels, trials=t_need, seed=seed + 2,
                                labels=y)
    res["monte_carlo_simulator"] = {"trials": t_need, "trials_needed": t_need,
                                    "per_chip_mse_cv": float(pilot.trial_mse.std() / pilot.trial_mse.mean()),
                                    "wall_s": sim.wall_s, "mse_mean": sim.mse_mean,
                                    "mse_mean_stderr": sim.mse_mean_stderr, "mse_max": sim.mse_max,
                                    "accuracy": float(sim.accuracy.mean()),
                                    "clean_accuracy": float((net(x).argmax(1) == y).double().mean())}
    # --- predictions
    rows = []
    modes = [("lowrank", torch.float32, {}), ("lowrank", torch.float64, {}), ("diagonal", torch.float32, {}),
             ("lowrank", torch.float32, {"rank": 1}), ("lowrank", torch.float32, {"rank": 8})]
    if not quick:
        modes.append(("exact", torch.float64, {}))
    for mode, dt, extra in modes:
        layers = parse_model(net, dt)
        xd = x.to(dt)
        reps = 1 if mode == "exact" else 5
        t, p = best_time(lambda: predict_mse(layers, xd, sigma=sigma, gmax=gmax, levels=levels, cov=mode,
                                             power=False, dtype=dt, **extra), reps)
        mem = state_bytes(layers, xd, sigma=sigma, gmax=gmax, levels=levels, cov=mode, **extra) if mode != "exact" else None
        rows.append({"cov": mode, "dtype": str(dt).replace("torch.", ""), **extra, "wall_s": t,
                     "speedup_vs_simulator_mc": sim.wall_s / t,
                     "mse_mean": p.mse_mean, "mse_max": p.mse_max,
                     "rel_err_mean_vs_simulator_mc": (p.mse_mean - sim.mse_mean) / sim.mse_mean,
                     "rel_err_max_vs_simulator_mc": (p.mse_max - sim.mse_max) / sim.mse_max, "state_peak_bytes": mem})
    res["prediction"] = rows
    # --- scaling with width and depth (random weights; time of the default prediction)
    scal = []
    xs = torch.rand(64, 1, 32, 32)
    for mult in ([1, 2] if quick else [1, 2, 4, 8]):
        ch = [2 * mult, 4 * mult, 8 * mult, 16 * mult, 16 * mult]
        layers_ = []
        prev = 1
        for c in ch:
            layers_ += [nn.Conv2d(prev, c, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2)]
            prev = c
        m = nn.Sequential(*layers_, nn.Flatten(), nn.Linear(prev, 10))
        L = parse_model(m, torch.float32)
        t, _ = best_time(lambda: predict_mse(L, xs, sigma=sigma, gmax=gmax, power=False, dtype=torch.float32), 3)
        tm, _ = best_time(lambda: monte_carlo_simulator(m, xs, sigma=sigma, gmax=gmax, trials=20), 2)
        scal.append({"kind": "cnn width", "channel_multiplier": mult, "predict_s": t, "mc_s_per_trial": tm / 20,
                     "state_peak_bytes": state_bytes(L, xs, sigma=sigma, gmax=gmax)})
    xm = torch.rand(64, 256)
    for depth in ([1, 2, 4] if quick else [1, 2, 4, 8]):
        mods = []
        for _ in range(depth):
            mods += [nn.Linear(256, 256), nn.ReLU()]
        m = nn.Sequential(*mods, nn.Linear(256, 10))
        L = parse_model(m, torch.float32)
        t, _ = best_time(lambda: predict_mse(L, xm, sigma=sigma, gmax=gmax, power=False, dtype=torch.float32), 3)
        tm, _ = best_time(lambda: monte_carlo_simulator(m, xm, sigma=sigma, gmax=gmax, trials=20), 2)
        scal.append({"kind": "mlp depth (width 256)", "hidden_layers": depth, "predict_s": t, "mc_s_per_trial": tm / 20,
                     "state_peak_bytes": state_bytes(L, xm, sigma=sigma, gmax=gmax)})
    res["scaling"] = scal
    out = Path(__file__).parent / "results" / "bench_memse.json"
    write_json(out, res)
    print(f"MC through the simulator: {t_need} chips needed (CV {res['monte_carlo_simulator']['per_chip_mse_cv']:.3f})"
          f" -> {sim.wall_s:.2f} s, MSE {sim.mse_mean:.4g} ± {sim.mse_mean_stderr:.2g}, accuracy {sim.accuracy.mean():.4f}")
    print(f"{'cov':9s} {'dtype':8s} {'extra':10s} {'time ms':>9s} {'vs sim':>8s} {'err mean':>9s} "
          f"{'err max':>8s} {'state MB':>8s}")
    for r in rows:
        ex = ",".join(f"{k}={r[k]}" for k in ("rank",) if k in r)
        mb = "-" if r["state_peak_bytes"] is None else f"{r['state_peak_bytes'] / 1e6:.1f}"
        print(f"{r['cov']:9s} {r['dtype']:8s} {ex:10s} {r['wall_s'] * 1e3:9.1f} "
              f"{r['speedup_vs_simulator_mc']:8.1f} "
              f"{100 * r['rel_err_mean_vs_simulator_mc']:8.1f}% {100 * r['rel_err_max_vs_simulator_mc']:7.1f}% {mb:>8s}")
    for s in scal:
        print(s)
    return res


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
