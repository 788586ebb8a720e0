"""The one energy and power model: energy per inference of a crossbar layer, and a
digital-accelerator baseline (paper 003).

Per input vector, for a layer ``y = x W`` (``in x out``) mapped by
:func:`memcim.mapping.crossbar.map_matrix` on ``T`` row tiles and ``C`` column tiles:

* **crossbar read**: ``t_read v_read^2 sum_i u_i^2 sum_j (G+_ij + G-_ij)`` (Joule heating of every
  device while its word line is driven at ``u_i v_read`` during the integration time ``t_read``;
  default ``t_read = 1/(2 B)`` for the read bandwidth ``B`` of the device config, the noise
  bandwidth of an integrate-and-dump of length ``t_read``);
* **DAC**: ``C in`` conversions, each a binary-weighted capacitive DAC switching energy
  ``2**bits C_unit V_dd^2`` plus charging the word line, ``cols C_cell (u v_read)^2``;
* **ADC**: ``T out`` conversions, each ``FOM_W 2**bits`` with the Walden figure of merit
  ``FOM_W = P / (f_s 2**ENOB)`` [J per conversion step] (R. H. Walden, "Analog-to-digital
  converter survey and analysis", IEEE JSAC 17(4), 1999; values from B. Murmann, "ADC
  Performance Survey 1997-2024", Stanford, online: designs at 10-100 MS/s span about
  1-100 fJ/conv-step; default 20 fJ/conv-step, ENOB = bits);
* **TIA**: ``T out`` column amplifiers, each burning ``P_tia`` for ``t_read``; plus, when the
  inputs' second moments are known, the dissipation in every bit line's feedback resistor,
  ``t_read r_tia E[I_j^2]`` (:func:`tia_power`; each bit line, G+ and G- alike, ends in its own
  TIA held at virtual ground, as in paper 001, Eqs. 17-19);
* **digital accumulation**: per output, ``T - 1`` additions of the row-tile partial sums (32-bit
  integer add, 0.1 pJ), one rescale multiply (32-bit float, 3.7 pJ) and one bias add (32-bit
  float, 0.9 pJ).

Digital baseline, per multiply-accumulate: an 8-bit multiply (0.2 pJ) and a 32-bit add
(0.1 pJ) plus reading the 8-bit weight from a 32 KB SRAM (20 pJ per 64-bit access, 2.5 pJ per
byte). All digital figures are M. Horowitz, "Computing's energy problem (and what we can do about
it)", ISSCC 2014, 45 nm at 0.9 V. A ``"fp32"`` baseline uses a 32-bit float multiply (3.7 pJ) and
add (0.9 pJ) and 4-byte weight reads (10 pJ).
"""
from __future__ import annotations

import math  # noqa: F401
from dataclasses import asdict, dataclass

import numpy as np

from memcim.config import HardwareConfig

__all__ = ["EnergyConfig", "HOROWITZ_2014_PJ", "bitline_power", "crossbar_power", "tia_power", "chip_power", "layer_energy",
           "digital_energy", "network_energy"]

#: Energy per operation [pJ], 45 nm, 0.9 V (Horowitz, ISSCC 2014, Fig. 1.1.9 and its table).
HOROWITZ_2014_PJ = {
    "int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "fp16_add": 0.4, "fp32_add": 0.9,
    "int8_mult": 0.2, "int32_mult": 3.1, "fp16_mult": 1.1, "fp32_mult": 3.7,
    "sram_8kb_64b": 10.0, "sram_32kb_64b": 20.0, "sram_1mb_64b": 100.0, "dram_64b": 1300.0,
}


@dataclass(frozen=True)
class EnergyConfig:
    """Periphery energy parameters (SI units).

    Parameters
    ----------
    t_read : integration time of one array read [s]; None = 1/(2 device.bandwidth).
    adc_fom : Walden figure of merit [J/conversion-step] (default 20 fJ).
    dac_c_unit : unit capacitor of the DAC [F] (default 0.5 fF).
    dac_vdd : DAC reference/supply voltage [V] (default 0.9 V).
    c_cell : word-line capacitance per cross-point [F] (default 0.1 fF).
    tia_power : static power of one column TIA [W] (default 20 uW).
    baseline : digital baseline, "int8" or "fp32".
    """

    t_read: float | None = None
    adc_fom: float = 20e-15
    dac_c_unit: float = 0.5e-15
    dac_vdd: float = 0.9
    c_cell: float = 0.1e-15
    tia_power: float = 20e-6
    baseline: str = "int8"

    def __post_init__(self):
        for k in ("t_read", "adc_fom", "dac_c_unit", "dac_vdd", "c_cell", "tia_power"):
            v = getattr(self, k)
            if v is None and k == "t_read":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"energy.{k}: {v!r} is not allowed; must be a finite number >= 0")
        if self.baseline not in ("int8", "fp32"):
            raise ValueError(f"energy.baseline: {self.baseline!r} is not allowed; choose int8 or fp32")

    def read_time(self, hw: HardwareConfig) -> float:
        return self.t_read if self.t_read is not None else 1.0 / (2.0 * hw.device.bandwidth)

    def to_dict(self) -> dict:
        return asdict(self)


def _pj(key):
    return HOROWITZ_2014_PJ[key] * 1e-12


def bitline_power(g, u2, ug2, *, v_read: float, r_tia: float, g_var=None):
    """The read-power formula: device and TIA power [W] of a set of bit lines.

    A read drives word line ``i`` at ``u_i v_read``; bit line ``j`` (held at virtual ground by its
    TIA) collects ``I_j = v_read sum_i u_i G_ij``. Averaged over the reads of one input:

    * devices (Joule heating): ``v_read^2 sum_i E[u_i^2] sum_j E[G_ij]``;
    * TIAs (the feedback resistor): ``r_tia E[I_j^2] = r_tia v_read^2 (E[(u . E[G_j])^2] + sum_i E[u_i^2] Var G_ij)``
      (the conductances are independent of the inputs; their fluctuation over chips adds the last term).

    Everything else about the inputs drops out: the formula needs ``E[u_i^2]`` per word line and
    ``E[(u . E[G_j])^2]`` per bit line. It works on numpy arrays and on torch tensors (differentiable).

    Parameters
    ----------
    g : (..., in, cols) mean conductances ``E[G_ij]`` [S] (a programmed chip: its conductances).
    u2 : (..., in) ``E[u_i^2]``, summed over the reads of one input (one read for a matrix, one per
        output position for a convolution).
    ug2 : (..., cols) ``E[(u . E[G_j])^2]`` [S^2], summed likewise.
    v_read : read voltage [V]. r_tia : TIA feedback resistance [Ohm].
    g_var : (..., in, cols) ``Var G_ij`` [S^2] over chips, or None (a given chip).

    Returns
    -------
    (device_W, tia_W), summed over the bit lines (leading dimensions kept).
    """
    v2 = v_read * v_read
    dev = v2 * (u2[..., :, None] * g).sum((-2, -1))
    i2 = ug2.sum(-1)
    if g_var is not None:
        i2 = i2 + (u2[..., :, None] * g_var).sum((-2, -1))
    return dev, r_tia * v2 * i2


def _bitlines(plan, conductances=None):
    """Conductances of every bit line of a plan, (..., row tiles, rows, bit lines): the G+ (or weight)
    columns, then the G- (or reference) columns."""
    import torch

    gp, gn = (plan.g_pos, plan.g_neg) if conductances is None else conductances
    return torch.cat([torch.as_tensor(gp), torch.as_tensor(gn)], dim=-1).to(torch.float64)


def _tile_rows(plan, a, name: str):
    """(in,) or (in, in) per-input statistics -> padded to the tiles' rows."""
    n = plan.in_features
    a = np.asarray(a, dtype=np.float64)
    if a.shape[0] != n or (a.ndim == 2 and a.shape[1] != n) or a.ndim not in (1, 2):
        raise ValueError(f"{name}: shape {a.shape} does not match the {n} inputs")
    pad = plan.n_row_tiles * plan.tile_rows - n
    return np.pad(a, [(0, pad)] * a.ndim)


def crossbar_power(plan, u2, *, conductances=None):
    """Crossbar read power [W] of a plan: ``v_read^2 sum_i E[u_i^2] sum_j G_ij`` over every device
    (G+ and G-, or the weight and reference columns), Joule heating of each device while its word
    line is driven at ``u_i v_read`` (the device term of :func:`bitline_power`). The one read-power
    formula: the energy per read is this times ``t_read``; the convex program's power is this
    (:func:`memcim.optimize.convex_range.read_power_coeffs`); MemSE's expected device power is its
    expectation (:mod:`memcim.analysis.power`).

    Parameters
    ----------
    plan : a :class:`memcim.mapping.crossbar.MappedMatrix` (its targets [S]).
    u2 : (in,) mean squared word-line drive fraction ``E[u_i^2]``.
    conductances : optional (G+, G-) of programmed chips, shaped like the plan's ``g_pos``/``g_neg``
        with a leading chips dimension (``ProgrammedChip.g_pos``/``g_neg``); the power of each chip is
        then returned as a (chips,) array.

    Returns
    -------
    float [W], or (chips,) array.
    """
    import torch

    u = torch.as_tensor(_tile_rows(plan, u2, "u2")).reshape(plan.n_row_tiles, plan.tile_rows)
    g = _bitlines(plan, conductances)
    dev, _ = bitline_power(g, u, torch.zeros(g.shape[:-2] + g.shape[-1:], dtype=g.dtype),
                           v_read=plan.hw.array.v_read, r_tia=plan.hw.array.r_tia)
    dev = dev.sum(-1).detach().cpu().numpy()
    return float(dev) if conductances is None else dev


def tia_power(plan, m2, *, g_var=None, conductances=None):
    """Power [W] dissipated in the TIAs' feedback resistors, ``r_tia sum_j E[I_j^2]`` over every bit
    line of every array (each G+ and G- column, or each weight and reference column, has its own
    TIA, paper 001 Eqs. 17-19), for inputs with the second-moment matrix ``m2 = E[u u^T]``
    (the TIA term of :func:`bitline_power`).

    Parameters
    ----------
    plan : a :class:`memcim.mapping.crossbar.MappedMatrix`.
    m2 : (in, in) ``E[u u^T]`` of the word-line drive fractions (averaged over the reads of one input).
    g_var : optional (Var G+, Var G-) shaped like the plan's targets [S^2] (the spread over chips,
        e.g. from :func:`memcim.hardware.device.conductance_moments`); then ``E[G]`` should be given in
        ``conductances``.
    conductances : optional (G+, G-): programmed chips (with a leading chips dimension, giving a
        (chips,) array) or mean conductances; default the plan's targets.

    Returns
    -------
    float [W], or (chips,) array.
    """
    import torch

    M = torch.as_tensor(_tile_rows(plan, m2, "m2"))
    T, R = plan.n_row_tiles, plan.tile_rows
    g = _bitlines(plan, conductances)                               # (..., T, R, L)
    blocks = torch.stack([M[t * R:(t + 1) * R, t * R:(t + 1) * R] for t in range(T)])   # (T, R, R)
    ug2 = ((blocks @ g) * g).sum(-2)                                # (..., T, L)
    u2 = torch.diagonal(blocks, dim1=-2, dim2=-1)                   # (T, R)
    var = None if g_var is None else _bitlines(plan, g_var)
    _, tia = bitline_power(g, u2, ug2, v_read=plan.hw.array.v_read, r_tia=plan.hw.array.r_tia, g_var=var)
    tia = tia.sum(-1).detach().cpu().numpy()
    return float(tia) if tia.ndim == 0 else tia


def chip_power(chip, u, *, n_inputs: int | None = None, g_offset: float = 0.0):
    """Measured read power [W] of programmed chips for the reads they actually ran: the device term
    (:func:`crossbar_power`) and the TIA term (:func:`tia_power`) on each chip's programmed
    conductances.

    Parameters
    ----------
    chip : a :class:`memcim.simulate.ProgrammedChip` (``trials`` chips).
    u : (reads, in) the word-line drive fractions of the reads (after the DAC).
    n_inputs : the power is summed over the reads and divided by this (the inputs the reads belong to:
        a convolution reads once per output position); default ``reads`` (power per read).
    g_offset : a conductance [S] subtracted from every present device first (MemSE counts its levels
        from 0 S while the ``memse`` preset lifts them by ``g_min``; see :mod:`memcim.analysis.memse_sim`).

    Returns
    -------
    (device_W, tia_W), each a (trials,) array.
    """
    import torch

    plan = chip.mapped
    u = torch.as_tensor(u).to(torch.float64).cpu()
    if u.ndim != 2 or u.shape[1] != plan.in_features:
        raise ValueError(f"u: shape {tuple(u.shape)} does not match the {plan.in_features} inputs")
    n = u.shape[0] if n_inputs is None else int(n_inputs)
    gp, gn = chip.g_pos.detach().to(torch.float64).cpu(), chip.g_neg.detach().to(torch.float64).cpu()
    if g_offset:
        gp = gp - g_offset * plan.mask_pos.to(gp)
        gn = gn - g_offset * plan.mask_neg.to(gn)
    m2 = (u.t() @ u / n).numpy()
    dev = crossbar_power(plan, np.diag(m2), conductances=(gp, gn))
    tia = tia_power(plan, m2, conductances=(gp, gn))
    return np.atleast_1d(dev), np.atleast_1d(tia)


def layer_energy(W, hw: HardwareConfig, *, g_min: float | None = None, g_max: float | None = None,
                 u2=None, m2=None, cfg: EnergyConfig | None = None, plan=None) -> dict:
    """Energy [J] of one input vector through one crossbar layer, by component, on the layer's
    actual mapping (:func:`memcim.mapping.crossbar.map_matrix`: its tiles, levels and scheme).

    Parameters
    ----------
    W : (in, out) weights.
    hw : hardware config (array size, v_read, converter bits, bandwidth).
    g_min, g_max : the window the weights are mapped into (default: the config's).
    u2 : (in,) mean squared word-line fraction ``E[u_i^2]`` (default 1/3, uniform drive).
    m2 : optional (in, in) ``E[u u^T]``; when given, ``u2`` is its diagonal and the dissipation in the
        TIAs' feedback resistors (:func:`tia_power`) is added as ``tia_feedback``.
    cfg : :class:`EnergyConfig`.
    plan : the layer's plan, if already mapped (``W``, ``hw``, ``g_min`` and ``g_max`` are then
        taken from it).

    Returns
    -------
    dict with ``crossbar``, ``dac``, ``adc``, ``tia``, (``tia_feedback``,) ``digital`` and ``total`` [J], plus
    ``conversions`` (ADC) and ``dac_conversions``.
    """
    from memcim.mapping.crossbar import map_matrix

    cfg = cfg or EnergyConfig()
    if plan is None:
        W = np.asarray(W, dtype=np.float64)
        if W.ndim != 2:
            raise ValueError(f"W: expected a 2-D (in, out) matrix, got shape {W.shape}")
        g_min = hw.device.g_min if g_min is None else float(g_min)
        g_max = hw.device.g_max if g_max is None else float(g_max)
        if not (0 <= g_min < g_max):
            raise ValueError(f"g_max: the window [{g_min:g}, {g_max:g}] S is not allowed; need 0 <= g_min < g_max")
        plan = map_matrix(W, hw.without("wires").set({"device.g_min": g_min, "device.g_max": g_max}))
    hw = plan.hw
    n, m = plan.in_features, plan.out_features
    if m2 is not None:
        m2 = np.asarray(m2, dtype=np.float64)
        if m2.shape != (n, n):
            raise ValueError(f"m2: shape {m2.shape} does not match the {n} inputs; expected ({n}, {n})")
        u2 = np.diag(m2).copy()
    u2 = np.full(n, 1.0 / 3.0) if u2 is None else np.asarray(u2, dtype=np.float64)
    if u2.shape != (n,):
        raise ValueError(f"u2: shape {u2.shape} does not match the {n} inputs")
    T, C = plan.n_row_tiles, plan.n_col_tiles
    t = cfg.read_time(hw)
    v = hw.array.v_read
    e_xbar = t * crossbar_power(plan, u2)
    dac_conv = C * n
    arrays_per_tile = 2 if (hw.mapping.scheme == "differential" and hw.mapping.pair == "arrays") else 1
    e_dac = dac_conv * (2 ** hw.dac.bits) * cfg.dac_c_unit * cfg.dac_vdd ** 2 \
        + C * float(u2.sum()) * arrays_per_tile * hw.array.cols * cfg.c_cell * v * v
    conv = T * m
    e_adc = conv * cfg.adc_fom * 2 ** hw.adc.bits
    e_tia = conv * cfg.tia_power * t
    e_dig = m * ((T - 1) * _pj("int32_add") + _pj("fp32_mult") + _pj("fp32_add"))
    out = {"crossbar": e_xbar, "dac": e_dac, "adc": e_adc, "tia": e_tia, "digital": e_dig}
    if m2 is not None:
        out["tia_feedback"] = t * tia_power(plan, m2)
    out["total"] = sum(out.values())
    out.update(conversions=conv, dac_conversions=dac_conv, row_tiles=T, col_tiles=C, t_read=t)
    return out


def digital_energy(n_in: int, n_out: int, cfg: EnergyConfig | None = None) -> dict:
    """Energy [J] of the same layer on a digital accelerator (Horowitz 2014 figures)."""
    cfg = cfg or EnergyConfig()
    macs = int(n_in) * int(n_out)
    if cfg.baseline == "int8":
        per = _pj("int8_mult") + _pj("int32_add") + _pj("sram_32kb_64b") / 8
    else:
        per = _pj("fp32_mult") + _pj("fp32_add") + _pj("sram_32kb_64b") / 2
    return {"macs": macs, "per_mac": per, "total": macs * per}


def network_energy(layers: list[dict]) -> dict:
    """Sum :func:`layer_energy` (or :func:`digital_energy`) results over layers."""
    keys = [k for k in ("crossbar", "dac", "adc", "tia", "tia_feedback", "digital", "total") if all(k in L for L in layers)]
    return {k: float(sum(L[k] for L in layers)) for k in keys}
