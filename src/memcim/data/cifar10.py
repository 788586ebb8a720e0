"""CIFAR-10 from a directory of the standard "python version" batches (nothing is downloaded).

The directory (default ``$MEMCIM_DATA/cifar-10-batches-py``) holds ``data_batch_1`` ...
``data_batch_5`` and ``test_batch``: pickled dicts with ``data`` (uint8, N x 3072, channel-major
32x32 images) and ``labels`` (N ints). Splits: ``train`` = batches 1-4, ``val`` = batch 5,
``trainval`` = batches 1-5, ``test`` = ``test_batch``. The pickles are read with a restricted
unpickler that only rebuilds numpy arrays and plain containers.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from memcim.data._safe_pickle import safe_load
from memcim.data.base import Dataset, check_split, data_root, make_dataset

_SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 5)], "val": ["data_batch_5"],
                "trainval": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch.

    Returns
    -------
    (images uint8 (N, 3, 32, 32), labels int64 (N,))
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"cifar10: batch file not found: {p}")
    with open(p, "rb") as f:
        d = safe_load(f, what=str(p), encoding="bytes")
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a dict with 'data' and 'labels', got {type(d).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{p}: missing 'data' or 'labels' entry (keys: {sorted(map(str, d))})")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{p}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{p}: {data.shape[0]} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(split: str = "train", root: str | os.PathLike | None = None) -> Dataset:
    """Load CIFAR-10.

    Parameters
    ----------
    split : ``train`` (batches 1-4), ``val`` (batch 5), ``trainval`` or ``test``.
    root : directory of the python batches; default ``$MEMCIM_DATA/cifar-10-batches-py``.

    Returns
    -------
    Dataset with x (N, 3, 32, 32) float32 in [0, 1] and y (N,) int64.
    """
    check_split(split)
    root = Path(root).expanduser() if root is not None else data_root() / "cifar-10-batches-py"
    files = [root / n for n in _SPLIT_FILES[split]]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise ValueError(f"cifar10: {', '.join(missing)} not found in {root}; unpack "
                         f"cifar-10-python.tar.gz there (data_batch_1..5, test_batch) or pass root (--data-dir)")
    xs, ys = zip(*(read_cifar_batch(p) for p in files))
    x = np.concatenate(xs).astype(np.float32) / 255.0
    return make_dataset(x, np.concatenate(ys), name="cifar10", split=split, n_classes=10,
                        source=str(root))
