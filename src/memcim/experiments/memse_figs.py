"""Paper 001 (MemSE) reproductions: Fig. 2 (MSE vs sigma), Fig. 3 (max MSE vs G_max), Fig. 4
(Pareto front of max MSE vs power), with the Monte Carlo accuracy beside the MSE.

Models: the reference models of :mod:`memcim.nn.models` (``mnist-cnn-small``, the paper's small
CNN trained on MNIST zero-padded to 32x32 because CIFAR-10 is not available offline, and
``mnist-mlp-256-128``); any ``torch.save(model)`` file also works. Inputs are the first
``n_inputs`` MNIST test images.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from memcim.analysis.memse_sim import monte_carlo_simulator
from memcim.analysis.moments import predict_mse
from memcim.io import provenance, savefig, write_json


def load_inputs(spec: str, n: int | None = None):
    """``mnist:N`` / ``digits:N`` (first N test samples) -> (x, labels)."""
    from memcim.data.datasets import load_dataset

    name, _, cnt = str(spec).partition(":")
    k = int(cnt) if cnt else (n or 64)
    ds = load_dataset(name, "test", limit=k)
    return ds.x.double(), ds.y


def _mc(net, x, **kw):
    """The Monte Carlo of record: memcim's hardware simulator (:func:`monte_carlo_simulator`). Per-column
    G_max is not expressible in the simulator's mapping: None then."""
    per_column = any(np.ndim(g) for g in kw["gmax"]) if isinstance(kw["gmax"], (list, tuple)) else False
    if per_column:
        return None
    return monte_carlo_simulator(net, x, dtype=torch.float32, **kw)


def _model(spec: str):
    from memcim.nn.loading import load_model

    return load_model(spec).double().eval()


def fig2(out: str | Path, *, models=("mnist-cnn-small", "mnist-mlp-256-128"), sigmas=None, gmax: float = 1.0,
         levels: int = 128, n_inputs: int = 64, trials: int = 200, seed: int = 0, orders=(2, 4), quick=False) -> dict:
    """MSE at the output vs sigma, predicted (Taylor orders, Gauss-Hermite, covariance modes) and
    simulated through memcim's hardware simulator, with the simulated accuracy."""
    sigmas = list(sigmas) if sigmas is not None else list(np.logspace(-3.5, -0.5, 4 if quick else 9))
    x, y = load_inputs("mnist", n_inputs)
    rows = []
    for name in models:
        net = _model(name)
        clean = float((net(x).argmax(1) == y).double().mean())
        for s in sigmas:
            row = {"model": name, "sigma": float(s), "gmax": gmax, "clean_accuracy": clean}
            t0 = time.perf_counter()
            p = predict_mse(net, x, sigma=s, gmax=gmax, levels=levels, power=False)
            row["pred_lowrank_t2"], row["pred_wall_s"] = p.mse_mean, time.perf_counter() - t0
            row["pred_lowrank_t2_max"] = p.mse_max
            for o in orders:
                if o != 2:
                    row[f"pred_lowrank_t{o}"] = predict_mse(net, x, sigma=s, gmax=gmax, levels=levels, power=False,
                                                            taylor_order=o).mse_mean
            row["pred_lowrank_gh"] = predict_mse(net, x, sigma=s, gmax=gmax, levels=levels, power=False,
                                                 act_method="gh").mse_mean
            row["pred_diagonal_t2"] = predict_mse(net, x, sigma=s, gmax=gmax, levels=levels, power=False,
                                                  cov="diagonal").mse_mean
            mc = _mc(net, x, sigma=s, gmax=gmax, levels=levels, trials=trials, seed=seed, labels=y)
            row.update(mc_engine=mc.config["engine"], mc_mse=mc.mse_mean, mc_stderr=mc.mse_mean_stderr,
                       mc_max=mc.mse_max, mc_accuracy=float(mc.accuracy.mean()), mc_wall_s=mc.wall_s,
                       rel_err_t2=(p.mse_mean - mc.mse_mean) / mc.mse_mean)
            rows.append(row)
    res = {"figure": "fig2", "rows": rows, "config": {"levels": levels, "gmax": gmax, "n_inputs": n_inputs,
                                                         "trials": trials, "models": list(models), "engine": "simulator"},
           "provenance": provenance(seed=seed)}
    out = Path(out)
    write_json(out / "memse_fig2.json", res)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7), squeeze=False)
    for j, name in enumerate(models):
        rs = [r for r in rows if r["model"] == name]
        s = [r["sigma"] for r in rs]
        ax = axes[0, j]
        ax.errorbar(s, [r["mc_mse"] for r in rs], yerr=[3 * r["mc_stderr"] for r in rs], fmt="ko",
                    label="Monte Carlo (simulator, ±3 s.e.)")
        ax.plot(s, [r["pred_lowrank_t2"] for r in rs], "-", label="predicted (Taylor 2)")
        for o in orders:
            if o != 2:
                ax.plot(s, [r[f"pred_lowrank_t{o}"] for r in rs], "--", label=f"predicted (Taylor {o})")
        ax.plot(s, [r["pred_lowrank_gh"] for r in rs], ":", label="predicted (Gauss-Hermite)")
        ax.plot(s, [r["pred_diagonal_t2"] for r in rs], "-.", alpha=.6, label="predicted, diagonal cov")
        ax.set(xscale="log", yscale="log", xlabel="sigma (S)", ylabel="mean output MSE", title=f"{name}, G_max={gmax} S")
        ax.legend(fontsize=7)
        ax = axes[1, j]
        ax.semilogx(s, [100 * r["mc_accuracy"] for r in rs], "o-")
        ax.set(xlabel="sigma (S)", ylabel="MC accuracy (%)")
    savefig(fig, out / "memse_fig2.png")
    return res


def fig3(out: str | Path, *, models=("mnist-cnn-small", "mnist-mlp-256-128"), sigmas=(0.01, 0.03, 0.1), gmaxes=None,
         levels: int = 128, n_inputs: int = 64, trials: int = 100, seed: int = 0, quick=False) -> dict:
    """Mean over inputs of the max over outputs of the MSE vs G_max, for several sigma, predicted
    and simulated (Monte Carlo through memcim's hardware simulator), with the
    simulated accuracy and the quantization floor F3, for each model."""
    gmaxes = list(gmaxes) if gmaxes is not None else list(np.logspace(-0.5, 2, 4 if quick else 8))
    if isinstance(models, str):
        models = (models,)
    x, y = load_inputs("mnist", n_inputs)
    rows, floors = [], {}
    for name in models:
        net = _model(name)
        clean = float((net(x).argmax(1) == y).double().mean())
        for s in sigmas:
            for g in gmaxes:
                p = predict_mse(net, x, sigma=s, gmax=g, levels=levels, power=True)
                mc = _mc(net, x, sigma=s, gmax=float(g), levels=levels, trials=trials, seed=seed, labels=y)
                rows.append({"model": name, "mc_engine": mc.config["engine"], "sigma": s, "gmax": float(g),
                             "clean_accuracy": clean,
                             "pred_max": p.mse_max, "pred_mean": p.mse_mean, "mc_max": mc.mse_max,
                             "mc_mean": mc.mse_mean, "mc_stderr": mc.mse_mean_stderr,
                             "mc_accuracy": float(mc.accuracy.mean()), "power_W": p.power["total_W"],
                             "rel_err_max": (p.mse_max - mc.mse_max) / mc.mse_max,
                             "rel_err_mean": (p.mse_mean - mc.mse_mean) / mc.mse_mean})
        floors[name] = predict_mse(net, x, sigma=0.0, gmax=1.0, levels=levels, power=False).mse_max
    res = {"figure": "fig3", "models": list(models), "rows": rows, "quantization_floor_max": floors,
           "config": {"levels": levels, "n_inputs": n_inputs, "trials": trials, "engine": "simulator",
                      "sigmas": list(sigmas), "gmaxes": gmaxes},
           "provenance": provenance(seed=seed)}
    out = Path(out)
    write_json(out / "memse_fig3.json", res)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for j, name in enumerate(models):
        ax = axes[0, j]
        for k, s in enumerate(sigmas):
            rs = [r for r in rows if r["sigma"] == s and r["model"] == name]
            col = f"C{k}"
            ax.plot([r["gmax"] for r in rs], [r["pred_max"] for r in rs], "-", color=col, label=f"predicted, sigma={s}")
            ax.plot([r["gmax"] for r in rs], [r["mc_max"] for r in rs], "o", color=col, label=f"simulated, sigma={s}")
        ax.axhline(floors[name], color="k", ls=":", label="quantization floor (F3)")
        ax.set(xscale="log", yscale="log", xlabel="G_max (S)", ylabel="mean of max output MSE", title=name)
        ax.legend(fontsize=7)
    savefig(fig, out / "memse_fig3.png")
    return res


def fig4(out: str | Path, *, model="mnist-cnn-small", sigma: float = 0.01, levels: int = 128, n_inputs: int = 16,
         n_budgets: int = 5, ga: bool = True, pop_size: int = 50, n_gen: int = 100, seed: int = 0, quick=False,
         mc_trials: int = 50, granularities=None, progress: bool | None = None) -> dict:
    """Pareto front: min max-MSE vs power budget for network / layer / column G_max, structured
    optimizer and (optionally) the paper's GA (population 50, 100 generations), with the Monte
    Carlo accuracy at each structured optimum (through the simulator; none for per-column G_max, which
    its mapping does not express).

    The JSON is rewritten after every optimisation, so an interrupted run keeps what it finished
    (``"complete": false`` until the end). A tqdm bar on stderr shows the progress.
    """
    from tqdm.auto import tqdm

    from memcim.optimize.gmax import GmaxProblem, optimize_gmax, time_to_reach

    if quick:  # a smoke run of well under a minute on 2 cores: 3 budgets, an 8 x 6 GA, 10 MC chips
        n_budgets, pop_size, n_gen, mc_trials = min(n_budgets, 3), min(pop_size, 8), min(n_gen, 6), min(mc_trials, 10)
        n_inputs = min(n_inputs, 8)
    x, y = load_inputs("mnist", n_inputs)
    net = _model(model)
    p_lo = predict_mse(net, x, sigma=sigma, gmax=0.3, levels=levels).power["total_W"]
    p_hi = predict_mse(net, x, sigma=sigma, gmax=10.0, levels=levels).power["total_W"]
    budgets = np.logspace(np.log10(p_lo), np.log10(p_hi), n_budgets)
    grans = tuple(granularities) if granularities else (("network", "layer") if quick else ("network", "layer", "column"))
    rows = []
    out = Path(out)
    res = {"figure": "fig4", "model": model, "sigma": sigma, "budgets_W": budgets, "rows": rows, "complete": False,
           "config": {"levels": levels, "n_inputs": n_inputs, "n_budgets": n_budgets, "granularities": list(grans),
                      "ga": ga, "pop_size": pop_size, "n_gen": n_gen, "mc_trials": mc_trials, "quick": quick,
                      "engine": "simulator"},
           "units": "power in W for G in S, x in V and r = 1 Ohm (the paper's normalised units, not a real chip's)",
           "provenance": provenance(seed=seed)}
    n_jobs = len(grans) * len(budgets) + (sum(g != "column" for g in grans) * len(budgets) if ga else 0)
    bar = tqdm(total=n_jobs, desc="fig4 optimisations", disable=None if progress is None else not progress)
    for gran in grans:
        prob = GmaxProblem(net, x, sigma=sigma, levels=levels, granularity=gran)
        for v in budgets:
            r = optimize_gmax(None, None, sigma=sigma, power_budget=float(v), problem=prob)
            d = r.to_dict()
            mc = _mc(net, x, sigma=sigma, gmax=r.gmax, levels=levels, trials=mc_trials, seed=seed, labels=y)
            d.update(mc_engine=None if mc is None else mc.config["engine"], mc_mse_max=None if mc is None else mc.mse_max,
                     mc_accuracy=None if mc is None else float(mc.accuracy.mean()))
            rows.append(d)
            bar.update()
            write_json(out / "memse_fig4.json", res)
            if ga and gran != "column":
                g = optimize_gmax(None, None, sigma=sigma, power_budget=float(v), problem=prob, method="ga",
                                  pop_size=pop_size, n_gen=n_gen, seed=seed).to_dict()
                g["time_to_structured_optimum_s"] = time_to_reach(g["history"], r.objective)
                g["structured_objective_mse"] = r.objective
                g["structured_wall_s"] = r.wall_s
                g["history"] = g["history"][::max(1, len(g["history"]) // 20)]
                rows.append(g)
                bar.update()
                write_json(out / "memse_fig4.json", res)
    bar.close()
    res["summary"] = _fig4_summary(rows)
    res["complete"] = True
    write_json(out / "memse_fig4.json", res)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, gran in enumerate(grans):
        for m, mk in (("structured", "-o"), ("ga", "--x")):
            rs = [r for r in rows if r["granularity"] == gran and r["method"] == m and r.get("feasible")]
            if rs:
                axes[0].plot([r["power_W"] for r in rs], [r["objective_mse"] for r in rs], mk, color=f"C{k}",
                             label=f"{gran}, {m}")
        rs = [r for r in rows if r["granularity"] == gran and r["method"] == "structured"]
        rs = [r for r in rs if r["mc_accuracy"] is not None]
        if rs:
            axes[1].plot([r["power_W"] for r in rs], [100 * r["mc_accuracy"] for r in rs], "-o", color=f"C{k}",
                         label=gran)
    axes[0].set(xscale="log", yscale="log", xlabel="expected power (W, r = 1 Ω)", ylabel="predicted max output MSE",
                title=f"{model}, sigma={sigma} S")
    axes[0].legend(fontsize=7)
    axes[1].set(xscale="log", xlabel="expected power (W, r = 1 Ω)", ylabel="MC accuracy at optimum (%)")
    axes[1].legend(fontsize=7)
    savefig(fig, out / "memse_fig4.png")
    return res


def _fig4_summary(rows: list) -> dict:
    """Structured optimizer against the GA at each (granularity, budget): objective ratio, times,
    and how often the GA got within 1 % of the structured optimum."""
    pairs = [r for r in rows if r["method"] == "ga"]
    out = {}
    for gran in sorted({r["granularity"] for r in pairs}):
        ps = [r for r in pairs if r["granularity"] == gran]
        ratios = [r["objective_mse"] / r["structured_objective_mse"] for r in ps
                  if r.get("feasible") and r.get("objective_mse") is not None]
        out[gran] = {"budgets": len(ps), "ga_feasible": len(ratios),
                     "ga_over_structured_mse_median": float(np.median(ratios)) if ratios else None,
                     "ga_reached_structured_within_1pct": sum(r["time_to_structured_optimum_s"] is not None for r in ps),
                     "structured_wall_s_total": float(sum(r["structured_wall_s"] for r in ps)),
                     "ga_wall_s_total": float(sum(r["wall_s"] for r in ps))}
    return out
