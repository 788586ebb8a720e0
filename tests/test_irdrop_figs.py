"""Paper 002 figure reproductions (Fig. 4, 7, 9a, 9b, 10a) on tiny settings, against independent truths."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from memcim.cli import main
from memcim.config import preset
from memcim.data.datasets import load_dataset
from memcim.experiments import irdrop_figs as F
from memcim.mapping.crossbar import map_matrix
from memcim.simulate import program

TINY_WIRES = {"wires.r_wire": 1e-7, "wires.r_in": 1e-7, "wires.r_out": 1e-7}


def _ridge_head(H, y, lam=1e-2):
    Ha = np.hstack([H, np.ones((len(y), 1))])
    return np.linalg.solve(Ha.T @ Ha + lam * np.eye(Ha.shape[1]), Ha.T @ np.eye(10)[y])


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    """A small 64-48-10 ReLU MLP for the 8x8 digits: random ReLU features, output layer by ridge
    regression onto one-hot labels (numpy, no training loop), saved with torch.save."""
    rng = np.random.default_rng(0)
    tr = load_dataset("digits", "train")
    X, y = tr.x.reshape(len(tr.y), -1).double().numpy(), tr.y.numpy()
    W1, b1 = rng.normal(0, 0.5, (64, 48)), rng.normal(0, 0.5, 48)
    W2 = _ridge_head(np.maximum(X @ W1 + b1, 0), y)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(W1.T)); net[1].bias.copy_(torch.tensor(b1))
        net[3].weight.copy_(torch.tensor(W2[:-1].T)); net[3].bias.copy_(torch.tensor(W2[-1]))
    path = tmp_path_factory.mktemp("model") / "digits_mlp.pt"
    torch.save(net.eval(), path)
    return net.eval(), path


@pytest.fixture(scope="module")
def digits_cnn():
    """A small CNN for the digits (conv 1->4, ReLU, 2x2 average pool, linear head by ridge regression)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    body = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
    tr = load_dataset("digits", "train")
    with torch.no_grad():
        H = body(tr.x.float()).double().numpy()
    W = _ridge_head(H, tr.y.numpy())
    head = nn.Linear(H.shape[1], 10)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(W[:-1].T)); head.bias.copy_(torch.tensor(W[-1]))
    return nn.Sequential(*body, head).eval()


def _software_accuracy(net, n):
    te = load_dataset("digits", "test", limit=n)
    with torch.no_grad():
        return float((net(te.x.float()).argmax(1) == te.y).double().mean())


def _small_hw(**settings):
    return preset("irdrop").set({"array.rows": 16, "array.cols": 16, **settings})


def test_fig9a_tiny_wires_every_mapping_equals_software(digits_mlp, tmp_path):
    # With (almost) no parasitic resistance, continuous conductances and no DAC/ADC, the circuit-level
    # network computes x W exactly, so every mapping must classify like the torch model (independent truth).
    net, _ = digits_mlp
    n = 120
    hw = _small_hw(**TINY_WIRES).without("quantization")
    res = F.fig9a(model=net, dataset="digits", n_images=n, n_calib=50, io_bits=(None,), hw=hw,
                  rep_settings=F.QUICK_REPRESENTABLE)
    assert not list(tmp_path.iterdir())  # the library writes nothing
    F.plot_bits(res, tmp_path / "fig9a.png")
    soft = _software_accuracy(net, n)
    assert soft > 0.8  # the test model is meaningful
    s = res["summary"]
    assert s["accuracy_software"] == pytest.approx(soft, abs=1e-6)
    assert abs(res["rows"][0]["software"] - soft) <= 1.0 / n + 1e-6
    for m in ("linear", "dpe", "representable"):
        assert abs(s[f"accuracy_{m}_float"] - soft) <= 1.0 / n + 1e-6, m
        assert s[f"mean_tile_relative_error_{m}"] < 1e-4, m
    assert s["n_tiles"] == 4 * 3 + 3 * 1  # 64x48 on 16x16 arrays, then 48x10
    assert (tmp_path / "fig9a.png").stat().st_size > 0


def test_circuit_network_tends_to_ideal_wire_network(digits_mlp):
    # r_wire, r_in, r_out -> 0: the circuit reader's network outputs tend to the ideal-wire reader's
    # (same device levels, same 8-bit converters); the difference scales with the resistance.
    from memcim.nn.analog import convert_to_analog, program as program_model
    from memcim.nn.train import predict

    net, _ = digits_mlp
    x = load_dataset("digits", "test", limit=40).x.float()
    calib = load_dataset("digits", "train", limit=30).x.float()
    hw = _small_hw(**{"mapping.method": "linear", "adc.fs_mode": "max"})
    ideal = program_model(convert_to_analog(net, hw.without("wires"), calib_data=calib), 0, dtype=torch.float64)
    y_ideal = predict(ideal, x).double()
    diffs = []
    for r in (1e-6, 1e-3):
        hw_r = hw.set({"wires.r_wire": r, "wires.r_in": r, "wires.r_out": r})
        circ = program_model(convert_to_analog(net, hw_r, calib_data=calib), 0, dtype=torch.float64)
        diffs.append(float((predict(circ, x).double() - y_ideal).abs().max()))
    scale = float(y_ideal.abs().max())
    assert diffs[0] < 1e-4 * scale  # float32 model boundary; one ADC code would be ~1e-2
    assert diffs[1] >= diffs[0]


def test_fig9a_accuracy_by_hand_from_realized(digits_mlp, tmp_path):
    # Independent path: map each layer with map_matrix, take plan.realized() (IR drop included) and run
    # the MLP in numpy; with the converters off the chip's network must classify the same way.
    net, _ = digits_mlp
    n = 100
    hw = _small_hw()
    res = F.fig9a(model=net, dataset="digits", n_images=n, n_calib=50, io_bits=(None,), hw=hw,
                  rep_settings=F.QUICK_REPRESENTABLE)
    te = load_dataset("digits", "test", limit=n)
    x = te.x.reshape(n, -1).double().numpy()
    lin = [m for m in net if isinstance(m, nn.Linear)]
    for m in ("linear", "dpe", "representable"):
        hw_m = hw.set("mapping.method", m)
        if m == "representable":
            hw_m = hw_m.set(F.QUICK_REPRESENTABLE)
        h = x
        for i, layer in enumerate(lin):
            W = layer.weight.detach().double().numpy().T
            Wr = map_matrix(W, hw_m).realized().numpy()
            h = h @ Wr + layer.bias.detach().double().numpy()
            if i < len(lin) - 1:
                h = np.maximum(h, 0)
        acc = float(np.mean(h.argmax(1) == te.y.numpy()))
        assert abs(res["summary"][f"accuracy_{m}_float"] - acc) <= 1.0 / n + 1e-6, m
    s = res["summary"]
    # with 1/100/100 Ohm parasitics the wire-aware mappings realize the tiles better than the ideal one
    assert s["mean_tile_relative_error_representable"] <= s["mean_tile_relative_error_dpe"] \
        < s["mean_tile_relative_error_linear"]


def test_reread_equals_fresh_mapping(digits_mlp):
    # The bits sweep reads the programmed chips under other converters instead of mapping again. With a
    # full scale that does not depend on the DAC ("max"), that must equal a fresh mapping at those bits.
    from memcim.nn.analog import convert_to_analog, program as program_model
    from memcim.nn.train import predict

    net, _ = digits_mlp
    x = load_dataset("digits", "test", limit=50).x.float()
    calib = load_dataset("digits", "train", limit=30).x.float()
    hw = _small_hw(**{"mapping.method": "dpe", "adc.fs_mode": "max"})
    reused = F._analog_model(net, hw, calib, 0, False, "")
    predict(reused, x)  # solve the circuits under the mapping's hardware first
    hw6 = hw.set({"dac.bits": 6, "adc.bits": 6})
    F._reread(reused, hw6)
    fresh = program_model(convert_to_analog(net, hw6, calib_data=calib), 0, dtype=torch.float64)
    assert torch.equal(predict(reused, x), predict(fresh, x))
    with pytest.raises(ValueError, match="wires section differs"):
        F._reread(reused, hw.set("wires.r_wire", 2.0))


def test_rtn_mean_effect_matches_closed_form():
    # Each device sits at g (1 - A) with probability p: E[G+ - G-] = (1 - p A)(G+ - G-), so the mean
    # output over reads is (1 - p A) x W (ideal wires, converters off; 5 standard errors).
    A, p = 0.2, 0.3
    rng = np.random.default_rng(0)
    W, x = rng.uniform(-1, 1, (24, 8)), rng.uniform(0, 1, (3, 24))
    hw = preset("irdrop").without("wires", "dac", "adc", "quantization").set(
        {"device.rtn_amplitude": A, "device.rtn_probability": p})
    chip = program(map_matrix(W, hw), seed=0, dtype=torch.float64)
    ys = torch.stack([chip.mvm(x)[0] for _ in range(400)]).numpy()
    se = ys.std(0, ddof=1) / np.sqrt(len(ys))
    assert np.all(np.abs(ys.mean(0) - (1 - p * A) * x @ W) < 5 * se + 1e-12)
    assert ys.std(0).min() > 0  # the snapshots differ between reads


def test_fig9b_cnn_tiny_wires_equals_software(digits_cnn, tmp_path):
    # the CNN counterpart: Conv2d layers at circuit level; with tiny wires every mapping equals software
    n = 80
    hw = _small_hw(**TINY_WIRES).without("quantization")
    res = F.fig9b(model=digits_cnn, dataset="digits", n_images=n, n_calib=30, io_bits=(8, None), hw=hw,
                  rep_settings=F.QUICK_REPRESENTABLE)
    F.plot_bits(res, tmp_path / "fig9b.png")
    soft = _software_accuracy(digits_cnn, n)
    assert soft > 0.6
    s = res["summary"]
    for m in ("linear", "dpe", "representable"):
        assert abs(s[f"accuracy_{m}_float"] - soft) <= 1.0 / n + 1e-6, m
    assert {r["io_bits"] for r in res["rows"]} == {8, None}
    assert (tmp_path / "fig9b.png").is_file()


def test_fig9a_cli_real_wires(digits_mlp, tmp_path, capsys):
    _, path = digits_mlp
    rc = main(["paper", "run", "002/fig9a", "--quick", "--model", str(path), "--data", "digits:test:60",
               "--set", "array.rows=16", "--set", "array.cols=16", "--seed", "3", "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    d = json.loads((tmp_path / "002_fig9a.json").read_text())
    assert out["summary"] == pytest.approx(d["summary"])
    assert (tmp_path / "002_fig9a.png").stat().st_size > 0
    assert d["run"]["quick"] is True and d["run"]["params"]["n_images"] == 60 and d["config"]["n_images"] == 60
    s = d["summary"]
    for k in ("accuracy_software", "accuracy_representable", "accuracy_dpe", "accuracy_linear"):
        assert 0.0 <= s[k] <= 1.0
    assert d["provenance"]["seed"] == 3 and d["config"]["hardware"]["array"]["rows"] == 16
    assert {r["io_bits"] for r in d["rows"]} == {4, 6, 8, None}


def test_fig4_cli(tmp_path, capsys):
    rc = main(["paper", "run", "002/fig4", "--quick", "--param", "size=8", "--out", str(tmp_path), "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert s["error_ratio_dpe_over_representable"] >= 1.0
    d = json.loads((tmp_path / "002_fig4.json").read_text())
    assert d["config"]["n_alpha"] == 6 and d["config"]["size"] == 8  # quick n_alpha, --param size
    rows = d["rows"]
    # precision error ~ (quantization step / alpha)^2 falls as alpha grows: smallest alpha worst
    assert rows[0]["precision_error"] > rows[-1]["precision_error"]
    # value-range error (continuous conductances) grows once alpha asks for more than g_max allows
    assert rows[-1]["value_range_error"] > rows[0]["value_range_error"]
    # the swept minimum is at least as good as the linear mapping's (which ignores the wires)
    assert s["total_error_best_swept"] < s["total_error_linear"]
    assert d["config"]["hardware"]["device"]["g_max"] == pytest.approx(1 / 2e3)
    assert (tmp_path / "002_fig4.png").is_file()


def test_fig7_tiny(tmp_path):
    res = F.fig7(sizes=(8, 16), r_wires=(0.5, 2.0), r_wire_size=8, device_size=4, n_matrices=1,
                 n_inputs=20, n_inputs_device=2, seed=1, per_weight=(1, 2), per_weight_size=8)
    s = res["summary"]
    assert "error_ratio_dpe_over_representable" in s and s["largest_size"] == 16
    for n in ("8", "16"):
        t = res["table"]["size"][n]
        assert t["representable"] <= t["dpe"] < t["linear"]
    # linear mapping ignores the wires: its error grows with the wire resistance
    assert res["table"]["r_wire"]["2.0"]["linear"] > res["table"]["r_wire"]["0.5"]["linear"]
    assert set(res["table"]["device"]) == {"ideal", "taox", "1t1r"}
    assert res["provenance"]["seed"] == 1
    F.plot_fig7(json.loads(json.dumps(res)), tmp_path / "fig7.png")  # draws from the JSON form too
    assert (tmp_path / "fig7.png").stat().st_size > 0


def test_fig10a_cli(digits_mlp, tmp_path, capsys):
    _, path = digits_mlp
    rc = main(["paper", "run", "002/fig10a", "--quick", "--model", str(path), "--data", "digits:60",
               "--set", "array.rows=32", "--set", "array.cols=32", "--out", str(tmp_path), "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    for k in ("accuracy_dpe_no_rtn", "accuracy_representable_no_rtn", "accuracy_representable_max_rtn"):
        assert 0.0 <= s[k] <= 1.0
    assert s["max_amplitude"] == pytest.approx(0.2)
    d = json.loads((tmp_path / "002_fig10a.json").read_text())
    assert d["config"]["hardware"]["adc"]["bits"] == 8
    # error bars: one draw of 60 images -> the binomial standard error sqrt(p (1 - p) / 60)
    for m in ("dpe", "representable"):
        for p in d["curves"][m]:
            assert p["stderr"] == pytest.approx(np.sqrt(p["mean"] * (1 - p["mean"]) / 60))
    assert (tmp_path / "002_fig10a.png").is_file()


def test_evaluate_cli_irdrop_method_and_overrides(digits_mlp, tmp_path, capsys):
    _, path = digits_mlp
    rc = main(["evaluate", "--model", str(path), "--data", "digits:test:40", "--hw", "irdrop", "--method", "dpe",
               "--set", "array.rows=16", "--set", "array.cols=16", "--set", "adc.bits=6", "--chips", "1",
               "--calib-samples", "20", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    cfg = d["results"][0]["config"]
    assert cfg["mapping"]["method"] == "dpe" and cfg["adc"]["bits"] == 6 and cfg["array"]["rows"] == 16
    assert 0.0 <= d["results"][0]["accuracy"]["mean"] <= 1.0


@pytest.mark.parametrize("argv, word", [
    (["paper", "run", "002/fig5"], "key"),
    (["paper", "run", "002/fig9a", "--data", "mnist:0"], "--data"),
    (["paper", "run", "002/fig4", "--set", "wires.r_wire=-1"], "--set"),
    (["paper", "run", "002/fig4", "--param", "size=1"], "size"),
    (["paper", "run", "002/fig9b", "--seed", "-1"], "--seed"),
    (["paper", "run", "002/fig4", "--chips", "3"], "--chips"),
    (["paper", "run", "002/fig4", "--param", "nope=3"], "nope"),
])
def test_bad_input(argv, word, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert word in capsys.readouterr().err


@pytest.mark.parametrize("argv, word", [
    (["--set", "adc.bits"], "--set"),
    (["--set", "adc.nonsense=3"], "--set"),
    (["--method", "magic"], "--method"),
    (["--hw", "generic", "--method", "dpe"], "--method"),
])
def test_evaluate_bad_overrides(argv, word, digits_mlp, capsys):
    _, path = digits_mlp
    rc = main(["evaluate", "--model", str(path), "--data", "digits:10", "--chips", "1"] + argv)
    assert rc == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err
