"""Data converters: the word-line DAC and the column ADC (pure functions on tensors).

Both are symmetric mid-tread quantizers, so zero is exact and the transfer is odd:

* DAC (signed, ``b`` bits): ``K = 2**(b-1) - 1`` steps each side; an input ``x`` in
  ``[-x_range, x_range]`` becomes the word-line fraction ``u = round(x / x_range * K) / K`` of
  ``v_read``. Unsigned: ``K = 2**b - 1`` steps over ``[0, x_range]``, negatives become 0.
* ADC (``b`` bits, full scale ``FS``): ``y = clip(round(V / (FS/K)), -K, K) * FS/K`` with
  ``K = 2**(b-1) - 1``. Without saturation the clip is skipped (an idealisation).
"""
from __future__ import annotations

import torch

from memcim.config import ADCConfig, DACConfig


def dac_convert(x: torch.Tensor, dac: DACConfig, *, ste: bool = False,
                out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert inputs to word-line drive fractions.

    Parameters
    ----------
    x : inputs, shape (..., batch, in).
    dac : the DAC settings.
    ste : straight-through rounding for training: the same values, with the gradient of the
        clipped, unrounded ``u`` (the clip keeps its true gradient, 0 outside the range) and a
        detached ``scale``.
    out : optional buffer of ``x``'s shape (not with ``ste``) that receives ``u`` (the same values;
        no allocation of the size of ``x``, whose page faults cost more than the conversion).

    Returns
    -------
    u : drive fractions in [-1, 1] (unsigned: [0, 1]), same shape as ``x``; the word-line
        voltage is ``u * v_read``.
    scale : the input value that full drive represents, shape (..., batch, 1): ``x_range``, or each
        vector's own largest magnitude when ``x_range`` is None (all-zero vectors get 1).
        The ideal reconstruction is ``u * scale``.
    """
    if out is not None and (ste or out.shape != x.shape):
        raise ValueError(f"out: a buffer of shape {tuple(x.shape)} without ste is allowed, got "
                         f"{tuple(out.shape)}{' with ste' if ste else ''}")
    if dac.x_range is None:
        scale = (x.abs() if out is None else torch.abs(x, out=out)).amax(dim=-1, keepdim=True)
        scale = torch.where(scale > 0, scale, 1.0)
    else:
        scale = torch.full_like(x[..., :1], dac.x_range)
    if ste:  # the range is a setting of the read, not a function to differentiate
        scale = scale.detach()
    u = x / scale if out is None else torch.div(x, scale, out=out)
    if not dac.enabled:
        return u, scale
    lo = -1.0 if dac.signed else 0.0
    if not dac.clip and bool(((u > 1.0) | (u < lo)).any()):
        raise ValueError(f"inputs: values outside the DAC range [{lo * (dac.x_range or 1):g}, {dac.x_range}] "
                         "and dac.clip is false; enable clipping or widen dac.x_range")
    k = dac.steps
    if ste:
        u = u.clamp(lo, 1.0)
        return u + (torch.round(u.detach() * k) / k - u.detach()), scale
    if dac.signed and dac.x_range is None:
        # x / max|x| is already in [-1, 1] (a correctly rounded quotient of |x| <= m by m is <= 1): no clamp
        return u.mul_(k).round_().div_(k), scale
    return u.clamp_(lo, 1.0).mul_(k).round_().div_(k), scale   # in place on the new u: the same values


def adc_convert(v: torch.Tensor, full_scale: torch.Tensor | float, adc: ADCConfig, *,
                inplace: bool = False, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Quantize TIA output voltages ``v`` [V] with full scale ``full_scale`` [V] (broadcastable).

    ``inplace=True`` overwrites ``v`` (saves memory and time on large batches); the result is
    multiplied by ``gain`` in the same pass (the digital rescale that follows the ADC). (The
    training read's straight-through gradient is attached by :mod:`memcim.simulate`.)
    """
    if not adc.enabled:
        q = v if inplace else v.clone()
        return q.mul_(gain) if not (isinstance(gain, float) and gain == 1.0) else q
    step = full_scale / adc.steps
    q = v if inplace else v.clone()
    q.div_(step).round_()
    if adc.saturate:
        k = float(adc.steps)
        q.clamp_(-k, k)
    return q.mul_(step * gain)


def adc_quantization_variance(full_scale: torch.Tensor | float, adc: ADCConfig):
    """Variance of the ADC's rounding error, ``(FS / K)^2 / 12`` in the units of ``full_scale``
    squared (uniform error over one step; 0 when the ADC is off). Saturation is not included."""
    if not adc.enabled:
        return full_scale * 0.0
    return (full_scale / adc.steps) ** 2 / 12.0
