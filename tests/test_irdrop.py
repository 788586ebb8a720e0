"""IR-drop-aware mappings: errors recomputed from PLAN.npz, DPE's calibration property, CLI contract."""
import json

import numpy as np
import pytest

from memcim.cli import main
from memcim.hardware.circuit import Crossbar, NonlinearCrossbar, Wires, ngspice_available, run_ngspice, to_spice
from memcim.hardware.devices_nonlinear import Level1NMOS
from memcim.mapping.irdrop import map_dpe, map_matrix_irdrop, plan_states, quantize


@pytest.fixture(scope="module")
def W16():
    return np.random.default_rng(0).uniform(-1, 1, (16, 16))


def _recompute(path, W):
    z = np.load(path)
    w = Wires(r_wire=float(z["r_wire"]), r_in=float(z["r_in"]), r_out=float(z["r_out"]))
    Wr = (Crossbar(z["g_pos"], w).realized() - Crossbar(z["g_neg"], w).realized()) / float(z["alpha"])
    return z, np.linalg.norm(W - Wr)


@pytest.mark.parametrize("method", ["linear", "dpe", "representable"])
def test_cli_map_error_recomputed_from_plan(tmp_path, capsys, W16, method):
    np.save(tmp_path / "W.npy", W16)
    plan = tmp_path / "PLAN.npz"
    rc = main(["map", "--matrix", str(tmp_path / "W.npy"), "--method", method, "--out", str(plan), "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    z, fro = _recompute(plan, W16)
    assert rep["frobenius_error"] == pytest.approx(fro, rel=1e-9)
    assert rep["relative_error"] == pytest.approx(fro / np.linalg.norm(W16), rel=1e-9)
    g_min, g_max = float(z["g_min"]), float(z["g_max"])
    step = (g_max - g_min) / 255
    for g in (z["g_pos"], z["g_neg"]):
        assert g.min() >= g_min * (1 - 1e-12) and g.max() <= g_max * (1 + 1e-12)
        k = (g - g_min) / step
        np.testing.assert_allclose(k, np.round(k), atol=1e-6)      # on the 8-bit grid
    assert rep["total_error"] == pytest.approx(rep["value_range_error"] + rep["precision_error"])


def test_dpe_reproduces_calibration_output(W16):
    """Hu et al.: before quantization the calibration vector gives the ideal output exactly."""
    plan, _ = map_matrix_irdrop(W16, "dpe", bits=None)
    v = np.ones(16)
    Wr = plan.realized()
    np.testing.assert_allclose(v @ Wr, v @ W16, rtol=1e-8, atol=1e-8 * np.abs(v @ W16).max())


def test_representable_beats_dpe_and_linear():
    W = np.random.default_rng(1).uniform(-1, 1, (32, 32))
    errs = {m: map_matrix_irdrop(W, m)[1] for m in ("linear", "dpe", "representable")}
    assert errs["representable"]["frobenius_error"] * 4 < errs["dpe"]["frobenius_error"]
    assert errs["representable"]["max_output_error"] * 4 < errs["dpe"]["max_output_error"]
    assert errs["dpe"]["frobenius_error"] < errs["linear"]["frobenius_error"]


def test_representable_calibration_correction_reduces_calibration_error():
    """Sec. V-C: with value-range errors present (alpha too large), the correction moves the
    errors so that the calibration output error shrinks."""
    W = np.random.default_rng(2).uniform(-1, 1, (32, 32))
    _, _, a_dpe, _ = map_dpe(W, Wires())
    kw = dict(bits=None, alpha=3 * a_dpe, final_iters=6)
    p0, _ = map_matrix_irdrop(W, "representable", calib_rounds=0, **kw)
    p2, _ = map_matrix_irdrop(W, "representable", calib_rounds=2, **kw)
    v = np.ones(32)
    e0 = np.linalg.norm(v @ (p0.realized() - W))
    e2 = np.linalg.norm(v @ (p2.realized() - W))
    assert e2 < 0.75 * e0   # measured 8.5 vs 13.5 (seed 2)


def test_second_moment_tuning_reduces_expected_error():
    rng = np.random.default_rng(3)
    W = rng.uniform(-1, 1, (16, 16))
    X = rng.uniform(0, 1, (400, 16)) * np.linspace(0.05, 1, 16)    # strongly uneven input scales
    M = X.T @ X / len(X)
    plan_m, _ = map_matrix_irdrop(W, "representable", bits=None, second_moment=M)
    plan_f, _ = map_matrix_irdrop(W, "representable", bits=None)
    mse = lambda p: np.mean((X @ (p.realized() - W)) ** 2)
    assert mse(plan_m) < mse(plan_f)


def test_quantize_levels():
    g = quantize(np.array([0.0, 1.0, 1.49, 1.51, 9.0]), 1.0, 4.0, 2)    # levels 1, 2, 3, 4
    np.testing.assert_allclose(g, [1.0, 1.0, 1.0, 2.0, 4.0])


@pytest.mark.parametrize("tr", [None, Level1NMOS()])
def test_plan_states_realize_plan_at_calibration(tr):
    W = np.random.default_rng(4).uniform(-1, 1, (6, 5))
    plan, _ = map_matrix_irdrop(W, "representable", g_min=5e-5, g_max=4e-4)
    v = np.full(6, 0.1)
    s_pos, s_neg = plan_states(plan, v_cal=v, transistor=tr)
    y = (NonlinearCrossbar(s_pos, transistor=tr, wires=plan.wires).currents(v)
         - NonlinearCrossbar(s_neg, transistor=tr, wires=plan.wires).currents(v)) / plan.alpha
    np.testing.assert_allclose(y, v @ plan.realized(), rtol=1e-7, atol=1e-9 * np.abs(y).max())
    if ngspice_available():
        ref, _ = run_ngspice(to_spice(states=s_pos, v=v, wires=plan.wires, transistor=tr), 5)
        np.testing.assert_allclose(NonlinearCrossbar(s_pos, transistor=tr, wires=plan.wires).currents(v), ref[0],
                                   rtol=1e-6)


@pytest.mark.parametrize("argv,match", [
    (["--method", "magic"], "--method"),
    (["--r-wire", "0"], "r_wire"),
    (["--r-in", "-5"], "r_in"),
    (["--g-min=-1e-6"], "g_min"),
    (["--g-min", "1e-4", "--g-max", "1e-5"], "g_max"),
    (["--bits", "0"], "bits"),
    (["--array-rows", "8"], "exceeds the configured array"),
])
def test_cli_map_bad_input(tmp_path, capsys, W16, argv, match):
    np.save(tmp_path / "W.npy", W16)
    rc = main(["map", "--matrix", str(tmp_path / "W.npy"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_map_shape_mismatch(tmp_path, capsys, W16):
    np.save(tmp_path / "W.npy", W16)
    np.save(tmp_path / "X.npy", np.ones((3, 5)))
    rc = main(["map", "--matrix", str(tmp_path / "W.npy"), "--inputs", str(tmp_path / "X.npy")])
    assert rc == 2 and "--inputs" in capsys.readouterr().err


def test_cli_circuit(tmp_path, capsys):
    g = np.random.default_rng(5).uniform(1e-6, 1e-4, (4, 3))
    v = np.random.default_rng(6).uniform(0, 0.2, (2, 4))
    np.save(tmp_path / "G.npy", g)
    np.save(tmp_path / "V.npy", v)
    rc = main(["circuit", "--conductances", str(tmp_path / "G.npy"), "--r-wire", "2", "--r-in", "10",
               "--r-out", "10", "--inputs", str(tmp_path / "V.npy"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    G = np.array(out["realized"])
    np.testing.assert_allclose(np.array(out["currents"]), v @ G, rtol=1e-10)
    if ngspice_available():
        ref, _ = run_ngspice(to_spice(g, wires=Wires(2, 10, 10), unit_inputs=True), 3)
        np.testing.assert_allclose(G, ref, rtol=1e-6)
    assert out["time_s"] > 0


@pytest.mark.parametrize("argv,match", [
    (["--r-out", "0"], "r_out"),
    (["--inputs", "BAD"], "--inputs"),
])
def test_cli_circuit_bad_input(tmp_path, capsys, argv, match):
    np.save(tmp_path / "G.npy", np.full((3, 3), 1e-5))
    np.save(tmp_path / "BAD.npy", np.ones((2, 5)))
    argv = [a.replace("BAD", str(tmp_path / "BAD.npy")) for a in argv]
    rc = main(["circuit", "--conductances", str(tmp_path / "G.npy"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1


def test_cli_circuit_negative_conductance(tmp_path, capsys):
    np.save(tmp_path / "G.npy", np.array([[1e-5, -1e-5]]))
    assert main(["circuit", "--conductances", str(tmp_path / "G.npy")]) == 2
    assert "--conductances" in capsys.readouterr().err
