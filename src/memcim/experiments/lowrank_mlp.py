"""Low-rank two-step scheme per layer of a real network: accuracy against the device budget.

Every ``Linear`` layer ``y = x W + b`` (``W = weight.T``, (in, out)) is computed either

* **baseline**: ``W`` programmed ``r = floor(f)`` times and averaged (``r = 1`` at ``f = 1``; no
  baseline fits a budget ``f < 1``), or
* **hybrid**: per layer, whichever of the two the closed form predicts better;
* **low-rank**: the exact optimizer's ``(k, r1, r2, split)`` for that layer under the budget
  ``f * in * out`` devices, using the layer's measured input second moment ``R`` (from calibration
  images) in the closed form.

Noise: the paper's model, additive i.i.d. ``N(0, sigma^2)`` per programmed weight with
``sigma = eta * max|W_layer|`` for every array of that layer (``eta`` is the programming noise as a
fraction of the weight range; for a differential pair ``eta = sqrt(2) sigma_G / (g_max - g_min)``).
Biases are digital. The Monte Carlo draws the averaged noise of ``r`` copies directly as one
matrix of variance ``sigma^2 / r`` (equal in distribution to averaging ``r`` programmed copies; the
literal averaging is checked in :mod:`memcim.analysis.lowrank_montecarlo`).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from memcim.registry import register

__all__ = ["layer_second_moments", "linear_layers", "plot_mlp", "run_mlp"]


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's ``Linear`` layers in forward order (the model must be an ``nn.Sequential`` MLP)."""
    if not isinstance(model, nn.Sequential):
        raise ValueError("model: an nn.Sequential MLP (Flatten/Linear/activation layers) is required")
    lins = [m for m in model if isinstance(m, nn.Linear)]
    if not lins:
        raise ValueError("model: has no nn.Linear layer")
    for m in model:
        if not isinstance(m, (nn.Linear, nn.Flatten, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity,
                              nn.Dropout, nn.GELU, nn.LeakyReLU)):
            raise ValueError(f"model: layer {type(m).__name__} is not supported; only MLPs (Linear + activations)")
    return lins


@torch.no_grad()
def layer_second_moments(model: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """``R = E[x^T x]`` of the input of every Linear layer, measured on the batch ``x``."""
    out = []
    h = x.to(torch.float64)
    for m in model:
        if isinstance(m, nn.Linear):
            out.append((h.T @ h / h.shape[0]).numpy())
            h = h @ m.weight.detach().double().T + m.bias.detach().double()
        else:
            h = m(h)
    return out


@torch.no_grad()
def _forward(model, x, weights):
    h = x.to(torch.float64)
    i = 0
    for m in model:
        if isinstance(m, nn.Linear):
            h = h @ weights[i] + m.bias.detach().double()
            i += 1
        else:
            h = m(h)
    return h


def _accuracy(model, x, y, weights, batch=2000):
    correct = 0
    for s in range(0, x.shape[0], batch):
        correct += int((_forward(model, x[s:s + batch], weights).argmax(1) == y[s:s + batch]).sum())
    return correct / x.shape[0]


def _summary(res: dict) -> dict:
    out = {"clean accuracy": res["clean_accuracy"]}
    for r in res["rows"]:
        f = r["budget_factor"]
        out[f"budget {f:g}: low-rank accuracy"] = r["lowrank"]["mean"]
        if r["baseline"]:
            out[f"budget {f:g}: baseline accuracy"] = r["baseline"]["mean"]
    return out


@register("000/mlp", title="low-rank scheme per layer of the MNIST MLP: accuracy vs device budget",
          plot=lambda r, png: plot_mlp(r, png), summary=_summary,
          quick={"n_test": 1000, "trials": 2, "budgets": (1.0, 2.0)},
          reference={"clean accuracy": "(beyond the paper)"})
def run_mlp(model: nn.Module | str | None = None, model_name: str = "mnist-mlp-500-300", dataset: str = "mnist",
            eta: float = 0.3, budgets=(0.25, 0.5, 1.0, 2.0, 4.0), trials: int = 5, n_test: int | None = None,
            n_calib: int = 2000, seed: int = 0, progress: bool = False) -> dict:
    """Accuracy of the baseline and the per-layer low-rank scheme against the device budget.

    Parameters
    ----------
    model : any trained ``nn.Sequential`` MLP, a reference-model name or a ``torch.save(model)`` file;
        default: the reference ``model_name``.
    model_name : a :data:`memcim.nn.models.REFERENCE_MODELS` name (used when ``model`` is None).
    dataset : dataset name for calibration (train split) and accuracy (test split).
    eta : programming noise std as a fraction of each layer's ``max|W|``.
    budgets : device budgets as multiples ``f`` of each layer's ``in * out``.
    trials : noisy networks sampled per point. n_test : test images (default all).
    n_calib : training images used to measure each layer's ``R``. seed : RNG seed.

    Returns
    -------
    JSON-ready dict: per budget, per-layer choices and predicted errors, accuracy mean/std.
    """
    from memcim import validate
    from memcim.analysis.lowrank import factorize, svd_stats
    from memcim.data.datasets import load_dataset
    from memcim.io import provenance
    from memcim.optimize.lowrank import optimize_lowrank

    eta = validate.number("eta", eta, lo=0.0)
    trials = validate.integer("trials", trials, lo=1)
    if n_test is not None:
        n_test = validate.integer("n_test", n_test, lo=1)
    n_calib = validate.integer("n_calib", n_calib, lo=1)
    budgets = [float(f) for f in budgets]
    if not budgets or min(budgets) <= 0:
        raise ValueError(f"budgets: {budgets} is not allowed; every budget factor must be > 0")
    t0 = time.perf_counter()
    if isinstance(model, str):
        model_name, model = model, None
    if model is None:
        from memcim.nn.loading import load_model

        model = load_model(model_name)
    else:
        model_name = "user model"
    model = model.eval().double()
    lins = linear_layers(model)
    calib = load_dataset(dataset, "train", limit=n_calib)
    test = load_dataset(dataset, "test", limit=n_test)
    xc, xt, yt = calib.x.double(), test.x.double(), test.y
    Rs = layer_second_moments(model, xc)
    Ws = [m.weight.detach().double().T.contiguous() for m in lins]
    stats = [svd_stats(W.numpy(), R) for W, R in zip(Ws, Rs)]
    sig = [eta * float(W.abs().max()) for W in Ws]
    clean = _accuracy(model, xt, yt, Ws)
    g = torch.Generator().manual_seed(seed)

    def sample_acc(make):
        accs = [_accuracy(model, xt, yt, make()) for _ in range(trials)]
        return {"mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)) if trials > 1 else 0.0,
                "values": accs}

    rows = []
    for f in budgets:
        row = {"budget_factor": f, "layers": []}
        # baseline: floor(f) averaged copies of W
        rb = int(math.floor(f + 1e-12))
        if rb >= 1:
            row["baseline"] = sample_acc(lambda: [W + torch.randn(W.shape, generator=g, dtype=W.dtype) * s / math.sqrt(rb)
                                                  for W, s in zip(Ws, sig)])
            row["baseline"]["reps"] = rb
        else:
            row["baseline"] = None
        plans = []
        for li, (W, st, s) in enumerate(zip(Ws, stats, sig)):
            n, m = W.shape
            budget = int(f * n * m)
            if budget < n + m:
                raise ValueError(f"budgets: {f} fits no low-rank scheme for layer {li} ({n}x{m}); "
                                 f"need f >= {(n + m) / (n * m):.3g}")
            c = optimize_lowrank(st, s, s, budget=budget)
            A, B = factorize(st, c.k, c.split)
            plans.append((torch.as_tensor(A), torch.as_tensor(B), c, s))
            row["layers"].append({"shape": [n, m], "sigma": s, **c.to_dict(),
                                  "baseline_predicted_at_reps": c.baseline / max(rb, 1)})
        row["lowrank"] = sample_acc(lambda: [
            (A + torch.randn(A.shape, generator=g, dtype=A.dtype) * s / math.sqrt(c.r1))
            @ (B + torch.randn(B.shape, generator=g, dtype=B.dtype) * s / math.sqrt(c.r2))
            for A, B, c, s in plans])
        row["lowrank_noiseless"] = _accuracy(model, xt, yt, [A @ B for A, B, _, _ in plans])
        # hybrid: per layer, whichever of baseline (floor(f) copies) and low-rank predicts less error
        use_lr = [rb < 1 or c.predicted < c.baseline / rb for _, _, c, _ in plans]
        row["hybrid_uses_lowrank"] = use_lr
        row["hybrid"] = sample_acc(lambda: [
            ((A + torch.randn(A.shape, generator=g, dtype=A.dtype) * s / math.sqrt(c.r1))
             @ (B + torch.randn(B.shape, generator=g, dtype=B.dtype) * s / math.sqrt(c.r2))) if u else
            (W + torch.randn(W.shape, generator=g, dtype=W.dtype) * s / math.sqrt(rb))
            for (A, B, c, s), W, u in zip(plans, Ws, use_lr)])
        rows.append(row)
    return {"config": {"model": model_name, "dataset": dataset, "eta": eta, "budgets": budgets, "trials": trials,
                       "n_test": int(xt.shape[0]), "n_calib": int(xc.shape[0]), "seed": seed,
                       "noise": "additive N(0, (eta max|W_layer|)^2) per programmed weight, paper 000 model"},
            "clean_accuracy": clean, "rows": rows, "seconds": time.perf_counter() - t0,
            "provenance": provenance(seed=seed)}


def plot_mlp(res: dict, path) -> None:
    """PNG: test accuracy against the device budget, baseline vs low-rank."""
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    rows = res["rows"]
    f = [r["budget_factor"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    lr = [r["lowrank"]["mean"] for r in rows]
    ax.errorbar(f, lr, yerr=[r["lowrank"]["std"] for r in rows], fmt="o-", label="low-rank per layer (optimized)")
    ax.plot(f, [r["lowrank_noiseless"] for r in rows], ":", color="C0", label="low-rank, no noise")
    fb = [(r["budget_factor"], r["baseline"]) for r in rows if r["baseline"]]
    if fb:
        ax.errorbar([a for a, _ in fb], [b["mean"] for _, b in fb], yerr=[b["std"] for _, b in fb], fmt="s-",
                    color="C3", label="baseline (W, floor(f) copies averaged)")
    ax.errorbar(f, [r["hybrid"]["mean"] for r in rows], yerr=[r["hybrid"]["std"] for r in rows], fmt="^--",
                color="C2", label="hybrid: per layer the better of the two (predicted)")
    ax.axhline(res["clean_accuracy"], color="k", lw=1, label="noiseless digital")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("device budget per layer / (in x out)")
    ax.set_ylabel("test accuracy")
    c = res["config"]
    ax.set_title(f"{c['model']} on {c['dataset']}, eta={c['eta']:g} ({c['trials']} noisy nets per point)", fontsize=9)
    ax.legend(fontsize=7)
    savefig(fig, path)
