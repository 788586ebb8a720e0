"""IR-drop-aware mappings: errors recomputed from PLAN.npz, DPE's calibration property, CLI contract."""
import json

import numpy as np
import pytest
from _cli import run_cli

from memcim.cli import main
from memcim.config import HardwareConfig, preset
from memcim.hardware.cells import Level1NMOS
from memcim.hardware.circuit import (
    Crossbar,
    NonlinearCrossbar,
    as_wires,
    ngspice_available,
    run_ngspice,
    states_from_conductances,
    to_spice,
)
from memcim.hardware.device import quantize_array
from memcim.mapping.crossbar import map_matrix
from memcim.mapping.irdrop import error_report, map_dpe

#: paper 002's set-up (one array: no tiling below 128 x 128) without converters
HW = preset("irdrop").without("dac", "adc")


def hw(method, **settings):
    return HW.set({"mapping.method": method, **settings})


def errors(W, method, **settings):
    plan = map_matrix(W, hw(method, **settings))
    return plan, error_report(W, plan.realized().numpy())


@pytest.fixture(scope="module")
def W16():
    return np.random.default_rng(0).uniform(-1, 1, (16, 16))


def _recompute(path, W):
    """||W - W^r|| from the saved conductances alone, by a fresh circuit solve of each array."""
    z = np.load(path)
    cfg = HardwareConfig.from_json(str(z["config"]))
    w = cfg.wires
    gp, gn, sc = z["g_pos"][0], z["g_neg"][0], z["scale"][0]
    Wr = (Crossbar(gp, w).realized() - Crossbar(gn, w).realized()) / sc[None, :]
    return z, cfg, np.linalg.norm(W - Wr[:W.shape[0], :W.shape[1]])


@pytest.mark.parametrize("method", ["linear", "dpe", "representable"])
def test_cli_map_error_recomputed_from_plan(tmp_path, capsys, W16, method):
    np.save(tmp_path / "W.npy", W16)
    out = tmp_path / "plan"
    rc = main(["map", "--matrix", str(tmp_path / "W.npy"), "--method", method, "--out", str(out), "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    plan = out / "map.npz"
    assert rep["plan"] == str(plan) and json.loads((out / "map.json").read_text())["method"] == method
    assert (out / "map.png").stat().st_size > 1000
    z, cfg, fro = _recompute(plan, W16)
    assert rep["frobenius_error"] == pytest.approx(fro, rel=1e-9)
    assert rep["relative_error"] == pytest.approx(fro / np.linalg.norm(W16), rel=1e-9)
    g_min, g_max = cfg.device.g_min, cfg.device.g_max
    assert (g_min, g_max) == (1 / 3e6, 1 / 2e3)             # paper 002: 2 kOhm .. 3 MOhm
    step = (g_max - g_min) / 255
    for g in (z["g_pos"], z["g_neg"]):
        assert g.min() >= g_min * (1 - 1e-12) and g.max() <= g_max * (1 + 1e-12)
        k = (g - g_min) / step
        np.testing.assert_allclose(k, np.round(k), atol=1e-6)      # on the 8-bit grid
    assert rep["total_error"] == pytest.approx(rep["value_range_error"] + rep["precision_error"])


def test_dpe_reproduces_calibration_output(W16):
    """Hu et al.: before quantization the calibration vector gives the ideal output exactly."""
    plan = map_matrix(W16, hw("dpe").without("quantization"))
    v = np.ones(16)
    Wr = plan.realized().numpy()
    np.testing.assert_allclose(v @ Wr, v @ W16, rtol=1e-8, atol=1e-8 * np.abs(v @ W16).max())


def test_representable_beats_dpe_and_linear():
    W = np.random.default_rng(1).uniform(-1, 1, (32, 32))
    errs = {m: errors(W, m)[1] for m in ("linear", "dpe", "representable")}
    assert errs["representable"]["frobenius_error"] * 4 < errs["dpe"]["frobenius_error"]
    assert errs["representable"]["max_output_error"] * 4 < errs["dpe"]["max_output_error"]
    assert errs["dpe"]["frobenius_error"] < errs["linear"]["frobenius_error"]


def test_representable_calibration_correction_reduces_calibration_error():
    """Sec. V-C: with value-range errors present (alpha too large), the correction moves the
    errors so that the calibration output error shrinks."""
    W = np.random.default_rng(2).uniform(-1, 1, (32, 32))
    from memcim.mapping.irdrop import map_block

    dev = HW.without("quantization").device
    _, _, a_dpe, _ = map_dpe(W, as_wires(), dev)
    mp = hw("representable", **{"mapping.final_iters": 6}).mapping

    def realized(rounds):
        gp, gn, a, _ = map_block(W, as_wires(), dev, mp.replace(calib_rounds=rounds), alpha=3 * a_dpe)
        return (Crossbar(gp, as_wires()).realized() - Crossbar(gn, as_wires()).realized()) / a

    v = np.ones(32)
    e0 = np.linalg.norm(v @ (realized(0) - W))
    e2 = np.linalg.norm(v @ (realized(2) - W))
    assert e2 < 0.75 * e0   # measured 8.5 vs 13.5 (seed 2)


def test_second_moment_tuning_reduces_expected_error():
    rng = np.random.default_rng(3)
    W = rng.uniform(-1, 1, (16, 16))
    X = rng.uniform(0, 1, (400, 16)) * np.linspace(0.05, 1, 16)    # strongly uneven input scales
    M = X.T @ X / len(X)
    h = hw("representable").without("quantization")
    plan_m = map_matrix(W, h, second_moment=M)
    plan_f = map_matrix(W, h)
    mse = lambda p: np.mean((X @ (p.realized().numpy() - W)) ** 2)
    assert mse(plan_m) < mse(plan_f)


def test_quantize_levels():
    from memcim.config import DeviceConfig

    g = quantize_array(np.array([0.0, 1.0, 1.49, 1.51, 9.0]), DeviceConfig(g_min=1.0, g_max=4.0, bits=2))
    np.testing.assert_allclose(g, [1.0, 1.0, 1.0, 2.0, 4.0])    # levels 1, 2, 3, 4


@pytest.mark.parametrize("tr", [None, Level1NMOS()])
def test_plan_states_realize_plan_at_calibration(tr):
    W = np.random.default_rng(4).uniform(-1, 1, (6, 5))
    plan = map_matrix(W, hw("representable", **{"device.g_min": 5e-5, "device.g_max": 4e-4}))
    v = np.full(6, 0.1)
    w, a = plan.hw.wires, plan.scale[0, :5].numpy()      # one alpha per column (equal under one scale)
    s_pos, _ = states_from_conductances(plan.g_pos[0].numpy(), v, w, transistor=tr)
    s_neg, _ = states_from_conductances(plan.g_neg[0].numpy(), v, w, transistor=tr)
    y = (NonlinearCrossbar(s_pos, transistor=tr, wires=w).currents(v)
         - NonlinearCrossbar(s_neg, transistor=tr, wires=w).currents(v)) / a
    np.testing.assert_allclose(y, v @ plan.realized().numpy(), rtol=1e-7, atol=1e-9 * np.abs(y).max())
    if ngspice_available():
        ref, _ = run_ngspice(to_spice(states=s_pos, v=v, wires=w, transistor=tr), 5)
        np.testing.assert_allclose(NonlinearCrossbar(s_pos, transistor=tr, wires=w).currents(v), ref[0],
                                   rtol=1e-6)


def test_cli_map_tiles_a_large_matrix(tmp_path, capsys):
    """300 x 100 does not fit one 128 x 128 array: it is tiled (3 x 1 arrays), not refused."""
    W = np.random.default_rng(7).uniform(-1, 1, (300, 100))
    np.save(tmp_path / "W.npy", W)
    assert main(["map", "--matrix", str(tmp_path / "W.npy"), "--method", "dpe", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["tiles"] == [3, 1] and rep["relative_error"] < 0.2


def test_cli_map_set_replaces_the_physics_flags(tmp_path, capsys, W16):
    """--set device.bits=4 --set array.rows=8 ... : the levels and the tiling follow (by hand: 16 rows on
    8-row arrays are 2 row tiles; 4 bits are 16 levels, so every conductance sits on a 15-step grid)."""
    np.save(tmp_path / "W.npy", W16)
    rc, out, _ = run_cli(["map", "--matrix", tmp_path / "W.npy", "--method", "linear", "--set", "device.bits=4",
                          "--set", "array.rows=8", "--set", "array.cols=16", "--set", "wires.r_wire=2",
                          "--out", tmp_path / "o", "--json"], capsys)
    assert rc == 0
    rep = json.loads(out)
    assert rep["tiles"] == [2, 1] and rep["array"] == [8, 16] and rep["config"]["wires"]["r_wire"] == 2.0
    z = np.load(tmp_path / "o" / "map.npz")
    g_min, g_max = rep["config"]["device"]["g_min"], rep["config"]["device"]["g_max"]
    k = (z["g_pos"][z["g_pos"] > 0] - g_min) / ((g_max - g_min) / 15)
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)
    assert len(np.unique(np.round(k))) <= 16


def test_cli_map_tune_inputs_changes_the_plan(tmp_path, capsys, W16):
    """--tune-inputs tunes against E[x^T x] of --inputs: it lowers the expected output MSE of those inputs
    (computed here from the saved realized matrix, by hand: trace(E^T M E) / out). At the preset's 8 bits
    (measured 0.74x; at 4 bits the level spacing dominates and the gain of this one matrix is within +-2 %,
    since the default rounding is already shaped for uniform inputs)."""
    X = np.random.default_rng(1).uniform(0, 1, (64, 16)) * np.linspace(0.05, 1, 16)   # unequal input powers
    np.save(tmp_path / "W.npy", W16)
    np.save(tmp_path / "X.npy", X)
    M = X.T @ X / len(X)
    mse = {}
    for tune in (False, True):
        d = tmp_path / f"t{tune}"
        rc, out, _ = run_cli(["map", "--matrix", tmp_path / "W.npy", "--inputs", tmp_path / "X.npy",
                              "--out", d, "--json"] + (["--tune-inputs"] if tune else []),
                             capsys)
        assert rc == 0 and json.loads(out)["tune_inputs"] is tune
        E = np.load(d / "map.npz")["realized"] - W16
        mse[tune] = np.trace(E.T @ M @ E) / W16.shape[1]
    assert mse[True] < mse[False]


@pytest.mark.parametrize("argv,match", [
    (["--method", "magic"], "--method: 'magic' is not allowed"),
    (["--set", "wires.r_wire=0"], "wires.r_wire: 0 is not allowed"),
    (["--set", "wires.r_in=-5"], "wires.r_in"),
    (["--set", "device.g_min=-1e-6"], "device.g_min"),
    (["--set", "device.g_min=1e-3", "--set", "device.g_max=1e-5"], "g_max"),
    (["--set", "device.bits=0"], "device.bits"),
    (["--set", "device.levels=1e12"], "device.levels"),
    (["--set", "array.rows=0"], "array.rows"),
    (["--set", "array.rows=1e8"], "array.rows: 100000000 is not allowed"),
    (["--set", "device.nope=1"], "--set: unknown setting 'device.nope'"),
    (["--hw", "nope"], "--hw: unknown preset 'nope'"),
    (["--hw", "generic", "--method", "dpe"], "needs wires"),
    (["--tune-inputs"], "--tune-inputs: needs --inputs"),
    (["--inputs", "X", "--tune-inputs", "--method", "linear"], "--tune-inputs: only the representable method"),
    (["--inputs", "X", "--tune-inputs", "--method", "dpe"], "--tune-inputs: only the representable method"),
    (["--bits", "6"], "--bits is gone; use --set device.bits=VALUE"),
    (["--r-wire", "2"], "--r-wire is gone; use --set wires.r_wire=VALUE"),
    (["--array-rows", "64"], "--array-rows is gone; use --set array.rows=VALUE"),
    (["--preset", "irdrop"], "--preset is gone; use --hw"),
    (["--out", "W"], "--out"),
])
def test_cli_map_bad_input(tmp_path, capsys, W16, argv, match):
    np.save(tmp_path / "W.npy", W16)
    np.save(tmp_path / "X.npy", np.ones((3, 16)))
    argv = [{"X": str(tmp_path / "X.npy"), "W": str(tmp_path / "W.npy")}.get(a, a) for a in argv]
    rc, _, err = run_cli(["map", "--matrix", tmp_path / "W.npy", *argv], capsys)
    assert rc == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_cli_map_zero_matrix(tmp_path, capsys):
    np.save(tmp_path / "Z.npy", np.zeros((4, 4)))
    rc, _, err = run_cli(["map", "--matrix", tmp_path / "Z.npy"], capsys)
    assert rc == 2 and err.strip() == "memcim map: error: --matrix: all entries are zero; nothing to map"


def test_cli_map_shape_mismatch(tmp_path, capsys, W16):
    np.save(tmp_path / "W.npy", W16)
    np.save(tmp_path / "X.npy", np.ones((3, 5)))
    rc = main(["map", "--matrix", str(tmp_path / "W.npy"), "--inputs", str(tmp_path / "X.npy")])
    assert rc == 2 and "--inputs" in capsys.readouterr().err


def nodal_reference(g, r_wire, r_in, r_out, v):
    """Output currents of the crossbar by a dense nodal solve written out here (independent of
    memcim.hardware.circuit): row i driven at column 0 through r_in, cells g[i, j] between row node
    (i, j) and column node (i, j), segments r_wire along rows and columns, column j's last node to
    ground through r_out; the current into the ground is V(n-1, j) / r_out."""
    n, m = g.shape
    R = lambda i, j: i * m + j
    C = lambda i, j: n * m + i * m + j
    Y = np.zeros((2 * n * m, 2 * n * m))

    def stamp(a, b, y):
        Y[a, a] += y
        if b is not None:
            Y[b, b] += y
            Y[a, b] -= y
            Y[b, a] -= y

    for i in range(n):
        for j in range(m):
            stamp(R(i, j), C(i, j), g[i, j])
            if j + 1 < m:
                stamp(R(i, j), R(i, j + 1), 1 / r_wire)
            if i + 1 < n:
                stamp(C(i, j), C(i + 1, j), 1 / r_wire)
        stamp(R(i, 0), None, 1 / r_in)
    for j in range(m):
        stamp(C(n - 1, j), None, 1 / r_out)
    out = []
    for vk in np.atleast_2d(v):
        b = np.zeros(2 * n * m)
        for i in range(n):
            b[R(i, 0)] = vk[i] / r_in
        V = np.linalg.solve(Y, b)
        out.append([V[C(n - 1, j)] / r_out for j in range(m)])
    return np.array(out)


def test_cli_simulate_conductances(tmp_path, capsys):
    g = np.random.default_rng(5).uniform(1e-6, 1e-4, (4, 3))
    v = np.random.default_rng(6).uniform(0, 0.2, (2, 4))
    np.save(tmp_path / "G.npy", g)
    np.save(tmp_path / "V.npy", v)
    rc, out, _ = run_cli(["simulate", "--conductances", tmp_path / "G.npy", "--set", "wires.r_wire=2",
                          "--set", "wires.r_in=10", "--set", "wires.r_out=10", "--inputs", tmp_path / "V.npy",
                          "--spice", tmp_path / "t.cir", "--out", tmp_path / "o", "--json"], capsys)
    assert rc == 0
    out = json.loads(out)
    G = np.array(out["realized"])
    np.testing.assert_allclose(np.array(out["currents"]), nodal_reference(g, 2, 10, 10, v), rtol=1e-9)
    np.testing.assert_allclose(G, nodal_reference(g, 2, 10, 10, np.eye(4)), rtol=1e-9)   # unit inputs: G_eff
    assert out["wires"] == {"r_wire": 2.0, "r_wire_col": 2.0, "r_in": 10.0, "r_out": 10.0, "drive": "one"}
    assert (tmp_path / "t.cir").read_text().count("\n") > 12
    assert (tmp_path / "o" / "simulate.png").stat().st_size > 1000
    if ngspice_available():
        ref, _ = run_ngspice(to_spice(g, wires=as_wires(r_wire=2, r_in=10, r_out=10), unit_inputs=True), 3)
        np.testing.assert_allclose(G, ref, rtol=1e-6)
    assert out["time_s"] > 0


def test_cli_simulate_conductances_one_cell_by_hand(tmp_path, capsys):
    """One cell, the irdrop preset's wires (default with --conductances): r_in, 1/g and r_out in series."""
    np.save(tmp_path / "G.npy", np.array([[1e-3]]))
    rc, out, _ = run_cli(["simulate", "--conductances", tmp_path / "G.npy", "--json"], capsys)
    assert rc == 0
    assert json.loads(out)["realized"][0][0] == pytest.approx(1 / (100 + 1e3 + 100), rel=1e-12)


def test_circuit_alias_prints_one_notice(tmp_path, capsys):
    np.save(tmp_path / "G.npy", np.full((3, 3), 1e-5))
    rc, out, err = run_cli(["circuit", "--conductances", tmp_path / "G.npy"], capsys)
    assert rc == 0 and "crossbar 3x3" in out
    assert err.strip().splitlines() == ["memcim circuit is now `memcim simulate --conductances`; running that"]


@pytest.mark.parametrize("argv,match", [
    (["--set", "wires.r_out=0"], "wires.r_out: 0 is not allowed"),
    (["--inputs", "BAD"], "--inputs: shape"),
    (["--hw", "ideal"], "--hw: 'ideal' has ideal wires"),
    (["--chips", "3"], "--chips: applies to --matrix only"),
    (["--batch", "3"], "--batch: applies to --matrix only"),
    (["--no-budget"], "--no-budget: applies to --matrix only"),
    (["--spice", "DIR"], "--spice: "),
    (["--r-wire", "2"], "--r-wire is gone; use --set wires.r_wire=VALUE"),
    (["--r-out", "2"], "--r-out is gone; use --set wires.r_out=VALUE"),
])
def test_cli_simulate_conductances_bad_input(tmp_path, capsys, argv, match):
    np.save(tmp_path / "G.npy", np.full((3, 3), 1e-5))
    np.save(tmp_path / "BAD.npy", np.ones((2, 5)))
    argv = [{"BAD": str(tmp_path / "BAD.npy"), "DIR": str(tmp_path)}.get(a, a) for a in argv]
    rc, _, err = run_cli(["simulate", "--conductances", tmp_path / "G.npy", *argv], capsys)
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("g", [[[1e-5, -1e-5]], [[1e-5, 0.0]]])
def test_cli_simulate_conductances_must_be_positive(tmp_path, capsys, g):
    np.save(tmp_path / "G.npy", np.array(g))
    rc, _, err = run_cli(["simulate", "--conductances", tmp_path / "G.npy"], capsys)
    assert rc == 2 and "--conductances: minimum" in err


# ------------------------------------------------------------------------------------------------
# trained weights (the reference MLP), errors from a fresh circuit solve of the mapped conductances
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_blocks():
    """32 x 32 blocks of the trained 784-256-128-10 MLP (weights as (inputs, outputs)) with the block's
    real inputs (MNIST training images through the float network)."""
    import torch

    from memcim.data.datasets import load_dataset
    from memcim.nn.models import get_reference_model

    net = get_reference_model("mnist-mlp-256-128").double().eval()
    x = torch.as_tensor(load_dataset("mnist", "train", limit=1500).x, dtype=torch.float64).flatten(1)
    fc1, fc2 = net[1], net[3]
    with torch.no_grad():
        h1 = torch.relu(fc1(x))
    W1, W2 = fc1.weight.detach().numpy().T, fc2.weight.detach().numpy().T
    return [(W1[376:408, 112:144], x.numpy()[:, 376:408]), (W2[0:32, 0:32], h1.numpy()[:, 0:32])]


def _circuit_errors(W, plan, X=None):
    """Frobenius and max output error of a one-array-pair plan, from new Crossbar solves of its conductances."""
    n, m = W.shape
    w, a = plan.hw.wires, plan.scale[0, :m].numpy()      # one alpha per column (equal under one scale)
    Wr = (Crossbar(plan.g_pos[0, :n, :m].numpy(), w).realized() - Crossbar(plan.g_neg[0, :n, :m].numpy(), w)
          .realized()) / a
    return error_report(W, Wr, inputs=X), Wr


@pytest.mark.parametrize("k", [0, 1])
def test_representable_beats_dpe_on_trained_blocks(mlp_blocks, k):
    """Trained layers gain less than random matrices (what remains is the 8-bit levels), but representable
    still wins on both measures. Measured (32 x 32, default pair rounding): Frobenius 3.1x / 2.8x, max
    output error 4.8x / 2.7x (one-device rounding: 2.0x / 1.7x, 3.0x / 2.4x); asserted with margin: 2.2x
    and 2.0x (deterministic: no sampling)."""
    W = mlp_blocks[k][0]
    h = hw("dpe", **{"array.rows": 32, "array.cols": 32})
    e = {m: _circuit_errors(W, map_matrix(W, h.set("mapping.method", m)))[0] for m in ("dpe", "representable")}
    assert e["representable"]["frobenius_error"] * 2.2 < e["dpe"]["frobenius_error"]
    assert e["representable"]["max_output_error"] * 2.0 < e["dpe"]["max_output_error"]


@pytest.mark.parametrize("k", [0, 1])
def test_pair_rounding_beats_one_device_rounding(mlp_blocks, k):
    """``mapping.rounding = "pairs"`` (both devices of a pair on levels, the pair's vernier under IR drop)
    against the one-device roundings of the same tuned plan, errors from fresh circuit solves of the
    programmed conductances: lower Frobenius error (measured 0.63x / 0.61x of "aware" and 0.66x / 0.64x of
    "plain"), lower mean squared output error over 4000 uniform [0, 1] inputs (Monte Carlo, the objective
    of both roundings), with many pairs using both devices (measured 46 % / 53 %) and every device on the
    8-bit grid."""
    W = mlp_blocks[k][0]
    h = hw("representable", **{"array.rows": 32, "array.cols": 32})
    dev = h.device
    X = np.random.default_rng(11).uniform(0, 1, (4000, W.shape[0]))
    e, mse = {}, {}
    for r in ("pairs", "aware", "plain"):
        plan = map_matrix(W, h.set("mapping.rounding", r))
        e[r], Wr = _circuit_errors(W, plan)
        mse[r] = np.mean((X @ (Wr - W)) ** 2)
        if r == "pairs":
            gp, gn = plan.g_pos[0].numpy(), plan.g_neg[0].numpy()
            assert np.mean((gp > dev.g_min * (1 + 1e-9)) & (gn > dev.g_min * (1 + 1e-9))) > 0.25
            if k == 0:   # the circuit solve used for the errors, against the dense nodal solve written out below
                w, v = h.wires, np.random.default_rng(12).uniform(0, 1, (2, W.shape[0]))
                ref = (nodal_reference(gp, w.r_wire, w.r_in, w.r_out, v)
                       - nodal_reference(gn, w.r_wire, w.r_in, w.r_out, v)) / plan.scale[0, :W.shape[1]].numpy()
                np.testing.assert_allclose(v @ Wr, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
            for g in (gp, gn):
                lv = (g - dev.g_min) / dev.level_step
                np.testing.assert_allclose(lv, np.round(lv), atol=1e-6)
                assert lv.min() > -1e-6 and lv.max() < dev.levels - 1 + 1e-6
    assert e["pairs"]["frobenius_error"] < 0.75 * min(e["aware"]["frobenius_error"], e["plain"]["frobenius_error"])
    assert mse["pairs"] < 0.9 * mse["aware"]


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_pair_rounding_few_levels(bits):
    """With fewer levels than the pair rounding's common range (8) every device stays on the grid inside
    the window, and the plan is no worse than DPE's (Frobenius, fresh circuit solves; measured at 1 / 2 / 4
    bits 2.55 / 1.07 / 0.248 against DPE's 3.35 / 1.13 / 0.248: few levels leave the pair no vernier)."""
    from memcim.mapping.irdrop import map_block

    W = np.random.default_rng(7).uniform(-1, 1, (12, 12))
    h = hw("representable", **{"device.bits": bits})
    dev = h.device
    gp, gn, a, info = map_block(W, as_wires(), dev, h.mapping, final_iters=2)
    for g in (gp, gn):
        lv = (g - dev.g_min) / dev.level_step
        np.testing.assert_allclose(lv, np.round(lv), atol=1e-6)
        assert lv.min() > -1e-6 and lv.max() < dev.levels - 1 + 1e-6
    Wr = (Crossbar(gp, as_wires()).realized() - Crossbar(gn, as_wires()).realized()) / a
    dpe = map_matrix(W, h.set("mapping.method", "dpe"))
    assert np.linalg.norm(Wr - W) <= np.linalg.norm(_circuit_errors(W, dpe)[1] - W) * (1 + 1e-9)


def test_mapping_rounding_key(mlp_blocks):
    """``mapping.rounding`` reaches the mapping (the plan equals map_block's with that rounding) and a bad
    value is a one-line error naming the key and the allowed values."""
    from memcim.mapping.irdrop import map_block

    W = mlp_blocks[1][0][:16, :16]
    h = hw("representable", **{"array.rows": 16, "array.cols": 16, "mapping.rounding": "plain"})
    plan = map_matrix(W, h)
    gp, gn, a, info = map_block(W, h.wires, h.device, h.mapping)
    assert info["rounding"] == "plain"
    np.testing.assert_array_equal(plan.g_pos[0].numpy(), gp)
    np.testing.assert_array_equal(plan.g_neg[0].numpy(), gn)
    with pytest.raises(ValueError, match=r"^mapping\.rounding: 'nearest' is not allowed; choose one of pairs, aware"):
        HW.set({"mapping.rounding": "nearest"})


def test_level_rounding_for_the_inputs_lowers_the_output_error(mlp_blocks):
    """The rounding to the device levels shaped for the inputs (default: uniform [0, 1] inputs) lowers the
    mean squared output error over uniform inputs against nearest-level rounding of the same tuned plan;
    checked by Monte Carlo over 4000 inputs through fresh circuit solves."""
    from memcim.mapping.irdrop import map_block

    W = mlp_blocks[0][0]
    mp = hw("representable").mapping
    X = np.random.default_rng(5).uniform(0, 1, (4000, W.shape[0]))
    mse = {}
    for rounding in ("plain", "aware"):
        gp, gn, a, info = map_block(W, as_wires(), HW.device, mp, rounding=rounding)
        assert info.get("rounding", "plain") == rounding
        Wr = (Crossbar(gp, as_wires()).realized() - Crossbar(gn, as_wires()).realized()) / a
        mse[rounding] = np.mean((X @ (Wr - W)) ** 2)
    assert mse["aware"] < 0.5 * mse["plain"]       # measured 0.17x (4000 inputs: MC error ~2 %)


def test_second_moment_of_real_inputs_lowers_the_data_error(mlp_blocks):
    """Input-aware mapping with E[x^T x] of 1000 MNIST images lowers the output MSE on 500 other images
    (the errors by fresh circuit solves)."""
    W, X = mlp_blocks[0]
    M = X[:1000].T @ X[:1000] / 1000
    h = hw("representable", **{"array.rows": 32, "array.cols": 32})
    mse = {}
    for tag, sm in (("plain", None), ("M", M)):
        _, Wr = _circuit_errors(W, map_matrix(W, h, second_moment=sm))
        mse[tag] = np.mean((X[1000:] @ (Wr - W)) ** 2)
    assert mse["M"] < 0.7 * mse["plain"]           # measured 0.63x (0.27x with the one-device rounding)
