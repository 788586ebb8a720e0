"""Data given as one string: a bundled dataset with its split and size, or a user's own arrays.

``DATASET[:SPLIT][:N]``
    A bundled dataset (``mnist``, ``fashion-mnist``, ``digits``, ``cifar10``), its split
    (default ``test``) and the first ``N`` samples (default all): ``mnist``, ``mnist:test:1000``,
    ``digits:train``, ``mnist:500``.
``X.npy,Y.npy``
    A user's own inputs (any shape ``(N, ...)``) and integer labels ``(N,)``, ``.npy``/``.npz``/``.csv``.
``X.npy``
    Inputs without labels (accuracy is then unavailable; output errors still are).

``normalize=(mean, std)`` maps every input to ``(x - mean) / std``, as a model trained on
normalised inputs expects.

Examples
--------
>>> parse_data_spec("mnist:test:1000")
('mnist', 'test', 1000)
>>> parse_data_spec("digits:200")
('digits', 'test', 200)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from memcim.data.base import SPLITS, Dataset

_ARRAY_SUFFIXES = (".npy", ".npz", ".csv")


def is_file_spec(spec: str) -> bool:
    """True when ``spec`` names array files rather than a bundled dataset."""
    first = str(spec).split(",")[0]
    return first.endswith(_ARRAY_SUFFIXES) or "/" in first or Path(first).is_file()


def parse_data_spec(spec: str, name: str = "data") -> tuple[str, str, int | None]:
    """``"mnist:test:1000"`` -> ``("mnist", "test", 1000)``; split defaults to test, N to all."""
    parts = [p.strip() for p in str(spec).split(":")]
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"{name}: {spec!r} is not allowed; use DATASET[:SPLIT][:N] (e.g. mnist:test:1000) "
                         "or X.npy,Y.npy")
    ds, split, n = parts[0], "test", None
    for p in parts[1:]:
        if p.isdigit():
            n = int(p)
            if n < 1:
                raise ValueError(f"{name}: {spec!r} asks for {n} samples; need N >= 1")
        elif p in SPLITS:
            split = p
        else:
            raise ValueError(f"{name}: {p!r} in {spec!r} is neither a split ({', '.join(SPLITS)}) nor a count N")
    return ds, split, n


def parse_normalize(text, name: str = "normalize") -> tuple[float, float] | None:
    """``"0.1307,0.3081"`` -> ``(0.1307, 0.3081)``; None stays None."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.split(",")
        if len(parts) != 2:
            raise ValueError(f"{name}: {text!r} is not allowed; give MEAN,STD, e.g. 0.1307,0.3081")
        try:
            text = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise ValueError(f"{name}: {text!r} is not allowed; give MEAN,STD as two numbers") from None
    mean, std = (float(v) for v in text)
    if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
        raise ValueError(f"{name}: ({mean}, {std}) is not allowed; MEAN must be finite and STD > 0")
    return mean, std


def _user_arrays(spec: str, name: str) -> Dataset:
    from memcim.io import load_array

    files = [f.strip() for f in str(spec).split(",")]
    if len(files) > 2 or not all(files):
        raise ValueError(f"{name}: {spec!r} is not allowed; give X.npy or X.npy,Y.npy")
    x = load_array(files[0], name)
    if x.ndim < 2:
        raise ValueError(f"{name}: {files[0]} has shape {x.shape}; inputs need a leading sample axis (N, ...)")
    if len(files) == 1:
        y = np.full(x.shape[0], -1, dtype=np.int64)
        n_classes = 0
    else:
        yf = load_array(files[1], name, ndim=(1, 2))
        yf = yf.reshape(-1) if yf.ndim == 2 and 1 in yf.shape else yf
        if yf.ndim != 1 or yf.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: labels {files[1]} have shape {yf.shape}; expected ({x.shape[0]},), "
                             "one class index per input")
        if np.any(yf < 0) or np.any(yf != np.round(yf)):
            raise ValueError(f"{name}: labels {files[1]} must be non-negative integer class indices")
        y = yf.astype(np.int64)
        n_classes = int(y.max()) + 1
    return Dataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y), Path(files[0]).stem, "user",
                   n_classes, source=",".join(files), meta={"labelled": len(files) == 2})


def load_data(spec: str, *, normalize=None, limit: int | None = None, root=None, name: str = "data",
              split: str | None = None) -> Dataset:
    """Load the data that ``spec`` names (see the module docstring).

    Parameters
    ----------
    spec : ``DATASET[:SPLIT][:N]``, ``X.npy,Y.npy`` or ``X.npy``.
    normalize : ``(mean, std)`` or ``"MEAN,STD"``; inputs become ``(x - mean) / std``.
    limit : keep at most this many samples (after the spec's own N).
    root : directory of the bundled dataset files.
    name : parameter name used in error messages.
    split : override the spec's split (used to fetch calibration data from ``train``).
    """
    from memcim.data.datasets import load_dataset

    if is_file_spec(spec):
        ds = _user_arrays(spec, name)
        n = None
    else:
        dsname, sp, n = parse_data_spec(spec, name)
        try:
            ds = load_dataset(dsname, split or sp, root=root)
        except ValueError as e:
            msg = str(e).split(": ", 1)[-1]
            raise ValueError(f"{name}: {msg}") from None
    for k in (n, limit):
        if k is not None:
            ds = ds.subset(int(k))
    norm = parse_normalize(normalize, "normalize")
    if norm is not None:
        ds = Dataset((ds.x - norm[0]) / norm[1], ds.y, ds.name, ds.split, ds.n_classes, ds.source,
                     {**ds.meta, "normalize": list(norm)})
    return ds


def calibration_data(spec: str, n: int, *, normalize=None, root=None, name: str = "data") -> torch.Tensor:
    """Inputs to calibrate converters on: the first ``n`` training samples of a bundled dataset, or
    the first ``n`` of a user's own inputs (they have no separate training split)."""
    if is_file_spec(spec):
        return load_data(spec, normalize=normalize, limit=n, name=name).x
    dsname, sp, _ = parse_data_spec(spec, name)
    other = "train" if sp != "train" else "val"
    return load_data(dsname, normalize=normalize, limit=n, root=root, name=name, split=other).x
