"""G_max optimizer: structured solver vs the GA and vs brute force; CLI; bad inputs."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from memcim.optimize.gmax import GmaxProblem, optimize_gmax


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.Softplus(), nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 3)).double()


def _x():
    return torch.rand(6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _budget(net, x):
    from memcim.analysis.moments import predict_mse

    return predict_mse(net, x, sigma=0.01, gmax=0.5, levels=32).power["total_W"]


def test_network_granularity_matches_brute_force():
    net, x = _net(), _x()
    v = _budget(net, x)
    res = optimize_gmax(net, x, sigma=0.01, power_budget=v, levels=32, granularity="network")
    prob = GmaxProblem(net, x, sigma=0.01, levels=32, granularity="network")
    grid = np.linspace(np.log(prob.bounds[0]), np.log(prob.bounds[1]), 400)
    vals = [prob.evaluate([u]) for u in grid]
    best = min(o for o, p in vals if p <= v)
    assert res.feasible and res.power_W <= v * (1 + 1e-6)
    assert res.objective <= best * (1 + 1e-3)


@pytest.mark.parametrize("objective", ["max", "mean"])
def test_structured_is_no_worse_than_ga(objective):
    net, x = _net(), _x()
    v = _budget(net, x)
    s = optimize_gmax(net, x, sigma=0.01, power_budget=v, levels=32, granularity="layer", objective=objective)
    g = optimize_gmax(net, x, sigma=0.01, power_budget=v, levels=32, granularity="layer", objective=objective,
                      method="ga", pop_size=20, n_gen=25, seed=0)
    assert s.feasible and g.feasible
    assert s.objective <= g.objective * (1 + 1e-3)
    # the per-layer optimum is no worse than the network-level one
    n = optimize_gmax(net, x, sigma=0.01, power_budget=v, levels=32, granularity="network", objective=objective)
    assert s.objective <= n.objective * (1 + 1e-9)


def test_column_granularity_is_feasible_and_no_worse_than_layer():
    net, x = _net(), _x()
    v = _budget(net, x)
    lay = optimize_gmax(net, x, sigma=0.01, power_budget=v, levels=32, granularity="layer")
    col = optimize_gmax(net, x, sigma=0.01, power_budget=v, levels=32, granularity="column")
    assert col.feasible and col.objective <= lay.objective * (1 + 1e-6)
    assert [len(g) for g in col.gmax] == [6, 5, 3]


def test_bad_inputs():
    net, x = _net(), _x()
    with pytest.raises(ValueError, match="granularity"):
        optimize_gmax(net, x, sigma=0.01, power_budget=1.0, granularity="tile")
    with pytest.raises(ValueError, match="power_budget"):
        optimize_gmax(net, x, sigma=0.01, power_budget=-1.0)
    with pytest.raises(ValueError, match="power_budget"):
        optimize_gmax(net, x, sigma=0.01, power_budget=1e-30)
    with pytest.raises(ValueError, match="sigma"):
        optimize_gmax(net, x, sigma=0.0, power_budget=1.0)
    with pytest.raises(ValueError, match="method"):
        optimize_gmax(net, x, sigma=0.01, power_budget=1.0, method="anneal")
    with pytest.raises(ValueError, match="objective"):
        optimize_gmax(net, x, sigma=0.01, power_budget=1.0, objective="median")


def _files(tmp_path):
    net = _net().float()
    mp = tmp_path / "m.pt"
    torch.save(net, mp)
    xp = tmp_path / "x.npy"
    np.save(xp, _x().numpy())
    return str(mp), str(xp)


def test_cli_mse_and_optimize(tmp_path, capsys):
    from memcim.cli import main

    mp, xp = _files(tmp_path)
    hw = ["--set", "device.prog_sigma_abs=0.01", "--set", "device.levels=33"]       # N = 32
    base = ["predict", "mse", "--model", mp, "--trust-model-file", "--data", xp, *hw]
    rc = main([*base, "--gmax-per-layer", "0.5,0.5,0.5", "--chips", "50", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["predicted"]) >= {"mse_mean", "mse_max", "per_output", "power", "wall_s"}
    assert out["monte_carlo"]["chips"] == 50 and len(out["predicted"]["per_output"]) == 3
    # the power measured on every chip (energy model on its conductances) against the expectation
    mc = out["monte_carlo"]["power"]
    assert abs(mc["total_W"] - out["predicted"]["power"]["total_W"]) <= 4 * mc["total_W_stderr"] + 1e-9
    rc = main([*base, "--gmax-per-layer", "0.5,1,2", "--json"])
    assert rc == 0
    capsys.readouterr()
    budget = out["predicted"]["power"]["total_W"]
    rc = main(["optimize", "gmax", "--model", mp, "--trust-model-file", "--data", xp, *hw, "--power-budget",
               repr(budget), "--gmax-bounds", "0.1,100", "--granularity", "layer", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)["results"]["structured"]
    assert res["feasible"] and res["objective_mse"] <= out["predicted"]["mse_max"] * (1 + 1e-6)


def test_cli_errors(tmp_path, capsys):
    from memcim.cli import main

    mp, xp = _files(tmp_path)
    bad = tmp_path / "bad.pt"
    torch.save(nn.Sequential(nn.Linear(8, 4), nn.GELU()), bad)
    mse = ["predict", "mse", "--trust-model-file"]
    cases = [
        ([*mse, "--model", str(bad), "--data", xp], "GELU"),
        ([*mse, "--model", mp, "--data", xp, "--gmax-per-layer", "1,2"], "--gmax-per-layer"),
        ([*mse, "--model", mp, "--data", xp, "--set", "device.prog_sigma_abs=-1"], "--set"),
        ([*mse, "--model", mp, "--data", str(tmp_path / "nope.npy")], "--data"),
        ([*mse, "--model", mp, "--data", xp, "--chips", "1"], "--chips"),
        (["optimize", "gmax", "--model", mp, "--trust-model-file", "--data", xp, "--power-budget", "1",
          "--granularity", "chip"], "--granularity"),
        (["paper", "run", "001/fig9", "--out", str(tmp_path)], "key"),
        (["paper", "run", "001/fig4", "--hw", "irdrop"], "--hw"),
    ]
    for argv, word in cases:
        try:
            rc = main(argv)
        except SystemExit as e:          # argparse's own one-line errors (invalid choice) exit
            rc = e.code
        assert rc == 2, argv
        err = "\n".join(e for e in capsys.readouterr().err.strip().splitlines() if not e.startswith("data:"))
        assert word in err and len(err.splitlines()) == 1, err


def _mnist_mlp_file(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 12), nn.Softplus(), nn.Linear(12, 10))
    p = tmp_path / "tiny.pt"
    torch.save(net, p)
    return str(p)


def test_fig4_front_is_feasible_and_structured_beats_ga(tmp_path):
    from memcim.experiments.memse_figs import fig4

    from memcim import registry

    res = registry.run("001/fig4", quick=True, out=tmp_path, model=_mnist_mlp_file(tmp_path))
    saved = json.loads((tmp_path / "001_fig4.json").read_text())
    assert saved["complete"] and saved["run"]["complete"] and (tmp_path / "001_fig4.png").is_file()
    rows = res["rows"]
    st = {(r["granularity"], r["budget_W"]): r for r in rows if r["method"] == "structured"}
    assert len(st) == 2 * 3 and all(r["feasible"] and r["power_W"] <= r["budget_W"] * (1 + 1e-6) for r in st.values())
    for r in rows:
        if r["method"] == "ga" and r["feasible"]:
            assert st[(r["granularity"], r["budget_W"])]["objective_mse"] <= r["objective_mse"] * (1 + 1e-3)
    for (gran, b), r in st.items():
        if gran == "layer":
            assert r["objective_mse"] <= st[("network", b)]["objective_mse"] * (1 + 1e-9)
    # the front falls as the budget grows
    net_front = [st[("network", b)]["objective_mse"] for b in sorted(b for g, b in st if g == "network")]
    assert all(a >= b for a, b in zip(net_front, net_front[1:]))


def test_fig4_interrupted_keeps_finished_rows(tmp_path, monkeypatch):
    import memcim.optimize.gmax as gm
    from memcim.experiments.memse_figs import fig4

    real, calls = gm.optimize_gmax, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gm, "optimize_gmax", flaky)
    saved = []  # the library writes nothing: the checkpoint callback gets each partial result
    with pytest.raises(KeyboardInterrupt):
        fig4(model=_mnist_mlp_file(tmp_path), n_budgets=3, pop_size=8, n_gen=6, mc_trials=10, n_inputs=8,
             granularities=("network", "layer"), checkpoint=saved.append)
    assert not list(tmp_path.glob("*.json"))
    assert [len(s["rows"]) for s in saved] == [1, 2] and saved[-1]["complete"] is False
