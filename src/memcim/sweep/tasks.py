"""Built-in sweep tasks.

A task is a plain function that takes keyword arguments (and, if it wants hardware, ``hw``, a
:class:`memcim.config.HardwareConfig`, and ``seed``) and returns a dict of scalars: one row of
the sweep's table. Any importable ``"package.module:function"`` with that shape is a task too;
the names here are shortcuts usable as ``task = "vmm"`` in a spec.

Examples
--------
>>> from memcim.config import preset
>>> r = vmm(preset("realistic"), size=32, batch=16, trials=2, seed=0)
>>> sorted(r)[:3]
['mse', 'relative_error', 'signal_power']
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from memcim.config import HardwareConfig

TASKS: dict[str, Callable[..., dict]] = {}


def register_task(name: str):
    """Decorator: make ``fn`` available as ``task = "<name>"`` in sweep specs."""
    def deco(fn):
        TASKS[name] = fn
        return fn
    return deco


def _matrix(kind: str, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((n, m)) / math.sqrt(n)
    if kind == "uniform":
        return rng.uniform(-1.0, 1.0, (n, m))
    if kind == "lowrank":
        r = max(1, min(n, m) // 8)
        return rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) / math.sqrt(n * r)
    raise ValueError(f"matrix: {kind!r} is not allowed; choose gaussian, uniform or lowrank")


@register_task("vmm")
def vmm(hw: HardwareConfig, size: int = 64, out: int | None = None, batch: int = 64, trials: int = 8,
        matrix: str = "gaussian", seed: int = 0, dtype: str = "float64") -> dict:
    """Error of one vector-matrix multiplication ``y = x W`` on ``trials`` chips of ``hw``.

    ``W`` (``size`` x ``out``) and ``x`` (``batch`` x ``size``, standard normal) are drawn with
    ``numpy.random.default_rng(seed)``; the chips are programmed and read with the same seed
    (:func:`memcim.simulate.program`), and the ADC full scale is calibrated on ``x`` when the config
    asks for calibration.

    Parameters
    ----------
    hw : hardware config.
    size, out : matrix shape (``out`` defaults to ``size``).
    batch : input vectors per chip.
    trials : independent chips (Monte Carlo trials).
    matrix : "gaussian" (N(0, 1/size) entries), "uniform" (U(-1, 1)) or "lowrank" (rank size/8).
    seed : seed of the matrix, inputs, programming and read noise.
    dtype : "float64" or "float32" simulation precision.

    Returns
    -------
    dict with ``mse`` (mean over chips, inputs and outputs of (y_hat - y)^2), ``signal_power``
    (mean y^2), ``relative_error`` = sqrt(mse / signal_power), ``snr_db`` = 10 log10(signal_power /
    mse).
    """
    import torch

    from memcim.mapping.crossbar import map_matrix
    from memcim.simulate import program

    for name, v, lo in (("size", size, 1), ("batch", batch, 1), ("trials", trials, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}: {v!r} is not allowed; must be an integer >= {lo}")
    out = size if out is None else out
    if isinstance(out, bool) or not isinstance(out, int) or out < 1:
        raise ValueError(f"out: {out!r} is not allowed; must be an integer >= 1")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype: {dtype!r} is not allowed; choose float64 or float32")
    rng = np.random.default_rng(seed)
    W = _matrix(matrix, size, out, rng)
    x = rng.standard_normal((batch, size))
    mapped = map_matrix(W, hw, calib_inputs=x)
    chip = program(mapped, seed=seed, trials=trials, dtype=getattr(torch, dtype))
    y = chip.mvm(x).to(torch.float64).cpu().numpy()
    y_ref = x @ W
    mse = float(np.mean((y - y_ref[None]) ** 2))
    power = float(np.mean(y_ref ** 2))
    return {"mse": mse, "signal_power": power,
            "relative_error": math.sqrt(mse / power) if power > 0 else math.inf,
            "snr_db": 10 * math.log10(power / mse) if mse > 0 else math.inf}


@register_task("sleep")
def sleep(duration: float = 0.01, value: float = 0.0, seed: int = 0) -> dict:
    """Wait ``duration`` seconds and return ``value`` and ``seed``: an engine test and overhead probe.

    Parameters
    ----------
    duration : seconds to sleep (0 <= duration <= 3600).
    value : returned as ``value``; ``value * 2`` is returned as ``double``.
    seed : returned as ``seed_out``.
    """
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration <= 3600:
        raise ValueError(f"duration: {duration!r} is not allowed; must be between 0 and 3600 seconds")
    time.sleep(duration)
    return {"value": value, "double": 2 * value, "seed_out": seed}
