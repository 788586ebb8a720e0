"""Statistical simulation of crossbar MVMs: program chips, then read them.

``program(mapped, seed, trials)`` samples ``trials`` independent chips (programming noise and stuck
devices). ``chip.mvm(x)`` runs one read of every chip:

    x -> DAC -> word lines (u * v_read) -> crossbar currents (+ thermal and shot noise drawn fresh on
    every read) -> TIA (V = r_tia * I) -> ADC (per array or per column full scale) -> digital rescale
    -> partial sums of the row tiles added digitally (-> drift compensation).

**Time.** ``program`` fixes the programming time ``t0 = device.drift_t0`` and draws one drift
exponent per device; ``chip.mvm(x, t=3600)`` reads at ``t`` seconds after programming: every
conductance is ``G (t/t0)**(-nu)``, each read call draws one 1/f snapshot (``device.read_1f_*``)
and one RTN snapshot, and with ``compensation.drift`` the outputs are rescaled by the ratio of a
reference read at ``t0`` to one at ``t`` (global, or per column), as a chip's digital periphery does.

Trials are the leading dimension of every output. Everything runs on the tensors' device (CPU or
CUDA) and is reproducible from the seeds. The read noise of one call is one standard normal draw of
shape (trials, batch, row tiles, out_pad) (offset mapping: then one of (trials, batch, row tiles,
column tiles) for the reference columns), whatever the block size the read runs in. A CPU read keeps
its buffers (the DAC's drives, the outputs summed over the row tiles, the noise when drawn at once)
for the next read (one set per thread, the largest read's; :func:`release_workspace` frees them).

**Differentiable read (hardware-aware training).** ``program(plan, seed, weights=W)`` programs the
same chip as ``program(plan, seed)`` (the same random numbers, the same conductances), but its
conductances carry the gradient of ``W``: ``d G / d W = c`` (the plan's scale; straight through the
rounding to levels; programming noise and stuck devices are drawn from detached values, a stuck
device passes no gradient). ``chip.mvm(x, differentiable=True)`` is the same read as ``chip.mvm(x)``
(the same code, the same values bit for bit from the same generator state, the plan's ADC full
scale fixed at mapping time) with the straight-through gradient attached in one step
(:class:`_ReadGradient`): straight through the DAC's rounding (its clip keeps its gradient), the
read noise and the ADC's rounding and saturation, so gradients reach ``x`` and ``W``. The gradient
is that of the ideal reader ``u @ G_d`` with the ``G_d`` the read used: with RTN or 1/f noise the
read's snapshot (its gradient through the snapshot), with drift the drifted conductances, with the
circuit reader its realized matrix carrying the gradient of ``G+ - G-`` (the Newton reader of
non-linear cells: Newton's result, the gradient of the ideal reader); drift compensation multiplies
by its (detached) factor. Every case is one code path: the values of the in-place read, then the
gradient.

Examples
--------
>>> import numpy as np
>>> from memcim.config import preset
>>> from memcim.simulate import simulate_mvm
>>> W = np.random.default_rng(0).normal(size=(300, 100))
>>> x = np.random.default_rng(1).normal(size=(16, 300))
>>> simulate_mvm(W, x, preset("generic"), trials=4, seed=0).shape
torch.Size([4, 16, 100])
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from memcim.config import HardwareConfig
from memcim.hardware.converters import adc_convert, dac_convert
from memcim.hardware.device import (check_time, drift_exponents, drift_factor, flicker_sigma, program_devices,
                                    read_noise_variance, rtn_factor)
from memcim.hardware.readers import NewtonTiles
from memcim.mapping.crossbar import MappedMatrix, map_matrix
from memcim.mapping.slicing import SlicedPlan


_WORK = threading.local()


def _workspace(shape: tuple, dtype: torch.dtype, device: torch.device, key: str = "sums") -> torch.Tensor:
    """An uninitialised buffer of a CPU read, kept (one per thread and ``key``, the largest asked
    for) and reused by the next read: a fresh allocation costs more in page faults than the passes
    over it (reads keep "drives", the DAC's outputs; "sums", the outputs summed over the row
    tiles; "noise", a read's noise when it is drawn at once; "block", one block's currents, variance,
    drive magnitudes and noise). :func:`release_workspace` frees them."""
    if torch.device(device).type != "cpu":   # CUDA's caching allocator already reuses memory
        return torch.empty(shape, dtype=dtype, device=device)
    n = math.prod(shape)
    bufs = getattr(_WORK, "bufs", None)
    if bufs is None:
        _WORK.bufs = bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.dtype != dtype or buf.numel() < n:
        bufs[key] = None
        bufs[key] = buf = torch.empty(n, dtype=dtype)
    return buf[:n].view(shape)


def release_workspace(keys=None) -> None:
    """Free this thread's read workspace (the buffers the largest CPU reads keep); with ``keys``, only
    the buffers kept under those keys (the analog layers keep theirs here too, :mod:`memcim.nn.analog`)."""
    if keys is None:
        _WORK.bufs = None
    elif getattr(_WORK, "bufs", None):
        for k in keys:
            _WORK.bufs.pop(k, None)


def _generator(seed: int | None, device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: {seed!r} is not allowed; use a non-negative integer")
        g.manual_seed(int(seed))
    return g


def _fold(x: torch.Tensor, factors: tuple, dt: torch.dtype, key: str | None = None, exact: bool = True) -> torch.Tensor:
    """``x`` (trials, ...) times ``factors`` in turn (float64 tensors that broadcast to one chip, or
    numbers), computed in float64 and rounded once to ``dt``: the values of
    ``(x.to(float64) * f1 * f2).to(dt)``, chip by chip in a kept float64 buffer of one chip (no
    float64 copy of every chip; in-place passes of one dtype each, which vectorize, where a product of
    two dtypes does not). ``key``: the result in that kept buffer (:func:`_workspace`), else a new one.
    ``exact=False``: computed in ``dt`` (each factor rounded to ``dt``; within a few ``dt`` roundings of
    the exact values), for constants folded again at every read (a training chip's)."""
    f64 = torch.float64
    x = x.detach()
    out = torch.empty(x.shape, dtype=dt, device=x.device) if key is None else _workspace(x.shape, dt, x.device, key)
    if not exact and dt != f64:
        f0, *rest = [f.to(dt) if isinstance(f, torch.Tensor) else f for f in factors]
        torch.mul(x, f0, out=out)
        for f in rest:
            out.mul_(f)
        return out
    for i in range(x.shape[0]):
        buf = out[i] if dt == f64 else _workspace(x.shape[1:], f64, x.device, "fold")
        buf.copy_(x[i])
        for f in factors:
            buf.mul_(f)
        if dt != f64:
            out[i].copy_(buf)
    return out


@dataclass(eq=False)
class ProgrammedChip:
    """Sampled conductances of ``trials`` chips programmed with one plan.

    Attributes
    ----------
    mapped : the plan (frozen).
    g_pos : programmed positive-side conductances [S], (trials, n_row_tiles, tile_rows, out_pad).
    g_neg : negative side: (trials, n_row_tiles, tile_rows, out_pad) for differential pairs, or the
        reference columns (trials, n_row_tiles, tile_rows, n_col_tiles) for offset mapping.
    generator : the read-noise generator; each read advances it, so reads differ but a chip
        programmed with the same seeds replays the same sequence.

    The array reader (:mod:`memcim.hardware.readers`) follows the plan's hardware: ideal wires,
    or the circuit solve of every tile when the array has wires (cached per chip for linear cells).
    """

    mapped: MappedMatrix
    g_pos: torch.Tensor
    g_neg: torch.Tensor
    generator: torch.Generator
    nu_pos: torch.Tensor | None = None
    nu_neg: torch.Tensor | None = None
    reference_inputs: torch.Tensor | None = None

    def __post_init__(self):
        self._cache = None
        self._newton = None
        self._gd = None      # the reader's effective difference: depends on conductances, wires, cells only
        self._lean = False   # conductances that carry a gradient: no noise state kept (see _prepared)
        self._t = self.mapped.hw.device.drift_t0   # the read time the caches hold
        self._g_t = None     # (g_pos, g_neg) drifted to self._t, or None at t0
        self._comp = {}      # read time -> drift-compensation factor

    # ------------------------------------------------------------------ time
    def _goto(self, t: float) -> None:
        """Move the caches to read time ``t`` (drifted conductances, their reader state)."""
        if t == self._t:
            return
        self._t = t
        if self.nu_pos is None:   # no drift: the conductances do not change with time
            return
        dev = self.mapped.hw.device
        self._g_t = None if t == dev.drift_t0 else (self.g_pos * drift_factor(self.nu_pos, t, dev),
                                                     self.g_neg * drift_factor(self.nu_neg, t, dev))
        self._cache = None
        self._newton = None
        self._gd = None

    def conductances(self, t: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g_pos, g_neg)`` [S] at read time ``t`` (default: the time of the last read, at first
        ``device.drift_t0``), before the per-read 1/f and RTN snapshots."""
        if t is not None:
            self._goto(check_time(t, self.mapped.hw.device))
        return self._g_t if self._g_t is not None else (self.g_pos, self.g_neg)

    @property
    def trials(self) -> int:
        return self.g_pos.shape[0]

    @property
    def device(self) -> torch.device:
        return self.g_pos.device

    @property
    def dtype(self) -> torch.dtype:
        return self.g_pos.dtype

    @property
    def reader(self) -> str:
        """"ideal" or "circuit" (see :attr:`memcim.config.HardwareConfig.reader`)."""
        return self.mapped.hw.reader

    def effective_difference(self, t: float | None = None) -> torch.Tensor:
        """What each array computes per unit drive, ``j = u @ G_d`` [S]: ``G+ - G-`` with ideal wires,
        the realized-matrix difference of every tile's nodal solve with wires (cached), at read time
        ``t`` (default: that of the last read)."""
        self.conductances(t)
        return self._prepared()[0]

    def realized(self, t: float | None = None) -> torch.Tensor:
        """Each chip's effective matrix with converters and read noise off, (trials, in, out)
        (IR drop included when the array has wires; non-linear cells linearised at the calibration
        read; drifted to ``t`` when given)."""
        m = self.mapped
        w = self.effective_difference(t) / m.scale.to(self.dtype).unsqueeze(1)
        w = w.reshape(self.trials, m.n_row_tiles * m.tile_rows, m.out_pad)
        return w[:, : m.in_features, : m.out_features]

    def _difference(self, gp: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        """``m.effective_difference``; when the conductances carry a gradient (training) and the
        reader is the circuit solve, which has none, the gradient is that of the ideal wires."""
        m = self.mapped
        gd = m.effective_difference(gp, gn)
        if m.hw.reader != "ideal" and (gp.requires_grad or gn.requires_grad):
            ideal = gp - m.expand_neg(gn)
            gd = ideal + (gd.to(ideal) - ideal.detach())
        return gd

    def _prepared(self):
        if self._cache is None:
            m = self.mapped
            hw = m.hw
            gp_t, gn_t = self.conductances()
            if self._gd is None:
                self._gd = self._difference(gp_t, gn_t).contiguous()
            gd = self._gd
            scale = m.scale.to(device=self.device, dtype=self.dtype)
            # the ADC full scale in units of u @ G [S]
            fs = (m.full_scale / (hw.array.r_tia * hw.array.v_read)).to(device=self.device, dtype=self.dtype)
            gs = gsum_th = None
            # a chip whose conductances carry a gradient (a training chip, read about once) keeps none
            # of its noise state: it is computed per read in kept buffers (see _read)
            self._lean = gp_t.requires_grad or gn_t.requires_grad
            if (hw.device.thermal_noise or hw.device.shot_noise) and not self._lean:
                if m.scheme == "differential":
                    gs = (gp_t + gn_t).contiguous()
                else:
                    gs = gp_t.contiguous()
                gsum_th = gs.sum(dim=2, keepdim=True)
            self._cache = (gd, scale, fs, gs, gsum_th)
        return self._cache

    def _snapshot(self, trials: slice, gen: torch.Generator):
        """Conductances of one read call's snapshot (RTN states, then 1/f noise at the read time) and
        their effective difference."""
        m = self.mapped
        dev = m.hw.device
        gp, gn = (g[trials] for g in self.conductances())
        if dev.has_rtn:
            gp = gp * rtn_factor(gp.shape, dev, gen, dtype=gp.dtype, device=gp.device)
            gn = gn * rtn_factor(gn.shape, dev, gen, dtype=gn.dtype, device=gn.device)
        if dev.has_read_1f:
            for i, (g, tgt) in enumerate(((gp, m.g_pos), (gn, m.g_neg))):
                sd = flicker_sigma(g.detach(), self._t, dev, tgt.to(g.dtype))
                noisy = g + sd * torch.randn(g.shape, generator=gen, dtype=g.dtype, device=g.device)
                noisy = torch.where(g.detach() > 0, noisy.clamp_min(0.0), g)   # absent devices stay at 0 S
                gp, gn = (noisy, gn) if i == 0 else (gp, noisy)
        return gp, gn, self._difference(gp, gn)

    def mvm(self, x, seed: int | None = None, generator: torch.Generator | None = None, *,
            differentiable: bool = False, t: float | None = None) -> torch.Tensor:
        """One read of every chip: ``y ~ x @ W``.

        Parameters
        ----------
        x : inputs (batch, in), shared by all chips, or (trials, batch, in); numpy or torch.
        seed, generator : the read-noise source; by default the chip's own generator.
        differentiable : the training read: the same read and values, with the straight-through
            gradient attached, so gradients reach ``x`` and (with ``program(..., weights=W)``) ``W``
            (see the module docstring). It keeps the DAC's drives (batch, in) for the backward pass.
        t : read time [s] after programming (default ``device.drift_t0``; see the module docstring).

        Returns
        -------
        Tensor (trials, batch, out) in the chip's dtype and device.
        """
        x = self._check_inputs(x)
        gen = generator if generator is not None else (
            _generator(seed, self.device) if seed is not None else self.generator)
        t = check_time(t, self.mapped.hw.device)
        y = self._mvm_at(x, t, gen, differentiable)
        if self.mapped.hw.compensation.drift != "none":
            y = y * self._compensation(t, gen).to(y.dtype)
        return y

    def mvm_drives(self, u, xscale, generator: torch.Generator | None = None, *, t: float | None = None) -> torch.Tensor:
        """One read of every chip with the word-line drive fractions ``u`` (batch, in) given directly,
        not converted by the DAC (a bit-serial input cycle, :mod:`memcim.simulate_slicing`): the
        outputs are multiplied by ``xscale`` (batch, 1) as a read multiplies by the DAC's input scale."""
        u = self._check_inputs(u)
        xscale = torch.as_tensor(xscale).to(device=self.device, dtype=self.dtype)
        gen = generator if generator is not None else self.generator
        t = check_time(t, self.mapped.hw.device)
        y = self._mvm_at(u, t, gen, False, xscale=xscale)
        if self.mapped.hw.compensation.drift != "none":
            y = y * self._compensation(t, gen).to(y.dtype)
        return y

    def _compensation(self, t: float, gen: torch.Generator) -> torch.Tensor:
        """The drift-compensation factor at ``t``: reference read at ``t0`` over reference read at
        ``t`` (sums of ``|y|``; one per chip, or per chip and column), computed once per chip and time.
        The reference reads draw their read noise from a generator of their own (seeded from the
        chip's), so compensation leaves the chip's own read sequence unchanged."""
        if t not in self._comp:
            dev, mode = self.mapped.hw.device, self.mapped.hw.compensation.drift
            if "gen" not in self._comp:  # reference reads draw their own noise: the chip's reads are unchanged
                g = torch.Generator(device=self.device)
                g.manual_seed((self.generator.initial_seed() * 1000003 + 0x5EED) % (2 ** 63))
                self._comp["gen"] = g
            gen = self._comp["gen"]
            ref = self._reference()
            keep = self._t
            if ("sum", dev.drift_t0) not in self._comp:
                s0 = self._mvm_at(ref, dev.drift_t0, gen, False).abs().sum(dim=-2, keepdim=True)
                self._comp[("sum", dev.drift_t0)] = s0
            s0 = self._comp[("sum", dev.drift_t0)]
            st = s0 if t == dev.drift_t0 else self._mvm_at(ref, t, gen, False).abs().sum(dim=-2, keepdim=True)
            self._goto(keep)
            if mode == "global":
                s0, st = s0.sum(dim=-1, keepdim=True), st.sum(dim=-1, keepdim=True)
            self._comp[t] = torch.where(st > 0, s0 / st.clamp_min(torch.finfo(st.dtype).tiny),
                                        torch.ones_like(st)).detach()
        return self._comp[t]

    def _reference(self) -> torch.Tensor:
        """Reference inputs of drift compensation: ``reference_inputs``, else 512 standard normal
        vectors (seed 0, the ADC calibration's default)."""
        if self.reference_inputs is not None:
            return self._check_inputs(self.reference_inputs)
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(512, self.mapped.in_features, generator=g, dtype=torch.float64)
        return x.to(device=self.device, dtype=self.dtype)

    def _mvm_at(self, x: torch.Tensor, t: float, gen: torch.Generator, differentiable: bool,
                xscale: torch.Tensor | None = None) -> torch.Tensor:
        """The read of checked inputs ``x`` at time ``t`` (no compensation); with ``xscale``, ``x`` are
        drive fractions that bypass the DAC. The values are always those of the in-place read
        (:meth:`_read`); with ``differentiable`` the straight-through gradient is attached to them in
        one step (:class:`_ReadGradient`)."""
        m = self.mapped
        hw = m.hw
        self._goto(t)
        prepared = self._prepared()
        pad = m.n_row_tiles * m.tile_rows - m.in_features
        # the drives: a kept buffer, zero in the padding rows (a fresh one when the gradient keeps them)
        shape = (*x.shape[:-1], m.n_row_tiles * m.tile_rows)
        u = torch.empty(shape, dtype=self.dtype, device=self.device) if differentiable else \
            _workspace(shape, self.dtype, self.device, "drives")
        if pad:
            u[..., m.in_features:].zero_()
        if xscale is None:
            _, xscale = dac_convert(x.detach(), hw.dac, out=u[..., : m.in_features])
        else:
            u[..., : m.in_features].copy_(x.detach())
            xscale = xscale.detach()
        B = u.shape[-2]
        # the effective difference of every chip read, as the read used it (carrying the gradient of the
        # conductances): the chip's own, or each read's RTN / 1/f snapshot
        gds = [] if differentiable else None
        # bound the working set: about 2**26 partial sums per chunk of trials
        per_trial = m.n_row_tiles * B * m.out_pad
        chunk = max(1, (1 << 26) // max(per_trial, 1))
        if self.trials <= chunk:
            y = self._read(u, xscale, slice(None), prepared, gen, keep=gds)
        else:
            y = torch.empty((self.trials, B, m.out_features), dtype=self.dtype, device=self.device)
            for t0 in range(0, self.trials, chunk):
                sl = slice(t0, min(t0 + chunk, self.trials))
                ui = u[sl] if u.ndim == 3 else u
                xi = xscale[sl] if xscale.ndim == 3 else xscale
                self._read(ui, xi, sl, prepared, gen, out=y[sl], keep=gds)
        if not differentiable:
            return y
        gd = gds[0] if len(gds) == 1 else torch.cat(gds, dim=0)
        if not (x.requires_grad or gd.requires_grad):
            return y
        scale = prepared[1]
        # 1/c: (nrt, 1, out_pad), or (1, 1, out_pad) when every row tile has the same (the linear mapping)
        shared = m.n_row_tiles == 1 or m.info.get("rows_share_scale") or torch.equal(scale[1:], scale[:-1])
        gain = 1.0 / (scale[:1] if shared else scale).unsqueeze(1)
        return _ReadGradient.apply(x, gd, (y, u, gd.detach(), xscale, gain, m, hw.dac))

    #: inputs per block of the read (:meth:`_read`) times out_pad: a block's currents, variance and
    #: partial-sum accumulator stay in cache through every pass over them
    _BLOCK_ELEMS = 1 << 18

    def _folded(self, gd, gs, gsum, g_neg, gn_sum, fs, gain, kept: bool = False):
        """The read's per-column constants folded into its two products, in the units of ADC steps
        (computed in float64, rounded once): ``gd / step``; ``gs * shot / step^2`` and the thermal
        variance ``th / step^2`` (shot-noise product and its bias: the variance in one ``addmm``),
        or the thermal std ``sqrt(th) / step`` without shot noise; the offset reference columns'
        ``g_neg * shot`` and thermal variance (their noise is per array, in the units of ``j``);
        ``1 / step``; and ``step * gain``, the factor each tile's ADC codes are summed with.
        ``step = fs / K`` with the ADC on, 1 without. ``kept``: the large ones in this thread's kept
        buffers (valid until the next read; a training chip's, not cached), computed in the chip's dtype
        (folded at every read: the float64 pass cost a training step ~5 %)."""
        m = self.mapped
        hw = m.hw
        dev = hw.device
        dt = gd.dtype
        v = hw.array.v_read
        f64 = torch.float64
        if kept and dt != f64:
            return self._folded_lean(gd, gs, gsum, g_neg, gn_sum, fs, gain)
        step = (fs.to(f64) / hw.adc.steps) if hw.adc.enabled else torch.ones_like(fs, dtype=f64)
        inv = (1.0 / step).unsqueeze(-2)                       # (nrt, 1, op)
        inv2 = inv ** 2
        gdf = _fold(gd, (inv,), dt, "fold_gd" if kept else None, exact=not kept)
        gsf = thf = sdf = gnf = thr = None
        if gs is not None:
            if dev.thermal_noise:
                thf = dev.thermal_psd * gsum.detach().to(f64) / v ** 2 * inv2
            if dev.shot_noise:
                gsf = _fold(gs, (dev.shot_psd / v, inv2), dt, "fold_gs" if kept else None, exact=not kept)
                thf = None if thf is None else thf.to(dt)
            elif thf is not None:
                sdf, thf = thf.sqrt().to(dt), None
            if m.scheme == "offset":
                if dev.shot_noise:
                    gnf = _fold(g_neg, (dev.shot_psd / v,), dt, "fold_gn" if kept else None, exact=not kept)
                if dev.thermal_noise:
                    thr = (dev.thermal_psd * gn_sum.detach().to(f64) / v ** 2).to(dt)
        sg = (step * gain.to(f64)).to(dt)                       # (nrt, op)
        return gdf, gsf, thf, sdf, gnf, thr, inv.squeeze(-2).to(dt), sg

    def _folded_lean(self, gd, gs, gsum, g_neg, gn_sum, fs, gain):
        """:meth:`_folded` of a training chip in its own dtype (float32): the same constants, each
        factor rounded to the dtype (within a few roundings of the float64 fold), in fewer operations
        on the small per-column tensors (they are folded again at every read)."""
        m = self.mapped
        hw = m.hw
        dev = hw.device
        dt = gd.dtype
        v = hw.array.v_read
        step = fs / hw.adc.steps if hw.adc.enabled else torch.ones_like(fs)      # (nrt, op)
        inv = torch.reciprocal(step)
        invb = inv.unsqueeze(-2)                                                 # (nrt, 1, op)
        gdf = torch.mul(gd, invb, out=_workspace(gd.shape, dt, gd.device, "fold_gd"))
        gsf = thf = sdf = gnf = thr = None
        if gs is not None:
            if dev.thermal_noise:
                thf = gsum.detach() * (dev.thermal_psd / v ** 2)
                thf.mul_(invb).mul_(invb)
            if dev.shot_noise:
                gsf = torch.mul(gs, dev.shot_psd / v, out=_workspace(gs.shape, dt, gs.device, "fold_gs"))
                gsf.mul_(invb * invb)
            elif thf is not None:
                sdf, thf = thf.sqrt_(), None
            if m.scheme == "offset":
                if dev.shot_noise:
                    gnf = torch.mul(g_neg, dev.shot_psd / v, out=_workspace(g_neg.shape, dt, g_neg.device, "fold_gn"))
                if dev.thermal_noise:
                    thr = gn_sum.detach() * (dev.thermal_psd / v ** 2)
        return gdf, gsf, thf, sdf, gnf, thr, inv, step * gain

    def _read(self, u, xscale, trials: slice, prepared, gen, out: torch.Tensor | None = None,
              keep: list | None = None) -> torch.Tensor:
        """The analog read for the chips ``trials``: (T, batch, out), with ``u`` the DAC's drives
        (padded to the row tiles).

        The read runs block by block (one chip, a few hundred inputs, every row tile): a tile's
        product ``u @ (G_d / step)`` (in ADC steps), its read-noise std (``addmm`` of ``|u|`` with
        the shot-noise weights and the thermal bias, one square root), the noise, the ADC's
        rounding and clamp are done in place while the block is in cache, and the codes are summed
        over the row tiles with their ``step / c`` into the block's outputs (no partial-sum buffer).
        The noise of a read is one standard normal draw of shape (T, batch, row tiles, out_pad)
        (offset: then one of (T, batch, row tiles, column tiles) for the reference columns), drawn
        block by block in that order when every block is a multiple of 16 values (the stream of one
        draw), else at once: every value is independent of the block size. The Newton reader runs
        as one block (:meth:`_noise_adc`), with the same draw. ``keep`` (a list) receives the
        effective difference the read used, (T, nrt, R, out_pad), with the conductances' gradient
        (the chip's, or this read's RTN / 1/f snapshot): the differentiable read's gradient."""
        m = self.mapped
        hw = m.hw
        dev = hw.device
        gd, scale, fs, gs, gsum_th = prepared[:5]
        gd = gd if trials == slice(None) else gd[trials]   # (a view of all would carry a copy back)
        g_neg = self.conductances()[1][trials]
        noisy = dev.thermal_noise or dev.shot_noise
        if dev.has_rtn or dev.has_read_1f:  # one telegraph / 1/f snapshot per read call
            g_pos, g_neg, gd = self._snapshot(trials, gen)
            if noisy:
                gs = (g_pos + g_neg) if m.scheme == "differential" else g_pos
        elif noisy and self._lean:         # a training chip: its noise weights in a kept buffer
            g_pos = self.conductances()[0][trials].detach()
            if m.scheme == "differential" and not dev.shot_noise and g_pos.dtype != torch.float64:
                # thermal noise only needs the column sums of G+ + G-: summed side by side (float32:
                # within its rounding of the sum of the added pair, without writing the pair's sum)
                gs, gsum_th = g_pos, g_pos.sum(dim=2, keepdim=True).add_(g_neg.detach().sum(dim=2, keepdim=True))
            else:
                gs = g_pos if m.scheme != "differential" else \
                    torch.add(g_pos, g_neg.detach(), out=_workspace(g_pos.shape, g_pos.dtype, g_pos.device, "gs"))
        if keep is not None:
            keep.append(gd)
        with torch.no_grad():    # the values: the gradient, when asked for, is attached by _mvm_at
            return self._read_values(u, xscale, trials, gd.detach(), scale, fs, gs, gsum_th, g_neg.detach(),
                                     gen, out)

    def _read_values(self, u, xscale, trials, gd, scale, fs, gs, gsum_th, g_neg, gen, out):
        m = self.mapped
        hw = m.hw
        dev = hw.device
        lean = self._lean and not (dev.has_rtn or dev.has_read_1f)
        if gs is not None:
            if dev.has_rtn or dev.has_read_1f or (lean and gsum_th is None):
                gs = gs.detach()
                gsum_th = gs.sum(dim=2, keepdim=True)
            elif lean:                    # the column sums the read gave (see _read)
                gs = gs.detach()
            else:
                gs, gsum_th = gs[trials].detach(), gsum_th[trials].detach()
        gn_sum = g_neg.sum(dim=2, keepdim=True) if gs is not None and m.scheme == "offset" else None
        R, nrt, op, nct = m.tile_rows, m.n_row_tiles, m.out_pad, m.n_col_tiles
        B = u.shape[-2]
        T = gd.shape[0]
        if hw.reader == "circuit" and not hw.cell.linear and hw.cell.solve == "newton":
            if dev.has_rtn:
                raise ValueError("device.rtn_amplitude: random telegraph noise with cell.solve = 'newton' is not "
                                 "supported (every read would rebuild the non-linear tiles); use cell.solve = "
                                 "'linearized' or switch RTN off")
            if self._newton is None:
                self._newton = NewtonTiles(self.mapped, *(g.detach() for g in self.conductances()))
            lead = u.shape[:-2]
            ut = u.reshape(*lead, B, nrt, R).transpose(-3, -2)  # (..., nrt, B, R)
            if len(lead) == 0:
                ut = ut.unsqueeze(0)
            j = self._newton.currents(ut, range(self.trials)[trials])  # (T, nrt, B, out_pad): current / v_read [S]
            a = ut.abs() if gs is not None and dev.shot_noise else None
            fsb, gain = fs.unsqueeze(1), 1.0 / scale.unsqueeze(1)   # per row tile and column: (nrt, 1, out_pad)
            j = self._noise_adc(j, a, gs, gsum_th, g_neg, gn_sum, fsb, gain, gen)
            y = j.sum(dim=1)[..., : m.out_features]
            return torch.mul(y, xscale) if out is None else torch.mul(y, xscale, out=out)
        if dev.has_rtn or dev.has_read_1f or lean:
            folded = self._folded(gd, gs, gsum_th, g_neg, gn_sum, fs, 1.0 / scale, kept=lean)
        else:   # static conductances: the folded constants are kept with the chip's other read state
            if len(self._cache) == 5:
                c = self._cache
                gn_all = self.conductances()[1]
                self._cache = (*c, self._folded(c[0], c[3], c[4], gn_all, gn_all.sum(dim=2, keepdim=True)
                                                if c[3] is not None and m.scheme == "offset" else None, fs, 1.0 / scale))
            folded = tuple(f if f is None or k >= 6 else f[trials] for k, f in enumerate(self._cache[5]))
        gdf, gsf, thf, sdf, gnf, thr, inv, sg = folded
        noisy = gs is not None
        offset = noisy and m.scheme == "offset"
        ks = float(hw.adc.steps) if hw.adc.enabled and hw.adc.saturate else None
        rounding = hw.adc.enabled
        rows = max(16, (self._BLOCK_ELEMS // op) // 16 * 16)
        stream = noisy and not offset and (B * nrt * op) % 16 == 0
        noise = n_ref = None
        if noisy and not stream:     # the whole read's noise at once (offset: then the reference columns')
            noise = _workspace((T, B, nrt, op), gd.dtype, gd.device, "noise").normal_(generator=gen)
            if offset:
                n_ref = torch.randn((T, B, nrt, nct), generator=gen, dtype=gd.dtype, device=gd.device)
        if out is None:
            out = torch.empty((T, B, m.out_features), dtype=gd.dtype, device=gd.device)
        # the outputs are summed in place where they have no padding columns
        y = out if op == m.out_features else _workspace((T, B, op), gd.dtype, gd.device)
        # one block's buffers, carved from one kept buffer: currents, variance, |u|, noise
        nb = min(rows, B)
        # a training chip (read about once) reads all the row tiles of a block together: their noise, ADC
        # rounding and clamp are one pass each over (row tiles, rows, out_pad), not one per tile (the same
        # values: elementwise, in the same order)
        tiled = lean and not offset and u.ndim == 2 and hw.reader == "ideal"
        nj = nrt if tiled else 1
        sizes = [nj * nb * op, nj * nb * op if gsf is not None else 0,
                 nb * nrt * R if gsf is not None or gnf is not None else 0, nb * nrt * op if stream else 0]
        blk = _workspace((sum(sizes),), gd.dtype, gd.device, "block").split(sizes)
        jb = blk[0][: nb * op].view(nb, op)
        vb = blk[1][: nb * op].view(nb, op) if sizes[1] else None
        ab = blk[2].view(nb, nrt * R) if sizes[2] else None
        zb = blk[3].view(nb, nrt, op) if sizes[3] else None
        tiles = range(nrt)
        cols = [slice(t * R, (t + 1) * R) for t in tiles]
        sgt, invt = sg.unbind(0), inv.unbind(0)
        for i in range(T):
            ui = u[i] if u.ndim == 3 else u
            gdi = gdf[i].unbind(0)
            gsi = None if gsf is None else gsf[i].unbind(0)
            thi = None if thf is None else thf[i].unbind(0)
            sdi = None if sdf is None else sdf[i].unbind(0)
            for b0 in range(0, B, rows):
                r = slice(b0, min(b0 + rows, B))
                n = r.stop - r.start
                ub, yb, jt = ui[r], y[i, r], jb[:n]
                vt = None if vb is None else vb[:n]
                if ab is not None:
                    at = torch.abs(ub, out=ab[:n])
                if stream:
                    z = zb[:n].normal_(generator=gen)
                elif noisy:
                    z = noise[i, r]
                if tiled:
                    self._block_tiles(ub, yb, blk, n, z if noisy else None, at if ab is not None else None,
                                      gdf[i], gsi, thi, sdf[i] if sdf is not None else None, sgt, cols,
                                      rounding, ks)
                    continue
                for t in tiles:
                    torch.mm(ub[:, cols[t]], gdi[t], out=jt)                # u @ G_d in ADC steps
                    if gsi is not None:                                     # + z sqrt(thermal + shot)
                        if thi is None:
                            torch.mm(at[:, cols[t]], gsi[t], out=vt)
                        else:
                            torch.addmm(thi[t], at[:, cols[t]], gsi[t], out=vt)
                        jt.addcmul_(z[:, t], vt.sqrt_())
                    elif sdi is not None:                                   # + z sqrt(thermal)
                        jt.addcmul_(z[:, t], sdi[t])
                    if offset:   # the array's reference column: one noise per array, common to its outputs
                        vr = thr[i, t] if gnf is None else (torch.mm(at[:, cols[t]], gnf[i, t]) if thr is None else
                                                           torch.addmm(thr[i, t], at[:, cols[t]], gnf[i, t]))
                        nr = n_ref[i, r, t] * vr.sqrt()
                        jt.addcmul_(m.expand_neg(nr), invt[t], value=-1.0)
                    if rounding:                                            # ADC codes
                        jt.round_()
                        if ks is not None:
                            jt.clamp_(-ks, ks)
                    if t == 0:                                              # summed with step / c
                        torch.mul(jt, sgt[t], out=yb)
                    else:
                        yb.addcmul_(jt, sgt[t])
        return out.mul_(xscale) if y is out else torch.mul(y[..., : m.out_features], xscale, out=out)

    @staticmethod
    def _block_tiles(ub, yb, blk, n, z, at, gdc, gsi, thi, sdc, sgt, cols, rounding, ks):
        """One block of :meth:`_read` with every row tile at once (a training chip's read): the tiles'
        products ``u @ (G_d / step)`` into one (nrt, n, out_pad) buffer, then the noise, the ADC's
        rounding and clamp in one pass each, and the codes summed over the tiles with ``step / c`` in
        the tiles' order (the values of the per-tile loop)."""
        nrt, _, op = gdc.shape
        ja = blk[0][: nrt * n * op].view(nrt, n, op)
        jt = ja.unbind(0)
        if n * gdc.shape[1] * op >= 400:      # (a product as large as this one runs BLAS's gemm per tile, as mm)
            torch.bmm(ub.view(n, nrt, -1).transpose(0, 1), gdc, out=ja)    # u @ G_d in ADC steps, per tile
        else:
            for t, gt in enumerate(gdc.unbind(0)):
                torch.mm(ub[:, cols[t]], gt, out=jt[t])
        if gsi is not None:                                         # + z sqrt(thermal + shot)
            va = blk[1][: nrt * n * op].view(nrt, n, op)
            vt = va.unbind(0)
            for t in range(nrt):
                if thi is None:
                    torch.mm(at[:, cols[t]], gsi[t], out=vt[t])
                else:
                    torch.addmm(thi[t], at[:, cols[t]], gsi[t], out=vt[t])
            ja.addcmul_(z.transpose(0, 1), va.sqrt_())
        elif sdc is not None:                                       # + z sqrt(thermal)
            ja.addcmul_(z.transpose(0, 1), sdc)
        if rounding:                                                # ADC codes
            ja.round_()
            if ks is not None:
                ja.clamp_(-ks, ks)
        torch.mul(jt[0], sgt[0], out=yb)                           # summed with step / c
        for t in range(1, nrt):
            yb.addcmul_(jt[t], sgt[t])

    def _noise_adc(self, j, a, gs, gsum, g_neg, gn_sum, fs, gain, gen, noise=None, n_ref=None):
        """Read noise, ADC and digital rescale of the noise-free currents ``j`` (..., rows, out_pad) of
        one block (the Newton reader's), in place.

        ``a``: the block's drive magnitudes ``|u|`` (..., rows, tile_rows), None without shot noise;
        ``gs``, ``gsum``: the conductances that carry read noise and their column sums; ``g_neg``,
        ``gn_sum``: the offset reference columns and their sums; ``noise``, ``n_ref``: the block's
        slices of noise drawn beforehand (default: drawn here)."""
        m = self.mapped
        hw = m.hw
        dev = hw.device
        if gs is not None:
            v, v2 = hw.array.v_read, hw.array.v_read ** 2
            # read-noise variance [A^2] (device.read_noise_variance) over v_read^2, in the units of j;
            # computed in place on the shot-noise product (one pass, no extra buffer)
            var = read_noise_variance(gsum / v2, None if a is None else torch.matmul(a, gs).div_(v2), v, dev,
                                      inplace=True)
            sd = var.sqrt_() if var.shape == j.shape else var.sqrt().expand_as(j)
            if noise is None:
                # drawn as (T, batch, row tiles, out_pad), the order of the blocked read (:meth:`_read`)
                T_, nrt_, B_, op_ = j.shape
                noise = torch.randn((T_, B_, nrt_, op_), generator=gen, dtype=j.dtype,
                                    device=j.device).transpose(1, 2)
            j.addcmul_(noise, sd)
            if m.scheme == "offset":
                # the reference column of each array is one physical column: its noise is common to
                # every output of that array, so it is drawn once per array and subtracted from all
                var_ref = read_noise_variance(gn_sum / v2, None if a is None else torch.matmul(a, g_neg).div_(v2), v,
                                              dev, inplace=True)
                shape = (*j.shape[:-1], m.n_col_tiles)
                if n_ref is None:
                    n_ref = torch.randn((shape[0], shape[2], shape[1], shape[3]), generator=gen, dtype=j.dtype,
                                        device=j.device).transpose(1, 2)
                n_ref = n_ref * var_ref.expand(shape).sqrt()
                j.sub_(m.expand_neg(n_ref))
        # ADC (fs is in the units of j) and the digital rescale 1/c in one pass
        return adc_convert(j, fs, hw.adc, inplace=True, gain=gain)

    def _check_inputs(self, x) -> torch.Tensor:
        m = self.mapped
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.asarray(x, dtype=np.float64))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a numpy array or torch tensor, got {type(x).__name__}")
        if x.ndim not in (2, 3) or x.shape[-1] != m.in_features:
            raise ValueError(f"x: shape {tuple(x.shape)} does not match the matrix; expected (batch, {m.in_features})"
                             f" or (trials, batch, {m.in_features})")
        if x.ndim == 3 and x.shape[0] != self.trials:
            raise ValueError(f"x: leading dimension {x.shape[0]} must equal the number of trials ({self.trials})")
        x = x.to(device=self.device, dtype=self.dtype)
        if x.numel() and not all(map(math.isfinite, torch.stack(torch.aminmax(x)).tolist())):  # one pass; NaN propagates
            raise ValueError("x: contains NaN or inf; all inputs must be finite")
        return x

    def with_plan(self, mapped: MappedMatrix) -> "ProgrammedChip":
        """The same programmed devices read under another plan of the same shape (a designed ADC full
        scale, say): a new chip sharing the conductances, with a copy of the read-noise generator."""
        if not isinstance(mapped, MappedMatrix):
            raise TypeError(f"mapped: expected a MappedMatrix, got {type(mapped).__name__}")
        if mapped.g_pos.shape != self.mapped.g_pos.shape or mapped.g_neg.shape != self.mapped.g_neg.shape:
            raise ValueError(f"mapped: its layout {tuple(mapped.g_pos.shape)} differs from this chip's "
                             f"{tuple(self.mapped.g_pos.shape)}")
        gen = torch.Generator(device=self.device)
        gen.set_state(self.generator.get_state())
        chip = ProgrammedChip(mapped=mapped.to(self.device), g_pos=self.g_pos, g_neg=self.g_neg, generator=gen,
                              nu_pos=self.nu_pos, nu_neg=self.nu_neg, reference_inputs=self.reference_inputs)
        o, n = self.mapped.hw, mapped.hw
        same_time = self.nu_pos is None or self._t == o.device.drift_t0
        if same_time and (o.wires, o.cell, o.mapping.scheme, o.mapping.pair, o.device.drift_t0) == (
                n.wires, n.cell, n.mapping.scheme, n.mapping.pair, n.device.drift_t0):
            chip._gd = self.effective_difference()   # the same devices on the same wires: solved tiles carry over
        return chip

    def with_full_scale(self, full_scale) -> "ProgrammedChip":
        """A new chip with the ADC full scale [V] replaced (see :meth:`MappedMatrix.with_full_scale`)."""
        return self.with_plan(self.mapped.with_full_scale(full_scale))

    def state_dict(self) -> dict:
        """Tensors that define this chip (the plan is rebuilt from the config and W)."""
        d = {"g_pos": self.g_pos, "g_neg": self.g_neg, "rng_state": self.generator.get_state()}
        if self.nu_pos is not None:
            d.update(nu_pos=self.nu_pos, nu_neg=self.nu_neg)
        return d

    def load_state_dict(self, state: dict) -> None:
        self.g_pos = state["g_pos"].to(self.g_pos)
        self.g_neg = state["g_neg"].to(self.g_neg)
        self.generator.set_state(state["rng_state"])
        if "nu_pos" in state:
            self.nu_pos, self.nu_neg = state["nu_pos"].to(self.g_pos), state["nu_neg"].to(self.g_neg)
        self.__post_init__()


def _trainable_targets(m: MappedMatrix, weights, dtype) -> torch.Tensor | None:
    """``[W >= 0]`` and ``[W <= 0]`` of the matrix ``weights`` (in, out), checked, in the plan's tile
    layout (2, nrt, tile_rows, out_pad), ``dtype``, 0 in the tile padding: which side of each
    differential pair follows its weight (None for offset plans, whose one device always does)."""
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights: expected a torch tensor (in, out), got {type(weights).__name__}")
    if tuple(weights.shape) != (m.in_features, m.out_features):
        raise ValueError(f"weights: shape {tuple(weights.shape)} does not match the plan's "
                         f"({m.in_features}, {m.out_features})")
    if m.scheme != "differential":
        return None
    n, k, rows = m.in_features, m.out_features, m.n_row_tiles * m.tile_rows
    sign = torch.empty((2, rows, m.out_pad), dtype=dtype, device=weights.device)
    w = weights.detach().contiguous()               # (a comparison reading a transposed W is ~40x slower)
    torch.ge(w, 0.0, out=sign[0, :n, :k])          # written in place: no padded copy of W
    torch.le(w, 0.0, out=sign[1, :n, :k])
    sign[:, n:].zero_()
    sign[:, :n, k:].zero_()
    return sign.view(2, m.n_row_tiles, m.tile_rows, m.out_pad)


class _WeightGradient(torch.autograd.Function):
    """Programmed conductances ``(G+, G-)`` and the ideal reader's difference ``G_d = G+ - G-`` as
    functions of the weights W (in, out): ``d G+ / d W = c [W >= 0]`` and ``d G- / d W = -c [W <= 0]``
    (differential; offset: ``d G / d W = c``, the reference columns have none), straight through the
    level rounding, times each device's ``d G / d G_target`` from
    :func:`memcim.hardware.device.program_devices` (0 where stuck, clipped at 0 S or absent), summed
    over the chips; ``c`` is the plan's scale (per array for ``dpe`` / ``representable``). The same
    gradient as the targets ``c max(W, 0)`` carried through the sampling by autograd.

    ``G_d`` (the third output; :meth:`ProgrammedChip.effective_difference` of the ideal reader, the
    values of ``G+ - expand(G-)``) carries the pair's gradient folded into one factor per weight in
    the forward pass, ``f = keep+ [W >= 0] + keep- [W <= 0]`` (offset: ``keep``), so a read's
    gradient reaches W in one pass (``c f dL/dG_d``); ``G+`` and ``G-`` carry theirs too (used
    when a read goes through them: drift, RTN, 1/f snapshots)."""

    @staticmethod
    def forward(ctx, weights, keep_pos, keep_neg, box):
        m, sign, g_pos, g_neg = box
        ctx.set_materialize_grads(False)     # an output the loss does not use passes None, not zeros
        gd = g_pos - m.expand_neg(g_neg)
        if m.scheme == "differential":     # the pair's factor per weight: keep+ [W >= 0] + keep- [W <= 0]
            f = torch.mul(keep_pos, sign[0])
            f.addcmul_(keep_neg, sign[1])
        else:
            f, keep_neg, sign = keep_pos, None, None
            ctx.mark_non_differentiable(g_neg)
        ctx.m, ctx.wdtype = m, weights.dtype
        ctx.save_for_backward(keep_pos, keep_neg, sign, f)
        return g_pos, g_neg, gd

    @staticmethod
    def backward(ctx, grad_pos, grad_neg, grad_d):
        m = ctx.m
        keep_pos, keep_neg, sign, f = ctx.saved_tensors
        acc = None
        if grad_d is not None:
            acc = grad_d * f
        if grad_pos is not None:
            gp = grad_pos * keep_pos
            if sign is not None:
                gp.mul_(sign[0])
            acc = gp if acc is None else acc.add_(gp)
        if keep_neg is not None and grad_neg is not None:
            gn = (grad_neg * keep_neg).mul_(sign[1])
            acc = gn.neg_() if acc is None else acc.sub_(gn)
        if acc is None:
            return None, None, None, None
        acc = acc.sum(0) if acc.shape[0] > 1 else acc[0]
        acc.mul_(m.scale.to(device=acc.device, dtype=acc.dtype).unsqueeze(1))  # c: (nrt, 1, out_pad)
        gw = acc.reshape(m.n_row_tiles * m.tile_rows, m.out_pad)[: m.in_features, : m.out_features]
        return gw.to(ctx.wdtype), None, None, None


def _stacked_pair(m: MappedMatrix) -> torch.Tensor | None:
    """The (2, nrt, R, out_pad) tensor whose two entries are the plan's ``g_pos`` and ``g_neg``
    (differential plans of :func:`memcim.mapping.crossbar.map_for_training`), else None."""
    gp, gn = m.g_pos, m.g_neg
    base = gp._base
    if (m.scheme != "differential" or base is None or gn._base is not base or base.ndim != 4 or base.shape[0] != 2
            or not base.is_contiguous() or not gp.is_contiguous() or not gn.is_contiguous()
            or gp.data_ptr() != base.data_ptr() or gn.data_ptr() != base[1].data_ptr()):
        return None
    return base


def program(mapped: MappedMatrix, seed: int | None = None, trials: int = 1, *, dtype: torch.dtype = torch.float32,
            device=None, weights: torch.Tensor | None = None, reference_inputs=None) -> ProgrammedChip:
    """Program ``trials`` independent chips with the plan ``mapped``.

    Parameters
    ----------
    mapped : the conductance plan from :func:`memcim.mapping.crossbar.map_matrix`.
    seed : seeds programming and then the chip's read-noise generator (None: fresh entropy).
    trials : number of chips (Monte Carlo trials), the leading dimension of every result.
    dtype : float32 (default, fast) or float64.
    device : "cpu", "cuda", ...; default: the plan's device.
    weights : for training, the matrix W (in, out) the plan was made from, as a tensor that needs
        its gradient: the chips are the same, and their conductances carry ``d G / d W`` (see the
        module docstring; read them with ``mvm(x, differentiable=True)``).
    reference_inputs : (batch, in) inputs of the drift compensation's reference reads (default: 512
        standard normal vectors); used only with ``compensation.drift``.
    The two sides of differential pairs are drawn in one call when the plan holds them in one tensor
    (:func:`memcim.mapping.crossbar.map_for_training` does), else one side after the other; the stuck
    devices by their geometric gaps (:func:`memcim.hardware.device.program_devices`).

    With drift on (``device.drift_*``), one drift exponent per device is drawn after the programming
    noise, from the same seed. To leave a non-ideality out, program a plan made with ``hw.without(...)``.
    """
    if isinstance(mapped, SlicedPlan):   # bit slicing (hw.slicing): one chip per weight slice
        from memcim.simulate_slicing import program_sliced

        return program_sliced(mapped, seed, trials, dtype=dtype, device=device, weights=weights,
                              reference_inputs=reference_inputs)
    if not isinstance(mapped, MappedMatrix):
        raise TypeError(f"mapped: expected a MappedMatrix from map_matrix, got {type(mapped).__name__}")
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials: {trials!r} is not allowed; must be an integer >= 1")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: {dtype} is not allowed; use torch.float32 or torch.float64")
    device = torch.device(device) if device is not None else mapped.g_pos.device
    m = mapped.to(device)
    gen = _generator(seed, device)
    dev = m.hw.device
    t_pos, t_neg = m.g_pos.to(dtype), m.g_neg.to(dtype)
    trials = int(trials)
    kw = dict(follows=weights is not None)
    pair = _stacked_pair(m)
    if pair is not None:    # both sides at once: (trials, 2, nrt, R, out_pad)
        lv = None if m.level_pos is None else torch.stack([m.level_pos, m.level_neg])
        out = program_devices(pair.to(dtype), lv, m.mask_pos, dev, trials, gen, **kw)
        both, keep = out if weights is not None else (out, None)
        g_pos, g_neg = both[:, 0], both[:, 1]
        keep_pos, keep_neg = (None, None) if keep is None else (keep[:, 0], keep[:, 1])
        if trials > 1:
            g_pos, g_neg = g_pos.contiguous(), g_neg.contiguous()
    else:
        out_pos = program_devices(t_pos, m.level_pos, m.mask_pos, dev, trials, gen, **kw)
        out_neg = program_devices(t_neg, m.level_neg, m.mask_neg, dev, trials, gen, **kw)
        (g_pos, keep_pos), (g_neg, keep_neg) = (out_pos, out_neg) if weights is not None else \
            ((out_pos, None), (out_neg, None))
    gd = None
    if weights is not None:   # the weights' gradient attached to the same draws (see _WeightGradient)
        sign = _trainable_targets(m, weights.to(device), dtype)
        if weights.requires_grad:
            g_pos, g_neg, gd = _WeightGradient.apply(weights, keep_pos, keep_neg, (m, sign, g_pos, g_neg))
    nu_pos = nu_neg = None
    if dev.has_drift:
        nu_pos = drift_exponents(t_pos, dev, int(trials), gen)
        nu_neg = drift_exponents(t_neg, dev, int(trials), gen)
    ref = None
    if reference_inputs is not None:
        ref = torch.as_tensor(np.asarray(reference_inputs) if not isinstance(reference_inputs, torch.Tensor)
                              else reference_inputs.detach())
    chip = ProgrammedChip(mapped=m, g_pos=g_pos, g_neg=g_neg, generator=gen, nu_pos=nu_pos, nu_neg=nu_neg,
                          reference_inputs=ref)
    if gd is not None and m.hw.reader == "ideal":   # the ideal reader's difference, with the folded gradient
        chip._gd = gd
    return chip


class _ReadGradient(torch.autograd.Function):
    """The straight-through gradient of a read (``mvm(x, differentiable=True)``), attached in one step
    to the values of the in-place read: for the inputs ``x`` (batch, in) or (trials, batch, in) and
    the effective difference ``G_d`` (trials, nrt, R, out_pad) the read used. Per row tile and column
    ``d y / d j = x_scale / c`` (straight through the read noise and the ADC's rounding and
    saturation), ``j = u @ G_d`` (the ideal reader's product, with the values of ``G_d`` the read
    used; a circuit reader's ``G_d`` carries the gradient of ``G+ - G-``), and ``d u / d x =
    1 / x_scale`` inside the DAC's range (straight through its rounding; ``x_scale`` is a setting of
    the read, not differentiated)."""

    @staticmethod
    def forward(ctx, x, gd, box):
        y, u, gdv, xs, gain, m, dac = box
        ctx.m, ctx.dac, ctx.xdim = m, dac, x.ndim
        ctx.save_for_backward(x, u, gdv, xs, gain)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, u, gdv, xs, gain = ctx.saved_tensors
        m = ctx.m
        nrt, R = m.n_row_tiles, m.tile_rows
        g = grad * xs                                                        # (T, B, out)
        if m.out_pad > m.out_features:
            g = torch.nn.functional.pad(g, (0, m.out_pad - m.out_features))
        B = u.shape[-2]
        dx = dgd = None
        if gain.shape[0] == 1:   # one gain for every row tile: each product over all the tiles at once
            gj = g * gain[0]                                                 # (T, B, op)
            if gj.shape[0] == 1 and u.ndim == 2 and ctx.xdim == 2:   # one chip: two plain products
                g2 = gj[0]
                if ctx.needs_input_grad[1]:
                    dgd = torch.mm(u.t(), g2).view(1, nrt, R, m.out_pad)
                if ctx.needs_input_grad[0]:
                    dx = torch.mm(g2, gdv.view(nrt * R, m.out_pad).t())[:, : m.in_features].div_(xs)
                    return _ReadGradient.dac_clip(ctx, x, xs, dx), dgd, None
                return None, dgd, None
            if ctx.needs_input_grad[1]:
                dgd = torch.matmul(u.transpose(-1, -2), gj).view(gj.shape[0], nrt, R, m.out_pad)
            if ctx.needs_input_grad[0]:
                du = torch.matmul(gj, gdv.reshape(gdv.shape[0], nrt * R, m.out_pad).transpose(-1, -2))  # (T, B, nrt R)
                if ctx.xdim == 2:      # inputs shared by the chips
                    du = du.sum(0) if du.shape[0] > 1 else du[0]
                du = du[..., : m.in_features]
        else:
            gj = g.unsqueeze(-3) * gain                                      # (T, nrt, B, op)
            ut = u.view(*u.shape[:-1], nrt, R).transpose(-3, -2)             # (..., nrt, B, R)
            if ctx.needs_input_grad[1]:
                dgd = torch.matmul(ut.transpose(-1, -2), gj)                 # (T, nrt, R, op)
            if ctx.needs_input_grad[0]:
                du = torch.matmul(gj, gdv.transpose(-1, -2))                 # (T, nrt, B, R)
                if ctx.xdim == 2:      # inputs shared by the chips
                    du = du.sum(0) if du.shape[0] > 1 else du[0]
                du = du.transpose(-3, -2).reshape(*du.shape[:-3], B, nrt * R)[..., : m.in_features]
        if ctx.needs_input_grad[0]:
            dx = _ReadGradient.dac_clip(ctx, x, xs, du / xs)
        return dx, dgd, None

    @staticmethod
    def dac_clip(ctx, x, xs, dx):
        """``dx`` where the DAC passes the gradient: 0 outside its clip range ``[lo, 1]`` of ``x / xs``
        (with ``x_range`` or an unsigned DAC; a signed DAC scaled by each vector's abs-max clips none)."""
        dac = ctx.dac
        if dac.enabled and (dac.x_range is not None or not dac.signed):
            r = x.detach() / xs                                              # the clip passes [lo, 1] only
            dx = dx * ((r >= (-1.0 if dac.signed else 0.0)) & (r <= 1.0)).to(dx.dtype)
        return dx


def simulate_mvm(W, x, hw: HardwareConfig, trials: int = 1, seed: int | None = 0, *, calib_inputs=None,
                 dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Map ``W``, program ``trials`` chips and read them once with ``x``: returns (trials, batch, out)."""
    mapped = map_matrix(W, hw, calib_inputs=calib_inputs)
    chip = program(mapped, seed=seed, trials=trials, dtype=dtype, device=device)
    return chip.mvm(x)
