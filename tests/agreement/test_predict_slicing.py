"""Closed form of bit-sliced crossbars (memcim.analysis.slicing) against the simulator's Monte Carlo.

Truth: ``map_matrix`` + ``program`` + ``chip.mvm`` of the sliced hardware (one ProgrammedChip per
weight slice, each with the simulator's own programming, read noise, DAC and ADC; bit-serial inputs
read cycle by cycle; shift-and-add), the per-chip output MSE against ``x @ W`` averaged over
``TRIALS`` chips. Cases: a 300 x 40 Gaussian matrix (three row tiles per slice) over encodings,
mapping schemes, unbalanced slices, bit-serial and pulse-width inputs and a coarse ADC; and the
reference MNIST MLP (mnist-mlp-256-128): its first layer on real MNIST test images and its second
layer on their real hidden activations. Tolerance: the Monte Carlo standard error times the
Bonferroni-corrected normal quantile for all cases of this module (family-wise alpha = 1 %), plus
1e-9 relative for float rounding.

Stuck devices make a partial sum non-Gaussian (a rare jump of a whole level range), which the
quantizer moments of a coarse ADC do not follow (known limit of the closed form, about 2 % of the
MSE at 4 ADC bits); the coarse-ADC and bit-serial cases switch them off. The MNIST bit-serial case
runs with ``-m slow``.
"""
import warnings

import numpy as np
import pytest
import torch

from memcim.analysis.predict import predict
from memcim.config import preset

from _agreement_mc import matrix_mc, z_bonferroni

TRIALS = 200
MNIST_TRIALS = 40
SEED = 7
NO_STUCK = {"device.stuck_at_min": 0.0, "device.stuck_at_max": 0.0}
SM33 = {"slicing.weight_bits_per_slice": [3, 3]}

MATRIX_CASES = {
    "sign_magnitude-3-3": ("generic", SM33),
    "offset-offset-2-2-2": ("generic", {"slicing.weight_bits_per_slice": [2, 2, 2], "slicing.encoding": "offset",
                                        "mapping.scheme": "offset"}),
    "twos-unbalanced-1-2-3": ("generic", {"slicing.weight_bits_per_slice": [1, 2, 3],
                                          "slicing.encoding": "twos_complement"}),
    "offset-differential-4-4": ("generic", {"slicing.weight_bits_per_slice": 4, "slicing.weight_slices": 2,
                                            "slicing.encoding": "offset"}),
    "noisy-2-2": ("noisy", {"slicing.weight_bits_per_slice": [2, 2]}),
    "pair-arrays-2-2-2": ("generic", {"slicing.weight_bits_per_slice": [2, 2, 2], "mapping.pair": "arrays"}),
    "column-scale": ("generic", {**SM33, "mapping.scale": "column", "adc.granularity": "column"}),
    "coarse-adc-4": ("generic", {**SM33, "adc.bits": 4, **NO_STUCK}),
    "bit-serial-1": ("generic", {**SM33, "slicing.input_mode": "bit_serial", "adc.bits": 6, **NO_STUCK}),
    "bit-serial-2-twos-offset": ("generic", {"slicing.weight_bits_per_slice": [3, 3], "slicing.encoding":
                                             "twos_complement", "mapping.scheme": "offset",
                                             "slicing.input_mode": "bit_serial", "slicing.input_bits_per_cycle": 2,
                                             **NO_STUCK}),
    "bit-serial-inputs-only": ("generic", {"slicing.input_mode": "bit_serial", "adc.bits": 6, **NO_STUCK}),
    "pulse-width": ("generic", {**SM33, "slicing.input_mode": "pulse_width"}),
}
MNIST_CASES = {
    "layer1-3-3": (0, SM33),
    # sparse images, 2-bit cycles whose noise stays under one 6-bit ADC step: the cycles' shared noise
    # needs the whole Hermite series (its first term alone was -5.2 %, z = -30)
    "layer1-bit-serial-2-2-2-2-adc6": (0, {"slicing.weight_bits_per_slice": [2, 2, 2, 2], "adc.bits": 6,
                                           "slicing.input_mode": "bit_serial", "slicing.input_bits_per_cycle": 2,
                                           **NO_STUCK}),
    "layer2-twos-unbalanced-2-3-3": (1, {"slicing.weight_bits_per_slice": [3, 3, 2],
                                         "slicing.encoding": "twos_complement"}),
}
_SLOW = {"layer1-bit-serial-2-2-2-2-adc6"}     # about 10 s of CPU (4 slices x 4 cycles x 7 arrays)
Z = z_bonferroni(len(MATRIX_CASES) + len(MNIST_CASES) + 2)


def _hw(name, settings):
    return preset(name).set(settings)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 40)), rng.normal(size=(32, 300))


def _agree(W, x, hw, trials=TRIALS, calib_inputs=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # the ADC-too-coarse warning of the sliced mapping
        pred = predict(W, x, hw, calib_inputs=calib_inputs).mse_mean
        mc, se, _ = matrix_mc(W, x, hw, trials, SEED, calib_inputs=calib_inputs)
    tol = Z * se + 1e-9 * mc
    return pred, mc, se, tol


@pytest.mark.parametrize("case", list(MATRIX_CASES))
def test_sliced_matrix_agrees_with_monte_carlo(case, data):
    W, x = data
    hw = _hw(*MATRIX_CASES[case])
    pred, mc, se, tol = _agree(W, x, hw)
    print(f"\n{case}: predicted {pred:.6g}, Monte Carlo {mc:.6g} ± {se:.2g} ({100 * (pred - mc) / mc:+.2f} %, "
          f"z = {(pred - mc) / se:+.2f}, allowed {Z:.2f})")
    assert abs(pred - mc) <= tol


@pytest.mark.parametrize("case", ["sign_magnitude-3-3", "bit-serial-1"])
def test_the_comparison_can_fail(case, data):
    """The unsliced prediction of the same hardware misses the sliced Monte Carlo at this sample size,
    so the agreement above is not a tolerance wide enough for anything."""
    W, x = data
    hw = _hw(*MATRIX_CASES[case])
    _, mc, se, tol = _agree(W, x, hw)
    unsliced = predict(W, x, hw.replace(slicing={"weight_slices": None, "weight_bits_per_slice": None,
                                                 "weight_bits": None, "input_mode": "parallel"})).mse_mean
    assert abs(unsliced - mc) > tol


@pytest.fixture(scope="module")
def mnist():
    from memcim.data.datasets import load_dataset
    from memcim.nn.models import get_reference_model

    net = get_reference_model("mnist-mlp-256-128").double().eval()
    lin = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    x = load_dataset("mnist", "test", limit=32).x.double().reshape(32, -1)
    cal = load_dataset("mnist", "train", limit=256).x.double().reshape(256, -1)
    with torch.no_grad():
        h, hc = torch.relu(lin[0](x)), torch.relu(lin[0](cal))
    weights = [m.weight.detach().t().contiguous() for m in lin[:2]]
    return weights, [(x, cal), (h, hc)]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in _SLOW else c for c in MNIST_CASES])
def test_sliced_mnist_layer_agrees_with_monte_carlo(case, mnist):
    layer, settings = MNIST_CASES[case]
    weights, inputs = mnist
    W, (x, cal) = weights[layer], inputs[layer]
    hw = _hw("generic", settings)
    pred, mc, se, tol = _agree(W, x, hw, trials=MNIST_TRIALS, calib_inputs=cal)
    print(f"\nMNIST {case}: predicted {pred:.6g}, Monte Carlo {mc:.6g} ± {se:.2g} "
          f"({100 * (pred - mc) / mc:+.2f} %, z = {(pred - mc) / se:+.2f}, allowed {Z:.2f})")
    assert abs(pred - mc) <= tol


# offset *mapping* is left out: its reference column's noise is shared by an array's outputs; the unsliced
# closed form carries that covariance to the next layer (tests/agreement/test_predict_offset.py: was -13 % on
# this network), the sliced read (memcim.analysis.slicing) does not yet
NETWORK_CASES = {
    "sign_magnitude-3-3": {**SM33, **NO_STUCK},
    "sign_magnitude-2-2-2-adc6": {"slicing.weight_bits_per_slice": [2, 2, 2], "adc.bits": 6, **NO_STUCK},
    "offset-encoding-2-2-2-adc6": {"slicing.weight_bits_per_slice": [2, 2, 2], "slicing.encoding": "offset",
                                   "adc.bits": 6, **NO_STUCK},
}


@pytest.mark.parametrize("case", list(NETWORK_CASES))
def test_sliced_network_agrees_with_monte_carlo(case):
    """A whole network (the 64-48-10 digits MLP): the hidden layer's inputs are random, so the slices'
    shared input covariance enters. Tolerance as tests/agreement/test_predict_network.py: the network
    closed form's approximation budget (5 %) plus the Bonferroni-corrected standard error."""
    import sys
    from pathlib import Path

    from memcim.data.datasets import load_dataset

    from _agreement_mc import network_mc

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _nn_helpers import digits_mlp

    net = digits_mlp().double().eval()
    x = load_dataset("digits", "test", limit=48).x.double().reshape(48, -1)
    cal = load_dataset("digits", "train", limit=128).x.double().reshape(128, -1)
    hw = _hw("generic", NETWORK_CASES[case])
    z = z_bonferroni(len(NETWORK_CASES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mc = network_mc(net, x, hw, 100, 11, calib_data=cal)
        pred = predict(net, x, hw, calib_data=cal).mse_mean
    print(f"\nnetwork {case}: predicted {pred:.6g}, Monte Carlo {mc['mse']:.6g} ± {mc['se']:.2g} "
          f"({100 * (pred - mc['mse']) / mc['mse']:+.2f} %)")
    assert abs(pred - mc["mse"]) <= 0.05 * mc["mse"] + z * mc["se"]
