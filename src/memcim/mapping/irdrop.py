"""IR-drop-aware mapping of one array's block onto a differential pair of crossbars (paper 002).

These are the per-array methods behind ``mapping.method`` in
:func:`memcim.mapping.crossbar.map_matrix`, which cuts a matrix into tiles and calls
:func:`map_block` on each; use ``map_matrix(W, hw)`` rather than calling them directly.

A block W (rows x cols) is realized as ``W^r = (G_eff(g_pos) - G_eff(g_neg)) / alpha`` where
``G_eff`` is the realized matrix of a crossbar with wire resistance (:mod:`memcim.hardware.circuit`),
``g_pos, g_neg`` are cell conductances in [g_min, g_max] rounded to the device's levels
(:func:`memcim.hardware.device.quantize_array`), and ``alpha`` [S per unit weight] is the scale
realized by the periphery.

Methods (:data:`METHODS`):

``linear``
    The ideal mapping that ignores the wires: ``g = g_min + c * max(+-W, 0)``,
    ``c = (g_max - g_min) / max|W|``, ``alpha = c``.
``dpe``
    Hu et al., DAC 2016: program each device so that, for the calibration input ``v_cal``, it
    carries the current it would carry without wires. With the cell currents fixed, the wire
    network's node voltages follow in closed form, giving ``g = i_ideal / (v_r - v_c)``; the
    conductance range used is shrunk (bisection) until every g lies in [g_min, g_max].
``representable``
    Paper 002, Sec. V: (1) search alpha balancing value-range against precision errors: the
    paper's multiplicative update ``alpha *= 1 -+ beta`` from the DPE scale, each candidate
    warm-started from the best tuned plan rescaled to it (continuation), beta = 0.1 growing 1.5x
    while the direction holds; (2) projected, diagonally preconditioned gradient descent on
    ``||W - W^r||_F^2`` with the exact gradient from the adjoint of the nodal system;
    (3) calibration-vector correction of the target so that ``(W - W^r)^T v_cal ~ 0``;
    (4) rounding to the device levels (``mapping.rounding``, :data:`ROUNDINGS`): by default
    :func:`round_pairs`, the two devices of every pair rounded jointly (both may sit above g_min: under
    IR drop their unequal sensitivities make the pair a vernier finer than one device's levels), with
    the error feedback over the rows of optimal-brain quantisation / GPTQ for the second moment of
    uniform [0, v_cal] inputs (or of the given inputs), repeated against the exact circuit;
    ``"aware"`` is the one-device rounding with the same feedback (:func:`round_to_levels`), kept
    only when the exact circuit confirms it; ``"plain"`` the nearest level.
    Beyond the paper: pass ``second_moment`` = E[x^T x] of the inputs to minimise the expected
    output error ``tr(E^T M E)`` instead of the Frobenius norm (tuning and rounding).

Where the error of trained layers comes from (measured, blocks of the reference MLPs and the small CNN,
``bench/bench_irdrop.py``, results in ``bench/results/irdrop.json``): their weights are heavy-tailed
(max/rms ~ 5), yet the IR drop is not small: DPE keeps every device in range only at 0.35-0.6x the
full-range scale (0.5-0.7x on the CNN's small layers, through r_in / r_out), and its error is almost
all IR drop (its unrounded plan has the same error). After tuning, the continuous plan of
``representable`` is 15-300x below DPE; what remains is the 8-bit rounding. One device per weight
(``"aware"``) leaves 0.3-0.6x DPE's Frobenius error; the pair rounding about halves that: DPE /
representable 3.2-7.0x on 64x64 blocks, 3.5-9.1x on 128x128 blocks (``"aware"``: 1.7-3.5x), i.e. as
low as or lower than the pure quantization floor of the same levels on ideal wires (nearest level, best
scale: 3.2-7.3x on 64x64). The sum of the programmed conductances (read power in the array) is
0.9-1.3x DPE's. Scales above DPE's (clipping the largest weights for finer levels) lose: the
value-range errors rise steeply (500-300 fc1 64x64, fixed alpha: Frobenius 0.039 at 1.0x DPE's scale,
0.105 at 1.1x, 0.187 at 1.2x; ``bench/bench_irdrop.py --scale-check``). Error feedback across columns cannot help the outputs (output j
sees column j's errors only); it runs over the rows.

What bounds one scale, and the per-column scale (``column_scale=True`` of :func:`map_block`,
:func:`map_dpe`, :func:`map_representable`). The bench's floor is taken at the full-range scale, which the
wires do not allow (the figures in this paragraph up to the per-column scale come from one-off diagnosis
scripts, not from a command in the repository): on the 500-300 fc1 128x128 block at a random offset DPE fits only at 0.28x the full
range, and tuned plans above ~1.1x DPE's scale cannot be reached (fixed alpha, unrounded, 40 tuning
iterations: Frobenius 0.225 at 1.2x, 0.68 at 1.5x, most of it in the column with the largest currents,
devices at g_max), while more tuning, more pair-rounding passes or common levels, or a Frobenius
objective for the rounding change the rounded result by < 3 % (0.081-0.084). At the scale it has, the
pair rounding is already 2.7x below what one device per weight can reach (the one-device floor at that
alpha: 0.225 against 0.084): without IR drop there is no vernier (both devices move the weight by the
same level step), so the one-scale floor on ideal wires is a true limit for these levels, and under IR
drop the vernier is what gets below it. A scale per output column (a digital gain per column after the
ADC) moves the floor itself: every column not holding the limiting weight gets finer levels. DPE with
per-column ranges is worse than with one on every block but the CNN's 9x2 conv1 (its columns draw more
current: 1.3-4.4x one-scale DPE's Frobenius error; conv1: 0.59x), so the ratios are against one-scale
DPE, and the bench also gives them against the better DPE of the two (``dpe/best``). ``representable`` with
``column_scale`` (``mapping.scale = "column"`` through ``map_matrix``) maps with one scale as the default
does, then builds a per-column plan from it without a search of its own (DPE's per-column scales times
the factor of DPE's scale the one-scale search chose, one beta step further inside; one tuning iteration,
the calibration correction, the pair rounding: :data:`COLUMN_PASS`); both plans are also candidates with
every column's digital gain refitted to the exact realized matrix (least squares for the inputs' second
moment, free: the gain divides the output after the ADC), and the one with the lowest exact objective is
kept among those whose predicted max output error (:func:`max_output_proxy`: |mean| + 3 std of every
output's error for uniform inputs on [0, v_cal]) is not above the one-scale plan's. The
former version ran two complete mappings (the per-column one with its own search: 2x the time, 7.4 s at
128x128) and kept the lower Frobenius error, which raised the max output error on 7 of 24 MLP blocks
(bench/results/irdrop.json of commit 854a9a4: the 128x128 fc1 centre blocks 4.6x -> 3.0x and 7.7x ->
3.5x against DPE). The CNN's small layers (conv1, 9x2: per-column floor 1.2x DPE) carry little IR drop:
there DPE is at the floor and the levels are the limit. Figures: ``bench/bench_irdrop.py``
(``bench/results/irdrop.json``, summary keys ``goals/...`` and ``column/...``; docs/circuit.md).

Conversion of the ideal-conductor plan to memristor states for non-linear cells is
:func:`memcim.hardware.circuit.states_from_conductances` (paper Sec. V-D); the circuit reader of
:mod:`memcim.simulate` applies it to every programmed chip.
"""
from __future__ import annotations

import numpy as np

from memcim.config import MAPPING_ROUNDINGS, DeviceConfig, MappingConfig, WiresConfig
from memcim.hardware.circuit import Crossbar, currents_through_source_cells
from memcim.hardware.device import quantize_array

METHODS = ("linear", "dpe", "representable")
#: how ``representable`` puts its tuned plan on the device's levels (``mapping.rounding``)
ROUNDINGS = MAPPING_ROUNDINGS
#: settings of :func:`round_pairs` used by ``representable`` (measured on 64 x 64 blocks of the reference
#: MLPs, ``bench/bench_irdrop.py``)
PAIRS = {"common": 8, "cost": 0.02, "hyst": 0.05, "iters": 8, "refresh": 1}
#: ``column_scale``: the per-column plan's scale is DPE's per-column scales times ``factor`` times the factor of
#: DPE's one scale that the one-scale search chose (one step of the search's beta further inside: per-column
#: ranges draw more current), then ``final_iters`` tuning iterations (measured on the bench's 64x64 MLP blocks:
#: a start from the rescaled one-scale plan without tuning, 6 instead of 8 pair-rounding passes, or no
#: refresh of the sensitivities in the rounding lost Frobenius error; 2 or 4 iterations gained nothing
#: measurable; factor 1.0 lost up to 5x on some blocks); ``dpe_iters``: bisection steps of its DPE scales;
#: ``aware``: the one-device rounding as a candidate (the one-scale plan keeps it; one circuit evaluation)
COLUMN_PASS = {"factor": 0.9, "final_iters": 1, "dpe_iters": 30, "aware": False}


def error_report(W, Wr, Wr_unquantized=None, inputs=None, second_moment=None) -> dict:
    """Errors in the paper's terms.

    ``total_error`` = ||W - W^r||_F^2 (quantized plan), ``value_range_error`` = the same without
    quantization, ``precision_error`` = their difference; ``frobenius_error`` = ||W - W^r||_F,
    ``relative_error`` = that / ||W||_F; ``max_output_error`` = max over inputs x and outputs of
    |x (W^r - W)| divided by max |x W| (inputs default: 200 uniform [0, 1] vectors, seed 0).
    """
    W = np.asarray(W, float)
    E = Wr - W
    tot = float(np.sum(E ** 2))
    out = {"total_error": tot, "frobenius_error": float(np.sqrt(tot)),
           "relative_error": float(np.sqrt(tot) / max(np.linalg.norm(W), 1e-300))}
    if Wr_unquantized is not None:
        ve = float(np.sum((Wr_unquantized - W) ** 2))
        out["value_range_error"] = ve
        out["precision_error"] = tot - ve
    x = np.random.default_rng(0).uniform(0, 1, (200, W.shape[0])) if inputs is None else np.asarray(inputs, float)
    out["max_output_error"] = float(np.max(np.abs(x @ E)) / max(np.max(np.abs(x @ W)), 1e-300))
    if second_moment is not None:
        out["expected_output_mse"] = float(np.trace(E.T @ second_moment @ E)) / W.shape[1]
    return out


# ------------------------------------------------------------------------------------------------
def _split(W, c, g_min):
    return g_min + c * np.maximum(W, 0), g_min + c * np.maximum(-W, 0)


def map_linear(W, wires: WiresConfig, dev: DeviceConfig):
    """The ideal mapping (ignores the wires); returns (g_pos, g_neg, alpha, info) unquantized."""
    c = (dev.g_max - dev.g_min) / np.max(np.abs(W))
    gp, gn = _split(W, c, dev.g_min)
    return gp, gn, c, {}


def _dpe_g(W, c, g_min, v_cal, wires):
    gp_i, gn_i = _split(W, c, g_min)
    res = []
    for gi in (gp_i, gn_i):
        I = gi * v_cal[:, None]
        vr, vc = currents_through_source_cells(I, v_cal, wires)
        dv = vr - vc
        with np.errstate(divide="ignore", invalid="ignore"):
            res.append((np.where(dv > 0, I / dv, np.inf)))
    return res


def map_dpe(W, wires: WiresConfig, dev: DeviceConfig, v_cal=None, iters=50, column_scale=False):
    """Hu et al. (DAC 2016) calibration-vector mapping; returns (g_pos, g_neg, alpha, info) unquantized.

    ``column_scale``: one scale per output column (alpha a (cols,) vector, a digital gain per column after
    the ADC): each column's full-range scale ``(g_max - g_min) / max|W[:, j]|`` shrunk by its own
    bisection until its devices lie in [g_min, g_max] (the columns share the row wires, so the bisections
    run together and a common factor then makes every column fit)."""
    g_min, g_max = dev.g_min, dev.g_max
    v_cal = np.ones(W.shape[0]) if v_cal is None else np.asarray(v_cal, float)
    if column_scale:
        cm = np.max(np.abs(W), axis=0)
        c0 = (g_max - g_min) / np.where(cm > 0, cm, np.max(np.abs(W)))
    else:
        c0 = (g_max - g_min) / np.max(np.abs(W))
    fits = lambda c: np.logical_and(*(np.all(g <= g_max, axis=0) for g in _dpe_g(W, c, g_min, v_cal, wires)))
    ok = lambda k: bool(np.all(fits(k * c0)))
    if column_scale:
        lo, hi = np.zeros(W.shape[1]), np.ones(W.shape[1])
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            f = fits(mid * c0)
            lo, hi = np.where(f, mid, lo), np.where(f, hi, mid)
        if np.any(lo > 0):                             # a column that fits at no scale takes the smallest one
            lo = np.where(lo > 0, lo, np.min(lo[lo > 0]))
        c0 = lo * c0                                   # then a common factor (1 unless the coupling broke a fit)
        if not np.any(c0 > 0):
            c0 = (g_max - g_min) / np.max(np.abs(W)) * np.ones(W.shape[1])
    lo, hi = 0.0, 1.0
    if ok(1.0):
        lo = 1.0
    else:
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    if lo == 0.0:
        raise ValueError("dpe: no conductance scale keeps every device within [g_min, g_max]; "
                         "reduce the wire/input/output resistance or the array size")
    gp, gn = _dpe_g(W, lo * c0, g_min, v_cal, wires)
    frac = lo * c0 / ((g_max - g_min) / np.max(np.abs(W))) if column_scale else lo
    return np.clip(gp, g_min, g_max), np.clip(gn, g_min, g_max), lo * c0, {"range_fraction": frac}


# ------------------------------------------------------------------------------------------------
class _Tuner:
    """Projected, diagonally preconditioned gradient descent on tr(E^T M E), E = W^r - T."""

    def __init__(self, wires: WiresConfig, g_min: float, g_max: float, M=None):
        self.w, self.g_min, self.g_max, self.M = wires, g_min, g_max, M
        self.n_evals = 0

    def loss(self, E):
        return float(np.sum(E ** 2)) if self.M is None else float(np.sum(E * (self.M @ E)))

    def evaluate(self, gp, gn, alpha, T):
        cp, cn = Crossbar(gp, self.w), Crossbar(gn, self.w)
        Gp, Gn = cp.realized(), cn.realized()
        self.n_evals += 1
        E = (Gp - Gn) / alpha - T
        return self.loss(E), E, (cp, cn), (Gp, Gn)

    def run(self, gp, gn, alpha, T, iters, state=None):
        """Returns (gp, gn, loss, E, state). ``state`` carries the last evaluation between calls."""
        if state is None:
            state = self.evaluate(gp, gn, alpha, T)
        F, E, (cp, cn), _ = state
        t = 1.0
        for _ in range(iters):
            # Gauss-Newton direction: for an SPD weight M the unconstrained minimiser of
            # tr(E^T M E) is E = 0 whatever M is, so the direction uses U = 2E/alpha (the exact
            # adjoint gradient of ||E||_F^2); acceptance (line search) uses the M-weighted loss.
            U = 2.0 / alpha * E
            _, grp, dp = cp.realized_and_grad(U)
            _, grn, dn = cn.realized_and_grad(-U)
            self.last_d = (dp, dn)
            mdiag = np.ones(T.shape[0])
            fp = ~(((gp <= self.g_min) & (grp > 0)) | ((gp >= self.g_max) & (grp < 0)))
            fn = ~(((gn <= self.g_min) & (grn > 0)) | ((gn >= self.g_max) & (grn < 0)))
            H = 2.0 / alpha ** 2 * mdiag[:, None] * (fp * dp ** 2 + fn * dn ** 2) + 1e-300
            for _ls in range(6):
                gp2 = np.clip(gp - t * grp / H, self.g_min, self.g_max)
                gn2 = np.clip(gn - t * grn / H, self.g_min, self.g_max)
                new = self.evaluate(gp2, gn2, alpha, T)
                if new[0] <= F:
                    break
                t *= 0.5
            else:
                return gp, gn, F, E, state
            gp, gn, state = gp2, gn2, new
            F, E, (cp, cn), _ = state
            t = min(1.0, 2 * t)
        return gp, gn, F, E, state


def uniform_second_moment(v_max) -> np.ndarray:
    """E[x^T x] of inputs drawn independently and uniformly from [0, v_max_i] (paper 002's
    evaluation inputs, Sec. VI): ``v v^T / 4`` off the diagonal, ``v_i^2 / 3`` on it."""
    v = np.asarray(v_max, float)
    M = np.outer(v, v) / 4.0
    M[np.diag_indices_from(M)] = v ** 2 / 3.0
    return M


def round_to_levels(gp, gn, alpha, W, E, sens, dev: DeviceConfig, M, damp: float = 0.01):
    """Round a tuned pair to the device's levels, shaping the rounding error for the inputs.

    Plain rounding leaves each weight within half a level of its tuned value; on a trained layer
    (heavy-tailed weights, small currents, hence little IR drop) that error is most of what is
    left, and DPE carries the same one. Which way each weight rounds is a free choice, so it is
    made to minimise the expected output error ``tr(E^T M E)`` (``M`` = E[x^T x] of the inputs)
    instead: the rows (inputs) are rounded in order and each row's rounding error is fed forward
    onto the rows not yet rounded through the Cholesky factor of ``M^-1`` -- the optimal-brain
    quantisation update (OBQ, Frantar & Alistarh, NeurIPS 2022; GPTQ, Frantar et al., ICLR 2023),
    on the lattice of programmable levels. The effect of a device's level on its weight is
    linearised through the diagonal sensitivity ``dG_eff[i,j]/dg_ij`` (``sens``); the
    cross-coupling through IR drop is left to the exact evaluation that follows. The larger device
    of each pair carries the weight; where the other one rounds to its lowest level, either may
    (a small weight may switch sign to absorb the error fed forward); elsewhere the other device is
    rounded to its nearest level. ``M`` is damped by ``damp`` times its mean diagonal (rows with
    no input power otherwise make it singular).

    Returns the rounded (gp, gn).
    """
    g_min, step, L = dev.g_min, dev.level_step, dev.levels
    qp, qn = quantize_array(gp, dev), quantize_array(gn, dev)
    dp, dn = sens
    act = (gp - g_min) >= (gn - g_min)                      # the device that carries the weight
    # where the other device rounds to its lowest level, either device may carry the weight (a small
    # weight may change sign to absorb the error fed forward); elsewhere only the active one moves
    flip = np.where(act, qn, qp) <= g_min
    up = np.where(act, dp, dn) * step / alpha               # weight change per level, active device
    dn_ = np.where(act, dn, dp) * step / alpha              # ... and the other one (opposite sign)
    sgn = np.where(act, 1.0, -1.0)
    # realized value with the active device at level 0 (the other at its rounded level), linearised
    base = W + E + (dp * (np.where(act, g_min, qp) - gp) - dn * (np.where(act, qn, g_min) - gn)) / alpha
    H = np.asarray(M, float)
    H = H + damp * max(float(np.mean(np.diag(H))), 1e-300) * np.eye(H.shape[0])
    U = np.linalg.cholesky(np.linalg.inv(H)).T              # upper: H^-1 = U^T U
    T = W.copy()                                            # targets, updated as rows are rounded
    lev_a = np.zeros(W.shape)
    lev_o = np.zeros(W.shape)
    up_s = np.where(up > 0, up, 1.0)
    dn_s = np.where(dn_ > 0, dn_, 1.0)
    for i in range(W.shape[0]):
        x = sgn[i] * (T[i] - base[i])                       # wanted change, in the active device's direction
        la = np.clip(np.rint(x / up_s[i]), 0, L - 1)
        lo = np.where(flip[i] & (x < 0), np.clip(np.rint(-x / dn_s[i]), 0, L - 1), 0.0)
        la = np.where(lo > 0, 0.0, la)
        lev_a[i], lev_o[i] = la, lo
        err = (T[i] - (base[i] + sgn[i] * (up[i] * la - dn_[i] * lo))) / U[i, i]
        T[i + 1:] -= np.outer(U[i, i + 1:], err)
    ga = g_min + lev_a * step
    go = np.where(flip, g_min + lev_o * step, np.where(act, qn, qp))
    return np.where(act, ga, go), np.where(act, go, ga)


def _pair_candidates(t, sp, sn, common, levels):
    """Level pairs (kp, kn), each (2 (common + 1), m), for wanted effective levels ``t`` (m,): the
    weight on one device with the other at level c = 0 .. common (the pair's vernier)."""
    c = np.arange(common + 1, dtype=float)[:, None] * np.ones_like(t)
    top = levels - 1
    kp_pos = np.clip(np.rint((t + sn * c) / sp), 0, top)
    kn_neg = np.clip(np.rint((sp * c - t) / sn), 0, top)
    return np.concatenate([kp_pos, c]), np.concatenate([c, kn_neg])


def round_pairs(gp, gn, alpha, W, E, sens, wires: WiresConfig, dev: DeviceConfig, M, *, common: int = 8,
                cost: float = 0.02, hyst: float = 0.05, iters: int = 8, refresh: int = 1, damp: float = 0.01):
    """Round a tuned pair to the device's levels jointly: the differential pair's vernier.

    ``gp, gn``: the tuned (continuous) conductances [S]; ``E``: their exact error ``W^r - W``;
    ``sens``: the diagonal sensitivities ``dG_eff[i,j]/dg_ij`` of each array near that plan.

    Under IR drop a device's level moves its weight by ``s dg / alpha`` with ``s = dG_eff[i,j]/dg_ij``
    (``sens``) below 1 and different in the two arrays of a pair (their currents differ: measured
    ``|s+ - s-|`` 0.07-0.1 on average, up to 0.4, on 64 x 64 blocks of the reference MLPs). Raising both
    devices of a weight by c levels then moves it by ``(s+ - s-) c`` levels: the pairs ``(k + c, c)``
    (``c <= common``) fill the gaps between the levels that one device alone leaves, which is the
    rounding floor the nearest-level and the OBQ rounding (:func:`round_to_levels`) share with DPE.
    Each weight takes the pair with the smallest linearised error plus ``cost`` (in levels) per common
    level (what the extra current costs in read power and IR drop); the rows are taken in order with the
    OBQ / GPTQ error feedback of :func:`round_to_levels` for the second moment ``M``. The common levels
    add current, which changes every weight through the wires, so the rounding is repeated ``iters``
    times against the exact circuit: each pass starts from the exact error of the last one (fresh
    nodal solves; the sensitivities are refreshed for the first ``refresh`` passes), and a weight
    changes its pair only when that gains more than ``hyst`` levels (the passes settle instead of
    exchanging the coupling noise of every weight). Returns (gp, gn, E, passes) of the pass with the
    lowest ``tr(E^T M E)``, E the exact error of the realized matrix.
    """
    g_min, step, L = dev.g_min, dev.level_step, dev.levels
    common = min(int(common), L - 1)
    H = np.asarray(M, float)
    d = float(np.mean(np.diag(H)))
    H = H + damp * d * np.eye(H.shape[0]) if d > 0 else np.eye(H.shape[0])   # no input power: Frobenius
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    kp, kn = (gp - g_min) / step, (gn - g_min) / step       # continuous to start with
    sp, sn = (np.maximum(s, 1e-12) for s in sens)
    loss = lambda E_: float(np.sum(E_ * (H @ E_)))
    best, passes = None, 0
    for it in range(iters):
        T = sp * kp - sn * kn - E * (alpha / step)          # wanted effective level of every weight
        nkp, nkn = np.empty_like(kp), np.empty_like(kn)
        for i in range(W.shape[0]):
            t = T[i]
            cp, cn = _pair_candidates(t, sp[i], sn[i], common, L)
            e = np.abs(sp[i] * cp - sn[i] * cn - t) + cost * np.minimum(cp, cn)
            j = np.argmin(e, axis=0)
            col = np.arange(t.size)
            a, b, eb = cp[j, col], cn[j, col], e[j, col]
            if it:                                          # keep the current pair unless the new one gains
                ec = np.abs(sp[i] * kp[i] - sn[i] * kn[i] - t) + cost * np.minimum(kp[i], kn[i])
                keep = eb + hyst >= ec
                a, b = np.where(keep, kp[i], a), np.where(keep, kn[i], b)
            nkp[i], nkn[i] = a, b
            err = (t - (sp[i] * a - sn[i] * b)) / U[i, i]
            T[i + 1:] -= np.outer(U[i, i + 1:], err)
        changed = np.any(nkp != kp) or np.any(nkn != kn)
        if it and not changed:
            break
        kp, kn = nkp, nkn
        cp_, cn_ = Crossbar(g_min + kp * step, wires), Crossbar(g_min + kn * step, wires)
        if it < refresh:
            (Gp, _, sp), (Gn, _, sn) = cp_.realized_and_grad(), cn_.realized_and_grad()
            sp, sn = np.maximum(sp, 1e-12), np.maximum(sn, 1e-12)
        else:
            Gp, Gn = cp_.realized(), cn_.realized()
        E = (Gp - Gn) / alpha - W
        passes += 1
        F = loss(E)
        if best is None or F < best[0]:
            best = (F, kp, kn, E)
    _, kp, kn, E = best
    return g_min + kp * step, g_min + kn * step, E, passes


def map_representable(W, wires: WiresConfig, dev: DeviceConfig, v_cal=None, second_moment=None,
                      beta=0.1, patience=1, max_alpha_evals=4, search_iters=1, final_iters=4, calib_rounds=1,
                      alpha=None, rounding="pairs", dpe=None, column_scale=False, _with_error=False,
                      _aware=True):
    """Paper 002's mapping; returns (g_pos, g_neg, alpha, info): on the device's levels when it has
    levels (``rounding``, :data:`ROUNDINGS`: "pairs" (default, :func:`round_pairs`), "aware"
    (:func:`round_to_levels`), "plain" (nearest level) or "none" (continuous)), else continuous.
    ``dpe``: the result of :func:`map_dpe` for the same block, if already computed (one scale).
    ``column_scale``: one alpha per output column (a (cols,) vector: a digital gain per column after the
    ADC). Two plans: the one-scale mapping (exactly the default's), and a per-column plan at DPE's per-column
    scales times the factor of DPE's scale the one-scale search chose, one beta step further inside
    (:data:`COLUMN_PASS`; no search of its own), tuned for one iteration with the calibration correction and
    rounded by the pair rounding. Each of the two plans is a candidate as programmed and with every column's
    digital gain refitted to its exact realized matrix (least squares for the inputs' second moment: no
    circuit solve). Kept: the candidate with the lowest exact objective (Frobenius, or tr(E^T M E)) among
    those whose predicted max output error (:func:`max_output_proxy`) is not above the one-scale plan's;
    ``info["column_scale"]`` says which ("one", "one+gain", "column", "column+gain"), and
    ``info["column_scale_losses"]`` / ``["column_scale_max_output"]`` give every candidate's values. It costs
    the one-scale mapping plus one tuning iteration and one rounding (it was two complete mappings before)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"mapping.rounding: {rounding!r} is not allowed; choose one of {', '.join(ROUNDINGS)}")
    g_min, g_max = dev.g_min, dev.g_max
    W = np.asarray(W, float)
    v_cal = np.ones(W.shape[0]) if v_cal is None else np.asarray(v_cal, float)
    M = None if second_moment is None else np.asarray(second_moment, float)
    if column_scale and alpha is None:
        return _map_column_scale(W, wires, dev, v_cal, M, dpe, dict(
            v_cal=v_cal, second_moment=second_moment, beta=beta, patience=patience, max_alpha_evals=max_alpha_evals,
            search_iters=search_iters, final_iters=final_iters, calib_rounds=calib_rounds, rounding=rounding))
    tuner = _Tuner(wires, g_min, g_max, M)
    trace = []
    if M is not None:  # the input statistics replace the single calibration vector
        calib_rounds = 0

    def init(a):
        gp, gn = _dpe_g(W, a, g_min, v_cal, wires)
        return np.clip(np.nan_to_num(gp, posinf=g_max), g_min, g_max), np.clip(np.nan_to_num(gn, posinf=g_max),
                                                                              g_min, g_max)

    def assess(a, gp, gn, iters):
        st = tuner.evaluate(gp, gn, a, W)
        Fs = [st[0]]
        for _ in range(iters):
            gp, gn, F, E, st = tuner.run(gp, gn, a, W, 1, state=st)
            Fs.append(F)
        qp, qn = quantize_array(gp, dev), quantize_array(gn, dev)
        # quantized error by linearization through the diagonal sensitivities of the last
        # gradient evaluation (saves one circuit evaluation per alpha; the final plan is exact)
        dp, dn = tuner.last_d
        P = tuner.loss((dp * (qp - gp) - dn * (qn - gn)) / a)    # the rounding alone (no cross term
        # with E: rounding errors are independent of the tuning error, and the cross term made the
        # estimate jump between neighbouring alphas)
        # value-range error: what tuning cannot remove at this alpha. The error after a few tuning
        # iterations still holds tuning residual (on trained layers it dominates and would drive alpha
        # down: measured 0.75x the DPE scale where the converged optimum is at or above it), so the
        # limit of the geometric decay of F is extrapolated (Aitken's delta-squared on the last three
        # values; with one iteration the last value is used)
        V = F
        if len(Fs) >= 3:
            d1, d2 = Fs[-2] - Fs[-3], Fs[-1] - Fs[-2]
            if d2 < 0 and d2 - d1 > 0:
                V = min(max(Fs[-1] - d2 * d2 / (d2 - d1), 0.0), Fs[-1])
        trace.append({"alpha": a, "total_error": V + P, "value_range_error": V, "precision_error": P,
                      "tuned_error": F})
        return gp, gn, V, V + P, st

    if alpha is not None:
        a_best = float(alpha) if np.ndim(alpha) == 0 else np.asarray(alpha, float)
        gp, gn = init(a_best)
    else:
        # start one step inside the DPE scale: the largest range for which the calibration-current
        # compensation stays within [g_min, g_max], i.e. where the worst-placed weight reaches the edge
        # of its value range (on trained layers the error jumps there: 128x10 output layer, max output
        # error 0.0049 at 0.85x, 0.0105 at 1.0x); then the paper's update rule, each candidate starting
        # from the best tuned conductances so far rescaled to its alpha
        if dpe is None:
            dpe = map_dpe(W, wires, dev, v_cal=v_cal)
        a = (1 - beta) * dpe[2]
        gp, gn = init(a)
        best = None
        direction, stall = 0, 0
        for _ in range(max_alpha_evals):
            gp, gn, V, Fp, st_a = assess(a, gp, gn, search_iters)
            if best is None or Fp < best[0]:
                best, stall = (Fp, a, gp, gn, st_a), 0
            else:
                stall += 1
                if stall >= patience:
                    break
            d = -1 if V > Fp - V else +1           # value-range errors dominate -> smaller alpha
            if direction and d != direction:
                beta *= 0.5
            elif direction:                         # the same way again: longer steps (the optimum of a
                beta = min(1.5 * beta, 0.5)         # large random array lies ~0.4x the DPE scale)
            direction = d
            a_next = a * (1 + d * beta)
            gp, gn = (np.clip(g_min + (g - g_min) * (a_next / a), g_min, g_max) for g in (best[2], best[3]))
            a = a_next
        _, a_best, gp, gn, st0 = best
    # tune + calibration-vector correction (paper Sec. V-C), from the search's evaluation of the best plan
    T = W.copy()
    st = st0 if alpha is None else None
    per = max(1, final_iters // (calib_rounds + 1))
    for r in range(calib_rounds + 1):
        gp, gn, F, E, st = tuner.run(gp, gn, a_best, T, per if r < calib_rounds else final_iters - per * calib_rounds,
                                     state=st)
        if r == calib_rounds:
            break
        R = E + T - W                                     # W^r - W
        free = (gp > g_min * (1 + 1e-9)) | (gn > g_min * (1 + 1e-9))
        den = (v_cal[:, None] * free).sum(0)
        u = np.where(den > 0, (v_cal @ R) / np.where(den > 0, den, 1), 0.0)
        T_new = T - free * u[None, :]
        E_new = st[1] + T - T_new                         # the same circuit against the new target
        st = (tuner.loss(E_new), E_new, st[2], st[3])
        T = T_new
    info = {"alpha_trace": trace, "circuit_evaluations": tuner.n_evals, "alpha_searched": a_best}
    if dev.levels is not None and rounding != "none":
        Ec = None
        if rounding == "pairs":
            Mr = uniform_second_moment(v_cal) if M is None else M
            sens = getattr(tuner, "last_d", None)
            if sens is None:            # no tuning iteration: the sensitivities of the evaluated plan's circuits
                sens = (st[2][0].realized_and_grad()[2], st[2][1].realized_and_grad()[2])
            qp, qn, Ec, info["rounding_passes"] = round_pairs(gp, gn, a_best, W, E + T - W, sens, wires, dev, Mr,
                                                              **PAIRS)
            info["rounding"] = "pairs"
            tuner.n_evals += info["rounding_passes"]
            if _aware:
                # the one-device rounding for the inputs is a candidate too (with a measured second moment it
                # sometimes wins: 32 x 32 block of the 256-128 MLP's fc1, data MSE 4.1e-7 against 4.7e-7)
                ap, an = round_to_levels(gp, gn, a_best, W, E + T - W, sens, dev, Mr)
                Ea = (Crossbar(ap, wires).realized() - Crossbar(an, wires).realized()) / a_best - W
                tuner.n_evals += 1
                if np.sum(Ea * (Mr @ Ea)) < np.sum(Ec * (Mr @ Ec)):
                    qp, qn, Ec, info["rounding"] = ap, an, Ea, "aware"
            gp, gn = qp, qn
        else:
            gp, gn, info["rounding"] = _round(tuner, gp, gn, a_best, W, E + T - W, dev, M, v_cal, rounding)
        if alpha is None:
            # the DPE plan the search started from is a candidate too (judged by the objective: the
            # Frobenius norm, or tr(E^T M E) with a second moment): on tiny arrays (a 9x2 convolution)
            # IR drop is negligible and the search's smaller alpha only costs precision
            dp_, dn_, a_dpe, _ = dpe if dpe is not None else map_dpe(W, wires, dev, v_cal=v_cal)
            cand = [(gp, gn, a_best), (quantize_array(dp_, dev), quantize_array(dn_, dev), a_dpe)]
            errs, Es = [], []
            for k, (p, q, a) in enumerate(cand):
                if k == 0 and Ec is not None:
                    errs.append(tuner.loss(Ec))
                    Es.append(Ec)
                    continue
                Ec_ = (Crossbar(p, wires).realized() - Crossbar(q, wires).realized()) / a - W
                errs.append(tuner.loss(Ec_))
                Es.append(Ec_)
                tuner.n_evals += 1
            Ec = Es[0]
            if errs[1] < errs[0]:
                gp, gn, a_best = cand[1]
                Ec = Es[1]
                info["rounding"] = "dpe plan kept"
        if Ec is not None and _with_error:
            info["_error"] = Ec          # exact W^r - W of the returned plan (read by the column_scale pass)
    return gp, gn, a_best, info



def max_output_proxy(E, v_cal=None, second_moment=None) -> float:
    """A prediction of the max output error of the error matrix ``E`` = W^r - W (rows, cols) that needs no
    test inputs: for inputs drawn independently and uniformly from [0, v_cal_i] (paper 002's evaluation
    inputs) each output's error has mean ``mu_j = sum_i v_i E_ij / 2`` and standard deviation
    ``s_j = sqrt(sum_i v_i^2 E_ij^2 / 12)``, and the proxy is ``max_j |mu_j| + 3 s_j`` (about the largest
    of a few hundred draws); with a ``second_moment`` M = E[x^T x] of the inputs (mean and variance
    not separable) the largest per-output RMS error ``max_j sqrt(E_j^T M E_j)``."""
    E = np.asarray(E, float)
    if second_moment is not None:
        M = np.asarray(second_moment, float)
        return float(np.sqrt(max(np.max(np.sum(E * (M @ E), axis=0)), 0.0)))
    v = np.ones(E.shape[0]) if v_cal is None else np.asarray(v_cal, float)
    return float(np.max(np.abs(v @ E) / 2 + 3 * np.sqrt((v ** 2 / 12) @ E ** 2)))


def _map_column_scale(W, wires, dev, v_cal, M, dpe, kw):
    """``map_representable(..., column_scale=True)``: the one-scale and the per-column plan, each also with
    refitted column gains; the lowest objective among the candidates whose predicted max output error is not
    above the one-scale plan's is kept (see :func:`map_representable`)."""
    d1 = dpe if dpe is not None else map_dpe(W, wires, dev, v_cal=v_cal)
    dc = map_dpe(W, wires, dev, v_cal=v_cal, column_scale=True, iters=COLUMN_PASS["dpe_iters"])
    # 1. the one-scale mapping (exactly the default's)
    p1, q1, a1, inf1 = map_representable(W, wires, dev, dpe=d1, _with_error=True, **kw)
    # 2. the per-column plan without a search of its own: DPE's per-column scales times the factor the
    # one-scale search found against DPE's one scale, one beta step further inside (per-column ranges draw
    # more current; measured on the bench's blocks, the per-column search ended one step below the
    # one-scale one); a short tuning, the calibration correction and the same rounding
    f1 = float(inf1["alpha_searched"]) / float(d1[2])
    kc = dict(kw, final_iters=COLUMN_PASS["final_iters"])
    if COLUMN_PASS["final_iters"] == 0:
        kc["calib_rounds"] = 0
    pc, qc, ac, infc = map_representable(W, wires, dev, dpe=dc, alpha=COLUMN_PASS["factor"] * f1 * np.asarray(dc[2]),
                                         _with_error=True, _aware=COLUMN_PASS["aware"], **kc)
    Mr = uniform_second_moment(v_cal) if M is None else M
    loss = (lambda E_: float(np.sum(E_ ** 2))) if M is None else (lambda E_: float(np.sum(E_ * (M @ E_))))
    cands = []
    for tag, (p, q, a, inf) in (("one", (p1, q1, a1, inf1)), ("column", (pc, qc, ac, infc))):
        E = inf.pop("_error", None)                 # the exact error of the returned plan, if computed
        a = np.broadcast_to(np.asarray(a, float), (W.shape[1],)).copy()
        if E is None:
            E = (Crossbar(p, wires).realized() - Crossbar(q, wires).realized()) / a - W
        cands.append((loss(E), max_output_proxy(E, v_cal, M), p, q, a, inf, tag))
        # the same programmed plan with every column's digital gain refitted to the exact circuit (no circuit
        # solve: W^r_j scales with 1 / alpha_j): least squares in the inputs' second moment, s_j =
        # (W^r_j M W_j) / (W^r_j M W^r_j)
        Wr = E + W
        num, den = np.sum(Wr * (Mr @ W), axis=0), np.sum(Wr * (Mr @ Wr), axis=0)
        sc = np.where((den > 0) & (num > 0), num / np.where(den > 0, den, 1.0), 1.0)
        E2 = Wr * sc - W
        cands.append((loss(E2), max_output_proxy(E2, v_cal, M), p, q, a / sc, inf, tag + "+gain"))
    # the lowest objective (Frobenius or tr(E^T M E)) among the candidates whose predicted max output error
    # (:func:`max_output_proxy`) is not above the one-scale plan's (the default's): the objective alone let
    # the per-column plan raise the max output error on 7 of 24 trained MLP blocks (bench/bench_irdrop.py,
    # mapping of 2026-12-02)
    k = min((i for i in range(len(cands)) if cands[i][1] <= cands[0][1]), key=lambda i: (cands[i][0], i))
    _, _, p, q, a, inf, tag = cands[k]
    inf = dict(inf, column_scale=tag, column_scale_candidates=[c[6] for c in cands],
               column_scale_losses=[c[0] for c in cands], column_scale_max_output=[c[1] for c in cands],
               circuit_evaluations=inf1["circuit_evaluations"] + infc["circuit_evaluations"])
    return p, q, a, inf


def _round(tuner, gp, gn, alpha, W, E, dev, M, v_cal, rounding):
    """The tuned plan on the device's levels: nearest levels (``plain``), or ``aware``: the rounding of
    :func:`round_to_levels` for the inputs' second moment (``M``, else uniform inputs on [0, v_cal]),
    kept only if the exact circuit confirms it lowers that expected output error."""
    qp, qn = quantize_array(gp, dev), quantize_array(gn, dev)
    if rounding == "plain":
        return qp, qn, "plain"
    Mr = uniform_second_moment(v_cal) if M is None else M
    sens = getattr(tuner, "last_d", None)
    if sens is None:
        sens = (Crossbar(gp, tuner.w).realized_and_grad()[2], Crossbar(gn, tuner.w).realized_and_grad()[2])
    ap, an = round_to_levels(gp, gn, alpha, W, E, sens, dev, Mr)
    Ea = (Crossbar(ap, tuner.w).realized() - Crossbar(an, tuner.w).realized()) / alpha - W
    tuner.n_evals += 1
    # the nearest-level plan by linearisation (its exact evaluation would cost another circuit solve)
    Ep = E + (sens[0] * (qp - gp) - sens[1] * (qn - gn)) / alpha
    return (ap, an, "aware") if np.sum(Ea * (Mr @ Ea)) < np.sum(Ep * (Mr @ Ep)) else (qp, qn, "plain")


# ------------------------------------------------------------------------------------------------
def map_block(W, wires: WiresConfig, dev: DeviceConfig, mapping: MappingConfig, *, second_moment=None, **kw):
    """Map one array's block ``W`` (rows, cols) with ``mapping.method``.

    Returns ``(g_pos, g_neg, alpha, info)``: the device targets [S] rounded to the device's levels,
    the scale alpha [S per unit weight] and the method's own report. ``kw`` overrides the
    ``representable`` settings of ``mapping`` (``max_alpha_evals``, ``alpha`` ...); ``column_scale=True``
    (``dpe`` and ``representable``) gives one alpha per output column, returned as a (cols,) array
    (``map_matrix`` passes it with ``mapping.scale = "column"``).
    """
    W = np.asarray(W, float)
    method = mapping.method
    if method not in METHODS:
        raise ValueError(f"mapping.method: {method!r} is not allowed; choose one of {', '.join(METHODS)}")
    if not np.any(W != 0):  # nothing to compensate: every device at g_min
        g = np.full(W.shape, dev.g_min)
        return quantize_array(g, dev), quantize_array(g, dev), (dev.g_max - dev.g_min), {}
    if method == "linear":
        gp, gn, a, info = map_linear(W, wires, dev)
    elif method == "dpe":
        gp, gn, a, info = map_dpe(W, wires, dev, column_scale=kw.get("column_scale", False))
    else:
        settings = dict(max_alpha_evals=mapping.alpha_evals, search_iters=mapping.search_iters,
                        final_iters=mapping.final_iters, calib_rounds=mapping.calib_rounds, rounding=mapping.rounding)
        settings.update(kw)
        gp, gn, a, info = map_representable(W, wires, dev, second_moment=second_moment, **settings)
    return quantize_array(gp, dev), quantize_array(gn, dev), float(a) if np.ndim(a) == 0 else np.asarray(a), info
