"""The training read's fast paths (issue 17 item 6), each against autograd through the plain formula:
the weight gradient folded into one factor per weight and carried by the chip's effective difference
(``G+ - G-``) next to the gradients of ``G+`` and ``G-`` themselves, the read's backward as one product
over all row tiles when they share their scale and per row tile when they do not, and a float32
training chip whose differentiable and plain reads share their values bit for bit."""
import dataclasses

import pytest
import torch

from memcim.config import preset
from memcim.hardware.device import programming_sigma
from memcim.mapping.crossbar import map_for_training, map_matrix
from memcim.simulate import program

from _references import assert_same_grads, input_and_weight_grads, plain_read

F64 = torch.float64


def _data(seed, n, m, b):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, dtype=F64, generator=gen), torch.randn(b, n, dtype=F64, generator=gen)



def _targets_reference(plan, W, hw, seed):
    """The chip's conductances as autograd functions of W: the targets ``c max(+-W, 0)`` carried
    through the plain programming formula (no stuck devices), with the same random numbers."""
    pad = (0, plan.out_pad - plan.out_features, 0, plan.n_row_tiles * plan.tile_rows - plan.in_features)
    wt = torch.nn.functional.pad(W, pad).reshape(plan.n_row_tiles, plan.tile_rows, plan.out_pad)
    c = plan.scale.unsqueeze(1)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for tgt, t in ((plan.g_pos, c * wt.clamp_min(0)), (plan.g_neg, c * (-wt).clamp_min(0))):
        sig = programming_sigma(tgt, None, hw.device)
        z = torch.randn((1, *tgt.shape), generator=gen, dtype=tgt.dtype)
        g = (tgt + (t - t.detach()) + sig * z).clamp_min(0.0) * plan.mask_pos.to(tgt.dtype)
        out.append(g)
    return out


@pytest.mark.parametrize("per_tile_scale", [False, True])
def test_read_gradient_one_product_or_per_tile(per_tile_scale):
    """The differentiable read's gradients for x and W equal autograd through the plain read, for a plan
    whose row tiles share their scale (one product over all tiles) and one whose scales differ per
    row tile (a product per tile)."""
    hw = preset("generic").set({"device.stuck_at_min": 0.0, "device.stuck_at_max": 0.0})
    W, x = _data(11, 300, 40, 7)
    plan = map_matrix(W, hw, calib_inputs=x)
    if per_tile_scale:
        f = torch.linspace(0.6, 1.4, plan.n_row_tiles, dtype=F64).unsqueeze(1)
        plan = dataclasses.replace(plan, scale=plan.scale * f)
    grads = []
    for read in ("mvm", "plain"):
        Wg, xg = W.clone().requires_grad_(), x.clone().requires_grad_()
        chip = program(plan, seed=2, dtype=F64, weights=Wg)
        y = chip.mvm(xg, differentiable=True) if read == "mvm" else plain_read(chip, xg)
        grads.append(input_and_weight_grads(y, xg, Wg, seed=8))
    assert_same_grads(grads)


def test_weight_gradient_through_the_difference_and_the_devices():
    """One loss that uses the chip's read (its effective difference, the folded factor) and its
    conductances G+ and G- directly: W's gradient equals autograd through the targets and the plain
    programming formula with the same random numbers (exact zeros in W: both devices pass)."""
    hw = preset("generic").set({"device.stuck_at_min": 0.0, "device.stuck_at_max": 0.0,
                                "device.prog_sigma_abs": 2e-6})
    W, x = _data(12, 130, 20, 5)
    W[0, :4] = 0.0
    plan = map_matrix(W, hw, calib_inputs=x)
    Wg = W.clone().requires_grad_()
    chip = program(plan, seed=6, dtype=F64, weights=Wg)
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(chip.g_pos.shape, dtype=F64, generator=gen)
    b = torch.randn(chip.g_neg.shape, dtype=F64, generator=gen)
    d = torch.randn(chip.g_pos.shape, dtype=F64, generator=gen)
    loss = (chip.effective_difference() * d).sum() + (chip.g_pos * a).sum() + (chip.g_neg * b).sum()
    loss.backward()
    Wr = W.clone().requires_grad_()
    gp, gn = _targets_reference(plan, Wr, hw, 6)
    assert torch.equal(gp.detach(), chip.g_pos.detach()) and torch.equal(gn.detach(), chip.g_neg.detach())
    ((gp - gn) * d + gp * a + gn * b).sum().backward()
    torch.testing.assert_close(Wg.grad, Wr.grad, rtol=1e-12, atol=0)


def test_float32_training_chip_reads_agree():
    """A float32 training chip (map_for_training, program(weights=W)): its differentiable read and its
    plain read give the same values bit for bit from the same generator state, with every noise on;
    and the read is within its noise of the plain formula."""
    hw = preset("generic")
    W, x = _data(13, 300, 70, 64)
    W32, x32 = W.float().requires_grad_(), x.float()
    plan = map_for_training(W32.detach(), hw, x32)
    chip = program(plan, seed=4, dtype=torch.float32, weights=W32)
    state = chip.generator.get_state()
    y1 = chip.mvm(x32, differentiable=True)
    chip.generator.set_state(state)
    y2 = chip.mvm(x32)
    assert y1.requires_grad and torch.equal(y1.detach(), y2)
    ref = plain_read(chip, x32).detach()
    # ADC step and read noise bound the difference: a few percent of the output range
    assert float((y2 - ref).abs().max()) < 0.1 * float(ref.abs().max())
