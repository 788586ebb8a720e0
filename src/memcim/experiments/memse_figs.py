"""Paper 001 (MemSE) reproductions: Fig. 2 (MSE vs sigma), Fig. 3 (max MSE vs G_max), Fig. 4
(Pareto front of max MSE vs power), with the Monte Carlo accuracy beside the MSE.

Models: the reference models of :mod:`memcim.nn.models` (``mnist-cnn-small``, the paper's small
CNN trained on MNIST zero-padded to 32x32 because CIFAR-10 is not available offline, and
``mnist-mlp-256-128``); any ``torch.save(model)`` file also works. Inputs are the first
``n_inputs`` MNIST test images.

Each figure function returns a JSON-ready result and prints nothing, writes nothing;
``plot_fig2/3/4(result, png)`` draw them. They are registered as ``001/fig2``, ``001/fig3`` and
``001/fig4`` (:mod:`memcim.registry`) with their ``--quick`` settings and the paper's values.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch

from memcim.analysis.memse_sim import monte_carlo_simulator
from memcim.analysis.moments import predict_mse
from memcim.io import provenance, savefig
from memcim.registry import register


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


def _models(models) -> tuple:
    if isinstance(models, str):
        models = (models,)
    models = tuple(models)
    if not models:
        raise ValueError("models: give at least one model")
    return models


def _trials(trials) -> int:
    from memcim import validate

    return validate.integer("trials", trials, lo=2, hi=1_000_000)


def _n_inputs(n) -> int:
    from memcim import validate

    return validate.integer("n_inputs", n, lo=1, hi=10_000)


def _agree(rows, key, drop=0.05):
    """Rows where the Monte Carlo accuracy is within ``drop`` of the clean one (the useful regime)."""
    return [r for r in rows if r.get(key) is not None and r.get("clean_accuracy", 0) - r.get("mc_accuracy", 0) < drop]


def _summary_fig2(res: dict) -> dict:
    """Per model: the largest |relative error| of the Taylor-2 prediction against the Monte Carlo mean
    MSE where the accuracy drop is small; the prediction's speed-up over the Monte Carlo."""
    out = {}
    for model in res["config"]["models"]:
        rs = _agree([r for r in res["rows"] if r["model"] == model], "rel_err_t2")
        if rs:
            out[f"{model}: max abs rel. error, predicted vs MC mean MSE"] = max(abs(r["rel_err_t2"]) for r in rs)
            out[f"{model}: sigma values with accuracy drop < 5 points"] = len(rs)
    sp = [r["mc_wall_s"] / r["pred_wall_s"] for r in res["rows"] if r.get("pred_wall_s")]
    if sp:
        out["speedup_vs_mc"] = float(np.median(sp))
    return out


@register("001/fig2", title="output MSE vs sigma: predicted (Taylor 2/4, Gauss-Hermite) and Monte Carlo, with accuracy",
          plot=lambda r, png: plot_fig2(r, png), summary=_summary_fig2, quick={"n_sigmas": 4, "trials": 50},
          reference={"speedup_vs_mc": "85x (GPU)", "mnist-cnn-small: max abs rel. error, predicted vs MC mean MSE":
                     "close agreement", "mnist-mlp-256-128: max abs rel. error, predicted vs MC mean MSE":
                     "close agreement"})
def fig2(*, models=("mnist-cnn-small", "mnist-mlp-256-128"), sigmas=None, n_sigmas: int = 9, gmax: float = 1.0,
         levels: int = 128, n_inputs: int = 64, trials: int = 200, seed: int = 0, orders=(2, 4)) -> dict:
    """MSE at the output vs sigma, predicted (Taylor orders, Gauss-Hermite, covariance modes) and
    simulated through memcim's hardware simulator, with the simulated accuracy.

    ``sigmas`` default: ``n_sigmas`` values from 10^-3.5 to 10^-0.5 S."""
    from memcim import validate

    models, trials, n_inputs = _models(models), _trials(trials), _n_inputs(n_inputs)
    if sigmas is None:
        sigmas = list(np.logspace(-3.5, -0.5, validate.integer("n_sigmas", n_sigmas, lo=1, hi=1000)))
    sigmas = [validate.number("sigmas", s, lo=0.0) for s in sigmas]
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
    return {"figure": "fig2", "rows": rows,
            "config": {"levels": levels, "gmax": gmax, "n_inputs": n_inputs, "trials": trials, "models": list(models),
                       "orders": list(orders), "engine": "simulator"},
            "provenance": provenance(seed=seed)}


def _sensible_range(values, pad: float = 3.0):
    """(lo, hi) of the finite positive ``values``, padded by a factor ``pad`` on a log axis."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    if v.size == 0:
        return None
    return float(v.min()) / pad, float(v.max()) * pad


def plot_fig2(res: dict, png) -> None:
    """Fig. 2's PNG. The y axis spans the Monte Carlo and the second-order predictions; a higher-order
    Taylor curve that diverges beyond it (Taylor 4 at large sigma) is cut there, and its legend
    entry says how many points fell off the axis."""
    import matplotlib.pyplot as plt

    rows, c = res["rows"], res["config"]
    models, gmax = c["models"], c["gmax"]
    orders = c.get("orders", [2, 4])
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7), squeeze=False, layout="constrained")
    for j, name in enumerate(models):
        rs = [r for r in rows if r["model"] == name]
        s = [r["sigma"] for r in rs]
        ax = axes[0, j]
        sensible = ([r["mc_mse"] for r in rs] + [r["pred_lowrank_t2"] for r in rs] + [r["pred_lowrank_gh"] for r in rs]
                    + [r["pred_diagonal_t2"] for r in rs])
        lim = _sensible_range(sensible)
        ax.errorbar(s, [r["mc_mse"] for r in rs], yerr=[3 * r["mc_stderr"] for r in rs], fmt="ko",
                    label="Monte Carlo (simulator, ±3 s.e.)")
        ax.plot(s, [r["pred_lowrank_t2"] for r in rs], "-", label="predicted (Taylor 2)")
        for o in orders:
            if o == 2:
                continue
            ys = [r.get(f"pred_lowrank_t{o}") for r in rs]
            off = [i for i, v in enumerate(ys) if lim and v is not None and not (lim[0] <= v <= lim[1])]
            shown = [np.nan if i in off or v is None else v for i, v in enumerate(ys)]
            label = f"predicted (Taylor {o})" + (f"; {len(off)} point(s) off the axis (diverges)" if off else "")
            ax.plot(s, shown, "--", label=label)
        ax.plot(s, [r["pred_lowrank_gh"] for r in rs], ":", label="predicted (Gauss-Hermite)")
        ax.plot(s, [r["pred_diagonal_t2"] for r in rs], "-.", alpha=.6, label="predicted, diagonal cov")
        ax.set(xscale="log", yscale="log", xlabel="sigma (S)", ylabel="mean output MSE", title=f"{name}, G_max={gmax} S")
        if lim:
            ax.set_ylim(*lim)
        ax.legend(fontsize=7)
        ax = axes[1, j]
        ax.semilogx(s, [100 * r["mc_accuracy"] for r in rs], "o-")
        ax.set(xlabel="sigma (S)", ylabel="MC accuracy (%)")
    savefig(fig, png)


def _summary_fig3(res: dict) -> dict:
    out = {}
    for model in res["models"]:
        rs = _agree([r for r in res["rows"] if r["model"] == model], "rel_err_max")
        if rs:
            out[f"{model}: max abs rel. error, predicted vs MC max MSE"] = max(abs(r["rel_err_max"]) for r in rs)
            out[f"{model}: max abs rel. error, predicted vs MC mean MSE"] = max(abs(r["rel_err_mean"]) for r in rs)
    return out


@register("001/fig3", title="max output MSE vs G_max for several sigma: predicted and Monte Carlo",
          plot=lambda r, png: plot_fig3(r, png), summary=_summary_fig3, quick={"n_gmax": 4, "trials": 30},
          reference={"mnist-cnn-small: max abs rel. error, predicted vs MC max MSE": "close agreement",
                     "mnist-mlp-256-128: max abs rel. error, predicted vs MC max MSE": "close agreement"})
def fig3(*, models=("mnist-cnn-small", "mnist-mlp-256-128"), sigmas=(0.01, 0.03, 0.1), gmaxes=None,
         n_gmax: int = 8, levels: int = 128, n_inputs: int = 64, trials: int = 100, seed: int = 0) -> dict:
    """Mean over inputs of the max over outputs of the MSE vs G_max, for several sigma, predicted
    and simulated (Monte Carlo through memcim's hardware simulator), with the
    simulated accuracy and the quantization floor F3, for each model.

    ``gmaxes`` default: ``n_gmax`` values from 10^-0.5 to 10^2 S. With few chips the Monte Carlo max
    over outputs is biased upward."""
    from memcim import validate

    models, trials, n_inputs = _models(models), _trials(trials), _n_inputs(n_inputs)
    if gmaxes is None:
        gmaxes = list(np.logspace(-0.5, 2, validate.integer("n_gmax", n_gmax, lo=1, hi=1000)))
    gmaxes = [validate.number("gmaxes", g, lo=0.0, lo_open=True) for g in gmaxes]
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
    return {"figure": "fig3", "models": list(models), "rows": rows, "quantization_floor_max": floors,
            "config": {"levels": levels, "n_inputs": n_inputs, "trials": trials, "engine": "simulator",
                       "sigmas": list(sigmas), "gmaxes": gmaxes},
            "provenance": provenance(seed=seed)}


def plot_fig3(res: dict, png) -> None:
    import matplotlib.pyplot as plt

    models, rows, floors = res["models"], res["rows"], res["quantization_floor_max"]
    sigmas = res["config"]["sigmas"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False, layout="constrained")
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
    savefig(fig, png)


def _summary_fig4(res: dict) -> dict:
    out = {}
    for gran, v in sorted((res.get("summary") or {}).items()):
        if v.get("ga_over_structured_mse_median") is not None:
            out[f"{gran} G_max: GA max-MSE / structured max-MSE (median over budgets)"] = v["ga_over_structured_mse_median"]
            out[f"{gran} G_max: GA within 1 % of structured"] = f"{v['ga_reached_structured_within_1pct']}/{v['budgets']} budgets"
            out[f"{gran} G_max: structured / GA time [s]"] = (f"{v['structured_wall_s_total']:.1f} / "
                                                              f"{v['ga_wall_s_total']:.1f}")
    return out


@register("001/fig4", title="Pareto front of max MSE vs power: structured G_max optimizer and the paper's GA",
          plot=lambda r, png: plot_fig4(r, png), summary=_summary_fig4,
          quick={"n_budgets": 3, "pop_size": 8, "n_gen": 6, "mc_trials": 10, "n_inputs": 8,
                 "granularities": ("network", "layer")},
          reference={"network G_max: GA max-MSE / structured max-MSE (median over budgets)": "GA only",
                     "layer G_max: GA max-MSE / structured max-MSE (median over budgets)": "GA only"})
def fig4(*, model="mnist-cnn-small", sigma: float = 0.01, levels: int = 128, n_inputs: int = 16,
         n_budgets: int = 5, ga: bool = True, pop_size: int = 50, n_gen: int = 100, seed: int = 0,
         mc_trials: int = 50, granularities=("network", "layer", "column"), progress: bool = False,
         checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Pareto front: min max-MSE vs power budget for network / layer / column G_max, structured
    optimizer and (optionally) the paper's GA (population 50, 100 generations), with the Monte
    Carlo accuracy at each structured optimum (through the simulator; none for per-column G_max, which
    its mapping does not express).

    ``checkpoint(result)``, when given, is called after every optimisation with the result so far
    (``"complete": False`` until the end), so a caller can save it and an interrupted run keeps what
    it finished. ``progress`` shows a tqdm bar on stderr.
    """
    from tqdm.auto import tqdm

    from memcim import validate
    from memcim.optimize.gmax import GmaxProblem, optimize_gmax, time_to_reach

    n_inputs = _n_inputs(n_inputs)
    n_budgets = validate.integer("n_budgets", n_budgets, lo=1, hi=1000)
    pop_size = validate.integer("pop_size", pop_size, lo=2, hi=100_000)
    n_gen = validate.integer("n_gen", n_gen, lo=1, hi=100_000)
    mc_trials = _trials(mc_trials) if mc_trials != 0 else 0
    grans = tuple(granularities) if granularities else ("network", "layer", "column")
    for g in grans:
        validate.choice("granularities", g, ("network", "layer", "column"))
    x, y = load_inputs("mnist", n_inputs)
    net = _model(model)
    p_lo = predict_mse(net, x, sigma=sigma, gmax=0.3, levels=levels).power["total_W"]
    p_hi = predict_mse(net, x, sigma=sigma, gmax=10.0, levels=levels).power["total_W"]
    budgets = np.logspace(np.log10(p_lo), np.log10(p_hi), n_budgets)
    rows = []
    res = {"figure": "fig4", "model": model, "sigma": sigma, "budgets_W": budgets, "rows": rows, "complete": False,
           "config": {"levels": levels, "n_inputs": n_inputs, "n_budgets": n_budgets, "granularities": list(grans),
                      "ga": ga, "pop_size": pop_size, "n_gen": n_gen, "mc_trials": mc_trials,
                      "engine": "simulator"},
           "units": "power in W for G in S, x in V and r = 1 Ohm (the paper's normalised units, not a real chip's)",
           "provenance": provenance(seed=seed)}

    def save_point():
        if checkpoint is not None:
            checkpoint(copy.deepcopy(res))

    n_jobs = len(grans) * len(budgets) + (sum(g != "column" for g in grans) * len(budgets) if ga else 0)
    bar = tqdm(total=n_jobs, desc="fig4 optimisations", disable=not progress)
    for gran in grans:
        prob = GmaxProblem(net, x, sigma=sigma, levels=levels, granularity=gran)
        for v in budgets:
            r = optimize_gmax(None, None, sigma=sigma, power_budget=float(v), problem=prob)
            d = r.to_dict()
            mc = (_mc(net, x, sigma=sigma, gmax=r.gmax, levels=levels, trials=mc_trials, seed=seed, labels=y)
                  if mc_trials else None)
            d.update(mc_engine=None if mc is None else mc.config["engine"], mc_mse_max=None if mc is None else mc.mse_max,
                     mc_accuracy=None if mc is None else float(mc.accuracy.mean()))
            rows.append(d)
            bar.update()
            save_point()
            if ga and gran != "column":
                g = optimize_gmax(None, None, sigma=sigma, power_budget=float(v), problem=prob, method="ga",
                                  pop_size=pop_size, n_gen=n_gen, seed=seed).to_dict()
                g["time_to_structured_optimum_s"] = time_to_reach(g["history"], r.objective)
                g["structured_objective_mse"] = r.objective
                g["structured_wall_s"] = r.wall_s
                g["history"] = g["history"][::max(1, len(g["history"]) // 20)]
                rows.append(g)
                bar.update()
                save_point()
    bar.close()
    res["summary"] = _fig4_summary(rows)
    res["complete"] = True
    return res


def plot_fig4(res: dict, png) -> None:
    import matplotlib.pyplot as plt

    rows, grans = res["rows"], res["config"]["granularities"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for k, gran in enumerate(grans):
        for m, mk in (("structured", "-o"), ("ga", "--x")):
            rs = [r for r in rows if r["granularity"] == gran and r["method"] == m and r.get("feasible")]
            if rs:
                axes[0].plot([r["power_W"] for r in rs], [r["objective_mse"] for r in rs], mk, color=f"C{k}",
                             label=f"{gran}, {m}")
        rs = [r for r in rows if r["granularity"] == gran and r["method"] == "structured"]
        rs = [r for r in rs if r.get("mc_accuracy") is not None]
        if rs:
            axes[1].plot([r["power_W"] for r in rs], [100 * r["mc_accuracy"] for r in rs], "-o", color=f"C{k}",
                         label=gran)
    axes[0].set(xscale="log", yscale="log", xlabel="expected power (W, r = 1 Ω)", ylabel="predicted max output MSE",
                title=f"{res['model']}, sigma={res['sigma']} S")
    axes[0].legend(fontsize=7)
    axes[1].set(xscale="log", xlabel="expected power (W, r = 1 Ω)", ylabel="MC accuracy at optimum (%)")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7)
    savefig(fig, png)


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
