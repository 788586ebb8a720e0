"""Monte Carlo over programmed chips with exactly the MemSE hardware semantics.

Per crossbar layer with (BatchNorm-folded) weights ``w``: ``c = G_max/max|w|``;
``G+ = q(c*max(w,0))``, ``G- = q(c*max(-w,0))``, ``q`` rounding to the nearest of
``{0, D, ..., N*D}``, ``D = G_max/N``; every device gets i.i.d. ``N(0, sigma^2)``; the layer
computes ``z = (1/c)(G+ - G-) x + b``. Each trial is one sampled chip, shared by the whole batch
of inputs. Trials run vectorised: a trial dimension leads, convolutions run as grouped
convolutions with one group per trial. Activations, pooling and flattening call the model's own
torch modules.

This is a validation tool for :mod:`memcim.analysis.moments`; it shares only the model parsing
(BatchNorm folding) with it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from memcim.analysis.moments import (CrossbarLayer, ElementwiseLayer, FlattenLayer, PadLayer, PoolLayer, parse_model,
                                     resolve_gmax)

__all__ = ["MCResult", "monte_carlo", "program_chip", "trials_needed"]


def program_chip(w: torch.Tensor, gmax: torch.Tensor, levels: int, sigma: float, trials: int,
                 gen: torch.Generator):
    """Sample ``trials`` programmed (G+, G-) pairs for weights ``w`` (torch layout).

    ``gmax`` is a scalar or per-output-row tensor (S). Returns (G+, G-, c) with G of shape
    (trials, *w.shape) in S.
    """
    shape = (-1,) + (1,) * (w.dim() - 1)
    g = gmax.reshape(shape) if gmax.dim() else gmax
    c = g / w.abs().max()
    step = g / levels
    gp = torch.clamp(torch.round(c * w.clamp_min(0) / step), 0, levels) * step
    gn = torch.clamp(torch.round(c * (-w).clamp_min(0) / step), 0, levels) * step
    gp = gp.expand(trials, *w.shape)
    gn = gn.expand(trials, *w.shape)
    if sigma > 0:
        gp = gp + sigma * torch.randn(gp.shape, generator=gen, dtype=w.dtype)
        gn = gn + sigma * torch.randn(gn.shape, generator=gen, dtype=w.dtype)
    return gp, gn, c


def _mvm(layer: CrossbarLayer, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """h (T, B, ...) with per-trial conductance-valued weight g (T, *w.shape)."""
    t, b = h.shape[:2]
    if layer.kind == "linear":
        return torch.einsum("tbi,toi->tbo", h, g)
    cin, hh, ww = h.shape[2:]
    xin = h.permute(1, 0, 2, 3, 4).reshape(b, t * cin, hh, ww)
    y = F.conv2d(xin, g.reshape(t * g.shape[1], *g.shape[2:]), None, layer.stride, layer.padding,
                 layer.dilation, groups=t)
    return y.reshape(b, t, g.shape[1], *y.shape[2:]).permute(1, 0, 2, 3, 4)


@dataclass
class MCResult:
    """Monte Carlo statistics over ``trials`` chips.

    ``per_output`` (B, out): mean over trials of the squared error vs the noise-free
    full-precision output. ``trial_mse`` (T,): MSE (mean over batch and units) of each chip.
    ``power``: mean over chips and batch of the direct device and TIA power, W.
    ``accuracy``: per-trial accuracy when labels were given.
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


@torch.no_grad()
def monte_carlo(model, x, *, sigma: float, gmax, levels: int = 128, trials: int = 100, seed: int = 0,
                chunk: int | None = None, power: bool = False, r: float = 1.0, labels=None,
                dtype: torch.dtype = torch.float64) -> MCResult:
    """Sample ``trials`` chips and measure the output MSE of ``model`` on inputs ``x``.

    Parameters
    ----------
    model : nn.Sequential of supported layers (see :func:`memcim.analysis.moments.parse_model`).
    x : (B, ...) inputs. sigma : device noise std (S). gmax : G_max (S) per network/layer/column.
    levels : N. trials : number of chips. seed : RNG seed. chunk : trials per vectorised pass.
    power : also measure device and TIA power directly on every sampled chip (``r`` in Ω).
    labels : optional (B,) integer labels; then per-trial accuracy is returned.
    dtype : computation dtype.

    Returns
    -------
    MCResult.
    """
    t0 = time.perf_counter()
    if not (isinstance(trials, (int, np.integer)) and trials >= 2):
        raise ValueError(f"trials: {trials!r} is not allowed; must be an integer >= 2")
    if not (math.isfinite(float(sigma)) and sigma >= 0):
        raise ValueError(f"sigma: {sigma!r} is not allowed; must be finite and >= 0 S")
    if not (isinstance(levels, (int, np.integer)) and levels >= 1):
        raise ValueError(f"levels: {levels!r} is not allowed; must be an integer >= 1")
    layers = parse_model(model, dtype) if not isinstance(model, list) else model
    gm = resolve_gmax(gmax, layers, dtype)
    x = torch.as_tensor(x).to(dtype)
    ref_model = model if isinstance(model, nn.Module) else None
    if ref_model is not None:
        ref = ref_model.to(dtype).eval()(x).reshape(x.shape[0], -1)
    else:
        from memcim.analysis.moments import reference_output
        ref = reference_output(layers, x).reshape(x.shape[0], -1)
    b = x.shape[0]
    if chunk is None:
        chunk = max(1, min(trials, int(2e7 // max(1, x[0].numel() * b * 8))))
    gen = torch.Generator().manual_seed(int(seed))
    sq_sum = torch.zeros_like(ref)
    s1 = torch.zeros_like(ref)
    s2 = torch.zeros_like(ref)
    trial_mse, accs = [], []
    pw_dev = pw_tia = 0.0
    pw_layers: dict[int, list] = {}
    done = 0
    while done < trials:
        t = min(chunk, trials - done)
        h = x.unsqueeze(0).expand(t, *x.shape)
        ix = 0
        for layer in layers:
            if isinstance(layer, CrossbarLayer):
                gp, gn, c = program_chip(layer.weight, gm[ix], int(levels), float(sigma), t, gen)
                ip, im = _mvm(layer, h, gp), _mvm(layer, h, gn)
                if power:
                    if layer.kind == "linear":
                        dev = torch.einsum("tbi,toi->t", h * h, gp + gn)
                        red = (1, 2)
                    else:
                        dev = _mvm(layer, h * h, (gp + gn)).sum((1, 2, 3, 4))
                        red = (1, 2, 3, 4)
                    tia = r * (ip * ip + im * im).sum(red)
                    acc = pw_layers.setdefault(ix, [0.0, 0.0])
                    acc[0] += float(dev.sum()) / b
                    acc[1] += float(tia.sum()) / b
                cc = c.reshape(-1, *([1] * (ip.dim() - 3))) if c.dim() else c
                z = (ip - im) / cc
                bias = layer.bias if layer.kind == "linear" else layer.bias.reshape(-1, 1, 1)
                h = z + bias
                ix += 1
            elif isinstance(layer, FlattenLayer):
                h = h.reshape(t, b, -1)
            elif isinstance(layer, PadLayer):
                flat = F.pad(h.reshape(t * b, *h.shape[2:]), layer.pad)
                h = flat.reshape(t, b, *flat.shape[1:])
            elif isinstance(layer, PoolLayer):
                flat = h.reshape(t * b, *h.shape[2:])
                y = F.avg_pool2d(flat, layer.kernel, layer.stride, layer.padding)
                h = y.reshape(t, b, *y.shape[1:])
            elif isinstance(layer, ElementwiseLayer):
                if layer.kind == "affine":
                    shape = (-1,) + (1,) * (h.dim() - 3)
                    h = h * layer.scale.reshape(shape) + layer.shift.reshape(shape)
                else:
                    h = layer.module(h)
        y = h.reshape(t, b, -1)
        err = (y - ref) ** 2
        sq_sum += err.sum(0)
        s1 += y.sum(0)
        s2 += (y * y).sum(0)
        trial_mse.append(err.mean((1, 2)).cpu().numpy())
        if labels is not None:
            lab = torch.as_tensor(labels).long()
            accs.append((y.argmax(-1) == lab).double().mean(1).cpu().numpy())
        done += t
    per = sq_sum / trials
    tm = np.concatenate(trial_mse)
    mean = s1 / trials
    var = (s2 / trials - mean * mean) * trials / (trials - 1)
    pow_d = None
    if power:
        per_layer = [{"device_W": v[0] / trials, "tia_W": v[1] / trials, "total_W": (v[0] + v[1]) / trials}
                     for _, v in sorted(pw_layers.items())]
        pow_d = {"total_W": sum(p["total_W"] for p in per_layer), "device_W": sum(p["device_W"] for p in per_layer),
                 "tia_W": sum(p["tia_W"] for p in per_layer), "per_layer": per_layer}
    cfg = {"engine": "vectorised", "sigma": float(sigma), "levels": int(levels), "trials": int(trials), "seed": int(seed), "batch": int(b)}
    return MCResult(per, float(per.mean()), float(per.max(1).values.mean()), tm,
                    float(tm.std(ddof=1) / math.sqrt(len(tm))), mean, var, pow_d,
                    np.concatenate(accs) if accs else None, time.perf_counter() - t0, cfg)


def trials_needed(trial_mse: np.ndarray, rel_err: float = 0.02, confidence: float = 0.98) -> int:
    """Trials T such that the MC mean MSE is within ``rel_err`` of the truth with probability
    ``confidence`` (normal approximation): ``T = (z * CV / rel_err)^2``, CV = std/mean of the
    per-chip MSE."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    cv = float(np.std(trial_mse, ddof=1) / np.mean(trial_mse))
    return int(math.ceil((z * cv / rel_err) ** 2))
