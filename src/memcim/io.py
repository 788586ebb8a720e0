"""Small I/O helpers shared by the CLI and the experiments.

Every loader validates what it reads and raises ``ValueError`` with a one-line message that
names the parameter, so the CLI can show it without a traceback.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np


def load_array(path: str | os.PathLike, name: str, *, ndim: int | tuple[int, ...] | None = None,
               allow_nonfinite: bool = False) -> np.ndarray:
    """Load a ``.npy`` (or ``.npz`` with one array, or ``.csv``) file as float64.

    Every failure is one line ``ValueError("<name>: ...")``: a missing file, a directory, an
    unreadable, empty or truncated file, a pickle, a non-numeric or empty array, the wrong number
    of dimensions, NaN or inf.

    Parameters
    ----------
    path : file to read.
    name : the parameter name used in error messages (for example ``"matrix"``).
    ndim : allowed number of dimensions (an int or a tuple of ints); ``None`` accepts any.
    allow_nonfinite : if False, NaN or inf anywhere is an error.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty.npy"
    >>> _ = p.write_bytes(b"")
    >>> load_array(p, "matrix")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: matrix: ... is an empty file; a .npy, .npz or .csv array is required
    """
    import warnings

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{name}: file not found: {p}")
    if p.is_dir():
        raise ValueError(f"{name}: {p} is a directory; a file is required")
    if not p.is_file():
        raise ValueError(f"{name}: not a regular file: {p}")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ValueError(f"{name}: cannot read {p} ({e.strerror or e})") from None
    if size == 0:
        raise ValueError(f"{name}: {p} is an empty file; a .npy, .npz or .csv array is required")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # np.loadtxt warns on an empty table: the size check reports it
            if p.suffix == ".csv":
                arr = np.loadtxt(p, delimiter=",", ndmin=2)
            elif p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    keys = list(z.keys())
                    if len(keys) != 1:
                        raise ValueError(f"{name}: {p} holds {len(keys)} arrays {keys}; expected exactly one")
                    arr = z[keys[0]]
            else:
                arr = np.load(p, allow_pickle=False)
    except OSError as e:
        raise ValueError(f"{name}: cannot read {p} ({e.strerror or _one_line(e)})") from None
    except Exception as e:
        if isinstance(e, ValueError) and str(e).startswith(f"{name}: "):
            raise
        raise ValueError(f"{name}: cannot read {p} as a numeric array ({_one_line(e)})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: {p} does not hold an array; a .npy, .npz or .csv array is required")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name}: {p} has dtype {arr.dtype}; a real numeric array is required")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name}: {p} is empty (shape {arr.shape})")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(f"{name}: {p} has {arr.ndim} dimensions (shape {arr.shape}); "
                             f"allowed: {' or '.join(map(str, allowed))}")
    if not allow_nonfinite and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: {p} contains {bad} NaN or inf value(s); all entries must be finite")
    return arr


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, at most ``limit`` characters (its type when empty)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and dataclasses to JSON-ready values.

    Non-finite floats become ``None`` (JSON has no NaN).
    """
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_jsonable(obj.to_dict())
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return to_jsonable(obj.detach().cpu().numpy())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON text of ``obj`` after :func:`to_jsonable`."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (temp file then rename) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(dumps(obj) + "\n")
    tmp.replace(p)
    return p


def provenance(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """What every result records about how it was made: version, git commit, time, seed."""
    from memcim import __version__

    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except Exception:
        commit = None
    out = {"memcim_version": __version__, "git_commit": commit, "python": platform.python_version(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": seed}
    out.update(extra)
    return out


def savefig(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure to PNG and close it."""
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return p
