"""MemSE semantics through memcim's hardware simulator (memcim.nn / memcim.simulate), checked
against a network quantized by hand, a closed form derived by hand for one noisy linear layer,
the vectorised MemSE Monte Carlo, and the moment prediction. Tolerances: 4 combined standard
errors of the Monte Carlo means (seeds fixed)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from memcim.analysis.memse_sim import memse_hardware, monte_carlo_simulator
from memcim.analysis.moments import predict_mse


def _cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Softplus(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(3 * 4 * 4, 6), nn.Tanh(), nn.Linear(6, 4))
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.1, 0.1)
    return net.double().eval()


def _x(b=12, seed=1):
    return torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _q(w, n):
    """Round to the n+1 levels of step max|w|/n, sign kept (worked out from the issue's q)."""
    step = w.abs().max() / n
    return torch.sign(w) * torch.round(w.abs() / step) * step


def test_noise_free_chip_is_the_hand_quantized_network():
    net, x, n = _cnn(), _x(), 8
    conv, bn, lin1, lin2 = net[0], net[1], net[5], net[7]
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)                     # fold BatchNorm by hand
    w0 = conv.weight * a.reshape(-1, 1, 1, 1)
    b0 = (conv.bias - bn.running_mean) * a + bn.bias
    with torch.no_grad():
        h = nn.functional.conv2d(x, _q(w0, n), b0, padding=1)
        h = nn.functional.avg_pool2d(nn.functional.softplus(h), 2).flatten(1)
        h = torch.tanh(h @ _q(lin1.weight, n).t() + lin1.bias)
        want = h @ _q(lin2.weight, n).t() + lin2.bias
    got = monte_carlo_simulator(net, x, sigma=0.0, gmax=[0.7, 2.0, 5.0], levels=n, trials=2, dtype=torch.float64)
    torch.testing.assert_close(got.output_mean, want, rtol=0, atol=1e-10)
    assert got.trial_mse[0] == got.trial_mse[1]        # sigma = 0: every chip is the same


def test_one_noisy_linear_layer_matches_the_hand_derived_mse():
    # y = (1/c)(G+ - G-) x + b, each device N(0, s^2):  E(y - wx - b)^2 = (x (w_q - w))^2 + 2 s^2 |x|^2 / c^2
    torch.manual_seed(3)
    lin = nn.Linear(20, 3).double()
    x = torch.rand(5, 20, dtype=torch.float64)
    n, g, s, trials = 16, 2.0, 0.05, 2000
    w = lin.weight.detach()
    c = g / w.abs().max()
    want = ((x @ (_q(w, n) - w).t()) ** 2 + 2 * s * s * (x * x).sum(1, keepdim=True) / c ** 2).mean()
    mc = monte_carlo_simulator(lin, x, sigma=s, gmax=g, levels=n, trials=trials, seed=11, dtype=torch.float64)
    assert abs(mc.mse_mean - float(want)) <= 4 * mc.mse_mean_stderr, (mc.mse_mean, float(want), mc.mse_mean_stderr)


def test_prediction_agrees_with_the_simulator():
    net, x = _cnn(), _x()
    kw = dict(sigma=0.02, gmax=1.0, levels=32)
    mc = monte_carlo_simulator(net, x, trials=600, seed=4, **kw)
    for cov in ("exact", "lowrank"):
        p = predict_mse(net, x, cov=cov, **kw)
        # 4 standard errors of the MC, plus 3 % for the second-order Taylor expansion
        assert abs(p.mse_mean - mc.mse_mean) <= 4 * mc.mse_mean_stderr + 0.03 * mc.mse_mean, (cov, p.mse_mean, mc.mse_mean)


def test_offset_keeps_clipping_out_and_zero_offset_shows_it():
    # MemSE puts unclipped noise on devices at 0 S; the simulator clips at 0 S. The default offset
    # (10 sigma) removes the clip. With offset 0 a device at 0 S reads max(N(0, s^2), 0): mean
    # s/sqrt(2 pi), variance s^2 (1/2 - 1/(2 pi)). Output 0 of W = [[1, 0, ...], [-1, 0, ...]] with
    # x = 1 has one device at G_max (never clipped), 29 positive and 30 negative devices at 0 S:
    # bias -s/sqrt(2 pi), variance s^2 (1 + 59 (1/2 - 1/(2 pi))); output 1 mirrors it (c = 1).
    lin = nn.Linear(30, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0] + [0.0] * 29, [-1.0] + [0.0] * 29], dtype=torch.float64))
        lin.bias.zero_()
    x = torch.ones(1, 30, dtype=torch.float64)
    s, g = 0.1, 1.0
    on = monte_carlo_simulator(lin, x, sigma=s, gmax=g, levels=4, trials=1000, seed=0, dtype=torch.float64)
    off = monte_carlo_simulator(lin, x, sigma=s, gmax=g, levels=4, trials=1000, seed=0, dtype=torch.float64, offset=0.0)
    want_on = 2 * s * s * 30                          # 2 s^2 |x|^2 / c^2
    want_off = s * s * (1 + 59 * (0.5 - 1 / (2 * math.pi))) + s * s / (2 * math.pi)
    assert abs(on.mse_mean - want_on) <= 4 * on.mse_mean_stderr, (on.mse_mean, want_on)
    assert abs(off.mse_mean - want_off) <= 4 * off.mse_mean_stderr, (off.mse_mean, want_off)


def test_memse_hardware_is_the_issue_semantics():
    hw = memse_hardware(3.0, 0.01, 128)
    assert hw.device.levels == 129 and hw.device.g_max - hw.device.g_min == pytest.approx(3.0)
    # inputs in volts (full drive = an input of 1 at v_read = 1 V), one array per layer
    assert hw.dac.x_range == 1.0 and hw.array.v_read == 1.0 and hw.array.r_tia == 1.0
    assert memse_hardware(3.0, 0.01, 128, rows=784).array.rows == 784
    assert hw.device.g_min == pytest.approx(0.1) and hw.device.prog_sigma_abs == 0.01
    assert not hw.dac.enabled and not hw.adc.enabled and hw.mapping.scheme == "differential"
    assert hw.mapping.scale == "matrix" and not hw.device.thermal_noise and not hw.device.shot_noise


def test_bad_inputs():
    net, x = _cnn(), _x(4)
    with pytest.raises(ValueError, match="per-column"):
        monte_carlo_simulator(net, x, sigma=0.01, gmax=[np.ones(3), 1.0, 1.0], trials=2)
    with pytest.raises(ValueError, match="trials"):
        monte_carlo_simulator(net, x, sigma=0.01, gmax=1.0, trials=1)
    with pytest.raises(ValueError, match="MaxPool2d"):
        monte_carlo_simulator(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), x, sigma=0.01, gmax=1.0)
    with pytest.raises(ValueError, match="gmax"):
        memse_hardware(-1.0, 0.01, 8)
    with pytest.raises(ValueError, match="sigma"):
        memse_hardware(1.0, float("nan"), 8)
