"""Device physics: conductance levels, programming noise, stuck-at faults and read noise."""
from __future__ import annotations

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
    step = (dev.g_max - dev.g_min) / (dev.levels - 1)
    level = torch.round((g - dev.g_min) / step).clamp(0, dev.levels - 1).to(torch.int64)
    return dev.g_min + level.to(g.dtype) * step, level


def programming_sigma(g_target: torch.Tensor, level: torch.Tensor | None, dev: DeviceConfig) -> torch.Tensor:
    """Standard deviation [S] of the programmed conductance around each target."""
    var = torch.full_like(g_target, dev.prog_sigma_abs ** 2)
    if dev.prog_sigma_rel > 0:
        var = var + (dev.prog_sigma_rel * g_target) ** 2
    if dev.prog_sigma_table is not None and level is not None:
        table = torch.tensor(dev.prog_sigma_table, dtype=g_target.dtype, device=g_target.device)
        var = var + table[level] ** 2
    return var.sqrt()


def program_devices(g_target: torch.Tensor, level: torch.Tensor | None, mask: torch.Tensor | None,
                    dev: DeviceConfig, trials: int, generator: torch.Generator,
                    programming: bool = True, stuck: bool = True) -> torch.Tensor:
    """Sample programmed conductances for ``trials`` independent chips.

    Every device gets independent Gaussian programming noise (see :func:`programming_sigma`),
    clipped at 0 S, then is independently stuck at g_min with probability ``dev.stuck_at_min`` or at
    g_max with probability ``dev.stuck_at_max``. Entries where ``mask`` is False are absent devices
    (tile padding) and stay at 0 S.

    Returns
    -------
    Tensor of shape ``(trials, *g_target.shape)`` [S].
    """
    shape = (trials, *g_target.shape)
    g = g_target.unsqueeze(0).expand(shape)
    if programming and dev.has_programming_noise:
        sigma = programming_sigma(g_target, level, dev)
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


def read_noise_variance(g_sum: torch.Tensor, abs_current_per_volt: torch.Tensor | None, v_read: float,
                        dev: DeviceConfig) -> torch.Tensor | None:
    """Variance [A^2] of a column's read current from thermal and shot noise.

    Parameters
    ----------
    g_sum : total conductance on the column, sum_i G_ij [S] (thermal noise flows through every
        device, driven or not).
    abs_current_per_volt : sum_i |u_i| G_ij [S], the column's device current magnitude divided by
        v_read (shot noise follows each device's own current |v_i| G_ij).
    v_read : full-scale word-line voltage [V].

    Returns
    -------
    ``4 k T B * g_sum + 2 q B * v_read * abs_current_per_volt``, or None when both are switched off.
    """
    var = None
    if dev.thermal_noise:
        var = dev.thermal_psd * g_sum
    if dev.shot_noise and abs_current_per_volt is not None:
        shot = dev.shot_psd * v_read * abs_current_per_volt
        var = shot if var is None else var + shot
    return var
