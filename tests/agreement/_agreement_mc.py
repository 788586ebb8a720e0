"""Shared helpers of the agreement tests: Monte Carlo truth through the simulator, and the
tolerance it allows (standard error, Bonferroni-corrected)."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm

ALPHA = 0.01  # family-wise false-alarm rate of each test module


def z_bonferroni(n_comparisons: int, alpha: float = ALPHA) -> float:
    """Two-sided normal quantile with the Bonferroni correction for ``n_comparisons`` tests."""
    return float(norm.ppf(1.0 - alpha / (2.0 * n_comparisons)))


def set_hw(hw, settings: dict):
    """``hw.set(settings)`` (dotted names); falls back to per-section ``replace`` on older configs."""
    if hasattr(hw, "set"):
        return hw.set(settings)
    by: dict = {}
    for k, v in settings.items():
        sec, _, f = k.partition(".")
        by.setdefault(sec, {})[f] = v
    return hw.replace(**by)


def matrix_mc(W, x, hw, trials: int, seed: int, calib_inputs=None):
    """Per-chip output MSE against ``x @ W`` over ``trials`` chips of the simulator (float64).

    Returns (mean MSE, its standard error, per-chip MSEs)."""
    from memcim.mapping.crossbar import map_matrix
    from memcim.simulate import program

    plan = map_matrix(W, hw, calib_inputs=calib_inputs)
    chip = program(plan, seed=seed, trials=trials, dtype=torch.float64)
    y = chip.mvm(x)
    ref = torch.as_tensor(np.asarray(x) @ np.asarray(W))
    per_chip = ((y - ref) ** 2).mean(dim=(1, 2)).numpy()
    return float(per_chip.mean()), float(per_chip.std(ddof=1) / math.sqrt(trials)), per_chip


@torch.no_grad()
def network_mc(model, x, hw, trials: int, seed: int, calib_data=None, labels=None):
    """Per-chip output MSE (against the digital model) and accuracy over ``trials`` chips programmed
    through :func:`memcim.nn.analog.convert_to_analog` and :func:`memcim.nn.analog.program` (float64).

    Returns dict(mse, se, acc, digital_acc)."""
    from memcim.nn.analog import convert_to_analog, program

    model = model.double().eval()
    x = x.double()
    ref = model(x)
    analog = convert_to_analog(model, hw, calib_data=None if calib_data is None else calib_data.double()).eval()
    mses, accs = [], []
    for k in range(trials):
        program(analog, seed=seed + k, dtype=torch.float64)
        y = analog(x)
        mses.append(float(((y - ref) ** 2).mean()))
        if labels is not None:
            accs.append(float((y.argmax(1) == labels).double().mean()))
    mses = np.asarray(mses)
    out = {"mse": float(mses.mean()), "se": float(mses.std(ddof=1) / math.sqrt(trials)), "per_chip": mses}
    if labels is not None:
        out["acc"] = float(np.mean(accs))
        out["digital_acc"] = float((ref.argmax(1) == labels).double().mean())
    return out
