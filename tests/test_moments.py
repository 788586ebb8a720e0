"""MemSE moment propagation against independent truths: numerical integration, per-layer Monte
Carlo written here (not memcim's MC), and whole-network Monte Carlo."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import integrate

from memcim.analysis.memse_sim import monte_carlo_simulator
from memcim.analysis.moments import activation_moments, parse_model, predict_mse, quantize_weight, reference_output

from _references import dense_local_factors


def _gauss_expect(h, mu, sd):
    f = lambda z: h(z) * math.exp(-0.5 * ((z - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    return integrate.quad(f, mu - 12 * sd, mu + 12 * sd, limit=200, points=[0.0] if abs(mu) < 12 * sd else None)[0]


@pytest.mark.parametrize("mu,sd", [(0.0, 1.0), (1.5, 0.3), (-0.7, 0.5), (-3.0, 0.4), (0.2, 2.0)])
def test_relu_moments_vs_numerical_integration(mu, sd):
    m, v, sl = activation_moments("relu", torch.tensor([mu], dtype=torch.float64), torch.tensor([sd * sd], dtype=torch.float64))
    em = _gauss_expect(lambda z: max(z, 0.0), mu, sd)
    e2 = _gauss_expect(lambda z: max(z, 0.0) ** 2, mu, sd)
    slope = _gauss_expect(lambda z: float(z > 0), mu, sd)
    assert m.item() == pytest.approx(em, rel=1e-7, abs=1e-12)
    assert v.item() == pytest.approx(e2 - em * em, rel=1e-6, abs=1e-12)
    assert sl.item() == pytest.approx(slope, rel=1e-6, abs=1e-10)


def test_relu_zero_variance_is_deterministic():
    m, v, sl = activation_moments("relu", torch.tensor([-1.0, 2.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert m.tolist() == [0.0, 2.0] and v.tolist() == [0.0, 0.0] and sl.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("kind", ["softplus", "sigmoid", "tanh"])
def test_smooth_activation_taylor_orders_and_quadrature_vs_integration(kind):
    fn = {"softplus": lambda z: math.log1p(math.exp(z)) if z < 30 else z, "sigmoid": lambda z: 1 / (1 + math.exp(-z)),
          "tanh": math.tanh}[kind]
    mu, sd = 0.3, 0.6
    em = _gauss_expect(fn, mu, sd)
    ev = _gauss_expect(lambda z: fn(z) ** 2, mu, sd) - em ** 2
    t = lambda v: torch.tensor([v], dtype=torch.float64)
    errs = []
    for order in (2, 4, 6):
        m, v, _ = activation_moments(kind, t(mu), t(sd * sd), order=order)
        errs.append(abs(m.item() - em) + abs(v.item() - ev))
    assert errs[2] < errs[0]            # higher orders recover the gap
    m, v, _ = activation_moments(kind, t(mu), t(sd * sd), method="gh", gh_points=40)
    assert m.item() == pytest.approx(em, rel=1e-8) and v.item() == pytest.approx(ev, rel=1e-6)
    # order 2 is the paper's Eq. 8/9: f(mu) + f''(mu) s^2/2, f'(mu)^2 s^2 (checked by finite differences)
    h = 1e-4
    f1 = (fn(mu + h) - fn(mu - h)) / (2 * h)
    f2 = (fn(mu + h) - 2 * fn(mu) + fn(mu - h)) / h ** 2
    m, v, sl = activation_moments(kind, t(mu), t(sd * sd), order=2)
    assert m.item() == pytest.approx(fn(mu) + 0.5 * f2 * sd * sd, rel=1e-6)
    assert v.item() == pytest.approx(f1 * f1 * sd * sd, rel=1e-6) and sl.item() == pytest.approx(f1, rel=1e-6)


def _layer_mc(net, x, sigma, gmax, levels, trials, seed):
    """Independent per-layer Monte Carlo: sample noisy G+/G- directly, run torch's own layer."""
    gen = torch.Generator().manual_seed(seed)
    lin = net[0]
    w = lin.weight.detach().double()
    c = gmax / w.abs().max()
    d = gmax / levels
    gp = torch.round(c * w.clamp_min(0) / d) * d
    gn = torch.round(c * (-w).clamp_min(0) / d) * d
    outs = []
    for _ in range(trials):
        we = (gp + sigma * torch.randn(w.shape, generator=gen, dtype=w.dtype)
              - gn - sigma * torch.randn(w.shape, generator=gen, dtype=w.dtype)) / c
        with torch.no_grad():
            if isinstance(lin, nn.Linear):
                y = x @ we.T + lin.bias.double()
            else:
                y = torch.nn.functional.conv2d(x, we, lin.bias.double(), lin.stride, lin.padding)
            for m in list(net)[1:]:
                y = m(y)
        outs.append(y.reshape(x.shape[0], -1))
    return torch.stack(outs)                      # (T, B, D)


def test_linear_layer_moments_vs_mc():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 7)).double()
    x = torch.randn(3, 12, dtype=torch.float64)
    ys = _layer_mc(net, x, 0.05, 1.0, 16, 4000, 1)
    from memcim.analysis.moments import propagate

    st = propagate(parse_model(net), x, sigma=0.05, gmax=1.0, levels=16, cov="exact")
    t = ys.shape[0]
    emp_m, emp_v = ys.mean(0), ys.var(0)
    assert torch.all((st.mean - emp_m).abs() <= 5 * torch.sqrt(emp_v / t))
    assert torch.all((st.var - emp_v).abs() <= 5 * emp_v * math.sqrt(2 / t))
    # distinct columns have independent noise: the predicted cross-covariance is exactly zero
    off = st.cov[0] - torch.diag(torch.diagonal(st.cov[0]))
    assert off.abs().max() == 0
    emp_c = torch.cov(ys[:, 0, :].T)
    assert (emp_c - torch.diag(torch.diagonal(emp_c))).abs().max() < 5 * emp_v[0].max() / math.sqrt(t)


@pytest.mark.parametrize("mode", ["exact", "lowrank"])
def test_conv_layer_covariance_vs_mc(mode):
    """Shared programming noise correlates all positions of one output channel."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)).double()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    ys = _layer_mc(net, x, 0.05, 1.0, 32, 3000, 2)
    from memcim.analysis.moments import _to_full, propagate

    st = propagate(parse_model(net), x, sigma=0.05, gmax=1.0, levels=32, cov=mode, rank=18, full_below=0)
    cov = st.cov if mode == "exact" else _to_full(st).cov
    t = ys.shape[0]
    for b in range(2):
        emp = torch.cov(ys[:, b, :].T)
        sd = torch.sqrt(torch.diagonal(emp))
        se = torch.sqrt((sd[:, None] ** 2 * sd[None, :] ** 2 + emp ** 2) / t)
        assert torch.all((cov[b] - emp).abs() <= 5 * se + 1e-12)
    # within-channel off-diagonal covariance is large and positive, across channels it is zero
    c = cov[0].reshape(3, 25, 3, 25)
    assert c[0, 6, 0, 18] > 0.2 * math.sqrt(c[0, 6, 0, 6] * c[0, 18, 0, 18])
    assert c[0, :, 1, :].abs().max() == 0


def test_diagonal_mode_has_exact_variances_for_a_single_conv():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)).double()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    from memcim.analysis.moments import propagate

    L = parse_model(net)
    a = propagate(L, x, sigma=0.05, gmax=1.0, cov="exact")
    b = propagate(L, x, sigma=0.05, gmax=1.0, cov="diagonal")
    torch.testing.assert_close(a.var, b.var)


def _small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2),
                         nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(), nn.AvgPool2d(2)),
                         nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 4)).double().eval()


def test_batchnorm_folding_reproduces_the_model():
    net = _small_cnn()
    bn = net[3][1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    L = parse_model(net)
    assert sum(type(l).__name__ == "CrossbarLayer" for l in L) == 4
    torch.testing.assert_close(reference_output(L, x), net(x))


_Z3 = float(__import__("scipy.stats", fromlist=["norm"]).norm.ppf(1 - 0.01 / (2 * 3)))


@pytest.mark.parametrize("mode,tol", [("exact", 0.03), ("lowrank", 0.03)])
def test_whole_network_vs_monte_carlo(mode, tol):
    net = _small_cnn(3)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    kw = dict(sigma=0.02, gmax=1.0, levels=64)
    mc = monte_carlo_simulator(net, x, trials=1000, seed=5, dtype=torch.float64, **kw)
    p = predict_mse(net, x, cov=mode, power=False, **kw)
    err = abs(p.mse_mean - mc.mse_mean)
    # the simulator's Monte Carlo standard error at a family-wise 1 % over this file's 3 comparisons,
    # plus the network approximation (Taylor, Stein)
    assert err <= _Z3 * mc.mse_mean_stderr + tol * mc.mse_mean
    per_err = (p.per_output.mean(0) - mc.per_output.mean(0)).abs() / mc.per_output.mean(0)
    assert per_err.max() < 0.1


def test_mlp_relu_vs_monte_carlo():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 12), nn.Sigmoid(),
                        nn.Linear(12, 5)).double()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    kw = dict(sigma=0.02, gmax=1.0, levels=32)
    mc = monte_carlo_simulator(net, x, trials=1500, seed=7, dtype=torch.float64, **kw)
    p = predict_mse(net, x, power=False, **kw)
    assert abs(p.mse_mean - mc.mse_mean) <= _Z3 * mc.mse_mean_stderr + 0.02 * mc.mse_mean


def test_zero_noise_gives_the_quantization_error_exactly():
    net = _small_cnn(5)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    L = parse_model(net)
    p = predict_mse(L, x, sigma=0.0, gmax=1.0, levels=8, power=False)
    # brute force: run the model with quantized weights
    q = [type(l)(**{**l.__dict__, "weight": quantize_weight(l.weight, 8)}) if type(l).__name__ == "CrossbarLayer" else l
         for l in L]
    y = reference_output(q, x)
    torch.testing.assert_close(p.per_output, (y - net(x)) ** 2)
    assert torch.all(p.var == 0)


@pytest.mark.parametrize("layer", [nn.MaxPool2d(2), nn.GELU(), nn.Conv2d(2, 2, 3, groups=2)])
def test_unsupported_layer_is_one_line_error(layer):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), layer, nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=type(layer).__name__) as e:
        parse_model(net)
    assert "\n" not in str(e.value)


def test_bad_inputs():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x = torch.rand(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="gmax"):
        predict_mse(net, x, sigma=0.1, gmax=[1.0])
    with pytest.raises(ValueError, match="gmax"):
        predict_mse(net, x, sigma=0.1, gmax=-1.0)
    with pytest.raises(ValueError, match="gmax"):
        predict_mse(net, x, sigma=0.1, gmax=[1.0, np.ones(5)])
    with pytest.raises(ValueError, match="cov"):
        predict_mse(net, x, sigma=0.1, gmax=1.0, cov="banded")
    with pytest.raises(ValueError, match="levels"):
        predict_mse(net, x, sigma=0.1, gmax=1.0, levels=0)
    with pytest.raises(ValueError, match="sigma"):
        predict_mse(net, x, sigma=-0.1, gmax=1.0)
    with pytest.raises(ValueError, match="taylor_order"):
        predict_mse(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), x, sigma=0.1, gmax=1.0, taylor_order=3)
    with pytest.raises(ValueError, match="x"):
        predict_mse(net, torch.rand(4), sigma=0.1, gmax=1.0)
    with pytest.raises(ValueError, match="x"):
        predict_mse(net, torch.full((2, 4), float("nan")), sigma=0.1, gmax=1.0)
    with pytest.raises(ValueError, match="model"):
        parse_model(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="trials"):
        monte_carlo_simulator(net, x, sigma=0.1, gmax=1.0, trials=1)


def test_channel_factor_compression_keeps_the_top_directions_of_the_dense_factors():
    """The structured append+compress of a convolution's channel-local factors (Gram blocks without
    the dense block) keeps as much covariance as the best rank-m truncation of the dense factor
    set, computed here by brute force (eigenvalues of the full D x D covariance)."""
    from memcim.analysis.moments import _add_channel_factors

    g = torch.Generator().manual_seed(3)
    b, r, ho, wo, cout, k0, m = 2, 3, 4, 3, 5, 6, 7
    sp = torch.randn(b, r, ho, wo, generator=g, dtype=torch.float64)
    s = torch.rand(cout, generator=g, dtype=torch.float64) + 0.1
    old = torch.randn(b, k0, cout, ho, wo, generator=g, dtype=torch.float64)
    # dense factors written out entry by entry: factor (c, j) is s_c sp_j on channel c
    dense = torch.zeros(b, cout * r, cout, ho, wo, dtype=torch.float64)
    for c in range(cout):
        for j in range(r):
            dense[:, c * r + j, c] = s[c] * sp[:, j]
    full = torch.cat([old, dense], 1).reshape(b, k0 + cout * r, -1)
    cov = full.transpose(1, 2) @ full
    uncompressed = _add_channel_factors(old, s, sp, 100).reshape(b, k0 + cout * r, -1)
    assert torch.allclose(uncompressed.transpose(1, 2) @ uncompressed, cov, atol=1e-12)
    comp = _add_channel_factors(old, s, sp, m).reshape(b, m, -1)
    best = torch.linalg.eigvalsh(cov)[:, -m:].sum(1)
    kept = (comp * comp).sum((1, 2))
    assert torch.allclose(kept, best, rtol=1e-10)
    # and it never adds covariance: cov - F F^T stays positive semidefinite
    assert torch.linalg.eigvalsh(cov - comp.transpose(1, 2) @ comp).min() > -1e-9


def test_randomized_top_eigenvectors_capture_the_top_eigenvalues():
    from memcim.analysis.moments import _top_eig

    g = torch.Generator().manual_seed(4)
    q = torch.linalg.qr(torch.randn(3, 200, 200, generator=g, dtype=torch.float64))[0]
    lam = 0.8 ** torch.arange(200, dtype=torch.float64)             # a decaying spectrum
    a = q @ torch.diag_embed(lam.expand(3, 200)) @ q.transpose(1, 2)
    v = _top_eig(a, 10)                                               # 200 > 2 (10 + 8): randomized
    captured = ((a @ v) * v).sum((1, 2))
    assert torch.allclose(captured, lam[:10].sum().expand(3), rtol=1e-6)


def test_block_pooling_matches_avg_pool2d():
    import torch.nn.functional as F
    from memcim.analysis.moments import PoolLayer

    x = torch.randn(3, 4, 9, 7, dtype=torch.float64)
    for k in ((2, 2), (3, 2), (1, 3)):
        p = PoolLayer(k, k, (0, 0))
        assert torch.allclose(p.apply(x), F.avg_pool2d(x, k), atol=1e-14)
        assert torch.allclose(p.apply(x, square=True), F.avg_pool2d(x, k) / (k[0] * k[1]), atol=1e-14)


def test_channel_local_factors_are_the_dense_factors_written_out():
    """``Moments.local`` stands for the dense factors e_c (x) local[:, j, c] at index c r + j (written out here
    entry by entry), and a convolution of it (one single-channel convolution per input channel) equals
    torch's convolution of those dense factors."""
    import torch.nn.functional as F
    from memcim.analysis.moments import CrossbarLayer, Moments, _conv_factors, dense

    g = torch.Generator().manual_seed(5)
    b, r, c, h, w, k0, cout = 2, 3, 4, 5, 6, 2, 3
    loc = torch.randn(b, r, c, h, w, generator=g, dtype=torch.float64)
    old = torch.randn(b, k0, c, h, w, generator=g, dtype=torch.float64)
    mean = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    want = dense_local_factors(old, loc)
    var = (want * want).sum(1) + torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    st = Moments(mean, var, "lowrank", None, old, local=loc)
    assert torch.equal(dense(st).factors, want) and dense(st).local is None
    wq = torch.randn(cout, c, 3, 3, generator=g, dtype=torch.float64)
    layer = CrossbarLayer("conv", wq, torch.zeros(cout, dtype=torch.float64), (1, 1), (1, 1), (1, 1))
    conv = lambda x, w_=wq: F.conv2d(x, w_, None, 1, 1)
    out = _conv_factors(st, conv, wq, layer)
    fo = F.conv2d(want.reshape(-1, c, h, w), wq, None, 1, 1).reshape(b, k0 + c * r, cout, h, w)
    res = var - (want * want).sum(1)
    torch.testing.assert_close(out.factors, fo, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.var, F.conv2d(res, wq * wq, None, 1, 1) + (fo * fo).sum(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.mean, conv(mean), rtol=1e-12, atol=1e-12)


def test_exact_covariance_of_a_small_map_through_its_dense_matrix():
    """The exact mode's small-map path (the map's matrix A, then A C A^T) against A built entry by entry from
    avg_pool2d/conv2d of unit vectors and the covariance propagated with it."""
    import torch.nn.functional as F
    from memcim.analysis.moments import Moments, _linear_step

    g = torch.Generator().manual_seed(6)
    b, c, h, w = 3, 2, 4, 4
    d = c * h * w
    a = torch.randn(b, d, d, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)
    st = Moments(torch.randn(b, c, h, w, generator=g, dtype=torch.float64), torch.diagonal(cov, dim1=1, dim2=2).reshape(b, c, h, w),
                 "exact", cov)
    wq = torch.randn(3, c, 3, 3, generator=g, dtype=torch.float64)
    fn = lambda x: F.conv2d(x, wq, None, 1, 1)
    out = _linear_step(st, fn, lambda v: F.conv2d(v, wq * wq, None, 1, 1))
    A = torch.stack([fn(torch.eye(d, dtype=torch.float64)[i].reshape(1, c, h, w)).reshape(-1) for i in range(d)], 1)
    torch.testing.assert_close(out.cov, A @ cov @ A.t(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.var.reshape(b, -1), torch.diagonal(A @ cov @ A.t(), dim1=1, dim2=2), rtol=1e-10, atol=1e-10)


def test_plans_of_an_earlier_prediction_give_the_same_result():
    net = _small_cnn(7)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    kw = dict(sigma=0.02, gmax=1.0, levels=16, power=False)
    p = predict_mse(net, x, **kw)
    q = predict_mse(net, x, plans=p.plans, **kw)
    assert len(p.plans) == 4 and torch.equal(p.per_output, q.per_output)     # 2 convolutions, 2 linear layers
    with pytest.raises(ValueError, match="plans"):
        predict_mse(net, x, plans=p.plans[:1], **kw)
