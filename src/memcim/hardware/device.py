"""Device physics, in one place: conductance levels, programming noise, stuck-at faults, random
telegraph noise, drift and 1/f read noise over time, and thermal/shot read noise.

Every fidelity level calls these functions: the simulator (:mod:`memcim.simulate`), the mapping
(:mod:`memcim.mapping`), the closed forms (:mod:`memcim.analysis`) and training (:mod:`memcim.nn`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from memcim.config import DeviceConfig


def quantize_conductance(g: torch.Tensor, dev: DeviceConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Round target conductances to the nearest programmable level.

    Parameters
    ----------
    g : target conductances [S]; values outside [g_min, g_max] are clipped to the window.
    dev : the device.

    Returns
    -------
    g_q : the programmed targets [S] (unchanged apart from clipping when ``dev.levels`` is None).
    level : the level index of every entry (int64), or None when continuous.
    """
    g = g.clamp(dev.g_min, dev.g_max)
    if dev.levels is None:
        return g, None
    level = level_index(g, dev)
    return dev.g_min + level.to(g.dtype) * dev.level_step, level


def level_index(g: torch.Tensor, dev: DeviceConfig) -> torch.Tensor | None:
    """Index of the nearest programmable level of each conductance [S] (int64), or None when
    continuous; ties round to even (``torch.round``)."""
    if dev.levels is None:
        return None
    return torch.round((g - dev.g_min) / dev.level_step).clamp(0, dev.levels - 1).to(torch.int64)


def quantize_array(g, dev: DeviceConfig) -> np.ndarray:
    """:func:`quantize_conductance` for numpy arrays: clip to the window and round to the levels [S]."""
    gq, _ = quantize_conductance(torch.from_numpy(np.asarray(g, dtype=np.float64)), dev)
    return gq.numpy()


def programming_sigma(g_target: torch.Tensor, level: torch.Tensor | None, dev: DeviceConfig) -> torch.Tensor:
    """Standard deviation [S] of the programmed conductance around each target."""
    if dev.prog_sigma_rel > 0:      # abs^2 + (rel g)^2, in place on one buffer
        var = dev.prog_sigma_rel * g_target
        var = var.mul_(var).add_(dev.prog_sigma_abs ** 2)
    else:
        var = torch.full_like(g_target, dev.prog_sigma_abs ** 2)
    if dev.prog_sigma_table is not None and level is not None:
        table = torch.tensor(dev.prog_sigma_table, dtype=g_target.dtype, device=g_target.device)
        var = var + table[level] ** 2
    if dev.prog_sigma_poly is not None:
        var = var + poly_sigma(g_target, dev) ** 2
    return var.sqrt_()


def poly_sigma(g: torch.Tensor, dev: DeviceConfig) -> torch.Tensor:
    """``max(0, sum_k c_k (G / g_max)**k)`` [S]: the programming sigma of ``dev.prog_sigma_poly``."""
    x = g / dev.g_max
    out = torch.zeros_like(g)
    for c in reversed(dev.prog_sigma_poly or ()):
        out = out * x + c
    return out.clamp_min(0.0)


# ------------------------------------------------------------------ time: drift and 1/f read noise
def check_time(t, dev: DeviceConfig, name: str = "t") -> float:
    """A read time [s]: finite and not before ``device.drift_t0`` (None means ``drift_t0``)."""
    if t is None:
        return dev.drift_t0
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not math.isfinite(float(t)):
        raise ValueError(f"{name}: {t!r} is not allowed; a read time is a finite number of seconds")
    t = float(t)
    if t < dev.drift_t0:
        raise ValueError(f"{name}: {t:g} s is before device.drift_t0 = {dev.drift_t0:g} s; a chip is read at "
                         "t >= drift_t0 after programming")
    return t


def drift_parameters(g: torch.Tensor, dev: DeviceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``mu(G)`` and standard deviation ``s(G)`` of the drift exponent of devices with target ``G``
    (see :class:`memcim.config.DeviceConfig`); devices at 0 S get the values at ``g_min`` (or 1e-9 g_max)."""
    floor = max(dev.g_min, 1e-9 * dev.g_max)
    lg = torch.log(g.clamp_min(floor) / dev.g_max)
    mu = (dev.drift_nu + dev.drift_nu_slope * lg).clamp(dev.drift_nu_min, dev.drift_nu_max)
    sd = (dev.drift_nu_std + dev.drift_nu_std_slope * lg).clamp(dev.drift_nu_std_min, dev.drift_nu_std_max)
    return mu, sd


def drift_exponents(g_target: torch.Tensor, dev: DeviceConfig, trials: int,
                    generator: torch.Generator) -> torch.Tensor:
    """One drift exponent per device and chip, ``nu ~ N(mu(G), s(G)^2)``, (trials, *g_target.shape)."""
    mu, sd = drift_parameters(g_target.detach(), dev)
    z = torch.randn((trials, *g_target.shape), generator=generator, dtype=g_target.dtype, device=g_target.device)
    return mu + sd * z


def drift_factor(nu: torch.Tensor, t: float, dev: DeviceConfig) -> torch.Tensor:
    """``(t / t0)**(-nu)``: what a conductance programmed at ``t0`` is multiplied by at time ``t``."""
    return torch.exp(-nu * math.log(t / dev.drift_t0))


def drift_moments(g: torch.Tensor, t: float, dev: DeviceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and second moment of the drift factor ``(t/t0)**(-nu)`` over devices with target ``G``:
    ``nu`` Gaussian makes it log-normal, ``E = exp(-mu L + s^2 L^2 / 2)``,
    ``E[f^2] = exp(-2 mu L + 2 s^2 L^2)`` with ``L = ln(t / t0)``."""
    mu, sd = drift_parameters(g, dev)
    L = math.log(t / dev.drift_t0)
    return torch.exp(-mu * L + 0.5 * (sd * L) ** 2), torch.exp(-2.0 * mu * L + 2.0 * (sd * L) ** 2)


def flicker_q(g_target: torch.Tensor, dev: DeviceConfig) -> torch.Tensor:
    """``Q(G_T) = min(q (G_T/g_max)**(-exp), q_max)``: the relative 1/f noise of devices with target ``G_T``."""
    x = (g_target / dev.g_max).clamp_min(1e-12)
    return (dev.read_1f_q * x.pow(-dev.read_1f_exp)).clamp_max(dev.read_1f_q_max)


def flicker_span(t: float, dev: DeviceConfig) -> float:
    """``ln((t + t_read) / (2 t_read))``: the 1/f variance factor of a read at time ``t``."""
    return max(math.log((t + dev.read_t_read) / (2.0 * dev.read_t_read)), 0.0)


def flicker_sigma(g: torch.Tensor, t: float, dev: DeviceConfig, g_target: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation [S] of the 1/f read noise of devices at conductance ``G`` read at time ``t``:
    ``G Q(G_T) sqrt(ln((t + t_read) / (2 t_read)))`` with ``Q`` at the target ``G_T`` (default ``G``)."""
    if not dev.has_read_1f:
        return torch.zeros_like(g)
    q = flicker_q(g if g_target is None else g_target, dev)
    return g.clamp_min(0.0) * q * math.sqrt(flicker_span(t, dev))


def program_devices(g_target: torch.Tensor, level: torch.Tensor | None, mask: torch.Tensor | None,
                    dev: DeviceConfig, trials: int, generator: torch.Generator,
                    programming: bool = True, stuck: bool = True, *, follows: bool = False):
    """Sample programmed conductances for ``trials`` independent chips.

    Every device gets independent Gaussian programming noise (see :func:`programming_sigma`),
    clipped at 0 S, then is independently stuck at g_min with probability ``dev.stuck_at_min`` or at
    g_max with probability ``dev.stuck_at_max``. Entries where ``mask`` is False are absent devices
    (tile padding) and stay at 0 S.

    The noise is drawn from the detached targets: the random numbers drawn, and so the chips, do not
    depend on whether ``g_target`` carries a gradient. If it does (hardware-aware training), a
    programmed device passes the gradient of its target through (``d g / d g_target = 1``, 0 where
    the noise clipped it at 0 S), a stuck or absent device passes none.

    ``follows=True`` also returns that derivative as a tensor of 0s and 1s of the result's shape and
    dtype (:func:`memcim.simulate.program` attaches the weights' gradient with it).

    The stuck devices are the independent Bernoulli(p) faults (``p = stuck_at_min + stuck_at_max``),
    drawn by the geometric gaps between them (:func:`bernoulli_positions`: about ``N p`` random numbers
    for ``N`` devices, not ``N``), each then at g_min or g_max with probabilities ``stuck_at_min / p``
    and ``stuck_at_max / p``.

    Returns
    -------
    Tensor of shape ``(trials, *g_target.shape)`` [S] (and the derivative with ``follows``).
    """
    shape = (trials, *g_target.shape)
    target = g_target.detach()
    dt, device = target.dtype, target.device
    keep = None
    follow = follows or g_target.requires_grad       # compute d g / d g_target
    if programming and dev.has_programming_noise:
        sigma = programming_sigma(target, level, dev)
        g = torch.randn(shape, generator=generator, dtype=dt, device=device)
        g.mul_(sigma).add_(target)                     # g_target + sigma * noise
        if follow:
            keep = torch.ge(g, 0.0, out=torch.empty(shape, dtype=dt, device=device))
        g.clamp_min_(0.0)
    else:
        g = target.unsqueeze(0).expand(shape).clone(memory_format=torch.contiguous_format)
    if stuck and (dev.stuck_at_min > 0 or dev.stuck_at_max > 0):
        p0, p = dev.stuck_at_min, dev.stuck_at_min + dev.stuck_at_max
        at = bernoulli_positions(g.numel(), p, generator, device)
        if at.numel():
            low = torch.rand(at.numel(), generator=generator, dtype=torch.float64, device=device) < p0 / p
            g.view(-1)[at] = torch.full((at.numel(),), dev.g_max, dtype=dt, device=device).masked_fill_(low, dev.g_min)
            if keep is not None:
                keep.view(-1)[at] = 0.0
            elif follow:
                keep = torch.ones(shape, dtype=dt, device=device)
                keep.view(-1)[at] = 0.0
    if follow and keep is None:
        keep = torch.ones(shape, dtype=dt, device=device)
    if mask is not None:
        mf, rect = float_mask(mask, dt, rectangle=True)
        for t in (g, keep) if keep is not None else (g,):
            if rect is None:
                t.mul_(mf)
            else:     # the devices fill a leading block of rows and columns: zero the rest (g * 0)
                t2 = t.view(-1, rect[2], t.shape[-1])
                if rect[0] < t2.shape[1]:
                    t2[:, rect[0]:] = 0.0
                if rect[1] < t2.shape[2]:
                    t2[:, :, rect[1]:] = 0.0
    if g_target.requires_grad:
        g = _Follow.apply(g_target, keep, [g])
    return (g, keep) if follows else g


def bernoulli_positions(n: int, p: float, generator: torch.Generator, device=None) -> torch.Tensor:
    """Indices (int64, increasing) of the successes among ``n`` independent Bernoulli(``p``) trials,
    drawn by their geometric gaps (about ``n p`` random numbers)."""
    if n <= 0 or p <= 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    if p >= 1:
        return torch.arange(n, device=device)
    mean = n * p
    chunk = int(mean + 6.0 * math.sqrt(mean) + 16)
    parts, last = [], -1.0
    while True:
        gaps = torch.empty(chunk, dtype=torch.float64, device=device).geometric_(p, generator=generator)
        pos = gaps.cumsum_(0).add_(last)                 # 0-based positions of the next successes
        inside = pos[pos < n]
        parts.append(inside)
        if inside.numel() < chunk:
            break
        last = float(pos[-1])
    return torch.cat(parts).to(torch.int64)


class _Follow(torch.autograd.Function):
    """Sampled conductances ``box[0]`` as a function of their targets: ``d g / d g_target = keep``
    (summed over the chips)."""

    @staticmethod
    def forward(ctx, g_target, keep, box):
        ctx.save_for_backward(keep)
        return box[0]

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return (grad * keep).sum(0), None, None


_MASKS: dict = {}


def float_mask(mask: torch.Tensor, dtype: torch.dtype, rectangle: bool = False):
    """``mask`` as 0s and 1s of ``dtype``, kept for the next call with the same mask tensor (a plan's
    masks are read by every chip programmed from it). With ``rectangle``, also ``(rows, cols, n_rows)``
    when the mask, seen as a matrix of ``n_rows`` rows (all but its last dimension flattened) by its
    last dimension, is True exactly on its first ``rows`` rows and ``cols`` columns (tile padding),
    else None."""
    key = (id(mask), dtype)
    hit = _MASKS.get(key)
    if hit is None or hit[0] is not mask or hit[1] != mask._version:
        out = mask.to(dtype)
        m2 = mask.reshape(-1, mask.shape[-1]) if mask.ndim else mask.reshape(1, 1)
        m2 = m2 if m2.dtype == torch.bool else m2 != 0
        r, c = int(m2.any(dim=1).sum()), int(m2.any(dim=0).sum())
        rect = (r, c, m2.shape[0]) if int(m2.sum()) == r * c and bool(m2[:r, :c].all()) else None
        if len(_MASKS) >= 32:
            _MASKS.pop(next(iter(_MASKS)))
        hit = _MASKS[key] = (mask, mask._version, out, rect)
    return (hit[2], hit[3]) if rectangle else hit[2]


def rtn_factor(shape, dev: DeviceConfig, generator: torch.Generator, *, dtype=torch.float32,
               device=None) -> torch.Tensor | None:
    """One snapshot of random telegraph noise: the factor each device's conductance is multiplied by.

    Each device independently sits in its low state, ``g (1 - rtn_amplitude)``, with probability
    ``rtn_probability``, else at its programmed value. Mean factor ``1 - p A``, variance
    ``p (1 - p) A^2``. Returns None when RTN is off.
    """
    if not dev.has_rtn:
        return None
    low = torch.rand(shape, generator=generator, dtype=dtype, device=device) < dev.rtn_probability
    return 1.0 - dev.rtn_amplitude * low.to(dtype)


def conductance_moments(g: torch.Tensor, level: torch.Tensor | None, mask: torch.Tensor, dev,
                        t: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance [S, S^2] of programmed conductances over chips and reads: the closed form of
    :func:`program_devices`, then (at a read time ``t``) the drift factor and the 1/f read noise, then
    :func:`rtn_factor`.

    Parameters
    ----------
    g : targets [S] (level-rounded, from the plan). level : their level indices or None.
    mask : where a device exists (absent devices: mean and variance 0).
    dev : :class:`memcim.config.DeviceConfig`.

    Returns
    -------
    (mean, var), both shaped like ``g``: Gaussian programming noise clipped at 0 S (a rectified
    Gaussian), then stuck at g_min / g_max with probabilities ``stuck_at_min`` / ``stuck_at_max``,
    then, at time ``t`` (default ``device.drift_t0``: no drift, 1/f noise of a read at ``t0``), the
    drift factor (independent of the programming noise; :func:`drift_moments`) and the 1/f noise
    (variance ``Q(G_T)^2 ln(...) E[G(t)^2]``, exact), then the RTN factor (mean ``1 - pA``, second moment
    ``1 - 2pA + pA^2``).
    """
    if dev.has_programming_noise:
        # Gaussian programming noise, clipped at 0 S as the simulator clips it (rectified Gaussian)
        sd = programming_sigma(g, level, dev)
        pos = sd > 0
        sds = torch.where(pos, sd, torch.ones_like(sd))
        z = g / sds
        cdf, pdf = torch.special.ndtr(z), torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        mean = torch.where(pos, g * cdf + sd * pdf, g.clamp_min(0.0))
        second = torch.where(pos, (g * g + sd * sd) * cdf + g * sd * pdf, g.clamp_min(0.0) ** 2)
        var = (second - mean * mean).clamp_min(0.0)
    else:
        mean, var = g, torch.zeros_like(g)
    p0, p1 = dev.stuck_at_min, dev.stuck_at_max
    if p0 > 0 or p1 > 0:
        keep = 1.0 - p0 - p1
        second = keep * (mean * mean + var) + p0 * dev.g_min ** 2 + p1 * dev.g_max ** 2
        mean = keep * mean + p0 * dev.g_min + p1 * dev.g_max
        var = (second - mean * mean).clamp_min(0.0)
    t = check_time(t, dev)
    if dev.has_drift and t != dev.drift_t0:
        f1, f2 = drift_moments(g, t, dev)
        second = f2 * (var + mean * mean)
        mean = f1 * mean
        var = (second - mean * mean).clamp_min(0.0)
    if dev.has_read_1f:  # sigma = G(t) Q(G_T) sqrt(span): variance Q^2 span E[G(t)^2], exact
        var = var + flicker_q(g, dev) ** 2 * flicker_span(t, dev) * (var + mean * mean)
    if dev.has_rtn:
        a, p = dev.rtn_amplitude, dev.rtn_probability
        f1, f2 = 1.0 - p * a, 1.0 - 2.0 * p * a + p * a * a
        second = f2 * (var + mean * mean)
        mean = f1 * mean
        var = (second - mean * mean).clamp_min(0.0)
    m = mask.to(g.dtype)
    return mean * m, var * m


def read_noise_coefficients(dev: DeviceConfig, v_read: float) -> tuple[float, float]:
    """Read-noise variance per unit conductance, in the units of ``j = I / v_read`` [S]:
    ``var(j) = k_thermal * sum_i G_ij + k_shot * sum_i |u_i| G_ij`` (0 for a noise switched off).

    ``k_thermal = 4 k T B / v_read^2`` [S], ``k_shot = 2 q B / v_read`` [S]; the same physics as
    :func:`read_noise_variance`, which is ``v_read^2`` times this.
    """
    k_th = dev.thermal_psd / v_read ** 2 if dev.thermal_noise else 0.0
    k_sh = dev.shot_psd / v_read if dev.shot_noise else 0.0
    return k_th, k_sh


def read_noise_variance(g_sum: torch.Tensor, abs_current_per_volt: torch.Tensor | None, v_read: float,
                        dev: DeviceConfig, *, inplace: bool = False) -> torch.Tensor | None:
    """Variance [A^2] of a column's read current from thermal and shot noise.

    Parameters
    ----------
    g_sum : total conductance on the column, sum_i G_ij [S] (thermal noise flows through every
        device, driven or not).
    abs_current_per_volt : sum_i |u_i| G_ij [S], the column's device current magnitude divided by
        v_read (shot noise follows each device's own current |v_i| G_ij).
    v_read : full-scale word-line voltage [V].
    inplace : overwrite ``abs_current_per_volt`` with the result (saves a pass and an allocation
        on large batches).

    Returns
    -------
    ``4 k T B * g_sum + 2 q B * v_read * abs_current_per_volt``, or None when both are switched off.
    """
    var = None
    if dev.thermal_noise:
        var = dev.thermal_psd * g_sum
    if dev.shot_noise and abs_current_per_volt is not None:
        k = dev.shot_psd * v_read
        if inplace:
            shot = abs_current_per_volt.mul_(k)
            var = shot if var is None else shot.add_(var)
        else:
            shot = k * abs_current_per_volt
            var = shot if var is None else var + shot
    return var
