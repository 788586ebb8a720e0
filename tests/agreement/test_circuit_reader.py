"""Circuit reader against its independent truths: the ideal-wire reader as the wires vanish, and
ngspice on the physical arrays of a programmed tile (issue 12, item 7)."""
import numpy as np
import pytest
import torch

from memcim.config import preset
from memcim.hardware.circuit import ConvergenceError, ngspice_available, run_ngspice, to_spice
from memcim.mapping.crossbar import map_matrix
from memcim.simulate import program

needs_spice = pytest.mark.skipif(not ngspice_available(), reason="ngspice not installed")

LAYOUTS = [("differential", "columns"), ("differential", "arrays"), ("offset", "columns")]


def _trained_block(rows, cols):
    """A block of the shipped reference MLP's first layer (trained weights), as a crossbar matrix."""
    from memcim.nn.loading import load_model

    w = load_model("mnist-mlp-256-128").state_dict()
    first = next(v for k, v in w.items() if k.endswith("weight"))
    return first.double().numpy().T[200:200 + rows, :cols].copy()


def _wired(hw, r):
    return hw.set({"wires.r_wire": r, "wires.r_in": r, "wires.r_out": r})


@pytest.mark.parametrize("scheme,pair", LAYOUTS)
def test_circuit_reader_equals_ideal_reader_as_wires_vanish(scheme, pair):
    """Every non-ideality on (levels, programming noise, stuck devices, thermal and shot noise,
    DAC, ADC), 3 x 2 arrays of 24 x 16: with 1e-9 Ohm wires the circuit reader gives the ideal
    reader's outputs to 1e-9 (same seeds, so the same chips and the same read-noise draws)."""
    W = _trained_block(60, 20)
    x = np.abs(np.random.default_rng(1).normal(size=(16, 60)))
    hw = preset("generic").set({"mapping.scheme": scheme, "mapping.pair": pair, "array.rows": 24,
                                  "array.cols": {"arrays": 16, "columns": 32}[pair] if scheme == "differential" else 17})
    ideal = program(map_matrix(W, hw, calib_inputs=x), seed=3, trials=2, dtype=torch.float64)
    circ = program(map_matrix(W, _wired(hw, 1e-9), calib_inputs=x), seed=3, trials=2, dtype=torch.float64)
    assert circ.reader == "circuit" and ideal.reader == "ideal"
    assert circ.mapped.n_tiles == (3, 2)
    a, b = ideal.mvm(x).numpy(), circ.mvm(x).numpy()
    assert np.abs(a - b).max() <= 1e-9 * np.abs(a).max()
    assert float((ideal.realized() - circ.realized()).abs().max()) <= 1e-9 * np.abs(W).max()


def test_circuit_reader_converges_linearly_in_wire_resistance():
    """The IR-drop error is first order in r: a thousandfold smaller r gives a thousandfold smaller
    deviation (a circuit reader that ignored the wires would fail the first ratio, one that mixed
    up the layout would fail the second)."""
    W = _trained_block(32, 12)
    hw = preset("ideal")
    ref = map_matrix(W, hw).realized().numpy()
    d = [np.abs(map_matrix(W, _wired(hw, r)).realized().numpy() - ref).max() for r in (1e-3, 1e-6)]
    assert d[0] > 0
    assert d[1] / d[0] == pytest.approx(1e-3, rel=0.01)


def _physical(chip, t, scheme, pair):
    """The physical conductance arrays of the chip's first tile, arranged independently of the reader."""
    gp = chip.g_pos[t, 0].numpy()
    gn = chip.g_neg[t, 0].numpy()
    if scheme == "offset":
        return [np.concatenate([gp, gn], axis=1)]
    if pair == "arrays":
        return [gp, gn]
    a = np.empty((gp.shape[0], 2 * gp.shape[1]))
    a[:, 0::2], a[:, 1::2] = gp, gn
    return [a]


def _spice_outputs(arrays, v, wires, scheme, pair, m):
    outs = [run_ngspice(to_spice(a, v, wires), a.shape[1])[0][0] for a in arrays]
    if scheme == "offset":
        return outs[0][:m] - outs[0][m]
    if pair == "arrays":
        return outs[0] - outs[1]
    return outs[0][0::2] - outs[0][1::2]


@needs_spice
@pytest.mark.parametrize("scheme,pair", LAYOUTS)
def test_circuit_reader_against_ngspice(scheme, pair):
    """A programmed 8 x 5 tile (levels, programming noise, stuck devices; read noise and converters
    off) of paper 002's wires: chip.mvm equals ngspice's currents on the same physical arrays."""
    W = _trained_block(8, 5)
    hw = preset("irdrop").without("dac", "adc").set({
        "mapping.method": "linear", "mapping.scheme": scheme, "mapping.pair": pair,
        "device.prog_sigma_rel": 0.05, "device.stuck_at_min": 0.05, "device.stuck_at_max": 0.05})
    chip = program(map_matrix(W, hw), seed=11, trials=1, dtype=torch.float64)
    assert bool((chip.g_pos != chip.mapped.g_pos).any())          # the chip is not the plan
    x = np.random.default_rng(2).uniform(-1, 1, (3, 8))
    y = chip.mvm(x)[0].numpy()
    v_read, scale = hw.array.v_read, chip.mapped.scale[0, :5].numpy()
    for b in range(3):
        xs = np.abs(x[b]).max()                                     # the DAC's dynamic range
        v = x[b] / xs * v_read
        cur = _spice_outputs(_physical(chip, 0, scheme, pair), v, hw.wires, scheme, pair, 5)
        np.testing.assert_allclose(y[b], cur / v_read / scale * xs, rtol=1e-6, atol=1e-9 * np.abs(y).max())


@needs_spice
@pytest.mark.parametrize("model", ["taox", "taox_1t1r"])
def test_newton_reader_against_ngspice(model):
    """Non-linear cells: the Newton reader equals ngspice with the same states (B-source TaOx
    memristors, level-1 NMOS access transistors)."""
    from memcim.hardware.cells import cell_devices
    from memcim.hardware.circuit import states_from_conductances

    W = _trained_block(6, 4)
    hw = preset("irdrop").without("dac", "adc").set({
        "mapping.method": "linear", "cell.model": model, "cell.solve": "newton", "device.g_min": 1e-4})
    chip = program(map_matrix(W, hw), seed=0, trials=1, dtype=torch.float64)
    x = np.random.default_rng(3).uniform(0, 1, (2, 6))
    y = chip.mvm(x)[0].numpy()
    mem, tr = cell_devices(hw.cell)
    v_read, scale = hw.array.v_read, chip.mapped.scale[0, :4].numpy()
    for b in range(2):
        xs = np.abs(x[b]).max()
        v = x[b] / xs * v_read
        outs = []
        for a in _physical(chip, 0, "differential", "arrays"):
            s, _ = states_from_conductances(a, np.full(6, v_read), hw.wires, mem, tr)
            outs.append(run_ngspice(to_spice(states=np.clip(s, 0, 1), v=v, wires=hw.wires, memristor=mem,
                                             transistor=tr), 4)[0][0])
        np.testing.assert_allclose(y[b], (outs[0] - outs[1]) / v_read / scale * xs, rtol=1e-5,
                                   atol=1e-8 * np.abs(y).max())


def test_linearized_reader_is_exact_at_the_calibration_read_only():
    """cell.solve = "linearized" uses each cell's conductance at the calibration read (every word
    line at v_read): there it equals the Newton solve; at other inputs it errs (measured here, see
    docs/circuit.md)."""
    W = _trained_block(16, 8)
    base = preset("irdrop").without("dac", "adc").set({"mapping.method": "linear", "cell.model": "taox",
                                                       "device.g_min": 1e-4})
    plan_n = map_matrix(W, base.set("cell.solve", "newton"))
    plan_l = map_matrix(W, base.set("cell.solve", "linearized"))
    newton = program(plan_n, seed=0, dtype=torch.float64)
    lin = program(plan_l, seed=0, dtype=torch.float64)
    cal = np.ones((1, 16))
    np.testing.assert_allclose(lin.mvm(cal).numpy(), newton.mvm(cal).numpy(), rtol=1e-9, atol=1e-12)
    x = np.random.default_rng(4).uniform(0, 1, (4, 16))
    a, b = lin.mvm(x).numpy(), newton.mvm(x).numpy()
    err = np.abs(a - b).max() / np.abs(b).max()
    assert 1e-4 < err < 0.2           # TaOx at 0.2 V: a few per cent off the calibration input


def test_newton_reader_reports_non_convergence(monkeypatch):
    """A Newton solve that does not converge raises ConvergenceError, never a silent answer."""
    from memcim.hardware import circuit

    W = _trained_block(4, 3)
    hw = preset("irdrop").without("dac", "adc").set({"mapping.method": "linear", "cell.model": "taox",
                                                     "device.g_min": 1e-4})
    chip = program(map_matrix(W, hw), seed=0, dtype=torch.float64)
    orig = circuit.NonlinearCrossbar.node_voltages
    monkeypatch.setattr(circuit.NonlinearCrossbar, "node_voltages",
                        lambda self, v, **kw: orig(self, v, max_iter=1, tol=1e-30))
    with pytest.raises(ConvergenceError, match="did not converge"):
        chip.mvm(np.ones((1, 4)))


def test_rtn_through_the_circuit_reader_matches_its_mean():
    """RTN (each device low by A with probability p, a snapshot per read): averaged over reads the
    output shrinks by (1 - p A), through the circuit reader as through the ideal one."""
    W = _trained_block(10, 4)
    x = np.ones((1, 10))
    hw = _wired(preset("ideal"), 1e-9).set({"device.rtn_amplitude": 0.2, "device.rtn_probability": 0.5})
    chip = program(map_matrix(W, hw), seed=0, dtype=torch.float64)
    ys = np.stack([chip.mvm(x)[0, 0].numpy() for _ in range(400)])
    target = 0.9 * (x @ W)[0]
    se = ys.std(0, ddof=1) / np.sqrt(len(ys))
    assert np.all(np.abs(ys.mean(0) - target) <= 4.0 * se + 1e-12)   # 4 SE: Bonferroni over 4 outputs
