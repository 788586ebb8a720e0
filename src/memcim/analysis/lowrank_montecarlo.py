"""Monte Carlo of the baseline and the low-rank two-step scheme under additive weight noise.

Literal simulation, independent of the closed form: every trial programs fresh arrays (``W + N``
for the baseline; ``r1`` copies ``A + N1_j`` and ``r2`` copies ``B + N2_j`` for the scheme), runs
a batch of inputs through each array, averages the ``r1`` first-step outputs, feeds the average
to every second-step array and averages their outputs. Vectorised in torch over trials.

Inputs: either data rows ``X`` (the expectation over ``x`` is then the mean over the rows,
i.e. ``R = X^T X / N``; all rows every trial when ``batch`` is None or >= N, else ``batch`` rows
drawn at random per trial), or a second moment ``R`` from which ``batch`` fresh Gaussian inputs
``x ~ N(0, R)`` are drawn per trial.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from memcim.analysis.lowrank import _check_int, _check_sigma, check_matrix, check_second_moment

__all__ = ["MCResult", "mc_baseline", "mc_lowrank"]


@dataclass(frozen=True)
class MCResult:
    """Monte Carlo estimate of ``E||y_hat - y||^2`` per input vector.

    Attributes
    ----------
    mean : estimate (mean over trials of the per-trial mean over the input batch).
    stderr : standard error of ``mean`` (std over trials / sqrt(trials)).
    trials : number of trials.
    per_trial : (trials,) per-trial values.
    """

    mean: float
    stderr: float
    trials: int
    per_trial: np.ndarray

    def to_dict(self) -> dict:
        return {"mean": self.mean, "stderr": self.stderr, "trials": self.trials}


def _gen(seed, device):
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _input_sampler(n, X, R, batch, dtype, device):
    if X is not None:
        X = check_matrix(X, "inputs")
        if X.shape[1] != n:
            raise ValueError(f"inputs: {X.shape[1]} columns do not match the matrix's {n} rows")
        Xt = torch.as_tensor(X, dtype=dtype, device=device)
        if batch is None or batch >= Xt.shape[0]:
            return lambda g, c: Xt.expand(c, *Xt.shape)
        batch = _check_int(batch, "batch", 1)
        # more rows than the batch: a fresh random batch of rows (with replacement) per trial,
        # still unbiased for the mean over the rows
        return lambda g, c: Xt[torch.randint(0, Xt.shape[0], (c, batch), generator=g, device=device)]
    R = check_second_moment(R, n, "R")
    batch = 16 if batch is None else batch
    w, V = np.linalg.eigh(R)
    L = torch.as_tensor(V * np.sqrt(np.clip(w, 0, None)), dtype=dtype, device=device)  # R = L L^T
    batch = _check_int(batch, "batch", 1)
    return lambda g, c: torch.randn(c, batch, n, generator=g, dtype=dtype, device=device) @ L.T


def _chunks(trials, per_trial_elems, max_elems=4_000_000):
    c = max(1, min(trials, max_elems // max(per_trial_elems, 1)))
    done = 0
    while done < trials:
        cc = min(c, trials - done)
        yield cc
        done += cc


def _result(vals):
    v = torch.cat(vals).cpu().numpy().astype(np.float64)
    t = v.size
    se = float(v.std(ddof=1) / math.sqrt(t)) if t > 1 else float("nan")
    return MCResult(mean=float(v.mean()), stderr=se, trials=t, per_trial=v)


def mc_baseline(W, sigma: float, trials: int = 1000, X=None, R=None, batch: int | None = None, seed: int = 0,
                dtype=torch.float64, device="cpu") -> MCResult:
    """Monte Carlo of the baseline ``y_hat = x (W + N)``, fresh ``N`` per trial.

    Parameters
    ----------
    W : (n, m) matrix. sigma : noise std per entry (weight units).
    trials : number of independently programmed arrays.
    X : optional (N, n) input rows; otherwise ``batch`` inputs ``x ~ N(0, R)`` per trial
        (``R=None`` means ``I``).
    batch : inputs per trial (for ``X``: ``None`` = all rows).
    seed : RNG seed.
    """
    W = check_matrix(W, "W")
    n, m = W.shape
    sigma = _check_sigma(sigma, "sigma")
    trials = _check_int(trials, "trials", 1)
    g = _gen(seed, device)
    Wt = torch.as_tensor(W, dtype=dtype, device=device)
    draw = _input_sampler(n, X, R, batch, dtype, device)
    vals = []
    for c in _chunks(trials, n * m):
        x = draw(g, c)                                                   # (c, b, n)
        N = torch.randn(c, n, m, generator=g, dtype=dtype, device=device) * sigma
        y_hat = x @ (Wt + N)
        y = x @ Wt
        vals.append(((y_hat - y) ** 2).sum(-1).mean(-1))
    return _result(vals)


def mc_lowrank(W, A, B, r1: int, r2: int, sigma1: float, sigma2: float, trials: int = 1000, X=None, R=None,
               batch: int | None = None, seed: int = 0, dtype=torch.float64, device="cpu") -> MCResult:
    """Monte Carlo of the two-step scheme: ``r1`` noisy copies of ``A``, ``r2`` of ``B``, averaged.

    Parameters
    ----------
    W : (n, m) target (the error is measured against ``y = x W``).
    A, B : (n, k) and (k, m) factors to program.
    r1, r2 : repetitions of each step. sigma1, sigma2 : noise std per entry on ``A`` / ``B`` arrays.
    trials, X, R, batch, seed : as in :func:`mc_baseline`.
    """
    W, A, B = check_matrix(W, "W"), check_matrix(A, "A"), check_matrix(B, "B")
    n, m = W.shape
    k = A.shape[1]
    if A.shape[0] != n or B.shape != (k, m):
        raise ValueError(f"A, B: shapes {A.shape} x {B.shape} do not factor W of shape {W.shape}")
    r1, r2 = _check_int(r1, "r1", 1), _check_int(r2, "r2", 1)
    s1, s2 = _check_sigma(sigma1, "sigma1"), _check_sigma(sigma2, "sigma2")
    trials = _check_int(trials, "trials", 1)
    g = _gen(seed, device)
    Wt, At, Bt = (torch.as_tensor(M, dtype=dtype, device=device) for M in (W, A, B))
    draw = _input_sampler(n, X, R, batch, dtype, device)
    vals = []
    for c in _chunks(trials, r1 * n * k + r2 * k * m):
        x = draw(g, c)                                                   # (c, b, n)
        N1 = torch.randn(c, r1, n, k, generator=g, dtype=dtype, device=device) * s1
        z = (x.unsqueeze(1) @ (At + N1)).mean(1)                         # r1 arrays' outputs averaged
        N2 = torch.randn(c, r2, k, m, generator=g, dtype=dtype, device=device) * s2
        y_hat = (z.unsqueeze(1) @ (Bt + N2)).mean(1)                     # r2 arrays' outputs averaged
        y = x @ Wt
        vals.append(((y_hat - y) ** 2).sum(-1).mean(-1))
    return _result(vals)
