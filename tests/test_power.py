"""Power model (Eqs. 16-21) against direct power measured on sampled chips."""
import pytest
import torch
import torch.nn as nn

from memcim.analysis.memse_mc import monte_carlo
from memcim.analysis.power import predict_power


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_power_vs_sampled_chips(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        net = nn.Sequential(nn.Linear(10, 8), nn.Softplus(), nn.Linear(8, 4)).double()
        x = torch.rand(5, 10, dtype=torch.float64)
    else:
        net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2), nn.Flatten(),
                            nn.Linear(12, 3)).double()
        x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    kw = dict(sigma=0.05, gmax=[0.7, 1.3], levels=16, r=2.0)
    pred = predict_power(net, x, cov="exact", **kw)
    mc = monte_carlo(net, x, trials=4000, seed=3, power=True, **kw)
    for p, m in zip(pred["per_layer"], mc.power["per_layer"]):
        assert p["device_W"] == pytest.approx(m["device_W"], rel=0.01)
        assert p["tia_W"] == pytest.approx(m["tia_W"], rel=0.01)
    assert pred["total_W"] == pytest.approx(mc.power["total_W"], rel=0.01)


def test_first_layer_power_is_quadratic_in_c():
    """Eq. 21: the first layer sees deterministic inputs, so its power is c^2 H1 + c H2 + H3 with
    H independent of G_max; check against chips sampled at another G_max."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 5)).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    p1 = predict_power(net, x, sigma=0.1, gmax=1.0, levels=8)["per_layer"][0]
    wmax = float(net[0].weight.detach().abs().max())
    g = 2.5
    c = g / wmax
    mc = monte_carlo(net, x, sigma=0.1, gmax=g, levels=8, trials=4000, seed=2, power=True)
    assert c * c * p1["H1"] + c * p1["H2"] + p1["H3"] == pytest.approx(mc.power["total_W"], rel=0.01)


def test_bad_r():
    net = nn.Sequential(nn.Linear(3, 2)).double()
    with pytest.raises(ValueError, match="r"):
        predict_power(net, torch.rand(2, 3), sigma=0.1, gmax=1.0, r=0.0)
