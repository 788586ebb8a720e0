"""Closed form on module graphs (memcim.analysis.graph via predict) against the simulator's Monte Carlo.

Truth: the analog twin of each model (``convert_to_analog`` + ``program``, one chip per seed, every
crossbar matrix read through ``ProgrammedChip.mvm``; grouped convolutions one matrix per group, the
attention projections token by token), with the same calibration data on both sides. Inputs: real
MNIST test images (average-pooled to 14x14 for the small models). Models: one small model per new
layer type, trained briefly on MNIST (150 Adam steps, seed 0), 8 test images, 64 chips, and (slow) the shipped
mnist-resnet-small and mnist-vit-tiny.

Hardware: the generic preset without stuck devices (a 0.01 % stuck device makes the per-chip MSE
heavy-tailed, so a 100-chip mean is not normal; test_predict_network.py covers stuck devices).

Tolerance per comparison: the Monte Carlo standard error times the Bonferroni-corrected normal
quantile (all comparisons of this module), plus the closed form's own approximation budget
``MODEL_REL`` (Gaussian partial sums and activations, Stein's lemma, the low-rank covariance, the
delta method of LayerNorm/softmax, Clark's max). Measured (docs/predict_graph.md): low-rank
predictions within -18 %..+5 % of the Monte Carlo MSE, exact mode within 1 %.
"""
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from memcim.analysis.predict import predict
from memcim.config import preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _agreement_mc import network_mc, z_bonferroni  # noqa: E402

TRIALS = 64
SEED = 11
MODEL_REL = 0.20          # low-rank covariance (residual branches lose off-diagonal residual terms)
EXACT_REL = 0.05


class Residual(nn.Module):
    """conv-BN-ReLU stem, a residual block conv-BN-ReLU-conv-BN + identity, ReLU, AvgPool, Linear."""

    def __init__(self, c=4, side=14):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(c * (side // 2) ** 2, 10)

    def forward(self, x):
        h = self.stem(x)
        y = self.b2(self.c2(F.relu(self.b1(self.c1(h)))))
        return self.fc(self.pool(F.relu(y + h)).flatten(1))


class ConcatMaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 3, 5, padding=2)
        self.mp, self.fc = nn.MaxPool2d(2), nn.Linear(6 * 49, 10)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], 1)
        return self.fc(self.mp(h).flatten(1))


class NormMLP(nn.Module):
    """Linear-LayerNorm-GELU-Linear-SiLU-Linear-Softmax."""

    def __init__(self):
        super().__init__()
        self.l1, self.ln, self.act = nn.Linear(196, 32), nn.LayerNorm(32), nn.GELU()
        self.l2, self.act2, self.l3, self.sm = nn.Linear(32, 16), nn.SiLU(), nn.Linear(16, 10), nn.Softmax(-1)

    def forward(self, x):
        return self.sm(self.l3(self.act2(self.l2(self.act(self.ln(self.l1(x.flatten(1))))))))


class Depthwise(nn.Module):
    """Depthwise (dilated) -BN-ReLU, pointwise, grouped reflect-padded conv, adaptive average pool."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(1, 4, 3, padding=1)
        self.dw, self.bn = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4), nn.BatchNorm2d(4)
        self.pw = nn.Conv2d(4, 8, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2, padding_mode="reflect")
        self.pool, self.fc = nn.AdaptiveAvgPool2d(7), nn.Linear(8 * 49, 10)

    def forward(self, x):
        h = F.relu(self.c0(x))
        h = F.relu(self.bn(self.dw(h)))
        h = F.relu(self.g(F.relu(self.pw(h))))
        return self.fc(self.pool(h).flatten(1))


class Conv1dNet(nn.Module):
    """Image rows as channels: Conv1d, grouped dilated Conv1d, MaxPool1d."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(14, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 8, 3, groups=2, dilation=2, padding=2)
        self.mp, self.fc = nn.MaxPool1d(2), nn.Linear(8 * 7, 10)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c(x[:, 0]))))
        return self.fc(self.mp(h).flatten(1))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv3d(1, 4, (2, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.fc = nn.Linear(4 * 49, 10)

    def forward(self, x):
        v = torch.stack([x[:, 0], x[:, 0].flip(-1)], 1).unsqueeze(1)      # (B, 1, 2, 14, 14)
        return self.fc(F.relu(self.c(v)).flatten(1))


class Transformer(nn.Module):
    """7x7 patch embedding, one pre-norm TransformerEncoderLayer (GELU), LayerNorm, mean pooling."""

    def __init__(self, d=16):
        super().__init__()
        self.embed = nn.Conv2d(1, d, 7, stride=7)
        self.pos = nn.Parameter(torch.randn(1, 4, d) * 0.1)
        self.enc = nn.TransformerEncoderLayer(d, 2, dim_feedforward=32, dropout=0.0, activation=nn.GELU(),
                                              batch_first=True, norm_first=True)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.enc(t)).mean(1))


MODELS = {"residual": Residual, "concat-maxpool": ConcatMaxPool, "layernorm-gelu-silu-softmax": NormMLP,
          "depthwise-grouped-dilated": Depthwise, "conv1d": Conv1dNet, "conv3d": Conv3dNet,
          "transformer": Transformer}
CASES = [(m, "lowrank") for m in MODELS] + [("residual-tiny", "exact")]
Z = z_bonferroni(3 * len(CASES) + 6)       # mean, variance and MSE per case; the slow MSE checks


@pytest.fixture(scope="module")
def data():
    from memcim.data.datasets import load_dataset

    tr = load_dataset("mnist", "train", limit=3000)
    te = load_dataset("mnist", "test", limit=8)
    return F.avg_pool2d(tr.x, 2), tr.y, F.avg_pool2d(te.x, 2).double()


def _train(model, x, y, steps=150, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, x.shape[0], (64,), generator=g)
        out = model(x[i])
        loss = F.nll_loss(torch.log(out + 1e-9), y[i]) if isinstance(out, torch.Tensor) and \
            isinstance(getattr(model, "sm", None), nn.Softmax) else F.cross_entropy(out, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def _chips(model, x, hw, cal):
    from memcim.nn.analog import convert_to_analog, program

    analog = convert_to_analog(model, hw, calib_data=cal).eval()
    ys = []
    for k in range(TRIALS):
        program(analog, seed=SEED + k, dtype=torch.float64)
        ys.append(analog(x).reshape(x.shape[0], -1))
    return torch.stack(ys)                                      # (chips, B, out)


@pytest.mark.parametrize("name,cov", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_graph_moments_match_monte_carlo(data, name, cov):
    xtr, ytr, x = data
    if name == "residual-tiny":       # exact mode costs D^2 per sample: 2 channels on 7x7 images
        xtr, x = F.avg_pool2d(xtr, 2), F.avg_pool2d(x, 2)
        model = Residual(c=2, side=7)
    else:
        model = MODELS[name]()
    model = _train(model, xtr, ytr).double().eval()
    cal = xtr[:64].double()
    hw = preset("generic").without("stuck")
    p = predict(model, x, hw, calib_data=cal, cov=cov)
    Y = _chips(model, x, hw, cal)
    ref = model(x).detach().reshape(Y.shape[1:])
    rel = EXACT_REL if cov == "exact" else MODEL_REL
    n = TRIALS
    # MSE over chips
    per_chip = ((Y - ref) ** 2).mean((1, 2))
    mse, se = float(per_chip.mean()), float(per_chip.std() / math.sqrt(n))
    assert abs(p.mse_mean - mse) <= Z * se + rel * mse, f"{name}: MSE predicted {p.mse_mean:.5g}, MC {mse:.5g} ± {se:.2g}"
    # total variance over chips: the per-chip squared deviations are the i.i.d. terms of its estimate
    dev = ((Y - Y.mean(0)) ** 2).sum((1, 2)) * n / (n - 1)
    tv, tv_se = float(dev.mean()), float(dev.std() / math.sqrt(n))
    pv = float(p.var.sum())
    assert abs(pv - tv) <= Z * tv_se + rel * tv, f"{name}: total variance predicted {pv:.5g}, MC {tv:.5g} ± {tv_se:.2g}"
    # mean of every output: RMS error against the chips' mean, in units of its standard error
    sd = Y.std(0)
    z_mean = ((p.mean - Y.mean(0)) / (sd / math.sqrt(n)).clamp_min(1e-12)) ** 2
    bias_budget = rel * math.sqrt(mse) / (sd.mean() / math.sqrt(n))
    rms = float(z_mean.mean().sqrt())
    assert rms <= 1.0 + Z / math.sqrt(z_mean.numel() / 2) + float(bias_budget), f"{name}: mean RMS z {rms:.3f}"


# ------------------------------------------------------------------------------------------------
# the shipped issue-15 models (slow)

# mnist-vit-tiny was a known limit (0.65x the Monte Carlo MSE) until the walker kept attention's
# token-coherent noise through compression (docs/predict_graph.md): the mixing of the residuals on both
# sides of Q K^T and A V, token states compressed to E*rank directions plus per-channel token blocks.


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-resnet-small", "mnist-vit-tiny"])
@pytest.mark.parametrize("pre", ["generic", "noisy"])
def test_shipped_graph_models_mse(name, pre):
    from memcim.data.datasets import load_dataset
    from memcim.nn.models import get_reference_model

    net = get_reference_model(name).double().eval()
    x = load_dataset("mnist", "test", limit=16).x.double()
    cal = load_dataset("mnist", "train", limit=64).x.double()
    hw = preset(pre).without("stuck")
    pred = predict(net, x, hw, calib_data=cal).mse_mean
    mc = network_mc(net, x, hw, 60, SEED, calib_data=cal)
    print(f"\n{name} {pre}: predicted {pred:.5g}, Monte Carlo {mc['mse']:.5g} ± {mc['se']:.2g} "
          f"({100 * (pred / mc['mse'] - 1):+.1f} %)")
    assert abs(pred - mc["mse"]) <= Z * mc["se"] + MODEL_REL * mc["mse"]


@pytest.mark.slow
@pytest.mark.parametrize("pre", ["generic", "noisy"])
def test_vit_full_forks_mse(pre):
    """``predict(..., full_forks=True)`` (passed on to the graph walker): each encoder layer's input has
    its residual made explicit, so the branches stay correlated with the skip path (the fork's
    ``J_ii r_i`` terms). Same Monte Carlo, images and tolerance as the shipped-model test."""
    from memcim.data.datasets import load_dataset
    from memcim.nn.models import get_reference_model

    net = get_reference_model("mnist-vit-tiny").double().eval()
    x = load_dataset("mnist", "test", limit=16).x.double()
    cal = load_dataset("mnist", "train", limit=64).x.double()
    hw = preset(pre).without("stuck")
    pred = predict(net, x, hw, calib_data=cal, full_forks=True).mse_mean
    mc = network_mc(net, x, hw, 60, SEED, calib_data=cal)
    print(f"\nmnist-vit-tiny {pre}, full_forks: predicted {pred:.5g}, Monte Carlo {mc['mse']:.5g} ± {mc['se']:.2g} "
          f"({100 * (pred / mc['mse'] - 1):+.1f} %)")
    assert abs(pred - mc["mse"]) <= Z * mc["se"] + MODEL_REL * mc["mse"]


# ------------------------------------------------------------------------------------------------
# errors

def test_unsupported_layer_names_node_and_alternative():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.LeakyReLU()

        def forward(self, x):
            return self.act(self.fc(x)) + x

    with pytest.raises(ValueError, match=r"layer act \(LeakyReLU\).*nearest supported alternative: ReLU") as e:
        predict(M().double(), torch.rand(2, 4, dtype=torch.float64), preset("generic"))
    assert "\n" not in str(e.value)


def test_untraceable_model_is_one_line_error():
    class Dyn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ValueError, match=r"Dyn cannot be traced by torch.fx.*fx-traceable.*nn.Sequential") as e:
        predict(Dyn().double(), torch.rand(2, 4, dtype=torch.float64), preset("generic"))
    assert "\n" not in str(e.value)


def test_sequential_with_new_layers_uses_graph_and_no_noise_is_exact():
    """A Sequential with GELU and MaxPool goes through the walker; on the ideal preset the predicted
    mean is the digital output and the variance is zero."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.GELU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(2 * 49, 5), nn.LayerNorm(5), nn.Softmax(-1)).double().eval()
    x = torch.rand(3, 1, 14, 14, dtype=torch.float64)
    p = predict(net, x, preset("ideal"))
    torch.testing.assert_close(p.mean, net(x).detach(), rtol=1e-9, atol=1e-12)
    assert float(p.var.abs().max()) < 1e-15


def test_full_forks_must_be_a_bool():
    with pytest.raises(ValueError, match="full_forks"):
        predict(nn.Sequential(nn.Linear(3, 2)), torch.zeros(1, 3), preset("generic"), full_forks="yes")
