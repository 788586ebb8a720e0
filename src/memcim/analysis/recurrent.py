"""Closed-form moments through ``nn.LSTM`` / ``nn.GRU`` on crossbars: the recurrence, unrolled.

The analog recurrent layers of :mod:`memcim.nn.analog` (``AnalogLSTM``, ``AnalogGRU``) put, per layer
and direction, two matrices on crossbars: ``weight_ih`` (all time steps read in one call) and
``weight_hh`` (one read of ``h_{t-1}`` per step); the biases (``bias_ih`` after the ih read,
``bias_hh`` after the hh read), the gate non-linearities and the element-wise products are digital.
:func:`propagate_recurrent` follows exactly that mapping: every read is the caller's hardware step
(``make_step(CrossbarLayer)``, in :func:`memcim.analysis.predict.predict` a ``_HardwareStep``: the
plan the simulator programs, programming and read noise, DAC, ADC, drift), so the physics stays in one
place; this module only adds the recurrence.

State
-----
Per sample and per (layer, direction), every random quantity of the cell (``c``, ``h``, the reads
``gi``, ``gh``, the gates, the products) is held in one joint Gaussian description: its mean, its full
covariance ``C`` with every other live quantity (units *and* gates), and its cross-covariance ``F``
with a set of independent unit-variance latent variables ``zeta`` (``F`` is (N, D)). Operations:

* **Crossbar read** ``y = gain * (W~ x + dW x) + eta``: mean and variance from the hardware step (the
  step is given the full input covariance, so the ADC sees the right input spread); covariances with
  everything else from the linearisation (``gain``: the ADC's mean slope times the drift
  compensation factor, ``W~`` the plan's mean weight).
* **Activations** (sigmoid, tanh): :func:`memcim.analysis.moments.activation_moments` (mean and
  variance, ``act_method``), covariances scaled by the mean slope ``E[f'(X)]`` (Stein's lemma).
* **Element-wise products** ``a*b`` (``f*c``, ``i*g``, ``o*tanh(c)``, GRU's ``r*(W_hn h)`` and
  ``z*(h - n)``): Gaussian moments, ``E[ab] = E a E b + Cov(a,b)``,
  ``Var(ab) = mu_a^2 V_b + mu_b^2 V_a + V_a V_b + Cov^2 + 2 mu_a mu_b Cov``; covariances with every
  other quantity ``mu_b Cov(a,.) + mu_a Cov(b,.)`` (exact for Gaussians); the second-order part
  ``V_a V_b + Cov^2`` is independent noise.

Programming noise is shared by every time step
----------------------------------------------
One programmed chip serves all T steps, so the weight error ``dW`` of a gate matrix is the same at
every step, while read noise (and DAC/ADC rounding) is fresh per read. For gate unit ``j`` the
shared error of step ``t`` is ``dW_j . u_t`` (``u_t = x_t`` for ``weight_ih``, ``h_{t-1}`` for
``weight_hh``). The inputs of all steps of one sample span few directions: with ``q_1..q_r`` the top
``rank`` right singular vectors of that sample's input sequence (the input means for ih; the
noise-free trajectory with the plan's mean weights for hh), ``dW_j . u_t ~= sum_k sqrt(s2_j) zeta_jk
(q_k . E u_t)`` with ``zeta_jk`` i.i.d. unit latents (``s2_j`` the row's input-power-weighted mean
per-weight variance: exact when every weight of the row has the same variance). These ``G H rank``
latents per matrix are tracked through the whole recurrence by ``F``, so the errors a gate unit makes
at different steps add coherently, and the covariance between ``W_hh dh_{t-1}`` and the step's own
``dW_hh h_{t-1}`` (the error of the state is made of the same weight errors) is kept. The rest of the
shared error (orthogonal to ``q``, and the ``Var h`` part of ``E[h^2]``) keeps its exact variance but
is treated as fresh per step: that is the approximation, measured in docs/predict_recurrent.md.
``rank=0`` treats all programming noise as fresh per read.

Input factors (an upstream layer's shared noise) are carried as further latents; the input's
residual variance is independent per element and per step.

Output
------
``out``: mean and exact per-element variance, batch first (B, T, D*H) (or (T, B, D*H) for a
``batch_first=False`` layer given time-first moments, then without factors). Its factors
(B, K, T, D*H): the latent part projected on an orthonormal latent basis that contains each
direction's last-processed state exactly plus ``sketch`` random-range directions of the whole
sequence, and the residual (non-latent) covariance of each direction's first and last step as
eigen-factors; so ``out[:, -1]`` and ``out[:, 0]`` have exact covariances, other steps exact
variances and the shared-noise covariance up to the sketch. The states ``h_n`` (and ``c_n``) are
batch first, (B, num_layers*D, H), with exact covariances within each (layer, direction) block
(eigen-factors) and none between blocks. torch's own ``h_n`` is (num_layers*D, B, H).

Not supported (one-line ``ValueError``): ``proj_size > 0``, an initial state, ``PackedSequence``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from memcim.analysis import moments as mo

__all__ = ["propagate_recurrent", "predict_recurrent", "recurrent_layers"]

_BUDGET = 384 * 2 ** 20      # bytes of latent bookkeeping per batch chunk


# ------------------------------------------------------------------------------------ the matrices

def recurrent_layers(module: nn.Module, dtype: torch.dtype = torch.float64) -> list:
    """The crossbar matrices of an ``nn.LSTM``/``nn.GRU`` as :class:`~memcim.analysis.moments.CrossbarLayer`
    objects, in the order :class:`memcim.nn.analog.AnalogLSTM` creates them: per layer ``l`` and direction,
    ``weight_ih_l{l}[_reverse]`` (bias ``bias_ih``) then ``weight_hh_l{l}[_reverse]`` (bias ``bias_hh``).
    Each layer's ``name`` is the analog model's crossbar key."""
    out = []
    for l in range(module.num_layers):
        for d in range(2 if module.bidirectional else 1):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            for kind in ("ih", "hh"):
                w = getattr(module, f"weight_{kind}{sfx}").detach().to(dtype)
                b = getattr(module, f"bias_{kind}{sfx}") if module.bias else None
                b = torch.zeros(w.shape[0], dtype=dtype) if b is None else b.detach().to(dtype)
                out.append(mo.CrossbarLayer("linear", w.clone(), b.clone(), name=f"weight_{kind}{sfx}"))
    return out


@dataclass
class _View:
    """What the closed form needs of one hardware step besides calling it."""

    step: Callable
    W: torch.Tensor          # (out, in) mean effective weight
    s2: torch.Tensor         # (out, in) per-weight variance shared by the chip's reads

    def gain(self, like: torch.Tensor) -> torch.Tensor:
        """The factor on covariances through the last call: the ADC's mean slope times the drift
        compensation's factor (1 without ADC / compensation)."""
        g = getattr(self.step, "last_slope", 1.0)
        g = like.new_ones(like.shape) * (g.to(like.dtype) if isinstance(g, torch.Tensor) else float(g))
        comp = self.step.compensation() if hasattr(self.step, "compensation") else None
        if comp is not None:
            g = g * comp["k"].to(like.dtype)
        return g


def _view(step, layer: mo.CrossbarLayer) -> _View:
    dt = layer.weight.dtype
    W = getattr(step, "W", None)
    W = layer.weight if W is None else W.to(dt).reshape(layer.weight.shape)
    s2 = getattr(step, "s2_full", None)
    s2 = torch.zeros_like(W) if s2 is None else s2.to(dt).reshape(W.shape)
    return _View(step, W, s2)


# ------------------------------------------------------------------------------------ joint state

class _Joint:
    """Mean, full covariance ``C`` (B, D, D) and latent cross-covariance ``F`` (B, N, D) of the live
    quantities of one cell, in slots of H units (see the module docstring)."""

    def __init__(self, B: int, H: int, N: int, slots: int, dtype, act_method: str, order: int):
        self.H, self.N = H, N
        D = slots * H
        self.mean = torch.zeros(B, D, dtype=dtype)
        self.C = torch.zeros(B, D, D, dtype=dtype)
        self.F = torch.zeros(B, N, D, dtype=dtype)
        self.free = list(range(slots))
        self.blocks: dict = {}
        self.act_method, self.order = act_method, order

    # -- slots
    def idx(self, name: str) -> torch.Tensor:
        H = self.H
        return torch.cat([torch.arange(s * H, (s + 1) * H) for s in self.blocks[name]])

    def alloc(self, name: str, n: int) -> torch.Tensor:
        self.free.sort()
        self.blocks[name] = [self.free.pop(0) for _ in range(n)]
        return self.idx(name)

    def drop(self, *names: str) -> None:
        for n in names:
            self.free.extend(self.blocks.pop(n))

    def rename(self, old: str, new: str) -> None:
        self.blocks[new] = self.blocks.pop(old)

    def split(self, name: str, parts: list) -> None:
        slots = self.blocks.pop(name)
        k = len(slots) // len(parts)
        for i, p in enumerate(parts):
            self.blocks[p] = slots[i * k:(i + 1) * k]

    def var(self, name: str) -> torch.Tensor:
        ix = self.idx(name)
        return self.C[:, ix, ix].clamp_min(0.0)

    def cov_diag(self, a: str, b: str) -> torch.Tensor:
        return self.C[:, self.idx(a), self.idx(b)]

    def _cat(self, t: torch.Tensor, name: str, dim: int) -> torch.Tensor:
        """The block's slots of ``t`` along ``dim`` (a view for one slot)."""
        H = self.H
        parts = [t.narrow(dim, s * H, H) for s in self.blocks[name]]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim)

    def rows(self, name: str) -> torch.Tensor:
        return self._cat(self.C, name, 1)

    def fcols(self, name: str) -> torch.Tensor:
        return self._cat(self.F, name, 2)

    def mu(self, name: str) -> torch.Tensor:
        return self._cat(self.mean, name, 1)

    def _set(self, name: str, mean, cross, F, diag=None) -> None:
        H = self.H
        if diag is not None:
            for k, s in enumerate(self.blocks[name]):
                cross[:, k * H:(k + 1) * H, s * H:(s + 1) * H].diagonal(dim1=1, dim2=2).copy_(diag[:, k * H:(k + 1) * H])
        for k, s in enumerate(self.blocks[name]):
            sl, kl = slice(s * H, (s + 1) * H), slice(k * H, (k + 1) * H)
            self.mean[:, sl] = mean[:, kl]
            self.C[:, sl, :] = cross[:, kl, :]
            self.C[:, :, sl] = cross[:, kl, :].transpose(1, 2)
            self.F[:, :, sl] = F[:, :, kl]

    # -- operations
    def lin(self, out: str, terms: list, const=None) -> None:
        """``out = sum_k a_k * x_k (+ const)``, element-wise coefficients (B, n) or floats."""
        cross = mean = F = None
        for a, x in terms:
            a = a if isinstance(a, torch.Tensor) else torch.full_like(self.mu(x), float(a))
            c, m, f = a.unsqueeze(-1) * self.rows(x), a * self.mu(x), a.unsqueeze(1) * self.fcols(x)
            cross, mean, F = (c, m, f) if cross is None else (cross + c, mean + m, F + f)
        self_blk = sum((cross[:, :, self.idx(x)] * (a.unsqueeze(1) if isinstance(a, torch.Tensor) else a))
                       for a, x in terms)
        io = self.alloc(out, len(self.blocks[terms[0][1]]))
        cross[:, :, io] = self_blk
        self._set(out, mean if const is None else mean + const, cross, F)

    def act(self, x: str, kind: str, out: str | None = None) -> None:
        """``f(x)`` (sigmoid/tanh): in place, or into a new block ``out`` (x kept)."""
        ix = self.idx(x)
        m, v, s = mo.activation_moments(kind, self.mu(x), self.var(x), method=self.act_method,
                                        order=self.order)
        cross = s.unsqueeze(-1) * self.rows(x)
        blk = cross[:, :, ix] * s.unsqueeze(1)
        F = self.fcols(x) * s.unsqueeze(1)
        if out is None:
            cross[:, :, ix] = blk
            self._set(x, m, cross, F, diag=v)
        else:
            io = self.alloc(out, len(self.blocks[x]))
            cross[:, :, io] = blk
            self._set(out, m, cross, F, diag=v)

    def prod(self, out: str, a: str, b: str) -> None:
        """Element-wise product of two blocks (Gaussian moments)."""
        ma, mb = self.mu(a), self.mu(b)
        va, vb, cab = self.var(a), self.var(b), self.cov_diag(a, b)
        self.lin(out, [(mb, a), (ma, b)])
        s = self.blocks[out][0] * self.H
        sl = slice(s, s + self.H)
        self.mean[:, sl] = ma * mb + cab
        self.C[:, sl, sl].diagonal(dim1=1, dim2=2).copy_(
            (ma * ma * vb + mb * mb * va + va * vb + cab * cab + 2 * ma * mb * cab).clamp_min(0.0))

    def read(self, out: str, x: str, view: _View, own: tuple | None) -> None:
        """``out = gain (W~ x + dW x) + eta`` through the hardware step; ``own = (offset, coef (B, m, r))``:
        the shared-noise latents of this matrix, ``dW_j . x ~= sum_k coef_jk zeta_(offset + j r + k)``."""
        ix = self.idx(x)
        B = self.mean.shape[0]
        mu, cxx = self.mu(x), self.rows(x)[:, :, ix]
        st = mo.Moments(mu, torch.diagonal(cxx, dim1=1, dim2=2).clamp_min(0.0).clone(), "exact",
                        0.5 * (cxx + cxx.transpose(1, 2)))
        o = view.step(st)
        g = view.gain(o.mean)
        W = view.W
        m = W.shape[0]
        cross = torch.einsum("jh,bhd->bjd", W, self.rows(x))
        F = self.fcols(x) @ W.t()                                     # (B, N, m)
        wx = None
        if own is not None:
            off, coef = own
            r = coef.shape[-1]
            Fo = self.F[:, off:off + m * r, :].reshape(B, m, r, -1)
            cross = cross + torch.einsum("bjk,bjkd->bjd", coef, Fo)
            X = torch.einsum("bjki,bjk->bij", Fo[..., ix], coef)          # (B, n, m) Cov(x, dW x)
            wx = torch.einsum("jh,bhk->bjk", W, X)                       # (B, m, m)
            F[:, off:off + m * r, :].view(B, m, r, m).diagonal(dim1=1, dim2=3).add_(coef.transpose(1, 2))
        blk = cross[:, :, ix] @ W.t()
        if wx is not None:
            blk = blk + wx
        io = self.alloc(out, m // self.H)
        cross[:, :, io] = blk
        cross = cross * g.unsqueeze(-1)
        cross[:, :, io] = cross[:, :, io] * g.unsqueeze(1)
        diag = o.var if wx is None else o.var + 2 * g * g * torch.diagonal(wx, dim1=1, dim2=2)
        self._set(out, o.mean, cross, F * g.unsqueeze(1), diag=diag.clamp_min(0.0))

    def external(self, out: str, mean, var, fin, k_in: int, own: tuple | None, into: str | None = None) -> None:
        """A read computed beforehand (``gi_t``): its latent part ``fin`` (B, K_in, m) on the incoming
        latents and its own shared-noise latents; the rest of its variance is independent. With
        ``into``, it is added to that existing block (``gh + gi``), renamed ``out``."""
        B, m = mean.shape
        D = self.mean.shape[1]
        cross = torch.zeros(B, m, D, dtype=mean.dtype)        # Cov(gi, every live quantity): latents only
        F = torch.zeros(B, self.N, m, dtype=mean.dtype)
        blk = torch.zeros(B, m, m, dtype=mean.dtype)          # Cov(gi, gi) off the diagonal
        if fin is not None and k_in:
            cross = cross + torch.einsum("bkm,bkd->bmd", fin, self.F[:, :k_in, :])
            F[:, :k_in] = fin
            blk = blk + fin.transpose(1, 2) @ fin
        if own is not None:
            off, coef = own
            r = coef.shape[-1]
            cross = cross + torch.einsum("bjk,bjkd->bjd", coef, self.F[:, off:off + m * r, :].reshape(B, m, r, -1))
            F[:, off:off + m * r, :].view(B, m, r, m).diagonal(dim1=1, dim2=3).add_(coef.transpose(1, 2))
        if into is None:
            io = self.alloc(out, m // self.H)
            cross[:, :, io] = blk
            self._set(out, mean, cross, F, diag=var.clamp_min(0.0))
            return
        ia = self.idx(into)
        fa = cross[:, :, ia]                                   # Cov(gi, gh)
        rows = self.rows(into)
        new = rows + cross
        new[:, :, ia] = rows[:, :, ia] + fa + fa.transpose(1, 2) + blk
        diag = self.var(into) + 2 * torch.diagonal(fa, dim1=1, dim2=2) + var.clamp_min(0.0)
        self._set(into, self.mu(into) + mean, new, self.fcols(into) + F, diag=diag.clamp_min(0.0))
        if out != into:
            self.rename(into, out)


# ------------------------------------------------------------------------------------ one direction

def _cell_lstm(J: _Joint) -> None:
    J.split("a", ["ai", "af", "ag", "ao"])
    for g, k in (("ai", "sigmoid"), ("af", "sigmoid"), ("ag", "tanh"), ("ao", "sigmoid")):
        J.act(g, k)
    J.prod("fc", "af", "c")
    J.prod("ig", "ai", "ag")
    J.lin("c2", [(1.0, "fc"), (1.0, "ig")])
    J.drop("fc", "ig", "ai", "af", "ag", "c", "h")
    J.act("c2", "tanh", out="tc")
    J.prod("h2", "ao", "tc")
    J.drop("ao", "tc")
    J.rename("c2", "c")
    J.rename("h2", "h")


def _cell_gru(J: _Joint) -> None:
    J.act("ar", "sigmoid")
    J.act("az", "sigmoid")
    J.prod("p", "ar", "ghn")
    J.lin("an", [(1.0, "gin"), (1.0, "p")])
    J.drop("ar", "ghn", "gin", "p")
    J.act("an", "tanh")
    J.lin("q", [(1.0, "h"), (-1.0, "an")])
    J.prod("zq", "az", "q")
    J.lin("h2", [(1.0, "an"), (1.0, "zq")])
    J.drop("q", "zq", "az", "an", "h")
    J.rename("h2", "h")


def _top_directions(seq: torch.Tensor, r: int) -> torch.Tensor:
    """(B, n, r) orthonormal top right singular vectors of each sample's (T, n) sequence."""
    B, T, n = seq.shape
    r = min(r, n)
    g = seq.transpose(1, 2) @ seq                                       # (B, n, n)
    _, vec = torch.linalg.eigh(g)
    return vec[:, :, -r:] if r else vec[:, :, :0]


def _row_mean_s2(s2: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
    """(out,) input-power-weighted mean of each row's per-weight variance."""
    w = power.reshape(-1, power.shape[-1]).mean(0)
    tot = float(w.sum())
    return (s2 @ w) / tot if tot > 0 else s2.mean(1)


def _coefs(mu: torch.Tensor, m2: torch.Tensor, q: torch.Tensor, s2: torch.Tensor, sbar: torch.Tensor) -> torch.Tensor:
    """(B, m, r) latent coefficients ``sqrt(s2_j) (q_k . mu)``, capped so that their variance never
    exceeds the exact programming variance ``sum_i s2_ji E[u_i^2]`` of the read."""
    U = torch.einsum("bn,bnr->br", mu, q)                               # (B, r)
    coef = sbar.sqrt().reshape(1, -1, 1) * U.unsqueeze(1)                # (B, m, r)
    lat = (coef * coef).sum(-1)
    pv = m2 @ s2.t()
    scale = torch.where(lat > pv, torch.sqrt(pv / torch.where(lat > 0, lat, torch.ones_like(lat))),
                        torch.ones_like(lat))
    return coef * scale.unsqueeze(-1)


def _reference_h(x: torch.Tensor, Wih, bih, Whh, bhh, lstm: bool, reverse: bool) -> torch.Tensor:
    """Noise-free trajectory (B, T, H) of ``h_{t-1}`` (the hh read's inputs) with the mean weights."""
    B, T, _ = x.shape
    H = Whh.shape[1]
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    gi = x @ Wih.t() + bih
    prev = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        prev[t] = h
        gh = h @ Whh.t() + bhh
        if lstm:
            i, f, g, o = (gi[:, t] + gh).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            ri, zi, ni = gi[:, t].chunk(3, -1)
            rh, zh, nh = gh.chunk(3, -1)
            r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
            n = torch.tanh(ni + r * nh)
            h = (1 - z) * n + z * h
    return torch.stack(prev, 1)


def _direction(lstm: bool, H: int, xs: dict, vih: _View, vhh: _View, bias_hh, rank: int, reverse: bool,
               act_method: str, order: int):
    """One (layer, direction) over a batch chunk. ``xs``: the ih read of every step (mean, var, fin,
    gain (B, T, m)), the input means and second moments, k_in. Returns per-step h means/vars, the latent
    history (B, N, T, H), and the final joint state."""
    mean_gi, var_gi, fin, g_ih = xs["mean"], xs["var"], xs["fin"], xs["gain"]
    B, T, m = mean_gi.shape
    k_in = xs["k_in"]
    dt = mean_gi.dtype
    r_ih = min(rank, xs["x_mean"].shape[-1], T)
    r_hh = min(rank, H, T)
    off_ih, off_hh = k_in, k_in + m * r_ih
    N = off_hh + m * r_hh
    # --- the shared-noise directions of this sample's reads
    q_ih = _top_directions(xs["x_mean"], r_ih)
    sb_ih = _row_mean_s2(vih.s2, xs["x_m2"])
    href = _reference_h(xs["x_mean"], vih.W, xs["bias_ih"], vhh.W, bias_hh, lstm, reverse)
    q_hh = _top_directions(href, r_hh)
    sb_hh = _row_mean_s2(vhh.s2, href * href)
    J = _Joint(B, H, N, 9, dt, act_method, order)
    J.alloc("h", 1)
    if lstm:
        J.alloc("c", 1)
    hm = torch.zeros(B, T, H, dtype=dt)
    hv = torch.zeros(B, T, H, dtype=dt)
    hist = torch.zeros(B, N, T, H, dtype=dt)
    first = None
    order_t = list(range(T - 1, -1, -1)) if reverse else list(range(T))
    for t in order_t:
        ih = J.idx("h")
        mu_h = J.mean[:, ih]
        own_hh = None
        if r_hh:
            own_hh = (off_hh, _coefs(mu_h, mu_h * mu_h + J.var("h"), q_hh, vhh.s2, sb_hh))
        J.read("gh", "h", vhh, own_hh)
        own_ih = None
        if r_ih:
            c = _coefs(xs["x_mean"][:, t], xs["x_m2"][:, t], q_ih, vih.s2, sb_ih)
            own_ih = (off_ih, c * g_ih[:, t].unsqueeze(-1))
        fin_t = None if fin is None else fin[:, t]
        if lstm:                                   # a = gh + gi, all four gates
            J.external("a", mean_gi[:, t], var_gi[:, t], fin_t, k_in, own_ih, into="gh")
        else:                                      # r and z: gh + gi; n keeps W_in x and W_hn h apart
            J.split("gh", ["ghr", "ghz", "ghn"])
            for g, (nm, into) in enumerate((("ar", "ghr"), ("az", "ghz"), ("gin", None))):
                sl = slice(g * H, (g + 1) * H)
                own = None if own_ih is None else (own_ih[0] + g * H * own_ih[1].shape[-1], own_ih[1][:, sl])
                J.external(nm, mean_gi[:, t, sl], var_gi[:, t, sl], None if fin_t is None else fin_t[:, :, sl],
                           k_in, own, into=into)
        (_cell_lstm if lstm else _cell_gru)(J)
        ih = J.idx("h")
        hm[:, t] = J.mean[:, ih]
        hv[:, t] = J.var("h")
        hist[:, :, t] = J.F[:, :, ih]
        if first is None:
            first = J.C[:, ih][:, :, ih].clone()
    return hm, hv, hist, J, first


# ------------------------------------------------------------------------------------ public

def _err(path: str, module: nn.Module, msg: str) -> ValueError:
    return ValueError(f"model: layer {path or type(module).__name__} ({type(module).__name__}) {msg}")


def _eig_factors(cov: torch.Tensor) -> torch.Tensor:
    """(B, n, n) PSD -> (B, n, n) factors ``L`` (rows) with ``L^T L = cov`` (negative eigenvalues dropped)."""
    lam, vec = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
    return (vec * lam.clamp_min(0.0).sqrt().unsqueeze(1)).transpose(1, 2)


def propagate_recurrent(module: nn.Module, st_in: mo.Moments, make_step: Callable, *, path: str = "",
                        rank: int = 2, sketch: int = 16, act_method: str = "gh", taylor_order: int = 2,
                        seed: int = 0):
    """Propagate moments through an ``nn.LSTM`` or ``nn.GRU`` whose matrices run on crossbars.

    Parameters
    ----------
    module : ``nn.LSTM`` / ``nn.GRU`` (or their analog twins): multi-layer, bidirectional and
        ``batch_first`` are honoured; ``proj_size`` is not supported.
    st_in : moments of the input sequence in the module's own layout: (B, T, input_size) when
        ``batch_first``; time first (T, B, input_size) otherwise, which carries no factors (the moments'
        leading dimension is not the batch then).
    make_step : ``make_step(CrossbarLayer) -> step``, the hardware step (``Moments -> Moments``) of one gate
        matrix; called once per matrix with the layers of :func:`recurrent_layers` (their ``name`` is
        the analog model's crossbar key, e.g. ``weight_hh_l0_reverse``).
    path : the module's path in the model, for error messages.
    rank : shared programming-noise directions tracked per gate unit and matrix (0: all programming
        noise treated as fresh per read).
    sketch : extra latent directions of the whole output sequence kept in the output's factors.
    act_method, taylor_order : moments of sigmoid/tanh (:func:`~memcim.analysis.moments.activation_moments`).
    seed : seed of the sketch's random directions.

    Returns
    -------
    ``(out, (h_n, c_n))`` for an LSTM, ``(out, h_n)`` for a GRU, as torch's module returns them, each a
    :class:`~memcim.analysis.moments.Moments` ("lowrank" mode); the states batch first (B, num_layers*D, H).

    Raises
    ------
    ValueError naming the module path for an input that does not fit (shape, ``input_size``,
    ``batch_first``) or an unsupported option.
    """
    if not isinstance(module, (nn.LSTM, nn.GRU)):
        raise TypeError(f"module: expected nn.LSTM or nn.GRU, got {type(module).__name__}")
    lstm = isinstance(module, nn.LSTM)
    if getattr(module, "proj_size", 0):
        raise _err(path, module, f"has proj_size={module.proj_size}; the closed form supports proj_size=0 "
                                 "(nearest supported alternative: an LSTM followed by a Linear)")
    if not (isinstance(rank, int) and rank >= 0):
        raise ValueError(f"rank: {rank!r} is not allowed; must be an integer >= 0")
    if not (isinstance(sketch, int) and sketch >= 0):
        raise ValueError(f"sketch: {sketch!r} is not allowed; must be an integer >= 0")
    mean = st_in.mean
    I = module.input_size
    bf = module.batch_first
    if mean.dim() != 3 or mean.shape[-1] != I:
        raise _err(path, module, f"got an input of shape {tuple(mean.shape)}; it expects "
                                 f"{'(N, T, ' if bf else '(T, N, '}{I}) (input_size={I}, batch_first={bf}): "
                                 "check the input's shape against module.input_size")
    fac = st_in.factors
    var = st_in.var if st_in.var is not None else torch.zeros_like(mean)
    if not bf:
        if fac is not None or st_in.cov is not None:
            raise _err(path, module, f"has batch_first=False (it reads dim 0 as time) but was given batch-first "
                                     f"moments of shape {tuple(mean.shape)} whose dim 0 is the batch; build it with "
                                     "batch_first=True (same weights), or transpose the input to "
                                     f"(T, N, {I})")
        mean, var = mean.transpose(0, 1), var.transpose(0, 1)
    if st_in.mode == "exact" and st_in.cov is not None and fac is None:     # full covariance -> factors
        fac = _eig_factors(st_in.cov).reshape(mean.shape[0], -1, *mean.shape[1:])
    dt = mean.dtype
    B, T, _ = mean.shape
    D = 2 if module.bidirectional else 1
    H = module.hidden_size
    G = 4 if lstm else 3
    layers = recurrent_layers(module, dt)
    views = []
    for lay in layers:
        views.append(_view(make_step(lay), lay))
    # batch chunks: bounded latent bookkeeping
    k0 = 0 if fac is None else fac.shape[1]
    n_est = max(k0, 2 * D * H + sketch) + G * H * 2 * min(rank, T, max(I, D * H))
    per = 8 * n_est * H * (9 + 2 * T * D) + 8 * (9 * H) ** 2
    bc = max(1, min(B, _BUDGET // max(per, 1)))
    outs = []
    for s0 in range(0, B, bc):
        sl = slice(s0, s0 + bc)
        outs.append(_run(module, lstm, layers, views, mean[sl], var[sl], None if fac is None else fac[sl],
                         rank, sketch, act_method, taylor_order, seed, path))
    def cat(i, attr):
        vals = [getattr(o[i], attr) for o in outs]
        if vals[0] is None:
            return None
        if attr == "factors":
            k = max(v.shape[1] for v in vals)
            vals = [torch.cat([v, v.new_zeros(v.shape[0], k - v.shape[1], *v.shape[2:])], 1) for v in vals]
        return torch.cat(vals)

    res = []
    for i in range(3 if lstm else 2):
        res.append(mo.Moments(cat(i, "mean"), cat(i, "var"), "lowrank", None, cat(i, "factors")))
    out = res[0]
    if not bf:
        out = mo.Moments(out.mean.transpose(0, 1), out.var.transpose(0, 1), "lowrank", None, None)
    return (out, (res[1], res[2])) if lstm else (out, res[1])


def _run(module, lstm, layers, views, mean, var, fac, rank, sketch, act_method, order, seed, path):
    """The recurrence over one batch chunk: (out, h_n[, c_n]) Moments."""
    B, T, _ = mean.shape
    D = 2 if module.bidirectional else 1
    H = module.hidden_size
    dt = mean.dtype
    hn, cn = [], []
    x_mean, x_var, x_fac = mean, var, fac
    for l in range(module.num_layers):
        k_in = 0 if x_fac is None else x_fac.shape[1]
        I = x_mean.shape[-1]
        rows = mo.Moments(x_mean.reshape(B * T, I), x_var.reshape(B * T, I).clamp_min(0.0),
                          "lowrank" if k_in else "diagonal", None,
                          None if not k_in else x_fac.permute(0, 2, 1, 3).reshape(B * T, k_in, I))
        res = []
        for d in range(D):
            i_ih = 2 * (l * D + d)
            vih, vhh = views[i_ih], views[i_ih + 1]
            try:
                o = vih.step(rows)
            except RuntimeError as e:
                raise _err(path, module, f"cannot read its input of {I} features ({e}); check the input's shape "
                                         "against module.input_size") from None
            g = vih.gain(o.mean)
            xs = {"mean": o.mean.reshape(B, T, -1), "var": o.var.reshape(B, T, -1), "k_in": k_in,
                  "fin": None if not k_in or o.factors is None else
                  o.factors.reshape(B, T, k_in, -1), "gain": g.reshape(B, T, -1),
                  "x_mean": x_mean, "x_m2": x_mean * x_mean + x_var, "bias_ih": layers[i_ih].bias}
            res.append(_direction(lstm, H, xs, vih, vhh, layers[i_ih + 1].bias, rank, d == 1, act_method, order))
        # --- the layer's output: means, variances, factors
        out_mean = torch.cat([r[0] for r in res], -1)
        out_var = torch.cat([r[1] for r in res], -1)
        n_own = [r[2].shape[1] - k_in for r in res]
        N = k_in + sum(n_own)
        hist = torch.zeros(B, N, T, D * H, dtype=dt)
        finals = []
        off = k_in
        for d, r in enumerate(res):
            h_ = r[2]
            hist[:, :k_in, :, d * H:(d + 1) * H] = h_[:, :k_in]
            hist[:, off:off + n_own[d], :, d * H:(d + 1) * H] = h_[:, k_in:]
            tl = 0 if d == 1 else T - 1
            finals.append(hist[:, :, tl])                                # (B, N, D*H)
            off += n_own[d]
        flat = hist.reshape(B, N, T * D * H)
        cols = [f for f in finals]
        if sketch:
            gen = torch.Generator().manual_seed(int(seed) + l)
            om = torch.randn(T * D * H, sketch, generator=gen, dtype=dt)
            cols.append(flat @ om)
        Y = torch.cat(cols, -1)
        V, _ = torch.linalg.qr(Y)                                         # (B, N, k)
        proj = (V.transpose(1, 2) @ flat).reshape(B, -1, T, D * H)
        resid = []
        for d, r in enumerate(res):
            J, first = r[3], r[4]
            ih = J.idx("h")
            tl, tf = (0, T - 1) if d == 1 else (T - 1, 0)
            for t_, cov in ((tl, J.C[:, ih][:, :, ih]), (tf, first)):
                F_ = hist[:, :, t_, d * H:(d + 1) * H]
                rc = cov - F_.transpose(1, 2) @ F_
                L = _eig_factors(rc)                                      # (B, H, H)
                z = torch.zeros(B, H, T, D * H, dtype=dt)
                z[:, :, t_, d * H:(d + 1) * H] = L
                resid.append(z)
                if T == 1:
                    break
            hn.append((J.mean[:, ih], J.var("h"), _eig_factors(J.C[:, ih][:, :, ih])))
            if lstm:
                ic = J.idx("c")
                cn.append((J.mean[:, ic], J.var("c"), _eig_factors(J.C[:, ic][:, :, ic])))
        x_mean, x_var = out_mean, out_var
        x_fac = torch.cat([proj] + resid, 1)
    out = mo.Moments(x_mean, x_var, "lowrank", None, x_fac)

    def states(lst):
        n = len(lst)
        m = torch.stack([s[0] for s in lst], 1)
        v = torch.stack([s[1] for s in lst], 1)
        f = torch.zeros(B, n * H, n, H, dtype=dt)
        for i, s in enumerate(lst):
            f[:, i * H:(i + 1) * H, i] = s[2]
        return mo.Moments(m, v, "lowrank", None, f)

    return (out, states(hn), states(cn)) if lstm else (out, states(hn))


# ------------------------------------------------------------------------------------ the wrapper

def _find(model: nn.Module):
    """(path, recurrent module, path, Linear head or None) of a recurrent model."""
    if isinstance(model, (nn.LSTM, nn.GRU)):
        return "", model, None, None
    rnns = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.LSTM, nn.GRU))]
    inside = {id(s) for _, r in rnns for s in r.modules()}
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in inside]
    others = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                                     nn.MultiheadAttention)) and id(m) not in inside]
    if len(rnns) != 1 or len(heads) > 1 or others:
        raise ValueError(f"model: {type(model).__name__} is not one LSTM/GRU followed by at most one Linear head "
                         f"(found {len(rnns)} recurrent, {len(heads)} Linear, {len(others)} other crossbar layers); "
                         "use memcim.analysis.predict.predict, which walks any module graph")
    (rp, rnn), (hp, head) = rnns[0], (heads[0] if heads else (None, None))
    return rp, rnn, hp, head


def predict_recurrent(model: nn.Module, x, hw=None, *, calib_data=None, rank: int = 2, sketch: int = 16,
                      act_method: str = "gh", taylor_order: int = 2, t: float | None = None,
                      dtype: torch.dtype = torch.float64) -> mo.Prediction:
    """Closed-form output mean, variance and MSE of a recurrent model on crossbars.

    ``model`` is an ``nn.LSTM``/``nn.GRU`` (the prediction is then its output sequence, flattened per
    sample) or a model made of one of them, digital input handling before it (reshapes, permutes) and an
    optional ``nn.Linear`` head on the last time step, such as ``memcim.nn.models.LSTMRow``
    (``mnist-lstm-row``); digital or converted by :func:`memcim.nn.analog.convert_to_analog`. The model is
    run once digitally to capture the sequence the recurrent layer reads and to check that the output is
    the head applied to the last step (else a one-line ``ValueError`` points to
    :func:`memcim.analysis.predict.predict`).

    Parameters
    ----------
    model : see above. x : (B, ...) batch-first inputs of the model.
    hw : :class:`~memcim.config.HardwareConfig` or preset name (default: a converted model's own).
    calib_data : model inputs that calibrate every matrix's ADC full scale, as ``convert_to_analog(...,
        calib_data=)`` does (a converted model's recorded calibration is used otherwise).
    rank, sketch, act_method, taylor_order : see :func:`propagate_recurrent`.
    t : read time [s] after programming (default ``device.drift_t0``).
    dtype : computation dtype.

    Returns
    -------
    :class:`memcim.analysis.moments.Prediction` (``layers``: one entry per crossbar matrix).
    """
    import copy

    from memcim.analysis.predict import _HardwareStep, layer_hardware
    from memcim.config import resolve_config
    from memcim.hardware.device import check_time
    from memcim.nn.analog import AnalogModule, analog_layers, convert_to_analog, convert_to_digital

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    xt = mo._check_x(x).to(dtype)
    converted = bool(analog_layers(model)) or any(isinstance(m, AnalogModule) for m in model.modules())
    digital = copy.deepcopy(convert_to_digital(model) if converted else model).to(dtype).eval()
    rp, rnn, hp, head = _find(digital)
    hwc = resolve_config(hw) if hw is not None else None
    analog = model if converted else None
    if calib_data is not None:
        cd = torch.as_tensor(np.asarray(calib_data) if not isinstance(calib_data, torch.Tensor) else calib_data)
        base = digital if hwc is not None else convert_to_digital(model)
        if hwc is None:
            raise ValueError("hw: a HardwareConfig (or a preset name) is required with calib_data")
        base = nn.Sequential(base) if isinstance(base, (nn.LSTM, nn.GRU)) else base   # convert takes containers
        analog = convert_to_analog(base, hwc, calib_data=cd.to(next(base.parameters()).dtype))
    if analog is None and hwc is None:
        raise ValueError("hw: a HardwareConfig (or a preset name) is required for a digital model")
    units = {}
    if analog is not None:
        for n, m in analog.named_modules():
            if isinstance(m, AnalogModule) and isinstance(m, (nn.LSTM, nn.GRU)):
                units.update(dict(m.crossbars.items()))
            elif isinstance(m, nn.Linear) and hasattr(m, "calibration_inputs"):
                units["__head__"] = m
    # --- the sequence the recurrent layer reads, and the head on the last step
    seen = {}
    hooks = [rnn.register_forward_hook(lambda m, a, o: seen.update(rin=a[0], rout=o[0]))]
    if head is not None:
        hooks.append(head.register_forward_hook(lambda m, a, o: seen.update(hin=a[0], hout=o)))
    try:
        with torch.no_grad():
            ref = digital(xt)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"x: shape {tuple(xt.shape)} does not fit the model ({str(e).splitlines()[0][:160]})") from None
    finally:
        for h in hooks:
            h.remove()
    ref = ref[0] if isinstance(ref, tuple) else ref
    seq = seen["rin"]
    b = xt.shape[0]
    name = rp or type(rnn).__name__
    if not rnn.batch_first and seq.dim() == 3 and seq.shape[0] == b and seq.shape[1] != b:
        raise ValueError(f"model: layer {name} ({type(rnn).__name__}, batch_first=False) reads dim 0 as time but is "
                         f"given a batch-first tensor of shape {tuple(seq.shape)} (N={b}); build it with "
                         f"batch_first=True or transpose its input to (T, N, {rnn.input_size})")
    last = (lambda o: o[:, -1]) if rnn.batch_first else (lambda o: o[-1])
    if head is not None:
        ok = seen.get("hin") is not None and seen["hin"].shape == last(seen["rout"]).shape and torch.allclose(
            seen["hin"], last(seen["rout"])) and ref.shape == seen["hout"].shape and torch.allclose(ref, seen["hout"])
        if not ok:
            raise ValueError(f"model: {type(model).__name__} does not apply its Linear head {hp} to the last time step "
                             f"of {name} and return it; use memcim.analysis.predict.predict, which walks any module graph")
    elif not isinstance(model, (nn.LSTM, nn.GRU)):
        ref = seen["rout"]
    # --- the hardware steps
    order = []

    def make(layer, key):
        unit = units.get(key)
        h_ = hwc if hwc is not None else unit.hardware
        cal = None if unit is None else unit.calibration_inputs
        wc = layer.weight.reshape(layer.weight.shape[0], -1).t().to(torch.float64)
        lh = layer_hardware(wc, h_, calib_inputs=cal, t=check_time(t, h_.device))
        order.append((f"{rp}.{key}" if rp else key, lh))
        return _HardwareStep(lh, layer, 0, 1 << 40, None, len(order) - 1, False, reference_inputs=cal)

    st = mo.Moments(seq.to(dtype), torch.zeros_like(seq, dtype=dtype), "diagonal")
    out, _ = propagate_recurrent(rnn, st, lambda layer: make(layer, layer.name), path=name, rank=rank,
                                 sketch=sketch, act_method=act_method, taylor_order=taylor_order)
    if head is None:
        mean, var = out.mean, out.var
        if not rnn.batch_first:
            mean, var = mean.transpose(0, 1), var.transpose(0, 1)
        ref = ref.transpose(0, 1) if not rnn.batch_first else ref
    else:
        m_ = last(out.mean)
        v_ = last(out.var)
        if out.factors is not None:
            f = out.factors[:, :, -1]
            cov = f.transpose(1, 2) @ f
            res = (v_ - torch.diagonal(cov, dim1=1, dim2=2)).clamp_min(0.0)
            cov = cov + torch.diag_embed(res)
        else:
            cov = torch.diag_embed(v_)
        b_ = head.bias if head.bias is not None else torch.zeros(head.out_features)
        lay = mo.CrossbarLayer("linear", head.weight.detach().to(dtype), b_.detach().to(dtype), name=hp)
        step = make(lay, "__head__")
        o = step(mo.Moments(m_, v_, "exact", cov))
        mean, var = o.mean, o.var
    mean, var, ref = mean.reshape(b, -1), var.reshape(b, -1), ref.reshape(b, -1).to(dtype)
    per = var + (mean - ref) ** 2
    cfg = {"hardware": [lh.hw.name for _, lh in order], "rank": rank, "sketch": sketch, "act_method": act_method,
           "taylor_order": taylor_order, "batch": int(b), "t": order[0][1].t if order else None, "recurrent": name}
    return mo.Prediction(mean, var, ref, per, float(per.mean()), float(per.max(1).values.mean()), power=None,
                         config=cfg, layers=[dict(lh.summary(), layer=n) for n, lh in order])
