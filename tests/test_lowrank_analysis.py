"""Closed form of the low-rank two-step scheme against Monte Carlo, brute force and hand algebra."""
import itertools
import math

import numpy as np
import pytest

from memcim.analysis.lowrank import (SPLITS, baseline_error, factorize, harmonic_asymptotic, harmonic_matrix,
                                     harmonic_optimal_exponent, harmonic_singular_values, lowrank_terms,
                                     lowrank_terms_factors, second_moment, svd_stats)
from memcim.analysis.lowrank_montecarlo import mc_baseline, mc_lowrank
from memcim.optimize.lowrank import optimize_lowrank


def _random_R(rng, n):
    L = rng.standard_normal((n, n)) / math.sqrt(n)
    return L @ L.T + 0.2 * np.eye(n)


@pytest.mark.parametrize("n,m,k,r1,r2,split,s1,s2,seed", [
    (12, 9, 3, 2, 3, "balanced", 0.3, 0.2, 0),
    (12, 9, 5, 1, 4, "left", 0.2, 0.4, 1),
    (10, 14, 4, 3, 1, "right", 0.5, 0.1, 2),
    (16, 16, 16, 1, 1, "balanced", 0.3, 0.3, 3),   # full rank: no truncation
    (8, 20, 2, 5, 2, "left", 1.0, 0.8, 4),          # product term large
])
def test_closed_form_matches_monte_carlo_gaussian_inputs(n, m, k, r1, r2, split, s1, s2, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, m))
    R = _random_R(rng, n)
    A, B = factorize(svd_stats(W, R), k, split)
    pred = lowrank_terms(W, k, r1, r2, s1, s2, split, R).total
    mc = mc_lowrank(W, A, B, r1, r2, s1, s2, trials=3000, R=R, batch=8, seed=seed + 100)
    assert abs(mc.mean - pred) < 4.5 * mc.stderr, (mc.mean, pred, mc.stderr)


def test_closed_form_within_2_percent_at_1000_trials_with_data_inputs():
    # fixed data rows X: the expectation over x is the row mean, i.e. R = X^T X / N
    rng = np.random.default_rng(7)
    n, m, k, r1, r2 = 96, 96, 8, 2, 3
    W = harmonic_matrix(n, m, rank=48, seed=1)
    X = rng.standard_normal((128, n)) @ np.diag(np.linspace(0.5, 1.5, n))
    R = second_moment(X)
    for split in SPLITS:
        A, B = factorize(svd_stats(W, R), k, split)
        pred = lowrank_terms(W, k, r1, r2, 0.4, 0.4, split, R).total
        mc = mc_lowrank(W, A, B, r1, r2, 0.4, 0.4, trials=1000, X=X, seed=11)
        assert 3 * mc.stderr < 0.02 * pred  # 1000 trials resolve 2 % at three standard errors
        assert abs(mc.mean - pred) < 0.02 * pred
        assert abs(mc.mean - pred) < 4.5 * mc.stderr


@pytest.mark.parametrize("n,m,sigma,seed", [(10, 7, 0.3, 0), (6, 15, 1.2, 1)])
def test_baseline_matches_monte_carlo(n, m, sigma, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, m))
    R = _random_R(rng, n)
    pred = baseline_error(n, m, sigma, R)
    assert pred == pytest.approx(sigma ** 2 * m * np.trace(R))
    mc = mc_baseline(W, sigma, trials=3000, R=R, batch=8, seed=seed)
    assert abs(mc.mean - pred) < 4.5 * mc.stderr


def test_cumulative_sum_form_equals_direct_matrix_form():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((11, 8))
    R = _random_R(rng, 11)
    st = svd_stats(W, R)
    for split, k in itertools.product(SPLITS, range(1, 9)):
        A, B = factorize(st, k, split)
        a = lowrank_terms(st, k, 2, 3, 0.3, 0.5, split).to_dict()
        b = lowrank_terms_factors(W, A, B, 2, 3, 0.3, 0.5, R).to_dict()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9)


def test_hand_derivation_rank_one():
    # W = s u v^T (rank 1), R = I, k = 1, balanced: no truncation; ||B||^2 = s, tr(A^T A) = s.
    n, m, s = 5, 4, 3.0
    u = np.zeros(n); u[0] = 1
    v = np.zeros(m); v[1] = 1
    W = s * np.outer(u, v)
    t = lowrank_terms(W, 1, 2, 4, 0.5, 0.25, "balanced")
    assert t.truncation == pytest.approx(0.0, abs=1e-12)
    assert t.first_step == pytest.approx(0.25 / 2 * n * s)
    assert t.second_step == pytest.approx(0.0625 / 4 * m * s)
    assert t.product == pytest.approx(0.25 / 2 * 0.0625 / 4 * 1 * m * n)


def _brute_force(W, R, s1, s2, budget):
    n, m = W.shape
    best = (np.inf, None)
    for split in SPLITS:
        for k in range(1, min(n, m) + 1):
            A, B = factorize(W, k, split)
            for r1 in range(1, budget // (n * k) + 1):
                for r2 in range(1, budget // (k * m) + 1):
                    if r1 * n * k + r2 * k * m > budget:
                        continue
                    e = lowrank_terms_factors(W, A, B, r1, r2, s1, s2, R).total
                    if e < best[0]:
                        best = (e, (k, r1, r2, split))
    return best


@pytest.mark.parametrize("n,m,budget_factor,s1,s2,seed", [
    (6, 5, 1.0, 0.3, 0.3, 0), (5, 7, 1.0, 1.0, 0.2, 1), (6, 6, 2.5, 0.1, 0.6, 2), (4, 8, 0.6, 0.5, 0.5, 3)])
def test_optimizer_never_worse_than_brute_force(n, m, budget_factor, s1, s2, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, m)) @ np.diag(1.0 / np.arange(1, m + 1))
    R = _random_R(rng, n)
    budget = int(budget_factor * n * m)
    choice = optimize_lowrank(W, s1, s2, R=R, budget=budget)
    bf_err, bf_arg = _brute_force(W, R, s1, s2, budget)
    assert choice.predicted <= bf_err * (1 + 1e-9)
    assert choice.predicted == pytest.approx(bf_err, rel=1e-9)
    assert choice.devices <= budget
    A, B = factorize(W, choice.k, choice.split)
    assert lowrank_terms_factors(W, A, B, choice.r1, choice.r2, s1, s2, R).total == pytest.approx(choice.predicted)


def test_harmonic_generator_profile():
    W = harmonic_matrix(40, 30, rank=12, alpha=5.0, seed=3)
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(s[:12], 5.0 / np.arange(1, 13), rtol=1e-10)
    assert np.all(s[12:] < 1e-10)
    assert np.sum(W ** 2) < 25.0 * math.pi ** 2 / 6  # Eq. 27
    assert not np.allclose(W, harmonic_matrix(40, 30, rank=12, alpha=5.0, seed=4))
    np.testing.assert_array_equal(W, harmonic_matrix(40, 30, rank=12, alpha=5.0, seed=3))


def _exact_harmonic(n, k, r1, r2, sigma):
    # exact closed form for s_i = n / i, R = I, square, balanced, full rank; from singular values only
    s = harmonic_singular_values(n, alpha=float(n))
    trunc = float(np.sum(s[k:] ** 2))
    B2 = float(np.sum(s[:k]))
    v1, v2 = sigma ** 2 / r1, sigma ** 2 / r2
    return trunc + v1 * n * B2 + v2 * n * B2 + v1 * v2 * k * n * n


def test_asymptotic_order_matches_exact_growth():
    sigma = 0.5
    ns = [2 ** e for e in range(8, 17, 2)]
    exact, asym = [], []
    for n in ns:
        k = int(round(math.sqrt(n)))
        r = n // (2 * k)
        exact.append(_exact_harmonic(n, k, r, r, sigma))
        asym.append(harmonic_asymptotic(n, k, n, r, r, sigma, sigma)["total"])
    exact, asym = np.array(exact), np.array(asym)
    # the asymptotic expression tracks the exact error ...
    assert np.all(np.abs(asym / exact - 1) < 0.15)
    assert abs(asym[-1] / exact[-1] - 1) < 0.02
    # ... and its growth: log-log slopes agree, and both are ~ n^{3/2} log n, below the baseline's n^2
    sl_exact = np.diff(np.log(exact)) / np.diff(np.log(ns))
    sl_asym = np.diff(np.log(asym)) / np.diff(np.log(ns))
    np.testing.assert_allclose(sl_exact, sl_asym, atol=0.03)
    ratio = exact / (np.array(ns) ** 1.5 * np.log(ns))
    assert ratio.max() / ratio.min() < 1.5
    assert harmonic_optimal_exponent(1.0)["error_exponent"] == 1.5
    assert harmonic_optimal_exponent(0.25)["kappa"] == 0.25


def test_optimizer_beats_baseline_on_harmonic_profile():
    W = harmonic_matrix(128, seed=0)
    c = optimize_lowrank(W, 1.0)
    assert c.predicted < c.baseline
    assert c.devices <= 128 * 128
    # and the optimum over k is interior: the U-shape
    assert 1 < c.k < 128


@pytest.mark.parametrize("call,match", [
    (lambda W: lowrank_terms(W, 0, 1, 1, 0.1, 0.1), "rank: 0 is not allowed"),
    (lambda W: lowrank_terms(W, 9, 1, 1, 0.1, 0.1), "rank: 9 is not allowed"),
    (lambda W: lowrank_terms(W, 2, 0, 1, 0.1, 0.1), "r1: 0"),
    (lambda W: lowrank_terms(W, 2, 1, -1, 0.1, 0.1), "r2: -1"),
    (lambda W: lowrank_terms(W, 2, 1, 1, -0.1, 0.1), "sigma1"),
    (lambda W: lowrank_terms(W, 2, 1, 1, 0.1, float("nan")), "sigma2"),
    (lambda W: lowrank_terms(W, 2, 1, 1, 0.1, 0.1, split="middle"), "split"),
    (lambda W: lowrank_terms(W, 2, 1, 1, 0.1, 0.1, R=np.ones((8, 7))), "not square"),
    (lambda W: lowrank_terms(W, 2, 1, 1, 0.1, 0.1, R=np.eye(5)), "does not match"),
    (lambda W: lowrank_terms(W, 2, 1, 1, 0.1, 0.1, R=-np.eye(8)), "positive semi-definite"),
    (lambda W: optimize_lowrank(W, 0.1, budget=10), "fits no scheme"),
    (lambda W: svd_stats(np.full((3, 3), np.nan)), "NaN"),
])
def test_bad_inputs(call, match):
    W = np.random.default_rng(0).standard_normal((8, 6))
    with pytest.raises(ValueError, match=match):
        call(W)
