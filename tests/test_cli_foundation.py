"""The memcim CLI: vmm and config, including every bad input (one line, exit code 2)."""
import json

import numpy as np
import pytest

from memcim.cli import main
from memcim.config import HardwareConfig, preset


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((200, 50))
    np.save(tmp_path / "W.npy", W)
    np.save(tmp_path / "X.npy", rng.standard_normal((30, 200)))
    np.save(tmp_path / "Xbad.npy", rng.standard_normal((30, 199)))
    Wn = W.copy()
    Wn[3, 4] = np.nan
    np.save(tmp_path / "Wnan.npy", Wn)
    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file")
    preset("ideal").save(tmp_path / "ideal.toml")
    (tmp_path / "badkey.toml").write_text("[device]\ng_mx = 1e-4\n")
    (tmp_path / "gminmax.toml").write_text("[device]\ng_min = 1e-4\ng_max = 1e-5\n")
    (tmp_path / "neg.toml").write_text("[device]\nprog_sigma_abs = -1e-6\n")
    (tmp_path / "zerobits.toml").write_text("[adc]\nenabled = true\nbits = 0\n")
    (tmp_path / "zerolevels.toml").write_text("[device]\nlevels = 0\n")
    return tmp_path


def test_vmm_json_with_inputs(files, capsys):
    rc = main(["vmm", "--matrix", str(files / "W.npy"), "--inputs", str(files / "X.npy"), "--trials", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inputs"]["source"].endswith("X.npy")
    assert set(out["contributions"]) == set(preset("realistic").active_nonidealities())
    assert out["error"]["mse"] > 0 and out["error"]["snr_db"] > 0
    assert HardwareConfig.from_dict(out["config"]) == preset("realistic")
    assert out["provenance"]["seed"] == 0


def test_vmm_ideal_config_is_exact_and_draws_inputs(files, capsys):
    rc = main(["vmm", "--matrix", str(files / "W.npy"), "--config", str(files / "ideal.toml"), "--json",
               "--out", str(files / "out")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert "N(0, I)" in out["inputs"]["source"]
    assert out["error"]["relative_error"] < 1e-12
    assert (files / "out" / "result.json").exists() and (files / "out" / "config.toml").exists()


def test_vmm_writes_png(files, capsys):
    rc = main(["vmm", "--matrix", str(files / "W.npy"), "--trials", "1", "--batch", "20", "--out", str(files / "o2")])
    assert rc == 0
    assert (files / "o2" / "error_budget.png").stat().st_size > 1000
    assert "MSE" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--matrix", "{d}/missing.npy"], "--matrix: file not found"),
    (["--matrix", "{d}/garbage.npy"], "--matrix: cannot read"),
    (["--matrix", "{d}/Wnan.npy"], "NaN or inf"),
    (["--matrix", "{d}/W.npy", "--inputs", "{d}/Xbad.npy"], "--inputs: shape"),
    (["--matrix", "{d}/W.npy", "--config", "{d}/badkey.toml"], "unknown key 'g_mx'"),
    (["--matrix", "{d}/W.npy", "--config", "{d}/gminmax.toml"], "device.g_min"),
    (["--matrix", "{d}/W.npy", "--config", "{d}/neg.toml"], "device.prog_sigma_abs"),
    (["--matrix", "{d}/W.npy", "--config", "{d}/zerobits.toml"], "adc.bits"),
    (["--matrix", "{d}/W.npy", "--config", "{d}/zerolevels.toml"], "device.levels"),
    (["--matrix", "{d}/W.npy", "--preset", "nope"], "unknown preset 'nope'"),
    (["--matrix", "{d}/W.npy", "--trials", "0"], "--trials"),
    (["--matrix", "{d}/W.npy", "--config", "{d}/missing.toml"], "file not found"),
])
def test_vmm_bad_input_is_one_line_exit_2(files, capsys, args, match):
    rc = main(["vmm"] + [a.format(d=files) for a in args])
    err = capsys.readouterr().err
    assert rc == 2
    assert match in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["vmm"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--matrix" in err and err.strip().count("\n") == 0


def test_config_show_list_check(files, capsys):
    assert main(["config", "show", "realistic"]) == 0
    text = capsys.readouterr().out
    assert HardwareConfig.from_toml(text) == preset("realistic")
    assert main(["config", "list"]) == 0
    assert "realistic" in capsys.readouterr().out
    assert main(["config", "check", str(files / "ideal.toml")]) == 0
    assert main(["config", "show", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys):
    from memcim.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        assert "usage" in capsys.readouterr().out
