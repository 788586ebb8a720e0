"""DAC and ADC transfer functions against values computed by hand."""
import pytest
import torch

from memcim.config import ADCConfig, DACConfig
from memcim.hardware.converters import adc_convert, dac_convert


def test_adc_transfer_3_bits_with_saturation():
    # 3 bits: K = 3 codes each side, FS = 1.5 V -> step 0.5 V, outputs in {-1.5, ..., 1.5}
    adc = ADCConfig(enabled=True, bits=3, fs_mode="fixed", full_scale=1.5)
    v = torch.tensor([-9.0, -1.6, -1.3, -0.26, -0.24, 0.0, 0.24, 0.26, 0.74, 0.76, 1.49, 2.0, 40.0], dtype=torch.float64)
    want = [-1.5, -1.5, -1.5, -0.5, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.5, 1.5, 1.5]
    assert adc_convert(v, 1.5, adc).tolist() == want


def test_adc_without_saturation_and_disabled():
    adc = ADCConfig(enabled=True, bits=3, fs_mode="fixed", full_scale=1.5, saturate=False)
    assert adc_convert(torch.tensor([2.1, -3.9]), 1.5, adc).tolist() == [2.0, -4.0]
    off = ADCConfig(enabled=False)
    v = torch.tensor([0.123456, -7.0])
    assert torch.equal(adc_convert(v, 1.0, off), v)


def test_adc_per_column_full_scale_broadcasts():
    adc = ADCConfig(enabled=True, bits=2, fs_mode="fixed", full_scale=1.0)  # K = 1: outputs {-FS, 0, FS}
    v = torch.tensor([[0.6, 0.6], [5.0, -5.0]])
    fs = torch.tensor([1.0, 2.0])
    assert adc_convert(v, fs, adc).tolist() == [[1.0, 0.0], [1.0, -2.0]]


def test_dac_fixed_range_signed_clip():
    dac = DACConfig(enabled=True, bits=3, x_range=2.0)  # K = 3, step 2/3 in x
    x = torch.tensor([[-5.0, -2.0, -0.3, 0.0, 0.34, 1.0, 1.9, 3.0]], dtype=torch.float64)
    u, s = dac_convert(x, dac)
    assert s.tolist() == [[2.0]]
    assert torch.allclose(u * 3, torch.tensor([[-3.0, -3.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0]], dtype=torch.float64))


def test_dac_unsigned_and_dynamic_range():
    dac = DACConfig(enabled=True, bits=2, x_range=3.0, signed=False)  # 3 steps over [0, 3]
    u, _ = dac_convert(torch.tensor([[-1.0, 0.4, 1.6, 2.4, 9.0]]), dac)
    assert (u * 3).tolist() == [[0.0, 0.0, 2.0, 2.0, 3.0]]
    dyn = DACConfig(enabled=True, bits=8, x_range=None)
    x = torch.tensor([[0.5, -2.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    u, s = dac_convert(x, dyn)
    assert s.flatten().tolist() == [2.0, 1.0]
    assert torch.allclose(u[0] * 127, torch.round(torch.tensor([0.25, -1.0, 0.5], dtype=torch.float64) * 127))


def test_dac_no_clip_rejects_out_of_range():
    import pytest

    dac = DACConfig(enabled=True, bits=4, x_range=1.0, clip=False)
    with pytest.raises(ValueError, match="dac.clip"):
        dac_convert(torch.tensor([[1.5]]), dac)


def test_dac_into_a_buffer_by_hand():
    """``out=``: the drives written into a given (strided) buffer are the values computed by hand,
    3 bits (K = 3) with each vector's own range; a buffer of another shape is refused."""
    import pytest

    x = torch.tensor([[0.5, -1.0, 0.2], [0.0, 0.0, 0.0], [3.0, 1.4, -0.6]], dtype=torch.float64)
    dac = DACConfig(enabled=True, bits=3)
    buf = torch.full((3, 5), 7.0, dtype=torch.float64)
    u, scale = dac_convert(x, dac, out=buf[:, :3])
    want = [[2 / 3, -1.0, 1 / 3], [0.0, 0.0, 0.0], [1.0, 1 / 3, -1 / 3]]   # round(3 x / max|x|) / 3
    torch.testing.assert_close(buf[:, :3], torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-15)
    assert u.data_ptr() == buf.data_ptr() and scale.flatten().tolist() == [1.0, 1.0, 3.0]
    assert (buf[:, 3:] == 7.0).all()                         # the rest of the buffer untouched
    with pytest.raises(ValueError, match="out"):
        dac_convert(x, dac, out=torch.empty(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="out"):
        dac_convert(x, dac, ste=True, out=torch.empty(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signed_dynamic_dac_needs_no_clamp(dtype):
    """A signed DAC scaled by each vector's own max |x| skips the clamp: brute force over vectors of
    every magnitude (subnormal to near overflow, ties of the max, one-element rows) gives the clamped,
    rounded drives bit for bit."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for e in (-40, -20, -3, 0, 3, 20, 37):
        rows.append(torch.randn(64, 33, generator=g, dtype=torch.float64) * 10.0 ** e)
    x = torch.cat(rows).to(dtype)
    x[0, :] = x[0, 0]                                              # a row of ties
    x[1, :] = -x[1].abs()                                          # all negative
    x[2, :] = torch.finfo(dtype).tiny / 3                          # subnormal
    for bits in (2, 4, 8):
        dac = DACConfig(enabled=True, bits=bits, x_range=None)
        assert dac.signed and dac.x_range is None
        u, s = dac_convert(x.clone(), dac)
        ref = ((x / s).clamp(-1.0, 1.0) * dac.steps).round() / dac.steps
        assert torch.equal(u, ref)
        assert float(u.abs().max()) == 1.0
