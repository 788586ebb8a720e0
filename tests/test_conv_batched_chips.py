"""AnalogConv2d's patches (copied straight into their row layout) and the batched chips' shared first
layer (issue 17 item 2): the patches against ``F.unfold``, the batched passes against the loop over
chips, value by value."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memcim.config import preset
from memcim import simulate as sim_mod
from memcim.nn import analog as analog_mod
from memcim.nn.analog import AnalogConv2d, convert_to_analog, program
from memcim.nn.evaluate import _shared_first_layer, chip_outputs

CONVS = [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=2, dilation=2),
         dict(kernel_size=(3, 2), padding="same"), dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0),
                                                         dilation=(1, 2)),
         dict(kernel_size=1), dict(kernel_size=5, padding="valid"), dict(kernel_size=(1, 5), stride=3, padding=(0, 2)),
         dict(kernel_size=3, dilation=(2, 1), padding="same")]


def _unfold_rows(conv, x):
    """The patches as torch unfolds them: (N * L, C * kh * kw), the (channel, kernel row, kernel column)
    column order of ``weight.reshape(out, -1)``."""
    if isinstance(conv.padding, str):
        ref = nn.Conv2d(conv.in_channels, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1],
                        conv.kernel_size, 1, conv.padding, conv.dilation, bias=False)
        # "same" pads like torch's conv: the rows are those of a one-hot kernel's outputs
        eye = torch.eye(ref.out_channels, dtype=x.dtype).reshape(ref.weight.shape)
        y = F.conv2d(F.pad(x, _same_pad(conv)) if conv.padding == "same" else x, eye, dilation=conv.dilation)
        return y.flatten(2).transpose(1, 2).reshape(-1, ref.out_channels)
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _same_pad(conv):
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    th, tw = dh * (kh - 1), dw * (kw - 1)
    return (tw // 2, tw - tw // 2, th // 2, th - th // 2)


@pytest.mark.parametrize("kw", CONVS)
@pytest.mark.parametrize("kept", [False, True])
def test_patches_equal_unfold(kw, kept):
    """The patches copied into their row layout are torch's unfolded patches, bit for bit (float64
    inputs: the one-hot convolution of the 'same' case is exact)."""
    torch.manual_seed(0)
    layer = AnalogConv2d(3, 4, **kw, hardware=preset("ideal"))
    x = torch.randn(5, 3, 11, 9, dtype=torch.float64)
    rows, h, w = layer._patches(x, kept=kept)
    ref = _unfold_rows(layer, x)
    assert torch.equal(rows, ref)
    assert (h, w) == F.conv2d(x, layer.weight.double(), None, layer.stride, layer.padding, layer.dilation).shape[2:]


def test_patches_with_a_gradient_are_differentiable():
    layer = AnalogConv2d(2, 3, 3, padding=1, stride=2, hardware=preset("ideal"))
    x = torch.randn(2, 2, 7, 6, requires_grad=True)
    rows, _, _ = layer._patches(x)
    rows.sum().backward()
    # each input pixel's gradient is the number of patches it sits in
    count = F.conv_transpose2d(torch.ones(1, 1, 4, 3), torch.ones(1, 1, 3, 3), padding=1, stride=2,
                               output_padding=(0, 1))
    assert torch.equal(x.grad, count.expand(2, 2, 7, 6))


def test_eval_outputs_do_not_share_the_kept_buffer():
    """The kept patch buffer is reused by the next read; a layer's outputs are its own tensors."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    a = program(convert_to_analog(nn.Sequential(conv), preset("ideal")), 0, dtype=torch.float64).eval()
    x = torch.randn(4, 2, 6, 6)
    y1 = a(x)
    keep = y1.clone()
    a(torch.randn(4, 2, 6, 6))
    assert torch.equal(y1, keep)
    torch.testing.assert_close(y1, conv(x), rtol=1e-5, atol=1e-5)   # ideal hardware: the digital conv
    program(a, 0, dtype=torch.float64)
    with torch.no_grad():         # the bias written in the outputs' layout in one pass: the same values
        assert torch.equal(a(x), y1)


def _outs(model, x, hw, **kw):
    return torch.stack([o.clone() for _, _, o in chip_outputs(model, x, hw, chips=5, seed=3, batch_size=4,
                                                              progress=False, **kw)])


@pytest.mark.parametrize("kw", CONVS)
def test_batched_exact_equals_the_loop_for_any_conv(kw):
    """reads='exact' with a shared first layer (one unfolding, one DAC conversion for the chips): chip c
    equals chip c of the loop bit for bit, with a digital Softplus after the analog layer (which ran on
    K times the rows before and rounded differently), over batches of 4 and 2 and groups of 3 and 2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, **kw), nn.Softplus(), nn.Flatten()).eval()
    x = torch.rand(6, 3, 11, 9, generator=torch.Generator().manual_seed(1))
    hw = preset("generic")
    assert torch.equal(_outs(model, x, hw, chips_per_pass=3), _outs(model, x, hw))


class _Wrapped(nn.Module):
    """Not a flat sequential: the input is repeated for each chip (no shared first layer)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(48, 5))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("which", ["linear-first", "wrapped", "nested"])
def test_batched_exact_equals_the_loop_for_other_models(which):
    """A flat sequential whose first analog layer is a Linear shares it too; a wrapped model and a
    sequential with analog layers inside a child repeat the input; each equals the loop."""
    torch.manual_seed(0)
    if which == "linear-first":
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    elif which == "wrapped":
        model = _Wrapped()
    else:
        model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU()), nn.Flatten(),
                              nn.Linear(48, 5))
    model = model.eval()
    analog = convert_to_analog(model, preset("generic"))
    assert (_shared_first_layer(analog) is not None) == (which == "linear-first")
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    hw = preset("noisy")
    assert torch.equal(_outs(model, x, hw, chips_per_pass=2), _outs(model, x, hw))


def test_stacked_reads_share_the_first_layer():
    """reads='stacked' reads the shared first layer in one call of the stacked chip; with read noise off
    it gives the loop's outputs up to float rounding of the batched matmul."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(18, 5)).eval()
    x = torch.rand(6, 1, 4, 6, generator=torch.Generator().manual_seed(3))
    quiet = preset("generic").without("thermal", "shot", "rtn", "flicker")
    torch.testing.assert_close(_outs(model, x, quiet, chips_per_pass=5, reads="stacked"), _outs(model, x, quiet),
                               rtol=1e-5, atol=1e-5)


def test_chip_outputs_frees_the_kept_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()).eval()
    x = torch.rand(3, 1, 5, 5)
    for _ in chip_outputs(model, x, preset("generic"), chips=2, chips_per_pass=2, progress=False):
        assert any(k in (sim_mod._WORK.bufs or {}) for k in analog_mod._KEYS)   # kept while the pass runs
    assert not any(k in (sim_mod._WORK.bufs or {}) for k in analog_mod._KEYS)
