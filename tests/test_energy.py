"""Energy model against a hand computation for a tiny array."""
import numpy as np
import pytest

from memcim.config import HardwareConfig
from memcim.hardware.energy import EnergyConfig, digital_energy, layer_energy, network_energy

HW = HardwareConfig(array={"rows": 2, "cols": 4, "v_read": 0.2}, device={"g_min": 1e-6, "g_max": 1e-4},
                    adc={"enabled": True, "bits": 6}, dac={"enabled": True, "bits": 8})
W = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0], [2.0, 0.0, 0.0]])
U2 = np.array([0.5, 0.25, 1.0])


def test_tiny_array_by_hand():
    e = layer_energy(W, HW, u2=U2)
    # 3 inputs on 2-row arrays -> 2 row tiles; 3 outputs on 4/2 = 2 weight columns -> 2 column tiles
    assert (e["row_tiles"], e["col_tiles"]) == (2, 2)
    t = 1 / (2 * 1e8)                                   # 5 ns
    c = (1e-4 - 1e-6) / 2.0                             # 4.95e-5 S per weight unit
    g_rows = [2 * 1e-6 * 3 + c * 3.5, 2 * 1e-6 * 3 + c * 2.0, 2 * 1e-6 * 3 + c * 2.0]
    xbar = t * 0.2 ** 2 * (0.5 * g_rows[0] + 0.25 * g_rows[1] + 1.0 * g_rows[2])
    assert e["crossbar"] == pytest.approx(xbar, rel=1e-12)
    dac = 2 * 3 * 256 * 0.5e-15 * 0.9 ** 2 + 2 * 1.75 * 4 * 0.1e-15 * 0.2 ** 2
    assert e["dac"] == pytest.approx(dac, rel=1e-12)
    assert e["adc"] == pytest.approx(6 * 20e-15 * 64, rel=1e-12)           # 6 conversions, 2^6 steps
    assert e["tia"] == pytest.approx(6 * 20e-6 * 5e-9, rel=1e-12)
    assert e["digital"] == pytest.approx(3 * (0.1 + 3.7 + 0.9) * 1e-12, rel=1e-12)
    assert e["total"] == pytest.approx(xbar + dac + 6 * 20e-15 * 64 + 6e-13 + 3 * 4.7e-12, rel=1e-12)


def test_window_and_baseline():
    wide = layer_energy(W, HW, u2=U2)
    narrow = layer_energy(W, HW, u2=U2, g_min=1e-6, g_max=2e-5)
    assert narrow["crossbar"] < wide["crossbar"] and narrow["adc"] == wide["adc"]
    d = digital_energy(3, 3)
    assert d["macs"] == 9 and d["total"] == pytest.approx(9 * (0.2 + 0.1 + 20 / 8) * 1e-12)
    f = digital_energy(3, 3, EnergyConfig(baseline="fp32"))
    assert f["total"] == pytest.approx(9 * (3.7 + 0.9 + 10) * 1e-12)
    tot = network_energy([wide, narrow])
    assert tot["total"] == pytest.approx(wide["total"] + narrow["total"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="energy.adc_fom"):
        EnergyConfig(adc_fom=-1.0)
    with pytest.raises(ValueError, match="energy.baseline"):
        EnergyConfig(baseline="int4")
    with pytest.raises(ValueError, match="u2: shape"):
        layer_energy(W, HW, u2=np.ones(5))
    with pytest.raises(ValueError, match="g_max"):
        layer_energy(W, HW, g_min=1e-4, g_max=1e-5)
    with pytest.raises(ValueError, match="W: expected a 2-D"):
        layer_energy(np.ones(3), HW)


def test_crossbar_power_is_the_convex_programs_read_power():
    """One read-power formula: the convex program's coefficients come from the energy model's
    crossbar term and equal the hand derivation P = v^2 sum_i u2_i (2 m G_min + c sum_j |w_ij|)."""
    from memcim.analysis.column_error import InputStats, LayerErrorModel
    from memcim.config import preset
    from memcim.hardware.energy import crossbar_power
    from memcim.mapping.crossbar import map_matrix
    from memcim.optimize.convex_range import read_power_coeffs

    rng = np.random.default_rng(0)
    Wr, X = rng.normal(size=(20, 6)), np.abs(rng.normal(size=(50, 20)))
    hw = preset("convex_cim")
    model = LayerErrorModel(Wr, hw, InputStats.from_samples(X, hw))
    m2 = model.stats.m2_plain if getattr(model.stats, "m2_plain", None) is not None else model.stats.m2
    alpha, beta = read_power_coeffs(model)
    v2 = hw.array.v_read ** 2
    assert alpha == pytest.approx(v2 * 2 * 6 * m2.sum(), rel=1e-12)
    assert beta == pytest.approx(v2 * float(m2 @ np.abs(Wr).sum(1)) / np.abs(Wr).max(), rel=1e-12)
    plan = map_matrix(Wr, hw)
    a, d = hw.device.g_min, hw.device.g_max - hw.device.g_min
    assert crossbar_power(plan, m2) == pytest.approx(alpha * a + beta * d, rel=1e-12)


def test_crossbar_power_offset_scheme_by_hand():
    """Offset mapping: every weight device sits around g_ref, plus one reference device per row."""
    from memcim.hardware.energy import crossbar_power
    from memcim.mapping.crossbar import map_matrix

    hw = HW.set("mapping.scheme", "offset")
    plan = map_matrix(W, hw)
    g_ref = (1e-6 + 1e-4) / 2
    c = (1e-4 - 1e-6) / 2 / 2.0
    # 4 columns per array: 3 weight columns + 1 reference column -> one column tile
    rows = [3 * g_ref + c * W[i].sum() + g_ref for i in range(3)]
    assert crossbar_power(plan, U2) == pytest.approx(0.2 ** 2 * float(U2 @ np.array(rows)), rel=1e-12)


def test_tia_power_by_hand():
    """Every bit line (G+ and G- of each weight, per row tile) ends in its own TIA: r_tia sum_j E[I_j^2]
    with I_j = v_read sum_i u_i G_ij over the rows of its array; E[I^2] from E[u u^T]."""
    from memcim.hardware.energy import layer_energy, tia_power
    from memcim.mapping.crossbar import map_matrix

    hw = HW.set("array.r_tia", 5e3)
    plan = map_matrix(W, hw)
    rng = np.random.default_rng(1)
    U = rng.uniform(-1, 1, size=(7, 3))
    m2 = U.T @ U / 7
    gp = plan.g_pos.double().numpy()
    gn = plan.g_neg.double().numpy()
    want = 0.0
    for t, rows in enumerate((slice(0, 2), slice(2, 3))):          # balanced tiling: 2 + 1 rows
        k = rows.stop - rows.start
        for g in (gp[t, :k], gn[t, :k]):                           # (rows, bit lines)
            i = 0.2 * U[:, rows] @ g                               # (reads, bit lines) [A]
            want += 5e3 * (i ** 2).sum(1).mean()
    assert tia_power(plan, m2) == pytest.approx(want, rel=1e-12)
    e = layer_energy(None, None, plan=plan, m2=m2)
    assert e["tia_feedback"] == pytest.approx(e["t_read"] * want, rel=1e-12)
    assert e["total"] == pytest.approx(sum(e[k] for k in ("crossbar", "dac", "adc", "tia", "tia_feedback", "digital")))
    with pytest.raises(ValueError, match="m2"):
        tia_power(plan, np.eye(4))
