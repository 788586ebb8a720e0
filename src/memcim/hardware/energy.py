"""The one energy, latency and area model of memcim, per layer and for a whole network, on the
chip's actual mapping (docs/energy.md).

Every figure comes from ``hw.energy`` (:class:`memcim.config.EnergyConfig`, each default with its
source) and from the plan (:func:`memcim.mapping.crossbar.map_matrix`: row tiles ``T``, column tiles
``C``, arrays, bit lines; a :class:`memcim.mapping.slicing.SlicedPlan` adds ``S`` weight slices on their
own arrays and ``n`` input cycles). Per input vector of a layer ``y = x W`` (``in x out``):

* **crossbar read**: per analog cycle ``t_read v_read^2 sum_i E[u_i^2] sum_j G_ij`` over every device
  (:func:`crossbar_power`; Joule heating of each device while its word line is driven at
  ``u_i v_read``; ``t_read`` defaults to ``1/(2 B)``, the integrate-and-dump of the read bandwidth);
* **DAC**: per cycle ``C in`` drives, each a binary-weighted capacitive DAC ``2**b C_unit V_dd^2``
  (``b``: DAC bits, or the bits per cycle when bit-serial) plus charging the word line,
  ``cols C_cell (u v_read)^2`` per array;
* **sample-and-hold** (an ADC shared by ``adc_share > 1`` columns): one sample per conversion;
* **ADC**: ``T out`` conversions per slice and cycle, each ``max(FOM_W 2**bits,
  10**((6.02 bits + 1.76 - FOM_S)/10) / 2)`` (Walden's and Schreier's figures of merit, B. Murmann,
  "ADC Performance Survey 1997-2024"); ``adc_rate`` conversions per second; area
  ``adc_area_bit bits + adc_area_step 2**bits`` F^2 (ISAAC's scaling, Shafiee et al., ISCA 2016);
* **TIA**: every bit line (G+ and G-, weight and reference columns) has its own TIA, burning
  ``tia_power`` for ``t_read`` per cycle, plus, when the inputs' second moments are known, the
  dissipation in its feedback resistor ``t_read r_tia E[I_j^2]`` (:func:`tia_power`; paper 001,
  Eqs. 17-19);
* **shift-and-add**: every ADC result of the ``S n`` slices and cycles but one per output and row tile
  is shifted and added (``add_energy`` each);
* **digital**: per output ``T - 1`` additions of the row tiles' partial sums, one rescale multiply
  and one bias add (fp32), and for a sliced plan's digital offset ``s_w o sum_i x_i`` another
  multiply-add per output and ``in`` additions;
* **buffers**: the input vector read (``ceil(dac.bits/8)`` bytes per input) and the outputs written
  (4 bytes each) at ``buffer_energy`` per byte.

Latency per input vector: the array read and the conversion of a shared ADC pipeline through the
sample-and-holds, ``t_read + t_conv + (n - 1) max(t_read, t_conv)`` with ``t_conv = min(adc_share,
tile columns) / adc_rate`` (pulse-width inputs: ``K`` slots of ``t_read``, one conversion), then
``ceil(log2(S n T)) + 2`` digital clock cycles; the slices and tiles of a layer run in parallel on
their own arrays, a convolution's output positions one after another on one copy of the arrays,
and the layers one after another (no inter-layer pipeline). Area: every provisioned array
(``rows x cols`` cells of ``cell_area`` F^2), ADC, DAC (one per word line of every array), S+H, TIA,
shift-and-add unit (one per ADC) and the layer's input/output buffer, in F^2 times ``tech_node^2``.

MemSE's expected power (:mod:`memcim.analysis.power`) is the expectation of this model's crossbar and
TIA-feedback terms (:func:`bitline_power`), and the convex program's read power
(:func:`memcim.optimize.convex_range.read_power_coeffs`) its crossbar term.

Digital baseline, per multiply-accumulate: an 8-bit multiply (0.2 pJ) and a 32-bit add (0.1 pJ)
plus reading the 8-bit weight from a 32 KB SRAM (20 pJ per 64-bit access, 2.5 pJ per byte). All
digital figures are M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC
2014, 45 nm at 0.9 V. A ``"fp32"`` baseline uses a 32-bit float multiply (3.7 pJ) and add (0.9 pJ)
and 4-byte weight reads (10 pJ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from memcim.config import EnergyConfig, HardwareConfig

__all__ = ["EnergyConfig", "HOROWITZ_2014_PJ", "bitline_power", "crossbar_power", "tia_power", "chip_power",
           "adc_energy", "adc_area", "LayerCost", "NetworkCost", "layer_cost", "network_cost", "matrix_cost",
           "digital_energy"]

#: Energy per operation [pJ], 45 nm, 0.9 V (Horowitz, ISSCC 2014, Fig. 1.1.9 and its table).
HOROWITZ_2014_PJ = {
    "int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "fp16_add": 0.4, "fp32_add": 0.9,
    "int8_mult": 0.2, "int32_mult": 3.1, "fp16_mult": 1.1, "fp32_mult": 3.7,
    "sram_8kb_64b": 10.0, "sram_32kb_64b": 20.0, "sram_1mb_64b": 100.0, "dram_64b": 1300.0,
}


def read_time(cfg: EnergyConfig, hw: HardwareConfig) -> float:
    """The integration time of one array read [s]: ``cfg.t_read`` or ``1/(2 device.bandwidth)``."""
    return cfg.t_read if cfg.t_read is not None else 1.0 / (2.0 * hw.device.bandwidth)


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


def adc_energy(bits: int, cfg: EnergyConfig) -> float:
    """Energy of one ADC conversion [J] at ``bits`` effective bits: the larger of Walden's
    ``FOM_W 2**bits`` and Schreier's thermal limit ``10**((6.02 bits + 1.76 - FOM_S)/10) / 2``."""
    walden = cfg.adc_fom * 2.0 ** bits
    schreier = 0.5 * 10.0 ** ((6.02 * bits + 1.76 - cfg.adc_fom_schreier) / 10.0)
    return max(walden, schreier)


def adc_area(bits: int, cfg: EnergyConfig) -> float:
    """Area of one ADC [m^2]: ``(adc_area_bit bits + adc_area_step 2**bits) F^2``."""
    return (cfg.adc_area_bit * bits + cfg.adc_area_step * 2.0 ** bits) * cfg.tech_node ** 2


@dataclass
class LayerCost:
    """Energy [J] per inference, latency [s] per inference and area [m^2] of one layer, by component.

    ``energy`` and ``area`` map component -> value with a ``total``; ``counts`` holds what was counted
    (arrays, ADCs, DACs, conversions, DAC drives, analog cycles, slices, reads per inference); ``detail``
    the parts of some components (``tia_feedback``, ``tia_static``).
    """

    name: str
    energy: dict
    latency: float
    area: dict
    counts: dict
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "energy_j": self.energy, "latency_s": self.latency, "area_m2": self.area,
                "counts": self.counts, "detail": self.detail}


@dataclass
class NetworkCost:
    """A network's :class:`LayerCost` per layer and their sums (energy and area add; the layers run one
    after another, so latencies add too)."""

    layers: list
    energy: dict
    latency: float
    area: dict

    def to_dict(self) -> dict:
        return {"energy_j": self.energy, "latency_s": self.latency, "area_m2": self.area,
                "per_layer": [L.to_dict() for L in self.layers]}

    def summary(self) -> dict:
        """The three headline numbers: energy per inference [J], latency [s], area [m^2]."""
        return {"energy_per_inference_j": self.energy["total"], "latency_s": self.latency,
                "area_m2": self.area["total"]}


ENERGY_PARTS = ("crossbar", "dac", "sample_hold", "adc", "tia", "shift_add", "digital", "buffers")
AREA_PARTS = ("cells", "dac", "sample_hold", "adc", "tia", "shift_add", "buffers")


def _cycles(plan, hw, x, u2, m2, input_cycles):
    """Per analog cycle of one input vector: (u2 (in,), m2 (in, in) or None, drive bits, converted?)."""
    import torch

    n = plan.in_features
    sl = hw.slicing
    mode = sl.input_mode if input_cycles is None else ("bit_serial" if input_cycles > 1 else "parallel")
    if mode != "parallel" and (u2 is not None or m2 is not None):
        raise ValueError(f"u2: drive statistics of a {mode!r} input are per cycle; give the inputs x instead")
    if m2 is not None:
        m2 = np.asarray(m2, dtype=np.float64)
        if m2.shape != (n, n):
            raise ValueError(f"m2: shape {m2.shape} does not match the {n} inputs; expected ({n}, {n})")
        u2 = np.diag(m2).copy()
    if u2 is not None:
        u2 = np.asarray(u2, dtype=np.float64)
        if u2.shape != (n,):
            raise ValueError(f"u2: shape {u2.shape} does not match the {n} inputs")
    xt = None
    if x is not None:
        xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach()).to(torch.float64)
        if xt.ndim != 2 or xt.shape[1] != n:
            raise ValueError(f"x: shape {tuple(xt.shape)} does not match (batch, {n})")

    def moments(u):
        u = u.cpu().numpy()
        m = u.T @ u / u.shape[0]
        return np.diag(m).copy(), m

    if mode == "parallel":
        if xt is not None:
            from memcim.hardware.converters import dac_convert

            u2, m2 = moments(dac_convert(xt, hw.dac)[0])
        return [(np.full(n, 1.0 / 3.0) if u2 is None else u2, m2, hw.dac.bits, True)]
    if mode == "bit_serial":
        from memcim.mapping.slicing import input_drives

        bits = tuple(getattr(plan, "cycles", ()) or ()) or (1,) * int(input_cycles)
        if xt is not None:
            return [moments(u) + (c, True) for (u, _), c in zip(input_drives(xt, hw, bits), bits)]
        # uniform codes: a c-bit digit d in 0..2**c-1 drives d/(2**c-1), E[u^2] = (2**(c+1)-1)/(6(2**c-1))
        return [(np.full(n, (2.0 ** (c + 1) - 1) / (6 * (2.0 ** c - 1))), None, c, True) for c in bits]
    # pulse width: |q| of the K slots at full drive, the charge converted once
    K = hw.dac.steps
    if xt is not None:
        from memcim.hardware.converters import dac_convert

        a = dac_convert(xt, hw.dac)[0].abs().mean(0).cpu().numpy()
    else:
        a = np.full(n, 0.5)
    return [(a * K, None, 1, True)] + [(None, None, 1, False)] * (K - 1)


def layer_cost(plan, *, x=None, u2=None, m2=None, reads: int = 1, weight_slices: int | None = None,
               input_cycles: int | None = None, energy: EnergyConfig | None = None, name: str = "") -> LayerCost:
    """Energy, latency and area of one layer on its plan (see the module docstring).

    Parameters
    ----------
    plan : a :class:`memcim.mapping.crossbar.MappedMatrix`, or a
        :class:`memcim.mapping.slicing.SlicedPlan` (its slices, each on its own arrays, and its input cycles).
    x : (batch, in) sample inputs: the drive statistics (and the TIA feedback term) from the DAC's actual
        drives of every cycle. Otherwise ``u2``/``m2`` (parallel inputs only) or uniform drives.
    u2 : (in,) ``E[u_i^2]`` of the word-line drive fractions (default 1/3). m2 : (in, in) ``E[u u^T]``;
        adds the TIAs' feedback dissipation.
    reads : array reads per inference (a convolution: its output positions).
    weight_slices, input_cycles : for an unsliced plan, count it as that many weight slices (copies of
        its arrays with their own ADCs) and bit-serial input cycles (1 bit each). A sliced plan carries
        its own.
    energy : the figures (default ``plan.hw.energy``).
    name : the layer's name in reports.

    Returns
    -------
    LayerCost.
    """
    from memcim import validate

    hw = plan.hw
    cfg = hw.energy if energy is None else energy
    if not isinstance(cfg, EnergyConfig):
        raise TypeError(f"energy: expected an EnergyConfig, got {type(cfg).__name__}")
    reads = validate.integer("reads", reads, lo=1)
    if hasattr(plan, "slices"):
        if weight_slices is not None or input_cycles is not None:
            raise ValueError("weight_slices: a sliced plan carries its own slices and input cycles; leave "
                             "weight_slices and input_cycles unset")
        slices, copies, offset = list(plan.slices), 1, float(plan.offset)
    else:
        copies = 1 if weight_slices is None else validate.integer("weight_slices", weight_slices, lo=1, hi=64)
        if input_cycles is not None:
            input_cycles = validate.integer("input_cycles", input_cycles, lo=1, hi=64)
        slices, offset = [plan], 0.0
    cyc = _cycles(plan, hw, x, u2, m2, input_cycles)
    n_analog = len(cyc)
    n_conv = sum(1 for c in cyc if c[3])
    n, m = plan.in_features, plan.out_features
    t = read_time(cfg, hw)
    v = hw.array.v_read
    F2 = cfg.tech_node ** 2
    apt = 2 if (hw.mapping.scheme == "differential" and hw.mapping.pair == "arrays") else 1
    E = dict.fromkeys(ENERGY_PARTS, 0.0)
    A = dict.fromkeys(AREA_PARTS, 0.0)
    tia_fb = tia_static = 0.0
    arrays = adcs = dacs = conversions = drives = 0
    T_max = 0
    for p in slices:
        T, C = p.n_row_tiles, p.n_col_tiles
        T_max = max(T_max, T)
        bitlines = T * (2 * m if p.scheme == "differential" else m + C)
        arr = T * C * apt
        n_adc = T * C * math.ceil(p.tile_cols / cfg.adc_share)
        for u2c, m2c, bits, converted in cyc:
            if u2c is not None:
                E["crossbar"] += t * crossbar_power(p, u2c)
                E["dac"] += C * n * 2.0 ** bits * cfg.dac_c_unit * cfg.dac_vdd ** 2 \
                    + C * float(u2c.sum()) * apt * hw.array.cols * cfg.c_cell * v * v
                drives += C * n
                if m2c is not None:
                    tia_fb += t * tia_power(p, m2c)
            tia_static += bitlines * cfg.tia_power * t
            if converted:
                conversions += T * m
        arrays += arr
        adcs += n_adc
        dacs += arr * hw.array.rows
        A["cells"] += arr * hw.array.rows * hw.array.cols * cfg.cell_area * F2
        A["adc"] += n_adc * adc_area(hw.adc.bits, cfg)
        A["dac"] += arr * hw.array.rows * cfg.dac_area * 2.0 ** max(c[2] for c in cyc) * F2
        A["tia"] += bitlines * cfg.tia_area * F2
        A["shift_add"] += n_adc * cfg.shift_add_area * F2
        if cfg.adc_share > 1:
            A["sample_hold"] += T * C * p.tile_cols * cfg.sample_hold_area * F2
    conversions *= copies
    drives *= copies
    E["crossbar"] *= copies
    E["dac"] *= copies
    tia_fb *= copies
    tia_static *= copies
    for k in A:
        A[k] *= copies
    arrays, adcs, dacs = arrays * copies, adcs * copies, dacs * copies
    E["adc"] = conversions * adc_energy(hw.adc.bits, cfg)
    if cfg.adc_share > 1:
        E["sample_hold"] = conversions * cfg.sample_hold_energy
    E["tia"] = tia_static + tia_fb
    partials = conversions // m            # ADC results per output: sum over slices of T n_conv
    tiles = sum(p.n_row_tiles for p in slices) * copies
    E["shift_add"] = m * (partials - tiles) * cfg.add_energy if partials > tiles else 0.0
    E["digital"] = m * ((T_max - 1) * cfg.add_energy + cfg.mult_energy + cfg.fp_add_energy)
    if offset:
        E["digital"] += m * (cfg.mult_energy + cfg.fp_add_energy) + n * cfg.add_energy
    in_bytes, out_bytes = n * math.ceil(hw.dac.bits / 8), 4 * m
    E["buffers"] = (in_bytes + out_bytes) * cfg.buffer_energy
    A["buffers"] = (in_bytes + out_bytes) * cfg.buffer_area * F2
    E = {k: reads * e for k, e in E.items()}
    E["total"] = float(sum(E.values()))
    A["total"] = float(sum(A.values()))
    t_conv = min(cfg.adc_share, max(p.tile_cols for p in slices)) / cfg.adc_rate
    if n_conv == n_analog:
        t_analog = t + t_conv + (n_analog - 1) * max(t, t_conv)
    else:
        t_analog = n_analog * t + t_conv * n_conv
    t_digital = (math.ceil(math.log2(max(partials, 1))) + 2) / cfg.clock
    counts = {"arrays": arrays, "adcs": adcs, "dacs": dacs, "conversions": reads * conversions,
              "dac_drives": reads * drives, "analog_cycles": n_analog, "conversion_cycles": n_conv,
              "weight_slices": len(slices) * copies, "row_tiles": T_max,
              "col_tiles": max(p.n_col_tiles for p in slices), "reads": reads, "t_read": t, "t_conv": t_conv}
    return LayerCost(name, E, reads * (t_analog + t_digital), A, counts,
                     {"tia_feedback": reads * tia_fb, "tia_static": reads * tia_static,
                      "has_feedback": any(c[1] is not None for c in cyc)})


def network_cost(layers: list) -> NetworkCost:
    """Sum :class:`LayerCost` results over the layers of a network."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers: empty; give at least one LayerCost")
    def total(parts):       # every component any layer has (a sample-and-hold, say, only where used)
        keys = list(dict.fromkeys(k for d in parts for k in d if k != "total")) + ["total"]
        return {k: float(sum(d.get(k, 0.0) for d in parts)) for k in keys}

    e, a = total([L.energy for L in layers]), total([L.area for L in layers])
    return NetworkCost(layers, e, float(sum(L.latency for L in layers)), a)


def matrix_cost(W, hw: HardwareConfig, *, g_min: float | None = None, g_max: float | None = None,
                u2=None, m2=None, energy: EnergyConfig | None = None, name: str = "") -> LayerCost:
    """:func:`layer_cost` of the matrix ``W`` mapped (without wires) in the window ``[g_min, g_max]``
    (default the config's): the convenience for a design point that has no plan yet.

    Parameters
    ----------
    W : (in, out) weights. hw : the hardware config. g_min, g_max : the window [S].
    u2, m2 : drive statistics (see :func:`layer_cost`). energy : the energy figures (default ``hw.energy``).
    """
    from memcim.mapping.crossbar import map_matrix

    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"W: expected a 2-D (in, out) matrix, got shape {W.shape}")
    g_min = hw.device.g_min if g_min is None else float(g_min)
    g_max = hw.device.g_max if g_max is None else float(g_max)
    if not (0 <= g_min < g_max):
        raise ValueError(f"g_max: the window [{g_min:g}, {g_max:g}] S is not allowed; need 0 <= g_min < g_max")
    plan = map_matrix(W, hw.without("wires").set({"device.g_min": g_min, "device.g_max": g_max}))
    return layer_cost(plan, u2=u2, m2=m2, energy=energy, name=name)


def digital_energy(n_in: int, n_out: int, cfg: EnergyConfig | None = None) -> dict:
    """Energy [J] of the same layer on a digital accelerator (Horowitz 2014 figures)."""
    cfg = cfg or EnergyConfig()
    macs = int(n_in) * int(n_out)
    if cfg.baseline == "int8":
        per = _pj("int8_mult") + _pj("int32_add") + _pj("sram_32kb_64b") / 8
    else:
        per = _pj("fp32_mult") + _pj("fp32_add") + _pj("sram_32kb_64b") / 2
    return {"macs": macs, "per_mac": per, "total": macs * per}
