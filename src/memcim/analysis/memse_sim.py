"""Monte Carlo of the MemSE semantics through memcim's hardware simulator.

:mod:`memcim.analysis.memse_mc` re-implements the MemSE crossbar (paper 001) in a few vectorised
lines. This module instead runs the same networks through the simulator every other part of
memcim uses: :func:`memcim.nn.analog.convert_to_analog` puts each ``Linear``/``Conv2d`` on
crossbars, :func:`memcim.nn.analog.program` samples a chip (``memcim.simulate.program``), and the
forward pass reads it (``ProgrammedChip.mvm``: tiling, differential columns, TIA, digital rescale
and partial sums). It is the independent check of both the prediction and the vectorised MC.

How the MemSE semantics map onto a :class:`~memcim.config.HardwareConfig` (per crossbar layer):

* levels ``{0, D, ..., N D}``, ``D = G_max/N``  ->  ``levels = N + 1`` uniformly spaced over
  ``[g_min, g_min + G_max]``; the scale ``c = (g_max - g_min)/max|w| = G_max/max|w|`` and the
  rounding to the nearest level are then the same;
* i.i.d. ``N(0, sigma^2)`` on every device  ->  ``prog_sigma_abs = sigma``;
* ``z = (1/c)(G+ - G-) x + b`` with an exact digital bias  ->  differential pair, per-matrix
  scale, DAC and ADC off, no read noise, no stuck devices; the bias is added digitally.

The only difference is the offset ``g_min``. A physical device cannot go below 0 S, so the
simulator clips programmed conductances at 0 S, while MemSE puts unclipped Gaussian noise on
devices at 0 S. The offset (default ``10 sigma``) lifts every level so far above 0 S that the
clip never acts (probability < 1e-23 per device), and it cancels exactly in ``G+ - G-``. The
network's output, and so the MSE, is then the MemSE one; only the power, which the offset does
change, is not reported here (see :func:`memcim.analysis.memse_mc.monte_carlo` with
``power=True``).

Per-column G_max needs a different ``G_max`` per column with one ``max|w|`` per matrix, which
the foundation mapping does not express (its per-column scale uses each column's own
``max|w|``); it is refused with a one-line error.
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch
import torch.nn as nn

from memcim.analysis.memse_mc import MCResult
from memcim.analysis.moments import (CrossbarLayer, ElementwiseLayer, FlattenLayer, PadLayer, PoolLayer, parse_model,
                                     resolve_gmax)

__all__ = ["memse_hardware", "to_sequential", "monte_carlo_simulator"]


@functools.lru_cache(maxsize=1)
def _memse_preset():
    from memcim.config import preset

    return preset("memse")


def memse_hardware(gmax: float, sigma: float, levels: int, offset: float | None = None):
    """The :class:`~memcim.config.HardwareConfig` that realises the MemSE crossbar of one layer:
    the ``memse`` preset (paper 001) with this layer's G_max, sigma and N.

    Parameters
    ----------
    gmax : G_max of the layer (S, > 0). sigma : programming-noise std (S, >= 0).
    levels : N (the devices get N + 1 levels). offset : g_min (S); default ``max(10 sigma, 1e-3 G_max)``.
    """
    if not (math.isfinite(gmax) and gmax > 0):
        raise ValueError(f"gmax: {gmax!r} is not allowed; must be finite and > 0 S")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma: {sigma!r} is not allowed; must be finite and >= 0 S")
    off = float(offset) if offset is not None else max(10.0 * sigma, 1e-3 * gmax)
    if not (math.isfinite(off) and off >= 0):
        raise ValueError(f"offset: {offset!r} is not allowed; must be finite and >= 0 S")
    return _memse_preset().replace(
        device={"g_min": off, "g_max": off + float(gmax), "levels": int(levels) + 1, "bits": None,
                "prog_sigma_abs": float(sigma)})


class _Affine(nn.Module):
    """Per-channel ``scale * x + shift`` (a BatchNorm that could not be folded)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, x):
        shape = (-1,) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)


def to_sequential(layers: list, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Rebuild a flat ``nn.Sequential`` from parsed layers (BatchNorm already folded), so that the
    simulator maps exactly the weights the prediction sees. Crossbar layers are named ``xb0``,
    ``xb1``, ... in order."""
    mods: list[tuple[str, nn.Module]] = []
    ix = 0
    for k, l in enumerate(layers):
        if isinstance(l, CrossbarLayer):
            w, b = l.weight.to(dtype), l.bias.to(dtype)
            if l.kind == "linear":
                m = nn.Linear(w.shape[1], w.shape[0], dtype=dtype)
            else:
                m = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=l.stride, padding=l.padding,
                              dilation=l.dilation, dtype=dtype)
            with torch.no_grad():
                m.weight.copy_(w)
                m.bias.copy_(b)
            mods.append((f"xb{ix}", m))
            ix += 1
        elif isinstance(l, PoolLayer):
            mods.append((f"l{k}", nn.AvgPool2d(l.kernel, l.stride, l.padding, count_include_pad=True)))
        elif isinstance(l, PadLayer):
            mods.append((f"l{k}", nn.ZeroPad2d(l.pad)))
        elif isinstance(l, FlattenLayer):
            mods.append((f"l{k}", nn.Flatten()))
        elif isinstance(l, ElementwiseLayer):
            if l.kind == "affine":
                mods.append((f"l{k}", _Affine(l.scale.to(dtype), l.shift.to(dtype))))
            else:
                mods.append((f"l{k}", l.module))
        else:  # pragma: no cover - parse_model only yields the types above
            raise ValueError(f"model: cannot rebuild layer {l!r}")
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(mods)).eval()


@torch.no_grad()
def monte_carlo_simulator(model, x, *, sigma: float, gmax, levels: int = 128, trials: int = 100, seed: int = 0,
                          labels=None, dtype: torch.dtype = torch.float32, offset: float | None = None,
                          progress: bool | None = None) -> MCResult:
    """Sample ``trials`` chips with :func:`memcim.nn.analog.program` and measure the output MSE.

    Parameters
    ----------
    model : nn.Module of layers :func:`memcim.analysis.moments.parse_model` accepts (or parsed layers).
    x : (B, ...) inputs. sigma : programming-noise std (S). gmax : one G_max, or one per crossbar layer.
    levels : N. trials : chips (>= 2). seed : chip ``k`` is programmed with a seed derived from (seed, k).
    labels : optional (B,) labels for per-chip accuracy. dtype : simulation precision.
    offset : g_min (S) lifting every level above 0 S (see the module docstring).
    progress : tqdm bar over chips (default: when stderr is a terminal).

    Returns
    -------
    :class:`~memcim.analysis.memse_mc.MCResult` (``power`` is None; the reference is the noise-free
    full-precision output of the same, BatchNorm-folded, network).
    """
    from tqdm.auto import tqdm

    from memcim.nn.analog import convert_to_analog, program

    t0 = time.perf_counter()
    if isinstance(trials, bool) or not (isinstance(trials, (int, np.integer)) and trials >= 2):
        raise ValueError(f"trials: {trials!r} is not allowed; must be an integer >= 2")
    if not (isinstance(levels, (int, np.integer)) and levels >= 1):
        raise ValueError(f"levels: {levels!r} is not allowed; must be an integer >= 1")
    layers = model if isinstance(model, list) else parse_model(model, torch.float64)
    gm = resolve_gmax(gmax, layers, torch.float64)
    if any(g.dim() for g in gm):
        raise ValueError("gmax: per-column G_max is not expressible in the foundation simulator's mapping; "
                         "use one G_max per network or per layer (or memcim.analysis.memse_mc.monte_carlo)")
    net = to_sequential(layers, dtype)
    overrides = {f"xb{i}": memse_hardware(float(g), float(sigma), int(levels), offset) for i, g in enumerate(gm)}
    analog = convert_to_analog(net, overrides["xb0"], overrides=overrides, train_noise=False).eval()
    x = torch.as_tensor(x).to(dtype)
    ref = net(x).reshape(x.shape[0], -1).to(torch.float64)
    seeds = np.random.SeedSequence(int(seed)).generate_state(int(trials), np.uint32)
    sq_sum = torch.zeros_like(ref)
    s1 = torch.zeros_like(ref)
    s2 = torch.zeros_like(ref)
    trial_mse, accs = [], []
    lab = torch.as_tensor(labels).long() if labels is not None else None
    for k in tqdm(range(int(trials)), desc="chips (simulator)", disable=None if progress is None else not progress):
        program(analog, seed=int(seeds[k]), dtype=dtype)
        y = analog(x).reshape(x.shape[0], -1).to(torch.float64)
        err = (y - ref) ** 2
        sq_sum += err
        s1 += y
        s2 += y * y
        trial_mse.append(float(err.mean()))
        if lab is not None:
            accs.append(float((y.argmax(-1) == lab).double().mean()))
    per = sq_sum / trials
    tm = np.asarray(trial_mse)
    mean = s1 / trials
    var = (s2 / trials - mean * mean) * trials / (trials - 1)
    cfg = {"engine": "simulator", "sigma": float(sigma), "levels": int(levels), "trials": int(trials),
           "seed": int(seed), "batch": int(x.shape[0]), "offset_S": [h.device.g_min for h in overrides.values()]}
    return MCResult(per, float(per.mean()), float(per.max(1).values.mean()), tm,
                    float(tm.std(ddof=1) / math.sqrt(len(tm))), mean, var, None,
                    np.asarray(accs) if accs else None, time.perf_counter() - t0, cfg)
