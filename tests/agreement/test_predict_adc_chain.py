"""The known limit of ``test_predict_network.py`` (``cnn-convex_cim-None``) taken apart: the small CNN on
``convex_cim`` with its 5-bit worst-case ADC on some crossbar layers only (per-layer hardware: the
simulator's ``convert_to_analog(overrides=)``, the closed form's list of configs).

Truth: the simulator's Monte Carlo (one chip per seed). Tolerance as ``test_predict_network.py``: the
standard error times the Bonferroni-corrected quantile plus the networks' 5 % approximation budget.
Either coarse ADC alone agrees; both together are over-predicted by about 8 % (xfail), and the cause is the
shape of the second ADC's input, not its moments: the simulator's own pre-ADC samples of the linear layer,
quantized with that ADC, reproduce the chain's Monte Carlo, while the Gaussian level sum
(:func:`memcim.analysis.predict.quantizer_moments`) fed the same samples' per-output mean and variance does
not (printed with ``-s``).
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import memcim.analysis.predict as P
from memcim.config import preset
from memcim.hardware.converters import adc_convert

from _agreement_mc import z_bonferroni

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _nn_helpers import TinyCNN  # noqa: E402

TRIALS = 200
SEED = 11
MODEL_REL = 0.05
NAMES = ("0", "3", "6")          # the crossbar layers of TinyCNN: conv, conv, linear
MASKS = ("100", "010", "001", "011")
Z = z_bonferroni(len(MASKS))


@pytest.fixture(scope="module")
def setup():
    from memcim.data.digits import load_digits

    torch.manual_seed(0)
    cal = load_digits("train").x[:128].double()
    return TinyCNN().double().eval(), load_digits("test").x[:64].double(), cal


def _hws(mask):
    base = preset("convex_cim")
    return [base if c == "1" else base.set({"adc.enabled": False}) for c in mask]


@torch.no_grad()
def _chips(net, x, hws, cal):
    from memcim.nn.analog import convert_to_analog, program

    analog = convert_to_analog(net, hws[0], overrides=dict(zip(NAMES, hws)), calib_data=cal).eval()
    ys = []
    for k in range(TRIALS):
        program(analog, seed=SEED + k, dtype=torch.float64)
        ys.append(analog(x))
    return torch.stack(ys)                                            # (chips, B, out)


def _mse(y, ref):
    per = ((y - ref.detach()) ** 2).mean((1, 2)).numpy()
    return float(per.mean()), float(per.std(ddof=1) / math.sqrt(len(per)))


@pytest.mark.parametrize("mask", [pytest.param(m, marks=pytest.mark.xfail(
    strict=False, reason="non-Gaussian input of a second coarse ADC")) if m == "011" else m for m in MASKS])
def test_coarse_adc_on_some_layers(setup, mask):
    net, x, cal = setup
    hws = _hws(mask)
    ref = net(x).detach()
    mc, se = _mse(_chips(net, x, hws, cal), ref)
    pred = P.predict(net, x, hws, calib_data=cal).mse_mean
    print(f"\nADC on {mask}: predicted {pred:.5g}, Monte Carlo {mc:.5g} ± {se:.2g} ({100 * (pred / mc - 1):+.1f} %)")
    assert abs(pred - mc) <= Z * se + MODEL_REL * mc


def test_second_adc_input_shape_not_moments(setup):
    """Quantize the simulator's pre-ADC samples (second conv's ADC on, linear's off) with the linear's ADC:
    that is the chain's Monte Carlo (same chips, the ADC is deterministic); the Gaussian level sum with
    those samples' own mean and variance over-predicts it."""
    net, x, cal = setup
    ref = net(x).detach()
    y_pre = _chips(net, x, _hws("010"), cal)
    y_chain = _chips(net, x, _hws("011"), cal)
    rec = []
    orig = P.quantizer_moments

    def spy(m, v, step, adc):
        rec.append((step, adc))
        return orig(m, v, step, adc)

    P.quantizer_moments = spy
    try:
        P.predict(net, x, _hws("011"), calib_data=cal)
    finally:
        P.quantizer_moments = orig
    step, adc = rec[-1]                                               # the linear layer's ADC (the last one)
    bias = net[6].bias.detach()
    q = adc_convert(y_pre - bias, step * adc.steps, adc) + bias
    mc_chain, _ = _mse(y_chain, ref)
    mc_q, _ = _mse(q, ref)
    # the same chips through the same ADC, up to its step: the simulator scales each read by that read's own
    # largest input, the closed form (whose step is used here) by its root-mean-square bound
    assert abs(mc_q - mc_chain) <= 0.01 * mc_chain
    mean, var, _ = orig(y_pre.mean(0) - bias, y_pre.var(0), step, adc)
    gauss = float(((mean + bias - ref) ** 2 + var).mean())
    c = y_pre - y_pre.mean(0)
    kurt = (c.pow(4).mean(0) / c.pow(2).mean(0) ** 2 - 3).flatten().numpy()
    print(f"\nchain MC {mc_chain:.5g}, its pre-ADC samples quantized {mc_q:.5g}; Gaussian level sum with the MC's own moments {gauss:.5g} "
          f"({100 * (gauss / mc_chain - 1):+.1f} %); pre-ADC excess kurtosis median {np.median(kurt):.2f}, "
          f"95th percentile {np.quantile(kurt, 0.95):.1f}")
    assert gauss > 1.04 * mc_chain       # the shape, not the moments, is what the closed form gets wrong
