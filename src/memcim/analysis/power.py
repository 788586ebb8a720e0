"""Expected power of the crossbar devices and TIAs (paper 001, Eqs. 16-21).

For a crossbar layer with quantized weights ``w~`` (independent of G_max, see
:mod:`memcim.analysis.moments`), scale ``c = G_max/max|w|`` (per layer or per column) and random
inputs ``X`` (mean ``x``, covariance ``Gamma``, independent of this layer's programming noise):

* devices (Eq. 16): ``E[G X^2] = q (gamma^2 + x^2)`` with ``q = c|w~|`` the programmed level
  (the noise has zero mean), summed over the G+ and G- devices;
* TIAs (Eqs. 17-19): ``r E[I+^2]`` with ``I+ = sum_i G+_i X_i``:
  ``E[I+^2] = c^2 ((w~+ . x)^2 + w~+^T Gamma w~+) + sigma^2 sum_i E[X_i^2]``, same for I-.

Per column, ``E[P] = c^2 H1 + c H2 + H3`` (Eq. 21) with

* ``H1 = r [(w~+ . x)^2 + w~+^T Gamma w~+ + (w~- . x)^2 + w~-^T Gamma w~-]``,
* ``H2 = sum_i |w~_i| E[X_i^2]``,
* ``H3 = 2 r sigma^2 sum_i E[X_i^2]``.

Units: G in S, X in V, ``r`` in Ω, power in W. The paper writes the TIA power as ``I^2/r``
(Eq. 17) and ``I^2/r^2`` (Eq. 19); the power dissipated in the feedback resistor is ``r I^2``,
which we use. With the paper's ``r = 1`` all three agree numerically.

A convolution performs one MVM per output position; its power is summed over positions
(power per inference when each MVM read lasts one time unit). Everything is averaged over the
input batch. ``Gamma`` is the input covariance in the representation of the moment propagation
(exact, low-rank, or diagonal).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from memcim.analysis import moments as mo

__all__ = ["PowerAccumulator", "predict_power", "layer_power_terms"]


def layer_power_terms(st: "mo.Moments", layer: "mo.CrossbarLayer", wq: torch.Tensor, sigma: float, r: float = 1.0):
    """Per-column coefficients (H1, H2, H3), each of shape (out,), summed over the batch.

    Parameters
    ----------
    st : Moments of the layer input.
    layer : the crossbar layer; ``wq`` its quantized weights.
    sigma : device noise std, S. r : TIA feedback resistance, Ω.
    """
    m2 = st.second_moment()
    wp, wn = wq.clamp_min(0), (-wq).clamp_min(0)
    if layer.kind == "linear":
        def fn(w):
            return lambda x: x @ w.t()

        def red(t):
            return t.sum(0)
        ones = torch.ones(1, wq.shape[1], dtype=wq.dtype)
    else:
        def fn(w):
            return lambda x: F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation)

        def red(t):
            return t.sum((0, 2, 3))
        ones = torch.ones((1,) + tuple(wq.shape[1:]), dtype=wq.dtype)
    h1 = 0.0
    for w in (wp, wn):
        mean = fn(w)(st.mean)
        var = mo._lin_var(st, fn(w), fn(w * w))
        h1 = h1 + red(mean * mean + var)
    h1 = r * h1
    h2 = red(fn(wq.abs())(m2))
    h3 = 2.0 * r * sigma ** 2 * red(fn(ones)(m2)).expand(wq.shape[0])
    return h1, h2, h3


class PowerAccumulator:
    """Callback for :func:`memcim.analysis.moments.propagate` collecting the power terms."""

    def __init__(self, sigma: float, r: float = 1.0, keep_graph: bool = False):
        if not r > 0:
            raise ValueError(f"r: {r!r} is not allowed; the TIA feedback resistance must be > 0 Ω")
        self.sigma, self.r, self.keep = sigma, r, keep_graph
        self.terms: dict[int, list] = {}
        self.c: dict[int, torch.Tensor] = {}
        self.names: dict[int, str] = {}
        self.n = {}

    def __call__(self, ix, layer, st, wq, c):
        h = layer_power_terms(st, layer, wq, self.sigma, self.r)
        if not self.keep:
            h = tuple(t.detach() for t in h)
            c = c.detach()
        old = self.terms.get(ix)
        self.terms[ix] = list(h) if old is None else [a + b for a, b in zip(old, h)]
        self.n[ix] = self.n.get(ix, 0) + st.mean.shape[0]
        self.c[ix] = c
        self.names[ix] = layer.name

    def layer_tensors(self):
        """[(P_device, P_tia, H1, H2, H3)] per layer as tensors (batch-averaged, summed over columns)."""
        out = []
        for ix in sorted(self.terms):
            h1, h2, h3 = (t / self.n[ix] for t in self.terms[ix])
            c = self.c[ix]
            out.append(((c * h2).sum(), (c * c * h1 + h3).sum(), h1, h2, h3))
        return out

    def total_tensor(self) -> torch.Tensor:
        return sum(d + t for d, t, *_ in self.layer_tensors())

    def result(self, gmax_layers=None, layers=None) -> dict:
        per = []
        for ix, (d, t, h1, h2, h3) in zip(sorted(self.terms), self.layer_tensors()):
            c = self.c[ix]
            per.append({"layer": self.names[ix], "device_W": float(d), "tia_W": float(t), "total_W": float(d + t),
                        "c": c.detach().cpu().numpy() if c.dim() else float(c),
                        "H1": float(h1.sum()), "H2": float(h2.sum()), "H3": float(h3.sum())})
        return {"total_W": float(sum(p["total_W"] for p in per)), "device_W": float(sum(p["device_W"] for p in per)),
                "tia_W": float(sum(p["tia_W"] for p in per)), "r_ohm": self.r, "per_layer": per}


def predict_power(model, x, *, sigma: float, gmax, levels: int = 128, cov: str = "lowrank", r: float = 1.0,
                  **kw) -> dict:
    """Expected power (W) of devices and TIAs, per layer and total, for inputs ``x``.

    Parameters
    ----------
    model : nn.Sequential (or parsed layers). x : (B, ...) inputs (V).
    sigma : device noise std (S). gmax : G_max (S) per network / layer / column.
    levels : N. cov : covariance mode used for the input moments. r : TIA resistance (Ω).

    Returns
    -------
    dict with ``total_W``, ``device_W``, ``tia_W`` and ``per_layer`` (each with H1, H2, H3 of
    Eq. 21 summed over columns, such that the layer power is ``c^2 H1 + c H2 + H3``).
    """
    return mo.predict_mse(model, x, sigma=sigma, gmax=gmax, levels=levels, cov=cov, r=r, power=True, **kw).power
