"""Circuit solver against independent truths: ngspice, a loop-stamped dense MNA, Kirchhoff limits."""
import numpy as np
import pytest

from memcim.hardware.circuit import (ConvergenceError, Crossbar, NonlinearCrossbar, as_wires,
                                     currents_through_source_cells, ngspice_available, run_ngspice,
                                     states_from_conductances, to_spice)
from memcim.config import WiresConfig
from memcim.hardware.cells import Level1NMOS, TaOxMemristor

G_MIN, G_MAX = 1 / 3e6, 1 / 2e3  # paper 002: 2 kOhm .. 3 MOhm

needs_spice = pytest.mark.skipif(not ngspice_available(), reason="ngspice not installed")


def _dense_reference(g, r_wire, r_in, r_out, v):
    """Independent MNA: stamp a list of resistors one by one (Python loops), dense solve."""
    n, m = g.shape
    names = {}

    def node(key):
        return names.setdefault(key, len(names))

    res = []  # (a, b, conductance); b = None for ground
    for i in range(n):
        res.append((("src", i), node(("r", i, 0)), 1 / r_in))
        for j in range(m - 1):
            res.append((node(("r", i, j)), node(("r", i, j + 1)), 1 / r_wire))
        for j in range(m):
            res.append((node(("r", i, j)), node(("c", i, j)), g[i, j]))
    for j in range(m):
        for i in range(n - 1):
            res.append((node(("c", i, j)), node(("c", i + 1, j)), 1 / r_wire))
        res.append((node(("c", n - 1, j)), None, 1 / r_out))
    K = len(names)
    A = np.zeros((K, K))
    b = np.zeros(K)
    for a, c, gg in res:
        if isinstance(a, tuple):  # source through r_in
            A[c, c] += gg
            b[c] += gg * v[a[1]]
            continue
        A[a, a] += gg
        if c is not None:
            A[c, c] += gg
            A[a, c] -= gg
            A[c, a] -= gg
    x = np.linalg.solve(A, b)
    return np.array([x[names[("c", n - 1, j)]] / r_out for j in range(m)])


def test_dense_reference_tiny():
    rng = np.random.default_rng(1)
    g = rng.uniform(G_MIN, G_MAX, (3, 4))
    v = rng.uniform(-0.2, 0.2, 3)
    cb = Crossbar(g, r_wire=3.0, r_in=20.0, r_out=30.0)
    ref = _dense_reference(g, 3.0, 20.0, 30.0, v)
    np.testing.assert_allclose(cb.currents(v), ref, rtol=1e-10, atol=0)
    np.testing.assert_allclose(v @ cb.realized(), ref, rtol=1e-10, atol=0)


def test_ideal_limit_gives_g():
    g = np.random.default_rng(2).uniform(1e-6, 1e-4, (5, 6))
    G = Crossbar(g, r_wire=1e-7, r_in=1e-7, r_out=1e-7).realized()
    np.testing.assert_allclose(G, g, rtol=1e-6)


def test_ir_drop_attenuates_far_corner():
    g = np.full((16, 16), 1e-4)
    G = Crossbar(g).realized()
    # driven at column 0, sensed at the last row: cell (0, m-1) is farthest from both ends
    assert G[0, -1] < G[-1, 0]
    assert np.all(G.sum(0) < g.sum(0))


def test_both_end_drive_and_column_wire_option():
    g = np.random.default_rng(3).uniform(G_MIN, G_MAX, (6, 6))
    one = Crossbar(g, as_wires(r_wire=5.0)).realized()
    both = Crossbar(g, as_wires(r_wire=5.0, drive="both")).realized()
    assert np.sum(np.abs(both - g)) < np.sum(np.abs(one - g))
    colwire = Crossbar(g, as_wires(r_wire=5.0, r_wire_col=1e-9)).realized()
    assert np.sum(np.abs(colwire - g)) < np.sum(np.abs(one - g))


@needs_spice
@pytest.mark.parametrize("drive,rcol", [("one", None), ("both", 3.0)])
def test_realized_matches_ngspice(drive, rcol):
    rng = np.random.default_rng(4)
    g = rng.uniform(G_MIN, G_MAX, (5, 4))
    w = as_wires(r_wire=2.0, r_in=50.0, r_out=80.0, r_wire_col=rcol, drive=drive)
    G = Crossbar(g, w).realized()
    I, _ = run_ngspice(to_spice(g, wires=w, unit_inputs=True), 4)
    np.testing.assert_allclose(I, G, rtol=1e-6, atol=1e-6 * np.abs(G).max())


@needs_spice
def test_batch_currents_match_ngspice():
    rng = np.random.default_rng(5)
    g = rng.uniform(G_MIN, G_MAX, (6, 5))
    v = rng.uniform(0, 0.2, 6)
    I, _ = run_ngspice(to_spice(g, v), 5)
    np.testing.assert_allclose(Crossbar(g).currents(v), I[0], rtol=1e-6)


@needs_spice
@pytest.mark.parametrize("with_transistor", [False, True])
def test_nonlinear_newton_matches_ngspice(with_transistor):
    rng = np.random.default_rng(6)
    s = rng.uniform(0, 0.05, (4, 3))
    v = rng.uniform(0.05, 0.2, 4)
    tr = Level1NMOS() if with_transistor else None
    w = as_wires(r_wire=2.0, r_in=50.0, r_out=80.0)
    mine = NonlinearCrossbar(s, transistor=tr, wires=w).currents(v)
    ref, _ = run_ngspice(to_spice(states=s, v=v, wires=w, transistor=tr), 3)
    np.testing.assert_allclose(mine, ref[0], rtol=1e-6)


def test_nonlinear_memristor_limits():
    # s = 1 is an ohmic G_m device: equals the linear solver with g = G_m
    mem = TaOxMemristor(g_m=1e-4)
    s = np.ones((3, 3))
    v = np.array([0.1, 0.2, 0.05])
    I = NonlinearCrossbar(s, memristor=mem).currents(v)
    np.testing.assert_allclose(I, Crossbar(np.full((3, 3), 1e-4)).currents(v), rtol=1e-9)


def test_memristor_didv_finite_difference():
    mem = TaOxMemristor()
    v = np.array([-0.3, -1e-3, 1e-3, 0.2])
    s = np.array([0.1, 0.5, 0.0, 0.9])
    h = 1e-7
    fd = (mem.current(v + h, s) - mem.current(v - h, s)) / (2 * h)
    np.testing.assert_allclose(mem.didv(v, s), fd, rtol=1e-5)


def test_transistor_partials_finite_difference():
    tr = Level1NMOS()
    for va, vb in [(0.3, 0.0), (0.0, 0.3), (1.9, 0.1), (0.1, 1.9)]:
        i, da, db = tr.current(va, vb)
        h = 1e-7
        fa = (tr.current(va + h, vb)[0] - tr.current(va - h, vb)[0]) / (2 * h)
        fb = (tr.current(va, vb + h)[0] - tr.current(va, vb - h)[0]) / (2 * h)
        np.testing.assert_allclose([da, db], [fa, fb], rtol=1e-5, atol=1e-12)


def test_newton_nonconvergence_raises():
    s = np.full((3, 3), 0.5)
    with pytest.raises(ConvergenceError, match="did not converge"):
        NonlinearCrossbar(s).node_voltages(np.full(3, 0.2), max_iter=1)


@pytest.mark.parametrize("with_transistor", [False, True])
def test_states_reproduce_target_currents(with_transistor):
    """Sec. V-D: states from ideal g make the non-linear array carry the ideal currents at v_cal."""
    rng = np.random.default_rng(7)
    g = rng.uniform(4e-5, 3e-4, (5, 4))
    v_cal = np.full(5, 0.1)
    tr = Level1NMOS() if with_transistor else None
    w = as_wires(r_wire=1.0, r_in=100.0, r_out=100.0)
    s, _ = states_from_conductances(g, v_cal, w, transistor=tr)
    assert np.all((s >= 0) & (s <= 1))
    I_nl = NonlinearCrossbar(s, transistor=tr, wires=w).currents(v_cal)
    np.testing.assert_allclose(I_nl, Crossbar(g, w).currents(v_cal), rtol=1e-8)


def test_current_source_solution_consistent():
    """Cells as current sources: the conductances from the closed form reproduce those currents."""
    rng = np.random.default_rng(8)
    g0 = rng.uniform(G_MIN, 1e-4, (6, 5))
    v = np.full(6, 0.1)
    w = as_wires()
    I = g0 * v[:, None]
    vr, vc = currents_through_source_cells(I, v, w)
    g = I / (vr - vc)
    V = Crossbar(g, w).node_voltages(v[None])[0]
    np.testing.assert_allclose(g * (V[0] - V[1]), I, rtol=1e-9)


def test_adjoint_gradient_vs_finite_differences():
    rng = np.random.default_rng(9)
    g = rng.uniform(1e-5, 1e-4, (4, 5))
    w = as_wires(r_wire=5.0, r_in=100.0, r_out=100.0)
    U = rng.normal(size=(4, 5))
    G, grad, diag = Crossbar(g, w).realized_and_grad(U)
    for k in [(0, 0), (3, 4), (1, 2), (2, 0)]:
        h = 1e-9
        gp, gm = g.copy(), g.copy()
        gp[k] += h
        gm[k] -= h
        fd = (np.sum(U * Crossbar(gp, w).realized()) - np.sum(U * Crossbar(gm, w).realized())) / (2 * h)
        np.testing.assert_allclose(grad[k], fd, rtol=1e-5)
        # diagonal sensitivity dG[k]/dg[k] > 0
        fdd = (Crossbar(gp, w).realized()[k] - Crossbar(gm, w).realized()[k]) / (2 * h)
        np.testing.assert_allclose(-diag[k] if diag[k] < 0 else diag[k], abs(fdd), rtol=1e-5)


@pytest.mark.parametrize("kw,match", [
    ({"r_wire": 0.0}, "r_wire"), ({"r_in": -1.0}, "r_in"), ({"r_out": float("nan")}, "r_out"),
    ({"drive": "middle"}, "drive"),
])
def test_bad_wires(kw, match):
    with pytest.raises(ValueError, match=match):
        as_wires(**kw)


def test_bad_conductances_and_inputs():
    with pytest.raises(ValueError, match="conductances"):
        Crossbar(np.array([[1e-5, -1e-6]]))
    with pytest.raises(ValueError, match="all resistances are 0"):
        Crossbar(np.full((2, 2), 1e-5), WiresConfig())
    with pytest.raises(ValueError, match="conductances"):
        Crossbar(np.ones(3))
    cb = Crossbar(np.full((3, 2), 1e-5))
    with pytest.raises(ValueError, match="inputs"):
        cb.currents(np.ones(4))
    with pytest.raises(ValueError, match="states"):
        NonlinearCrossbar(np.full((2, 2), 1.5))


def _dense_nodes(g, r_wire, r_in, r_out, v, r_col=None):
    """All node voltages (R, C), each (n, m), by a loop-stamped dense MNA with the sources as Norton
    currents (independent of memcim's assembly, ordering and factorisation)."""
    n, m = g.shape
    r_col = r_wire if r_col is None else r_col
    N = n * m
    A = np.zeros((2 * N, 2 * N))
    b = np.zeros(2 * N)

    def stamp(a, c, y):
        A[a, a] += y
        if c is not None:
            A[c, c] += y
            A[a, c] -= y
            A[c, a] -= y

    for i in range(n):
        stamp(i * m, None, 1 / r_in)
        b[i * m] += v[i] / r_in
        for j in range(m):
            stamp(i * m + j, N + i * m + j, g[i, j])
            if j + 1 < m:
                stamp(i * m + j, i * m + j + 1, 1 / r_wire)
            if i + 1 < n:
                stamp(N + i * m + j, N + (i + 1) * m + j, 1 / r_col)
    for j in range(m):
        stamp(N + (n - 1) * m + j, None, 1 / r_out)
    x = np.linalg.solve(A, b)
    return x[:N].reshape(n, m), x[N:].reshape(n, m)


@pytest.mark.parametrize("shape,r_col", [((1, 5), None), ((5, 1), None), ((7, 3), None), ((4, 9), 3.0),
                                         ((12, 10), None)])
def test_realized_from_terminal_block_matches_dense_mna(shape, r_col):
    """The realized matrix read from the factors' trailing (terminal) block equals unit-input solves of
    a dense MNA, for thin, tall, wide and square arrays."""
    rng = np.random.default_rng(11)
    g = rng.uniform(G_MIN, G_MAX, shape)
    w = as_wires(r_wire=2.0, r_in=50.0, r_out=80.0, r_wire_col=r_col)
    ref = np.array([_dense_nodes(g, 2.0, 50.0, 80.0, e, r_col)[1][-1] / 80.0 for e in np.eye(shape[0])])
    np.testing.assert_allclose(Crossbar(g, w).realized(), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("shape,r_col", [((6, 5), None), ((1, 4), None), ((5, 1), 2.0), ((9, 7), 4.0),
                                         ((4, 2), None), ((2, 3), None)])
def test_marched_fields_match_dense_mna(shape, r_col):
    """The fields of the gradient (unit inputs, by marching from the terminals) equal the node
    voltages of a dense MNA; the adjoint fields equal the factor solves."""
    rng = np.random.default_rng(12)
    g = rng.uniform(G_MIN, G_MAX, shape)
    w = as_wires(r_wire=2.0, r_in=50.0, r_out=80.0, r_wire_col=r_col)
    cb = Crossbar(g, w)
    VR, VC = cb.terminal_fields()
    n = shape[0]
    for k, e in enumerate(np.eye(n)):
        R, C = _dense_nodes(g, 2.0, 50.0, 80.0, e, r_col)
        np.testing.assert_allclose(VR[k], R, rtol=0, atol=1e-12)
        np.testing.assert_allclose(VC[k], C, rtol=0, atol=1e-12)
    Z = cb.adjoint_fields()
    np.testing.assert_allclose(VR[n:], Z[:, 0], rtol=0, atol=1e-12 * np.abs(Z).max())
    np.testing.assert_allclose(VC[n:], Z[:, 1], rtol=0, atol=1e-12 * np.abs(Z).max())


def test_marched_fields_both_ends_and_fallback():
    """drive="both" (two driven ends per word line) and a march that would amplify rounding beyond
    trust (r_wire g ~ 1 over 40 rows: growth ~e^40) fall back to, or agree with, the factor solves."""
    rng = np.random.default_rng(13)
    for w, g in ((as_wires(r_wire=3.0, drive="both"), rng.uniform(G_MIN, G_MAX, (8, 6))),
                 (as_wires(r_wire=1e3, r_in=1e3, r_out=1e3), rng.uniform(5e-4, 1e-3, (40, 4)))):
        cb = Crossbar(g, w)
        VR, VC = cb.terminal_fields()
        n = g.shape[0]
        X = cb.node_voltages(np.eye(n))
        np.testing.assert_allclose(VR[:n], X[:, 0], rtol=0, atol=1e-11)
        np.testing.assert_allclose(VC[:n], X[:, 1], rtol=0, atol=1e-11)


def test_gradient_and_sensitivity_match_finite_differences_on_a_larger_array():
    """The marched fields give the adjoint gradient and dG[k,l]/dg_kl (>= 0) of a 24x20 array."""
    rng = np.random.default_rng(14)
    g = rng.uniform(1e-5, 4e-4, (24, 20))
    w = as_wires()
    U = rng.normal(size=g.shape)
    G, grad, diag = Crossbar(g, w).realized_and_grad(U)
    assert np.all(diag > 0)
    for k in [(0, 0), (23, 19), (5, 17), (20, 2)]:
        h = 1e-9
        gp, gm = g.copy(), g.copy()
        gp[k] += h
        gm[k] -= h
        Gp, Gm = Crossbar(gp, w).realized(), Crossbar(gm, w).realized()
        np.testing.assert_allclose(grad[k], np.sum(U * (Gp - Gm)) / (2 * h), rtol=1e-5)
        np.testing.assert_allclose(diag[k], (Gp[k] - Gm[k]) / (2 * h), rtol=1e-5)
