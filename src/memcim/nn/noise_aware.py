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

Fine-tuning (:func:`finetune_noise_aware`): every ``Linear`` gets, per mini-batch, weights
redrawn with the programming noise of the design (persistent per chip, so it is *injected* as a
weight perturbation) and its following activation is replaced by ``f~`` with
``sigma^2(x) = xs^2 A + xs |x| B`` from the closed form (thermal, shot, ADC and DAC
quantization, fresh per read, so they are *averaged*). The network learns weights whose
activations are right on average under the hardware's noise and clipping.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

__all__ = ["ACTIVATIONS", "expected_clip", "noise_aware_relu", "noise_aware_activation", "NoiseAwareActivation",
           "LayerNoise", "layer_noise", "NoiseAwareMLP", "finetune_noise_aware", "activation_name"]

ACTIVATIONS = ("relu", "identity", "sigmoid", "tanh", "softplus")
_INV_SQRT2PI = 1.0 / math.sqrt(2 * math.pi)


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
    a = (lo - mu) / s
    b = (hi - mu) / s
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


# ------------------------------------------------------------------------------ noise of a layer

class LayerNoise:
    """Noise of one crossbar layer under a design, in the torch layer's orientation.

    Attributes
    ----------
    w_std : (out, in) programming-noise std of every weight [weight units] (per chip).
    A : (out,) read-noise variance per ``xs^2``: thermal, ADC and DAC quantization.
    B : (in, out) shot-noise variance per ``xs |x_i|``.
    fs : (out,) ADC full scale of the layer output per ``xs`` (row tiles added), inf if none.
    x_range : the DAC's fixed range, or None (per-vector max |x|).
    """

    def __init__(self, w_std, A, B, fs, x_range, wmax=1.0):
        self.w_std, self.A, self.B, self.fs, self.x_range = w_std, A, B, fs, x_range
        self.wmax = float(wmax)

    def scale(self, weight: torch.Tensor) -> float:
        """Noise scale for the current weights: every noise std is proportional to ``1/c = wmax/D``
        (and the FS to the output range), so weights that grow during fine-tuning do not outgrow
        the noise: ``max|W| / max|W_design|``."""
        return float(weight.detach().abs().max()) / self.wmax

    def sigma(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Read-noise standard deviation of every output for inputs ``x`` (batch, in)."""
        xs = (x.detach().abs().amax(-1, keepdim=True) if self.x_range is None
              else torch.full_like(x[..., :1], self.x_range))
        var = xs ** 2 * self.A.to(x) + xs * (x.detach().abs() @ self.B.to(x))
        return scale * var.clamp_min(0).sqrt()


def layer_noise(W_torch: torch.Tensor, hw, design) -> LayerNoise:
    """:class:`LayerNoise` of a ``Linear`` weight (out, in) under ``design`` on ``hw``.

    Parameters
    ----------
    W_torch : the ``nn.Linear`` weight (out, in).
    hw : :class:`memcim.config.HardwareConfig` (noise, converters, array).
    design : :class:`memcim.analysis.column_error.Design` (window and FS in u-weight units).
    """
    W = W_torch.detach().double().cpu().numpy().T           # (in, out)
    dev, arr = hw.device, hw.array
    n, m = W.shape
    A_ = np.abs(W)
    wmax = np.full(m, A_.max()) if hw.mapping.scale == "matrix" else np.where(A_.max(0) > 0, A_.max(0), 1.0)
    a, D = design.g_min, design.g_max - design.g_min
    c = D / wmax
    gp = a + c * np.maximum(W, 0)
    gn = a + c * np.maximum(-W, 0)
    var_w = (2 * dev.prog_sigma_abs ** 2 + dev.prog_sigma_rel ** 2 * (gp ** 2 + gn ** 2)) / c ** 2
    if dev.prog_sigma_table is not None and dev.levels is not None:
        t = np.asarray(dev.prog_sigma_table)
        L = dev.levels
        lp = np.clip(np.round(np.maximum(W, 0) * (L - 1) / wmax), 0, L - 1).astype(int)
        ln = np.clip(np.round(np.maximum(-W, 0) * (L - 1) / wmax), 0, L - 1).astype(int)
        var_w = var_w + (t[lp] ** 2 + t[ln] ** 2) / c ** 2
    R = arr.rows
    T = -(-n // R)
    A = np.zeros(m)
    if dev.thermal_noise:
        th = dev.thermal_psd / arr.v_read ** 2
        A += th * (gp + gn).sum(0) / c ** 2
    B = np.zeros((n, m))
    if dev.shot_noise:
        B = (dev.shot_psd / arr.v_read) * (gp + gn) / c ** 2
    F = np.broadcast_to(np.asarray(design.fs, dtype=np.float64), (T, m))
    if hw.adc.enabled:
        A += (F ** 2).sum(0) / (12.0 * hw.adc.steps ** 2)
        fs = F.sum(0) if hw.adc.saturate else np.full(m, np.inf)
    else:
        fs = np.full(m, np.inf)
    if hw.dac.enabled:
        A += (W ** 2).sum(0) / (12.0 * hw.dac.steps ** 2)
    f = torch.float32
    return LayerNoise(torch.as_tensor(np.sqrt(var_w).T, dtype=f), torch.as_tensor(A, dtype=f),
                      torch.as_tensor(B, dtype=f), torch.as_tensor(fs, dtype=f), hw.dac.x_range,
                      wmax=float(A_.max()))


# ------------------------------------------------------------------------------ fine-tuning

class NoiseAwareMLP(nn.Module):
    """A ``Sequential`` of Flatten / Linear / activation layers run with the noise-aware model.

    Parameters
    ----------
    model : the digital ``nn.Sequential`` (its parameters are shared, not copied).
    noises : {index of each Linear in ``model``: :class:`LayerNoise`}.
    seed : seed of the weight-noise generator.
    """

    def __init__(self, model: nn.Sequential, noises: dict, seed: int = 0):
        super().__init__()
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model: expected an nn.Sequential MLP, got {type(model).__name__}")
        self.model = model
        self.noises = noises
        self.gen = torch.Generator().manual_seed(int(seed))
        for i, mod in enumerate(model):
            if isinstance(mod, nn.Linear) and i not in noises:
                raise ValueError(f"noises: missing the noise model of layer {i} ({mod})")
            if not isinstance(mod, (nn.Linear, nn.Flatten)) and activation_name(mod) is None:
                raise ValueError(f"model: layer {i} ({type(mod).__name__}) is not supported; allowed: Flatten, "
                                 f"Linear and the activations {', '.join(ACTIVATIONS)}")

    def forward(self, x):
        layers = list(self.model)
        i = 0
        while i < len(layers):
            mod = layers[i]
            if isinstance(mod, nn.Linear):
                nz = self.noises[i]
                W = mod.weight
                k = nz.scale(W)
                if self.training:
                    W = W + k * nz.w_std.to(W) * torch.randn(W.shape, generator=self.gen).to(W)
                z = x @ W.t()
                b = mod.bias if mod.bias is not None else torch.zeros_like(z[0])
                z = z + b
                sig = nz.sigma(x, k)
                xs = (x.detach().abs().amax(-1, keepdim=True) if nz.x_range is None
                      else torch.full_like(x[..., :1], nz.x_range))
                fs = k * nz.fs.to(z) * xs
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                name = activation_name(nxt) if nxt is not None else None
                if name is not None:
                    x = noise_aware_activation(name, z, sig, fs, b)
                    i += 2
                    continue
                x = expected_clip(z, sig, b - fs, b + fs)
                if self.training:
                    x = x + sig * torch.randn(x.shape, generator=self.gen).to(x)
            else:
                x = mod(x)
            i += 1
        return x


def finetune_noise_aware(model: nn.Sequential, noises: dict, train_ds, *, epochs: int = 3, lr: float = 2e-4,
                         batch_size: int = 128, seed: int = 0, progress: bool | None = False) -> dict:
    """Fine-tune ``model`` in place with the noise-aware activations and weight-noise injection.

    Parameters
    ----------
    model : digital ``nn.Sequential`` MLP (changed in place).
    noises : {Linear index: :class:`LayerNoise`} from :func:`layer_noise`.
    train_ds : :class:`memcim.data.base.Dataset`.
    epochs, lr, batch_size, seed : Adam fine-tuning settings (cosine schedule).

    Returns
    -------
    dict with the per-epoch ``loss`` and ``seconds``.
    """
    for name, v in (("--epochs", epochs), ("--batch-size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {v!r} is not allowed; must be a positive integer")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"--lr: {lr!r} is not allowed; must be > 0")
    net = NoiseAwareMLP(model, noises, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    loss_fn = nn.CrossEntropyLoss()
    hist = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * ep / epochs))
        net.train()
        tot, cnt = 0.0, 0
        for xb, yb in train_ds.batches(batch_size, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(yb)
            cnt += len(yb)
        hist.append(tot / max(cnt, 1))
    model.eval()
    return {"loss": hist, "seconds": time.perf_counter() - t0}
