"""Hardware description: immutable, validated configuration objects.

A :class:`HardwareConfig` is a tree of frozen dataclasses (device, DAC, ADC, array, wires, cell,
mapping). It is the one description that every fidelity level reads: the closed forms
(:mod:`memcim.analysis`), the Monte Carlo simulator (:mod:`memcim.simulate`) and the circuit
reader (:mod:`memcim.hardware.circuit`).
Every value is checked when the object is built; a bad value raises ``ValueError`` naming the
field, the value and what is allowed. Configs round-trip through TOML and JSON, and named presets
live as TOML files in ``memcim/presets``.

Defaults describe an *ideal* 128x128 crossbar: continuous conductances, no noise, no faults and
ideal converters. Use :func:`preset` (for example ``preset("generic")``) for non-ideal hardware.

Examples
--------
>>> from memcim.config import preset
>>> hw = preset("generic")
>>> hw.device.levels
64
>>> hw.without("programming").device.prog_sigma_abs
0.0
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from memcim import validate as _validate

#: Non-idealities that :meth:`HardwareConfig.without` / :meth:`HardwareConfig.only` can switch.
NONIDEALITIES = ("quantization", "programming", "stuck", "rtn", "drift", "flicker", "thermal", "shot", "dac", "adc",
                 "wires")

#: Cell I-V models (see :mod:`memcim.hardware.cells`).
CELL_MODELS = ("linear", "taox", "taox_1t1r")
#: Mapping methods (see :mod:`memcim.mapping.irdrop`).
MAPPING_METHODS = ("linear", "dpe", "representable")
#: How "representable" rounds its tuned plan to the device levels (see :mod:`memcim.mapping.irdrop`).
MAPPING_ROUNDINGS = ("pairs", "aware", "plain", "none")
#: Drift compensation modes (see :class:`CompensationConfig`).
DRIFT_COMPENSATION = ("none", "global", "column")

BOLTZMANN = 1.380649e-23  # J/K
ELEMENTARY_CHARGE = 1.602176634e-19  # C


_num = _validate.number
_bool = _validate.boolean
_choice = _validate.choice


def _int(name: str, value: Any, *, lo: int, hi: int | None = None) -> int:
    return _validate.integer(name, value, lo=lo, hi=hi)


#: Most programmable levels of a device (2**24, as ``bits <= 24``).
MAX_LEVELS = 2 ** 24
#: Most word lines or bit lines of one array (the nodal model of one tile grows as rows x cols).
MAX_ARRAY_SIZE = 65536


class _Section:
    """Mixin: dict round trip with strict keys, and validated partial replacement."""

    _section = ""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ValueError(f"{cls._section}: expected a table of settings, got {d!r}")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls._section}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(names))}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def replace(self, **changes):
        d = self.to_dict()
        d.update(changes)
        if isinstance(self, DeviceConfig):
            if "bits" in changes and "levels" not in changes:
                d.pop("levels", None)
            if "levels" in changes and "bits" not in changes:
                d.pop("bits", None)
        if self._section == "slicing":   # derived counts follow a new slice list unless given with it
            for key, derived in (("weight_bits_per_slice", ("weight_slices", "weight_bits")),
                                 ("weight_slices", ("weight_bits",))):
                if key in changes:
                    for k in derived:
                        if k not in changes:
                            d.pop(k, None)
        return type(self).from_dict({k: v for k, v in d.items() if v is not None})


@dataclass(frozen=True)
class DeviceConfig(_Section):
    """Memristive device: conductance window, programmable levels, programming noise, faults, read noise.

    Parameters
    ----------
    g_min, g_max : conductance window [S], 0 <= g_min < g_max.
    levels : number of programmable conductance levels, uniformly spaced over [g_min, g_max]
        (an integer >= 2), or None for continuous (analog) programming.
    bits : alternative to ``levels``: ``levels = 2**bits``.
    prog_sigma_abs : absolute programming-noise standard deviation [S].
    prog_sigma_rel : programming-noise standard deviation relative to the target conductance.
    prog_sigma_table : standard deviation per level [S] (length ``levels``), e.g. measured data.
        The three programming-noise sources are independent and add in variance:
        ``var = abs**2 + (rel * g_target)**2 + table[level]**2``. A programmed conductance
        cannot be negative: samples below 0 S are clipped to 0 S.
    stuck_at_min, stuck_at_max : fraction of devices stuck at g_min / g_max (independent per device).
    rtn_amplitude : random telegraph noise: relative conductance drop A of a device's low state,
        ``g -> g (1 - A)`` (0 = off, < 1).
    rtn_probability : probability p that a device sits in its low state during a read. States are
        drawn independently per device and per read call (one snapshot held for the whole batch of a
        read: the telegraph switches slowly compared with one read), for every level.
    thermal_noise : draw Johnson-Nyquist current noise, variance 4 k T bandwidth G, per device per read.
    shot_noise : draw shot noise, variance 2 q |I| bandwidth, per device per read.
    temperature : device temperature [K].
    bandwidth : read (integration) bandwidth [Hz].
    prog_sigma_poly : programming-noise standard deviation as a polynomial in the normalised target
        ``x = G / g_max``: ``sigma = max(0, c0 + c1 x + c2 x**2 + ...)`` [S] (coefficients in S), as
        fitted to PCM data; independent of (adds in variance to) the three sources above.
    drift_t0 : time after programming [s] at which a device holds its programmed conductance; reads
        at ``t >= drift_t0``.
    drift_nu, drift_nu_slope : drift exponent of a device at target ``G``:
        ``G(t) = G(t0) (t / t0)**(-nu)`` with ``nu ~ N(mu(G), s(G)**2)`` drawn once per device when the
        chip is programmed; ``mu(G) = drift_nu + drift_nu_slope ln(G / g_max)`` clipped to
        ``[drift_nu_min, drift_nu_max]``. ``drift_nu = drift_nu_slope = drift_nu_std = 0``: no drift.
    drift_nu_std, drift_nu_std_slope : ``s(G) = drift_nu_std + drift_nu_std_slope ln(G / g_max)`` clipped to
        ``[drift_nu_std_min, drift_nu_std_max]`` (the intercept may be negative when the slope makes
        ``s`` positive over the window).
    drift_nu_min, drift_nu_max : bounds of the mean exponent ``mu(G)``.
    drift_nu_std_min, drift_nu_std_max : bounds of the spread ``s(G)``, ``0 <= min <= max``.
    read_1f_q, read_1f_exp, read_1f_q_max : 1/f (low-frequency) read noise: a read at time ``t``
        sees ``G(t) + N(0, sigma_1f**2)`` with ``sigma_1f = G(t) Q(G_T) sqrt(ln((t + t_read) / (2 t_read)))``
        and ``Q(G_T) = min(read_1f_q (G_T / g_max)**(-read_1f_exp), read_1f_q_max)`` at the device's
        target ``G_T``, one draw per device per read call (the noise is slow compared with one read).
        ``read_1f_q = 0``: off.
    read_t_read : duration of one read [s] (the high-frequency end of the 1/f integral).
    """

    _section = "device"
    g_min: float = 1e-6
    g_max: float = 100e-6
    levels: int | None = None
    bits: int | None = None
    prog_sigma_abs: float = 0.0
    prog_sigma_rel: float = 0.0
    prog_sigma_table: tuple[float, ...] | None = None
    stuck_at_min: float = 0.0
    stuck_at_max: float = 0.0
    rtn_amplitude: float = 0.0
    rtn_probability: float = 0.5
    thermal_noise: bool = False
    shot_noise: bool = False
    temperature: float = 300.0
    bandwidth: float = 1e8
    prog_sigma_poly: tuple[float, ...] | None = None
    drift_t0: float = 20.0
    drift_nu: float = 0.0
    drift_nu_slope: float = 0.0
    drift_nu_std: float = 0.0
    drift_nu_std_slope: float = 0.0
    drift_nu_min: float = 0.0
    drift_nu_max: float = 1.0
    drift_nu_std_min: float = 0.0
    drift_nu_std_max: float = 1.0
    read_1f_q: float = 0.0
    read_1f_exp: float = 0.0
    read_1f_q_max: float = 1.0
    read_t_read: float = 250e-9

    def __post_init__(self):
        s = self._section
        g_min = _num(f"{s}.g_min", self.g_min, lo=0.0)
        g_max = _num(f"{s}.g_max", self.g_max, lo=0.0, lo_open=True)
        if g_min >= g_max:
            raise ValueError(f"{s}.g_min: {self.g_min!r} must be smaller than {s}.g_max = {self.g_max!r}")
        object.__setattr__(self, "g_min", g_min)
        object.__setattr__(self, "g_max", g_max)
        levels = self.levels
        if self.bits is not None:
            bits = _int(f"{s}.bits", self.bits, lo=1)
            if bits > 24:
                raise ValueError(f"{s}.bits: {bits} is not allowed; must be between 1 and 24")
            if levels is not None and _int(f"{s}.levels", levels, lo=2) != 2 ** bits:
                raise ValueError(f"{s}.levels: {levels} disagrees with {s}.bits = {bits} (2**bits = {2 ** bits}); give one of them")
            levels = 2 ** bits
            object.__setattr__(self, "bits", bits)
        if levels is not None:
            levels = _int(f"{s}.levels", levels, lo=2, hi=MAX_LEVELS)
        object.__setattr__(self, "levels", levels)
        for name in ("prog_sigma_abs", "prog_sigma_rel"):
            object.__setattr__(self, name, _num(f"{s}.{name}", getattr(self, name), lo=0.0))
        if self.prog_sigma_table is not None:
            table = tuple(_num(f"{s}.prog_sigma_table[{i}]", v, lo=0.0) for i, v in enumerate(self.prog_sigma_table))
            if levels is None or len(table) != levels:
                raise ValueError(f"{s}.prog_sigma_table: has {len(table)} entries; it needs exactly one per level "
                                 f"({s}.levels = {levels})")
            object.__setattr__(self, "prog_sigma_table", table)
        for name in ("stuck_at_min", "stuck_at_max"):
            object.__setattr__(self, name, _num(f"{s}.{name}", getattr(self, name), lo=0.0, hi=1.0))
        if self.stuck_at_min + self.stuck_at_max > 1.0:
            raise ValueError(f"{s}.stuck_at_min + {s}.stuck_at_max = {self.stuck_at_min + self.stuck_at_max:g}; "
                             "the two fractions must add up to at most 1")
        object.__setattr__(self, "rtn_amplitude",
                           _num(f"{s}.rtn_amplitude", self.rtn_amplitude, lo=0.0, hi=1.0, hi_open=True))
        object.__setattr__(self, "rtn_probability", _num(f"{s}.rtn_probability", self.rtn_probability, lo=0.0, hi=1.0))
        _bool(f"{s}.thermal_noise", self.thermal_noise)
        _bool(f"{s}.shot_noise", self.shot_noise)
        object.__setattr__(self, "temperature", _num(f"{s}.temperature", self.temperature, lo=0.0, lo_open=True))
        object.__setattr__(self, "bandwidth", _num(f"{s}.bandwidth", self.bandwidth, lo=0.0, lo_open=True))
        if self.prog_sigma_poly is not None:
            poly = self.prog_sigma_poly
            if isinstance(poly, (int, float)) or not hasattr(poly, "__len__") or not 1 <= len(poly) <= 8:
                raise ValueError(f"{s}.prog_sigma_poly: {poly!r} is not allowed; give 1 to 8 coefficients [S] "
                                 "of powers of G / g_max")
            object.__setattr__(self, "prog_sigma_poly",
                               tuple(_num(f"{s}.prog_sigma_poly[{i}]", v) for i, v in enumerate(poly)))
        object.__setattr__(self, "drift_t0", _num(f"{s}.drift_t0", self.drift_t0, lo=0.0, lo_open=True))
        for name in ("drift_nu", "drift_nu_slope", "drift_nu_std", "drift_nu_std_slope", "read_1f_exp"):
            object.__setattr__(self, name, _num(f"{s}.{name}", getattr(self, name)))
        for name in ("read_1f_q", "read_1f_q_max", "drift_nu_std_min", "drift_nu_std_max"):
            object.__setattr__(self, name, _num(f"{s}.{name}", getattr(self, name), lo=0.0))
        if self.drift_nu_std < 0 and self.drift_nu_std_slope == 0:
            raise ValueError(f"{s}.drift_nu_std: {self.drift_nu_std!r} is not allowed; a spread of the drift "
                             "exponent must be >= 0 (a negative intercept needs drift_nu_std_slope)")
        if self.drift_nu_std_min > self.drift_nu_std_max:
            raise ValueError(f"{s}.drift_nu_std_min: {self.drift_nu_std_min!r} must not exceed "
                             f"{s}.drift_nu_std_max = {self.drift_nu_std_max!r}")
        object.__setattr__(self, "drift_nu_min", _num(f"{s}.drift_nu_min", self.drift_nu_min))
        object.__setattr__(self, "drift_nu_max", _num(f"{s}.drift_nu_max", self.drift_nu_max))
        if self.drift_nu_min > self.drift_nu_max:
            raise ValueError(f"{s}.drift_nu_min: {self.drift_nu_min!r} must not exceed {s}.drift_nu_max = "
                             f"{self.drift_nu_max!r}")
        object.__setattr__(self, "read_t_read", _num(f"{s}.read_t_read", self.read_t_read, lo=0.0, lo_open=True))
        if self.read_t_read >= self.drift_t0:
            raise ValueError(f"{s}.read_t_read: {self.read_t_read!r} s is not allowed; a read must be shorter than "
                             f"{s}.drift_t0 = {self.drift_t0!r} s")

    @property
    def has_drift(self) -> bool:
        return self.drift_nu != 0 or self.drift_nu_slope != 0 or self.drift_nu_std != 0 or (
            self.drift_nu_std_slope != 0) or self.drift_nu_min > 0 or self.drift_nu_std_min > 0

    @property
    def has_read_1f(self) -> bool:
        return self.read_1f_q > 0

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.bits is not None:
            d.pop("levels", None)
        return d

    @property
    def level_step(self) -> float | None:
        """Spacing between adjacent programmable levels [S], or None when continuous."""
        return None if self.levels is None else (self.g_max - self.g_min) / (self.levels - 1)

    @property
    def has_programming_noise(self) -> bool:
        return self.prog_sigma_abs > 0 or self.prog_sigma_rel > 0 or (
            self.prog_sigma_table is not None and any(v > 0 for v in self.prog_sigma_table)) or (
            self.prog_sigma_poly is not None and any(v != 0 for v in self.prog_sigma_poly))

    @property
    def has_rtn(self) -> bool:
        return self.rtn_amplitude > 0 and self.rtn_probability > 0

    @property
    def thermal_psd(self) -> float:
        """Thermal current-noise variance per siemens of conductance: 4 k T bandwidth [A^2/S]."""
        return 4.0 * BOLTZMANN * self.temperature * self.bandwidth

    @property
    def shot_psd(self) -> float:
        """Shot current-noise variance per ampere of device current: 2 q bandwidth [A]."""
        return 2.0 * ELEMENTARY_CHARGE * self.bandwidth


@dataclass(frozen=True)
class DACConfig(_Section):
    """Input digital-to-analog converter (one per word line).

    A symmetric mid-tread quantizer: ``K = 2**(bits-1) - 1`` steps on each side of zero, step
    ``x_range / K`` (signed), or ``2**bits - 1`` steps over ``[0, x_range]`` (unsigned).

    Parameters
    ----------
    enabled : False makes the DAC ideal (no quantization, no clipping).
    bits : resolution, >= 2 when signed, >= 1 when unsigned.
    x_range : inputs map ``[-x_range, x_range]`` onto ``[-v_read, v_read]``. None scales each input
        vector by its own largest magnitude (dynamic range, undone digitally after the ADC).
    clip : clip inputs outside the range (True) or raise ``ValueError`` on them (False).
    signed : bipolar inputs. Unsigned DACs map negative inputs to 0.
    """

    _section = "dac"
    enabled: bool = False
    bits: int = 8
    x_range: float | None = None
    clip: bool = True
    signed: bool = True

    def __post_init__(self):
        s = self._section
        _bool(f"{s}.enabled", self.enabled)
        _bool(f"{s}.clip", self.clip)
        _bool(f"{s}.signed", self.signed)
        bits = _int(f"{s}.bits", self.bits, lo=2 if self.signed else 1)
        if bits > 24:
            raise ValueError(f"{s}.bits: {bits} is not allowed; must be between {2 if self.signed else 1} and 24")
        if self.x_range is not None:
            object.__setattr__(self, "x_range", _num(f"{s}.x_range", self.x_range, lo=0.0, lo_open=True))

    @property
    def steps(self) -> int:
        """Number of quantization steps on the positive side."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1


@dataclass(frozen=True)
class ADCConfig(_Section):
    """Output analog-to-digital converter (one per differential column of every array).

    A symmetric mid-tread quantizer on the TIA output voltage: ``K = 2**(bits-1) - 1`` codes on
    each side of zero, step ``FS / K``; with ``saturate`` the output clips to ``[-FS, FS]``.

    Parameters
    ----------
    enabled : False makes the ADC ideal.
    bits : resolution (>= 2).
    full_scale : FS [V] at the TIA output, used when ``fs_mode == "fixed"``.
    fs_mode : "fixed" (``full_scale``), "max" (the largest output the array can produce: every input
        at full range and every weight at full conductance), or "calibrated" (the ``calib_quantile``
        of |output| over sample inputs given when mapping; standard normal inputs when none are given).
    granularity : one FS per array ("array") or per column ("column").
    calib_quantile : quantile of |output| used as FS when calibrating (1.0 = the maximum).
    saturate : clip to [-FS, FS] (True) or let codes beyond FS through (False, an idealisation).
    """

    _section = "adc"
    enabled: bool = False
    bits: int = 8
    full_scale: float | None = None
    fs_mode: str = "calibrated"
    granularity: str = "array"
    calib_quantile: float = 1.0
    saturate: bool = True

    def __post_init__(self):
        s = self._section
        _bool(f"{s}.enabled", self.enabled)
        _bool(f"{s}.saturate", self.saturate)
        bits = _int(f"{s}.bits", self.bits, lo=2)
        if bits > 24:
            raise ValueError(f"{s}.bits: {bits} is not allowed; must be between 2 and 24")
        _choice(f"{s}.fs_mode", self.fs_mode, ("fixed", "max", "calibrated"))
        _choice(f"{s}.granularity", self.granularity, ("array", "column"))
        object.__setattr__(self, "calib_quantile",
                           _num(f"{s}.calib_quantile", self.calib_quantile, lo=0.0, hi=1.0, lo_open=True))
        if self.full_scale is not None:
            object.__setattr__(self, "full_scale", _num(f"{s}.full_scale", self.full_scale, lo=0.0, lo_open=True))
        if self.fs_mode == "fixed" and self.full_scale is None:
            raise ValueError(f"{s}.full_scale: required when {s}.fs_mode = 'fixed' (a positive voltage)")

    @property
    def steps(self) -> int:
        return 2 ** (self.bits - 1) - 1


@dataclass(frozen=True)
class ArrayConfig(_Section):
    """One crossbar array and its periphery.

    Parameters
    ----------
    rows, cols : physical word lines x bit lines per array (default 128 x 128).
    r_tia : transimpedance-amplifier feedback resistance [Ohm]: V_out = r_tia * I_column.
    v_read : read voltage [V]: a full-range input drives its word line at +-v_read.
    """

    _section = "array"
    rows: int = 128
    cols: int = 128
    r_tia: float = 10e3
    v_read: float = 0.2

    def __post_init__(self):
        s = self._section
        object.__setattr__(self, "rows", _int(f"{s}.rows", self.rows, lo=1, hi=MAX_ARRAY_SIZE))
        object.__setattr__(self, "cols", _int(f"{s}.cols", self.cols, lo=2, hi=MAX_ARRAY_SIZE))
        object.__setattr__(self, "r_tia", _num(f"{s}.r_tia", self.r_tia, lo=0.0, lo_open=True))
        object.__setattr__(self, "v_read", _num(f"{s}.v_read", self.v_read, lo=0.0, lo_open=True))


@dataclass(frozen=True)
class MappingConfig(_Section):
    """How a real matrix becomes conductances.

    Parameters
    ----------
    scheme : "differential" (a pair of devices per weight, G+ - G-) or "offset" (one device per
        weight around the window's midpoint, minus one reference column per array).
    pair : where a differential pair sits: "columns" (G+ and G- on adjacent columns of one array:
        an array holds rows x cols//2 weights) or "arrays" (G+ and G- in a pair of arrays of the
        same size, as in paper 002: each array holds rows x cols weights). Ignored by "offset".
    scale : one scale factor c per matrix ("matrix") or per output column ("column"). With "dpe" and
        "representable" the scale is already one per array; "column" gives one per array column (a
        digital gain after the ADC), which lowers the 8-bit quantization floor on trained weights whose
        columns differ in range (``bench/bench_irdrop.py``), at about twice the mapping time.
    tiling : how a matrix larger than one array is cut. "balanced" (default) uses the fewest arrays
        and spreads rows and columns evenly over them (784 rows on 128-row arrays: 7 arrays of 112
        rows), so no array computes on padding; "packed" fills every array but the last completely.
        The number of arrays, TIAs and ADCs is the same either way.
    method : how each array's targets are chosen (paper 002). "linear" ignores the wires
        (``G = g_min + c max(+-W, 0)``); "dpe" (Hu et al., DAC 2016) compensates each device for the
        IR drop at the calibration input; "representable" (paper 002, Sec. V) searches the scale and
        tunes every conductance against the exact circuit. "dpe" and "representable" need wires,
        the differential scheme and ``pair = "arrays"``.
    alpha_evals, search_iters, final_iters, calib_rounds : "representable" settings: scale
        candidates evaluated, tuning iterations per candidate, final tuning iterations, and
        calibration-vector correction rounds (paper 002 Sec. V-A to V-C).
    rounding : how "representable" puts its tuned plan on the device levels: "pairs" (default: the
        two devices of a pair rounded jointly, both may sit above g_min, repeated against the exact
        circuit), "aware" (one device per weight, rounding error shaped for the inputs), "plain"
        (nearest level) or "none" (no rounding inside the mapping; the plan is still clipped and
        rounded to the levels when programmed).
    """

    _section = "mapping"
    scheme: str = "differential"
    pair: str = "columns"
    scale: str = "matrix"
    tiling: str = "balanced"
    method: str = "linear"
    alpha_evals: int = 4
    search_iters: int = 1
    final_iters: int = 4
    calib_rounds: int = 1
    rounding: str = "pairs"

    def __post_init__(self):
        _choice("mapping.scheme", self.scheme, ("differential", "offset"))
        _choice("mapping.pair", self.pair, ("columns", "arrays"))
        _choice("mapping.scale", self.scale, ("matrix", "column"))
        _choice("mapping.tiling", self.tiling, ("balanced", "packed"))
        _choice("mapping.method", self.method, MAPPING_METHODS)
        _choice("mapping.rounding", self.rounding, MAPPING_ROUNDINGS)
        for name, lo in (("alpha_evals", 1), ("search_iters", 0), ("final_iters", 0), ("calib_rounds", 0)):
            v = _int(f"mapping.{name}", getattr(self, name), lo=lo)
            if v > 1000:
                raise ValueError(f"mapping.{name}: {v} is not allowed; must be at most 1000")
            object.__setattr__(self, name, v)



@dataclass(frozen=True)
class WiresConfig(_Section):
    """The array's wires: parasitic resistances [Ohm] and the drive topology (paper 002, Sec. VI).

    All zero (the default) means ideal wires: the ideal-wire reader computes ``u @ G``. Any
    positive value gives the array wires, and every read then goes through the circuit reader
    (:mod:`memcim.hardware.circuit`, an exact nodal solve of every tile); ``r_wire``, ``r_in`` and
    ``r_out`` must then all be positive (the nodal model needs a resistance for each).

    Parameters
    ----------
    r_wire : word-line segment resistance between neighbouring cells [Ohm].
    r_wire_col : bit-line segment resistance [Ohm]; None = ``r_wire``.
    r_in : source (driver / DAC) resistance in series with each word line [Ohm].
    r_out : resistance between each bit line's end and the TIA's virtual ground [Ohm].
    drive : "one" (word lines driven at column 0) or "both" (also at their far end).
    """

    _section = "wires"
    r_wire: float = 0.0
    r_wire_col: float | None = None
    r_in: float = 0.0
    r_out: float = 0.0
    drive: str = "one"

    def __post_init__(self):
        s = self._section
        for name in ("r_wire", "r_in", "r_out"):
            object.__setattr__(self, name, _num(f"{s}.{name}", getattr(self, name), lo=0.0))
        if self.r_wire_col is not None:
            object.__setattr__(self, "r_wire_col", _num(f"{s}.r_wire_col", self.r_wire_col, lo=0.0))
        _choice(f"{s}.drive", self.drive, ("one", "both"))
        if self.enabled:
            for name in ("r_wire", "r_in", "r_out") + (("r_wire_col",) if self.r_wire_col is not None else ()):
                if getattr(self, name) == 0:
                    raise ValueError(f"{s}.{name}: 0 is not allowed when the array has wires (another wire "
                                     f"resistance is > 0); the nodal model needs a positive resistance in Ohm")

    @property
    def enabled(self) -> bool:
        """True when the array has wires (the circuit reader is used)."""
        return self.r_wire > 0 or self.r_in > 0 or self.r_out > 0 or (self.r_wire_col or 0) > 0

    @property
    def rc(self) -> float:
        """Bit-line segment resistance [Ohm]."""
        return self.r_wire if self.r_wire_col is None else self.r_wire_col


@dataclass(frozen=True)
class CellConfig(_Section):
    """The I-V of one crossbar cell (:mod:`memcim.hardware.cells`).

    Parameters
    ----------
    model : "linear" (an ohmic device, I = G V), "taox" (the TaOx memristor of Strachan et al.,
        IEEE TED 60(7):2194, 2013: ``i = v [g_m s + a exp(b sqrt|v|)(1 - s)]``) or "taox_1t1r"
        (the same memristor in series with a level-1 access NMOS). Non-linear cells need wires.
        A programmed conductance is the cell's conductance ``i / v`` at the calibration read
        (every word line at ``array.v_read``, paper 002 Sec. V-D); the state s follows from it.
    g_m, a, b : TaOx parameters: metallic-channel conductance [S], insulating-part pre-factor [S],
        non-linearity [V^-1/2] (defaults: Strachan et al. 2013's fit).
    kp, w_over_l, vt0, v_gate : access NMOS: transconductance [A/V^2], W/L, threshold [V], gate
        voltage [V] (defaults give about 1.3 kOhm on-resistance, matching paper 002's 2 kOhm end).
    solve : non-linear cells: "newton" (damped Newton on the whole tile for every input vector;
        exact, slow) or "linearized" (each cell replaced by its conductance at the calibration
        read, where it is exact; one linear solve per tile and chip; the error grows as the inputs
        move away from the calibration input, see docs/circuit.md).
    """

    _section = "cell"
    model: str = "linear"
    g_m: float = 2.5e-2
    a: float = 7.2e-6
    b: float = 4.7
    kp: float = 100e-6
    w_over_l: float = 5.0
    vt0: float = 0.5
    v_gate: float = 2.0
    solve: str = "newton"

    def __post_init__(self):
        s = self._section
        _choice(f"{s}.model", self.model, CELL_MODELS)
        _choice(f"{s}.solve", self.solve, ("newton", "linearized"))
        for name in ("g_m", "a", "b", "kp", "w_over_l"):
            object.__setattr__(self, name, _num(f"{s}.{name}", getattr(self, name), lo=0.0, lo_open=True))
        object.__setattr__(self, "vt0", _num(f"{s}.vt0", self.vt0))
        object.__setattr__(self, "v_gate", _num(f"{s}.v_gate", self.v_gate))
        if self.v_gate <= self.vt0:
            raise ValueError(f"{s}.v_gate: {self.v_gate!r} must exceed {s}.vt0 = {self.vt0!r} (the access "
                             "transistor is driven on)")

    @property
    def linear(self) -> bool:
        return self.model == "linear"


@dataclass(frozen=True)
class CompensationConfig(_Section):
    """Drift compensation in the digital periphery, as a chip does it.

    Right after programming (at ``device.drift_t0``) the chip reads a reference batch (the
    calibration inputs, by default the 512 standard normal vectors that calibrate the ADC) and
    keeps the sum of ``|y|``; a read at time ``t`` first reads the same batch again and scales its
    outputs by the ratio of the two sums: one factor for the whole matrix (``global``), or one per
    output column (``column``). Both reference reads are ordinary noisy reads.

    Parameters
    ----------
    drift : "none" (default), "global" or "column".
    """

    _section = "compensation"
    drift: str = "none"

    def __post_init__(self):
        _choice("compensation.drift", self.drift, DRIFT_COMPENSATION)


#: How a sliced weight carries its sign (see :class:`SlicingConfig`).
SLICING_ENCODINGS = ("sign_magnitude", "offset", "twos_complement")
#: How inputs drive the word lines (see :class:`SlicingConfig`).
INPUT_MODES = ("parallel", "bit_serial", "pulse_width")


@dataclass(frozen=True)
class SlicingConfig(_Section):
    """Bit slicing of weights and inputs (:mod:`memcim.mapping.slicing`, docs/slicing.md).

    The default (no ``weight_bits_per_slice``, ``input_mode = "parallel"``) slices nothing: every
    weight is one analog conductance (pair) and every input one DAC drive, as without this section.

    Weight slicing: each weight is rounded to an integer of ``weight_bits`` bits and cut into
    ``weight_slices`` digits, slice ``k`` holding ``b_k`` bits with significance ``2**(b_0 + ... +
    b_{k-1})`` (slice 0 is the least significant). Every slice sits on its own arrays, with its own
    ADCs and the same device physics; the digital periphery recombines the slices by shift-and-add
    (ISAAC: Shafiee et al., ISCA 2016, 16-bit weights in eight 2-bit slices; PUMA: Ankit et al.,
    ASPLOS 2019; CrossSim's ``BitSlicedCore``: Xiao et al., IEEE Circuits Syst. Mag. 22(4), 2022).
    Unequal widths (a list) give the *unbalanced* slicing of Diware et al. (IEEE AICAS 2021,
    doi:10.1109/AICAS51828.2021.9458443), whose significant slices hold fewer bits.

    Parameters
    ----------
    weight_slices : number of weight slices N >= 1 (None: the length of ``weight_bits_per_slice``).
    weight_bits_per_slice : bits per slice, one int for every slice or a list, least significant
        slice first; None (default): no weight slicing.
    weight_bits : the weight precision; None: the sum of the slices' bits (which it must equal).
    encoding : how the sign is carried. "sign_magnitude": the magnitude's digits, each slice a
        differential pair holding its digit on the side of the weight's sign (needs
        ``mapping.scheme = "differential"``); "offset": the biased code ``W + 2**(P-1)`` in unsigned
        digits, the bias subtracted digitally (ISAAC); "twos_complement": the ``P``-bit two's
        complement code, the most significant slice signed (Diware et al. 2021).
    input_mode : "parallel" (one DAC drive per input, default), "bit_serial" (the DAC code's
        magnitude fed ``input_bits_per_cycle`` bits per cycle with its sign, one ADC read per cycle and
        slice, digital shift-and-add; ISAAC, PUMA) or "pulse_width" (the code as a pulse of
        ``code`` unit slots at full amplitude, the charge integrated over the pulse and converted once).
    input_bits_per_cycle : bits of the input code applied per cycle (bit_serial), >= 1.
    """

    _section = "slicing"
    weight_slices: int | None = None
    weight_bits_per_slice: int | tuple[int, ...] | None = None
    weight_bits: int | None = None
    encoding: str = "sign_magnitude"
    input_mode: str = "parallel"
    input_bits_per_cycle: int = 1

    def __post_init__(self):
        s = self._section
        _choice(f"{s}.encoding", self.encoding, SLICING_ENCODINGS)
        _choice(f"{s}.input_mode", self.input_mode, INPUT_MODES)
        object.__setattr__(self, "input_bits_per_cycle",
                           _int(f"{s}.input_bits_per_cycle", self.input_bits_per_cycle, lo=1, hi=24))
        n = None if self.weight_slices is None else _int(f"{s}.weight_slices", self.weight_slices, lo=1, hi=32)
        bps = self.weight_bits_per_slice
        if bps is None:
            if n is not None and n > 1:
                raise ValueError(f"{s}.weight_bits_per_slice: required with {s}.weight_slices = {n}; give the "
                                 "bits of every slice (an int, or a list, least significant first)")
            if self.weight_bits is not None:
                raise ValueError(f"{s}.weight_bits: {self.weight_bits!r} needs {s}.weight_bits_per_slice (the "
                                 "bits of every slice, adding up to the weight precision)")
            object.__setattr__(self, "weight_slices", n)
            return
        if isinstance(bps, (list, tuple)):
            if len(bps) == 0:
                raise ValueError(f"{s}.weight_bits_per_slice: an empty list is not allowed; give at least one slice")
            bits = tuple(_int(f"{s}.weight_bits_per_slice[{i}]", b, lo=1, hi=16) for i, b in enumerate(bps))
            if n is not None and n != len(bits):
                raise ValueError(f"{s}.weight_slices: {n} disagrees with the {len(bits)} entries of "
                                 f"{s}.weight_bits_per_slice; give one entry per slice")
            n = len(bits)
        else:
            b = _int(f"{s}.weight_bits_per_slice", bps, lo=1, hi=16)
            n = 1 if n is None else n
            bits = (b,) * n
        total = sum(bits)
        if self.weight_bits is not None:
            wb = _int(f"{s}.weight_bits", self.weight_bits, lo=1, hi=32)
            if wb != total:
                raise ValueError(f"{s}.weight_bits_per_slice: the slices' bits {list(bits)} add up to {total}, "
                                 f"but {s}.weight_bits = {wb}; the slices must add up to the weight precision")
        if total > 32:
            raise ValueError(f"{s}.weight_bits_per_slice: the slices' bits add up to {total}; at most 32 allowed")
        if self.encoding == "twos_complement" and total < 2:
            raise ValueError(f"{s}.weight_bits_per_slice: two's complement needs at least 2 bits in all, got {total}")
        object.__setattr__(self, "weight_slices", n)
        object.__setattr__(self, "weight_bits_per_slice", bits if isinstance(bps, (list, tuple)) else bits[0])
        object.__setattr__(self, "weight_bits", total)

    @property
    def slice_bits(self) -> tuple[int, ...] | None:
        """Bits of every weight slice, least significant first (None: no weight slicing)."""
        b = self.weight_bits_per_slice
        if b is None:
            return None
        return tuple(b) if isinstance(b, tuple) else (b,) * self.weight_slices

    @property
    def weights_sliced(self) -> bool:
        return self.weight_bits_per_slice is not None

    @property
    def enabled(self) -> bool:
        """True when weights or inputs are sliced (False: the default, unsliced hardware)."""
        return self.weights_sliced or self.input_mode != "parallel"


@dataclass(frozen=True)
class EnergyConfig(_Section):
    """Energy, latency and area figures of the periphery (:mod:`memcim.hardware.energy`, docs/energy.md).

    SI units; areas in F^2 (squares of the feature size ``tech_node``). Every default cites its source.

    Parameters
    ----------
    t_read : integration time of one array read [s]; None: ``1/(2 device.bandwidth)``. ISAAC: 100 ns.
    adc_fom : Walden figure of merit ``P / (f_s 2**ENOB)`` [J/conversion-step] (R. H. Walden, IEEE JSAC
        17(4), 1999). Default 20 fJ: designs at 0.1-1 GS/s in B. Murmann, "ADC Performance Survey
        1997-2024" (Stanford), span about 5-50 fJ/step; ISAAC's 8-bit 1.2 GS/s ADC is 6.5 fJ/step.
    adc_fom_schreier : Schreier figure of merit ``SNDR + 10 log10(f_s / (2 P))`` [dB]; the conversion
        energy is the larger of the two limits (Murmann's survey: Walden bounds low resolution,
        Schreier's thermal-noise line, about 180 dB at the state of the art, high resolution).
    adc_rate : conversions per second of one ADC [S/s] (Kull et al., ISSCC 2013, 8 b 1.2 GS/s SAR in
        32 nm, the ADC of ISAAC).
    adc_share : output columns converted by one ADC (1: an ADC per column; ISAAC: 128, through
        sample-and-holds).
    adc_area_bit, adc_area_step : ADC area = ``adc_area_bit bits + adc_area_step 2**bits`` [F^2]: the
        linear (reference buffer, logic, clock) and capacitive-DAC parts, as ISAAC scales its ADC
        (Shafiee et al., ISCA 2016, Sec. VII); defaults 79,800 and 2,084 F^2 give ISAAC's 1,200 um^2
        8-bit ADC at 32 nm (Table I: 0.0096 mm^2 for 8).
    dac_c_unit, dac_vdd : unit capacitor [F] and reference [V] of a binary-weighted capacitive DAC,
        ``2**bits C_unit V_dd^2`` per conversion (0.5 fF, 0.9 V).
    dac_area : DAC area per code step [F^2], ``dac_area 2**bits`` (81 F^2: ISAAC's 1-bit DAC, 170 um^2
        for 1024, Table I).
    c_cell : word-line capacitance per cross-point [F] (0.1 fF).
    sample_hold_energy, sample_hold_area : one sample [J] and one S+H [F^2] of a shared ADC's column
        (ISAAC Table I: 10 uW for 1024 S+H at 100 ns, 1 fJ; 40 um^2 / 1024 = 38 F^2).
    tia_power, tia_area : static power [W] and area [F^2] of one bit line's TIA (20 uW: memcim's
        assumption, uncited; area 0: no published figure adopted).
    add_energy : one 32-bit integer add [J] (shift-and-add, tile accumulation; 0.1 pJ, M. Horowitz,
        ISSCC 2014, 45 nm). mult_energy, fp_add_energy : the digital rescale and bias, fp32 multiply
        3.7 pJ and add 0.9 pJ (Horowitz 2014).
    shift_add_area : one shift-and-add unit per ADC [F^2] (ISAAC Table I: 60 um^2).
    buffer_energy : input/output buffer access [J/byte] (Horowitz 2014: 8 KB SRAM, 10 pJ per 64 bits).
    buffer_area : buffer area [F^2/byte] (ISAAC Table I: 2 KB input register, 0.0021 mm^2).
    cell_area : one cross-point [F^2] (4 F^2, the minimal cross-point cell).
    tech_node : feature size F [m] (32 nm, ISAAC's node).
    clock : digital clock [Hz] (1.2 GHz, ISAAC's tile).
    baseline : digital baseline of reports, "int8" or "fp32" (Horowitz 2014 figures).
    """

    _section = "energy"
    t_read: float | None = None
    adc_fom: float = 20e-15
    adc_fom_schreier: float = 180.0
    adc_rate: float = 1.2e9
    adc_share: int = 1
    adc_area_bit: float = 79_800.0
    adc_area_step: float = 2_084.0
    dac_c_unit: float = 0.5e-15
    dac_vdd: float = 0.9
    dac_area: float = 81.0
    c_cell: float = 0.1e-15
    sample_hold_energy: float = 1e-15
    sample_hold_area: float = 38.0
    tia_power: float = 20e-6
    tia_area: float = 0.0
    add_energy: float = 0.1e-12
    mult_energy: float = 3.7e-12
    fp_add_energy: float = 0.9e-12
    shift_add_area: float = 58_600.0
    buffer_energy: float = 1.25e-12
    buffer_area: float = 1_000.0
    cell_area: float = 4.0
    tech_node: float = 32e-9
    clock: float = 1.2e9
    baseline: str = "int8"

    def __post_init__(self):
        s = self._section
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("baseline", "adc_share") or (v is None and f.name == "t_read"):
                continue
            positive = f.name in ("t_read", "adc_fom_schreier", "adc_rate", "tech_node", "clock", "cell_area")
            object.__setattr__(self, f.name, _num(f"{s}.{f.name}", v, lo=0.0, lo_open=positive))
        object.__setattr__(self, "adc_share", _int(f"{s}.adc_share", self.adc_share, lo=1, hi=MAX_ARRAY_SIZE))
        _choice(f"{s}.baseline", self.baseline, ("int8", "fp32"))


_SECTIONS = {"device": DeviceConfig, "dac": DACConfig, "adc": ADCConfig, "array": ArrayConfig,
             "wires": WiresConfig, "cell": CellConfig, "mapping": MappingConfig, "compensation": CompensationConfig,
             "slicing": SlicingConfig, "energy": EnergyConfig}


@dataclass(frozen=True)
class HardwareConfig:
    """The whole hardware description: device, converters, array with its wires, cell I-V, mapping.

    Build it directly, from a preset (:func:`preset`), or from a file (:meth:`load`).
    Instances are immutable; :meth:`set`, :meth:`replace`, :meth:`without` and :meth:`only`
    return new ones.

    Examples
    --------
    >>> hw = HardwareConfig().set("device.prog_sigma_rel", 0.05)
    >>> hw.device.prog_sigma_rel
    0.05
    >>> hw.set({"wires.r_wire": 1.0, "wires.r_in": 100.0, "wires.r_out": 100.0}).reader
    'circuit'
    """

    device: DeviceConfig = field(default_factory=DeviceConfig)
    dac: DACConfig = field(default_factory=DACConfig)
    adc: ADCConfig = field(default_factory=ADCConfig)
    array: ArrayConfig = field(default_factory=ArrayConfig)
    wires: WiresConfig = field(default_factory=WiresConfig)
    cell: CellConfig = field(default_factory=CellConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    compensation: CompensationConfig = field(default_factory=CompensationConfig)
    slicing: SlicingConfig = field(default_factory=SlicingConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    name: str = "custom"

    def __post_init__(self):
        for key, cls in _SECTIONS.items():
            v = getattr(self, key)
            if isinstance(v, dict):
                object.__setattr__(self, key, cls.from_dict(v))
            elif not isinstance(v, cls):
                raise TypeError(f"{key}: expected {cls.__name__} or a dict, got {type(v).__name__}")
        if not isinstance(self.name, str):
            raise ValueError(f"name: expected a string, got {self.name!r}")
        mp = self.mapping
        if mp.scheme == "differential" and mp.pair == "columns" and self.array.cols < 2:
            raise ValueError("array.cols: a differential pair on adjacent columns needs at least 2 columns per array")
        if mp.scheme == "offset" and mp.pair == "arrays":
            raise ValueError("mapping.pair: 'arrays' is not allowed with mapping.scheme = 'offset' "
                             "(a pair of arrays holds G+ and G- of the differential scheme); use 'columns'")
        if mp.method != "linear":
            if not self.wires.enabled:
                raise ValueError(f"mapping.method: {mp.method!r} compensates IR drop and needs wires; set "
                                 "wires.r_wire, wires.r_in and wires.r_out > 0, or use method 'linear'")
            if mp.scheme != "differential" or mp.pair != "arrays":
                raise ValueError(f"mapping.method: {mp.method!r} maps a differential pair of arrays; it needs "
                                 "mapping.scheme = 'differential' and mapping.pair = 'arrays'")
            if self.device.g_min <= 0:
                raise ValueError(f"device.g_min: 0 S is not allowed with mapping.method = {mp.method!r}; "
                                 "its conductances must be > 0 S")
        if not self.cell.linear:
            if not self.wires.enabled:
                raise ValueError(f"cell.model: {self.cell.model!r} is solved by the circuit reader and needs "
                                 "wires; set wires.r_wire, wires.r_in and wires.r_out > 0, or use 'linear'")
            if self.device.g_min <= 0:
                raise ValueError(f"device.g_min: 0 S is not allowed with cell.model = {self.cell.model!r}; "
                                 "every cell must conduct to have a state")
        if self.slicing.enabled:
            _check_slicing(self)

    @property
    def reader(self) -> str:
        """The array reader every read uses: "ideal" (ideal wires) or "circuit" (nodal solve)."""
        return "circuit" if self.wires.enabled else "ideal"

    @staticmethod
    def fields() -> dict[str, tuple[str, ...]]:
        """Valid dotted setting names: section -> field names (``"device" -> ("g_min", ...)``)."""
        return {k: tuple(f.name for f in dataclasses.fields(c)) for k, c in _SECTIONS.items()}

    def set(self, key: str | dict[str, Any], value: Any = None) -> "HardwareConfig":
        """New config with dotted settings changed: ``hw.set("device.prog_sigma_rel", 0.05)`` or
        ``hw.set({"adc.bits": 6, "wires.r_wire": 1.0})``; ``"name"`` renames.

        Every setting is validated as on construction; an unknown name raises ``ValueError``.
        """
        if isinstance(key, dict):
            if value is not None:
                raise TypeError("set: give a dict of settings, or one name and its value")
            settings = key
        elif isinstance(key, str):
            settings = {key: value}
        else:
            raise TypeError(f"set: expected a dotted name or a dict of them, got {type(key).__name__}")
        secs = self.fields()
        by_sec: dict[str, dict[str, Any]] = {}
        name = None
        for k, v in settings.items():
            if k == "name":
                name = v
                continue
            sec, _, fld = str(k).partition(".")
            if sec not in secs:
                raise ValueError(f"set: unknown setting {k!r}; names are section.field with a section of "
                                 f"{', '.join(secs)}")
            if fld not in secs[sec]:
                raise ValueError(f"set: unknown setting {k!r}; {sec} has the fields {', '.join(secs[sec])}")
            by_sec.setdefault(sec, {})[fld] = list(v) if isinstance(v, tuple) else v
        kw: dict[str, Any] = dict(by_sec)
        if name is not None:
            kw["name"] = name
        return self.replace(**kw) if kw else self

    # ---- dict / file round trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        for key in _SECTIONS:
            if key == "slicing" and not self.slicing.enabled and self.slicing == SlicingConfig():
                continue   # the default (no slicing) is left out: unsliced configs write as before
            if key == "energy" and self.energy == EnergyConfig():
                continue   # default energy figures are left out: configs write as before
            d[key] = getattr(self, key).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HardwareConfig":
        if not isinstance(d, dict):
            raise ValueError(f"hardware config: expected a table, got {type(d).__name__}")
        allowed = set(_SECTIONS) | {"name"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"hardware config: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(allowed))}")
        kw = {k: _SECTIONS[k].from_dict(v) for k, v in d.items() if k in _SECTIONS}
        if "name" in d:
            kw["name"] = d["name"]
        return cls(**kw)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_toml(cls, text: str) -> "HardwareConfig":
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config: invalid TOML ({e})") from None

    @classmethod
    def from_json(cls, text: str) -> "HardwareConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"config: invalid JSON ({e})") from None

    @classmethod
    def load(cls, path: str | Path) -> "HardwareConfig":
        """Load a config from a ``.toml`` or ``.json`` file."""
        p = _validate.existing_file("config", path)
        if p.suffix not in (".toml", ".json"):
            raise ValueError(f"config: {p} has suffix {p.suffix!r}; use .toml or .json")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"config: cannot read {p} ({getattr(e, 'strerror', None) or e})") from None
        if not text.strip():
            raise ValueError(f"config: {p} is empty; start from `memcim hw show generic > {p.name}`")
        return cls.from_json(text) if p.suffix == ".json" else cls.from_toml(text)

    def save(self, path: str | Path) -> Path:
        """Save to ``.toml`` or ``.json`` (chosen by suffix)."""
        p = Path(path)
        if p.suffix not in (".toml", ".json"):
            raise ValueError(f"config: {p} has suffix {p.suffix!r}; use .toml or .json")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json() if p.suffix == ".json" else self.to_toml())
        return p

    # ---- derived configs ----------------------------------------------------------------------
    def replace(self, **sections: Any) -> "HardwareConfig":
        """New config with some settings changed: ``hw.replace(device={"g_max": 5e-5}, name="x")``."""
        kw: dict[str, Any] = {}
        for key, value in sections.items():
            if key == "name":
                kw["name"] = value
            elif key in _SECTIONS:
                cur = getattr(self, key)
                kw[key] = value if isinstance(value, _SECTIONS[key]) else cur.replace(**value)
            else:
                raise ValueError(f"replace: unknown section {key!r}; allowed: {', '.join(list(_SECTIONS) + ['name'])}")
        return dataclasses.replace(self, **kw)

    def without(self, *names: str) -> "HardwareConfig":
        """New config with the named non-idealities switched off (see :data:`NONIDEALITIES`)."""
        hw = self
        for n in names:
            _choice("non-ideality", n, NONIDEALITIES)
            if n == "quantization":
                dev = dataclasses.replace(hw.device, levels=None, bits=None, prog_sigma_table=None)
                hw = dataclasses.replace(hw, device=dev)
            elif n == "programming":
                hw = hw.replace(device={"prog_sigma_abs": 0.0, "prog_sigma_rel": 0.0, "prog_sigma_table": None,
                                        "prog_sigma_poly": None})
            elif n == "stuck":
                hw = hw.replace(device={"stuck_at_min": 0.0, "stuck_at_max": 0.0})
            elif n == "rtn":
                hw = hw.replace(device={"rtn_amplitude": 0.0})
            elif n == "drift":
                hw = hw.replace(device={"drift_nu": 0.0, "drift_nu_slope": 0.0, "drift_nu_std": 0.0,
                                        "drift_nu_std_slope": 0.0})
            elif n == "flicker":
                hw = hw.replace(device={"read_1f_q": 0.0})
            elif n == "wires":
                hw = dataclasses.replace(hw, wires=WiresConfig(), cell=CellConfig(),
                                         mapping=hw.mapping.replace(method="linear"))
            elif n == "thermal":
                hw = hw.replace(device={"thermal_noise": False})
            elif n == "shot":
                hw = hw.replace(device={"shot_noise": False})
            elif n == "dac":
                hw = hw.replace(dac={"enabled": False})
            elif n == "adc":
                hw = hw.replace(adc={"enabled": False})
        return hw

    def only(self, *names: str) -> "HardwareConfig":
        """New config with every non-ideality off except the named ones."""
        for n in names:
            _choice("non-ideality", n, NONIDEALITIES)
        return self.without(*[n for n in NONIDEALITIES if n not in names])

    def active_nonidealities(self) -> tuple[str, ...]:
        """The non-idealities this config switches on."""
        d = self.device
        on = {"quantization": d.levels is not None, "programming": d.has_programming_noise,
              "stuck": d.stuck_at_min > 0 or d.stuck_at_max > 0, "rtn": d.has_rtn, "drift": d.has_drift,
              "flicker": d.has_read_1f, "thermal": d.thermal_noise,
              "shot": d.shot_noise, "dac": self.dac.enabled, "adc": self.adc.enabled,
              "wires": self.wires.enabled}
        return tuple(n for n in NONIDEALITIES if on[n])


def _check_slicing(hw: "HardwareConfig") -> None:
    """Cross-section checks of bit slicing (one line naming the key and what is allowed)."""
    sl, mp, dev, dac = hw.slicing, hw.mapping, hw.device, hw.dac
    if mp.method != "linear":
        raise ValueError(f"slicing: bit slicing maps every slice linearly; mapping.method = {mp.method!r} is not "
                         "allowed with it (use 'linear')")
    if sl.weights_sliced:
        if sl.encoding == "sign_magnitude" and mp.scheme != "differential":
            raise ValueError("slicing.encoding: 'sign_magnitude' needs mapping.scheme = 'differential' (each slice a "
                             "signed pair); with 'offset' use encoding 'offset' or 'twos_complement'")
        if dev.levels is not None:
            for k, b in enumerate(sl.slice_bits):
                if 2 ** b > dev.levels:
                    raise ValueError(f"slicing.weight_bits_per_slice: slice {k} holds {b} bits ({2 ** b} levels), but "
                                     f"device.levels = {dev.levels}; a slice may hold at most log2(levels) bits")
    if sl.input_mode != "parallel":
        if not dac.enabled:
            raise ValueError(f"slicing.input_mode: {sl.input_mode!r} needs dac.enabled = true (the DAC's bits are "
                             "the input precision that is cut into cycles or pulse slots)")
        mag = dac.bits - 1 if dac.signed else dac.bits
        if sl.input_mode == "bit_serial" and sl.input_bits_per_cycle > mag:
            raise ValueError(f"slicing.input_bits_per_cycle: {sl.input_bits_per_cycle} is not allowed; the DAC "
                             f"code has {mag} magnitude bits (dac.bits = {dac.bits}), so at most {mag}")
        if sl.input_mode == "pulse_width" and hw.reader == "circuit" and not hw.cell.linear \
                and hw.cell.solve == "newton":
            raise ValueError("slicing.input_mode: 'pulse_width' with cell.solve = 'newton' is not supported (every "
                             "pulse slot would need its own non-linear solve); use cell.solve = 'linearized'")


def preset_names() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.name[:-5] for p in resources.files("memcim.presets").iterdir() if p.name.endswith(".toml"))


#: old preset name -> its new name (the old one still loads, with a warning).
RENAMED_PRESETS = {"realistic": "generic"}


def preset(name: str) -> HardwareConfig:
    """A named hardware preset (see :func:`preset_names`)."""
    if name in RENAMED_PRESETS:
        import warnings

        new = RENAMED_PRESETS[name]
        warnings.warn(f"preset {name!r} is now called {new!r}; loading {new!r}", FutureWarning, stacklevel=2)
        name = new
    names = preset_names()
    if name not in names:
        raise ValueError(f"preset: unknown preset {name!r}; available: {', '.join(names)}")
    text = resources.files("memcim.presets").joinpath(f"{name}.toml").read_text()
    return HardwareConfig.from_toml(text)


def resolve_config(spec: str | Path | HardwareConfig | None, default: str = "generic") -> HardwareConfig:
    """A config from a preset name, a file path, an object, or None (the default preset)."""
    if isinstance(spec, HardwareConfig):
        return spec
    if spec is None:
        return preset(default)
    s = str(spec)
    if s.endswith((".toml", ".json")) or Path(s).exists():
        return HardwareConfig.load(s)
    return preset(s)
