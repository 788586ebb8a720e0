"""The HfO2 multilevel preset (Milo et al. IRPS 2021 Fig. 4, the IHP 4-kbit HfO2 1T1R technology of Milo et al.
APL Mater. 2019) and the NeuRRAM preset (Wan et al. 2022, Ext. Data Fig. 3): the programmed conductances of a
Monte Carlo chip (memcim.simulate.program) have, level by level, the standard deviation of the published fits.

Truth: the published fit formulas, evaluated here from their own coefficients (not from the preset's table or
polynomial). Tolerance: the exact chi-square interval of a sample standard deviation of n Gaussian draws, at a
family-wise false-alarm rate of 1e-4 split over all comparisons (Bonferroni), fixed seeds."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from memcim.config import preset
from memcim.mapping.crossbar import map_matrix
from memcim.simulate import program

US = 1e-6
ALPHA = 1e-4


def _milo2021_sigma(g_us: float) -> float:
    """Milo et al. IRPS 2021 Fig. 4 (IGVVA-100), linear fit as digitised by CrossSim: sigma [uS] at G [uS]."""
    return max(4.782321 - 0.009107 * g_us, 0.0)


def _wan2022_sigma(g_us: float) -> float:
    """Wan et al. 2022 Ext. Data Fig. 3, t = 1 s, cubic fit as digitised by CrossSim, plus the +-1 uS
    write-verify acceptance range as a uniform error (1/sqrt(3) uS), in variance: sigma [uS] at G [uS]."""
    relax = 1.536e-4 * g_us ** 3 - 1.167e-2 * g_us ** 2 + 2.374e-1 * g_us + 1.053
    return math.sqrt(relax ** 2 + 1.0 / 3.0)


def _sd_interval(s_true: float, n: int, alpha: float) -> tuple[float, float]:
    """Where the sample standard deviation (ddof=1) of n Gaussian draws lies with probability 1 - alpha."""
    lo, hi = stats.chi2.ppf([alpha / 2, 1 - alpha / 2], n - 1)
    return s_true * math.sqrt(lo / (n - 1)), s_true * math.sqrt(hi / (n - 1))


def test_hfo2_loads_validates_and_cites():
    hw = preset("hfo2")
    d = hw.device
    assert hw.name == "hfo2"
    assert (d.g_min, d.g_max, d.levels) == (pytest.approx(50 * US), pytest.approx(225 * US), 5)
    # 5 levels per device on a differential pair: 2 * 5 - 1 = 9 weight values, the abstract's "9-level weights"
    assert hw.mapping.scheme == "differential" and 2 * d.levels - 1 == 9
    assert len(d.prog_sigma_table) == d.levels
    assert hw.active_nonidealities() == ("quantization", "programming")
    assert not d.has_drift and not d.has_read_1f and not d.has_rtn


def test_hfo2_table_is_the_published_fit_at_each_level():
    d = preset("hfo2").device
    levels_us = [(d.g_min + k * d.level_step) / US for k in range(d.levels)]
    assert levels_us == pytest.approx([50.0, 93.75, 137.5, 181.25, 225.0])
    for g, s in zip(levels_us, d.prog_sigma_table):
        assert s == pytest.approx(_milo2021_sigma(g) * US, rel=1e-9)


def test_hfo2_monte_carlo_sigma_per_level_matches_the_paper():
    """Program 40 chips of a 128x128 matrix of weights -4..4 (every level on both devices of the pairs) and
    measure, level by level, the mean and spread of the programmed conductances."""
    hw = preset("hfo2")
    d = hw.device
    rng = np.random.default_rng(0)
    W = rng.integers(-4, 5, size=(128, 128)).astype(np.float64)
    W[0, 0] = 4.0
    plan = map_matrix(W, hw)
    chip = program(plan, seed=1, trials=40, dtype=torch.float64)
    targets = torch.cat([plan.g_pos.flatten(), plan.g_neg.flatten()]).numpy()
    got = torch.cat([chip.g_pos.reshape(40, -1), chip.g_neg.reshape(40, -1)], dim=1).numpy()
    a = ALPHA / (2 * d.levels)                 # two comparisons (mean, sd) per level
    for k in range(d.levels):
        g_level = d.g_min + k * d.level_step
        sel = np.isclose(targets, g_level, rtol=0, atol=1e-3 * d.level_step)
        x = got[:, sel].ravel()
        n = x.size
        assert n > 5000, f"level {k}: only {n} samples"
        s_true = _milo2021_sigma(g_level / US) * US
        lo, hi = _sd_interval(s_true, n, a)
        assert lo <= x.std(ddof=1) <= hi, (k, x.std(ddof=1) / US, s_true / US)
        z = stats.norm.ppf(1 - a / 2)
        assert abs(x.mean() - g_level) <= z * s_true / math.sqrt(n), (k, x.mean() / US, g_level / US)


def test_wan2022_monte_carlo_sigma_matches_the_paper_fit():
    """Continuous targets at 10, 20, 30 and 40 uS (far enough from 0 S that the clip at 0 does not matter)."""
    hw = preset("wan2022")
    d = hw.device
    assert d.levels is None and d.g_min == 0.0 and d.g_max == pytest.approx(40 * US)
    W = np.tile(np.array([0.25, 0.5, 0.75, 1.0]), (256, 64))          # 256 x 256: one core, no padding
    plan = map_matrix(W, hw)
    chip = program(plan, seed=2, trials=8, dtype=torch.float64)
    targets = plan.g_pos.flatten().numpy()
    got = chip.g_pos.reshape(8, -1).numpy()
    a = ALPHA / 4
    for frac in (0.25, 0.5, 0.75, 1.0):
        g = frac * d.g_max
        sel = np.isclose(targets, g, rtol=1e-9, atol=0)
        x = got[:, sel].ravel()
        s_true = _wan2022_sigma(g / US) * US
        lo, hi = _sd_interval(s_true, x.size, a)
        assert lo <= x.std(ddof=1) <= hi, (g / US, x.std(ddof=1) / US, s_true / US)
