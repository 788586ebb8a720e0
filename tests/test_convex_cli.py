"""CLI: memcim optimize range and memcim experiment (registry), including one-line user errors."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from memcim.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 5))
    torch.save(m, d / "m.pt")
    X = np.abs(np.random.default_rng(0).normal(size=(200, 40)))
    np.save(d / "x.npy", X)
    np.save(d / "bad.npy", np.ones((10, 7)))
    return d


def test_optimize_range_json(files, capsys):
    rc = main(["optimize", "range", "--model", str(files / "m.pt"), "--trust-model-file", "--inputs",
               str(files / "x.npy"), "--hw", "convex_cim", "--solver", "fast", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    assert [L["layer"] for L in doc["layers"]] == ["1", "3"]
    for L in doc["layers"]:
        assert 1e-6 <= L["g_min"] < L["g_max"] <= 1e-4
        assert L["fs_volts"] > 0 and L["solve_seconds"] > 0
        assert set(L["predicted_mse"]) >= {"prog_abs", "prog_rel", "thermal", "shot", "adc_quant", "saturation", "total"}
        assert L["predicted_mse"]["total"] < L["naive_mse"]["total"]
        assert 0 < L["mse_improvement_vs_naive"] < 1


def test_optimize_range_per_column_text(files, capsys):
    rc = main(["optimize", "range", "--model", str(files / "m.pt"), "--trust-model-file", "--inputs",
               str(files / "x.npy"), "--per-column", "--solver", "cvxpy"])
    out = capsys.readouterr().out
    assert rc == 0 and "per column" in out and "by term:" in out


@pytest.mark.parametrize("extra,msg", [
    (["--snr-db", "200"], "snr_db: 200 dB is not reachable"),
    (["--min-window", "1"], "device window too narrow"),
    (["--onoff-max", "0.5"], "--onoff-max: 0.5 is not allowed"),
    (["--slack", "-1"], "slack"),
])
def test_optimize_range_infeasible_one_line(files, capsys, extra, msg):
    rc = main(["optimize", "range", "--model", str(files / "m.pt"), "--trust-model-file", "--inputs",
               str(files / "x.npy"), "--solver", "fast", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err
    if msg not in ("--onoff-max: 0.5 is not allowed", "slack"):
        assert "binding limit" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_optimize_range_bad_inputs(files, capsys):
    rc = main(["optimize", "range", "--model", str(files / "m.pt"), "--trust-model-file", "--inputs",
               str(files / "bad.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and "--input" in err and "(7,)" in err and len(err.strip().splitlines()) == 1
    rc = main(["optimize", "range", "--model", str(files / "nope.pt"), "--inputs", str(files / "x.npy")])
    assert rc == 2 and "--model" in capsys.readouterr().err


def test_optimize_range_out_dir_and_hand_check(files, tmp_path, capsys):
    """--out writes range.json and range.png; the reported naive MSE is the column model's own."""
    rc = main(["optimize", "range", "--model", str(files / "m.pt"), "--trust-model-file", "--inputs",
               str(files / "x.npy"), "--solver", "fast", "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "range.json").read_text())
    assert (tmp_path / "range.png").stat().st_size > 1000 and doc["provenance"]["memcim_version"]
    for L in doc["layers"]:
        assert L["snr_db"] == pytest.approx(10 * np.log10(L["signal_power"] / L["predicted_mse"]["total"]))


def test_experiment_alias_runs_the_registered_entry(tmp_path, capsys, monkeypatch):
    # `memcim experiment NAME` is now `memcim paper run 003/NAME`: a fake entry shows the flags reach it
    from memcim import registry

    calls = {}

    def fake(*, chips=10, seed=0, sweep_bits=(2, 3)):
        calls.update(chips=chips, seed=seed, sweep_bits=sweep_bits)
        return {"value": 1.5}

    registry.keys()  # load the built-in entries first
    monkeypatch.setitem(registry.REGISTRY, "003/fake", registry.Entry("003/fake", fake, "test", paper="003",
                                                                      quick={"chips": 2}))
    assert main(["experiment", "fake", "--quick", "--param", "sweep_bits=3,4", "--out", str(tmp_path)]) == 0
    assert "paper run" in capsys.readouterr().err
    assert calls == {"chips": 2, "seed": 0, "sweep_bits": [3, 4]}
    doc = json.loads((tmp_path / "003_fake.json").read_text())
    assert doc["value"] == 1.5 and doc["provenance"]["seed"] == 0 and doc["run"]["quick"] is True
    assert main(["paper", "run", "003/fake", "--chips", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == 1.5 and calls["chips"] == 5


@pytest.mark.parametrize("argv,msg", [(["experiment", "nope"], "key: '003/nope' is not registered"),
                                      (["experiment", "convex-cim", "--chips", "0"], "--chips"),
                                      (["experiment", "convex-cim", "--param", "sweep_bits=x"], "sweep_bits")])
def test_experiment_bad_inputs(capsys, argv, msg):
    assert main(argv) == 2
    assert msg in capsys.readouterr().err
