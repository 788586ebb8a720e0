"""Noise-aware activations against numerical integration; gradients against finite differences."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from memcim.analysis.column_error import Design
from memcim.config import preset
from memcim.nn.noise_aware import (NoiseAwareActivation, NoiseAwareMLP, expected_clip, finetune_noise_aware,
                                   layer_noise, noise_aware_activation, noise_aware_relu)

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


def test_noise_aware_mlp_without_noise_is_the_digital_model():
    m = _tiny().double()
    hw = preset("ideal").replace(adc={"enabled": False})
    noises = {i: layer_noise(m[i].weight, hw, Design(hw.device.g_min, hw.device.g_max, 1.0)) for i in (1, 3)}
    for nz in noises.values():
        assert float(nz.w_std.abs().max()) == 0.0 and float(nz.A.abs().max()) == 0.0
    net = NoiseAwareMLP(m, noises).eval()
    x = torch.randn(5, 8, dtype=F64)
    assert torch.allclose(net(x).double(), m(x), atol=1e-6)


def test_layer_noise_matches_closed_form_weight_noise():
    """The injected weight noise has the programming variance of the column model, device by device."""
    m = _tiny()
    hw = preset("convex_cim")
    d = Design(2e-6, 6e-5, 1.0)
    nz = layer_noise(m[1].weight, hw, d)
    W = m[1].weight.detach().double().numpy()
    c = (d.g_max - d.g_min) / np.abs(W).max()
    w = W[2, 5]
    gp, gn = d.g_min + c * max(w, 0), d.g_min + c * max(-w, 0)
    hand = math.sqrt(2 * 5e-7 ** 2 + 0.03 ** 2 * (gp ** 2 + gn ** 2)) / c
    assert float(nz.w_std[2, 5]) == pytest.approx(hand, rel=1e-6)


def test_finetune_runs_and_rejects_bad_settings():
    from memcim.data.digits import load_digits

    ds = load_digits("train").subset(256)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    hw = preset("convex_cim")
    noises = {i: layer_noise(m[i].weight, hw, Design(1e-6, 1e-4, 4.0)) for i in (1, 3)}
    before = [p.detach().clone() for p in m.parameters()]
    h = finetune_noise_aware(m, noises, ds, epochs=2, lr=1e-2, batch_size=64, seed=0)
    assert len(h["loss"]) == 2 and h["loss"][1] < h["loss"][0]
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    with pytest.raises(ValueError, match="--epochs"):
        finetune_noise_aware(m, noises, ds, epochs=0)
    with pytest.raises(ValueError, match="--lr"):
        finetune_noise_aware(m, noises, ds, lr=-1.0)
    with pytest.raises(ValueError, match="noises: missing"):
        NoiseAwareMLP(m, {1: noises[1]})
