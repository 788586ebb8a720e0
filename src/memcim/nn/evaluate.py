"""Monte Carlo evaluation of a model on simulated crossbars: accuracy and output MSE over chips.

For each of ``chips`` programmed chips (independent programming noise and stuck devices) the whole
dataset is run once (fresh read noise on every read) and two numbers are recorded: top-1
accuracy and the output mean squared error against the digital model,
``mean over samples and outputs of (y_analog - y_digital)^2``. The summary gives the mean, the
sample standard deviation over chips, a 95 % confidence interval of the mean (Student t) and the
2.5-97.5 % range of the chips themselves (one chip has no interval: ``ci95_mean`` is None).

Data without labels (a user's ``X.npy`` alone) gives the output MSE but no accuracy: the
accuracy entries are then None.

**Over time.** ``evaluate_analog(..., times=[3600, 86400, 3.15e7])`` programs each chip once and
reads the same chip at every time (seconds after programming; :func:`memcim.nn.analog.set_read_time`),
the first read ``device.drift_t0`` always included and always read first, so the ``t0`` numbers
equal those of an evaluation without ``times``. Each time gets its own accuracy and MSE summary;
the per-chip ``values`` line up across times (chip ``c`` is entry ``c`` everywhere).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from memcim.config import HardwareConfig
from memcim.hardware.device import check_time
from memcim.nn.analog import (
    analog_layers,
    conversion_report,
    convert_to_analog,
    layer_seed,
    program,
    read_time,
)
from memcim.nn.train import predict


@torch.no_grad()
def chip_outputs(model: nn.Module, x: torch.Tensor, hardware: HardwareConfig, *, chips: int, seed: int = 0,
                 overrides: dict | None = None, calib_data: torch.Tensor | None = None, batch_size: int = 1000,
                 dtype: torch.dtype = torch.float32, progress: bool | None = None, desc: str = "chips",
                 on_program=None):
    """The one Monte Carlo loop over programmed chips of a model.

    Converts ``model`` once (:func:`memcim.nn.analog.convert_to_analog`), then for each chip ``c``
    programs every analog layer with ``layer_seed(seed, c)`` and yields its outputs on ``x``
    (fresh read noise on every read). :func:`evaluate_analog`, the MemSE Monte Carlo
    (:func:`memcim.analysis.memse_sim.monte_carlo_simulator`), ``memcim mse --preset`` and the
    convex-cim experiment all run this loop.

    Parameters
    ----------
    model : a digital model (it is copied, not changed).
    x : (B, ...) inputs.
    hardware : the crossbar design; ``overrides`` per layer, as in :func:`convert_to_analog`.
    chips : number of chips (>= 1). seed : chip ``c`` is programmed with ``layer_seed(seed, c)``.
    calib_data : model inputs that calibrate the ADC full scales.
    batch_size : inference batch size. dtype : simulation precision of the chips.
    progress : tqdm bar over chips on stderr (default: when stderr is a terminal). desc : its label.
    on_program : optional ``f(c, analog)`` called after chip ``c`` is programmed, before it is read
        (to install hooks, or to apply a designed ADC full scale to the programmed chips).

    Yields
    ------
    (c, analog, out): the chip index, the analog model (programmed as chip ``c``) and its outputs
    on ``x`` (B, ...), in the model's output dtype.
    """
    if isinstance(chips, bool) or not isinstance(chips, (int, np.integer)) or chips < 1:
        raise ValueError(f"chips: {chips!r} is not allowed; must be an integer >= 1")
    layer_seed(seed, 0)
    analog = convert_to_analog(model, hardware, overrides=overrides, calib_data=calib_data).eval()
    for c in tqdm(range(int(chips)), desc=desc, disable=None if progress is None else not progress):
        program(analog, layer_seed(seed, c), dtype=dtype)
        if on_program is not None:
            on_program(c, analog)
        out = torch.cat([analog(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        yield c, analog, out


def summarize(values) -> dict:
    """Mean, std (ddof=1), 95 % CI of the mean (Student t; None for one value) and 2.5-97.5 % range.

    >>> summarize([0.5])["ci95_mean"] is None
    True
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    ci = None
    if n > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"mean": mean, "std": std, "ci95_mean": ci,
            "range95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))], "n": n,
            "values": v.tolist()}


def read_times(times, hardware: HardwareConfig, overrides: dict | None = None, *, name: str = "times") -> list[float]:
    """The read times [s] of an evaluation over time: ``times`` checked (finite, not before
    ``device.drift_t0`` of ``hardware`` or of any hardware in ``overrides``), sorted, duplicates
    dropped, with the first read ``t0`` (the latest ``drift_t0`` of those hardwares) always first.

    >>> from memcim.config import preset
    >>> read_times([3600, 86400], preset("pcm"))
    [20.0, 3600.0, 86400.0]
    """
    if isinstance(times, (int, float, np.integer, np.floating)) and not isinstance(times, bool):
        times = [times]
    if isinstance(times, (str, bytes)) or not hasattr(times, "__iter__"):
        raise ValueError(f"{name}: {times!r} is not allowed; give a list of read times in seconds after programming")
    hws = [hardware] + [h for h in (overrides or {}).values() if h is not None]
    t0 = max(h.device.drift_t0 for h in hws)
    out = {t0}
    for t in times:
        for h in hws:
            check_time(t, h.device, name)
        out.add(float(t))
    return sorted(out)


def evaluate_analog(model: nn.Module, dataset, hardware: HardwareConfig, *, chips: int = 10,
                    seed: int = 0, calib_data: torch.Tensor | None = None, overrides: dict | None = None,
                    batch_size: int = 1000, progress: bool | None = None,
                    dtype: torch.dtype = torch.float32, times=None) -> dict:
    """Accuracy and output MSE of ``model`` on ``hardware``, over ``chips`` programmed chips.

    Parameters
    ----------
    model : a digital model (it is copied, not changed).
    dataset : :class:`memcim.data.base.Dataset`.
    hardware : the crossbar design.
    chips : number of chips to program (Monte Carlo over programming noise).
    seed : chip ``c`` is programmed with seed ``layer_seed(seed, c)``.
    calib_data : model inputs used to calibrate ADC full scales (use training data, not the test set).
    overrides : per-layer hardware, as in :func:`convert_to_analog`.
    batch_size : inference batch size.
    progress : tqdm bar over chips on stderr (default: when stderr is a terminal).
    times : read times [s] after programming (see :func:`read_times`); each chip is programmed once
        and read at every time, ``t0`` first. None (default): one read at ``t0``.

    Returns
    -------
    dict with ``digital`` (accuracy), ``accuracy`` and ``mse`` summaries (see :func:`summarize`),
    ``conversion`` (the report), ``chips``, ``seed``, ``n_samples``, ``labelled``, ``seconds``.
    Without labels (``dataset.meta["labelled"]`` False) both accuracies are None.
    With ``times``, also ``times`` (the read times, ``t0`` first), ``t0``, ``compensation`` (the
    hardware's ``compensation.drift``) and ``over_time``: one ``{"t", "accuracy", "mse"}`` per read
    time; ``accuracy`` and ``mse`` are then those of the first read, ``t0``.
    """
    if isinstance(chips, bool) or not isinstance(chips, (int, np.integer)) or chips < 1:
        raise ValueError(f"chips: {chips!r} is not allowed; must be an integer >= 1")
    labelled = bool(getattr(dataset, "meta", {}).get("labelled", True))
    layer_seed(seed, 0)
    if times is not None:
        return _evaluate_over_time(model, dataset, hardware, chips=chips, seed=seed, calib_data=calib_data,
                                   overrides=overrides, batch_size=batch_size, progress=progress, dtype=dtype,
                                   times=read_times(times, hardware, overrides), labelled=labelled)
    t0 = time.perf_counter()
    model = model.eval()
    y = dataset.y
    ref = predict(model, dataset.x, batch_size)
    digital_acc = float((ref.argmax(1) == y).float().mean()) if labelled else None
    accs, mses = [], []
    analog = None
    for _, analog, out in chip_outputs(model, dataset.x, hardware, chips=chips, seed=seed, overrides=overrides,
                                       calib_data=calib_data, batch_size=batch_size, dtype=dtype, progress=progress):
        out = out.float()
        if labelled:
            accs.append(float((out.argmax(1) == y).float().mean()))
        mses.append(float(((out - ref) ** 2).mean()))
    return {"digital": {"accuracy": digital_acc}, "accuracy": summarize(accs) if labelled else None,
            "mse": summarize(mses), "conversion": conversion_report(analog).to_dict(), "chips": int(chips),
            "seed": int(seed), "n_samples": len(dataset), "labelled": labelled, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def _evaluate_over_time(model, dataset, hardware, *, chips, seed, calib_data, overrides, batch_size, progress,
                        dtype, times, labelled) -> dict:
    """:func:`evaluate_analog` with ``times``: the loop of :func:`chip_outputs`, each programmed chip
    read at every time (``t0`` first, so its reads equal those of an evaluation without times)."""
    start = time.perf_counter()
    model = model.eval()
    x, y = dataset.x, dataset.y
    ref = predict(model, x, batch_size)
    digital_acc = float((ref.argmax(1) == y).float().mean()) if labelled else None
    accs = {t: [] for t in times}
    mses = {t: [] for t in times}
    analog = convert_to_analog(model, hardware, overrides=overrides, calib_data=calib_data).eval()
    if not analog_layers(analog):
        raise ValueError("model: has no Linear or Conv2d layer to run on the crossbars")
    for c in tqdm(range(int(chips)), desc="chips", disable=None if progress is None else not progress):
        program(analog, layer_seed(seed, c), dtype=dtype)
        for t in times:
            with read_time(analog, t):
                out = torch.cat([analog(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]).float()
            if labelled:
                accs[t].append(float((out.argmax(1) == y).float().mean()))
            mses[t].append(float(((out - ref) ** 2).mean()))
    over = [{"t": t, "accuracy": summarize(accs[t]) if labelled else None, "mse": summarize(mses[t])}
            for t in times]
    return {"digital": {"accuracy": digital_acc}, "accuracy": over[0]["accuracy"], "mse": over[0]["mse"],
            "times": list(times), "t0": times[0], "compensation": hardware.compensation.drift,
            "over_time": over, "conversion": conversion_report(analog).to_dict(), "chips": int(chips),
            "seed": int(seed), "n_samples": len(dataset), "labelled": labelled,
            "seconds": time.perf_counter() - start}
