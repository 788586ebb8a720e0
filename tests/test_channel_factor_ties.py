"""A convolution's new shared-noise factors compressed on their own (no factors before the layer):
their Gram matrix ``diag(s^2) (x) (sp sp^T)`` ties exactly across channels when every channel has one
noise level, and the kept directions must not depend on rounding. Truths: the best rank-m truncation
of the dense covariance (brute-force eigenvalues), exact scaling in ``s``, and central finite
differences of the predicted MSE in ``log G_max`` (float64)."""
import sys
from pathlib import Path

import pytest
import torch

from memcim.analysis import moments as mo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nn_helpers import TinyCNN  # noqa: E402


def _gradient_and_central_differences(layers, x, u0, objective, max_factors, h=1e-5):
    """Autograd's gradient of ``mse_objective`` in log G_max at ``u0`` and its central differences."""
    def f(u):
        o, _, _ = mo.mse_objective(layers, x, list(torch.exp(u)), sigma=0.01, levels=128, objective=objective,
                                   max_factors=max_factors)
        return o

    u = u0.clone().requires_grad_(True)
    g, = torch.autograd.grad(f(u), u)
    fd = torch.zeros_like(u0)
    with torch.no_grad():
        for i in range(u0.numel()):
            e = torch.zeros_like(u0)
            e[i] = h
            fd[i] = (f(u0 + e) - f(u0 - e)) / (2 * h)
    return g, fd


def _spatial(b=2, r=4, ho=6, wo=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, 9, ho * wo, generator=g, dtype=torch.float64)
    vec = mo._top_eig_spatial(u @ u.transpose(1, 2), r)
    return (vec.transpose(1, 2) @ u).reshape(b, r, ho, wo)


def _dense_cov(s, sp):
    b, r, ho, wo = sp.shape
    cout = s.shape[0]
    dense = torch.zeros(b, cout * r, cout, ho, wo, dtype=torch.float64)
    for c in range(cout):
        for j in range(r):
            dense[:, c * r + j, c] = s[c] * sp[:, j]
    f = dense.reshape(b, cout * r, -1)
    return f.transpose(1, 2) @ f


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("uniform", [True, False])
def test_new_factors_alone_keep_the_best_truncation(m, uniform):
    sp = _spatial()
    cout = 3
    s = torch.full((cout,), 0.1, dtype=torch.float64) if uniform else torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)
    cov = _dense_cov(s, sp)
    comp = mo._add_channel_factors(None, s, sp, m).reshape(sp.shape[0], m, -1)
    kept = (comp * comp).sum((1, 2))
    assert torch.allclose(kept, torch.linalg.eigvalsh(cov)[:, -m:].sum(1), rtol=1e-10)
    assert torch.linalg.eigvalsh(cov - comp.transpose(1, 2) @ comp).min() > -1e-12
    # every kept factor lies on one channel (the channels' programming noise is independent)
    per_channel = comp.reshape(sp.shape[0], m, cout, -1).abs().sum(-1) > 0
    assert bool((per_channel.sum(-1) == 1).all())


@pytest.mark.parametrize("m", [1, 2, 4])
def test_tied_channels_kept_set_does_not_depend_on_rounding(m):
    """Scaling every channel's noise by 1 + eps scales the kept covariance by (1 + eps)^2 exactly (before:
    the kept channel jumped between the tied ones under 1e-6 changes)."""
    sp = _spatial()
    s = torch.full((4,), 0.1, dtype=torch.float64)
    base = mo._add_channel_factors(None, s, sp, m).reshape(sp.shape[0], m, -1)
    c0 = base.transpose(1, 2) @ base
    for eps in torch.linspace(-1e-6, 1e-6, 9, dtype=torch.float64):
        f = mo._add_channel_factors(None, s * (1 + eps), sp, m).reshape(sp.shape[0], m, -1)
        assert torch.allclose(f.transpose(1, 2) @ f, c0 * (1 + eps) ** 2, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("max_factors", [1, 2, 4])
def test_gmax_gradient_matches_central_differences_at_small_max_factors(max_factors):
    from memcim.data.digits import load_digits

    net = TinyCNN().double().eval()
    x = load_digits("test").x[:8].double()
    layers = mo.parse_model(net, torch.float64)
    u0 = torch.log(torch.tensor([1.0, 1.3, 1.6], dtype=torch.float64))
    g, fd = _gradient_and_central_differences(layers, x, u0, "mean", max_factors)
    # central differences: truncation ~h^2 f''' and rounding ~1e-16 |f| / h, far below 1e-6 of the gradient
    assert torch.allclose(g, fd, rtol=1e-6, atol=1e-6 * float(g.abs().max())), (g, fd)


@pytest.mark.parametrize("k", [100, 200])      # exact eigh / randomized range finder
def test_top_eig_gradient_moves_the_kept_subspace(k):
    """A covariance kept by the top-r projection, ``C = F^T V V^T F`` (V: top eigenvectors of ``F F^T``),
    differentiated through ``V`` as well: central differences of a weighted sum of ``C`` (before: ``V``
    detached, 0.08 % off here)."""
    g = torch.Generator().manual_seed(1)
    b, d, r = 2, 300, 5
    q = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    f0 = ((q * (0.7 ** torch.arange(k, dtype=torch.float64))).T @ torch.randn(k, d, generator=g, dtype=torch.float64))
    f0 = f0.expand(b, k, d).clone()
    wt = torch.randn(d, d, generator=g, dtype=torch.float64)
    direction = torch.randn(b, k, d, generator=g, dtype=torch.float64)

    def loss(f):
        v = mo._top_eig(f @ f.transpose(1, 2), r)
        c = v.transpose(1, 2) @ f
        return ((c.transpose(1, 2) @ c) * wt).sum()

    fr = f0.clone().requires_grad_(True)
    gf, = torch.autograd.grad(loss(fr), fr)
    h = 1e-6
    with torch.no_grad():
        fd = (loss(f0 + h * direction) - loss(f0 - h * direction)) / (2 * h)
    # eigh: exact to rounding; randomized: the Ritz directions' own error (spectrum 0.7^i, 3 sketch passes)
    assert abs(float((gf * direction).sum() - fd)) <= (1e-8 if k <= 128 else 1e-6) * abs(float(fd))


@pytest.mark.parametrize("max_factors", [1, 2, 4])
def test_gmax_gradient_of_the_reference_cnn_at_small_max_factors(max_factors):
    """Five convolutions: the later layers compress old and new factors together (before: FD off by up to
    40x at max_factors 1-3, 2-10 % at 4)."""
    from memcim.data.datasets import load_dataset
    from memcim.nn.models import get_reference_model

    net = get_reference_model("mnist-cnn-small").double().eval()
    x = load_dataset("mnist", "test", limit=4).x.double()
    layers = mo.parse_model(net, torch.float64)
    n = len(mo.crossbar_layers(layers))
    u0 = torch.log(torch.tensor([1.0 + 0.3 * i for i in range(n)], dtype=torch.float64))
    g, fd = _gradient_and_central_differences(layers, x, u0, "max", max_factors)
    # what stays detached (the spatial eigen-directions of the input mean, moved by G_max only through the
    # activations' curvature) is measured at <= 1.2e-5 of the gradient's scale
    assert torch.allclose(g, fd, rtol=0, atol=1e-4 * float(fd.abs().max())), (g, fd)
