"""The low-rank two-step scheme (paper 000) on simulated hardware, and its additive-noise prediction.

Signal path per input ``x`` (batch of row vectors):

    x -> DAC -> r1 programmed chips of A -> ADC -> digital average  = z   (n -> k)
    z -> DAC -> r2 programmed chips of B -> ADC -> digital average  = y_hat (k -> m)

Each factor is mapped with :func:`memcim.mapping.crossbar.map_matrix` (differential pairs or offset,
quantized conductances, tiling); the intermediate ``z`` leaves the first arrays through their ADCs
and enters the second through the DAC. Chips are sampled with :func:`memcim.simulate.program`:
``trials * r1`` chips of ``A`` and ``trials * r2`` of ``B``.

The bridge to the paper's weight-unit model: a device programmed with variance ``sigma_g^2`` [S^2]
and a differential pair mapped with scale ``c = (g_max - g_min) / max|M|`` [S per weight unit]
gives a weight error of variance ``(var(G+) + var(G-)) / c^2``. With absolute programming noise only,
``sigma_w = sqrt(2) * prog_sigma_abs / c``, so each factor has its own ``sigma``: ``sigma_A`` scales
with ``max|A|`` and ``sigma_B`` with ``max|B|``. With relative noise the variance depends on each
target; :func:`equivalent_sigma` returns the mean over the matrix, which makes the prediction exact
in expectation for white inputs (see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memcim.hardware.device import programming_sigma
from memcim.analysis.lowrank import (LowRankTerms, check_matrix, check_second_moment, factorize,
                                     lowrank_terms_factors, svd_stats)

__all__ = ["equivalent_sigma", "HardwareLowRank", "hardware_lowrank", "hardware_baseline_error",
           "predict_hardware"]


def _dev_var(g, level, dev):
    """Programming-noise variance [S^2] per device, from the one device model."""
    return programming_sigma(torch.as_tensor(g), level, dev).numpy() ** 2


def equivalent_sigma(mapped) -> float:
    """Weight-unit noise std that the mapped matrix's programming noise amounts to.

    ``sigma_w^2 = mean over weights of (var(G+) + var(G-)) / c^2`` (differential) or
    ``var(G) / c^2`` plus the reference column's share (offset). Exact for absolute noise; for
    relative noise it is the average, which gives the correct expected error only where the noise
    terms weight every entry equally (white inputs on the first step). Per-level table noise is
    included (:func:`memcim.hardware.device.programming_sigma`); clipping at ``g = 0`` is ignored.
    Returns 0 when the config has no programming noise.
    """
    hw = mapped.hw
    dev = hw.device
    if not dev.has_programming_noise:
        return 0.0
    n, m = mapped.in_features, mapped.out_features

    def weights(t):
        return None if t is None else t.reshape(-1, mapped.out_pad)[:n, :m].detach().cpu()

    c = mapped.scale[0, :m].detach().cpu().numpy()  # linear mapping: one scale per column
    var = _dev_var(weights(mapped.g_pos), weights(mapped.level_pos), dev)
    ln = None if mapped.level_neg is None else mapped.expand_neg(mapped.level_neg)
    # offset: the reference device's noise enters every weight of its row
    var = var + _dev_var(weights(mapped.expand_neg(mapped.g_neg)), weights(ln), dev)
    return float(np.sqrt(np.mean(var / c[None, :] ** 2)))


@dataclass
class HardwareLowRank:
    """Mapped factors of the scheme: ``A`` and ``B`` plans plus the scheme's parameters."""

    W: np.ndarray
    A: np.ndarray
    B: np.ndarray
    k: int
    r1: int
    r2: int
    split: str
    mapped_A: object
    mapped_B: object

    @property
    def devices(self) -> int:
        """Physical devices programmed: ``r1`` copies of A's plan plus ``r2`` of B's."""
        return self.r1 * self.mapped_A.n_devices + self.r2 * self.mapped_B.n_devices

    def sigmas(self) -> tuple[float, float]:
        """``(sigma_A, sigma_B)`` in weight units (see :func:`equivalent_sigma`)."""
        return equivalent_sigma(self.mapped_A), equivalent_sigma(self.mapped_B)

    def run(self, x, trials: int = 1, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
        """Program ``trials`` independent systems and read ``x`` once: returns (trials, batch, m).

        Every trial has its own ``r1`` chips of ``A`` and ``r2`` of ``B``.
        """
        from memcim.simulate import program

        x = torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, torch.Tensor) else x, dtype=dtype)
        chips_A = program(self.mapped_A, seed=seed, trials=trials * self.r1, dtype=dtype)
        za = chips_A.mvm(x)                                              # (T*r1, b, k), through the ADC
        z = za.reshape(trials, self.r1, *za.shape[1:]).mean(1)           # digital average
        chips_B = program(self.mapped_B, seed=seed + 7_919, trials=trials * self.r2, dtype=dtype)
        yb = chips_B.mvm(z.repeat_interleave(self.r2, dim=0))            # z re-enters through the DAC
        return yb.reshape(trials, self.r2, *yb.shape[1:]).mean(1)

    def predict(self, R=None, sigmas: tuple[float, float] | None = None, realized: bool = False) -> LowRankTerms:
        """Additive-noise prediction of ``E||y_hat - x W||^2`` for this hardware.

        Parameters
        ----------
        R : input second moment (default ``I``).
        sigmas : weight-unit noise of the two steps (default :meth:`sigmas`).
        realized : if True, use the quantized factors the hardware actually holds (``realized()`` of
            each plan) instead of the ideal ``A``, ``B``: conductance quantization then enters the
            truncation term exactly.
        """
        s1, s2 = self.sigmas() if sigmas is None else sigmas
        A = self.mapped_A.realized().cpu().numpy() if realized else self.A
        B = self.mapped_B.realized().cpu().numpy() if realized else self.B
        return lowrank_terms_factors(self.W, A, B, self.r1, self.r2, s1, s2, R)


def hardware_lowrank(W, hw, k: int, r1: int, r2: int, split: str = "balanced", calib_inputs=None,
                     calib_seed: int = 0) -> HardwareLowRank:
    """Map the two factors of the rank-``k`` scheme onto ``hw``.

    Parameters
    ----------
    W : (n, m) target. hw : :class:`memcim.config.HardwareConfig`.
    k, r1, r2, split : the scheme.
    calib_inputs : sample inputs (batch, n) for calibrated ADCs; the second step is calibrated on
        ``calib_inputs @ A``. Default: 512 standard-normal vectors (seeded).
    """
    from memcim.mapping.crossbar import map_matrix

    W = check_matrix(W, "W")
    A, B = factorize(svd_stats(W), k, split)
    if calib_inputs is None:
        g = np.random.default_rng(calib_seed)
        calib_inputs = g.standard_normal((512, W.shape[0]))
    calib_inputs = np.asarray(calib_inputs, dtype=np.float64)
    mA = map_matrix(A, hw, calib_inputs=calib_inputs)
    mB = map_matrix(B, hw, calib_inputs=calib_inputs @ A)
    return HardwareLowRank(W=W, A=A, B=B, k=int(k), r1=int(r1), r2=int(r2), split=split, mapped_A=mA, mapped_B=mB)


def hardware_baseline_error(W, hw, x, trials: int = 100, seed: int = 0, calib_inputs=None) -> dict:
    """Monte Carlo error of the baseline on hardware and its additive prediction.

    Returns ``{"mean", "stderr", "predicted", "sigma"}`` with the error per input vector
    (mean over the rows of ``x``).
    """
    from memcim.mapping.crossbar import map_matrix
    from memcim.simulate import program

    W = check_matrix(W, "W")
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    mapped = map_matrix(W, hw, calib_inputs=calib_inputs if calib_inputs is not None else np.asarray(x))
    y = xt @ torch.as_tensor(W)
    vals = []
    done = 0
    chunk = max(1, min(trials, 2_000_000 // max(W.size, 1)))
    while done < trials:
        c = min(chunk, trials - done)
        chips = program(mapped, seed=seed + done, trials=c, dtype=torch.float64)
        vals.append(((chips.mvm(xt) - y) ** 2).sum(-1).mean(-1))
        done += c
    v = torch.cat(vals).numpy()
    sigma = equivalent_sigma(mapped)
    R = xt.T @ xt / xt.shape[0]
    Wr = mapped.realized().cpu().numpy()
    D = Wr - W
    quant = float(np.sum(D * (R.numpy() @ D)))
    pred = sigma ** 2 * W.shape[1] * float(torch.trace(R))
    return {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None,
            "predicted": pred, "predicted_with_quantization": pred + quant, "sigma": sigma}


def predict_hardware(W, hw, k, r1, r2, split="balanced", R=None, calib_inputs=None) -> dict:
    """Additive-noise prediction for the scheme on ``hw`` without running it (ideal and realized factors)."""
    sch = hardware_lowrank(W, hw, k, r1, r2, split, calib_inputs=calib_inputs)
    R = check_second_moment(R, sch.W.shape[0], "R") if R is not None else None
    return {"sigmas": sch.sigmas(), "ideal": sch.predict(R).to_dict(),
            "realized": sch.predict(R, realized=True).to_dict(), "devices": sch.devices}
