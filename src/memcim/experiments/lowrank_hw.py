"""Low-rank two-step scheme on simulated hardware: where the additive-noise theory holds and where it stops.

For a harmonic matrix, the scheme at several ranks (repetitions: the exact best for each rank under
the baseline's device budget) and the baseline are run through the foundation simulator under a
ladder of hardware configurations, from "programming noise only, continuous conductances" to the
"generic" preset. For each, the Monte Carlo error is compared with

* ``ideal``: the paper's additive model with the weight-unit sigma each mapped matrix implies
  (:func:`memcim.mapping.lowrank.equivalent_sigma`) and the ideal factors;
* ``realized``: the same with the quantized factors the hardware holds (quantization enters the
  truncation term).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from memcim.registry import register


def hardware_ladder(sigma_abs: float = 3e-6):
    """The configurations, from theory-like to realistic: list of (name, HardwareConfig)."""
    from memcim.config import preset

    base = preset("ideal").replace(device={"g_min": 1e-5, "g_max": 1e-4, "prog_sigma_abs": sigma_abs,
                                           "levels": None}, name="prog-only")
    q = base.replace(device={"levels": 64}, name="+64 levels")
    conv = q.replace(dac={"enabled": True, "bits": 8}, adc={"enabled": True, "bits": 8, "fs_mode": "calibrated"},
                     name="+8-bit DAC/ADC")
    adc6 = conv.replace(adc={"bits": 6}, name="+6-bit ADC")
    adc4 = conv.replace(adc={"bits": 4}, name="+4-bit ADC")
    lv16 = conv.replace(device={"levels": 16}, name="16 levels, 8-bit")
    real = preset("generic").replace(device={"prog_sigma_abs": sigma_abs}, name="generic")
    return [("prog-only", base), ("+64 levels", q), ("+8-bit DAC/ADC", conv), ("+6-bit ADC", adc6),
            ("+4-bit ADC", adc4), ("16 levels, 8-bit", lv16), ("generic", real)]


def _summary(res: dict) -> dict:
    """How far the Monte Carlo is from the additive prediction (realized factors), per config: the
    largest |MC / predicted - 1| over the schemes."""
    out = {}
    for name in dict.fromkeys(r["config"] for r in res["rows"]):
        ratios = [r["ratio_realized"] for r in res["rows"] if r["config"] == name and r["ratio_realized"] is not None]
        if ratios:
            out[f"{name}: max |MC / predicted - 1|"] = float(max(abs(x - 1) for x in ratios))
    return out


@register("000/hw", title="low-rank scheme through the hardware simulator vs the additive-noise theory",
          plot=lambda r, png: plot_hw(r, png), summary=_summary, quick={"size": 32, "ranks": (2, 8), "trials": 40},
          reference={"prog-only: max |MC / predicted - 1|": "0 (the paper's additive model)"})
def run_hw(size: int = 64, ranks=(2, 4, 8, 16), sigma_abs: float = 3e-6, trials: int = 200, batch: int = 64,
           split: str = "balanced", seed: int = 0, configs=None) -> dict:
    """Run the ladder. Returns a JSON-ready dict with one row per (config, scheme)."""
    from memcim import validate
    from memcim.analysis.lowrank import harmonic_matrix, svd_stats
    from memcim.io import provenance
    from memcim.mapping.lowrank import hardware_baseline_error, hardware_lowrank
    from memcim.optimize.lowrank import best_reps_per_k

    size = validate.integer("size", size, lo=4, hi=4096)
    trials = validate.integer("trials", trials, lo=2)
    sigma_abs = validate.number("sigma_abs", sigma_abs, lo=0.0)
    ranks = tuple(validate.integer("ranks", k, lo=1, hi=size) for k in ranks)
    if not ranks:
        raise ValueError("ranks: give at least one rank")
    t0 = time.perf_counter()
    W = harmonic_matrix(size, seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal((batch, size))
    R = x.T @ x / batch
    st = svd_stats(W, R)
    per_k = best_reps_per_k(st, 1.0, 1.0, split, size * size)  # reps depend on sigma only via the ratio
    rows = []
    ladder = hardware_ladder(sigma_abs) if configs is None else configs
    y = torch.as_tensor(x @ W)
    for name, hw in ladder:
        b = hardware_baseline_error(W, hw, x, trials=trials, seed=seed + 11)
        rows.append({"config": name, "scheme": "baseline", "k": None, "r1": None, "r2": None,
                     "mc": b["mean"], "mc_stderr": b["stderr"], "pred_ideal": b["predicted"],
                     "pred_realized": b["predicted_with_quantization"], "sigma1": b["sigma"], "sigma2": None,
                     "devices": 2 * size * size})
        for k in ranks:
            if k not in per_k["k"]:
                continue
            j = int(np.searchsorted(per_k["k"], k))
            r1, r2 = int(per_k["r1"][j]), int(per_k["r2"][j])
            sch = hardware_lowrank(W, hw, k, r1, r2, split, calib_inputs=x)
            yh = sch.run(x, trials=trials, seed=seed + 100 + k)
            e = ((yh - y) ** 2).sum(-1).mean(-1).numpy()
            s1, s2 = sch.sigmas()
            rows.append({"config": name, "scheme": "lowrank", "k": int(k), "r1": r1, "r2": r2,
                         "mc": float(e.mean()), "mc_stderr": float(e.std(ddof=1) / np.sqrt(e.size)),
                         "pred_ideal": sch.predict(R).total, "pred_realized": sch.predict(R, realized=True).total,
                         "sigma1": s1, "sigma2": s2, "devices": sch.devices})
    for r in rows:
        r["ratio_ideal"] = r["mc"] / r["pred_ideal"] if r["pred_ideal"] > 0 else None
        r["ratio_realized"] = r["mc"] / r["pred_realized"] if r["pred_realized"] > 0 else None
        r["z_realized"] = (r["mc"] - r["pred_realized"]) / r["mc_stderr"] if r["mc_stderr"] else None
    return {"config": {"size": size, "ranks": list(ranks), "sigma_abs": sigma_abs, "trials": trials,
                       "batch": batch, "split": split, "seed": seed,
                       "hardware": {nm: hw.to_dict() for nm, hw in ladder}},
            "rows": rows, "seconds": time.perf_counter() - t0, "provenance": provenance(seed=seed)}


def plot_hw(res: dict, path) -> None:
    """PNG: Monte Carlo / prediction (realized factors) per config and scheme, and the Monte Carlo
    error, two panels one above the other with the config names once, under the lower one."""
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    rows = res["rows"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    schemes = list(dict.fromkeys((r["scheme"], r["k"]) for r in rows))
    fig, axes = plt.subplots(2, 1, figsize=(9, 7), sharex=True, layout="constrained")
    w = 0.8 / len(schemes)
    for i, (sc, k) in enumerate(schemes):
        lab = "baseline" if sc == "baseline" else f"low-rank k={k}"
        vals = [next((r for r in rows if r["config"] == c and r["scheme"] == sc and r["k"] == k), None) for c in configs]
        xs = np.arange(len(configs)) + i * w
        axes[0].bar(xs, [v["ratio_realized"] if v and v["ratio_realized"] else np.nan for v in vals], w, label=lab)
        axes[1].bar(xs, [v["mc"] if v else np.nan for v in vals], w, label=lab)
    axes[1].set_yscale("log")  # the ratio stays linear: it sits near 1
    axes[1].set_xticks(np.arange(len(configs)) + 0.4 - w / 2)
    axes[1].set_xticklabels(configs, rotation=20, ha="right", fontsize=8)
    axes[0].axhline(1.0, color="k", lw=1)
    axes[0].set_ylabel("Monte Carlo / prediction\n(additive model, realized factors)")
    axes[1].set_ylabel("E||y_hat - y||^2 per input\n(Monte Carlo)")
    axes[0].legend(fontsize=7, ncol=len(schemes), loc="upper left")
    fig.suptitle(f"low-rank scheme on hardware: n={res['config']['size']}, "
                 f"prog_sigma_abs={res['config']['sigma_abs']:g} S, {res['config']['trials']} systems per bar",
                 fontsize=9)
    savefig(fig, path)
