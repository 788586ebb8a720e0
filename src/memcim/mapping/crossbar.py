"""Map a real matrix W (in x out) onto tiled crossbar conductances.

Two schemes (``hw.mapping.scheme``):

* **differential**: each weight is a pair of devices, ``G+ = g_min + c*max(W, 0)`` and
  ``G- = g_min + c*max(-W, 0)``; the column currents are subtracted before the TIA, so the array
  computes ``v @ (G+ - G-) = c * v @ W``. With ``mapping.pair = "columns"`` the pair sits on two
  adjacent columns (an array of ``rows x cols`` devices holds ``rows x cols//2`` weights); with
  ``"arrays"`` G+ and G- sit in a pair of arrays (each holds ``rows x cols`` weights, paper 002).
* **offset**: one device per weight around the window's midpoint, ``G = g_ref + c*W`` with
  ``g_ref = (g_min + g_max)/2``; one reference column per array, every device at ``g_ref``, is
  subtracted from each column. An array holds ``rows x (cols - 1)`` weights.

The scale is ``c = (g_max - g_min)/max|W|`` (differential) or ``(g_max - g_min)/(2 max|W|)`` (offset),
over the whole matrix or per output column (``hw.mapping.scale``). Targets are then rounded to the
device's levels. Matrices larger than one array are tiled: row tile ``r`` and column tile ``k`` go to
their own array with its own TIAs and ADCs, and the partial sums of the row tiles are added digitally.

With ``hw.mapping.tiling == "balanced"`` the rows and columns are spread evenly over the arrays
(``tile_rows = ceil(in / n_row_tiles)``), otherwise arrays are filled completely.
Tile-padding positions hold no device (0 S, no noise). The ADC full scale of every array (or column)
is fixed here, at mapping time, as on a real chip (on the circuit's response when the array has
wires).

``hw.mapping.method`` chooses the targets: ``linear`` (above), or the IR-drop-aware ``dpe`` and
``representable`` of paper 002, which map every array's block against its exact circuit
(:mod:`memcim.mapping.irdrop`) and give each array its own scale alpha. The result is a frozen
:class:`MappedMatrix`, the plan every fidelity level reads.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from memcim.config import HardwareConfig
from memcim.hardware.converters import dac_convert
from memcim.hardware.device import level_index, quantize_conductance
from memcim.memo import Memo, digest


def as_matrix(W, name: str = "W") -> torch.Tensor:
    """Validate a real 2-D matrix and return it as float64 tensor (CPU or its own device)."""
    if isinstance(W, np.ndarray):
        if not np.issubdtype(W.dtype, np.number) or np.iscomplexobj(W):
            raise ValueError(f"{name}: dtype {W.dtype} is not allowed; a real numeric matrix is required")
        W = torch.from_numpy(np.asarray(W, dtype=np.float64))
    elif not isinstance(W, torch.Tensor):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(W).__name__}")
    if W.is_complex():
        raise ValueError(f"{name}: complex values are not allowed")
    if W.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix (in, out), got shape {tuple(W.shape)}")
    if W.numel() == 0:
        raise ValueError(f"{name}: empty matrix of shape {tuple(W.shape)}")
    W = W.detach().to(torch.float64)
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{name}: contains NaN or inf; all entries must be finite")
    return W


@dataclass(frozen=True, eq=False)
class MappedMatrix:
    """A conductance plan for one matrix: the targets every device is programmed to. Frozen: a
    change (a designed ADC full scale, say) makes a new plan (:meth:`with_full_scale`).

    Attributes
    ----------
    hw : the hardware config used.
    in_features, out_features : the shape of W.
    tile_rows, tile_cols : weights per array (rows, weight columns) actually used; at most the
        array's rows and cols (pair of arrays), cols//2 (pair on adjacent columns) or cols-1 (offset).
    n_row_tiles, n_col_tiles : number of arrays along each dimension.
    scale : c per row tile and output column, shape (n_row_tiles, out_pad) [S per weight unit]:
        the digital side divides each array's output by it (``linear``: one value per matrix or
        column; ``dpe`` / ``representable``: each array's own alpha).
    g_pos : target conductances [S] of the positive devices, shape (n_row_tiles, tile_rows, out_pad).
    g_neg : differential: negative devices, same shape. Offset: the reference columns,
        shape (n_row_tiles, tile_rows, n_col_tiles).
    level_pos, level_neg : level indices (int64) or None when continuous.
    mask_pos, mask_neg : which positions hold a device (False in tile padding).
    full_scale : ADC full scale [V] per row tile and output column, shape (n_row_tiles, out_pad).
    info : the mapping method's report (per array: alpha, circuit evaluations, time).
    """

    hw: HardwareConfig
    in_features: int
    out_features: int
    tile_rows: int
    tile_cols: int
    n_row_tiles: int
    n_col_tiles: int
    scale: torch.Tensor
    g_pos: torch.Tensor
    g_neg: torch.Tensor
    level_pos: torch.Tensor | None
    level_neg: torch.Tensor | None
    mask_pos: torch.Tensor
    mask_neg: torch.Tensor
    full_scale: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return self.hw.mapping.scheme

    @property
    def n_tiles(self) -> tuple[int, int]:
        return self.n_row_tiles, self.n_col_tiles

    @property
    def n_devices(self) -> int:
        """Physical devices programmed (padding excluded)."""
        return int(self.mask_pos.sum()) + int(self.mask_neg.sum())

    @property
    def out_pad(self) -> int:
        return self.n_col_tiles * self.tile_cols

    def expand_neg(self, g_neg: torch.Tensor) -> torch.Tensor:
        """Negative-side conductances per output column: offset reference columns are repeated."""
        if self.scheme == "differential":
            return g_neg
        return g_neg.repeat_interleave(self.tile_cols, dim=-1)

    def used(self, r: int, k: int) -> tuple[int, int]:
        """(rows, weight columns) of tile (r, k) that hold devices (the rest is padding)."""
        rows = min(self.tile_rows, self.in_features - r * self.tile_rows)
        cols = min(self.tile_cols, self.out_features - k * self.tile_cols)
        return rows, cols

    def effective_difference(self, g_pos: torch.Tensor | None = None, g_neg: torch.Tensor | None = None):
        """What each array computes per unit drive, ``j = u @ G_d`` [S], for conductances ``g_pos``,
        ``g_neg`` (default: the targets; a leading chip dimension is allowed).

        With ideal wires ``G_d = G+ - G-``; with wires it is the difference of the tiles' realized
        matrices from the nodal solve (:func:`memcim.hardware.readers.circuit_difference`),
        linear cells, or non-linear cells linearised at the calibration read.
        """
        gp = self.g_pos if g_pos is None else g_pos
        gn = self.g_neg if g_neg is None else g_neg
        if self.hw.reader == "ideal":
            return gp - self.expand_neg(gn)
        from memcim.hardware.readers import circuit_difference

        return circuit_difference(self, gp, gn)

    def realized(self) -> torch.Tensor:
        """The matrix the hardware computes with noise and converters off, (in, out) float64
        (IR drop included when the array has wires)."""
        gd = self.effective_difference()
        w = (gd / self.scale.unsqueeze(1)).reshape(self.n_row_tiles * self.tile_rows, self.out_pad)
        return w[: self.in_features, : self.out_features]

    def with_full_scale(self, full_scale) -> "MappedMatrix":
        """A new plan with the ADC full scale [V] replaced (per row tile and output column, or a scalar)."""
        fs = torch.as_tensor(full_scale, dtype=torch.float64, device=self.full_scale.device)
        try:
            fs = torch.broadcast_to(fs, self.full_scale.shape).clone()
        except RuntimeError:
            raise ValueError(f"full_scale: shape {tuple(fs.shape)} does not broadcast to (row tiles, columns) = "
                             f"{tuple(self.full_scale.shape)}") from None
        if not bool(torch.isfinite(fs).all()) or bool((fs <= 0).any()):
            raise ValueError("full_scale: every value must be a positive, finite voltage")
        return dataclasses.replace(self, full_scale=fs)

    def with_hardware(self, hw: HardwareConfig, calib_inputs=None, *, calib_seed: int = 0,
                      keep_full_scale: bool = False) -> "MappedMatrix":
        """A new plan of the same targets under a config that differs only where the targets do not
        depend on it: the converters, the read noise, RTN, programming noise and stuck devices.

        The ADC full scale is recalibrated under ``hw`` (as ``map_matrix`` would, on ``calib_inputs``),
        or kept with ``keep_full_scale=True``. Anything else that differs (window, levels, array,
        wires, cells, mapping) changes the targets: map again instead (``ValueError``).
        """
        if not isinstance(hw, HardwareConfig):
            raise TypeError(f"hw: expected a HardwareConfig, got {type(hw).__name__}")
        o = self.hw
        target_fields = ("g_min", "g_max", "levels")
        for sec in ("array", "wires", "cell", "mapping"):
            if getattr(hw, sec) != getattr(o, sec):
                raise ValueError(f"hw: its {sec} section differs from the plan's; the targets depend on it, "
                                 "so map the matrix again (map_matrix)")
        for f in target_fields:
            if getattr(hw.device, f) != getattr(o.device, f):
                raise ValueError(f"hw: device.{f} differs from the plan's; the targets depend on it, so map the "
                                 "matrix again (map_matrix)")
        new = dataclasses.replace(self, hw=hw)
        if keep_full_scale:
            return new
        return dataclasses.replace(new, full_scale=_full_scale(new, calib_inputs, calib_seed))

    def to(self, device) -> "MappedMatrix":
        """A copy with every tensor on ``device`` (the plan itself when they are all there: it is frozen)."""
        device = torch.device(device)
        if all(not isinstance(v, torch.Tensor) or v.device == device
               for v in (self.scale, self.g_pos, self.g_neg, self.level_pos, self.level_neg, self.mask_pos,
                         self.mask_neg, self.full_scale)):
            return self
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        return MappedMatrix(**kw)

    def summary(self) -> dict:
        return {"shape": [self.in_features, self.out_features], "scheme": self.scheme,
                "method": self.hw.mapping.method, "reader": self.hw.reader,
                "tiles": [self.n_row_tiles, self.n_col_tiles], "tile_weights": [self.tile_rows, self.tile_cols],
                "devices": self.n_devices, "scale_mode": self.hw.mapping.scale}


def _tile_shape(hw: HardwareConfig) -> tuple[int, int]:
    mp = hw.mapping
    if mp.scheme == "offset":
        return hw.array.rows, hw.array.cols - 1
    return hw.array.rows, hw.array.cols // 2 if mp.pair == "columns" else hw.array.cols


def tile_geometry(n: int, m: int, hw: HardwareConfig) -> tuple[int, int, int, int]:
    """How a matrix (n inputs, m outputs) is cut into arrays: (tile_rows, tile_cols, n_row_tiles,
    n_col_tiles). The one definition of tile geometry; see ``mapping.tiling``."""
    R, Cw = _tile_shape(hw)
    nrt, nct = math.ceil(n / R), math.ceil(m / Cw)
    if hw.mapping.tiling == "balanced":
        R, Cw = math.ceil(n / nrt), math.ceil(m / nct)
    return R, Cw, nrt, nct


#: IR-drop-aware tile maps (seconds per array): a matrix mapped again under other converters reuses them
_IRDROP_TILES = Memo(64)


def _map_irdrop_tiles(Wt, mask_pos, hw: HardwareConfig, nct: int, Cw: int, second_moment, progress: bool):
    """dpe / representable: every array's targets and alpha from :func:`memcim.mapping.irdrop.map_block`.

    The result depends only on the weights, the wires, the device and the mapping settings, so it is
    memoised on them (:mod:`memcim.memo`): mapping the same layer again with other converters, or for
    another chip, does not repeat the circuit-in-the-loop optimisation.
    """
    key = digest(Wt, mask_pos, hw.wires, hw.device, hw.mapping, second_moment)
    gp, gn, scale, infos = _IRDROP_TILES.get(
        key, lambda: _map_irdrop_tiles_uncached(Wt, mask_pos, hw, nct, Cw, second_moment, progress))
    return gp.clone(), gn.clone(), scale.clone(), list(infos)


def _map_irdrop_tiles_uncached(Wt, mask_pos, hw: HardwareConfig, nct: int, Cw: int, second_moment, progress: bool):
    from memcim.mapping.irdrop import map_block

    nrt, R, m_pad = Wt.shape
    gp = torch.zeros_like(Wt)
    gn = torch.zeros_like(Wt)
    scale = torch.ones(nrt, m_pad, dtype=torch.float64, device=Wt.device)
    infos = []
    column = {"column_scale": True} if hw.mapping.scale == "column" else {}
    pairs = [(r, k) for r in range(nrt) for k in range(nct)]
    it = pairs
    if progress and len(pairs) > 1:
        import sys

        from tqdm import tqdm

        it = tqdm(pairs, desc=f"mapping ({hw.mapping.method})", file=sys.stderr, leave=False)
    for r, k in it:
        rows = int(mask_pos[r, :, k * Cw].sum()) if bool(mask_pos[r, :, k * Cw].any()) else 0
        cols = int(mask_pos[r, 0, k * Cw:(k + 1) * Cw].sum())
        if rows == 0 or cols == 0:
            continue
        B = Wt[r, :rows, k * Cw:k * Cw + cols].cpu().numpy()
        M = None
        if second_moment is not None:
            M = second_moment[r * R:r * R + rows, r * R:r * R + rows]
        p, q, a, info = map_block(B, hw.wires, hw.device, hw.mapping, second_moment=M, **column)
        gp[r, :rows, k * Cw:k * Cw + cols] = torch.from_numpy(p)
        gn[r, :rows, k * Cw:k * Cw + cols] = torch.from_numpy(q)
        if np.ndim(a) == 0:
            scale[r, k * Cw:(k + 1) * Cw] = a
        else:                   # mapping.scale = "column": one alpha per output column of the array
            scale[r, k * Cw:k * Cw + cols] = torch.as_tensor(np.asarray(a, dtype=float), device=scale.device)
            a = np.asarray(a, dtype=float).tolist()
        infos.append({"tile": [r, k], "alpha": a, **{kk: v for kk, v in info.items() if kk != "alpha_trace"}})
    return gp, gn, scale, infos


def _geometry(n: int, m: int, hw: HardwareConfig, device, dtype: torch.dtype):
    """The tiling of a matrix (n inputs, m outputs) as both mappings lay it out: ``(tile_rows,
    tile_cols, n_row_tiles, n_col_tiles, mask_pos, mask_neg, g_ref, l_ref)``; the masks say which
    positions hold a device; offset: ``g_ref`` the reference columns' programmed targets (nrt, R,
    nct) in ``dtype`` and ``l_ref`` their levels (None without levels), else both None."""
    R, Cw, nrt, nct = tile_geometry(n, m, hw)
    m_pad = nct * Cw
    mask = torch.zeros(nrt * R, m_pad, dtype=torch.bool, device=device)
    mask[:n, :m] = True
    mask_pos = mask.reshape(nrt, R, m_pad)
    g_ref = l_ref = None
    if hw.mapping.scheme == "offset":
        dev = hw.device
        mask_neg = mask_pos.any(dim=2, keepdim=True).expand(nrt, R, nct).clone()   # rows in use
        g_ref, l_ref = quantize_conductance(torch.full((nrt, R, nct), (dev.g_min + dev.g_max) / 2,
                                                       dtype=torch.float64, device=device), dev)
        g_ref = (g_ref * mask_neg).to(dtype)
    else:
        mask_neg = mask_pos
    return R, Cw, nrt, nct, mask_pos, mask_neg, g_ref, l_ref


def _window(hw: HardwareConfig) -> float:
    """The conductance window a weight magnitude spans: ``g_max - g_min`` (offset: half of it)."""
    window = hw.device.g_max - hw.device.g_min
    return window / 2 if hw.mapping.scheme == "offset" else window


def _linear_scale(W: torch.Tensor, hw: HardwareConfig, m_pad: int, weight_max: float | None = None) -> torch.Tensor:
    """The linear mapping's scale ``c`` per output column (m_pad,), float64: the window over the
    weight magnitude that spans it (``weight_max``, else ``max|W|`` of the matrix or of each column,
    ``hw.mapping.scale``; 1 for an all-zero matrix or column and the padding columns)."""
    window = _window(hw)
    if weight_max is not None:
        return torch.full((m_pad,), float(window / weight_max), dtype=torch.float64, device=W.device)
    m = W.shape[1]
    Wc = W.t() if not W.is_contiguous() and W.t().is_contiguous() else W    # the entries in memory order
    if hw.mapping.scale == "matrix":
        c = _matrix_scale(Wc, window)
        return torch.full((m_pad,), c, dtype=torch.float64, device=W.device)
    colmax = torch.zeros(m_pad, dtype=torch.float64, device=W.device)
    colmax[:m] = Wc.abs().amax(dim=1) if Wc is not W else W.abs().amax(dim=0)
    if not bool(torch.isfinite(colmax).all()):
        raise ValueError("W: contains NaN or inf; all entries must be finite")
    return torch.where(colmax > 0, window / colmax.clamp_min(1e-300), torch.ones_like(colmax))


def _matrix_scale(W: torch.Tensor, window: float) -> float:
    """The matrix-wide scale ``window / max|W|`` (1 for an all-zero matrix) as a number, read with one
    synchronisation (both ends at once); checks W is finite. (``window * (1 / wmax)``:
    the value torch gives when it divides a number by a float64 tensor, times the reciprocal.)"""
    lo, hi = torch.stack((W.amin(), W.amax())).tolist()     # (faster than aminmax)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("W: contains NaN or inf; all entries must be finite")
    wmax = max(-lo, hi, 0.0)
    return window * (1.0 / wmax) if wmax > 0 else 1.0


def _linear_targets(W: torch.Tensor, hw: HardwareConfig, c: torch.Tensor, shape: tuple, dtype: torch.dtype,
                    levels: bool, c_value: float | None = None):
    """The linear mapping's programmed targets of ``W`` (n, m) with scale ``c`` (m_pad,), in the
    tile layout ``shape`` (nrt, R, m_pad) and ``dtype``: the one implementation :func:`map_matrix`
    (float64) and :func:`map_for_training` (the training dtype) share.

    Differential: ``G = g_min + c |W|`` on the side of the weight's sign (``g_min`` on the other),
    clipped to the window and rounded to the nearest level, ``g_min + level * step``; offset: ``G =
    g_ref + c W``, clipped and rounded. The operations are those of
    :func:`memcim.hardware.device.quantize_conductance` in this order (so float64 gives its
    results bit for bit; a float32 differential map with levels takes the level as
    ``round(|W| (c / step))`` clipped to the levels, the same up to float32 rounding), in place on
    one buffer; a differential pair's levels are formed once, on ``|W|`` (the other side's level is
    0), signed as the weight: ``d = level+ - level-``.

    Returns ``(g_pos, g_neg, level_pos, level_neg, d)``: differential ``g_pos`` and ``g_neg`` are the
    two entries of one (2, nrt, R, m_pad) tensor (:func:`memcim.simulate.program` draws both at
    once from it); offset ``g_neg = level_neg = None`` (the reference columns: :func:`_geometry`).
    ``c_value``: the one value of ``c`` when every column has it (a matrix-wide scale: scaled by a
    number, not a broadcast row). Tile padding holds 0 S; its levels are those of a zero weight. Levels (int64) only when
    ``levels`` is True and the device has levels; ``d`` (``dtype``, 0 in the padding) only for
    differential plans with levels.
    """
    dev = hw.device
    nrt, R, m_pad = shape
    n, m = W.shape
    top = None if dev.levels is None else float(dev.levels - 1)
    a = torch.empty((nrt * R, m_pad), dtype=dtype, device=W.device)
    w = a[:n, :m]
    offset = hw.mapping.scheme == "offset"
    if offset:
        w.copy_(W)
    else:
        torch.abs(W, out=w) if W.dtype == dtype else w.copy_(W).abs_()
    a[n:].zero_()
    a[:n, m:].zero_()
    if top is not None and not offset and dtype != torch.float64:
        # a training map (float32): the level of c |W| in one scaling, its rounding and the clip to the
        # levels (the float64 path's steps up to float32 rounding: a level differs only at a tie)
        a.mul_((c / dev.level_step).to(dtype) if c_value is None else c_value / dev.level_step)
        a.round_().clamp_(0.0, top)
    else:
        a.mul_(c.to(dtype))                                               # c W (c |W|)
        a.add_((dev.g_min + dev.g_max) / 2 if offset else dev.g_min).clamp_(dev.g_min, dev.g_max)
        if top is not None:                                               # the level of every target
            a.sub_(dev.g_min).div_(dev.level_step).round_().clamp_(0.0, top)
    a = a.view(nrt, R, m_pad)
    lp = ln = d = None
    if offset:
        if top is not None and levels:
            lp = a.to(torch.int64)
        gp = a if top is None else a.mul_(dev.level_step).add_(dev.g_min)
        _zero_padding(gp, n, m)
        return gp, None, lp, None, None
    pair = torch.empty((2, nrt, R, m_pad), dtype=dtype, device=W.device)
    if top is None:                       # continuous: the target on the weight's side, g_min on the other
        pair[0].copy_(a)
        pair[1].copy_(a)
        pair[0].view(nrt * R, m_pad)[:n, :m].masked_fill_(W < 0, dev.g_min)
        pair[1].view(nrt * R, m_pad)[:n, :m].masked_fill_(W > 0, dev.g_min)
    else:
        d = a
        torch.copysign(w, W, out=w)                                       # level+ - level- (one of them is 0)
        torch.clamp_min(d, 0.0, out=pair[0])
        torch.sub(pair[0], d, out=pair[1])          # max(d, 0) - d = max(-d, 0), exact (whole numbers)
        if levels:
            lv = pair.to(torch.int64)
            lp, ln = lv[0], lv[1]
        pair.mul_(dev.level_step).add_(dev.g_min)
    _zero_padding(pair, n, m)
    return pair[0], pair[1], lp, ln, d


def _calibration_inputs(calib_inputs, n: int, calib_seed: int, device) -> torch.Tensor:
    """The ADC calibration's inputs (batch, n), float64, checked: ``calib_inputs``, else 512 standard
    normal vectors seeded by ``calib_seed``."""
    if calib_inputs is None:
        g = torch.Generator(device="cpu").manual_seed(calib_seed)
        return torch.randn(512, n, generator=g, dtype=torch.float64).to(device)
    x = calib_inputs.detach() if isinstance(calib_inputs, torch.Tensor) else torch.as_tensor(calib_inputs)
    x = x.to(device=device, dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != n:
        raise ValueError(f"calib_inputs: shape {tuple(x.shape)} does not match (batch, {n})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("calib_inputs: contains NaN or inf")
    return x


def map_matrix(W, hw: HardwareConfig, calib_inputs=None, *, calib_seed: int = 0, second_moment=None,
               progress: bool = False, weight_max: float | None = None, calib_drives=None) -> MappedMatrix:
    """Map ``W`` (in x out) onto crossbar conductances: the one mapping entry point.

    Parameters
    ----------
    W : real matrix, numpy array or torch tensor, shape (in, out).
    hw : hardware config; ``hw.mapping.method`` chooses linear, dpe or representable targets.
    calib_inputs : sample inputs (batch, in) for ``adc.fs_mode == "calibrated"``. When None,
        512 standard normal vectors (seeded by ``calib_seed``) are used.
    second_moment : E[x^T x] (in, in) of the inputs: ``representable`` then tunes the expected
        output error of each array instead of the Frobenius norm (beyond paper 002).
    progress : show a progress bar over the arrays (dpe / representable).
    weight_max : the weight magnitude that spans the window (``linear``; default: ``max|W|`` of the
        matrix or column); a bit slice maps its digits with a fixed one (:mod:`memcim.mapping.slicing`).
    calib_drives : word-line drive fractions (batch, in) that calibrate the ADC instead of the DAC's
        conversion of ``calib_inputs`` (the cycles of bit-serial inputs).

    Returns
    -------
    MappedMatrix (frozen); with ``hw.slicing`` on, a :class:`memcim.mapping.slicing.SlicedPlan`.
    """
    if not isinstance(hw, HardwareConfig):
        raise TypeError(f"hw: expected a HardwareConfig, got {type(hw).__name__}")
    if hw.slicing.enabled:
        from memcim.mapping.slicing import map_sliced

        return map_sliced(W, hw, calib_inputs, calib_seed=calib_seed)
    W = as_matrix(W)
    n, m = W.shape
    dev = hw.device
    R, Cw, nrt, nct, mask_pos, mask_neg, g_ref, l_ref = _geometry(n, m, hw, W.device, torch.float64)
    m_pad = nct * Cw
    info: dict = {"method": hw.mapping.method}

    if hw.mapping.method != "linear":
        Wp = torch.zeros(nrt * R, m_pad, dtype=torch.float64, device=W.device)
        Wp[:n, :m] = W
        Wt = Wp.reshape(nrt, R, m_pad)
        if second_moment is not None:
            second_moment = np.asarray(second_moment, dtype=float)
            if second_moment.shape != (n, n) or not np.all(np.isfinite(second_moment)):
                raise ValueError(f"second_moment: shape {second_moment.shape} is not allowed; expected a finite "
                                 f"({n}, {n}) matrix E[x^T x]")
        gp, gn, scale, info["tiles"] = _map_irdrop_tiles(Wt, mask_pos, hw, nct, Cw, second_moment, progress)
        gp, gn = gp * mask_pos, gn * mask_pos
        lp, ln = level_index(gp, dev), level_index(gn, dev)
        mask_neg = mask_pos
    else:   # the linear targets: the one core map_for_training shares (_linear_targets)
        scale = _linear_scale(W, hw, m_pad, weight_max).unsqueeze(0).expand(nrt, m_pad).clone()
        gp, gn, lp, ln, _ = _linear_targets(W, hw, scale[0], (nrt, R, m_pad), torch.float64, levels=True)
        if gn is None:             # offset: the reference columns
            gn, ln = g_ref, l_ref
        else:                      # the two sides as tensors of their own, as before the shared core
            gp, gn = gp.clone(), gn.clone()
            lp, ln = (None, None) if lp is None else (lp.clone(), ln.clone())
    mapped = MappedMatrix(hw=hw, in_features=n, out_features=m, tile_rows=R, tile_cols=Cw, n_row_tiles=nrt,
                          n_col_tiles=nct, scale=scale, g_pos=gp, g_neg=gn, level_pos=lp, level_neg=ln,
                          mask_pos=mask_pos, mask_neg=mask_neg,
                          full_scale=torch.ones(nrt, m_pad, dtype=torch.float64, device=W.device), info=info)
    return dataclasses.replace(mapped, full_scale=_full_scale(mapped, calib_inputs, calib_seed, calib_drives))


def _per_array(fs_col: torch.Tensor, mapped: MappedMatrix) -> torch.Tensor:
    """Replace per-column values by the maximum over each array's columns."""
    nrt, Cw, nct = mapped.n_row_tiles, mapped.tile_cols, mapped.n_col_tiles
    fs = fs_col.reshape(nrt, nct, Cw).amax(dim=2, keepdim=True).expand(nrt, nct, Cw)
    return fs.reshape(nrt, nct * Cw)


def _full_scale(mapped: MappedMatrix, calib_inputs, calib_seed: int, calib_drives=None) -> torch.Tensor:
    """ADC full scale [V] per row tile and output column."""
    hw = mapped.hw
    adc = hw.adc
    k = hw.array.r_tia * hw.array.v_read
    gd = mapped.effective_difference()  # (nrt, R, m_pad), IR drop included
    if adc.fs_mode == "fixed":
        return torch.full((mapped.n_row_tiles, mapped.out_pad), float(adc.full_scale), dtype=torch.float64,
                          device=gd.device)
    if adc.fs_mode == "max":
        fs = k * gd.abs().sum(dim=1)  # worst case over inputs in range, per column
    elif calib_drives is not None:
        u = torch.as_tensor(calib_drives, dtype=torch.float64).to(gd.device)
    else:
        u, _ = dac_convert(_calibration_inputs(calib_inputs, mapped.in_features, calib_seed, gd.device), hw.dac)
    if adc.fs_mode == "calibrated":
        up = torch.zeros(u.shape[0], mapped.n_row_tiles * mapped.tile_rows, dtype=torch.float64, device=gd.device)
        up[:, : mapped.in_features] = u
        up = up.reshape(u.shape[0], mapped.n_row_tiles, mapped.tile_rows).transpose(0, 1)
        v = k * (up @ gd).abs()  # (nrt, batch, m_pad)
        return _reduce_full_scale(v.amax(dim=1) if adc.calib_quantile >= 1.0 else None, v, mapped)
    return _reduce_full_scale(fs, None, mapped)


def _reduce_full_scale(fs: torch.Tensor | None, v: torch.Tensor | None, mapped: MappedMatrix) -> torch.Tensor:
    """The full scale [V] from per-column values ``fs`` (row tile, column) or, when ``fs`` is None, from
    the calibration outputs ``v`` (row tile, sample, column) at ``adc.calib_quantile``: per array or per
    column (``adc.granularity``), positive."""
    adc = mapped.hw.adc
    if fs is None:
        fs = torch.quantile(v, adc.calib_quantile, dim=1)
        if adc.granularity == "array":
            # per-array quantile over all samples and columns of the array
            nrt, nct, Cw = mapped.n_row_tiles, mapped.n_col_tiles, mapped.tile_cols
            va = v.reshape(nrt, v.shape[1], nct, Cw).permute(0, 2, 1, 3).reshape(nrt, nct, -1)
            q = torch.quantile(va, adc.calib_quantile, dim=2)
            return _positive(q.unsqueeze(-1).expand(nrt, nct, Cw).reshape(nrt, nct * Cw))
    if adc.granularity == "array":
        fs = _per_array(fs, mapped)
    return _positive(fs)


def _positive(fs: torch.Tensor) -> torch.Tensor:
    """A full scale of 0 (an all-zero column) would divide by zero: use the largest one instead."""
    top = fs.max()
    fill = top if top > 0 else torch.ones_like(top)
    return torch.where(fs > 0, fs, fill)


# ------------------------------------------------------------------------------------------------
# the training mapping: map_matrix in the training dtype, with what does not change between steps kept
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TrainingLayout:
    """What :func:`map_for_training` keeps between mini-batches for one matrix shape, hardware,
    calibration set, dtype and device: the tile geometry, the device masks and the calibration
    drives (the DAC's conversion of the calibration inputs, padded and cut into row tiles).
    Build it with :func:`training_layout`."""

    hw: HardwareConfig
    shape: tuple
    dtype: torch.dtype
    device: torch.device
    calib: object                  # the calibration inputs it was made for (identity is the key)
    calib_version: int | None
    tile_rows: int
    tile_cols: int
    n_row_tiles: int
    n_col_tiles: int
    mask_pos: torch.Tensor
    mask_neg: torch.Tensor
    drives: torch.Tensor | None    # (nrt, batch, tile_rows): DAC steps (integers) or drive fractions
    drive_unit: float              # drive fraction of one unit of ``drives``
    drives_int8: torch.Tensor | None  # the DAC steps as int8 when they fit (exact integer products)
    drives_int8_tiles: tuple | None   # its row tiles (views), unbound once
    calib_tiles: tuple | None      # per row tile, the int8 drives that can set a maximum (see _max_tiles)
    g_ref: torch.Tensor | None     # offset: the reference columns' targets (nrt, tile_rows, nct)

    def matches(self, shape: tuple, dtype: torch.dtype, device, hw: HardwareConfig, calib) -> bool:
        """Whether this layout is the one of a matrix of ``shape``, ``dtype`` on ``device`` mapped under
        ``hw`` with the calibration inputs ``calib`` (the same tensor, unchanged)."""
        return self.shape == tuple(shape) and self.dtype == dtype and self.device == torch.device(device) \
            and self.calib is calib and self.calib_version == _version(calib) and (self.hw is hw or self.hw == hw)


def _version(x):
    return x._version if isinstance(x, torch.Tensor) else None


def training_supported(hw: HardwareConfig) -> bool:
    """Whether :func:`map_for_training` maps under ``hw`` itself (linear targets, ideal wires, no bit
    slicing) rather than through :func:`map_matrix` in float64."""
    return hw.mapping.method == "linear" and hw.reader == "ideal" and not hw.slicing.enabled


def training_layout(shape: tuple, hw: HardwareConfig, calib_inputs=None, *, dtype: torch.dtype = torch.float32,
                    device=None, calib_seed: int = 0) -> TrainingLayout:
    """The step-independent part of :func:`map_for_training` for a matrix of ``shape`` (in, out)."""
    n, m = (int(s) for s in shape)
    device = torch.device(device) if device is not None else torch.device("cpu")
    R, Cw, nrt, nct, mask_pos, mask_neg, g_ref, _ = _geometry(n, m, hw, device, dtype)
    drives, unit, drives_int8 = None, 1.0, None
    adc = hw.adc
    if adc.fs_mode == "calibrated":
        x = _calibration_inputs(calib_inputs, n, calib_seed, device)
        u, _ = dac_convert(x, hw.dac)          # float64, as _full_scale converts them
        if hw.dac.enabled:                      # whole DAC steps: products with whole levels are exact
            unit = 1.0 / hw.dac.steps
            u = torch.round(u * hw.dac.steps)
        up = torch.zeros(u.shape[0], nrt * R, dtype=torch.float64, device=device)
        up[:, :n] = u
        drives = up.reshape(u.shape[0], nrt, R).transpose(0, 1).to(dtype).contiguous()
        if hw.dac.enabled and hw.dac.steps <= 127 and _INT_MM is not None and device.type == "cpu":
            drives_int8 = drives.to(torch.int8)
    return TrainingLayout(hw=hw, shape=(n, m), dtype=dtype, device=device, calib=calib_inputs,
                          calib_version=_version(calib_inputs), tile_rows=R, tile_cols=Cw, n_row_tiles=nrt,
                          n_col_tiles=nct, mask_pos=mask_pos, mask_neg=mask_neg, drives=drives, drive_unit=unit,
                          drives_int8=drives_int8, g_ref=g_ref,
                          drives_int8_tiles=None if drives_int8 is None else drives_int8.unbind(0),
                          calib_tiles=None if drives_int8 is None else _max_tiles(drives_int8))


#: :func:`_max_tiles` is used when it leaves at most this share of the calibration's products (else the
#: one batched product and its abs / amax passes cost less than the per-tile loop)
_MAX_TILES_SHARE = 0.8


def _max_tiles(drives_int8: torch.Tensor) -> tuple | None:
    """Per row tile of the calibration drives (nrt, batch, R), int8: ``(q, rows)`` with ``q`` the drives
    of the samples that drive the tile at all, restricted to the tile's rows (inputs) that some sample
    drives (contiguous), and ``rows`` those rows' indices (None when every row is driven); None when no
    sample drives the tile. ``max_s |q_s . d|`` over them is the maximum over all the samples: a sample
    with no drive in the tile gives 0 in every column, an input no sample drives adds 0 to every sum
    (integers: the same values, fewer products; MNIST's border pixels leave 38 % of the reference MLP's
    first layer out). None (use the batched product) when they keep more than :data:`_MAX_TILES_SHARE`
    of the products."""
    tiles, kept = [], 0
    for q in drives_int8.unbind(0):
        on = q.ne(0)
        samples = on.any(dim=1).nonzero().flatten()
        rows = on.any(dim=0).nonzero().flatten()
        if samples.numel() == 0:
            tiles.append(None)
            continue
        q = q.index_select(0, samples).index_select(1, rows).contiguous()
        kept += q.numel()
        tiles.append((q, None if rows.numel() == on.shape[1] else rows))
    return tuple(tiles) if kept <= _MAX_TILES_SHARE * drives_int8.numel() else None


def map_for_training(W: torch.Tensor, hw: HardwareConfig, calib_inputs=None, *,
                     layout: TrainingLayout | None = None) -> MappedMatrix:
    """:func:`map_matrix` for a training step: the same plan, computed in ``W``'s dtype.

    ``W`` (in, out) is the current weight matrix (float32 or float64; its gradient is not used).
    The tile geometry, the masks and the DAC's conversion of the calibration inputs are taken from
    ``layout`` (:func:`training_layout`; made here when None or made for another shape, hardware or
    calibration set). Per step it runs ``map_matrix``'s own code for the scale (:func:`_linear_scale`,
    float64) and the levels and targets (:func:`_linear_targets`, in ``W``'s dtype), then the ADC full
    scale on the calibration inputs. In float64 the targets and scale are ``map_matrix``'s bit for
    bit; in float32 they agree up to float32 rounding (a weight within float32 rounding of a half
    level may take the other level). The full scale is the product of whole DAC steps and whole
    levels, exact (an int8 product), times one float64 factor: ``map_matrix``'s float64 product of
    drive fractions and conductance differences agrees with it to float64 rounding, not bit for bit
    (``(g_min + l+ step) - (g_min + l- step)`` is not ``(l+ - l-) step`` in floating point), so the two
    calibrations stay two computations of one quantity.

    The level indices are left out (``level_pos = level_neg = None``) unless the programming noise
    depends on them (``device.prog_sigma_table``): a training plan is programmed once and dropped.

    Falls back to ``map_matrix(W.double(), hw, calib_inputs)`` when :func:`training_supported` is
    False (IR-drop-aware targets, wires, bit slicing).
    """
    if not isinstance(W, torch.Tensor) or W.ndim != 2 or W.dtype not in (torch.float32, torch.float64):
        raise TypeError("W: expected a float32 or float64 torch tensor (in, out)")
    if not training_supported(hw):
        return map_matrix(W.detach().to(torch.float64), hw, calib_inputs=calib_inputs)
    W = W.detach()
    if layout is None or not layout.matches(W.shape, W.dtype, W.device, hw, calib_inputs):
        layout = training_layout(tuple(W.shape), hw, calib_inputs, dtype=W.dtype, device=W.device)
    L = layout
    n, m = L.shape
    R, Cw, nrt, nct = L.tile_rows, L.tile_cols, L.n_row_tiles, L.n_col_tiles
    m_pad = nct * Cw
    dev = hw.device
    dt = W.dtype
    cval = None
    if hw.mapping.scale == "matrix":       # one number (checks W is finite)
        cval = _matrix_scale(W.t() if not W.is_contiguous() and W.t().is_contiguous() else W, _window(hw))
        scale = torch.full((nrt, m_pad), cval, dtype=torch.float64, device=W.device)
    else:
        scale = _linear_scale(W, hw, m_pad).unsqueeze(0).expand(nrt, m_pad).clone()    # (checks W is finite)
    levels = dev.levels
    # map_matrix's core in W's dtype; the level indices only where the programming noise needs them
    gp, gn, lp, ln, d = _linear_targets(W, hw, scale[0], (nrt, R, m_pad), dt,
                                        levels=dev.prog_sigma_table is not None, c_value=cval)
    if gn is None:     # offset: the layout's reference columns
        gn = L.g_ref
        if lp is not None:
            ln = level_index(torch.full_like(L.g_ref, (dev.g_min + dev.g_max) / 2, dtype=torch.float64), dev)
    mapped = MappedMatrix(hw=hw, in_features=n, out_features=m, tile_rows=R, tile_cols=Cw, n_row_tiles=nrt,
                          n_col_tiles=nct, scale=scale, g_pos=gp, g_neg=gn, level_pos=lp, level_neg=ln,
                          mask_pos=L.mask_pos, mask_neg=L.mask_neg, full_scale=None,
                          info={"method": "linear", "training": True, "rows_share_scale": True})
    if hw.adc.fs_mode == "calibrated":
        k = hw.array.r_tia * hw.array.v_read
        if d is not None:
            fs = _level_max(L, d, levels) if hw.adc.calib_quantile >= 1.0 else None
            if fs is not None:                                      # max |whole steps times whole levels|
                fs = fs.to(dt)
            else:
                v = _level_products(L, d, levels)                   # whole steps times whole levels
                v.abs_()
                if hw.adc.calib_quantile >= 1.0:
                    fs = v.amax(dim=1).to(dt)
                else:
                    v = fs = v.to(dt)
            factor = k * L.drive_unit * dev.level_step
        else:
            v = torch.matmul(L.drives, mapped.effective_difference()).abs_()
            fs = v.amax(dim=1) if hw.adc.calib_quantile >= 1.0 else v
            factor = k * L.drive_unit
        if hw.adc.calib_quantile >= 1.0 and hw.adc.granularity == "array":    # as _reduce_full_scale
            fs = _per_array(fs.mul_(factor), mapped)
            if not float(fs.amin()) > 0:
                fs = _positive(fs)
        elif hw.adc.calib_quantile >= 1.0:
            fs = _reduce_full_scale(fs.mul_(factor), None, mapped)
        else:
            fs = _reduce_full_scale(None, v.mul_(factor), mapped)
    else:
        fs = _full_scale(mapped, None, 0)
    return dataclasses.replace(mapped, full_scale=fs)


#: torch's int8 matrix product (int32 results), when this torch has it
_INT_MM = getattr(torch, "_int_mm", None)


def _level_products(L: TrainingLayout, d: torch.Tensor, levels: int) -> torch.Tensor:
    """The calibration drives times the level differences ``d`` (nrt, R, m_pad), per row tile:
    integers, exact (int8 products into int32 when the DAC steps and levels fit in int8, else in
    ``d``'s dtype, exact below 2**24)."""
    if L.drives_int8 is not None and levels <= 128:
        try:
            d8 = d.to(torch.int8)
            q = L.drives_int8
            v = torch.empty((q.shape[0], q.shape[1], d.shape[2]), dtype=torch.int32, device=d.device)
            for qr, dr, vr in zip(L.drives_int8_tiles, d8.unbind(0), v.unbind(0)):
                _INT_MM(qr, dr, out=vr)
            return v
        except RuntimeError:      # a torch without a CPU kernel for these shapes: the float product
            pass
    return torch.matmul(L.drives, d)


def _level_max(L: TrainingLayout, d: torch.Tensor, levels: int) -> torch.Tensor | None:
    """``max_s |drives_s @ d|`` per row tile and column (nrt, m_pad), int32, exact: per row tile, the int8
    product of the drives that can set the maximum (:func:`_max_tiles`) and the level differences ``d``
    (nrt, R, m_pad) of the rows they drive, then its largest absolute value over the samples, while
    the tile's products are in cache (the values of ``_level_products(...).abs_().amax(dim=1)``). None
    when the int8 product is not available (the caller takes the float product)."""
    if L.calib_tiles is None or levels > 128:
        return None
    nrt, _, op = d.shape
    fs = torch.zeros((nrt, op), dtype=torch.int32, device=d.device)
    most = max((t[0].shape[0] for t in L.calib_tiles if t is not None), default=0)
    buf = torch.empty(most * op, dtype=torch.int32, device=d.device)
    d8 = d.to(torch.int8)
    try:
        for tile, dt8, f in zip(L.calib_tiles, d8.unbind(0), fs.unbind(0)):
            if tile is None:            # no sample drives this tile: every product is 0
                continue
            q, rows = tile
            v = buf[: q.shape[0] * op].view(q.shape[0], op)
            _INT_MM(q, dt8 if rows is None else dt8.index_select(0, rows), out=v)
            torch.amax(v.abs_(), dim=0, out=f)
    except RuntimeError:      # a torch without a CPU kernel for these shapes: the float product
        return None
    return fs


def _zero_padding(g: torch.Tensor, n: int, m: int) -> None:
    """Set the tile-padding entries of ``g`` (..., nrt, R, m_pad) to 0 in place."""
    nrt, R, m_pad = g.shape[-3:]
    if m < m_pad:
        g[..., m:] = 0.0
    if n < nrt * R:
        g.view(-1, nrt * R, m_pad)[:, n:] = 0.0
