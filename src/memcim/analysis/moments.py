"""Moment propagation through a noisy memristor-crossbar network (paper 001, MemSE).

Given a ``torch.nn.Sequential`` (nested Sequentials are flattened) built from ``Linear``,
``Conv2d``, ``AvgPool2d``, ``Flatten``, ``BatchNorm1d/2d``, ``Softplus``, ``ReLU``, ``Sigmoid``,
``Tanh`` (plus ``Identity``/``Dropout``, which are ignored as at inference), this module
predicts the mean and the covariance of every layer's output when every crossbar layer runs on
a programmed memristor array, and from them the output MSE against the noise-free,
full-precision network.

Hardware semantics (per crossbar layer with weights ``w`` of shape (out, in)):

* ``c = G_max / max|w|`` (``G_max`` in S; one per layer, or one per output column);
* ``G+ = q(c*max(w, 0))``, ``G- = q(c*max(-w, 0))`` where ``q`` rounds to the nearest of the
  ``N+1`` levels ``{0, D, ..., N*D}``, ``D = G_max/N`` (ties to even, as ``torch.round``);
* every device (both of the pair) gets i.i.d. ``N(0, sigma^2)`` programming noise;
* ``z = (1/c)(G+ - G-) x + b`` (``r = 1`` and an exact digital bias).

Because ``q(c w)/c`` equals ``w`` quantized with step ``max|w|/N`` whatever ``c`` is, the
quantization error enters the mean deterministically and does not depend on ``G_max``; the
programming noise adds a weight perturbation of variance ``s^2 = 2 sigma^2 / c^2``
(two devices per weight). The MSE therefore depends on ``sigma`` and ``G_max`` only through
``sigma / G_max``.

Covariance representations (``cov=``):

* ``"exact"``: the full covariance of every feature map, ``(B, D, D)`` per batch;
* ``"diagonal"``: variances only;
* ``"lowrank"`` (default, see docs/memse.md for the measurement behind the choice): the exact
  variance of every unit plus a low-rank factor model ``Cov ~= F F^T`` of the cross-covariance.
  The programming noise of a convolution is shared by all positions of an output channel, so
  its spatial covariance is ``s^2 U^T U`` with ``U`` the (C_in k^2, P) patch matrix of the
  input mean: its top ``rank`` eigen-directions become factors that travel through later
  layers (linear layers map them, activations scale them by ``E[f'(X)]``). The diagonal is
  always tracked exactly; only off-diagonal terms are approximated.

Activations (``act_method=``): ``"taylor"`` with even ``taylor_order`` (2 reproduces the
paper's Eqs. 8-10; higher orders add the consistent higher terms of the Gaussian moment
series), or ``"gh"`` (Gauss-Hermite quadrature of the Gaussian expectation). ``ReLU`` always
uses the exact rectified-Gaussian mean and variance. Cross-covariances after an activation use
``E[f'(X)] E[f'(Y)] Cov(X, Y)`` (Stein's lemma to first order in the correlation; with
``taylor_order=2`` this is the paper's Eq. 10, ``f'(mu) f'(mu') rho``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CrossbarLayer", "PoolLayer", "PadLayer", "FlattenLayer", "ElementwiseLayer", "parse_model",
           "Moments", "propagate", "run_layers", "predict_mse", "MSEPrediction", "quantize_weight",
           "resolve_gmax", "activation_moments", "COV_MODES"]

COV_MODES = ("exact", "lowrank", "diagonal")
DEFAULT_RANK = 4
DEFAULT_FULL_BELOW = 64
_SUPPORTED = "Linear, Conv2d, AvgPool2d, ZeroPad2d, Flatten, BatchNorm1d, BatchNorm2d, Softplus, ReLU, Sigmoid, Tanh, Identity, Dropout"


# ----------------------------------------------------------------------------- model parsing
@dataclass
class CrossbarLayer:
    """A layer mapped on a crossbar: ``Linear`` (kind="linear") or ``Conv2d`` (kind="conv").

    ``weight`` is torch's layout ((out, in) or (out, in, kh, kw)), with any following BatchNorm
    folded in; ``bias`` is (out,) (digital, exact).
    """

    kind: str
    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    name: str = ""

    @property
    def wmax(self) -> float:
        return float(self.weight.abs().max())

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def apply(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """Linear map (no bias) with weight ``w`` (default: own weight) on a batch ``x``."""
        w = self.weight if w is None else w
        if self.kind == "linear":
            return x @ w.t()
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation)


@dataclass
class PoolLayer:
    """``AvgPool2d``: each output is the mean of kh*kw inputs (zero padding counted), so the
    squared-coefficient map is the same pooling divided by kh*kw."""

    kernel: tuple
    stride: tuple
    padding: tuple
    name: str = ""

    def apply(self, x: torch.Tensor, square: bool = False) -> torch.Tensor:
        kh, kw = self.kernel
        if self.stride == self.kernel and self.padding == (0, 0) and x.shape[-2] >= kh and x.shape[-1] >= kw:
            y = _block_mean(x, kh, kw)     # non-overlapping windows: strided adds (avg_pool2d is slower on CPU)
        else:
            y = F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)
        return y.div_(kh * kw) if square else y      # y is a fresh tensor


def _block_mean(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``avg_pool2d(x, (kh, kw))`` with stride = kernel and no padding (floor mode), as sums of strided views."""
    *lead, h, w = x.shape
    ho, wo = h // kh, w // kw
    if h != ho * kh or w != wo * kw:
        x = x[..., : ho * kh, : wo * kw]
    rows = x.reshape(*lead, ho, kh, wo * kw).unbind(-2)
    acc = rows[0]
    for i in range(1, kh):
        acc = acc + rows[i]
    cols = acc.reshape(*lead, ho, wo, kw).unbind(-1)
    if kh * kw == 1:
        return cols[0] * 1.0
    out = cols[0]
    for j in range(1, kw):
        out = out + cols[j] if j == 1 else out.add_(cols[j])
    return out.mul_(1.0 / (kh * kw))       # in place on the sums (a fresh tensor: fewer large allocations)


@dataclass
class PadLayer:
    """``ZeroPad2d`` / ``ConstantPad2d(value=0)``: digital zero padding (left, right, top, bottom)."""

    pad: tuple
    name: str = ""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


@dataclass
class FlattenLayer:
    name: str = ""


@dataclass
class ElementwiseLayer:
    """Activation (``softplus``/``relu``/``sigmoid``/``tanh``) or per-channel ``affine`` map."""

    kind: str
    beta: float = 1.0
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    module: nn.Module | None = None
    name: str = ""


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _leaves(model: nn.Module, prefix: str = ""):
    if isinstance(model, nn.Sequential):
        for n, m in model.named_children():
            yield from _leaves(m, f"{prefix}{n}.")
    else:
        yield prefix.rstrip("."), model


def parse_model(model: nn.Module, dtype: torch.dtype = torch.float64, *, fold_bn: bool = True) -> list:
    """Turn a (nested) ``nn.Sequential`` into the list of layers the analysis understands.

    BatchNorm (running statistics, i.e. inference) directly after a ``Linear``/``Conv2d`` is
    folded into that layer's weight and bias; elsewhere it becomes an exact per-channel affine
    map. ``Identity`` and ``Dropout`` are skipped.

    Parameters
    ----------
    model : nn.Module; a ``nn.Sequential`` (possibly nested), or a single supported layer.
    dtype : floating dtype of the extracted weights.
    fold_bn : fold a BatchNorm that directly follows a crossbar layer into its weight and bias
        (MemSE's convention). False keeps every BatchNorm as a digital affine map, as
        :func:`memcim.nn.analog.convert_to_analog` does (the crossbar then holds the unfolded weight).

    Returns
    -------
    list of CrossbarLayer / PoolLayer / FlattenLayer / ElementwiseLayer.

    Raises
    ------
    ValueError naming the first unsupported layer or unsupported option.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    layers: list = []
    for name, m in _leaves(model):
        label = f"{name or type(m).__name__} ({type(m).__name__})"
        if isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        if isinstance(m, nn.Linear):
            b = m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)
            layers.append(CrossbarLayer("linear", m.weight.detach().to(dtype).clone(), b.to(dtype).clone(), name=label))
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ValueError(f"model: layer {label} has groups={m.groups}; only groups=1 is supported")
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                if isinstance(m.padding, str) and m.padding == "valid":
                    pad = (0, 0)
                else:
                    raise ValueError(f"model: layer {label} has padding={m.padding!r}/padding_mode={m.padding_mode!r};"
                                     " only explicit zero padding is supported")
            else:
                pad = _pair(m.padding)
            b = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels)
            layers.append(CrossbarLayer("conv", m.weight.detach().to(dtype).clone(), b.to(dtype).clone(),
                                        _pair(m.stride), pad, _pair(m.dilation), name=label))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None:
                raise ValueError(f"model: layer {label} has no running statistics (track_running_stats=False)")
            inv = 1.0 / torch.sqrt(m.running_var.detach().to(dtype) + m.eps)
            a = inv * (m.weight.detach().to(dtype) if m.affine else 1.0)
            sh = -m.running_mean.detach().to(dtype) * a + (m.bias.detach().to(dtype) if m.affine else 0.0)
            prev = layers[-1] if layers else None
            if fold_bn and isinstance(prev, CrossbarLayer) and prev.out_features == a.numel() and (
                    (prev.kind == "conv") == isinstance(m, nn.BatchNorm2d)):
                shape = (-1,) + (1,) * (prev.weight.dim() - 1)
                prev.weight = prev.weight * a.reshape(shape)
                prev.bias = prev.bias * a + sh
                prev.name += f" + {label} folded"
            else:
                layers.append(ElementwiseLayer("affine", scale=a, shift=sh, name=label))
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or m.divisor_override is not None or (not m.count_include_pad and _pair(m.padding) != (0, 0)):
                raise ValueError(f"model: layer {label}: ceil_mode, divisor_override and count_include_pad=False "
                                 "with padding are not supported")
            k = _pair(m.kernel_size)
            s = _pair(m.stride if m.stride is not None else m.kernel_size)
            layers.append(PoolLayer(k, s, _pair(m.padding), name=label))
        elif isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
            if isinstance(m, nn.ConstantPad2d) and float(m.value) != 0.0:
                raise ValueError(f"model: layer {label} pads with {m.value}; only zero padding is supported")
            layers.append(PadLayer(tuple(int(v) for v in m.padding), name=label))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"model: layer {label}: only Flatten(start_dim=1, end_dim=-1) is supported")
            layers.append(FlattenLayer(name=label))
        elif isinstance(m, nn.Softplus):
            layers.append(ElementwiseLayer("softplus", beta=float(m.beta), module=m, name=label))
        elif isinstance(m, nn.ReLU):
            layers.append(ElementwiseLayer("relu", module=m, name=label))
        elif isinstance(m, nn.Sigmoid):
            layers.append(ElementwiseLayer("sigmoid", module=m, name=label))
        elif isinstance(m, nn.Tanh):
            layers.append(ElementwiseLayer("tanh", module=m, name=label))
        else:
            raise ValueError(f"model: unsupported layer {label}; supported: {_SUPPORTED}")
    if not any(isinstance(l, CrossbarLayer) for l in layers):
        raise ValueError("model: has no Linear or Conv2d layer to map on a crossbar")
    for l in layers:
        if isinstance(l, CrossbarLayer) and l.wmax == 0.0:
            raise ValueError(f"model: layer {l.name} has all-zero weights; c = G_max/max|w| is undefined")
    return layers


def crossbar_layers(layers: list) -> list[CrossbarLayer]:
    return [l for l in layers if isinstance(l, CrossbarLayer)]


def quantize_weight(w: torch.Tensor, levels: int, wmax: float | None = None) -> torch.Tensor:
    """``q(c w)/c``: the weight quantized on the ``levels+1`` levels of step ``max|w|/levels``.

    Independent of ``G_max``: ``q(c*max(w,0))/c - q(c*max(-w,0))/c``.
    """
    from memcim.config import DeviceConfig
    from memcim.hardware.device import quantize_conductance

    wmax = float(w.abs().max()) if wmax is None else wmax
    if wmax <= 0:
        return torch.zeros_like(w)
    # the device's own rounding, in units where c = 1 S per weight unit: levels {0, step, ..., wmax}
    dev = DeviceConfig(g_min=0.0, g_max=wmax, levels=int(levels) + 1)
    return quantize_conductance(w.clamp_min(0), dev)[0] - quantize_conductance((-w).clamp_min(0), dev)[0]


def resolve_gmax(gmax, layers: list, dtype=torch.float64) -> list[torch.Tensor]:
    """Normalise ``gmax`` to one tensor per crossbar layer: shape () or (out,) (per column).

    Accepts a positive float (whole network), a sequence of floats (one per crossbar layer) or
    a sequence whose items are floats or 1-D arrays of length ``out`` (per column).
    """
    xl = crossbar_layers(layers)
    if isinstance(gmax, (int, float, np.floating, np.integer)) and xl:
        g = float(gmax)      # one number for the network: checked once
        if not (math.isfinite(g) and g > 0):
            raise ValueError(f"gmax: values must be finite and > 0 S, got {g!r} for layer {xl[0].name}")
        return [torch.tensor(g, dtype=dtype) for _ in xl]
    if isinstance(gmax, torch.Tensor) and gmax.dim() == 0:
        gmax = gmax.reshape(1).expand(len(xl))
    elif isinstance(gmax, (int, float, np.floating, np.integer)):
        gmax = [float(gmax)] * len(xl)
    if len(gmax) != len(xl):
        raise ValueError(f"gmax: got {len(gmax)} value(s); the model has {len(xl)} crossbar layer(s) "
                         "(give one value, or one per crossbar layer)")
    out = []
    for g, l in zip(gmax, xl):
        t = g if isinstance(g, torch.Tensor) else torch.as_tensor(np.asarray(g, dtype=float))
        t = t.to(dtype)
        if t.dim() > 1 or (t.dim() == 1 and t.numel() != l.out_features):
            raise ValueError(f"gmax: layer {l.name} needs a scalar or {l.out_features} per-column values, "
                             f"got shape {tuple(t.shape)}")
        if not bool(torch.all(torch.isfinite(t.detach()))) or bool(torch.any(t.detach() <= 0)):
            raise ValueError(f"gmax: values must be finite and > 0 S, got {t.detach().min().item()!r} for layer {l.name}")
        out.append(t)
    return out


# ----------------------------------------------------------------------------- activations
_PHI = None


@functools.lru_cache(maxsize=None)
def _sigmoid_poly(n: int) -> tuple:
    """Coefficients (increasing powers of s) of d^n sigmoid/dx^n as a polynomial in s (cached)."""
    p = np.array([0.0, 1.0])  # s
    for _ in range(n):
        dp = np.polynomial.polynomial.polyder(p)
        p = np.polynomial.polynomial.polymul(dp, [0.0, 1.0, -1.0])
    return tuple(float(c) for c in p)


def _polyval(coef: np.ndarray, s: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(s)
    for c in coef[::-1]:
        out = out * s + float(c)
    return out


def _derivs(kind: str, beta: float, mu: torch.Tensor, nmax: int) -> list[torch.Tensor]:
    """[f(mu), f'(mu), ..., f^(nmax)(mu)] for softplus / sigmoid / tanh."""
    if kind == "softplus":
        s = torch.sigmoid(beta * mu)
        out = [F.softplus(mu, beta=beta, threshold=20.0)]
        for n in range(1, nmax + 1):
            out.append(beta ** (n - 1) * _polyval(_sigmoid_poly(n - 1), s))
        return out
    if kind == "sigmoid":
        s = torch.sigmoid(mu)
        return [_polyval(_sigmoid_poly(n), s) for n in range(nmax + 1)]
    if kind == "tanh":
        s = torch.sigmoid(2 * mu)
        out = [torch.tanh(mu)]
        for n in range(1, nmax + 1):
            out.append(2.0 * 2.0 ** n * _polyval(_sigmoid_poly(n), s))
        return out
    raise ValueError(f"activation {kind!r}: no Taylor expansion")


def _derivs2(kind: str, beta: float, mu: torch.Tensor) -> list[torch.Tensor]:
    """``_derivs(kind, beta, mu, 2)`` for softplus, the same values with fewer operations: ``f' = s``,
    ``f'' = beta (1 - s) s`` (``s = sigmoid(beta mu)``; the polynomials' Horner steps with their zero terms dropped)."""
    s = torch.sigmoid(beta * mu if beta != 1.0 else mu)
    d2 = (1.0 - s) * s
    return [F.softplus(mu, beta=beta, threshold=20.0), s, d2 if beta == 1.0 else beta * d2]


def _fn(kind: str, beta: float):
    return {"softplus": lambda z: F.softplus(z, beta=beta, threshold=20.0), "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
            "silu": F.silu}[kind]


def _dfn(kind: str, beta: float):
    if kind == "gelu":
        return lambda z: 0.5 * torch.erfc(-z / math.sqrt(2.0)) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if kind == "silu":
        return lambda z: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))
    if kind == "gelu_tanh":   # autograd of the torch function itself
        def d(z, f=_fn(kind, beta)):
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                return torch.autograd.grad(f(zz).sum(), zz)[0]
        return d
    return {"softplus": lambda z: torch.sigmoid(beta * z), "sigmoid": lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)),
            "tanh": lambda z: 1 - torch.tanh(z) ** 2}[kind]


#: activations without a Taylor series here: always Gauss-Hermite quadrature
GH_ONLY = ("gelu", "gelu_tanh", "silu")


def activation_moments(kind: str, mu: torch.Tensor, var: torch.Tensor, *, beta: float = 1.0,
                       method: str = "taylor", order: int = 2, gh_points: int = 24):
    """Mean, variance and average slope of ``f(X)`` for ``X ~ N(mu, var)`` elementwise.

    Parameters
    ----------
    kind : "relu", "softplus", "sigmoid", "tanh", "gelu", "gelu_tanh" (GELU's tanh form) or "silu".
    mu, var : tensors of the same shape (var >= 0).
    method : "taylor" (series in var truncated at ``order``; order 2 is the paper's Eqs. 8-10)
        or "gh" (Gauss-Hermite quadrature with ``gh_points`` nodes). ReLU ignores it (exact);
        GELU and SiLU always use Gauss-Hermite quadrature.
    order : even Taylor order >= 2.

    Returns
    -------
    (mean, var, slope): slope is the factor applied to cross-covariances: ``E[f'(X)]``
    (Taylor: its expansion to order ``order - 2``, i.e. ``f'(mu)`` at order 2).
    """
    var = var.clamp_min(0)
    if kind == "relu":
        sd = torch.sqrt(var)
        tiny = sd <= 1e-300
        sds = torch.where(tiny, torch.ones_like(sd), sd)
        a = mu / sds
        cdf = 0.5 * torch.erfc(-a / math.sqrt(2))
        pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
        m = mu * cdf + sd * pdf
        m2 = (mu * mu + var) * cdf + mu * sd * pdf
        v = (m2 - m * m).clamp_min(0)
        m = torch.where(tiny, mu.clamp_min(0), m)
        v = torch.where(tiny, torch.zeros_like(v), v)
        slope = torch.where(tiny, (mu > 0).to(mu.dtype), cdf)
        return m, v, slope
    if method == "gh" or kind in GH_ONLY:
        t, w = np.polynomial.hermite.hermgauss(gh_points)
        t = torch.as_tensor(t, dtype=mu.dtype) * math.sqrt(2.0)
        w = torch.as_tensor(w / math.sqrt(math.pi), dtype=mu.dtype)
        z = mu.unsqueeze(-1) + torch.sqrt(var).unsqueeze(-1) * t
        f, df = _fn(kind, beta)(z), _dfn(kind, beta)(z)
        m = (f * w).sum(-1)
        v = ((f * f * w).sum(-1) - m * m).clamp_min(0)
        return m, v, (df * w).sum(-1)
    if method != "taylor":
        raise ValueError(f"act_method: {method!r} is not allowed; use 'taylor' or 'gh'")
    if order < 2 or order % 2:
        raise ValueError(f"taylor_order: {order} is not allowed; use an even integer >= 2")
    K = order // 2
    if K == 1:   # the paper's Eqs. 8-10 in closed form: f + f'' var/2, f'^2 var, f' (the series below at
        d = _derivs2(kind, beta, mu) if kind == "softplus" else _derivs(kind, beta, mu, 2)   # order 2, without
        return d[0] + (0.5 * var) * d[2], (d[1] * d[1]) * var, d[1]                          # its cancelling f f'' terms)
    d = _derivs(kind, beta, mu, 2 * K + 1)
    # E[h(X)] = sum_k h^(2k)(mu) var^k / (2^k k!)
    a = [d[2 * k] / (2 ** k * math.factorial(k)) for k in range(K + 1)]
    # derivatives of f^2 by Leibniz
    b = []
    for k in range(K + 1):
        n = 2 * k
        g = sum(math.comb(n, j) * d[j] * d[n - j] for j in range(n + 1))
        b.append(g / (2 ** k * math.factorial(k)))
    m = sum(a[k] * var ** k for k in range(K + 1))
    v = torch.zeros_like(mu)
    for k in range(1, K + 1):
        v = v + (b[k] - sum(a[j] * a[k - j] for j in range(k + 1))) * var ** k
    slope = sum(d[2 * k + 1] / (2 ** k * math.factorial(k)) * var ** k for k in range(K))
    return m, v.clamp_min(0), slope


# ----------------------------------------------------------------------------- state
@dataclass
class Moments:
    """Moments of a batch of feature maps: ``mean`` and ``var`` are (B, *shape).

    ``cov`` (B, D, D) in exact mode; ``factors`` (B, K, *shape) in lowrank mode (``None`` when
    no factor exists yet); ``var`` is always the full per-unit variance. ``nonzero`` (B, *shape) is
    the probability that a unit is not exactly 0 (after a ReLU: ``P(X > 0)``; None means 1); a DAC
    rounds an exact 0 to 0, so it scales the DAC's rounding noise.

    ``local`` (B, r, C, H, W), lowrank mode only: more factors, each confined to one channel - factor
    ``(c, j)`` is ``local[:, j, c]`` in channel ``c`` and 0 elsewhere (a convolution's new shared-noise
    factors, until the next convolution mixes the channels). It stands for ``C r`` dense factors appended
    after ``factors`` (index ``c r + j``) at ``1/C`` of their size; only :func:`run_layers` with
    ``keep_local`` crossbar steps creates it, and :func:`dense` turns it into plain factors.

    ``resid`` (B, *shape), lowrank mode only, optional: the variance the factors (and ``local``) do not carry,
    ``var - sum F^2`` clamped at 0, as the step that made the state computed it (a convolution: the mapped
    residual plus its own noise, without the cancellation of recomputing it from ``var``). The steps of
    :func:`run_layers` pass it on; None (any other state) means it is computed from ``var`` and the factors.
    A state whose ``var`` or factors change must not keep it (build a new ``Moments``).
    """

    mean: torch.Tensor
    var: torch.Tensor
    mode: str
    cov: torch.Tensor | None = None
    factors: torch.Tensor | None = None
    nonzero: torch.Tensor | None = None
    local: torch.Tensor | None = None
    resid: torch.Tensor | None = None

    @property
    def shape(self):
        return tuple(self.mean.shape[1:])

    def second_moment(self) -> torch.Tensor:
        return self.mean * self.mean + self.var


def _local_dense(loc: torch.Tensor) -> torch.Tensor:
    """Channel-local factors (B, r, C, *sp) -> the dense factors (B, C r, C, *sp) they stand for (index c r + j)."""
    b, r, c = loc.shape[:3]
    sp = loc.shape[3:]
    out = loc.new_zeros(b, c, r, c, *sp)
    torch.diagonal(out, dim1=1, dim2=3).copy_(loc.movedim(2, -1))          # (B, r, *sp, C)
    return out.reshape(b, c * r, c, *sp)


def dense(st: Moments) -> Moments:
    """The state with its channel-local factors (``Moments.local``) turned into plain factors."""
    if st.local is None:
        return st
    loc = _local_dense(st.local)
    fac = loc if st.factors is None else torch.cat([st.factors, loc], 1)
    return dataclasses.replace(st, factors=fac, local=None)


def _sumsq(f: torch.Tensor | None):
    """Sum over the factors (dim 1) of their squares: their part of every unit's variance (0 without)."""
    return 0.0 if f is None else (f * f).sum(1)


def _residual(st: Moments) -> torch.Tensor:
    """The variance not carried by the factors: ``st.resid``, or ``var - sum F^2`` clamped at 0."""
    if st.resid is not None:
        return st.resid
    return (st.var - _sumsq(st.factors) - _sumsq(st.local)).clamp_min(0)


def _apply_lin(x: torch.Tensor, fn, shape) -> torch.Tensor:
    """Apply a batched linear map ``fn`` to x of shape (B, K, *shape) -> (B, K, *out)."""
    b, k = x.shape[:2]
    y = fn(x.reshape(b * k, *shape))
    return y.reshape(b, k, *y.shape[1:])


#: exact covariances of maps up to this many units go through the map's dense matrix (two GEMMs) instead of
#: applying the map to every covariance row (B D tiny convolutions or pools)
_DENSE_MAP = 256


def _linear_step(st: Moments, fn, fn_sq, per_channel: bool = False) -> Moments:
    """Propagate through a linear (bias-free) map ``fn``; ``fn_sq`` maps with squared coefficients.
    ``per_channel``: ``fn`` maps every channel on its own (pooling, padding), so channel-local factors stay local."""
    if st.local is not None and not per_channel:
        st = dense(st)
    shape = st.shape
    mean = fn(st.mean)
    if st.mode == "exact":
        if st.cov is None:
            return Moments(mean, torch.zeros_like(mean), "exact", None)
        b, d = st.cov.shape[:2]
        dout = mean[0].numel()
        if d <= _DENSE_MAP and dout <= _DENSE_MAP:   # small maps: the map's matrix A once, then A C A^T as GEMMs
            at = fn(torch.eye(d, dtype=st.cov.dtype, device=st.cov.device).reshape(d, *shape)).reshape(d, dout)
            c1 = (st.cov.reshape(b * d, d) @ at).reshape(b, d, dout)    # (B, D_in, D_out)
            c2 = at.t() @ c1
        else:
            c1 = _apply_lin(st.cov, fn, shape).reshape(b, d, -1)        # (B, D_in, D_out)
            c2 = _apply_lin(c1.transpose(1, 2), fn, shape).reshape(b, c1.shape[2], -1)
        c2 = (c2 + c2.transpose(1, 2)).mul_(0.5)
        return Moments(mean, torch.diagonal(c2, dim1=1, dim2=2).reshape(mean.shape), "exact", c2)
    if st.mode == "diagonal" or (st.factors is None and st.local is None):
        return Moments(mean, fn_sq(st.var), st.mode, None, None)
    fac, loc = st.factors, st.local
    res = _residual(st)
    fo = None if fac is None else _apply_lin(fac, fn, shape)
    lo = None if loc is None else _apply_lin(loc, fn, shape)
    rq = fn_sq(res)
    var = rq + _sumsq(fo) + _sumsq(lo)
    return Moments(mean, var, st.mode, None, fo, local=lo, resid=rq)


def _lin_var(st: Moments, fn, fn_sq) -> torch.Tensor:
    """Variance (diagonal only) of a linear map of the state."""
    return _linear_step(st, fn, fn_sq).var


def _unfold(x: torch.Tensor, kernel: tuple, dilation: tuple, padding: tuple, stride: tuple) -> torch.Tensor:
    """``F.unfold(x, kernel, dilation, padding, stride)`` (B, C kh kw, P) of a 4-D ``x``, the same values.

    Maps of at least ``_STRIDED_UNFOLD`` output positions copy one strided view of the padded input
    (torch's im2col loops over the batch and costs several times more there); smaller ones use ``F.unfold``."""
    kh, kw = kernel
    n, c, h, w = x.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if ho * wo < _STRIDED_UNFOLD or ho <= 0 or wo <= 0:
        return F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if tuple(padding) != (0, 0) else x.contiguous()
    s0, s1, s2, s3 = xp.stride()
    v = xp.as_strided((n, c, kh, kw, ho, wo), (s0, s1, dilation[0] * s2, dilation[1] * s3, stride[0] * s2, stride[1] * s3),
                      xp.storage_offset())
    return v.reshape(n, c * kh * kw, ho * wo)


#: output positions from which :func:`_unfold` copies a strided view instead of calling ``F.unfold``
_STRIDED_UNFOLD = 48


def _patch_index(layer: CrossbarLayer, h: int, w: int, device) -> torch.Tensor:
    """(kh*kw, P) indices into a (H*W + 1) vector whose entry 0 is a zero pad (read-only: cached per geometry)."""
    kh, kw = layer.weight.shape[2:]
    return _patch_index_of(int(kh), int(kw), tuple(layer.dilation), tuple(layer.padding), tuple(layer.stride),
                           int(h), int(w), torch.device(device))


@functools.lru_cache(maxsize=128)
def _patch_index_of(kh: int, kw: int, dilation: tuple, padding: tuple, stride: tuple, h: int, w: int,
                    device: torch.device) -> torch.Tensor:
    idx = (torch.arange(h * w, dtype=torch.float64, device=device) + 1).reshape(1, 1, h, w)
    u = F.unfold(idx, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    return u[0].round().long()


def _top_eig(gram: torch.Tensor, r: int, *, iters: int = 2, oversample: int = 8) -> torch.Tensor:
    """Top ``r`` eigenvectors (B, n, r) of a batch of symmetric PSD matrices (B, n, n).

    Small matrices (``n <= max(2 (r + oversample), _TOP_EIGH_BELOW)``): ``torch.linalg.eigh``. Larger
    ones: a randomized range finder with ``iters`` steps of subspace iteration (Halko, Martinsson & Tropp
    2011, Alg. 4.4; fixed seed, so the result is deterministic) and the Rayleigh-Ritz eigenvectors of
    the projected (r + oversample)-square matrix: cost ``n^2 (r + oversample)`` per step instead
    of ``n^3``. The discarded directions' variance stays on the exactly tracked diagonal.

    Differentiable in ``gram`` (:class:`_TopSubspace`): the gradient carries the rotation of the kept
    subspace against the discarded directions only, the part that changes the kept covariance; the
    rotation within the kept subspace (basis choice, ill-conditioned for near-equal kept eigenvalues)
    changes no covariance and is left out.
    """
    return _TopSubspace.apply(gram, r, iters, oversample)


#: below this size :func:`_top_eig` always takes the exact ``eigh`` (a small ``max_factors`` otherwise sends
#: small Gram matrices to the randomized finder, whose fixed sketch is not invariant to the arbitrary signs of
#: the incoming factors: its approximation error then jumped with 1e-6 changes of ``G_max``)
_TOP_EIGH_BELOW = 128


class _TopSubspace(torch.autograd.Function):
    """:func:`_top_eig` with the gradient of the kept eigenprojector ``P = V V^T``.

    For kept ``i`` and discarded ``j``: ``dv_i = sum_j v_j (v_j^T dG v_i) / (l_i - l_j)`` (first-order
    perturbation; the terms between kept directions only rotate the basis, which no downstream covariance
    sees), so ``dL/dG = sym(sum_ij (v_j^T g_i) / (l_i - l_j) v_j v_i^T)`` with ``g_i = dL/dv_i``. Randomized
    case: the sampled (Ritz) directions beyond the kept ones enter with their Ritz values, the unsampled
    complement with eigenvalue 0 (``(I - Q Q^T) g_i / l_i``). Eigenvalues tied across the cut (no gap)
    contribute nothing (the kept subspace is then not differentiable)."""

    @staticmethod
    def forward(ctx, gram, r, iters, oversample):
        g = gram.detach()
        n = g.shape[-1]
        l = r + oversample
        if n <= max(2 * l, _TOP_EIGH_BELOW):
            lam, vec = torch.linalg.eigh(g)
            full = True
        else:
            gen = torch.Generator(device="cpu").manual_seed(0)
            om = torch.randn(n, l, generator=gen, dtype=torch.float64).to(device=g.device, dtype=g.dtype)
            q = torch.linalg.qr(g @ om)[0]
            for _ in range(iters):
                q = torch.linalg.qr(g @ q)[0]
            t = q.transpose(-1, -2) @ g @ q
            lam, u = torch.linalg.eigh(0.5 * (t + t.transpose(-1, -2)))
            vec = q @ u
            full = False
        k = vec.shape[-1] - r
        v, vd = vec[..., k:], vec[..., :k]
        ctx.save_for_backward(v, vd, lam[..., k:], lam[..., :k])
        ctx.full = full
        return v

    @staticmethod
    def backward(ctx, gv):
        v, vd, lk, ld = ctx.saved_tensors
        gap = lk.unsqueeze(-2) - ld.unsqueeze(-1)                                     # (B, n - r, r): l_i - l_j
        a = vd.transpose(-1, -2) @ gv
        coef = torch.where(gap > 0, a / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(a))
        x = vd @ coef @ v.transpose(-1, -2)
        if not ctx.full:
            rest = gv - v @ (v.transpose(-1, -2) @ gv) - vd @ a
            lks = torch.where(lk > 0, lk, torch.ones_like(lk))
            x = x + torch.where(lk > 0, torch.ones_like(lk), torch.zeros_like(lk)).unsqueeze(-2) * (rest / lks.unsqueeze(-2)) \
                @ v.transpose(-1, -2)
        return 0.5 * (x + x.transpose(-1, -2)), None, None, None


#: the spatial factors' eigen-directions (:func:`_top_eig_spatial`): directions sampled beyond the kept ones,
#: and the Gram matrices small enough for a plain ``eigh``
_SPATIAL_OVERSAMPLE = 4
_SPATIAL_EIGH_BELOW = 12


@functools.lru_cache(maxsize=64)
def _sketch(n: int, l: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The fixed Gaussian test matrix (n, l) of the randomized range finders (seed 0; read-only)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(n, l, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _top_eig_spatial(gram: torch.Tensor, r: int) -> torch.Tensor:
    """Top ``r`` eigenvectors (B, n, r) of the batch of patch Gram matrices (B, n, n) of a convolution's
    shared noise, detached: ``eigh`` up to ``_SPATIAL_EIGH_BELOW``; larger ones through the range of
    ``G^2 Omega`` (a fixed Gaussian ``Omega`` of ``r + _SPATIAL_OVERSAMPLE`` columns: one power step, one QR;
    Halko, Martinsson & Tropp 2011, Alg. 4.3 with q = 1) and the Rayleigh-Ritz eigenvectors of the projected
    matrix. Cost ``n^2 l`` plus one small ``eigh`` instead of ``eigh``'s ``n^3``; the variance a direction
    misses stays on the exactly tracked diagonal (measured on the small CNN: MSE -8e-5 relative against
    ``eigh``, bench/bench_memse.py)."""
    g = gram.detach()
    n = g.shape[-1]
    l = r + _SPATIAL_OVERSAMPLE
    if n <= max(_SPATIAL_EIGH_BELOW, l):
        return torch.linalg.eigh(g)[1][..., n - r:]
    q = torch.linalg.qr(g @ (g @ _sketch(n, l, g.dtype, g.device)))[0]                 # (B, n, l)
    t = q.transpose(-1, -2) @ g @ q
    _, u = torch.linalg.eigh(0.5 * (t + t.transpose(-1, -2)))
    return q @ u[..., l - r:]


def _compress(fac: torch.Tensor, limit: int) -> torch.Tensor:
    """The top ``limit`` principal directions of ``F F^T`` per sample (F: (B, K, *shape)); many factors
    of a large map go through a randomized range finder on F itself, the rest through the Gram matrix's
    ``eigh``, with a jitter retry when LAPACK fails on a degenerate one. Used by the graph walker; the
    sequential form compresses convolution factors through their Gram blocks
    (:func:`_add_channel_factors`)."""
    b, k = fac.shape[:2]
    flat = fac.reshape(b, k, -1)
    q = limit + _OVERSAMPLE
    if k > 2 * q and flat.shape[2] > 2 * q:
        return _compress_randomized(flat, limit, q).reshape(b, limit, *fac.shape[2:])
    gram = (flat @ flat.transpose(1, 2)).detach()
    try:
        _, vec = torch.linalg.eigh(gram)
    except RuntimeError:
        eps = 1e-12 * gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-300)
        _, vec = torch.linalg.eigh(gram + eps.reshape(b, 1, 1) * torch.eye(k, dtype=gram.dtype))
    vec = vec[:, :, -limit:]
    return (vec.transpose(1, 2) @ flat).reshape(b, vec.shape[2], *fac.shape[2:])


_OVERSAMPLE = 16     # randomized compression: extra directions sampled beyond the kept ones
_POWER_ITERS = 2     # and subspace iterations (Halko, Martinsson & Tropp 2011, algorithm 4.4)


def _compress_randomized(flat: torch.Tensor, limit: int, q: int) -> torch.Tensor:
    """The top ``limit`` principal directions of ``F F^T`` (F: (B, K, D)) within a randomized range
    of ``q`` directions of ``F^T`` (a fixed-seed Gaussian sketch and ``_POWER_ITERS`` subspace
    iterations): ``O(K D q)`` instead of the ``O(K^3)`` eigen-decomposition of the Gram matrix."""
    b, k, d = flat.shape
    g = torch.Generator(device="cpu").manual_seed(0)
    om = torch.randn(d, q, generator=g, dtype=flat.dtype)
    y = torch.linalg.qr(flat @ om).Q                                  # (B, K, q): range of F
    for _ in range(_POWER_ITERS):
        z = torch.linalg.qr(flat.transpose(1, 2) @ y).Q              # (B, D, q)
        y = torch.linalg.qr(flat @ z).Q
    small = y.transpose(1, 2) @ flat                                  # (B, q, D): F projected on the range
    _, vec = torch.linalg.eigh((small @ small.transpose(1, 2)).detach())
    return vec[:, :, -limit:].transpose(1, 2) @ small


def _add_channel_factors(old: torch.Tensor | None, s: torch.Tensor, sp: torch.Tensor, max_factors: int) -> torch.Tensor:
    """Append a convolution's shared-noise factors ``e_c s_c sp_j`` (channel ``c``, spatial factor
    ``j``; index ``c r + j``) to ``old`` (B, K0, C, Ho, Wo); compress to ``max_factors`` once the
    total passes ``2 max_factors`` (the compression costs ``K^2 D + K^3`` per sample, more than
    carrying up to twice the factors through the next layers; small maps often become a full
    covariance first, see ``full_below``).

    The new factors are channel-local, so their Gram blocks and their projection cost ``C r P``
    (not ``(C r)^2 P``): the dense (B, C r, C, Ho, Wo) block is built only when nothing is compressed.
    """
    b, r, ho, wo = sp.shape
    cout = s.shape[0]
    k0 = 0 if old is None else old.shape[1]
    if k0 + cout * r <= 2 * max_factors:
        fac = sp.new_zeros(b, k0 + cout * r, cout, ho * wo)
        if old is not None:
            fac[:, :k0] = old.reshape(b, k0, cout, ho * wo)
        new = fac[:, k0:].reshape(b, cout, r, cout, ho * wo)                       # a view
        torch.diagonal(new, dim1=1, dim2=3).copy_(                                 # (B, r, P, C): channel c of factor (c, j)
            (s.reshape(1, 1, cout, 1) * sp.reshape(b, r, 1, ho * wo)).transpose(-1, -2))
        return fac.reshape(b, k0 + cout * r, cout, ho, wo)
    p = ho * wo
    spf = sp.reshape(b, r, p)
    ss = spf @ spf.transpose(1, 2)                                                   # (B, r, r)
    if old is None:
        return _top_channel_factors(s, spf, ss, max_factors).reshape(b, max_factors, cout, ho, wo)
    s2d = torch.diag(s * s)
    gnn = (s2d.reshape(1, cout, 1, cout, 1) * ss.reshape(b, 1, r, 1, r)).reshape(b, cout * r, cout * r)
    fo = old.reshape(b, k0, cout, p)
    goo = fo.reshape(b, k0, -1) @ fo.reshape(b, k0, -1).transpose(1, 2)
    gon = (torch.einsum("bkcp,bjp->bkcj", fo, spf) * s.reshape(1, 1, cout, 1)).reshape(b, k0, cout * r)
    gram = torch.cat([torch.cat([goo, gon], 2), torch.cat([gon.transpose(1, 2), gnn], 2)], 1)
    vec = _top_eig(gram, max_factors)                                                # (B, K, m)
    vn = vec[:, k0:].reshape(b, cout, r, max_factors) * s.reshape(1, cout, 1, 1)
    out = torch.einsum("bcjm,bjp->bmcp", vn, spf)
    out = out + (vec[:, :k0].transpose(1, 2) @ fo.reshape(b, k0, -1)).reshape(b, max_factors, cout, p)
    return out.reshape(b, max_factors, cout, ho, wo)


def _top_channel_factors(s: torch.Tensor, spf: torch.Tensor, ss: torch.Tensor, max_factors: int) -> torch.Tensor:
    """The top ``max_factors`` principal directions (B, m, C, P) of a convolution's new factors alone,
    ``e_c s_c sp_j`` (channel ``c``, spatial factor ``j``; ``spf`` (B, r, P), ``ss = spf spf^T``).

    Their Gram matrix is ``diag(s^2) (x) ss``: its eigenpairs are ``s_c^2 mu_j`` with the channel-pure
    eigenvectors ``e_c (x) w_j`` (``ss w_j = mu_j w_j``, an r x r ``eigh``), so each kept factor is
    ``s_c w_j^T spf`` on channel ``c`` alone. With one noise level for every channel (a scalar ``s2``) the
    ``C`` directions of each ``j`` tie exactly; a ``(C r)``-square ``eigh`` then resolves the tie by rounding,
    so the kept channel (and the value) jumped between channels under a 1e-6 change of ``G_max`` and the
    ``G_max`` gradient disagreed with finite differences at small ``max_factors``. Here ties go to the lower
    channel index (a stable sort), and the gradient flows through ``s`` and ``spf`` (``w`` detached, as the
    other eigen-directions)."""
    b, r, p = spf.shape
    cout = s.shape[0]
    _, w = torch.linalg.eigh(ss.detach())                                            # (B, r, r), ascending
    w = w.flip(-1)
    rot = w.transpose(1, 2) @ spf                                                    # (B, r, P): rows w_j^T spf
    mu = (rot.detach() ** 2).sum(-1)                                                 # (B, r)
    score = (mu.unsqueeze(-1) * (s.detach() ** 2).reshape(1, 1, cout)).reshape(b, r * cout)   # index j C + c
    idx = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :max_factors]
    jj, cc = idx // cout, idx % cout                                                 # (B, m)
    vals = torch.gather(rot, 1, jj.unsqueeze(-1).expand(b, max_factors, p)) * s[cc].unsqueeze(-1)
    out = vals.new_zeros(b, max_factors, cout, p)
    return out.scatter(2, cc.reshape(b, max_factors, 1, 1).expand(b, max_factors, 1, p), vals.unsqueeze(2))


def _conv_out_hw(layer: CrossbarLayer, h: int, w: int) -> tuple[int, int]:
    kh, kw = layer.weight.shape[2:]
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                 zip((h, w), layer.padding, layer.dilation, (kh, kw), layer.stride))


def _conv_factors(st: Moments, conv, wq: torch.Tensor, layer: CrossbarLayer,
                  patches: torch.Tensor | None = None) -> Moments:
    """:func:`_linear_step` of a lowrank state with channel-local factors through the convolution ``conv``
    (weights ``wq``): a local factor of channel ``c`` meets only ``wq[:, c]`` (one single-channel convolution
    per input channel: ``1/C`` of the dense factors' multiply-adds; oneDNN's grouped convolution is slower
    at these sizes); the result is the dense factors ``[conv(factors), conv(local as c r + j)]``. ``patches``: the
    unfolded input mean (B, C k^2, P) when the caller has it (the mean is then one matrix product)."""
    fac, loc = st.factors, st.local
    b, rl, c = loc.shape[:3]
    cout = wq.shape[0]
    res = _residual(st)
    if patches is not None:
        ho, wo = _conv_out_hw(layer, *st.mean.shape[2:])
        mean = (wq.reshape(cout, -1) @ patches).reshape(b, cout, ho, wo)
    else:
        mean = conv(st.mean)
    ho, wo = mean.shape[2:]
    k0 = 0 if fac is None else fac.shape[1]
    fo = mean.new_empty(b, k0 + c * rl, cout, ho, wo)
    if fac is not None:
        fo[:, :k0] = _apply_lin(fac, conv, st.shape)
    new = fo[:, k0:].reshape(b, c, rl, cout, ho, wo)                           # a view: factor (c, j) at k0 + c rl + j
    wt = wq.transpose(0, 1).unsqueeze(2).contiguous()                          # (C, Cout, 1, kh, kw): one per input channel
    lt = loc.permute(2, 0, 1, 3, 4).reshape(c, b * rl, 1, *loc.shape[3:])      # (C, B r, 1, H, W): one copy
    for ci in range(c):     # dense operands (a strided view costs oneDNN a reorder per call)
        new[:, ci] = conv(lt[ci], wt[ci]).reshape(b, rl, cout, ho, wo)
    rq = conv(res, wq * wq)
    var = rq + (fo * fo).sum(1)
    return Moments(mean, var, st.mode, None, fo, resid=rq)


def _crossbar_step(st: Moments, layer: CrossbarLayer, wq: torch.Tensor, s2: torch.Tensor,
                   rank: int, max_factors: int, keep_local: bool = False) -> Moments:
    """Crossbar layer: quantized weights ``wq`` plus per-weight noise of variance ``s2``
    (scalar, (out,), or one value per weight with ``wq``'s shape).

    The noise is shared by every read of the layer (a programmed chip), so a convolution's noise
    correlates its output positions. With a per-weight ``s2`` every variance stays exact; the
    cross-position covariance of a convolution then uses each output channel's input-power-weighted
    mean of ``s2`` (exact when ``s2`` is uniform over a channel).

    ``keep_local`` (lowrank): a convolution's new factors stay channel-local (``Moments.local``, see
    :func:`dense`) when nothing is compressed; otherwise they join the dense factors.
    """
    per_weight = s2.dim() > 0 and s2.shape == wq.shape
    if layer.kind == "linear":
        st = dense(st)
        out = _linear_step(st, lambda x: x @ wq.t(), lambda v: v @ (wq * wq).t())
        if per_weight:
            noise = st.second_moment() @ s2.t()                                        # (B, out)
        else:
            noise = (st.second_moment().sum(1, keepdim=True) * s2).expand_as(out.mean)   # (B, out)
        mean = out.mean + layer.bias
        var = out.var + noise
        cov = out.cov
        if cov is not None or st.mode == "exact":   # out.cov is _linear_step's fresh tensor: the noise added in place
            cov = cov if cov is not None else torch.zeros(var.shape[0], var.shape[1], var.shape[1], dtype=var.dtype)
            torch.diagonal(cov, dim1=1, dim2=2).add_(noise)
        return Moments(mean, var, st.mode, cov, out.factors)
    # convolution
    conv = lambda x, w=wq: F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation)
    b = st.mean.shape[0]
    cin, h, w = st.shape
    cout, _, kh, kw = wq.shape
    u = None
    if st.mode != "exact" and not (st.mode == "diagonal" or rank == 0):   # the patches of the input mean (factors)
        u = _unfold(st.mean, (kh, kw), layer.dilation, layer.padding, layer.stride)
    det = st.factors is None and st.local is None and st.cov is None and not bool(torch.any(st.var != 0))
    if det and u is not None:   # a deterministic input (the network's): its patches give the mean and E[x^2] sums
        ho, wo = _conv_out_hw(layer, h, w)
        om = (wq.reshape(cout, -1) @ u).reshape(b, cout, ho, wo)
        out = Moments(om, torch.zeros_like(om), st.mode, None, None, resid=torch.zeros_like(om))
    elif st.local is not None and st.mode == "lowrank":
        out = _conv_factors(st, conv, wq, layer, patches=u)
        ho, wo = out.mean.shape[2:]
    else:
        out = _linear_step(st, conv, lambda v: conv(v, wq * wq))
        ho, wo = out.mean.shape[2:]
    m2 = st.second_moment()
    if per_weight:
        exact_noise = conv(m2, s2)                                         # (B, Cout, Ho, Wo)
        pw = m2.mean((0, 2, 3)).reshape(1, cin, 1, 1).expand(1, cin, kh, kw)
        s2 = (s2 * pw).sum((1, 2, 3)) / pw.sum().clamp_min(1e-300)          # (Cout,) for the cross terms
    s2c = s2.reshape(-1, 1, 1) if s2.dim() else s2
    if det and u is not None:
        diag_noise = (u * u).sum(1).reshape(b, 1, ho, wo)
    else:
        diag_noise = conv(m2, torch.ones(1, cin, kh, kw, dtype=m2.dtype))  # (B, 1, Ho, Wo)
    mean = out.mean + layer.bias.reshape(-1, 1, 1)
    noise = exact_noise if per_weight else diag_noise * s2c
    var = out.var + noise
    if st.mode == "exact":
        p = ho * wo
        idx = _patch_index(layer, h, w, m2.device)                     # (k2, P)
        mu = st.mean.reshape(b, cin, h * w)
        sec = mu.transpose(1, 2) @ mu                                   # (B, HW, HW), summed over the input channels
        if st.cov is not None:
            cv = st.cov.reshape(b, cin, h * w, cin, h * w)
            sec = sec + torch.diagonal(cv, dim1=1, dim2=3).sum(-1)
        sec = F.pad(sec, (1, 0, 1, 0))
        nsp = torch.zeros(b, p, p, dtype=m2.dtype)
        for k in range(idx.shape[0]):
            ik = idx[k]
            nsp = nsp + sec[:, ik][:, :, ik]
        d_out = cout * p
        cov = out.cov if out.cov is not None else torch.zeros(b, d_out, d_out, dtype=m2.dtype)   # a fresh tensor
        s2v = s2 * torch.ones(cout, dtype=m2.dtype) if s2.dim() == 0 else s2
        # the shared noise correlates the positions of one output channel: s2_c nsp on the channel-diagonal blocks
        torch.diagonal(cov.view(b, cout, p, cout, p), dim1=1, dim2=3).add_(nsp.unsqueeze(-1) * s2v)
        if per_weight:  # the diagonal exact, the cross terms with the channel mean of s2
            fix = (exact_noise - diag_noise * s2c).reshape(b, -1)
            torch.diagonal(cov, dim1=1, dim2=2).add_(fix)
        return Moments(mean, torch.diagonal(cov, dim1=1, dim2=2).reshape(mean.shape), "exact", cov)
    if st.mode == "diagonal" or rank == 0:
        return Moments(mean, var, st.mode, None, out.factors)
    # lowrank: shared-noise factors from the patch matrix u (B, C k^2, P) of the input mean
    r = min(rank, u.shape[1], u.shape[2])
    if u.shape[2] <= u.shape[1]:   # eigen-decompose the smaller Gram matrix: here (P, P)
        gram = u.transpose(1, 2) @ u
        vec = _top_eig_spatial(gram, r)                                # (B, P, r)
        # project the (differentiable) Gram matrix on the fixed eigenvectors
        lam_r = ((gram @ vec) * vec).sum(1).clamp_min(0)                # (B, r)
        sp = (vec * torch.sqrt(lam_r).unsqueeze(1)).transpose(1, 2).reshape(b, r, ho, wo)
    else:
        gram = u @ u.transpose(1, 2)
        vec = _top_eig_spatial(gram, r)                                # (B, Ck2, r)
        sp = (vec.transpose(1, 2) @ u).reshape(b, r, ho, wo)            # (B, r, Ho, Wo)
    s = torch.sqrt(s2 * torch.ones(cout, dtype=m2.dtype)) if s2.dim() == 0 else torch.sqrt(s2)
    k0 = 0 if out.factors is None else out.factors.shape[1]
    if keep_local and k0 + cout * r <= 2 * max_factors:
        loc = s.reshape(1, 1, cout, 1, 1) * sp.reshape(b, r, 1, ho, wo)
        res = None
        if out.resid is not None:      # the new factors' variance s_c^2 sum_j sp_j^2 (one spatial map per input)
            res = (out.resid + noise - (s * s).reshape(1, cout, 1, 1) * (sp * sp).sum(1, keepdim=True)).clamp_min(0)
        return Moments(mean, var, st.mode, None, out.factors, local=loc, resid=res)
    return Moments(mean, var, st.mode, None, _add_channel_factors(out.factors, s, sp, max_factors))


def _elementwise_step(st: Moments, layer: ElementwiseLayer, method: str, order: int) -> Moments:
    if layer.kind == "affine":
        shape = (-1,) + (1,) * (st.mean.dim() - 2)
        a, sh = layer.scale.reshape(shape), layer.shift.reshape(shape)
        m, v, slope = st.mean * a + sh, st.var * a * a, a.expand_as(st.mean)
    else:
        m, v, slope = activation_moments(layer.kind, st.mean, st.var, beta=layer.beta, method=method, order=order)
    nz = slope if layer.kind == "relu" else None    # ReLU: P(X > 0) is its average slope
    if st.mode == "exact":
        if st.cov is None:
            return Moments(m, v, "exact", None, nonzero=nz)
        sl = slope.reshape(slope.shape[0], -1)
        cov = st.cov * sl.unsqueeze(-1) * sl.unsqueeze(-2)
        torch.diagonal(cov, dim1=1, dim2=2).copy_(v.reshape(v.shape[0], -1))    # the diagonal is the variance
        return Moments(m, v, "exact", cov, nonzero=nz)
    fac = None if st.factors is None else st.factors * slope.unsqueeze(1)
    loc = None if st.local is None else st.local * slope.unsqueeze(1)
    res = None
    if st.resid is not None and (fac is not None or loc is not None):
        s2 = slope * slope
        if layer.kind == "affine" or (method == "taylor" and order == 2 and layer.kind in ("softplus", "sigmoid", "tanh")):
            res = s2 * st.resid            # v = f'^2 var with slope f': the residual scales as the variance
        else:
            res = (v - s2 * (st.var - st.resid)).clamp_min(0)
    return Moments(m, v, st.mode, None, fac, nonzero=nz, local=loc, resid=res)


def _flatten_step(st: Moments) -> Moments:
    st = dense(st)
    b = st.mean.shape[0]
    fac = None if st.factors is None else st.factors.reshape(b, st.factors.shape[1], -1)
    nz = None if st.nonzero is None else st.nonzero.reshape(b, -1)
    res = None if st.resid is None else st.resid.reshape(b, -1)
    return Moments(st.mean.reshape(b, -1), st.var.reshape(b, -1), st.mode, st.cov, fac, nz, resid=res)


def _to_full(st: Moments) -> Moments:
    """Low-rank state -> full covariance ``F^T F + diag(residual)`` (same second moments).

    Channel-local factors (``Moments.local``) add their channel-diagonal blocks ``sum_j l_cj l_cj^T`` (the dense
    factors they stand for are zero outside their channel: no product with zeros, no written-out factors)."""
    b = st.mean.shape[0]
    var = st.var.reshape(b, -1)
    if st.factors is None and st.local is None:
        return Moments(st.mean, st.var, "exact", torch.diag_embed(var))
    d = var.shape[1]
    if st.factors is not None:
        f = st.factors.reshape(b, st.factors.shape[1], -1)
        low = f.transpose(1, 2) @ f
    else:
        low = var.new_zeros(b, d, d)
    if st.local is not None:
        loc = st.local
        c = loc.shape[2]
        p = loc[0, 0, 0].numel()
        lf = loc.reshape(b, loc.shape[1], c, p).transpose(1, 2)                       # (B, C, r, P)
        blocks = lf.transpose(2, 3) @ lf                                              # (B, C, P, P)
        torch.diagonal(low.view(b, c, p, c, p), dim1=1, dim2=3).add_(blocks.permute(0, 2, 3, 1))
    res = (var - torch.diagonal(low, dim1=1, dim2=2)).clamp_min(0)
    torch.diagonal(low, dim1=1, dim2=2).add_(res)                                     # low is a fresh tensor
    return Moments(st.mean, st.var, "exact", low)


def propagate(layers: list, x: torch.Tensor, *, sigma: float, gmax, levels: int = 128, cov: str = "lowrank",
              rank: int = DEFAULT_RANK, max_factors: int = 64, full_below: int = DEFAULT_FULL_BELOW,
              full_linear: int = 4096, act_method: str = "taylor", taylor_order: int = 2,
              on_crossbar: Callable | None = None, return_all: bool = False):
    """Propagate the moments of deterministic inputs ``x`` through the parsed ``layers``.

    Parameters
    ----------
    layers : output of :func:`parse_model`.
    x : (B, *input_shape) tensor of inputs (deterministic).
    sigma : programming-noise standard deviation per device, S (>= 0).
    gmax : G_max in S: float, one per crossbar layer, or per column (see :func:`resolve_gmax`);
        may be a tensor that requires grad (the prediction is differentiable in G_max).
    levels : N, number of conductance steps (N+1 levels).
    cov : "exact", "lowrank" or "diagonal".
    rank : lowrank mode, shared-noise eigen-directions kept per conv layer.
    max_factors : lowrank mode, the number of factors kept when a layer's new factors take the
        total beyond twice this (the top principal directions; the rest stays on the diagonal).
    full_below : lowrank mode, switch to the full covariance once a feature map has at most this
        many units (the full matrix is then cheaper than the factors, and exact).
    full_linear : lowrank mode, a ``Linear`` layer with at most this many inputs gets its input
        covariance in full (a dense layer correlates all its outputs; the full matrix costs
        D^2 per sample, the size of the layer's own weights).
    act_method, taylor_order : see :func:`activation_moments`.
    on_crossbar : optional callback ``f(index, layer, state_in, wq, c)`` called before each
        crossbar layer (used by the power model).
    return_all : also return the list of states after every layer.

    Returns
    -------
    Moments of the output (and the list of all states if ``return_all``).
    """
    if cov not in COV_MODES:
        raise ValueError(f"cov: {cov!r} is not allowed; choose one of {', '.join(COV_MODES)}")
    if not (isinstance(levels, (int, np.integer)) and levels >= 1):
        raise ValueError(f"levels: {levels!r} is not allowed; must be an integer >= 1")
    if not (math.isfinite(float(sigma)) and float(sigma) >= 0):
        raise ValueError(f"sigma: {sigma!r} is not allowed; must be finite and >= 0 S")
    if not (isinstance(rank, int) and rank >= 0):
        raise ValueError(f"rank: {rank!r} is not allowed; must be an integer >= 0")
    dtype = layers[next(i for i, l in enumerate(layers) if isinstance(l, CrossbarLayer))].weight.dtype
    x = torch.as_tensor(x).to(dtype)
    gm = resolve_gmax(gmax, layers, dtype)

    def crossbar(ix, layer, st):
        wq = quantize_weight(layer.weight, int(levels))
        c = gm[ix] / layer.wmax
        if on_crossbar is not None:
            st = dense(st)
            on_crossbar(ix, layer, st, wq, c)
        s2 = 2.0 * float(sigma) ** 2 / (c * c)
        return _crossbar_step(st, layer, wq, s2, rank, max_factors, keep_local=True)

    return run_layers(layers, x, crossbar, cov=cov, full_below=full_below, full_linear=full_linear,
                      act_method=act_method, taylor_order=taylor_order, return_all=return_all)


def run_layers(layers: list, x: torch.Tensor, crossbar: Callable, *, cov: str = "lowrank",
               full_below: int = DEFAULT_FULL_BELOW, full_linear: int = 4096, act_method: str = "taylor",
               taylor_order: int = 2, return_all: bool = False):
    """The moment propagation loop shared by MemSE's :func:`propagate` and
    :func:`memcim.analysis.predict.predict`.

    Parameters
    ----------
    layers : output of :func:`parse_model`.
    x : (B, *input_shape) deterministic inputs.
    crossbar : ``f(index, layer, state) -> state``, the step of the ``index``-th crossbar layer.
    cov, full_below, full_linear, act_method, taylor_order, return_all : see :func:`propagate`.

    Returns
    -------
    Moments of the output (and the list of all states if ``return_all``).
    """
    st = Moments(x, torch.zeros_like(x), cov, None, None)
    states = []
    ix = 0
    for layer in layers:
        if isinstance(layer, CrossbarLayer):
            if (st.mode == "lowrank" and layer.kind == "linear" and layer.weight.shape[1] <= full_linear
                    and (st.factors is not None or st.local is not None or bool(torch.any(st.var.detach() > 0)))):
                st = dataclasses.replace(_to_full(st), nonzero=st.nonzero)   # a Linear layer mixes every unit
            try:
                st = crossbar(ix, layer, st)
            except RuntimeError as e:
                raise ValueError(f"x: shape {tuple(x.shape)} does not fit layer {layer.name} ({e})") from None
            ix += 1
        elif isinstance(layer, PoolLayer):
            st = _linear_step(st, layer.apply, lambda v, l=layer: l.apply(v, square=True), per_channel=True)
        elif isinstance(layer, PadLayer):
            st = _linear_step(st, layer.apply, layer.apply, per_channel=True)
        elif isinstance(layer, FlattenLayer):
            st = _flatten_step(st)
        else:
            st = _elementwise_step(st, layer, act_method, taylor_order)
        if st.mode == "lowrank" and full_below > 0 and st.mean[0].numel() <= full_below:
            st = dataclasses.replace(_to_full(st), nonzero=st.nonzero)
        if return_all:
            states.append(st)
    st = dense(st)
    return (st, states) if return_all else st


def reference_output(layers: list, x: torch.Tensor) -> torch.Tensor:
    """Noise-free, full-precision output of the parsed layers (float weights, no quantization)."""
    h = torch.as_tensor(x).to(crossbar_layers(layers)[0].weight.dtype)
    for layer in layers:
        if isinstance(layer, CrossbarLayer):
            h = layer.apply(h) + (layer.bias if layer.kind == "linear" else layer.bias.reshape(-1, 1, 1))
        elif isinstance(layer, (PoolLayer, PadLayer)):
            h = layer.apply(h)
        elif isinstance(layer, FlattenLayer):
            h = h.reshape(h.shape[0], -1)
        elif layer.kind == "affine":
            shape = (-1,) + (1,) * (h.dim() - 2)
            h = h * layer.scale.reshape(shape) + layer.shift.reshape(shape)
        else:
            h = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                 "softplus": lambda z: F.softplus(z, beta=layer.beta, threshold=20.0)}[layer.kind](h)
    return h


@dataclass
class Prediction:
    """Closed-form output statistics (of :func:`memcim.analysis.predict.predict` and :func:`predict_mse`).

    Attributes
    ----------
    mean, var : (B, out) mean and variance of every output over chips and reads.
    reference : (B, out) the noise-free, full-precision output.
    per_output : (B, out) MSE of every output against the reference (variance + bias^2).
    mse_mean : mean of ``per_output``. mse_max : mean over inputs of the max over outputs (the
        paper's "mean of the maximum").
    power : the expected read power when asked for (see :mod:`memcim.analysis.power`).
    config : the settings of the prediction.
    layers : per crossbar layer, a summary of its plan and noise (``predict``).
    plans : per crossbar layer, the plan (:class:`~memcim.mapping.crossbar.MappedMatrix`) the prediction read
        (``predict``; give them back as ``plans=`` to skip the mapping when predicting again on the same weights
        and hardware).
    """

    mean: torch.Tensor
    var: torch.Tensor
    reference: torch.Tensor
    per_output: torch.Tensor
    mse_mean: float
    mse_max: float
    power: dict | None = None
    config: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    plans: list = field(default_factory=list)

    def to_dict(self, per_output: bool = True) -> dict:
        d = {"mse_mean": self.mse_mean, "mse_max": self.mse_max,
             "per_output": self.per_output.mean(0).detach().cpu().numpy() if per_output else None}
        if self.layers:
            d["layers"] = self.layers
        if self.power is not None:
            d["power"] = self.power
        d["config"] = self.config
        return d


#: the name MemSE's predict_mse used for its result
MSEPrediction = Prediction


@functools.lru_cache(maxsize=256)
def _memse_config(gmax: float, sigma: float, levels: int):
    """:func:`memcim.analysis.memse_sim.memse_hardware` (a frozen config: built once per setting)."""
    from memcim.analysis.memse_sim import memse_hardware

    return memse_hardware(gmax, sigma, levels)


def _as_layers(model, dtype):
    return model if isinstance(model, list) else parse_model(model, dtype)


def _check_x(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        x = x.to(torch.float64)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected a non-empty batch (B, ...) of inputs, got shape {tuple(x.shape)}")
    if not bool(torch.all(torch.isfinite(x))):
        raise ValueError("x: inputs contain NaN or inf")
    return x


def predict_mse(model, x, *, sigma: float, gmax, levels: int = 128, cov: str = "lowrank", rank: int = DEFAULT_RANK,
                max_factors: int = 64, full_below: int = DEFAULT_FULL_BELOW, act_method: str = "taylor", taylor_order: int = 2, power: bool = True,
                r: float = 1.0, dtype: torch.dtype = torch.float64, batch_chunk: int | None = None,
                plans: list | None = None) -> MSEPrediction:
    """Predict the output MSE (and power) of ``model`` on a crossbar, from moments.

    Parameters
    ----------
    model : nn.Sequential of supported layers, or a list from :func:`parse_model`.
    x : (B, *input_shape) inputs.
    sigma, gmax, levels, cov, rank, max_factors, act_method, taylor_order : see :func:`propagate`.
    power : also compute the expected power (Eqs. 16-21), ``r`` is the TIA feedback resistance (Ω).
    dtype : computation dtype.
    batch_chunk : process the batch in chunks of this size (bounds memory in exact mode).
    plans : the plans of an earlier prediction of the same model and settings (``MSEPrediction.plans``): the
        layers are not mapped again (see :func:`memcim.analysis.predict.predict`).

    Returns
    -------
    MSEPrediction.
    """
    layers = _as_layers(model, dtype)
    x = _check_x(x).to(dtype)
    if batch_chunk is None:
        batch_chunk = x.shape[0] if cov != "exact" else max(1, min(x.shape[0], 8))
    from memcim.analysis import power as pw

    acc = pw.PowerAccumulator(float(sigma), r) if power else None
    gm = resolve_gmax(gmax, layers, dtype)
    if not (isinstance(levels, (int, np.integer)) and levels >= 1):
        raise ValueError(f"levels: {levels!r} is not allowed; must be an integer >= 1")
    if not (math.isfinite(float(sigma)) and float(sigma) >= 0):
        raise ValueError(f"sigma: {sigma!r} is not allowed; must be finite and >= 0 S")
    cfg = {"sigma": float(sigma), "levels": int(levels), "cov": cov, "rank": rank, "act_method": act_method,
           "taylor_order": taylor_order, "batch": int(x.shape[0]), "r": r}
    if all(g.dim() == 0 and not g.requires_grad for g in gm):
        # the general closed form on the memse preset (paper 001's semantics as a HardwareConfig)
        from memcim.analysis.predict import predict

        hws = [_memse_config(float(g), float(sigma), int(levels)) for g in gm]
        p = predict(layers, x, hws, cov=cov, rank=rank, max_factors=max_factors, full_below=full_below,
                    act_method=act_method, taylor_order=taylor_order, dtype=dtype, batch_chunk=batch_chunk,
                    on_crossbar=acc, plans=plans)
        return MSEPrediction(p.mean, p.var, p.reference, p.per_output, p.mse_mean, p.mse_max,
                             acc.result(gmax_layers=gm, layers=layers) if power else None, cfg, plans=p.plans)
    # per-column G_max (one max|w| per matrix, a G_max per column) is not a HardwareConfig: MemSE's own step
    if plans is not None:
        raise ValueError("plans: only for one G_max per layer (per-column G_max is not mapped with a plan)")
    means, vars_ = [], []
    for s in range(0, x.shape[0], batch_chunk):
        xb = x[s:s + batch_chunk]
        st = propagate(layers, xb, sigma=sigma, gmax=gmax, levels=levels, cov=cov, rank=rank,
                       max_factors=max_factors, full_below=full_below, act_method=act_method,
                       taylor_order=taylor_order, on_crossbar=acc)
        means.append(st.mean)
        vars_.append(st.var)
    mean, var = torch.cat(means), torch.cat(vars_)
    ref = reference_output(layers, x)
    per = var + (mean - ref) ** 2
    per2 = per.reshape(per.shape[0], -1)
    return MSEPrediction(mean, var, ref, per2, float(per2.mean()), float(per2.max(1).values.mean()),
                         acc.result(gmax_layers=resolve_gmax(gmax, layers, dtype), layers=layers) if power else None, cfg)


def mse_objective(layers: list, x: torch.Tensor, gmax_tensors: Sequence[torch.Tensor], *, sigma: float, levels: int,
                  cov: str = "lowrank", objective: str = "max", r: float = 1.0, v_read: float = 1.0,
                  g_offset: float = 0.0, **kw):
    """Differentiable (objective, total power) for the optimizer: torch scalars (power: see
    :class:`memcim.analysis.power.PowerAccumulator` for ``r``, ``v_read`` and ``g_offset``)."""
    from memcim.analysis import power as pw

    acc = pw.PowerAccumulator(float(sigma), r, keep_graph=True, v_read=v_read, g_offset=g_offset)
    st = propagate(layers, x, sigma=sigma, gmax=list(gmax_tensors), levels=levels, cov=cov, on_crossbar=acc, **kw)
    ref = reference_output(layers, x)
    per = (st.var + (st.mean - ref) ** 2).reshape(x.shape[0], -1)
    obj = per.max(1).values.mean() if objective == "max" else per.mean()
    return obj, acc.total_tensor(), per
