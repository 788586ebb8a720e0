"""Circuit-level crossbar: nodal analysis with wire, input and output resistance (paper 002).

Canonical topology (``n`` rows = inputs / word lines, ``m`` columns = outputs / bit lines)::

    v_i --r_in-- R(i,0) --r_wire-- R(i,1) -- ... -- R(i,m-1)          row (word) line i
                   |                 |                  |
                 cell(i,0)        cell(i,1)          cell(i,m-1)        cell between R(i,j), C(i,j)
                   |                 |                  |
                 C(i,0)            C(i,1)             C(i,m-1)          column nodes
    column j: C(0,j) --r_wire-- C(1,j) -- ... -- C(n-1,j) --r_out-- virtual ground (TIA)

The output of column j is the current into the virtual ground, ``I_j = V_C(n-1,j) / r_out``.
The circuit is linear for ideal cells, so ``I_out = v @ G_eff`` with the realized matrix
``G_eff`` (n x m). Options: ``r_wire_col`` (a different segment resistance on the bit lines) and
``drive="both"`` (each word line driven from both ends, each through r_in).

Unknowns are the 2*n*m node voltages (row nodes first, then column nodes, row-major). The
nodal matrix ``Y`` (symmetric positive definite) is factorised once with SuperLU
(:func:`scipy.sparse.linalg.splu`) in a geometric nested-dissection order of the grid with the
n + m terminals (driven row nodes, sensed column nodes) eliminated last (:func:`_nd_order`), so
the trailing block of the factors is the Schur complement of the whole network onto its
terminals. The realized matrix is read from that block without any solve:
``G_eff[i, j] = (Y^-1)[C(n-1, j), R(i, 0)] / (r_in r_out)`` and ``Y^-1`` on the terminals is the
inverse of their Schur complement (cost: one sparse factorisation, ~(nm)^1.5; 512x512 in about
2-4 s on one loaded core, against ~50-80 s for the former n + m solves with SuperLU's COLAMD order).
Every other right-hand side (a batch of inputs, the fields for the gradient) reuses the same
factors, and so does every Newton iteration of the non-linear cells.

Gradient (adjoint): with ``X_i = Y^-1 b_i`` the node voltages for a unit volt on input i and
``Z_j = Y^-1 s_j`` the adjoint field of output j (``s_j`` selects ``V_C(n-1,j)/r_out``),
``G_eff[i,j] = s_j^T Y^-1 b_i``. A cell conductance g_kl enters ``Y`` as the stamp
``g_kl * e e^T`` with ``e = e_R(k,l) - e_C(k,l)``, hence::

    dG_eff[i,j] / dg_kl = -(e^T X_i) (e^T Z_j) = -dX_i[kl] * dZ_j[kl]

(dX = voltage across the cell). For a loss F with upstream gradient ``U = dF/dG_eff``,
``dF/dg_kl = -sum_i dX_i[kl] * (U @ dZ)_i[kl]``: n + m solves and one matrix product.

Non-linear cells (TaOx memristor, optionally with a series access transistor, an extra internal
node per cell) are solved by damped Newton's method on the whole circuit; non-convergence raises
:class:`ConvergenceError`. :func:`to_spice` writes the same circuit as a SPICE netlist and
:func:`run_ngspice` runs it (used by the tests and the benchmark).

Default physical values follow paper 002 Sec. VI: r_wire = 1 Ohm per segment, r_in = r_out =
100 Ohm, memristor range 2 kOhm .. 3 MOhm.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from memcim.config import WiresConfig
from memcim.hardware.cells import Level1NMOS, TaOxMemristor

try:  # SuperLU's multi-RHS solve calls BLAS; threaded BLAS on a loaded machine slows it ~25x
    from threadpoolctl import threadpool_limits as _tpl
except ImportError:  # pragma: no cover
    _tpl = None


_CONTROLLER = None


def single_blas():
    """Context manager limiting BLAS to one thread (a no-op without threadpoolctl). One controller
    is made on first use: ``threadpool_limits`` scans the loaded libraries on every call (~4 ms)."""
    global _CONTROLLER
    if _tpl is None:  # pragma: no cover
        import contextlib
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


class ConvergenceError(ArithmeticError):
    """Newton's method did not converge: the circuit has no trustworthy solution."""


def _check_g(g, name: str = "conductances", *, allow_zero: bool = False) -> np.ndarray:
    g = np.asarray(g, dtype=float)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"{name}: shape {g.shape} is not allowed; must be a non-empty 2-D (rows, cols) array")
    if not np.all(np.isfinite(g)):
        raise ValueError(f"{name}: contains NaN or inf; all conductances must be finite")
    if np.any(g < 0) or (not allow_zero and np.any(g == 0)):
        raise ValueError(f"{name}: minimum {g.min():.3g} S is not allowed; conductances must be "
                         f"{'>=' if allow_zero else '>'} 0 S")
    return g


#: Paper 002, Sec. VI: 1 Ohm wire segments, 100 Ohm input and output resistance (the defaults of
#: :func:`as_wires`; the ``irdrop`` preset carries the same values).
PAPER002_WIRES = {"r_wire": 1.0, "r_in": 100.0, "r_out": 100.0}


def as_wires(w: WiresConfig | None = None, **kw) -> WiresConfig:
    """A :class:`~memcim.config.WiresConfig` with resistances (paper 002's by default).

    ``as_wires()`` gives 1 / 100 / 100 Ohm; ``as_wires(r_wire=2.0)`` changes one value; a
    ``WiresConfig`` passes through. Wires without resistance cannot be solved: ``ValueError``.
    """
    if w is None:
        w = WiresConfig(**{**PAPER002_WIRES, **kw})
    elif kw:
        raise TypeError("wires: give a WiresConfig or keyword resistances, not both")
    if not isinstance(w, WiresConfig):
        raise TypeError(f"wires: expected a WiresConfig, got {type(w).__name__}")
    if not w.enabled:
        raise ValueError("wires: all resistances are 0 Ohm; the circuit solver needs wires.r_wire, wires.r_in "
                         "and wires.r_out > 0")
    return w


def _wire_matrix(n: int, m: int, w: WiresConfig) -> sp.csc_matrix:
    """Nodal matrix of the wires alone (no cells), 2nm x 2nm, CSC."""
    N = n * m
    idx = np.arange(N).reshape(n, m)
    R, C = idx, idx + N
    ra, rb = R[:, :-1].ravel(), R[:, 1:].ravel()
    ca, cb = C[:-1, :].ravel(), C[1:, :].ravel()
    gr, gc = 1.0 / w.r_wire, 1.0 / w.rc
    ii = [ra, rb, ra, rb, ca, cb, ca, cb]
    jj = [ra, rb, rb, ra, ca, cb, cb, ca]
    vv = [np.full(ra.size, gr)] * 2 + [np.full(ra.size, -gr)] * 2 + [np.full(ca.size, gc)] * 2 + \
         [np.full(ca.size, -gc)] * 2
    drv = [R[:, 0]] + ([R[:, -1]] if w.drive == "both" else [])
    for d in drv:
        ii.append(d); jj.append(d); vv.append(np.full(n, 1.0 / w.r_in))
    ii.append(C[-1, :]); jj.append(C[-1, :]); vv.append(np.full(m, 1.0 / w.r_out))
    return sp.csc_matrix((np.concatenate(vv), (np.concatenate(ii), np.concatenate(jj))), shape=(2 * N, 2 * N))


def _cell_stamp(n: int, m: int, g: np.ndarray) -> sp.csc_matrix:
    N = n * m
    a = np.arange(N)
    b = a + N
    gv = g.ravel()
    return sp.csc_matrix((np.concatenate([gv, gv, -gv, -gv]),
                          (np.concatenate([a, b, a, b]), np.concatenate([a, b, b, a]))), shape=(2 * N, 2 * N))


def _nd_order(n: int, m: int, drive: str, internal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fill-reducing elimination order of the crossbar's nodes (geometric nested dissection).

    Node numbering: R(i, j) = i*m + j, C(i, j) = N + i*m + j, internal P(i, j) = 2N + i*m + j
    (N = n*m). The array is cut recursively across its longer side. Between two halves side by
    side only the word-line segments cross, so the column of row nodes R(:, jm) separates them;
    the column nodes C(:, jm) (and P(:, jm)) touch nothing but that separator and the bit line,
    and are eliminated just before it. A cut between rows is the row of column nodes C(im, :)
    likewise. The terminals come last: the driven row nodes (R(i, 0), and R(i, m-1) with
    ``drive="both"``), then the sensed column nodes C(n-1, :). The trailing block of the factors
    is then the Schur complement of the network onto its terminals.
    Returns (order, terminals) with ``terminals`` the node numbers in their trailing order.
    """
    N = n * m
    idx = np.arange(N).reshape(n, m)
    offs = (0, N, 2 * N) if internal else (0, N)
    t_in = idx[:, 0] if drive != "both" or m == 1 else np.concatenate([idx[:, 0], idx[:, -1]])
    terminals = np.concatenate([t_in, N + idx[-1, :]])
    parts: list[np.ndarray] = []

    def rec(i0, i1, j0, j1):
        h, w = i1 - i0, j1 - j0
        if h <= 0 or w <= 0:
            return
        if h * w <= 16 or h < 3 or w < 3:
            # small or thin box: interleave the nodes of each cell (a band along the box)
            blk = idx[i0:i1, j0:j1]
            blk = blk if w >= h else blk.T
            parts.append(np.stack([o + blk for o in offs], axis=-1).ravel())
            return
        if w >= h:
            jm = (j0 + j1) // 2
            rec(i0, i1, j0, jm)
            rec(i0, i1, jm + 1, j1)
            col = idx[i0:i1, jm]
            parts.append(np.concatenate([o + col for o in offs[1:]]))
            parts.append(col)
        else:
            im = (i0 + i1) // 2
            rec(i0, im, j0, j1)
            rec(im + 1, i1, j0, j1)
            row = idx[im, j0:j1]
            parts.append(np.concatenate([o + row for o in offs if o != N]))
            parts.append(N + row)

    rec(0, n, 0, m)
    order = np.concatenate(parts)
    keep = np.ones(len(offs) * N, bool)
    keep[terminals] = False
    order = np.concatenate([order[keep[order]], terminals])
    return order, terminals


@functools.lru_cache(maxsize=16)
def _layout(n: int, m: int, drive: str, internal: bool = False):
    """Cached (order, inverse order, terminals) of :func:`_nd_order` for one array shape."""
    order, terminals = _nd_order(n, m, drive, internal)
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    order.flags.writeable = inv.flags.writeable = terminals.flags.writeable = False
    return order, inv, terminals


@functools.lru_cache(maxsize=16)
def _pattern(n: int, m: int, w: WiresConfig):
    """Cached nodal matrix of the wires in elimination order, with room for the cell stamps:
    (indptr, indices, wire values, positions of the four stamp entries of every cell). A
    crossbar's matrix is then one vector addition (:func:`_permuted_matrix`)."""
    order, inv, _ = _layout(n, m, w.drive)
    N = n * m
    a, b = inv[np.arange(N)], inv[N + np.arange(N)]
    W = _wire_matrix(n, m, w).tocoo()
    rows = np.concatenate([inv[W.row], a, b, a, b])
    cols = np.concatenate([inv[W.col], a, b, b, a])
    # position of every (row, col) pair in the CSC data: sum duplicates by their (col, row) key
    key = cols.astype(np.int64) * (2 * N) + rows
    ukey, where = np.unique(key, return_inverse=True)
    indptr = np.searchsorted(ukey // (2 * N), np.arange(2 * N + 1)).astype(np.int32)
    indices = (ukey % (2 * N)).astype(np.int32)
    base = np.zeros(ukey.size)
    np.add.at(base, where[:W.nnz], W.data)
    pos = where[W.nnz:].reshape(4, N)
    for x in (indptr, indices, base, pos):
        x.flags.writeable = False
    return indptr, indices, base, pos


def _permuted_matrix(g: np.ndarray, w: WiresConfig) -> sp.csc_matrix:
    """Nodal matrix of a crossbar with cells ``g`` (n, m), in the elimination order of :func:`_layout`."""
    n, m = g.shape
    indptr, indices, base, pos = _pattern(n, m, w)
    data = base.copy()
    gv = g.ravel()
    data[pos[0]] += gv
    data[pos[1]] += gv
    data[pos[2]] -= gv
    data[pos[3]] -= gv
    return sp.csc_matrix((data, indices, indptr), shape=(2 * n * m, 2 * n * m))


class _Factor:
    """LU factors of a nodal matrix given in the original node numbering, eliminated in the
    crossbar's nested-dissection order with diagonal pivots (the matrix is symmetric positive
    definite for ideal cells and for the Newton Jacobians of passive cells, so no pivoting is
    needed; SuperLU keeps the given order, ``permc_spec="NATURAL"``). SuperLU's supernode settings
    stay at their defaults: ``relax=64`` corrupted the heap in scipy 1.17 (measured, MALLOC_CHECK_=3)."""

    def __init__(self, Y: sp.spmatrix, layout, *, permuted: bool = False):
        self.order, self.inv, self.terminals = layout
        Yp = Y if permuted else sp.csc_matrix(Y)[self.order][:, self.order]
        with single_blas():
            self.lu = sla.splu(sp.csc_matrix(Yp), permc_spec="NATURAL", diag_pivot_thresh=0.0,
                               options={"SymmetricMode": True})
        self.size = Y.shape[0]

    def solve(self, B: np.ndarray) -> np.ndarray:
        """``Y^-1 B`` for B (nodes,) or (nodes, k), in the original numbering."""
        with single_blas():
            X = self.lu.solve(np.ascontiguousarray(B[self.order]))
        return X[self.inv]

    def terminal_inverse(self) -> np.ndarray:
        """``Y^-1`` restricted to the terminals (their trailing order), from the trailing blocks of
        the factors: ``(L_TT U_TT)^-1`` is the inverse of the terminals' Schur complement. Falls
        back to solves if SuperLU moved a terminal (it does not with the natural order)."""
        t, N = self.terminals.size, self.size
        tail = np.arange(N - t, N)
        lu = self.lu
        if np.array_equal(lu.perm_c[tail], tail) and np.array_equal(lu.perm_r[tail], tail):
            Lb = lu.L[:, N - t:][N - t:].toarray()
            Ub = lu.U[:, N - t:][N - t:].toarray()
            with single_blas():
                return np.linalg.inv(Lb @ Ub)
        B = np.zeros((N, t))  # pragma: no cover - SuperLU reordered the tail
        B[self.terminals, np.arange(t)] = 1.0
        return self.solve(B)[self.terminals]


class Crossbar:
    """A crossbar of ideal (linear) cells, factorised once.

    Parameters
    ----------
    g : cell conductances [S], shape (rows = inputs, cols = outputs), all >= 0 (0 S: no device).
    wires : :class:`~memcim.config.WiresConfig` (or pass ``r_wire``, ``r_in``, ``r_out`` ... as
        keywords; paper 002's values by default, see :func:`as_wires`).

    Examples
    --------
    >>> cb = Crossbar(np.full((4, 3), 1e-5), r_wire=1.0, r_in=100.0, r_out=100.0)
    >>> cb.realized().shape
    (4, 3)
    """

    def __init__(self, g, wires: WiresConfig | None = None, **kw):
        self.g = _check_g(g, allow_zero=True)
        self.wires = as_wires(wires, **kw)
        self.n, self.m = self.g.shape
        self.N = self.n * self.m
        self.factor = _Factor(_permuted_matrix(self.g, self.wires), _layout(self.n, self.m, self.wires.drive),
                              permuted=True)

    # ---- right-hand sides -------------------------------------------------------------------
    def _rhs(self, v: np.ndarray) -> np.ndarray:
        """RHS (2nm, batch) for input voltages v (batch, n)."""
        B = np.zeros((2 * self.N, v.shape[0]))
        rows0 = np.arange(self.n) * self.m
        B[rows0, :] = v.T / self.wires.r_in
        if self.wires.drive == "both":
            B[rows0 + self.m - 1, :] += v.T / self.wires.r_in
        return B

    def _check_v(self, v) -> tuple[np.ndarray, bool]:
        v = np.asarray(v, dtype=float)
        single = v.ndim == 1
        v2 = v[None, :] if single else v
        if v2.ndim != 2 or v2.shape[1] != self.n:
            raise ValueError(f"inputs: shape {v.shape} does not match the crossbar; expected (batch, {self.n}) "
                             f"or ({self.n},)")
        if not np.all(np.isfinite(v2)):
            raise ValueError("inputs: contains NaN or inf")
        return v2, single

    def node_voltages(self, v) -> np.ndarray:
        """Node voltages [V] for inputs ``v`` (batch, n): returns (batch, 2, n, m) = (row, column) nodes."""
        v2, _ = self._check_v(v)
        x = self.factor.solve(self._rhs(v2))
        return x.T.reshape(v2.shape[0], 2, self.n, self.m)

    def currents(self, v) -> np.ndarray:
        """Output currents [A] (batch, m) (or (m,) for a single input vector)."""
        v2, single = self._check_v(v)
        V = self.node_voltages(v2)
        out = V[:, 1, -1, :] / self.wires.r_out
        return out[0] if single else out

    def adjoint_fields(self) -> np.ndarray:
        """Z: (m, 2, n, m) node fields of the adjoint problems, ``Z_j = Y^-1 e_C(n-1,j) / r_out``."""
        if getattr(self, "_Z", None) is not None:
            return self._Z
        S = np.zeros((2 * self.N, self.m))
        S[self.N + (self.n - 1) * self.m + np.arange(self.m), np.arange(self.m)] = 1.0 / self.wires.r_out
        self._Z = self.factor.solve(S).T.reshape(self.m, 2, self.n, self.m)
        return self._Z

    def _terminal_inverse(self) -> np.ndarray:
        if getattr(self, "_Ti", None) is None:
            self._Ti = self.factor.terminal_inverse()
        return self._Ti

    def realized(self) -> np.ndarray:
        """Realized matrix G_eff [S], shape (n, m), with ``I_out = v @ G_eff``.

        ``G_eff[i, j] = (Y^-1)[C(n-1, j), R(i, 0)] / (r_in r_out)``: an entry of the inverse between
        two terminals, read from the trailing block of the factors (no solve).
        """
        if getattr(self, "_G", None) is None:
            Ti = self._terminal_inverse()
            n, w = self.n, self.wires
            k = Ti.shape[0] - self.m                        # input terminals: n, or 2n for drive="both"
            G = Ti[:k, k:] / (w.r_in * w.r_out)
            self._G = G[:n] + G[n:] if k > n else G
        return self._G

    def _march(self) -> tuple[np.ndarray, np.ndarray]:
        """Node voltages of the n unit-input problems and the m adjoint problems, by marching.

        Returns ``(V_R - V_C, V_C)``, each (n, m, n + m) (node-major): excitation e < n is 1 V on input
        e (the field X_e of :meth:`node_voltages`), excitation n + j the adjoint source
        ``1 / r_out`` at output j (the field Z_j of :meth:`adjoint_fields`).

        The terminal voltages of every excitation are columns of the terminals' inverse Schur
        complement (:meth:`_Factor.terminal_inverse`). From them the interior follows row by row
        from the sensing end: row n-1's word line is a tridiagonal boundary-value problem once its
        column nodes (terminals) and its driven node are known; Kirchhoff's current law at its
        column nodes then gives the bit-line currents into the row above and, through r_wire,
        that row's column voltages, and so on up to row 0. The bit lines' open top end (no current
        above row 0) is not imposed, so its residual measures the accumulated rounding (the march
        grows errors by about ``exp(n sqrt(r_wire g))``, ~10 at 128 rows); above 1e-9 of the
        current scale the fields are solved with the factors instead. Cost O((n + m) n m) plus n
        tridiagonal solves with n + m right-hand sides, against n + m sparse solves.
        """
        if getattr(self, "_fields", None) is not None:
            return self._fields
        n, m, w = self.n, self.m, self.wires
        Ti = self._terminal_inverse()
        t = Ti.shape[0]
        k = t - m
        E = n + m
        Bt = np.zeros((t, E))                                # injected terminal currents per excitation
        Bt[np.arange(n), np.arange(n)] = 1.0 / w.r_in
        if k > n:
            Bt[n + np.arange(n), np.arange(n)] = 1.0 / w.r_in
        Bt[k + np.arange(m), n + np.arange(m)] = 1.0 / w.r_out
        with single_blas():
            VT = Ti @ Bt                                     # (t, E) terminal voltages
        D = np.empty((n, m, E))                              # cell voltages V_R - V_C, node-major
        VC = np.empty((n, m, E))
        gr, gc = 1.0 / w.r_wire, 1.0 / w.rc
        both = k > n and m > 1
        lo, hi = 1, (m - 1 if both else m)                   # unknown row nodes: R(i, lo:hi)
        u = np.arange(lo, hi)
        off = np.full(max(u.size - 1, 0), -gr)
        wire_diag = gr * np.where(u == m - 1, 1.0, 2.0)
        vc = VT[k:].copy()                                   # (m, E) column nodes of the current row
        down = vc / w.r_out                                  # current leaving each column node downwards
        down[:, n:] -= np.eye(m) / w.r_out                   # ... minus the adjoint source injected there
        scale = max(np.abs(down).max(), 1e-300)
        from scipy.linalg.lapack import dgtsv

        vr = np.empty((m, E))
        for i in range(n - 1, -1, -1):
            gi = self.g[i]
            VC[i] = vc
            vr[0] = VT[i]
            if both:
                vr[m - 1] = VT[n + i]
            if u.size:
                rhs = gi[u][:, None] * vc[u]
                rhs[0] += gr * vr[0]
                if both:
                    rhs[-1] += gr * vr[m - 1]
                diag = gi[u] + wire_diag
                vr[lo:hi] = dgtsv(off, diag, off, rhs, overwrite_b=1)[3] if u.size > 1 else rhs / diag[:, None]
            np.subtract(vr, vc, out=D[i])
            above = down - gi[:, None] * D[i]                # current arriving from the node above
            if i > 0:
                vc = vc + above / gc
                down = above
        resid = np.abs(above).max() / scale                  # open top end: should be 0
        if not np.isfinite(resid) or resid > 1e-9:
            X = self.node_voltages(np.eye(n))
            Z = self.adjoint_fields()
            VC = np.ascontiguousarray(np.concatenate([X[:, 1], Z[:, 1]]).transpose(1, 2, 0))
            D = np.concatenate([X[:, 0], Z[:, 0]]).transpose(1, 2, 0) - VC
        self._fields = (D, VC)
        return self._fields

    def terminal_fields(self) -> tuple[np.ndarray, np.ndarray]:
        """``(V_R, V_C)``, each (n + m, n, m): the node voltages of the n unit-input problems (the
        fields of :meth:`node_voltages`) then of the m adjoint problems (:meth:`adjoint_fields`),
        computed by :meth:`_march`."""
        D, VC = self._march()
        return (D + VC).transpose(2, 0, 1), VC.transpose(2, 0, 1)

    def realized_and_grad(self, U: np.ndarray | None = None):
        """G_eff and, for upstream gradient ``U = dF/dG_eff`` (n, m), ``dF/dg`` (n, m) by the adjoint.

        Also returns ``d``, the diagonal sensitivities ``dG_eff[k,l]/dg_kl`` (n, m) (negated
        product of the two cell-voltage fields, always >= 0), useful as a preconditioner. The fields come from
        :meth:`_march`.
        """
        G = self.realized()
        n, m = self.n, self.m
        D = self._march()[0].reshape(self.N, n + m)        # cell voltages: unit inputs, then adjoints
        dX, dZ = D[:, :n], D[:, n:]
        ar = np.arange(self.N)
        diag = -(dX[ar, ar // m] * dZ[ar, ar % m]).reshape(n, m)       # dG[k,l]/dg_kl = -dX_k dZ_l >= 0
        if U is None:
            return G, None, diag
        with single_blas():
            grad = -np.einsum("ki,ki->k", dX, dZ @ np.asarray(U, float).T).reshape(n, m)
        return G, grad, diag


def currents_through_source_cells(i_cell: np.ndarray, v: np.ndarray, w: WiresConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row and column node voltages when every cell carries a prescribed current.

    With the cell currents fixed (``i_cell`` (n, m) [A], flowing row -> column) the wires form
    trees fed at one end, so the node voltages follow from cumulative sums (one-end drive only).
    Used by the DPE mapping (Hu et al., DAC 2016). Returns (V_row, V_col), each (n, m).
    """
    if w.drive != "one":
        raise ValueError("drive: the DPE current-source solution needs drive='one'")
    i_cell = np.asarray(i_cell, float)
    # word line i: current entering segment before node j is the sum of cells j..m-1
    tail = np.cumsum(i_cell[:, ::-1], axis=1)[:, ::-1]
    vr = v[:, None] - w.r_in * tail[:, :1] - w.r_wire * np.concatenate(
        [np.zeros((i_cell.shape[0], 1)), np.cumsum(tail[:, 1:], axis=1)], axis=1)
    # bit line j: current in the segment below node i is the sum of cells 0..i
    head = np.cumsum(i_cell, axis=0)
    vlast = w.r_out * head[-1:, :]
    below = np.concatenate([np.cumsum(head[:-1][::-1], axis=0)[::-1], np.zeros((1, i_cell.shape[1]))], axis=0)
    vc = vlast + w.rc * below
    return vr, vc


# ------------------------------------------------------------------------------------------------
# Non-linear cells
# ------------------------------------------------------------------------------------------------
class NonlinearCrossbar:
    """Crossbar of TaOx memristors (state ``s``), optionally each in series with an access NMOS.

    The memristor sits between the row node and the cell's internal node P; the transistor
    (drain/source symmetric, gate at ``transistor.v_gate``) between P and the column node. With
    ``transistor=None`` the memristor connects row and column nodes directly.

    Parameters
    ----------
    states : memristor states s in [0, 1], shape (n, m).
    memristor : :class:`TaOxMemristor`.
    transistor : :class:`Level1NMOS` or None.
    wires : :class:`~memcim.config.WiresConfig` or keywords (see :func:`as_wires`).
    """

    def __init__(self, states, memristor: TaOxMemristor | None = None, transistor: Level1NMOS | None = None,
                 wires: WiresConfig | None = None, **kw):
        s = np.asarray(states, float)
        if s.ndim != 2 or s.size == 0:
            raise ValueError(f"states: shape {s.shape} is not allowed; must be a non-empty 2-D array")
        if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
            raise ValueError("states: memristor states must be finite and within [0, 1]")
        self.s = s
        self.mem = memristor or TaOxMemristor()
        self.tr = transistor
        self.wires = as_wires(wires, **kw)
        self.n, self.m = s.shape
        self.N = self.n * self.m
        nn = 3 * self.N if self.tr is not None else 2 * self.N
        W = _wire_matrix(self.n, self.m, self.wires)
        self.W = sp.block_diag([W, sp.csc_matrix((nn - 2 * self.N, nn - 2 * self.N))]).tocsc() \
            if self.tr is not None else W
        self.nn = nn

    def _residual_jac(self, x, b):
        N = self.N
        R, C = x[:N], x[N:2 * N]
        P = x[2 * N:] if self.tr is not None else C
        s = self.s.ravel()
        vm = R - P
        im = self.mem.current(vm, s)
        gm = self.mem.didv(vm, s)
        F = self.W @ x - b
        a = np.arange(N)
        if self.tr is None:
            F[:N] += im
            F[N:] -= im
            J = self.W + _cell_stamp(self.n, self.m, gm.reshape(self.n, self.m))
            return F, J.tocsc()
        it, ga, gb = self.tr.current(P, C)
        p = a + 2 * N
        c = a + N
        F[:N] += im
        F[2 * N:] += -im + it
        F[N:2 * N] -= it
        rows = np.concatenate([a, a, p, p, p, p, c, c])
        cols = np.concatenate([a, p, a, p, p, c, p, c])
        vals = np.concatenate([gm, -gm, -gm, gm, ga, gb, -ga, -gb])
        J = self.W + sp.csc_matrix((vals, (rows, cols)), shape=(self.nn, self.nn))
        return F, J.tocsc()

    def node_voltages(self, v, *, tol: float = 1e-13, max_iter: int = 60, x0=None):
        """Solve the DC operating point for each input vector; returns (batch, nn) node voltages.

        Damped Newton: steps are limited to 0.1 V per node per iteration. Converged when the
        KCL residual is below ``tol`` times the largest source current scale and the update is
        below 1e-12 V. Raises :class:`ConvergenceError` otherwise.
        """
        v = np.asarray(v, float)
        single = v.ndim == 1
        v2 = v[None] if single else v
        if v2.ndim != 2 or v2.shape[1] != self.n:
            raise ValueError(f"inputs: shape {v.shape} does not match the crossbar; expected (batch, {self.n})")
        out = np.empty((v2.shape[0], self.nn))
        layout = _layout(self.n, self.m, self.wires.drive, self.tr is not None)   # the linear solver's order
        scale = np.max(np.abs(v2)) / self.wires.r_in + 1e-30
        for k, vk in enumerate(v2):
            b = np.zeros(self.nn)
            b[np.arange(self.n) * self.m] = vk / self.wires.r_in
            if self.wires.drive == "both":
                b[np.arange(self.n) * self.m + self.m - 1] += vk / self.wires.r_in
            x = np.zeros(self.nn) if x0 is None else np.array(x0, float)
            if x0 is None:  # start: row nodes at their source, column nodes at 0, P in between
                x[:self.N] = np.repeat(vk, self.m)
                if self.tr is not None:
                    x[2 * self.N:] = 0.5 * x[:self.N]
            ok = False
            for it in range(max_iter):
                F, J = self._residual_jac(x, b)
                dx = _Factor(J, layout).solve(-F)
                mx = np.max(np.abs(dx)) if dx.size else 0.0
                if mx > 0.1:
                    dx *= 0.1 / mx
                x += dx
                if mx < 1e-12 * max(1.0, np.max(np.abs(x))) and np.max(np.abs(F)) < tol * scale * 1e3:
                    ok = True
                    break
            if not ok:
                F, _ = self._residual_jac(x, b)
                if np.max(np.abs(F)) < tol * scale:
                    ok = True
            if not ok:
                raise ConvergenceError(f"Newton's method did not converge in {max_iter} iterations for input "
                                       f"vector {k} (max KCL residual {np.max(np.abs(F)):.3g} A)")
            out[k] = x
        return out[0] if single else out

    def currents(self, v, **kw) -> np.ndarray:
        """Output currents [A], (batch, m) or (m,)."""
        x = self.node_voltages(v, **kw)
        C = x[..., self.N:2 * self.N]
        return C[..., (self.n - 1) * self.m:] / self.wires.r_out


def states_from_conductances(g, v_cal, wires: WiresConfig | None = None, memristor: TaOxMemristor | None = None,
                             transistor: Level1NMOS | None = None, *, tol: float = 1e-14, max_iter: int = 100):
    """Convert ideal cell conductances to memristor states (paper 002, Sec. V-D, Eqs. 6-7).

    Solve the ideal-conductor crossbar at the calibration input ``v_cal`` for the row/column
    node voltages and the cell currents ``i_g = g (v_r - v_c)``; then, per cell and
    independently, find the internal node voltage v_p with ``i_t(v_p, v_c) = i_g`` (Newton) and
    the state s with ``i_m(s, v_r - v_p) = i_g`` (the model is linear in s). At ``v_cal`` the
    non-linear crossbar with these states has exactly the ideal node voltages, so it reproduces
    the ideal currents.

    Returns
    -------
    s : states (n, m); values outside [0, 1] mean the conductance is not reachable by the device.
    v_p : internal node voltages (n, m) (equal to v_c when there is no transistor).
    """
    mem = memristor or TaOxMemristor()
    cb = Crossbar(g, wires)
    V = cb.node_voltages(np.asarray(v_cal, float)[None])[0]
    vr, vc = V[0], V[1]
    ig = cb.g * (vr - vc)
    if transistor is None:
        vp = vc
    else:
        vp = vc + ig / transistor.on_conductance(0.0)  # first guess
        for _ in range(max_iter):
            it, ga, _ = transistor.current(vp, vc)
            f = it - ig
            step = -f / np.where(ga > 0, ga, transistor.beta * 1e-3)
            step = np.clip(step, -0.1, 0.1)
            vp = vp + step
            if np.max(np.abs(f)) < tol * max(np.max(np.abs(ig)), 1e-30) and np.max(np.abs(step)) < 1e-13:
                break
        else:
            raise ConvergenceError("per-cell Newton for the access transistor did not converge")
        vp = np.minimum(vp, vr)  # cannot exceed the row node when the cell current is non-negative
    s = mem.state_for_current(vr - vp, ig)
    return s, vp


# ------------------------------------------------------------------------------------------------
# SPICE
# ------------------------------------------------------------------------------------------------
def to_spice(g=None, v=None, wires: WiresConfig | None = None, *, states=None, memristor: TaOxMemristor | None = None,
             transistor: Level1NMOS | None = None, unit_inputs: bool = False, title: str = "memcim crossbar") -> str:
    """SPICE netlist of the crossbar, with a ``.control`` block that prints the output currents.

    Pass either ideal conductances ``g`` or memristor ``states`` (behavioural B-sources with the
    TaOx law, optionally a level-1 NMOS in series). ``v`` (n,) are the input voltages; with
    ``unit_inputs=True`` the control block runs one operating point per unit input (the
    realized matrix). Output current of column j is ``i(vs<j>)`` (the 0 V sense source into
    the virtual ground).
    """
    wires = as_wires(wires)
    if g is not None:
        g = _check_g(g, allow_zero=True)
        n, m = g.shape
    else:
        states = np.asarray(states, float)
        n, m = states.shape
        memristor = memristor or TaOxMemristor()
    v = np.zeros(n) if v is None else np.asarray(v, float)
    L = [f"* {title}"]
    for i in range(n):
        L.append(f"vin{i} in{i} 0 DC {v[i]:.17g}")
        L.append(f"rin{i} in{i} r{i}_0 {wires.r_in:.17g}")
        if wires.drive == "both":
            L.append(f"rinb{i} in{i} r{i}_{m - 1} {wires.r_in:.17g}")
        for j in range(m - 1):
            L.append(f"rwr{i}_{j} r{i}_{j} r{i}_{j + 1} {wires.r_wire:.17g}")
    for j in range(m):
        for i in range(n - 1):
            L.append(f"rwc{i}_{j} c{i}_{j} c{i + 1}_{j} {wires.rc:.17g}")
        L.append(f"rout{j} c{n - 1}_{j} o{j} {wires.r_out:.17g}")
        L.append(f"vs{j} o{j} 0 DC 0")
    if transistor is not None:
        L.append(f"vg g 0 DC {transistor.v_gate:.17g}")
        L.append(f".model nacc nmos level=1 vto={transistor.vt0:.17g} kp={transistor.kp:.17g} lambda=0 gamma=0 "
                 f"is=0 js=0 cbd=0 cbs=0")
    for i in range(n):
        for j in range(m):
            if g is not None:
                if g[i, j] > 0:  # 0 S: no device
                    L.append(f"rc{i}_{j} r{i}_{j} c{i}_{j} {1.0 / g[i, j]:.17g}")
                continue
            top = f"r{i}_{j}"
            bot = f"p{i}_{j}" if transistor is not None else f"c{i}_{j}"
            s = states[i, j]
            vv = f"v({top},{bot})"
            L.append(f"bm{i}_{j} {top} {bot} i={vv}*({memristor.g_m:.17g}*{s:.17g}+{memristor.a:.17g}*"
                     f"exp({memristor.b:.17g}*sqrt(abs({vv})+1e-30))*(1-{s:.17g}))")
            if transistor is not None:
                L.append(f"m{i}_{j} {bot} g c{i}_{j} 0 nacc w={transistor.w_over_l:.17g}u l=1u")
    L.append(".options reltol=1e-12 abstol=1e-20 vntol=1e-15 gmin=1e-30 itl1=500")
    L.append(".control")
    L.append("set numdgt=16")
    pr = "print " + " ".join(f"i(vs{j})" for j in range(m))
    if unit_inputs:
        for k in range(n):
            for i in range(n):
                L.append(f"alter vin{i} dc = {1.0 if i == k else 0.0}")
            L.append("op")
            L.append(pr)
    else:
        L.append("op")
        L.append(pr)
    L.append(".endc")
    L.append(".end")
    return "\n".join(L) + "\n"


def ngspice_available() -> bool:
    return shutil.which("ngspice") is not None


_NUM = re.compile(r"^\s*i\(vs(\d+)\)\s*=\s*([-+0-9.eE]+)\s*$")


def run_ngspice(netlist: str, m: int, timeout: float = 600.0) -> tuple[np.ndarray, float]:
    """Run ``ngspice -b`` on a netlist from :func:`to_spice`; returns (currents (k, m), wall time [s]).

    ``k`` is the number of operating points printed (1, or n for ``unit_inputs=True``).
    """
    exe = shutil.which("ngspice")
    if exe is None:
        raise FileNotFoundError("ngspice: not found on PATH")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "xbar.cir")
        with open(path, "w") as f:
            f.write(netlist)
        t0 = time.perf_counter()
        p = subprocess.run([exe, "-b", path], capture_output=True, text=True, timeout=timeout)
        dt = time.perf_counter() - t0
    vals = []
    for line in p.stdout.splitlines():
        mm = _NUM.match(line)
        if mm:
            vals.append((int(mm.group(1)), float(mm.group(2))))
    if not vals or len(vals) % m:
        raise RuntimeError(f"ngspice produced no parsable output (rc={p.returncode}): {p.stderr[-500:]}")
    out = np.array([x for _, x in vals]).reshape(-1, m)
    # ngspice's i(V) is the current flowing into the + terminal through the source
    return out, dt
