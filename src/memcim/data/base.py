"""The in-memory dataset type shared by every loader, and where datasets live on disk."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "val", "test", "trainval")


def data_root() -> Path:
    """Directory searched for dataset files: ``$MEMCIM_DATA`` or ``~/.cache/memcim/data``."""
    env = os.environ.get("MEMCIM_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memcim" / "data"


@dataclass(frozen=True)
class Dataset:
    """A labelled image dataset held in memory.

    Attributes
    ----------
    x : float32 tensor (N, C, H, W), pixel values in [0, 1].
    y : int64 tensor (N,), class indices in [0, n_classes).
    name, split : which dataset and split (``train``, ``val``, ``test`` or ``trainval``).
    n_classes : number of classes.
    source : where the data came from (a path or a package name).
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str
    split: str
    n_classes: int
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, (C, H, W)."""
        return tuple(self.x.shape[1:])

    def subset(self, limit: int | None) -> "Dataset":
        """The first ``limit`` samples (all when ``limit`` is None)."""
        if limit is None:
            return self
        limit = check_limit(limit)
        return Dataset(self.x[:limit], self.y[:limit], self.name, self.split, self.n_classes,
                       self.source, dict(self.meta))

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None):
        """Iterate over ``(x, y)`` mini-batches; ``shuffle`` draws the order from ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield self.x[idx], self.y[idx]


def check_limit(limit) -> int:
    """Validate a sample count ``limit`` (a positive integer; :func:`memcim.validate.integer`)."""
    from memcim.validate import integer

    if isinstance(limit, float):   # a sample count is never given as a float, not even 10.0
        raise ValueError(f"limit: {limit!r} is not allowed; must be a positive integer")
    return integer("limit", limit, lo=1)


def check_split(split: str, allowed=SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"split: {split!r} is not allowed; choose one of {', '.join(allowed)}")
    return split


def make_dataset(x: np.ndarray, y: np.ndarray, *, name: str, split: str, n_classes: int,
                 source: str) -> Dataset:
    """Build a :class:`Dataset` from numpy arrays after checking shapes and labels."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: {x.shape[0]} images but {y.shape[0]} labels in {source}")
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name}: labels outside [0, {n_classes}) in {source} (corrupt file?)")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not torch.isfinite(xt).all():
        raise ValueError(f"{name}: non-finite pixel values in {source}")
    return Dataset(xt, torch.from_numpy(y), name, split, n_classes, source)
