"""Closed-form error of low-rank two-step VMM with repetition averaging (paper 000).

The paper's equations were lost in text extraction; they are rebuilt here from its text and
checked against Monte Carlo (:mod:`memcim.experiments.lowrank_fig2`, ``tests/test_lowrank_analysis.py``).

Model
-----
A crossbar computes ``y = x W`` with ``x`` a row vector of length ``n`` and ``W`` of shape
``(n, m)``. The input has second moment ``R = E[x^T x]`` (``n x n``, symmetric PSD). Every
programmed entry gets additive i.i.d. ``N(0, sigma^2)`` noise, in weight units.

*Baseline* (paper Theorem 2): ``y_hat = x (W + N)`` and

    E||y_hat - y||^2 = sigma^2 * m * tr(R).

*Low-rank two-step scheme* (paper Theorem 3): ``W ~ A B`` with ``A`` (n x k), ``B`` (k x m) from
the truncated SVD. ``A`` is programmed on ``r1`` arrays, ``B`` on ``r2`` arrays; the first-step
outputs ``x (A + N1_j)`` are averaged, which equals ``x (A + N1_bar)`` with ``N1_bar`` of
variance ``sigma1^2 / r1``; likewise the second step. With ``y_hat = x (A + N1_bar)(B + N2_bar)``,
all cross terms vanish (zero-mean, independent noises) and

    E||y_hat - y||^2 = tr((W - AB)^T R (W - AB))               truncation
                     + sigma1^2/r1 * tr(R) * ||B||_F^2          first-step noise
                     + sigma2^2/r2 * m * tr(A^T R A)            second-step noise
                     + sigma1^2/r1 * sigma2^2/r2 * k * m * tr(R) product noise.

With ``W = U S V^T`` and ``g_i = u_i^T R u_i``: truncation is ``sum_{i>k} s_i^2 g_i`` and, for
``A = U_k D_A``, ``B = D_B V_k^T`` with ``D_A D_B = S_k``: ``||B||_F^2 = sum d_B,i^2`` and
``tr(A^T R A) = sum d_A,i^2 g_i``. So every term for every ``k`` is a cumulative sum over one SVD.

Splits of the singular values: ``balanced`` (``D_A = D_B = sqrt(S_k)``), ``left``
(``A = U_k S_k``, ``B = V_k^T``), ``right`` (``A = U_k``, ``B = S_k V_k^T``).
Devices used: ``r1*n*k + r2*k*m`` (baseline ``n*m``), counting one device per weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPLITS = ("balanced", "left", "right")
EULER_GAMMA = 0.5772156649015329

__all__ = [
    "SPLITS", "LowRankTerms", "SVDStats", "check_matrix", "check_second_moment", "second_moment",
    "svd_stats", "factorize", "baseline_error", "lowrank_terms", "lowrank_terms_factors",
    "devices_used", "harmonic_singular_values", "harmonic_matrix", "harmonic_asymptotic",
    "harmonic_optimal_exponent",
]


# ----------------------------------------------------------------------------- validation

def check_matrix(W, name: str = "W") -> np.ndarray:
    """Return ``W`` as a finite float64 2-D array, or raise ``ValueError`` naming ``name``."""
    try:
        import torch

        if isinstance(W, torch.Tensor):
            W = W.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.size == 0:
        raise ValueError(f"{name}: shape {W.shape} is not allowed; a non-empty 2-D matrix (n, m) is required")
    if not np.all(np.isfinite(W)):
        raise ValueError(f"{name}: contains NaN or inf; all entries must be finite")
    return W


def check_second_moment(R, n: int, name: str = "R") -> np.ndarray:
    """Validate an input second-moment matrix: finite, square ``(n, n)``, symmetric, PSD.

    ``R=None`` means white unit inputs, ``R = I``.
    """
    if R is None:
        return np.eye(n)
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"{name}: shape {R.shape} is not square; R = E[x^T x] must be (n, n) = ({n}, {n})")
    if R.shape[0] != n:
        raise ValueError(f"{name}: shape {R.shape} does not match the matrix's {n} rows; must be ({n}, {n})")
    if not np.all(np.isfinite(R)):
        raise ValueError(f"{name}: contains NaN or inf; all entries must be finite")
    scale = max(float(np.max(np.abs(R))), 1e-300)
    if np.max(np.abs(R - R.T)) > 1e-8 * scale:
        raise ValueError(f"{name}: is not symmetric; R = E[x^T x] must be symmetric positive semi-definite")
    if np.linalg.eigvalsh((R + R.T) / 2)[0] < -1e-8 * scale:
        raise ValueError(f"{name}: has a negative eigenvalue; R must be positive semi-definite")
    return (R + R.T) / 2


def second_moment(X=None, cov=None, mean=None) -> np.ndarray:
    """Input second moment ``R = E[x^T x]`` from data rows ``X`` or from a covariance and mean.

    Parameters
    ----------
    X : (N, n) array of input row vectors; gives ``R = X^T X / N``.
    cov, mean : covariance (n, n) and mean (n,) of ``x``; gives ``R = cov + mean^T mean``.
    """
    if X is not None:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1:
            raise ValueError(f"inputs: shape {X.shape} is not allowed; need (N, n) rows of input vectors")
        if not np.all(np.isfinite(X)):
            raise ValueError("inputs: contains NaN or inf; all entries must be finite")
        return X.T @ X / X.shape[0]
    if cov is None:
        raise ValueError("second_moment: give either X (data) or cov (covariance)")
    cov = np.asarray(cov, dtype=np.float64)
    R = cov.copy()
    if mean is not None:
        mu = np.asarray(mean, dtype=np.float64).reshape(-1)
        R = R + np.outer(mu, mu)
    return check_second_moment(R, R.shape[0] if R.ndim == 2 else -1, "cov")


def _check_sigma(sigma, name):
    s = float(sigma)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{name}: {sigma} is not allowed; the noise std must be finite and >= 0")
    return s


def _check_int(v, name, lo, hi=None, what=""):
    if isinstance(v, float) and not float(v).is_integer():
        raise ValueError(f"{name}: {v} is not an integer")
    iv = int(v)
    if iv < lo or (hi is not None and iv > hi):
        rng = f"{lo} <= {name.lstrip('-')} <= {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: {v} is not allowed; must be {rng}{what}")
    return iv


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not allowed; choose one of {', '.join(SPLITS)}")
    return split


# ----------------------------------------------------------------------------- SVD statistics

def _svd(W):
    """Thin SVD through LAPACK gesdd (several times faster than numpy's default build here)."""
    import scipy.linalg as sl

    try:
        return sl.svd(W, full_matrices=False, lapack_driver="gesdd", check_finite=False)
    except np.linalg.LinAlgError:  # pragma: no cover - gesdd can fail on pathological inputs
        return sl.svd(W, full_matrices=False, lapack_driver="gesvd", check_finite=False)


@dataclass(frozen=True)
class SVDStats:
    """One SVD of ``W`` plus ``g_i = u_i^T R u_i``: everything the closed form needs for any ``k``.

    Attributes
    ----------
    U : (n, p) left singular vectors, ``p = min(n, m)``.
    s : (p,) singular values, descending.
    Vt : (p, m) right singular vectors (rows).
    g : (p,) ``u_i^T R u_i``.
    trR : ``tr(R)``.
    n, m : matrix shape.
    """

    U: np.ndarray
    s: np.ndarray
    Vt: np.ndarray
    g: np.ndarray
    trR: float
    n: int
    m: int

    @property
    def p(self) -> int:
        return int(self.s.shape[0])

    def per_k(self, split: str) -> dict[str, np.ndarray]:
        """Per-rank coefficients for ``k = 1..p`` (index ``k-1``).

        Returns a dict with ``truncation`` (``sum_{i>k} s_i^2 g_i``), ``B_fro2`` (``||B||_F^2``),
        ``A_R`` (``tr(A^T R A)``) and ``k``.
        """
        _check_split(split)
        s, g = self.s, self.g
        s2g = s * s * g
        # truncation: tail sums; use reversed cumsum for accuracy
        tail = np.concatenate([np.cumsum(s2g[::-1])[::-1][1:], [0.0]])
        if split == "balanced":
            b2, ar = s, s * g
        elif split == "left":
            b2, ar = np.ones_like(s), s * s * g
        else:
            b2, ar = s * s, g
        return {"k": np.arange(1, self.p + 1), "truncation": tail, "B_fro2": np.cumsum(b2),
                "A_R": np.cumsum(ar)}


def svd_stats(W, R=None, vectors: bool = True) -> SVDStats:
    """Compute the SVD of ``W`` once and the projections ``g_i = u_i^T R u_i``.

    Parameters
    ----------
    W : (n, m) target matrix.
    R : (n, n) input second moment ``E[x^T x]``; ``None`` means ``I``.
    vectors : if False and ``R`` is None, compute singular values only (several times faster; enough
        for the closed form and the optimizer, not for :func:`factorize`).
    """
    W = check_matrix(W, "W")
    n, m = W.shape
    white = R is None
    R = check_second_moment(R, n, "R") if not white else None
    if white and not vectors:
        import scipy.linalg as sl

        s = sl.svdvals(W, check_finite=False)
        return SVDStats(U=None, s=s, Vt=None, g=np.ones_like(s), trR=float(n), n=n, m=m)
    if white:
        R = np.eye(n)
    U, s, Vt = _svd(W)
    if white:  # R = I: u_i^T u_i = 1 exactly
        g, trR = np.ones_like(s), float(n)
    else:
        g, trR = np.einsum("ij,ij->j", U, R @ U), float(np.trace(R))
    return SVDStats(U=U, s=s, Vt=Vt, g=g, trR=trR, n=n, m=m)


def factorize(W_or_stats, k: int, split: str = "balanced") -> tuple[np.ndarray, np.ndarray]:
    """Factors ``A`` (n x k) and ``B`` (k x m) of the best rank-``k`` approximation of ``W``.

    Parameters
    ----------
    W_or_stats : the matrix ``W`` or its :class:`SVDStats`.
    k : rank, ``1 <= k <= min(n, m)``.
    split : ``balanced`` | ``left`` | ``right`` (see module docstring).
    """
    st = W_or_stats if isinstance(W_or_stats, SVDStats) else svd_stats(W_or_stats)
    if st.U is None:
        raise ValueError("stats: built with vectors=False; factorize needs svd_stats(W, R, vectors=True)")
    k = _check_int(k, "rank", 1, st.p, f" = min(n, m) for a {st.n}x{st.m} matrix")
    _check_split(split)
    U, s, Vt = st.U[:, :k], st.s[:k], st.Vt[:k]
    if split == "balanced":
        r = np.sqrt(s)
        return U * r, r[:, None] * Vt
    if split == "left":
        return U * s, Vt.copy()
    return U.copy(), s[:, None] * Vt


# ----------------------------------------------------------------------------- closed forms

@dataclass(frozen=True)
class LowRankTerms:
    """The four terms of the low-rank scheme's expected squared output error (per input vector)."""

    truncation: float
    first_step: float
    second_step: float
    product: float

    @property
    def total(self) -> float:
        return self.truncation + self.first_step + self.second_step + self.product

    def to_dict(self) -> dict[str, float]:
        return {"truncation": self.truncation, "first_step": self.first_step,
                "second_step": self.second_step, "product": self.product, "total": self.total}


def baseline_error(n: int, m: int, sigma: float, R=None, trR: float | None = None) -> float:
    """Expected ``E||x (W + N) - x W||^2 = sigma^2 * m * tr(R)`` of the baseline (Theorem 2).

    Parameters
    ----------
    n, m : matrix shape (``n`` inputs, ``m`` outputs).
    sigma : noise std per programmed entry, weight units.
    R : input second moment (n, n); ``None`` means ``I`` unless ``trR`` is given.
    trR : ``tr(R)`` directly (overrides ``R``).
    """
    sigma = _check_sigma(sigma, "sigma")
    if trR is None:
        trR = float(np.trace(check_second_moment(R, n, "R")))
    return sigma ** 2 * m * float(trR)


def devices_used(n: int, m: int, k: int, r1: int, r2: int) -> int:
    """Devices (one per weight) of the two-step scheme: ``r1*n*k + r2*k*m``."""
    return int(r1) * n * int(k) + int(r2) * int(k) * m


def lowrank_terms(W_or_stats, k: int, r1: int, r2: int, sigma1: float, sigma2: float,
                  split: str = "balanced", R=None) -> LowRankTerms:
    """Closed-form expected error of the low-rank two-step scheme (Theorem 3), by term.

    Parameters
    ----------
    W_or_stats : matrix ``W`` (n, m) or its :class:`SVDStats` (then ``R`` is the one it was built with).
    k : rank, ``1 <= k <= min(n, m)``.
    r1, r2 : repetitions (arrays averaged) of the first (``A``) and second (``B``) step, ``>= 1``.
    sigma1, sigma2 : noise std per entry on the ``A`` and ``B`` arrays, weight units.
    split : how the singular values are shared between ``A`` and ``B``.
    R : input second moment (n, n); ``None`` means ``I``. Ignored when stats are passed.

    Returns
    -------
    LowRankTerms, per input vector (same units as ``||y||^2``).
    """
    st = W_or_stats if isinstance(W_or_stats, SVDStats) else svd_stats(W_or_stats, R)
    k = _check_int(k, "rank", 1, st.p, f" = min(n, m) for a {st.n}x{st.m} matrix")
    r1 = _check_int(r1, "r1", 1)
    r2 = _check_int(r2, "r2", 1)
    s1 = _check_sigma(sigma1, "sigma1") ** 2 / r1
    s2 = _check_sigma(sigma2, "sigma2") ** 2 / r2
    c = st.per_k(split)
    i = k - 1
    return LowRankTerms(truncation=float(c["truncation"][i]),
                        first_step=float(s1 * st.trR * c["B_fro2"][i]),
                        second_step=float(s2 * st.m * c["A_R"][i]),
                        product=float(s1 * s2 * k * st.m * st.trR))


def lowrank_terms_factors(W, A, B, r1: int, r2: int, sigma1: float, sigma2: float, R=None) -> LowRankTerms:
    """Same four terms for arbitrary factors ``A`` (n x k), ``B`` (k x m), computed with matrices.

    Needs no SVD: it evaluates ``tr((W-AB)^T R (W-AB))``, ``||B||_F^2`` and ``tr(A^T R A)`` directly,
    so it also serves as an independent check of the cumulative-sum form in :func:`lowrank_terms`.
    """
    W = check_matrix(W, "W")
    A = check_matrix(A, "A")
    B = check_matrix(B, "B")
    n, m = W.shape
    if A.shape[0] != n or B.shape[1] != m or A.shape[1] != B.shape[0]:
        raise ValueError(f"A, B: shapes {A.shape} x {B.shape} do not factor W of shape {W.shape}")
    R = check_second_moment(R, n, "R")
    k = A.shape[1]
    s1 = _check_sigma(sigma1, "sigma1") ** 2 / _check_int(r1, "r1", 1)
    s2 = _check_sigma(sigma2, "sigma2") ** 2 / _check_int(r2, "r2", 1)
    D = W - A @ B
    trR = float(np.trace(R))
    return LowRankTerms(truncation=float(np.sum(D * (R @ D))),
                        first_step=float(s1 * trR * np.sum(B * B)),
                        second_step=float(s2 * m * np.sum(A * (R @ A))),
                        product=float(s1 * s2 * k * m * trR))


# ----------------------------------------------------------------------------- harmonic profile

def harmonic_singular_values(rank: int, alpha: float = 1.0) -> np.ndarray:
    """Harmonic profile ``s_i = alpha / i`` for ``i = 1..rank`` (paper Section 5)."""
    rank = _check_int(rank, "rank", 1)
    return float(alpha) / np.arange(1, rank + 1, dtype=np.float64)


def _haar_orthonormal(rng, n, k):
    import scipy.linalg as sl

    Q, Rr = sl.qr(rng.standard_normal((n, k)), mode="economic", check_finite=False)
    return Q * np.sign(np.diag(Rr))  # sign fix makes Q Haar-distributed


def harmonic_matrix(n: int, m: int | None = None, rank: int | None = None, alpha: float | None = None,
                    seed: int = 0) -> np.ndarray:
    """Random ``n x m`` matrix with singular values ``alpha / i``, ``i = 1..rank``.

    ``U`` and ``V`` are Haar-random (seeded). Its squared Frobenius norm is
    ``alpha^2 sum 1/i^2 < alpha^2 pi^2 / 6`` (paper Eq. 27, the total-magnitude constraint).

    Parameters
    ----------
    n, m : shape (``m`` defaults to ``n``).
    rank : number of non-zero singular values (default ``min(n, m)``).
    alpha : scale; default ``sqrt(n m)``, which keeps the RMS entry of order one
        (``||W||_F^2 < 1.645 n m``), the regime of Theorem 4.
    seed : RNG seed.
    """
    n = _check_int(n, "n", 1)
    m = n if m is None else _check_int(m, "m", 1)
    p = min(n, m)
    rank = p if rank is None else _check_int(rank, "rank", 1, p, " = min(n, m)")
    alpha = math.sqrt(n * m) if alpha is None else float(alpha)
    rng = np.random.default_rng(seed)
    U = _haar_orthonormal(rng, n, rank)
    V = _haar_orthonormal(rng, m, rank)
    return (U * harmonic_singular_values(rank, alpha)) @ V.T


def harmonic_asymptotic(n: int, k: float, rank: float, r1: float, r2: float, sigma1: float, sigma2: float,
                        alpha: float | None = None, trR: float | None = None) -> dict[str, float]:
    """Asymptotic error of the scheme for a square ``n x n`` harmonic matrix (Theorem 4, rebuilt).

    Assumptions: ``m = n``, ``R = (trR/n) I`` (isotropic inputs; default ``trR = n``, i.e. ``R = I``),
    balanced split, ``s_i = alpha / i`` with ``alpha = a n``. Then ``g_i = trR/n`` and

        truncation ~ (trR/n) alpha^2 (1/k - 1/rank)                 (tail of sum 1/i^2)
        first      ~ sigma1^2/r1 * trR * alpha (ln k + gamma)        (H_k ~ ln k + gamma)
        second     ~ sigma2^2/r2 * trR * alpha (ln k + gamma)
        product    =  sigma1^2 sigma2^2 / (r1 r2) * k * n * trR.

    Returns the terms and ``total``. With ``k = n^kappa``, ``r1 = r2 = n/(2k)`` (budget ``n^2``),
    ``alpha ~ n``, ``trR = n`` the terms scale as ``n^(2-kappa)``, ``n^(1+kappa) log n`` and
    ``n^(3 kappa)``: see :func:`harmonic_optimal_exponent`.
    """
    alpha = float(n) if alpha is None else float(alpha)
    trR = float(n) if trR is None else float(trR)
    Hk = math.log(k) + EULER_GAMMA
    trunc = (trR / n) * alpha ** 2 * max(1.0 / k - 1.0 / rank, 0.0)
    v1, v2 = sigma1 ** 2 / r1, sigma2 ** 2 / r2
    out = {"truncation": trunc, "first_step": v1 * trR * alpha * Hk, "second_step": v2 * trR * alpha * Hk,
           "product": v1 * v2 * k * n * trR}
    out["total"] = sum(out.values())
    return out


def harmonic_optimal_exponent(rho: float) -> dict[str, float]:
    """Proposition 5 (rebuilt): optimal rank exponent and error order for rank ``r = n^rho``.

    Under the assumptions of :func:`harmonic_asymptotic` (``alpha ~ n``, ``R = I``, budget ``n^2``,
    ``r1 = r2 ~ n / (2k)``) with ``k = n^kappa``, the error exponents are ``2 - kappa`` (truncation,
    zero once ``k = r``), ``1 + kappa`` (noise, times ``log n``) and ``3 kappa`` (product).

    * ``rho >= 1/2``: the three balance at ``kappa* = 1/2``; error ``O(n^{3/2} log n)``,
      ``r1 = r2 ~ sqrt(n)``.
    * ``rho < 1/2``: ``k`` cannot exceed the rank, so ``kappa* = rho`` (no truncation error);
      error ``O(n^{1+rho} log n)``, ``r1 = r2 ~ n^{1-rho}``.

    The baseline is ``sigma^2 n tr(R) = O(n^2)``.
    """
    rho = float(rho)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho: {rho} is not allowed; must be 0 <= rho <= 1")
    kappa = min(rho, 0.5)
    return {"kappa": kappa, "error_exponent": 1.0 + kappa, "log_factor": True,
            "reps_exponent": 1.0 - kappa, "baseline_exponent": 2.0}
