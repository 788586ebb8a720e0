"""Paper 002 (Representable Matrices) reproductions: Fig. 4, Fig. 7 and Fig. 9a.

* :func:`fig4` -- total, value-range and precision error of the ``representable`` mapping against
  the scale alpha for one random matrix, with the automatic alpha and the ``dpe`` / ``linear``
  errors on the same matrix.
* :func:`fig7` -- maximum output error over random inputs and random matrices against the wire
  resistance, the array size and the device model (ideal cells, TaOx memristors, 1T1R cells), for
  every mapping side by side.
* :func:`fig10a` -- the same with random telegraph noise on the programmed conductances.
* :func:`fig9a` -- a multilayer perceptron (default: the reference 784-500-300-10 MNIST MLP) mapped
  layer by layer onto ``tile x tile`` differential crossbar pairs with IR drop; every tile mapped
  with ``linear`` / ``dpe`` / ``representable``; its realized matrix (exact for ideal cells: the
  circuit is linear, so ``I = v G_eff`` for every input) gives the effective weights; DAC on the
  tile inputs, ADC on every tile's partial sums, partial sums added digitally; accuracy against
  the DAC/ADC resolution.

Every function writes ``<name>.json`` (config, provenance with the seed, rows, and a top-level
``summary`` of scalar headline numbers) and ``<name>.png`` into ``out``.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from memcim.hardware.circuit import G_MAX, G_MIN, Crossbar, NonlinearCrossbar, Wires
from memcim.io import provenance, savefig, write_json
from memcim.mapping.irdrop import (METHODS, IRDropPlan, error_report, map_dpe, map_linear, map_representable,
                                   plan_states, quantize)

#: representable settings of the full (non-quick) Fig. 9a run: fewer alpha evaluations and
#: tuning iterations than the mapping defaults (4 alpha evaluations, 4 final iterations).
FAST_REPRESENTABLE = dict(max_alpha_evals=2, search_iters=1, final_iters=3)
#: quick-mode settings (alpha from the DPE scale, one tuning iteration, no calibration round).
QUICK_REPRESENTABLE = dict(max_alpha_evals=1, search_iters=1, final_iters=1, calib_rounds=0)
#: Fig. 9a model: the paper's MLP; quick mode uses the smaller reference MLP (17 instead of 40 tiles).
FIG9A_MODEL, FIG9A_QUICK_MODEL = "mnist-mlp-500-300", "mnist-mlp-256-128"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def map_and_realize(W, method: str, wires: Wires, *, g_min=G_MIN, g_max=G_MAX, bits=8, rep_kw=None):
    """Map ``W`` (in, out) with ``method``; returns (plan, W^r quantized, W^r unquantized).

    Cheaper than :func:`memcim.mapping.irdrop.map_matrix_irdrop` when the unquantized
    realization is not needed (pass ``bits=None``: then both are the same solve).
    """
    W = np.asarray(W, float)
    if method == "linear":
        gp, gn, a, info = map_linear(W, wires, g_min, g_max, bits)
    elif method == "dpe":
        gp, gn, a, info = map_dpe(W, wires, g_min, g_max, bits)
    elif method == "representable":
        gp, gn, a, info = map_representable(W, wires, g_min, g_max, bits, **(rep_kw or {}))
    else:
        raise ValueError(f"method: {method!r} is not allowed; choose one of {', '.join(METHODS)}")
    qp, qn = quantize(gp, g_min, g_max, bits), quantize(gn, g_min, g_max, bits)
    plan = IRDropPlan(qp, qn, float(a), method, wires, g_min, g_max, bits, info)
    Wr = plan.realized()
    Wu = Wr if bits is None else (Crossbar(gp, wires).realized() - Crossbar(gn, wires).realized()) / a
    return plan, Wr, Wu


# ------------------------------------------------------------------------------------------------
# Fig. 4
# ------------------------------------------------------------------------------------------------
def fig4(out, *, size: int = 64, n_alpha: int = 12, seed: int = 0, quick: bool = False, r_wire: float = 1.0,
         bits: int = 8, final_iters: int = 4) -> dict:
    """Errors of ``representable`` against alpha (fixed alpha, then tuning) for one matrix.

    Errors are squared Frobenius norms (paper's terms): value-range error = ``||W - W^r||^2``
    of the unquantized tuned plan, total = the quantized plan, precision = their difference.
    """
    if quick:
        size, n_alpha = min(size, 32), min(n_alpha, 6)
    wires = Wires(r_wire=r_wire)
    W = np.random.default_rng(seed).uniform(-1, 1, (size, size))
    c0 = (G_MAX - G_MIN) / np.max(np.abs(W))
    rows = []
    t0 = time.perf_counter()
    for rho in np.geomspace(0.08, 1.2, n_alpha):
        a = float(rho * c0)
        _, Wr, Wu = map_and_realize(W, "representable", wires, bits=bits,
                                    rep_kw=dict(alpha=a, final_iters=final_iters))
        e = error_report(W, Wr, Wu)
        rows.append({"alpha": a, "alpha_over_linear": float(rho), "total_error": e["total_error"],
                     "value_range_error": e["value_range_error"], "precision_error": e["precision_error"],
                     "max_output_error": e["max_output_error"]})
    auto = {}
    for m in METHODS:
        plan, Wr, Wu = map_and_realize(W, m, wires, bits=bits)
        auto[m] = {"alpha": plan.alpha, **error_report(W, Wr, Wu)}
    best = min(rows, key=lambda r: r["total_error"])
    summary = {
        "size": size, "r_wire": r_wire,
        "alpha_best_swept": best["alpha"], "total_error_best_swept": best["total_error"],
        "alpha_auto": auto["representable"]["alpha"], "total_error_auto": auto["representable"]["total_error"],
        "total_error_dpe": auto["dpe"]["total_error"], "total_error_linear": auto["linear"]["total_error"],
        "error_ratio_dpe_over_representable": auto["dpe"]["frobenius_error"] / auto["representable"]["frobenius_error"],
        "max_output_error_ratio_dpe_over_representable":
            auto["dpe"]["max_output_error"] / auto["representable"]["max_output_error"],
        "wall_s": time.perf_counter() - t0,
    }
    res = {"figure": "fig4", "summary": summary, "rows": rows, "methods": auto,
           "config": {"size": size, "n_alpha": n_alpha, "r_wire": r_wire, "r_in": wires.r_in, "r_out": wires.r_out,
                      "bits": bits, "final_iters": final_iters, "g_min": G_MIN, "g_max": G_MAX, "quick": quick,
                      "matrix": "uniform[-1,1]"},
           "provenance": provenance(seed=seed)}
    out = Path(out)
    write_json(out / "fig4.json", res)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = [r["alpha"] for r in rows]
    for k, st in (("total_error", "k-o"), ("value_range_error", "b-s"), ("precision_error", "r-^")):
        ax.plot(x, [max(r[k], 1e-12) for r in rows], st, label=k.replace("_", " "), ms=4)
    ax.axvline(summary["alpha_auto"], color="g", ls="--", label="alpha chosen (auto)")
    ax.axhline(summary["total_error_dpe"], color="gray", ls=":", label="dpe total error")
    ax.set(xscale="log", yscale="log", xlabel="alpha [S per unit weight]", ylabel="||W - W^r||_F^2",
           title=f"Fig. 4: representable, {size}x{size}, r_wire={r_wire} Ohm")
    ax.legend(fontsize=7)
    savefig(fig, out / "fig4.png")
    return res


# ------------------------------------------------------------------------------------------------
# Fig. 7
# ------------------------------------------------------------------------------------------------
def _max_out_err(X, W, Y):
    """max over inputs/outputs of |Y - X W| / max |X W| (the paper's max output error)."""
    ref = X @ W
    return float(np.max(np.abs(Y - ref)) / max(np.max(np.abs(ref)), 1e-300))


def _device_outputs(plan: IRDropPlan, X, device: str, v_read: float):
    """Outputs in weight units for inputs X in [0, 1] scaled to ``v_read`` volts."""
    from memcim.hardware.devices_nonlinear import Level1NMOS

    if device == "ideal":
        return X @ plan.realized(), 0.0
    tr = Level1NMOS() if device == "1t1r" else None
    v_cal = np.full(plan.g_pos.shape[0], v_read)
    sp_, sn_ = plan_states(plan, v_cal=v_cal, transistor=tr)
    bad = float(np.mean(~((sp_ >= 0) & (sp_ <= 1))) + np.mean(~((sn_ >= 0) & (sn_ <= 1)))) / 2
    sp_, sn_ = np.clip(np.nan_to_num(sp_), 0, 1), np.clip(np.nan_to_num(sn_), 0, 1)
    V = X * v_read
    Ip = NonlinearCrossbar(sp_, transistor=tr, wires=plan.wires).currents(V)
    In = NonlinearCrossbar(sn_, transistor=tr, wires=plan.wires).currents(V)
    return (Ip - In) / (plan.alpha * v_read), bad


def fig7(out, *, sizes=(32, 64, 128, 256), r_wires=(0.25, 0.5, 1.0, 2.0, 4.0), r_wire_size: int = 64,
         device_size: int = 32, n_matrices: int = 2, n_inputs: int = 100, n_inputs_device: int = 10,
         seed: int = 0, quick: bool = False, bits: int = 8, v_read: float = 0.2, rep_kw=None,
         device_g_min: float = 1e-4, per_weight=(1, 2, 4), per_weight_size: int = 32, large: int = 256 * 256) -> dict:
    """Max output error against wire resistance, array size and device model, for every mapping.

    Matrices: uniform [-1, 1]; inputs: uniform [0, 1] (x ``v_read`` volts for non-linear cells;
    paper: 0.2 V max). The device-model panel maps with g in [``device_g_min``, g_max] (the TaOx
    device cannot reach below ~6e-5 S at 0.2 V) and converts each plan to memristor states at
    ``v_cal = v_read`` (paper Sec. V-D), then solves the non-linear circuit by Newton's method.
    Memristors per weight (panel ``per_weight``, size ``per_weight_size``): ``k`` pairs per weight
    are ``k`` adjacent columns, each mapped to ``W / k`` (an n x k*n array), whose output
    currents are summed; more pairs give finer effective steps but a longer bit line network.
    Arrays with ``large`` cells or more (default 256 x 256) use one matrix and
    :data:`FAST_REPRESENTABLE` to bound the run time.
    """
    if quick:
        sizes = tuple(s for s in sizes if s <= 64) or (32,)
        r_wires, r_wire_size, device_size = (0.5, 2.0), 32, 16
        n_matrices, n_inputs, n_inputs_device = 1, 50, 5
        per_weight, per_weight_size = (1, 2), 16
    rng = np.random.default_rng(seed)
    rows = []
    t0 = time.perf_counter()

    def run_panel(panel, n, wires, device="ideal", g_min=G_MIN, nin=n_inputs, kpw=1):
        # arrays of 256 x 256 and more: one matrix and the faster representable settings
        big = n * n * kpw >= large
        rk = {**(rep_kw or {}), **FAST_REPRESENTABLE} if big else rep_kw
        for k in range(1 if big else n_matrices):
            W = rng.uniform(-1, 1, (n, n))
            X = rng.uniform(0, 1, (nin, n))
            for m in METHODS:
                t1 = time.perf_counter()
                Wk = np.repeat(W, kpw, axis=1) / kpw
                plan, Wr, _ = map_and_realize(Wk, m, wires, g_min=g_min, bits=bits, rep_kw=rk)
                Y, bad = _device_outputs(plan, X, device, v_read)
                Y, Wr = Y.reshape(len(X), n, kpw).sum(-1), Wr.reshape(n, n, kpw).sum(-1)
                rows.append({"panel": panel, "size": n, "r_wire": wires.r_wire, "device": device, "matrix": k,
                             "per_weight": kpw, "method": m, "max_output_error": _max_out_err(X, W, Y),
                             "relative_error": float(np.linalg.norm(Wr - W) / np.linalg.norm(W)),
                             "states_out_of_range": bad, "time_s": time.perf_counter() - t1})

    for rw in r_wires:
        run_panel("r_wire", r_wire_size, Wires(r_wire=rw))
    for n in sizes:
        run_panel("size", n, Wires(r_wire=1.0))
    for kpw in per_weight:
        run_panel("per_weight", per_weight_size, Wires(r_wire=1.0), kpw=kpw)
    for dev in ("ideal", "taox", "1t1r"):
        run_panel("device", device_size, Wires(r_wire=1.0), device=dev, g_min=device_g_min, nin=n_inputs_device)

    def agg(panel, key, val, m):
        v = [r["max_output_error"] for r in rows if r["panel"] == panel and r[key] == val and r["method"] == m]
        return max(v)

    table = {p: {str(v): {m: agg(p, key, v, m) for m in METHODS} for v in vals}
             for p, key, vals in (("r_wire", "r_wire", r_wires), ("size", "size", sizes),
                                  ("per_weight", "per_weight", per_weight),
                                  ("device", "device", ("ideal", "taox", "1t1r")))}
    ratios = {s: table["size"][str(s)]["dpe"] / table["size"][str(s)]["representable"] for s in sizes}
    summary = {"error_ratio_dpe_over_representable": float(np.mean(list(ratios.values()))),
               "error_ratio_dpe_over_representable_largest": ratios[max(sizes)],
               "largest_size": max(sizes),
               **{f"max_output_error_{m}_largest": table["size"][str(max(sizes))][m] for m in METHODS},
               **{f"max_output_error_{m}_1t1r": table["device"]["1t1r"][m] for m in METHODS},
               "wall_s": time.perf_counter() - t0}
    res = {"figure": "fig7", "summary": summary, "table": table,
           "ratio_dpe_over_representable_by_size": {str(k): v for k, v in ratios.items()}, "rows": rows,
           "config": {"sizes": list(sizes), "r_wires": list(r_wires), "r_wire_size": r_wire_size,
                      "device_size": device_size, "n_matrices": n_matrices, "n_inputs": n_inputs,
                      "n_inputs_device": n_inputs_device, "bits": bits, "v_read": v_read,
                      "device_g_min": device_g_min, "g_min": G_MIN, "g_max": G_MAX, "r_in": 100.0, "r_out": 100.0,
                      "representable": rep_kw or "defaults", "representable_large": FAST_REPRESENTABLE,
                      "large_cells": large, "quick": quick,
                      "per_weight": list(per_weight), "per_weight_size": per_weight_size},
           "provenance": provenance(seed=seed)}
    out = Path(out)
    write_json(out / "fig7.json", res)
    plt = _plt()
    fig, axs = plt.subplots(1, 4, figsize=(17, 3.8))
    sty = {"linear": "k-o", "dpe": "b-s", "representable": "r-^"}
    for ax, (p, vals, xl) in zip(axs, (("r_wire", r_wires, "wire resistance [Ohm]"),
                                       ("size", sizes, "array size n (n x n)"),
                                       ("per_weight", per_weight, "memristor pairs per weight"),
                                       ("device", ("ideal", "taox", "1t1r"), "device model"))):
        xs = list(range(len(vals))) if p == "device" else list(vals)
        for m in METHODS:
            ax.plot(xs, [table[p][str(v)][m] for v in vals], sty[m], label=m, ms=4)
        ax.set(yscale="log", xlabel=xl, ylabel="max output error (rel.)")
        if p == "device":
            ax.set_xticks(xs, list(vals))
            ax.set_title(f"{device_size}x{device_size}, r_wire=1")
        else:
            ax.set_xscale("log", base=2)
            ax.set_title({"r_wire": f"{r_wire_size}x{r_wire_size}", "size": "r_wire = 1 Ohm",
                          "per_weight": f"{per_weight_size} inputs x {per_weight_size} weights"}[p])
    axs[0].legend(fontsize=8)
    fig.suptitle("Fig. 7: max output error over random inputs and matrices")
    savefig(fig, out / "fig7.png")
    return res


# ------------------------------------------------------------------------------------------------
# Fig. 9a
# ------------------------------------------------------------------------------------------------
def _linears(model):
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not layers:
        raise ValueError("--model: has no Linear layers; fig9a needs an MLP")
    return [(l.weight.detach().double().numpy().T.copy(), None if l.bias is None else
             l.bias.detach().double().numpy().copy()) for l in layers]


def _tile_blocks(W, tile):
    n, m = W.shape
    for r0 in range(0, n, tile):
        for c0 in range(0, m, tile):
            yield r0, c0, W[r0:r0 + tile, c0:c0 + tile]


def _quant_unsigned(x, bits, hi):
    if bits is None:
        return x
    L = 2 ** int(bits) - 1
    return np.round(np.clip(x, 0, hi) / hi * L) / L * hi


def _quant_signed(x, bits, hi):
    if bits is None:
        return x
    L = 2 ** (int(bits) - 1) - 1
    return np.round(np.clip(x, -hi, hi) / hi * L) / L * hi


def mlp_forward(x, layers, tiles, bits, ranges):
    """Tile-level forward pass: DAC per layer input, ADC per tile partial sum, digital accumulation.

    ``tiles[l]`` = list of (r0, c0, effective block); ``ranges[l]`` = (input max, partial-sum max).
    """
    h = x
    for li, (W, b) in enumerate(layers):
        xq = _quant_unsigned(h, bits, ranges[li][0])
        y = np.zeros((x.shape[0], W.shape[1]))
        for r0, c0, B in tiles[li]:
            p = xq[:, r0:r0 + B.shape[0]] @ B
            y[:, c0:c0 + B.shape[1]] += _quant_signed(p, bits, ranges[li][1])
        if b is not None:
            y += b
        h = np.maximum(y, 0) if li < len(layers) - 1 else y
    return h


def _prepare(model, dataset, n_images, n_calib, tile, quick):
    """Model, data (evaluation and calibration images), ideal tiles and DAC/ADC ranges."""
    import torch

    from memcim.data.datasets import load_dataset

    if model is None:
        model = FIG9A_QUICK_MODEL if quick else FIG9A_MODEL
    if isinstance(model, torch.nn.Module):
        net, model_name = copy.deepcopy(model).double().eval(), type(model).__name__
    else:
        from memcim.nn.loading import load_model

        net, model_name = load_model(str(model)).double().eval(), str(model)
    ds = load_dataset(dataset, "test", limit=n_images + n_calib)
    if len(ds.y) < n_images + 1:
        raise ValueError(f"--images: {n_images} is more than the {len(ds.y)} test samples of {dataset}")
    xall = ds.x.double().reshape(len(ds.y), -1).numpy()
    yall = ds.y.numpy()
    x, y = xall[:n_images], yall[:n_images]
    xc = xall[n_images:] if len(yall) > n_images else xall
    with torch.no_grad():
        soft_logits = net(ds.x[:n_images].double()).numpy()
    acc_soft = float(np.mean(soft_logits.argmax(1) == y))
    layers = _linears(net)
    if layers[0][0].shape[0] != x.shape[1]:
        raise ValueError(f"--model: first layer takes {layers[0][0].shape[0]} inputs, the data has {x.shape[1]}")
    # ideal tiles and the DAC/ADC ranges from calibration images
    ideal = [[(r0, c0, B) for r0, c0, B in _tile_blocks(W, tile)] for W, _ in layers]
    ranges, h = [], xc
    for li, (W, b) in enumerate(layers):
        pmax = max(float(np.max(np.abs(h[:, r0:r0 + B.shape[0]] @ B))) for r0, c0, B in ideal[li])
        ranges.append((max(float(h.max()), 1e-12), max(pmax, 1e-12)))
        h = h @ W + (0 if b is None else b)
        h = np.maximum(h, 0) if li < len(layers) - 1 else h
    # own check: the ideal tiled forward reproduces the software network
    check = mlp_forward(x, layers, ideal, None, ranges)
    if not np.allclose(check, soft_logits, atol=1e-8):
        raise RuntimeError("fig9a: the tiled forward pass disagrees with the software model (unsupported "
                           "layer types between the Linear layers?)")
    return net, model_name, x, y, xc, acc_soft, layers, ideal, ranges


def _map_tiles(layers, ideal, tile, wires, prog_bits, rep_kw, progress, methods=METHODS):
    """Map every (zero-padded) tile with every method: effective blocks, plans and per-tile rows."""
    tiles = {m: [[] for _ in layers] for m in methods}
    plans = {m: [[] for _ in layers] for m in methods}
    tile_rows = []
    n_tiles = sum(len(t) for t in ideal)
    it = ((li, r0, c0, B) for li in range(len(layers)) for r0, c0, B in ideal[li])
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=n_tiles, desc="tiles", file=__import__("sys").stderr)
    for li, r0, c0, B in it:
        P = np.zeros((tile, tile))
        P[:B.shape[0], :B.shape[1]] = B
        for m in methods:
            if not np.any(P):
                tiles[m][li].append((r0, c0, np.zeros_like(B)))
                plans[m][li].append(None)
                continue
            t1 = time.perf_counter()
            plan, Wr, _ = _map_q(P, m, wires, prog_bits, rep_kw)
            tiles[m][li].append((r0, c0, Wr[:B.shape[0], :B.shape[1]]))
            plans[m][li].append(plan)
            tile_rows.append({"layer": li, "r0": r0, "c0": c0, "method": m, "time_s": time.perf_counter() - t1,
                              "relative_error": float(np.linalg.norm(Wr - P) / np.linalg.norm(P))})
    return tiles, plans, tile_rows


def fig9a(out, *, model=None, dataset="mnist", n_images: int = 1000, tile: int = 128,
          io_bits=(4, 6, 8, None), prog_bits: int | None = 8, wires: Wires | None = None, seed: int = 0,
          quick: bool = False, rep_kw=None, n_calib: int = 200, progress: bool = False) -> dict:
    """Accuracy of an MLP mapped onto ``tile x tile`` crossbar pairs with IR drop, per mapping and DAC/ADC bits.

    Parameters
    ----------
    model : reference-model name or a ``torch.save(model)`` file; or an ``nn.Module``. Default
        :data:`FIG9A_MODEL` (quick: :data:`FIG9A_QUICK_MODEL`).
    dataset : dataset name for :func:`memcim.data.datasets.load_dataset` (test split).
    n_images : evaluated test images (the first ones); ``n_calib`` further images set the DAC and
        ADC ranges (max layer input, max |tile partial sum| of the software model).
    tile : crossbar size; a partial tile is zero-padded (unused cells at g_min, inputs at 0 V).
    io_bits : DAC/ADC resolutions to evaluate (None = no conversion error).
    prog_bits : conductance programming precision (None = continuous).
    wires : crossbar parasitics (default paper 002: 1 / 100 / 100 Ohm).
    rep_kw : settings of ``map_representable`` (default :data:`FAST_REPRESENTABLE`, quick:
        :data:`QUICK_REPRESENTABLE`).
    """
    wires = wires or Wires()
    if rep_kw is None:
        rep_kw = QUICK_REPRESENTABLE if quick else FAST_REPRESENTABLE
    if quick:
        n_images = min(n_images, 300)
    net, model_name, x, y, xc, acc_soft, layers, ideal, ranges = _prepare(model, dataset, n_images, n_calib, tile,
                                                                          quick)
    n_tiles = sum(len(t) for t in ideal)
    t0 = time.perf_counter()
    tiles, _, tile_rows = _map_tiles(layers, ideal, tile, wires, prog_bits, rep_kw, progress)
    map_s = time.perf_counter() - t0
    rows = []
    for b in io_bits:
        sw = float(np.mean(mlp_forward(x, layers, ideal, b, ranges).argmax(1) == y))
        row = {"io_bits": b, "software": sw}
        for m in METHODS:
            row[m] = float(np.mean(mlp_forward(x, layers, tiles[m], b, ranges).argmax(1) == y))
        rows.append(row)
    ref = next((r for r in rows if r["io_bits"] == 8), rows[-1])
    summary = {"accuracy_software": acc_soft, "accuracy_software_quantized_io": ref["software"],
               "accuracy_representable": ref["representable"], "accuracy_dpe": ref["dpe"],
               "accuracy_linear": ref["linear"], "io_bits_of_headline": ref["io_bits"], "n_images": n_images,
               "n_tiles": n_tiles, "mapping_time_s": map_s,
               **{f"mean_tile_relative_error_{m}": float(np.mean([r["relative_error"] for r in tile_rows
                                                                  if r["method"] == m])) for m in METHODS}}
    res = {"figure": "fig9a", "summary": summary, "rows": rows, "tiles": tile_rows,
           "paper": {"software": 0.984, "representable": 0.983, "dpe": 0.963},
           "config": {"model": model_name, "dataset": dataset, "n_images": n_images, "n_calib": len(xc),
                      "tile": tile, "io_bits": list(io_bits), "prog_bits": prog_bits, "r_wire": wires.r_wire,
                      "r_in": wires.r_in, "r_out": wires.r_out, "g_min": G_MIN, "g_max": G_MAX,
                      "representable": rep_kw, "quick": quick,
                      "dac": "unsigned, range = max layer input on calibration images",
                      "adc": "signed, per tile partial sum, range = max |partial sum| on calibration images"},
           "provenance": provenance(seed=seed)}
    out = Path(out)
    write_json(out / "fig9a.json", res)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    lab = [str(r["io_bits"]) if r["io_bits"] is not None else "float" for r in rows]
    xs = range(len(rows))
    for k, st in (("software", "k--"), ("linear", "k-o"), ("dpe", "b-s"), ("representable", "r-^")):
        ax.plot(xs, [100 * r[k] for r in rows], st, label=k if k != "software" else "software (tiled, same DAC/ADC)",
                ms=4)
    ax.axhline(100 * acc_soft, color="gray", ls=":", label="software (float)")
    ax.set_xticks(list(xs), lab)
    ax.set(xlabel="DAC/ADC bits", ylabel="test accuracy [%]",
           title=f"Fig. 9a: {model_name}, {tile}x{tile} tiles, {n_images} images")
    ax.legend(fontsize=7)
    savefig(fig, out / "fig9a.png")
    return res


def _map_q(P, m, wires, prog_bits, rep_kw):
    """Quantized plan only (skips the unquantized realization)."""
    W = np.asarray(P, float)
    if m == "linear":
        gp, gn, a, _ = map_linear(W, wires)
    elif m == "dpe":
        gp, gn, a, _ = map_dpe(W, wires)
    else:
        gp, gn, a, _ = map_representable(W, wires, bits=prog_bits, **rep_kw)
    plan = IRDropPlan(quantize(gp, G_MIN, G_MAX, prog_bits), quantize(gn, G_MIN, G_MAX, prog_bits), float(a), m,
                      wires, G_MIN, G_MAX, prog_bits)
    Wr = plan.realized()
    return plan, Wr, Wr


# ------------------------------------------------------------------------------------------------
# Fig. 10a (random telegraph noise)
# ------------------------------------------------------------------------------------------------
def rtn_conductances(g, amplitude: float, rng):
    """Random telegraph noise, one snapshot: each cell independently sits in its nominal state or
    in its low state ``g (1 - amplitude)`` (a trapped charge blocking part of the filament), with
    probability 1/2 each."""
    low = rng.random(g.shape) < 0.5
    return np.where(low, g * (1.0 - amplitude), g)


def fig10a(out, *, model=None, dataset="mnist", n_images: int = 1000, tile: int = 128,
           amplitudes=(0.0, 0.05, 0.1, 0.2), n_draws: int = 2, io_bits: int | None = 8, prog_bits: int | None = 8,
           wires: Wires | None = None, seed: int = 0, quick: bool = False, rep_kw=None, n_calib: int = 200,
           methods=("dpe", "representable"), progress: bool = False) -> dict:
    """Accuracy with random telegraph noise (RTN) on the programmed conductances (paper Fig. 10a).

    Each tile is mapped once (as in :func:`fig9a`); for each RTN amplitude and draw every cell's
    conductance is perturbed by :func:`rtn_conductances` and the tile's realized matrix recomputed
    by the circuit solver. Default model: :data:`FIG9A_QUICK_MODEL` (the 784-256-128-10 MLP, 17
    tiles) to bound the run time; pass ``model="mnist-mlp-500-300"`` for the paper's network.
    """
    wires = wires or Wires()
    if rep_kw is None:
        rep_kw = QUICK_REPRESENTABLE if quick else FAST_REPRESENTABLE
    if quick:
        n_images, amplitudes, n_draws = min(n_images, 300), (0.0, 0.2), 1
    if model is None:
        model = FIG9A_QUICK_MODEL
    rng = np.random.default_rng(seed)
    net, model_name, x, y, xc, acc_soft, layers, ideal, ranges = _prepare(model, dataset, n_images, n_calib, tile,
                                                                          quick)
    t0 = time.perf_counter()
    tiles, plans, _ = _map_tiles(layers, ideal, tile, wires, prog_bits, rep_kw, progress, methods)
    map_s = time.perf_counter() - t0
    rows = []
    for amp in amplitudes:
        for d in range(n_draws if amp > 0 else 1):
            row = {"amplitude": float(amp), "draw": d}
            for m in methods:
                if amp == 0:
                    eff = tiles[m]
                else:
                    eff = [[] for _ in layers]
                    for li in range(len(layers)):
                        for (r0, c0, B), plan in zip(tiles[m][li], plans[m][li]):
                            if plan is None:
                                eff[li].append((r0, c0, B))
                                continue
                            gp = rtn_conductances(plan.g_pos, amp, rng)
                            gn = rtn_conductances(plan.g_neg, amp, rng)
                            Wr = (Crossbar(gp, wires).realized() - Crossbar(gn, wires).realized()) / plan.alpha
                            eff[li].append((r0, c0, Wr[:B.shape[0], :B.shape[1]]))
                row[m] = float(np.mean(mlp_forward(x, layers, eff, io_bits, ranges).argmax(1) == y))
            rows.append(row)
    amax = max(amplitudes)
    summary = {"accuracy_software": acc_soft, "max_amplitude": float(amax), "n_images": n_images,
               "mapping_time_s": map_s, "wall_s": time.perf_counter() - t0,
               **{f"accuracy_{m}_no_rtn": float(np.mean([r[m] for r in rows if r["amplitude"] == 0]))
                  for m in methods},
               **{f"accuracy_{m}_max_rtn": float(np.mean([r[m] for r in rows if r["amplitude"] == amax]))
                  for m in methods}}
    res = {"figure": "fig10a", "summary": summary, "rows": rows,
           "config": {"model": model_name, "dataset": dataset, "n_images": n_images, "tile": tile,
                      "amplitudes": list(amplitudes), "n_draws": n_draws, "io_bits": io_bits, "prog_bits": prog_bits,
                      "r_wire": wires.r_wire, "r_in": wires.r_in, "r_out": wires.r_out, "representable": rep_kw,
                      "methods": list(methods), "quick": quick,
                      "rtn": "per cell, one snapshot per draw: g -> g (1 - amplitude) with probability 1/2"},
           "provenance": provenance(seed=seed)}
    out = Path(out)
    write_json(out / "fig10a.json", res)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sty = {"linear": "k-o", "dpe": "b-s", "representable": "r-^"}
    for m in methods:
        ax.plot([100 * a for a in amplitudes],
                [100 * np.mean([r[m] for r in rows if r["amplitude"] == a]) for a in amplitudes], sty[m], label=m)
    ax.axhline(100 * acc_soft, color="gray", ls=":", label="software (float)")
    ax.set(xlabel="RTN amplitude [% of g]", ylabel="test accuracy [%]",
           title=f"Fig. 10a: {model_name}, {io_bits}-bit DAC/ADC")
    ax.legend(fontsize=7)
    savefig(fig, out / "fig10a.png")
    return res
