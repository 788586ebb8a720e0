"""Closed-form output statistics of a matrix or a network on the hardware a config describes.

``predict(model_or_W, x, hw)`` returns, without sampling, the mean and variance of every output
over programmed chips and reads, and the output MSE against the noise-free, full-precision
result. It joins MemSE's moment propagation (paper 001, :mod:`memcim.analysis.moments`: mean and
covariance through ``Linear``/``Conv2d``/pooling/BatchNorm/activations) with paper 003's per-column
error terms (:mod:`memcim.analysis.column_error`), and it reads the same plan the simulator
programs: every crossbar layer is mapped with :func:`memcim.mapping.crossbar.map_matrix`, and the
closed form takes the level-rounded targets, the scale, the tiling and the ADC full scale from that
plan. The physics comes from the one-place functions: programming-noise variance
(:func:`memcim.hardware.device.programming_sigma`), thermal and shot variance
(:func:`memcim.hardware.device.read_noise_variance`), the DAC and ADC transfers
(:mod:`memcim.hardware.converters`).

Model, per crossbar layer (weights W (in, out), inputs x with mean and covariance)
-------------------------------------------------------------------------------------
Each device's conductance is a random variable: target ``g`` (level-rounded, with g_min), plus
Gaussian programming noise of standard deviation ``s = sigma_p(g, level)`` (absolute, relative and
per-level table) clipped at 0 S as the simulator clips it (``z = g/s``):

    E[G_p] = g Phi(z) + s phi(z),   E[G_p^2] = (g^2 + s^2) Phi(z) + g s phi(z)

then stuck at g_min / g_max with probabilities ``p0`` / ``p1``:

    E[G] = (1 - p0 - p1) E[G_p] + p0 g_min + p1 g_max
    E[G^2] = (1 - p0 - p1) E[G_p^2] + p0 g_min^2 + p1 g_max^2

Random telegraph noise multiplies every conductance by ``1 - A b`` with ``b ~ Bernoulli(p)``
(mean ``1 - pA``, mean square ``1 - 2pA + pA^2``), one snapshot per read call, i.e. shared by every
row of one call like the programming noise. The effective weight ``(G+ - G-)/c`` then has the mean
``W~ = realized + (E[G_d] - g_d)/c`` (``realized`` is the plan's matrix, with IR drop when the array
has wires) and the per-weight variance ``s^2 = (Var G+ + Var G-)/c^2`` (offset mapping: the
reference device of the row), shared by every read of the chip (a convolution's positions are
correlated through it, as MemSE tracks).

Each read (a row of x, or a patch of a convolution) is scaled by ``xs`` (``dac.x_range``, or the
read's own largest magnitude), DAC-rounded, and every row tile ``t`` (a separate array with its own
ADCs) computes the partial sum ``Y_t = x_t . W_eff_t`` plus read noise, in output units:

* thermal + shot: ``(xs/c)^2 read_noise_variance(sum_i E[G_s,i], sum_i E|u_i| E[G_s,i], v_read)/v_read^2``
  with ``G_s = G+ + G-`` (offset: G plus the reference column);
* DAC rounding (random inputs): ``(xs/K_dac)^2/12 sum_i P(x_i != 0) E[W_eff,i^2]``; a deterministic
  input (the network's input) is rounded exactly instead.

The ADC of array ``t`` quantizes ``Y_t`` with the plan's full scale, in output units
``F = xs FS / (r_tia v_read c)``, step ``F/K``. With ``Y_t ~ N(m, v)`` the quantizer's output mean,
variance and mean slope are exact sums over the levels near ``m`` when ``sqrt(v)`` is under two
steps (a deterministic input is then rounded exactly), and otherwise the clipped-Gaussian moments
plus ``step^2/12`` inside the range. The partial sums are added digitally: means add, variances add,
and the tiles' cross-covariance (from correlated inputs) is scaled by the mean ADC slope, which also
scales the output's covariance factors (Stein's lemma, as for activations). A bias is exact.

Time (``predict(..., t=)``, as ``chip.mvm(x, t=)``)
-------------------------------------------------
Every device moment is taken at the read time (:func:`memcim.hardware.device.conductance_moments`
with ``t``): the drift factor ``(t/t0)**(-nu)``, log-normal over chips (its mean decay and the
variance from the spread of ``nu``), the 1/f snapshot at ``t`` and RTN. The ADC full scale stays
that of the plan (calibrated at ``t0``). Drift compensation multiplies the array outputs (before a
bias) by ``k = A/B``, the ratio of the reference reads' ``sum |y|`` at ``t0`` and ``t``: ``E[A]``,
``E[B]`` from the closed form of the reference read itself, and the factor's spread over chips and
its correlation with the chip's outputs to second order (:meth:`_HardwareStep.compensation`).
Neglected: the curvature of ``|y|`` near 0 and the skewness of the log-normal factor in ``k``
(about 1 % of the MSE per column at one year on a 784-row layer; global: far less); the simulator's
clip of the 1/f snapshot at 0 S and 1/f at the mean conductance (``conductance_moments``); with
wires, the IR drop of the drifted conductances (the drift enters as a first-order correction).

Limits (documented approximations; ``tests/agreement`` measures them against the simulator)
--------------------------------------------------------------------------------------------
* Dynamic DAC range: ``xs`` of a random input is taken at ``max_i sqrt(E[x_i^2])`` of the read; a
  fixed-range DAC's clipping of random inputs is not modelled (deterministic inputs: exact).
* The partial sums are Gaussian for the ADC; the cross-tile covariance after clipping uses the
  mean slope. After an earlier coarse ADC a partial sum is a sum of few-level values, heavier-tailed
  than a Gaussian of its variance: two 5-bit worst-case ADCs in a row over-predict the MSE by about
  8 % (``tests/agreement/test_predict_network.py``, ``cnn-convex_cim-None``).
* Offset mapping: the reference column is shared by every output of an array; its noise enters
  each output's variance exactly, and, for a linear layer, the covariance between the array's outputs
  that later layers see (its programming noise: one factor per array, :meth:`_HardwareStep._reference_factors`).
  Not carried: the covariance from its read (thermal/shot) noise, and in a convolution (the reference
  noise is then common to every channel and position of the array's reads).
* Per-weight noise variance (relative, table, stuck) is exact in every variance; a convolution's
  cross-position covariance uses each channel's input-weighted mean of it.
* Activations, pooling and the covariance representation: as in :mod:`memcim.analysis.moments`.

Examples
--------
>>> import numpy as np
>>> from memcim.config import preset
>>> from memcim.analysis.predict import predict
>>> W = np.random.default_rng(0).normal(size=(200, 20))
>>> x = np.random.default_rng(1).normal(size=(8, 200))
>>> p = predict(W, x, preset("generic"))
>>> p.mean.shape, p.mse_mean > 0
(torch.Size([8, 20]), True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from memcim.analysis import moments as mo
from memcim.config import HardwareConfig, resolve_config
from memcim.hardware.converters import adc_convert, dac_convert
from memcim.hardware.device import check_time, conductance_moments, drift_moments, read_noise_variance
from memcim.mapping.crossbar import as_matrix, map_matrix

__all__ = ["predict", "Prediction", "LayerHardware", "layer_hardware", "quantizer_moments"]

_NARROW = 2.0       # a partial sum narrower than this many ADC steps is summed level by level
_WINDOW = 12        # levels each side of the mean in that sum (6 standard deviations at least)
#: narrower partial sums sum over fewer levels: (sd/step below, levels each side), the tail lumped into the end
#: levels (and the thresholds left out of the slope) at least 7 standard deviations away; the widest, as before,
#: _WINDOW levels up to _NARROW steps (at least 6)
_WINDOWS = ((1.0 / 7.0, 1), (2.0 / 7.0, 2), (4.0 / 7.0, 4), (6.0 / 7.0, 6), (_NARROW, _WINDOW))


# ------------------------------------------------------------------------------------- devices

@dataclass
class LayerHardware:
    """The closed form's view of one mapped matrix (crossbar orientation, in x out).

    Attributes
    ----------
    plan : the :class:`~memcim.mapping.crossbar.MappedMatrix` the simulator programs.
    weight : (in, out) mean effective weight ``W~`` [output units per input unit].
    s2 : (in, out) per-weight variance shared by the reads of one chip.
    gs_c2 : (in, out) ``E[G_s]/c^2`` (thermal and shot noise) [S per (S/weight)^2].
    gsum_c2 : (n_row_tiles, out) ``sum_i E[G_s,i]/c^2`` over each array's rows.
    fs : (n_row_tiles, out) ADC full scale in output units per unit input scale ``xs``.
    tile_rows, n_row_tiles : the row tiling (separate arrays, separate ADCs).
    bitline_mean, bitline_var : (n_row_tiles, tile_rows, bit lines) mean and variance [S, S^2] of every
        device over chips, G+ (or weight) columns then G- (or reference) columns (the read power).
    t : the read time [s] these moments describe (``device.drift_t0``: right after programming).
    ref_var : offset mapping: (n_row_tiles, tile_rows, n_col_tiles) variance [S^2] of every reference device over
        chips; one reference column per array, subtracted from all its outputs, so its noise is common to them.
    """

    hw: HardwareConfig
    plan: object
    weight: torch.Tensor
    s2: torch.Tensor
    gs_c2: torch.Tensor
    gsum_c2: torch.Tensor
    fs: torch.Tensor
    tile_rows: int
    n_row_tiles: int
    bitline_mean: torch.Tensor | None = None
    bitline_var: torch.Tensor | None = None
    t: float | None = None
    sliced: object | None = None    # bit slicing: the slices' views (memcim.analysis.slicing.SlicedHardware)
    ref_var: torch.Tensor | None = None

    @property
    def uniform_s2(self) -> float | None:
        """The single per-weight variance when every weight has the same one (MemSE's case)."""
        v = self.s2.reshape(-1)
        return float(v[0]) if bool((v == v[0]).all()) else None

    def summary(self) -> dict:
        p = self.plan
        d = dict(p.summary()) if hasattr(p, "summary") else {}
        d.update({"noise_std_mean": float(self.s2.mean().sqrt()), "realized_max_abs": float(self.weight.abs().max())})
        return d


def layer_hardware(W, hw: HardwareConfig, *, calib_inputs=None, calib_seed: int = 0, t: float | None = None,
                   plan=None) -> LayerHardware:
    """Map ``W`` (in, out) with ``hw`` and derive the per-weight and per-array quantities.

    Parameters
    ----------
    W : real matrix (in, out). hw : the hardware.
    calib_inputs : sample inputs (batch, in) that calibrate the ADC full scale (as the simulator).
    calib_seed : seed of the default calibration inputs.
    t : read time [s] after programming (default ``device.drift_t0``): the device moments include the
        drift and the 1/f noise of a read at ``t`` (:func:`memcim.hardware.device.conductance_moments`).
    plan : an existing plan of ``W`` on ``hw`` (skips the mapping; ``W`` is then unused).

    Returns
    -------
    :class:`LayerHardware`.
    """
    if plan is None:
        plan = map_matrix(W, hw, calib_inputs=calib_inputs, calib_seed=calib_seed)
    if hw.slicing.enabled:   # bit slicing: one view per slice (memcim.analysis.slicing)
        from memcim.analysis.slicing import sliced_layer_hardware

        return sliced_layer_hardware(plan, hw, t=t)
    dev = hw.device
    t = check_time(t, dev)
    nrt, R, m_pad = plan.g_pos.shape
    n, m = plan.in_features, plan.out_features
    scale = plan.scale.to(torch.float64)
    scale = scale.unsqueeze(0).expand(nrt, m_pad) if scale.dim() == 1 else scale      # (nrt, out_pad)
    c3 = scale.unsqueeze(1)                                                           # (nrt, 1, out_pad)
    if (plan.g_pos.shape == plan.g_neg.shape and plan.mask_pos.shape == plan.mask_neg.shape
            and plan.mask_pos.dtype == plan.mask_neg.dtype and (plan.level_pos is None) == (plan.level_neg is None)):
        # both sides in one call (the moments are elementwise: the same values, half the operations)
        lv = None if plan.level_pos is None else torch.stack([plan.level_pos, plan.level_neg])
        (mp, mn), (vp, vn) = conductance_moments(torch.stack([plan.g_pos, plan.g_neg]), lv,
                                                 torch.stack([plan.mask_pos, plan.mask_neg]), dev, t=t)
    else:
        mp, vp = conductance_moments(plan.g_pos, plan.level_pos, plan.mask_pos, dev, t=t)
        mn, vn = conductance_moments(plan.g_neg, plan.level_neg, plan.mask_neg, dev, t=t)
    bl_mean, bl_var = torch.cat([mp, mn], -1), torch.cat([vp, vn], -1)
    ref_var = vn.to(torch.float64) if plan.scheme == "offset" else None
    mn, vn = plan.expand_neg(mn), plan.expand_neg(vn)
    gd_target = plan.g_pos - plan.expand_neg(plan.g_neg)

    def crop(t):  # (nrt, R, out_pad) -> (in, out)
        return t.reshape(nrt * R, m_pad)[:n, :m]

    realized = plan.realized().to(torch.float64)
    weight = realized + crop(((mp - mn) - gd_target) / c3)
    s2 = crop((vp + vn) / (c3 * c3))
    gs = (mp + mn) / (c3 * c3)
    fs = plan.full_scale.to(torch.float64) / (hw.array.r_tia * hw.array.v_read) / scale
    return LayerHardware(hw=hw, plan=plan, weight=weight, s2=s2, gs_c2=crop(gs), gsum_c2=gs.sum(1)[:, :m],
                         fs=fs[:, :m], tile_rows=R, n_row_tiles=nrt, bitline_mean=bl_mean, bitline_var=bl_var, t=t,
                         ref_var=ref_var)


def _persistent_covariances(plan, dev, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-weight covariances (in, out) [weight^2] of two reads of one chip: ``Cov(w(t0), w(t))`` and
    ``Cov(w(t), w(t))`` over chips of the parts every read shares (programming noise, stuck devices,
    the drift exponent), scaled by the RTN factor's mean squared; the 1/f and RTN snapshots of
    different reads are independent."""
    import dataclasses

    quiet = dataclasses.replace(dev, read_1f_q=0.0, rtn_amplitude=0.0)
    r2 = (1.0 - dev.rtn_probability * dev.rtn_amplitude) ** 2 if dev.has_rtn else 1.0
    nrt, R, m_pad = plan.g_pos.shape
    scale = plan.scale.to(torch.float64)
    scale = scale.unsqueeze(0).expand(nrt, m_pad) if scale.dim() == 1 else scale
    c2 = scale.unsqueeze(1) ** 2
    sides = []
    for g, lv, mk in ((plan.g_pos, plan.level_pos, plan.mask_pos), (plan.g_neg, plan.level_neg, plan.mask_neg)):
        _, v0 = conductance_moments(g, lv, mk, quiet)
        _, vt = conductance_moments(g, lv, mk, quiet, t=t)
        f1, _ = drift_moments(g, t, dev)
        sides.append((f1 * v0, vt))
    out = []
    for j in range(2):
        tot = (sides[0][j] + plan.expand_neg(sides[1][j])) * r2 / c2
        out.append(tot.reshape(nrt * R, m_pad)[: plan.in_features, : plan.out_features])
    return out[0], out[1]


# ------------------------------------------------------------------------------------- ADC

def _phi(z):
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _cdf(z):
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def quantizer_moments(m: torch.Tensor, v: torch.Tensor, step: torch.Tensor, adc) -> tuple[torch.Tensor, ...]:
    """Mean, variance and mean slope of ``ADC(Y)`` for ``Y ~ N(m, v)`` (elementwise, broadcasting).

    Parameters
    ----------
    m, v : mean and variance of the ADC input, in output units.
    step : the ADC step in the same units (full scale / K, ``K = 2**(bits-1) - 1``).
    adc : :class:`memcim.config.ADCConfig` (its transfer, :func:`memcim.hardware.converters.adc_convert`,
        is evaluated on the levels).

    Returns
    -------
    (mean, var, slope): ``slope = dE[ADC(Y)]/dm``, the factor on covariances with other units.
    Inputs narrower than two steps are summed over the nearest levels (exact for a Gaussian; a
    deterministic input is rounded exactly); wider ones use the clipped Gaussian plus ``step^2/12``.
    """
    m, v, step = (t.contiguous() for t in torch.broadcast_tensors(m, v.clamp_min(0.0), step))
    K = adc.steps
    fs = step * K
    sd = v.sqrt()
    mean, var, slope = torch.empty_like(m), torch.empty_like(m), torch.empty_like(m)
    narrow = sd < _NARROW * step
    # --- wide: clipped Gaussian plus uniform rounding noise inside the range
    w = ~narrow
    if bool(w.any()):
        mw, sw, stw, fw = m[w], sd[w], step[w], fs[w]
        if adc.saturate:
            a, b = (-fw - mw) / sw, (fw - mw) / sw
            pin, plo, phi_ = _cdf(b) - _cdf(a), _cdf(a), 1.0 - _cdf(b)
            pa, pb = _phi(a), _phi(b)
            e_in = mw * pin + sw * (pa - pb)
            e2_in = (mw * mw + sw * sw) * pin + 2 * mw * sw * (pa - pb) + sw * sw * (a * pa - b * pb)
            mu = e_in + fw * (phi_ - plo)
            e2 = e2_in + fw * fw * (phi_ + plo)
            mean[w] = mu
            var[w] = (e2 - mu * mu).clamp_min(0.0) + stw * stw / 12.0 * pin
            slope[w] = pin
        else:
            mean[w] = mw
            var[w] = sw * sw + stw * stw / 12.0
            slope[w] = 1.0
    # --- narrow: sum over the levels near the mean, as many each side as its width needs (_WINDOWS)
    nidx = narrow.reshape(-1).nonzero().squeeze(1)
    if nidx.numel():         # gathered once; each window's entries are then picked within the narrow ones
        mn, sn, stn, fn = (t.reshape(-1)[nidx] for t in (m, sd, step, fs))
        win = torch.bucketize(sn / stn, torch.tensor([b for b, _ in _WINDOWS[:-1]], dtype=m.dtype, device=m.device),
                              right=True)                                  # window j: ratio in [below_{j-1}, below_j)
        outs = [torch.empty_like(mn) for _ in range(3)]
        for j, (_, half) in enumerate(_WINDOWS):
            sel = (win == j).nonzero().squeeze(1)
            if sel.numel():
                for o, r in zip(outs, _narrow_moments(mn[sel], sn[sel], stn[sel], fn[sel], adc, half)):
                    o[sel] = r
        for full, o in zip((mean, var, slope), outs):
            full.reshape(-1)[nidx] = o
    return mean, var, slope


def _narrow_moments(mn, sn, stn, fn, adc, half: int):
    """:func:`quantizer_moments` of partial sums narrower than ``_NARROW`` steps: the sum over the ``2 half + 1``
    levels nearest the mean, the tails lumped into the end levels (a deterministic input: the transfer)."""
    k0 = torch.round(mn / stn)
    ks = k0.unsqueeze(-1) + torch.arange(-half, half + 1, dtype=mn.dtype, device=mn.device)
    q = adc_convert(ks * stn.unsqueeze(-1), fn.unsqueeze(-1), adc)                     # the levels' outputs
    hi = (ks + 0.5) * stn.unsqueeze(-1)
    pos = sn > 0
    s_ = torch.where(pos, sn, torch.ones_like(sn)).unsqueeze(-1)
    z = (hi - mn.unsqueeze(-1)) / s_
    c = _cdf(z)
    c[..., -1] = 1.0
    prob = c.clone()                                                                    # P(level j): the CDF's steps
    prob[..., 1:] -= c[..., :-1]
    pq = prob * q
    mu = pq.sum(-1)
    vv = ((pq * q).sum(-1) - mu * mu).clamp_min(0.0)
    sl = ((q[..., 1:] - q[..., :-1]) * _phi(z[..., :-1]) / s_).sum(-1)
    q0 = adc_convert(mn, fn, adc)                                                       # deterministic inputs
    inside = (mn.abs() < fn - 0.5 * stn) if adc.saturate else torch.ones_like(pos)
    return (torch.where(pos, mu, q0), torch.where(pos, vv, torch.zeros_like(vv)),
            torch.where(pos, sl, inside.to(mn.dtype)))


# ------------------------------------------------------------------------------------- layers

def _torch_layout(t: torch.Tensor, layer: mo.CrossbarLayer) -> torch.Tensor:
    """(in, out) crossbar orientation -> the layer's weight layout (out, in[, kh, kw])."""
    return t.t().reshape(layer.weight.shape).to(layer.weight.dtype, memory_format=torch.contiguous_format)


def _op(layer: mo.CrossbarLayer):
    if layer.kind == "linear":
        return lambda x, w: x @ w.t()
    return lambda x, w: F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation)


def _per_read(layer: mo.CrossbarLayer, a: torch.Tensor) -> torch.Tensor:
    """Largest entry of ``a`` (B, *shape) over each read: (B, 1) or (B, 1, Ho, Wo)."""
    if layer.kind == "linear":
        return a.amax(1, keepdim=True)
    ph, pw = layer.padding
    ac = F.pad(a.amax(1, keepdim=True), (pw, pw, ph, ph))
    return F.max_pool2d(ac, layer.weight.shape[2:], layer.stride, 0, layer.dilation)


def _col(t: torch.Tensor, layer: mo.CrossbarLayer) -> torch.Tensor:
    """(out,) per output -> broadcastable against the layer output."""
    return t if layer.kind == "linear" else t.reshape(-1, 1, 1)


def _is_deterministic(st: mo.Moments) -> bool:
    """No variance anywhere (a full covariance of zeros counts: the propagation makes small maps full)."""
    if bool(torch.any(st.var != 0)):
        return False
    if st.factors is not None and bool(torch.any(st.factors != 0)):
        return False
    if st.local is not None and bool(torch.any(st.local != 0)):
        return False
    return st.cov is None or not bool(torch.any(st.cov != 0))


def _through_slope(mean: torch.Tensor, var: torch.Tensor, out: mo.Moments, slope: torch.Tensor) -> mo.Moments:
    """Moments after a quantizer of mean slope ``slope``: ``mean`` and ``var`` as computed, the factors and the
    off-diagonal covariance of ``out`` scaled by the slope (Stein's lemma), the diagonal replaced by ``var``."""
    cov, fac, loc = out.cov, out.factors, out.local
    if fac is not None:
        fac = fac * slope.unsqueeze(1)
    if loc is not None:
        loc = loc * slope.unsqueeze(1)
    if cov is not None:
        sl = slope.reshape(slope.shape[0], -1)
        cov = cov * sl.unsqueeze(-1) * sl.unsqueeze(-2)
        torch.diagonal(cov, dim1=1, dim2=2).copy_(var.reshape(var.shape[0], -1))     # the diagonal is the variance
    return mo.Moments(mean, var, out.mode, cov, fac, local=loc)


class _HardwareStep:
    """The crossbar step of :func:`predict` for one layer (see the module docstring)."""

    def __init__(self, lh: LayerHardware, layer: mo.CrossbarLayer, rank: int, max_factors: int,
                 on_crossbar: Callable | None, index: int, power: bool = False, reference_inputs=None):
        self.lh, self.layer, self.rank, self.max_factors = lh, layer, rank, max_factors
        self.keep_local = False    # may leave channel-local factors (moments.Moments.local): predict()'s own steps
        self.reference_inputs = reference_inputs
        self._k = None
        self.on_crossbar, self.index = on_crossbar, index
        self.power = [0.0, 0.0, 0] if power else None
        self._gs = self._masks = None
        dt = layer.weight.dtype
        self.W = _torch_layout(lh.weight, layer)
        us2 = lh.uniform_s2
        self.s2_full = _torch_layout(lh.s2, layer)
        if us2 is None and dt != lh.s2.dtype:
            # one value in the computation dtype (float32: the clipped Gaussian's per-device variances differ by
            # ~1e-12 relative, below its resolution): the scalar path, as for an exactly uniform variance
            v = self.s2_full.reshape(-1)
            us2 = float(v[0]) if bool((v == v[0]).all()) else None
        self.s2 = torch.tensor(us2, dtype=dt) if us2 is not None else self.s2_full

    @property
    def gs(self) -> torch.Tensor:
        """``E[G_s]/c^2`` in the layer's weight layout (thermal and shot noise; built on first use)."""
        if self._gs is None:
            self._gs = _torch_layout(self.lh.gs_c2, self.layer)
        return self._gs

    @property
    def masks(self) -> list:
        """Per row tile, the 0/1 mask of its inputs in the layer's weight layout (built on first use)."""
        if self._masks is None:
            lh, layer = self.lh, self.layer
            n = lh.weight.shape[0]
            self._masks = []
            for t in range(lh.n_row_tiles):
                mk = torch.zeros(n, dtype=layer.weight.dtype)
                mk[t * lh.tile_rows:(t + 1) * lh.tile_rows] = 1.0
                self._masks.append(mk.reshape(1, *layer.weight.shape[1:]))
        return self._masks

    def _bitlines(self):
        """Every bit line of every array as a (L, *weight.shape[1:]) weight over the layer's inputs
        (zero on the other arrays' rows): mean and variance of its conductances [S, S^2]."""
        lh, layer = self.lh, self.layer
        n = lh.weight.shape[0]
        T, R = lh.n_row_tiles, lh.tile_rows
        out = []
        for t_ in (lh.bitline_mean, lh.bitline_var):
            full = torch.zeros(T, T * R, t_.shape[-1], dtype=layer.weight.dtype)
            for t in range(T):
                full[t, t * R:(t + 1) * R] = t_[t].to(layer.weight.dtype)
            g = full[:, :n].permute(0, 2, 1).reshape(-1, n)                 # (T L, in)
            out.append(g.reshape(g.shape[0], *layer.weight.shape[1:]))
        return out

    def _read_power(self, st: mo.Moments) -> None:
        """Accumulate the expected device and TIA power of this layer's reads (:mod:`memcim.analysis.power`)."""
        from memcim.analysis.power import layer_read_power

        hw, layer = self.lh.hw, self.layer
        if not hasattr(self, "_bl"):
            self._bl = self._bitlines()
        if hw.dac.x_range is not None:
            xs = torch.tensor(float(hw.dac.x_range), dtype=st.mean.dtype)
        else:
            xs = _per_read(layer, st.second_moment().sqrt())
            xs = torch.where(xs > 0, xs, torch.ones_like(xs))
        d, t = layer_read_power(st, layer, self._bl[0], self._bl[1], v_read=hw.array.v_read,
                                r_tia=hw.array.r_tia, xs=xs)
        b = st.mean.shape[0]
        self.power[0] += float(d) * b
        self.power[1] += float(t) * b
        self.power[2] += b

    def _scale_c(self):
        s = self.lh.plan.scale
        s = s if s.dim() == 1 else s[0]
        s = s[: self.lh.weight.shape[1]].to(self.layer.weight.dtype)
        return s[0] if bool((s == s[0]).all()) else s

    # ------------------------------------------------------------------ drift compensation
    def compensation(self) -> dict | None:
        """The drift compensation of this layer at its read time, None when off or at ``t0``.

        The chip multiplies its outputs by ``k = A / B``, ``A = S(t0)``, ``B = S(t)``,
        ``S = sum_b |y_b|`` over a reference read of the inputs ``x_b`` (summed over the columns too
        when global). ``E[A]``, ``E[B]`` come from the reference read's own closed form at ``t0`` and
        ``t`` (this step on the reference inputs: drifted device moments, read noise, DAC, ADC) with
        ``E|y| = s 2 phi(m/s) + m (2 Phi(m/s) - 1)`` for ``y ~ N(m, s^2)`` over chips. The factor's
        randomness over chips and its correlation with the chip's own outputs enter at second order
        (delta method, see :meth:`_compensate`) through the linearisation ``delta S = a . delta w``,
        ``a = sum_b (2 Phi(m_b/s_b) - 1) x_b`` (Stein's lemma), with per-device covariances: the
        full variance of a read (``Var A``, ``Var B``), the persistent part shared by two reads of
        one chip (programming, stuck and drift; not the 1/f and RTN snapshots) for ``Cov(A, B)``,
        ``Cov(A, Y)``, ``Cov(B, Y)``.

        Returns dict(k, A, B, varA, varB, covAB, aP0, aPt): ``k = E[A]/E[B]``; ``aP0``, ``aPt`` (in, out)
        the weights whose product with the input mean is ``Cov(A, Y)``, ``Cov(B, Y)``.
        """
        hw = self.lh.hw
        mode = hw.compensation.drift
        dev = hw.device
        if mode == "none" or not dev.has_drift or self.lh.t == dev.drift_t0:
            return None
        if self._k is None:
            plan = self.lh.plan
            lh0 = layer_hardware(None, hw, plan=plan, t=None)
            A, a0 = self._reference_read(lh0)
            B, at = self._reference_read(self.lh)
            P0t, Ptt = _persistent_covariances(plan, dev, self.lh.t)
            d = {"varA": (a0 * a0 * lh0.s2).sum(0), "varB": (at * at * self.lh.s2).sum(0),
                 "covAB": (a0 * at * P0t).sum(0), "aP0": a0 * P0t, "aPt": at * Ptt, "A": A, "B": B}
            if mode == "global":
                for key in ("A", "B", "varA", "varB", "covAB"):
                    d[key] = d[key].sum()
            d["k"] = torch.where(d["B"] > 0, d["A"] / torch.where(d["B"] > 0, d["B"], torch.ones_like(d["B"])),
                                 torch.ones_like(d["B"]))
            self._k = d
        return self._k

    def _reference_read(self, lh: LayerHardware) -> tuple[torch.Tensor, torch.Tensor]:
        """``E[sum_b |y_b|]`` per output of the reference read of ``lh`` (out,) and its linearisation
        ``a = sum_b E[sign y_b] x_b`` (in, out)."""
        dt = torch.float64
        n, m = lh.weight.shape
        x = self.reference_inputs
        if x is None:   # the simulator's default (memcim.simulate.ProgrammedChip._reference)
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(512, n, generator=g, dtype=torch.float64)
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach()).to(dt)
        if x.dim() != 2 or x.shape[1] != n:
            raise ValueError(f"reference_inputs: shape {tuple(x.shape)} does not match the layer; expected (batch, {n})")
        ref = mo.CrossbarLayer("linear", lh.weight.t().to(dt).contiguous(), torch.zeros(m, dtype=dt), name="reference")
        step = _HardwareStep(lh, ref, 0, 0, None, self.index)
        st = step._read_moments(mo.Moments(x, torch.zeros_like(x), "diagonal", None, None))
        sd = st.var.clamp_min(0).sqrt()
        sds = torch.where(sd > 0, sd, torch.ones_like(sd))
        z = st.mean / sds
        sign = torch.where(sd > 0, 2 * _cdf(z) - 1, torch.sign(st.mean))
        eabs = torch.where(sd > 0, sd * 2 * _phi(z) + st.mean * sign, st.mean.abs())
        return eabs.sum(0), x.t() @ sign

    def __call__(self, st: mo.Moments) -> mo.Moments:
        if self.lh.sliced is not None:   # bit slicing: the slices' reads, shift-and-add (analysis.slicing)
            from memcim.analysis.slicing import sliced_read

            return sliced_read(self, mo.dense(st))
        out = self._read_moments(st)
        comp = self.compensation()
        return out if comp is None else self._compensate(st, out, comp)

    def _compensate(self, st: mo.Moments, out: mo.Moments, c: dict) -> mo.Moments:
        """The outputs times the compensation factor ``k = A/B`` (before the digital bias), to second
        order in the factor's fluctuation (``alpha = dA/E[A]``, ``beta = dB/E[B]``, ``dY``):

            E[kY]   = k (E[Y] + Cov(A,Y)/E[A] - Cov(B,Y)/E[B] + E[Y] (Var B/E[B]^2 - Cov(A,B)/(E[A]E[B])))
            Var[kY] = k^2 (Var Y + 2 E[Y] (Cov(A,Y)/E[A] - Cov(B,Y)/E[B]) + E[Y]^2 Var(alpha - beta))

        Covariances between outputs (a network's later layers) are scaled by ``k^2``."""
        layer, op = self.layer, _op(self.layer)
        dt = out.mean.dtype
        bias = _col(layer.bias, layer)
        k, A, B = (c[key].to(dt) for key in ("k", "A", "B"))
        y = out.mean - bias
        gA = op(st.mean, _torch_layout(c["aP0"], layer).to(dt)) / _col(A, layer) if A.dim() else \
            op(st.mean, _torch_layout(c["aP0"], layer).to(dt)) / A
        gB = op(st.mean, _torch_layout(c["aPt"], layer).to(dt)) / (_col(B, layer) if B.dim() else B)
        va, vb, cab = (c[key].to(dt) for key in ("varA", "varB", "covAB"))
        q = vb / (B * B) - cab / (A * B)
        r = va / (A * A) + vb / (B * B) - 2 * cab / (A * B)
        if k.dim():
            k, q, r = _col(k, layer), _col(q, layer), _col(r, layer)
        mean = k * (y + gA - gB + y * q) + bias
        var = (k * k * (out.var + 2 * y * (gA - gB) + y * y * r)).clamp_min(0.0)
        fac = None if out.factors is None else out.factors * k
        loc = None if out.local is None else out.local * k
        cov = out.cov
        if cov is not None:
            kf = (k * torch.ones_like(out.mean[0])).reshape(-1)
            cov = cov * kf.unsqueeze(-1) * kf.unsqueeze(-2)
            torch.diagonal(cov, dim1=1, dim2=2).copy_(var.reshape(var.shape[0], -1))  # the diagonal is the variance
        return mo.Moments(mean, var, out.mode, cov, fac, out.nonzero, loc)

    def _read_moments(self, st: mo.Moments) -> mo.Moments:
        lh, layer = self.lh, self.layer
        hw = lh.hw
        dev, dac, adc = hw.device, hw.dac, hw.adc
        op = _op(layer)
        if st.local is not None and (self.on_crossbar is not None or self.power is not None or
                                     (adc.enabled and lh.n_row_tiles > 1)):
            st = mo.dense(st)      # those read the dense factors
        det = _is_deterministic(st)
        self.last_slope = 1.0                          # the ADC's mean slope (read by analysis.slicing)
        dmean = None                                   # exact DAC rounding of a deterministic input
        if dac.enabled and det:
            st, dmean = self._dac_exact(st, op)
        if self.on_crossbar is not None:
            self.on_crossbar(self.index, layer, st, self.W, self._scale_c())
        if self.power is not None:
            self._read_power(st)
        need_read = dev.thermal_noise or dev.shot_noise or (dac.enabled and not det)
        out = mo._crossbar_step(st, layer, self.W, self.s2, self.rank, self.max_factors, keep_local=self.keep_local)
        if lh.ref_var is not None and layer.kind == "linear" and out.mode != "diagonal":
            out = self._shared_reference(st, out)
        if not (need_read or adc.enabled):     # MemSE's case: the moments of the noisy weights are all
            if dmean is None:
                return out
            return mo.Moments(out.mean + dmean, out.var, out.mode, out.cov, out.factors, local=out.local,
                              resid=out.resid)
        # the input scale of every read
        if dac.x_range is not None:
            xs = torch.tensor(float(dac.x_range), dtype=st.mean.dtype)
        else:
            xs = _per_read(layer, st.second_moment().sqrt())
            xs = torch.where(xs > 0, xs, torch.ones_like(xs))
        eabs = None
        if dev.shot_noise:
            if det:
                eabs = st.mean.abs()
            else:
                sd = st.var.clamp_min(0).sqrt()
                sds = torch.where(sd > 0, sd, torch.ones_like(sd))
                z = st.mean / sds
                eabs = torch.where(sd > 0, sd * 2 * _phi(z) + st.mean * (2 * _cdf(z) - 1), st.mean.abs())
        m2 = st.second_moment()
        nz = st.nonzero if st.nonzero is not None else torch.ones_like(st.mean)
        w2 = self.W * self.W + self.s2_full

        def read_var(t: int | None):
            """Per-read noise of array t (None: all arrays), in output units."""
            if not need_read:
                return None
            mask = 1.0 if t is None else self.masks[t]
            v = None
            if dev.thermal_noise or dev.shot_noise:
                gsum = lh.gsum_c2.sum(0) if t is None else lh.gsum_c2[t]
                gsum = _col(gsum.to(st.mean.dtype), layer)
                ab = op(eabs, self.gs * mask) / xs if eabs is not None else None
                vr = hw.array.v_read
                v = (xs * xs) * read_noise_variance(gsum, ab, vr, dev) / (vr * vr)
            if dac.enabled and not det:
                k = dac.steps
                dv = (xs / k) ** 2 / 12.0 * op(nz, w2 * mask)
                v = dv if v is None else v + dv
            return v

        bias = _col(layer.bias, layer)
        if not adc.enabled:
            rv = read_var(None)
            mean = out.mean if dmean is None else out.mean + dmean
            if rv is None:
                return mo.Moments(mean, out.var, out.mode, out.cov, out.factors, local=out.local)
            cov = out.cov
            if cov is not None:
                cov = cov.clone()
                torch.diagonal(cov, dim1=1, dim2=2).add_(rv.expand_as(out.var).reshape(rv.shape[0], -1))
            return mo.Moments(mean, out.var + rv, out.mode, cov, out.factors, local=out.local)
        # --- one ADC per array: every row tile's partial sum is quantized on its own
        T = lh.n_row_tiles
        K = adc.steps
        qm = qv = 0.0
        vsum = slv = 0.0
        sl_sum = 0.0
        vin_tiles = 0.0
        self.last_tiles = []                           # per array: the ADC's input (read by analysis.slicing)
        for t in range(T):
            if T == 1:
                mean_t = out.mean - bias
                rv = read_var(None)
                v_t = out.var if rv is None else out.var + rv
                vin_t = None
            else:
                mk = self.masks[t]
                wt = self.W * mk
                mean_t = op(st.mean, wt)
                if layer.kind == "linear" and st.cov is not None:
                    # a full covariance: array t reads only its own rows, so its partial sum's variance is
                    # diag(W_t^T C_tt W_t) over the (R, R) diagonal block (the full-width masked product cost T^2
                    # times more and computed the whole output covariance for its diagonal)
                    r0 = t * lh.tile_rows
                    wb = self.W[:, r0:r0 + lh.tile_rows]                                # (out, R)
                    blk = st.cov[:, r0:r0 + lh.tile_rows, r0:r0 + lh.tile_rows]         # (B, R, R)
                    vin_t = ((blk @ wb.t()) * wb.t()).sum(1)                            # (B, out)
                else:
                    vin_t = mo._lin_var(st, lambda x, w=wt: op(x, w), lambda x, w=wt: op(x, w * w))
                chip = op(m2, self.s2_full * mk)
                rv = read_var(t)
                v_t = vin_t + chip if rv is None else vin_t + chip + rv
                vin_tiles = vin_tiles + vin_t
            if dmean is not None:
                mean_t = mean_t + (dmean[t] if T > 1 else dmean)
            step = xs * _col(lh.fs[t].to(st.mean.dtype), layer) / K
            self.last_tiles.append((mean_t, v_t, step, self.masks[t] if T > 1 else None))
            a, b, s = quantizer_moments(mean_t, v_t, step, adc)
            qm, qv = qm + a, qv + b
            vsum = vsum + v_t
            slv = slv + s * v_t
            sl_sum = sl_sum + s
        slope = torch.where(vsum > 0, slv / torch.where(vsum > 0, vsum, torch.ones_like(vsum)), sl_sum / T)
        self.last_slope = slope
        var = qv
        if T > 1:   # the arrays' partial sums are correlated through the inputs: keep that, scaled by the slope
            vin_total = out.var - op(m2, self.s2_full)
            var = (var + slope * slope * (vin_total - vin_tiles)).clamp_min(0.0)
        return _through_slope(qm + bias, var, out, slope)

    def _reference_factors(self, m2: torch.Tensor) -> torch.Tensor:
        """Offset mapping, linear layer: the reference columns' programming noise as factors (B, T U, out).

        Array (t, u) (row tile t, column tile u) subtracts its reference column from each of its outputs j, so
        ``delta_j = sum_{i in t} x_i delta_ref_i / c_tj`` is common to them: ``Cov(y_j, y_k)`` gains
        ``a_tu / (c_tj c_tk)`` with ``a_tu = sum_{i in t} E[x_i^2] Var(ref_i)``, i.e. the factor
        ``sqrt(a_tu) / c_tj`` on the outputs of column tile u (each output's variance already holds it)."""
        lh, plan = self.lh, self.lh.plan
        nrt, R, nct = lh.ref_var.shape
        b, n = m2.shape
        dt = m2.dtype
        m2p = torch.zeros(b, nrt * R, dtype=dt)
        m2p[:, :n] = m2
        a = torch.einsum("btr,tru->btu", m2p.reshape(b, nrt, R), lh.ref_var.to(dt))       # (B, T, U)
        scale = plan.scale.to(dt)
        scale = scale.unsqueeze(0).expand(nrt, -1) if scale.dim() == 1 else scale       # (T, out_pad)
        m = lh.weight.shape[1]
        inv_c = 1.0 / scale[:, :m]                                                       # (T, out)
        col_tile = torch.arange(m) // plan.tile_cols                                     # (out,)
        onehot = (col_tile.unsqueeze(0) == torch.arange(nct).unsqueeze(1)).to(dt)        # (U, out)
        f = a.sqrt().unsqueeze(-1) * inv_c.reshape(1, nrt, 1, m) * onehot.reshape(1, 1, nct, m)
        return f.reshape(b, nrt * nct, m)

    def _shared_reference(self, st: mo.Moments, out: mo.Moments) -> mo.Moments:
        """Add the offset reference columns' common noise to the covariance (or the factors) of a linear
        layer's outputs; the variances already hold it."""
        g = self._reference_factors(st.second_moment().reshape(st.mean.shape[0], -1))
        if out.cov is not None:
            low = g.transpose(1, 2) @ g
            cov = out.cov + low
            torch.diagonal(cov, dim1=1, dim2=2).sub_(torch.diagonal(low, dim1=1, dim2=2))   # the variances hold it
            return mo.Moments(out.mean, out.var, out.mode, cov, out.factors, out.nonzero, out.local)
        fac = g if out.factors is None else torch.cat([out.factors, g], 1)
        return mo.Moments(out.mean, out.var, out.mode, None, fac, out.nonzero, out.local)

    def _dac_exact(self, st: mo.Moments, op):
        """Round a deterministic input through the DAC exactly.

        Linear layers and fixed-range DACs: the rounded input replaces the input. A convolution with
        dynamic range scales every patch by its own maximum, so the rounding differs per patch: its
        effect on the mean is added per array in patch space (``dmean``), the noise terms keep the
        unrounded input (a second-order difference)."""
        layer, dac = self.layer, self.lh.hw.dac
        x = st.mean
        if layer.kind == "linear" or dac.x_range is not None:
            flat = x.reshape(x.shape[0], -1)
            u, sc = dac_convert(flat, dac)
            xq = (u * sc).reshape(x.shape)
            return mo.Moments(xq, st.var, st.mode, st.cov, st.factors, (xq != 0).to(x.dtype)), None
        kh, kw = layer.weight.shape[2:]
        cols = mo._unfold(x, (kh, kw), layer.dilation, layer.padding, layer.stride)
        rows = cols.transpose(1, 2)                                     # (B, P, in)
        u, sc = dac_convert(rows, dac)
        d = u * sc - rows
        out = self.lh.weight.to(x.dtype)                                # (in, out)
        b = x.shape[0]
        parts = []
        T = self.lh.n_row_tiles
        for t in range(T if self.lh.hw.adc.enabled and T > 1 else 1):
            wt = out if T == 1 or not self.lh.hw.adc.enabled else out * self.masks[t].reshape(-1, 1)
            y = d @ wt                                                  # (B, P, out)
            parts.append(y.transpose(1, 2))
        ho = (x.shape[2] + 2 * layer.padding[0] - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1
        wo = (x.shape[3] + 2 * layer.padding[1] - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1
        parts = [p.reshape(b, -1, ho, wo) for p in parts]
        dmean = torch.stack(parts) if len(parts) > 1 else parts[0]
        return st, dmean


# ------------------------------------------------------------------------------------- result

#: the result type, shared with MemSE's predict_mse
Prediction = mo.Prediction


def _hardware_list(hw, n_layers: int, analog: list | None) -> list[HardwareConfig]:
    if hw is None:
        if analog is None:
            raise ValueError("hw: a HardwareConfig (or a preset name, or one per crossbar layer) is required")
        return [m.hardware for m in analog]
    if isinstance(hw, (HardwareConfig, str)):
        return [resolve_config(hw)] * n_layers
    if isinstance(hw, Sequence):
        if len(hw) != n_layers:
            raise ValueError(f"hw: got {len(hw)} configs; the model has {n_layers} crossbar layer(s) "
                             "(give one config, or one per crossbar layer)")
        out = []
        for h in hw:
            if not isinstance(h, (HardwareConfig, str)):
                raise TypeError(f"hw: expected HardwareConfig entries, got {type(h).__name__}")
            out.append(resolve_config(h))
        return out
    raise TypeError(f"hw: expected a HardwareConfig, a preset name or a list of them, got {type(hw).__name__}")


def _analog_layers(model: nn.Module) -> list | None:
    try:
        from memcim.nn.analog import analog_layers
    except ImportError:  # pragma: no cover
        return None
    layers = [m for _, m in analog_layers(model)]
    return layers or None


def _calibration_rows(model: nn.Module, calib_data, analog: list | None, hw0: HardwareConfig) -> list:
    """The crossbar inputs each layer's ADC is calibrated on, exactly as the simulator's analog model
    records them (:func:`memcim.nn.analog.calibrate`)."""
    from memcim.nn.analog import convert_to_analog

    if calib_data is None:
        if analog is None:
            return None
        return [m.calibration_inputs for m in analog]
    if not isinstance(calib_data, torch.Tensor):
        calib_data = torch.as_tensor(np.asarray(calib_data))
    conv = convert_to_analog(model, hw0, calib_data=calib_data.to(next(model.parameters()).dtype))
    return [m.calibration_inputs for m in _analog_layers(conv)]


def predict(model, x, hw=None, *, calib_data=None, calib_inputs=None, cov: str = "lowrank",
            rank: int = mo.DEFAULT_RANK, max_factors: int = 64, full_below: int = mo.DEFAULT_FULL_BELOW,
            full_linear: int = 4096, act_method: str = "taylor", taylor_order: int = 2,
            fold_bn: bool = False, dtype: torch.dtype = torch.float64, batch_chunk: int | None = None,
            on_crossbar: Callable | None = None, power: bool = False, t: float | None = None,
            reference_inputs=None, plans: list | None = None, full_forks: bool = False) -> Prediction:
    """Predict the output mean, variance and MSE of a matrix or a network on crossbars, in closed form.

    Parameters
    ----------
    model : a matrix W (in, out) (numpy or torch; the crossbar computes ``x @ W``), an
        ``nn.Sequential`` of the layers :func:`memcim.analysis.moments.parse_model` accepts, a list
        from it, or a model converted by :func:`memcim.nn.analog.convert_to_analog` (its layers'
        own hardware and calibration are then used when ``hw`` is None). Any other module (residual
        blocks, concatenations, attention, ``torch.fx``-traceable graphs) goes through
        :func:`memcim.analysis.graph.predict_graph`.
    x : inputs, (B, in) for a matrix or (B, *input_shape) for a network (deterministic).
    hw : :class:`~memcim.config.HardwareConfig`, a preset name or file, or one per crossbar layer.
    calib_data : network inputs that calibrate every layer's ADC full scale
        (``adc.fs_mode = "calibrated"``), as :func:`memcim.nn.analog.convert_to_analog` does with
        the same argument; default: the mapping's standard normal calibration inputs.
    calib_inputs : for a matrix, the (batch, in) calibration inputs of :func:`map_matrix`.
    cov, rank, max_factors, full_below, full_linear, act_method, taylor_order : the moment
        propagation's settings (see :func:`memcim.analysis.moments.propagate`).
    fold_bn : fold BatchNorm into the preceding crossbar layer (MemSE's convention). Default False,
        as the analog conversion keeps BatchNorm digital.
    dtype : computation dtype. batch_chunk : process the inputs in chunks of this size.
    on_crossbar : optional callback ``f(index, layer, state_in, mean_weight, c)`` per crossbar layer.
    power : also predict the expected read power [W] of the devices and of the TIAs' feedback
        resistors on the plan (its arrays, levels with g_min, scheme, device moments over chips,
        ``v_read``, ``r_tia``, the DAC's input scale): the expectation of
        :func:`memcim.hardware.energy.bitline_power` (see :mod:`memcim.analysis.power`).
    t : read time [s] after programming, as ``chip.mvm(x, t=...)`` (default ``device.drift_t0``): the
        drift's mean decay and the spread of its exponent, the 1/f noise of a read at ``t``, and the
        drift compensation of ``hw.compensation`` (see "Time" in the module docstring).
    reference_inputs : for a matrix, the (batch, in) inputs of the compensation's reference reads, as
        given to :func:`memcim.simulate.program` (default: its 512 standard normal vectors, seed 0). A
        network's layers use their calibration rows, as :mod:`memcim.nn.analog` programs them.
    plans : the crossbar layers' plans from an earlier prediction of the same weights on the same hardware
        (``Prediction.plans``): the mapping is then not repeated (it is deterministic, so the result is the
        same). Default: map every layer.
    full_forks : for module graphs with ``TransformerEncoderLayer`` s, make each encoder layer's input
        residual explicit so the skip path stays correlated with the attention and feed-forward branches
        (:func:`memcim.analysis.graph.predict_graph`; about 2x the time, mnist-vit-tiny 0.97 / 0.93 of the
        Monte Carlo MSE on generic / noisy against 0.91 / 0.89 without). No effect on other models.

    Returns
    -------
    :class:`Prediction`.

    Raises
    ------
    ValueError / TypeError naming the parameter for a bad model, input, config or setting.
    """
    if cov not in mo.COV_MODES:
        raise ValueError(f"cov: {cov!r} is not allowed; choose one of {', '.join(mo.COV_MODES)}")
    if not (isinstance(rank, int) and rank >= 0):
        raise ValueError(f"rank: {rank!r} is not allowed; must be an integer >= 0")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: {dtype} is not allowed; use torch.float32 or torch.float64")
    if not isinstance(full_forks, bool):
        raise ValueError(f"full_forks: {full_forks!r} is not allowed; use True or False")
    analog = None
    matrix = not isinstance(model, (nn.Module, list))
    if matrix:
        W = as_matrix(model, "model")
        layers = [mo.CrossbarLayer("linear", W.t().to(dtype).contiguous(), torch.zeros(W.shape[1], dtype=dtype),
                                   name="W")]
        xt = mo._check_x(x)
        if xt.dim() != 2 or xt.shape[1] != W.shape[0]:
            raise ValueError(f"x: shape {tuple(xt.shape)} does not match W; expected (batch, {W.shape[0]})")
    else:
        if isinstance(model, nn.Module):
            try:
                layers = mo.parse_model(model, dtype, fold_bn=fold_bn)
            except ValueError:     # not a plain Sequential stack: the module-graph walker
                from memcim.analysis.graph import predict_graph

                return predict_graph(model, x, hw, calib_data=calib_data, cov=cov, rank=rank, max_factors=max_factors,
                                     full_below=full_below, full_linear=full_linear, act_method=act_method,
                                     taylor_order=taylor_order, dtype=dtype, batch_chunk=batch_chunk,
                                     on_crossbar=on_crossbar, power=power, t=t, fold_bn=fold_bn,
                                     full_forks=full_forks)
            analog = _analog_layers(model)
        else:
            layers = model
        xt = mo._check_x(x)
    xt = xt.to(dtype)
    xl = mo.crossbar_layers(layers)
    hws = _hardware_list(hw, len(xl), analog)
    if matrix:
        calib = [calib_inputs]
    elif calib_data is not None or analog is not None:
        if not isinstance(model, nn.Module):
            raise ValueError("calib_data: needs the model as an nn.Module (not parsed layers)")
        calib = _calibration_rows(model, calib_data, analog, hws[0])
        if calib is None or len(calib) != len(xl):
            raise ValueError("calib_data: the model's crossbar layers do not match its analog layers "
                             "(BatchNorm folding? use fold_bn=False)")
    else:
        calib = [None] * len(xl)
    if reference_inputs is not None and not matrix:
        raise ValueError("reference_inputs: only for a matrix; a network's analog layers read the default reference")
    times = [check_time(t, h.device) for h in hws]
    if plans is not None:
        plans = list(plans)
        if len(plans) != len(xl) or any((getattr(pl, "in_features", None), getattr(pl, "out_features", None)) !=
                                        (l.weight[0].numel(), l.weight.shape[0]) for pl, l in zip(plans, xl)):
            raise ValueError(f"plans: expected {len(xl)} plan(s) of these layers' shapes (Prediction.plans of an "
                             "earlier prediction of the same model and hardware)")
    lhs = []
    for i, (layer, h, cal, tt) in enumerate(zip(xl, hws, calib, times)):
        Wc = layer.weight.reshape(layer.weight.shape[0], -1).t().to(torch.float64)
        lhs.append(layer_hardware(Wc, h, calib_inputs=cal, t=tt, plan=None if plans is None else plans[i]))
    # the compensation's reference inputs: a matrix's (default 512 standard normal vectors); a network's
    # analog layers read their calibration rows (memcim.nn.analog), else the default
    refs = [reference_inputs] if matrix else list(calib)
    steps = [_HardwareStep(lh, layer, rank, max_factors, on_crossbar, i, power, reference_inputs=ref)
             for i, (lh, layer, ref) in enumerate(zip(lhs, xl, refs))]
    for s_ in steps:
        s_.keep_local = True     # run_layers understands channel-local factors (and returns dense ones)
    bc = batch_chunk or (xt.shape[0] if cov != "exact" else max(1, min(xt.shape[0], 8)))
    means, vars_ = [], []
    for s in range(0, xt.shape[0], bc):
        st = mo.run_layers(layers, xt[s:s + bc], lambda ix, layer, st: steps[ix](st), cov=cov,
                           full_below=full_below, full_linear=full_linear, act_method=act_method,
                           taylor_order=taylor_order)
        means.append(st.mean)
        vars_.append(st.var)
    mean, var = torch.cat(means), torch.cat(vars_)
    ref = mo.reference_output(layers, xt)
    b = xt.shape[0]
    mean, var, ref = mean.reshape(b, -1), var.reshape(b, -1), ref.reshape(b, -1)
    per = var + (mean - ref) ** 2
    cfg = {"hardware": [h.name for h in hws], "cov": cov, "rank": rank, "act_method": act_method,
           "taylor_order": taylor_order, "batch": int(b), "fold_bn": fold_bn, "t": times[0] if times else None,
           "compensation": [h.compensation.drift for h in hws]}
    pw = None
    if power:
        per_layer = [{"layer": l.name, "device_W": st_.power[0] / st_.power[2], "tia_W": st_.power[1] / st_.power[2],
                      "total_W": (st_.power[0] + st_.power[1]) / st_.power[2], "v_read_V": lh.hw.array.v_read,
                      "r_tia_ohm": lh.hw.array.r_tia} for st_, l, lh in zip(steps, xl, lhs)]
        pw = {"total_W": sum(p["total_W"] for p in per_layer), "device_W": sum(p["device_W"] for p in per_layer),
              "tia_W": sum(p["tia_W"] for p in per_layer),
              "units": "W: read power per input of the devices and the TIAs' feedback resistors, each read "
                       "lasting one time unit (energy per inference = this times t_read)",
              "per_layer": per_layer}
    return Prediction(mean, var, ref, per, float(per.mean()), float(per.max(1).values.mean()), power=pw, config=cfg,
                      layers=[dict(lh.summary(), layer=l.name) for lh, l in zip(lhs, xl)], plans=[lh.plan for lh in lhs])
