"""Device physics over time (issue 14), checked against hand derivations and Monte Carlo.

Drift: a device programmed to G at t0 reads G (t/t0)^-nu, nu ~ N(mu(G), s(G)^2) drawn once per
device, mu(G) = nu0 + a ln(G/g_max) clipped, s(G) = max(0, s0 + b ln(G/g_max)). 1/f: one draw per
read call, sigma = G Q sqrt(ln((t + t_read)/(2 t_read))). The formulas are written out here, from
the definitions, not taken from memcim.
"""
import math

import numpy as np
import pytest
import torch

from memcim.config import HardwareConfig, preset
from memcim.hardware.device import conductance_moments
from memcim.mapping.crossbar import map_matrix
from memcim.simulate import program

F64 = torch.float64
T0 = 20.0


def _probe_hw(**device):
    """Ideal converters and wires, g_min = 0: a non-negative W maps to G+ = c W and G- = 0, and the
    one-hot input e_i reads row i of G+ / c exactly (no read noise unless asked)."""
    return HardwareConfig(device={"g_min": 0.0, "g_max": 1e-4, **device},
                          dac={"enabled": False}, adc={"enabled": False}, name="probe")


def _rows(chip, n, t):
    """Every device of every chip, read through one-hot inputs at time t: (trials, n, m) in weight units."""
    return chip.mvm(torch.eye(n, dtype=F64), t=t)


def test_drift_exponents_follow_their_distribution():
    """nu recovered per device from its reads at t0 and t has the mean and spread the config asks
    for, at each of four conductance levels (z tests, Bonferroni over 8 comparisons at 1 %)."""
    nu0, a, s0, b = 0.06, -0.01, 0.02, -0.004
    hw = _probe_hw(drift_nu=nu0, drift_nu_slope=a, drift_nu_std=s0, drift_nu_std_slope=b)
    levels = np.array([0.1, 0.3, 0.6, 1.0])
    W = np.tile(levels, (64, 16))                     # 64 x 64: each level in 16 columns
    chip = program(map_matrix(W, hw), seed=3, trials=20, dtype=F64)
    t = 86400.0
    y0, yt = _rows(chip, 64, T0), _rows(chip, 64, t)
    nu = -torch.log(yt / y0) / math.log(t / T0)       # (trials, 64, 64)
    z_crit = 3.2  # two-sided 1 % / 8 comparisons
    for k, x in enumerate(levels):
        sample = nu[:, :, k::4].reshape(-1).numpy()
        mu = min(max(nu0 + a * math.log(x), 0.0), 1.0)
        s = max(0.0, s0 + b * math.log(x))
        n = sample.size
        assert abs(sample.mean() - mu) < z_crit * s / math.sqrt(n)
        assert abs(sample.std(ddof=1) / s - 1) < z_crit * math.sqrt(1 / (2 * (n - 1)))


@pytest.mark.parametrize("t", [T0, 3600.0, 86400.0, 3.15e7])
def test_closed_form_moments_match_monte_carlo_over_time(t):
    """Programming noise, drift with a spread and 1/f read noise together: the mean and variance of
    a device's read over chips and reads (Monte Carlo through the chip) equal conductance_moments(t)."""
    dev = dict(prog_sigma_rel=0.05, drift_nu=0.05, drift_nu_slope=-0.01, drift_nu_std=0.02,
               read_1f_q=0.01)
    hw = _probe_hw(**dev)
    levels = np.array([0.2, 0.5, 1.0])
    W = np.tile(levels, (32, 8))                       # 32 x 24
    plan = map_matrix(W, hw)
    chip = program(plan, seed=11, trials=400, dtype=F64)
    y = _rows(chip, 32, t)                             # one read call: one 1/f snapshot
    c = float(plan.scale.reshape(-1)[0])
    g = torch.tensor(levels * c * 1.0, dtype=F64)      # the targets [S] (c = g_max / max W)
    mean, var = conductance_moments(g, None, torch.ones_like(g, dtype=torch.bool), hw.device, t=t)
    z_crit = 3.4  # 1 % over 3 levels x 2 moments x 4 times
    for k in range(3):
        s = y[:, :, k::3].reshape(-1) * c            # conductances [S]
        n = s.numel()
        m_hat, v_hat = float(s.mean()), float(s.var())
        # devices of one chip are independent; chips too: n samples
        assert abs(m_hat - float(mean[k])) < z_crit * math.sqrt(float(var[k]) / n), (k, m_hat, float(mean[k]))
        k4 = float(((s - s.mean()) ** 4).mean())
        assert abs(v_hat - float(var[k])) < z_crit * math.sqrt(max(k4 - v_hat ** 2, 1e-300) / n), (k, v_hat, float(var[k]))


def test_global_compensation_undoes_uniform_drift_exactly():
    """One exponent for every device (no spread, no slope), no read noise, ideal converters: the
    global factor sum|y(t0)| / sum|y(t)| is exactly (t/t0)^nu, so the compensated read equals x W."""
    rng = np.random.default_rng(0)
    W, x = rng.normal(size=(48, 12)), rng.normal(size=(5, 48))
    hw = preset("ideal").set({"device.drift_nu": 0.08, "compensation.drift": "global"})
    chip = program(map_matrix(W, hw), seed=0, trials=2, dtype=F64)
    for t in (3600.0, 3.15e7):
        assert torch.allclose(chip.mvm(x, t=t), torch.as_tensor(x @ W)[None].expand(2, -1, -1), atol=1e-10)
    raw = program(map_matrix(W, hw.set({"compensation.drift": "none"})), seed=0, trials=1, dtype=F64)
    expected = (3.15e7 / T0) ** -0.08
    assert torch.allclose(raw.mvm(x, t=3.15e7), torch.as_tensor(x @ W) * expected, rtol=1e-10)


def test_column_compensation_undoes_per_column_drift_global_does_not():
    """Each column holds one conductance, so with a G-dependent mean exponent (no spread) every
    column drifts by its own factor: per-column compensation undoes it exactly, a global factor cannot."""
    rng = np.random.default_rng(1)
    W = np.tile(np.array([0.1, 0.4, 1.0]), (16, 1))       # 16 x 3, non-negative
    x = np.abs(rng.normal(size=(6, 16)))
    base = _probe_hw(drift_nu=0.05, drift_nu_slope=-0.02)
    ref = torch.as_tensor(x @ W)
    for mode, exact in (("column", True), ("global", False)):
        chip = program(map_matrix(W, base.set({"compensation.drift": mode})), seed=0, trials=1, dtype=F64)
        y = chip.mvm(x, t=3.15e7)[0]
        assert torch.allclose(y, ref, rtol=1e-9) == exact, mode


def test_reads_without_drift_do_not_depend_on_time():
    rng = np.random.default_rng(2)
    W, x = rng.normal(size=(40, 10)), rng.normal(size=(4, 40))
    hw = preset("generic")
    a = program(map_matrix(W, hw), seed=5, trials=2).mvm(x)
    b = program(map_matrix(W, hw), seed=5, trials=2).mvm(x, t=1e6)
    assert torch.equal(a, b)


def test_flicker_variance_grows_with_log_time():
    """The variance of repeated reads of one programmed chip is sum_i x_i^2 G_i^2 Q^2 ln((t+tr)/(2 tr))
    (hand formula); checked at two times with the chi-square spread of 2000 reads."""
    q, tr = 0.02, 250e-9
    hw = _probe_hw(read_1f_q=q, read_t_read=tr)
    W = np.full((8, 1), 0.5)
    plan = map_matrix(W, hw)
    chip = program(plan, seed=0, trials=1, dtype=F64)
    x = torch.ones(1, 8, dtype=F64)
    c = float(plan.scale.reshape(-1)[0])
    G = 0.5 * c
    for t in (T0, 3.15e7):
        ys = torch.stack([chip.mvm(x, t=t)[0, 0, 0] for _ in range(2000)])
        expected = 8 * (G * q) ** 2 * math.log((t + tr) / (2 * tr)) / c ** 2
        assert abs(float(ys.var()) / expected - 1) < 4 * math.sqrt(2 / 1999)


@pytest.mark.parametrize("t,match", [(-1.0, "t: -1"), (float("nan"), "t: nan"), (float("inf"), "t: inf"),
                                     (5.0, "before device.drift_t0")])
def test_bad_read_times(t, match):
    chip = program(map_matrix(np.eye(4), preset("ideal")), seed=0)
    with pytest.raises(ValueError, match=match):
        chip.mvm(np.ones((1, 4)), t=t)


@pytest.mark.parametrize("settings,key", [({"device.drift_nu_std": -0.1}, "device.drift_nu_std"),
                                          ({"device.drift_nu_min": 0.5, "device.drift_nu_max": 0.1},
                                           "device.drift_nu_min"),
                                          ({"device.read_t_read": 30.0}, "device.read_t_read"),
                                          ({"device.drift_t0": 0.0}, "device.drift_t0"),
                                          ({"compensation.drift": "local"}, "compensation.drift"),
                                          ({"device.prog_sigma_poly": []}, "device.prog_sigma_poly")])
def test_bad_time_settings_name_their_key(settings, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        preset("ideal").set(settings)


def test_compensation_reference_reads_leave_the_chip_reads_unchanged():
    """The reference reads have their own noise: a compensated chip's read is the uncompensated read
    of the same chip (same read noise) times its factor."""
    rng = np.random.default_rng(3)
    W, x = rng.normal(size=(40, 10)), rng.normal(size=(6, 40))
    hw = preset("generic").set({"device.drift_nu": 0.05, "device.drift_nu_std": 0.01})
    raw = program(map_matrix(W, hw), seed=7, trials=3, dtype=F64)
    comp = program(map_matrix(W, hw.set({"compensation.drift": "global"})), seed=7, trials=3, dtype=F64)
    for t in (T0, 86400.0):
        y_raw, y_comp = raw.mvm(x, t=t), comp.mvm(x, t=t)
        k = comp._comp[t]
        assert torch.allclose(y_comp, y_raw * k, rtol=1e-12, atol=1e-12)
