"""Closed form (memcim.analysis.predict) against the simulator's Monte Carlo, whole networks.

Truth: ``memcim.nn.analog.convert_to_analog`` + ``program`` (one chip per seed, every layer read
through ``ProgrammedChip.mvm``), the same calibration data on both sides. Default run: a 64-48-10
ReLU MLP trained on the 8x8 digits and a small conv net (Conv-Softplus-AvgPool-Conv(stride 2)-ReLU-
Linear), preset x non-ideality. Slow run (``-m slow``): the reference MNIST MLP and CNN on every
preset, the issue's "Done when" (within 10 % where the accuracy drop is under 5 points).

Tolerance: the Monte Carlo standard error times the Bonferroni-corrected normal quantile, plus
the closed form's own approximation budget for networks (``MODEL_REL``: Gaussian partial sums,
order-2 Taylor moments of Softplus, Stein's lemma for covariances after activations, the input
scale of a random read), plus 1e-9 relative for float rounding. Deterministic effects (levels,
DAC, ADC without noise) are exact: their budget is 1e-9.
"""
import sys
from pathlib import Path

import pytest
import torch

from memcim.analysis.predict import predict
from memcim.config import preset

from _agreement_mc import network_mc, z_bonferroni

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _nn_helpers import TinyCNN, digits_mlp  # noqa: E402

TRIALS = 150
SEED = 11
MODEL_REL = 0.05
EXACT = {"quantization", "dac", "adc"}      # deterministic when alone
PRESETS = ("generic", "noisy", "convex_cim", "lowrank", "memse")


def _cases():
    out = []
    for model in ("mlp", "cnn"):
        for name in PRESETS:
            hw = preset(name)
            for ni in (None, *hw.active_nonidealities()):
                if ni == "wires":
                    continue
                if model == "cnn" and name == "generic" and ni in (None, "stuck"):
                    # 0.01 % of devices stuck at g_max: about 0.06 such devices per chip of this small
                    # net, too rare for a 150-chip mean to be normal (the noisy preset's 1 % is tested)
                    continue
                out.append((model, name, ni))
    return out


CASES = _cases()
Z = z_bonferroni(len(CASES))
# Known limit: two coarse ADCs in a row (5 bits, worst-case full scale). The last layer's ADC input is a sum
# of few-level values (the second conv's quantized outputs, mostly on one level: sd < 0.2 steps), far from
# Gaussian (excess kurtosis median ~1, 95th percentile ~36, over the 640 outputs), and the Gaussian level
# sum over-predicts its quantized variance by ~16 % (output MSE +8 %). Taken apart in
# test_predict_adc_chain.py: ADC on the second conv or on the linear alone agrees (0.0 %, 0.0 %), both
# +8.1 %; the linear's ADC applied to the Monte Carlo's own pre-ADC samples reproduces the Monte Carlo
# (0.000524 vs 0.000522), the Gaussian level sum with those samples' own per-output mean and variance does
# not (+7.5 %): the covariance after the first staircase (slope rule) is not the cause.
_XFAIL = {("cnn", "convex_cim", None)}
PARAMS = [pytest.param(*c, marks=pytest.mark.xfail(strict=False, reason="non-Gaussian input of a second coarse ADC"))
          if c in _XFAIL else c for c in CASES]


@pytest.fixture(scope="module")
def setup():
    from memcim.data.digits import load_digits

    torch.manual_seed(0)
    ds = load_digits("test")
    cal = load_digits("train").x[:128].double()
    nets = {"mlp": digits_mlp().double().eval(), "cnn": TinyCNN().double().eval()}
    return nets, ds.x[:64].double(), ds.y[:64], cal


@pytest.mark.parametrize("model,name,ni", PARAMS, ids=[f"{m}-{n}-{ni}" for m, n, ni in CASES])
def test_network_mse_matches_monte_carlo(setup, model, name, ni):
    nets, x, y, cal = setup
    net = nets[model]
    hw = preset(name) if ni is None else preset(name).only(ni)
    mc = network_mc(net, x, hw, TRIALS, SEED, calib_data=cal)
    pred = predict(net, x, hw, calib_data=cal).mse_mean
    rel = 1e-9 if ni in EXACT else MODEL_REL
    tol = Z * mc["se"] + rel * abs(mc["mse"]) + 1e-24
    assert abs(pred - mc["mse"]) <= tol, (f"{model}/{name}/{ni}: predicted {pred:.6g}, Monte Carlo {mc['mse']:.6g} "
                                          f"± {mc['se']:.2g} (tol {tol:.2g})")
    if ni is not None:
        without = predict(net, x, hw.without(ni), calib_data=cal).mse_mean
        assert abs(without - mc["mse"]) > tol, f"{model}/{name}/{ni}: the term is below the test's resolution"


# ------------------------------------------------------------------------------------------------
# the "Done when": reference MLP and CNN, every preset

DONE_PRESETS = ("ideal", "memse", "generic", "noisy", "convex_cim", "lowrank", "irdrop")
DONE_TRIALS = 60


@pytest.mark.slow
@pytest.mark.parametrize("name", DONE_PRESETS)
@pytest.mark.parametrize("model_name", ["mnist-mlp-256-128", "mnist-cnn-small"])
def test_reference_models_within_10_percent(model_name, name):
    from memcim.config import preset_names
    from memcim.data.datasets import load_dataset
    from memcim.nn.models import get_reference_model

    if name not in preset_names():
        pytest.skip(f"preset {name} not in this version")
    net = get_reference_model(model_name).double().eval()
    ds = load_dataset("mnist", "test", limit=128)
    cal = load_dataset("mnist", "train", limit=256).x.double()
    x, y = ds.x.double(), ds.y
    hw = preset(name)
    mc = network_mc(net, x, hw, DONE_TRIALS, SEED, calib_data=cal, labels=y)
    pred = predict(net, x, hw, calib_data=cal).mse_mean
    drop = 100 * (mc["digital_acc"] - mc["acc"])
    rel = (pred - mc["mse"]) / mc["mse"] if mc["mse"] > 0 else 0.0
    print(f"\n{model_name} {name}: predicted {pred:.5g}, Monte Carlo {mc['mse']:.5g} ± {mc['se']:.2g} "
          f"({100 * rel:+.1f} %), accuracy {mc['acc']:.4f} vs digital {mc['digital_acc']:.4f} (drop {drop:.1f} points)")
    if mc["mse"] < 1e-10:          # ideal: both at float rounding
        assert pred < 1e-10
        return
    if drop >= 5.0:
        pytest.skip(f"accuracy drop {drop:.1f} points >= 5: outside the criterion (relative error {100 * rel:+.1f} %)")
    assert abs(pred - mc["mse"]) <= 0.10 * mc["mse"] + 3 * mc["se"]
