"""Analog twins of PyTorch models: conversion, explicit programming, and hardware-aware layers.

Flow (modelled on ``torch.ao.quantization``'s prepare/convert)::

    analog = convert_to_analog(model, preset("generic"), calib_data=x_train[:256])
    program(analog, seed=0)        # sample one chip (programming noise, stuck devices)
    y = analog(x)                  # eval mode: every Linear/Conv2d runs on the chip, fresh read noise
    program(analog, seed=1)        # another chip: Monte Carlo over chips
    digital = convert_to_digital(analog)

An :class:`AnalogLinear` computes ``y = x W^T + b`` with ``x W^T`` done by the crossbar simulator of
:mod:`memcim.simulate` (DAC, tiled differential/offset arrays, read noise, TIA, ADC, digital sum of
row-tile partial sums); the bias is added digitally. An :class:`AnalogConv2d` unfolds its input into
patches and runs every patch through the *same* programmed chip, so programming noise is correlated
across positions as on real hardware. Layers that are not ``Linear``/``Conv2d`` stay digital.

In **training mode** the analog layers run the simulator's own read in its differentiable mode
(:meth:`_AnalogMixin.train_chip`): on every forward, i.e. every mini-batch, the current weights are
mapped (``map_for_training``: ``map_matrix``'s tiling, scale, levels and ADC full scale, calibrated at
mapping time on the inputs captured by :func:`calibrate`, computed in the training dtype with the
step-independent layout kept), a fresh chip is programmed from them (``program(plan, seed,
weights=W)``: programming noise, stuck devices) and read once with
``chip.mvm(x, differentiable=True)`` (the simulator's read, its values, with the straight-through
gradient attached: DAC, read noise, RTN, ADC, straight through the roundings and the saturation;
see :mod:`memcim.simulate`). Training an analog model is hardware-aware training.

**Time.** A programmed model is read at ``device.drift_t0`` (the first read) unless told otherwise:
``set_read_time(model, 3600)`` (or ``with read_time(model, 3600): ...``) makes every analog layer
read its chip at ``t`` seconds after programming (``chip.mvm(x, t=...)``: drifted conductances, 1/f
read noise of that time, and the hardware's ``compensation.drift``). :func:`program` gives each
chip its layer's calibration inputs (recorded by :func:`calibrate`) as the drift compensation's
reference inputs, as a real chip calibrates on its own layer's inputs.

State: ``analog.state_dict()`` holds the weights plus, per analog layer, an ``_extra_state`` entry
with the hardware config, the programmed conductances, the ADC full scales and the read-noise
generator state, so ``load_state_dict`` into a converted model reproduces outputs bit for bit.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memcim.config import HardwareConfig
from memcim.hardware.converters import dac_convert
from memcim.hardware.device import check_time
from memcim.mapping.crossbar import map_for_training, map_matrix, training_layout, training_supported
from memcim.simulate import ProgrammedChip, _workspace
from memcim.simulate import release_workspace as _release
from memcim.simulate import program as program_chip

#: Non-idealities a layer with ``train_noise=False`` leaves out of its training read (it keeps the
#: levels, the DAC and the ADC, and the wires).
TRAIN_NOISE = ("programming", "stuck", "rtn", "thermal", "shot")

_MAX_CALIB_ROWS = 4096

#: The kept buffers of the layers' eval reads, in the read's per-thread workspace (memcim.simulate._workspace)
#: under keys of their own: a convolution's unfolded patches ("patches"), the rows and DAC drives shared by
#: batched chips ("shared_rows", "shared_drives").
_KEYS = ("patches", "shared_rows", "shared_drives")


def release_workspace() -> None:
    """Free this thread's kept buffers of the analog layers' eval reads (the convolutions' patches,
    the shared drives of batched chips); :func:`memcim.nn.evaluate.chip_outputs` frees them when it ends.
    The read's own buffers stay (:func:`memcim.simulate.release_workspace` frees those)."""
    _release(_KEYS)


def layer_seed(seed: int, index: int) -> int:
    """Independent 63-bit seed for layer ``index`` derived from a model-level ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: {seed!r} is not allowed; use a non-negative integer")
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32).astype(np.uint64)
               .dot([1 << 31, 1])) & ((1 << 63) - 1)


# ------------------------------------------------------------------------------------------------
# analog layers
# ------------------------------------------------------------------------------------------------

def _copy_params(new: nn.Module, old: nn.Module) -> nn.Module:
    """Copy ``weight``, ``bias`` and the train/eval mode of ``old`` into ``new``; return ``new``."""
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    return new.train(old.training)


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """``t.t()`` (2-D) copied into memory order: by numpy's copy on CPU (float32 / float64) for matrices
    of at least 2**16 entries, where it is faster than torch's (one-off in-training timing, median per
    step: the reference MLP's 500 x 784 weight 0.22 against 0.29 ms, its 300 x 500 gradient 0.058
    against 0.075 ms; slower for the 10 x 300 layer, left to torch); the same values (a copy)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad \
            and t.numel() >= 1 << 16:
        try:
            return torch.from_numpy(np.ascontiguousarray(t.numpy().T))
        except (TypeError, RuntimeError, ValueError):   # a tensor numpy cannot view (conjugate, ...)
            pass
    return t.t().contiguous()


class _CrossbarOrder(torch.autograd.Function):
    """``w2d.t().contiguous()``: a weight (out, in) as the crossbar matrix W (in, out) in memory order,
    whose gradient comes back in the weight's own (out, in) memory order (accumulated without a further
    copy); both copies by :func:`_transposed`."""

    @staticmethod
    def forward(ctx, w2d):
        return _transposed(w2d.detach())

    @staticmethod
    def backward(ctx, grad):
        return _transposed(grad)


class _AnalogMixin:
    """Shared state and programming logic of the analog layers."""

    hardware: HardwareConfig

    def _init_analog(self, hardware: HardwareConfig, seed: int, train_noise: bool) -> None:
        if not isinstance(hardware, HardwareConfig):
            raise TypeError(f"hardware: expected a HardwareConfig, got {type(hardware).__name__}")
        self.hardware = hardware
        self.chip: ProgrammedChip | None = None
        self.programmed_seed: int | None = None
        self.train_noise = bool(train_noise)
        self._train_gen = torch.Generator().manual_seed(int(seed))
        self._calib: torch.Tensor | None = None
        self._digital = False
        self._weight_version: int | None = None
        self._plan_memo = None
        self._read_time: float | None = None

    # -- the matrix in crossbar orientation -----------------------------------------------------
    def crossbar_weight(self) -> torch.Tensor:
        """The layer's weight as the crossbar matrix W (in, out)."""
        return self.weight.detach().reshape(self.weight.shape[0], -1).t()

    @property
    def read_time(self) -> float:
        """The read time [s] after programming of this layer's chip reads in eval mode
        (``device.drift_t0``, the first read, unless set by :func:`set_read_time`)."""
        t = getattr(self, "_read_time", None)
        return self.hardware.device.drift_t0 if t is None else t

    @property
    def calibration_inputs(self) -> torch.Tensor | None:
        """The crossbar inputs (rows, in) recorded by :func:`calibrate`, on which the ADC full scale
        is calibrated at mapping time (None before calibration)."""
        return self._calib

    def plan(self, calib_inputs: torch.Tensor | None = None):
        """The layer's plan (:func:`memcim.mapping.crossbar.map_matrix`), mapped once and reused for
        every chip while the weights, the hardware and the calibration inputs stay the same (a
        Monte Carlo over chips programs N chips from one plan, as a real chip line would)."""
        calib = calib_inputs if calib_inputs is not None else self._calib
        key = (self.weight.data_ptr(), self.weight._version, tuple(self.weight.shape), self.hardware)
        memo = getattr(self, "_plan_memo", None)
        if memo is None or memo[0] != key or memo[1] is not calib:
            mapped = map_matrix(self.crossbar_weight().to(torch.float64).cpu(), self.hardware, calib_inputs=calib)
            self._plan_memo = memo = (key, calib, mapped)
        return memo[2]

    def program(self, seed: int | None = 0, *, dtype: torch.dtype = torch.float32,
                calib_inputs: torch.Tensor | None = None) -> ProgrammedChip:
        """Map the current weights and sample one chip (programming noise, stuck devices).

        Parameters
        ----------
        seed : seeds programming and, after it, this chip's read-noise generator.
        dtype : simulation precision.
        calib_inputs : crossbar inputs (rows, in) used to calibrate the ADC full scale and, with
            ``compensation.drift``, as the reference inputs of the drift compensation; default the
            ones captured by :func:`calibrate` (or standard normal vectors if none).
        """
        calib = calib_inputs if calib_inputs is not None else self._calib
        mapped = self.plan(calib)
        self.chip = program_chip(mapped, seed=seed, dtype=dtype, device=self.weight.device, reference_inputs=calib)
        self.programmed_seed = seed
        self._weight_version = self.weight._version
        return self.chip

    def train_hardware(self) -> HardwareConfig:
        """The hardware of the training read: the layer's, without :data:`TRAIN_NOISE` when
        ``train_noise`` is False."""
        if self.train_noise:
            return self.hardware
        memo = getattr(self, "_train_hw_memo", None)
        if memo is None or memo[0] is not self.hardware:
            memo = self._train_hw_memo = (self.hardware, self.hardware.without(*TRAIN_NOISE))
        return memo[1]

    def train_chip(self, seed: int | None = None) -> ProgrammedChip:
        """A freshly programmed chip of the current weights whose conductances carry their gradient.

        The weights are mapped as :meth:`program` maps them (the ADC full scale calibrated at mapping
        time, never on the batch; :func:`~memcim.mapping.crossbar.map_for_training`, in the training
        dtype) and one chip is programmed with ``program(..., weights=W)`` (both sides of the pairs in one
        draw); the seed is drawn
        from the layer's training generator unless given. Read it with ``chip.mvm(x, differentiable=True)``.
        """
        # W (in, out) in memory order once (the weight is stored (out, in)): mapping and programming read it
        w2d = self.weight.reshape(self.weight.shape[0], -1)
        W = w2d.t() if w2d.t().is_contiguous() else _CrossbarOrder.apply(w2d)
        dtype = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        mapped = map_for_training(W.detach().to(dtype).cpu(), self.train_hardware(), self._calib,
                                  layout=self._layout_for(W, dtype))
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=self._train_gen))
        return program_chip(mapped, seed=seed, dtype=dtype, device=self.weight.device, weights=W)

    def _layout_for(self, W: torch.Tensor, dtype: torch.dtype):
        """The training layout (:func:`memcim.mapping.crossbar.training_layout`: tile geometry, masks,
        calibration drives) of the current shape, training hardware and calibration inputs, kept
        between mini-batches."""
        hw = self.train_hardware()
        memo = getattr(self, "_layout_memo", None)
        if memo is not None and memo.matches(W.shape, dtype, "cpu", hw, self._calib):
            return memo
        if not training_supported(hw):
            return None
        self._layout_memo = training_layout(tuple(W.shape), hw, self._calib, dtype=dtype)
        return self._layout_memo

    def _train_mvm(self, x2d: torch.Tensor) -> torch.Tensor:
        chip = self.train_chip()
        return chip.mvm(x2d, differentiable=True)[0].to(x2d.dtype)

    @torch.no_grad()
    def forward_chips(self, x: torch.Tensor, chips):
        """This layer's eval outputs on ``x`` read by each of ``chips`` in turn (programmed chips of its
        plan, the one-chip chips of a Monte Carlo, say; a chip of ``trials=T`` gives T outputs, chip-major):
        a generator that yields each chip's outputs, exactly those of :meth:`forward` with that chip
        programmed (and no gradient), before it reads the next. The rows (a convolution's patches) are
        unfolded once and converted by the DAC once for all the chips: each chip reads those drives with
        ``mvm_drives``, which gives the values of ``mvm`` (:func:`memcim.nn.evaluate.chip_outputs` with
        batched chips reads its first analog layer this way)."""
        n_in = int(math.prod(self.weight.shape[1:]))
        if not chips or any(ch.mapped.in_features != n_in or ch.mapped.hw.dac != chips[0].mapped.hw.dac
                            for ch in chips):
            raise ValueError(f"chips: give one or more chips of this layer's matrix ({n_in} inputs), all with "
                             "the same DAC")
        if self._weight_version is not None and self._weight_version != self.weight._version:
            raise RuntimeError(f"{type(self).__name__}: the weights changed after programming; call "
                               "memcim.nn.analog.program(model, seed) again")
        rows, ctx = self._eval_rows(x, "shared_rows")
        c0 = chips[0]
        xc = c0._check_inputs(rows)
        u, xscale = dac_convert(xc, c0.mapped.hw.dac, out=_workspace(tuple(xc.shape), xc.dtype, xc.device, "shared_drives"))
        t = getattr(self, "_read_time", None)
        for ch in chips:
            y = ch.mvm_drives(u, xscale, t=t)
            yield self._eval_outputs(y.reshape(-1, y.shape[-1]).to(rows.dtype), ctx, y.shape[0])

    def _analog_mvm(self, x2d: torch.Tensor) -> torch.Tensor:
        if self.chip is None:
            raise RuntimeError(f"{type(self).__name__} is not programmed; call "
                               "memcim.nn.analog.program(model, seed) before inference")
        if self._weight_version != self.weight._version:
            raise RuntimeError(f"{type(self).__name__}: the weights changed after programming; call "
                               "memcim.nn.analog.program(model, seed) again")
        chip, t = self.chip, getattr(self, "_read_time", None)
        if chip.trials == 1:
            return chip.mvm(x2d.detach(), t=t)[0].to(x2d.dtype)
        # chips batched (memcim.nn.evaluate.chip_outputs, chips_per_pass > 1): the rows are chip-major,
        # (trials * rows, in), chip c reading rows c*rows:(c+1)*rows
        if x2d.shape[0] % chip.trials:
            raise RuntimeError(f"{type(self).__name__}: {x2d.shape[0]} input rows do not split over the "
                               f"{chip.trials} batched chips (rows must be chip-major)")
        y = chip.mvm(x2d.detach().reshape(chip.trials, -1, x2d.shape[-1]), t=t)
        return y.reshape(-1, y.shape[-1]).to(x2d.dtype)

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        """x2d (rows, in) -> (rows, out) through the digital, training-read or chip path."""
        if self._digital:
            return x2d @ self.weight.reshape(self.weight.shape[0], -1).t()
        if self.training:
            return self._train_mvm(x2d)
        return self._analog_mvm(x2d)

    # -- state dict -----------------------------------------------------------------------------
    def get_extra_state(self):
        st = {"hardware": self.hardware.to_dict(), "train_noise": self.train_noise,
              "train_rng_state": self._train_gen.get_state(), "programmed": self.chip is not None}
        if self.chip is not None:
            c = self.chip
            st.update({"seed": self.programmed_seed, "dtype": str(c.dtype).replace("torch.", ""),
                       "g_pos": c.g_pos, "g_neg": c.g_neg, "rng_state": c.generator.get_state(),
                       "scale": c.mapped.scale, "full_scale": c.mapped.full_scale})
            if c.nu_pos is not None:
                st.update({"nu_pos": c.nu_pos, "nu_neg": c.nu_neg})
            if c.reference_inputs is not None:
                st["reference_inputs"] = c.reference_inputs
        return st

    def set_extra_state(self, state):
        self.hardware = HardwareConfig.from_dict(state["hardware"])
        self.train_noise = bool(state.get("train_noise", True))
        if "train_rng_state" in state:
            self._train_gen.set_state(state["train_rng_state"])
        self.chip = None
        self.programmed_seed = None
        if state.get("programmed"):
            mapped = map_matrix(self.crossbar_weight().to(torch.float64).cpu(), self.hardware)
            scale = state["scale"].to(torch.float64)
            if scale.ndim == 1:  # saved before the scale became per row tile
                scale = scale.unsqueeze(0).expand_as(mapped.scale).clone()
            mapped = dataclasses.replace(mapped, scale=scale, full_scale=state["full_scale"].to(torch.float64))
            device = self.weight.device
            mapped = mapped.to(device)
            gen = torch.Generator(device=device)
            gen.set_state(state["rng_state"])
            dtype = getattr(torch, state["dtype"])
            nu = [state[k].to(device, dtype) if state.get(k) is not None else None for k in ("nu_pos", "nu_neg")]
            self.chip = ProgrammedChip(mapped=mapped, g_pos=state["g_pos"].to(device, dtype),
                                       g_neg=state["g_neg"].to(device, dtype), generator=gen,
                                       nu_pos=nu[0], nu_neg=nu[1], reference_inputs=state.get("reference_inputs"))
            self.programmed_seed = state.get("seed")
            self._weight_version = self.weight._version

    # -- pickling (torch.save(model), copy.deepcopy) through plain data only --------------------
    def __getstate__(self):
        d = dict(nn.Module.__getstate__(self))
        for k in ("hardware", "chip", "_train_gen", "programmed_seed", "_weight_version", "_plan_memo",
                  "_layout_memo", "_train_hw_memo"):
            d.pop(k, None)
        d["_memcim_state"] = self.get_extra_state()
        return d

    def __setstate__(self, d):
        d = dict(d)
        st = d.pop("_memcim_state")
        nn.Module.__setstate__(self, d)
        self.chip = None
        self.programmed_seed = None
        self._weight_version = None
        self._plan_memo = None
        self._read_time = d.get("_read_time")
        self._train_gen = torch.Generator()
        self.set_extra_state(st)

    def _analog_repr(self) -> str:
        t = getattr(self, "_read_time", None)
        return f"hardware={self.hardware.name!r}, programmed={self.chip is not None}" + (
            "" if t is None else f", read_time={t:g}")


class AnalogLinear(_AnalogMixin, nn.Linear):
    """``nn.Linear`` whose matrix product runs on a simulated crossbar (bias added digitally).

    Build it with :meth:`from_digital` or :func:`convert_to_analog`. Keeps the ``weight`` and
    ``bias`` parameters of ``nn.Linear``, so digital state dicts carry over.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 hardware: HardwareConfig | None = None, seed: int = 0, train_noise: bool = True,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_analog(hardware if hardware is not None else HardwareConfig(), seed, train_noise)

    @classmethod
    def from_digital(cls, layer: nn.Linear, hardware: HardwareConfig, *, seed: int = 0,
                     train_noise: bool = True) -> "AnalogLinear":
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, hardware=hardware,
                  seed=seed, train_noise=train_noise, device=layer.weight.device, dtype=layer.weight.dtype)
        return _copy_params(new, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._matmul(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def _eval_rows(self, x: torch.Tensor, key: str):
        if x.ndim < 2:
            raise ValueError(f"x: shape {tuple(x.shape)}; reading several chips needs a batch, (N, ..., "
                             f"{self.in_features})")
        return x.detach().reshape(-1, self.in_features), x.shape[:-1]

    def _eval_outputs(self, y: torch.Tensor, lead, trials: int) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(trials * lead[0], *lead[1:], self.out_features)

    def calib_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(-1, self.in_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self._analog_repr()


class AnalogConv2d(_AnalogMixin, nn.Conv2d):
    """``nn.Conv2d`` run as a crossbar MVM over unfolded patches.

    The kernel is the crossbar matrix W (C_in*kh*kw, C_out); every output position of every image
    reads the same programmed chip (correlated programming noise, independent read noise per read).
    Only ``groups=1`` and ``padding_mode='zeros'`` are supported (others stay digital on conversion).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, *, hardware: HardwareConfig | None = None, seed: int = 0,
                 train_noise: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, bias,
                         "zeros", device=device, dtype=dtype)
        self._init_analog(hardware if hardware is not None else HardwareConfig(), seed, train_noise)

    @classmethod
    def from_digital(cls, layer: nn.Conv2d, hardware: HardwareConfig, *, seed: int = 0,
                     train_noise: bool = True) -> "AnalogConv2d":
        reason = unsupported_reason(layer)
        if reason:
            raise ValueError(f"layer: {reason}")
        if cls is AnalogConv2d and (layer.groups != 1 or layer.padding_mode != "zeros"):
            # grouped, depthwise or non-zero padding: one crossbar matrix per group (AnalogGroupedConv2d)
            return AnalogGroupedConv2d.from_digital(layer, hardware, seed=seed, train_noise=train_noise)
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.bias is not None, hardware=hardware, seed=seed,
                  train_noise=train_noise, device=layer.weight.device, dtype=layer.weight.dtype)
        return _copy_params(new, layer)

    def _patches(self, x: torch.Tensor, kept: str | None = None):
        """The unfolded patches (N * H_out * W_out, C_in * kh * kw), rows in (image, position) order and
        columns in the (channel, kernel row, kernel column) order of ``weight.reshape(out, -1)``, and
        H_out, W_out. An input that carries a gradient is unfolded by ``F.unfold`` (differentiable);
        otherwise the patches are copied straight into their row layout, one strided copy per kernel
        offset (the same values, no (N, C*kh*kw, L) intermediate and no transposing copy), into this
        thread's kept buffer ``kept`` (:func:`_workspace`; an eval read consumes the patches at once),
        else a new tensor."""
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        sh, sw = self.stride
        if isinstance(self.padding, str):
            if self.padding == "valid":
                pad = (0, 0, 0, 0)
            else:  # "same" with stride 1
                th, tw = dh * (kh - 1), dw * (kw - 1)
                pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        else:
            pad = (self.padding[1], self.padding[1], self.padding[0], self.padding[0])
        h_out = (x.shape[-2] + pad[2] + pad[3] - dh * (kh - 1) - 1) // sh + 1
        w_out = (x.shape[-1] + pad[0] + pad[1] - dw * (kw - 1) - 1) // sw + 1
        if x.requires_grad and torch.is_grad_enabled():
            if isinstance(self.padding, str):
                x, pad = (F.pad(x, pad) if any(pad) else x), (0, 0, 0, 0)
            cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=(pad[2], pad[0]), stride=self.stride)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1]), h_out, w_out
        if any(pad):
            x = F.pad(x, pad)
        n, c = x.shape[0], x.shape[1]
        shape = (n, h_out, w_out, c, kh, kw)
        rows = _workspace(shape, x.dtype, x.device, kept) if kept else \
            torch.empty(shape, dtype=x.dtype, device=x.device)
        if h_out > 0 and w_out > 0:
            # (N, H, W, C), channels innermost as in the rows: each copy below then runs over contiguous
            # channels (measured 1.6-2x faster than copying from the (N, C, H, W) view when C > 1)
            xt = x.permute(0, 2, 3, 1).contiguous()
            for i in range(kh):
                for j in range(kw):
                    rows[..., i, j].copy_(xt[:, i * dh: i * dh + sh * (h_out - 1) + 1: sh,
                                             j * dw: j * dw + sw * (w_out - 1) + 1: sw])
        return rows.view(-1, c * kh * kw), h_out, w_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._digital:
            return super().forward(x)
        unbatched = x.ndim == 3
        if unbatched:
            x = x.unsqueeze(0)
        reading = not self.training          # an eval read: the patches are consumed by the chip at once
        rows, h_out, w_out = self._patches(x, kept="patches" if reading else None)
        y = self._matmul(rows)                                   # (n*L, C_out)
        if reading:
            y = self._eval_outputs(y, (x.shape[0], h_out, w_out), 1)
        else:
            y = self._outputs(y, x.shape[0], h_out, w_out)
        return y[0] if unbatched else y

    def _outputs(self, y: torch.Tensor, n: int, h_out: int, w_out: int) -> torch.Tensor:
        """(n*L, C_out) -> (n, C_out, H_out, W_out), the bias added."""
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(n, h_out * w_out, self.out_channels).transpose(1, 2).reshape(n, self.out_channels, h_out, w_out)

    def _eval_rows(self, x: torch.Tensor, key: str):
        if x.ndim != 4:
            raise ValueError(f"x: shape {tuple(x.shape)}; reading several chips needs a batch, (N, C, H, W)")
        rows, h_out, w_out = self._patches(x.detach(), kept=key)
        return rows, (x.shape[0], h_out, w_out)

    def _eval_outputs(self, y: torch.Tensor, ctx, trials: int) -> torch.Tensor:
        """An eval read's outputs (trials*n*L, C_out) -> (trials*n, C_out, H_out, W_out), the bias added."""
        n, h_out, w_out = ctx
        n *= trials
        if self.bias is None or (torch.is_grad_enabled() and self.bias.requires_grad):
            return self._outputs(y, n, h_out, w_out)
        # y + bias written straight in (N, C_out, H_out, W_out) order: one pass, the same values
        out = torch.empty((n, self.out_channels, h_out, w_out), dtype=torch.result_type(y, self.bias), device=y.device)
        torch.add(y.view(n, h_out * w_out, self.out_channels).transpose(1, 2), self.bias.view(-1, 1),
                  out=out.view(n, self.out_channels, h_out * w_out))
        return out

    def calib_rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(0)
        return self._patches(x.detach())[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self._analog_repr()


# ------------------------------------------------------------------------------------------------
# multi-matrix layers: every crossbar matrix is an AnalogMatrix child that reads its owner's weight
# ------------------------------------------------------------------------------------------------

class AnalogMatrix(_AnalogMixin, nn.Module):
    """One crossbar matrix of a multi-matrix analog layer (a conv group, an LSTM gate block, an
    attention projection): ``y = x W^T`` on its own programmed arrays (``map_matrix`` of W (in, out)).

    It owns no parameter: ``weight`` is a view (rows ``rows[0]:rows[1]``, or all) of its owner's
    parameter, so the owner keeps the digital layer's parameters and state-dict names, and a training
    step on the owner's parameter is what the matrix maps next. It is an analog layer like
    :class:`AnalogLinear` for :func:`program`, :func:`calibrate`, :func:`set_read_time`,
    :func:`digital_mode` and state dicts (its ``_extra_state`` holds its chip).
    """

    def __init__(self, source: torch.Tensor, rows: tuple[int, int] | None = None, *,
                 hardware: HardwareConfig | None = None, seed: int = 0, train_noise: bool = True):
        nn.Module.__init__(self)
        self._source = [source]            # a list, so nn.Module does not register it a second time
        self._rows = None if rows is None else (int(rows[0]), int(rows[1]))
        self._init_analog(hardware if hardware is not None else HardwareConfig(), seed, train_noise)

    @property
    def weight(self) -> torch.Tensor:
        w = self._source[0]
        return w if self._rows is None else w[self._rows[0]:self._rows[1]]

    @property
    def in_features(self) -> int:
        return int(math.prod(self.weight.shape[1:]))

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._matmul(x.reshape(-1, self.in_features))
        return y.reshape(*lead, self.out_features)

    def calib_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(-1, self.in_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, " + self._analog_repr()


class AnalogModule:
    """Marker base of the multi-matrix analog layers: their crossbar matrices are the
    :class:`AnalogMatrix` children in ``self.crossbars``; everything else they compute is digital."""

    #: the torch class this layer converts back to (:func:`convert_to_digital`)
    digital_class: type = nn.Module
    #: (operation, reason) pairs computed digitally, for the conversion report
    digital_ops: tuple = ()

    @classmethod
    def from_digital(cls, layer: nn.Module, hardware: HardwareConfig, *, seed: int = 0, train_noise: bool = True):
        """The analog twin of ``layer`` (a copy: same parameters, buffers, settings and train/eval mode)."""
        if not isinstance(hardware, HardwareConfig):
            raise TypeError(f"hardware: expected a HardwareConfig, got {type(hardware).__name__}")
        reason = unsupported_reason(layer)
        if reason:
            raise ValueError(f"layer: {reason}")
        new = cls.__new__(cls)
        new.__dict__.update(copy.deepcopy(layer).__dict__)
        new._setup_analog(hardware, seed, train_noise)
        return new

    def _make_crossbars(self, sources: dict, hardware: HardwareConfig, seed: int, train_noise: bool) -> None:
        """``sources``: {name: (parameter, rows or None)} in a fixed order; unit ``i`` gets
        ``layer_seed(seed, i)`` for its training generator."""
        self.hardware = hardware
        self.crossbars = nn.ModuleDict({
            k: AnalogMatrix(p, r, hardware=hardware, seed=layer_seed(seed, i), train_noise=train_noise)
            for i, (k, (p, r)) in enumerate(sources.items())})
        self.crossbars.train(self.training)

    def to_digital(self) -> nn.Module:
        """The plain torch layer with the same parameters (shared) and settings."""
        new = self.digital_class.__new__(self.digital_class)
        d = dict(self.__dict__)
        d["_modules"] = {k: v for k, v in self._modules.items() if k != "crossbars"}
        d["_forward_pre_hooks"] = type(self._forward_pre_hooks)(
            (k, h) for k, h in self._forward_pre_hooks.items() if h is not _no_fast_path)
        d.pop("hardware", None)
        new.__dict__.update(d)
        return new


def _no_fast_path(module, args):
    """A no-op forward pre-hook: a module with hooks is never sent down torch's fused
    TransformerEncoderLayer fast path, which would read the weights digitally."""
    return None


def _im2col(x: torch.Tensor, kernel: tuple, stride: tuple, dilation: tuple):
    """Patches of an already padded (N, C, *spatial) input: rows (N * L, C * prod(kernel)) in the
    (channel, kernel...) order of ``weight.reshape(out, -1)``, and the output's spatial shape."""
    nd = len(kernel)
    for i in range(nd):
        span = dilation[i] * (kernel[i] - 1) + 1
        if x.shape[2 + i] < span:
            raise ValueError(f"input: spatial size {tuple(x.shape[2:])} (padded) is smaller than the "
                             f"kernel's span {span} in dimension {i}")
        x = x.unfold(2 + i, span, stride[i])
    # x: (N, C, *out, *span); take every dilation-th element of each window
    idx = (slice(None),) * (2 + nd) + tuple(slice(None, None, d) for d in dilation)
    x = x[idx]
    out = tuple(x.shape[2:2 + nd])
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    x = x.permute(perm)
    return x.reshape(-1, int(math.prod(x.shape[1 + nd:]))), out


class _AnalogConvNd(AnalogModule):
    """Convolution of any dimension, stride, padding (mode), dilation and groups on crossbars: group
    ``g`` is its own matrix (C_in/groups * prod(kernel), C_out/groups) on its own arrays, read by every
    unfolded patch of every image; the bias is added digitally."""

    digital_ops = (("padding", "the input is padded digitally (zeros/reflect/replicate/circular)"),)

    def __init__(self, *args, hardware: HardwareConfig | None = None, seed: int = 0, train_noise: bool = True,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_analog(hardware if hardware is not None else HardwareConfig(), seed, train_noise)

    def _setup_analog(self, hardware, seed, train_noise):
        opg = self.out_channels // self.groups
        self._make_crossbars({f"group{g}": (self.weight, (g * opg, (g + 1) * opg)) for g in range(self.groups)},
                             hardware, seed, train_noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.kernel_size)
        unbatched = x.ndim == nd + 1
        if unbatched:
            x = x.unsqueeze(0)
        if x.ndim != nd + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"input: shape {tuple(x.shape)} does not fit {type(self).__name__} with "
                             f"{self.in_channels} input channels; expected (N, {self.in_channels}, ...)")
        pad = self._reversed_padding_repeated_twice
        if any(pad):
            x = F.pad(x, pad, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
        n, cg = x.shape[0], self.in_channels // self.groups
        ys = []
        for g, unit in enumerate(self.crossbars.values()):
            rows, out = _im2col(x[:, g * cg:(g + 1) * cg], self.kernel_size, self.stride, self.dilation)
            ys.append(unit(rows))
        y = torch.cat(ys, dim=1)
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape(n, *out, self.out_channels).movedim(-1, 1)
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", hardware={self.hardware.name!r}"


class AnalogConv1d(_AnalogConvNd, nn.Conv1d):
    """``nn.Conv1d`` on crossbars (any stride, padding mode, dilation, groups; one matrix per group)."""
    digital_class = nn.Conv1d


class AnalogGroupedConv2d(_AnalogConvNd, nn.Conv2d):
    """``nn.Conv2d`` with groups > 1 (depthwise included) or a non-zero padding mode on crossbars, one
    matrix per group. ``AnalogConv2d.from_digital`` returns one for such a layer."""
    digital_class = nn.Conv2d


class AnalogConv3d(_AnalogConvNd, nn.Conv3d):
    """``nn.Conv3d`` on crossbars (any stride, padding mode, dilation, groups; one matrix per group)."""
    digital_class = nn.Conv3d


class _AnalogRNN(AnalogModule):
    """LSTM/GRU with every gate matrix on crossbars: per layer and direction, ``weight_ih`` (the input
    product, all time steps in one read) and ``weight_hh`` (the hidden product, one read per step), and
    ``weight_hr`` (LSTM projection). Biases, gate non-linearities and element-wise products are digital."""

    digital_ops = (("gate non-linearities and element-wise products",
                    "element-wise math between activations (sigmoid, tanh, gate products, cell update) "
                    "has no fixed matrix to program; the digital periphery computes it"),
                   ("biases", "added digitally"))
    _gates = 4

    def __init__(self, *args, hardware: HardwareConfig | None = None, seed: int = 0, train_noise: bool = True,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_analog(hardware if hardware is not None else HardwareConfig(), seed, train_noise)

    def _suffixes(self):
        return [(l, d, f"_l{l}" + ("_reverse" if d else "")) for l in range(self.num_layers)
                for d in range(2 if self.bidirectional else 1)]

    def _setup_analog(self, hardware, seed, train_noise):
        src = {}
        for _, _, sfx in self._suffixes():
            names = ["weight_ih", "weight_hh"] + (["weight_hr"] if getattr(self, "proj_size", 0) else [])
            for nm in names:
                src[nm + sfx] = (getattr(self, nm + sfx), None)
        self._make_crossbars(src, hardware, seed, train_noise)

    def forward(self, input, hx=None):
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError(f"input: {type(self).__name__} on crossbars takes padded tensors, not a "
                            "PackedSequence; pad the batch (nn.utils.rnn.pad_packed_sequence) first")
        is_lstm = self._gates == 4
        batched = input.dim() == 3
        if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
            raise ValueError(f"input: shape {tuple(input.shape)} does not fit {type(self).__name__}"
                             f"(input_size={self.input_size}, batch_first={self.batch_first}); expected "
                             f"{'(N, T, ' if self.batch_first else '(T, N, '}{self.input_size})")
        x = input.unsqueeze(1) if not batched else (input.transpose(0, 1) if self.batch_first else input)
        T, B = x.shape[0], x.shape[1]
        D = 2 if self.bidirectional else 1
        H = self.hidden_size
        Hout = getattr(self, "proj_size", 0) or H
        if hx is None:
            h0 = x.new_zeros(self.num_layers * D, B, Hout)
            c0 = x.new_zeros(self.num_layers * D, B, H) if is_lstm else None
        else:
            h0, c0 = (hx if is_lstm else (hx, None))
            if not batched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if c0 is not None else None
        layer_in = x
        hn, cn = [], []
        for l in range(self.num_layers):
            outs = []
            for d in range(D):
                sfx = f"_l{l}" + ("_reverse" if d else "")
                b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
                b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
                gi = self.crossbars["weight_ih" + sfx](layer_in)            # (T, B, G*H): one read
                if b_ih is not None:
                    gi = gi + b_ih
                u_hh = self.crossbars["weight_hh" + sfx]
                h = h0[l * D + d]
                c = c0[l * D + d] if is_lstm else None
                ys = [None] * T
                for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
                    gh = u_hh(h)
                    if b_hh is not None:
                        gh = gh + b_hh
                    if is_lstm:
                        i, f, g, o = (gi[t] + gh).chunk(4, -1)
                        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                        h = torch.sigmoid(o) * torch.tanh(c)
                        if getattr(self, "proj_size", 0):
                            h = self.crossbars["weight_hr" + sfx](h)
                    else:
                        ri, zi, ni = gi[t].chunk(3, -1)
                        rh, zh, nh = gh.chunk(3, -1)
                        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
                        n = torch.tanh(ni + r * nh)
                        h = (1 - z) * n + z * h
                    ys[t] = h
                outs.append(torch.stack(ys))
                hn.append(h)
                cn.append(c)
            layer_in = torch.cat(outs, -1) if D > 1 else outs[0]
            if self.dropout and self.training and l < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
        out = layer_in
        h_n = torch.stack(hn)
        c_n = torch.stack(cn) if is_lstm else None
        if not batched:
            out, h_n = out.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        elif self.batch_first:
            out = out.transpose(0, 1)
        return (out, (h_n, c_n)) if is_lstm else (out, h_n)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", hardware={self.hardware.name!r}"


class AnalogLSTM(_AnalogRNN, nn.LSTM):
    """``nn.LSTM`` (multi-layer, bidirectional, batch_first, proj_size) with its gate matrices on crossbars."""
    digital_class = nn.LSTM
    _gates = 4


class AnalogGRU(_AnalogRNN, nn.GRU):
    """``nn.GRU`` (multi-layer, bidirectional, batch_first) with its gate matrices on crossbars."""
    digital_class = nn.GRU
    _gates = 3


class AnalogMultiheadAttention(AnalogModule, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with the q, k, v and output projections on crossbars (four matrices).

    The activation-by-activation products (``Q K^T``, softmax, attention x V) stay digital: both
    operands change with every input, so there is no fixed matrix to program into a crossbar.
    Masks, ``bias_k``/``bias_v``, ``add_zero_attn``, dropout and the returned weights are torch's own
    (``F.multi_head_attention_forward`` run on the analog projections).
    """

    digital_class = nn.MultiheadAttention
    _ACT = ("activation-by-activation product: both operands depend on the input, so there is no "
            "fixed matrix to program into a crossbar")
    digital_ops = (("Q K^T", _ACT), ("softmax", "non-linearity of the digital periphery"),
                   ("attention x V", _ACT), ("projection biases", "added digitally"))

    def __init__(self, *args, hardware: HardwareConfig | None = None, seed: int = 0, train_noise: bool = True,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_analog(hardware if hardware is not None else HardwareConfig(), seed, train_noise)

    def _setup_analog(self, hardware, seed, train_noise):
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            src = {k: (self.in_proj_weight, (i * E, (i + 1) * E)) for i, k in enumerate(("q", "k", "v"))}
        else:
            src = {"q": (self.q_proj_weight, None), "k": (self.k_proj_weight, None), "v": (self.v_proj_weight, None)}
        src["out"] = (self.out_proj.weight, None)
        self._make_crossbars(src, hardware, seed, train_noise)
        if not any(h is _no_fast_path for h in self._forward_pre_hooks.values()):
            self.register_forward_pre_hook(_no_fast_path)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if query.dim() not in (2, 3) or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query: shape {tuple(query.shape)} does not fit MultiheadAttention(embed_dim="
                             f"{self.embed_dim}, batch_first={self.batch_first})")
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        E = self.embed_dim
        cb = self.crossbars
        q, k, v = cb["q"](query), cb["k"](key), cb["v"](value)
        if self.in_proj_bias is not None:
            q, k, v = q + self.in_proj_bias[:E], k + self.in_proj_bias[E:2 * E], v + self.in_proj_bias[2 * E:]
        if self.batch_first and is_batched:
            q, k, v = (t.transpose(1, 0) for t in (q, k, v))
        eye = torch.eye(E, dtype=q.dtype, device=q.device)   # the projections are done: identity (exact)
        attn, weights = F.multi_head_attention_forward(
            q, k, v, E, self.num_heads, None, None, self.bias_k, self.bias_v, self.add_zero_attn,
            self.dropout, eye, None, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, use_separate_proj_weight=True,
            q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        out = cb["out"](attn)
        if self.out_proj.bias is not None:
            out = out + self.out_proj.bias
        if self.batch_first and is_batched:
            out = out.transpose(1, 0)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, hardware={self.hardware.name!r}"


ANALOG_LAYERS = (AnalogLinear, AnalogConv2d, AnalogMatrix)
#: multi-matrix analog layers (their crossbar matrices are AnalogMatrix children)
ANALOG_MODULES = (AnalogConv1d, AnalogGroupedConv2d, AnalogConv3d, AnalogLSTM, AnalogGRU, AnalogMultiheadAttention)

#: Which torch layer converts to which analog layer (exact type, as ``torch.ao.quantization``'s
#: mappings). ``convert_to_analog(..., mapping={MyLayer: MyAnalogLayer})`` merges a user mapping over
#: it (``None`` as a value keeps that type digital). A value is a class with
#: ``from_digital(layer, hardware, *, seed, train_noise)`` (or such a callable) returning the module.
DEFAULT_MAPPING = {
    nn.Linear: AnalogLinear,
    nn.modules.linear.NonDynamicallyQuantizableLinear: AnalogLinear,
    nn.Conv1d: AnalogConv1d,
    nn.Conv2d: AnalogConv2d,          # groups > 1 or non-zero padding -> AnalogGroupedConv2d
    nn.Conv3d: AnalogConv3d,
    nn.LSTM: AnalogLSTM,
    nn.GRU: AnalogGRU,
    nn.MultiheadAttention: AnalogMultiheadAttention,
}


def unsupported_reason(layer: nn.Module) -> str | None:
    """Why ``layer`` (a type of :data:`DEFAULT_MAPPING`) cannot run on the crossbar, or None if it can."""
    if isinstance(layer, nn.Conv2d):
        if isinstance(layer.padding, str) and layer.padding == "same" and any(s != 1 for s in layer.stride):
            return "Conv2d with padding='same' and stride > 1 is not supported"
    if isinstance(layer, nn.MultiheadAttention):
        if not layer._qkv_same_embed_dim and (layer.kdim is None or layer.vdim is None):
            return "MultiheadAttention without projection weights is not supported"
    return None


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------

@dataclass
class ConversionReport:
    """What :func:`convert_to_analog` did to each layer.

    ``analog``: (name, type, hardware name) of layers now on crossbars. ``digital``: (name, type,
    reason) of layers with weights that stay digital (unsupported or excluded). ``periphery``:
    names of weight-free layers (activations, pooling, reshapes), computed digitally as usual.
    ``arrays``: {analog layer name: [dict(matrix, shape (in, out), row_tiles, col_tiles, tiles)]}, one
    entry per crossbar matrix (a conv group, an LSTM gate block, an attention projection).
    ``digital_ops``: (name, operation, reason) of what analog layers compute digitally besides their
    matrices (attention's activation-by-activation products, gate math, padding).
    """

    analog: list = field(default_factory=list)
    digital: list = field(default_factory=list)
    periphery: list = field(default_factory=list)
    arrays: dict = field(default_factory=dict)
    digital_ops: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"analog": [dict(name=n, type=t, hardware=h, arrays=self.arrays.get(n, []))
                           for n, t, h in self.analog],
                "digital": [dict(name=n, type=t, reason=r) for n, t, r in self.digital],
                "digital_ops": [dict(name=n, op=o, reason=r) for n, o, r in self.digital_ops],
                "periphery": list(self.periphery)}

    def __str__(self) -> str:
        lines = [f"analog layers ({len(self.analog)}):"]
        for n, t, h in self.analog:
            arr = self.arrays.get(n, [])
            lines.append(f"  {n}: {t} on {h!r}, {len(arr)} matrices, {sum(a['tiles'] for a in arr)} arrays")
            if len(arr) > 1:
                lines += [f"    {a['matrix']}: {a['shape'][0]}x{a['shape'][1]} on {a['tiles']} arrays" for a in arr]
        lines.append(f"kept digital ({len(self.digital)}):")
        lines += [f"  {n}: {t} ({r})" for n, t, r in self.digital]
        if self.digital_ops:
            lines.append(f"digital operations inside analog layers ({len(self.digital_ops)}):")
            lines += [f"  {n}: {o} ({r})" for n, o, r in self.digital_ops]
        return "\n".join(lines)

    def _add_analog(self, name: str, mod: nn.Module) -> None:
        self.analog.append((name, type(mod).__name__, mod.hardware.name))
        self.arrays[name] = _arrays_of(mod)
        self.digital_ops += [(name, o, r) for o, r in getattr(mod, "digital_ops", ())]


def _arrays_of(mod: nn.Module) -> list:
    """One dict per crossbar matrix of an analog layer: its shape (in, out) and its tiles."""
    from memcim.mapping.crossbar import tile_geometry
    units = list(mod.crossbars.items()) if isinstance(mod, AnalogModule) else [("weight", mod)]
    out = []
    for k, u in units:
        n, m = u.crossbar_weight().shape
        _, _, nrt, nct = tile_geometry(int(n), int(m), u.hardware)
        out.append(dict(matrix=k, shape=(int(n), int(m)), row_tiles=nrt, col_tiles=nct, tiles=nrt * nct))
    return out


def _resolve_hw(name: str, module: nn.Module, default: HardwareConfig, overrides: dict | None):
    """Per-layer hardware: exact name, then glob pattern, then type, then the default."""
    if not overrides:
        return default, False
    for key, hw in overrides.items():
        if isinstance(key, str) and key == name:
            return hw, True
    for key, hw in overrides.items():
        if isinstance(key, str) and any(ch in key for ch in "*?[") and fnmatch.fnmatchcase(name, key):
            return hw, True
    for key, hw in overrides.items():
        if isinstance(key, type) and isinstance(module, key):
            return hw, True
    return default, False


def _check_overrides(overrides) -> dict:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides: expected a dict of layer name/type -> HardwareConfig or None, "
                        f"got {type(overrides).__name__}")
    for k, v in overrides.items():
        if not (isinstance(k, str) or (isinstance(k, type) and issubclass(k, nn.Module))):
            raise TypeError(f"overrides: key {k!r} must be a layer name (glob allowed) or an nn.Module type")
        if v is not None and not isinstance(v, HardwareConfig):
            raise TypeError(f"overrides[{k!r}]: expected a HardwareConfig or None (keep digital), "
                            f"got {type(v).__name__}")
    return overrides


def _check_mapping(mapping) -> dict:
    if mapping is None:
        return dict(DEFAULT_MAPPING)
    if not isinstance(mapping, dict):
        raise TypeError(f"mapping: expected a dict of nn.Module type -> analog class (or None), "
                        f"got {type(mapping).__name__}")
    for k, v in mapping.items():
        if not (isinstance(k, type) and issubclass(k, nn.Module)):
            raise TypeError(f"mapping: key {k!r} must be an nn.Module type")
        if v is not None and not callable(getattr(v, "from_digital", v)):
            raise TypeError(f"mapping[{k.__name__}]: expected a class with from_digital(layer, hardware, *, "
                            f"seed, train_noise), such a callable, or None (keep digital); got {v!r}")
    return {**DEFAULT_MAPPING, **mapping}


def convert_to_analog(model: nn.Module, hardware: HardwareConfig, *, overrides: dict | None = None,
                      calib_data: torch.Tensor | None = None, seed: int = 0, train_noise: bool = True,
                      inplace: bool = False, return_report: bool = False, mapping: dict | None = None):
    """Return a copy of ``model`` whose mapped layers run on simulated crossbars.

    Parameters
    ----------
    model : any ``nn.Module`` (any graph: residual blocks, concatenations, ``torch.fx``-traceable
        models); the modules whose exact type is in the mapping are replaced where they sit, and the
        rest of the graph is untouched.
    hardware : the default :class:`~memcim.config.HardwareConfig`.
    overrides : per-layer hardware, ``{name or glob or layer type: HardwareConfig or None}``;
        ``None`` keeps that layer digital. Exact names win over globs, globs over types.
    calib_data : sample model inputs used to calibrate each layer's ADC full scale
        (``adc.fs_mode == "calibrated"``); see :func:`calibrate`.
    seed : seed of the training chips' generators (layer ``i`` gets its own).
    train_noise : program and read the training chips with their noise (False: without
        :data:`TRAIN_NOISE`, keeping levels, DAC and ADC).
    inplace : convert ``model`` itself instead of a deep copy.
    return_report : also return the :class:`ConversionReport`.
    mapping : ``{torch layer type: analog class or None}`` merged over :data:`DEFAULT_MAPPING`
        (Linear, Conv1d/2d/3d, LSTM, GRU, MultiheadAttention); ``None`` keeps a type digital.

    Returns
    -------
    The analog model (not yet programmed: call :func:`program`), and the report if asked.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(hardware, HardwareConfig):
        raise TypeError(f"hardware: expected a HardwareConfig, got {type(hardware).__name__}")
    overrides = _check_overrides(overrides)
    mapping = _check_mapping(mapping)
    out = model if inplace else copy.deepcopy(model)
    report = ConversionReport()
    index = 0
    done: dict = {}          # id(original) -> converted module: a shared module stays shared

    def visit(parent: nn.Module, prefix: str) -> None:
        nonlocal index
        for cname, mod in list(parent._modules.items()):
            if mod is None:
                continue
            name = prefix + cname
            if id(mod) in done:
                setattr(parent, cname, done[id(mod)])
                continue
            tname = type(mod).__name__
            if isinstance(mod, ANALOG_LAYERS + ANALOG_MODULES):
                report._add_analog(name, mod)
                continue
            if type(mod) in mapping:
                cls = mapping[type(mod)]
                if cls is None:
                    report.digital.append((name, tname, "excluded by mapping"))
                    continue
                hw, _ = _resolve_hw(name, mod, hardware, overrides)
                if hw is None:
                    report.digital.append((name, tname, "excluded by overrides"))
                    continue
                reason = unsupported_reason(mod)
                if reason:
                    report.digital.append((name, tname, reason))
                    continue
                build = getattr(cls, "from_digital", cls)
                new = build(mod, hw, seed=layer_seed(seed, index), train_noise=train_noise)
                index += 1
                done[id(mod)] = new
                setattr(parent, cname, new)
                if isinstance(new, ANALOG_LAYERS + ANALOG_MODULES):
                    report._add_analog(name, new)
                else:   # a user class: report the analog layers inside it
                    inner = [(name + "." + n if n else name, m) for n, m in new.named_modules()
                             if isinstance(m, ANALOG_LAYERS + ANALOG_MODULES)]
                    for n, m in _outermost(inner):
                        report._add_analog(n, m)
            elif mod._modules:
                visit(mod, name + ".")
            elif any(True for _ in mod.parameters(recurse=False)):
                report.digital.append((name, tname, f"{tname} has no analog implementation"))
            else:
                report.periphery.append(name)

    if type(out) in mapping and mapping[type(out)] is not None:
        raise ValueError(f"model: is itself a {type(out).__name__}; wrap it in a container "
                         "(nn.Sequential(model)) to convert it")
    visit(out, "")
    if calib_data is not None:
        calibrate(out, calib_data)
    return (out, report) if return_report else out


def _outermost(named: list) -> list:
    """Drop the entries that sit inside an earlier (multi-matrix) analog module."""
    keep, inside = [], []
    for n, m in named:
        if any(n.startswith(p + ".") for p in inside):
            continue
        keep.append((n, m))
        if isinstance(m, AnalogModule):
            inside.append(n)
    return keep


def conversion_report(model: nn.Module) -> ConversionReport:
    """Report of an already converted model (which layers are analog and on which arrays, which are
    digital and why, and what the analog layers compute digitally)."""
    rep = ConversionReport()
    inside: list = []
    for name, mod in model.named_modules():
        if name == "" or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(mod, AnalogModule):
            inside.append(name)
        is_analog = isinstance(mod, ANALOG_LAYERS + ANALOG_MODULES)
        if any(True for _ in mod.children()) and not is_analog:
            continue
        t = type(mod).__name__
        if is_analog:
            rep._add_analog(name, mod)
        elif any(True for _ in mod.parameters(recurse=False)):
            rep.digital.append((name, t, unsupported_reason(mod) or f"{t} is digital"))
        else:
            rep.periphery.append(name)
    return rep


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def convert_to_digital(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return a copy of ``model`` with every analog layer replaced by its plain torch layer."""
    out = model if inplace else copy.deepcopy(model)
    for name, mod in _outermost(list(out.named_modules())):
        if isinstance(mod, AnalogModule):
            new = mod.to_digital()
            _set_submodule(out, name, new.train(mod.training))
            continue
        if isinstance(mod, AnalogLinear):
            new = nn.Linear(mod.in_features, mod.out_features, mod.bias is not None,
                            device=mod.weight.device, dtype=mod.weight.dtype)
        elif isinstance(mod, AnalogConv2d):
            new = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, 1, mod.bias is not None, device=mod.weight.device,
                            dtype=mod.weight.dtype)
        else:
            continue
        _set_submodule(out, name, _copy_params(new, mod))
    return out


def analog_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every analog layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ANALOG_LAYERS)]


@contextmanager
def digital_mode(model: nn.Module):
    """Within this context the analog layers compute the exact digital product."""
    layers = [m for _, m in analog_layers(model)]
    old = [m._digital for m in layers]
    for m in layers:
        m._digital = True
    try:
        yield model
    finally:
        for m, o in zip(layers, old):
            m._digital = o


@torch.no_grad()
def calibrate(model: nn.Module, calib_data: torch.Tensor, *, max_rows: int = _MAX_CALIB_ROWS,
              seed: int = 0) -> None:
    """Record each analog layer's crossbar inputs on ``calib_data`` (a digital forward pass).

    They set the ADC full scale at the next :func:`program` when ``adc.fs_mode == "calibrated"``,
    as a chip is calibrated on sample data. Conv layers keep a random subset of ``max_rows`` patches.
    """
    if not isinstance(calib_data, torch.Tensor):
        raise TypeError(f"calib_data: expected a torch.Tensor, got {type(calib_data).__name__}")
    layers = [m for _, m in analog_layers(model)]
    gen = torch.Generator().manual_seed(seed)
    hooks = []
    seen: dict = {}      # id(layer) -> (layer, [rows of every call]); a recurrent matrix is read per step

    def hook(mod, args):
        seen.setdefault(id(mod), (mod, []))[1].append(mod.calib_rows(args[0]).to(torch.float64).cpu())

    for m in layers:
        hooks.append(m.register_forward_pre_hook(hook))
    was = model.training
    try:
        model.eval()
        with digital_mode(model):
            model(calib_data)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    for mod, calls in seen.values():      # in the order of their first call
        rows = calls[0] if len(calls) == 1 else torch.cat(calls)
        if rows.shape[0] > max_rows:
            rows = rows[torch.randperm(rows.shape[0], generator=gen)[:max_rows]]
        mod._calib = rows


def program(model: nn.Module, seed: int | None = 0, *, calib_data: torch.Tensor | None = None,
            dtype: torch.dtype = torch.float32) -> nn.Module:
    """Program every analog layer of ``model``: sample one chip.

    Parameters
    ----------
    model : an analog model from :func:`convert_to_analog`.
    seed : chip seed; layer ``i`` uses :func:`layer_seed` (seed, i). Another seed is another chip.
    calib_data : if given, recalibrate the ADC full scales first (see :func:`calibrate`).
    dtype : simulation precision (float32 default; float64 for exactness checks).

    Returns
    -------
    ``model`` (programmed in place).
    """
    layers = analog_layers(model)
    if not layers:
        raise ValueError("model: has no analog layers; convert it with convert_to_analog first")
    if seed is not None:
        layer_seed(seed, 0)  # validates
    if calib_data is not None:
        calibrate(model, calib_data)
    for i, (_, m) in enumerate(layers):
        m.program(None if seed is None else layer_seed(seed, i), dtype=dtype)
    return model


def set_read_time(model: nn.Module, t: float | None) -> nn.Module:
    """Read every analog layer of ``model`` at ``t`` seconds after programming (None: the first read,
    ``device.drift_t0``); returns ``model``.

    Each layer's chip is then read with ``chip.mvm(x, t=t)``: conductances drifted to ``t``, the 1/f
    read noise of ``t`` and the layer hardware's ``compensation.drift``. The programmed chips do not
    change, so reading one model at several times reads the same chips (a chip programmed once and
    read an hour, a day, a year later). ``t`` must be finite and not before any layer's
    ``device.drift_t0``.

    >>> import torch
    >>> from memcim.config import preset
    >>> m = convert_to_analog(torch.nn.Sequential(torch.nn.Linear(4, 2)), preset("ideal"))
    >>> [layer.read_time for _, layer in analog_layers(set_read_time(m, 3600.0))]
    [3600.0]
    """
    layers = [m for _, m in analog_layers(model)]
    if not layers:
        raise ValueError("model: has no analog layers; convert it with convert_to_analog first")
    if t is not None:
        for m in layers:
            t = check_time(t, m.hardware.device, "t")
    for m in layers:
        m._read_time = t
    return model


@contextmanager
def read_time(model: nn.Module, t: float | None):
    """Within this context every analog layer reads at ``t`` seconds after programming
    (:func:`set_read_time`); the previous read times come back on exit."""
    layers = [m for _, m in analog_layers(model)]
    old = [getattr(m, "_read_time", None) for m in layers]
    set_read_time(model, t)
    try:
        yield model
    finally:
        for m, o in zip(layers, old):
            m._read_time = o
