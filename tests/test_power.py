"""Expected read power (the energy model's expectation) against hand derivations and against the
power measured on every chip of the simulator's Monte Carlo."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import norm

from memcim.analysis.memse_sim import ReadPowerProbe, monte_carlo_simulator
from memcim.analysis.power import predict_power
from memcim.analysis.predict import predict
from memcim.config import HardwareConfig
from memcim.nn.evaluate import chip_outputs


def _z(k: int, alpha: float = 0.01) -> float:
    """Bonferroni-corrected two-sided normal quantile for k comparisons at family-wise alpha."""
    return float(norm.ppf(1 - alpha / (2 * k)))


def test_memse_power_of_one_layer_by_hand():
    """Eqs. 16-21 on a 3-input, 2-output layer, written out with numpy: levels from 0 S, c = G_max/max|w|,
    device v^2 sum x^2 (G+ + G-), TIA r [(x.G+)^2 + (x.G-)^2 + 2 sigma^2 sum x^2] per column."""
    w = np.array([[0.5, -1.0, 0.26], [0.0, 0.74, -0.3]])          # torch layout (out, in)
    x = np.array([[1.0, 0.5, -2.0], [0.2, -0.1, 0.3]])
    net = nn.Sequential(nn.Linear(3, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w))
    n, gmax, sigma, r = 4, 2.0, 0.1, 3.0
    step = 1.0 / n                                                 # max|w| / N
    wq = np.sign(w) * np.round(np.abs(w) / step) * step             # 0.5, -1, 0.25 / 0, 0.75, -0.25
    c = gmax / 1.0
    gp, gn = c * np.maximum(wq, 0), c * np.maximum(-wq, 0)
    dev = np.mean([(xb ** 2 * (gp + gn)).sum() for xb in x])
    tia = np.mean([r * (((gp @ xb) ** 2).sum() + ((gn @ xb) ** 2).sum() + 2 * 2 * sigma ** 2 * (xb ** 2).sum())
                   for xb in x])
    p = predict_power(net, torch.tensor(x), sigma=sigma, gmax=gmax, levels=n, r=r, cov="exact")
    assert p["device_W"] == pytest.approx(dev, rel=1e-12)
    assert p["tia_W"] == pytest.approx(tia, rel=1e-12)


def test_memse_power_is_unchanged_on_the_benchmark_cnn():
    """The budgets of bench/results/bench_gmax.json (small CNN, 16 MNIST inputs, common G_max 1 and 3 S)
    were computed by the Eqs. 16-21 implementation this one replaced. The power reads the second moment
    of every layer's input, so it moves with the low-rank covariance's compression: issue 17's later
    compression (factors kept up to 2 max_factors) moved it by 3.4e-7 relative, hence rel=1e-6."""
    from memcim.data.datasets import load_dataset
    from memcim.nn.loading import load_model

    net = load_model("mnist-cnn-small").double().eval()
    x = load_dataset("mnist", "test", limit=16).x.double()
    for g, committed in ((1.0, 10972617.493582465), (3.0, 78475855.77373867)):
        assert predict_power(net, x, sigma=0.01, gmax=g, levels=128)["total_W"] == pytest.approx(committed, rel=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_memse_power_vs_power_measured_on_simulated_chips(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        net = nn.Sequential(nn.Linear(10, 8), nn.Softplus(), nn.Linear(8, 4)).double()
        x = torch.rand(5, 10, dtype=torch.float64)
    else:
        net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2), nn.Flatten(),
                            nn.Linear(12, 3)).double()
        x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    kw = dict(sigma=0.05, gmax=[0.7, 1.3], levels=16)
    trials = 600
    pred = predict_power(net, x, cov="exact", **kw)
    mc = monte_carlo_simulator(net, x, trials=trials, seed=3, power=True, dtype=torch.float64, **kw)
    z = _z(4)
    for k, p in enumerate(pred["per_layer"]):
        for j, key in enumerate(("device_W", "tia_W")):
            s = mc.trial_power[:, k, j]
            se = s.std(ddof=1) / math.sqrt(trials)
            assert abs(p[key] - s.mean()) <= z * se + 1e-9 * abs(p[key]), (k, key, p[key], s.mean(), se)


HW = HardwareConfig(array={"rows": 4, "cols": 6, "v_read": 0.2, "r_tia": 2e4},
                    device={"g_min": 2e-6, "g_max": 1e-4, "levels": 9, "prog_sigma_rel": 0.2, "prog_sigma_abs": 5e-7},
                    dac={"enabled": False}, adc={"enabled": False})


def test_plan_power_of_a_noise_free_matrix_by_hand():
    """Real watts on a config: 5 inputs on 4-row arrays (2 row tiles), 2 outputs, differential pair on
    adjacent columns, every bit line with its own TIA; inputs scaled by their largest magnitude."""
    hw = HW.set("device.prog_sigma_rel", 0.0).set("device.prog_sigma_abs", 0.0)
    W = np.array([[1.0, -0.5], [0.25, 0.0], [-1.0, 0.75], [0.5, 0.5], [0.0, -0.25]])
    x = np.array([[0.3, -0.6, 0.9, 0.0, 0.15], [1.2, 0.4, -0.2, 0.8, -0.4]])
    p = predict(W, x, hw, power=True).power
    gmin, gmax, v, r = 2e-6, 1e-4, 0.2, 2e4
    c = (gmax - gmin) / 1.0                                        # per matrix, max|W| = 1; levels step (gmax-gmin)/8
    lv = (gmax - gmin) / 8
    gp = gmin + np.round(c * np.maximum(W, 0) / lv) * lv
    gn = gmin + np.round(c * np.maximum(-W, 0) / lv) * lv
    dev = tia = 0.0
    for xb in x:
        u = xb / np.abs(xb).max()
        dev += v * v * (u ** 2 @ (gp + gn)).sum()
        for rows in (slice(0, 3), slice(3, 5)):                     # balanced tiling: 3 + 2 rows
            i = v * np.concatenate([u[rows] @ gp[rows], u[rows] @ gn[rows]])
            tia += r * (i ** 2).sum()
    assert p["device_W"] == pytest.approx(dev / 2, rel=1e-9)
    assert p["tia_W"] == pytest.approx(tia / 2, rel=1e-9)


@pytest.mark.parametrize("scheme", ["differential", "offset"])
def test_plan_power_vs_power_measured_on_simulated_chips(scheme):
    """A small MLP on a config with relative + absolute programming noise and row tiles, in real
    watts: the closed form's expectation against the energy model on every programmed chip. A fixed
    input range (dac.x_range): with a per-read range, a random input's scale is approximated by
    max_i sqrt(E[x_i^2]) (a documented limit of the closed form)."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    x = torch.randn(6, 7, dtype=torch.float64)
    hw = HW.set("mapping.scheme", scheme).set("dac.x_range", 3.0)
    pred = predict(net, x, hw, power=True, cov="exact").power
    probe = ReadPowerProbe(x.shape[0])
    samples = []
    trials = 400
    for _, analog, _ in chip_outputs(net, x, hw, chips=trials, seed=5, dtype=torch.float64, progress=False,
                                     on_program=probe):
        samples.append(probe.measure(analog))
    s = np.asarray(samples)                                        # (chips, layers, 2)
    z = _z(4)
    for k, p in enumerate(pred["per_layer"]):
        for j, key in enumerate(("device_W", "tia_W")):
            se = s[:, k, j].std(ddof=1) / math.sqrt(trials)
            assert abs(p[key] - s[:, k, j].mean()) <= z * se + 1e-9 * abs(p[key]), (k, key, p[key], s[:, k, j].mean(), se)


def test_bad_r():
    net = nn.Sequential(nn.Linear(3, 2)).double()
    with pytest.raises(ValueError, match="r"):
        predict_power(net, torch.rand(2, 3), sigma=0.1, gmax=1.0, r=0.0)
