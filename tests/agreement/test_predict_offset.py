"""Offset mapping in a network: the closed form (memcim.analysis.predict) against the simulator's Monte Carlo.

One reference column per array is subtracted from all of the array's outputs, so its programming noise is
common to them; a later layer sums those outputs, and the common part adds coherently. Truth: the 64-48-10
digits MLP programmed chip by chip (``convert_to_analog`` + ``program``, float64, the same calibration data on
both sides), 300 chips. Without the reference columns' covariance the closed form was 13 % (generic) and 7 %
(noisy) below this Monte Carlo (z = -9 and -5.6 at 1000 chips).

Tolerance: the Monte Carlo standard error times the Bonferroni-corrected normal quantile (family-wise 1 %),
plus the network closed form's approximation budget of tests/agreement/test_predict_network.py (5 %).
Stuck devices are off: a few stuck devices per chip make the per-chip MSE too skewed for a 300-chip mean.
"""
import sys
import warnings
from pathlib import Path

import pytest
import torch

from memcim.analysis.predict import predict
from memcim.config import preset
from memcim.data.datasets import load_dataset

from _agreement_mc import network_mc, z_bonferroni

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _nn_helpers import digits_mlp  # noqa: E402

TRIALS = 300
MODEL_REL = 0.05
CASES = {
    "generic-offset": ("generic", {"mapping.scheme": "offset"}),
    "noisy-offset": ("noisy", {"mapping.scheme": "offset"}),
    "generic-offset-2x2-arrays": ("generic", {"mapping.scheme": "offset", "array.rows": 48, "array.cols": 33}),
}
NO_STUCK = {"device.stuck_at_min": 0.0, "device.stuck_at_max": 0.0}
Z = z_bonferroni(len(CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_offset_mapped_network_agrees_with_monte_carlo(case):
    name, settings = CASES[case]
    hw = preset(name).set({**settings, **NO_STUCK})
    net = digits_mlp().double().eval()
    x = load_dataset("digits", "test", limit=48).x.double().reshape(48, -1)
    cal = load_dataset("digits", "train", limit=128).x.double().reshape(128, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mc = network_mc(net, x, hw, TRIALS, 11, calib_data=cal)
        p = predict(net, x, hw, calib_data=cal)
    pred = p.mse_mean
    print(f"\n{case}: arrays {[l['tiles'] for l in p.layers]}, predicted {pred:.6g}, Monte Carlo {mc['mse']:.6g} "
          f"± {mc['se']:.2g} ({100 * (pred - mc['mse']) / mc['mse']:+.2f} %, z = {(pred - mc['mse']) / mc['se']:+.2f})")
    assert abs(pred - mc["mse"]) <= MODEL_REL * mc["mse"] + Z * mc["se"]
