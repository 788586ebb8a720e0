"""Exact choice of rank, repetitions and split for the low-rank two-step scheme (paper 000).

For a rank ``k`` and a split the closed-form error is

    E(r1, r2) = T_k + a_k / r1 + b_k / r2 + c_k / (r1 r2),    a_k, b_k, c_k >= 0,

(see :mod:`memcim.analysis.lowrank`). Under the device budget ``r1 n k + r2 k m <= budget`` it is
non-increasing in ``r2`` for fixed ``r1``, so the best ``r2`` is the largest that fits,
``floor((budget - r1 n k) / (k m))``. Enumerating ``k`` and ``r1 = 1..floor((budget - k m)/(n k))``
is therefore an exact search (no sampling) over all feasible ``(k, r1, r2, split)``; it has about
``(budget/n) ln(min(n, m))`` candidates per split and reuses one SVD through cumulative sums.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from memcim.analysis.lowrank import (SPLITS, SVDStats, _check_int, _check_sigma, _check_split,
                                     baseline_error, lowrank_terms, svd_stats)

__all__ = ["LowRankChoice", "optimize_lowrank", "best_reps_per_k"]


@dataclass(frozen=True)
class LowRankChoice:
    """The optimizer's answer.

    Attributes
    ----------
    k, r1, r2, split : the chosen scheme.
    predicted : closed-form expected error (per input vector).
    terms : the four terms, by name.
    baseline : closed-form baseline error with the same ``sigma`` (``sigma1``).
    devices : devices used, ``r1 n k + r2 k m``; ``budget`` the budget.
    candidates : number of (k, r1, split) candidates evaluated.
    """

    k: int
    r1: int
    r2: int
    split: str
    predicted: float
    terms: dict
    baseline: float
    devices: int
    budget: int
    candidates: int
    n: int = field(default=0)
    m: int = field(default=0)

    @property
    def improvement(self) -> float:
        """Baseline error divided by the chosen scheme's error (``> 1`` means better)."""
        return self.baseline / self.predicted if self.predicted > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"k": self.k, "r1": self.r1, "r2": self.r2, "split": self.split, "predicted": self.predicted,
                "terms": self.terms, "baseline": self.baseline, "improvement": self.improvement,
                "devices": self.devices, "budget": self.budget, "candidates": self.candidates}


def _check_budget(budget, n, m):
    if budget is None:
        return n * m
    b = _check_int(budget, "budget", 1)
    if b < n + m:
        raise ValueError(f"budget: {budget} fits no scheme; the smallest (k = r1 = r2 = 1) needs "
                         f"n + m = {n + m} devices")
    return b


def best_reps_per_k(stats: SVDStats, sigma1: float, sigma2: float, split: str, budget: int,
                    k_max: int | None = None) -> dict[str, np.ndarray]:
    """For every rank ``k`` the exact best ``(r1, r2)`` under the budget, for one split.

    Returns arrays over ``k = 1..K`` (``K`` = largest feasible rank, capped by ``k_max``):
    ``k``, ``r1``, ``r2``, ``error`` (closed form), ``truncation``, ``first_step``, ``second_step``,
    ``product``, ``devices``. Ranks that fit no repetition are left out.
    """
    _check_split(split)
    n, m, p = stats.n, stats.m, stats.p
    v1, v2 = float(sigma1) ** 2, float(sigma2) ** 2
    c = stats.per_k(split)
    K = p if k_max is None else min(p, int(k_max))
    ks = np.arange(1, K + 1)
    r1max = (budget - ks * m) // (n * ks)
    ok = r1max >= 1
    ks, r1max = ks[ok], r1max[ok]
    if ks.size == 0:
        return {name: np.zeros(0) for name in ("k", "r1", "r2", "error", "truncation", "first_step",
                                                "second_step", "product", "devices")}
    T = c["truncation"][ks - 1]
    a = v1 * stats.trR * c["B_fro2"][ks - 1]
    b = v2 * m * c["A_R"][ks - 1]
    cc = v1 * v2 * ks * m * stats.trR
    # flatten every (k, r1) pair
    counts = r1max.astype(np.int64)
    idx = np.repeat(np.arange(ks.size), counts)
    starts = np.cumsum(counts) - counts
    r1 = (np.arange(counts.sum()) - np.repeat(starts, counts) + 1).astype(np.int64)
    kk = ks[idx]
    r2 = (budget - r1 * n * kk) // (kk * m)
    err = T[idx] + a[idx] / r1 + b[idx] / r2 + cc[idx] / (r1 * r2)
    # per-k argmin (ties -> smallest r1)
    order = np.lexsort((r1, err, idx))
    first = np.ones(order.size, dtype=bool)
    first[1:] = idx[order][1:] != idx[order][:-1]
    best = order[first]
    bi = idx[best]
    R1, R2 = r1[best], r2[best]
    return {"k": ks[bi], "r1": R1, "r2": R2, "error": err[best], "truncation": T[bi],
            "first_step": a[bi] / R1, "second_step": b[bi] / R2, "product": cc[bi] / (R1 * R2),
            "devices": R1 * n * ks[bi] + R2 * ks[bi] * m, "candidates": int(r1.size)}


def optimize_lowrank(W_or_stats, sigma1: float, sigma2: float | None = None, R=None, budget: int | None = None,
                     splits=SPLITS, k_max: int | None = None) -> LowRankChoice:
    """Choose ``k``, ``r1``, ``r2`` and the split minimising the closed-form expected error.

    Parameters
    ----------
    W_or_stats : target matrix ``W`` (n, m) or its :class:`SVDStats` (reuses its SVD and ``R``).
    sigma1, sigma2 : noise std per entry on the ``A`` / ``B`` arrays (``sigma2`` defaults to ``sigma1``).
    R : input second moment (n, n); ``None`` means ``I``. Ignored when stats are passed.
    budget : device budget ``B`` with ``r1 n k + r2 k m <= B``; default ``n m`` (the baseline's).
    splits : splits to consider (default all three).
    k_max : optional cap on the rank.

    Returns
    -------
    LowRankChoice. Exact: equals the minimum over every feasible ``(k, r1, r2, split)``.
    """
    st = W_or_stats if isinstance(W_or_stats, SVDStats) else svd_stats(W_or_stats, R, vectors=False)
    sigma1 = _check_sigma(sigma1, "sigma1")
    sigma2 = sigma1 if sigma2 is None else _check_sigma(sigma2, "sigma2")
    budget = _check_budget(budget, st.n, st.m)
    splits = tuple(splits)
    if not splits:
        raise ValueError("splits: empty; choose at least one of " + ", ".join(SPLITS))
    best = None
    total = 0
    for sp in splits:
        res = best_reps_per_k(st, sigma1, sigma2, sp, budget, k_max)
        if res["k"].size == 0:
            continue
        total += res["candidates"]
        i = int(np.argmin(res["error"]))
        cand = (float(res["error"][i]), sp, int(res["k"][i]), int(res["r1"][i]), int(res["r2"][i]))
        if best is None or cand[0] < best[0]:
            best = cand
    if best is None:
        raise ValueError(f"budget: {budget} fits no scheme for a {st.n}x{st.m} matrix; need >= {st.n + st.m}")
    err, sp, k, r1, r2 = best
    terms = lowrank_terms(st, k, r1, r2, sigma1, sigma2, sp)
    base = baseline_error(st.n, st.m, sigma1, trR=st.trR)
    return LowRankChoice(k=k, r1=r1, r2=r2, split=sp, predicted=terms.total, terms=terms.to_dict(),
                         baseline=base, devices=r1 * st.n * k + r2 * k * st.m, budget=budget,
                         candidates=total, n=st.n, m=st.m)
