"""Statistical simulation of crossbar MVMs: program chips, then read them.

``program(mapped, seed, trials)`` samples ``trials`` independent chips (programming noise and stuck
devices). ``chip.mvm(x)`` runs one read of every chip:

    x -> DAC -> word lines (u * v_read) -> crossbar currents (+ thermal and shot noise drawn fresh on
    every read) -> TIA (V = r_tia * I) -> ADC (per array or per column full scale) -> digital rescale
    -> partial sums of the row tiles added digitally.

Trials are the leading dimension of every output. Everything runs on the tensors' device (CPU or
CUDA) and is reproducible from the seeds.

Examples
--------
>>> import numpy as np
>>> from memcim.config import preset
>>> from memcim.simulate import simulate_mvm
>>> W = np.random.default_rng(0).normal(size=(300, 100))
>>> x = np.random.default_rng(1).normal(size=(16, 300))
>>> simulate_mvm(W, x, preset("realistic"), trials=4, seed=0).shape
torch.Size([4, 16, 100])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memcim.config import HardwareConfig
from memcim.hardware.converters import adc_convert, dac_convert
from memcim.hardware.device import program_devices
from memcim.mapping.crossbar import MappedMatrix, map_matrix


def _generator(seed: int | None, device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: {seed!r} is not allowed; use a non-negative integer")
        g.manual_seed(int(seed))
    return g


@dataclass
class ProgrammedChip:
    """Sampled conductances of ``trials`` chips programmed with one plan.

    Attributes
    ----------
    mapped : the plan.
    g_pos : programmed positive-side conductances [S], (trials, n_row_tiles, tile_rows, out_pad).
    g_neg : negative side: (trials, n_row_tiles, tile_rows, out_pad) for differential pairs, or the
        reference columns (trials, n_row_tiles, tile_rows, n_col_tiles) for offset mapping.
    generator : the read-noise generator; each read advances it, so reads differ but a chip
        programmed with the same seeds replays the same sequence.
    """

    mapped: MappedMatrix
    g_pos: torch.Tensor
    g_neg: torch.Tensor
    generator: torch.Generator

    def __post_init__(self):
        self._cache = None

    @property
    def trials(self) -> int:
        return self.g_pos.shape[0]

    @property
    def device(self) -> torch.device:
        return self.g_pos.device

    @property
    def dtype(self) -> torch.dtype:
        return self.g_pos.dtype

    def conductance_difference(self) -> torch.Tensor:
        """G+ - G- per output column [S], (trials, n_row_tiles, tile_rows, out_pad)."""
        return self.g_pos - self.mapped.expand_neg(self.g_neg)

    def realized(self) -> torch.Tensor:
        """Each chip's effective matrix with converters and read noise off, (trials, in, out)."""
        m = self.mapped
        w = self.conductance_difference() / m.scale.to(self.dtype)
        w = w.reshape(self.trials, m.n_row_tiles * m.tile_rows, m.out_pad)
        return w[:, : m.in_features, : m.out_features]

    def _prepared(self):
        if self._cache is None:
            m = self.mapped
            hw = m.hw
            gd = self.conductance_difference().contiguous()
            scale = m.scale.to(device=self.device, dtype=self.dtype)
            # the ADC full scale in units of u @ G [S]
            fs = (m.full_scale / (hw.array.r_tia * hw.array.v_read)).to(device=self.device, dtype=self.dtype)
            gs = gsum_th = None
            if hw.device.thermal_noise or hw.device.shot_noise:
                if m.scheme == "differential":
                    gs = (self.g_pos + self.g_neg).contiguous()
                else:
                    gs = self.g_pos.contiguous()
                gsum_th = gs.sum(dim=2, keepdim=True)
            self._cache = (gd, scale, fs, gs, gsum_th)
        return self._cache

    def mvm(self, x, seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """One read of every chip: ``y ~ x @ W``.

        Parameters
        ----------
        x : inputs (batch, in), shared by all chips, or (trials, batch, in); numpy or torch.
        seed, generator : the read-noise source; by default the chip's own generator.

        Returns
        -------
        Tensor (trials, batch, out) in the chip's dtype and device.
        """
        m = self.mapped
        x = self._check_inputs(x)
        gen = generator if generator is not None else (
            _generator(seed, self.device) if seed is not None else self.generator)
        prepared = self._prepared()
        u, xscale = dac_convert(x, m.hw.dac)
        pad = m.n_row_tiles * m.tile_rows - m.in_features
        if pad:
            u = torch.nn.functional.pad(u, (0, pad))
        B = u.shape[-2]
        # bound the working set: about 2**26 partial sums per chunk of trials
        per_trial = m.n_row_tiles * B * m.out_pad
        chunk = max(1, (1 << 26) // max(per_trial, 1))
        if self.trials <= chunk:
            return self._read(u, xscale, slice(None), prepared, gen)
        parts = []
        for t0 in range(0, self.trials, chunk):
            sl = slice(t0, min(t0 + chunk, self.trials))
            ui = u[sl] if u.ndim == 3 else u
            xi = xscale[sl] if xscale.ndim == 3 else xscale
            parts.append(self._read(ui, xi, sl, prepared, gen))
        return torch.cat(parts, dim=0)

    def _read(self, u, xscale, trials: slice, prepared, gen) -> torch.Tensor:
        """The analog read for the chips ``trials``; in-place on the partial sums to save memory."""
        m = self.mapped
        hw = m.hw
        dev = hw.device
        gd, scale, fs, gs, gsum_th = prepared
        gd = gd[trials]
        R, nrt = m.tile_rows, m.n_row_tiles
        lead = u.shape[:-2]
        B = u.shape[-2]
        ut = u.reshape(*lead, B, nrt, R).transpose(-3, -2)  # (..., nrt, B, R)
        if len(lead) == 0:
            ut = ut.unsqueeze(0)
        j = torch.matmul(ut, gd)  # (T, nrt, B, out_pad): column current / v_read [S]
        if gs is not None:
            v2 = hw.array.v_read ** 2
            # current-noise variance divided by v_read^2, so it is in the units of j
            a = ut.abs() if dev.shot_noise else None
            var = None
            if a is not None:
                var = torch.matmul(a, gs[trials]).mul_(dev.shot_psd / hw.array.v_read)
            if dev.thermal_noise:
                th = (dev.thermal_psd / v2) * gsum_th[trials]
                var = th.expand_as(j).clone() if var is None else var.add_(th)
            noise = torch.randn(j.shape, generator=gen, dtype=j.dtype, device=j.device)
            j.addcmul_(noise, var.sqrt_())
            if m.scheme == "offset":
                # the reference column of each array is one physical column: its noise is common to
                # every output of that array, so it is drawn once per array and subtracted from all
                g_ref = self.g_neg[trials]
                var_ref = (dev.thermal_psd / v2) * g_ref.sum(dim=2, keepdim=True) if dev.thermal_noise else None
                if a is not None:
                    shot = (dev.shot_psd / hw.array.v_read) * torch.matmul(a, g_ref)
                    var_ref = shot if var_ref is None else var_ref + shot
                shape = (*j.shape[:-1], m.n_col_tiles)
                n_ref = torch.randn(shape, generator=gen, dtype=j.dtype, device=j.device) * var_ref.sqrt()
                j.sub_(m.expand_neg(n_ref))
        # ADC (fs is in the units of j) and the digital rescale 1/c in one pass, then the row tiles'
        # partial sums are added digitally
        y = adc_convert(j, fs.unsqueeze(1), hw.adc, inplace=True, gain=1.0 / scale).sum(dim=1)
        return y[..., : m.out_features] * xscale

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
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x: contains NaN or inf; all inputs must be finite")
        return x

    def set_full_scale(self, full_scale) -> None:
        """Set the ADC full scale [V] after programming (per row tile and output column, or a scalar).

        Use it to apply a designed full scale (for example per column) to chips already programmed.
        """
        m = self.mapped
        fs = torch.as_tensor(full_scale, dtype=torch.float64, device=m.full_scale.device)
        try:
            fs = torch.broadcast_to(fs, m.full_scale.shape).clone()
        except RuntimeError:
            raise ValueError(f"full_scale: shape {tuple(fs.shape)} does not broadcast to (row tiles, columns) = "
                             f"{tuple(m.full_scale.shape)}") from None
        if not bool(torch.isfinite(fs).all()) or bool((fs <= 0).any()):
            raise ValueError("full_scale: every value must be a positive, finite voltage")
        m.full_scale = fs
        self._cache = None

    def state_dict(self) -> dict:
        """Tensors that define this chip (the plan is rebuilt from the config and W)."""
        return {"g_pos": self.g_pos, "g_neg": self.g_neg, "rng_state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.g_pos = state["g_pos"].to(self.g_pos)
        self.g_neg = state["g_neg"].to(self.g_neg)
        self.generator.set_state(state["rng_state"])
        self._cache = None


def program(mapped: MappedMatrix, seed: int | None = None, trials: int = 1, *, dtype: torch.dtype = torch.float32,
            device=None, programming: bool = True, stuck: bool = True) -> ProgrammedChip:
    """Program ``trials`` independent chips with the plan ``mapped``.

    Parameters
    ----------
    mapped : the conductance plan from :func:`memcim.mapping.crossbar.map_matrix`.
    seed : seeds programming and then the chip's read-noise generator (None: fresh entropy).
    trials : number of chips (Monte Carlo trials), the leading dimension of every result.
    dtype : float32 (default, fast) or float64.
    device : "cpu", "cuda", ...; default: the plan's device.
    """
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials: {trials!r} is not allowed; must be an integer >= 1")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: {dtype} is not allowed; use torch.float32 or torch.float64")
    device = torch.device(device) if device is not None else mapped.g_pos.device
    m = mapped.to(device)
    gen = _generator(seed, device)
    dev = m.hw.device
    g_pos = program_devices(m.g_pos.to(dtype), m.level_pos, m.mask_pos, dev, int(trials), gen)
    g_neg = program_devices(m.g_neg.to(dtype), m.level_neg, m.mask_neg, dev, int(trials), gen)
    return ProgrammedChip(mapped=m, g_pos=g_pos, g_neg=g_neg, generator=gen)


def simulate_mvm(W, x, hw: HardwareConfig, trials: int = 1, seed: int | None = 0, *, calib_inputs=None,
                 dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Map ``W``, program ``trials`` chips and read them once with ``x``: returns (trials, batch, out)."""
    mapped = map_matrix(W, hw, calib_inputs=calib_inputs)
    chip = program(mapped, seed=seed, trials=trials, dtype=dtype, device=device)
    return chip.mvm(x)
