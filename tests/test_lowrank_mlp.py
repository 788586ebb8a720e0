"""Per-layer low-rank budget study on a small MLP trained here on scikit-learn digits."""
import numpy as np
import pytest
import torch
from torch import nn

from memcim.experiments.lowrank_mlp import layer_second_moments, linear_layers, run_mlp


@pytest.fixture(scope="module")
def digits_mlp():
    from memcim.data.datasets import load_dataset

    ds = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ds.x), ds.y).backward()
        opt.step()
    return model.eval()


def test_second_moments_match_forward_hooks(digits_mlp):
    from memcim.data.datasets import load_dataset

    x = load_dataset("digits", "train", limit=100).x
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().double()))
             for m in linear_layers(digits_mlp)]
    with torch.no_grad():
        digits_mlp(x)
    for h in hooks:
        h.remove()
    Rs = layer_second_moments(digits_mlp, x)
    for R, h in zip(Rs, seen):
        np.testing.assert_allclose(R, (h.T @ h / h.shape[0]).numpy(), rtol=1e-5, atol=1e-8)


def test_noiseless_full_budget_recovers_clean_accuracy(digits_mlp):
    res = run_mlp(model=digits_mlp, dataset="digits", eta=0.0, budgets=(4.0,), trials=2, n_calib=200)
    row = res["rows"][0]
    assert res["clean_accuracy"] > 0.85
    # no noise: the optimizer keeps full rank (no truncation), so accuracy is the digital one
    assert [l["k"] for l in row["layers"]] == [32, 10]
    assert row["lowrank"]["mean"] == pytest.approx(res["clean_accuracy"])
    assert row["baseline"]["mean"] == pytest.approx(res["clean_accuracy"])


def test_noisy_study_runs_and_respects_budgets(digits_mlp):
    res = run_mlp(model=digits_mlp, dataset="digits", eta=0.5, budgets=(0.5, 1.0, 2.0), trials=3, n_calib=200)
    for row in res["rows"]:
        for layer in row["layers"]:
            n, m = layer["shape"]
            assert layer["devices"] <= row["budget_factor"] * n * m
        assert (row["baseline"] is None) == (row["budget_factor"] < 1)
        assert 0.0 <= row["lowrank"]["mean"] <= 1.0


@pytest.mark.parametrize("kw,match", [({"eta": -1.0}, "^eta: "), ({"budgets": (0.0,)}, "^budgets: "),
                                      ({"trials": 0}, "^trials: "), ({"budgets": (0.01,)}, "fits no low-rank")])
def test_bad_inputs(digits_mlp, kw, match):
    args = dict(model=digits_mlp, dataset="digits", n_calib=50, n_test=50, trials=1)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        run_mlp(**args)


def test_non_mlp_rejected():
    with pytest.raises(ValueError, match="model"):
        linear_layers(nn.Sequential(nn.Conv2d(1, 2, 3)))
