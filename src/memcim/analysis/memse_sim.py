"""Monte Carlo of the MemSE semantics through memcim's hardware simulator: the Monte Carlo of record.

The networks run through the simulator every other part of memcim uses, in the one chips loop
:func:`memcim.nn.evaluate.chip_outputs`: :func:`memcim.nn.analog.convert_to_analog` puts each
``Linear``/``Conv2d`` on crossbars, every chip is programmed with ``layer_seed(seed, c)``
(``memcim.simulate.program``), and the forward pass reads it (``ProgrammedChip.mvm``: differential
columns, TIA, digital rescale and partial sums).

How the MemSE semantics map onto a :class:`~memcim.config.HardwareConfig` (per crossbar layer,
:func:`memse_hardware`, the ``memse`` preset with the layer's G_max, sigma and N):

* levels ``{0, D, ..., N D}``, ``D = G_max/N``  ->  ``levels = N + 1`` uniformly spaced over
  ``[g_min, g_min + G_max]``; the scale ``c = (g_max - g_min)/max|w| = G_max/max|w|`` and the
  rounding to the nearest level are then the same;
* i.i.d. ``N(0, sigma^2)`` on every device  ->  ``prog_sigma_abs = sigma``;
* ``z = (1/c)(G+ - G-) x + b`` with an exact digital bias  ->  differential pair, per-matrix
  scale, DAC and ADC off, no read noise, no stuck devices; the bias is added digitally;
* inputs in volts  ->  ``dac.x_range = 1`` with ``v_read = 1 V`` (the word line of an input ``x``
  is driven at ``x`` volts); one array per layer (the paper does not tile), ``r_tia = 1 Ohm``.

The only difference is the offset ``g_min``. A physical device cannot go below 0 S, so the
simulator clips programmed conductances at 0 S, while MemSE puts unclipped Gaussian noise on
devices at 0 S. The offset (default ``10 sigma``) lifts every level so far above 0 S that the
clip never acts (probability < 1e-23 per device), and it cancels exactly in ``G+ - G-``. The
network's output, and so the MSE, is then the MemSE one. The offset does change the power: the
power measured on each chip (``power=True``, :func:`memcim.hardware.energy.chip_power` on the chip's
programmed conductances and the reads it ran) counts the conductances from ``g_min``, i.e. on the
MemSE devices ``G - g_min``, which have exactly MemSE's distribution.

Per-column G_max needs a different ``G_max`` per column with one ``max|w|`` per matrix, which
the mapping does not express (its per-column scale uses each column's own ``max|w|``); it is
refused with a one-line error.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from memcim.analysis.moments import (CrossbarLayer, ElementwiseLayer, FlattenLayer, PadLayer, PoolLayer, parse_model,
                                     resolve_gmax)

__all__ = ["MCResult", "memse_hardware", "to_sequential", "monte_carlo_simulator", "trials_needed"]


@dataclass
class MCResult:
    """Monte Carlo statistics over ``trials`` chips.

    ``per_output`` (B, out): mean over trials of the squared error vs the noise-free
    full-precision output. ``trial_mse`` (T,): MSE (mean over batch and units) of each chip.
    ``power``: mean over chips of the device and TIA power measured on every chip [W] (when asked).
    ``accuracy``: per-trial accuracy when labels were given. ``trial_power`` (T, layers, 2): the device
    and TIA power measured on each chip [W] (when asked).
    """

    per_output: torch.Tensor
    mse_mean: float
    mse_max: float
    trial_mse: np.ndarray
    mse_mean_stderr: float
    output_mean: torch.Tensor
    output_var: torch.Tensor
    power: dict | None = None
    accuracy: np.ndarray | None = None
    wall_s: float = 0.0
    config: dict = field(default_factory=dict)
    trial_power: np.ndarray | None = None

    def to_dict(self, per_output: bool = True) -> dict:
        d = {"mse_mean": self.mse_mean, "mse_max": self.mse_max, "mse_mean_stderr": self.mse_mean_stderr,
             "trials": int(len(self.trial_mse)), "wall_s": self.wall_s,
             "per_output": self.per_output.mean(0).cpu().numpy() if per_output else None}
        if self.power is not None:
            d["power"] = self.power
        if self.accuracy is not None:
            d["accuracy_mean"] = float(np.mean(self.accuracy))
            d["accuracy_std"] = float(np.std(self.accuracy))
        d["config"] = self.config
        return d


def trials_needed(trial_mse: np.ndarray, rel_err: float = 0.02, confidence: float = 0.98) -> int:
    """Trials T such that the MC mean MSE is within ``rel_err`` of the truth with probability
    ``confidence`` (normal approximation): ``T = (z * CV / rel_err)^2``, CV = std/mean of the
    per-chip MSE."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    cv = float(np.std(trial_mse, ddof=1) / np.mean(trial_mse))
    return int(math.ceil((z * cv / rel_err) ** 2))


@functools.lru_cache(maxsize=1)
def _memse_preset():
    from memcim.config import preset

    return preset("memse")


def memse_hardware(gmax: float, sigma: float, levels: int, offset: float | None = None, rows: int | None = None):
    """The :class:`~memcim.config.HardwareConfig` that realises the MemSE crossbar of one layer:
    the ``memse`` preset (paper 001) with this layer's G_max, sigma and N, inputs in volts
    (``dac.x_range = 1``) and, given ``rows``, one array for the whole layer.

    Parameters
    ----------
    gmax : G_max of the layer (S, > 0). sigma : programming-noise std (S, >= 0).
    levels : N (the devices get N + 1 levels). offset : g_min (S); default ``max(10 sigma, 1e-3 G_max)``.
    rows : the layer's inputs; the array gets at least this many rows (the paper does not tile).
    """
    if not (math.isfinite(gmax) and gmax > 0):
        raise ValueError(f"gmax: {gmax!r} is not allowed; must be finite and > 0 S")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma: {sigma!r} is not allowed; must be finite and >= 0 S")
    off = float(offset) if offset is not None else max(10.0 * sigma, 1e-3 * gmax)
    if not (math.isfinite(off) and off >= 0):
        raise ValueError(f"offset: {offset!r} is not allowed; must be finite and >= 0 S")
    hw = _memse_preset()
    kw = {"device": {"g_min": off, "g_max": off + float(gmax), "levels": int(levels) + 1, "bits": None,
                     "prog_sigma_abs": float(sigma)},
          "dac": {"x_range": 1.0}}
    if rows is not None and int(rows) > hw.array.rows:
        kw["array"] = {"rows": int(rows)}
    return hw.replace(**kw)


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


class ReadPowerProbe:
    """Measures the read power of every chip of the chips loop (:func:`memcim.nn.evaluate.chip_outputs`)
    from the energy model (:func:`memcim.hardware.energy.chip_power`) on each layer's programmed
    conductances and the reads it ran. Pass it as ``on_program``; after each chip, :meth:`measure`
    returns (layers, 2): device and TIA power per input [W].

    Parameters
    ----------
    n_inputs : inputs per chip read (the power is per input).
    from_g_min : count the conductances from each layer's ``g_min`` (MemSE's devices; see the module docstring).
    """

    def __init__(self, n_inputs: int, from_g_min: bool = False):
        self.n, self.from_g_min = int(n_inputs), from_g_min
        self.rows: dict = {}
        self._installed = None

    def __call__(self, c, analog):
        from memcim.nn.analog import analog_layers

        if self._installed is not analog:
            for name, m in analog_layers(analog):
                m.register_forward_pre_hook(
                    lambda mod, args, name=name: self.rows.setdefault(name, []).append(mod.calib_rows(args[0])))
            self._installed = analog
        self.rows.clear()

    def measure(self, analog) -> np.ndarray:
        from memcim.hardware.converters import dac_convert
        from memcim.hardware.energy import chip_power
        from memcim.nn.analog import analog_layers

        out = []
        for name, m in analog_layers(analog):
            r = torch.cat(self.rows[name]).to(torch.float64)
            u, _ = dac_convert(r, m.hardware.dac)
            off = m.hardware.device.g_min if self.from_g_min else 0.0
            d, t = chip_power(m.chip, u, n_inputs=self.n, g_offset=off)
            out.append((float(d[0]), float(t[0])))
        return np.asarray(out)


@torch.no_grad()
def monte_carlo_simulator(model, x, *, sigma: float, gmax, levels: int = 128, trials: int = 100, seed: int = 0,
                          labels=None, dtype: torch.dtype = torch.float32, offset: float | None = None,
                          power: bool = False, progress: bool | None = None) -> MCResult:
    """Sample ``trials`` chips in the one chips loop (:func:`memcim.nn.evaluate.chip_outputs`) and
    measure the output MSE (and the read power) on each.

    Parameters
    ----------
    model : nn.Module of layers :func:`memcim.analysis.moments.parse_model` accepts (or parsed layers).
    x : (B, ...) inputs. sigma : programming-noise std (S). gmax : one G_max, or one per crossbar layer.
    levels : N. trials : chips (>= 2). seed : chip ``c`` is programmed with ``layer_seed(seed, c)``.
    labels : optional (B,) labels for per-chip accuracy. dtype : simulation precision.
    offset : g_min (S) lifting every level above 0 S (see the module docstring).
    power : measure the device and TIA power of every chip from the energy model
        (:func:`memcim.hardware.energy.chip_power`) on its programmed conductances, counted from
        ``g_min`` (MemSE's devices), for the reads it ran; per input, W in the paper's units.
    progress : tqdm bar over chips (default: when stderr is a terminal).

    Returns
    -------
    :class:`MCResult` (the reference is the noise-free full-precision output of the same,
    BatchNorm-folded, network).
    """
    from memcim.nn.evaluate import chip_outputs

    t0 = time.perf_counter()
    if isinstance(trials, bool) or not (isinstance(trials, (int, np.integer)) and trials >= 2):
        raise ValueError(f"trials: {trials!r} is not allowed; must be an integer >= 2")
    if not (isinstance(levels, (int, np.integer)) and levels >= 1):
        raise ValueError(f"levels: {levels!r} is not allowed; must be an integer >= 1")
    layers = model if isinstance(model, list) else parse_model(model, torch.float64)
    gm = resolve_gmax(gmax, layers, torch.float64)
    if any(g.dim() for g in gm):
        raise ValueError("gmax: per-column G_max is not expressible in the simulator's mapping; "
                         "use one G_max per network or per layer")
    xl = [l for l in layers if isinstance(l, CrossbarLayer)]
    net = to_sequential(layers, dtype)
    overrides = {f"xb{i}": memse_hardware(float(g), float(sigma), int(levels), offset,
                                          rows=int(l.weight[0].numel()))
                 for i, (g, l) in enumerate(zip(gm, xl))}
    x = torch.as_tensor(x).to(dtype)
    ref = net(x).reshape(x.shape[0], -1).to(torch.float64)
    b = x.shape[0]
    probe = ReadPowerProbe(b, from_g_min=True) if power else None
    sq_sum = torch.zeros_like(ref)
    s1 = torch.zeros_like(ref)
    s2 = torch.zeros_like(ref)
    trial_mse, accs = [], []
    pw = []
    lab = torch.as_tensor(labels).long() if labels is not None else None
    for _, analog, y in chip_outputs(net, x, overrides["xb0"], chips=int(trials), seed=seed, overrides=overrides,
                                     batch_size=max(1, b), dtype=dtype, progress=progress,
                                     desc="chips (simulator)", on_program=probe):
        y = y.reshape(b, -1).to(torch.float64)
        err = (y - ref) ** 2
        sq_sum += err
        s1 += y
        s2 += y * y
        trial_mse.append(float(err.mean()))
        if lab is not None:
            accs.append(float((y.argmax(-1) == lab).double().mean()))
        if power:
            pw.append(probe.measure(analog))
    per = sq_sum / trials
    tm = np.asarray(trial_mse)
    mean = s1 / trials
    var = (s2 / trials - mean * mean) * trials / (trials - 1)
    pow_d = None
    if power:
        trial_pw = np.asarray(pw)
        pw = trial_pw.mean(0)
        per_layer = [{"layer": l.name, "device_W": float(d), "tia_W": float(t), "total_W": float(d + t)}
                     for l, (d, t) in zip(xl, pw)]
        pow_d = {"total_W": float(pw.sum()), "device_W": float(pw[:, 0].sum()), "tia_W": float(pw[:, 1].sum()),
                 "units": "W in the paper's normalised units (inputs in V, r_tia = 1 Ohm, levels from 0 S), "
                          "measured on every chip", "per_layer": per_layer}
    cfg = {"engine": "simulator", "sigma": float(sigma), "levels": int(levels), "trials": int(trials),
           "seed": int(seed), "batch": int(b), "offset_S": [h.device.g_min for h in overrides.values()]}
    return MCResult(per, float(per.mean()), float(per.max(1).values.mean()), tm,
                    float(tm.std(ddof=1) / math.sqrt(len(tm))), mean, var, pow_d,
                    np.asarray(accs) if accs else None, time.perf_counter() - t0, cfg, trial_pw if power else None)
