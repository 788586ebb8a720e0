"""Reader for the IDX file format used by MNIST and Fashion-MNIST (raw or gzip-compressed).

Format (big-endian): two zero bytes, a type code, the number of dimensions ``d``, then ``d``
unsigned 32-bit sizes, then the data in C order.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw, detected from the content).

    Parameters
    ----------
    path : the file.

    Returns
    -------
    numpy.ndarray with the shape and dtype stored in the header (native byte order).

    Raises
    ------
    ValueError
        If the file is missing, truncated, has a bad header, or its size does not match the header.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"IDX file not found: {p}")
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{p}: cannot read or decompress IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise ValueError(f"{p}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = _TYPES[raw[2]]
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{p}: truncated IDX header ({ndim} dimensions)")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    body = len(raw) - 4 - 4 * ndim
    if body != expected:
        raise ValueError(f"{p}: IDX header says shape {shape} ({expected} bytes) but the file holds "
                         f"{body} data bytes (truncated or corrupt)")
    arr = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, arr: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``arr`` as an IDX file (gzip if ``compress`` or if the name ends in ``.gz``).

    Used to build test fixtures and to export data; the inverse of :func:`read_idx`.
    """
    p = Path(path)
    arr = np.asarray(arr)
    codes = {v.newbyteorder("="): k for k, v in _TYPES.items()}
    dt = arr.dtype.newbyteorder("=")
    if dt not in codes:
        raise ValueError(f"arr: dtype {arr.dtype} cannot be stored in IDX; allowed: "
                         "uint8, int8, int16, int32, float32, float64")
    code = codes[dt]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(arr, dtype=_TYPES[code]).tobytes()
    if compress or (compress is None and p.suffix == ".gz"):
        data = gzip.compress(data)
    p.write_bytes(data)
    return p
