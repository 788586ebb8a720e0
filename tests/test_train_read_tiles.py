"""A training chip's read with every row tile of a block at once (issue 17 item 6: fewer, larger
passes per step) against a brute-force float64 read written from the physics, tile by tile: DAC
levels, ``u @ (G+ - G-)`` per array, the thermal noise of each column from the same generator
state, the ADC's rounding and clamp, the codes summed with ``step / c``; and the matrix-wide scale
read with one synchronisation, against ``window / max|W|``."""
import math

import numpy as np
import pytest
import torch

from memcim.config import preset
from memcim.mapping.crossbar import _matrix_scale, map_for_training
from memcim.simulate import program


def _brute_read(chip, x, gen_state):
    """The read of ``chip`` (one chip, thermal noise only) in float64, per row tile and column."""
    m, hw = chip.mapped, chip.mapped.hw
    dev, K = hw.device, hw.adc.steps
    nrt, R, op = m.n_row_tiles, m.tile_rows, m.out_pad
    x = x.double()
    xs = x.abs().amax(-1, keepdim=True)
    u = torch.round((x / xs).clamp(-1.0, 1.0) * hw.dac.steps) / hw.dac.steps
    u = torch.nn.functional.pad(u, (0, nrt * R - m.in_features))
    gp, gn = chip.g_pos.detach()[0].double(), chip.g_neg.detach()[0].double()
    step = m.full_scale.double() / (hw.array.r_tia * hw.array.v_read) / K            # (nrt, op)
    sd = np.sqrt(dev.thermal_psd) * torch.sqrt((gp + gn).sum(1)) / hw.array.v_read / step   # (nrt, op)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(gen_state)
    B = x.shape[0]
    z = torch.empty((B, nrt, op), dtype=chip.dtype).normal_(generator=gen).double()
    y = torch.zeros(B, op, dtype=torch.float64)
    for t in range(nrt):
        j = u[:, t * R:(t + 1) * R] @ (gp[t] - gn[t]) / step[t] + z[:, t] * sd[t]
        y += torch.round(j).clamp(-K, K) * step[t] / m.scale[t].double()
    return (y * xs)[:, : m.out_features]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(300, 40), (784, 130)])
def test_training_read_all_tiles_equals_brute_force(dtype, shape):
    hw = preset("generic").set({"device.shot_noise": False, "device.stuck_at_min": 0.0,
                                "device.stuck_at_max": 0.0})
    gen = torch.Generator().manual_seed(21)
    n, k = shape
    W = (0.1 * torch.randn(n, k, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()
    x = torch.randn(32, n, generator=gen, dtype=torch.float64).to(dtype)
    plan = map_for_training(W.detach(), hw, torch.randn(64, n, generator=gen))
    chip = program(plan, seed=3, dtype=dtype, weights=W)
    assert plan.n_row_tiles > 1
    state = chip.generator.get_state()
    y = chip.mvm(x, differentiable=True)[0].detach().double()
    ref = _brute_read(chip, x, state)
    code = float((plan.full_scale.double() / (hw.array.r_tia * hw.array.v_read) / hw.adc.steps
                  / plan.scale.double()).max()) * float(x.double().abs().amax())
    diff = (y - ref).abs()
    if dtype == torch.float64:
        torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9 * code)
    else:
        # float32 products and folded constants: an ADC code within float32 rounding of a half step may
        # round the other way (one code); the rest agree to float32 rounding
        assert float(diff.max()) <= 1.01 * code * plan.n_row_tiles
        assert float((diff > 1e-3 * code).double().mean()) < 0.02


def test_matrix_scale_one_sync():
    gen = np.random.default_rng(5)
    W = torch.from_numpy(gen.standard_normal((50, 30)))
    window = 7.5e-5
    assert _matrix_scale(W, window) == pytest.approx(window / float(np.abs(W.numpy()).max()), rel=1e-15)
    assert _matrix_scale(W.float(), window) == pytest.approx(window / float(np.abs(W.float().numpy()).max()),
                                                             rel=1e-15)
    assert _matrix_scale(torch.zeros(4, 3), window) == 1.0
    for bad in (math.nan, math.inf, -math.inf):
        Wb = W.clone()
        Wb[3, 4] = bad
        with pytest.raises(ValueError, match="^W: "):
            _matrix_scale(Wb, window)


def test_training_read_rejects_non_finite_inputs():
    hw = preset("generic")
    W = torch.randn(40, 10, dtype=torch.float32, requires_grad=True)
    chip = program(map_for_training(W.detach(), hw, torch.randn(16, 40)), seed=1, weights=W)
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.randn(4, 40)
        x[1, 2] = bad
        with pytest.raises(ValueError, match="^x: "):
            chip.mvm(x, differentiable=True)
