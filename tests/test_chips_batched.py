"""Chips batched through the network (issue 15 item 4): ``chip_outputs(..., chips_per_pass=K)``."""
import math

import pytest
import torch
from torch import nn

from memcim.config import preset
from memcim.data.digits import load_digits
from memcim.nn.analog import convert_to_analog
from memcim.nn.evaluate import batchable, chip_outputs, chips_per_pass_auto, evaluate_analog

from _nn_helpers import TinyCNN, digits_mlp


def _cnn():
    with torch.random.fork_rng():
        return TinyCNN().eval()


def _outs(model, x, hw, **kw):
    return torch.stack([o.clone() for _, _, o in chip_outputs(model, x, hw, chips=5, seed=3, batch_size=7,
                                                              progress=False, **kw)])


@pytest.mark.parametrize("k", [2, 5, "auto"])
@pytest.mark.parametrize("which", ["mlp", "cnn"])
@pytest.mark.parametrize("hw", ["generic", "noisy"])
def test_exact_batched_equals_one_chip_at_a_time(k, which, hw):
    """reads='exact': chip c of a batched pass gives bit for bit chip c of the loop (same
    conductances, same read noise), whether K divides the chips or not, over several input batches."""
    if which == "mlp":
        model, x = digits_mlp(), load_digits("test").x[:20]
    else:
        model, x = _cnn(), torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    hw = preset(hw)
    loop = _outs(model, x, hw)
    batched = _outs(model, x, hw, chips_per_pass=k)
    assert torch.equal(batched, loop)


def test_evaluate_analog_summaries_agree_exactly():
    model, ds = digits_mlp(), load_digits("test")
    calib = load_digits("train").x[:64]
    a = evaluate_analog(model, ds, preset("generic"), chips=4, seed=1, calib_data=calib, progress=False)
    b = evaluate_analog(model, ds, preset("generic"), chips=4, seed=1, calib_data=calib, progress=False,
                        chips_per_pass=3)
    assert a["accuracy"]["values"] == b["accuracy"]["values"]
    assert a["mse"]["values"] == b["mse"]["values"]


def test_stacked_reads_equal_in_distribution():
    """reads='stacked': the same conductances as the loop (read noise off: the same outputs up to
    float rounding of the batched matmul), and with read noise the chips' accuracies agree within
    a derived tolerance: the paired differences (same chip, independent read noise) have mean 0, so
    their mean lies within 4 standard errors (+ one sample's worth of accuracy)."""
    model, ds = digits_mlp(), load_digits("test")
    quiet = preset("generic").without("thermal", "shot", "rtn", "flicker")
    a = _outs(model, ds.x[:50], quiet)
    b = _outs(model, ds.x[:50], quiet, chips_per_pass=5, reads="stacked")
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    hw = preset("noisy")
    n = 12
    kw = dict(chips=n, seed=0, batch_size=1000, progress=False)
    acc = lambda o: float((o.argmax(1) == ds.y).float().mean())  # noqa: E731
    loop = [acc(o) for _, _, o in chip_outputs(model, ds.x, hw, **kw)]
    stacked = [acc(o) for _, _, o in chip_outputs(model, ds.x, hw, chips_per_pass=6, reads="stacked", **kw)]
    d = torch.tensor(stacked, dtype=torch.float64) - torch.tensor(loop, dtype=torch.float64)
    tol = 4 * float(d.std()) / math.sqrt(n) + 1 / len(ds)
    assert abs(float(d.mean())) <= tol
    assert stacked != loop   # independent read noise: not the same values


def test_unbatchable_layers_fall_back_to_one_chip():
    """A grouped convolution (a multi-matrix layer) runs one chip at a time: the same outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10)).eval()
    x = torch.rand(6, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    hw = preset("generic")
    assert not batchable(convert_to_analog(model, hw))
    assert chips_per_pass_auto(convert_to_analog(model, hw), x, 5, 7) == 1
    assert torch.equal(_outs(model, x, hw, chips_per_pass=5), _outs(model, x, hw))


def test_bad_values():
    model, x = digits_mlp(), load_digits("test").x[:4]
    for bad in (0, -1, 1.5, True, "many"):
        with pytest.raises(ValueError, match="chips_per_pass"):
            list(chip_outputs(model, x, preset("generic"), chips=2, chips_per_pass=bad))
    with pytest.raises(ValueError, match="reads"):
        list(chip_outputs(model, x, preset("generic"), chips=2, chips_per_pass=2, reads="fast"))
