"""scikit-learn's bundled 8x8 handwritten digits (1,797 images; shipped with sklearn)."""
from __future__ import annotations

import numpy as np

from memcim.data.base import Dataset, check_split, make_dataset


def load_digits(split: str = "train", *, seed: int = 0) -> Dataset:
    """Load the 8x8 digits with a fixed random split.

    Parameters
    ----------
    split : ``train`` (1,077 images), ``val`` (360), ``test`` (360) or ``trainval`` (1,437).
    seed : seed of the permutation that defines the split (keep the default for comparable results).

    Returns
    -------
    Dataset with x (N, 1, 8, 8) float32 in [0, 1] (pixel / 16) and y (N,) int64.
    """
    check_split(split)
    from sklearn.datasets import load_digits as _sk

    d = _sk()
    x = d.images.astype(np.float32)[:, None] / 16.0
    y = d.target
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = n_val = 360
    idx = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
           "train": order[n_test + n_val:], "trainval": order[n_test:]}[split]
    return make_dataset(x[idx], y[idx], name="digits", split=split, n_classes=10,
                        source="sklearn.datasets.load_digits")
