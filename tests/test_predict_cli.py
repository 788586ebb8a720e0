"""``memcim predict mse|column|lowrank`` and ``memcim optimize gmax``: each number against an
independent truth (hand derivation, Monte Carlo with a tolerance from its sample size, a second
code path), and one-line errors for options that do not apply."""
import json

import numpy as np
import pytest
import torch
from _cli import run_cli
from torch import nn


def _run(capsys, argv):
    return run_cli(argv, capsys)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.Softplus(), nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 3))
    torch.save(net, d / "soft.pt")
    torch.save(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)), d / "relu.pt")
    np.save(d / "x.npy", torch.rand(6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).numpy())
    # one Linear layer whose weights sit exactly on memse levels (max|w| = 1, N = 4: steps of 0.25)
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.75, -1.0]]))
    torch.save(nn.Sequential(lin), d / "lin.pt")
    np.save(d / "xl.npy", np.array([[0.2, 0.5, 1.0], [1.0, 0.0, 0.3]]))
    rng = np.random.default_rng(0)
    np.save(d / "W.npy", rng.normal(size=(40, 6)))
    np.save(d / "X.npy", np.abs(rng.normal(size=(100, 40))))
    return d


def _base(files, model="soft.pt", data="x.npy"):
    return ["predict", "mse", "--model", str(files / model), "--trust-model-file", "--data", str(files / data)]


def test_predict_mse_power_by_hand(files, capsys):
    """E[P] of one differential layer on the memse config, derived by hand:
    device  v^2 sum_b sum_i x_bi^2 sum_j (E G+_ij + E G-_ij) / B  (v = 1 V, r = 1 Ohm),
    TIA     r sum_b sum_j [(v sum_i x_bi G_ij)^2 + v^2 sigma^2 sum_i x_bi^2] / B  (each bit line)."""
    sigma, N, gmax, gmin = 0.01, 4, 2.0, 0.1
    rc, out, err = _run(capsys, _base(files, "lin.pt", "xl.npy") + [
        "--set", f"device.prog_sigma_abs={sigma}", "--set", f"device.levels={N + 1}",
        "--set", f"device.g_min={gmin}", "--set", f"device.g_max={gmin + gmax}", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    W = np.array([[1.0, -0.5, 0.25], [0.0, 0.75, -1.0]]).T        # (in, out), on the levels already
    X = np.array([[0.2, 0.5, 1.0], [1.0, 0.0, 0.3]])
    c = gmax / 1.0
    gp, gm = gmin + c * np.clip(W, 0, None), gmin + c * np.clip(-W, 0, None)
    x2 = (X ** 2).sum(1)                                             # (B,)
    dev = np.mean((X ** 2) @ (gp + gm).sum(1))
    tia = np.mean([sum((X[b] @ g[:, j]) ** 2 + sigma ** 2 * x2[b] for g in (gp, gm) for j in range(2))
                   for b in range(2)])
    p = d["predicted"]["power"]
    assert p["device_W"] == pytest.approx(dev, rel=1e-6)          # the data are read as float32
    assert p["tia_W"] == pytest.approx(tia, rel=1e-6)
    # normalised units, with the documented factor to watts (realistic device: 1e-4 S at 0.2 V)
    pu = d["power_units"]
    assert pu["normalised"] and pu["to_watts"] == pytest.approx((1e-4 / (gmin + gmax)) * (0.2 / 1.0) ** 2)
    # the MSE by hand: weights on the levels, so only the noise: sum_i x_i^2 2 sigma^2 / c^2 per output
    assert d["predicted"]["mse_mean"] == pytest.approx(np.mean(x2) * 2 * sigma ** 2 / c ** 2, rel=1e-6)


def test_predict_mse_monte_carlo_and_physical_watts(files, capsys):
    chips = 200
    rc, out, err = _run(capsys, _base(files) + ["--set", "device.prog_sigma_abs=0.01", "--set", "device.levels=33",
                                                "--gmax-per-layer", "0.5,1,2", "--chips", str(chips), "--json"])
    assert rc == 0, err
    d = json.loads(out)
    pred, mc = d["predicted"], d["monte_carlo"]
    assert mc["chips"] == chips and len(pred["per_output"]) == 3
    # MSE: the closed form against the chips, within 4 standard errors plus the documented
    # 2nd-order Taylor error of softplus (a few %)
    assert abs(pred["mse_mean"] - mc["mse_mean"]) <= 4 * mc["mse_mean_stderr"] + 0.05 * mc["mse_mean"]
    assert abs(pred["power"]["total_W"] - mc["power"]["total_W"]) <= 4 * mc["power"]["total_W_stderr"] + 1e-9
    assert d["config"]["gmax_per_layer"] == [0.5, 1.0, 2.0] and d["provenance"]["seed"] == 0
    # a physical config prints watts
    rc, out, err = _run(capsys, _base(files) + ["--hw", "generic", "--set", "adc.fs_mode=max", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    assert d["power_units"]["units"] == "W" and 0 < d["predicted"]["power"]["total_W"] < 1e-2


def test_optimize_gmax_budget_is_predict_mse_power(files, capsys, tmp_path):
    """optimize gmax's power at the optimum equals what predict mse prints for the same G_max."""
    hw = ["--set", "device.prog_sigma_abs=0.01", "--set", "device.levels=33"]
    rc, out, err = _run(capsys, _base(files) + hw + ["--gmax-per-layer", "0.5,0.5,0.5", "--json"])
    assert rc == 0, err
    ref = json.loads(out)["predicted"]
    budget = ref["power"]["total_W"]
    rc, out, err = _run(capsys, ["optimize", "gmax", "--model", str(files / "soft.pt"), "--trust-model-file",
                                 "--data", str(files / "x.npy"), *hw, "--power-budget", repr(budget),
                                 "--gmax-bounds", "0.1,100", "--out", str(tmp_path), "--json"])
    assert rc == 0, err
    doc = json.loads(out)
    r = doc["results"]["structured"]
    assert r["feasible"] and r["objective_mse"] <= ref["mse_max"] * (1 + 1e-6)
    assert (tmp_path / "gmax.json").exists() and (tmp_path / "gmax.png").stat().st_size > 1000
    rc, out, err = _run(capsys, _base(files) + hw + ["--gmax-per-layer", ",".join(repr(g) for g in r["gmax"]),
                                                     "--json"])
    again = json.loads(out)["predicted"]
    assert again["power"]["total_W"] == pytest.approx(r["power_W"], rel=1e-6)
    assert again["mse_max"] == pytest.approx(r["objective_mse"], rel=1e-6)


def test_predict_column_vs_monte_carlo(files, capsys, tmp_path):
    chips = 400
    rc, out, err = _run(capsys, ["predict", "column", "--matrix", str(files / "W.npy"), "--inputs",
                                 str(files / "X.npy"), "--set", "adc.bits=12", "--chips", str(chips),
                                 "--out", str(tmp_path), "--json"])
    assert rc == 0, err
    d = json.loads(out)
    pred, mc = np.array(d["predicted"]["total"]), d["monte_carlo"]
    assert set(d["predicted"]["terms"]) >= {"prog_abs", "prog_rel", "thermal", "shot", "adc_quant", "dac"}
    # layer mean: within 4 standard errors of the chips (the model's documented limits stay below them)
    assert abs(pred.mean() - mc["layer_mean"]) <= 4 * mc["layer_mean_stderr"]
    se = np.array(mc["per_column_stderr"])
    assert np.all(np.abs(pred - np.array(mc["per_column"])) <= 4.5 * se)
    assert (tmp_path / "column.json").exists() and (tmp_path / "column.png").stat().st_size > 1000


@pytest.mark.parametrize("extra,model,match", [
    (["--taylor-order", "4"], "relu.pt", "--taylor-order: does not apply"),
    (["--act-method", "gh"], "relu.pt", "--act-method: does not apply"),
    (["--act-method", "gh", "--taylor-order", "4"], "soft.pt", "--taylor-order: does not apply with --act-method gh"),
    (["--act-method", "bogus"], "soft.pt", "--act-method"),
    (["--taylor-order", "3"], "soft.pt", "--taylor-order"),
    (["--gmax-per-layer", "1,2"], "soft.pt", "--gmax-per-layer: 2 value(s)"),
    (["--gmax-per-layer", "1,-2,1"], "soft.pt", "--gmax-per-layer"),
    (["--chips", "1"], "soft.pt", "--chips: 1 is not allowed"),
    (["--calib-samples", "10"], "soft.pt", "--calib-samples: does not apply"),
    (["--set", "device.nope=1"], "soft.pt", "--set"),
    (["--hw", "nope"], "soft.pt", "--hw"),
])
def test_predict_mse_bad_input_one_line(files, capsys, extra, model, match):
    rc, _out, err = _run(capsys, _base(files, model) + extra)
    err = err.strip().splitlines()
    err = [e for e in err if not e.startswith("data:")]
    assert rc == 2 and len(err) == 1 and match in err[0] and "Traceback" not in err[0]


def test_predict_column_and_optimize_gmax_bad_input(files, capsys):
    cases = [
        (["predict", "column", "--matrix", str(files / "nope.npy")], "--matrix"),
        (["predict", "column", "--matrix", str(files / "W.npy"), "--inputs", str(files / "x.npy")], "--inputs"),
        (["optimize", "gmax", "--model", str(files / "soft.pt"), "--trust-model-file", "--data",
          str(files / "x.npy"), "--hw", "generic", "--power-budget", "1"], "--hw: device.prog_sigma_rel"),
        (["optimize", "gmax", "--model", str(files / "soft.pt"), "--trust-model-file", "--data",
          str(files / "x.npy"), "--power-budget", "-1"], "--power-budget"),
    ]
    for argv, match in cases:
        rc, _out, err = _run(capsys, argv)
        lines = [e for e in err.strip().splitlines() if not e.startswith("data:")]
        assert rc == 2 and len(lines) == 1 and match in lines[0], (argv, err)
