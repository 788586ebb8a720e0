"""Noise-aware activations and noise-injection fine-tuning (paper 003).

On the crossbar a layer's pre-activation reaches the activation as ``clip(x + n, b - FS, b + FS)``:
``x`` the exact pre-activation (bias ``b`` included, added digitally), ``n`` the analog read
noise and ADC quantization (fresh on every read, treated as ``N(0, sigma^2(x))``) and ``FS``
the ADC full scale. The noise-aware activation is the expectation of the digital activation
of that signal:

    f~(x) = E[f(clip(x + n, b - FS, b + FS))],   n ~ N(0, sigma^2).

For ReLU (``f`` monotone, ``f(clip(y, L, H)) = clip(y, f(L), f(H))``) and for the identity it has
a closed form in ``Phi`` and ``phi``: with ``Y ~ N(mu, sigma^2)``, ``alpha = (L - mu)/sigma``,
``beta = (H - mu)/sigma``,

    E[clip(Y, L, H)] = L Phi(alpha) + mu (Phi(beta) - Phi(alpha)) + sigma (phi(alpha) - phi(beta))
                       + H (1 - Phi(beta)),

so ``f~_ReLU(x) = E[clip(Y, max(b - FS, 0), max(b + FS, 0))]``; with ``b = 0`` this is
``E[min(ReLU(x + n), FS)]``. Its derivatives are ``d/dmu = Phi(beta) - Phi(alpha)`` and
``d/dsigma = phi(alpha) - phi(beta)``. Sigmoid, tanh and softplus use Gauss-Hermite quadrature
(``nodes`` points, exact for polynomials of degree ``2 nodes - 1``), autograd-friendly.

Fine-tuning (:func:`finetune_noise_aware`) trains the model's analog twin in training mode, on the
simulator's own differentiable read (:mod:`memcim.nn.analog`): every mini-batch maps the current
weights and programs a fresh chip (programming noise, stuck devices, levels: persistent per chip,
so they are *injected*). Each analog ``Linear`` followed by an activation then feeds ``f~`` with
the mean and variance of its read given that chip (:func:`read_moments`: thermal and shot noise,
ADC rounding, fresh per read, so they are *averaged*) and the ADC saturation from the plan's full
scale; a last ``Linear`` (or a convolution) uses the sampled training read. The network learns
weights whose activations are right on average under the hardware's noise and clipping. Every
noise statistic comes from :mod:`memcim.hardware.device` and :mod:`memcim.hardware.converters`
through the mapped plan; nothing here re-derives the physics.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["ACTIVATIONS", "expected_clip", "noise_aware_relu", "noise_aware_activation", "NoiseAwareActivation",
           "read_moments", "NoiseAwarePair", "noise_aware_network", "finetune_noise_aware", "activation_name"]

ACTIVATIONS = ("relu", "identity", "sigmoid", "tanh", "softplus")
_INV_SQRT2PI = 1.0 / math.sqrt(2 * math.pi)
#: |z| beyond which expected_clip takes Phi and phi at +-_ZMAX (phi(12.5) = 2e-34: a normal float32)
_ZMAX = 12.5


def _pdf(z):
    return torch.exp(-0.5 * z * z) * _INV_SQRT2PI


def _as_t(v, like):
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=like.dtype, device=like.device)


def expected_clip(mu: torch.Tensor, sigma, lo=-math.inf, hi=math.inf) -> torch.Tensor:
    """``E[clip(Y, lo, hi)]`` for ``Y ~ N(mu, sigma^2)`` (closed form, differentiable).

    Parameters
    ----------
    mu : means (any shape).
    sigma : standard deviations (broadcastable, >= 0; zero gives ``clip(mu, lo, hi)``).
    lo, hi : clipping limits (broadcastable; may be infinite), lo <= hi.
    """
    sigma = _as_t(sigma, mu)
    lo = _as_t(lo, mu)
    hi = _as_t(hi, mu)
    s = sigma.clamp_min(1e-30)
    # standardized limits clipped at +-_ZMAX: beyond, Phi and phi are within 1e-34 of 0 or 1, and their
    # underflow to subnormal numbers would cost ten times a normal exp on CPU
    a = ((lo - mu) / s).clamp_(-_ZMAX, _ZMAX)
    b = ((hi - mu) / s).clamp_(-_ZMAX, _ZMAX)
    Pa, Pb = torch.special.ndtr(a), torch.special.ndtr(b)
    pa, pb = _pdf(a), _pdf(b)
    lo_term = torch.where(torch.isfinite(lo), lo * Pa, torch.zeros_like(mu))
    hi_term = torch.where(torch.isfinite(hi), hi * (1 - Pb), torch.zeros_like(mu))
    mid = mu * (Pb - Pa) + s * (pa - pb)
    out = lo_term + mid + hi_term
    exact = torch.minimum(torch.maximum(mu, lo), hi)
    return torch.where(sigma > 0, out, exact)


def noise_aware_relu(x: torch.Tensor, sigma, fs=math.inf, bias=0.0) -> torch.Tensor:
    """``E[ReLU(clip(x + n, bias - fs, bias + fs))]``, ``n ~ N(0, sigma^2)``; ``bias = 0``:
    ``E[min(ReLU(x + n), fs)]``."""
    bias = _as_t(bias, x)
    fs = _as_t(fs, x)
    lo = torch.clamp_min(bias - fs, 0.0)
    hi = torch.clamp_min(bias + fs, 0.0)
    return expected_clip(x, sigma, lo, hi)


_GH_CACHE: dict = {}


def _gh(n, like):
    key = (n, like.dtype, like.device)
    if key not in _GH_CACHE:
        z, w = np.polynomial.hermite_e.hermegauss(n)
        _GH_CACHE[key] = (torch.as_tensor(z, dtype=like.dtype, device=like.device),
                          torch.as_tensor(w / w.sum(), dtype=like.dtype, device=like.device))
    return _GH_CACHE[key]


_FUNCS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "softplus": torch.nn.functional.softplus}


def noise_aware_activation(name: str, x: torch.Tensor, sigma, fs=math.inf, bias=0.0, *,
                           nodes: int = 32) -> torch.Tensor:
    """``E[f(clip(x + n, bias - fs, bias + fs))]`` for ``f`` in :data:`ACTIVATIONS`.

    ReLU and identity are closed forms; sigmoid, tanh and softplus use ``nodes``-point
    Gauss-Hermite quadrature.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: {name!r} is not allowed; choose one of {', '.join(ACTIVATIONS)}")
    if name == "relu":
        return noise_aware_relu(x, sigma, fs, bias)
    bias = _as_t(bias, x)
    fs = _as_t(fs, x)
    lo, hi = bias - fs, bias + fs
    if name == "identity":
        return expected_clip(x, sigma, lo, hi)
    sigma = _as_t(sigma, x)
    z, w = _gh(int(nodes), x)
    y = x.unsqueeze(-1) + sigma.unsqueeze(-1) * z
    y = torch.minimum(torch.maximum(y, lo.unsqueeze(-1)), hi.unsqueeze(-1))
    return (_FUNCS[name](y) * w).sum(-1)


class NoiseAwareActivation(nn.Module):
    """Module form: ``forward(x, sigma, fs=inf, bias=0)``."""

    def __init__(self, name: str = "relu", nodes: int = 32):
        super().__init__()
        if name not in ACTIVATIONS:
            raise ValueError(f"activation: {name!r} is not allowed; choose one of {', '.join(ACTIVATIONS)}")
        self.name, self.nodes = name, nodes

    def forward(self, x, sigma, fs=math.inf, bias=0.0):
        return noise_aware_activation(self.name, x, sigma, fs, bias, nodes=self.nodes)


def activation_name(mod: nn.Module) -> str | None:
    """The :data:`ACTIVATIONS` name of a torch activation module, or None."""
    for cls, name in ((nn.ReLU, "relu"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"), (nn.Softplus, "softplus"),
                      (nn.Identity, "identity")):
        if isinstance(mod, cls):
            if name == "softplus" and (mod.beta != 1 or mod.threshold != 20):
                return None
            return name
    return None


# ------------------------------------------------------------------------------ the read's moments

def read_moments(chip, x: torch.Tensor):
    """Mean and variance of one read of ``chip`` (its first chip) for inputs ``x`` (batch, in), given
    its programmed conductances: the per-read noise averaged, not drawn.

    The same read as :meth:`memcim.simulate.ProgrammedChip.mvm` (``differentiable=True``), term by
    term from the one physics: DAC (:func:`~memcim.hardware.converters.dac_convert`, straight
    through), the chip's effective matrix (programming noise, stuck devices and levels as
    programmed; IR drop as in the reader), read noise per array column
    (:func:`~memcim.hardware.device.read_noise_variance`, offset reference column included) and ADC
    rounding (:func:`~memcim.hardware.converters.adc_quantization_variance`) with the plan's full
    scale, rescaled by ``1/c`` and summed over the row tiles. RTN is not included.

    Returns
    -------
    mean : (batch, out), differentiable in ``x`` and in the chip's conductances.
    var : (batch, out) variance (detached).
    sat : (batch, out) saturation bound of the output around its bias: the sum of the row tiles'
        full scales when the ADC saturates, else inf (each row tile saturates on its own; their
        sum bounds the total).
    """
    from memcim.hardware.converters import adc_quantization_variance, dac_convert
    from memcim.hardware.device import read_noise_variance

    m = chip.mapped
    hw = m.hw
    dev, arr = hw.device, hw.array
    nrt, R = m.n_row_tiles, m.tile_rows
    x = x.to(chip.dtype)
    u, xs = dac_convert(x, hw.dac, ste=True)
    u = torch.nn.functional.pad(u, (0, nrt * R - m.in_features))
    ut = u.reshape(u.shape[0], nrt, R).transpose(0, 1)                      # (nrt, B, R)
    gain = 1.0 / m.scale.to(chip.dtype).unsqueeze(1)                        # (nrt, 1, out_pad)
    if hw.reader == "ideal" and chip.trials == 1:   # G+ - G- of the chip (its cached read state is not needed)
        gd = m.effective_difference(chip.g_pos[0], chip.g_neg[0])
    else:
        gd = chip.effective_difference()[0]
    j = torch.matmul(ut, gd)                                                # (nrt, B, out_pad) [S]
    mean = (j * gain).sum(0)[..., : m.out_features] * xs
    with torch.no_grad():
        v = arr.v_read
        fs = (m.full_scale / (arr.r_tia * v)).to(chip.dtype).unsqueeze(1)    # full scale in the units of j
        qvar = adc_quantization_variance(fs, hw.adc)
        if dev.thermal_noise or dev.shot_noise:
            gp, gn = chip.g_pos[0].detach(), chip.g_neg[0].detach()
            gs = gp + gn if m.scheme == "differential" else gp
            a = ut.detach().abs()
            var = read_noise_variance(gs.sum(1, keepdim=True), torch.matmul(a, gs) if dev.shot_noise else None, v,
                                      dev, inplace=True).div_(v ** 2)
            var = var.add_(qvar) if var.shape == j.shape else (var + qvar).expand(j.shape)
            if m.scheme == "offset":
                var = var + m.expand_neg(read_noise_variance(gn.sum(1, keepdim=True), torch.matmul(a, gn), v, dev)) / v ** 2
        else:
            var = qvar.expand(j.shape)
        var = (var * gain ** 2).sum(0)[..., : m.out_features] * xs ** 2
        if hw.adc.enabled and hw.adc.saturate:
            sat = (fs * gain).sum(0)[..., : m.out_features] * xs
        else:
            sat = torch.full_like(var, math.inf)
    return mean, var, sat


# ------------------------------------------------------------------------------ fine-tuning

class NoiseAwarePair(nn.Module):
    """An analog ``Linear`` and the activation after it, trained with the noise-aware activation.

    Training: a fresh chip of the layer's current weights (:meth:`~memcim.nn.analog._AnalogMixin.train_chip`,
    programming noise and stuck devices drawn, so *injected*), then
    ``f~(mean + b)`` with the per-read noise of :func:`read_moments` (thermal, shot and ADC rounding,
    *averaged*) and the ADC saturation. Evaluation: the layer, then the activation.
    """

    def __init__(self, layer: nn.Module, activation: nn.Module):
        super().__init__()
        self.layer, self.activation = layer, activation
        self.name = activation_name(activation)

    def forward(self, x):
        if not self.training:
            return self.activation(self.layer(x))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.layer.in_features)
        mean, var, sat = read_moments(self.layer.train_chip(), x2)
        b = self.layer.bias if self.layer.bias is not None else torch.zeros(mean.shape[-1], dtype=mean.dtype)
        b = b.to(mean.dtype)
        y = noise_aware_activation(self.name, mean + b, var.sqrt(), sat, b)
        return y.to(x.dtype).reshape(*lead, -1)


def noise_aware_network(analog: nn.Module) -> nn.Sequential:
    """The training network of an analog ``nn.Sequential``: every analog ``Linear`` followed by an
    activation of :data:`ACTIVATIONS` becomes a :class:`NoiseAwarePair` (sharing its parameters);
    other layers (a last ``Linear``, convolutions) train on the plain training read."""
    from memcim.nn.analog import AnalogLinear

    if not isinstance(analog, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential, got {type(analog).__name__}")
    mods = list(analog)
    out, i = [], 0
    while i < len(mods):
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(mods[i], AnalogLinear) and nxt is not None and activation_name(nxt) is not None:
            out.append(NoiseAwarePair(mods[i], nxt))
            i += 2
        else:
            out.append(mods[i])
            i += 1
    return nn.Sequential(*out)


def finetune_noise_aware(model: nn.Sequential, hardware, train_ds, *, overrides: dict | None = None,
                         calib_data: torch.Tensor | None = None, epochs: int = 3, lr: float = 2e-4,
                         batch_size: int = 128, seed: int = 0, progress: bool | None = False) -> dict:
    """Fine-tune ``model`` in place on its analog twin's training read with the noise-aware activations.

    The model is converted (:func:`memcim.nn.analog.convert_to_analog`, with ``overrides`` and
    ``calib_data``), wrapped by :func:`noise_aware_network`, trained with :func:`memcim.nn.train.train`
    (Adam, cosine schedule; a new chip every mini-batch), and its trained weights are copied back.

    Parameters
    ----------
    model : digital ``nn.Sequential`` (changed in place).
    hardware : :class:`memcim.config.HardwareConfig`; ``overrides`` per layer as in ``convert_to_analog``.
    calib_data : model inputs that calibrate the ADC full scales (``adc.fs_mode = "calibrated"``).
    train_ds : :class:`memcim.data.base.Dataset`.
    epochs, lr, batch_size, seed : fine-tuning settings (``seed``: batch order and chips).

    Returns
    -------
    dict with the per-epoch ``loss`` and ``seconds``.
    """
    from memcim.nn.analog import analog_layers, convert_to_analog
    from memcim.nn.train import train

    for name, v in (("--epochs", epochs), ("--batch-size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {v!r} is not allowed; must be a positive integer")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ValueError(f"lr: {lr!r} is not allowed; must be > 0")
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
    analog = convert_to_analog(model, hardware, overrides=overrides, calib_data=calib_data, seed=seed)
    net = noise_aware_network(analog)
    h = train(net, train_ds, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    with torch.no_grad():
        for name, layer in analog_layers(analog):
            dst = model.get_submodule(name)
            dst.weight.copy_(layer.weight)
            if layer.bias is not None:
                dst.bias.copy_(layer.bias)
    model.eval()
    return {"loss": h["loss"], "seconds": h["seconds"]}
