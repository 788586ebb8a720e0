"""Two training-step paths of issue 17 item 6 against brute force: the ADC calibration's maximum over
only the calibration drives that can set it (samples that drive a row tile, inputs some sample drives)
equals the int64 product of every drive with every level difference; and an analog layer's weight as
the crossbar matrix W (in, out) (copied by numpy) gives the values of ``w.t().contiguous()`` and the
gradient of plain autograd, accumulated in the weight's own memory order."""
import pytest
import torch
from torch import nn

from memcim.config import preset
from memcim.mapping import crossbar
from memcim.mapping.crossbar import map_for_training, training_layout
from memcim.nn.analog import AnalogLinear, _CrossbarOrder


def _drives(seed, n_samples, n, zero_samples=(), zero_inputs=()):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, n, generator=gen, dtype=torch.float64)
    x[list(zero_samples)] = 0.0
    x[:, list(zero_inputs)] = 0.0
    return x


def _brute_max(L, d):
    """max over every calibration sample of |drives @ d| per row tile and column, in int64."""
    q = L.drives_int8.to(torch.int64)                     # (nrt, batch, R)
    return torch.matmul(q, d.to(torch.int64)).abs().amax(dim=1)


@pytest.mark.parametrize("case", ["border", "dead_tile", "all_zero", "none_dropped"])
def test_calibration_max_over_the_driving_samples_is_the_brute_force(case):
    hw = preset("generic")
    n, m = 300, 70                                         # 3 row tiles of 100, 70 of 126 columns used
    if case == "border":        # samples silent in a tile, inputs nobody drives (MNIST's border pixels)
        x = _drives(1, 64, n, zero_inputs=range(0, 60))
        x[:40, 100:200] = 0.0
    elif case == "dead_tile":   # one row tile nobody drives: its full scale comes from the others
        x = _drives(2, 64, n, zero_inputs=range(100, 200))
    elif case == "all_zero":    # no input at all: every product 0
        x = torch.zeros(16, n, dtype=torch.float64)
    else:
        x = _drives(3, 64, n)
    gen = torch.Generator().manual_seed(7)
    W = torch.randn(n, m, generator=gen)
    L = training_layout((n, m), hw, x)
    old = crossbar._MAX_TILES_SHARE
    try:
        crossbar._MAX_TILES_SHARE = 1.0                  # the per-tile path whatever it leaves out
        L = training_layout((n, m), hw, x)
        assert L.calib_tiles is not None
        plan = map_for_training(W, hw, x, layout=L)
        # the level differences the plan was made of, whole numbers
        d = ((plan.g_pos - plan.g_neg) / hw.device.level_step).round()
        got = crossbar._level_max(L, d, hw.device.levels)
        assert got.dtype == torch.int32
        assert torch.equal(got.to(torch.int64), _brute_max(L, d))
    finally:
        crossbar._MAX_TILES_SHARE = old
    # the batched product (the default where little is left out) gives the same plan
    L2 = training_layout((n, m), hw, x)
    again = map_for_training(W, hw, x, layout=L2)
    assert torch.equal(again.full_scale, plan.full_scale)


def test_driving_samples_kept_exactly():
    hw = preset("generic")
    x = _drives(4, 50, 300, zero_samples=(3, 9), zero_inputs=(0, 1, 250))
    x[5:20, 0:100] = 0.0
    old = crossbar._MAX_TILES_SHARE
    try:
        crossbar._MAX_TILES_SHARE = 1.0
        L = training_layout((300, 40), hw, x)
    finally:
        crossbar._MAX_TILES_SHARE = old
    for t, (tile, q) in enumerate(zip(L.calib_tiles, L.drives_int8.unbind(0))):
        keep_s = [s for s in range(q.shape[0]) if bool(q[s].ne(0).any())]
        keep_r = [r for r in range(q.shape[1]) if bool(q[:, r].ne(0).any())]
        qc, rows = tile
        assert torch.equal(qc, q[keep_s][:, keep_r])
        assert (rows is None) == (len(keep_r) == q.shape[1])
        if rows is not None:
            assert rows.tolist() == keep_r


@pytest.mark.parametrize("shape", [(37, 53), (260, 300)])       # torch's copy / numpy's (>= 2**16 entries)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_crossbar_order_is_the_transpose_with_its_gradient(dtype, shape):
    o, i = shape
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(o, i, generator=gen).to(dtype).requires_grad_(True)
    g = torch.randn(i, o, generator=gen).to(dtype)
    W = _CrossbarOrder.apply(w)
    ref = w.detach().t().contiguous()
    assert W.is_contiguous() and torch.equal(W, ref)
    (W * g).sum().backward()
    assert w.grad.is_contiguous() and torch.equal(w.grad, g.t())
    # a strided gradient (the read's padded columns) comes back the same
    w.grad = None
    gpad = torch.randn(i, o + 3, generator=gen).to(dtype)
    W = _CrossbarOrder.apply(w)
    W.backward(gpad[:, :o])
    assert w.grad.is_contiguous() and torch.equal(w.grad, gpad[:, :o].t())


def test_analog_layer_weight_gradient_is_plain_autograd():
    """The training step's weight gradient through the crossbar-order copy equals the one through
    ``t().contiguous()`` (the same chip: the layer's generator state restored)."""
    hw = preset("generic")
    gen = torch.Generator().manual_seed(3)
    lin = nn.Linear(300, 230)                     # 69,000 weights: numpy's copy
    layer = AnalogLinear.from_digital(lin, hw, seed=5).train()
    x = torch.rand(16, 300, generator=gen)
    state = layer._train_gen.get_state()
    layer(x).square().sum().backward()
    got = layer.weight.grad.clone()
    layer.weight.grad = None
    layer._train_gen.set_state(state)
    import memcim.nn.analog as A

    orig = A._CrossbarOrder.apply
    try:
        A._CrossbarOrder.apply = staticmethod(lambda w2d: w2d.t().contiguous())
        layer(x).square().sum().backward()
    finally:
        A._CrossbarOrder.apply = orig
    assert torch.equal(got, layer.weight.grad)
