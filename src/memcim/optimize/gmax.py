"""Power-constrained choice of G_max (paper 001, Eq. 22): min max- (or mean-) MSE s.t. E[P] <= V.

Decision variables: one G_max for the network, one per crossbar layer, or one per crossbar
column (output unit / output channel); all work in ``u = log G_max``. Two solvers:

* ``method="ga"``: pymoo's genetic algorithm as in the paper (population 50, 100 generations by
  default), the power budget as an inequality constraint;
* ``method="structured"``: uses the structure of the problem. Per layer the MSE behaves as
  ``F1/c^4 + F2/c^2 + F3`` (decreasing in c) and the power as ``c^2 H1 + c H2 + H3``
  (increasing in c), so (1) for one network-wide G_max the optimum sits on the budget and is
  found by bisection on the power; (2) for per-layer / per-column G_max, starting from that point,
  SLSQP in ``u = log G_max`` with exact gradients of the predicted MSE and power (autograd
  through the moment propagation) solves the KKT conditions of the smooth problem.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from memcim.analysis import moments as mo

__all__ = ["GmaxProblem", "GmaxResult", "optimize_gmax", "pareto_front", "GRANULARITIES"]

GRANULARITIES = ("network", "layer", "column")


class GmaxProblem:
    """Predicted objective and power as functions of ``u = log G_max`` (numpy in, floats out).

    Parameters
    ----------
    model : nn.Sequential or parsed layers. x : (B, ...) inputs. sigma : device noise std (S).
    levels : N. granularity : "network", "layer" or "column". objective : "max" or "mean".
    cov : covariance mode of the prediction. r : TIA resistance (Ω).
    bounds : (lo, hi) for G_max in S (default ``(10*sigma, 1e4*sigma)``).
    v_read : read voltage of an input of 1 [V]. g_offset : conductance every level sits above
        (a config's ``g_min``; the ``memse`` preset's power then equals
        :func:`memcim.analysis.predict.predict`'s on that config). Defaults: MemSE's 1 V and 0 S.
    """

    def __init__(self, model, x, *, sigma: float, levels: int = 128, granularity: str = "layer",
                 objective: str = "max", cov: str = "lowrank", r: float = 1.0, bounds=None,
                 dtype=torch.float64, v_read: float = 1.0, g_offset: float = 0.0, **kw):
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity: {granularity!r} is not allowed; choose one of {', '.join(GRANULARITIES)}")
        if objective not in ("max", "mean"):
            raise ValueError(f"objective: {objective!r} is not allowed; choose 'max' or 'mean'")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma: {sigma!r} is not allowed; the optimizer needs sigma > 0 S")
        self.layers = model if isinstance(model, list) else mo.parse_model(model, dtype)
        self.x = mo._check_x(x).to(dtype)
        self.sigma, self.levels, self.granularity, self.objective = float(sigma), int(levels), granularity, objective
        self.cov, self.r, self.kw, self.dtype = cov, r, kw, dtype
        self.v_read, self.g_offset = float(v_read), float(g_offset)
        self.xl = mo.crossbar_layers(self.layers)
        lo, hi = bounds if bounds is not None else (10 * sigma, 1e4 * sigma)
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"gmax_bounds: ({lo}, {hi}) is not allowed; need 0 < lo < hi")
        self.bounds = (float(lo), float(hi))
        sizes = {"network": [1], "layer": [1] * len(self.xl), "column": [l.out_features for l in self.xl]}[granularity]
        self.sizes = sizes
        self.n_var = int(sum(sizes))
        self.n_eval = 0

    def expand(self, u: torch.Tensor) -> list[torch.Tensor]:
        """u (n_var,) -> one G_max tensor per crossbar layer."""
        g = torch.exp(u)
        if self.granularity == "network":
            return [g[0] for _ in self.xl]
        if self.granularity == "layer":
            return [g[i] for i in range(len(self.xl))]
        return list(torch.split(g, self.sizes))

    def evaluate_t(self, u: torch.Tensor):
        self.n_eval += 1
        obj, pw, _ = mo.mse_objective(self.layers, self.x, self.expand(u), sigma=self.sigma, levels=self.levels,
                                      cov=self.cov, objective=self.objective, r=self.r, v_read=self.v_read,
                                      g_offset=self.g_offset, **self.kw)
        return obj, pw

    def evaluate(self, u) -> tuple[float, float]:
        with torch.no_grad():
            o, p = self.evaluate_t(torch.as_tensor(np.asarray(u, dtype=float), dtype=self.dtype))
        return float(o), float(p)

    def value_and_grad(self, u):
        ut = torch.as_tensor(np.asarray(u, dtype=float), dtype=self.dtype).clone().requires_grad_(True)
        o, p = self.evaluate_t(ut)
        go, = torch.autograd.grad(o, ut, retain_graph=True)
        gp, = torch.autograd.grad(p, ut)
        return float(o.detach()), go.numpy().astype(float), float(p.detach()), gp.numpy().astype(float)

    def gmax_values(self, u) -> list:
        g = self.expand(torch.as_tensor(np.asarray(u, dtype=float), dtype=self.dtype))
        return [float(t) if t.dim() == 0 else t.numpy().tolist() for t in g]


@dataclass
class GmaxResult:
    """Optimum found: ``gmax`` per crossbar layer (floats, or lists per column), predicted
    ``objective`` MSE and ``power_W``, wall time, evaluations, and (GA) the convergence history
    ``history`` = [(seconds, best feasible objective)]."""

    method: str
    granularity: str
    objective: float
    power_W: float
    budget_W: float
    gmax: list
    u: np.ndarray
    wall_s: float
    evaluations: int
    feasible: bool
    history: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "granularity": self.granularity, "objective_mse": self.objective,
                "power_W": self.power_W, "budget_W": self.budget_W, "feasible": self.feasible, "gmax": self.gmax,
                "wall_s": self.wall_s, "evaluations": self.evaluations, "history": self.history, "info": self.info}


def _grid(prob: GmaxProblem, n: int = 25):
    lo, hi = math.log(prob.bounds[0]), math.log(prob.bounds[1])
    vs = np.linspace(lo, hi, n)
    return vs, [prob.evaluate(np.full(prob.n_var, v)) for v in vs]


def _check_budget(prob: GmaxProblem, budget: float) -> None:
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"power_budget: {budget!r} is not allowed; must be a finite power > 0 W")


def _network_solve(prob: GmaxProblem, budget: float, tol: float = 1e-4):
    """Best common log G_max: a log-spaced scan of the bounds, then bisection on the budget
    between the largest feasible scan point and the next one (the power grows with G_max where
    the noise is small; at very small G_max the noise inflates activations and can raise it)."""
    vs, vals = _grid(prob)
    feas = [i for i, (o, p) in enumerate(vals) if p <= budget]
    if not feas:
        pmin = min(p for _, p in vals)
        raise ValueError(f"power_budget: {budget:.4g} W is below the {pmin:.4g} W drawn at the best common "
                         f"G_max in [{prob.bounds[0]:.3g}, {prob.bounds[1]:.3g}] S; raise the budget or widen gmax_bounds")
    full = lambda v: np.full(prob.n_var, v)
    cands = [(vals[i][0], vs[i], vals[i]) for i in feas]
    i = max(feas)
    if i + 1 < len(vs):
        a, b = vs[i], vs[i + 1]
        while b - a > tol:
            m = 0.5 * (a + b)
            if prob.evaluate(full(m))[1] <= budget:
                a = m
            else:
                b = m
        va = prob.evaluate(full(a))
        cands.append((va[0], a, va))
    best = min(cands, key=lambda t: t[0])
    return full(best[1]), best[2]


def _restore(prob: GmaxProblem, u: np.ndarray, budget: float, tol: float = 1e-6):
    """Make ``u`` feasible by a common shift of every log G_max (power grows with G_max): the
    largest shift <= 0 with power <= budget, found by bisection. None if even the lower bound fails."""
    lo = math.log(prob.bounds[0])
    o, p = prob.evaluate(u)
    if p <= budget:
        return u, o, p
    a, b = lo - float(u.max()), 0.0            # shift a puts every variable at the lower bound
    oa, pa = prob.evaluate(np.maximum(u + a, lo))
    if pa > budget:
        return None
    best = (np.maximum(u + a, lo), oa, pa)
    while b - a > tol:
        m = 0.5 * (a + b)
        um = np.maximum(u + m, lo)
        om, pm = prob.evaluate(um)
        if pm <= budget:
            a, best = m, (um, om, pm)
        else:
            b = m
    return best


def _structured(prob: GmaxProblem, budget: float, maxiter: int = 60):
    """Bisection for a common G_max, then (layer / column) SLSQP in log G_max from there.

    The predicted MSE is only piecewise smooth (rounding to levels moves with c; the max over
    outputs switches unit), so SLSQP is stopped at a modest tolerance, every feasible point it
    evaluates is remembered, and a final iterate that overshoots the budget by rounding is pulled
    back onto it by a common shift of log G_max. The best feasible point wins; the network-level
    optimum is the fallback, so the result is never worse than one common G_max.
    """
    from scipy.optimize import minimize

    if prob.granularity == "column":
        # warm start from the per-layer optimum (feasible for per-column G_max too)
        sub = GmaxProblem(prob.layers, prob.x, sigma=prob.sigma, levels=prob.levels, granularity="layer",
                          objective=prob.objective, cov=prob.cov, r=prob.r, bounds=prob.bounds, dtype=prob.dtype,
                          **prob.kw)
        ul, ol, pl, _ = _structured(sub, budget, maxiter)
        prob.n_eval += sub.n_eval
        u0 = np.concatenate([np.full(n, v) for n, v in zip(prob.sizes, ul)])
        o0, p0 = ol, pl
        maxiter = min(maxiter, 40)
    else:
        u0, (o0, p0) = _network_solve(prob, budget)
    if prob.granularity == "network":
        return u0, o0, p0, {"stage": "bisection"}
    lo, hi = math.log(prob.bounds[0]), math.log(prob.bounds[1])
    cache = {}
    best = {"u": np.array(u0, dtype=float), "o": o0, "p": p0}

    def vg(u):
        key = tuple(np.round(u, 14))
        if key not in cache:
            cache.clear()
            cache[key] = prob.value_and_grad(u)
            o, _, p, _ = cache[key]
            if p <= budget and o < best["o"]:
                best.update(u=np.array(u, dtype=float), o=o, p=p)
        return cache[key]

    scale = max(o0, 1e-300)
    trace = []

    def stop_when_stalled(intermediate_result):
        # the piecewise-smooth objective makes SLSQP's last iterations crawl: stop once its iterate
        # is (nearly) on the budget and its objective has moved less than 1e-4 (relative) in 5 steps
        o, _, p, _ = vg(intermediate_result.x)
        trace.append(o)
        if (len(trace) > 5 and abs(trace[-6] - o) <= 1e-4 * o and p <= budget * (1 + 1e-4)):
            raise StopIteration

    res = minimize(lambda u: vg(u)[0] / scale, u0, jac=lambda u: vg(u)[1] / scale, method="SLSQP",
                   bounds=[(lo, hi)] * prob.n_var,
                   constraints=[{"type": "ineq", "fun": lambda u: (budget - vg(u)[2]) / budget,
                                 "jac": lambda u: -vg(u)[3] / budget}],
                   options={"maxiter": maxiter, "ftol": 1e-7}, callback=stop_when_stalled)
    info = {"slsqp": str(res.message), "slsqp_iterations": int(res.nit)}
    fixed = _restore(prob, np.clip(res.x, lo, hi), budget)
    if fixed is not None and fixed[1] < best["o"]:
        best.update(u=fixed[0], o=fixed[1], p=fixed[2])
    if best["o"] >= o0:
        return u0, o0, p0, {"stage": "warm start kept (SLSQP did not improve)", **info}
    return best["u"], best["o"], best["p"], {"stage": "bisection + SLSQP", **info}


def _ga(prob: GmaxProblem, budget: float, pop_size: int, n_gen: int, seed: int):
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.core.callback import Callback
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    lo, hi = math.log(prob.bounds[0]), math.log(prob.bounds[1])

    class _P(Problem):
        def __init__(self):
            super().__init__(n_var=prob.n_var, n_obj=1, n_ieq_constr=1, xl=lo, xu=hi)

        def _evaluate(self, X, out, *a, **k):
            vals = np.array([prob.evaluate(u) for u in X])
            out["F"] = vals[:, :1]
            out["G"] = (vals[:, 1:2] - budget) / budget

    t0 = time.perf_counter()
    hist = []

    class _CB(Callback):
        def notify(self, algorithm):
            opt = algorithm.opt
            f = float(opt.get("F")[0, 0]) if opt is not None and len(opt) and bool(opt.get("feas")[0]) else None
            hist.append((time.perf_counter() - t0, f))

    res = minimize(_P(), GA(pop_size=pop_size, eliminate_duplicates=True), ("n_gen", n_gen), seed=seed,
                   callback=_CB(), verbose=False)
    if res.X is None:
        return None, float("inf"), float("inf"), hist
    u = np.atleast_1d(res.X).astype(float)
    o, p = prob.evaluate(u)
    return u, o, p, hist


def optimize_gmax(model, x, *, sigma: float, power_budget: float, levels: int = 128, granularity: str = "layer",
                  objective: str = "max", method: str = "structured", cov: str = "lowrank", r: float = 1.0,
                  bounds=None, pop_size: int = 50, n_gen: int = 100, seed: int = 0, problem: GmaxProblem | None = None,
                  **kw) -> GmaxResult:
    """Choose G_max to minimise the predicted max (or mean) output MSE under a power budget.

    Parameters
    ----------
    model : nn.Sequential of supported layers (or parsed layers). x : (B, ...) inputs.
    sigma : device noise std (S, > 0). power_budget : expected power budget V (W).
    levels : N. granularity : "network", "layer" or "column". objective : "max" or "mean".
    method : "structured" (bisection + SLSQP with exact gradients) or "ga" (pymoo GA).
    cov : covariance mode of the prediction. r : TIA resistance (Ω).
    bounds : (lo, hi) G_max range in S (default ``(10 sigma, 1e4 sigma)``).
    pop_size, n_gen, seed : GA settings.
    problem : reuse a :class:`GmaxProblem` (saves parsing).

    Returns
    -------
    GmaxResult.
    """
    if method not in ("structured", "ga"):
        raise ValueError(f"method: {method!r} is not allowed; choose 'structured' or 'ga'")
    prob = problem or GmaxProblem(model, x, sigma=sigma, levels=levels, granularity=granularity,
                                  objective=objective, cov=cov, r=r, bounds=bounds, **kw)
    _check_budget(prob, float(power_budget))
    prob.n_eval = 0
    t0 = time.perf_counter()
    if method == "structured":
        u, o, p, info = _structured(prob, float(power_budget))
        hist = []
    else:
        u, o, p, hist = _ga(prob, float(power_budget), pop_size, n_gen, seed)
        info = {"pop_size": pop_size, "n_gen": n_gen, "seed": seed}
    wall = time.perf_counter() - t0
    feas = u is not None and p <= power_budget * (1 + 1e-6)
    return GmaxResult(method, prob.granularity, o, p, float(power_budget),
                      prob.gmax_values(u) if u is not None else [], u, wall, prob.n_eval, bool(feas), hist, info)


def time_to_reach(history: list, target: float, rel_tol: float = 0.01) -> float | None:
    """First time (s) in a GA history at which the best feasible objective is within ``rel_tol``
    of ``target``; None if never."""
    for t, f in history:
        if f is not None and f <= target * (1 + rel_tol):
            return t
    return None


def pareto_front(model, x, *, sigma: float, budgets, levels: int = 128, granularities=("network", "layer"),
                 methods=("structured",), objective: str = "max", cov: str = "lowrank", bounds=None,
                 pop_size: int = 50, n_gen: int = 100, seed: int = 0) -> list[dict]:
    """Optimise for every power budget, granularity and method: the MSE-vs-power Pareto front.

    Returns a list of :meth:`GmaxResult.to_dict` rows (infeasible budgets are reported with
    ``feasible=False`` and the reason).
    """
    rows = []
    for gran in granularities:
        prob = GmaxProblem(model, x, sigma=sigma, levels=levels, granularity=gran, objective=objective, cov=cov,
                           bounds=bounds)
        for m in methods:
            for v in budgets:
                try:
                    res = optimize_gmax(None, None, sigma=sigma, power_budget=float(v), method=m, problem=prob,
                                        pop_size=pop_size, n_gen=n_gen, seed=seed)
                    rows.append(res.to_dict())
                except ValueError as e:
                    rows.append({"method": m, "granularity": gran, "budget_W": float(v), "feasible": False,
                                 "error": str(e)})
    return rows
