"""Library tasks of the registry: what ``memcim sweep`` (and any caller) runs by name.

Each task takes keyword parameters named as in the library (``hw``, ``chips``, ``seed``,
``data``, ``model``), returns a JSON-ready dict, and never prints or writes files:

``simulate``
    error of ``y = x W`` for one matrix on ``chips`` programmed chips of ``hw``.
``evaluate``
    a model's accuracy and output MSE over chips (:func:`memcim.nn.evaluate.evaluate_analog`),
    one entry of ``results`` per hardware, keyed by its name.
``predict``
    the closed-form output MSE of a model or a matrix (:func:`memcim.analysis.predict.predict`),
    to set beside the Monte Carlo of ``simulate``/``evaluate`` in one sweep.
``sleep``
    waits and echoes: an engine test and overhead probe.

Examples
--------
>>> from memcim import registry
>>> r = registry.get("simulate").run(hw="generic", size=32, batch=16, chips=2, seed=0)
>>> sorted(r)
['chips', 'cols', 'mse', 'relative_error', 'rows', 'signal_power', 'snr_db']
>>> registry.get("sleep").run(duration=0, value=2.0)
{'value': 2.0, 'double': 4.0, 'seed_out': 0}
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from memcim import validate
from memcim.registry import register

_MATRIX_KINDS = ("gaussian", "uniform", "lowrank")


def _hardware(hw) -> Any:
    """A :class:`~memcim.config.HardwareConfig` from a config, a preset name or a file."""
    from memcim.config import HardwareConfig, resolve_config

    if isinstance(hw, HardwareConfig):
        return hw
    try:
        return resolve_config(hw)
    except ValueError as e:
        raise ValueError(f"hw: {str(e).split(': ', 1)[-1]}") from None


def _matrix(kind: str, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((n, m)) / math.sqrt(n)
    if kind == "uniform":
        return rng.uniform(-1.0, 1.0, (n, m))
    r = max(1, min(n, m) // 8)
    return rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) / math.sqrt(n * r)


def _weights(matrix, size: int, cols: int | None, rng: np.random.Generator) -> np.ndarray:
    """A generated matrix (``matrix`` is a kind) or the user's (an array or a file)."""
    if isinstance(matrix, str) and matrix in _MATRIX_KINDS:
        size = validate.integer("size", size, lo=1, hi=16384)
        cols = size if cols is None else validate.integer("cols", cols, lo=1, hi=16384)
        return _matrix(matrix, size, cols, rng)
    if isinstance(matrix, str):
        from memcim.io import load_array

        if not matrix.endswith((".npy", ".npz", ".csv")):
            raise ValueError(f"matrix: {matrix!r} is not allowed; choose {', '.join(_MATRIX_KINDS)} or give a "
                             ".npy/.npz/.csv file")
        W = load_array(matrix, "matrix")
    else:
        W = np.asarray(matrix, dtype=np.float64)
    if W.ndim != 2 or W.size == 0:
        raise ValueError(f"matrix: shape {W.shape} is not allowed; a non-empty 2-D matrix (rows, cols) is required")
    if not np.all(np.isfinite(W)):
        raise ValueError("matrix: holds NaN or inf")
    if not np.any(W):
        raise ValueError("matrix: is all zero; its output error relative to the signal is undefined")
    return W.astype(np.float64)


@register("simulate", title="error of y = x W on chips of hw (Monte Carlo)")
def simulate(*, hw="generic", matrix="gaussian", size: int = 64, cols: int | None = None, batch: int = 64,
             chips: int = 8, seed: int = 0, dtype: str = "float64") -> dict:
    """Error of one vector-matrix multiplication ``y = x W`` on ``chips`` programmed chips of ``hw``.

    ``W`` and then ``x`` (``batch`` x rows, standard normal) are drawn with
    ``numpy.random.default_rng(seed)``; the chips are programmed and read with the same seed
    (:func:`memcim.simulate.program`), and the ADC full scale is calibrated on ``x`` when the
    config asks for calibration.

    Parameters
    ----------
    hw : hardware: a config, a preset name or a file.
    matrix : "gaussian" (N(0, 1/size) entries), "uniform" (U(-1, 1)), "lowrank" (rank size/8), or
        the user's matrix (rows, cols): an array or a ``.npy``/``.npz``/``.csv`` file.
    size, cols : shape of a generated matrix (``cols`` defaults to ``size``).
    batch : input vectors per chip.
    chips : independent chips (Monte Carlo samples).
    seed : seed of the matrix, the inputs, programming and read noise.
    dtype : "float64" or "float32" simulation precision.

    Returns
    -------
    dict with ``mse`` (mean over chips, inputs and outputs of (y_hat - y)^2), ``signal_power``
    (mean y^2), ``relative_error`` = sqrt(mse / signal_power), ``snr_db`` = 10 log10(signal_power /
    mse) (None when mse is exactly 0: ideal hardware), ``rows``, ``cols``, ``chips``.
    """
    import torch

    from memcim.mapping.crossbar import map_matrix
    from memcim.simulate import program

    batch = validate.integer("batch", batch, lo=1, hi=1_000_000)
    chips = validate.integer("chips", chips, lo=1, hi=100_000)
    seed = validate.seed(seed)
    validate.choice("dtype", dtype, ("float64", "float32"))
    hw = _hardware(hw)
    rng = np.random.default_rng(seed)
    W = _weights(matrix, size, cols, rng)
    x = rng.standard_normal((batch, W.shape[0]))
    mapped = map_matrix(W, hw, calib_inputs=x)
    chip = program(mapped, seed=seed, trials=chips, dtype=getattr(torch, dtype))
    y = chip.mvm(x).to(torch.float64).cpu().numpy()
    y_ref = x @ W
    mse = float(np.mean((y - y_ref[None]) ** 2))
    power = float(np.mean(y_ref ** 2))
    return {"mse": mse, "signal_power": power, "relative_error": math.sqrt(mse / power),
            "snr_db": 10 * math.log10(power / mse) if mse > 0 else None,
            "rows": int(W.shape[0]), "cols": int(W.shape[1]), "chips": chips}


def _load_model(model, *, trust_model_file: bool, import_modules=()):
    from torch import nn

    if isinstance(model, nn.Module):
        return model.eval()
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: expected a reference model name or a model file, got {model!r}")
    from memcim.nn import loading

    kw: dict = {"trust_model_file": bool(trust_model_file)}
    if import_modules:
        kw["import_modules"] = tuple(import_modules)
    try:
        return loading.load_model(model, **kw)
    except ValueError as e:
        raise ValueError(f"model: {str(e).split(': ', 1)[-1]}") from None


def _fit(model, sample_shape, input_shape):
    from memcim.nn import loading

    fit = getattr(loading, "fit_input", None)
    if fit is not None:
        return fit(model, tuple(sample_shape), input_shape=input_shape)
    return model


def _data(data, normalize, limit, root):
    from memcim.data.base import Dataset
    from memcim.data.spec import load_data

    if isinstance(data, Dataset):
        return data
    return load_data(data, normalize=normalize, limit=limit, root=root, name="data")


@register("evaluate", title="a model's accuracy and output MSE over chips, per hardware")
def evaluate(*, model, hw="generic", data: str = "mnist:test:1000", normalize=None, chips: int = 10,
             seed: int = 0, calib_samples: int = 256, batch_size: int = 1000, trust_model_file: bool = False,
             import_modules=(), input_shape=None, data_root=None) -> dict:
    """Accuracy and output MSE of ``model`` on each hardware of ``hw``, over ``chips`` chips.

    Parameters
    ----------
    model : a reference model name, a ``torch.save(model)`` file or an ``nn.Module``.
    hw : a config, a preset name or a file, or a list of them (one result each).
    data : ``DATASET[:SPLIT][:N]`` or ``X.npy,Y.npy`` (:func:`memcim.data.spec.load_data`), or a Dataset.
    normalize : ``(mean, std)`` or ``"MEAN,STD"``: the model sees ``(x - mean) / std``.
    chips, seed : chips programmed per hardware; chip ``c`` uses ``layer_seed(seed, c)``.
    calib_samples : calibration inputs for the ADC full scales (:func:`memcim.data.spec.calibration_data`).
    batch_size : inference batch. trust_model_file, import_modules, input_shape : as in
        :func:`memcim.nn.loading.load_model`.
    data_root : directory of the bundled dataset files.

    Returns
    -------
    dict: ``model``, ``data``, ``n_samples``, ``digital`` (accuracy), and ``results``: one dict per
    hardware with ``hardware`` (its name), ``accuracy`` and ``mse`` summaries over chips (mean,
    std, ci95_mean, range95, n, values), ``conversion``, ``chips``, ``seed``, ``seconds``.
    """
    import torch

    from memcim.data.spec import calibration_data
    from memcim.nn.evaluate import evaluate_analog

    chips = validate.integer("chips", chips, lo=1, hi=100_000)
    seed = validate.seed(seed)
    calib_samples = validate.integer("calib_samples", calib_samples, lo=1, hi=1_000_000)
    batch_size = validate.integer("batch_size", batch_size, lo=1, hi=1_000_000)
    hws = [_hardware(h) for h in (hw if isinstance(hw, (list, tuple)) else [hw])]
    if not hws:
        raise ValueError("hw: an empty list; give at least one hardware")
    ds = _data(data, normalize, None, data_root)
    if isinstance(data, str):
        calib = calibration_data(data, calib_samples, normalize=normalize, root=data_root, name="data")
    else:
        calib = ds.x[:calib_samples]
    net = _fit(_load_model(model, trust_model_file=trust_model_file, import_modules=import_modules),
               ds.x.shape[1:], input_shape)
    try:
        with torch.no_grad():
            out = net(ds.x[:2])
    except Exception as e:  # noqa: BLE001 - any failure here is a shape mismatch to report
        raise ValueError(f"model: does not accept inputs of shape {tuple(ds.x.shape[1:])} "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if out.ndim != 2 or (ds.n_classes and out.shape[1] < ds.n_classes):
        raise ValueError(f"model: output shape {tuple(out.shape)} does not fit {ds.n_classes} classes")
    results = []
    for h in hws:
        r = evaluate_analog(net, ds, h, chips=chips, seed=seed, calib_data=calib, batch_size=batch_size,
                            progress=False)
        digital = r.pop("digital")
        results.append({"hardware": h.name, **r})
    return {"model": model if isinstance(model, str) else type(model).__name__,
            "data": data if isinstance(data, str) else ds.name, "n_samples": len(ds),
            "digital": digital, "results": results}


@register("predict", title="closed-form output MSE of a model or a matrix on hw")
def predict(*, hw="generic", model=None, matrix=None, data: str = "mnist:test:100", normalize=None,
            size: int = 64, cols: int | None = None, batch: int = 64, seed: int = 0, calib_samples: int = 256,
            cov: str = "lowrank", act_method: str = "taylor", taylor_order: int = 2, per_output: bool = False,
            trust_model_file: bool = False, import_modules=(), input_shape=None, data_root=None) -> dict:
    """The closed-form (no Monte Carlo) output MSE of a model or a matrix on ``hw``
    (:func:`memcim.analysis.predict.predict`).

    Give ``model`` (a reference name, a file or an ``nn.Module``, fed the first inputs of
    ``data``) or ``matrix`` (as in :func:`simulate`, fed ``batch`` standard normal inputs drawn
    after it with ``default_rng(seed)``: the same ``W`` and ``x`` as ``simulate`` with the same
    ``matrix``, ``size``, ``cols``, ``batch`` and ``seed``, so the two sit side by side in a sweep).

    Parameters
    ----------
    hw : a config, a preset name or a file.
    cov, act_method, taylor_order : the moment propagation's settings.
    per_output : also return the MSE of every output (averaged over inputs).
    calib_samples : (model) calibration inputs of the ADC full scales.

    Returns
    -------
    dict with ``mse_mean``, ``mse_max``, ``layers`` (per crossbar layer), ``config`` and, with
    ``per_output``, the per-output MSE list.
    """
    from memcim.analysis.predict import predict as closed_form

    hw = _hardware(hw)
    seed = validate.seed(seed)
    if (model is None) == (matrix is None):
        raise ValueError("model: give exactly one of model and matrix")
    if matrix is not None:
        rng = np.random.default_rng(seed)
        W = _weights(matrix, size, cols, rng)
        batch = validate.integer("batch", batch, lo=1, hi=1_000_000)
        x = rng.standard_normal((batch, W.shape[0]))
        p = closed_form(W, x, hw, calib_inputs=x, cov=cov, act_method=act_method, taylor_order=taylor_order)
    else:
        from memcim.data.spec import calibration_data

        ds = _data(data, normalize, None, data_root)
        net = _fit(_load_model(model, trust_model_file=trust_model_file, import_modules=import_modules),
                   ds.x.shape[1:], input_shape)
        calib = None
        if isinstance(data, str):
            n = validate.integer("calib_samples", calib_samples, lo=1, hi=1_000_000)
            calib = calibration_data(data, n, normalize=normalize, root=data_root, name="data")
        p = closed_form(net, ds.x, hw, calib_data=calib, cov=cov, act_method=act_method,
                        taylor_order=taylor_order)
    d = p.to_dict(per_output=per_output)
    if not per_output:
        d.pop("per_output", None)
    else:
        d["per_output"] = np.asarray(d["per_output"]).tolist()
    return d


@register("sleep", title="wait and echo: an engine test and overhead probe")
def sleep(*, duration: float = 0.01, value: float = 0.0, seed: int = 0) -> dict:
    """Wait ``duration`` seconds and return ``value``, ``2 * value`` (``double``) and ``seed``
    (``seed_out``).

    Parameters
    ----------
    duration : seconds to sleep (0 <= duration <= 3600).
    """
    duration = validate.number("duration", duration, lo=0, hi=3600)
    time.sleep(duration)
    return {"value": value, "double": 2 * value, "seed_out": seed}
