"""The closed form's fast paths (issue 17 item 3, third pass) against independent truths: torch's own
``F.unfold`` and ``eigh``, the residual recomputed from the factors by hand, the derivative polynomials, and the
float64 prediction for the float32 scalar-variance path."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from memcim.analysis import moments as mo

from _references import dense_local_factors


@pytest.mark.parametrize("shape,k,d,p,s", [((3, 2, 17, 19), (3, 2), (2, 1), (1, 2), (2, 3)),
                                         ((2, 3, 12, 12), (3, 3), (1, 1), (1, 1), (1, 1)),
                                         ((2, 1, 9, 8), (5, 5), (1, 1), (0, 0), (1, 1)),
                                         ((2, 4, 3, 3), (3, 3), (1, 1), (1, 1), (1, 1))])
def test_unfold_is_torchs_unfold(shape, k, d, p, s):
    x = torch.randn(*shape, dtype=torch.float64)
    assert torch.equal(mo._unfold(x, k, d, p, s), F.unfold(x, k, dilation=d, padding=p, stride=s))


def test_spatial_top_eigenvectors_capture_the_top_eigenvalues_of_patch_grams():
    """Patch Gram matrices of smoothed random images (the top eigenvalue ~93 % of the trace, the fifth ~0.4 % of
    the first, as the network's feature maps): the randomized directions capture the top-r variance of ``eigh``
    to 1e-3 (measured: 3e-6 at 18 rows, 4.5e-4 at 36) and never more; small Grams are ``eigh`` itself."""
    g = torch.Generator().manual_seed(0)
    img = F.avg_pool2d(torch.rand(8, 4, 20, 20, generator=g, dtype=torch.float64), 3, 1, 1)
    for c in (1, 2, 4):                        # 9, 18, 36 rows
        u = F.unfold(img[:, :c], 3, padding=1)
        gram = u @ u.transpose(1, 2)
        r = 4
        v = mo._top_eig_spatial(gram, r)
        lam = torch.linalg.eigvalsh(gram)
        captured = ((gram @ v) * v).sum((1, 2))
        best = lam[:, -r:].sum(1)
        assert torch.all(captured <= best * (1 + 1e-12))
        torch.testing.assert_close(captured, best, rtol=1e-3, atol=0)
        torch.testing.assert_close(v.transpose(1, 2) @ v, torch.eye(r, dtype=torch.float64).expand(8, r, r),
                                   rtol=0, atol=1e-10)
        if gram.shape[-1] <= mo._SPATIAL_EIGH_BELOW:
            assert torch.equal(v, torch.linalg.eigh(gram)[1][..., -r:])


def test_softplus_second_order_derivatives_are_the_polynomials():
    mu = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    for beta in (1.0, 0.5, 3.0):
        for a, b in zip(mo._derivs2("softplus", beta, mu), mo._derivs("softplus", beta, mu, 2)):
            assert torch.equal(a, b)


def _cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2),
                         nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                         nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(20, 3)).double()


@pytest.mark.parametrize("act_method,order", [("taylor", 2), ("taylor", 4), ("gh", 2)])
def test_tracked_residual_is_the_variance_the_factors_leave(act_method, order):
    """``Moments.resid`` (passed from step to step) against ``var - sum F^2`` recomputed from the dense factors."""
    layers = mo.parse_model(_cnn(1), torch.float64)
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    gm = mo.resolve_gmax(1.0, layers, torch.float64)

    def crossbar(ix, layer, st):
        wq = mo.quantize_weight(layer.weight, 32)
        c = gm[ix] / layer.wmax
        return mo._crossbar_step(st, layer, wq, 2.0 * 0.02 ** 2 / (c * c), 4, 64, keep_local=True)

    _, states = mo.run_layers(layers, x, crossbar, full_below=0, act_method=act_method, taylor_order=order,
                              return_all=True)
    seen = 0
    for st in states:
        if st.resid is None:
            continue
        dn = mo.dense(st)
        by_hand = (dn.var - (dn.factors * dn.factors).sum(1)).clamp_min(0)
        torch.testing.assert_close(st.resid, by_hand, rtol=1e-8, atol=1e-12 * float(dn.var.max()))
        seen += 1
    assert seen >= 6


def test_float32_prediction_with_one_device_variance_matches_float64():
    """The memse preset's per-device variances differ by ~1e-12 relative (the clipped Gaussian); in float32 they
    are one value and the scalar path runs: the prediction stays the float64 one to float32 precision."""
    net = _cnn(2)
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    kw = dict(sigma=0.01, gmax=3.0, levels=64, power=False)
    p64 = mo.predict_mse(mo.parse_model(net, torch.float64), x, dtype=torch.float64, **kw)
    p32 = mo.predict_mse(mo.parse_model(net, torch.float32), x.float(), dtype=torch.float32, **kw)
    assert abs(p32.mse_mean - p64.mse_mean) <= 1e-4 * p64.mse_mean
    torch.testing.assert_close(p32.per_output.double(), p64.per_output, rtol=1e-3, atol=1e-6 * p64.mse_mean)


def test_block_mean_leaves_its_input_alone():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    x0 = x.clone()
    for k in ((1, 1), (1, 2), (2, 1), (2, 2), (3, 3)):
        y = mo.PoolLayer(k, k, (0, 0)).apply(x, square=True)
        assert torch.equal(x, x0)
        torch.testing.assert_close(y, F.avg_pool2d(x, k) / (k[0] * k[1]), rtol=1e-14, atol=1e-14)


def test_full_covariance_of_channel_local_factors_is_the_written_out_one():
    """``_to_full`` with channel-local factors against ``F^T F + diag(var - diag F^T F)`` of the dense factors
    written out entry by entry."""
    g = torch.Generator().manual_seed(3)
    b, r, c, h, w, k0 = 2, 3, 4, 2, 3, 5
    loc = torch.randn(b, r, c, h, w, generator=g, dtype=torch.float64)
    old = torch.randn(b, k0, c, h, w, generator=g, dtype=torch.float64)
    want = dense_local_factors(old, loc)
    var = (want * want).sum(1) + torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    f = want.reshape(b, k0 + c * r, -1)
    low = f.transpose(1, 2) @ f
    full = low + torch.diag_embed(var.reshape(b, -1) - torch.diagonal(low, dim1=1, dim2=2))
    for fac in (old, None):
        st = mo.Moments(torch.zeros(b, c, h, w, dtype=torch.float64), var, "lowrank", None, fac, local=loc)
        ref = full if fac is not None else (lambda fl: fl.transpose(1, 2) @ fl)(want[:, k0:].reshape(b, c * r, -1))
        if fac is None:
            ref = ref + torch.diag_embed(var.reshape(b, -1) - torch.diagonal(ref, dim1=1, dim2=2))
        torch.testing.assert_close(mo._to_full(st).cov, ref, rtol=1e-12, atol=1e-12)


def test_quantizer_level_sum_matches_the_sum_over_every_level():
    """The ADC's moments of a narrow Gaussian partial sum (summed over the levels near its mean, fewer for
    narrower sums) against the brute-force sum over every level of the ADC's range in float64 (Python's
    math.erfc): mean, variance and mean slope, at widths on both sides of every window change and at the
    range's edges (saturation)."""
    import math

    from memcim.analysis.predict import quantizer_moments
    from memcim.config import preset

    adc = preset("generic").adc
    k_max = adc.steps
    ratios = [0.0, 0.01, 0.1, 0.142, 0.143, 0.285, 0.286, 0.5, 0.571, 0.572, 0.857, 0.858, 1.0, 1.5, 1.999]
    centres = [0.0, 0.37, -5.5, 40.2, -0.5, k_max - 0.3, -k_max + 1.7, k_max + 2.0]
    m, sd = [], []
    for r in ratios:
        for c in centres:
            m.append(c)
            sd.append(r)
    step = torch.full((len(m),), 0.75, dtype=torch.float64)
    mt = torch.tensor(m, dtype=torch.float64) * step
    vt = (torch.tensor(sd, dtype=torch.float64) * step) ** 2
    mean, var, slope = quantizer_moments(mt, vt, step, adc)

    def phi_cdf(z):
        return 0.5 * math.erfc(-z / math.sqrt(2.0))

    for i, (mu, s) in enumerate(zip(mt.tolist(), (vt.sqrt()).tolist())):
        st = float(step[i])
        levels = range(-k_max, k_max + 1)
        if s == 0.0:                       # deterministic: the transfer itself
            k = max(-k_max, min(k_max, round(mu / st)))
            assert float(mean[i]) == pytest.approx(k * st, abs=1e-12)
            assert float(var[i]) == 0.0
            continue
        p = []
        for k in levels:
            lo = 0.0 if k == -k_max else phi_cdf(((k - 0.5) * st - mu) / s)
            hi = 1.0 if k == k_max else phi_cdf(((k + 0.5) * st - mu) / s)
            p.append(hi - lo)
        e1 = sum(pk * k * st for pk, k in zip(p, levels))
        e2 = sum(pk * (k * st) ** 2 for pk, k in zip(p, levels))
        dens = sum(st * math.exp(-0.5 * (((k + 0.5) * st - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                   for k in range(-k_max, k_max))
        fs = k_max * st
        assert abs(float(mean[i]) - e1) <= 1e-8 * fs, (mu, s)
        assert abs(float(var[i]) - (e2 - e1 * e1)) <= 1e-8 * fs * fs, (mu, s)
        assert abs(float(slope[i]) - dens) <= 5e-8, (mu, s)
