"""Fit a device model to a user's own conductance measurements (``memcim device fit``).

The input is a table of measurements (a CSV file or a mapping of columns):

=============  ==========================================================================================
column         meaning
=============  ==========================================================================================
``target``     a level index (0, 1, 2, ...: every target an integer) or a target conductance [S]
``measured``   the measured conductance [S], >= 0
``time``       optional: seconds after programming, finite and > 0
``read``       optional: repetition index of a read of the same device at the same time (needs ``device``)
``device``     optional: a device id (any text); needed to separate programming spread from read noise and
               to fit each device's drift exponent. Without it every row is a device of its own.
=============  ==========================================================================================

What is fitted, in the terms of :class:`memcim.config.DeviceConfig`:

* **Programming noise** at the earliest time of each device (its reads at that time averaged): per level
  (``prog_sigma_table``) when the targets are levels, else a polynomial in ``G / g_max``
  (``prog_sigma_poly``, by maximum likelihood; degree 2 by default, ``degree=None`` picks it by BIC).
  The read noise of that average (from the read-noise fit) is subtracted in variance.
* **Stuck fractions.** A device is an *outlier* when it lies more than :data:`OUTLIER_Z` standard
  deviations from its target's centre; an outlier within :data:`STUCK_BAND` x (g_max - g_min) of g_min is
  stuck at g_min, of g_max stuck at g_max (else it is an unexplained outlier, reported, left out of every
  fit). A stuck device can only be seen where its target's distribution excludes g_min (or g_max), so
  each fraction is (stuck devices found) / (devices whose target is more than OUTLIER_Z sigma from g_min
  or g_max).
* **Drift** (``time`` with two or more times and ``device``): per device, ``nu`` is minus the
  least-squares slope of ``ln G`` against ``ln(t / t0)`` (reads at one time averaged first); then the mean
  of ``nu`` against ``ln(G / g_max)`` by weighted least squares (``drift_nu``, ``drift_nu_slope``) and its
  standard deviation ``max(0, a + b ln(G / g_max))`` by maximum likelihood (``drift_nu_std``,
  ``drift_nu_std_slope``), the estimation error of each device's ``nu`` taken out in variance.
  ``t0`` (``drift_t0``) is the earliest time in the data.
* **Read noise** (repeated reads of one device at one time): the 1/f model
  ``sigma = G Q(G) sqrt(ln((t + t_read) / (2 t_read)))``, ``Q = read_1f_q (G / g_max)**(-read_1f_exp)``
  by maximum likelihood on the within-group variances. Without ``time`` a plain relative read sigma
  ``sigma = G q (G / g_max)**(-exp)`` is fitted instead and written as the 1/f model of reads at
  ``drift_t0``: ``read_1f_q = q / sqrt(ln((t0 + t_read) / (2 t_read)))``.

Standard errors are those of the Fisher information (maximum likelihood) or of least squares.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> level = np.repeat(np.arange(4), 50)
>>> g = 1e-5 + level * 3e-5 + rng.normal(0, 1e-6, level.size)
>>> fit = fit_device({"target": level, "measured": g})
>>> fit.device.levels, len(fit.device.prog_sigma_table)
(4, 4)
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memcim.config import DeviceConfig

#: the columns of a measurement table
COLUMNS = ("target", "measured", "time", "read", "device")
REQUIRED = ("target", "measured")
#: a device further than this many standard deviations from its target's centre is an outlier
OUTLIER_Z = 5.0
#: an outlier within this fraction of (g_max - g_min) of g_min (g_max) is stuck there
STUCK_BAND = 0.05
#: highest polynomial degree tried when the degree is chosen by the data
MAX_AUTO_DEGREE = 4


# ============================================================================ input
def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a measurement CSV, checked: ``{"target": float array, ..., "device": str array}``.

    Raises ``ValueError`` naming the column (and row: 1 is the first row after the header) of the
    first problem.
    """
    from memcim import validate

    p = validate.existing_file("data", path)
    try:
        with p.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"data: cannot read {p} ({getattr(e, 'strerror', None) or e})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"data: {p} is empty; it needs a header row with the columns target,measured")
    header = [h.strip().lower() for h in rows[0]]
    body = rows[1:]
    cols: dict[str, list[str]] = {}
    for j, h in enumerate(header):
        if h in COLUMNS:
            if h in cols:
                raise ValueError(f"{h}: the column appears twice in the header of {p}")
            cols[h] = [r[j].strip() if j < len(r) else "" for r in body]
    for i, r in enumerate(body, start=1):
        if len(r) > len(header):
            raise ValueError(f"data: row {i} has {len(r)} cells but the header has {len(header)} columns")
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ValueError(f"{missing[0]}: column missing from {p} (header: {', '.join(header) or 'empty'}); "
                         f"the columns are target, measured and optionally time, read, device")
    if not body:
        raise ValueError(f"data: {p} has a header but no rows of measurements")
    out: dict[str, np.ndarray] = {}
    for name, cells in cols.items():
        if name == "device":
            for i, c in enumerate(cells, start=1):
                if not c:
                    raise ValueError(f"device, row {i}: the cell is empty; give every row a device id")
            out[name] = np.array(cells, dtype=object)
            continue
        vals = np.empty(len(cells))
        for i, c in enumerate(cells, start=1):
            try:
                vals[i - 1] = float(c)
            except ValueError:
                raise ValueError(f"{name}, row {i}: {c!r} is not a number; every {name} cell must be a "
                                 "number") from None
        out[name] = vals
    return out


def _columns(table: Any) -> dict[str, np.ndarray]:
    if isinstance(table, (str, Path)):
        return read_table(table)
    if not isinstance(table, Mapping):
        raise TypeError(f"table: expected a CSV path or a mapping of columns, got {type(table).__name__}")
    cols = {str(k).strip().lower(): v for k, v in table.items()}
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ValueError(f"{missing[0]}: column missing (columns: {', '.join(cols) or 'none'}); "
                         "the columns are target, measured and optionally time, read, device")
    out: dict[str, np.ndarray] = {}
    n = None
    for name in COLUMNS:
        if name not in cols:
            continue
        a = np.asarray(cols[name], dtype=object if name == "device" else None).ravel()
        if name != "device":
            try:
                a = a.astype(float)
            except (TypeError, ValueError):
                bad = next(i for i, v in enumerate(a, start=1) if not _is_number(v))
                raise ValueError(f"{name}, row {bad}: {a[bad - 1]!r} is not a number; every {name} cell must "
                                 "be a number") from None
        if n is not None and a.size != n:
            raise ValueError(f"{name}: has {a.size} rows; the target column has {n}")
        n = a.size
        out[name] = a
    if not n:
        raise ValueError("measured: no rows of measurements")
    return out


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0]) + 1


def _check(cols: dict[str, np.ndarray]) -> None:
    t, m = cols["target"], cols["measured"]
    for name, a in (("target", t), ("measured", m)):
        bad = ~np.isfinite(a)
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(f"{name}, row {i}: {a[i - 1]!r} is not finite; give a finite number")
    if (m < 0).any():
        i = _first_bad(m < 0)
        raise ValueError(f"measured, row {i}: {m[i - 1]:g} S is negative; conductances must be >= 0 S")
    if (t < 0).any():
        i = _first_bad(t < 0)
        raise ValueError(f"target, row {i}: {t[i - 1]:g} is negative; a target is a level index >= 0 or a "
                         "conductance >= 0 S")
    if "time" in cols:
        tt = cols["time"]
        bad = ~np.isfinite(tt) | (tt <= 0)
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(f"time, row {i}: {tt[i - 1]!r} is not allowed; times are finite numbers of "
                             "seconds after programming, > 0")
    if "read" in cols:
        r = cols["read"]
        if (~np.isfinite(r)).any():
            i = _first_bad(~np.isfinite(r))
            raise ValueError(f"read, row {i}: {r[i - 1]!r} is not finite; a read is a repetition index")
        if "device" not in cols:
            raise ValueError("device: column missing; the read column needs it (repeated reads are grouped by "
                             "device and time)")
    if np.unique(t).size < 2:
        raise ValueError(f"target: every row has the target {t[0]:g}; need at least two levels (or target "
                         "conductances)")


# ============================================================================ result
@dataclass
class DeviceFit:
    """The result of :func:`fit_device`.

    Attributes
    ----------
    device : the fitted :class:`~memcim.config.DeviceConfig`.
    parameters : ``{name: {"value": v, "se": standard error or None}}`` of every fitted quantity.
    residuals : summaries of the residuals of each fit (programming, drift, read).
    input : what the table held (rows, devices, levels or targets, times, reads per group).
    notes : what was fitted and how, and what could not be.
    data : per-device and per-group arrays behind the fit (for the plot).
    """

    device: DeviceConfig
    parameters: dict[str, dict[str, Any]]
    residuals: dict[str, Any]
    input: dict[str, Any]
    notes: list[str]
    models: dict[str, str]
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device.to_dict(), "models": self.models, "parameters": self.parameters,
                "residuals": self.residuals, "input": self.input, "notes": self.notes}

    def to_toml(self, name: str = "fitted") -> str:
        """A hardware config whose ``[device]`` table is the fit (every other section at its default)."""
        import tomli_w

        head = ["# device fitted by `memcim device fit` (memcim.hardware.fit): "
                + ", ".join(f"{k}: {v}" for k, v in self.models.items()),
                "# load it with --hw FILE, or copy the [device] table into your own config"]
        head += [f"# note: {n}" for n in self.notes]
        return "\n".join(head) + "\n" + tomli_w.dumps({"name": name, "device": self.device.to_dict()})


def _pv(value, se=None) -> dict[str, Any]:
    se = None if se is None or not np.isfinite(se) else float(se)
    return {"value": float(value), "se": se}


# ============================================================================ estimators
def _ml_sigma_linear(resid: np.ndarray, design: np.ndarray, extra_var: np.ndarray, *,
                     nonneg_first: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Maximum likelihood of ``resid ~ N(0, max(0, design @ c)**2 + extra_var)``.

    Returns (c, standard errors from the Fisher information, maximised log-likelihood).
    """
    from scipy.optimize import minimize

    scale = float(np.sqrt(np.mean(resid ** 2))) or 1.0
    r, e = resid / scale, extra_var / scale ** 2
    floor = 1e-12
    c0, *_ = np.linalg.lstsq(design, np.sqrt(np.pi / 2) * np.abs(r), rcond=None)

    def nll(c):
        s = np.maximum(design @ c, 0.0)
        v = s * s + e + floor
        f = 0.5 * np.sum(np.log(v) + r * r / v)
        g = design.T @ (s * (1.0 / v - r * r / v ** 2))
        return f, g

    bounds = [(0.0, None) if (i == 0 and nonneg_first) else (None, None) for i in range(design.shape[1])]
    if nonneg_first:
        c0[0] = max(c0[0], 0.0)
    res = minimize(nll, c0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 2000})
    c = res.x
    s = np.maximum(design @ c, 0.0)
    v = s * s + e + floor
    info = design.T @ (design * (2.0 * s * s / v ** 2)[:, None])
    try:
        cov = np.linalg.inv(info)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        se = np.full(c.shape, np.nan)
    loglik = -float(res.fun) - r.size * math.log(scale)
    return c * scale, se * scale, loglik


def _span(t, t_read: float):
    return np.log((np.asarray(t, float) + t_read) / (2.0 * t_read))


def _fit_read(g, x, w, nu, ss) -> dict[str, Any]:
    """Profile maximum likelihood of ``ss ~ sigma^2 chi2(nu)`` with ``sigma^2 = q^2 x^(-2e) w``."""
    from scipy.optimize import minimize_scalar

    lx = np.log(x)

    def q2_of(e):
        return float(np.sum(ss * np.exp(2 * e * lx) / w) / np.sum(nu))

    def prof(e):
        v = q2_of(e) * np.exp(-2 * e * lx) * w
        return float(np.sum(0.5 * nu * np.log(v) + 0.5 * ss / v))

    if np.ptp(lx) < 1e-9:
        e = 0.0
    else:
        e = float(minimize_scalar(prof, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-8}).x)
    q = math.sqrt(q2_of(e))
    grad = np.stack([np.full_like(lx, 2.0), -2.0 * lx], axis=1)
    info = grad.T @ (grad * (0.5 * nu)[:, None])
    if np.ptp(lx) < 1e-9:
        se_lnq, se_e = math.sqrt(1.0 / info[0, 0]), float("nan")
    else:
        cov = np.linalg.inv(info)
        se_lnq, se_e = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
    ratio = ss / nu / (q * q * np.exp(-2 * e * lx) * w)
    return {"q": q, "q_se": q * se_lnq, "exp": e, "exp_se": se_e, "ratio": ratio}


def _robust_sigma(r: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(r - np.median(r)))) if r.size else 0.0


def _summary(z: np.ndarray) -> dict[str, Any]:
    z = np.asarray(z, float)
    if not z.size:
        return {"n": 0}
    return {"n": int(z.size), "mean": float(z.mean()), "std": float(z.std(ddof=1)) if z.size > 1 else None,
            "p01": float(np.percentile(z, 1)), "p99": float(np.percentile(z, 99)),
            "frac_abs_gt_3": float(np.mean(np.abs(z) > 3))}


# ============================================================================ the fit
def fit_device(table: Any, *, g_max: float | None = None, levels: int | None = None, degree: int | None = 2,
               t_read: float | None = None) -> DeviceFit:
    """Fit programming noise, stuck fractions, drift and read noise to measurements.

    Parameters
    ----------
    table : a CSV path or a mapping of columns (see the module docstring for the columns).
    g_max : the window's top [S]. Default: with level targets, the top of the straight line through the
        level centres; with conductance targets, the largest target.
    levels : the device's number of levels. With level targets the default is the largest level + 1
        (every level needs at least 2 samples); with conductance targets the default is continuous.
    degree : degree of the ``prog_sigma_poly`` polynomial (conductance targets), at most the number of
        distinct targets - 1; None chooses it by BIC among 0..4.
    t_read : duration of one read [s] of the 1/f model (default ``DeviceConfig().read_t_read``).
    """
    from memcim import validate

    cols = _columns(table)
    _check(cols)
    defaults = DeviceConfig()
    t_read = defaults.read_t_read if t_read is None else validate.number("t_read", t_read, lo=0.0, lo_open=True)
    if g_max is not None:
        g_max = validate.number("g_max", g_max, lo=0.0, lo_open=True)
    if degree is not None:
        degree = validate.integer("degree", degree, lo=0, hi=7)
    notes: list[str] = []
    target, meas = cols["target"], cols["measured"]
    n_rows = target.size
    level_mode = bool(np.all(target == np.round(target)))
    has_time = "time" in cols
    time = cols["time"] if has_time else np.ones(n_rows)
    if "device" in cols:
        dev_ids, dev = np.unique(cols["device"].astype(str), return_inverse=True)
    else:
        dev_ids, dev = np.arange(n_rows).astype(str), np.arange(n_rows)
    n_dev = dev_ids.size

    # one target per device
    dev_target = np.full(n_dev, np.nan)
    dev_target[dev] = target
    clash = target != dev_target[dev]
    if clash.any():
        i = _first_bad(clash)
        raise ValueError(f"device, row {i}: device {dev_ids[dev[i - 1]]!r} has the targets "
                         f"{dev_target[dev[i - 1]]:g} and {target[i - 1]:g}; one device has one target")

    # groups: (device, time) -> mean, count, within-group sum of squares
    tkey, t_inv = np.unique(time, return_inverse=True)
    gkey = dev * tkey.size + t_inv
    gid, g_inv, g_n = np.unique(gkey, return_inverse=True, return_counts=True)
    g_mean = np.bincount(g_inv, meas) / g_n
    g_ss = np.bincount(g_inv, (meas - g_mean[g_inv]) ** 2)
    g_dev, g_t = gid // tkey.size, tkey[gid % tkey.size]
    # each device's earliest group
    order = np.lexsort((g_t, g_dev))
    first = order[np.r_[True, g_dev[order][1:] != g_dev[order][:-1]]]
    v_dev = np.empty(n_dev)
    v_dev[g_dev[first]] = g_mean[first]
    n_first = np.empty(n_dev)
    n_first[g_dev[first]] = g_n[first]
    t_first = np.empty(n_dev)
    t_first[g_dev[first]] = g_t[first]
    t0 = float(time.min()) if has_time else defaults.drift_t0
    if has_time and t0 <= t_read:
        raise ValueError(f"time: the earliest time {t0:g} s is not allowed; it becomes device.drift_t0 and must "
                         f"be longer than one read (t_read = {t_read:g} s)")

    # ---------------------------------------------------------------- targets, window
    if level_mode:
        lv = dev_target.astype(int)
        n_levels = int(lv.max()) + 1
        if levels is not None:
            levels = validate.integer("levels", levels, lo=2)
            if levels < n_levels:
                raise ValueError(f"levels: {levels} is not allowed; the data has level {n_levels - 1}, so at "
                                 f"least {n_levels} levels")
            n_levels = levels
        counts = np.bincount(lv, minlength=n_levels)
        for k, c in enumerate(counts):
            if c < 2:
                raise ValueError(f"target: level {k} has {c} sample{'' if c == 1 else 's'}; need at least 2")
        med = np.array([np.median(v_dev[lv == k]) for k in range(n_levels)])
        ks = np.arange(n_levels)
        b, a = np.polyfit(ks, med, 1)
        g_min = max(float(a), 0.0)
        if g_max is None:
            g_max = float(a + b * (n_levels - 1))
        if not g_max > g_min:
            raise ValueError(f"g_max: the level centres give g_min = {g_min:g} S and g_max = {g_max:g} S; the "
                             "centres must grow with the level (or give --g-max above g_min)")
        grid = g_min + ks * (g_max - g_min) / (n_levels - 1)
        g_dev_target = grid[lv]
    else:
        if levels is not None:
            levels = validate.integer("levels", levels, lo=2)
        g_min = float(dev_target.min())
        if g_max is None:
            g_max = float(dev_target.max())
        if not g_max > g_min:
            raise ValueError(f"g_max: {g_max:g} S is not allowed; it must exceed the smallest target, {g_min:g} S")
        g_dev_target = dev_target
        n_levels = levels

    # ---------------------------------------------------------------- read noise
    read = None
    models: dict[str, str] = {}
    multi = g_n >= 2
    if multi.any():
        ok = multi & (g_mean > 0)
        nu_g, ss_g = g_n[ok] - 1.0, g_ss[ok]
        x_g, w_g = g_mean[ok] / g_max, g_mean[ok] ** 2 * (_span(g_t[ok], t_read) if has_time else 1.0)
        keep = ss_g > 0
        if keep.sum() >= 2:
            read = _fit_read(g_mean[ok][keep], x_g[keep], w_g[keep], nu_g[keep], ss_g[keep])
            read.update(g=g_mean[ok][keep], s=np.sqrt(ss_g[keep] / nu_g[keep]), t=g_t[ok][keep])
            models["read"] = "1/f" if has_time else "relative"
    if read is None:
        if "read" in cols or (multi.any()):
            notes.append("read noise: no device has two reads at one time with a spread; not fitted")
        else:
            notes.append("read noise: no repeated reads (read and device columns); not fitted, and the "
                         "programming sigma includes the read noise of one read")

    def read_var(g, t):
        if read is None:
            return np.zeros_like(g)
        x = np.clip(g / g_max, 1e-12, None)
        w = g ** 2 * (_span(t, t_read) if has_time else 1.0)
        return read["q"] ** 2 * x ** (-2 * read["exp"]) * w

    e_dev = read_var(v_dev, t_first) / n_first

    # ---------------------------------------------------------------- programming noise and stuck devices
    band = STUCK_BAND * (g_max - g_min)
    floor = 1e-6 * g_max
    inlier = np.ones(n_dev, bool)
    poly_c = poly_se = None
    if level_mode:
        centre = med[lv].copy()
        sig = np.array([_robust_sigma(v_dev[lv == k]) for k in range(n_levels)])
        for _ in range(3):
            sd = np.sqrt(sig[lv] ** 2 + e_dev) + floor
            inlier = np.abs(v_dev - centre) <= OUTLIER_Z * sd
            sig = np.zeros(n_levels)
            for k in range(n_levels):
                m = inlier & (lv == k)
                if m.sum() < 2:
                    raise ValueError(f"target: level {k} has {int(m.sum())} sample{'' if m.sum() == 1 else 's'} "
                                     "once stuck devices and outliers are left out; need at least 2")
                centre[lv == k] = v_dev[m].mean()
                sig[k] = math.sqrt(max(v_dev[m].var(ddof=1) - e_dev[m].mean(), 0.0))
        sd_dev = np.sqrt(sig[lv] ** 2 + e_dev)
        table, table_se = [], []
        for k in range(n_levels):
            m = inlier & (lv == k)
            n = int(m.sum())
            v = v_dev[m].var(ddof=1)
            table.append(sig[k])
            if sig[k] == 0 and read is not None:
                notes.append(f"level {k}: its spread is no larger than the read noise of its t0 reads; its "
                             "programming sigma is set to 0")
            table_se.append(v / (sig[k] * math.sqrt(2 * (n - 1))) if sig[k] > 0 else float("nan"))
            if centre[lv == k][0] < 3 * sig[k]:
                notes.append(f"level {k}: its centre is within 3 sigma of 0 S, where programming clips; its sigma "
                             "is biased low")
        models["programming"] = "per-level table (prog_sigma_table)"
    else:
        centre = dev_target.copy()
        r = v_dev - centre
        # a first, robust sigma(target): MAD in quantile bins of the target
        nb = int(np.clip(n_dev // 30, 1, 10))
        edges = np.quantile(dev_target, np.linspace(0, 1, nb + 1))
        bin_of = np.clip(np.searchsorted(edges, dev_target, side="right") - 1, 0, nb - 1)
        sig0 = np.array([_robust_sigma(r[bin_of == i]) for i in range(nb)])
        sd = np.sqrt(sig0[bin_of] ** 2 + e_dev) + floor
        n_distinct = np.unique(dev_target).size
        x_dev = dev_target / g_max
        for it in range(3):
            inlier = np.abs(r) <= OUTLIER_Z * sd
            if degree is None:
                best = None
                for d in range(min(MAX_AUTO_DEGREE, n_distinct - 1) + 1):
                    X = np.vander(x_dev[inlier], d + 1, increasing=True)
                    c, se, ll = _ml_sigma_linear(r[inlier], X, e_dev[inlier])
                    bic = -2 * ll + (d + 1) * math.log(inlier.sum())
                    if best is None or bic < best[0]:
                        best = (bic, d, c, se)
                _, deg, poly_c, poly_se = best
            else:
                deg = min(degree, n_distinct - 1)
                X = np.vander(x_dev[inlier], deg + 1, increasing=True)
                poly_c, poly_se, _ = _ml_sigma_linear(r[inlier], X, e_dev[inlier])
            sig_dev = np.maximum(np.vander(x_dev, deg + 1, increasing=True) @ poly_c, 0.0)
            sd = np.sqrt(sig_dev ** 2 + e_dev) + floor
        inlier = np.abs(r) <= OUTLIER_Z * sd
        sd_dev = sd - floor
        if degree is not None and deg < degree:
            notes.append(f"programming: degree {degree} asked, but {n_distinct} distinct targets allow at most "
                         f"{n_distinct - 1}; fitted degree {deg}")
        models["programming"] = f"polynomial of degree {deg} in G/g_max (prog_sigma_poly)"
        bias = r[inlier]
        notes.append(f"programming: mean of measured - target = {bias.mean():.3g} S "
                     f"(+- {bias.std(ddof=1) / math.sqrt(bias.size):.2g})")

    # stuck devices
    out = ~inlier
    st_min = out & (np.abs(v_dev - g_min) <= band)
    st_max = out & (np.abs(v_dev - g_max) <= band) & ~st_min
    other = out & ~st_min & ~st_max
    elig_min = np.abs(centre - g_min) > OUTLIER_Z * sd_dev + band
    elig_max = np.abs(centre - g_max) > OUTLIER_Z * sd_dev + band
    fr = {}
    for key, st, el in (("stuck_at_min", st_min, elig_min), ("stuck_at_max", st_max, elig_max)):
        ne = int(el.sum())
        p = float(st[el].sum() / ne) if ne else 0.0
        fr[key] = (p, math.sqrt(max(p * (1 - p), 1.0 / ne ** 2) / ne) if ne else float("nan"), ne, int(st.sum()))
    if other.any():
        notes.append(f"{int(other.sum())} device(s) far from their target but not at g_min or g_max: outliers, "
                     "left out of every fit")

    # ---------------------------------------------------------------- drift
    drift = None
    if has_time and tkey.size >= 2:
        if "device" not in cols:
            notes.append("drift: needs the device column to follow each device over time; not fitted")
        else:
            drift = _fit_drift(g_dev, g_t, g_mean, g_n, t0, inlier & ~st_min & ~st_max & (g_dev_target > 0),
                               g_dev_target, g_max, read_var, notes)
    elif has_time:
        notes.append("drift: one time only; not fitted")

    # ---------------------------------------------------------------- the config
    kw: dict[str, Any] = {"g_min": g_min, "g_max": g_max, "read_t_read": t_read}
    if n_levels is not None:
        kw["levels"] = n_levels
    params: dict[str, dict[str, Any]] = {"g_min": _pv(g_min), "g_max": _pv(g_max)}
    if level_mode:
        kw["prog_sigma_table"] = tuple(float(s) for s in table)
        params["prog_sigma_table"] = {"value": [float(s) for s in table],
                                      "se": [None if not np.isfinite(s) else float(s) for s in table_se]}
        params["level_centres"] = {"value": [float(centre[lv == k][0]) for k in range(n_levels)],
                                    "se": [float(math.sqrt(sig[k] ** 2 + e_dev[inlier & (lv == k)].mean())
                                                     / math.sqrt(int((inlier & (lv == k)).sum())))
                                           for k in range(n_levels)]}
    else:
        kw["prog_sigma_poly"] = tuple(float(c) for c in poly_c)
        params["prog_sigma_poly"] = {"value": [float(c) for c in poly_c],
                                     "se": [None if not np.isfinite(s) else float(s) for s in poly_se]}
    for key, (p, se, ne, nf) in fr.items():
        kw[key] = p
        params[key] = {**_pv(p, se), "found": nf, "eligible": ne}
    if has_time:
        kw["drift_t0"] = t0
    if drift is not None:
        for k in ("drift_nu", "drift_nu_slope", "drift_nu_std", "drift_nu_std_slope"):
            kw[k] = drift[k]
            params[k] = _pv(drift[k], drift[k + "_se"])
        kw["drift_nu_min"] = min(0.0, drift["mu_lo"])
        kw["drift_nu_max"] = max(1.0, drift["mu_hi"])
        models["drift"] = "per-device least squares of ln G vs ln(t/t0); mean (WLS) and std (ML) linear in ln(G/g_max)"
    if read is not None:
        if has_time:
            q, q_se = read["q"], read["q_se"]
        else:
            f = math.sqrt(float(_span(kw.get("drift_t0", defaults.drift_t0), t_read)))
            q, q_se = read["q"] / f, read["q_se"] / f
            params["read_sigma_rel"] = _pv(read["q"], read["q_se"])
            notes.append(f"read noise: no time column, so a relative read sigma {read['q']:.3g} (G/g_max)^"
                         f"(-{read['exp']:.3g}) was fitted; it is written as the 1/f model of reads at drift_t0 = "
                         f"{kw.get('drift_t0', defaults.drift_t0):g} s (read_1f_q = sigma_rel / {f:.3g})")
        kw["read_1f_q"] = q
        kw["read_1f_exp"] = read["exp"]
        params["read_1f_q"] = _pv(q, q_se)
        params["read_1f_exp"] = _pv(read["exp"], read["exp_se"])
        qmax = q * max(1.0, float(np.max(np.clip(read["g"] / g_max, 1e-12, None) ** (-read["exp"]))))
        kw["read_1f_q_max"] = max(defaults.read_1f_q_max, qmax)
    try:
        device = DeviceConfig(**kw)
    except ValueError as e:  # pragma: no cover - every value above is in range by construction
        raise ValueError(f"fit: the fitted values make no valid device ({e})") from None

    # ---------------------------------------------------------------- residuals, input summary
    z = (v_dev - centre)[inlier] / np.maximum(sd_dev[inlier], floor)
    residuals: dict[str, Any] = {"programming_z": _summary(z)}
    if read is not None:
        residuals["read_variance_ratio"] = _summary(read["ratio"])
    if drift is not None:
        residuals["drift_nu_z"] = _summary(drift["z"])
        residuals["drift_ln_g_rms"] = drift["ln_rms"]
    inp = {"rows": int(n_rows), "devices": int(n_dev), "targets": "levels" if level_mode else "conductance [S]",
           "columns": [c for c in COLUMNS if c in cols],
           "times": [float(t) for t in tkey] if has_time else None,
           "reads_per_group": {"min": int(g_n.min()), "max": int(g_n.max())},
           "outliers": int(other.sum())}
    if level_mode:
        inp["samples_per_level"] = [int(c) for c in counts]
    else:
        inp["distinct_targets"] = int(np.unique(dev_target).size)
    data = {"target": dev_target, "g_target": g_dev_target, "value": v_dev, "centre": centre, "sd": sd_dev,
            "inlier": inlier, "stuck_min": st_min, "stuck_max": st_max, "level_mode": level_mode,
            "read": read, "drift": drift, "z": z}
    return DeviceFit(device=device, parameters=params, residuals=residuals, input=inp, notes=notes,
                     models=models, data=data)


def _fit_drift(g_dev, g_t, g_mean, g_n, t0, ok_dev, g_target, g_max, read_var, notes) -> dict[str, Any] | None:
    """Per-device drift exponents, then their mean and std as linear functions of ln(G/g_max)."""
    use = ok_dev[g_dev] & (g_mean > 0)
    devs = np.unique(g_dev[use])
    nu, se2, zt, res_ss, res_n = [], [], [], 0.0, 0
    for d in devs:
        m = use & (g_dev == d)
        if np.unique(g_t[m]).size < 2:
            continue
        X = np.log(g_t[m] / t0)
        y = np.log(g_mean[m])
        Xc = X - X.mean()
        sxx = float(Xc @ Xc)
        slope = float(Xc @ (y - y.mean()) / sxx)
        resid = y - y.mean() - slope * Xc
        res_ss += float(resid @ resid)
        res_n += resid.size
        var_y = read_var(g_mean[m], g_t[m]) / g_n[m] / g_mean[m] ** 2
        if np.any(var_y > 0):
            s2 = float(np.sum(Xc ** 2 * var_y) / sxx ** 2)
        elif m.sum() > 2:
            s2 = float(resid @ resid / (m.sum() - 2) / sxx)
        else:
            s2 = 0.0
        nu.append(-slope)
        se2.append(s2)
        zt.append(math.log(g_target[d] / g_max))
    if len(nu) < 3:
        notes.append("drift: fewer than 3 devices with two or more times and G > 0; not fitted")
        return None
    nu, se2, zt = np.array(nu), np.array(se2), np.array(zt)
    one_z = np.ptp(zt) < 1e-9
    X = np.ones((nu.size, 1)) if one_z else np.stack([np.ones_like(zt), zt], axis=1)
    if one_z:
        notes.append("drift: every device has the same target; the slopes in ln(G/g_max) are set to 0")
    s = np.full(nu.size, nu.std(ddof=1))
    for _ in range(4):
        W = 1.0 / (s ** 2 + se2 + 1e-30)
        XtW = X.T * W
        cov_mu = np.linalg.inv(XtW @ X)
        b = cov_mu @ (XtW @ nu)
        e = nu - X @ b
        a, a_se, _ = _ml_sigma_linear(e, X, se2, nonneg_first=True)
        s = np.maximum(X @ a, 0.0)
    b_se = np.sqrt(np.diag(cov_mu))
    pad = lambda v: (float(v[0]), 0.0 if one_z else float(v[1]))
    (nu0, nu1), (nu0_se, nu1_se) = pad(b), pad(b_se)
    (sd0, sd1), (sd0_se, sd1_se) = pad(a), pad(a_se)
    mu = X @ b
    return {"drift_nu": nu0, "drift_nu_slope": nu1, "drift_nu_std": sd0, "drift_nu_std_slope": sd1,
            "drift_nu_se": nu0_se, "drift_nu_slope_se": nu1_se if not one_z else None,
            "drift_nu_std_se": sd0_se, "drift_nu_std_slope_se": sd1_se if not one_z else None,
            "mu_lo": float(mu.min()), "mu_hi": float(mu.max()),
            "nu": nu, "z_target": zt, "se2": se2, "z": e / np.sqrt(s ** 2 + se2 + 1e-30),
            "ln_rms": math.sqrt(res_ss / res_n) if res_n else None, "devices": int(nu.size)}


# ============================================================================ plot
def plot_fit(fit: DeviceFit, path: str | Path) -> Path:
    """The fit against the data, and the residuals: one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    d, dev = fit.data, fit.device
    panels = ["prog", "sigma", "resid"] + (["drift"] if d["drift"] is not None else []) + (
        ["read"] if d["read"] is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    axes = np.atleast_1d(axes)
    us = 1e6
    for ax, what in zip(axes, panels):
        if what == "prog":
            x = d["target"] if d["level_mode"] else d["g_target"] * us
            ax.plot(x[d["inlier"]], d["value"][d["inlier"]] * us, ".", ms=2, alpha=0.4, label="devices")
            out = ~d["inlier"]
            if out.any():
                ax.plot(x[out], d["value"][out] * us, "x", ms=4, color="C3", label="stuck / outliers")
            if d["level_mode"]:
                ks = np.unique(d["target"])
                first = np.array([np.flatnonzero(d["target"] == k)[0] for k in ks])
                ax.errorbar(ks, d["centre"][first] * us, yerr=2 * d["sd"][first] * us, fmt="_", color="C1",
                            capsize=4, label="fit, +-2 sigma")
            else:
                o = np.argsort(x)
                ax.fill_between(x[o], (d["centre"] - 2 * d["sd"])[o] * us, (d["centre"] + 2 * d["sd"])[o] * us,
                                color="C1", alpha=0.3, label="fit, +-2 sigma")
            ax.set_xlabel("target level" if d["level_mode"] else "target G [uS]")
            ax.set_ylabel("measured G at t0 [uS]")
            ax.set_title("programming")
            ax.legend(fontsize=7)
        elif what == "sigma":
            if d["level_mode"]:
                ks = np.arange(dev.levels)
                emp = [np.std(d["value"][d["inlier"] & (d["target"] == k)], ddof=1) for k in ks]
                ax.plot(ks, np.array(emp) * us, "o", label="sample std")
                ax.plot(ks, np.array(dev.prog_sigma_table) * us, "-", label="prog_sigma_table")
                tot = [np.sqrt(np.mean(d["sd"][d["inlier"] & (d["target"] == k)] ** 2)) for k in ks]
                ax.plot(ks, np.array(tot) * us, ":", label="fit + read noise of the t0 reads")
                ax.set_xlabel("level")
            else:
                x, r, m = d["g_target"], d["value"] - d["centre"], d["inlier"]
                nb = int(np.clip(m.sum() // 40, 2, 20))
                edges = np.quantile(x[m], np.linspace(0, 1, nb + 1))
                idx = np.clip(np.searchsorted(edges, x[m], side="right") - 1, 0, nb - 1)
                xc = [x[m][idx == i].mean() for i in range(nb) if (idx == i).sum() > 1]
                sc = [r[m][idx == i].std(ddof=1) for i in range(nb) if (idx == i).sum() > 1]
                ax.plot(np.array(xc) * us, np.array(sc) * us, "o", label="binned sample std")
                xs = np.linspace(x.min(), x.max(), 200)
                ss = np.maximum(np.polyval(dev.prog_sigma_poly[::-1], xs / dev.g_max), 0)
                ax.plot(xs * us, ss * us, "-", label="prog_sigma_poly")
                if d["read"] is not None:
                    o = np.argsort(x[m])
                    ax.plot(x[m][o] * us, d["sd"][m][o] * us, ":", label="fit + read noise of the t0 reads")
                ax.set_xlabel("target G [uS]")
            ax.set_ylabel("sigma [uS]")
            ax.set_title("programming sigma")
            ax.legend(fontsize=7)
        elif what == "resid":
            z = d["z"]
            ax.hist(z, bins=40, density=True, alpha=0.6, label="(G - centre) / sigma")
            zz = np.linspace(-4, 4, 200)
            ax.plot(zz, np.exp(-zz ** 2 / 2) / math.sqrt(2 * math.pi), "k-", label="N(0, 1)")
            ax.set_xlabel("normalised residual")
            ax.set_title("programming residuals")
            ax.legend(fontsize=7)
        elif what == "drift":
            dr = d["drift"]
            ax.plot(dr["z_target"], dr["nu"], ".", ms=3, alpha=0.5, label="per-device nu")
            zs = np.linspace(dr["z_target"].min(), dr["z_target"].max(), 100)
            mu = dev.drift_nu + dev.drift_nu_slope * zs
            sd = np.maximum(dev.drift_nu_std + dev.drift_nu_std_slope * zs, 0)
            ax.plot(zs, mu, "k-", label="mean")
            ax.plot(zs, mu + sd, "k--", label="+-1 std")
            ax.plot(zs, mu - sd, "k--")
            ax.set_xlabel("ln(G / g_max)")
            ax.set_ylabel("drift exponent nu")
            ax.set_title("drift")
            ax.legend(fontsize=7)
        elif what == "read":
            rd = d["read"]
            ax.loglog(rd["g"] * us, rd["s"] * us, ".", ms=3, alpha=0.5, label="std of repeated reads")
            pred = np.sqrt(rd["s"] ** 2 / rd["ratio"])
            for i, t in enumerate(np.unique(rd["t"])[:6]):
                m = rd["t"] == t
                o = np.argsort(rd["g"][m])
                lab = "model" if fit.models.get("read") == "relative" else f"model, t = {t:g} s"
                ax.loglog(rd["g"][m][o] * us, pred[m][o] * us, "-", color=f"C{i + 1}", lw=1, label=lab)
            ax.set_xlabel("G [uS]")
            ax.set_ylabel("read sigma [uS]")
            ax.set_title(f"read noise ({fit.models.get('read')})")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return savefig(fig, path)
