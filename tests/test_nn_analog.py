"""Analog conversion, programming, state dicts and the training read."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memcim.config import NONIDEALITIES, preset
from memcim.data.digits import load_digits
from memcim.mapping.crossbar import map_matrix
from memcim.nn.analog import (AnalogConv2d, AnalogLinear, analog_layers, conversion_report, convert_to_analog,
                              convert_to_digital, program)
from memcim.nn.evaluate import evaluate_analog
from memcim.nn.models import build_model
from memcim.simulate import program as program_chip

from _nn_helpers import TinyCNN, digits_mlp


def _cnn():
    with torch.random.fork_rng():
        return TinyCNN().eval()


@pytest.mark.parametrize("hw", [preset("ideal"), preset("generic").without(*NONIDEALITIES),
                                preset("noisy").without(*NONIDEALITIES).replace(array={"rows": 5, "cols": 6})],
                         ids=["ideal", "realistic-all-off", "noisy-all-off-small-tiles"])
def test_all_nonidealities_off_reproduces_digital(hw):
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for model in (digits_mlp(), _cnn()):
        ref = model(x)
        a = program(convert_to_analog(model, hw), seed=0, dtype=torch.float64).eval()
        torch.testing.assert_close(a(x), ref, rtol=1e-5, atol=1e-5)


def test_conv_uses_one_chip_for_all_positions():
    """With programming noise only, the analog conv equals F.conv2d with the chip's realized kernel."""
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=1)
    hw = preset("ideal").replace(device={"prog_sigma_rel": 0.2})
    layer = AnalogConv2d.from_digital(conv, hw).eval()
    chip = layer.program(seed=3, dtype=torch.float64)
    Wr = chip.realized()[0].t().reshape(conv.weight.shape).float()      # (out, in*k*k) -> kernel
    assert not torch.allclose(Wr, conv.weight, atol=1e-3)                # the noise is really there
    x = torch.randn(4, 2, 7, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x), F.conv2d(x, Wr, conv.bias, padding=1), rtol=1e-5, atol=1e-5)


def test_conv_padding_same_and_stride():
    conv = nn.Conv2d(2, 3, (3, 2), padding="same")
    layer = program(convert_to_analog(nn.Sequential(conv), preset("ideal")), 0, dtype=torch.float64)
    x = torch.randn(2, 2, 6, 5)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    conv2 = nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2)
    layer2 = program(convert_to_analog(nn.Sequential(conv2), preset("ideal")), 0, dtype=torch.float64)
    torch.testing.assert_close(layer2(x), conv2(x), rtol=1e-5, atol=1e-5)


def test_accuracy_degrades_with_programming_noise():
    model = digits_mlp()
    ds = load_digits("test")
    calib = load_digits("train").x[:128]
    base = preset("ideal")
    clean = evaluate_analog(model, ds, base, chips=1, calib_data=calib)
    assert clean["accuracy"]["mean"] == pytest.approx(clean["digital"]["accuracy"])
    assert clean["digital"]["accuracy"] > 0.9
    prev = None
    res = {}
    # absolute programming noise of about 2 % and 40 % of the conductance window
    for s in (0.05, 1.0):
        r = evaluate_analog(model, ds, base.replace(device={"prog_sigma_abs": s * 4e-5}), chips=8, seed=0,
                            calib_data=calib)
        res[s] = r
    a_lo, a_hi = res[0.05]["accuracy"], res[1.0]["accuracy"]
    # standard error of a difference of two means over 8 chips each
    se = math.sqrt(a_lo["std"] ** 2 / 8 + a_hi["std"] ** 2 / 8) + 1.0 / len(ds)
    assert a_lo["mean"] - a_hi["mean"] > 4 * se
    assert clean["accuracy"]["mean"] >= a_lo["mean"] - 4 * a_lo["std"] / math.sqrt(8)
    assert res[1.0]["mse"]["mean"] > res[0.05]["mse"]["mean"] > clean["mse"]["mean"]
    # chips differ: a spread over chips exists
    assert a_hi["std"] > 0


def test_conversion_keeps_parameters_and_unsupported_layers():
    """Grouped and reflect-padded convolutions convert too (issue 15); BatchNorm stays digital."""
    from memcim.nn.analog import AnalogGroupedConv2d

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2),
                          nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 5), nn.Linear(5, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hw = preset("generic")
    a, rep = convert_to_analog(model, hw, return_report=True)
    assert [n for n, *_ in rep.analog] == ["0", "3", "4", "6", "7"]
    digital = {n: r for n, _, r in rep.digital}
    assert set(digital) == {"1"}
    assert "BatchNorm2d" in digital["1"]
    assert rep.periphery == ["2", "5"]
    assert type(a[1]) is nn.BatchNorm2d and type(a[3]) is AnalogGroupedConv2d
    for k, v in before.items():                       # every parameter and buffer survives unchanged
        assert torch.equal(a.state_dict()[k], v)
        assert torch.equal(model.state_dict()[k], v)  # and the original is untouched
    assert type(model[0]) is nn.Conv2d
    d = convert_to_digital(program(a, 0))
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in (d[0], d[3], d[4], d[6], d[7]))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(d(x), model(x))
    assert conversion_report(a).to_dict()["analog"][0]["hardware"] == "generic"


def test_overrides_by_name_glob_and_type():
    model = build_model("mlp-8-6", (1, 4, 4), 3)
    small = preset("ideal").replace(array={"rows": 4, "cols": 4}, name="small")
    a, rep = convert_to_analog(model, preset("generic"), return_report=True,
                               overrides={"3": small, nn.Linear: preset("noisy"), "5": None})
    hw = {n: h for n, _, h in rep.analog}
    assert hw == {"1": "noisy", "3": "small"}
    assert ("5", "Linear", "excluded by overrides") in rep.digital
    _, rep2 = convert_to_analog(model, preset("generic"), return_report=True, overrides={"[13]": small})
    assert {n: h for n, _, h in rep2.analog} == {"1": "small", "3": "small", "5": "generic"}
    with pytest.raises(TypeError, match="overrides"):
        convert_to_analog(model, preset("ideal"), overrides={3: small})


def test_program_seeds_and_fresh_read_noise():
    model = digits_mlp()
    x = load_digits("test").x[:20]
    a = convert_to_analog(model, preset("generic"), calib_data=load_digits("train").x[:64])
    with pytest.raises(RuntimeError, match="not programmed"):
        a(x)
    program(a, 0)
    y1, y2 = a(x), a(x)
    assert not torch.equal(y1, y2)                         # fresh read noise every read
    program(a, 0)
    assert torch.equal(a(x), y1)                            # same seed: same chip, same read sequence
    program(a, 1)
    assert not torch.allclose(a[1].chip.g_pos, program(convert_to_analog(model, preset("generic")), 0)[1].chip.g_pos)
    with torch.no_grad():
        a[1].weight.mul_(1.01)
    with pytest.raises(RuntimeError, match="weights changed after programming"):
        a(x)


def test_state_dict_round_trip_is_bit_exact(tmp_path):
    for model, x in ((digits_mlp(), load_digits("test").x[:16]),
                     (_cnn(), torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)))):
        hw = preset("noisy")
        a = program(convert_to_analog(model, hw, calib_data=x), seed=5).eval()
        a(x)                                               # advance the read-noise generators
        torch.save(a.state_dict(), tmp_path / "a.pt")
        sd = torch.load(tmp_path / "a.pt", weights_only=True)
        b = convert_to_analog(model, preset("ideal")).eval()   # different hardware: must be restored
        b.load_state_dict(sd)
        for (_, la), (_, lb) in zip(analog_layers(a), analog_layers(b)):
            assert lb.hardware == la.hardware
            assert lb.chip is not None and torch.equal(lb.chip.g_pos, la.chip.g_pos)
        for _ in range(2):
            assert torch.equal(a(x), b(x))


def test_state_dict_of_unprogrammed_model_and_whole_model_save(tmp_path):
    model = digits_mlp()
    a = convert_to_analog(model, preset("generic"))
    b = convert_to_analog(model, preset("ideal"))
    b.load_state_dict(a.state_dict())
    assert b[1].chip is None and b[1].hardware.name == "generic"
    program(a, 2)
    torch.save(a, tmp_path / "m.pt")
    from memcim.nn.loading import load_model_file

    c = load_model_file(tmp_path / "m.pt")               # analog layers are on the allow-list
    x = load_digits("test").x[:8]
    assert isinstance(c[1], AnalogLinear)
    assert torch.equal(c(x), a(x))                          # same chip, same read-noise state


def test_training_read_exact_without_nonidealities():
    """All non-idealities off: the training forward is x W^T + b, and its gradients those of the matmul."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(300, 70).double()
    layer = AnalogLinear.from_digital(lin, preset("noisy").without(*NONIDEALITIES)).train()
    x = torch.randn(7, 300, dtype=torch.float64, generator=g, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, lin(x), rtol=1e-10, atol=1e-10)
    go = torch.randn(7, 70, dtype=torch.float64, generator=g)
    (y * go).sum().backward()
    torch.testing.assert_close(layer.weight.grad, go.t() @ x.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, go @ lin.weight.detach(), rtol=1e-10, atol=1e-10)


def test_training_read_is_the_simulator_read():
    """The training chip of a seed is the chip program() makes with that seed, and its read the
    simulator's read (bit for bit); the gradients are straight through every rounding."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(300, 70, dtype=torch.float64, generator=g)
    x = torch.randn(5, 300, dtype=torch.float64, generator=g)
    for scheme in ("differential", "offset"):
        hw = preset("noisy").replace(mapping={"scheme": scheme})
        plan = map_matrix(W, hw)
        ref = program_chip(plan, seed=3, dtype=torch.float64)
        Wg = W.clone().requires_grad_()
        chip = program_chip(plan, seed=3, dtype=torch.float64, weights=Wg)
        assert torch.equal(chip.g_pos.detach(), ref.g_pos) and torch.equal(chip.g_neg.detach(), ref.g_neg)
        assert torch.equal(chip.mvm(x, differentiable=True).detach(), ref.mvm(x))
    # with levels, DAC and ADC only, the chip is the rounded plan: d y / d x is the chip's matrix
    # (the rounded W), d y / d W = x (straight through the level rounding)
    hw = preset("generic").without("programming", "stuck", "thermal", "shot")
    xg = x.clone().requires_grad_()
    Wg = W.clone().requires_grad_()
    chip = program_chip(map_matrix(W, hw), seed=0, dtype=torch.float64, weights=Wg)
    y = chip.mvm(xg, differentiable=True)[0]
    assert not torch.allclose(y, x @ W, atol=1e-3)          # levels, DAC and ADC quantization act
    y.sum().backward()
    torch.testing.assert_close(xg.grad, chip.realized()[0].detach().sum(1).expand(5, 300))
    xs = x.abs().amax(1, keepdim=True)                        # 8-bit DAC, per-vector range
    xq = torch.round(x / xs * 127) / 127 * xs
    torch.testing.assert_close(Wg.grad, xq.sum(0).unsqueeze(1).expand(300, 70))
    with pytest.raises(ValueError, match=r"weights: shape \(70, 300\)"):
        program_chip(map_matrix(W, hw), weights=Wg.t())


def test_training_read_stuck_devices_pass_no_gradient():
    """A device stuck at g_min or g_max does not follow its weight: its gradient is 0."""
    W = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hw = preset("ideal").replace(device={"stuck_at_min": 0.3, "stuck_at_max": 0.2})
    Wg = W.clone().requires_grad_()
    chip = program_chip(map_matrix(W, hw), seed=0, dtype=torch.float64, weights=Wg)
    stuck = ((chip.g_pos == hw.device.g_min) | (chip.g_pos == hw.device.g_max))[0, 0, :20, :3]
    chip.g_pos.sum().backward()
    c = float(map_matrix(W, hw).scale[0, 0])
    expected = torch.where(stuck | (W <= 0), torch.zeros_like(W), torch.full_like(W, c))
    assert bool(stuck.any()) and bool((~stuck).any())
    torch.testing.assert_close(Wg.grad, expected)


def test_training_step_redraws_the_chip():
    model = digits_mlp()
    a = convert_to_analog(model, preset("noisy"), seed=0).train()
    ds = load_digits("train")
    xb, yb = ds.x[:64], ds.y[:64]
    out1, out2 = a(xb), a(xb)
    assert not torch.equal(out1, out2)                       # noise redrawn every mini-batch
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    before = [p.detach().clone() for p in a.parameters()]
    loss = F.cross_entropy(a(xb), yb)
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() and torch.isfinite(p.grad).all() for p in a.parameters())
    assert all(not torch.equal(p, b) for p, b in zip(a.parameters(), before))



def test_conv_training_reads_one_chip_per_forward():
    """AnalogConv2d in training mode: all off it is the digital conv with its gradients; with noise every
    patch of a forward reads the same fresh chip (one chip per forward, not per patch)."""
    cnn = _cnn().double()
    x = load_digits("test").x[:4].double().requires_grad_()
    a = convert_to_analog(cnn, preset("noisy").without(*NONIDEALITIES)).train()
    torch.testing.assert_close(a(x), cnn(x), rtol=1e-9, atol=1e-9)
    a(x).sum().backward()
    ref = _cnn().double()
    ref(x.detach()).sum().backward()
    torch.testing.assert_close(a[0].weight.grad, ref[0].weight.grad, rtol=1e-9, atol=1e-9)
    # the same image twice in a batch: its patches read the same chip, so without read noise the
    # two outputs are equal, though every forward draws another chip
    hw = preset("ideal").replace(device={"prog_sigma_rel": 0.2})
    layer = AnalogConv2d.from_digital(cnn[0], hw, seed=0).train()
    xx = torch.cat([x[:1], x[:1]]).detach()
    y1, y2 = layer(xx), layer(xx)
    torch.testing.assert_close(y1[0], y1[1])
    assert not torch.allclose(y1, y2)


def test_layer_maps_once_for_many_chips_and_again_when_weights_change():
    """A Monte Carlo over chips programs every chip from one plan; a weight update makes a new one."""
    from memcim.config import preset
    from memcim.nn.analog import AnalogLinear

    layer = AnalogLinear.from_digital(torch.nn.Linear(12, 5), preset("generic"))
    p0 = layer.program(0).mapped
    c1 = layer.program(1)
    assert c1.mapped.g_pos.data_ptr() == p0.g_pos.data_ptr() or torch.equal(c1.mapped.g_pos, p0.g_pos)
    assert layer.plan() is layer.plan()
    with torch.no_grad():
        layer.weight.mul_(0.5)
    p2 = layer.plan()
    assert p2 is not p0
    assert torch.allclose(p2.realized(), p0.realized() * 0.5, atol=float(p0.realized().abs().max()) / 40)
