"""Programmed conductances: moments of the programming noise, stuck-at fractions, quantization.

Tolerances: a sample mean of N draws has standard error sigma/sqrt(N); a sample variance has
relative standard error sqrt(2/(N-1)). Assertions allow 5 standard errors, with fixed seeds.
"""
import math

import numpy as np
import pytest
import torch

from memcim.config import HardwareConfig
from memcim.mapping.crossbar import map_matrix
from memcim.simulate import program

N_DEV = 64 * 64  # devices per chip in the tests below (one array, differential -> 2 x 64 x 64 x ... )


def _uniform_chip(device_kw, value=1.0, trials=50, seed=0):
    """Every weight = value: the positive devices all share one target conductance."""
    hw = HardwareConfig(device=device_kw, array={"rows": 64, "cols": 128})
    W = np.full((64, 64), value)
    m = map_matrix(W, hw)
    chip = program(m, seed=seed, trials=trials, dtype=torch.float64)
    return m, chip


@pytest.mark.parametrize("kw, sigma_of", [
    (dict(prog_sigma_abs=2e-6), lambda g: 2e-6),
    (dict(prog_sigma_rel=0.05), lambda g: 0.05 * g),
    (dict(prog_sigma_abs=1e-6, prog_sigma_rel=0.03), lambda g: math.sqrt(1e-12 + (0.03 * g) ** 2)),
])
def test_programming_noise_moments(kw, sigma_of):
    m, chip = _uniform_chip(kw)
    target = float(m.g_pos[0, 0, 0])
    assert target == pytest.approx(1e-4)  # weight = max|W| -> g_max
    g = chip.g_pos.flatten()
    n = g.numel()
    sigma = sigma_of(target)
    assert abs(float(g.mean()) - target) < 5 * sigma / math.sqrt(n)
    assert abs(float(g.var()) / sigma ** 2 - 1) < 5 * math.sqrt(2 / (n - 1))
    # the negative devices sit at g_min = 1 uS
    gn = chip.g_neg.flatten()
    sn = sigma_of(1e-6)
    clipped_share = float((gn == 0).double().mean())
    if sn < 1e-6 / 5:  # clipping at 0 S negligible: moments are Gaussian
        assert abs(float(gn.mean()) - 1e-6) < 5 * sn / math.sqrt(n)
        assert clipped_share == 0.0


def test_programming_noise_table_per_level():
    table = (1e-6, 2e-6, 4e-6)
    hw = HardwareConfig(device={"levels": 3, "prog_sigma_table": table, "g_min": 0.0, "g_max": 1e-4},
                        array={"rows": 64, "cols": 128})
    W = np.tile(np.array([1.0, 0.5, 0.0, -1.0]), (64, 16))  # levels 2, 1, 0 on the positive side
    m = map_matrix(W, hw)
    chip = program(m, seed=3, trials=60, dtype=torch.float64)
    for col, lvl in ((0, 2), (1, 1)):
        g = chip.g_pos[:, 0, :, col::4].flatten()
        n = g.numel()
        assert float(m.g_pos[0, 0, col]) == pytest.approx(lvl * 5e-5)
        assert abs(float(g.std()) / table[lvl] - 1) < 5 * math.sqrt(1 / (2 * (n - 1)))


def test_stuck_at_fractions():
    hw = HardwareConfig(device=dict(stuck_at_min=0.02, stuck_at_max=0.05), array={"rows": 64, "cols": 128})
    W = np.full((64, 64), 0.5)
    W[:, -1] = 1.0  # sets the scale; the other devices sit mid-window
    m = map_matrix(W, hw)
    g = program(m, seed=0, trials=20, dtype=torch.float64).g_pos[..., :63].flatten()
    n = g.numel()
    mid = float(m.g_pos[0, 0, 0])
    assert 1e-6 < mid < 1e-4
    for p, level in ((0.02, 1e-6), (0.05, 1e-4), (0.93, mid)):
        frac = float((g == level).double().mean())
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_quantization_to_levels():
    hw = HardwareConfig(device={"levels": 5, "g_min": 0.0, "g_max": 4e-6})
    W = np.array([[1.0, 0.3, 0.2, -0.6, 0.0]])
    m = map_matrix(W, hw)
    # c = 4 uS per unit; targets 4, 1.2, 0.8, 2.4 uS -> nearest of {0, 1, 2, 3, 4} uS
    assert np.allclose(m.g_pos[0, 0, :5].numpy(), [4e-6, 1e-6, 1e-6, 0.0, 0.0])
    assert np.allclose(m.g_neg[0, 0, :5].numpy(), [0.0, 0.0, 0.0, 2e-6, 0.0])
    assert np.allclose(m.realized().numpy(), [[1.0, 0.25, 0.25, -0.5, 0.0]])


def test_reproducible_and_independent_chips():
    m, _ = _uniform_chip(dict(prog_sigma_rel=0.05), trials=1)
    a = program(m, seed=7, trials=2).g_pos
    b = program(m, seed=7, trials=2).g_pos
    c = program(m, seed=8, trials=2).g_pos
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a[0], a[1])


def test_conductance_moments_match_sampled_devices():
    """The closed-form device moments against the sampling functions they describe
    (program_devices, then rtn_factor), on targets near 0 S (clipped), with stuck devices, a
    per-level table and RTN. Tolerance: 4.5 standard errors, Bonferroni over 2 x 6 comparisons."""
    from memcim.config import DeviceConfig
    from memcim.hardware.device import conductance_moments, program_devices, quantize_conductance, rtn_factor

    dev = DeviceConfig(g_min=0.0, g_max=1e-4, levels=6, prog_sigma_abs=1e-5, prog_sigma_rel=0.1,
                       prog_sigma_table=(2e-6, 0, 0, 0, 0, 3e-6), stuck_at_min=0.02, stuck_at_max=0.03,
                       rtn_amplitude=0.3, rtn_probability=0.4)
    g, level = quantize_conductance(torch.linspace(0, 1e-4, 6, dtype=torch.float64), dev)
    mask = torch.ones(6, dtype=torch.bool)
    n = 40000
    gen = torch.Generator().manual_seed(5)
    s = program_devices(g, level, mask, dev, n, gen)
    s = s * rtn_factor(s.shape, dev, gen, dtype=s.dtype)
    mean, var = conductance_moments(g, level, mask, dev)
    m_mc, v_mc = s.mean(0), s.var(0)
    se_m = (v_mc / n).sqrt()
    se_v = (((s - m_mc) ** 4).mean(0) - v_mc ** 2).clamp_min(0).div(n).sqrt()
    assert bool(((mean - m_mc).abs() <= 4.5 * se_m).all())
    assert bool(((var - v_mc).abs() <= 4.5 * se_v).all())
    # the clip at 0 S matters here: without it the first device's mean would be off by many SE
    unclipped = (1 - 0.05) * g[0] + 0.03 * 1e-4
    assert abs(float(m_mc[0]) - float(unclipped * (1 - 0.4 * 0.3))) > 10 * float(se_m[0])
