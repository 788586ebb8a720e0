"""The energy, latency and area model against hand computations: a tiny tiled layer, one 4x4 array
with known conductances, a bit-sliced layer's arrays and ADC reads, ISAAC's published ADC figures,
and the Monte Carlo mean of the read power measured on programmed chips."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from memcim.config import EnergyConfig, HardwareConfig
from memcim.hardware.energy import (
    adc_area,
    adc_energy,
    digital_energy,
    layer_cost,
    matrix_cost,
    network_cost,
)
from memcim.mapping.crossbar import map_matrix

HW = HardwareConfig(array={"rows": 2, "cols": 4, "v_read": 0.2}, device={"g_min": 1e-6, "g_max": 1e-4},
                    adc={"enabled": True, "bits": 6}, dac={"enabled": True, "bits": 8})
W = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0], [2.0, 0.0, 0.0]])
U2 = np.array([0.5, 0.25, 1.0])
F2 = (32e-9) ** 2


def test_tiny_array_by_hand():
    cost = matrix_cost(W, HW, u2=U2)
    e = cost.energy
    # 3 inputs on 2-row arrays -> 2 row tiles; 3 outputs on 4/2 = 2 weight columns -> 2 column tiles
    assert (cost.counts["row_tiles"], cost.counts["col_tiles"]) == (2, 2)
    t = 1 / (2 * 1e8)                                   # 5 ns
    c = (1e-4 - 1e-6) / 2.0                             # 4.95e-5 S per weight unit
    g_rows = [2 * 1e-6 * 3 + c * 3.5, 2 * 1e-6 * 3 + c * 2.0, 2 * 1e-6 * 3 + c * 2.0]
    xbar = t * 0.2 ** 2 * (0.5 * g_rows[0] + 0.25 * g_rows[1] + 1.0 * g_rows[2])
    assert e["crossbar"] == pytest.approx(xbar, rel=1e-12)
    dac = 2 * 3 * 256 * 0.5e-15 * 0.9 ** 2 + 2 * 1.75 * 4 * 0.1e-15 * 0.2 ** 2
    assert e["dac"] == pytest.approx(dac, rel=1e-12)
    assert e["adc"] == pytest.approx(6 * 20e-15 * 64, rel=1e-12)           # 6 conversions, 2^6 steps
    assert e["tia"] == pytest.approx(12 * 20e-6 * 5e-9, rel=1e-12)         # 2 tiles x 3 outputs x (G+, G-)
    assert e["digital"] == pytest.approx(3 * (0.1 + 3.7 + 0.9) * 1e-12, rel=1e-12)
    assert e["buffers"] == pytest.approx((3 * 1 + 3 * 4) * 1.25e-12, rel=1e-12)
    assert e["shift_add"] == 0 and e["sample_hold"] == 0
    parts = ("crossbar", "dac", "adc", "tia", "digital", "buffers")
    assert e["total"] == pytest.approx(sum(e[k] for k in parts), rel=1e-12)
    # latency: read + one conversion of a per-column ADC at 1.2 GS/s + (ceil(log2 2) + 2) clocks at 1.2 GHz
    assert cost.latency == pytest.approx(5e-9 + 1 / 1.2e9 + 3 / 1.2e9, rel=1e-12)
    # area: 4 arrays of 2x4 cells of 4 F^2, 8 ADCs (one per weight column), 8 word-line DACs of 2^8 steps
    c = layer_cost(map_matrix(W, HW), u2=U2)
    a = c.area
    assert a["cells"] == pytest.approx(4 * 8 * 4 * F2, rel=1e-12)
    assert a["adc"] == pytest.approx(8 * (79_800 * 6 + 2_084 * 64) * F2, rel=1e-12)
    assert a["dac"] == pytest.approx(8 * 81 * 256 * F2, rel=1e-12)
    assert a["shift_add"] == pytest.approx(8 * 58_600 * F2, rel=1e-12)
    assert (c.counts["arrays"], c.counts["adcs"], c.counts["dacs"], c.counts["conversions"]) == (4, 8, 8, 6)


def test_one_4x4_array_read_energy_is_sum_v2_g_t():
    """A 4x4 array, differential pair on adjacent columns: 4 inputs x 2 weights; continuous levels, so
    G+ = g_min + c max(W, 0), G- = g_min + c max(-W, 0) exactly. One read of inputs u: E = sum_ij
    (u_i v)^2 G_ij t over all 16 devices, averaged over the reads."""
    hw = HardwareConfig(array={"rows": 4, "cols": 4, "v_read": 0.25}, device={"g_min": 2e-6, "g_max": 5e-5},
                        energy={"t_read": 1e-7})
    Wa = np.array([[0.5, -1.0], [0.25, 0.0], [-0.75, 1.0], [0.0, -0.5]])
    G = np.zeros((4, 4))
    c = (5e-5 - 2e-6) / 1.0
    G[:, 0::2] = 2e-6 + c * np.maximum(Wa, 0)
    G[:, 1::2] = 2e-6 + c * np.maximum(-Wa, 0)
    U = np.array([[1.0, 0.5, -0.25, 0.0], [0.2, -1.0, 0.6, 0.9], [-0.3, 0.3, 0.3, -0.3]])
    want = np.mean([sum((u[i] * 0.25) ** 2 * G[i, j] * 1e-7 for i in range(4) for j in range(4)) for u in U])
    plan = map_matrix(Wa, hw)
    got = layer_cost(plan, m2=U.T @ U / 3)
    assert got.energy["crossbar"] == pytest.approx(want, rel=1e-12)
    # the TIA feedback of each of the 4 bit lines: r_tia E[I_j^2] t, I_j = v sum_i u_i G_ij
    fb = np.mean([(10e3 * ((0.25 * u @ G) ** 2)).sum() * 1e-7 for u in U])
    assert got.detail["tia_feedback"] == pytest.approx(fb, rel=1e-12)
    assert got.energy["tia"] == pytest.approx(fb + 4 * 20e-6 * 1e-7, rel=1e-12)


def test_sliced_layer_counts_arrays_and_adc_reads_per_slice_and_cycle():
    """Two 2-bit weight slices, bit-serial 1-bit input cycles (a 4-bit signed DAC: 3 magnitude bits):
    every slice on its own arrays, T out conversions per slice and cycle; the crossbar energy is the
    sum over slices and cycles of t v^2 sum_i E[u_c,i^2] sum_j G_ij, with u_c the cycle's bit."""
    hw = HardwareConfig(array={"rows": 4, "cols": 4, "v_read": 0.2}, device={"g_min": 1e-6, "g_max": 1e-4, "levels": 4},
                        dac={"enabled": True, "bits": 4, "x_range": 1.0}, adc={"enabled": True, "bits": 6},
                        slicing={"weight_bits_per_slice": 2, "weight_slices": 2, "input_mode": "bit_serial"},
                        energy={"adc_share": 2})
    rng = np.random.default_rng(0)
    Wa = rng.normal(size=(6, 3))
    X = rng.uniform(-1, 1, size=(50, 6))
    plan = map_matrix(Wa, hw)
    assert plan.n_slices == 2 and plan.n_cycles == 3
    c = layer_cost(plan, x=X)
    T = plan.slices[0].n_row_tiles                       # 6 inputs on 4 rows: 2 row tiles
    Cc = plan.slices[0].n_col_tiles                      # 3 outputs on 2 weight columns: 2 column tiles
    assert (T, Cc) == (2, 2)
    assert c.counts["arrays"] == 2 * T * Cc
    assert c.counts["conversions"] == 2 * 3 * T * 3       # slices x cycles x row tiles x outputs
    assert c.energy["adc"] == pytest.approx(36 * 20e-15 * 64, rel=1e-12)
    assert c.energy["sample_hold"] == pytest.approx(36 * 1e-15, rel=1e-12)
    q = np.clip(np.round(X * 7), -7, 7).astype(int)     # the DAC codes
    t, want = 5e-9, 0.0
    for s in plan.slices:
        gp, gn = s.g_pos.double().numpy(), s.g_neg.double().numpy()
        for bit in range(3):
            u2 = (((np.abs(q) >> bit) & 1) ** 2).mean(0)
            for r in range(T):
                rows = slice(r * s.tile_rows, min((r + 1) * s.tile_rows, 6))
                k = rows.stop - rows.start
                want += t * 0.04 * u2[rows] @ (gp[r, :k].sum(1) + gn[r, :k].sum(1))
    assert c.energy["crossbar"] == pytest.approx(want, rel=1e-10)
    # shift-and-add: per output, the 2 slices x 3 cycles x 2 tiles = 12 partial results, 10 shifted adds
    # beyond the 2 row tiles' first ones
    assert c.energy["shift_add"] == pytest.approx(3 * 10 * 0.1e-12, rel=1e-12)
    # ADC shared by 2 columns through S+H: the conversion of a cycle overlaps the next read
    t_conv = 2 / 1.2e9
    assert c.latency == pytest.approx(t + t_conv + 2 * max(t, t_conv) + (math.ceil(math.log2(12)) + 2) / 1.2e9)
    # the same counts from an unsliced plan with the slices and cycles given explicitly
    base = map_matrix(Wa, hw.set({"slicing.weight_bits_per_slice": None, "slicing.weight_slices": None,
                                  "slicing.input_mode": "parallel"}))
    e = layer_cost(base, weight_slices=2, input_cycles=3)
    assert e.counts["conversions"] == 36 and e.counts["arrays"] == 2 * T * Cc


def test_isaac_adc_figures():
    """ISAAC (Shafiee et al., ISCA 2016, Table I): 8 ADCs of 8 bits per IMA, 16 mW and 0.0096 mm^2 in
    all, each converting the 128 columns of one array in one 100 ns cycle (1.28 GS/s). Walden's FOM of
    that ADC: 16 mW / 8 / (1.28 GS/s 2^8) = 6.10 fJ/step; memcim's area defaults give its 1200 um^2."""
    cfg = EnergyConfig(adc_fom=16e-3 / 8 / (1.28e9 * 256))
    e = adc_energy(8, cfg)
    assert e == pytest.approx(1.5625e-12, rel=1e-12)
    assert 8 * 128 * e / 100e-9 == pytest.approx(16e-3, rel=1e-12)          # 1024 conversions per cycle
    assert 8 * adc_area(8, EnergyConfig()) == pytest.approx(0.0096e-6, rel=2e-3)
    # Schreier's thermal limit takes over at high resolution: 16 bits at 180 dB
    hi = 0.5 * 10 ** ((6.02 * 16 + 1.76 - 180) / 10)
    assert adc_energy(16, EnergyConfig(adc_fom=1e-18)) == pytest.approx(hi, rel=1e-12)


def test_crossbar_energy_is_the_monte_carlo_mean_of_the_chips_read_power():
    """The crossbar term on the plan's targets is the expectation of the device power measured on
    programmed chips (symmetric programming noise, no clipping at g_min = 20 sigma): the Monte Carlo mean
    over 400 chips agrees within its standard error (z for a two-sided 1 % test)."""
    from memcim.hardware.energy import chip_power
    from memcim.simulate import program

    hw = HardwareConfig(array={"rows": 4, "cols": 6, "v_read": 0.2},
                        device={"g_min": 2e-5, "g_max": 1e-4, "prog_sigma_abs": 1e-6})
    rng = np.random.default_rng(3)
    Wa, U = rng.normal(size=(5, 2)), rng.uniform(-1, 1, size=(7, 5))
    plan = map_matrix(Wa, hw)
    chips = program(plan, seed=1, trials=400, dtype=torch.float64)
    dev, _ = chip_power(chips, U)
    c = layer_cost(plan, m2=U.T @ U / 7)
    pred = c.energy["crossbar"] / c.counts["t_read"]
    se = dev.std(ddof=1) / math.sqrt(len(dev))
    assert abs(dev.mean() - pred) <= norm.ppf(0.995) * se, (dev.mean(), pred, se)


def test_window_network_and_baseline():
    wide = matrix_cost(W, HW, u2=U2)
    narrow = matrix_cost(W, HW, u2=U2, g_min=1e-6, g_max=2e-5)
    assert narrow.energy["crossbar"] < wide.energy["crossbar"] and narrow.energy["adc"] == wide.energy["adc"]
    d = digital_energy(3, 3)
    assert d["macs"] == 9 and d["total"] == pytest.approx(9 * (0.2 + 0.1 + 20 / 8) * 1e-12)
    f = digital_energy(3, 3, EnergyConfig(baseline="fp32"))
    assert f["total"] == pytest.approx(9 * (3.7 + 0.9 + 10) * 1e-12)
    tot = network_cost([wide, narrow])
    assert tot.energy["total"] == pytest.approx(wide.energy["total"] + narrow.energy["total"])
    a, b = layer_cost(map_matrix(W, HW), u2=U2), layer_cost(map_matrix(W, HW), u2=U2, reads=4)
    net = network_cost([a, b])
    assert b.energy["total"] == pytest.approx(4 * a.energy["total"]) and b.latency == pytest.approx(4 * a.latency)
    assert net.energy["total"] == pytest.approx(5 * a.energy["total"])
    assert net.area["total"] == pytest.approx(2 * a.area["total"])
    assert net.summary()["latency_s"] == pytest.approx(5 * a.latency)


@pytest.mark.parametrize("key, value, match", [
    ("energy.adc_fom", -1.0, r"energy\.adc_fom: -1\.0 is not allowed; must be >= 0"),
    ("energy.buffer_area", -2.0, r"energy\.buffer_area: -2\.0 is not allowed; must be >= 0"),
    ("energy.cell_area", 0.0, r"energy\.cell_area: 0\.0 is not allowed; must be > 0"),
    ("energy.tia_power", float("nan"), r"energy\.tia_power: .* not finite"),
    ("energy.adc_share", 0, r"energy\.adc_share: 0 is not allowed"),
    ("energy.baseline", "int4", r"energy\.baseline"),
])
def test_bad_energy_figures_in_a_config(key, value, match):
    with pytest.raises(ValueError, match=match) as e:
        HW.set(key, value)
    assert "\n" not in str(e.value)
    sec, k = key.split(".")
    with pytest.raises(ValueError, match=match):
        HardwareConfig.from_toml(f"[{sec}]\n{k} = {value!r}\n".replace("nan", "nan").replace("'", '"'))


def test_energy_section_round_trips_and_is_left_out_by_default():
    hw = HW.set({"energy.adc_share": 128, "energy.t_read": 1e-7})
    assert HardwareConfig.from_toml(hw.to_toml()) == hw and hw.to_dict()["energy"]["adc_share"] == 128
    assert "energy" not in HW.to_dict()


def test_bad_inputs():
    with pytest.raises(ValueError, match="u2: shape"):
        matrix_cost(W, HW, u2=np.ones(5))
    with pytest.raises(ValueError, match="g_max"):
        matrix_cost(W, HW, g_min=1e-4, g_max=1e-5)
    with pytest.raises(ValueError, match="W: expected a 2-D"):
        matrix_cost(np.ones(3), HW)
    with pytest.raises(ValueError, match="reads"):
        layer_cost(map_matrix(W, HW), reads=0)
    with pytest.raises(ValueError, match="weight_slices"):
        layer_cost(map_matrix(W, HW), weight_slices=0)
    with pytest.raises(ValueError, match="x: shape"):
        layer_cost(map_matrix(W, HW), x=np.ones((2, 5)))


def test_crossbar_power_is_the_convex_programs_read_power():
    """One read-power formula: the convex program's coefficients come from the energy model's
    crossbar term and equal the hand derivation P = v^2 sum_i u2_i (2 m G_min + c sum_j |w_ij|)."""
    from memcim.analysis.column_error import InputStats, LayerErrorModel
    from memcim.config import preset
    from memcim.hardware.energy import crossbar_power
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
    from memcim.hardware.energy import tia_power

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
    c = layer_cost(plan, m2=m2)
    assert c.detail["tia_feedback"] == pytest.approx(c.counts["t_read"] * want, rel=1e-12)
    with pytest.raises(ValueError, match="m2"):
        tia_power(plan, np.eye(4))
