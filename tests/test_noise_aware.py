"""Noise-aware activations against numerical integration; gradients against finite differences; the
read's moments against the simulator's Monte Carlo; fine-tuning on the training read."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from memcim.config import preset
from memcim.mapping.crossbar import map_matrix
from memcim.nn.analog import AnalogLinear, convert_to_analog
from memcim.nn.noise_aware import (NoiseAwareActivation, NoiseAwarePair, expected_clip, finetune_noise_aware,
                                   noise_aware_activation, noise_aware_network, noise_aware_relu, read_moments)
from memcim.simulate import program as program_chip

F64 = torch.float64
ACT = {"relu": lambda y: max(y, 0.0), "identity": lambda y: y, "sigmoid": lambda y: 1 / (1 + math.exp(-y)),
       "tanh": math.tanh, "softplus": lambda y: math.log1p(math.exp(y)) if y < 30 else y}
CASES = [(0.3, 0.5, math.inf, 0.0), (-0.4, 1.2, 1.0, 0.0), (2.0, 0.7, 1.5, 0.0), (0.5, 0.3, 0.8, 0.6),
         (-1.0, 2.0, 3.0, -0.5), (1.0, 1e-3, 0.5, 0.0)]


def integrate_activation(name, mu, s, fs, b):
    lo, hi = b - fs, b + fs
    f = lambda y: ACT[name](min(max(y, lo), hi)) * stats.norm.pdf(y, mu, s)
    pts = [p for p in (lo, hi, 0.0) if math.isfinite(p) and abs(p - mu) < 14 * s]
    return integrate.quad(f, mu - 14 * s, mu + 14 * s, points=pts or None, limit=400, epsabs=1e-12)[0]


@pytest.mark.parametrize("mu,s,fs,b", CASES)
@pytest.mark.parametrize("name", ["relu", "identity", "sigmoid", "tanh", "softplus"])
def test_activation_matches_integration(name, mu, s, fs, b):
    x = torch.tensor([mu], dtype=F64)
    got = float(noise_aware_activation(name, x, torch.tensor([s], dtype=F64), fs, b, nodes=64))
    ref = integrate_activation(name, mu, s, fs, b)
    # closed forms are exact; quadrature of a clipped smooth function is accurate to ~1e-4
    tol = 1e-9 if name in ("relu", "identity") else (2e-3 if math.isfinite(fs) else 1e-6)
    assert got == pytest.approx(ref, abs=tol)


def test_relu_definition_and_limits():
    """f~(x) = E[min(ReLU(x + n), FS)]; sigma -> 0 gives min(ReLU(x), FS); FS = inf the smooth ReLU."""
    x = torch.linspace(-3, 3, 13, dtype=F64)
    assert torch.allclose(noise_aware_relu(x, 0.0, 1.0), x.clamp(0, 1.0))
    s = torch.full_like(x, 0.8)
    ref = x * torch.special.ndtr(x / s) + s * torch.exp(-0.5 * (x / s) ** 2) / math.sqrt(2 * math.pi)
    assert torch.allclose(noise_aware_relu(x, s), ref)
    rng = np.random.default_rng(0)
    n = rng.normal(size=200_000) * 0.8
    mc = np.minimum(np.maximum(0.4 + n, 0), 1.0)
    assert float(noise_aware_relu(torch.tensor(0.4, dtype=F64), 0.8, 1.0)) == pytest.approx(
        mc.mean(), abs=5 * mc.std() / math.sqrt(n.size))


@pytest.mark.parametrize("name", ["relu", "identity", "sigmoid", "tanh", "softplus"])
def test_gradients_match_finite_differences(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, generator=g, dtype=F64, requires_grad=True)
    s = (torch.rand(6, generator=g, dtype=F64) + 0.2).requires_grad_()
    fs = (torch.rand(6, generator=g, dtype=F64) + 0.5).requires_grad_()
    b = (0.3 * torch.randn(6, generator=g, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: noise_aware_activation(name, *a, nodes=48), (x, s, fs, b),
                                    eps=1e-6, atol=1e-6)


def test_relu_gradient_closed_form():
    """d f~/d mu = Phi(beta) - Phi(alpha) and d f~/d sigma = phi(alpha) - phi(beta)."""
    mu = torch.tensor([0.3], dtype=F64, requires_grad=True)
    s = torch.tensor([0.6], dtype=F64, requires_grad=True)
    noise_aware_relu(mu, s, 1.0).sum().backward()
    a, bb = (0 - 0.3) / 0.6, (1.0 - 0.3) / 0.6
    assert float(mu.grad) == pytest.approx(stats.norm.cdf(bb) - stats.norm.cdf(a), rel=1e-10)
    assert float(s.grad) == pytest.approx(stats.norm.pdf(a) - stats.norm.pdf(bb), rel=1e-10)


def test_expected_clip_zero_sigma_and_module():
    x = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)
    assert torch.allclose(expected_clip(x, torch.zeros(3, dtype=F64), -1.0, 1.0), x.clamp(-1, 1))
    mod = NoiseAwareActivation("tanh")
    assert torch.allclose(mod(x, torch.zeros(3, dtype=F64)), torch.tanh(x), atol=1e-12)
    with pytest.raises(ValueError, match="activation: 'gelu' is not allowed"):
        NoiseAwareActivation("gelu")
    with pytest.raises(ValueError, match="activation"):
        noise_aware_activation("swish", x, 1.0)


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_noise_aware_network_without_noise_is_the_digital_model():
    m = _tiny().double()
    hw = preset("ideal").replace(adc={"enabled": False})
    net = noise_aware_network(convert_to_analog(m, hw)).train()
    assert isinstance(net[1], NoiseAwarePair) and isinstance(net[2], AnalogLinear)
    x = torch.randn(5, 8, dtype=F64)
    torch.testing.assert_close(net(x), m(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scheme", ["differential", "offset"])
@pytest.mark.parametrize("adc", [False, True])
def test_read_moments_match_the_simulator_monte_carlo(scheme, adc):
    """Mean and variance of the per-read noise given one chip, against 4,000 reads of that chip.

    ADC off: thermal + shot noise are Gaussian, so mean and variance agree to the Monte Carlo
    standard error. ADC on (read noise of about one ADC step or more, no saturation): rounding acts
    as uniform noise of variance step^2/12 added to it (here 15-20 % of the variance; with read
    noise well below one step the model fails, as any dither model does).
    """
    g = torch.Generator().manual_seed(0)
    W = torch.randn(150, 5, dtype=F64, generator=g)
    x = torch.rand(3, 150, dtype=F64, generator=g)
    hw = preset("convex_cim").replace(mapping={"scheme": scheme}, array={"rows": 64, "cols": 8},
                                      device={"bandwidth": 3e10},
                                      adc={"enabled": adc, "bits": 8 if scheme == "differential" else 6,
                                           "saturate": False})
    plan = map_matrix(W, hw)
    chip = program_chip(plan, seed=1, dtype=F64)
    mean, var, sat = read_moments(chip, x)
    T = 4000
    reads = torch.cat([chip.mvm(x) for _ in range(T)])            # (T, 3, 5)
    m_mc, v_mc = reads.mean(0), reads.var(0)
    z_mean = (mean - m_mc) / (v_mc / T).sqrt()
    assert float(z_mean.abs().max()) < 4.5                       # 15 comparisons, Bonferroni at 1e-4
    rel = var / v_mc - 1
    assert float(rel.abs().max()) < 4.5 * (2 / (T - 1)) ** 0.5 + (0.02 if adc else 0.0)
    assert bool(torch.isinf(sat).all())
    # saturation bound: with the ADC saturating, the sum of the row tiles' full scales (x c xs)
    hw2 = hw.replace(adc={"enabled": True, "saturate": True, "fs_mode": "fixed", "full_scale": 0.5})
    _, _, sat2 = read_moments(program_chip(map_matrix(W, hw2), seed=1, dtype=F64), x)
    xs = x.abs().amax(1, keepdim=True)
    c = map_matrix(W, hw2).scale[:, :5]                          # (row tiles, out)
    k = hw.array.r_tia * hw.array.v_read
    torch.testing.assert_close(sat2, (0.5 / k / c).sum(0) * xs)


def test_finetune_runs_and_rejects_bad_settings():
    from memcim.data.digits import load_digits

    ds = load_digits("train").subset(256)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    hw = preset("convex_cim")
    before = [p.detach().clone() for p in m.parameters()]
    h = finetune_noise_aware(m, hw, ds, epochs=2, lr=1e-2, batch_size=64, seed=0)
    assert len(h["loss"]) == 2 and h["loss"][1] < h["loss"][0]
    assert all(type(l) in (nn.Flatten, nn.Linear, nn.ReLU) for l in m)   # still the digital model
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    with pytest.raises(ValueError, match="--epochs"):
        finetune_noise_aware(m, hw, ds, epochs=0)
    with pytest.raises(ValueError, match="^lr: "):
        finetune_noise_aware(m, hw, ds, lr=-1.0)
    with pytest.raises(TypeError, match="model: expected an nn.Sequential"):
        finetune_noise_aware(nn.Linear(64, 10), hw, ds)
