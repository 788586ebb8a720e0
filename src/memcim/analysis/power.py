"""Expected read power of a network on crossbars: the expectation of the one energy model's terms.

:func:`memcim.hardware.energy.bitline_power` is the read-power formula: a read drives word line
``i`` at ``u_i v_read`` and bit line ``j`` collects ``I_j = v_read sum_i u_i G_ij``, so

* the devices dissipate ``v_read^2 sum_i E[u_i^2] sum_j E[G_ij]`` (``energy.crossbar_power``);
* the TIAs dissipate ``r_tia E[I_j^2] = r_tia v_read^2 (E[(u . E[G_j])^2] + sum_i E[u_i^2] Var G_ij)``
  in their feedback resistors (``energy.tia_power``; each bit line, G+ and G- alike, has its own TIA).

This module supplies the two input statistics the formula needs from the moment propagation
(:mod:`memcim.analysis.moments`): ``E[u_i^2]`` per word line and ``E[(u . E[G_j])^2]`` per bit line,
summed over the reads of one input (a convolution reads once per output position) and averaged over
the batch, with ``u = x / xs`` the drive fraction (``xs``: the input value that full drive
represents, ``dac.x_range`` or each read's own largest magnitude, as the simulator's DAC does).

Two callers:

* :func:`memcim.analysis.predict.predict` with ``power=True``: the bit lines of the plan the simulator
  programs (row tiles, g_min, differential or offset columns), their mean and variance over chips from
  :func:`memcim.hardware.device.conductance_moments` (programming noise clipped at 0 S, stuck devices,
  RTN), ``v_read`` and ``r_tia`` of the config. Real watts for any config.
* MemSE (paper 001, Eqs. 16-21; :class:`PowerAccumulator`, used by
  :func:`memcim.analysis.moments.predict_mse` and the G_max optimizer): the paper's crossbar, one array
  per layer with levels from 0 S, ``G+- = c w~+-`` (``c = G_max/max|w|``, per layer or per column),
  i.i.d. zero-mean noise of variance ``sigma^2`` on every device, inputs in volts (``xs = 1``,
  ``v_read = 1 V``) and ``r_tia = r`` (1 Ohm). The formula then reads, per column,
  ``E[P] = c^2 H1 + c H2 + H3`` (Eq. 21) with ``H1 = r[(w~+ . x)^2 + w~+^T Gamma w~+ + (same for -)]``,
  ``H2 = sum_i |w~_i| E[X_i^2]``, ``H3 = 2 r sigma^2 sum_i E[X_i^2]``; the paper writes the TIA power
  ``I^2/r``, equal for its ``r = 1``. Its numbers are in the paper's normalised units (sigma = 0.01 S,
  G_max of order 1 S, r = 1 Ohm): watts of those units, not of a real chip.

A convolution's power is summed over its output positions (power per inference when each read
lasts one time unit); everything is averaged over the input batch. Differentiable in the
conductances (the G_max optimizer's gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from memcim.analysis import moments as mo
from memcim.hardware.energy import bitline_power

__all__ = ["layer_read_power", "PowerAccumulator", "predict_power"]


def _op(layer: "mo.CrossbarLayer"):
    if layer.kind == "linear":
        return lambda x, w: x @ w.t()
    return lambda x, w: F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation)


def layer_read_power(st: "mo.Moments", layer: "mo.CrossbarLayer", g: torch.Tensor, g_var: torch.Tensor | None, *,
                     v_read: float, r_tia: float, xs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected device and TIA power [W] of one crossbar layer per input (batch-averaged).

    Parameters
    ----------
    st : Moments of the layer input (values ``x``).
    layer : the crossbar layer (its kind and convolution geometry).
    g : (L, *layer.weight.shape[1:]) mean conductances [S] of the layer's ``L`` bit lines, in the
        layer's input layout (a bit line of a row tile has zeros on the other tiles' inputs).
    g_var : same shape, their variance over chips [S^2], or None.
    v_read : read voltage [V]. r_tia : TIA feedback resistance [Ohm].
    xs : the input value that full drive represents: a scalar, or per read ((B, 1) for a matrix,
        (B, 1, Ho, Wo) for a convolution); None = 1 (inputs are drive fractions).

    Returns
    -------
    (device_W, tia_W) torch scalars.
    """
    op = _op(layer)
    m2 = st.second_moment()
    b = m2.shape[0]
    inv2 = 1.0 if xs is None else 1.0 / (torch.as_tensor(xs, dtype=m2.dtype) ** 2)
    if layer.kind == "linear":
        u2 = (m2 * inv2).sum(0)                                                   # (in,)
        red = (0,)
    else:
        kh, kw = layer.weight.shape[2:]
        cols = F.unfold(m2, (kh, kw), dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        w_ = inv2 if not torch.is_tensor(inv2) or inv2.dim() == 0 else inv2.reshape(b, 1, -1)
        u2 = (cols * w_).sum((0, 2))                                              # (C kh kw,)
        red = (0, 2, 3)
    lin = mo._linear_step(st, lambda x: op(x, g), lambda v: op(v, g * g))
    ug2 = ((lin.mean * lin.mean + lin.var) * inv2).sum(red)                      # (L,)
    L = g.shape[0]
    gt = g.reshape(L, -1).t()
    vt = None if g_var is None else g_var.reshape(L, -1).t()
    dev, tia = bitline_power(gt, u2, ug2, v_read=v_read, r_tia=r_tia, g_var=vt)
    return dev / b, tia / b


class PowerAccumulator:
    """Callback for the moment propagation collecting MemSE's expected power (Eqs. 16-21) per layer:
    the energy model's expectation on the paper's crossbar (see the module docstring).

    Parameters
    ----------
    sigma : programming-noise std per device [S]. r : TIA feedback resistance [Ohm].
    v_read : read voltage [V] of an input of 1 (MemSE: 1 V, inputs in volts).
    keep_graph : keep the autograd graph (the optimizer's gradient in G_max).
    g_offset : conductance [S] every device sits above MemSE's level (the ``g_min`` of a config
        whose window is ``[g_min, g_min + G_max]``, as the ``memse`` preset); 0 = levels from 0 S.
    """

    def __init__(self, sigma: float, r: float = 1.0, keep_graph: bool = False, v_read: float = 1.0,
                 g_offset: float = 0.0):
        if not r > 0:
            raise ValueError(f"r: {r!r} is not allowed; the TIA feedback resistance must be > 0 Ohm")
        if not g_offset >= 0:
            raise ValueError(f"g_offset: {g_offset!r} is not allowed; must be >= 0 S")
        self.sigma, self.r, self.v_read, self.keep = float(sigma), float(r), float(v_read), keep_graph
        self.g_offset = float(g_offset)
        self.terms: dict[int, list] = {}
        self.c: dict[int, torch.Tensor] = {}
        self.names: dict[int, str] = {}
        self.n: dict[int, int] = {}

    def __call__(self, ix, layer, st, wq, c):
        shape = (-1,) + (1,) * (wq.dim() - 1)
        cc = c.reshape(shape) if torch.is_tensor(c) and c.dim() else c
        g = torch.cat([cc * wq.clamp_min(0), cc * (-wq).clamp_min(0)])             # the G+ and G- bit lines
        if self.g_offset:
            g = g + self.g_offset
        var = torch.full_like(g, self.sigma ** 2)
        dev, tia = layer_read_power(st, layer, g, var, v_read=self.v_read, r_tia=self.r)
        if not self.keep:
            dev, tia = dev.detach(), tia.detach()
            c = c.detach() if torch.is_tensor(c) else c
        b = st.mean.shape[0]
        old = self.terms.get(ix)
        new = [dev * b, tia * b]
        self.terms[ix] = new if old is None else [a + n for a, n in zip(old, new)]
        self.n[ix] = self.n.get(ix, 0) + b
        self.c[ix] = c
        self.names[ix] = layer.name

    def layer_tensors(self):
        """[(P_device, P_tia)] per layer as tensors (batch-averaged, summed over bit lines) [W]."""
        return [tuple(t / self.n[ix] for t in self.terms[ix]) for ix in sorted(self.terms)]

    def total_tensor(self) -> torch.Tensor:
        return sum(d + t for d, t in self.layer_tensors())

    def result(self, gmax_layers=None, layers=None) -> dict:
        per = []
        for ix, (d, t) in zip(sorted(self.terms), self.layer_tensors()):
            c = self.c[ix]
            c = c.detach().cpu().numpy() if torch.is_tensor(c) and c.dim() else float(c)
            per.append({"layer": self.names[ix], "device_W": float(d), "tia_W": float(t), "total_W": float(d + t),
                        "c": c})
        return {"total_W": float(sum(p["total_W"] for p in per)), "device_W": float(sum(p["device_W"] for p in per)),
                "tia_W": float(sum(p["tia_W"] for p in per)), "r_ohm": self.r, "v_read_V": self.v_read,
                "units": "W in the paper's normalised units (G in S, inputs in V, r_tia = "
                         f"{self.r:g} Ohm, levels from {self.g_offset:g} S, one array per layer)",
                "per_layer": per}


def predict_power(model, x, *, sigma: float, gmax, levels: int = 128, cov: str = "lowrank", r: float = 1.0,
                  **kw) -> dict:
    """MemSE's expected power [W] of devices and TIAs, per layer and total, for inputs ``x``.

    Parameters
    ----------
    model : nn.Sequential (or parsed layers). x : (B, ...) inputs (V).
    sigma : device noise std (S). gmax : G_max (S) per network / layer / column.
    levels : N. cov : covariance mode used for the input moments. r : TIA resistance (Ohm).

    Returns
    -------
    dict with ``total_W``, ``device_W``, ``tia_W`` and ``per_layer``.
    """
    return mo.predict_mse(model, x, sigma=sigma, gmax=gmax, levels=levels, cov=cov, r=r, power=True, **kw).power
