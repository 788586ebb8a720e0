"""A small, bounded memo for pure but expensive computations (circuit solves, IR-drop-aware mapping).

Keys are digests of the exact input bytes and of the (frozen, hashable) configs, so a hit returns
what the computation would return. Values are shared, not copied: treat them as read-only (every
memcim object that holds them, a plan or a chip, is frozen).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch


def digest(*parts: Any) -> str:
    """SHA-1 of arrays (dtype, shape and bytes) and of the ``repr`` of everything else."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.detach().cpu().contiguous().numpy()
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()


class Memo:
    """Least-recently-used memo of at most ``size`` entries."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key in self._d:
            self._d.move_to_end(key)
            self.hits += 1
            return self._d[key]
        self.misses += 1
        value = compute()
        self._d[key] = value
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return value

    def clear(self) -> None:
        self._d.clear()
