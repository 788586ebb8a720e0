"""Closed form (memcim.analysis.moments.predict_mse -> analysis.predict.predict) against the simulator's
Monte Carlo: speed at 2 %/98 % precision on the small CNN, and cost vs network width and depth.

Issue 17 item 3. Set-up as bench_memse.py (paper 001, Sec. V-A): sigma = 0.01 S, G_max = 3 S, N = 128,
64 inputs, float32, one thread for both sides.

* Small CNN (mnist-cnn-small, 64 MNIST test images): the Monte Carlo peer is memcim's simulator
  (monte_carlo_simulator: memcim.nn analog layers on programmed chips). The chips needed for the MSE
  to be within 2 % of its mean 98 % of the time, T = (z_0.99 CV / 0.02)^2, come from the per-chip MSE
  spread. The machine is shared, so the Monte Carlo runs in chunks of chips interleaved with timings of
  the closed form, and the ratio is (median time per chip x T) / (median closed-form time): both sides
  see the same load. The closed form's MSE is compared with the mean over all chips run (its standard
  error is reported).
* Width: the same CNN architecture with 1x, 2x, 4x, 8x the channels (random weights, uniform inputs).
* Depth: MLPs of 1 to 8 hidden layers of width 256 (random weights, uniform inputs).
  At every point: closed-form time, simulator time per chip, the closed form's MSE error against a
  small Monte Carlo (its standard error and z), and the fitted exponent of cost ~ width^a, depth^b
  (least squares in log-log) for the closed form, for one simulated chip (the peer's own growth) and
  for their ratio. A convolution's forward pass itself costs C_in C_out k^2 P, i.e. width^2 (measured: the
  noise-free float32 forward pass at each width, and the closed form's time in such passes); an MLP's
  first layer reads deterministic inputs, so the layers that carry an input covariance are depth - 1.
* The physical floor for width, from the layer shapes (no timer): the multiply-accumulates (MACs) of one
  forward pass of the batch (a convolution's C_in C_out k^2 H_out W_out, a linear layer's in x out) and their
  fitted exponent (width^2 for every layer but the first and the last: anything that touches every weight
  cannot be linear in width); and the MACs of this kind of moment propagation, the forward MACs of every
  crossbar layer times (1 + the covariance columns its input carries: the prediction's own factor counts,
  read from its state, which grow with the channels up to max_factors). Reported next to the closed form's
  time exponent, with its time per MAC.

Timer: process CPU time. Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_predict_scaling.py [--quick]
[--widths 1,2,4,8]`` (writes bench/results/predict_scaling.json).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from memcim.analysis.memse_sim import monte_carlo_simulator, trials_needed
from memcim.analysis.moments import CrossbarLayer, parse_model, predict_mse
from memcim.data.datasets import load_dataset
from memcim.io import provenance, write_json
from memcim.nn.loading import load_model

SIGMA, GMAX, LEVELS = 0.01, 3.0, 128


def _predict(layers, x):
    return predict_mse(layers, x, sigma=SIGMA, gmax=GMAX, levels=LEVELS, power=False, dtype=torch.float32)


def _timed(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def forward_s(model, x, reps: int = 5) -> float:
    """The floor: one noise-free float32 forward pass of the same network on the same inputs (min of ``reps``)."""
    m = model.float().eval()
    xf = x.to(torch.float32)
    with torch.no_grad():
        m(xf)
        return min(_timed(lambda: m(xf))[0] for _ in range(reps))


def interleaved(model, x, chunks: int, chips_per_chunk: int, seed: int, labels=None, timings: int = 2):
    """Monte Carlo in ``chunks`` runs of ``chips_per_chunk`` chips, each followed by one closed-form timing.

    Returns (closed-form times, per-chip MC times, all chips' MSE, prediction)."""
    layers = parse_model(model, torch.float32)
    xf = x.to(torch.float32)
    p = _predict(layers, xf)                     # warm-up (and the prediction)
    tp, tmc, mse = [], [], []
    for c in range(chunks):
        dt, mc = _timed(lambda: monte_carlo_simulator(model, xf, sigma=SIGMA, gmax=GMAX, levels=LEVELS,
                                                      trials=chips_per_chunk, seed=seed + 1000 * c, labels=labels,
                                                      progress=False))
        tmc.append(dt / chips_per_chunk)
        mse.extend(mc.trial_mse.tolist())
        for _ in range(timings):
            tp.append(_timed(lambda: _predict(layers, xf))[0])
    return np.asarray(tp), np.asarray(tmc), np.asarray(mse), p


def error_row(p, mse: np.ndarray) -> dict:
    m = float(mse.mean())
    se = float(mse.std(ddof=1) / np.sqrt(mse.size))
    return {"mse_predicted": p.mse_mean, "mse_mc": m, "mse_mc_stderr": se, "mc_chips": int(mse.size),
            "rel_err_vs_mc": (p.mse_mean - m) / m, "z": (p.mse_mean - m) / se}


def predictor_states(layers, x, **kw) -> list:
    """The moment states one closed-form prediction (``predict_mse(layers, x, **kw)``) passes between its layers:
    ``[input state, state after layer 0, after layer 1, ...]`` (``states[i]`` is layer ``i``'s input), read by
    running the prediction once with :func:`memcim.analysis.moments.run_layers` asked for every state."""
    import memcim.analysis.moments as mo
    from memcim.analysis.moments import Moments

    orig, got = mo.run_layers, []

    def spy(layers_, x_, crossbar, **k):
        st, states = orig(layers_, x_, crossbar, **{**k, "return_all": True})
        got.append([Moments(x_, torch.zeros_like(x_), k.get("cov", "lowrank"))] + states)
        return st
    mo.run_layers = spy
    try:
        predict_mse(layers, x, **kw)
    finally:
        mo.run_layers = orig
    if len(got) != 1:
        raise RuntimeError(f"predictor_states: expected one propagation, saw {len(got)} (batch_chunk?)")
    return got[0]


def covariance_columns(st) -> int:
    """The covariance columns a state carries into a layer (per sample): dense factors, plus ``r`` for
    channel-local factors (each meets one input channel: ``r`` dense factors' multiply-adds), or the full
    covariance's ``D`` rows; 0 for a deterministic input."""
    if st.cov is not None:
        return int(st.cov.shape[1])
    k = 0 if st.factors is None else int(st.factors.shape[1])
    return k + (0 if st.local is None else int(st.local.shape[1]))


def layer_macs(layers, input_shape) -> list:
    """Multiply-accumulates of one noise-free forward pass per input sample, per crossbar layer, from the layer
    shapes: a convolution ``C_in C_out kh kw H_out W_out``, a linear layer ``in out`` (pooling, padding and
    activations are not MACs). ``input_shape`` excludes the batch."""
    from memcim.analysis.moments import CrossbarLayer, PadLayer, PoolLayer, FlattenLayer

    shape, out = tuple(input_shape), []
    for l in layers:
        if isinstance(l, CrossbarLayer):
            if l.kind == "linear":
                out.append(int(l.weight.shape[0] * l.weight.shape[1]))
                shape = (int(l.weight.shape[0]),)
            else:
                cout, cin, kh, kw = (int(v) for v in l.weight.shape)
                ho, wo = ((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                          zip(shape[1:], l.padding, l.dilation, (kh, kw), l.stride))
                out.append(cin * cout * kh * kw * ho * wo)
                shape = (cout, ho, wo)
        elif isinstance(l, PoolLayer):
            shape = (shape[0],) + tuple((n + 2 * p - k) // s + 1 for n, p, k, s in
                                        zip(shape[1:], l.padding, l.kernel, l.stride))
        elif isinstance(l, PadLayer):
            left, right, top, bottom = l.pad
            shape = (shape[0], shape[1] + top + bottom, shape[2] + left + right)
        elif isinstance(l, FlattenLayer):
            shape = (int(np.prod(shape)),)
    return out


def propagation_macs(layers, states) -> int:
    """Per input sample, the multiply-accumulates of carrying the prediction's covariance columns through every
    crossbar layer: sum over layers of (1 + covariance columns of its input state) x its forward MACs (the mean
    pass plus every factor, or every row of a full covariance, through the same weights)."""
    from memcim.analysis.moments import CrossbarLayer

    macs = iter(layer_macs(layers, tuple(states[0].mean.shape[1:])))
    return sum((1 + covariance_columns(st)) * next(macs) for l, st in zip(layers, states)
               if isinstance(l, CrossbarLayer))


def fit_exponent(xs, ys) -> float:
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def cnn(mult: int) -> nn.Sequential:
    mods, prev = [], 1
    for c in (2 * mult, 4 * mult, 8 * mult, 16 * mult, 16 * mult):
        mods += [nn.Conv2d(prev, c, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2)]
        prev = c
    return nn.Sequential(*mods, nn.Flatten(), nn.Linear(prev, 10))


def mlp(depth: int, width: int = 256) -> nn.Sequential:
    mods, prev = [], 256
    for _ in range(depth):
        mods += [nn.Linear(prev, width), nn.ReLU()]
        prev = width
    return nn.Sequential(*mods, nn.Linear(prev, 10))


def main(quick: bool = False, widths: list | None = None) -> dict:
    torch.set_num_threads(1)
    seed = 0
    res = {"config": {"sigma": SIGMA, "gmax": GMAX, "levels": LEVELS, "batch": 64, "dtype": "float32", "threads": 1,
                      "cov": "lowrank (default rank 4, max_factors 64)"},
           "provenance": provenance(seed=seed)}
    # --- small CNN: speed at 2 %/98 % precision
    net = load_model("mnist-cnn-small").eval()
    ds = load_dataset("mnist", "test", limit=64)
    chunks, per = (4, 50) if quick else (8, 60)
    tp, tmc, mse, p = interleaved(net, ds.x, chunks, per, seed, labels=ds.y)
    t_need = trials_needed(mse, 0.02, 0.98)
    mc_s = float(np.median(tmc)) * t_need
    pred_s = float(np.median(tp))
    res["small_cnn"] = {"model": "mnist-cnn-small", "trials_needed_2pct_98pct": t_need,
                        "per_chip_mse_cv": float(mse.std(ddof=1) / mse.mean()),
                        "mc_s_per_chip_median": float(np.median(tmc)), "mc_s_at_precision": mc_s,
                        "predict_s_median": pred_s, "predict_s_min": float(tp.min()),
                        "speedup_vs_simulator_mc": mc_s / pred_s, **error_row(p, mse)}
    s = res["small_cnn"]
    print(f"small CNN: T = {t_need} chips x {s['mc_s_per_chip_median'] * 1e3:.2f} ms = {mc_s:.2f} s; closed form "
          f"{pred_s * 1e3:.2f} ms -> {s['speedup_vs_simulator_mc']:.0f}x; MSE {p.mse_mean:.4g} vs MC {s['mse_mc']:.4g}"
          f" ± {s['mse_mc_stderr']:.2g} ({100 * s['rel_err_vs_mc']:+.1f} %, z = {s['z']:+.2f})", flush=True)
    # --- width and depth sweeps
    g = torch.Generator().manual_seed(seed)
    xc = torch.rand(64, 1, 32, 32, generator=g)
    xm = torch.rand(64, 256, generator=g)
    sweeps = {"width": [], "depth": []}
    chips = (2, 16) if quick else (4, 32)
    for mult in (widths or ([1, 2, 4] if quick else [1, 2, 4, 8])):
        torch.manual_seed(mult)
        net_w = cnn(mult)
        tp, tmc, mse, p = interleaved(net_w, xc, chips[0], chips[1], seed, timings=1)
        fw = forward_s(net_w, xc)
        lw = parse_model(net_w, torch.float32)
        states = predictor_states(lw, xc.to(torch.float32), sigma=SIGMA, gmax=GMAX, levels=LEVELS, power=False,
                                  dtype=torch.float32)
        macs = xc.shape[0] * sum(layer_macs(lw, tuple(xc.shape[1:])))          # the batch's forward pass
        pmacs = xc.shape[0] * propagation_macs(lw, states)
        row = {"channel_multiplier": mult, "predict_s": float(tp.min()), "mc_s_per_chip": float(tmc.min()),
               "forward_s": fw, "predict_in_forward_passes": float(tp.min()) / fw,
               "predict_in_chips": float(tp.min() / tmc.min()),
               "forward_macs": macs, "propagation_macs": pmacs,
               "covariance_columns": [covariance_columns(st) for l, st in zip(lw, states)
                                      if isinstance(l, CrossbarLayer)],
               "predict_ns_per_forward_mac": 1e9 * float(tp.min()) / macs,
               "predict_ns_per_propagation_mac": 1e9 * float(tp.min()) / pmacs, **error_row(p, mse)}
        sweeps["width"].append(row)
        print(row, flush=True)
    for depth in ([1, 2, 4] if quick else [1, 2, 3, 4, 6, 8]):
        torch.manual_seed(100 + depth)
        tp, tmc, mse, p = interleaved(mlp(depth), xm, chips[0], chips[1], seed, timings=1)
        row = {"hidden_layers": depth, "predict_s": float(tp.min()), "mc_s_per_chip": float(tmc.min()),
               "predict_in_chips": float(tp.min() / tmc.min()), **error_row(p, mse)}
        sweeps["depth"].append(row)
        print(row, flush=True)
    fits = {}
    for kind, key in (("width", "channel_multiplier"), ("depth", "hidden_layers")):
        rows = sweeps[kind]
        xs = [r[key] for r in rows]
        fits[kind] = {"predict_exponent": fit_exponent(xs, [r["predict_s"] for r in rows]),
                      "mc_per_chip_exponent": fit_exponent(xs, [r["mc_s_per_chip"] for r in rows]),
                      "ratio_exponent": fit_exponent(xs, [r["predict_in_chips"] for r in rows]),
                      "max_abs_rel_err_vs_mc": max(abs(r["rel_err_vs_mc"]) for r in rows)}
        if kind == "width":   # the floor: the network's own forward pass grows as width^2 (C_in C_out k^2 P)
            fits[kind]["forward_exponent"] = fit_exponent(xs, [r["forward_s"] for r in rows])
            fits[kind]["predict_over_forward_exponent"] = fit_exponent(xs, [r["predict_in_forward_passes"] for r in rows])
            # the physical floor: MACs from the layer shapes (no timer), and the MACs of carrying the prediction's
            # covariance columns (its factor counts per layer, which grow with width up to max_factors)
            fits[kind]["forward_mac_exponent"] = fit_exponent(xs, [r["forward_macs"] for r in rows])
            fits[kind]["propagation_mac_exponent"] = fit_exponent(xs, [r["propagation_macs"] for r in rows])
            fits[kind]["predict_ns_per_forward_mac_exponent"] = fit_exponent(
                xs, [r["predict_ns_per_forward_mac"] for r in rows])
        if kind == "depth":   # the first layer's input is deterministic (no covariance): the layers that
            r2 = [r for r in rows if r[key] >= 2]     # carry one are depth - 1
            fits[kind]["predict_exponent_vs_covariance_layers"] = fit_exponent([r[key] - 1 for r in r2],
                                                                               [r["predict_s"] for r in r2])
        print(kind, fits[kind], flush=True)
    res["sweeps"] = sweeps
    res["fits"] = fits
    out = Path(__file__).parent / "results" / "predict_scaling.json"
    write_json(out, res)
    return res


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer chips and points")
    ap.add_argument("--widths", default=None,
                    help="comma-separated channel multipliers of the width sweep (default 1,2,4,8; --quick 1,2,4)")
    a = ap.parse_args()
    ws = None
    if a.widths is not None:
        try:
            ws = [int(v) for v in a.widths.split(",")]
        except ValueError:
            ap.error(f"--widths: {a.widths!r} is not allowed; give positive integers separated by commas, e.g. 1,2,4,8")
        if len(ws) < 2 or min(ws) < 1:
            ap.error(f"--widths: {a.widths!r} is not allowed; give at least two positive integers, e.g. 1,2,4,8")
    main(quick=a.quick, widths=ws)
