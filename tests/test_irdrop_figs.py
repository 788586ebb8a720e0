"""Paper 002 figure reproductions (Fig. 4, 7, 9a) on tiny settings: CLI, JSON summaries and sanity truths."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from memcim.cli import main
from memcim.data.datasets import load_dataset
from memcim.experiments import irdrop_figs as F
from memcim.hardware.circuit import Wires


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    """A small 64-48-10 ReLU MLP for the 8x8 digits: random ReLU features, output layer by ridge
    regression onto one-hot labels (numpy, no training loop), saved with torch.save."""
    rng = np.random.default_rng(0)
    tr = load_dataset("digits", "train")
    X, y = tr.x.reshape(len(tr.y), -1).double().numpy(), tr.y.numpy()
    W1, b1 = rng.normal(0, 0.5, (64, 48)), rng.normal(0, 0.5, 48)
    H = np.maximum(X @ W1 + b1, 0)
    Ha = np.hstack([H, np.ones((len(y), 1))])
    W2 = np.linalg.solve(Ha.T @ Ha + 1e-2 * np.eye(49), Ha.T @ np.eye(10)[y])
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(W1.T)); net[1].bias.copy_(torch.tensor(b1))
        net[3].weight.copy_(torch.tensor(W2[:-1].T)); net[3].bias.copy_(torch.tensor(W2[-1]))
    path = tmp_path_factory.mktemp("model") / "digits_mlp.pt"
    torch.save(net.eval(), path)
    return net.eval(), path


def _software_accuracy(net, n):
    te = load_dataset("digits", "test", limit=n)
    with torch.no_grad():
        return float((net(te.x).argmax(1) == te.y).double().mean())


def test_fig9a_tiny_wires_every_mapping_equals_software(digits_mlp, tmp_path):
    # With (almost) no parasitic resistance, continuous conductances and no DAC/ADC, the crossbar
    # computes x W exactly, so every mapping must classify like the torch model (independent truth).
    net, _ = digits_mlp
    n = 120
    res = F.fig9a(tmp_path, model=net, dataset="digits", n_images=n, tile=16, io_bits=(None,), prog_bits=None,
                  wires=Wires(r_wire=1e-7, r_in=1e-7, r_out=1e-7), n_calib=100, rep_kw=F.QUICK_REPRESENTABLE)
    soft = _software_accuracy(net, n)
    assert soft > 0.8  # the test model is meaningful
    s = res["summary"]
    assert s["accuracy_software"] == pytest.approx(soft, abs=1e-12)
    for m in ("linear", "dpe", "representable"):
        assert abs(s[f"accuracy_{m}"] - soft) <= 1.0 / n + 1e-12, m
        assert s[f"mean_tile_relative_error_{m}"] < 1e-4, m
    assert (tmp_path / "fig9a.png").stat().st_size > 0


def test_fig9a_cli_real_wires(digits_mlp, tmp_path, capsys):
    _, path = digits_mlp
    rc = main(["irdrop-fig", "fig9a", "--quick", "--model", str(path), "--dataset", "digits", "--images", "100",
               "--tile", "16", "--seed", "3", "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    d = json.loads((tmp_path / "fig9a.json").read_text())
    assert out["summary"] == pytest.approx(d["summary"])
    s = d["summary"]
    for k in ("accuracy_software", "accuracy_representable", "accuracy_dpe", "accuracy_linear"):
        assert 0.0 <= s[k] <= 1.0
    assert d["provenance"]["seed"] == 3 and d["config"]["tile"] == 16
    assert {r["io_bits"] for r in d["rows"]} == {4, 6, 8, None}
    # with 1/100/100 Ohm parasitics the wire-aware mappings realize the tiles better than the ideal one
    assert s["mean_tile_relative_error_representable"] <= s["mean_tile_relative_error_dpe"] \
        < s["mean_tile_relative_error_linear"]


def test_fig4_cli(tmp_path, capsys):
    rc = main(["irdrop-fig", "fig4", "--quick", "--size", "8", "--out", str(tmp_path), "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert s["error_ratio_dpe_over_representable"] >= 1.0
    d = json.loads((tmp_path / "fig4.json").read_text())
    rows = d["rows"]
    # precision error ~ (quantization step / alpha)^2 falls as alpha grows: smallest alpha worst
    assert rows[0]["precision_error"] > rows[-1]["precision_error"]
    # the swept minimum is at least as good as the linear mapping's (which ignores the wires)
    assert s["total_error_best_swept"] < s["total_error_linear"]
    assert (tmp_path / "fig4.png").is_file()


def test_fig7_tiny(tmp_path):
    res = F.fig7(tmp_path, sizes=(8, 16), r_wires=(0.5, 2.0), r_wire_size=8, device_size=4, n_matrices=1,
                 n_inputs=20, n_inputs_device=2, seed=1, per_weight=(1, 2), per_weight_size=8)
    s = res["summary"]
    assert "error_ratio_dpe_over_representable" in s and s["largest_size"] == 16
    for n in ("8", "16"):
        t = res["table"]["size"][n]
        assert t["representable"] <= t["dpe"] < t["linear"]
    # linear mapping ignores the wires: its error grows with the wire resistance
    assert res["table"]["r_wire"]["2.0"]["linear"] > res["table"]["r_wire"]["0.5"]["linear"]
    assert json.loads((tmp_path / "fig7.json").read_text())["provenance"]["seed"] == 1


def test_fig10a_cli(digits_mlp, tmp_path, capsys):
    _, path = digits_mlp
    rc = main(["irdrop-fig", "fig10a", "--quick", "--model", str(path), "--dataset", "digits", "--images", "100",
               "--tile", "32", "--out", str(tmp_path), "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    for k in ("accuracy_dpe_no_rtn", "accuracy_representable_no_rtn", "accuracy_representable_max_rtn"):
        assert 0.0 <= s[k] <= 1.0
    assert s["max_amplitude"] == pytest.approx(0.2)


def test_rtn_statistics():
    # half of the cells drop by the amplitude: mean of g'/g = 1 - amplitude/2 (binomial, 5 standard errors)
    g = np.full(40000, 1e-4)
    r = F.rtn_conductances(g, 0.2, np.random.default_rng(0)) / g
    assert set(np.round(np.unique(r), 12)) == {0.8, 1.0}
    assert abs(r.mean() - 0.9) < 5 * 0.1 / np.sqrt(g.size)


@pytest.mark.parametrize("argv, word", [
    (["irdrop-fig", "fig5"], "figure"),
    (["irdrop-fig", "fig9a", "--images", "0"], "--images"),
    (["irdrop-fig", "fig4", "--r-wire", "-1"], "r_wire"),
    (["irdrop-fig", "fig9a", "--tile", "1"], "--tile"),
])
def test_bad_input(argv, word, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert word in capsys.readouterr().err


def test_tiled_forward_matches_matmul():
    # the tile decomposition with float DAC/ADC is the plain product (hand truth: block matrix algebra)
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(37, 11)), rng.normal(size=11)
    x = rng.uniform(0, 1, (5, 37))
    tiles = [[(r0, c0, B) for r0, c0, B in F._tile_blocks(W, 8)]]
    y = F.mlp_forward(x, [(W, b)], tiles, None, [(1.0, 1.0)])
    assert np.allclose(y, x @ W + b)
