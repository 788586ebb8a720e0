"""Evaluation over time (issue 14, item 6): read times of analog models, evaluate_analog(times=...),
memcim evaluate --time/--compensation, the time/accuracy registry entry. Tiny models on digits."""
import json

import pytest
import torch
from _nn_helpers import digits_mlp

from memcim import registry
from memcim.cli import main
from memcim.config import preset
from memcim.data.digits import load_digits
from memcim.experiments.drift import FITTED, SKIPPED, accuracy_over_time, drift_presets, plot, table, time_presets
from memcim.nn.analog import (
    analog_layers,
    convert_to_analog,
    program,
    read_time,
    set_read_time,
)
from memcim.nn.evaluate import evaluate_analog, read_times


@pytest.fixture(scope="module")
def digits():
    test = load_digits("test")
    return test, load_digits("train").x[:64]


def _values(r):
    return r["accuracy"]["values"], r["mse"]["values"]


def test_t0_of_an_evaluation_over_time_is_the_plain_evaluation(digits):
    """The first read of each chip (t0) is the read of an evaluation without times: the same chips,
    the same read noise (1/f on), bit for bit."""
    test, calib = digits
    hw = preset("pcm")
    plain = evaluate_analog(digits_mlp(), test, hw, chips=3, seed=1, calib_data=calib, progress=False)
    timed = evaluate_analog(digits_mlp(), test, hw, chips=3, seed=1, calib_data=calib, progress=False,
                            times=[86400.0, 3600.0])
    assert timed["times"] == [20.0, 3600.0, 86400.0] and timed["t0"] == 20.0
    assert _values(timed) == _values(plain)
    assert timed["over_time"][0]["accuracy"] == timed["accuracy"]
    assert timed["compensation"] == "global"


def test_drift_at_t0_equals_the_no_drift_evaluation(digits):
    """With drift on, the t0 read equals the evaluation of the same chips without drift (read noise
    off: the drift exponents are drawn after programming, so the chips' conductances are the same)."""
    test, calib = digits
    hw = preset("pcm").without("flicker")
    assert hw.device.has_drift
    drift = evaluate_analog(digits_mlp(), test, hw, chips=3, seed=2, calib_data=calib, progress=False,
                            times=[3.15e7])
    none = evaluate_analog(digits_mlp(), test, hw.without("drift"), chips=3, seed=2, calib_data=calib,
                           progress=False)
    assert _values(drift) == _values(none)
    assert drift["over_time"][-1]["mse"]["mean"] != none["mse"]["mean"]     # it does drift after t0


def test_uniform_drift_with_global_compensation_is_undone_exactly():
    """nu the same for every device (std 0, no slope), no read noise, ideal converters: global
    compensation divides the drift factor out, so every read time gives the t0 outputs."""
    hw = preset("ideal").replace(device={"drift_nu": 0.06}, compensation={"drift": "global"})
    x = load_digits("test").x[:50]
    model = program(convert_to_analog(digits_mlp(), hw, calib_data=load_digits("train").x[:64]), seed=0,
                    dtype=torch.float64).eval()
    with torch.no_grad():
        y0 = model(x)
        for t in (3600.0, 86400.0, 3.15e7):
            with read_time(model, t):
                torch.testing.assert_close(model(x), y0, rtol=1e-6, atol=1e-7)
        none = program(convert_to_analog(digits_mlp(), hw.replace(compensation={"drift": "none"})), seed=0,
                       dtype=torch.float64).eval()
        with read_time(none, 3.15e7):
            assert not torch.allclose(none(x), y0, rtol=1e-3, atol=1e-3)      # uncompensated, it drifts


def test_layers_get_their_calibration_inputs_as_reference():
    calib = load_digits("train").x[:32]
    model = program(convert_to_analog(digits_mlp(), preset("pcm"), calib_data=calib), seed=0)
    for _, layer in analog_layers(model):
        assert layer.chip.reference_inputs is not None
        assert torch.equal(layer.chip.reference_inputs, layer.calibration_inputs)


def test_read_time_setting_context_and_state_dict():
    hw = preset("pcm")
    calib = load_digits("train").x[:32]
    model = program(convert_to_analog(digits_mlp(), hw, calib_data=calib), seed=4).eval()
    assert [m.read_time for _, m in analog_layers(model)] == [20.0, 20.0]
    with read_time(model, 3600.0):
        assert {m.read_time for _, m in analog_layers(model)} == {3600.0}
    assert {m.read_time for _, m in analog_layers(model)} == {20.0}
    with pytest.raises(ValueError, match=r"^t: 5 s is before device.drift_t0 = 20 s"):
        set_read_time(model, 5.0)
    with pytest.raises(ValueError, match=r"^t: nan is not allowed"):
        set_read_time(model, float("nan"))
    # a loaded copy holds the same drift exponents and reference inputs: the same reads at a later time
    copy = convert_to_analog(digits_mlp(), hw)
    copy.load_state_dict(model.state_dict())
    x = load_digits("test").x[:20]
    with torch.no_grad():
        set_read_time(model, 86400.0)
        set_read_time(copy.eval(), 86400.0)
        torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("times, match", [([-1.0], "is before"), ([float("nan")], "not allowed"),
                                          ([10.0], "before device.drift_t0 = 20 s"), ("soon", "not allowed")])
def test_read_times_bad_input(times, match):
    with pytest.raises(ValueError, match=r"^times: .*" + match):
        read_times(times, preset("pcm"))


@pytest.mark.parametrize("value, what", [("-5", "not allowed"), ("nan", "not allowed"), ("inf", "not allowed"),
                                         ("5", "before device.drift_t0 = 20 s of --hw pcm"), ("abc", "")])
def test_cli_bad_time_is_one_line_naming_time(value, what, capsys):
    rc = main(["evaluate", "--model", "mnist-mlp-256-128", "--hw", "pcm", "--time", "3600", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "--time" in err[0] and what in err[0] and "Traceback" not in err[0]


def test_cli_bad_compensation(capsys):
    rc = main(["evaluate", "--model", "mnist-mlp-256-128", "--hw", "pcm", "--time", "3600",
               "--compensation", "none,sometimes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].count("--compensation") == 1 and "'sometimes'" in err[0], err


def test_cli_time_writes_bands_and_every_number(tmp_path, capsys):
    path = tmp_path / "mlp.pt"
    torch.save(digits_mlp(), path)
    rc = main(["evaluate", "--model", str(path), "--trust-model-file", "--data", "digits:test:80", "--hw", "pcm",
               "--time", "3.15e7", "3600", "--compensation", "none,global", "--chips", "2", "--calib-samples", "32",
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads((tmp_path / "evaluate.json").read_text())
    assert (tmp_path / "evaluate.png").stat().st_size > 1000
    assert doc["times"] == [20.0, 3600.0, 3.15e7]
    assert [r["compensation"] for r in doc["results"]] == ["none", "global"]
    for r in doc["results"]:
        assert [o["t"] for o in r["over_time"]] == doc["times"]
        assert all(len(o["accuracy"]["values"]) == 2 for o in r["over_time"])
    # the same chips in both modes: the t0 reads agree
    assert doc["results"][0]["over_time"][0]["accuracy"] == doc["results"][1]["over_time"][0]["accuracy"]
    assert "pcm [global]" in out and "t = 20 s (t0)" in out


def test_cli_without_time_keeps_its_output(tmp_path, capsys):
    path = tmp_path / "mlp.pt"
    torch.save(digits_mlp(), path)
    rc = main(["evaluate", "--model", str(path), "--trust-model-file", "--data", "digits:test:40", "--hw", "pcm",
               "--chips", "1", "--calib-samples", "16", "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "evaluate.json").read_text())
    assert "times" not in doc and "over_time" not in doc["results"][0] and "compensation" not in doc["results"][0]
    assert not (tmp_path / "evaluate.png").exists()


def test_time_accuracy_entry(tmp_path):
    assert "pcm" in drift_presets()
    e = registry.get("time/accuracy")
    assert e.plot is not None and set(e.quick) <= set(e.parameters()) and e.hardware == "pcm"
    r = accuracy_over_time(models=[digits_mlp()], hw="pcm", dataset="digits", n_images=60, chips=2,
                           calib_samples=16, compensation=("none", "global"), times=(3600.0,))
    assert [(x["hardware"], x["compensation"]) for x in r["results"]] == [("pcm", "none"), ("pcm", "global")]
    assert r["results"][0]["times"] == [20.0, 3600.0]
    assert set(r["summary"]) == {f"Sequential/pcm/{m}@{t}" for m in ("none", "global") for t in ("t0", "3600s")}
    plot(r, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="^compensation: 'sometimes' is not allowed"):
        accuracy_over_time(compensation=("sometimes",))


def test_time_accuracy_covers_every_fitted_preset():
    """The default run is every fitted preset (docs/devices.md), none skipped, then every other preset with
    drift; a fitted preset that needs changed settings to map a network has them in NETWORK_OVERRIDES
    with a reason, and docs/time.md has its rows."""
    import re
    from pathlib import Path

    from memcim.experiments.overrides import NETWORK_OVERRIDES

    root = Path(__file__).resolve().parents[1]
    fitted_in_docs = set(re.findall(r"^\| `(\w+)` \|", (root / "docs" / "devices.md").read_text(), re.M))
    assert set(FITTED) == fitted_in_docs
    assert SKIPPED == {}
    assert time_presets()[: len(FITTED)] == list(FITTED)
    assert set(drift_presets()) <= set(time_presets())
    assert "taox" in NETWORK_OVERRIDES and all(e["reason"] for e in NETWORK_OVERRIDES.values())
    rows = set(re.findall(r"^\| (\w+) \| mnist-", (root / "docs" / "time.md").read_text(), re.M))
    assert set(FITTED) <= rows, set(FITTED) - rows


def test_taox_runs_with_its_override_and_is_flat():
    """taox's own 128 x 128 arrays refuse a 64-input layer (no conductance scale fits its 0.1 mS floor behind
    100 Ohm); by name the experiment tiles it 32 x 32 with the linearized read, records that, and (no
    time-dependent physics) reads the same outputs at every time. One 64 x 10 layer, 5 images: fast."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    kw = dict(models=[net], dataset="digits", n_images=5, chips=1, calib_samples=8, times=(3600.0,),
              compensation="none")
    with pytest.raises(ValueError, match="no conductance scale"):
        accuracy_over_time(hw=preset("taox"), **kw)
    r = accuracy_over_time(hw="taox", **kw)
    assert r["overrides"]["taox"]["settings"] == {"array.rows": 32, "array.cols": 32, "cell.solve": "linearized"}
    assert r["configs"]["taox"]["array"]["rows"] == 32 and r["configs"]["taox"]["cell"]["solve"] == "linearized"
    ot = r["results"][0]["over_time"]
    assert ot[0]["mse"]["values"] == ot[1]["mse"]["values"]
    assert 0 < ot[0]["mse"]["mean"] < 1e-2       # logits of order 1: the read is close to the digital layer


def test_time_accuracy_without_drift_is_flat_and_tabulates(tmp_path):
    """hfo2 has no drift, 1/f or telegraph noise: every read time and every compensation mode reads the same
    conductances, so each chip's accuracy is the same number at every time and in every mode."""
    r = accuracy_over_time(models=[digits_mlp()], hw="hfo2", dataset="digits", n_images=60, chips=2,
                           calib_samples=16, times=(3600.0, 3.15e7))
    assert [x["compensation"] for x in r["results"]] == ["none", "global", "column"]
    first = r["results"][0]["over_time"][0]["accuracy"]["values"]
    for x in r["results"]:
        assert x["times"] == [20.0, 3600.0, 3.15e7]
        assert all(o["accuracy"]["values"] == first for o in x["over_time"])
    md = table(r).splitlines()
    assert md[0] == "| preset | model | compensation | t0 = 20 s | 1 h | 1 y |" and len(md) == 2 + 3
    assert md[2].startswith("| hfo2 | Sequential (digital ") and md[3].startswith("|  |  | global | ")
    plot(r, tmp_path / "flat.png")
    assert (tmp_path / "flat.png").stat().st_size > 1000
