"""Bit slicing (hw.slicing): the config's bad input, the unchanged default path, and the sliced
read against hand-derived truth (integer weights, digits, shift-and-add)."""
import warnings

import numpy as np
import pytest
import torch

from memcim.config import HardwareConfig, SlicingConfig, preset
from memcim.hardware.converters import dac_convert
from memcim.mapping.crossbar import MappedMatrix, map_matrix
from memcim.mapping.slicing import SlicedPlan, input_cycles, lossless_adc_bits
from memcim.simulate import ProgrammedChip, program


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("settings, key", [
    ({"slicing.weight_slices": 0}, "slicing.weight_slices: 0 is not allowed"),
    ({"slicing.weight_bits_per_slice": [2, 3], "slicing.weight_bits": 8}, "slicing.weight_bits_per_slice: the slices' "
                                                                           "bits [2, 3] add up to 5"),
    ({"slicing.weight_bits_per_slice": [2, 2], "slicing.weight_slices": 3}, "slicing.weight_slices: 3 disagrees"),
    ({"slicing.weight_slices": 3}, "slicing.weight_bits_per_slice: required"),
    ({"slicing.weight_bits_per_slice": []}, "slicing.weight_bits_per_slice: an empty list"),
    ({"slicing.weight_bits_per_slice": [2, 0]}, "slicing.weight_bits_per_slice[1]: 0 is not allowed"),
    ({"slicing.weight_bits_per_slice": 7}, "slicing.weight_bits_per_slice: slice 0 holds 7 bits (128 levels), but "
                                           "device.levels = 64"),
    ({"slicing.encoding": "gray"}, "slicing.encoding: 'gray' is not allowed"),
    ({"slicing.input_mode": "serial"}, "slicing.input_mode: 'serial' is not allowed"),
    ({"slicing.input_bits_per_cycle": 0}, "slicing.input_bits_per_cycle: 0 is not allowed"),
    ({"slicing.input_mode": "bit_serial", "slicing.input_bits_per_cycle": 8}, "slicing.input_bits_per_cycle: 8 is "
                                                                               "not allowed; the DAC code has 7"),
    ({"slicing.input_mode": "bit_serial", "dac.enabled": False}, "slicing.input_mode: 'bit_serial' needs dac.enabled"),
    ({"slicing.weight_bits_per_slice": 2, "mapping.scheme": "offset"}, "slicing.encoding: 'sign_magnitude' needs "
                                                                       "mapping.scheme = 'differential'"),
    ({"slicing.weight_bits": 4}, "slicing.weight_bits: 4 needs slicing.weight_bits_per_slice"),
])
def test_bad_slicing_names_the_key(settings, key):
    with pytest.raises(ValueError) as e:
        preset("generic").set(settings)
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg


def test_bad_slicing_in_a_file_names_the_key(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text('[slicing]\nweight_bits_per_slice = [3, 3]\nweight_bits = 8\n')
    with pytest.raises(ValueError, match=r"^slicing.weight_bits_per_slice: the slices' bits \[3, 3\] add up to 6"):
        HardwareConfig.load(p)


def test_offset_encoding_needs_two_bits():
    hw = HardwareConfig().set({"slicing.weight_bits_per_slice": 1, "slicing.encoding": "offset"})
    with pytest.raises(ValueError, match=r"^slicing.weight_bits: 1 bit\(s\) cannot hold a signed weight"):
        map_matrix(np.eye(3), hw)


def test_coarse_adc_warns_with_the_saturation_probability():
    """A fixed full scale below the slice's largest sums: the warning names adc.bits, the lossless bits
    and the measured saturation probability (checked here against a direct count)."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(128, 8))
    hw = preset("generic").set({"slicing.weight_bits_per_slice": [3, 3], "adc.fs_mode": "fixed",
                                "adc.full_scale": 0.05, "adc.bits": 6})
    with pytest.warns(UserWarning, match=r"^adc.bits: 6 bits are too coarse for 2 of 2 weight slice\(s\).*needs 18 "
                                         r"for a lossless sum.*saturates its ADC with probability") as rec:
        plan = map_matrix(W, hw)
    p = max(d["saturation_probability"] for d in plan.info["slices"])
    assert f"{p:.3g}" in str(rec[0].message)
    # independent count: drives of the default calibration inputs, every column's |v| against FS
    x = torch.randn(512, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, _ = dac_convert(x, hw.dac)
    k = max(range(2), key=lambda i: plan.info["slices"][i]["saturation_probability"])
    s = plan.slices[k]
    v = hw.array.r_tia * hw.array.v_read * (u @ (s.g_pos - s.g_neg)[0]).abs()
    assert p == pytest.approx(float((v > 0.05).double().mean()), abs=1e-12)
    assert 0 < p < 1
    assert lossless_adc_bits(128, 7, 127) == 18     # 2**17 - 1 >= 128 * 7 * 127 = 113792


def test_coarse_calibrated_adc_records_but_does_not_warn():
    """The same coarse ADC with its full scale calibrated on the reads (quantile 1): no calibration read
    saturates, so the slices are recorded (lossless bits, probability 0) without a warning."""

    W = np.random.default_rng(0).normal(size=(128, 8))
    hw = preset("generic").set({"slicing.weight_bits_per_slice": [3, 3], "adc.bits": 6,
                                "adc.fs_mode": "calibrated", "adc.calib_quantile": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        plan = map_matrix(W, hw)
    assert [d["lossless_adc_bits"] for d in plan.info["slices"]] == [18, 18]
    assert [d["saturation_probability"] for d in plan.info["slices"]] == [0.0, 0.0]


# ---------------------------------------------------------------------------------- default path
def test_default_slices_nothing_and_writes_as_before():
    hw = preset("generic")
    assert hw.slicing == SlicingConfig() and not hw.slicing.enabled
    assert "slicing" not in hw.to_dict() and "slicing" not in hw.to_toml()
    W = np.random.default_rng(0).normal(size=(20, 5))
    plan = map_matrix(W, hw)
    assert isinstance(plan, MappedMatrix)
    assert isinstance(program(plan, seed=0), ProgrammedChip)
    sl = hw.set({"slicing.weight_bits_per_slice": [2, 2]})
    assert "slicing" in sl.to_dict() and HardwareConfig.from_toml(sl.to_toml()) == sl


def test_replacing_the_slice_list_recounts():
    hw = preset("generic").set({"slicing.weight_bits_per_slice": [2, 2, 2, 2]})
    assert hw.slicing.weight_bits == 8
    h2 = hw.set("slicing.weight_bits_per_slice", [3, 3])
    assert (h2.slicing.weight_slices, h2.slicing.weight_bits, h2.slicing.slice_bits) == (2, 6, (3, 3))


# ---------------------------------------------------------------------------------- hand truth
def _hand_int(W, P, enc):
    """The integer weights by hand: largest magnitude -> Q, round half to even."""
    Q = 2 ** P - 1 if enc == "sign_magnitude" else 2 ** (P - 1) - 1
    s = np.abs(W).max() / Q
    return np.clip(np.round(W / s), -Q, Q), s


@pytest.mark.parametrize("enc, scheme", [("sign_magnitude", "differential"), ("offset", "differential"),
                                         ("offset", "offset"), ("twos_complement", "differential"),
                                         ("twos_complement", "offset")])
@pytest.mark.parametrize("bits", [[2, 2, 2], [1, 2, 3]])
def test_noise_free_sliced_read_is_the_integer_product(enc, scheme, bits):
    """Ideal devices with 2**b levels (equal slices) or continuous, ideal ADC: every digit lands on a level and the
    shift-and-add returns x @ (s_w W_int) exactly, W_int rounded by hand (300 rows: three row tiles)."""
    rng = np.random.default_rng(1)
    W, x = rng.normal(size=(300, 12)), rng.normal(size=(5, 300))
    levels = 2 ** bits[0] if len(set(bits)) == 1 else None     # unequal slices: continuous devices
    hw = HardwareConfig().set({"device.levels": levels, "mapping.scheme": scheme,
                               "slicing.weight_bits_per_slice": bits, "slicing.encoding": enc})
    plan = map_matrix(W, hw)
    assert isinstance(plan, SlicedPlan) and plan.n_slices == len(bits)
    Wi, s = _hand_int(W, sum(bits), enc)
    y = program(plan, seed=0, trials=2, dtype=torch.float64).mvm(x)
    np.testing.assert_allclose(y.numpy(), np.broadcast_to(x @ (s * Wi), y.shape), rtol=0, atol=1e-9)
    np.testing.assert_allclose(plan.realized().numpy(), s * Wi, rtol=0, atol=1e-12)


def test_bit_serial_cycles_add_up_to_the_dac_code():
    rng = np.random.default_rng(2)
    W, x = rng.normal(size=(64, 6)), rng.normal(size=(7, 64))
    for c in (1, 2, 3, 7):
        hw = HardwareConfig().set({"device.levels": 4, "dac.enabled": True, "dac.bits": 8,
                                   "slicing.weight_bits_per_slice": [2, 2], "slicing.input_mode": "bit_serial",
                                   "slicing.input_bits_per_cycle": c})
        assert sum(input_cycles(hw)) == 7 and len(input_cycles(hw)) == -(-7 // c)
        plan = map_matrix(W, hw)
        Wi, s = _hand_int(W, 4, "sign_magnitude")
        q = np.round(x / np.abs(x).max(1, keepdims=True) * 127)                 # the DAC code by hand
        xh = q / 127 * np.abs(x).max(1, keepdims=True)
        y = program(plan, seed=3, dtype=torch.float64).mvm(x)[0].numpy()
        np.testing.assert_allclose(y, xh @ (s * Wi), rtol=0, atol=1e-9)


def test_slices_are_independent_chips_with_the_same_physics():
    """Programming noise of a slice equals that of the same digit matrix mapped unsliced at the same
    fixed scale: per-device variance of the realized digits matches sigma_abs^2 / c^2 (chi-square,
    400 chips x 2 slices x 300 weights)."""
    W = np.random.default_rng(4).normal(size=(30, 10))
    hw = HardwareConfig().set({"device.g_min": 20e-6, "device.prog_sigma_abs": 1e-6,
                               "slicing.weight_bits_per_slice": [2, 2]})
    plan = map_matrix(W, hw)
    chip = program(plan, seed=0, trials=400, dtype=torch.float64)
    for k, ch in enumerate(chip.chips):
        c = float(plan.slices[k].scale.reshape(-1)[0])
        dev = ch.realized() - plan.slices[k].realized()
        v = float(dev.var(dim=0).mean())
        expected = 2 * (1e-6 / c) ** 2              # G+ and G- both noisy (g_min = 20 sigma: no 0 S clip)
        n = 300 * 399
        assert abs(v / expected - 1) < 5 * np.sqrt(2 / n)
    a, b = (c.realized() - p.realized() for c, p in zip(chip.chips, plan.slices))
    corr = float(((a - a.mean(0)) * (b - b.mean(0))).mean() / (a.std() * b.std()))
    assert abs(corr) < 5 / np.sqrt(400 * 300)
