"""Training read against the simulator (issue 12, item 7): for every non-ideality on its own, the
output mean and variance of an analog layer in training mode (a fresh chip per forward, read
through ``chip.mvm(x, differentiable=True)``) agree with the simulator's Monte Carlo over chips
(``program(plan, seed, trials)`` then ``chip.mvm(x)``), with independent seeds on the two sides.

Matrix: the first layer of the reference MNIST MLP (trained weights; 784 x 64 of it) on real MNIST
test images when the model and the data are on this machine, else the first layer of a 64-48-10
MLP trained on the 8x8 digits on digits images. Comparisons, per case: every output's mean (Welch
z), every output's variance (z from the sample fourth moment) and the total variance (z over
chips, which are independent); all at a family-wise false-alarm rate of 1 % (Bonferroni over every
comparison of the module). Deterministic cases (levels, DAC, ADC alone) must agree to float64
rounding, with no variance on either side.
"""
import functools
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from memcim.config import NONIDEALITIES, preset
from memcim.mapping.crossbar import map_matrix
from memcim.nn.analog import AnalogLinear, calibrate
from memcim.simulate import program

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _agreement_mc import z_bonferroni  # noqa: E402

F64 = torch.float64
T = 200                                            # chips per side
NAMES = [n for n in NONIDEALITIES if n not in ("wires", "drift")]   # training reads at t0: drift has no effect there
CASES = [(n, "differential") for n in NAMES] + [("programming", "offset"), ("thermal", "offset"),
                                                ("shot", "offset")]
BASE = preset("generic").set({"device.rtn_amplitude": 0.08, "device.rtn_probability": 0.2,
                                "device.read_1f_q": 0.01})


@functools.lru_cache(maxsize=None)
def _data():
    """(W (in, out), inputs (4, in), calibration inputs, source)."""
    try:
        from memcim.data.datasets import load_dataset
        from memcim.nn.models import reference_path

        if not reference_path("mnist-mlp-256-128").is_file():
            raise FileNotFoundError("reference model not cached")
        from memcim.nn.models import get_reference_model

        net = get_reference_model("mnist-mlp-256-128")
        first = next(m for m in net.modules() if isinstance(m, nn.Linear))
        W = first.weight.detach().double().t()[:, :64].contiguous()
        x = load_dataset("mnist", "test", limit=4).x.reshape(4, -1).double()
        cal = load_dataset("mnist", "train", limit=256).x.reshape(256, -1).double()
        return W, x, cal, "mnist"
    except (FileNotFoundError, ValueError, OSError):
        from _nn_helpers import digits_mlp

        from memcim.data.digits import load_digits

        first = next(m for m in digits_mlp().modules() if isinstance(m, nn.Linear))
        W = first.weight.detach().double().t().contiguous()
        return W, load_digits("test").x[:4].reshape(4, -1).double(), \
            load_digits("train").x[:256].reshape(256, -1).double(), "digits"


def _hw(name, scheme):
    return BASE.set("mapping.scheme", scheme).only(name)


def training_reads(W, x, cal, hw, seed):
    """T training forwards of an AnalogLinear (no bias) holding W: (T, batch, out)."""
    lin = nn.Linear(W.shape[0], W.shape[1], bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(W.t())
    layer = AnalogLinear.from_digital(lin, hw, seed=seed)
    calibrate(nn.Sequential(layer), cal)
    layer.train()
    out = []
    for _ in range(T):
        y = layer(x)
        y.sum().backward()                         # the training graph is built and used
        out.append(y.detach())
    assert torch.isfinite(layer.weight.grad).all()
    return torch.stack(out)


def simulator_reads(W, x, cal, hw, seed):
    chip = program(map_matrix(W, hw, calib_inputs=cal), seed=seed, trials=T, dtype=F64)
    return chip.mvm(x)


def n_comparisons(n_outputs):
    return len(CASES) * (2 * n_outputs + 1)


def compare(a, b, z):
    """Failures of the mean, variance and total-variance comparisons of two samples (T, ...)."""
    fails = []
    ma, mb = a.mean(0), b.mean(0)
    va, vb = a.var(0), b.var(0)
    scale = float(max(ma.abs().max(), mb.abs().max(), 1e-300))
    if float(va.max()) == 0 and float(vb.max()) == 0:      # deterministic on both sides
        err = float((ma - mb).abs().max())
        if err > 1e-9 * scale:
            fails.append(f"deterministic outputs differ by {err:.3g} (scale {scale:.3g})")
        return fails
    se_m = ((va + vb) / T).sqrt()
    zm = (ma - mb).abs() / se_m.clamp_min(1e-12 * scale)
    if float(zm.max()) > z:
        fails.append(f"mean: max z {float(zm.max()):.2f} > {z:.2f}")

    def var_se2(s):
        d = s - s.mean(0)
        m4 = (d ** 4).mean(0)
        return (m4 - d.pow(2).mean(0) ** 2).clamp_min(0) / T

    se_v = (var_se2(a) + var_se2(b)).sqrt()
    zv = (va - vb).abs() / se_v.clamp_min(1e-12 * float(max(va.max(), vb.max())))
    if float(zv.max()) > z:
        fails.append(f"variance: max z {float(zv.max()):.2f} > {z:.2f}")
    # total variance: per chip, the squared deviations summed over every output (chips are i.i.d.)
    da = ((a - ma) ** 2).flatten(1).sum(1) * T / (T - 1)
    db = ((b - mb) ** 2).flatten(1).sum(1) * T / (T - 1)
    zt = abs(float(da.mean() - db.mean())) / math.sqrt(float(da.var() + db.var()) / T)
    if zt > z:
        fails.append(f"total variance: {float(da.mean()):.4g} vs {float(db.mean()):.4g}, z {zt:.2f} > {z:.2f}")
    return fails


@pytest.mark.parametrize("name,scheme", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_training_read_agrees_with_the_simulator(name, scheme):
    W, x, cal, _ = _data()
    hw = _hw(name, scheme)
    assert hw.active_nonidealities() == (name,)
    a = training_reads(W, x, cal, hw, seed=11)
    b = simulator_reads(W, x, cal, hw, seed=12)
    z = z_bonferroni(n_comparisons(a[0].numel()))
    fails = compare(a, b, z)
    assert not fails, f"{name} ({scheme}): " + "; ".join(fails)
    if name not in ("quantization", "dac", "adc"):
        assert float(a.var(0).max()) > 0                 # the noise is there


def test_the_comparison_can_fail():
    """The same comparison catches reads whose noise is 10 % too large (thermal), and a deterministic
    output off by a millionth."""
    W, x, cal, _ = _data()
    z = z_bonferroni(n_comparisons(x.shape[0] * W.shape[1]))
    b = simulator_reads(W, x, cal, _hw("thermal", "differential"), seed=12)
    a = simulator_reads(W, x, cal, _hw("thermal", "differential"), seed=11)
    assert not compare(a, b, z)
    ref = simulator_reads(W, x, cal, _hw("quantization", "differential"), seed=11)[0]
    a = ref + 1.1 * (a - ref)                          # same chips' reads, noise scaled by 1.1
    assert any("variance" in f for f in compare(a, b, z))
    ref = simulator_reads(W, x, cal, _hw("dac", "differential"), seed=11)
    off = ref.clone()
    off[:, 0, 0] += 1e-6 * float(ref.abs().max())     # one output off by a millionth of the scale
    assert any("deterministic" in f for f in compare(off, ref, z))
