"""Hardware config: validation, round trips, presets, switching non-idealities."""
import json

import pytest

from memcim.config import (NONIDEALITIES, ADCConfig, ArrayConfig, DACConfig, DeviceConfig, HardwareConfig,
                           preset, preset_names, resolve_config)


@pytest.mark.parametrize("name", preset_names())
def test_presets_round_trip_toml_and_json(name, tmp_path):
    hw = preset(name)
    assert HardwareConfig.from_toml(hw.to_toml()) == hw
    assert HardwareConfig.from_json(hw.to_json()) == hw
    for suffix in (".toml", ".json"):
        p = hw.save(tmp_path / f"hw{suffix}")
        assert HardwareConfig.load(p) == hw
    assert resolve_config(name) == hw


def test_bits_and_levels():
    assert DeviceConfig(bits=4).levels == 16
    assert DeviceConfig(bits=3, levels=8).levels == 8
    with pytest.raises(ValueError, match="disagrees"):
        DeviceConfig(bits=3, levels=9)
    d = DeviceConfig(bits=4).replace(levels=5)
    assert d.levels == 5 and d.bits is None
    assert DeviceConfig(levels=5).level_step == pytest.approx((100e-6 - 1e-6) / 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(g_min=2e-5, g_max=1e-5), "device.g_min"),
    (dict(g_min=1e-5, g_max=1e-5), "device.g_min"),
    (dict(g_min=-1e-6), "device.g_min"),
    (dict(g_max=-1.0), "device.g_max"),
    (dict(levels=0), "device.levels"),
    (dict(levels=1), "device.levels"),
    (dict(bits=0), "device.bits"),
    (dict(prog_sigma_abs=-1e-6), "device.prog_sigma_abs"),
    (dict(prog_sigma_rel=-0.1), "device.prog_sigma_rel"),
    (dict(prog_sigma_rel=float("nan")), "device.prog_sigma_rel"),
    (dict(stuck_at_min=1.5), "device.stuck_at_min"),
    (dict(stuck_at_min=0.6, stuck_at_max=0.6), "add up"),
    (dict(levels=4, prog_sigma_table=(1e-6, 1e-6)), "prog_sigma_table"),
    (dict(temperature=0.0), "device.temperature"),
    (dict(levels=1e12), "device.levels: 1000000000000 is not allowed; must be an integer in 2..16777216"),
    (dict(levels=2 ** 24 + 1), "device.levels"),
    (dict(levels=2.5), "device.levels: expected an integer"),
    (dict(bits=25), "device.bits"),
])
def test_device_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeviceConfig(**kwargs)


@pytest.mark.parametrize("cls, kwargs, match", [
    (DACConfig, dict(bits=0), "dac.bits"),
    (DACConfig, dict(bits=1), "dac.bits"),
    (DACConfig, dict(x_range=0.0), "dac.x_range"),
    (ADCConfig, dict(bits=0), "adc.bits"),
    (ADCConfig, dict(fs_mode="fixed"), "adc.full_scale"),
    (ADCConfig, dict(fs_mode="huge"), "adc.fs_mode"),
    (ADCConfig, dict(granularity="row"), "adc.granularity"),
    (ADCConfig, dict(full_scale=-1.0, fs_mode="fixed"), "adc.full_scale"),
])
def test_converters_reject_bad_values(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_unknown_keys_are_named():
    d = preset("generic").to_dict()
    d["device"]["g_maxx"] = 1e-4
    with pytest.raises(ValueError, match="unknown key 'g_maxx'"):
        HardwareConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown key 'dacs'"):
        HardwareConfig.from_dict({"dacs": {}})
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        preset("nope")


def test_bounds_are_inclusive():
    assert DeviceConfig(levels=2 ** 24).levels == 2 ** 24 == DeviceConfig(bits=24).levels
    assert ArrayConfig(rows=65536, cols=65536).rows == 65536
    assert ArrayConfig(rows=1, cols=2).cols == 2
    assert isinstance(ArrayConfig(rows=64.0).rows, int)      # an integral float from TOML/JSON becomes an int


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=1e8), "array.rows: 100000000 is not allowed; must be an integer in 1..65536"),
    (dict(cols=65537), "array.cols"),
    (dict(rows=0), "array.rows"),
    (dict(cols=1), "array.cols"),
    (dict(rows=12.5), "array.rows: expected an integer"),
])
def test_array_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArrayConfig(**kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        HardwareConfig.load(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="is a directory; a file is required"):
        HardwareConfig.load(tmp_path)
    (tmp_path / "d.toml").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        resolve_config(str(tmp_path / "d.toml"))
    for text in ("", "  \n\n"):
        (tmp_path / "empty.toml").write_text(text)
        with pytest.raises(ValueError, match="config: .* is empty"):
            HardwareConfig.load(tmp_path / "empty.toml")
    (tmp_path / "hw.yaml").write_text("device: {}")
    with pytest.raises(ValueError, match="suffix '.yaml'"):
        HardwareConfig.load(tmp_path / "hw.yaml")
    (tmp_path / "big.toml").write_text("[array]\nrows = 100000000\n")
    with pytest.raises(ValueError, match="array.rows"):
        HardwareConfig.load(tmp_path / "big.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        HardwareConfig.load(bad)
    badj = tmp_path / "bad.json"
    badj.write_text(json.dumps({"device": {"g_min": 1e-3, "g_max": 1e-4}}))
    with pytest.raises(ValueError, match="g_min"):
        HardwareConfig.load(badj)


def test_frozen_and_replace():
    hw = preset("generic")
    with pytest.raises(Exception):
        hw.device.g_max = 1.0  # type: ignore[misc]
    hw2 = hw.replace(device={"g_max": 5e-5}, adc={"bits": 4})
    assert hw2.device.g_max == 5e-5 and hw2.adc.bits == 4 and hw.device.g_max == 1e-4
    with pytest.raises(ValueError, match="device.g_min"):
        hw.replace(device={"g_max": 1e-7})


def test_without_and_only_switch_each_nonideality():
    hw = preset("generic").set({"device.rtn_amplitude": 0.1, "wires.r_wire": 1.0, "wires.r_in": 100.0,
                                  "wires.r_out": 100.0, "device.drift_nu": 0.05, "device.read_1f_q": 0.01})
    assert set(hw.active_nonidealities()) == set(NONIDEALITIES)
    for name in NONIDEALITIES:
        assert name not in hw.without(name).active_nonidealities()
        assert set(hw.without(name).active_nonidealities()) == set(NONIDEALITIES) - {name}
        assert hw.only(name).active_nonidealities() == (name,)
    assert preset("ideal").active_nonidealities() == ()
    with pytest.raises(ValueError, match="non-ideality"):
        hw.without("aging")


@pytest.mark.parametrize("settings,match", [
    ({"wires.r_wire": -1.0}, "wires.r_wire"),
    ({"wires.r_in": float("nan")}, "wires.r_in"),
    ({"wires.r_out": float("inf")}, "wires.r_out"),
    ({"wires.r_wire": 1.0, "wires.r_in": 100.0}, "wires.r_out: 0 is not allowed"),       # zero where needed
    ({"wires.r_wire": 1.0, "wires.r_out": 100.0}, "wires.r_in: 0 is not allowed"),
    ({"wires.drive": "middle"}, "wires.drive"),
    ({"cell.model": "hfo2"}, "cell.model"),                                              # unknown cell model
    ({"cell.model": "taox"}, "cell.model: 'taox' .* needs wires"),
    ({"cell.solve": "spice"}, "cell.solve"),
    ({"cell.vt0": 3.0}, "cell.v_gate"),
    ({"mapping.method": "magic"}, "mapping.method"),
    ({"mapping.method": "dpe"}, "mapping.method: 'dpe' .* needs wires"),                # reader cannot honour it
    ({"mapping.pair": "arrays", "mapping.scheme": "offset"}, "mapping.pair"),
    ({"device.rtn_amplitude": 1.0}, "device.rtn_amplitude"),
    ({"device.rtn_probability": -0.1}, "device.rtn_probability"),
    ({"device.nonsense": 1}, "unknown setting 'device.nonsense'"),
    ({"nowhere.x": 1}, "unknown setting 'nowhere.x'"),
])
def test_set_rejects_bad_settings_in_one_line(settings, match):
    with pytest.raises(ValueError, match=match) as e:
        preset("generic").set(settings)
    assert "\n" not in str(e.value)


def test_irdrop_methods_need_a_differential_pair_of_arrays():
    hw = preset("irdrop")
    assert hw.reader == "circuit" and hw.mapping.method == "representable"
    with pytest.raises(ValueError, match="mapping.pair = 'arrays'"):
        hw.set("mapping.pair", "columns")
    assert hw.set({"mapping.pair": "columns", "mapping.method": "linear"}).reader == "circuit"
    assert hw.without("wires").reader == "ideal" and hw.without("wires").mapping.method == "linear"


def test_set_is_replace_with_dotted_names_and_round_trips():
    hw = preset("generic").set({"device.prog_sigma_rel": 0.05, "wires.r_wire": 2.0, "wires.r_in": 50.0,
                                  "wires.r_out": 50.0, "cell.model": "taox_1t1r", "name": "mine"})
    assert hw.device.prog_sigma_rel == 0.05 and hw.wires.rc == 2.0 and hw.name == "mine"
    assert hw == hw.replace(device={"prog_sigma_rel": 0.05})
    assert HardwareConfig.from_toml(hw.to_toml()) == hw
    assert set(HardwareConfig.fields()) == {"device", "dac", "adc", "array", "wires", "cell", "mapping",
                                                 "compensation", "slicing", "energy"}


@pytest.mark.parametrize("name", ["irdrop", "lowrank", "convex_cim"])
def test_paper_presets_cite_their_paper(name):
    from importlib import resources

    text = resources.files("memcim.presets").joinpath(f"{name}.toml").read_text()
    assert "Paper 00" in text.split("name =")[0]
