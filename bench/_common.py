"""Helpers shared by the benchmarks that compare memcim with a peer over chips (bench_drift_aihwkit,
bench_layers_aihwkit): summary statistics, one batched read of a model, the matched aihwkit PCM tile
and the comparison of two per-chip summaries."""
from __future__ import annotations

import math

import numpy as np
import torch


def peer_args(ap, *, chips: int, n: int, out: str) -> None:
    """The options every chip-over-chip peer comparison takes: --chips, --n (MNIST test images),
    --seed, --threads and --out."""
    ap.add_argument("--chips", type=int, default=chips)
    ap.add_argument("--n", type=int, default=n, help=f"MNIST test images (default {n})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=out)


def mnist_test(n: int):
    """The first ``n`` MNIST test images and 256 calibration images of the same spec, the way both
    peer comparisons read them: (dataset, calibration inputs)."""
    from memcim.data.spec import calibration_data, load_data

    spec = f"mnist:test:{n}"
    return load_data(spec), calibration_data(spec, 256)


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


def pcm_rpu_config(tile: int, t0: float, read_noise: bool = True):
    """aihwkit 1.1.0's pure-torch inference tile set up as memcim's ``pcm`` preset is compared with it:
    perfect I/O (no DAC/ADC, output noise or bound management), ``PCMLikeNoiseModel`` (Joshi et al.
    2020) at g_max 25 uS, t0 and t_read 250 ns, global drift compensation, ``tile`` x ``tile`` arrays,
    digital bias. aihwkit is a benchmark peer only: imported here, never by memcim."""
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    rpu = TorchInferenceRPUConfig()        # the torch tile (the C++ tile refuses this torch build's weights)
    rpu.forward.is_perfect = True
    rpu.noise_model = PCMLikeNoiseModel(g_max=25.0, t_0=t0, t_read=250e-9, read_noise_scale=1.0 if read_noise else 0.0)
    rpu.drift_compensation = GlobalDriftCompensation()
    rpu.mapping.max_input_size = tile
    rpu.mapping.max_output_size = tile
    rpu.mapping.digital_bias = True
    return rpu


def difference(sm: dict, sa: dict) -> dict:
    """Two :func:`summary` results compared: the difference of the means, its standard error, z, and
    whether it lies within the spread over chips (the larger std)."""
    diff = sm["mean"] - sa["mean"]
    se = math.sqrt(sm["std"] ** 2 / sm["n"] + sa["std"] ** 2 / sa["n"])
    return {"difference": diff, "spread": max(sm["std"], sa["std"]), "se_difference": se,
            "z": diff / se if se > 0 else None, "within_spread": abs(diff) <= max(sm["std"], sa["std"])}
