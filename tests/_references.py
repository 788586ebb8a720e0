"""Independent reference implementations the tests compare memcim against, written once: plain torch
ops that spell out what the optimised code computes."""
import torch


def plain_read(chip, x):
    """A chip's straight-through read value with plain torch ops (ideal wires): the DAC's levels (straight
    through their rounding, the clip's gradient kept), ``u @ (G+ - G-)`` per row tile over that tile's
    scale, times the input scale; no read noise, no ADC. Autograd through it is the straight-through
    gradient."""
    m, hw = chip.mapped, chip.mapped.hw
    gp, gn = chip.g_pos, chip.g_neg
    if m.scheme == "offset":             # one reference column per array, subtracted from its columns
        gn = gn.repeat_interleave(m.tile_cols, dim=-1)
    T, nrt, R, op = gp.shape
    w = (gp - gn).reshape(T, nrt * R, op) / m.scale.to(gp.dtype).repeat_interleave(R, dim=0)
    w = w[:, : m.in_features, : m.out_features]
    xs = x.detach().abs().amax(-1, keepdim=True) if hw.dac.x_range is None else torch.full_like(x[..., :1],
                                                                                                hw.dac.x_range)
    u = x / xs
    if hw.dac.enabled:                   # the DAC's levels, with the gradient of the clip
        u = u.clamp(-1.0 if hw.dac.signed else 0.0, 1.0)
        k = hw.dac.steps
        u = u + (torch.round(u.detach() * k) / k - u.detach())
    return torch.matmul(u, w) * xs


def dense_local_factors(old, loc):
    """The dense factors a state with channel-local factors ``loc`` (B, r, C, H, W) stands for, written out
    entry by entry: ``old`` (B, k0, C, H, W) first, then factor ``k0 + c r + j`` = ``loc[:, j, c]`` on channel
    ``c`` only."""
    b, r, c = loc.shape[:3]
    k0 = 0 if old is None else old.shape[1]
    want = torch.zeros(b, k0 + c * r, *loc.shape[2:], dtype=loc.dtype)
    if old is not None:
        want[:, :k0] = old
    for ci in range(c):
        for j in range(r):
            want[:, k0 + ci * r + j, ci] = loc[:, j, ci]
    return want


def input_and_weight_grads(y, xg, Wg, seed: int):
    """``(x.grad, W.grad)`` of the loss ``sum(y * g)`` for a fixed random ``g`` (float64, ``seed``)."""
    go = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    (y * go).sum().backward()
    return xg.grad, Wg.grad


def assert_same_grads(grads, tol: float = 1e-12):
    """Two reads' ``(x.grad, W.grad)`` pairs agree to ``tol`` relative (to the second's largest entry)."""
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))
