"""Closed-form moments through general module graphs (residual blocks, concatenations, attention).

:func:`memcim.analysis.predict.predict` sends every model that is not a plain ``nn.Sequential`` of
the layers :func:`memcim.analysis.moments.parse_model` accepts here. The model is traced with
``torch.fx.symbolic_trace`` and the graph is walked node by node; every value is either a plain
tensor (deterministic: constants, shapes, the input) or the moments of a random tensor. Every
crossbar matrix runs the same hardware step as the sequential closed form
(``predict._HardwareStep``: the plan the simulator programs, programming and read noise, DAC, ADC,
drift), so the physics stays in one place.

State of a random tensor ``X`` of shape (B, *shape)
--------------------------------------------------
``mean``, ``var`` (exact per-unit variance), and tagged factors ``fac`` (B, K, *shape) with one
integer id per factor: ``Cov(X_i, X_j) ~= sum_k F_ki F_kj + diag(residual)``. A factor id names one
independent noise direction (a crossbar's shared programming noise, or a unit's residual made
explicit), so two tensors that carry the same id are correlated through it:
``Cov(X_i, Y_j) = sum_{k shared} F^X_ki F^Y_kj``. Linear maps carry the factors through ``W``,
activations scale them by ``E[f'(X)]`` (Stein's lemma, as in :mod:`~memcim.analysis.moments`),
BatchNorm / affine maps are exact, and a crossbar step keeps the incoming factors (mapped through
the mean weight and the ADC's mean slope) and appends its own new ones under fresh ids.

* **Residual additions** ``a + b``: factors with the same id add, so
  ``Var(a+b) = Var a + Var b + 2 Cov(a, b)`` with ``Cov(a, b)`` from the shared factors. The
  residual (the per-unit variance not in the factors) of the two branches is treated as independent:
  this is the approximation. It is exact when the fork carries no residual (a deterministic input,
  or a map small enough to be kept in full, see below); it misses ``J_ii r_i`` terms otherwise.
* **Concatenation, flatten, reshape, permute, slicing, padding**: index maps, exact.
* **Compression**: factors whose ids no other live tensor holds are private and may be compressed
  to their top ``max_factors`` principal directions (lowrank) as the sequential closed form does;
  shared factors are never rotated, so branch correlations survive until the branches merge.
  In a model with attention, a token state (B, T, E) keeps at least ``E * rank`` directions (at most
  ``4 max_factors``; block factors at most ``8 max_factors`` in all), and
  what the compression drops (a positive semi-definite covariance) is not all sent to the per-unit
  residual: its (T, T) block of every channel keeps its top ``rank`` directions as channel-local
  factors (the rows of the attention scores likewise, over their columns), so noise that attention
  spread over the tokens stays coherent across them. The per-unit variance is exact either way.

Covariance modes (``cov=``): ``"lowrank"`` (default) as the sequential form: ``rank`` new
directions per conv matrix, at most ``max_factors`` private factors on maps larger than
``full_below`` units, and a map of at most ``full_below`` units (or the input of a ``Linear`` of at
most ``full_linear`` inputs) is made *full*: its residual becomes explicit factors and it stays full
downstream, which is exact up to the activations' and ADC's Gaussian approximations.
``"exact"``: every map full (memory ``D^2`` per sample: tiny models only). ``"diagonal"``: no
factors (branches uncorrelated).

Layers and their approximations
-------------------------------
* ``Linear`` on (B, in): the crossbar step; on (B, ..., in) (tokens) a 1x1 convolution over the
  tokens, so the programming noise shared by the tokens of one sample is tracked as for conv
  positions. ``Conv1d/2d/3d`` with any stride, dilation, padding (mode) and groups: the input is
  padded digitally, each group is its own matrix on its own arrays (as :mod:`memcim.nn.analog`),
  Conv1d runs as a (k, 1) Conv2d, Conv3d as a Conv2d over the depth taps stacked into channels and
  the output depths stacked along the height (an exact re-indexing).
* ``BatchNorm1d/2d/3d`` (running statistics): exact affine map.
* ``LayerNorm``: the centring is an exact linear map; the division by the per-sample standard
  deviation is linearised (delta method) at ``s = sqrt(E[v] + eps)`` with
  ``E[v] = mean(E[c]^2 + Var c)``: ``dy = (gamma/s) (dc - c^ (c^ . dc)/n)``, ``c^ = E[c]/s``. The
  mean is ``gamma c^ + beta`` (the O(1/n) curvature of ``1/s`` is neglected).
* ``ReLU`` (exact), ``Sigmoid``/``Tanh``/``Softplus`` (``act_method``), ``GELU`` and ``SiLU`` (always
  Gauss-Hermite quadrature, :func:`~memcim.analysis.moments.activation_moments`).
* ``Softmax``: delta method, first order for the covariance (``J = diag(p) - p p^T``) and second
  order for the mean (``E[p_i] ~= p_i + 1/2 tr(H_i C)`` with the tracked covariance ``C``).
* ``MaxPool1d/2d``: Clark (1961): the max of a window is built pairwise,
  ``max(M, X)`` Gaussian with Clark's first two moments, ``rho`` from the tracked factors; its factors
  are ``Phi(a) F_M + Phi(-a) F_X`` (the probabilities that each side is the larger, Stein).
* ``AvgPool1d/2d``, ``AdaptiveAvgPool1d/2d`` (equal windows), ``mean``/``sum``: exact linear maps.
* Products of two random tensors (``a * b``, ``a @ b``: attention's ``Q K^T`` and ``A V``): exact mean
  (with the shared-factor covariance), factors by the product rule (first order), residual variance
  ``r_a mu_b^2 + mu_a^2 r_b + Var a Var b``.
* ``MultiheadAttention`` (batch_first, self-attention, no masks), ``TransformerEncoderLayer`` and
  ``TransformerEncoder``: projections on crossbars (token-wise), scores and weighted sum by the
  product rule, softmax as above; digital as in :class:`memcim.nn.analog.AnalogMultiheadAttention`.
  A product ``a @ b`` spreads each side's per-unit residual: b's over the rows of a column
  (``a diag(r_b[:, d]) a^T``: ``A V`` mixes V's residual over the tokens), a's over the columns of a
  row (``b^T diag(r_a[t]) b``: Q's residual is shared along a row of the scores, A's over the
  channels of a head). The top ``rank`` eigen-directions of each block are kept as factors (fresh
  ids), the rest as residual.
* ``LSTM``/``GRU``: :func:`memcim.analysis.recurrent.propagate_recurrent` (the output's factors get
  fresh ids: its correlation with a skip path around the recurrent layer is not tracked).

A layer outside this list is a one-line ``ValueError`` naming its fx node and the nearest supported
alternative; a model ``torch.fx`` cannot trace is a one-line ``ValueError`` too.
"""
from __future__ import annotations

import dataclasses

import copy
import itertools
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from memcim.analysis import moments as mo

__all__ = ["predict_graph", "trace_model", "GraphState"]

_BIG = 1 << 40
_TOKEN_LIMIT = 4       # a token state keeps E * rank private factors, at most this many times max_factors
_BLOCK_BUDGET = 8      # and at most this many times max_factors block factors (_block_remainder)
_NEG = -1e30           # max pooling's padding value (a finite "minus infinity")


# ----------------------------------------------------------------------------------------- state

@dataclass
class GraphState:
    """Moments of a random tensor: ``mean``, ``var`` (B, *shape), tagged factors ``fac`` (B, K, *shape)
    with ``ids`` (K ints), ``nonzero`` (P(X != 0), None: 1) and ``full`` (kept in full covariance)."""

    mean: torch.Tensor
    var: torch.Tensor
    fac: torch.Tensor | None = None
    ids: tuple = ()
    nonzero: torch.Tensor | None = None
    full: bool = False
    layer_first: bool = False  # an LSTM/GRU state: torch indexes h_n as (layers*dirs, B, H); it is held as (B, layers*dirs, H)

    def residual(self) -> torch.Tensor:
        if self.fac is None:
            return self.var
        return (self.var - (self.fac * self.fac).sum(1)).clamp_min(0.0)

    @property
    def shape(self):
        return tuple(self.mean.shape[1:])


def _fold(fac, fn):
    """Apply a batch-agnostic map ``fn`` to factors (B, K, *shape) -> (B, K, *out)."""
    if fac is None:
        return None
    b, k = fac.shape[:2]
    y = fn(fac.reshape(b * k, *fac.shape[2:]))
    return y.reshape(b, k, *y.shape[1:])


def _index_map(s: GraphState, fn) -> GraphState:
    """An index map (reshape, permute, slice, pad, gather): exact on every part of the state."""
    return GraphState(fn(s.mean), fn(s.var), _fold(s.fac, fn), s.ids,
                      None if s.nonzero is None else fn(s.nonzero), s.full)


def _linmap(s: GraphState, fn, fn_sq) -> GraphState:
    """A linear map ``fn`` (no offset) with squared-coefficient map ``fn_sq`` (residual variance)."""
    fac = _fold(s.fac, fn)
    var = fn_sq(s.residual())
    if fac is not None:
        var = var + (fac * fac).sum(1)
    return GraphState(fn(s.mean), var, fac, s.ids, None, s.full)


def _aligned(states):
    """The factors of ``states`` on the union of their ids (zeros where a state lacks an id)."""
    ids = []
    for s in states:
        ids += [i for i in s.ids if i not in ids]
    if not ids:
        return [None] * len(states), ()
    pos = {i: n for n, i in enumerate(ids)}
    out = []
    for s in states:
        b = s.mean.shape[0]
        f = s.mean.new_zeros((b, len(ids)) + s.shape)
        if s.fac is not None:
            f[:, [pos[i] for i in s.ids]] = s.fac
        out.append(f)
    return out, tuple(ids)


def _det(x: torch.Tensor) -> GraphState:
    return GraphState(x, torch.zeros_like(x))


def _as_state(v, b: int, dtype) -> GraphState:
    if isinstance(v, GraphState):
        return v
    t = torch.as_tensor(v, dtype=dtype)
    return _det(t.expand(b, *t.shape[1:]) if t.dim() and t.shape[0] in (1, b) else t.expand(b, *t.shape))


# ----------------------------------------------------------------------------------- element-wise

def _affine(s: GraphState, a, c=0.0) -> GraphState:
    """``a X + c`` with deterministic ``a``, ``c`` (broadcasting against X)."""
    a = torch.as_tensor(a, dtype=s.mean.dtype)
    fac = None if s.fac is None else s.fac * (a.unsqueeze(1) if a.dim() == s.mean.dim() else a)
    mean = s.mean * a + c
    var = (s.var * a * a).expand_as(mean)
    if fac is not None:
        fac = fac.expand(fac.shape[0], fac.shape[1], *mean.shape[1:])
    return GraphState(mean, var, fac, s.ids, None, s.full)


def _activation(s: GraphState, kind: str, beta: float, method: str, order: int) -> GraphState:
    m, v, slope = mo.activation_moments(kind, s.mean, s.var, beta=beta, method=method, order=order)
    fac = None if s.fac is None else s.fac * slope.unsqueeze(1)
    return GraphState(m, v, fac, s.ids, slope if kind == "relu" else None, s.full)


def _add(a: GraphState, b: GraphState, sign: float = 1.0) -> GraphState:
    """``a + sign b`` with their covariance through shared factors (residuals independent)."""
    shape = torch.broadcast_shapes(a.mean.shape, b.mean.shape)
    a, b = (GraphState(s.mean.expand(shape), s.var.expand(shape),
                       None if s.fac is None else s.fac.expand(s.fac.shape[0], s.fac.shape[1], *shape[1:]),
                       s.ids, None, s.full) for s in (a, b))
    (fa, fb), ids = _aligned([a, b])
    mean = a.mean + sign * b.mean
    if fa is None:
        return GraphState(mean, a.var + b.var, None, (), None, a.full or b.full)
    fac = fa + sign * fb
    var = a.residual() + b.residual() + (fac * fac).sum(1)
    return GraphState(mean, var, fac, ids, None, a.full or b.full)


def _product(a: GraphState, b: GraphState, op) -> GraphState:
    """``op(a, b)`` for a bilinear ``op`` (``*`` or ``@``) of two random tensors: exact mean (shared
    factors give the covariance), first-order factors, residual ``r_a mu_b^2 + mu_a^2 r_b + Va Vb``."""
    (fa, fb), ids = _aligned([a, b])
    mean = op(a.mean, b.mean)
    fac = None
    if fa is not None:
        mean = mean + op(fa, fb).sum(1)
        fac = op(fa, b.mean.unsqueeze(1)) + op(a.mean.unsqueeze(1), fb)
    ra, rb = a.residual(), b.residual()
    var = op(ra, b.mean ** 2) + op(a.mean ** 2, rb) + op(a.var, b.var)
    if fac is not None:
        var = var + (fac * fac).sum(1)
    return GraphState(mean, var, fac, ids, None, a.full or b.full)


def _softmax(s: GraphState, dim: int) -> GraphState:
    """Delta method: first order for the covariance, second order for the mean."""
    d = dim % s.mean.dim()
    p = torch.softmax(s.mean, d)
    r = s.residual()
    pr = (p * p * r).sum(d, keepdim=True)
    res = p * p * (r * (1 - 2 * p) + pr)
    corr = r * (1 - 2 * p) + 2 * pr - (p * s.var).sum(d, keepdim=True)
    fac = None
    if s.fac is not None:
        pf = (p.unsqueeze(1) * s.fac).sum(d + 1, keepdim=True)        # (B, K, ..., 1, ...)
        u = s.fac - pf
        fac = p.unsqueeze(1) * u
        corr = corr + (u * u).sum(1) + (pf * pf).sum(1)
    mean = p + 0.5 * p * corr
    var = res if fac is None else res + (fac * fac).sum(1)
    return GraphState(mean, var, fac, s.ids, None, s.full)


def _layer_norm(s: GraphState, shape: tuple, weight, bias, eps: float) -> GraphState:
    """Exact centring, then the division by the per-sample deviation linearised (delta method)."""
    nd = len(shape)
    dims = tuple(range(-nd, 0))
    n = math.prod(shape)
    mu = s.mean - s.mean.mean(dims, keepdim=True)
    r = s.residual()
    rc = r * (1 - 2.0 / n) + r.sum(dims, keepdim=True) / (n * n)
    fc = None if s.fac is None else s.fac - s.fac.mean(dims, keepdim=True)
    vc = rc if fc is None else rc + (fc * fc).sum(1)
    sd = torch.sqrt((mu * mu + vc).mean(dims, keepdim=True) + eps)
    ch = mu / sd
    g = torch.ones((), dtype=mu.dtype) if weight is None else weight.detach().to(mu.dtype)
    res = (g / sd) ** 2 * (rc * (1 - 2 * ch * ch / n) + ch * ch * (ch * ch * rc).sum(dims, keepdim=True) / (n * n))
    fac = None
    if fc is not None:
        proj = (ch.unsqueeze(1) * fc).sum(dims, keepdim=True) / n
        fac = (g / sd).unsqueeze(1) * (fc - ch.unsqueeze(1) * proj)
    mean = g * ch + (0.0 if bias is None else bias.detach().to(mu.dtype))
    var = res.clamp_min(0.0) if fac is None else res.clamp_min(0.0) + (fac * fac).sum(1)
    return GraphState(mean, var, fac, s.ids, None, s.full)


def _phi(z):
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _cdf(z):
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def _clark(ma, va, fa, mb, vb, fb):
    """Clark (1961): moments of max(A, B) for jointly Gaussian A, B (covariance from the factors;
    residuals independent), and its factors ``Phi(a) F_A + Phi(-a) F_B``."""
    cab = (fa * fb).sum(1) if fa is not None else torch.zeros_like(ma)
    th2 = (va + vb - 2 * cab).clamp_min(0.0)
    th = th2.sqrt()
    tiny = th <= 1e-150
    ths = torch.where(tiny, torch.ones_like(th), th)
    al = (ma - mb) / ths
    pa = torch.where(tiny, (ma >= mb).to(ma.dtype), _cdf(al))
    ph = torch.where(tiny, torch.zeros_like(th), _phi(al))
    m = ma * pa + mb * (1 - pa) + th * ph
    m2 = (ma * ma + va) * pa + (mb * mb + vb) * (1 - pa) + (ma + mb) * th * ph
    v = (m2 - m * m).clamp_min(0.0)
    f = None if fa is None else fa * pa.unsqueeze(1) + fb * (1 - pa).unsqueeze(1)
    return m, v, f


def _maxpool(s: GraphState, k, st, pad, dil) -> GraphState:
    """Max pooling (2-d, (B, C, H, W)) by Clark's pairwise max over each window."""
    b, c, h, w = s.mean.shape
    kk = k[0] * k[1]

    def win(t, fill):   # (N, C, H, W) -> (N, C, kk, L)
        n = t.shape[0]
        t = F.pad(t, (pad[1], pad[1], pad[0], pad[0]), value=fill)
        u = F.unfold(t.reshape(n * c, 1, *t.shape[2:]), k, dilation=dil, stride=st)
        return u.reshape(n, c, kk, -1)

    ho = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // st[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // st[1] + 1
    mw, rw = win(s.mean, _NEG), win(s.residual(), 0.0)
    fw = None
    if s.fac is not None:
        K = s.fac.shape[1]
        fw = win(s.fac.reshape(b * K, c, h, w), 0.0).reshape(b, K, c, kk, -1)
    def part(j):
        f = None if fw is None else fw[:, :, :, j]
        v = rw[:, :, j] + (0.0 if f is None else (f * f).sum(1))
        return mw[:, :, j], v, f
    m, v, f = part(0)
    for j in range(1, kk):
        mj, vj, fj = part(j)
        m, v, f = _clark(m, v, f, mj, vj, fj)
    if f is not None:
        v = torch.maximum(v, (f * f).sum(1))
    out = GraphState(m.reshape(b, c, ho, wo), v.reshape(b, c, ho, wo),
                     None if f is None else f.reshape(b, f.shape[1], c, ho, wo), s.ids, None, s.full)
    return out


# ------------------------------------------------------------------------------------ tracing

def trace_model(model: nn.Module):
    """``torch.fx.symbolic_trace`` of ``model`` (digital copy), or a one-line ValueError."""
    import torch.fx as fx

    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the same user error
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model: {type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: "
                         f"{msg[:160]}); make it fx-traceable (torch.fx.symbolic_trace) or pass an nn.Sequential") from None


_ALTERNATIVES = {
    "LeakyReLU": "ReLU, GELU or SiLU", "PReLU": "ReLU, GELU or SiLU", "ELU": "ReLU, GELU or SiLU",
    "SELU": "ReLU, GELU or SiLU", "Hardswish": "SiLU", "Hardsigmoid": "Sigmoid", "Hardtanh": "Tanh",
    "Mish": "SiLU", "LogSoftmax": "Softmax", "ReLU6": "ReLU",
    "AdaptiveMaxPool2d": "MaxPool2d", "AdaptiveMaxPool1d": "MaxPool1d", "MaxPool3d": "MaxPool2d",
    "AvgPool3d": "AvgPool2d", "LPPool2d": "AvgPool2d", "FractionalMaxPool2d": "MaxPool2d",
    "GroupNorm": "BatchNorm2d or LayerNorm", "InstanceNorm2d": "BatchNorm2d", "InstanceNorm1d": "BatchNorm1d",
    "LocalResponseNorm": "BatchNorm2d", "Embedding": "Linear (on one-hot inputs)", "Bilinear": "Linear",
    "ConvTranspose2d": "Conv2d (with Upsample kept digital outside the model)", "RNN": "GRU or LSTM",
    "TransformerDecoderLayer": "TransformerEncoderLayer", "Upsample": "a model without upsampling",
}
_SUPPORTED = ("Linear, Conv1d/2d/3d (any groups, dilation, padding), BatchNorm1d/2d/3d, LayerNorm, ReLU, Sigmoid, "
              "Tanh, Softplus, GELU, SiLU, Softmax, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, Flatten, "
              "Dropout, Identity, MultiheadAttention, TransformerEncoder(Layer), LSTM, GRU, +, -, *, cat, reshape")


def _unsupported(where: str, what: str):
    alt = _ALTERNATIVES.get(what, None)
    hint = f"nearest supported alternative: {alt}" if alt else f"supported: {_SUPPORTED}"
    return ValueError(f"model: layer {where} ({what}) is not supported by the closed form; {hint}")


def _tup(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


# ------------------------------------------------------------------------------------ walker


def _group_factors(f: torch.Tensor, k: int, *, group_last: bool) -> torch.Tensor:
    """Per-group factors ``f`` (B, H, G, L, k) -- the top ``k`` directions of group ``g`` of head
    ``h``, each a vector of length L -- as factors of a (B, H, ., .) state, each living on its own
    (head, group) only: (B, H*G*k, H, L, G) with the group on the last axis (``group_last``: a
    column of ``a @ b``), else (B, H*G*k, H, G, L) with the group on the rows (a row of ``a @ b``)."""
    b, h, G, L, _ = f.shape
    n = h * G * k
    eye = torch.eye(h * G, dtype=f.dtype).repeat_interleave(k, 0)
    vec = f.permute(0, 1, 2, 4, 3)
    if group_last:
        return vec.reshape(b, n, 1, L, 1) * eye.reshape(1, n, h, 1, G)
    return vec.reshape(b, n, 1, 1, L) * eye.reshape(1, n, h, G, 1)


def _top_factors(m: torch.Tensor, k: int) -> torch.Tensor:
    """Factors ``f`` (..., n, k) with ``f f^T`` the top ``k`` eigen-part of the symmetric PSD ``m`` (..., n, n)."""
    lam, vec = torch.linalg.eigh(m)
    return vec[..., -k:] * lam[..., -k:].clamp_min(0.0).sqrt().unsqueeze(-2)

class _Walker:
    def __init__(self, gm, units, hw, t, calib, *, cov, rank, max_factors, full_below, full_linear,
                 act_method, taylor_order, on_crossbar, dtype, token_rank=None, full_forks=False):
        self.gm, self.units, self.hw, self.t, self.calib = gm, units, hw, t, calib
        self.cov = cov
        self.rank = _BIG if cov == "exact" else rank
        self.max_factors = _BIG if cov == "exact" else max_factors
        self.full_below = _BIG if cov == "exact" else full_below
        self.full_linear = _BIG if cov == "exact" else full_linear
        self.act_method, self.taylor_order = act_method, taylor_order
        self.on_crossbar, self.dtype = on_crossbar, dtype
        self.modules = dict(gm.named_modules())
        # token states (B, T, E) of a model with attention: at least E * rank factors, and what compression
        # drops is kept per channel over the tokens (_block_remainder): token_rank directions per channel
        attn = any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer)) for m in self.modules.values())
        self.full_forks = bool(full_forks)
        self.tokens = cov == "lowrank" and attn
        self.token_rank = 0 if not self.tokens else (rank if token_rank is None else token_rank)
        self.steps: dict = {}                  # (path, key) -> (_HardwareStep, LayerHardware)
        self.order: list = []
        self._ids = itertools.count()

    # ---------------------------------------------------------------- factor bookkeeping
    def fresh(self, n: int) -> tuple:
        return tuple(next(self._ids) for _ in range(n))

    def densify(self, s: GraphState, others: set) -> GraphState:
        """Make the residual explicit (one factor per unit, fresh ids) and compress the private
        factors losslessly: the state is then kept in full."""
        if self.cov == "diagonal":
            return s
        b = s.mean.shape[0]
        d = s.mean[0].numel()
        r = s.residual().reshape(b, d)
        new = None
        if bool(torch.any(r > 0)):
            new = torch.diag_embed(r.sqrt()).reshape(b, d, *s.shape)
        fac = new if s.fac is None else (s.fac if new is None else torch.cat([s.fac, new], 1))
        ids = s.ids + (self.fresh(d) if new is not None else ())
        out = GraphState(s.mean, s.var, fac, ids, s.nonzero, True, s.layer_first)
        return self.compress(out, others, d)

    def compress(self, s: GraphState, others: set, limit: int, within: int | None = None) -> GraphState:
        if s.fac is None:
            return s
        priv = [n for n, i in enumerate(s.ids) if i not in others]
        if len(priv) <= limit:
            return s
        shared = [n for n, i in enumerate(s.ids) if i in others]
        if within is not None and self.block_rank(s.mean[0].numel() // s.shape[within], s.shape[within]) <= 0:
            within = None
        if within is not None and len(priv) <= limit + self.block_slack(s, within, limit):
            return s
        fp = mo._compress(s.fac[:, priv], limit)
        if within is not None:
            fp = torch.cat([fp, self._block_remainder(s.fac[:, priv], fp, within)], 1)
        fac = torch.cat([s.fac[:, shared], fp], 1) if shared else fp
        return GraphState(s.mean, s.var, fac, tuple(s.ids[n] for n in shared) + self.fresh(fp.shape[1]),
                          s.nonzero, s.full, s.layer_first)

    def block_slack(self, s: GraphState, within: int, limit: int) -> int:
        """Private factors a state compressed by blocks may carry before it is compressed again: its
        block factors (``token_rank`` per block) plus ``max_factors`` new ones."""
        w = s.shape[within]
        g = s.mean[0].numel() // w
        return g * self.block_rank(g, w) + limit

    def block_rank(self, blocks: int, w: int) -> int:
        """Directions kept per block: ``token_rank``, at most ``w``, and at most ``8 max_factors`` block
        factors in all (a wide model gets fewer per block, or none)."""
        return min(self.token_rank, w, (_BLOCK_BUDGET * self.max_factors) // max(blocks, 1))

    def _block_remainder(self, f: torch.Tensor, kept: torch.Tensor, within: int) -> torch.Tensor:
        """What the compression of the factors ``f`` (B, K, *shape) to ``kept`` drops, the covariance
        ``f^T f - kept^T kept`` (positive semi-definite: ``kept`` is an orthogonal projection of ``f``),
        kept in blocks along dimension ``within`` of the shape: the (W, W) block of every index of the
        other dimensions (a channel of a token state, over its tokens; a row of attention scores, over
        its columns), as its top ``token_rank`` eigen-directions, each a factor on its block only
        (fresh ids). The cross-block part is dropped, as the per-unit residual drops it; the rest of
        each block stays in the per-unit residual (the state's variance is unchanged). Noise that
        attention spreads over the tokens (or a row of scores) then stays coherent across them."""
        b = f.shape[0]
        shape = f.shape[2:]
        d = 2 + within % len(shape)

        def blocks(t):
            t = t.movedim(d, -1)
            return t.reshape(t.shape[0], t.shape[1], -1, t.shape[-1]), t.shape[2:]
        fb, moved = blocks(f)
        kb, _ = blocks(kept)
        G, W = fb.shape[2:]
        k = self.block_rank(G, W)
        m = torch.einsum("bkgw,bkgv->bgwv", fb, fb) - torch.einsum("bkgw,bkgv->bgwv", kb, kb)
        lam, vec = torch.linalg.eigh(0.5 * (m + m.transpose(-1, -2)))
        lam, vec = lam[..., -k:].clamp_min(0.0), vec[..., -k:]            # (B, G, k), (B, G, W, k)
        g = (vec * lam.sqrt().unsqueeze(-2)).permute(0, 1, 3, 2)          # (B, G, k, W)
        eye = torch.eye(G, dtype=f.dtype).reshape(1, G, 1, G, 1)
        new = (g.unsqueeze(-2) * eye).reshape(b, G * k, *moved)
        return new.movedim(-1, d)

    def tidy(self, s: GraphState, others: set, within: int | None = None) -> GraphState:
        """After every node: full maps stay full (residual -> factors), others are compressed."""
        if self.cov == "diagonal":
            return s
        d = s.mean[0].numel()
        if s.full or d <= self.full_below:
            return self.densify(s, others)
        limit = self.max_factors
        if self.tokens and s.mean.dim() == 3:
            # a token state (B, T, E): attention's weighted sum adds `rank` token-coherent directions per
            # channel (_mix_residual); keep as many (blocks over the tokens of each channel beyond them)
            limit = max(limit, min(s.mean.shape[2] * min(self.rank, s.mean.shape[1]), _TOKEN_LIMIT * self.max_factors))
            if within is None:
                within = 0
        return self.compress(s, others, limit, within if self.token_rank > 0 else None)

    # ---------------------------------------------------------------- crossbars
    def _step(self, path: str, key, weight: torch.Tensor, clayer: mo.CrossbarLayer, conv_rows: bool):
        from memcim.analysis.predict import _HardwareStep, layer_hardware
        from memcim.hardware.device import check_time

        k = (path, key)
        if k not in self.steps:
            unit = self.units.get(path, {}).get(key) if self.units else None
            hw = self.hw if self.hw is not None else (unit.hardware if unit is not None else None)
            if hw is None:
                raise ValueError("hw: a HardwareConfig (or a preset name) is required")
            cal = None if unit is None else unit.calibration_inputs
            if self.calib is not None:
                cal = self.calib.get(k, cal)
            tt = check_time(self.t, hw.device)
            wc = weight.reshape(weight.shape[0], -1).t().to(torch.float64)
            lh = layer_hardware(wc, hw, calib_inputs=cal, t=tt)
            step = _HardwareStep(lh, clayer, self.rank, _BIG, self.on_crossbar, len(self.order), False,
                                 reference_inputs=cal)
            self.steps[k] = (step, lh)
            self.order.append((f"{path}.{key}" if key != "weight" else path, lh))
        return self.steps[k][0]

    def crossbar(self, s: GraphState, step, clayer) -> GraphState:
        mode = "diagonal" if self.cov == "diagonal" else "lowrank"
        st = mo.Moments(s.mean, s.var, mode, None, s.fac, s.nonzero)
        out = step(st)
        K = 0 if s.fac is None else s.fac.shape[1]
        ids = () if out.factors is None else s.ids + self.fresh(out.factors.shape[1] - K)
        return GraphState(out.mean, out.var, out.factors, ids, None, s.full)

    def linear(self, path: str, m: nn.Module, s: GraphState, others: set, key="weight", weight=None, bias=None):
        w = (m.weight if weight is None else weight).detach().to(self.dtype)
        bsrc = m.bias if weight is None else bias
        b = torch.zeros(w.shape[0], dtype=self.dtype) if bsrc is None else bsrc.detach().to(self.dtype)
        if s.mean.shape[-1] != w.shape[1]:
            raise ValueError(f"x: shape {tuple(s.mean.shape)} does not fit layer {path} (in_features {w.shape[1]})")
        if s.mean.dim() == 2:
            cl = mo.CrossbarLayer("linear", w, b, name=path)
            if self.cov != "diagonal" and w.shape[1] <= self.full_linear and (s.fac is not None or bool(torch.any(s.var > 0))):
                s = self.densify(s, others)
            return self.crossbar(s, self._step(path, key, w, cl, False), cl)
        lead = s.mean.shape[1:-1]
        L, n = math.prod(lead), w.shape[1]
        x = _index_map(s, lambda t: t.reshape(t.shape[0], L, n).transpose(1, 2).unsqueeze(-1))
        cl = mo.CrossbarLayer("conv", w.reshape(w.shape[0], n, 1, 1), b, name=path)
        y = self.crossbar(x, self._step(path, key, w, cl, True), cl)
        return _index_map(y, lambda t: t.squeeze(-1).transpose(1, 2).reshape(t.shape[0], *lead, w.shape[0]))

    def conv(self, path: str, m: nn.Module, s: GraphState) -> GraphState:
        nd = m.weight.dim() - 2
        if s.mean.dim() != nd + 2 or s.mean.shape[1] != m.in_channels:
            raise ValueError(f"x: shape {tuple(s.mean.shape)} does not fit layer {path} ({type(m).__name__} with "
                             f"{m.in_channels} input channels)")
        k, stv, dil = _tup(m.kernel_size, nd), _tup(m.stride, nd), _tup(m.dilation, nd)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                pad = (0,) * (2 * nd)
            else:
                pad = []
                for i in reversed(range(nd)):
                    tot = dil[i] * (k[i] - 1)
                    pad += [tot // 2, tot - tot // 2]
                pad = tuple(pad)
        else:
            pad = tuple(m._reversed_padding_repeated_twice)
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        if any(pad):
            s = _index_map(s, lambda t: F.pad(t, pad, mode=mode))
        G = m.groups
        cg, og = m.in_channels // G, m.out_channels // G
        w = m.weight.detach().to(self.dtype)
        bias = None if m.bias is None else m.bias.detach().to(self.dtype)
        outs = []
        for g in range(G):
            sg = s if G == 1 else _index_map(s, lambda t, g=g: t[:, g * cg:(g + 1) * cg])
            wg = w[g * og:(g + 1) * og]
            bg = torch.zeros(og, dtype=self.dtype) if bias is None else bias[g * og:(g + 1) * og]
            outs.append(self._conv_group(path, f"group{g}" if self.units.get(path, {}).get("weight") is None else "weight",
                                         sg, wg, bg, k, stv, dil))
        return outs[0] if G == 1 else _cat(outs, 1)

    def _conv_group(self, path, key, s, w, b, k, stv, dil):
        nd = len(k)
        if nd == 2:
            cl = mo.CrossbarLayer("conv", w, b, stv, (0, 0), dil, name=path)
            return self.crossbar(s, self._step(path, key, w, cl, True), cl)
        if nd == 1:
            x = _index_map(s, lambda t: t.unsqueeze(-1))
            cl = mo.CrossbarLayer("conv", w.unsqueeze(-1), b, (stv[0], 1), (0, 0), (dil[0], 1), name=path)
            y = self.crossbar(x, self._step(path, key, w, cl, True), cl)
            return _index_map(y, lambda t: t.squeeze(-1))
        if nd != 3:
            raise _unsupported(path, f"Conv{nd}d")
        # Conv3d: depth taps -> channels, output depths stacked along the height (exact re-indexing)
        C, Dp, Hp, Wp = s.shape
        kd, kh, kw = k
        sd, sh, sw = stv
        dd, dh, dw = dil
        Do = (Dp - dd * (kd - 1) - 1) // sd + 1
        Ho = (Hp - dh * (kh - 1) - 1) // sh + 1
        Hp2 = -(-Hp // sh) * sh

        def gather(t):
            n = t.shape[0]
            sl = torch.stack([t[:, :, o * sd + j * dd] for o in range(Do) for j in range(kd)], 2)
            z = sl.reshape(n, C, Do, kd, Hp, Wp).permute(0, 1, 3, 2, 4, 5)
            z = F.pad(z, (0, 0, 0, Hp2 - Hp))
            return z.reshape(n, C * kd, Do * Hp2, Wp)

        x = _index_map(s, gather)
        cl = mo.CrossbarLayer("conv", w.reshape(w.shape[0], C * kd, kh, kw), b, (sh, sw), (0, 0), (dh, dw), name=path)
        y = self.crossbar(x, self._step(path, key, w, cl, True), cl)
        rows = torch.tensor([o * (Hp2 // sh) + i for o in range(Do) for i in range(Ho)])
        return _index_map(y, lambda t: t[:, :, rows].reshape(t.shape[0], t.shape[1], Do, Ho, t.shape[-1]))

    # ---------------------------------------------------------------- attention
    def mha(self, path: str, m: nn.MultiheadAttention, q: GraphState, kx: GraphState, v: GraphState,
            others: set) -> GraphState:
        if not m.batch_first:
            raise ValueError(f"model: layer {path} (MultiheadAttention) has batch_first=False; the closed form "
                             "needs batch_first=True")
        if m.bias_k is not None or m.add_zero_attn:
            raise _unsupported(path, "MultiheadAttention with bias_k/add_zero_attn")
        E, H = m.embed_dim, m.num_heads
        dh = E // H
        if m._qkv_same_embed_dim:
            ws = {n: m.in_proj_weight[i * E:(i + 1) * E] for i, n in enumerate("qkv")}
        else:
            ws = {"q": m.q_proj_weight, "k": m.k_proj_weight, "v": m.v_proj_weight}
        bs = {n: (None if m.in_proj_bias is None else m.in_proj_bias[i * E:(i + 1) * E]) for i, n in enumerate("qkv")}
        live = others | set(q.ids) | set(kx.ids) | set(v.ids)
        proj = {n: self.linear(path, None, x, live, key=n, weight=ws[n], bias=bs[n])
                for n, x in (("q", q), ("k", kx), ("v", v))}

        def heads(t):   # (N, T, E) -> (N, H, T, dh)
            return t.reshape(t.shape[0], t.shape[1], H, dh).transpose(1, 2)

        Q, K, V = (_index_map(proj[n], heads) for n in "qkv")
        Q = _affine(Q, 1.0 / math.sqrt(dh))
        Kt = _index_map(K, lambda t: t.transpose(-2, -1))
        S = _product(Q, Kt, torch.matmul)
        # the residuals of Q (shared along a row of the scores) and K (along a column), as factors
        S = self._mix_residual(self._mix_left(S, Q.residual(), Kt.mean), Q.mean, Kt.residual())
        A = _softmax(self.tidy(S, live | set(V.ids), within=-1), -1)      # blocks: the rows softmax acts on
        O = _product(A, V, torch.matmul)
        O = self._mix_left(self._mix_residual(O, A.mean, V.residual()), A.residual(), V.mean)
        O = _index_map(O, lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], E))
        O = self.tidy(O, others)
        return self.linear(path, m.out_proj, O, others, key="out", weight=m.out_proj.weight, bias=m.out_proj.bias)

    def _mix_residual(self, O: GraphState, a: torch.Tensor, r: torch.Tensor) -> GraphState:
        """``O = a @ b`` mixes b's residual (independent per unit) over a's rows: at column ``d``
        (``A V``: channel ``d`` of a head; ``Q K^T``: token ``d``'s column of scores) it adds
        ``M_d = a diag(r_d) a^T`` (rows x rows) to O's covariance, which the per-unit residual would
        drop. Keep its top ``rank`` eigen-directions per column as factors under fresh ids (their
        variance moves out of the residual; the rest stays independent)."""
        return self._mix(O, lambda: torch.einsum("...ts,...sd,...us->...dtu", a, r, a),  # (B, H, dh, T, T)
                         min(self.rank, a.shape[-2]), group_last=True)                   # (B, H*dh*k, H, T, dh)

    def _mix(self, O: GraphState, gram, k: int, *, group_last: bool) -> GraphState:
        """``O`` with the top ``k`` eigen-directions of each group's matrix ``gram()`` (B, H, G, L, L) as
        factors on that group only (:func:`_group_factors`); ``O`` itself without covariance or for k = 0."""
        if self.cov == "diagonal" or k <= 0:
            return O
        return self._with_factors(O, _group_factors(_top_factors(gram(), k), k, group_last=group_last))

    def _with_factors(self, O: GraphState, new: torch.Tensor) -> GraphState:
        """``O`` with the factors ``new`` appended under fresh ids."""
        fac = new if O.fac is None else torch.cat([O.fac, new], 1)
        return GraphState(O.mean, O.var, fac, O.ids + self.fresh(new.shape[1]), O.nonzero, O.full)

    def _mix_left(self, O: GraphState, ra: torch.Tensor, bm: torch.Tensor) -> GraphState:
        """``O = a @ b`` mixes a's residual (independent per unit) over b's columns: row ``t`` of
        ``O`` gets ``b^T diag(r_a[t]) b`` (columns x columns), which the per-unit residual would drop.
        Its top ``rank`` eigen-directions per row become factors (fresh ids) on that row only."""
        return self._mix(O, lambda: torch.einsum("...sd,...ts,...se->...tde", bm, ra, bm),  # (B, H, T, D, D)
                         min(self.rank, bm.shape[-1]), group_last=False)                   # (B, H*T*k, H, T, D)

    def encoder_layer(self, path: str, m: nn.TransformerEncoderLayer, x: GraphState, others: set) -> GraphState:
        act = m.activation
        def ff(h, live):
            h = self.linear(f"{path}.linear1", m.linear1, h, live)
            h = self.elementwise(f"{path}.activation", act, h)
            return self.linear(f"{path}.linear2", m.linear2, h, live)

        def norm(mod, sub, h):
            return _layer_norm(h, tuple(mod.normalized_shape), mod.weight, mod.bias, mod.eps)

        if self.full_forks and self.cov == "lowrank" and not x.full:
            # the residual stream's residual made explicit: the branches that read it stay correlated with it
            x = dataclasses.replace(self.densify(x, others), full=False)
        live = others | set(x.ids)
        if m.norm_first:
            x = self.tidy(_add(x, self.mha(f"{path}.self_attn", m.self_attn, *(3 * [norm(m.norm1, "norm1", x)]), live)), others)
            live = others | set(x.ids)
            x = self.tidy(_add(x, ff(norm(m.norm2, "norm2", x), live)), others)
        else:
            x = norm(m.norm1, "norm1", self.tidy(_add(x, self.mha(f"{path}.self_attn", m.self_attn, x, x, x, live)), others))
            live = others | set(x.ids)
            x = norm(m.norm2, "norm2", self.tidy(_add(x, ff(x, live)), others))
        return x

    # ---------------------------------------------------------------- element-wise modules
    def elementwise(self, where: str, f, s: GraphState) -> GraphState:
        kind, beta = None, 1.0
        if isinstance(f, nn.Module):
            if isinstance(f, nn.GELU):
                kind = "gelu" if f.approximate == "none" else "gelu_tanh"
            else:
                kind = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "silu",
                        nn.Softplus: "softplus"}.get(type(f))
                if isinstance(f, nn.Softplus):
                    beta = float(f.beta)
        else:
            kind = {F.relu: "relu", torch.relu: "relu", F.gelu: "gelu", F.silu: "silu", torch.sigmoid: "sigmoid",
                    F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.softplus: "softplus"}.get(f)
        if kind is None:
            raise _unsupported(where, type(f).__name__ if isinstance(f, nn.Module) else getattr(f, "__name__", str(f)))
        return _activation(s, kind, beta, self.act_method, self.taylor_order)


def _cat(states, dim):
    d = dim % states[0].mean.dim()
    if d == 0:
        raise ValueError("model: torch.cat along the batch dimension is not supported by the closed form")
    facs, ids = _aligned(states)
    fac = None if facs[0] is None else torch.cat(facs, d + 1)
    nz = None
    if any(s.nonzero is not None for s in states):
        nz = torch.cat([s.nonzero if s.nonzero is not None else torch.ones_like(s.mean) for s in states], d)
    return GraphState(torch.cat([s.mean for s in states], d), torch.cat([s.var for s in states], d), fac, ids, nz,
                      any(s.full for s in states))


# ------------------------------------------------------------------------------------ node rules

_PASS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_ACTS = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.GELU, nn.SiLU)
_ACT_FNS = {F.relu, torch.relu, F.gelu, F.silu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus}
_HW_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, nn.TransformerEncoderLayer,
               nn.TransformerEncoder, nn.LSTM, nn.GRU)


def _ids_of(v) -> set:
    if isinstance(v, GraphState):
        return set(v.ids)
    if isinstance(v, (tuple, list)):
        out = set()
        for u in v:
            out |= _ids_of(u)
        return out
    return set()


def _has_state(v) -> bool:
    if isinstance(v, GraphState):
        return True
    if isinstance(v, (tuple, list)):
        return any(_has_state(u) for u in v)
    if isinstance(v, dict):
        return any(_has_state(u) for u in v.values())
    return False


def _norm_dim(d: int, nd: int, where: str) -> int:
    d = int(d) % nd
    if d == 0:
        raise ValueError(f"model: {where} acts on the batch dimension (dim 0), which the closed form keeps; "
                         "keep the batch first")
    return d


class _Graph(_Walker):
    def run(self, x: torch.Tensor) -> GraphState:
        import torch.fx as fx

        nodes = list(self.gm.graph.nodes)
        last = {}
        for i, n in enumerate(nodes):
            for a in n.all_input_nodes:
                last[a] = i
        env: dict = {}
        self.batch = x.shape[0]
        placeholders = 0
        out = None
        for i, n in enumerate(nodes):
            live = set()
            for k, v in env.items():
                if last.get(k, -1) > i:
                    live |= _ids_of(v)
            args = fx.node.map_arg(n.args, lambda a: env[a])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
            if n.op == "placeholder":
                val = x if placeholders == 0 else (n.args[0] if n.args else None)
                placeholders += 1
            elif n.op == "get_attr":
                val = self.gm
                for part in str(n.target).split("."):
                    val = getattr(val, part)
                if isinstance(val, torch.Tensor):
                    val = val.detach().to(self.dtype) if val.is_floating_point() else val.detach()
            elif n.op == "output":
                out = args[0]
                break
            else:
                val = self.node(n, args, kwargs, live)
            if isinstance(val, GraphState):
                val = self.tidy(val, live)
            env[n] = val
            for a in n.all_input_nodes:
                if last.get(a) == i:
                    env.pop(a, None)
        if not isinstance(out, GraphState):
            raise ValueError("model: its output does not depend on any crossbar layer (nothing to predict)")
        return out

    # ---------------------------------------------------------------- dispatch
    def node(self, n, args, kwargs, live):
        where = str(n.target) if n.op == "call_module" else n.name
        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, _HW_MODULES):
                return self.module(str(n.target), m, args, kwargs, live)
            if not _has_state((args, kwargs)):
                with torch.no_grad():
                    return m(*args, **kwargs)
            return self.module(str(n.target), m, args, kwargs, live)
        if not _has_state((args, kwargs)):
            with torch.no_grad():
                if n.op == "call_function":
                    return n.target(*args, **kwargs)
                return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "call_function":
            return self.function(where, n.target, args, kwargs, live)
        return self.method(where, n.target, args, kwargs, live)

    def _s(self, v) -> GraphState:
        return _as_state(v, self.batch, self.dtype)

    def module(self, path, m, args, kwargs, live):
        if isinstance(m, _PASS):
            return args[0]
        if isinstance(m, nn.Linear):
            return self.linear(path, m, self._s(args[0]), live)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self.conv(path, m, self._s(args[0]))
        if isinstance(m, (nn.LSTM, nn.GRU)):
            return self.recurrent(path, m, self._s(args[0]), args[1:], kwargs)
        if isinstance(m, nn.MultiheadAttention):
            q, k, v = (self._s(a) for a in (list(args) + [kwargs.get(x) for x in ("query", "key", "value")
                                                           if x in kwargs])[:3])
            bad = [key for key in ("key_padding_mask", "attn_mask") if kwargs.get(key) is not None] + \
                  (["attn_mask"] if len(args) > 3 and any(a is not None for a in args[3:4]) else [])
            if bad or len(args) > 5 or kwargs.get("is_causal"):
                raise _unsupported(path, "MultiheadAttention with masks")
            return self.mha(path, m, q, k, v, live), None
        if isinstance(m, nn.TransformerEncoderLayer):
            if len(args) > 1 or any(v is not None and v is not False for v in kwargs.values()):
                raise _unsupported(path, "TransformerEncoderLayer with masks")
            if not m.self_attn.batch_first:
                raise ValueError(f"model: layer {path} (TransformerEncoderLayer) has batch_first=False; the closed "
                                 "form needs batch_first=True")
            return self.encoder_layer(path, m, self._s(args[0]), live)
        if isinstance(m, nn.TransformerEncoder):
            if len(args) > 1 or any(v is not None and v is not False for v in kwargs.values()):
                raise _unsupported(path, "TransformerEncoder with masks")
            s = self._s(args[0])
            for i, layer in enumerate(m.layers):
                if not layer.self_attn.batch_first:
                    raise ValueError(f"model: layer {path}.layers.{i} has batch_first=False; the closed form needs "
                                     "batch_first=True")
                s = self.tidy(self.encoder_layer(f"{path}.layers.{i}", layer, s, live), live)
            if m.norm is not None:
                s = _layer_norm(s, tuple(m.norm.normalized_shape), m.norm.weight, m.norm.bias, m.norm.eps)
            return s
        s = self._s(args[0])
        if isinstance(m, _ACTS):
            return self.elementwise(path, m, s)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None:
                raise ValueError(f"model: layer {path} ({type(m).__name__}) has no running statistics "
                                 "(track_running_stats=False); nearest supported alternative: LayerNorm")
            inv = 1.0 / torch.sqrt(m.running_var.detach().to(self.dtype) + m.eps)
            a = inv * (m.weight.detach().to(self.dtype) if m.affine else 1.0)
            c = -m.running_mean.detach().to(self.dtype) * a + (m.bias.detach().to(self.dtype) if m.affine else 0.0)
            shape = (-1,) + (1,) * (s.mean.dim() - 2)
            return _affine(s, a.reshape(shape), c.reshape(shape))
        if isinstance(m, nn.LayerNorm):
            return _layer_norm(s, tuple(m.normalized_shape), m.weight, m.bias, m.eps)
        if isinstance(m, nn.Softmax):
            if m.dim is None:
                raise ValueError(f"model: layer {path} (Softmax) has dim=None; give the dimension")
            return _softmax(s, _norm_dim(m.dim, s.mean.dim(), path))
        if isinstance(m, nn.Flatten):
            _norm_dim(m.start_dim, s.mean.dim(), path)
            return _index_map(s, m)
        if isinstance(m, (nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)):
            return _index_map(s, m)
        if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
            if float(m.value) != 0.0:
                return _affine(_index_map(s, lambda t: F.pad(t, m.padding)), 1.0,
                               F.pad(torch.zeros_like(s.mean), m.padding, value=float(m.value)))
            return _index_map(s, m)
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
            k = _tup(m.kernel_size, 1 if isinstance(m, nn.AvgPool1d) else 2)
            if m.ceil_mode or getattr(m, "divisor_override", None) is not None or (
                    not m.count_include_pad and any(_tup(m.padding, len(k)))):
                raise _unsupported(path, f"{type(m).__name__} with ceil_mode/divisor_override/count_include_pad=False")
            return _linmap(s, m, lambda v: m(v) / math.prod(k))
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            nd = 1 if isinstance(m, nn.AdaptiveAvgPool1d) else 2
            osz = _tup(m.output_size, nd)
            isz = s.shape[-nd:]
            osz = tuple(i if o is None else o for i, o in zip(isz, osz))
            if any(i % o for i, o in zip(isz, osz)):
                raise _unsupported(path, f"{type(m).__name__} with unequal windows (input {isz}, output {osz})")
            win = math.prod(i // o for i, o in zip(isz, osz))
            return _linmap(s, m, lambda v: m(v) / win)
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            if m.ceil_mode or m.return_indices:
                raise _unsupported(path, f"{type(m).__name__} with ceil_mode/return_indices")
            if isinstance(m, nn.MaxPool1d):
                k, st, p, d = (_tup(v, 1)[0] for v in (m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation))
                y = _maxpool(_index_map(s, lambda t: t.unsqueeze(-1)), (k, 1), (st, 1), (p, 0), (d, 1))
                return _index_map(y, lambda t: t.squeeze(-1))
            return _maxpool(s, _tup(m.kernel_size, 2), _tup(m.stride or m.kernel_size, 2), _tup(m.padding, 2),
                            _tup(m.dilation, 2))
        raise _unsupported(path, type(m).__name__)

    def _binary(self, where, f, a, b, live):
        sa, sb = isinstance(a, GraphState), isinstance(b, GraphState)
        if f in (operator.add, torch.add, operator.iadd, operator.sub, torch.sub, operator.isub):
            sign = -1.0 if f in (operator.sub, torch.sub, operator.isub) else 1.0
            if sa and sb:
                return _add(a, b, sign)
            if sa:
                return _affine(a, 1.0, sign * torch.as_tensor(b, dtype=self.dtype))
            return _affine(b, sign, torch.as_tensor(a, dtype=self.dtype))
        if f in (operator.mul, torch.mul, operator.imul):
            if sa and sb:
                return _product(a, b, torch.mul)
            return _affine(a, b) if sa else _affine(b, a)
        if f in (operator.truediv, torch.div, torch.true_divide, operator.itruediv):
            if sb:
                raise _unsupported(where, "division by a random tensor")
            return _affine(a, 1.0 / torch.as_tensor(b, dtype=self.dtype))
        if f in (operator.matmul, torch.matmul, torch.bmm):
            if sa and sb:
                return _product(a, b, torch.matmul)
            if sa:
                w = torch.as_tensor(b, dtype=self.dtype)
                return _linmap(a, lambda t: t @ w, lambda t: t @ (w * w))
            w = torch.as_tensor(a, dtype=self.dtype)
            return _linmap(b, lambda t: w @ t, lambda t: (w * w) @ t)
        return None

    def function(self, where, f, args, kwargs, live):
        if len(args) >= 2 and not kwargs.get("alpha"):
            r = self._binary(where, f, args[0], args[1], live)
            if r is not None:
                return r
        pools = {F.max_pool2d: nn.MaxPool2d, F.max_pool1d: nn.MaxPool1d, F.avg_pool2d: nn.AvgPool2d,
                 F.avg_pool1d: nn.AvgPool1d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
                 F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d}
        if f in pools:
            return self.module(where, pools[f](*args[1:], **kwargs), args[:1], {}, live)
        if f is operator.neg:
            return _affine(args[0], -1.0)
        if f is operator.getitem:
            return self.getitem(where, args[0], args[1])
        if f is getattr:
            return getattr(args[0].mean, args[1])
        if f in (torch.cat, torch.concat):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return _cat([self._s(v) for v in args[0]], dim)
        if f in _ACT_FNS:
            if f is F.gelu and kwargs.get("approximate", "none") == "tanh":
                return _activation(args[0], "gelu_tanh", 1.0, self.act_method, self.taylor_order)
            if f is F.softplus and (len(args) > 1 or kwargs):
                beta = float(kwargs.get("beta", args[1] if len(args) > 1 else 1.0))
                return _activation(args[0], "softplus", beta, self.act_method, self.taylor_order)
            return self.elementwise(where, f, args[0])
        if f in (F.softmax, torch.softmax):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            return _softmax(args[0], _norm_dim(dim, args[0].mean.dim(), where))
        if f is F.layer_norm:
            shape = tuple(args[1] if len(args) > 1 else kwargs["normalized_shape"])
            w = kwargs.get("weight", args[2] if len(args) > 2 else None)
            b = kwargs.get("bias", args[3] if len(args) > 3 else None)
            return _layer_norm(args[0], shape, w, b, float(kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)))
        if f in (torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.unsqueeze, torch.squeeze,
                 torch.mean, torch.sum):
            return self.method(where, f.__name__, args, kwargs, live)
        raise _unsupported(where, getattr(f, "__name__", str(f)))

    def getitem(self, where, v, idx):
        if not isinstance(v, GraphState):
            return v[idx]
        if not isinstance(idx, tuple):
            idx = (idx,)
        if idx and idx[0] is Ellipsis:
            return _index_map(v, lambda t: t[idx])
        if v.layer_first and idx and idx[0] is not Ellipsis:  # h_n[-1]: torch's layer index, held after the batch
            out = _index_map(v, lambda t: t[(slice(None),) + idx])
            return dataclasses.replace(out, layer_first=isinstance(idx[0], slice) and len(idx) == 1)
        if not idx or not (isinstance(idx[0], slice) and idx[0] == slice(None)):
            raise ValueError(f"model: {where} indexes the batch dimension; the closed form keeps the batch "
                             "(index with [:, ...])")
        return _index_map(v, lambda t: t[idx])

    def method(self, where, name, args, kwargs, live):
        s = args[0]
        if not isinstance(s, GraphState):
            if len(args) >= 2 and isinstance(args[1], GraphState):
                r = self._binary(where, {"add": operator.add, "mul": operator.mul, "matmul": operator.matmul,
                                         "sub": operator.sub}.get(name), args[0], args[1], live)
                if r is not None:
                    return r
            raise _unsupported(where, name)
        nd = s.mean.dim()
        rest = args[1:]
        if name in ("add", "sub", "mul", "div", "matmul", "add_", "mul_"):
            f = {"add": operator.add, "add_": operator.add, "sub": operator.sub, "mul": operator.mul,
                 "mul_": operator.mul, "div": operator.truediv, "matmul": operator.matmul}[name]
            return self._binary(where, f, s, rest[0], live)
        if name in ("size", "dim"):
            return getattr(s.mean, name)(*rest, **kwargs)
        if name in ("contiguous", "clone", "detach", "float", "double", "to"):
            return s
        if name in ("view", "reshape"):
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
            shape = kwargs.get("shape", shape)
            out = s.mean.reshape(*shape)
            if out.shape[0] != s.mean.shape[0]:
                raise ValueError(f"model: {where} reshapes the batch dimension; the closed form keeps the batch first")
            tail = tuple(out.shape[1:])
            return _index_map(s, lambda t: t.reshape(t.shape[0], *tail))
        if name == "flatten":
            start = kwargs.get("start_dim", rest[0] if rest else 0)
            end = kwargs.get("end_dim", rest[1] if len(rest) > 1 else -1)
            _norm_dim(start, nd, where)
            return _index_map(s, lambda t: t.flatten(start, end))
        if name == "permute":
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            dims = [int(d) % nd for d in kwargs.get("dims", dims)]
            if dims[0] != 0:
                raise ValueError(f"model: {where} moves the batch dimension; the closed form keeps the batch first "
                                 "(use batch_first=True layouts)")
            return _index_map(s, lambda t: t.permute(*dims))
        if name == "transpose":
            a, b = (_norm_dim(d, nd, where) for d in (rest[0] if rest else kwargs["dim0"],
                                                       rest[1] if len(rest) > 1 else kwargs["dim1"]))
            return _index_map(s, lambda t: t.transpose(a, b))
        if name == "unsqueeze":
            d = _norm_dim(rest[0] if rest else kwargs["dim"], nd + 1, where)
            return _index_map(s, lambda t: t.unsqueeze(d))
        if name == "squeeze":
            if not rest and "dim" not in kwargs:
                raise _unsupported(where, "squeeze without dim")
            d = _norm_dim(rest[0] if rest else kwargs["dim"], nd, where)
            return _index_map(s, lambda t: t.squeeze(d))
        if name == "expand":
            sizes = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
            if int(sizes[0]) not in (-1, s.mean.shape[0]):
                raise ValueError(f"model: {where} expands the batch dimension; the closed form keeps the batch first")
            tail = tuple(sizes[1:])
            return _index_map(s, lambda t: t.expand(t.shape[0], *tail))
        if name in ("chunk", "split"):
            arg = rest[0] if rest else kwargs.get("chunks", kwargs.get("split_size_or_sections"))
            d = _norm_dim(kwargs.get("dim", rest[1] if len(rest) > 1 else 0), nd, where)
            parts = getattr(s.mean, name)(arg, d)
            return tuple(_index_map(s, lambda t, i=i: getattr(t, name)(arg, d)[i]) for i in range(len(parts)))
        if name in ("mean", "sum"):
            dims = kwargs.get("dim", rest[0] if rest else None)
            if dims is None:
                raise ValueError(f"model: {where} reduces over the batch dimension; give dim")
            dims = tuple(_norm_dim(d, nd, where) for d in (dims if isinstance(dims, (tuple, list)) else (dims,)))
            keep = bool(kwargs.get("keepdim", rest[1] if len(rest) > 1 else False))
            cnt = math.prod(s.mean.shape[d] for d in dims)
            if name == "sum":
                return _linmap(s, lambda t: t.sum(dims, keep), lambda t: t.sum(dims, keep))
            return _linmap(s, lambda t: t.mean(dims, keep), lambda t: t.sum(dims, keep) / (cnt * cnt))
        if name in ("relu", "sigmoid", "tanh"):
            return self.elementwise(where, getattr(torch, name), s)
        if name == "softmax":
            return _softmax(s, _norm_dim(kwargs.get("dim", rest[0] if rest else -1), nd, where))
        raise _unsupported(where, f"Tensor.{name}")

    # ---------------------------------------------------------------- recurrent layers
    def recurrent(self, path, m, s, extra, kwargs):
        if any(a is not None for a in extra) or any(v is not None for v in kwargs.values()):
            raise _unsupported(path, f"{type(m).__name__} with an initial state")
        try:
            from memcim.analysis.recurrent import propagate_recurrent
        except ImportError:
            raise ValueError(f"model: layer {path} ({type(m).__name__}) is not supported by the closed form "
                             "(memcim.analysis.recurrent is not available); nearest supported alternative: a "
                             "Conv1d over the time steps") from None
        cb = self.units.get(path, {})

        def make_step(layer):
            key = layer.name if layer.name in cb else next(
                (k for k in sorted(cb, key=len, reverse=True) if str(layer.name).endswith(k)), None)
            if key is None:
                key = next((k for k, u in cb.items() if tuple(u.weight.shape) == tuple(layer.weight.shape[:2])
                            and torch.equal(u.weight.detach().to(torch.float64).reshape(layer.weight.shape),
                                            layer.weight.detach().to(torch.float64))), layer.name or id(layer))
            step = self._step(path, key, layer.weight, layer, False)
            return step

        mode = "diagonal" if self.cov == "diagonal" else "lowrank"
        st = mo.Moments(s.mean, s.var, mode, None, s.fac, s.nonzero)
        # the shared programming noise of the gate matrices is tracked with `rank` latents per gate unit
        # (recurrent.py; rank 2 misses ~10 % of mnist-lstm-row's MSE, rank 4 ~5 %): the walker's rank, at most 8
        res = propagate_recurrent(m, st, make_step, path=path, rank=max(2, min(int(self.rank), 8)))

        def conv(v, state=False):
            if isinstance(v, mo.Moments):
                k = 0 if v.factors is None else v.factors.shape[1]
                return GraphState(v.mean, v.var, v.factors, self.fresh(k), v.nonzero, False, layer_first=state)
            if isinstance(v, (tuple, list)):
                return type(v)(conv(u, state) for u in v)
            return v

        out = conv(res[0]) if isinstance(res, tuple) and len(res) == 2 else conv(res)
        if isinstance(res, tuple) and len(res) == 2:
            out = (out, conv(res[1], state=True))
        if isinstance(out, GraphState):
            return out, None
        return out


# ------------------------------------------------------------------------------------ entry

def _units(analog: nn.Module | None) -> dict:
    """{module path: {matrix key: analog unit}} of a converted model."""
    if analog is None:
        return {}
    from memcim.nn.analog import AnalogConv2d, AnalogLinear, AnalogModule

    out = {}
    for name, mod in analog.named_modules():
        if isinstance(mod, AnalogModule):
            out[name] = dict(mod.crossbars.items())
        elif isinstance(mod, (AnalogLinear, AnalogConv2d)):
            out[name] = {"weight": mod}
    return out


def predict_graph(model: nn.Module, x, hw=None, *, calib_data=None, cov: str = "lowrank", rank: int = mo.DEFAULT_RANK,
                  max_factors: int = 64, full_below: int = mo.DEFAULT_FULL_BELOW, full_linear: int = 4096,
                  act_method: str = "taylor", taylor_order: int = 2, dtype: torch.dtype = torch.float64,
                  batch_chunk: int | None = None, on_crossbar=None, power: bool = False, t: float | None = None,
                  fold_bn: bool = False, full_forks: bool = False) -> mo.Prediction:
    """Closed-form output mean, variance and MSE of a module graph on crossbars (see the module docstring).

    Called by :func:`memcim.analysis.predict.predict` for models that are not plain ``nn.Sequential``
    stacks, which passes its parameters on (``full_forks`` included): with ``full_forks=True`` the
    input of every ``TransformerEncoderLayer`` has its residual made explicit (one factor per unit), so
    the attention and feed-forward branches stay correlated with the skip path through it (the
    ``J_ii r_i`` terms); exact for that fork, about 2x the time on mnist-vit-tiny.

    ``model`` may be digital (``hw`` required; ``calib_data``
    calibrates the ADCs as :func:`memcim.nn.analog.convert_to_analog` does) or converted (its layers'
    hardware and calibration are used when ``hw`` is None).

    Returns
    -------
    :class:`memcim.analysis.moments.Prediction` (``layers``: one entry per crossbar matrix).
    """
    from memcim.config import HardwareConfig, resolve_config
    from memcim.nn.analog import AnalogModule, analog_layers, calibrate, convert_to_analog, convert_to_digital

    if power:
        raise ValueError("power: the read-power prediction is available for nn.Sequential models only; "
                         "use power=False for a module graph")
    if fold_bn:
        raise ValueError("fold_bn: BatchNorm folding is for nn.Sequential models only; use fold_bn=False")
    if hw is not None and not isinstance(hw, (HardwareConfig, str)):
        raise ValueError(f"hw: a module graph takes one HardwareConfig or preset name (got {type(hw).__name__}); "
                         "for per-layer hardware convert it with convert_to_analog(..., overrides=) and pass hw=None")
    hwc = resolve_config(hw) if hw is not None else None
    converted = bool(analog_layers(model)) or any(isinstance(m, AnalogModule) for m in model.modules())
    xt = mo._check_x(x).to(dtype)
    if converted:
        analog = model
        if calib_data is not None:
            analog = copy.deepcopy(model)
            calibrate(analog, torch.as_tensor(calib_data).to(next(model.parameters()).dtype))
        digital = convert_to_digital(model)
    else:
        if hwc is None:
            raise ValueError("hw: a HardwareConfig (or a preset name) is required for a digital model")
        digital = model
        analog = None
        if calib_data is not None:
            cd = torch.as_tensor(np.asarray(calib_data) if not isinstance(calib_data, torch.Tensor) else calib_data)
            analog = convert_to_analog(model, hwc, calib_data=cd.to(next(model.parameters()).dtype))
    digital = copy.deepcopy(digital).to(dtype).eval()
    gm = trace_model(digital)
    walker = _Graph(gm, _units(analog), hwc, t, None, cov=cov, rank=rank, max_factors=max_factors,
                    full_below=full_below, full_linear=full_linear, act_method=act_method,
                    taylor_order=taylor_order, on_crossbar=on_crossbar, dtype=dtype, full_forks=full_forks)
    bc = batch_chunk or (xt.shape[0] if cov != "exact" else max(1, min(xt.shape[0], 8)))
    means, vars_ = [], []
    for s0 in range(0, xt.shape[0], bc):
        xb = xt[s0:s0 + bc]
        try:
            st = walker.run(xb)
        except RuntimeError as e:
            if not any(w in str(e) for w in ("size", "shape", "match", "dimension")):
                raise
            raise ValueError(f"x: shape {tuple(xt.shape)} does not fit the model ({str(e).splitlines()[0][:160]})") from None
        means.append(st.mean.detach())
        vars_.append(st.var.detach())
    b = xt.shape[0]
    mean, var = torch.cat(means).reshape(b, -1), torch.cat(vars_).reshape(b, -1)
    with torch.no_grad():
        ref = digital(xt)
    if isinstance(ref, (tuple, list)):
        ref = ref[0]
    ref = ref.reshape(b, -1).to(dtype)
    per = var + (mean - ref) ** 2
    times = [lh.t for _, lh in walker.order]
    cfg = {"hardware": [lh.hw.name for _, lh in walker.order], "cov": cov, "rank": rank, "act_method": act_method,
           "taylor_order": taylor_order, "batch": int(b), "fold_bn": False, "t": times[0] if times else None,
           "compensation": [lh.hw.compensation.drift for _, lh in walker.order], "graph": True}
    return mo.Prediction(mean, var, ref, per, float(per.mean()), float(per.max(1).values.mean()), power=None,
                         config=cfg, layers=[dict(lh.summary(), layer=name) for name, lh in walker.order])
