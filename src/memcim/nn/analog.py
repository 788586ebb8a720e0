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
mapped (``map_matrix``: the same tiling, scale, levels and ADC full scale, calibrated at mapping time
on the inputs captured by :func:`calibrate`), a fresh chip is programmed from them
(``program(plan, seed, weights=W)``: programming noise, stuck devices) and read once with
``chip.mvm(x, differentiable=True)`` (DAC, read noise, RTN, ADC), straight through the roundings and
the saturation (see :mod:`memcim.simulate`). Training an analog model is hardware-aware training.

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
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memcim.config import HardwareConfig
from memcim.hardware.device import check_time
from memcim.mapping.crossbar import map_matrix
from memcim.simulate import ProgrammedChip
from memcim.simulate import program as program_chip

#: Non-idealities a layer with ``train_noise=False`` leaves out of its training read (it keeps the
#: levels, the DAC and the ADC, and the wires).
TRAIN_NOISE = ("programming", "stuck", "rtn", "thermal", "shot")

_MAX_CALIB_ROWS = 4096


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
        return self.hardware if self.train_noise else self.hardware.without(*TRAIN_NOISE)

    def train_chip(self, seed: int | None = None) -> ProgrammedChip:
        """A freshly programmed chip of the current weights whose conductances carry their gradient.

        The weights are mapped as :meth:`program` maps them (the ADC full scale calibrated at mapping
        time, never on the batch) and one chip is programmed with ``program(..., weights=W)``; the
        seed is drawn from the layer's training generator unless given. Read it with
        ``chip.mvm(x, differentiable=True)``.
        """
        W = self.weight.reshape(self.weight.shape[0], -1).t()
        mapped = map_matrix(W.detach().to(torch.float64).cpu(), self.train_hardware(), calib_inputs=self._calib)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=self._train_gen))
        dtype = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        return program_chip(mapped, seed=seed, dtype=dtype, device=self.weight.device, weights=W)

    def _train_mvm(self, x2d: torch.Tensor) -> torch.Tensor:
        chip = self.train_chip()
        return chip.mvm(x2d, differentiable=True)[0].to(x2d.dtype)

    def _analog_mvm(self, x2d: torch.Tensor) -> torch.Tensor:
        if self.chip is None:
            raise RuntimeError(f"{type(self).__name__} is not programmed; call "
                               "memcim.nn.analog.program(model, seed) before inference")
        if self._weight_version != self.weight._version:
            raise RuntimeError(f"{type(self).__name__}: the weights changed after programming; call "
                               "memcim.nn.analog.program(model, seed) again")
        return self.chip.mvm(x2d.detach(), t=getattr(self, "_read_time", None))[0].to(x2d.dtype)

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
        for k in ("hardware", "chip", "_train_gen", "programmed_seed", "_weight_version", "_plan_memo"):
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
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.bias is not None, hardware=hardware, seed=seed,
                  train_noise=train_noise, device=layer.weight.device, dtype=layer.weight.dtype)
        return _copy_params(new, layer)

    def _patches(self, x: torch.Tensor):
        if isinstance(self.padding, str):
            if self.padding == "valid":
                pad = (0, 0)
            else:  # "same" with stride 1
                kh, kw = self.kernel_size
                dh, dw = self.dilation
                th, tw = dh * (kh - 1), dw * (kw - 1)
                x = F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2))
                pad = (0, 0)
        else:
            pad = self.padding
        h_out = (x.shape[-2] + 2 * pad[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        w_out = (x.shape[-1] + 2 * pad[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=pad, stride=self.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1]), h_out, w_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._digital:
            return super().forward(x)
        unbatched = x.ndim == 3
        if unbatched:
            x = x.unsqueeze(0)
        n = x.shape[0]
        rows, h_out, w_out = self._patches(x)
        y = self._matmul(rows)                                   # (n*L, C_out)
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape(n, h_out * w_out, self.out_channels).transpose(1, 2).reshape(n, self.out_channels, h_out, w_out)
        return y[0] if unbatched else y

    def calib_rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(0)
        return self._patches(x.detach())[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self._analog_repr()


ANALOG_LAYERS = (AnalogLinear, AnalogConv2d)


def unsupported_reason(layer: nn.Module) -> str | None:
    """Why ``layer`` (a Linear or Conv2d) cannot run on the crossbar, or None if it can."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            return f"Conv2d with groups={layer.groups} is not supported (only groups=1)"
        if layer.padding_mode != "zeros":
            return f"Conv2d with padding_mode={layer.padding_mode!r} is not supported (only 'zeros')"
        if isinstance(layer.padding, str) and layer.padding == "same" and any(s != 1 for s in layer.stride):
            return "Conv2d with padding='same' and stride > 1 is not supported"
    return None


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------

@dataclass
class ConversionReport:
    """What :func:`convert_to_analog` did to each leaf layer.

    ``analog``: (name, type, hardware name) of layers now on crossbars. ``digital``: (name, type,
    reason) of layers with weights that stay digital (unsupported or excluded). ``periphery``:
    names of weight-free layers (activations, pooling, reshapes), computed digitally as usual.
    """

    analog: list = field(default_factory=list)
    digital: list = field(default_factory=list)
    periphery: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"analog": [dict(name=n, type=t, hardware=h) for n, t, h in self.analog],
                "digital": [dict(name=n, type=t, reason=r) for n, t, r in self.digital],
                "periphery": list(self.periphery)}

    def __str__(self) -> str:
        lines = [f"analog layers ({len(self.analog)}):"]
        lines += [f"  {n}: {t} on {h!r}" for n, t, h in self.analog]
        lines.append(f"kept digital ({len(self.digital)}):")
        lines += [f"  {n}: {t} ({r})" for n, t, r in self.digital]
        return "\n".join(lines)


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


def convert_to_analog(model: nn.Module, hardware: HardwareConfig, *, overrides: dict | None = None,
                      calib_data: torch.Tensor | None = None, seed: int = 0, train_noise: bool = True,
                      inplace: bool = False, return_report: bool = False):
    """Return a copy of ``model`` whose ``Linear`` and ``Conv2d`` layers run on simulated crossbars.

    Parameters
    ----------
    model : any ``nn.Module``; only its ``nn.Linear`` and ``nn.Conv2d`` leaves are converted.
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

    Returns
    -------
    The analog model (not yet programmed: call :func:`program`), and the report if asked.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(hardware, HardwareConfig):
        raise TypeError(f"hardware: expected a HardwareConfig, got {type(hardware).__name__}")
    overrides = _check_overrides(overrides)
    out = model if inplace else copy.deepcopy(model)
    report = ConversionReport()
    index = 0
    for name, mod in list(out.named_modules()):
        if name == "" or isinstance(mod, ANALOG_LAYERS):
            continue
        if any(True for _ in mod.children()):
            continue
        tname = type(mod).__name__
        has_params = any(True for _ in mod.parameters(recurse=False))
        if type(mod) in (nn.Linear, nn.Conv2d):
            hw, _ = _resolve_hw(name, mod, hardware, overrides)
            reason = unsupported_reason(mod)
            if hw is None:
                report.digital.append((name, tname, "excluded by overrides"))
                continue
            if reason:
                report.digital.append((name, tname, reason))
                continue
            cls = AnalogLinear if isinstance(mod, nn.Linear) else AnalogConv2d
            new = cls.from_digital(mod, hw, seed=layer_seed(seed, index), train_noise=train_noise)
            index += 1
            _set_submodule(out, name, new)
            report.analog.append((name, tname, hw.name))
        elif has_params:
            report.digital.append((name, tname, f"{tname} has no analog implementation"))
        else:
            report.periphery.append(name)
    if calib_data is not None:
        calibrate(out, calib_data)
    return (out, report) if return_report else out


def conversion_report(model: nn.Module) -> ConversionReport:
    """Report of an already converted model (which layers are analog, which are digital and why)."""
    rep = ConversionReport()
    for name, mod in model.named_modules():
        if name == "" or (any(True for _ in mod.children()) and not isinstance(mod, ANALOG_LAYERS)):
            continue
        t = type(mod).__name__
        if isinstance(mod, ANALOG_LAYERS):
            rep.analog.append((name, t, mod.hardware.name))
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
    for name, mod in list(out.named_modules()):
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

    def hook(mod, args):
        rows = mod.calib_rows(args[0]).to(torch.float64).cpu()
        if rows.shape[0] > max_rows:
            rows = rows[torch.randperm(rows.shape[0], generator=gen)[:max_rows]]
        mod._calib = rows

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
