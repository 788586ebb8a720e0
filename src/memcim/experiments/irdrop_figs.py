"""Paper 002 (Representable Matrices) reproductions: Fig. 4, 7, 9a, 9b and 10a.

Every figure is a short script over memcim's one flow: ``preset("irdrop").set({...})`` describes
the hardware (2 kOhm-3 MOhm devices programmed to 8 bits, 1 Ohm wires, 100 Ohm in/out, 0.2 V,
128x128 arrays, G+ and G- in a pair of arrays), :func:`memcim.mapping.crossbar.map_matrix` maps
(``mapping.method`` = linear, dpe or representable), ``plan.realized()`` gives the matrix the
circuit computes, and networks run through :mod:`memcim.nn` (``convert_to_analog``, calibrate,
program, forward) with the chip's circuit reader. There is no quantizer, DAC/ADC, tile cutter or
network forward pass here.

* :func:`fig4` -- total, value-range and precision error of ``representable`` against the scale
  alpha for one random matrix, with the automatic alpha and ``dpe`` / ``linear`` on the same matrix.
* :func:`fig7` -- maximum output error over random inputs and matrices against the wire
  resistance, the array size, the memristor pairs per weight and the cell model (linear cells,
  TaOx memristors, 1T1R; the non-linear ones solved by Newton through the chip's reader).
* :func:`fig9a` -- an MLP (default: the reference 784-500-300-10 MNIST MLP) on the irdrop preset,
  one analog model per mapping method, accuracy against the DAC/ADC resolution.
* :func:`fig9b` -- the same for the small reference CNN (paper: a 7-layer CIFAR-10 CNN; CIFAR-10 is
  not available here, so the counterpart is ``mnist-cnn-small``).
* :func:`fig10a` -- accuracy with random telegraph noise (``device.rtn_amplitude``, read through
  the chip: one snapshot per read call, every tile re-solved).

The DAC/ADC sweep maps every layer once per method: the converter bits do not change the
conductance targets, so the programmed chips are read again under a plan whose hardware differs
only in its converters (or its RTN), with the same ADC full scales (calibrated once, with the
preset's 8-bit converters, on calibration images from the training split).

Every function returns a JSON-ready result (config, provenance with the seed, rows, and a top-level
``summary`` of scalar headline numbers); it prints nothing and writes no file. ``plot_<figure>(result,
png)`` draws it. The figures are registered as ``002/fig4`` ... ``002/fig10a`` (:mod:`memcim.registry`),
with their ``--quick`` settings and the paper's values; ``memcim paper run 002/fig9a --out DIR``
saves ``002_fig9a.json`` and ``.png``.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import time
import warnings

import numpy as np
import torch

from memcim.config import HardwareConfig
from memcim.hardware.device import quantize_array
from memcim.io import provenance, savefig
from memcim.mapping.crossbar import map_matrix
from memcim.mapping.irdrop import METHODS, error_report, map_block
from memcim.registry import register

#: representable settings of the full Fig. 9a/10a runs and of arrays of 256x256 and more in Fig. 7:
#: fewer final tuning iterations than the preset (3 instead of 4). The alpha search keeps the preset's 4
#: evaluations: its steps start at 10 % of the DPE scale, and 2 evaluations left a 256x256 random array
#: at 0.9x the DPE scale, deep in value-range errors (max output error 0.20, as DPE; 4: 0.07, 2.8x DPE).
FAST_REPRESENTABLE = {"mapping.alpha_evals": 4, "mapping.search_iters": 1, "mapping.final_iters": 3}
#: quick-mode settings (alpha from the DPE scale, one tuning iteration, no calibration round).
QUICK_REPRESENTABLE = {"mapping.alpha_evals": 1, "mapping.search_iters": 1, "mapping.final_iters": 1,
                       "mapping.calib_rounds": 0}
#: Fig. 9a model: the paper's MLP; quick mode and Fig. 10a use the smaller reference MLP.
FIG9A_MODEL, FIG9A_QUICK_MODEL = "mnist-mlp-500-300", "mnist-mlp-256-128"
#: Fig. 9b counterpart: the small reference CNN (paper: a 7-layer CNN on CIFAR-10).
FIG9B_MODEL = "mnist-cnn-small"
#: the paper's accuracies (Fig. 9a: MNIST MLP at DAC/ADC = infinity; Fig. 9b: CIFAR-10 CNN).
PAPER_9A = {"software": 0.984, "representable": 0.983, "dpe": 0.963}
PAPER_9B = {"software": 0.752, "representable": 0.718, "dpe": 0.205}

_STYLE = {"linear": "k-o", "dpe": "b-s", "representable": "r-^"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _no_converters(hw: HardwareConfig) -> HardwareConfig:
    return hw.without("dac", "adc")


def _io_hw(hw: HardwareConfig, bits) -> HardwareConfig:
    """``hw`` with ``bits``-bit DAC and ADC, or both disabled for ``bits`` None."""
    if bits is None:
        return _no_converters(hw)
    return hw.set({"dac.enabled": True, "adc.enabled": True, "dac.bits": int(bits), "adc.bits": int(bits)})


def _check_bits(io_bits) -> tuple:
    out = []
    for b in io_bits:
        if b is None or (isinstance(b, str) and b.lower() in ("none", "float", "inf")):
            out.append(None)
            continue
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 2 <= int(b) <= 24:
            raise ValueError(f"io_bits: {b!r} is not allowed; use integers in 2..24 or None (converters off)")
        out.append(int(b))
    if not out:
        raise ValueError("io_bits: give at least one resolution")
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# Fig. 4
# ------------------------------------------------------------------------------------------------
def _with_targets(template, gp, gn, alpha: float):
    """A plan with ``template``'s (one-array) layout and hardware but other targets and scale."""
    t = lambda g: torch.as_tensor(g, dtype=torch.float64).reshape(template.g_pos.shape)
    return dataclasses.replace(template, g_pos=t(gp), g_neg=t(gn), level_pos=None, level_neg=None,
                               scale=torch.full_like(template.scale, float(alpha)))


def _plain_log_ticks(ax, axis: str = "both") -> None:
    """Label only the decades of a log axis (minor tick labels overlap on short axes)."""
    from matplotlib.ticker import NullFormatter

    for a in ((ax.xaxis, ax.yaxis) if axis == "both" else (getattr(ax, f"{axis}axis"),)):
        a.set_minor_formatter(NullFormatter())


def _irdrop_hw(hw) -> HardwareConfig:
    from memcim.config import resolve_config

    return resolve_config(hw, default="irdrop")


def _summary_002(result: dict) -> dict:
    return dict(result.get("summary") or {})


#: the paper's values of the headline numbers (paper 002's text and Figs. 7, 9a, 10a).
REFERENCE_RATIO = {"error_ratio_dpe_over_representable": "4-9x"}


@register("002/fig4", title="representable mapping: total / value-range / precision error vs the scale alpha",
          plot=lambda r, png: plot_fig4(r, png), quick={"size": 32, "n_alpha": 6}, summary=_summary_002,
          reference=REFERENCE_RATIO, hardware="irdrop")
def fig4(*, size: int = 64, n_alpha: int = 12, seed: int = 0, hw: HardwareConfig | str | None = None,
         final_iters: int = 4) -> dict:
    """Errors of ``representable`` against alpha (fixed alpha, then tuning) for one matrix.

    Errors are squared Frobenius norms (paper's terms): value-range error = ``||W - W^r||^2`` of the
    tuned plan with continuous conductances, total = the same plan rounded to the device's levels,
    precision = their difference. The hardware is ``hw`` (default ``preset("irdrop")``: 1 Ohm wires,
    8-bit devices) with one ``size x size`` array pair and the converters off; the automatic alpha and
    the ``dpe`` / ``linear`` errors come from ``map_matrix`` on the same matrix.
    """
    from memcim import validate

    size = validate.integer("size", size, lo=2, hi=512)
    n_alpha = validate.integer("n_alpha", n_alpha, lo=2, hi=1000)
    hw = _no_converters(_irdrop_hw(hw)).set({"array.rows": size, "array.cols": size})
    if hw.device.levels is None and hw.device.bits is None:
        raise ValueError("hw: fig4 needs a quantized device (device.bits or device.levels)")
    dev = hw.device
    W = np.random.default_rng(seed).uniform(-1, 1, (size, size))
    c0 = (dev.g_max - dev.g_min) / np.max(np.abs(W))
    t0 = time.perf_counter()
    plans = {m: map_matrix(W, hw.set("mapping.method", m)) for m in METHODS}
    auto = {}
    for m, plan in plans.items():
        auto[m] = {"alpha": float(plan.scale[0, 0]), **error_report(W, plan.realized().numpy())}
    # fixed-alpha sweep: the representable tuning at alpha with continuous conductances, then rounded
    continuous = hw.without("quantization").device
    rows = []
    for rho in np.geomspace(0.08, 1.2, n_alpha):
        a = float(rho * c0)
        gp, gn, _, _ = map_block(W, hw.wires, continuous, hw.mapping, alpha=a, final_iters=final_iters)
        Wu = _with_targets(plans["linear"], gp, gn, a).realized().numpy()
        Wq = _with_targets(plans["linear"], quantize_array(gp, dev), quantize_array(gn, dev), a).realized().numpy()
        e = error_report(W, Wq, Wu)
        rows.append({"alpha": a, "alpha_over_linear": float(rho), "total_error": e["total_error"],
                     "value_range_error": e["value_range_error"], "precision_error": e["precision_error"],
                     "max_output_error": e["max_output_error"]})
    best = min(rows, key=lambda r: r["total_error"])
    summary = {
        "size": size, "r_wire": hw.wires.r_wire,
        "alpha_best_swept": best["alpha"], "total_error_best_swept": best["total_error"],
        "alpha_auto": auto["representable"]["alpha"], "total_error_auto": auto["representable"]["total_error"],
        "total_error_dpe": auto["dpe"]["total_error"], "total_error_linear": auto["linear"]["total_error"],
        "error_ratio_dpe_over_representable": auto["dpe"]["frobenius_error"] / auto["representable"]["frobenius_error"],
        "max_output_error_ratio_dpe_over_representable":
            auto["dpe"]["max_output_error"] / auto["representable"]["max_output_error"],
        "wall_s": time.perf_counter() - t0,
    }
    return {"figure": "fig4", "summary": summary, "rows": rows, "methods": auto,
            "config": {"size": size, "n_alpha": n_alpha, "final_iters": final_iters,
                       "matrix": "uniform[-1,1]", "hardware": hw.to_dict()},
            "provenance": provenance(seed=seed)}


def plot_fig4(res: dict, png) -> None:
    """Fig. 4's PNG: the three errors against alpha, the automatic alpha and the dpe error."""
    plt = _plt()
    rows, summary = res["rows"], res["summary"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    x = [r["alpha"] for r in rows]
    floor = 1e-12
    for k, st in (("total_error", "k-o"), ("value_range_error", "b-s"), ("precision_error", "r-^")):
        zero = any(r[k] <= floor for r in rows)
        ax.plot(x, [max(r[k], floor) for r in rows], st, ms=4,
                label=k.replace("_", " ") + (f"\n(0 drawn at {floor:g})" if zero else ""))
    ax.axvline(summary["alpha_auto"], color="g", ls="--", label="alpha chosen (auto)")
    ax.axhline(summary["total_error_dpe"], color="gray", ls=":", label="dpe total error")
    ax.set(xscale="log", yscale="log", xlabel="alpha [S per unit weight]", ylabel="||W - W^r||_F^2",
           title=f"Fig. 4: representable, {summary['size']}x{summary['size']}, r_wire={summary['r_wire']:g} Ohm")
    from matplotlib.ticker import FuncFormatter, LogLocator

    _plain_log_ticks(ax)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-")))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    savefig(fig, png)


# ------------------------------------------------------------------------------------------------
# Fig. 7
# ------------------------------------------------------------------------------------------------
def _max_out_err(X, W, Y):
    """max over inputs/outputs of |Y - X W| / max |X W| (the paper's max output error)."""
    ref = X @ W
    return float(np.max(np.abs(Y - ref)) / max(np.max(np.abs(ref)), 1e-300))


#: Fig. 7 cell models: figure label -> cell.model
CELLS = {"ideal": "linear", "taox": "taox", "1t1r": "taox_1t1r"}


def _outputs(plan, X, seed: int):
    """Outputs in weight units for inputs X in [0, 1] (word lines at X * v_read); the fraction of
    device states the non-linear cells could not reach (clipped by the reader)."""
    if plan.hw.cell.linear:
        return X @ plan.realized().numpy(), 0.0
    from memcim.simulate import program

    chip = program(plan, seed=seed, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Y = chip.mvm(X)[0].numpy()
    bad = 0.0
    for w in caught:
        msg = str(w.message)
        if msg.startswith("cell:") and "%" in msg:
            bad = float(msg.split("(")[1].split("%")[0]) / 100
    return Y, bad


@register("002/fig7", title="max output error vs wire resistance, array size, pairs per weight and cell model",
          plot=lambda r, png: plot_fig7(r, png), summary=_summary_002, reference=REFERENCE_RATIO,
          quick={"sizes": (32, 64), "r_wires": (0.5, 2.0), "r_wire_size": 32, "device_size": 16, "n_matrices": 1,
                 "n_inputs": 50, "n_inputs_device": 5, "per_weight": (1, 2), "per_weight_size": 16},
          hardware="irdrop")
def fig7(*, sizes=(32, 64, 128, 256), r_wires=(0.25, 0.5, 1.0, 2.0, 4.0), r_wire_size: int = 64,
         device_size: int = 32, n_matrices: int = 2, n_inputs: int = 100, n_inputs_device: int = 10,
         seed: int = 0, hw: HardwareConfig | str | None = None, rep_settings=None,
         device_g_min: float = 1e-4, per_weight=(1, 2, 4), per_weight_size: int = 32, large: int = 256 * 256,
         progress: bool = False) -> dict:
    """Max output error against wire resistance, array size, pairs per weight and cell model.

    Matrices: uniform [-1, 1]; inputs: uniform [0, 1], driven as ``x * v_read`` (``dac.x_range = 1``,
    converters off; paper: 0.2 V max). Each matrix is one array pair of its own size on
    ``hw`` (default ``preset("irdrop")``; ``wires.r_wire`` and ``cell.model`` are swept). The
    cell-model panel maps with ``device.g_min = device_g_min`` (the TaOx device cannot reach below
    ~6e-5 S at 0.2 V) and reads the programmed chip with ``cell.model``
    ``linear`` / ``taox`` / ``taox_1t1r`` and ``cell.solve = "newton"`` (states from the
    conductances at the calibration read, paper Sec. V-D). Memristors per weight (panel
    ``per_weight``): ``k`` pairs per weight are ``k`` adjacent columns, each mapped to ``W / k``
    (an n x k*n array), whose outputs are summed. Arrays with ``large`` cells or more use one matrix
    and :data:`FAST_REPRESENTABLE`. ``rep_settings``: dotted overrides of the representable settings.
    """
    from memcim import validate

    sizes = tuple(validate.integer("sizes", n, lo=2, hi=1024) for n in sizes)
    per_weight = tuple(validate.integer("per_weight", k, lo=1, hi=64) for k in per_weight)
    r_wires = tuple(validate.number("r_wires", r, lo=0.0) for r in r_wires)
    if not (sizes and per_weight and r_wires):
        raise ValueError("sizes: sizes, r_wires and per_weight each need at least one value")
    base = _no_converters(_irdrop_hw(hw)).set({"dac.x_range": 1.0, **(rep_settings or {})})
    rng = np.random.default_rng(seed)
    rows = []
    t0 = time.perf_counter()
    jobs = ([("r_wire", r_wire_size, rw, "ideal", n_inputs, 1) for rw in r_wires]
            + [("size", n, 1.0, "ideal", n_inputs, 1) for n in sizes]
            + [("per_weight", per_weight_size, 1.0, "ideal", n_inputs, k) for k in per_weight]
            + [("device", device_size, 1.0, dev, n_inputs_device, 1) for dev in CELLS])
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="fig7 panels", file=sys.stderr)
    for panel, n, rw, device, nin, kpw in it:
        big = n * n * kpw >= large
        settings = {"array.rows": n, "array.cols": n * kpw, "wires.r_wire": rw, "cell.model": CELLS[device]}
        if panel == "device":
            settings["device.g_min"] = device_g_min
        if big:
            settings.update(FAST_REPRESENTABLE)
        hw_panel = base.set(settings)
        for k in range(1 if big else n_matrices):
            W = rng.uniform(-1, 1, (n, n))
            X = rng.uniform(0, 1, (nin, n))
            Wk = np.repeat(W, kpw, axis=1) / kpw
            for m in METHODS:
                t1 = time.perf_counter()
                plan = map_matrix(Wk, hw_panel.set("mapping.method", m))
                Y, bad = _outputs(plan, X, seed)
                Wr = plan.realized().numpy()
                Y, Wr = Y.reshape(len(X), n, kpw).sum(-1), Wr.reshape(n, n, kpw).sum(-1)
                rows.append({"panel": panel, "size": n, "r_wire": rw, "device": device, "matrix": k,
                             "per_weight": kpw, "method": m, "max_output_error": _max_out_err(X, W, Y),
                             "relative_error": float(np.linalg.norm(Wr - W) / np.linalg.norm(W)),
                             "states_out_of_range": bad, "time_s": time.perf_counter() - t1})

    def agg(panel, key, val, m):
        return max(r["max_output_error"] for r in rows if r["panel"] == panel and r[key] == val and r["method"] == m)

    table = {p: {str(v): {m: agg(p, key, v, m) for m in METHODS} for v in vals}
             for p, key, vals in (("r_wire", "r_wire", r_wires), ("size", "size", sizes),
                                  ("per_weight", "per_weight", per_weight), ("device", "device", tuple(CELLS)))}
    ratios = {s: table["size"][str(s)]["dpe"] / table["size"][str(s)]["representable"] for s in sizes}
    summary = {"error_ratio_dpe_over_representable": float(np.mean(list(ratios.values()))),
               "error_ratio_dpe_over_representable_largest": ratios[max(sizes)],
               "largest_size": max(sizes),
               **{f"max_output_error_{m}_largest": table["size"][str(max(sizes))][m] for m in METHODS},
               **{f"max_output_error_{m}_1t1r": table["device"]["1t1r"][m] for m in METHODS},
               "wall_s": time.perf_counter() - t0}
    return {"figure": "fig7", "summary": summary, "table": table,
           "ratio_dpe_over_representable_by_size": {str(k): v for k, v in ratios.items()}, "rows": rows,
           "config": {"sizes": list(sizes), "r_wires": list(r_wires), "r_wire_size": r_wire_size,
                      "device_size": device_size, "n_matrices": n_matrices, "n_inputs": n_inputs,
                      "n_inputs_device": n_inputs_device, "device_g_min": device_g_min,
                      "representable_large": FAST_REPRESENTABLE, "large_cells": large,
                      "per_weight": list(per_weight), "per_weight_size": per_weight_size,
                      "cells": CELLS, "hardware": base.to_dict()},
           "provenance": provenance(seed=seed)}


def plot_fig7(res: dict, png) -> None:
    """Fig. 7's PNG: one panel per swept quantity, 2 x 2, one shared legend."""
    plt = _plt()
    c, table = res["config"], res["table"]
    fig, axs = plt.subplots(2, 2, figsize=(10, 7.5), layout="constrained")
    panels = (("r_wire", c["r_wires"], "wire resistance [Ohm]", f"{c['r_wire_size']}x{c['r_wire_size']} arrays"),
              ("size", c["sizes"], "array size n (n x n)", "r_wire = 1 Ohm"),
              ("per_weight", c["per_weight"], "memristor pairs per weight",
               f"{c['per_weight_size']} inputs x {c['per_weight_size']} weights"),
              ("device", list(c["cells"]), "cell model", f"{c['device_size']}x{c['device_size']}, r_wire = 1 Ohm"))
    for ax, (p, vals, xl, title) in zip(axs.flat, panels):
        xs = list(range(len(vals))) if p == "device" else list(vals)
        for m in METHODS:
            ax.plot(xs, [table[p][str(v)][m] for v in vals], _STYLE[m], label=m, ms=4)
        ax.set(yscale="log", xlabel=xl, title=title)
        if p == "device":
            ax.set_xticks(xs, list(vals))
        else:
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [f"{v:g}" for v in vals])
        _plain_log_ticks(ax)
    for ax in axs[:, 0]:
        ax.set_ylabel("max output error (relative)")
    handles, labels = axs[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("Fig. 7: max output error over random inputs and matrices")
    savefig(fig, png)


# ------------------------------------------------------------------------------------------------
# Networks (Fig. 9a, 9b, 10a): memcim.nn with the irdrop preset
# ------------------------------------------------------------------------------------------------
def _load_net(model, default):
    """(model in eval mode, its name) from a reference name, a torch.save file or an nn.Module."""
    if model is None:
        model = default
    if isinstance(model, torch.nn.Module):
        return copy.deepcopy(model).float().eval(), type(model).__name__
    from memcim.nn.loading import load_model

    return load_model(str(model)).float().eval(), str(model)


def _load_data(dataset, n_images, n_calib):
    """Evaluated test images and calibration images (from the training split)."""
    from memcim.data.datasets import load_dataset

    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images: {n_images!r} is not allowed; must be an integer >= 1")
    test = load_dataset(dataset, "test", limit=n_images)
    if len(test) < n_images:
        raise ValueError(f"n_images: {n_images} is more than the {len(test)} test samples of {dataset}")
    calib = load_dataset(dataset, "train", limit=n_calib).x
    return test, calib


def _accuracy(model, ds) -> float:
    from memcim.nn.train import evaluate_accuracy

    return evaluate_accuracy(model, ds)


def _analog_model(net, hw: HardwareConfig, calib, seed: int, progress: bool, desc: str):
    """``convert_to_analog`` + calibration + programming of every layer (one mapping per layer)."""
    from memcim.nn.analog import analog_layers, convert_to_analog, layer_seed

    analog = convert_to_analog(net, hw, calib_data=calib)
    layers = analog_layers(analog)
    if not layers:
        raise ValueError("model: has no Linear or Conv2d layer to run on the crossbars")
    it = enumerate(layers)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(layers), desc=desc, file=sys.stderr)
    for i, (_, layer) in it:  # memcim.nn.analog.program, with a progress bar over the layers
        layer.program(layer_seed(seed, i), dtype=torch.float64)
    return analog


def _reread(analog, hw: HardwareConfig) -> None:
    """Read the programmed chips of ``analog`` under ``hw``: the same conductances, scales and ADC
    full scales, other converters or RTN (:meth:`MappedMatrix.with_hardware` refuses other changes)."""
    from memcim.nn.analog import analog_layers

    for _, layer in analog_layers(analog):
        old = layer.chip
        # the same devices under other converters or RTN: with_hardware refuses anything that would move the
        # targets, and with_plan carries the solved tiles over
        chip = old.with_plan(old.mapped.with_hardware(hw, keep_full_scale=True))
        layer.chip = chip
        layer.hardware = hw


def _tile_errors(analog) -> list[float]:
    """Relative error ||W^r - W|| / ||W|| of every array pair, from the programmed chips' realized matrices."""
    from memcim.nn.analog import analog_layers

    errs = []
    for _, layer in analog_layers(analog):
        plan = layer.chip.mapped
        W = layer.crossbar_weight().to(torch.float64).cpu()
        Wr = layer.chip.realized()[0].to(torch.float64).cpu()
        for r in range(plan.n_row_tiles):
            for k in range(plan.n_col_tiles):
                rows, cols = plan.used(r, k)
                sl = (slice(r * plan.tile_rows, r * plan.tile_rows + rows),
                      slice(k * plan.tile_cols, k * plan.tile_cols + cols))
                nw = float(torch.linalg.norm(W[sl]))
                if nw > 0:
                    errs.append(float(torch.linalg.norm(Wr[sl] - W[sl])) / nw)
    return errs


def _n_tiles(analog) -> int:
    from memcim.nn.analog import analog_layers

    return sum(l.chip.mapped.n_row_tiles * l.chip.mapped.n_col_tiles for _, l in analog_layers(analog))


def _method_hw(hw: HardwareConfig, method: str, rep_settings) -> HardwareConfig:
    hw = hw.set("mapping.method", method)
    return hw.set(rep_settings) if method == "representable" and rep_settings else hw


def _binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` images (binomial)."""
    return float(np.sqrt(max(p * (1 - p), 0.0) / max(n, 1)))


def _accuracy_vs_bits(figure, *, model, default_model, dataset, n_images, n_calib, io_bits, hw, seed,
                      rep_settings, progress, paper) -> dict:
    """Accuracy of ``model`` on ``hw`` for every mapping method and DAC/ADC resolution."""
    io_bits = _check_bits(io_bits)
    net, model_name = _load_net(model, default_model)
    test, calib = _load_data(dataset, n_images, n_calib)
    acc_soft = _accuracy(net, test)
    t0 = time.perf_counter()
    # upper bound (paper): errors only from the DAC and ADC -- ideal wires, continuous conductances
    hws = {"software": hw.without("wires", "quantization"), **{m: _method_hw(hw, m, rep_settings) for m in METHODS}}
    models = {"software": _analog_model(net, hws["software"], calib, seed, False, "ideal")}
    tile_err, map_s = {}, {}
    for m in METHODS:
        t1 = time.perf_counter()
        models[m] = _analog_model(net, hws[m], calib, seed, progress, f"mapping ({m})")
        map_s[m] = time.perf_counter() - t1
        tile_err[m] = _tile_errors(models[m])
    rows = []
    for b in io_bits:
        row = {"io_bits": b}
        for k, analog in models.items():
            _reread(analog, _io_hw(hws[k], b))
            row[k] = _accuracy(analog, test)
        rows.append(row)
    ref = next((r for r in rows if r["io_bits"] == 8), rows[-1])
    flt = next((r for r in rows if r["io_bits"] is None), None)
    summary = {"accuracy_software": acc_soft, "accuracy_software_quantized_io": ref["software"],
               "accuracy_representable": ref["representable"], "accuracy_dpe": ref["dpe"],
               "accuracy_linear": ref["linear"], "io_bits_of_headline": ref["io_bits"],
               **({f"accuracy_{m}_float": flt[m] for m in METHODS} if flt else {}),
               "n_images": len(test), "n_tiles": _n_tiles(models["representable"]),
               "mapping_time_s": float(sum(map_s.values())),
               **{f"mean_tile_relative_error_{m}": float(np.mean(tile_err[m])) for m in METHODS},
               "wall_s": time.perf_counter() - t0}
    return {"figure": figure, "summary": summary, "rows": rows, "paper": paper,
            "tile_relative_errors": tile_err, "mapping_time_s": map_s,
            "config": {"model": model_name, "dataset": dataset, "n_images": len(test), "n_calib": len(calib),
                       "calibration": f"{len(calib)} images of the training split (ADC full scale per array)",
                       "io_bits": list(io_bits), "representable": rep_settings or "preset",
                       "hardware": hw.to_dict()},
            "provenance": provenance(seed=seed)}


def plot_bits(res: dict, png) -> None:
    """Fig. 9a/9b's PNG: accuracy against the DAC/ADC bits per mapping, with binomial error bars
    (one standard error over the evaluated images)."""
    plt = _plt()
    rows, c = res["rows"], res["config"]
    n = int(c["n_images"])
    title = {"fig9a": "Fig. 9a", "fig9b": "Fig. 9b (counterpart)"}.get(res.get("figure"), res.get("figure", ""))
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    lab = [str(r["io_bits"]) if r["io_bits"] is not None else "float" for r in rows]
    xs = np.arange(len(rows))
    for k, st, label, dx in (("software", "k--", "upper bound (ideal wires, same DAC/ADC)", 0.0),
                             *((m, _STYLE[m], m, 0.04 * (i + 1)) for i, m in enumerate(METHODS))):
        acc = np.array([r[k] for r in rows])
        ax.errorbar(xs + dx, 100 * acc, yerr=[100 * _binomial_se(a, n) for a in acc], fmt=st, label=label,
                    ms=4, capsize=2)
    ax.axhline(100 * res["summary"]["accuracy_software"], color="gray", ls=":", label="software (float)")
    ax.set_xticks(list(xs), lab)
    ax.set(xlabel="DAC/ADC bits", ylabel="test accuracy [%]",
           title=f"{title}: {c['model']}, {n} images (bars: ±1 binomial s.e.)")
    ax.legend(fontsize=7)
    savefig(fig, png)


#: the paper's Fig. 9a values (MNIST MLP, DAC/ADC at 8 bits).
REFERENCE_9A = {"accuracy_software": "0.984", "accuracy_representable": "0.983", "accuracy_dpe": "0.963",
                "accuracy_linear": "(not reported)"}
#: the paper's Fig. 9b values: a 7-layer CNN on CIFAR-10 (not comparable with the MNIST counterpart).
REFERENCE_9B = {"accuracy_software": "0.752 (CIFAR-10 CNN)", "accuracy_representable": "0.718 (CIFAR-10 CNN)",
                "accuracy_dpe": "0.205 (CIFAR-10 CNN)"}
_NET_SUMMARY = ("accuracy_software", "accuracy_representable", "accuracy_dpe", "accuracy_linear", "n_images")


def _summary_net(result: dict) -> dict:
    s = result.get("summary") or {}
    return {k: s[k] for k in _NET_SUMMARY if k in s}


#: the --quick settings of the network figures: 300 images, alpha from the DPE scale, one tuning iteration.
_QUICK_NET = {"n_images": 300, "rep_settings": QUICK_REPRESENTABLE}


@register("002/fig9a", title="MNIST MLP at circuit level: accuracy vs DAC/ADC bits per mapping",
          plot=plot_bits, summary=_summary_net, reference=REFERENCE_9A, hardware="irdrop",
          quick={**_QUICK_NET, "model": FIG9A_QUICK_MODEL})
def fig9a(*, model=None, dataset="mnist", n_images: int = 1000, n_calib: int = 200,
          io_bits=(4, 6, 8, None), hw: HardwareConfig | str | None = None, seed: int = 0,
          rep_settings=None, progress: bool = False) -> dict:
    """Accuracy of an MLP on the irdrop hardware, per mapping method and DAC/ADC resolution (paper Fig. 9a).

    Parameters
    ----------
    model : reference-model name, ``torch.save(model)`` file or ``nn.Module``; default
        :data:`FIG9A_MODEL` (quick: :data:`FIG9A_QUICK_MODEL`).
    dataset : dataset name (test split evaluated; ``n_calib`` training images calibrate the ADCs).
    n_images : evaluated test images (the first ones).
    io_bits : DAC/ADC resolutions (None: converters off).
    hw : the hardware (default ``preset("irdrop")``); ``mapping.method`` is swept.
    rep_settings : dotted overrides of the representable settings (default
        :data:`FAST_REPRESENTABLE`, quick :data:`QUICK_REPRESENTABLE`).

    Every layer is converted with :func:`memcim.nn.analog.convert_to_analog`, calibrated and
    programmed once per method; the ``software`` row is the upper bound of the paper (ideal wires,
    continuous conductances, the same DAC/ADC).
    """
    if rep_settings is None:
        rep_settings = FAST_REPRESENTABLE
    return _accuracy_vs_bits("fig9a", model=model, default_model=FIG9A_MODEL, dataset=dataset, n_images=n_images,
                             n_calib=n_calib, io_bits=io_bits, hw=_irdrop_hw(hw), seed=seed,
                             rep_settings=rep_settings, progress=progress, paper=PAPER_9A)


@register("002/fig9b", title="small CNN at circuit level (Fig. 9b counterpart on MNIST): accuracy vs DAC/ADC bits",
          plot=plot_bits, summary=_summary_net, reference=REFERENCE_9B, hardware="irdrop", quick=_QUICK_NET)
def fig9b(*, model=None, dataset="mnist", n_images: int = 1000, n_calib: int = 200,
          io_bits=(4, 6, 8, None), hw: HardwareConfig | str | None = None, seed: int = 0,
          rep_settings=None, progress: bool = False) -> dict:
    """Fig. 9b's counterpart: the small reference CNN (:data:`FIG9B_MODEL`) at circuit level, accuracy
    against DAC/ADC bits for linear, dpe and representable mappings (arguments as :func:`fig9a`;
    every Conv2d runs as a crossbar MVM over its unfolded patches). The paper's Fig. 9b is a 7-layer
    CNN on CIFAR-10 (software / representable / dpe = 75.2 / 71.8 / 20.5 %), which memcim cannot load
    here; the numbers are not comparable, the ordering of the mappings is."""
    if rep_settings is None:
        rep_settings = {}
    return _accuracy_vs_bits("fig9b", model=model, default_model=FIG9B_MODEL, dataset=dataset,
                             n_images=n_images, n_calib=n_calib, io_bits=io_bits, hw=_irdrop_hw(hw),
                             seed=seed, rep_settings=rep_settings, progress=progress,
                             paper={"cifar10_7layer_cnn": PAPER_9B})


# ------------------------------------------------------------------------------------------------
# Fig. 10a (random telegraph noise)
# ------------------------------------------------------------------------------------------------
def _summary_10a(result: dict) -> dict:
    s = result.get("summary") or {}
    return {k: v for k, v in s.items() if k.startswith("accuracy_") or k in ("max_amplitude", "n_images")}


@register("002/fig10a", title="accuracy under random telegraph noise, per mapping (error bars: binomial and over reads)",
          plot=lambda r, png: plot_fig10a(r, png), summary=_summary_10a, hardware="irdrop",
          reference={"accuracy_software": "0.984", "accuracy_representable_max_rtn": "above dpe (Fig. 10a)"},
          quick={**_QUICK_NET, "amplitudes": (0.0, 0.2), "n_draws": 1})
def fig10a(*, model=None, dataset="mnist", n_images: int = 1000, n_calib: int = 200,
           amplitudes=(0.0, 0.05, 0.1, 0.2), probability: float = 0.5, n_draws: int = 2, io_bits: int | None = 8,
           hw: HardwareConfig | str | None = None, seed: int = 0, rep_settings=None,
           methods=("dpe", "representable"), progress: bool = False) -> dict:
    """Accuracy with random telegraph noise (paper Fig. 10a): ``device.rtn_amplitude = A`` and
    ``device.rtn_probability = probability`` on the irdrop hardware.

    Each layer is mapped once per method; the chips are then read with RTN: every read call draws one
    telegraph snapshot (each device at ``g (1 - A)`` with probability ``probability``, else at its
    programmed value) and solves every tile's circuit with it. A draw is one pass over the images
    (one snapshot per layer and batch of 1000). Default model: :data:`FIG9A_QUICK_MODEL`.
    Each amplitude's accuracy carries its standard error: binomial over the images, combined with
    the spread over draws when there are several.
    """
    if rep_settings is None:
        rep_settings = FAST_REPRESENTABLE
    base = _irdrop_hw(hw)
    for a in amplitudes:
        base.set("device.rtn_amplitude", a)  # validates every amplitude first
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise ValueError(f"n_draws: {n_draws!r} is not allowed; must be an integer >= 1")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods: {m!r} is not allowed; choose from {', '.join(METHODS)}")
    hw = _io_hw(base, io_bits)
    net, model_name = _load_net(model, FIG9A_QUICK_MODEL)
    test, calib = _load_data(dataset, n_images, n_calib)
    acc_soft = _accuracy(net, test)
    t0 = time.perf_counter()
    hws = {m: _method_hw(hw, m, rep_settings) for m in methods}
    models = {m: _analog_model(net, hws[m], calib, seed, progress, f"mapping ({m})") for m in methods}
    map_s = time.perf_counter() - t0
    rows = []
    for amp in amplitudes:
        for d in range(n_draws if amp > 0 else 1):
            row = {"amplitude": float(amp), "draw": d}
            for m in methods:
                _reread(models[m], hws[m].set({"device.rtn_amplitude": float(amp),
                                               "device.rtn_probability": float(probability)}))
                row[m] = _accuracy(models[m], test)
            rows.append(row)
    n = len(test)
    curves = {}
    for m in methods:
        curves[m] = []
        for a in amplitudes:
            accs = np.array([r[m] for r in rows if r["amplitude"] == float(a)])
            mean = float(accs.mean())
            # binomial s.e. of a mean over len(accs) passes of n images, plus the spread over draws
            se2 = _binomial_se(mean, n) ** 2 / len(accs)
            if len(accs) > 1:
                se2 += float(accs.var(ddof=1)) / len(accs)
            curves[m].append({"amplitude": float(a), "mean": mean, "stderr": float(np.sqrt(se2)),
                              "draws": len(accs)})
    amax = max(amplitudes)
    summary = {"accuracy_software": acc_soft, "max_amplitude": float(amax), "n_images": n,
               "mapping_time_s": map_s, "wall_s": time.perf_counter() - t0,
               **{f"accuracy_{m}_no_rtn": float(np.mean([r[m] for r in rows if r["amplitude"] == 0]))
                  for m in methods if 0 in amplitudes},
               **{f"accuracy_{m}_max_rtn": float(np.mean([r[m] for r in rows if r["amplitude"] == amax]))
                  for m in methods},
               **{f"accuracy_{m}_max_rtn_stderr": curves[m][list(amplitudes).index(amax)]["stderr"]
                  for m in methods}}
    return {"figure": "fig10a", "summary": summary, "rows": rows, "curves": curves,
            "config": {"model": model_name, "dataset": dataset, "n_images": n, "n_calib": len(calib),
                       "amplitudes": list(amplitudes), "rtn_probability": probability, "n_draws": n_draws,
                       "io_bits": io_bits, "representable": rep_settings, "methods": list(methods),
                       "hardware": hw.to_dict(),
                       "rtn": "device.rtn_amplitude through the chip: per device, one snapshot per read call",
                       "error_bars": "one standard error: binomial over the images, plus the spread over draws"},
            "provenance": provenance(seed=seed)}


def plot_fig10a(res: dict, png) -> None:
    """Fig. 10a's PNG: accuracy against the RTN amplitude per mapping, ±1 standard error."""
    plt = _plt()
    c = res["config"]
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    dx = 0.015 * 100 * (max(c["amplitudes"]) or 1.0)  # methods side by side, so the bars do not hide each other
    for i, m in enumerate(c["methods"]):
        cv = res["curves"][m]
        ax.errorbar([100 * p["amplitude"] + dx * i for p in cv], [100 * p["mean"] for p in cv],
                    yerr=[100 * p["stderr"] for p in cv], fmt=_STYLE[m], label=m, capsize=3, ms=4)
    ax.axhline(100 * res["summary"]["accuracy_software"], color="gray", ls=":", label="software (float)")
    ax.set(xlabel="RTN amplitude [% of g]", ylabel="test accuracy [%]",
           title=f"Fig. 10a: {c['model']}, {c['io_bits']}-bit DAC/ADC, {c['n_images']} images "
                 f"x {c['n_draws']} draw(s)")
    ax.text(0.01, 0.01, "bars: ±1 s.e. (binomial over images, and over draws)", transform=ax.transAxes,
            fontsize=7, va="bottom")
    ax.legend(fontsize=7)
    savefig(fig, png)
