"""The memcim CLI: `simulate --matrix` (formerly vmm), `hw` (formerly config), the old names as
aliases, io.load_array on bad files, and every bad input (one line, exit code 2)."""
import json
import zipfile

import numpy as np
import pytest
from _cli import run_cli

from memcim.cli import main
from memcim.config import HardwareConfig, preset
from memcim.io import load_array

#: _shared._one_hw rewrites a hardware file's error "device.g_min: ..." as "hw: ..." and drops the key
#: the user must fix ("--hw: 0.0001 must be smaller than device.g_max"); strict, so the fix shows up


def assert_one_line_error(rc, err, match):
    assert rc == 2, err
    assert match in err, err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 12))
    np.save(tmp_path / "W.npy", W)
    np.save(tmp_path / "X.npy", rng.standard_normal((30, 40)))
    np.save(tmp_path / "Xbad.npy", rng.standard_normal((30, 39)))
    np.save(tmp_path / "X0.npy", np.zeros((5, 40)))
    np.save(tmp_path / "Z.npy", np.zeros((40, 12)))
    Wn = W.copy()
    Wn[3, 4] = np.nan
    np.save(tmp_path / "Wnan.npy", Wn)
    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "W.npz", W=W)
    raw = (tmp_path / "W.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "adir.npy").mkdir()
    preset("ideal").save(tmp_path / "ideal.toml")
    (tmp_path / "empty.toml").write_text("")
    (tmp_path / "badkey.toml").write_text("[device]\ng_mx = 1e-4\n")
    (tmp_path / "gminmax.toml").write_text("[device]\ng_min = 1e-4\ng_max = 1e-5\n")
    (tmp_path / "neg.toml").write_text("[device]\nprog_sigma_abs = -1e-6\n")
    (tmp_path / "zerobits.toml").write_text("[adc]\nenabled = true\nbits = 0\n")
    (tmp_path / "zerolevels.toml").write_text("[device]\nlevels = 0\n")
    (tmp_path / "hugelevels.toml").write_text("[device]\nlevels = 1e12\n")
    (tmp_path / "hugerows.toml").write_text("[array]\nrows = 100000000\n")
    return tmp_path


# ------------------------------------------------------------------ simulate --matrix (formerly vmm)
def test_simulate_json_with_inputs(files, capsys):
    rc, out, _ = run_cli(["simulate", "--matrix", files / "W.npy", "--inputs", files / "X.npy", "--chips", 2,
                          "--json"], capsys)
    assert rc == 0
    out = json.loads(out)
    assert out["inputs"]["source"].endswith("X.npy") and out["inputs"]["shape"] == [30, 40]
    assert out["chips"] == 2 and out["seed"] == 0 and out["provenance"]["seed"] == 0
    assert set(out["contributions"]) == set(preset("generic").active_nonidealities())
    for c in out["contributions"].values():   # share = that non-ideality's MSE over the total MSE
        assert c["share"] == pytest.approx(c["mse"] / out["error"]["mse"], rel=1e-12)
    e = out["error"]
    assert e["mse"] > 0 and e["snr_db"] == pytest.approx(-20 * np.log10(e["relative_error"]), rel=1e-9)
    assert HardwareConfig.from_dict(out["config"]) == preset("generic")


def test_simulate_ideal_hw_file_is_exact_and_draws_inputs(files, capsys):
    rc, out, _ = run_cli(["simulate", "--matrix", files / "W.npy", "--hw", files / "ideal.toml", "--json",
                          "--out", files / "out"], capsys)
    assert rc == 0
    out = json.loads(out)
    assert "N(0, I)" in out["inputs"]["source"] and out["inputs"]["shape"] == [1000, 40]
    assert out["error"]["relative_error"] < 1e-12
    saved = json.loads((files / "out" / "simulate.json").read_text())
    assert saved["error"] == out["error"]                      # --out writes the document --json prints
    assert HardwareConfig.load(files / "out" / "hw.toml") == preset("ideal")


def test_simulate_programming_noise_matches_hand_derivation(files, capsys):
    """Additive programming noise sigma on G+ and G- of every weight, scale c = (g_max - g_min) / max|W|:
    y - x W has variance 2 (sigma / c)^2 sum_i x_i^2 per output (by hand), averaged over inputs."""
    W = np.load(files / "W.npy")
    X = np.load(files / "X.npy")
    sets = ["--set", "device.g_min=2e-5", "--set", "device.prog_sigma_abs=2e-6"]  # g_min >> sigma: no clipping
    rc, out, _ = run_cli(["simulate", "--matrix", files / "W.npy", "--inputs", files / "X.npy", "--hw", "ideal",
                          *sets, "--chips", 64, "--seed", 3, "--no-budget", "--json"], capsys)
    assert rc == 0
    c = (1e-4 - 2e-5) / np.abs(W).max()
    pred = 2 * (2e-6 / c) ** 2 * (X ** 2).sum(axis=1).mean()
    assert json.loads(out)["error"]["mse"] == pytest.approx(pred, rel=0.1)
    assert "contributions" not in json.loads(out)


def test_simulate_writes_png_and_text(files, capsys):
    rc, out, _ = run_cli(["simulate", "--matrix", files / "W.npy", "--chips", 1, "--batch", 20, "--out",
                          files / "o2"], capsys)
    assert rc == 0
    assert (files / "o2" / "simulate.png").stat().st_size > 1000
    assert "MSE" in out and "simulate.json" in out


@pytest.mark.parametrize("args, match", [
    (["--matrix", "{d}/missing.npy"], "--matrix: file not found"),
    (["--matrix", "{d}/adir.npy"], "--matrix: {d}/adir.npy is a directory"),
    (["--matrix", "{d}/garbage.npy"], "--matrix: cannot read"),
    (["--matrix", "{d}/empty.npy"], "--matrix: {d}/empty.npy is an empty file"),
    (["--matrix", "{d}/trunc.npz"], "--matrix: cannot read"),
    (["--matrix", "{d}/Wnan.npy"], "NaN or inf"),
    (["--matrix", "{d}/Z.npy"], "--matrix: all entries are zero"),
    (["--matrix", "{d}/W.npy", "--inputs", "{d}/X0.npy"], "--inputs: x @ W = 0"),
    (["--matrix", "{d}/W.npy", "--inputs", "{d}/Xbad.npy"], "--inputs: shape"),
    (["--matrix", "{d}/W.npy", "--inputs", "{d}/X.npy", "--batch", "5"], "--batch: give --inputs or --batch"),
    (["--matrix", "{d}/W.npy", "--batch", "0"], "--batch: 0 is not allowed"),
    (["--matrix", "{d}/W.npy", "--hw", "{d}/badkey.toml"], "unknown key 'g_mx'"),
    pytest.param(["--matrix", "{d}/W.npy", "--hw", "{d}/gminmax.toml"], "device.g_min"),
    pytest.param(["--matrix", "{d}/W.npy", "--hw", "{d}/neg.toml"], "device.prog_sigma_abs"),
    pytest.param(["--matrix", "{d}/W.npy", "--hw", "{d}/zerobits.toml"], "adc.bits"),
    pytest.param(["--matrix", "{d}/W.npy", "--hw", "{d}/zerolevels.toml"], "device.levels"),
    pytest.param(["--matrix", "{d}/W.npy", "--hw", "{d}/hugelevels.toml"], "device.levels: 1000000000000 is not allowed"),
    (["--matrix", "{d}/W.npy", "--hw", "{d}/empty.toml"], "is empty"),
    (["--matrix", "{d}/W.npy", "--hw", "{d}/missing.toml"], "--hw: file not found"),
    (["--matrix", "{d}/W.npy", "--hw", "nope"], "--hw: unknown preset 'nope'"),
    (["--matrix", "{d}/W.npy", "--set", "device.nope=1"], "--set: unknown setting 'device.nope'"),
    (["--matrix", "{d}/W.npy", "--set", "array.rows=1e8"], "array.rows: 100000000 is not allowed"),
    (["--matrix", "{d}/W.npy", "--set", "device.g_max=abc"], "device.g_max"),
    (["--matrix", "{d}/W.npy", "--chips", "0"], "--chips: 0 is not allowed"),
    (["--matrix", "{d}/W.npy", "--seed", "-1"], "--seed"),
    (["--matrix", "{d}/W.npy", "--chips", "two"], "--chips"),
    (["--matrix", "{d}/W.npy", "--spice", "{d}/x.cir"], "--spice"),
    (["--matrix", "{d}/W.npy", "--out", "{d}/W.npy"], "--out"),
    (["--matrix", "{d}/W.npy", "--trials", "3"], "--trials is gone; use --chips"),
    (["--matrix", "{d}/W.npy", "--preset", "ideal"], "--preset is gone; use --hw"),
    ([], "one of the arguments --matrix --conductances is required"),
])
def test_simulate_bad_input_is_one_line_exit_2(files, capsys, args, match):
    rc, _, err = run_cli(["simulate"] + [a.format(d=files) for a in args], capsys)
    assert_one_line_error(rc, err, match.format(d=files))


# ------------------------------------------------------------------ hw (formerly config)
def test_hw_show_lists_every_key_and_reads_back(capsys):
    rc, out, _ = run_cli(["hw", "show", "irdrop"], capsys)
    assert rc == 0
    assert HardwareConfig.from_toml(out) == preset("irdrop")
    for sec, names in HardwareConfig.fields().items():       # every key a --set can take is on the page
        body = out.split(f"[{sec}]\n", 1)[1].split("\n[", 1)[0]
        for n in names:
            assert f"\n{n} = " in "\n" + body or f"\n# {n} = " in "\n" + body, (sec, n)


def test_hw_show_applies_set_and_prints_json(capsys):
    rc, out, _ = run_cli(["hw", "show", "irdrop", "--set", "device.bits=6", "--set", "adc.bits=4", "--json"],
                         capsys)
    assert rc == 0
    d = json.loads(out)
    assert d["device"]["levels"] == 64 and d["adc"]["bits"] == 4 and d["wires"]["r_wire_col"] is None
    assert HardwareConfig.from_dict(d) == preset("irdrop").set({"device.bits": 6, "adc.bits": 4})
    rc, out, _ = run_cli(["hw", "show"], capsys)               # default: generic
    assert rc == 0 and HardwareConfig.from_toml(out) == preset("generic")


def test_hw_list_check_diff(files, capsys):
    from memcim.config import preset_names

    rc, out, _ = run_cli(["hw", "list", "--json"], capsys)
    assert rc == 0 and [r["name"] for r in json.loads(out)] == preset_names()
    expected = f"{files / 'ideal.toml'}: valid (ideal; ideal reader)\n"
    assert run_cli(["hw", "check", files / "ideal.toml"], capsys)[:2] == (0, expected)
    rc, out, _ = run_cli(["hw", "diff", "generic", files / "ideal.toml", "--json"], capsys)
    assert rc == 0
    diffs = json.loads(out)["differences"]
    a, b = preset("generic"), preset("ideal")
    expected = {f"{s}.{n}" for s, names in HardwareConfig.fields().items() for n in names
                if getattr(getattr(a, s), n) != getattr(getattr(b, s), n)} | {"name"}
    assert set(diffs) == expected                               # brute force over every key
    assert diffs["device.levels"] == {"a": 64, "b": None} and diffs["adc.enabled"] == {"a": True, "b": False}
    rc, out, _ = run_cli(["hw", "diff", "irdrop", "irdrop"], capsys)
    assert rc == 0 and "same config" in out


@pytest.mark.parametrize("argv, match", [
    (["hw", "show", "nope"], "hw: unknown preset 'nope'"),
    (["hw", "show", "irdrop", "--set", "device.levels=1e12"], "device.levels"),
    (["hw", "show", "irdrop", "--set", "nowhere.x=1"], "--set: unknown setting 'nowhere.x'"),
    (["hw", "check", "{d}/missing.toml"], "file: file not found"),
    (["hw", "check", "{d}/adir.npy"], "is a directory"),
    (["hw", "check", "{d}/empty.toml"], "is empty"),
    (["hw", "check", "{d}/hugelevels.toml"], "device.levels: 1000000000000 is not allowed"),
    (["hw", "check", "{d}/hugerows.toml"], "array.rows: 100000000 is not allowed"),
    (["hw", "check", "{d}/badkey.toml"], "unknown key 'g_mx'"),
    (["hw", "diff", "irdrop", "nope"], "b: unknown preset 'nope'"),
    (["hw", "diff", "{d}/missing.toml", "irdrop"], "a: file not found"),
])
def test_hw_bad_input_is_one_line_exit_2(files, capsys, argv, match):
    rc, _, err = run_cli([a.format(d=files) for a in argv], capsys)
    assert_one_line_error(rc, err, match)


# ------------------------------------------------------------------ old names
def test_config_alias_prints_one_notice_and_runs_hw(capsys):
    rc, out, err = run_cli(["config", "show", "generic"], capsys)
    assert rc == 0 and HardwareConfig.from_toml(out) == preset("generic")
    assert err.strip() == "memcim config is now `memcim hw show`; running that"


def test_vmm_alias_prints_one_notice_and_runs_simulate(files, capsys):
    rc, out, err = run_cli(["vmm", "--matrix", files / "W.npy", "--hw", "ideal", "--batch", 10, "--json"], capsys)
    assert rc == 0 and json.loads(out)["error"]["relative_error"] < 1e-12
    assert err.strip().splitlines() == ["memcim vmm is now `memcim simulate --matrix`; running that"]


def test_argparse_errors_are_one_line(capsys):
    rc, _, err = run_cli(["simulate", "--matrix"], capsys)
    assert_one_line_error(rc, err, "--matrix")


# ------------------------------------------------------------------ io.load_array
@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b""), "matrix: .* is an empty file"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00"), "matrix: cannot read"),          # header cut short
    (lambda p: np.save(p, np.zeros((0, 3))), r"matrix: .* is empty \(shape \(0, 3\)\)"),
    (lambda p: np.save(p, np.array(["a", "b"])), "dtype <U1"),
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "matrix: cannot read"),
])
def test_load_array_bad_npy_is_one_line(tmp_path, make, match):
    p = tmp_path / "m.npy"
    make(p)
    with pytest.raises(ValueError, match=match) as e:
        load_array(p, "matrix")
    assert "\n" not in str(e.value)


def test_load_array_bad_npz_and_csv(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.ones(2), b=np.ones(2))
    with pytest.raises(ValueError, match="inputs: .* holds 2 arrays"):
        load_array(tmp_path / "two.npz", "inputs")
    raw = (tmp_path / "two.npz").read_bytes()
    for i, cut in enumerate((10, len(raw) // 2, len(raw) - 30)):      # truncated anywhere
        p = tmp_path / f"cut{i}.npz"
        p.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="inputs: ") as e:
            load_array(p, "inputs")
        assert "\n" not in str(e.value)
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(ValueError, match="holds 0 arrays"):
        load_array(tmp_path / "empty.npz", "inputs")
    (tmp_path / "blank.csv").write_text("\n")
    with pytest.raises(ValueError, match="inputs: .* is empty"):
        load_array(tmp_path / "blank.csv", "inputs")
    (tmp_path / "x.csv").write_text("1,2\n3,4\n")
    np.testing.assert_array_equal(load_array(tmp_path / "x.csv", "inputs", ndim=2), [[1, 2], [3, 4]])


def test_load_array_unreadable_file(tmp_path):
    import os

    p = tmp_path / "locked.npy"
    np.save(p, np.ones(3))
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as a user who reads any file")
        with pytest.raises(ValueError, match="matrix: cannot read .*Permission denied"):
            load_array(p, "matrix")
    finally:
        p.chmod(0o644)


def test_every_command_has_help(capsys):
    from memcim.cli import _leaves, build_parser

    parser = build_parser()
    for leaf in _leaves(parser):
        if leaf is parser:
            continue
        argv = leaf.prog.split()[1:]
        assert main([*argv, "--help"]) == 0, argv
        assert "usage" in capsys.readouterr().out
