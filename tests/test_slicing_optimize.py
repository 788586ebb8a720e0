"""Slice design (memcim.optimize.slicing) against a brute-force search, then the chosen design
against the Monte Carlo.

Network: the 64-48-10 ReLU MLP on the 8x8 digits, 4-bit weights on the generic preset (stuck devices
off so the Monte Carlo mean is close to normal at 100 chips, 6-bit ADC), every composition of the 4
bits into slices of at most 4 bits (8 per layer, 64 designs). Brute force: the closed form of all 64
whole-network designs once, the best one within each budget picked from that table. The optimizer
must pick the same design for every budget of the cost proxy (arrays x input cycles).
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memcim.config import preset
from memcim.optimize.slicing import (SlicingChoice, area_cost, brute_force_slicing, chip_area_cost, choose_slicing,
                                     conversion_cost, energy_cost, slice_candidates)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "agreement"))
from _nn_helpers import digits_mlp  # noqa: E402
from _agreement_mc import z_bonferroni  # noqa: E402

HW_SETTINGS = {"slicing.weight_bits_per_slice": [2, 2], "adc.bits": 6, "device.stuck_at_min": 0.0,
               "device.stuck_at_max": 0.0}
BUDGETS = (2, 3, 4, 5, 6, 8)


@pytest.fixture(scope="module")
def setup():
    from memcim.data.datasets import load_dataset

    net = digits_mlp().double().eval()
    x = load_dataset("digits", "test", limit=32).x.double().reshape(32, -1)
    y = load_dataset("digits", "test", limit=32).y
    cal = load_dataset("digits", "train", limit=128).x.double().reshape(128, -1)
    hw = preset("generic").set(HW_SETTINGS)
    brute = brute_force_slicing(net, x, hw, budget=math.inf, calib_data=cal)
    return net, x, y, cal, hw, brute


def test_candidates_are_every_composition():
    c = slice_candidates(4, 4)
    assert len(c) == 8 == len(set(c)) and all(sum(d) == 4 for d in c)
    assert slice_candidates(4, 2) == [(2, 2), (1, 1, 2), (1, 2, 1), (2, 1, 1), (1, 1, 1, 1)]
    assert slice_candidates(5, 3, max_slices=2) == [(2, 3), (3, 2)]


@pytest.mark.parametrize("budget", BUDGETS)
def test_optimizer_matches_brute_force(setup, budget):
    net, x, _, cal, hw, brute = setup
    rows = brute.table[0]
    assert len(rows) == 64
    feasible = [r for r in rows if r["cost"] <= budget]
    best = min(feasible, key=lambda r: (r["mse"], r["cost"]))
    got = choose_slicing(net, x, hw, budget, calib_data=cal)
    print(f"\nbudget {budget}: optimizer {got.designs} {got.predicted_mse:.6g} (cost {got.cost:g}, "
          f"{got.evaluations} predictions); brute force {best['designs']} {best['mse']:.6g} (cost {best['cost']:g}, 64)")
    assert got.designs == best["designs"]
    assert got.predicted_mse == pytest.approx(best["mse"], rel=1e-12)
    assert got.cost <= budget


def test_brute_force_function_with_a_budget(setup):
    net, x, _, cal, hw, brute = setup
    b = brute_force_slicing(net, x, hw, 5, calib_data=cal)
    rows = [r for r in brute.table[0] if r["cost"] <= 5]
    assert b.designs == min(rows, key=lambda r: (r["mse"], r["cost"]))["designs"] and b.evaluations == len(rows)


@torch.no_grad()
def _network_mc(net, x, hws, trials, seed, cal):
    """Per-chip output MSE over ``trials`` chips of the analog model, one config per crossbar layer
    (``convert_to_analog`` takes one; each analog layer then gets its own ``hardware``)."""
    from memcim.nn.analog import analog_layers, convert_to_analog, program

    import warnings

    warnings.simplefilter("ignore", UserWarning)       # the sliced mapping's ADC-too-coarse warning
    ref = net(x)
    analog = convert_to_analog(net, hws[0], calib_data=cal).eval()
    for (_, m), h in zip(analog_layers(analog), hws):
        m.hardware = h
    mses = []
    for k in range(trials):
        program(analog, seed=seed + k, dtype=torch.float64)
        mses.append(float(((analog(x) - ref) ** 2).mean()))
    mses = np.asarray(mses)
    return {"mse": float(mses.mean()), "se": float(mses.std(ddof=1) / math.sqrt(trials))}


def test_chosen_design_confirmed_by_monte_carlo(setup):
    """The design chosen at budget 5 agrees with its Monte Carlo MSE, and the Monte Carlo ranks it
    below the cheapest design (one 4-bit slice per layer) that the closed form also ranks worse."""
    net, x, y, cal, hw, _ = setup
    choice = choose_slicing(net, x, hw, 5, calib_data=cal)
    cheap = SlicingChoice([(4,), (4,)], float("nan"), 2.0, 5.0)
    z = z_bonferroni(3)
    mc = _network_mc(net, x, choice.hardware(hw), 100, 11, cal)
    mc_cheap = _network_mc(net, x, cheap.hardware(hw), 100, 11, cal)
    print(f"\nchosen {choice.designs}: predicted {choice.predicted_mse:.5g}, Monte Carlo {mc['mse']:.5g} ± {mc['se']:.2g}; "
          f"one 4-bit slice: Monte Carlo {mc_cheap['mse']:.5g} ± {mc_cheap['se']:.2g}")
    # the network closed form's approximation budget (tests/agreement/test_predict_network.py: 5 %)
    assert abs(choice.predicted_mse - mc["mse"]) <= 0.05 * mc["mse"] + z * mc["se"]
    assert mc["mse"] + z * mc["se"] < mc_cheap["mse"] - z * mc_cheap["se"]


def test_cost_proxies_on_a_plan():
    from memcim.mapping.crossbar import map_matrix

    W = np.random.default_rng(0).normal(size=(300, 100))     # 3 row tiles x 2 column tiles per slice
    hw = preset("generic").set({"slicing.weight_bits_per_slice": [2, 2, 2], "slicing.input_mode": "bit_serial",
                                "slicing.input_bits_per_cycle": 2})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plan = map_matrix(W, hw)
    assert area_cost(plan) == 3 * 3 * 2 and plan.n_cycles == 4          # 7 magnitude bits: 2+2+2+1
    assert conversion_cost(plan) == 3 * 3 * 2 * 4
    from memcim.hardware.energy import layer_cost

    e = energy_cost(plan)
    assert e == layer_cost(plan).energy["total"] and np.isfinite(e) and e > 0
    assert chip_area_cost(plan) == layer_cost(plan).area["total"] > 0
    # more slices cost more energy in the one energy model (same matrix, same hardware otherwise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fewer = map_matrix(W, hw.set("slicing.weight_bits_per_slice", [3, 3]))
    assert energy_cost(fewer) < e


@pytest.mark.parametrize("kw, msg", [
    ({"budget": -1.0}, r"^budget: -1.0 is not allowed"),
    ({"budget": 1.0}, r"^budget: 1 is not allowed; the cheapest design costs 2"),
    ({"budget": 4.0, "cost": lambda plan: -1.0}, r"^cost: -1.0 for layer 0 slices \[4\] is not allowed"),
    ({"budget": 4.0, "candidates": [[(2, 2)]] * 3}, r"^candidates: 3 lists given; the model has 2"),
])
def test_bad_design_input(setup, kw, msg):
    net, x, _, cal, hw, _ = setup
    kw = dict(kw)
    budget = kw.pop("budget")
    with pytest.raises(ValueError, match=msg):
        choose_slicing(net, x, hw, budget, calib_data=cal, **kw)


def test_cost_must_be_callable(setup):
    net, x, _, cal, hw, _ = setup
    with pytest.raises(TypeError, match=r"^cost: expected a callable"):
        choose_slicing(net, x, hw, 4, cost=3.0, calib_data=cal)
