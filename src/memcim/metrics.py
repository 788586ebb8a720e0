"""Error metrics of simulated MVMs and the error budget per non-ideality."""
from __future__ import annotations

import math

import numpy as np
import torch

from memcim.config import NONIDEALITIES, HardwareConfig
from memcim.mapping.crossbar import as_matrix, map_matrix
from memcim.simulate import program


def error_metrics(y: torch.Tensor, y_ref: torch.Tensor) -> dict[str, float]:
    """MSE, relative RMS error and SNR of ``y`` (trials, batch, out) against ``y_ref`` (batch, out).

    ``relative_error = sqrt(MSE / mean(y_ref**2))`` and ``snr_db = 10 log10(mean(y_ref**2) / MSE)``.
    """
    y = y.to(torch.float64)
    y_ref = y_ref.to(device=y.device, dtype=torch.float64)
    mse = float(((y - y_ref) ** 2).mean())
    power = float((y_ref ** 2).mean())
    rel = math.sqrt(mse / power) if power > 0 else math.inf
    snr = 10 * math.log10(power / mse) if mse > 0 and power > 0 else (math.inf if mse == 0 else -math.inf)
    return {"mse": mse, "relative_error": rel, "snr_db": snr}


def _as_inputs(x, n: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x, dtype=np.float64))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"inputs: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != n:
        raise ValueError(f"inputs: shape {tuple(x.shape)} does not match the matrix; expected (batch, {n})")
    if x.shape[0] == 0:
        raise ValueError("inputs: no input vectors; at least one is required")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("inputs: contains NaN or inf; all inputs must be finite")
    return x.to(torch.float64)


def check_reference(W, x) -> None:
    """Refuse a problem whose exact result ``x @ W`` is zero: its relative error and SNR are undefined.

    Examples
    --------
    >>> check_reference(np.zeros((3, 2)), np.ones((4, 3)))
    Traceback (most recent call last):
    ...
    ValueError: matrix: all entries are zero; x @ W = 0, so its relative error is undefined
    """
    W = as_matrix(W, "matrix")
    x = _as_inputs(x, W.shape[0])
    if not bool((W != 0).any()):
        raise ValueError("matrix: all entries are zero; x @ W = 0, so its relative error is undefined")
    if not bool(((x.to(W.device) @ W) != 0).any()):
        raise ValueError("inputs: x @ W = 0 for every input vector, so its relative error is undefined; "
                         "give inputs that are not all zero (or orthogonal to the matrix)")


def simulate_error(W, x, hw: HardwareConfig, trials: int = 1, seed: int = 0, *, calib_inputs=None,
                   dtype=torch.float32, device=None) -> dict[str, float]:
    """Error metrics of ``trials`` chips of ``hw`` computing ``x @ W`` (one read each).

    ``ValueError`` when ``x @ W`` is zero (:func:`check_reference`): no relative error exists.
    """
    W = as_matrix(W, "matrix")
    x = _as_inputs(x, W.shape[0])
    check_reference(W, x)
    mapped = map_matrix(W, hw, calib_inputs=x if calib_inputs is None else calib_inputs)
    chip = program(mapped, seed=seed, trials=trials, dtype=dtype, device=device)
    return error_metrics(chip.mvm(x), x.to(chip.device) @ W.to(chip.device))


def error_budget(W, x, hw: HardwareConfig, trials: int = 1, seed: int = 0, *, dtype=torch.float32,
                 device=None) -> dict:
    """Error of the full hardware and of each non-ideality switched on alone.

    The ADC full scale is calibrated on ``x`` itself when the config asks for calibration.

    Returns
    -------
    dict with ``total`` (metrics of everything on), ``contributions`` (name -> metrics with only that
    non-ideality on, plus ``share`` = its MSE / total MSE) and ``interaction`` (total MSE minus the
    sum of the separate MSEs: what the non-idealities add only together).
    """
    W = as_matrix(W, "matrix")
    x = _as_inputs(x, W.shape[0])
    total = simulate_error(W, x, hw, trials, seed, dtype=dtype, device=device)
    contributions = {}
    for name in hw.active_nonidealities():
        met = simulate_error(W, x, hw.only(name), trials, seed, dtype=dtype, device=device)
        met["share"] = met["mse"] / total["mse"] if total["mse"] > 0 else math.nan
        contributions[name] = met
    inter = total["mse"] - sum(c["mse"] for c in contributions.values())
    return {"total": total, "contributions": contributions, "interaction_mse": inter,
            "nonidealities_off": [n for n in NONIDEALITIES if n not in contributions]}
