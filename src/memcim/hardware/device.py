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
    var = torch.full_like(g_target, dev.prog_sigma_abs ** 2)
    if dev.prog_sigma_rel > 0:
        var = var + (dev.prog_sigma_rel * g_target) ** 2
    if dev.prog_sigma_table is not None and level is not None:
        table = torch.tensor(dev.prog_sigma_table, dtype=g_target.dtype, device=g_target.device)
        var = var + table[level] ** 2
    if dev.prog_sigma_poly is not None:
        var = var + poly_sigma(g_target, dev) ** 2
    return var.sqrt()


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
                    programming: bool = True, stuck: bool = True) -> torch.Tensor:
    """Sample programmed conductances for ``trials`` independent chips.

    Every device gets independent Gaussian programming noise (see :func:`programming_sigma`),
    clipped at 0 S, then is independently stuck at g_min with probability ``dev.stuck_at_min`` or at
    g_max with probability ``dev.stuck_at_max``. Entries where ``mask`` is False are absent devices
    (tile padding) and stay at 0 S.

    ``g_target`` may carry a gradient (hardware-aware training): the noise is drawn from its
    detached values, so a programmed device passes the gradient of its target through, and a stuck
    device passes none. The random numbers drawn, and so the chips, do not depend on it.

    Returns
    -------
    Tensor of shape ``(trials, *g_target.shape)`` [S].
    """
    shape = (trials, *g_target.shape)
    g = g_target.unsqueeze(0).expand(shape)
    if programming and dev.has_programming_noise:
        # the noise is detached: a g_target that carries a gradient (training, memcim.simulate.program's
        # ``weights``) gets d g / d g_target = 1 (0 where clipped at 0 S)
        sigma = programming_sigma(g_target.detach(), level, dev)
        noise = torch.randn(shape, generator=generator, dtype=g_target.dtype, device=g_target.device)
        g = (g + sigma * noise).clamp_min(0.0)
    else:
        g = g.clone()
    if stuck and (dev.stuck_at_min > 0 or dev.stuck_at_max > 0):
        u = torch.rand(shape, generator=generator, dtype=g_target.dtype, device=g_target.device)
        g = torch.where(u < dev.stuck_at_min, torch.full_like(g, dev.g_min), g)
        g = torch.where((u >= dev.stuck_at_min) & (u < dev.stuck_at_min + dev.stuck_at_max),
                        torch.full_like(g, dev.g_max), g)
    if mask is not None:
        g = g * mask.to(g.dtype)
    return g


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
