"""Bit slicing: a weight over several devices, an input over several cycles (``hw.slicing``).

Weights
-------
A matrix W (in x out) is first rounded to integers, ``W ~ s_w W_int`` with the step
``s_w = max|W| / Q`` per matrix or per output column (``mapping.scale``) and ``Q`` the largest
integer the encoding holds. ``W_int`` is then cut into ``N`` digits ``V_k`` of ``b_k`` bits
(``hw.slicing.slice_bits``, least significant first, shifts ``S_k = b_0 + ... + b_{k-1}``):

* ``sign_magnitude`` (CrossSim's bit-sliced core with differential cells, Xiao et al., IEEE Circuits
  Syst. Mag. 22(4):26-48, 2022): ``Q = 2**P - 1``, ``V_k = sign(W) digit_k(|W_int|)``, each slice a
  differential pair (``mapping.scheme = "differential"``);
* ``offset`` (the biased weights of ISAAC, Shafiee et al., ISCA 2016): ``Q = 2**(P-1) - 1``, the
  unsigned digits of ``W_int + 2**(P-1)``; the bias is subtracted digitally (``- 2**(P-1) sum_i x_i``);
* ``twos_complement`` (Diware et al., "Unbalanced bit-slicing scheme for accurate memristor-based
  neural network architecture", IEEE AICAS 2021): ``Q = 2**(P-1) - 1``, the digits of the ``P``-bit
  two's complement code, the most significant one signed (``-2**(b-1) .. 2**(b-1) - 1``).

so that ``W_int = sum_k 2**S_k V_k + bias``. Every slice is its own matrix, mapped by the one
mapping (:func:`memcim.mapping.crossbar.map_matrix`) on its own arrays, with its own ADCs and full
scale, at a fixed scale: one unit of a digit is one level step ``(g_max - g_min) / (2**b_k - 1)`` of
its devices. Differential mapping stores ``V_k`` (``G+ = g_min + max(V, 0) step``); offset mapping
stores the centred digit ``V_k - (lo_k + hi_k)/2`` around the window's midpoint (the digit ``V`` at
``g_min + (V - lo_k) step``) against the array's reference column at the level nearest the midpoint,
and the reference level returns digitally (``sum_k 2**S_k (lo_k + r_k) sum_i x_i``, ``r_k`` the
reference level in digit units), exactly as the bias does. The digital
periphery recombines ``y = s_w (sum_k 2**S_k y_k + o sum_i x_i)`` (shift-and-add). With
``2**b_k`` device levels every digit lands on a level, so the only weight rounding is ``W_int``'s.

Inputs (``slicing.input_mode``)
------------------------------
* ``parallel``: one DAC drive per input (as unsliced).
* ``bit_serial`` (ISAAC; PUMA, Ankit et al., ASPLOS 2019): the DAC code ``q`` (``|q| <= K``) is
  fed ``input_bits_per_cycle`` magnitude bits per cycle with its sign, ``u_j = sign(q)
  digit_j(|q|) / (2**c_j - 1)``, each cycle read and converted by every slice's ADCs, and the
  cycles added digitally with weights ``x_scale (2**c_j - 1) 2**T_j / K``.
* ``pulse_width``: the code as a pulse of ``|q|`` unit slots at full amplitude ``v_read`` (IBM's
  HERMES chip, Khaddam-Aljameh et al., IEEE JSSC 57(4), 2022; the PWM readout of Pedretti et al.,
  npj Unconv. Comput., 2025, Fig. 3); the column integrates the charge and converts once. With a
  linear reader the integrated charge equals the amplitude read of ``q / K`` (memcim's read noise
  is per unit time, as the amplitude read's), so the values equal the parallel read's; it costs
  ``2**bits - 1`` slots of latency.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from memcim.config import HardwareConfig, SlicingConfig
from memcim.hardware.converters import dac_convert
from memcim.mapping.crossbar import MappedMatrix, as_matrix, map_matrix

__all__ = ["SlicedPlan", "map_sliced", "quantize_weights", "weight_digits", "input_cycles", "input_drives",
           "lossless_adc_bits"]


def _q_max(sl: SlicingConfig) -> int:
    P = sl.weight_bits
    return 2 ** P - 1 if sl.encoding == "sign_magnitude" else 2 ** (P - 1) - 1


def quantize_weights(W: torch.Tensor, hw: HardwareConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_int`` (int64, in x out) and the step ``s_w`` (out,) with ``W ~ s_w W_int``: the largest
    magnitude of the matrix (``mapping.scale = "matrix"``) or column maps to the encoding's ``Q``."""
    Q = _q_max(hw.slicing)
    if Q < 1:
        raise ValueError(f"slicing.weight_bits: {hw.slicing.weight_bits} bit(s) cannot hold a signed weight with "
                         f"encoding {hw.slicing.encoding!r}; give at least 2")
    if hw.mapping.scale == "matrix":
        mx = W.abs().max().expand(W.shape[1])
    else:
        mx = W.abs().amax(dim=0)
    step = torch.where(mx > 0, mx / Q, torch.ones_like(mx))
    return torch.round(W / step).clamp(-Q, Q).to(torch.int64), step


def weight_digits(W_int: torch.Tensor, sl: SlicingConfig) -> tuple[list[torch.Tensor], list[tuple[int, int]], int]:
    """The slices' integer digits ``V_k`` (least significant first), each one's range ``(lo, hi)`` and
    the bias, with ``W_int = sum_k 2**S_k V_k + bias`` (see the module docstring)."""
    bits = sl.slice_bits
    P = sl.weight_bits
    shifts = np.concatenate([[0], np.cumsum(bits)[:-1]]).astype(int)
    if sl.encoding == "sign_magnitude":
        mag, sign = W_int.abs(), torch.sign(W_int)
        digits = [sign * ((mag >> int(s)) & (2 ** b - 1)) for s, b in zip(shifts, bits)]
        return digits, [(-(2 ** b - 1), 2 ** b - 1) for b in bits], 0
    if sl.encoding == "offset":
        code = W_int + 2 ** (P - 1)
        digits = [(code >> int(s)) & (2 ** b - 1) for s, b in zip(shifts, bits)]
        return digits, [(0, 2 ** b - 1) for b in bits], -(2 ** (P - 1))
    code = torch.remainder(W_int, 2 ** P)                                     # two's complement
    digits = [(code >> int(s)) & (2 ** b - 1) for s, b in zip(shifts, bits)]
    bt = bits[-1]
    digits[-1] = torch.where(digits[-1] >= 2 ** (bt - 1), digits[-1] - 2 ** bt, digits[-1])
    ranges = [(0, 2 ** b - 1) for b in bits[:-1]] + [(-(2 ** (bt - 1)), 2 ** (bt - 1) - 1)]
    return digits, ranges, 0


def input_cycles(hw: HardwareConfig) -> tuple[int, ...]:
    """Bits of the input code per cycle, least significant first: ``()`` unless bit-serial."""
    sl, dac = hw.slicing, hw.dac
    if sl.input_mode != "bit_serial":
        return ()
    mag = dac.bits - 1 if dac.signed else dac.bits
    c = sl.input_bits_per_cycle
    return (c,) * (mag // c) + ((mag % c,) if mag % c else ())


def input_drives(x: torch.Tensor, hw: HardwareConfig, cycles: tuple[int, ...]):
    """The word-line drives of bit-serial inputs: a list of ``(u_j, weight_j)``, ``u_j`` like ``x``
    (drive fractions in [-1, 1]) and ``weight_j`` (..., batch, 1), with ``sum_j weight_j u_j`` equal to
    the DAC's reconstruction ``u * x_scale`` (:func:`memcim.hardware.converters.dac_convert`)."""
    u, xs = dac_convert(x, hw.dac)
    K = hw.dac.steps
    q = torch.round(u * K)
    mag, sign = q.abs().to(torch.int64), torch.sign(q)
    out, shift = [], 0
    for c in cycles:
        top = 2 ** c - 1
        d = ((mag >> shift) & top).to(x.dtype)
        out.append((sign * d / top, xs * (top * 2 ** shift / K)))
        shift += c
    return out


#: saturation probability of a calibration read above which :func:`map_sliced` warns (a calibrated
#: full scale at quantile 1 never saturates on its calibration reads: it only rounds, which is modelled)
SATURATION_WARNING = 1e-3


def lossless_adc_bits(rows: int, digit_max: int, input_max: int) -> int:
    """ADC bits that convert every integer partial sum of one array exactly: a signed mid-tread ADC
    with ``2**(bits-1) - 1 >= rows digit_max input_max`` (ISAAC's sizing rule, Shafiee et al. 2016)."""
    return int(math.ceil(math.log2(rows * digit_max * input_max + 1))) + 1


@dataclass(frozen=True, eq=False)
class SlicedPlan:
    """The plan of a sliced matrix: one :class:`~memcim.mapping.crossbar.MappedMatrix` per weight slice.

    Attributes
    ----------
    hw : the config (with its ``slicing`` section).
    in_features, out_features : the shape of W.
    slices : the slices' plans (least significant first); each computes ``x @ M_k`` on its own arrays.
    significance : ``2**S_k`` per slice.
    weight_step : ``s_w`` (out,) [weight units per integer unit].
    offset : ``o``: the digital term ``s_w o sum_i x_i`` (bias and offset-mapping centres).
    cycles : input bits per cycle (bit-serial), ``()`` otherwise.
    weight_int : ``W_int`` (int64, in x out) (unsliced weights: None).
    info : per-slice ADC diagnostics (lossless bits, saturation probability on the calibration reads).
    """

    hw: HardwareConfig
    in_features: int
    out_features: int
    slices: tuple
    significance: tuple
    weight_step: torch.Tensor
    offset: float
    cycles: tuple
    weight_int: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def n_arrays(self) -> int:
        """Physical arrays (a pair of arrays counts two)."""
        per = 2 if (self.hw.mapping.scheme == "differential" and self.hw.mapping.pair == "arrays") else 1
        return sum(p.n_row_tiles * p.n_col_tiles * per for p in self.slices)

    @property
    def n_cycles(self) -> int:
        """Input cycles per read (1 unless bit-serial)."""
        return max(1, len(self.cycles))

    @property
    def n_devices(self) -> int:
        return sum(p.n_devices for p in self.slices)

    def realized(self) -> torch.Tensor:
        """The matrix the hardware computes with noise and converters off, (in, out) float64."""
        acc = sum(a * p.realized().to(torch.float64) for a, p in zip(self.significance, self.slices))
        return self.weight_step.to(torch.float64) * (acc + self.offset)

    def to(self, device) -> "SlicedPlan":
        return dataclasses.replace(self, slices=tuple(p.to(device) for p in self.slices),
                                   weight_step=self.weight_step.to(device))

    def summary(self) -> dict:
        sl = self.hw.slicing
        d = dict(self.slices[0].summary())
        d.update({"devices": self.n_devices, "weight_slices": self.n_slices,
                  "slice_bits": list(sl.slice_bits) if sl.weights_sliced else None, "encoding": sl.encoding,
                  "input_mode": sl.input_mode, "input_cycles": self.n_cycles, "arrays": self.n_arrays,
                  "tiles": [[p.n_row_tiles, p.n_col_tiles] for p in self.slices]})
        return d


def _calibration_drives(n: int, hw: HardwareConfig, calib_inputs, calib_seed: int, cycles) -> torch.Tensor | None:
    """The bit-serial cycles' drives of the calibration inputs, stacked (cycles x batch, in)."""
    if not cycles:
        return None
    if calib_inputs is None:
        g = torch.Generator(device="cpu").manual_seed(calib_seed)
        x = torch.randn(512, n, generator=g, dtype=torch.float64)
    else:
        x = torch.as_tensor(np.asarray(calib_inputs) if not isinstance(calib_inputs, torch.Tensor)
                            else calib_inputs.detach()).to(torch.float64)
        if x.ndim != 2 or x.shape[1] != n:
            raise ValueError(f"calib_inputs: shape {tuple(x.shape)} does not match (batch, {n})")
    return torch.cat([u for u, _ in input_drives(x, hw, cycles)])


def _saturation(plan: MappedMatrix, drives: torch.Tensor) -> float:
    """Fraction of the calibration reads' column outputs beyond the ADC full scale."""
    hw = plan.hw
    gd = plan.effective_difference()
    up = torch.zeros(drives.shape[0], plan.n_row_tiles * plan.tile_rows, dtype=torch.float64)
    up[:, : plan.in_features] = drives
    up = up.reshape(drives.shape[0], plan.n_row_tiles, plan.tile_rows).transpose(0, 1)
    v = hw.array.r_tia * hw.array.v_read * (up @ gd).abs()[..., : plan.out_features]
    return float((v > plan.full_scale[:, None, : plan.out_features]).double().mean())


def map_sliced(W, hw: HardwareConfig, calib_inputs=None, *, calib_seed: int = 0) -> SlicedPlan:
    """Map ``W`` (in x out) with bit slicing (``hw.slicing``): see the module docstring.

    Each slice is mapped by :func:`memcim.mapping.crossbar.map_matrix` under ``hw`` without its
    slicing section, at the fixed scale of its digits; its ADC full scale is calibrated on the
    slice's own reads of the calibration inputs (their bit-serial cycles when bit-serial). Where the
    ADC has fewer bits than a slice's lossless sum (:func:`lossless_adc_bits`), ``info`` records the
    probability that a calibration read saturates it, and a warning names it when it exceeds
    :data:`SATURATION_WARNING`.
    """
    if not isinstance(hw, HardwareConfig):
        raise TypeError(f"hw: expected a HardwareConfig, got {type(hw).__name__}")
    W = as_matrix(W)
    n, m = W.shape
    sl = hw.slicing
    base = dataclasses.replace(hw, slicing=SlicingConfig())
    cycles = input_cycles(hw)
    drives = _calibration_drives(n, hw, calib_inputs, calib_seed, cycles)
    kw = dict(calib_seed=calib_seed, calib_drives=drives)
    if not sl.weights_sliced:
        plan = map_matrix(W, base, calib_inputs, **kw)
        return SlicedPlan(hw=hw, in_features=n, out_features=m, slices=(plan,), significance=(1.0,),
                          weight_step=torch.ones(m, dtype=torch.float64), offset=0.0, cycles=cycles)
    W_int, step = quantize_weights(W, hw)
    digits, ranges, bias = weight_digits(W_int, sl)
    bits = sl.slice_bits
    shifts = np.concatenate([[0], np.cumsum(bits)[:-1]]).astype(int)
    offset_scheme = hw.mapping.scheme == "offset"
    plans, offset, info = [], float(bias), {"slices": []}
    in_max = max(2 ** c - 1 for c in cycles) if cycles else hw.dac.steps if hw.dac.enabled else None
    for k, (V, (lo, hi), b) in enumerate(zip(digits, ranges, bits)):
        if offset_scheme:
            M, wmax = V.to(torch.float64) - (lo + hi) / 2.0, (2 ** b - 1) / 2.0
        else:
            M, wmax = V.to(torch.float64), float(2 ** b - 1)
        p = map_matrix(M, base, calib_inputs, weight_max=wmax, **kw)
        if offset_scheme:
            # digit d sits at g_min + d c; the reference column at its level-rounded midpoint g_ref
            # (no level at the midpoint of 2**b levels), so the array computes d - (g_ref - g_min)/c
            # per unit: that reference level, in digit units, returns digitally
            g_ref = float(p.g_neg[p.mask_neg][0])
            c = float(p.scale.reshape(-1)[0])
            offset += float(2 ** int(shifts[k])) * ((g_ref - hw.device.g_min) / c + lo)
        plans.append(p)
        d = {"slice": k, "bits": int(b), "shift": int(shifts[k])}
        if hw.adc.enabled and in_max is not None:
            need = lossless_adc_bits(p.tile_rows, max(abs(lo), abs(hi)), in_max)
            d["lossless_adc_bits"] = need
            if hw.adc.bits < need:
                if drives is None:
                    u, _ = dac_convert(torch.randn(512, n, generator=torch.Generator().manual_seed(calib_seed),
                                                   dtype=torch.float64) if calib_inputs is None else
                                       torch.as_tensor(np.asarray(calib_inputs), dtype=torch.float64), hw.dac)
                else:
                    u = drives
                d["saturation_probability"] = _saturation(p, u)
        info["slices"].append(d)
    # below the lossless bits a calibrated ADC only rounds (the closed form and the read model that);
    # warn when it also saturates on a noticeable share of the calibration reads
    coarse = [d for d in info["slices"] if d.get("saturation_probability", 0.0) > SATURATION_WARNING]
    if coarse:
        d = max(coarse, key=lambda e: e["saturation_probability"])
        warnings.warn(f"adc.bits: {hw.adc.bits} bits are too coarse for {len(coarse)} of {len(plans)} weight slice(s) "
                      f"(slice {d['slice']}: {d['bits']} bits on {plans[d['slice']].tile_rows} rows needs "
                      f"{d['lossless_adc_bits']} for a lossless sum); a calibration read saturates its ADC with "
                      f"probability {d['saturation_probability']:.3g} (adc.fs_mode = {hw.adc.fs_mode!r})",
                      UserWarning, stacklevel=3)
    return SlicedPlan(hw=hw, in_features=n, out_features=m, slices=tuple(plans),
                      significance=tuple(float(2 ** int(s)) for s in shifts), weight_step=step, offset=offset,
                      cycles=cycles, weight_int=W_int, info=info)
