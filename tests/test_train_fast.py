"""The fast hardware-aware training path (issue 17 item 6): the training mapping in the training
dtype, the programming with fewer draws, the attached weight gradient and the differentiable read,
each against an independent reference: ``map_matrix`` (the inference mapping, float64), the
plain programming formula written out here (explicit ``torch.where`` stuck devices, autograd
through the targets), the inference read ``chip.mvm(x)`` and autograd through the read's plain
formula, and the binomial law of stuck devices.
"""
import math

import pytest
import torch
from scipy.stats import chi2, norm

from memcim.config import preset
from memcim.hardware.device import bernoulli_positions, program_devices, programming_sigma
from memcim.mapping.crossbar import map_for_training, map_matrix, training_layout
from memcim.simulate import program

from _references import assert_same_grads, input_and_weight_grads, plain_read

F64 = torch.float64


def _configs():
    g = preset("generic")
    return {
        "generic": g,
        "column-scale": g.replace(mapping={"scale": "column"}),
        "offset": g.replace(mapping={"scheme": "offset"}),
        "fs-max": g.replace(adc={"fs_mode": "max"}),
        "fs-fixed": g.replace(adc={"fs_mode": "fixed", "full_scale": 0.5}),
        "quantile-column": g.replace(adc={"calib_quantile": 0.99, "granularity": "column"}),
        "continuous": g.without("quantization"),
        "no-dac": g.without("dac"),
        "unsigned-dac-arrays": g.replace(dac={"signed": False}, mapping={"pair": "arrays"}),
    }


def _data(seed=0, n=300, m=70, b=64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, dtype=F64, generator=gen), torch.randn(b, n, dtype=F64, generator=gen)


@pytest.mark.parametrize("name", list(_configs()))
def test_training_mapping_is_map_matrix(name):
    """float64: the same targets and scale as map_matrix bit for bit, the full scale to rounding;
    float32: every target within one level of map_matrix's (another level only at a rounding tie) and
    the full scale to float32 rounding."""
    hw = _configs()[name]
    W, cal = _data()
    ref = map_matrix(W, hw, calib_inputs=cal)
    got = map_for_training(W, hw, cal)
    for f in ("g_pos", "g_neg", "scale", "mask_pos", "mask_neg"):
        assert torch.equal(getattr(got, f), getattr(ref, f)), f
    torch.testing.assert_close(got.full_scale.to(F64), ref.full_scale, rtol=1e-12, atol=0)
    got32 = map_for_training(W.float(), hw, cal, layout=training_layout(W.shape, hw, cal))
    step = hw.device.level_step or 0.0
    for f in ("g_pos", "g_neg"):
        d = (getattr(got32, f).to(F64) - getattr(ref, f)).abs()
        assert float(d.max()) <= max(step, 1e-12) * 1.001 + 1e-6 * hw.device.g_max, f
        assert float((d > 1e-6 * hw.device.g_max).double().mean()) < 2e-3, f
    torch.testing.assert_close(got32.full_scale.to(F64), ref.full_scale, rtol=2e-5, atol=0)


def test_training_layout_follows_calibration_and_hardware():
    W, cal = _data()
    hw = preset("generic")
    lay = training_layout(W.shape, hw, cal, dtype=F64)
    assert lay.matches(W.shape, F64, "cpu", hw, cal)
    assert not lay.matches(W.shape, F64, "cpu", hw, cal.clone())            # another calibration set
    assert not lay.matches(W.shape, F64, "cpu", hw.replace(adc={"bits": 6}), cal)
    assert not lay.matches(W.shape, torch.float32, "cpu", hw, cal)
    cal2 = cal * 3.0
    ref = map_matrix(W, hw, calib_inputs=cal2)
    got = map_for_training(W, hw, cal2, layout=lay)                          # stale layout: rebuilt
    torch.testing.assert_close(got.full_scale, ref.full_scale, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="W: contains NaN"):
        map_for_training(W.clone().fill_(float("nan")), hw, cal)


# ------------------------------------------------------------------ programming

def _program_devices_before(g_target, level, mask, dev, trials, generator):
    """The programming written out plainly (explicit where, out of place): the noise from one normal
    draw, then one uniform number per device for the stuck devices (the reference stream and law)."""
    shape = (trials, *g_target.shape)
    g = g_target.unsqueeze(0).expand(shape)
    if dev.has_programming_noise:
        sigma = programming_sigma(g_target.detach(), level, dev)
        noise = torch.randn(shape, generator=generator, dtype=g_target.dtype, device=g_target.device)
        g = (g + sigma * noise).clamp_min(0.0)
    else:
        g = g.clone()
    if dev.stuck_at_min > 0 or dev.stuck_at_max > 0:
        u = torch.rand(shape, generator=generator, dtype=g_target.dtype, device=g_target.device)
        g = torch.where(u < dev.stuck_at_min, torch.full_like(g, dev.g_min), g)
        g = torch.where((u >= dev.stuck_at_min) & (u < dev.stuck_at_min + dev.stuck_at_max),
                        torch.full_like(g, dev.g_max), g)
    if mask is not None:
        g = g * mask.to(g.dtype)
    return g


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_programming_noise_is_the_plain_formula(dtype):
    """Without stuck devices the programming is the plain formula, bit for bit from the same stream:
    g = max(target + sigma * N(0, 1), 0), absent devices at 0 (the stuck devices are drawn by their
    gaps, another stream: their law is checked below)."""
    base = preset("generic").device.replace(stuck_at_min=0.0, stuck_at_max=0.0)
    devs = [base, base.replace(prog_sigma_abs=2e-6), base.replace(prog_sigma_rel=0.0),
            base.replace(prog_sigma_abs=0.0, prog_sigma_rel=0.0)]
    W, _ = _data()
    for hw_name, hw in (("generic", preset("generic")), ("offset", preset("generic").replace(mapping={"scheme": "offset"}))):
        plan = map_matrix(W, hw)
        for dev in devs:
            for trials in (1, 3):
                for tgt, lv, mask in ((plan.g_pos, plan.level_pos, plan.mask_pos), (plan.g_neg, plan.level_neg, plan.mask_neg)):
                    t = tgt.to(dtype)
                    a = program_devices(t, lv, mask, dev, trials, torch.Generator().manual_seed(5))
                    b = _program_devices_before(t, lv, mask, dev, trials, torch.Generator().manual_seed(5))
                    assert torch.equal(a, b), (hw_name, dev, trials)


def test_weight_gradient_is_autograd_through_the_targets():
    """The gradient attached by program(weights=W) equals autograd through the targets
    ``c max(W, 0)`` and the plain programming formula, on the same chip (differential and offset;
    no stuck devices, whose zero gradient is checked with their law below)."""
    W, x = _data(1, 120, 30, 5)
    W[0, :3] = 0.0                                                    # exact zeros: both devices pass
    for scheme in ("differential", "offset"):
        hw = preset("generic").replace(mapping={"scheme": scheme},
                                       device={"stuck_at_min": 0.0, "stuck_at_max": 0.0, "prog_sigma_abs": 2e-6})
        plan = map_matrix(W, hw, calib_inputs=x)
        Wg = W.clone().requires_grad_()
        chip = program(plan, seed=4, dtype=F64, weights=Wg)
        go = torch.randn(chip.g_pos.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
        gn_go = torch.randn(chip.g_neg.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
        (chip.g_pos * go).sum().backward(retain_graph=True)
        if scheme == "differential":
            (chip.g_neg * gn_go).sum().backward()
        Wr = W.clone().requires_grad_()
        pad = (0, plan.out_pad - plan.out_features, 0, plan.n_row_tiles * plan.tile_rows - plan.in_features)
        wt = torch.nn.functional.pad(Wr, pad).reshape(plan.n_row_tiles, plan.tile_rows, plan.out_pad)
        c = plan.scale.unsqueeze(1)
        gen = torch.Generator().manual_seed(4)
        if scheme == "differential":
            tp, tn = c * wt.clamp_min(0), c * (-wt).clamp_min(0)
            t_pos, t_neg = plan.g_pos + (tp - tp.detach()), plan.g_neg + (tn - tn.detach())
        else:
            tp = c * wt
            t_pos, t_neg = plan.g_pos + (tp - tp.detach()), plan.g_neg
        gp = _program_devices_before(t_pos, plan.level_pos, plan.mask_pos, hw.device, 1, gen)
        gn = _program_devices_before(t_neg, plan.level_neg, plan.mask_neg, hw.device, 1, gen)
        assert torch.equal(gp.detach(), chip.g_pos.detach()) and torch.equal(gn.detach(), chip.g_neg.detach())
        loss = (gp * go).sum() + ((gn * gn_go).sum() if scheme == "differential" else 0.0)
        loss.backward()
        torch.testing.assert_close(Wg.grad, Wr.grad, rtol=1e-12, atol=0)


def test_sparse_stuck_devices_follow_the_binomial_law():
    """Per chip the numbers stuck at g_min and at g_max are Binomial(N, p0)
    and Binomial(N, p1) (mean and variance over chips), spread uniformly over the devices (chi-square
    over 20 position bins), and a stuck device passes no gradient."""
    dev = preset("generic").device.replace(stuck_at_min=0.01, stuck_at_max=0.004, prog_sigma_abs=0.0,
                                           prog_sigma_rel=0.0)
    N, T = 20_000, 400
    tgt = torch.full((N,), 5e-5, dtype=F64, requires_grad=True)
    g, keep = program_devices(tgt, None, None, dev, T, torch.Generator().manual_seed(0), follows=True)
    lo, hi = (g == dev.g_min), (g == dev.g_max)
    z = z_bonf = norm.ppf(1 - 0.01 / (2 * 5))                       # 5 comparisons, 1 % family-wise
    for hits, p in ((lo, dev.stuck_at_min), (hi, dev.stuck_at_max)):
        k = hits.sum(1).double()
        assert abs(float(k.mean()) - N * p) / math.sqrt(N * p * (1 - p) / T) < z
        # variance over chips: its standard error from the binomial fourth moment (about 2 var^2 / T)
        var = N * p * (1 - p)
        assert abs(float(k.var()) - var) / (var * math.sqrt(2.0 / (T - 1))) < z_bonf
    counts = (lo | hi).reshape(T, 20, N // 20).sum((0, 2)).double()
    expected = counts.sum() / 20
    assert float(((counts - expected) ** 2 / expected).sum()) < chi2.ppf(1 - 0.01 / 5, 19)
    assert torch.equal(keep, (~(lo | hi)).to(F64))
    g.sum().backward()
    torch.testing.assert_close(tgt.grad, (~(lo | hi)).sum(0).to(F64))


def test_bernoulli_positions():
    gen = torch.Generator().manual_seed(1)
    for n, p in ((10, 0.0), (10, 1.0), (1, 0.5), (100_000, 0.003)):
        at = bernoulli_positions(n, p, gen)
        assert at.dtype == torch.int64 and bool((at[1:] > at[:-1]).all()) and (at.numel() == 0 or 0 <= int(at.min())
                                                                               and int(at.max()) < n)
    assert bernoulli_positions(10, 1.0, gen).tolist() == list(range(10))
    counts = torch.tensor([bernoulli_positions(1000, 0.05, gen).numel() for _ in range(2000)], dtype=F64)
    assert abs(float(counts.mean()) - 50) / math.sqrt(1000 * 0.05 * 0.95 / 2000) < norm.ppf(1 - 0.005)


def test_training_chips_have_the_plain_distribution():
    """A training plan (both sides in one tensor, drawn in one call): the chips' conductances have the
    mean and variance of the plain formula's chips, one uniform number per device for the stuck devices
    (300 chips each, z at 1 % over all devices)."""
    W, cal = _data(2, 40, 12, 16)
    hw = preset("generic").replace(device={"stuck_at_min": 0.02, "stuck_at_max": 0.01})
    plan = map_for_training(W, hw, cal)
    assert plan.g_pos._base is not None and plan.g_pos._base is plan.g_neg._base
    a = program(plan, seed=0, trials=300, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    b = [_program_devices_before(plan.g_pos.to(F64), plan.level_pos, plan.mask_pos, hw.device, 300, gen),
         _program_devices_before(plan.g_neg.to(F64), plan.level_neg, plan.mask_neg, hw.device, 300, gen)]
    z = norm.ppf(1 - 0.01 / (2 * 2 * a.g_pos[0].numel() * 2))
    for ga, gb in ((a.g_pos, b[0]), (a.g_neg, b[1])):
        se = ((ga.var(0) + gb.var(0)) / 300).sqrt().clamp_min(1e-15)
        assert float(((ga.mean(0) - gb.mean(0)).abs() / se).max()) < z
        assert torch.equal((ga == 0).all(0), (gb == 0).all(0))           # padding: no device on either



@pytest.mark.parametrize("name", ["generic", "offset", "unsigned-dac-arrays", "continuous", "no-dac", "x-range"])
@pytest.mark.parametrize("trials,xdim", [(1, 2), (3, 2), (2, 3)])
def test_differentiable_read_is_the_read_with_its_gradient(name, trials, xdim):
    """chip.mvm(x, differentiable=True): its values are those of chip.mvm(x) of the same chip from the
    same generator state, bit for bit (read noise on); its gradients for x and W are autograd's
    through the read's plain formula (:func:`plain_read`: no rounding, no noise), for one chip or
    several, inputs shared or per chip, and inputs the DAC clips."""
    hw = _configs()[name] if name != "x-range" else preset("generic").replace(dac={"x_range": 2.0})
    W, x = _data(3, 300, 70, 9)
    x[0, :5] = -3 * x.abs().max()          # negative drives: the unsigned DAC clips them (no gradient)
    x[1, :5] = 2.5                         # above x_range: clipped
    plan = map_matrix(W, hw, calib_inputs=x)
    xin = x if xdim == 2 else x * torch.linspace(0.5, 1.5, trials, dtype=F64).view(-1, 1, 1)
    grads = []
    for read in ("mvm", "plain"):
        Wg, xg = W.clone().requires_grad_(), xin.clone().requires_grad_()
        chip = program(plan, seed=3, trials=trials, dtype=F64, weights=Wg)
        if read == "mvm":
            ref = program(plan, seed=3, trials=trials, dtype=F64)
            y = chip.mvm(xg, differentiable=True)
            assert y.requires_grad and torch.equal(y.detach(), ref.mvm(xin))
        else:
            y = plain_read(chip, xg)
            if xdim == 2:
                y = y.expand(trials, *y.shape[-2:]) if y.shape[0] == 1 else y
        grads.append(input_and_weight_grads(y, xg, Wg, seed=5))
    assert_same_grads(grads)
    if name == "unsigned-dac-arrays":
        gx = grads[0][0]     # the chip read's input gradient
        assert float(gx[..., 0, :5].abs().max()) == 0.0 and float(gx[..., 1, 5:].abs().max()) > 0


def test_differentiable_read_with_rtn_and_1f_is_the_read():
    """With RTN and 1/f noise (one snapshot of the conductances per read) the differentiable read's
    values are the read's, bit for bit, and its gradient for W is autograd's through the plain read of
    the noise-free chip times each device's telegraph factor of that read (1/f noise is additive: no
    factor): every weight's gradient over the noise-free one is 1 or 1 - amplitude, and the number of
    reads in the low state follows the binomial law (400 reads, probability 0.3; z at 1 % over every
    weight)."""
    hw = preset("generic").without("thermal", "shot", "programming", "stuck").replace(
        device={"rtn_amplitude": 0.1, "rtn_probability": 0.3, "read_1f_q": 1e-3})
    W, x = _data(6, 40, 6, 3)
    plan = map_matrix(W, hw, calib_inputs=x)
    Wg = W.clone().requires_grad_()
    chip = program(plan, seed=1, dtype=F64, weights=Wg)
    ref = program(plan, seed=1, dtype=F64)
    n = 400
    gs = []
    for _ in range(n):
        y = chip.mvm(x, differentiable=True)
        assert torch.equal(y.detach(), ref.mvm(x))
        (gw,) = torch.autograd.grad(y.sum(), Wg, retain_graph=True)   # the chip is read again
        gs.append(gw)
    Wp = W.clone().requires_grad_()
    plain = program(plan, seed=1, dtype=F64, weights=Wp)
    (g0,) = torch.autograd.grad(plain_read(plain, x).sum(), Wp)
    r = torch.stack(gs) / g0
    low = (r - 0.9).abs() < 1e-9
    assert bool((low | ((r - 1.0).abs() < 1e-9)).all())
    z = (low.double().sum(0) - n * 0.3).abs() / math.sqrt(n * 0.3 * 0.7)
    assert float(z.max()) < norm.ppf(1 - 0.01 / (2 * W.numel()))


def test_analog_layer_trains_on_the_fast_path():
    """An AnalogLinear in training mode keeps its layout between steps, rebuilds it after
    recalibration, and its float64 training read is the simulator's read of the same plan."""
    from torch import nn

    from memcim.nn.analog import AnalogLinear, calibrate

    W, x = _data(4, 64, 20, 32)
    lin = nn.Linear(64, 20).double()
    layer = AnalogLinear.from_digital(lin, preset("generic"), seed=0)
    calibrate(nn.Sequential(layer), x)
    layer.train()
    y = layer(x)
    lay = layer._layout_memo
    y.sum().backward()
    layer(x)
    assert layer._layout_memo is lay and lay.calib is layer._calib
    calibrate(nn.Sequential(layer), x * 2)
    layer.train()
    layer(x)
    assert layer._layout_memo is not lay and layer._layout_memo.calib is layer._calib
    ref = map_matrix(layer.crossbar_weight(), layer.hardware, calib_inputs=layer._calib)
    got = map_for_training(layer.crossbar_weight(), layer.hardware, layer._calib, layout=layer._layout_memo)
    assert torch.equal(got.g_pos, ref.g_pos) and torch.equal(got.g_neg, ref.g_neg)
    torch.testing.assert_close(got.full_scale, ref.full_scale, rtol=1e-12, atol=0)


def test_targets_that_carry_a_gradient():
    """program_devices with targets that carry a gradient (no ``follows``): d g / d g_target is 1 where
    the device follows its target, 0 where stuck, clipped at 0 S or absent."""
    dev = preset("generic").device.replace(stuck_at_min=0.05, stuck_at_max=0.05, prog_sigma_abs=2e-6)
    t = torch.full((4, 50), 1e-6, dtype=F64)
    t[:, :25] = 5e-5
    t.requires_grad_()
    mask = torch.ones(4, 50, dtype=torch.bool)
    mask[3] = False
    g = program_devices(t, None, mask, dev, 2, torch.Generator().manual_seed(0))
    g.sum().backward()
    gd = g.detach()
    # from the chips alone: a device follows unless absent, clipped at 0 S or stuck at g_min / g_max
    # (a programmed device lands exactly on those values with probability 0)
    follows = mask & (gd != 0) & (gd != dev.g_min) & (gd != dev.g_max)
    clipped, stuck = mask & (gd == 0), mask & ((gd == dev.g_min) | (gd == dev.g_max))
    assert bool(clipped.any()) and bool(stuck.any()) and not bool(gd[:, 3].any())
    torch.testing.assert_close(t.grad, follows.sum(0).to(F64))
