"""Closed form of bit-sliced crossbar layers (``hw.slicing``), the step :func:`memcim.analysis.predict.predict`
takes for a sliced layer.

The sliced output is ``y = sum_k a_k Y_k + a_o sum_i x^_i + bias`` with ``a_k = s_w 2**S_k`` (the
slice's significance times the weight step, per output column) and ``a_o = s_w o`` the digital
offset (:mod:`memcim.mapping.slicing`). Every slice ``Y_k`` is an ordinary crossbar read of its
own plan, so its moments come from the one per-layer closed form
(:class:`memcim.analysis.predict._HardwareStep`: device moments, read noise, DAC, the ADC's exact
quantizer moments per array) and the slices combine as

    E[y]   = sum_k a_k E[Y_k] + a_o sum_i x^_i + bias
    Var[y] = sum_k a_k^2 Var[Y_k] + sum_{k != l} a_k a_l s_k s_l Cov_x(x M_k, x M_l)

the second term only for random inputs (a network's hidden layers): the slices read the same
inputs and the same DAC rounding of them, so their input-driven parts are correlated, each through
its own ADC's mean slope ``s_k`` (first order, Stein's lemma, as the row tiles of one slice are
combined); the digital offset is one more term (``M = 1``, ``a = a_o``, ``s = 1``). ``Cov_x``
includes the DAC rounding, ``(x_s/K)^2/12 sum_i P(x_i != 0) M_ki M_li``. Programming noise, stuck devices and read noise are independent between
slices (separate devices, separate reads): their variances add, each scaled by its significance
squared (Xiao et al., IEEE Circuits Syst. Mag. 22(4), 2022, Sec. 5: the error of a slice is
amplified by its significance), and every ADC adds its own rounding at its own step.

Bit-serial inputs (deterministic inputs: a matrix, or a network's first crossbar layer; linear
layers): slice ``k`` reads every cycle ``u_j`` with weight ``w_j`` (:func:`memcim.mapping.slicing.input_drives`),
each read converted by the slice's ADCs, so

    E[Y_k]   = sum_j w_j E[Q_kj]
    Var[Y_k] = sum_j w_j^2 Var[Q_kj] + 2 sum_{j<l} w_j w_l Cov(Q_kj, Q_kl)

where ``Q_kj`` is the ADC output of cycle ``j`` (the per-cycle closed form with the DAC bypassed).
The cycles of one chip share its programming noise, so two cycles' partial sums on one array are
jointly Gaussian with correlation ``rho = sum_i u_ij u_il s2_i / (sd_j sd_l)``, and Mehler's formula
gives the covariance after the two staircases exactly as a series,
``Cov = sum_n rho^n / n! A_n(j) A_n(l)``, ``A_n = E[Q(Y) He_n(Z)] = sum_t dq_t He_{n-1}(z_t) phi(z_t)``
over the staircase's jumps (:data:`HERMITE_TERMS` terms; a partial sum wider than two ADC steps keeps
the first, the slope). The first term alone (the slopes) misses up to 5 % of the MSE when a cycle's
noise stays under one ADC step (MNIST layer 1, 2-bit cycles, 6-bit ADC).
Random inputs with bit-serial cycles are not supported (their digits are not Gaussian).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from memcim.analysis import moments as mo
from memcim.config import SlicingConfig
from memcim.hardware.converters import dac_convert
from memcim.mapping.slicing import SlicedPlan, input_drives

__all__ = ["SlicedHardware", "sliced_layer_hardware", "sliced_read"]


@dataclass
class SlicedHardware:
    """The closed form's view of a sliced matrix: one :class:`~memcim.analysis.predict.LayerHardware`
    per slice, their coefficients ``a_k`` (N, out) and the digital offset coefficient ``a_o`` (out,)."""

    plan: SlicedPlan
    slices: list
    coef: torch.Tensor
    offset: torch.Tensor


def sliced_layer_hardware(plan, hw, *, t=None):
    """The :class:`~memcim.analysis.predict.LayerHardware` of a sliced plan: the recombined mean
    weight ``sum_k a_k W~_k + a_o`` and variance ``sum_k a_k^2 s2_k`` (slices are independent), the
    first slice's tiling, and the per-slice views in ``sliced``."""
    from memcim.analysis.predict import LayerHardware, layer_hardware

    if not isinstance(plan, SlicedPlan):
        raise TypeError(f"plan: expected a SlicedPlan for hw with slicing, got {type(plan).__name__}")
    base = dataclasses.replace(hw, slicing=SlicingConfig())
    views = [layer_hardware(None, base, plan=p, t=t) for p in plan.slices]
    m = plan.out_features
    sw = plan.weight_step[:m].to(torch.float64)
    coef = torch.stack([a * sw for a in plan.significance])                 # (N, out)
    off = plan.offset * sw                                                   # (out,)
    weight = sum(c * v.weight for c, v in zip(coef, views)) + off
    s2 = sum(c * c * v.s2 for c, v in zip(coef, views))
    v0 = views[0]
    return LayerHardware(hw=hw, plan=plan, weight=weight, s2=s2, gs_c2=v0.gs_c2, gsum_c2=v0.gsum_c2, fs=v0.fs,
                         tile_rows=v0.tile_rows, n_row_tiles=v0.n_row_tiles, t=v0.t,
                         sliced=SlicedHardware(plan, views, coef, off))


def _slice_steps(step):
    """Per slice: the parallel read's step, and (bit-serial) the per-cycle step with the DAC bypassed."""
    from memcim.analysis.predict import _HardwareStep, _torch_layout

    if getattr(step, "_slices", None) is None:
        S, layer = step.lh.sliced, step.layer
        power = step.power is not None
        out = []
        for v in S.slices:
            lay = dataclasses.replace(layer, weight=_torch_layout(v.weight, layer),
                                      bias=torch.zeros_like(layer.bias))
            par = _HardwareStep(v, lay, step.rank, step.max_factors, None, step.index, power,
                                reference_inputs=step.reference_inputs)
            cyc = None
            if S.plan.cycles:
                hw_c = v.hw.replace(dac={"enabled": False, "x_range": 1.0})
                cyc = _HardwareStep(dataclasses.replace(v, hw=hw_c), lay, step.rank, step.max_factors, None,
                                    step.index, power)
            out.append((par, cyc))
        step._slices = out
    return step._slices


#: Hermite terms of the covariance of two quantized cycle reads
HERMITE_TERMS = 16


def _hermite_coefficients(m, v, step, adc, n_terms: int) -> list:
    """``A_n = E[Q(Y) He_n(Z)]``, ``n = 1..n_terms``, of the ADC output ``Q(Y)``, ``Y = m + sqrt(v) Z``:
    ``sum_t dq_t He_{n-1}(z_t) phi(z_t)`` over the staircase's jumps ``dq_t`` at ``z_t`` (inputs narrower
    than two steps, the levels of :func:`memcim.analysis.predict.quantizer_moments`); wider inputs keep
    the first term, ``sqrt(v)`` times the mean slope (the rounding then decorrelates)."""
    from memcim.analysis.predict import _NARROW, _WINDOW, _cdf, _phi
    from memcim.hardware.converters import adc_convert

    m, v, step = (t.contiguous() for t in torch.broadcast_tensors(m, v.clamp_min(0.0), step))
    sd = v.sqrt()
    K = adc.steps
    out = [torch.zeros_like(m) for _ in range(n_terms)]
    narrow = (sd < _NARROW * step) & (sd > 0)
    wide = sd >= _NARROW * step
    if bool(wide.any()):
        mw, sw, fw = m[wide], sd[wide], step[wide] * K
        pin = (_cdf((fw - mw) / sw) - _cdf((-fw - mw) / sw)) if adc.saturate else torch.ones_like(mw)
        out[0][wide] = sw * pin
    if bool(narrow.any()):
        mn, sn, stn = m[narrow], sd[narrow], step[narrow]
        ks = torch.round(mn / stn).unsqueeze(-1) + torch.arange(-_WINDOW, _WINDOW + 1, dtype=m.dtype, device=m.device)
        q = adc_convert(ks * stn.unsqueeze(-1), (stn * K).unsqueeze(-1), adc)
        dq = q[..., 1:] - q[..., :-1]
        z = ((ks[..., :-1] + 0.5) * stn.unsqueeze(-1) - mn.unsqueeze(-1)) / sn.unsqueeze(-1)
        ph = _phi(z)
        h_prev, h = torch.zeros_like(z), torch.ones_like(z)         # He_{-1} = 0, He_0 = 1
        for n in range(1, n_terms + 1):
            out[n - 1][narrow] = (dq * h * ph).sum(-1)
            h_prev, h = h, z * h - (n - 1) * h_prev if n > 1 else z * h   # He_n = z He_{n-1} - (n-1) He_{n-2}
    return out


def _cycle_covariance(uj, ul, sj, sl, tiles_j, tiles_l, s2, op, adc):
    """Cov(Q_j, Q_l) of two cycles of one slice (deterministic drives ``u``), whose partial sums share
    the chip's per-weight noise ``s2``: the first Hermite term (slopes) without an ADC or per-array
    moments; with them, per array ``sum_n rho^n / n! A_n(j) A_n(l)`` (Mehler's formula), ``rho`` the
    partial sums' correlation."""
    if tiles_j is None:
        return sj * sl * op(uj * ul, s2)
    cov = 0.0
    for (mj, vj, stj, mk), (ml, vl, stl, _) in zip(tiles_j, tiles_l):
        c = op(uj * ul, s2 if mk is None else s2 * mk)
        dj, dl = vj.clamp_min(0).sqrt(), vl.clamp_min(0).sqrt()
        ok = (dj > 0) & (dl > 0)
        rho = torch.where(ok, c / torch.where(ok, dj * dl, torch.ones_like(dj)), torch.zeros_like(c)).clamp(-1, 1)
        aj = _hermite_coefficients(mj, vj, stj, adc, HERMITE_TERMS)
        al = _hermite_coefficients(ml, vl, stl, adc, HERMITE_TERMS)
        term, fact = rho, 1.0
        for n in range(HERMITE_TERMS):
            fact *= n + 1
            cov = cov + term / fact * aj[n] * al[n]
            term = term * rho
    return cov


def _bit_serial(par, cyc, st: mo.Moments, hw, cycles, op):
    """One slice's bit-serial read of a deterministic linear-layer input: (mean, var) (B, out)."""
    x = st.mean
    drives = input_drives(x, hw, cycles)
    mean = var = 0.0
    s2 = par.s2_full
    reads = []
    for u, w in drives:
        o = cyc._read_moments(mo.Moments(u, torch.zeros_like(u), st.mode))
        mean = mean + w * o.mean
        var = var + w * w * o.var
        reads.append((u, w, cyc.last_slope, getattr(cyc, "last_tiles", None) if hw.adc.enabled else None))
    # the cycles of one chip share its programming noise: per array, Cov(Q_j, Q_l) from the Hermite
    # series of the two quantized, jointly Gaussian partial sums
    for j in range(len(reads)):
        for l in range(j + 1, len(reads)):
            (uj, wj, sj, tj), (ul, wl, sl, tl) = reads[j], reads[l]
            var = var + 2.0 * wj * wl * _cycle_covariance(uj, ul, sj, sl, tj, tl, s2, op, hw.adc)
    return mean, var.clamp_min(0.0)


def sliced_read(step, st: mo.Moments) -> mo.Moments:
    """The moments of a sliced layer's output for input moments ``st`` (see the module docstring)."""
    from memcim.analysis.predict import _col, _is_deterministic, _op, _per_read, _through_slope

    lh, layer = step.lh, step.layer
    S = lh.sliced
    hw = lh.hw
    op = _op(layer)
    det = _is_deterministic(st)
    cycles = S.plan.cycles
    steps = _slice_steps(step)
    if cycles:
        if not det:
            raise ValueError("slicing.input_mode: the closed form of 'bit_serial' inputs needs deterministic inputs "
                             "(a matrix, or a network's first crossbar layer); predict the hidden layers with "
                             "'parallel' or run the Monte Carlo")
        if layer.kind != "linear":
            raise ValueError("slicing.input_mode: the closed form of 'bit_serial' inputs covers linear layers only")
        if hw.compensation.drift != "none":
            raise ValueError("compensation.drift: the closed form of 'bit_serial' inputs has no drift compensation; "
                             "set compensation.drift = 'none' or run the Monte Carlo")
    if step.on_crossbar is not None:
        step.on_crossbar(step.index, layer, st, step.W, step._scale_c())
    means, vars_, slopes = [], [], []
    for par, cyc in steps:
        if cycles:
            m_, v_ = _bit_serial(par, cyc, st, hw, cycles, op)
            means.append(m_)
            vars_.append(v_)
            slopes.append(1.0)
        else:
            o = par(st)
            means.append(o.mean)
            vars_.append(o.var)
            slopes.append(par.last_slope)
    coef = [_col(c.to(st.mean.dtype), layer) for c in S.coef]
    mean = sum(a * m_ for a, m_ in zip(coef, means))
    var = sum(a * a * v_ for a, v_ in zip(coef, vars_))
    # the digital offset a_o sum_i x^_i (the input's DAC reconstruction, as the chip computes it)
    if bool((S.offset != 0).any()):
        x = st.mean
        if hw.dac.enabled and det and layer.kind == "linear":
            u, xs = dac_convert(x.reshape(x.shape[0], -1), hw.dac)
            x = (u * xs).reshape(x.shape)
        ones = torch.ones_like(layer.weight[:1])
        mean = mean + _col(S.offset.to(st.mean.dtype), layer) * op(x, ones)
    # the slices read the same random inputs: their input-driven parts are correlated
    wsum = sum(a * a * v_ for a, v_ in zip(coef, vars_))
    slv = sum(a * a * s * v_ for a, s, v_ in zip(coef, slopes, vars_))
    wsafe = torch.where(wsum > 0, wsum, torch.ones_like(wsum))
    slope = torch.where(wsum > 0, slv / wsafe, torch.ones_like(wsum))
    out_c = mo._crossbar_step(st, layer, step.W, step.s2, step.rank, step.max_factors)
    if not det:
        # the slices read the same random inputs (and the same DAC rounding of them): their parts
        # driven by the inputs are correlated, each through its own ADC's slope; the digital offset
        # term a_o sum_i x^_i is one more such part, exact (slope 1). First order in the slopes:
        # sum_{k != l} a_k a_l s_k s_l Cov_x(x M_k, x M_l), by polarisation of the linear variances
        lin = lambda w: mo._lin_var(st, lambda x: op(x, w), lambda x: op(x, w * w))
        rounding = None
        if hw.dac.enabled:
            if hw.dac.x_range is not None:
                xs = torch.tensor(float(hw.dac.x_range), dtype=st.mean.dtype)
            else:
                xs = _per_read(layer, st.second_moment().sqrt())
                xs = torch.where(xs > 0, xs, torch.ones_like(xs))
            nz = st.nonzero if st.nonzero is not None else torch.ones_like(st.mean)
            rounding = (xs / hw.dac.steps) ** 2 / 12.0

        def cov_in(wa, wb):
            c = 0.5 * (lin(wa + wb) - lin(wa) - lin(wb))
            return c if rounding is None else c + rounding * op(nz, wa * wb)

        terms = [(a, p.W, s_) for a, (p, _), s_ in zip(coef, steps, slopes)]
        if bool((S.offset != 0).any()):
            ones = torch.ones_like(layer.weight)
            a_o = _col(S.offset.to(st.mean.dtype), layer)
            terms.append((a_o, ones, 1.0))
            var = var + a_o * a_o * cov_in(ones, ones)
        for i in range(len(terms)):
            for j in range(i + 1, len(terms)):
                (ai, wi, si), (aj, wj, sj) = terms[i], terms[j]
                var = var + 2.0 * ai * aj * si * sj * cov_in(wi, wj)
        var = var.clamp_min(0.0)
    if step.power is not None:
        parts = [s_ for pair in steps for s_ in pair if s_ is not None]
        step.power[0] = sum(p.power[0] for p in parts)
        step.power[1] = sum(p.power[1] for p in parts)
        step.power[2] = steps[0][0].power[2] if not cycles else step.power[2] + st.mean.shape[0]
    return _through_slope(mean + _col(layer.bias, layer), var, out_c, slope)
