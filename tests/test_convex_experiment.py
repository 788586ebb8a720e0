"""Pieces of the convex-cim experiment on a tiny model: per-layer designs, per-column FS in chips, table."""
import numpy as np
import torch
from torch import nn

from memcim.config import preset
from memcim.experiments.convex_cim import _evaluate, design_network, format_table, linear_inputs


class _DS:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)


def _tiny():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.rand(200, 30)
    y = m(x).argmax(1)
    return m, x, y


def test_linear_inputs_and_designs():
    m, x, _ = _tiny()
    acts = linear_inputs(m, x)
    assert acts["1"].shape == (200, 30) and acts["3"].shape == (200, 16)
    assert np.allclose(acts["3"], torch.relu(m[1](x)).detach().numpy(), atol=1e-6)
    hw = preset("convex_cim")
    naive = design_network(m, hw, x, naive=True)
    opt = design_network(m, hw, x, method="fast")
    for name in ("1", "3"):
        assert naive[name]["design"].g_max == hw.device.g_max
        t_opt = opt[name]["model"].terms(opt[name]["design"], per="layer")["total"]
        t_naive = naive[name]["model"].terms(naive[name]["design"], per="layer")["total"]
        assert t_opt < t_naive
        assert opt[name]["hw"].adc.fs_mode == "fixed"


def test_per_column_fs_is_written_into_every_chip():
    m, x, y = _tiny()
    hw = preset("convex_cim").replace(adc={"bits": 4})
    d = design_network(m, hw, x, method="fast", per_column=True)
    r = _evaluate(m, _DS(x, y), hw, d, 2, 0, x, True)
    assert r["accuracy"]["n"] == 2 and 0 <= r["accuracy"]["mean"] <= 1
    # the same through the chips directly: the FS tensor of a programmed layer is the design's
    from memcim.nn.analog import convert_to_analog, program

    analog = convert_to_analog(m, hw, overrides={n: v["hw"] for n, v in d.items()})
    program(analog, 0)
    chip = analog[1].chip
    plan = d["1"]["model"].apply_design(chip.mapped, d["1"]["design"])
    want = d["1"]["model"].fs_volts(d["1"]["design"])
    assert np.allclose(plan.full_scale.numpy()[:, :16], want)
    assert not np.allclose(chip.mapped.full_scale.numpy()[:, :16], want)    # plans are frozen: a new one


def test_format_table():
    doc = {"rows": {"digital": {"accuracy": {"mean": 0.98, "std": 0.0}, "mse": {"mean": 0.0}, "energy_j": 1e-6},
                    "naive": {"accuracy": {"mean": 0.9, "std": 0.01}, "mse": {"mean": 2.0}, "energy_j": 4e-9,
                              "predicted_layer_mse": 1.0}},
           "adc_sweep": [{"bits": 3, "naive": {"mean": 0.1, "std": 0.0}, "both": {"mean": 0.95, "std": 0.01}}],
           "summary": {"naive_loss_points": 8.0, "both_gap_points": 0.4, "mse_reduction_convex_vs_naive": 0.9,
                       "mse_reduction_both_vs_naive": 0.9, "energy_gain_both_vs_naive": 0.01,
                       "energy_gain_vs_digital": 100.0, "crossbar_read_energy_reduction_both_vs_naive": 0.3,
                       "adc3_both_accuracy": 0.95}}
    text = format_table(doc)
    assert "naive" in text and "3-bit ADC, both: 95.00 %" in text and "90.00 ±  1.00" in text
