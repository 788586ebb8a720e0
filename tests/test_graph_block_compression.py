"""The graph walker's compression of token states and attention's mixing factors
(memcim.analysis.graph), against brute-force dense covariance matrices.

Truth: the covariance ``F^T F + diag(residual)`` built densely from the factors before compression,
and the dense covariance of ``a @ b`` for independent per-unit residuals, computed by explicit sums.
"""
import itertools

import torch

from memcim.analysis import graph as G


def _walker(rank=4, max_factors=6, token_rank=None):
    w = G._Walker.__new__(G._Walker)
    w.cov, w.rank, w.max_factors, w.full_below = "lowrank", rank, max_factors, 0
    w.tokens = True
    w.token_rank = rank if token_rank is None else token_rank
    w._ids = itertools.count(1000)
    return w


def _dense(s):
    """Per-sample dense covariance (B, D, D) of a state: factors plus the diagonal residual."""
    b = s.mean.shape[0]
    f = s.fac.reshape(b, s.fac.shape[1], -1)
    c = f.transpose(1, 2) @ f
    return c + torch.diag_embed(s.residual().reshape(b, -1))


def test_block_remainder_keeps_variance_and_token_blocks():
    torch.manual_seed(0)
    b, k, T, E = 2, 40, 5, 3
    fac = torch.randn(b, k, T, E, dtype=torch.float64)
    var = (fac * fac).sum(1) + 0.1
    s = G.GraphState(torch.zeros(b, T, E, dtype=torch.float64), var, fac, tuple(range(k)))
    full = _dense(s)
    w = _walker(max_factors=4, token_rank=T)                     # every block kept whole
    out = w.compress(s, set(), 4, within=0)
    got = _dense(out)
    # the per-unit variance is unchanged
    torch.testing.assert_close(got.diagonal(dim1=1, dim2=2), full.diagonal(dim1=1, dim2=2))
    # the (T, T) block of every channel (over its tokens) is exact
    idx = torch.arange(T * E).reshape(T, E)
    for e in range(E):
        i = idx[:, e]
        torch.testing.assert_close(got[:, i][:, :, i], full[:, i][:, :, i])


def test_block_remainder_top_directions_stay_below_each_block():
    torch.manual_seed(1)
    b, k, T, E = 1, 30, 6, 4
    fac = torch.randn(b, k, T, E, dtype=torch.float64)
    s = G.GraphState(torch.zeros(b, T, E, dtype=torch.float64), (fac * fac).sum(1), fac, tuple(range(k)))
    w = _walker(max_factors=3, token_rank=2)
    out = w.compress(s, set(), 3, within=0)
    full, kept = _dense(s), out.fac.reshape(b, out.fac.shape[1], -1)
    kc = kept.transpose(1, 2) @ kept
    torch.testing.assert_close(_dense(out).diagonal(dim1=1, dim2=2), full.diagonal(dim1=1, dim2=2))
    idx = torch.arange(T * E).reshape(T, E)
    for e in range(E):          # each channel's token block: what the factors keep is below the truth
        i = idx[:, e]
        gap = full[:, i][:, :, i] - kc[:, i][:, :, i]
        assert float(torch.linalg.eigvalsh(gap).min()) > -1e-9
    assert out.fac.shape[1] == 3 + E * 2


def test_mix_left_and_right_are_the_product_covariance():
    """``O = a @ b`` with independent per-unit residuals of a and b (means ``ma``, ``mb``): the dense
    covariance of O is ``sum_s r_a[t,s] mb[s,d] mb[s,e]`` within a row plus
    ``sum_s ma[t,s] r_b[s,d] ma[u,s]`` within a column (plus ``Va Vb`` on the diagonal). With every
    direction kept, the factors the two mixings add reproduce both, off the diagonal."""
    torch.manual_seed(2)
    B, H, T, D = 1, 2, 4, 3
    ma = torch.rand(B, H, T, T, dtype=torch.float64)
    mb = torch.randn(B, H, T, D, dtype=torch.float64)
    ra = torch.rand(B, H, T, T, dtype=torch.float64) * 0.1
    rb = torch.rand(B, H, T, D, dtype=torch.float64) * 0.1
    a = G.GraphState(ma, ra.clone())
    bs = G.GraphState(mb, rb.clone())
    O = G._product(a, bs, torch.matmul)
    w = _walker(rank=10)
    O = w._mix_left(w._mix_residual(O, ma, rb), ra, mb)
    got = _dense(O)[0]
    # brute force: O[h,t,d] = sum_s a[h,t,s] b[h,s,d]
    n = H * T * D
    want = torch.zeros(n, n, dtype=torch.float64)
    ix = torch.arange(n).reshape(H, T, D)
    for h in range(H):
        for t, u in itertools.product(range(T), repeat=2):
            for d, e in itertools.product(range(D), repeat=2):
                c = 0.0
                if t == u:
                    c += float((ra[0, h, t] * mb[0, h, :, d] * mb[0, h, :, e]).sum())
                if d == e:
                    c += float((ma[0, h, t] * rb[0, h, :, d] * ma[0, h, u]).sum())
                want[ix[h, t, d], ix[h, u, e]] = c
    off = ~torch.eye(n, dtype=torch.bool)
    torch.testing.assert_close(got[off], want[off])
    assert bool((got.diagonal() >= want.diagonal() - 1e-12).all())


def test_wide_token_state_gets_no_blocks():
    """More channels than the block budget (8 max_factors) allows: the plain compression, whose kept
    factors are the top principal directions (their covariance's trace is the top eigenvalues')."""
    torch.manual_seed(3)
    b, k, T, E = 1, 30, 3, 20
    fac = torch.randn(b, k, T, E, dtype=torch.float64)
    s = G.GraphState(torch.zeros(b, T, E, dtype=torch.float64), (fac * fac).sum(1), fac, tuple(range(k)))
    w = _walker(max_factors=2)
    out = w.compress(s, set(), 2, within=0)
    assert out.fac.shape[1] == 2
    lam = torch.linalg.eigvalsh(_dense(s)[0] - torch.diag_embed(s.residual().reshape(1, -1))[0])
    torch.testing.assert_close((out.fac ** 2).sum(), lam[-2:].sum())
