"""Closed form (memcim.analysis.predict) against the simulator's Monte Carlo, one matrix.

A parametrized matrix of preset x non-ideality: each case switches on one non-ideality of a preset
(``hw.only``), or all of them, maps a 300 x 40 matrix (three row tiles of 100 rows on 128-row
arrays, so three ADCs per column), and compares the predicted output MSE against ``x @ W`` with
the mean over ``TRIALS`` simulated chips. Tolerance: the Monte Carlo standard error times the
Bonferroni-corrected normal quantile for the number of cases (family-wise alpha = 1 %), plus a
relative 1e-9 for float rounding. Deterministic effects (levels, DAC, ADC on a noise-free read)
have no Monte Carlo error, so they must agree to rounding.

Each case also checks that it can fail: the prediction with its non-ideality removed must fall
outside the tolerance (the term is visible at this sample size).
"""
import numpy as np
import pytest

from memcim.analysis.predict import predict
from memcim.config import preset

from _agreement_mc import matrix_mc, set_hw, z_bonferroni

TRIALS = 200
SEED = 7

# (preset, settings applied first, non-ideality or None for all)
_BASE = {
    "generic": {},
    "noisy": {},
    "convex_cim": {},
    "lowrank": {},
    "memse": {},
    "generic-offset": {"mapping.scheme": "offset"},
    "generic-column": {"mapping.scale": "column", "adc.granularity": "column"},
    "generic-rtn": {"device.rtn_amplitude": 0.2, "device.rtn_probability": 0.3},
    "noisy-table": {"device.prog_sigma_table": tuple(np.linspace(1e-6, 4e-6, 16)), "device.prog_sigma_abs": 0.0,
                    "device.prog_sigma_rel": 0.0},
}


def _hw(key):
    name = key.split("-")[0]
    return set_hw(preset(name), _BASE[key]) if _BASE[key] else preset(name)


def _cases():
    out = []
    for key in _BASE:
        try:
            hw = _hw(key)
        except ValueError:  # a setting this config version does not have (RTN before it exists)
            continue
        for ni in (None, *hw.active_nonidealities()):
            if ni == "wires":
                continue
            if key == "noisy-table" and ni == "programming":
                ni = ("quantization", "programming")   # a per-level table needs the levels
            out.append((key, ni))
    # the ADC on a noisy read (the Gaussian level sum and the clipped-Gaussian branch)
    out.append(("generic", ("programming", "adc")))
    out.append(("noisy", ("programming", "adc")))
    return out


CASES = _cases()
Z = z_bonferroni(len(CASES))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(300, 40))
    x = rng.normal(size=(32, 300))
    return W, x


def _select(hw, ni):
    if ni is None:
        return hw
    return hw.only(*ni) if isinstance(ni, tuple) else hw.only(ni)


@pytest.mark.parametrize("key,ni", CASES, ids=[f"{k}-{n if not isinstance(n, tuple) else '+'.join(n)}" for k, n in CASES])
def test_matrix_mse_matches_monte_carlo(data, key, ni):
    W, x = data
    hw = _select(_hw(key), ni)
    mc, se, _ = matrix_mc(W, x, hw, TRIALS, SEED)
    pred = predict(W, x, hw).mse_mean
    tol = Z * se + 1e-9 * abs(mc) + 1e-24
    assert abs(pred - mc) <= tol, f"{key}/{ni}: predicted {pred:.6g}, Monte Carlo {mc:.6g} ± {se:.2g} (tol {tol:.2g})"
    if ni is not None:
        # power: leaving the (last) term out of the prediction must be detected
        last = ni[-1] if isinstance(ni, tuple) else ni
        without = predict(W, x, hw.without(last)).mse_mean
        assert abs(without - mc) > tol, f"{key}/{ni}: the term is below the test's resolution"
