"""``memcim device fit`` (memcim.hardware.fit): synthetic measurements drawn here, with numpy, from
known parameters by the model's definition (memcim.config.DeviceConfig's docstring), are fitted, and
every parameter must come back within its sampling error.

Each tolerance is ``z * SE``: SE is derived here from the sample size and the true parameters
(the Fisher information of the model, or the binomial / chi-square error), not taken from the fit;
``z`` is Bonferroni-corrected for the parameters of the case at a family-wise level of 1%. The
seeds are fixed. Bad input goes through the CLI: exit status 2, one line, no traceback.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from memcim.cli import main
from memcim.config import HardwareConfig
from memcim.hardware.fit import fit_device

G_MIN, G_MAX, T0, T_READ = 5e-6, 100e-6, 20.0, 250e-9
ALPHA = 0.01


def _z(m: int) -> float:
    """Two-sided Bonferroni critical value for m parameters at family-wise level ALPHA."""
    return float(norm.ppf(1 - ALPHA / (2 * m)))


def _span(t):
    return np.log((t + T_READ) / (2 * T_READ))


def _assert_within(name, got, true, se, z):
    assert abs(got - true) <= z * se, f"{name}: fitted {got:.5g}, true {true:.5g}, |diff| = " \
                                      f"{abs(got - true) / se:.2f} SE > {z:.2f} SE (SE {se:.3g})"


# ----------------------------------------------------------------------------- generators
def draw_levels(rng, *, levels, n_per_level, sigma, p_min, p_max):
    """Programmed devices at uniformly spaced levels, per-level sigma, stuck at g_min / g_max."""
    lv = np.repeat(np.arange(levels), n_per_level)
    target = G_MIN + lv * (G_MAX - G_MIN) / (levels - 1)
    g = np.clip(target + np.asarray(sigma)[lv] * rng.standard_normal(lv.size), 0, None)
    u = rng.random(lv.size)
    g = np.where(u < p_min, G_MIN, np.where(u < p_min + p_max, G_MAX, g))
    return lv, g, u


def draw_poly(rng, *, n, coeffs, lo=10e-6):
    """Continuous targets, sigma = c0 + c1 x + c2 x^2 with x = G / g_max."""
    target = rng.uniform(lo, G_MAX, n)
    x = target / G_MAX
    sigma = np.polyval(np.asarray(coeffs)[::-1], x)
    return target, np.clip(target + sigma * rng.standard_normal(n), 0, None), sigma


def draw_time(rng, *, n_dev, levels, times, reads, nu, nu_slope, nu_std, nu_std_slope, q, q_exp,
              prog_sigma=1e-6):
    """Devices followed over time: G(t) = G(t0) (t/t0)^-nu, nu ~ N(mu(G), s(G)^2) per device; each read
    adds N(0, (G Q(G))^2 ln((t + t_read) / (2 t_read))) with Q = q (G/g_max)^-q_exp."""
    lv = rng.integers(0, levels, n_dev)
    gt = G_MIN + lv * (G_MAX - G_MIN) / (levels - 1)
    lg = np.log(gt / G_MAX)
    mu, s = nu + nu_slope * lg, np.maximum(nu_std + nu_std_slope * lg, 0)
    nus = mu + s * rng.standard_normal(n_dev)
    g0 = gt + prog_sigma * rng.standard_normal(n_dev)
    cols = {k: [] for k in ("target", "measured", "time", "read", "device")}
    for t in times:
        g = g0 * (t / T0) ** (-nus)
        sd = g * q * (g / G_MAX) ** (-q_exp) * math.sqrt(_span(t))
        for r in range(reads):
            cols["target"].append(lv)
            cols["measured"].append(np.clip(g + sd * rng.standard_normal(n_dev), 0, None))
            cols["time"].append(np.full(n_dev, t))
            cols["read"].append(np.full(n_dev, r))
            cols["device"].append(np.char.add("d", np.arange(n_dev).astype(str)))
    return {k: np.concatenate(v) for k, v in cols.items()}, gt, lg


def write_csv(path, cols):
    keys = list(cols)
    n = len(cols[keys[0]])
    with open(path, "w") as fh:
        fh.write(",".join(keys) + "\n")
        fh.writelines(",".join(str(cols[k][i]) for k in keys) + "\n" for i in range(n))
    return path


# ----------------------------------------------------------------------------- recovery
def test_level_table_and_stuck_fractions_are_recovered():
    rng = np.random.default_rng(11)
    L, n, p_min, p_max = 8, 250, 0.02, 0.03
    sigma = np.linspace(0.5e-6, 1.5e-6, L)
    lv, g, u = draw_levels(rng, levels=L, n_per_level=n, sigma=sigma, p_min=p_min, p_max=p_max)
    fit = fit_device({"target": lv, "measured": g})
    dev = fit.device
    assert dev.levels == L and len(dev.prog_sigma_table) == L
    z = _z(L + 2)
    for k in range(L):
        n_k = int(((lv == k) & (u >= p_min + p_max)).sum())  # the programmed (not stuck) devices of level k
        _assert_within(f"prog_sigma_table[{k}]", dev.prog_sigma_table[k], sigma[k],
                       sigma[k] / math.sqrt(2 * (n_k - 1)), z)
    # a stuck device is seen where its level's distribution excludes g_min (g_max): every level but the
    # bottom (top) one here
    n_elig = n * (L - 1)
    _assert_within("stuck_at_min", dev.stuck_at_min, p_min, math.sqrt(p_min * (1 - p_min) / n_elig), z)
    _assert_within("stuck_at_max", dev.stuck_at_max, p_max, math.sqrt(p_max * (1 - p_max) / n_elig), z)
    assert fit.parameters["stuck_at_min"]["eligible"] == n_elig
    assert dev.g_min == pytest.approx(G_MIN, rel=0.02) and dev.g_max == pytest.approx(G_MAX, rel=0.01)


def test_polynomial_sigma_is_recovered():
    rng = np.random.default_rng(12)
    coeffs = np.array([0.8e-6, 1.5e-6, 2.0e-6])
    n = 4000
    target, g, _ = draw_poly(rng, n=n, coeffs=coeffs)
    fit = fit_device({"target": target, "measured": g}, g_max=G_MAX)
    got = np.array(fit.device.prog_sigma_poly)
    assert got.size == 3
    # Fisher information of sigma(x) = phi(x) . c for residuals N(0, sigma^2): sum 2 phi phi^T / sigma^2
    x = target / G_MAX
    phi = np.vander(x, 3, increasing=True)
    sig = phi @ coeffs
    se = np.sqrt(np.diag(np.linalg.inv(phi.T @ (phi * (2 / sig ** 2)[:, None]))))
    for j in range(3):
        _assert_within(f"prog_sigma_poly[{j}]", got[j], coeffs[j], se[j], _z(3))
    assert fit.device.stuck_at_min == 0 and fit.device.stuck_at_max == 0
    assert fit.device.levels is None


def test_polynomial_degree_auto_picks_a_line_for_linear_sigma():
    rng = np.random.default_rng(13)
    target, g, _ = draw_poly(rng, n=3000, coeffs=[0.5e-6, 3e-6, 0.0])
    fit = fit_device({"target": target, "measured": g}, g_max=G_MAX, degree=None)
    assert len(fit.device.prog_sigma_poly) in (2, 3)  # BIC: a line (a quadratic term only by chance)


def _drift_se(lg, gt, times, reads, nu_std, nu_std_slope, q, q_exp):
    """SE of the drift-parameter estimates, from the model: each device's nu is known to the error of
    a least-squares slope of ln G over ln(t/t0) with read noise var(ln G) = Q^2 ln(..) / reads."""
    X = np.log(np.asarray(times) / T0)
    Xc = X - X.mean()
    Q2 = (q * (gt / G_MAX) ** (-q_exp)) ** 2
    se2 = Q2 * np.sum(Xc ** 2 * _span(np.asarray(times))) / reads / np.sum(Xc ** 2) ** 2
    s = np.maximum(nu_std + nu_std_slope * lg, 0)
    v = s ** 2 + se2
    D = np.stack([np.ones_like(lg), lg], axis=1)
    se_mu = np.sqrt(np.diag(np.linalg.inv(D.T @ (D / v[:, None]))))
    se_s = np.sqrt(np.diag(np.linalg.inv(D.T @ (D * (2 * s ** 2 / v ** 2)[:, None]))))
    return se_mu, se_s


def test_drift_distribution_is_recovered():
    rng = np.random.default_rng(14)
    truth = {"nu": 0.05, "nu_slope": -0.01, "nu_std": 0.01, "nu_std_slope": -0.004}
    times, reads, q, q_exp = [20.0, 200.0, 2e3, 2e4, 2e5], 1, 0.004, 0.2
    cols, gt, lg = draw_time(rng, n_dev=800, levels=5, times=times, reads=reads, q=q, q_exp=q_exp, **truth)
    fit = fit_device(cols)
    dev = fit.device
    assert dev.drift_t0 == T0
    se_mu, se_s = _drift_se(lg, gt, times, reads, truth["nu_std"], truth["nu_std_slope"], q, q_exp)
    z = _z(4)
    _assert_within("drift_nu", dev.drift_nu, truth["nu"], se_mu[0], z)
    _assert_within("drift_nu_slope", dev.drift_nu_slope, truth["nu_slope"], se_mu[1], z)
    _assert_within("drift_nu_std", dev.drift_nu_std, truth["nu_std"], se_s[0], z)
    _assert_within("drift_nu_std_slope", dev.drift_nu_std_slope, truth["nu_std_slope"], se_s[1], z)
    assert "drift" in fit.models and "read" not in fit.models  # one read per time: no read-noise fit


@pytest.mark.parametrize("with_time", [True, False], ids=["1/f", "relative"])
def test_read_noise_is_recovered(with_time):
    rng = np.random.default_rng(15)
    q, q_exp, reads = 0.01, 0.3, 5
    times = [20.0, 2e3, 2e5] if with_time else [T0]
    cols, gt, _ = draw_time(rng, n_dev=300, levels=6, times=times, reads=reads, nu=0.0, nu_slope=0.0,
                            nu_std=0.0, nu_std_slope=0.0, q=q, q_exp=q_exp)
    if not with_time:
        del cols["time"]
    fit = fit_device(cols)
    assert fit.models["read"] == ("1/f" if with_time else "relative")
    # Fisher information of (ln q, exp) from within-group variances, reads - 1 degrees of freedom each:
    # sum (reads - 1) / 2 * g g^T with g = (2, -2 ln x)
    lx = np.log(np.tile(gt, len(times)) / G_MAX)
    grad = np.stack([np.full_like(lx, 2.0), -2 * lx], axis=1)
    cov = np.linalg.inv(grad.T @ (grad * ((reads - 1) / 2)))
    se_lnq, se_exp = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
    if with_time:
        got_q = fit.device.read_1f_q
        true_q = q
    else:  # a relative sigma at t0 = q sqrt(ln((t0 + t_read) / (2 t_read)))
        got_q = fit.parameters["read_sigma_rel"]["value"]
        true_q = q * math.sqrt(_span(T0))
        assert fit.device.read_1f_q == pytest.approx(got_q / math.sqrt(_span(fit.device.drift_t0)))
    _assert_within("read_1f_q", got_q, true_q, true_q * se_lnq, _z(2))
    _assert_within("read_1f_exp", fit.device.read_1f_exp, q_exp, se_exp, _z(2))


# ----------------------------------------------------------------------------- the command
def _run(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_writes_toml_json_png_and_the_toml_loads(tmp_path, capsys):
    import json

    rng = np.random.default_rng(16)
    cols, _, _ = draw_time(rng, n_dev=60, levels=4, times=[20.0, 2e3], reads=3, nu=0.05, nu_slope=0.0,
                           nu_std=0.01, nu_std_slope=0.0, q=0.01, q_exp=0.0)
    csv = write_csv(tmp_path / "m.csv", cols)
    rc, out, err = _run(capsys, ["device", "fit", str(csv), "--out", str(tmp_path / "o")])
    assert rc == 0, err
    for f in ("device.toml", "device_fit.json", "device_fit.png"):
        assert (tmp_path / "o" / f).stat().st_size > 0
    hw = HardwareConfig.load(tmp_path / "o" / "device.toml")
    assert hw.device.levels == 4 and hw.device.has_drift and hw.device.has_read_1f
    doc = json.loads((tmp_path / "o" / "device_fit.json").read_text())
    assert {"device", "parameters", "residuals", "input", "provenance"} <= set(doc)
    assert doc["parameters"]["drift_nu"]["se"] > 0
    rc, out, err = _run(capsys, ["device", "fit", str(csv), "--json"])
    assert rc == 0 and json.loads(out)["device"]["levels"] == 4


def _bad_csv(tmp_path, text):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    return str(p)


GOOD = "target,measured\n0,1e-6\n0,1.1e-6\n1,5e-5\n1,5.2e-5\n"
BAD = [
    ("missing column", "target,value\n0,1e-6\n1,2e-6\n", [], "measured: column missing"),
    ("non-numeric cell", "target,measured\n0,1e-6\n1,abc\n", [], "measured, row 2: 'abc' is not a number"),
    ("one level", "target,measured\n2,1e-6\n2,2e-6\n", [], "need at least two levels"),
    ("negative conductance", "target,measured\n0,1e-6\n1,-2e-6\n", [], "measured, row 2"),
    ("negative time", "target,measured,time\n0,1e-6,1\n0,1e-6,1\n1,2e-5,-3\n1,2e-5,1\n", [], "time, row 3"),
    ("non-finite time", "target,measured,time\n0,1e-6,1\n0,1e-6,inf\n1,2e-5,1\n1,2e-5,1\n", [], "time, row 2"),
    ("level with one sample", ("target,measured\n0,1e-6\n0,1e-6\n1,5e-5\n1,5e-5\n2,9e-5\n1,5e-5\n0,1e-6\n3,9e-5\n"
                               "2,9e-5\n"), [], "level 3 has 1 sample; need at least 2"),
    ("read without device", "target,measured,read\n0,1e-6,0\n0,1e-6,1\n1,5e-5,0\n1,5e-5,1\n", [],
     "device: column missing"),
    ("empty file", "", [], "is empty"),
    ("levels below the data", GOOD, ["--levels", "1"], "--levels"),
    ("bad degree", GOOD, ["--degree", "x"], "--degree"),
    ("negative g-max", GOOD, ["--g-max", "-1"], "--g-max"),
]


@pytest.mark.parametrize("what,text,extra,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_the_column(what, text, extra, needle, tmp_path, capsys):
    rc, _out, err = _run(capsys, ["device", "fit", _bad_csv(tmp_path, text), *extra])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("memcim device fit: error: ") and needle in lines[0], lines[0]


def test_missing_file_is_one_line(capsys):
    rc, _out, err = _run(capsys, ["device", "fit", "/nonexistent/m.csv"])
    assert rc == 2 and err.count("\n") == 1 and "file not found" in err
