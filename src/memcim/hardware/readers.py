"""Array readers: how a programmed tile turns word-line drives into column currents.

Every read of :meth:`memcim.simulate.ProgrammedChip.mvm` goes DAC -> **reader** -> read noise ->
TIA -> ADC -> digital sum; only the reader differs between fidelity levels, the rest is one code
path. The reader is chosen by the hardware description (:attr:`memcim.config.HardwareConfig.reader`):

* **ideal** (ideal wires): ``j = u @ (G+ - G-)``.
* **circuit** (the array has wires): an exact nodal solve of every tile of every chip
  (:mod:`memcim.hardware.circuit`) with its programmed and stuck conductances.

  - Linear cells: each tile's realized matrix ``G_eff`` is solved once per chip and cached, so
    every later read costs a matrix product: ``j = u @ (G_eff(G+) - G_eff(G-))``.
  - Non-linear cells (``cell.model = "taox"`` or ``"taox_1t1r"``): each programmed conductance
    is the cell's conductance at the calibration read (every word line at ``v_read``, paper 002
    Sec. V-D), which fixes its state; ``cell.solve = "newton"`` then solves the non-linear tile
    by damped Newton for every input vector (exact; a non-converging solve raises
    :class:`~memcim.hardware.circuit.ConvergenceError`), ``"linearized"`` uses the linear circuit
    of the calibration-read conductances (exact at the calibration input, see docs/circuit.md for
    its measured error elsewhere).

Physical layout of one tile (the tile sits in the corner of its array next to the drivers and the
TIAs, so unused rows and columns carry no current): ``pair = "arrays"``: G+ and G- are two arrays
of ``rows x cols``; ``pair = "columns"``: one array with G+ and G- on adjacent columns
(``[G+_0, G-_0, G+_1, G-_1, ...]``); offset: the weight columns, then the reference column.
Thermal and shot noise use the programmed conductances and the ideal drive (the small IR-drop
attenuation of the noise itself is neglected).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from memcim.hardware.cells import cell_devices
from memcim.hardware.circuit import Crossbar, NonlinearCrossbar, states_from_conductances
from memcim.memo import Memo, digest


def _physical(plan, gp: np.ndarray, gn: np.ndarray, r: int, k: int):
    """The physical arrays of tile (r, k) as numpy conductances and a function that turns their
    output currents (or realized matrices) into the tile's differential outputs."""
    rows, cols = plan.used(r, k)
    c0 = k * plan.tile_cols
    p = gp[r, :rows, c0:c0 + cols]
    mp = plan.hw.mapping
    if mp.scheme == "offset":
        ref = gn[r, :rows, k:k + 1]
        arrays = [np.concatenate([p, ref], axis=1)]

        def diff(outs):
            return outs[0][..., :cols] - outs[0][..., cols:cols + 1]
    elif mp.pair == "arrays":
        arrays = [p, gn[r, :rows, c0:c0 + cols]]

        def diff(outs):
            return outs[0] - outs[1]
    else:
        a = np.empty((rows, 2 * cols))
        a[:, 0::2] = p
        a[:, 1::2] = gn[r, :rows, c0:c0 + cols]
        arrays = [a]

        def diff(outs):
            return outs[0][..., 0::2] - outs[0][..., 1::2]
    return rows, cols, arrays, diff


def _tiles(plan, g_pos: torch.Tensor, g_neg: torch.Tensor):
    """Every used tile of every chip: (chip, r, k, rows, cols, physical arrays, diff); the
    conductances as float64 numpy arrays with one leading chip dimension."""
    gp = g_pos.detach().to(torch.float64).cpu().reshape(-1, *g_pos.shape[-3:]).numpy()
    gn = g_neg.detach().to(torch.float64).cpu().reshape(-1, *g_neg.shape[-3:]).numpy()
    for t in range(gp.shape[0]):
        for r in range(plan.n_row_tiles):
            for k in range(plan.n_col_tiles):
                rows, cols, arrays, diff = _physical(plan, gp[t], gn[t], r, k)
                if rows and cols:
                    yield t, r, k, rows, cols, arrays, diff


#: solved tiles: the plan's targets and a noise-free chip are the same conductances, solved once
_SOLVED = Memo(16)


def circuit_difference(plan, g_pos: torch.Tensor, g_neg: torch.Tensor) -> torch.Tensor:
    """``G_d`` per tile from the linear nodal solve: ``j = u @ G_d`` [S], same shape as ``g_pos``.

    ``g_pos``/``g_neg`` have the plan's layout, with any leading (chip) dimensions. Cells are
    linear (or non-linear ones linearised at the calibration read, where their conductance is the
    programmed one). Identical conductances are solved once (:mod:`memcim.memo`).
    """
    mp = plan.hw.mapping
    key = digest(g_pos, g_neg, plan.hw.wires, mp.scheme, mp.pair, plan.tile_rows, plan.tile_cols,
                 plan.in_features, plan.out_features)
    out = _SOLVED.get(key, lambda: _solve_tiles(plan, g_pos, g_neg))
    return out.to(device=g_pos.device, dtype=g_pos.dtype)


def _solve_tiles(plan, g_pos: torch.Tensor, g_neg: torch.Tensor) -> torch.Tensor:
    w = plan.hw.wires
    lead = g_pos.shape[:-3]
    out = np.zeros((int(np.prod(lead, dtype=np.int64)), *g_pos.shape[-3:]))
    for t, r, k, rows, cols, arrays, diff in _tiles(plan, g_pos, g_neg):
        c0 = k * plan.tile_cols
        out[t, r, :rows, c0:c0 + cols] = diff([Crossbar(a, w).realized() for a in arrays])
    return torch.from_numpy(out).reshape(*lead, *g_pos.shape[-3:])


class NewtonTiles:
    """Non-linear tiles of every chip, solved by Newton's method on each read.

    Built once per chip: each programmed conductance becomes a memristor state through the
    calibration read (every word line at ``v_read``, paper 002 Sec. V-D). States outside [0, 1]
    (a conductance the device cannot reach at that voltage) are clipped, with a warning.
    """

    def __init__(self, plan, g_pos: torch.Tensor, g_neg: torch.Tensor):
        hw = plan.hw
        self.plan = plan
        self.mem, self.tr = cell_devices(hw.cell)
        self.tiles = {}
        bad = total = 0
        for t, r, k, rows, cols, arrays, diff in _tiles(plan, g_pos, g_neg):
            xbars = []
            for a in arrays:
                s, _ = states_from_conductances(np.maximum(a, 1e-30), np.full(rows, hw.array.v_read),
                                                hw.wires, self.mem, self.tr)
                ok = np.isfinite(s) & (s >= 0) & (s <= 1)
                bad += int((~ok).sum())
                total += s.size
                xbars.append(NonlinearCrossbar(np.clip(np.nan_to_num(s), 0.0, 1.0), self.mem, self.tr, hw.wires))
            self.tiles[(t, r, k)] = (rows, cols, xbars, diff)
        self.states_out_of_range = bad / max(total, 1)
        if bad:
            warnings.warn(f"cell: {bad} of {total} programmed conductances ({100 * bad / total:.2g} %) are outside "
                          f"what the {hw.cell.model} cell reaches at v_read = {hw.array.v_read} V; their states "
                          "were clipped to [0, 1]", RuntimeWarning, stacklevel=3)

    def currents(self, ut: torch.Tensor, chips: range) -> torch.Tensor:
        """``j`` [S] (current / v_read) for drives ``ut`` (T or 1, nrt, B, R) of the chips ``chips``."""
        plan = self.plan
        v = plan.hw.array.v_read
        T = len(chips)
        B = ut.shape[-2]
        u = ut.detach().to(torch.float64).cpu().numpy()
        out = np.zeros((T, plan.n_row_tiles, B, plan.out_pad))
        for i, t in enumerate(chips):
            ui = u[i] if u.shape[0] > 1 else u[0]
            for r in range(plan.n_row_tiles):
                for k in range(plan.n_col_tiles):
                    if (t, r, k) not in self.tiles:
                        continue
                    rows, cols, xbars, diff = self.tiles[(t, r, k)]
                    V = ui[r, :, :rows] * v
                    c0 = k * plan.tile_cols
                    out[i, r, :, c0:c0 + cols] = diff([xb.currents(V).reshape(B, -1) for xb in xbars]) / v
        return torch.from_numpy(out).to(device=ut.device, dtype=ut.dtype)
