"""The two-step scheme through the crossbar simulator against the additive-noise theory."""
import numpy as np
import pytest
import torch

from memcim.analysis.lowrank import harmonic_matrix
from memcim.config import preset
from memcim.mapping.lowrank import equivalent_sigma, hardware_baseline_error, hardware_lowrank


def _hw(levels=None, sigma_abs=3e-6):
    return preset("ideal").replace(device={"g_min": 1e-5, "g_max": 1e-4, "prog_sigma_abs": sigma_abs,
                                           "levels": levels})


def _mc(sch, x, trials, seed):
    y = torch.as_tensor(x @ sch.W)
    e = ((sch.run(x, trials=trials, seed=seed) - y) ** 2).sum(-1).mean(-1).numpy()
    return e.mean(), e.std(ddof=1) / np.sqrt(e.size)


@pytest.mark.parametrize("levels,realized", [(None, False), (16, True)])
def test_hardware_matches_additive_theory_with_programming_noise(levels, realized):
    W = harmonic_matrix(32, seed=2)
    x = np.random.default_rng(0).standard_normal((24, 32))
    R = x.T @ x / 24
    sch = hardware_lowrank(W, _hw(levels), k=4, r1=3, r2=2, split="balanced", calib_inputs=x)
    mean, se = _mc(sch, x, 300, seed=5)
    pred = sch.predict(R, realized=realized).total
    assert abs(mean - pred) < 4.5 * se, (mean, pred, se)
    # devices: r1 copies of A (32x4) and r2 of B (4x32), differential pairs
    assert sch.devices == 2 * (3 * 32 * 4 + 2 * 4 * 32)


def test_equivalent_sigma_by_hand():
    # differential, absolute noise: sigma_w = sqrt(2) sigma_abs max|M| / (g_max - g_min)
    from memcim.mapping.crossbar import map_matrix

    M = np.array([[1.0, -2.0], [0.5, 0.25]])
    assert equivalent_sigma(map_matrix(M, _hw(None, 2e-6))) == pytest.approx(np.sqrt(2) * 2e-6 * 2.0 / 9e-5)


def test_baseline_hardware_matches_theory():
    W = harmonic_matrix(24, seed=1)
    x = np.random.default_rng(3).standard_normal((16, 24))
    b = hardware_baseline_error(W, _hw(None), x, trials=400, seed=2)
    assert abs(b["mean"] - b["predicted"]) < 4.5 * b["stderr"]


def test_coarse_adc_breaks_the_additive_theory():
    W = harmonic_matrix(32, seed=2)
    x = np.random.default_rng(0).standard_normal((24, 32))
    R = x.T @ x / 24
    hw = _hw(None).replace(dac={"enabled": True, "bits": 8}, adc={"enabled": True, "bits": 3})
    sch = hardware_lowrank(W, hw, k=8, r1=2, r2=2, calib_inputs=x)
    mean, se = _mc(sch, x, 100, seed=5)
    assert mean > sch.predict(R, realized=True).total + 10 * se
