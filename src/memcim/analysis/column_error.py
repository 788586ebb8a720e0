"""Closed-form output error of crossbar columns versus the design (G_min, G_max, FS) (paper 003).

The paper gives only its abstract; the model below is derived from the signal path that
:mod:`memcim.simulate` computes, term by term, and checked against it by Monte Carlo
(``tests/test_column_error.py``).

Signal path (differential mapping, one row tile ``r`` of ``R`` rows, one output column ``j``)
-------------------------------------------------------------------------------------------
An input vector ``x`` is scaled by ``xs`` (``dac.x_range``, or the vector's own max |x|) to the
word-line fractions ``u = x / xs`` (DAC-rounded to ``1/K_dac``). With the window ``[a, a + D]``
(``a = G_min``, ``D = G_max - G_min``) the scale is ``c = D / wmax`` (``wmax = max|W|`` of the
matrix, or of the column) and the devices sit at ``G± = a + c max(±w, 0)``. The column current
over ``v_read`` is ``j = sum_i u_i (G+_i - G-_i) = c s`` with ``s = sum_i u_i w_i``; the TIA and
ADC work on ``V = r_tia v_read j`` and the digital side returns ``y = ADC(j) xs / c``.

So the output is in *weight units* (the units of ``x W``) and every error below is an MSE in
those units. Write ``m_i = E_w[u_i^2]``, ``b_i = E_w[|u_i|]`` and ``xs2 = E[xs^2]`` where ``E_w``
weights each input sample by ``xs^2 / E[xs^2]`` (with a fixed ``x_range`` it is the plain mean).
Per row tile and column, with ``n_r`` devices per side in the tile:

========================  =================================================================
term                      MSE in weight units
========================  =================================================================
programming, absolute     ``xs2 * 2 sigma_abs^2 sum_i m_i * wmax^2 / D^2``
programming, relative     ``xs2 * sigma_rel^2 sum_i m_i (2 a^2 wmax^2/D^2 + 2 a wmax |w_i|/D + w_i^2)``
programming, table        ``xs2 * sum_i m_i (t[l+_i]^2 + t[l-_i]^2) wmax^2 / D^2``
thermal (4kTB sum G)      ``xs2 * (4 k T B / v^2) (2 a n_r wmax^2/D^2 + wmax sum_i |w_i| / D)``
shot (2 q |I| B)          ``xs2 * (2 q B / v) (2 a sum_i b_i wmax^2/D^2 + wmax sum_i b_i |w_i| / D)``
ADC quantization          ``xs2 * F^2 / (12 K^2)``  (step ``Delta = F/K``, ``K = 2**(bits-1)-1``)
saturation                ``xs2 * E[(|s + n| - F)_+^2]``
level rounding            ``xs2 * e^T E_w[u u^T] e`` with ``e = realized - W`` (independent of a, D; all rows)
stuck devices             ``xs2 * sum_i m_i Var(e_i) + E_w[(sum_i u_i E e_i)^2]`` (independent of a, D)
DAC quantization          ``xs2 * sum_i P_w(u_i != 0) w_i^2 / (12 K_dac^2)`` (independent of a, D)
========================  =================================================================

``F`` is the ADC full scale in weight units: ``FS [V] = F * c * r_tia * v_read``. The
saturation term uses ``y = s + n`` with ``n`` the analog noise (the first five rows); with the
``gaussian`` output model ``s ~ N(mu, sigma_s^2)`` (moments of ``s`` under ``E_w``) and

    E[(Y - F)_+^2] = ((mu - F)^2 + sigma^2) Phi((mu - F)/sigma) + sigma (mu - F) phi((mu - F)/sigma)

plus the mirror term for ``-Y``; with the ``empirical`` model the same formula is averaged over
the sample outputs ``s_k`` with the noise standard deviation as ``sigma``. Row tiles are
independent arrays with their own ADCs: a layer's MSE per column is the sum over its row tiles.
Clipping errors of different row tiles add before they are squared; the empirical model keeps
their cross terms ``E[e_t] E[e_t']`` per sample (exact up to the noise), the Gaussian model (the one
the convex program uses) treats them as independent, which under-counts saturation when the
partial sums have a common sign (ReLU inputs) and several arrays clip at once.

Why the window matters: ``D`` sets the signal (``c``), while ``a = G_min`` only adds noise
(thermal ``~ sum G``, shot ``~ sum |v| G``, relative programming ``~ G``) and read power. Every
noise term is non-increasing in ``D`` and non-decreasing in ``a``; read power grows with both.
The ADC terms depend only on ``F``: quantization grows and saturation falls with it.

Limits of the model (documented, and visible in the tests): it neglects the clipping of
programmed conductances at 0 S, treats level and DAC rounding errors as uncorrelated with the
signal, and ``Delta^2/12`` assumes the pre-ADC signal spans several ADC steps (a 2-bit ADC
whose full scale is far above the signal rounds most outputs to 0; the real error is then
the signal power, smaller than ``Delta^2/12``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from memcim.config import HardwareConfig
from memcim.hardware.converters import dac_convert
from memcim.hardware.device import read_noise_coefficients
from memcim.mapping.crossbar import map_matrix, tile_geometry

__all__ = ["TERMS", "CONSTANT_TERMS", "InputStats", "Design", "LayerErrorModel", "gaussian_saturation",
           "gaussian_saturation_grad_F"]

#: Terms that depend on the design (G_min, G_max, FS).
TERMS = ("prog_abs", "prog_rel", "prog_table", "thermal", "shot", "adc_quant", "saturation")
#: Terms fixed by the weights, the inputs and the device (same for every design).
CONSTANT_TERMS = ("levels", "stuck", "dac")
_SQRT2PI = math.sqrt(2 * math.pi)


def _phi(z):
    return np.exp(-0.5 * z * z) / _SQRT2PI


def gaussian_saturation(mu, sigma, F):
    """``E[(|Y| - F)_+^2]`` for ``Y ~ N(mu, sigma^2)`` (broadcasting arrays).

    Parameters
    ----------
    mu : mean of Y.
    sigma : standard deviation of Y (>= 0; 0 gives ``(|mu| - F)_+^2``).
    F : clipping level (> 0).

    Returns
    -------
    ndarray of the expected squared clipping error.
    """
    mu, sigma, F = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (mu, sigma, F)))
    out = np.zeros(mu.shape)
    pos = sigma > 0
    s = np.where(pos, sigma, 1.0)
    for sign in (1.0, -1.0):
        d = sign * mu - F
        z = d / s
        val = (d * d + s * s) * ndtr(z) + s * d * _phi(z)
        out = out + np.where(pos, np.maximum(val, 0.0), np.maximum(d, 0.0) ** 2)
    return out


def _gauss_excess(mu, sigma, F):
    """``E[(Y - F)_+]`` for ``Y ~ N(mu, sigma^2)``."""
    s = np.where(sigma > 0, sigma, 1.0)
    d = mu - F
    z = d / s
    return np.where(sigma > 0, d * ndtr(z) + s * _phi(z), np.maximum(d, 0.0))


def gaussian_saturation_grad_F(mu, sigma, F):
    """Derivative of :func:`gaussian_saturation` with respect to ``F``: ``-2 E[(|Y| - F)_+]``."""
    mu, sigma, F = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (mu, sigma, F)))
    return -2.0 * (_gauss_excess(mu, sigma, F) + _gauss_excess(-mu, sigma, F))


# ----------------------------------------------------------------------------------- inputs

@dataclass
class InputStats:
    """Input statistics of one layer, in DAC-fraction units with the ``xs^2`` weighting.

    Attributes
    ----------
    xs2 : ``E[xs^2]``, mean squared input scale (``x_range^2`` for a fixed range).
    m2 : (in,) ``E_w[u_i^2]``.
    mabs : (in,) ``E_w[|u_i|]``.
    mean : (in,) ``E_w[u_i]``.
    second : (in, in) ``E_w[u u^T]``.
    nonzero : (in,) ``P_w(u_i != 0)`` (DAC rounding leaves exact zeros exact).
    samples : (N, in) the word-line fractions ``u`` of the samples, or None (moments only).
    weights : (N,) the weights ``xs^2 / E[xs^2]`` of the samples (mean 1), or None.
    m2_plain : (in,) unweighted ``E[u_i^2]`` (drives the read power), or None (= ``m2``).
    """

    xs2: float
    m2: np.ndarray
    mabs: np.ndarray
    mean: np.ndarray
    second: np.ndarray
    nonzero: np.ndarray
    samples: np.ndarray | None = None
    weights: np.ndarray | None = None
    m2_plain: np.ndarray | None = None

    @property
    def n_in(self) -> int:
        return self.m2.shape[0]

    @classmethod
    def from_samples(cls, X, hw: HardwareConfig, *, name: str = "inputs") -> "InputStats":
        """Statistics of sample inputs ``X`` (batch, in) as the hardware's DAC sees them."""
        import torch

        X = np.asarray(X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
            raise ValueError(f"{name}: shape {X.shape} is not allowed; need (batch >= 2, in) samples")
        if not np.all(np.isfinite(X)):
            raise ValueError(f"{name}: contains NaN or inf; all entries must be finite")
        u, xs = dac_convert(torch.from_numpy(X), hw.dac)
        u = u.numpy()
        xs = xs.numpy()[:, 0]
        if hw.dac.x_range is None:
            xs = np.where(np.abs(X).max(axis=1) > 0, xs, 0.0)  # all-zero vectors carry no signal
        xs2_each = xs ** 2
        xs2 = float(xs2_each.mean())
        if xs2 <= 0:
            raise ValueError(f"{name}: every sample is zero; the inputs carry no signal")
        w = xs2_each / xs2
        N = X.shape[0]
        uw = u * w[:, None]
        return cls(xs2=xs2, m2=(uw * u).mean(0), mabs=(np.abs(u) * w[:, None]).mean(0), mean=uw.mean(0),
                   second=(uw.T @ u) / N, nonzero=((u != 0) * w[:, None]).mean(0), samples=u, weights=w,
                   m2_plain=(u * u).mean(0))

    @classmethod
    def from_moments(cls, mean, cov, x_range: float) -> "InputStats":
        """Gaussian inputs ``x ~ N(mean, cov)`` on a DAC with a fixed ``x_range`` (no clipping)."""
        mean = np.asarray(mean, dtype=np.float64)
        cov = np.asarray(cov, dtype=np.float64)
        n = mean.shape[0]
        if cov.shape != (n, n):
            raise ValueError(f"cov: shape {cov.shape} does not match mean of length {n}")
        if not (isinstance(x_range, (int, float)) and x_range > 0):
            raise ValueError(f"x_range: {x_range!r} is not allowed; must be > 0")
        mu = mean / x_range
        C = cov / x_range ** 2
        second = C + np.outer(mu, mu)
        var = np.diag(C)
        sd = np.sqrt(np.maximum(var, 0))
        z = np.where(sd > 0, mu / np.where(sd > 0, sd, 1), 0)
        mabs = np.where(sd > 0, sd * (2 * _phi(z)) + mu * (2 * ndtr(z) - 1), np.abs(mu))
        return cls(xs2=float(x_range) ** 2, m2=np.diag(second).copy(), mabs=mabs, mean=mu, second=second,
                   nonzero=np.where(sd > 0, 1.0, (mu != 0).astype(float)))


# ----------------------------------------------------------------------------------- design

@dataclass
class Design:
    """One layer's design: conductance window and ADC full scale.

    Parameters
    ----------
    g_min, g_max : the window [S] the weights are mapped into.
    fs : ADC full scale in weight units of the DAC-fraction signal ``s = u . w`` (scalar for the
        layer, or an array (n_row_tiles, out) per array column). In volts,
        ``FS = fs * c * r_tia * v_read`` with ``c = (g_max - g_min)/wmax``.
    """

    g_min: float
    g_max: float
    fs: float | np.ndarray

    def __post_init__(self):
        if not (np.isfinite(self.g_min) and self.g_min >= 0):
            raise ValueError(f"g_min: {self.g_min!r} is not allowed; must be >= 0 S")
        if not (np.isfinite(self.g_max) and self.g_max > self.g_min):
            raise ValueError(f"g_max: {self.g_max!r} is not allowed; must exceed g_min = {self.g_min!r}")
        fs = np.asarray(self.fs, dtype=np.float64)
        if not np.all(np.isfinite(fs)) or np.any(fs <= 0):
            raise ValueError("fs: the ADC full scale must be finite and > 0")


# ----------------------------------------------------------------------------------- model

@dataclass
class LayerErrorModel:
    """Closed-form output error of every column of one crossbar layer ``y = x W``.

    Parameters
    ----------
    W : (in, out) weights (crossbar orientation).
    hw : hardware config (differential mapping; the ADC bits, the noise and the device limits
        come from it; its window and FS are replaced by the design under study).
    stats : :class:`InputStats` of the layer's inputs.
    saturation : ``"gaussian"`` (output moments) or ``"empirical"`` (sample outputs; needs
        ``stats.samples``).

    Examples
    --------
    >>> import numpy as np
    >>> from memcim.config import preset
    >>> hw = preset("generic")
    >>> W = np.random.default_rng(0).normal(size=(64, 8))
    >>> X = np.random.default_rng(1).normal(size=(256, 64))
    >>> model = LayerErrorModel(W, hw, InputStats.from_samples(X, hw))
    >>> terms = model.terms(model.naive_design())
    >>> sorted(terms)[:3]
    ['adc_quant', 'dac', 'levels']
    """

    W: np.ndarray
    hw: HardwareConfig
    stats: InputStats
    saturation: str = "gaussian"
    _c: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        from memcim.analysis.lowrank import check_matrix

        self.W = check_matrix(self.W, "W")
        if self.hw.mapping.scheme != "differential":
            raise ValueError("mapping.scheme: the closed-form column model covers 'differential' mapping only")
        if self.saturation not in ("gaussian", "empirical"):
            raise ValueError(f"saturation: {self.saturation!r} is not allowed; choose gaussian or empirical")
        if self.saturation == "empirical" and self.stats.samples is None:
            raise ValueError("saturation: 'empirical' needs InputStats.from_samples (sample outputs)")
        n, m = self.W.shape
        if self.stats.n_in != n:
            raise ValueError(f"stats: describes {self.stats.n_in} inputs but W has {n} rows")
        if np.abs(self.W).max() == 0:
            raise ValueError("W: all weights are zero; nothing to map")
        self._precompute()

    # -- geometry: the mapping's own (memcim.mapping.crossbar.tile_geometry) -------------------
    @property
    def n_row_tiles(self) -> int:
        """Arrays along the input dimension."""
        return tile_geometry(*self.W.shape, self.hw)[2]

    @property
    def rows(self) -> int:
        """Rows used per array (see ``mapping.tiling``)."""
        return tile_geometry(*self.W.shape, self.hw)[0]

    @property
    def tile_cols(self) -> int:
        """Weight columns per array, as the mapping tiles them."""
        return tile_geometry(*self.W.shape, self.hw)[1]

    @property
    def wmax(self) -> np.ndarray:
        """``max|W|`` per column (broadcast of the matrix max when ``mapping.scale = 'matrix'``)."""
        return self._c["wmax"]

    def _tiles(self, v: np.ndarray) -> np.ndarray:
        """(in, ...) -> (n_row_tiles, rows, ...), zero padded."""
        n = v.shape[0]
        pad = self.n_row_tiles * self.rows - n
        vp = np.concatenate([v, np.zeros((pad, *v.shape[1:]))]) if pad else v
        return vp.reshape(self.n_row_tiles, self.rows, *v.shape[1:])

    def _precompute(self) -> None:
        W, st, hw = self.W, self.stats, self.hw
        dev = hw.device
        n, m = W.shape
        A = np.abs(W)
        wmax = np.full(m, A.max()) if hw.mapping.scale == "matrix" else np.where(A.max(0) > 0, A.max(0), 1.0)
        Wt, At = self._tiles(W), self._tiles(A)                 # (T, R, m)
        m2, mabs = self._tiles(st.m2), self._tiles(st.mabs)     # (T, R)
        c = self._c
        c["wmax"] = wmax
        c["S2"] = m2.sum(1)[:, None] * np.ones(m)                               # sum m_i
        c["S2w"] = np.einsum("tr,trm->tm", m2, At)                              # sum m_i |w_i|
        c["S2ww"] = np.einsum("tr,trm->tm", m2, Wt ** 2)                        # sum m_i w_i^2
        c["ndev"] = np.array([max(0, min(self.rows, n - t * self.rows))
                              for t in range(self.n_row_tiles)])[:, None] * np.ones(m)
        c["Aw"] = At.sum(1)                                                     # sum |w_i|
        c["B"] = mabs.sum(1)[:, None] * np.ones(m)                              # sum b_i
        c["Bw"] = np.einsum("tr,trm->tm", mabs, At)                             # sum b_i |w_i|
        # the plan of the level grid (independent of the window (a, D): the levels span it), from
        # the one mapping: level indices for the per-level noise table, the level-rounding error
        plan = self._plan()
        Wq = plan.realized().numpy()
        if dev.prog_sigma_table is not None and dev.levels is not None:
            t = np.asarray(dev.prog_sigma_table)
            lp = self._tiles(self._weights(plan.level_pos))
            ln = self._tiles(self._weights(plan.level_neg))
            c["Ttab"] = np.einsum("tr,trm->tm", m2, t[lp] ** 2 + t[ln] ** 2)
        else:
            c["Ttab"] = np.zeros_like(c["S2"])
        # pre-ADC signal s = u . w per tile and column (weighted moments)
        mean_t = self._tiles(st.mean)
        c["mu"] = np.einsum("tr,trm->tm", mean_t, Wt)
        sec = np.zeros((self.n_row_tiles, self.rows, self.rows))
        pad = self.n_row_tiles * self.rows - n
        secp = np.pad(st.second, ((0, pad), (0, pad)))
        for t in range(self.n_row_tiles):
            sl = slice(t * self.rows, (t + 1) * self.rows)
            sec[t] = secp[sl, sl]
        ss = np.einsum("trm,trq,tqm->tm", Wt, sec, Wt)
        c["sig2_s"] = np.maximum(ss - c["mu"] ** 2, 0.0)
        c["signal"] = ss
        if st.samples is not None:
            up = self._tiles(st.samples.T)                                     # (T, R, N)
            c["s_samples"] = np.einsum("trn,trm->tnm", up, Wt)                 # (T, N, m)
        # constant terms ------------------------------------------------------------------
        const = {"levels": np.zeros((self.n_row_tiles, m)), "stuck": np.zeros((self.n_row_tiles, m)),
                 "dac": np.zeros((self.n_row_tiles, m))}
        if dev.levels is not None:
            const["levels"] = self._quadratic(Wq - W, sec)
        p0, p1 = dev.stuck_at_min, dev.stuck_at_max
        if p0 > 0 or p1 > 0:
            wp, wn = np.maximum(Wq, 0), np.maximum(-Wq, 0)
            # error of the output weight when one side is stuck: (G_stuck - G)/c
            mean_e = (-p0 * wp + p1 * (wmax - wp)) - (-p0 * wn + p1 * (wmax - wn))
            var_e = (p0 * wp ** 2 + p1 * (wmax - wp) ** 2 - (-p0 * wp + p1 * (wmax - wp)) ** 2
                     + p0 * wn ** 2 + p1 * (wmax - wn) ** 2 - (-p0 * wn + p1 * (wmax - wn)) ** 2)
            const["stuck"] = np.einsum("tr,trm->tm", m2, self._tiles(var_e)) + self._quadratic(mean_e, sec)
        if hw.dac.enabled:
            k = hw.dac.steps
            nz = self._tiles(st.nonzero)
            const["dac"] = np.einsum("tr,trm->tm", nz, Wt ** 2) / (12.0 * k * k)
        c["const"] = const

    def _plan(self):
        """The layer's plan on the config's own window, ideal wires and no converters (cheap)."""
        return map_matrix(self.W, self.hw.without("wires", "dac", "adc"))

    def _weights(self, t) -> np.ndarray:
        """A plan tensor (row tiles, rows, out_pad) as (in, out) numpy."""
        n, m = self.W.shape
        return t.reshape(-1, t.shape[-1])[:n, :m].cpu().numpy()

    def _quadratic(self, e: np.ndarray, sec: np.ndarray) -> np.ndarray:
        """``E_w[(u . e_j)^2]`` of a fixed (in, out) error, split over row tiles.

        Fixed errors in different row tiles are correlated through the inputs, so the cross-tile
        terms are kept (shared equally by the tiles); each tile also keeps its own block.
        """
        et = self._tiles(e)
        own = np.einsum("trm,trq,tqm->tm", et, sec, et)
        full = np.einsum("im,iq,qm->m", e, self.stats.second, e)
        return own + (full - own.sum(0)) / self.n_row_tiles

    # -- the terms --------------------------------------------------------------------------
    #: the basis of :meth:`noise_coefficients`, in the window's G_min = a and D = G_max - G_min
    BASIS = ("D^-2", "a D^-2", "a^2 D^-2", "a D^-1", "D^-1", "1")

    def noise_coefficients(self) -> dict[str, np.ndarray]:
        """Every analog-noise term as coefficients of :data:`BASIS`: ``term = sum_k C[..., k] basis_k``,
        shape (n_row_tiles, out, 6), in u-units before the ``xs2`` factor.

        With ``1/c = wmax / D`` and ``G± = a + c w±`` (differential pair):

        * programming: ``sum_i m_i (var G+_i + var G-_i) / c^2``, ``var G = abs^2 + rel^2 G^2 + table^2``;
        * read noise (:func:`memcim.hardware.device.read_noise_coefficients`):
          ``k_th sum_i (G+_i + G-_i) / c^2 + k_sh sum_i b_i (G+_i + G-_i) / c^2``.

        The convex program (:mod:`memcim.optimize.convex_range`) uses the same coefficients.
        """
        if "coef" in self._c:
            return self._c["coef"]
        dev, arr = self.hw.device, self.hw.array
        c = self._c
        w = c["wmax"][None, :]
        z = np.zeros((*c["S2"].shape, 6))
        out = {k: z.copy() for k in ("prog_abs", "prog_rel", "prog_table", "thermal", "shot")}
        out["prog_abs"][..., 0] = 2 * dev.prog_sigma_abs ** 2 * c["S2"] * w ** 2
        r2 = dev.prog_sigma_rel ** 2
        out["prog_rel"][..., 2] = 2 * r2 * c["S2"] * w ** 2
        out["prog_rel"][..., 3] = 2 * r2 * c["S2w"] * w
        out["prog_rel"][..., 5] = r2 * c["S2ww"]
        out["prog_table"][..., 0] = c["Ttab"] * w ** 2
        k_th, k_sh = read_noise_coefficients(dev, arr.v_read)
        out["thermal"][..., 1] = 2 * k_th * c["ndev"] * w ** 2
        out["thermal"][..., 4] = k_th * c["Aw"] * w
        out["shot"][..., 1] = 2 * k_sh * c["B"] * w ** 2
        out["shot"][..., 4] = k_sh * c["Bw"] * w
        c["coef"] = out
        return out

    @staticmethod
    def basis(g_min: float, g_max: float) -> np.ndarray:
        """The values of :data:`BASIS` for a window [g_min, g_max]."""
        a, D = float(g_min), float(g_max) - float(g_min)
        return np.array([D ** -2, a * D ** -2, a * a * D ** -2, a / D, 1 / D, 1.0])

    def noise_terms(self, g_min: float, g_max: float) -> dict[str, np.ndarray]:
        """Analog-noise terms (u-units, per row tile and column, before the ``xs2`` factor)."""
        b = self.basis(g_min, g_max)
        return {k: C @ b for k, C in self.noise_coefficients().items()}

    def terms(self, design: Design, *, per: str = "column") -> dict[str, np.ndarray | float]:
        """Every error term for ``design``, in weight units (MSE of ``y = x W``).

        Parameters
        ----------
        design : the window and full scale.
        per : ``"tile"`` (n_row_tiles, out), ``"column"`` (out,: summed over row tiles) or
            ``"layer"`` (the mean over columns, a float).

        Returns
        -------
        dict of the :data:`TERMS`, the :data:`CONSTANT_TERMS` and ``total``.
        """
        if not isinstance(design, Design):
            raise TypeError(f"design: expected a Design, got {type(design).__name__}")
        if per not in ("tile", "column", "layer"):
            raise ValueError(f"per: {per!r} is not allowed; choose tile, column or layer")
        c = self._c
        xs2 = self.stats.xs2
        noise = self.noise_terms(design.g_min, design.g_max)
        F = np.broadcast_to(np.asarray(design.fs, dtype=np.float64), c["S2"].shape)
        out = dict(noise)
        out.update(c["const"])
        adc = self.hw.adc
        if adc.enabled:
            K = adc.steps
            out["adc_quant"] = F ** 2 / (12.0 * K * K)
            if adc.saturate:
                n_var = sum(noise.values()) + sum(c["const"].values())
                out["saturation"] = self._saturation(F, n_var)
            else:
                out["saturation"] = np.zeros_like(F)
        else:
            out["adc_quant"] = np.zeros_like(F)
            out["saturation"] = np.zeros_like(F)
        res = {k: xs2 * v for k, v in out.items()}
        res["total"] = sum(res[k] for k in (*TERMS, *CONSTANT_TERMS))
        if per == "tile":
            return res
        if per == "column":
            return {k: v.sum(0) for k, v in res.items()}
        return {k: float(v.sum(0).mean()) for k, v in res.items()}

    def _saturation(self, F: np.ndarray, n_var: np.ndarray) -> np.ndarray:
        c = self._c
        if self.saturation == "gaussian":
            return gaussian_saturation(c["mu"], np.sqrt(c["sig2_s"] + n_var), F)
        s = c["s_samples"]                                           # (T, N, m)
        w = self.stats.weights[None, :, None]
        sd = np.sqrt(n_var)[:, None, :]
        Ft = F[:, None, :]
        val = gaussian_saturation(s, sd, Ft)
        own = (val * w).mean(1)
        if self.n_row_tiles == 1:
            return own
        # the row tiles' clipping errors add before the square: keep the cross terms
        # E[e_t] E[e_t'] (noise independent between arrays), shared equally by the tiles
        mean_e = _gauss_excess(-s, sd, Ft) - _gauss_excess(s, sd, Ft)      # E[clip(Y) - Y]
        cross = ((mean_e.sum(0) ** 2 - (mean_e ** 2).sum(0)) * w[0]).mean(0)
        return own + cross / self.n_row_tiles

    def signal_power(self, per: str = "column"):
        """``E[(x W)^2]`` per column (the output power), for SNR and relative errors."""
        # exact: sum over tiles of cross terms; use the full second moment
        sec = self.stats.second
        p = self.stats.xs2 * np.einsum("im,iq,qm->m", self.W, sec, self.W)
        return float(p.mean()) if per == "layer" else p

    # -- designs ----------------------------------------------------------------------------
    def scale(self, design: Design) -> np.ndarray:
        """``c = (g_max - g_min) / wmax`` per column [S per weight unit]."""
        return (design.g_max - design.g_min) / self.wmax

    def fs_volts(self, design: Design) -> np.ndarray:
        """The full scale in volts at the TIA output, per row tile and column."""
        F = np.broadcast_to(np.asarray(design.fs, dtype=np.float64), self._c["S2"].shape)
        return F * self.scale(design) * self.hw.array.r_tia * self.hw.array.v_read

    def fs_max(self) -> np.ndarray:
        """The worst-case output per row tile and column, ``sum_i |w_i|`` (fs_mode "max"), u-units."""
        return self._c["Aw"]

    def naive_design(self, granularity: str | None = None) -> Design:
        """The naive mapping: the device's full window and FS covering the largest possible output.

        The FS is the worst case ``sum_i |w_i|`` of each array (``granularity = 'array'``: the
        largest over the array's columns, as ``fs_mode = 'max'`` does) or column.
        """
        gran = granularity or self.hw.adc.granularity
        fs = self.fs_max()
        if gran == "array":
            cols = self.tile_cols
            m = fs.shape[1]
            fs = fs.copy()
            for k in range(0, m, cols):
                fs[:, k:k + cols] = fs[:, k:k + cols].max(axis=1, keepdims=True)
        return Design(self.hw.device.g_min, self.hw.device.g_max, np.where(fs > 0, fs, fs.max()))

    def hardware_for(self, design: Design) -> HardwareConfig:
        """A config that makes the simulator run ``design`` (layer-wide scalar FS only)."""
        fs = np.asarray(design.fs, dtype=np.float64)
        vol = self.fs_volts(design)
        if fs.ndim == 0 or np.allclose(vol, vol.flat[0], rtol=1e-12):
            return self.hw.replace(device={"g_min": float(design.g_min), "g_max": float(design.g_max)},
                                   adc={"fs_mode": "fixed", "full_scale": float(vol.flat[0])})
        raise ValueError("design: a per-column FS cannot be written as one config; use apply_design(mapped, ...)")

    def apply_design(self, mapped, design: Design):
        """A new :class:`MappedMatrix` with ``design``'s FS (per tile and column, volts); plans are frozen."""
        import torch

        vol = self.fs_volts(design)
        fs = torch.zeros_like(mapped.full_scale)
        fs[:, : vol.shape[1]] = torch.as_tensor(vol, dtype=fs.dtype)
        fs[:, vol.shape[1]:] = float(vol.max())
        return mapped.with_full_scale(fs)
