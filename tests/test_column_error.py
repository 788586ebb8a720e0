"""Each closed-form error term against Monte Carlo through the foundation simulator."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from memcim.analysis.column_error import (Design, InputStats, LayerErrorModel, gaussian_saturation,
                                          gaussian_saturation_grad_F)
from memcim.config import HardwareConfig, preset
from memcim.mapping.crossbar import map_matrix
from memcim.simulate import program

N_IN, N_OUT = 150, 12          # two row tiles of 128 rows


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(N_IN, N_OUT))
    X = np.abs(rng.normal(size=(300, N_IN))) * (rng.random((300, N_IN)) < 0.5)   # ReLU-like, dynamic DAC range
    return W, X


BASE = preset("generic").replace(
    device={"stuck_at_min": 0.0, "stuck_at_max": 0.0, "levels": None, "bits": None, "g_min": 5e-6, "g_max": 5e-5,
            "prog_sigma_abs": 1e-6, "prog_sigma_rel": 0.05}, adc={"bits": 8})


def simulate(W, X, hw, trials, design=None, seed=1):
    """Squared errors (trials, batch, out) of the simulator against x @ W."""
    mp = map_matrix(W, hw)
    if design is not None:
        mp = LayerErrorModel(W, hw, InputStats.from_samples(X, hw)).apply_design(mp, design)
    chip = program(mp, seed=seed, trials=trials, dtype=torch.float64)
    y = chip.mvm(X)
    return ((y - torch.from_numpy(X @ W)) ** 2).numpy()


def layer_mse(model, design, term):
    return model.terms(design, per="layer")[term]


def check(pred, mc, se, k=5.0, rel=0.0):
    assert abs(pred - mc) <= k * se + rel * abs(mc), f"model {pred:.6g} vs Monte Carlo {mc:.6g} ± {se:.3g}"


def test_gaussian_saturation_matches_integration():
    for mu, s, F in [(0.0, 1.0, 1.5), (0.7, 0.5, 1.0), (-2.0, 1.3, 0.4), (3.0, 0.2, 2.0)]:
        f = lambda y: (max(abs(y) - F, 0.0)) ** 2 * stats.norm.pdf(y, mu, s)
        ref = integrate.quad(f, mu - 12 * s, mu + 12 * s, points=[-F, F], limit=200)[0]
        assert gaussian_saturation(mu, s, F) == pytest.approx(ref, rel=1e-7, abs=1e-14)
        h = 1e-6
        fd = (gaussian_saturation(mu, s, F + h) - gaussian_saturation(mu, s, F - h)) / (2 * h)
        assert gaussian_saturation_grad_F(mu, s, F) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert gaussian_saturation(2.0, 0.0, 0.5) == pytest.approx(2.25)


@pytest.mark.parametrize("term,sigma_abs,sigma_rel", [("prog_abs", 1e-6, 0.0), ("prog_rel", 0.0, 0.05)])
def test_programming_noise_vs_monte_carlo(data, term, sigma_abs, sigma_rel):
    W, X = data
    hw = BASE.only("programming").replace(device={"prog_sigma_abs": sigma_abs, "prog_sigma_rel": sigma_rel})
    model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw))
    d = Design(hw.device.g_min, hw.device.g_max, 1.0)
    e = simulate(W, X, hw, trials=200)
    per_chip = e.mean(axis=(1, 2))          # chips are the independent draws
    check(layer_mse(model, d, term), per_chip.mean(), per_chip.std(ddof=1) / math.sqrt(len(per_chip)))
    assert layer_mse(model, d, "total") == pytest.approx(layer_mse(model, d, term))


@pytest.mark.parametrize("term", ["thermal", "shot"])
def test_read_noise_vs_monte_carlo(data, term):
    W, X = data
    hw = BASE.only(term)
    model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw))
    e = simulate(W, X, hw, trials=20)
    check(layer_mse(model, Design(hw.device.g_min, hw.device.g_max, 1.0), term), e.mean(), e.std() / math.sqrt(e.size))


def test_read_noise_scales_with_window(data):
    """A wider window raises the signal: thermal MSE in weight units falls, and G_min adds noise."""
    W, X = data
    hw = BASE.only("thermal")
    for gmin, gmax in [(1e-6, 2e-5), (2e-5, 1e-4)]:
        hwd = hw.replace(device={"g_min": gmin, "g_max": gmax})
        model = LayerErrorModel(W, hwd, InputStats.from_samples(X, hwd))
        e = simulate(W, X, hwd, trials=20)
        check(layer_mse(model, Design(gmin, gmax, 1.0), "thermal"), e.mean(), e.std() / math.sqrt(e.size))


def test_adc_quantization_vs_monte_carlo(data):
    W, X = data
    hw = BASE.only("adc").replace(adc={"bits": 7})
    model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw))
    F = float(model.fs_max().max())          # nothing saturates
    d = Design(hw.device.g_min, hw.device.g_max, F)
    e = simulate(W, X, hw, trials=1, design=d)
    # uniform rounding error: relative sd of e^2 is sqrt(144/80 - 1) = 0.894
    assert layer_mse(model, d, "saturation") < 1e-12
    check(layer_mse(model, d, "adc_quant"), e.mean(), 0.894 * e.mean() / math.sqrt(e.size))


def test_saturation_vs_monte_carlo_gaussian_inputs():
    rng = np.random.default_rng(3)
    n, m = 100, 10
    W = rng.normal(size=(n, m)) / 10
    X = rng.normal(size=(4000, n))
    hw = HardwareConfig(adc={"enabled": True, "bits": 16, "fs_mode": "fixed", "full_scale": 1.0},
                        dac={"enabled": False, "x_range": 4.0}, name="sat")
    stats_g = InputStats.from_moments(np.zeros(n), np.eye(n), 4.0)
    model = LayerErrorModel(W, hw, stats_g)
    sd = float(np.sqrt((W ** 2).sum(0)).mean()) / 4.0
    d = Design(hw.device.g_min, hw.device.g_max, 1.2 * sd)       # clip at ~1.2 sigma: heavy saturation
    e = simulate(W, X, hw, trials=1, design=d)
    pred = layer_mse(model, d, "saturation")
    assert pred > 50 * layer_mse(model, d, "adc_quant")
    se = e.reshape(-1, m).mean(1).std(ddof=1) / math.sqrt(e.shape[1])
    check(pred + layer_mse(model, d, "adc_quant"), e.mean(), se)
    # the empirical output model agrees with the Gaussian one on Gaussian inputs
    emp = LayerErrorModel(W, hw, InputStats.from_samples(X, hw), saturation="empirical")
    check(layer_mse(emp, d, "saturation"), e.mean(), se)


def test_saturation_empirical_on_relu_inputs(data):
    """Non-Gaussian (ReLU) inputs: the empirical output model tracks the simulator."""
    W, X = data
    hw = BASE.only("adc").replace(adc={"bits": 16})
    model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw), saturation="empirical")
    F = 0.05 * float(model.fs_max().max())
    d = Design(hw.device.g_min, hw.device.g_max, F)
    e = simulate(W, X, hw, trials=1, design=d)
    t = model.terms(d, per="layer")
    assert t["saturation"] > 1e4 * t["adc_quant"]
    # deterministic given the samples: the model averages the same samples, so it is exact
    assert t["total"] == pytest.approx(e.mean(), rel=1e-4)


def test_level_rounding_exact(data):
    W, X = data
    hw = BASE.only("quantization").replace(device={"levels": 16})
    model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw))
    e = simulate(W, X, hw, trials=1)
    assert layer_mse(model, Design(hw.device.g_min, hw.device.g_max, 1.0), "levels") == pytest.approx(e.mean(), rel=1e-9)


def test_stuck_devices_vs_monte_carlo(data):
    W, X = data
    hw = BASE.only("stuck").replace(device={"stuck_at_min": 0.01, "stuck_at_max": 0.005})
    model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw))
    e = simulate(W, X, hw, trials=300)
    per_chip = e.mean(axis=(1, 2))
    check(layer_mse(model, Design(hw.device.g_min, hw.device.g_max, 1.0), "stuck"), per_chip.mean(),
          per_chip.std(ddof=1) / math.sqrt(len(per_chip)))


def test_dac_rounding_vs_simulator(data):
    W, X = data
    hw = BASE.only("dac").replace(dac={"bits": 5})
    model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw))
    e = simulate(W, X, hw, trials=1)
    # rounding errors are treated as uniform and independent: allow 10 % model error
    check(layer_mse(model, Design(hw.device.g_min, hw.device.g_max, 1.0), "dac"), e.mean(), 0.0, rel=0.10)


def test_total_vs_monte_carlo_all_on(data):
    W, X = data
    hw = BASE.replace(adc={"bits": 8})
    model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw), saturation="empirical")
    F = 0.5 * float(model.fs_max().max())
    d = Design(hw.device.g_min, hw.device.g_max, F)
    e = simulate(W, X, hw, trials=100, design=d)
    per_chip = e.mean(axis=(1, 2))
    check(model.terms(d, per="layer")["total"], per_chip.mean(), per_chip.std(ddof=1) / 10, rel=0.03)


def test_fs_volts_and_hardware_for(data):
    W, X = data
    model = LayerErrorModel(W, BASE, InputStats.from_samples(X, BASE))
    d = Design(2e-6, 4e-5, 3.0)
    c = (4e-5 - 2e-6) / np.abs(W).max()
    assert np.allclose(model.fs_volts(d), 3.0 * c * BASE.array.r_tia * BASE.array.v_read)
    hw = model.hardware_for(d)
    assert hw.adc.fs_mode == "fixed" and hw.device.g_min == 2e-6 and hw.device.g_max == 4e-5
    mp = map_matrix(W, hw)
    assert torch.allclose(mp.full_scale, torch.full_like(mp.full_scale, float(model.fs_volts(d).flat[0])))


def test_bad_inputs(data):
    W, X = data
    st = InputStats.from_samples(X, BASE)
    with pytest.raises(ValueError, match="W: all weights are zero"):
        LayerErrorModel(np.zeros_like(W), BASE, st)
    with pytest.raises(ValueError, match="stats: describes 150 inputs but W has 10 rows"):
        LayerErrorModel(W[:10], BASE, st)
    with pytest.raises(ValueError, match="mapping.scheme"):
        LayerErrorModel(W, BASE.replace(mapping={"scheme": "offset"}), st)
    with pytest.raises(ValueError, match="saturation"):
        LayerErrorModel(W, BASE, st, saturation="bogus")
    with pytest.raises(ValueError, match="inputs: contains NaN"):
        InputStats.from_samples(np.full((4, 3), np.nan), BASE)
    with pytest.raises(ValueError, match="g_max"):
        Design(1e-5, 1e-6, 1.0)
    with pytest.raises(ValueError, match="fs"):
        Design(1e-6, 1e-5, -1.0)
