"""Conversion of every layer type (issue 15, item 1): Conv1d/2d/3d (grouped, depthwise, dilated, every
padding mode), LSTM/GRU, MultiheadAttention and TransformerEncoderLayer, the extendable mapping and
the conversion report. The independent truth is the digital torch module: on the ideal preset (no
converters, no noise) the analog module equals it to float64 rounding."""
import pytest
import torch
from torch import nn

from memcim.config import preset
from memcim.mapping.crossbar import tile_geometry
from memcim.nn.analog import (DEFAULT_MAPPING, AnalogConv1d, AnalogGroupedConv2d, AnalogGRU, AnalogLinear,
                              AnalogLSTM, AnalogMatrix, AnalogMultiheadAttention, analog_layers,
                              conversion_report, convert_to_analog, convert_to_digital, program, read_time,
                              set_read_time)

IDEAL = preset("ideal")
D = torch.float64


class Wrap(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *x):
        return self.m(*x)


def _first(y):
    return y[0] if isinstance(y, tuple) else y


def _run(model, hw, x, seed=0):
    a = program(convert_to_analog(model, hw), seed, dtype=D).eval()
    return a, _first(a(*x))


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=D)
    seq = r(3, 6, 5)
    tok = r(2, 5, 8)
    return {
        "conv1d-grouped-dilated-circular": (nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2,
                                                      padding_mode="circular"), (r(2, 4, 11),)),
        "conv1d-same": (nn.Conv1d(3, 5, 4, padding="same"), (r(2, 3, 9),)),
        "conv2d-depthwise-reflect-same": (nn.Conv2d(4, 8, 3, padding="same", groups=4, padding_mode="reflect"),
                                          (r(2, 4, 7, 7),)),
        "conv2d-grouped-strided": (nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                                             groups=2), (r(2, 6, 8, 9),)),
        "conv3d-replicate": (nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 2), dilation=(2, 1, 1),
                                       padding_mode="replicate"), (r(2, 2, 5, 6, 7),)),
        "conv3d-depthwise": (nn.Conv3d(3, 3, 3, padding=1, groups=3, bias=False), (r(1, 3, 4, 4, 4),)),
        "lstm-2layer-bidir-batchfirst": (nn.LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True),
                                         (seq,)),
        "lstm-proj": (nn.LSTM(5, 4, num_layers=2, proj_size=3), (seq.transpose(0, 1),)),
        "gru-2layer-bidir-batchfirst": (nn.GRU(5, 4, num_layers=2, bidirectional=True, batch_first=True), (seq,)),
        "mha": (nn.MultiheadAttention(8, 2, batch_first=True), (tok, tok, tok)),
        "mha-kdim-vdim": (nn.MultiheadAttention(8, 2, kdim=6, vdim=3), (r(5, 2, 8), r(4, 2, 6), r(4, 2, 3))),
        "transformer-encoder-layer": (nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), (tok,)),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_ideal_hardware_equals_digital(case):
    torch.manual_seed(0)
    mod, x = _cases()[case]
    model = Wrap(mod).to(D).eval()
    ref = model(*x)
    a, y = _run(model, IDEAL, x)
    torch.testing.assert_close(y, _first(ref), rtol=1e-12, atol=1e-12)     # float64 rounding
    if isinstance(ref, tuple) and isinstance(ref[1], tuple):                 # LSTM (h_n, c_n)
        for u, v in zip(a(*x)[1], ref[1]):
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    assert not any(type(m) in DEFAULT_MAPPING for m in a.modules()
                   if not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear))
    # back to digital: the same module type and parameters
    d = convert_to_digital(a)
    assert type(d.m) is type(mod)
    torch.testing.assert_close(_first(d(*x)), _first(ref), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["conv2d-grouped-strided", "conv3d-replicate", "gru-2layer-bidir-batchfirst",
                                  "lstm-2layer-bidir-batchfirst", "mha"])
def test_noise_gives_an_error_that_shrinks_with_the_noise(case):
    mod, x = _cases()[case]
    torch.manual_seed(0)
    model = Wrap(mod).to(D).eval()
    ref = _first(model(*x))
    errs = []
    for sigma in (0.2, 0.05, 0.01):
        hw = IDEAL.replace(device={"prog_sigma_rel": sigma}, name=f"s{sigma}")
        mse = [(_run(model, hw, x, seed=s)[1] - ref).pow(2).mean().item() for s in range(3)]
        errs.append(sum(mse) / 3)
    assert errs[0] > errs[1] > errs[2] > 0


def test_grouped_and_depthwise_use_one_matrix_per_group():
    hw = IDEAL.replace(array={"rows": 8, "cols": 8}, name="small")
    model = nn.Sequential(nn.Conv2d(6, 12, 3, groups=3), nn.Conv2d(12, 12, 3, groups=12), nn.Conv1d(4, 4, 1))
    model = nn.Sequential(model[0], model[1])
    a, rep = convert_to_analog(model, hw, return_report=True)
    assert isinstance(a[0], AnalogGroupedConv2d) and isinstance(a[1], AnalogGroupedConv2d)
    # groups=3: each group is (6/3 * 3*3, 12/3) = (18, 4): 18 rows on 8-row arrays -> 3 row tiles, 1 column tile
    assert [x["shape"] for x in rep.arrays["0"]] == [(18, 4)] * 3
    assert [x["tiles"] for x in rep.arrays["0"]] == [3] * 3
    # depthwise 12 groups of (9, 1): 9 rows on 8-row arrays -> 2 tiles each, 24 arrays
    assert [x["shape"] for x in rep.arrays["1"]] == [(9, 1)] * 12
    assert sum(x["tiles"] for x in rep.arrays["1"]) == 24
    assert tile_geometry(18, 4, hw)[2:] == (3, 1)
    program(a, 0)
    units = [m for _, m in analog_layers(a)]
    assert len(units) == 15 and all(isinstance(m, AnalogMatrix) for m in units)
    assert units[0].chip.mapped.n_row_tiles == 3 and units[3].chip.mapped.n_row_tiles == 2
    # each group's chip holds that group's kernel slice
    w = a[0].weight.detach().to(D)
    for g, u in enumerate(units[:3]):
        torch.testing.assert_close(u.crossbar_weight().to(D), w[4 * g:4 * g + 4].reshape(4, -1).t())


def test_transformer_report_lists_digital_attention_products():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2,
                                enable_nested_tensor=False).to(D).eval()
    x = torch.randn(2, 5, 8, dtype=D)
    a, rep = convert_to_analog(Wrap(enc), IDEAL, return_report=True)
    names = [n for n, *_ in rep.analog]
    assert "m.layers.0.self_attn" in names and "m.layers.1.linear2" in names
    assert not any("out_proj" in n for n in names)                  # part of the attention layer
    assert len(rep.arrays["m.layers.0.self_attn"]) == 4
    ops = {(n, o) for n, o, _ in rep.digital_ops}
    for o in ("Q K^T", "softmax", "attention x V"):
        assert ("m.layers.0.self_attn", o) in ops
    assert "activation-by-activation" in dict(((n, o), r) for n, o, r in rep.digital_ops)[
        ("m.layers.0.self_attn", "Q K^T")]
    assert {(n, r) for n, _, r in rep.digital} >= {("m.layers.0.norm1", "LayerNorm has no analog implementation")}
    program(a, 0, dtype=D)
    torch.testing.assert_close(a.eval()(x), enc(x), rtol=1e-12, atol=1e-12)
    again = conversion_report(a)
    assert again.analog == rep.analog and again.digital_ops == rep.digital_ops and again.arrays == rep.arrays
    assert "Q K^T" in str(rep) and "q: 8x8" in str(rep)


def test_residual_concat_and_fx_graphs():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1, groups=2)
            self.b = nn.Conv2d(4, 4, 1)
            self.head = nn.Linear(8 * 16, 3)

        def forward(self, x):
            y = x + torch.relu(self.a(x))                     # residual
            y = torch.cat([y, self.b(x)], dim=1)              # concatenation
            return self.head(y.flatten(1))

    torch.manual_seed(0)
    model = Block().to(D).eval()
    x = torch.randn(2, 4, 4, 4, dtype=D)
    traced = torch.fx.symbolic_trace(model)
    for m in (model, traced):
        a, y = _run(m, IDEAL, (x,))
        torch.testing.assert_close(y, model(x), rtol=1e-12, atol=1e-12)
        assert len(conversion_report(a).analog) == 3


def test_user_mapping_replaces_a_custom_module():
    class Scale(nn.Module):                                   # y = x * w (per feature): digital only
        def __init__(self, n):
            super().__init__()
            self.w = nn.Parameter(torch.linspace(0.5, 1.5, n))

        def forward(self, x):
            return x * self.w

    class AnalogScale(nn.Module):                             # the same as a diagonal crossbar matrix
        @classmethod
        def from_digital(cls, layer, hardware, *, seed=0, train_noise=True):
            new = cls()
            lin = nn.Linear(len(layer.w), len(layer.w), bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.diag(layer.w.detach()))
            new.lin = AnalogLinear.from_digital(lin, hardware, seed=seed, train_noise=train_noise)
            return new

        def forward(self, x):
            return self.lin(x)

    model = nn.Sequential(nn.Linear(4, 5), Scale(5)).to(D)
    _, rep = convert_to_analog(model, IDEAL, return_report=True)
    assert ("1", "Scale", "Scale has no analog implementation") in rep.digital
    a, rep = convert_to_analog(model, IDEAL, return_report=True, mapping={Scale: AnalogScale})
    assert isinstance(a[1], AnalogScale) and [n for n, *_ in rep.analog] == ["0", "1.lin"]
    x = torch.randn(3, 4, dtype=D)
    torch.testing.assert_close(program(a, 0, dtype=D).eval()(x), model(x), rtol=1e-12, atol=1e-12)
    # None in the user mapping keeps a default type digital
    _, rep = convert_to_analog(model, IDEAL, return_report=True, mapping={nn.Linear: None})
    assert ("0", "Linear", "excluded by mapping") in rep.digital
    with pytest.raises(TypeError, match="mapping"):
        convert_to_analog(model, IDEAL, mapping={"Scale": AnalogScale})


def test_programming_chips_state_and_read_time():
    torch.manual_seed(0)
    hw = preset("generic")
    model = Wrap(nn.LSTM(5, 4, num_layers=1, bidirectional=True, batch_first=True)).eval()
    x = torch.randn(2, 6, 5)
    a = convert_to_analog(model, hw, calib_data=x)
    assert isinstance(a.m, AnalogLSTM)
    units = [m for _, m in analog_layers(a)]
    assert len(units) == 4 and all(u.calibration_inputs is not None for u in units)
    # the hidden matrix is calibrated on every time step of the recurrence
    assert a.m.crossbars["weight_hh_l0"].calibration_inputs.shape == (6 * 2, 4)
    with pytest.raises(RuntimeError, match="not programmed"):
        a(x)
    program(a, 0)
    y0 = a(x)[0]
    program(a, 1)
    assert not torch.equal(a(x)[0], y0)                               # another chip
    b = convert_to_analog(model, hw)
    program(a, 0)
    b.load_state_dict(a.state_dict())                                 # restores the chip and its RNG
    torch.testing.assert_close(b(x)[0], a(x)[0], rtol=0, atol=0)
    set_read_time(a, 3600.0)
    assert {u.read_time for u in units} == {3600.0}
    with read_time(a, 86400.0):
        assert {u.read_time for u in units} == {86400.0}
    assert {u.read_time for u in units} == {3600.0}


def test_training_read_reaches_the_owner_parameters():
    torch.manual_seed(0)
    model = Wrap(nn.GRU(3, 4, batch_first=True))
    a = convert_to_analog(model, preset("generic")).train()
    out, h = a(torch.randn(2, 5, 3))
    out.pow(2).sum().backward()
    assert a.m.weight_ih_l0.grad is not None and a.m.weight_hh_l0.grad.abs().sum() > 0
    conv = convert_to_analog(Wrap(nn.Conv1d(4, 4, 3, groups=4)), preset("generic")).train()
    conv(torch.randn(2, 4, 8)).sum().backward()
    assert conv.m.weight.grad is not None and conv.m.weight.grad.abs().sum() > 0


def test_bad_inputs_give_one_line_errors():
    a = program(convert_to_analog(Wrap(nn.LSTM(5, 4, batch_first=True)), IDEAL), 0)
    with pytest.raises(ValueError, match="input_size=5"):
        a(torch.randn(2, 6, 3))
    seq = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 6, 5), [6, 4], batch_first=True)
    with pytest.raises(TypeError, match="PackedSequence"):
        a(seq)
    c = program(convert_to_analog(Wrap(nn.Conv1d(4, 4, 3)), IDEAL), 0)
    with pytest.raises(ValueError, match="4 input channels"):
        c(torch.randn(2, 3, 8))


def test_closed_form_rejects_new_layers_in_one_line():
    from memcim.analysis.moments import parse_model
    for mod in (nn.LSTM(4, 3), nn.Conv1d(2, 2, 3), nn.Conv2d(4, 4, 3, groups=2)):
        with pytest.raises(ValueError) as e:
            parse_model(nn.Sequential(mod))
        msg = str(e.value)
        assert "\n" not in msg and (type(mod).__name__ in msg or "groups" in msg), msg
