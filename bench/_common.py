"""Helpers shared by the benchmarks that compare memcim with a peer over chips (bench_drift_aihwkit,
bench_layers_aihwkit): summary statistics and one batched read of a model."""
from __future__ import annotations

import numpy as np
import torch


def summary(v) -> dict:
    """Mean, sample std, count and values of a list of per-chip figures."""
    v = np.asarray(v, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size),
            "values": v.tolist()}


def outputs(model, x, batch: int) -> torch.Tensor:
    """The model's outputs on ``x`` in batches of ``batch``, float32, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)]).float()


def read(model, x, y, ref, batch: int) -> tuple[float, float]:
    """(accuracy, relative output error ||y - y_digital||^2 / ||y_digital||^2) of one read."""
    out = outputs(model, x, batch)
    return float((out.argmax(1) == y).float().mean()), float(((out - ref) ** 2).sum() / (ref ** 2).sum())
