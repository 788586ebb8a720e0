"""MemSE benchmark: analytic MSE prediction vs the Monte Carlo needed for the same accuracy.

Set-up (paper 001, Sec. V-A): the small CNN (mnist-cnn-small reference model: 2-4-8-16-16
filters, MNIST zero-padded to 32x32), batch of 64 test inputs, sigma = 0.01 S, N = 128. The Monte
Carlo peer is the Monte Carlo of record: chips through memcim's hardware simulator (memcim.nn analog
layers on memcim.simulate chips, float32, the one chips loop memcim.nn.evaluate.chip_outputs). The
number of chips needed to be within 2 % of the true MSE 98 % of the time is derived from the
per-chip MSE spread of a pilot run (500 chips): T = (z_0.99 * CV / 0.02)^2. Then T chips are run, in
8 chunks, each chunk followed by timings of the closed form (both sides in process CPU time, one thread,
interleaved so they see the same machine load), and the ratio is reported in the same run:

* ``speedup_standalone``: MC CPU time for T chips / closed form's median time, the closed form mapping
  every layer itself (as a first call does) and computing the noise-free reference output;
* ``speedup_standalone_old``: the same for the closed form at revision OLD_REVISION (its moments.py and
  predict.py loaded from git, see bench_predict_revisions.py), timed in the same chunks;
* ``speedup_shared_mapping``: the same with the closed form given the plans of an earlier call
  (``plans=``): the mapping is counted for neither side (the MC maps once per call of
  monte_carlo_simulator, i.e. once per chunk of hundreds of chips, < 0.1 % of its time).

The floor (``floor``), measured in the same chunks: the minimal torch work any low-rank moment propagation of
this kind must do on this network, as a bare op sequence on the tensors of the predictor's own states (its
factor counts per layer; :func:`floor_program`): the mean pass, one convolution of the factor tensor per layer,
the channel-local factors' convolutions, the crossbar variance products, the new shared-noise factors (patch
Gram matrix, top eigenvectors, projection), the activations' and pooling's elementwise ops, the full
covariance's products once the maps are small, the reference forward pass, and (standalone) the weights' level
rounding. Reported: predict/floor, (MC time at precision)/floor (the best speed-up this method could reach),
the floor by group, the torch calls of both, the cost of one trivial torch call times the prediction's calls
(its per-call overhead), and torch.profiler's events per prediction with the self CPU time by op group.

Also: accuracy of each covariance mode against that MC, the prediction's state memory, a cProfile of the
default prediction, the torch calls one prediction makes (``torch_calls``: every call through torch's function
dispatch, tensor methods and operators included, counted with a TorchFunctionMode), and its time vs network
width and depth. Single thread for both sides.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_memse.py [--quick]`` (writes bench/results/bench_memse.json).
"""
from __future__ import annotations

import cProfile
import io
import math
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from memcim.analysis.memse_sim import monte_carlo_simulator, trials_needed
from memcim.analysis.moments import DEFAULT_RANK, CrossbarLayer, parse_model, predict_mse, propagate
from memcim.data.datasets import load_dataset
from memcim.io import provenance, write_json
from memcim.nn.loading import load_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_predict_revisions import installed, load_revision  # noqa: E402
from bench_predict_scaling import covariance_columns, predictor_states  # noqa: E402

#: the closed form before issue 17 item 3's fourth pass (d4c7deb: after the third pass), timed against the same
#: Monte Carlo in the same run
OLD_REVISION = "d4c7deb"


def cpu_time(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def best_time(fn, reps=5):
    ts = []
    for _ in range(reps):
        t, out = cpu_time(fn)
        ts.append(t)
    return min(ts), out


def state_bytes(layers, x, **kw):
    _, states = propagate(layers, x, return_all=True, **kw)
    peak = 0
    for s in states:
        n = sum(t.numel() * t.element_size() for t in (s.mean, s.var, s.cov, s.factors, s.local,
                                                        getattr(s, "resid", None)) if t is not None)
        peak = max(peak, n)
    return peak


def torch_calls(fn) -> dict:
    """The torch calls ``fn()`` makes (functions, tensor methods, operators and attribute reads that go through
    torch's function dispatch), by name: the per-call overhead the small tensors of a prediction pay."""
    import collections

    from torch.overrides import TorchFunctionMode

    class _Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.n = collections.Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.n[getattr(func, "__name__", str(func))] += 1
            return func(*args, **(kwargs or {}))

    with _Count() as c:
        fn()
    attrs = sum(v for k, v in c.n.items() if k in ("__get__", "__set__"))
    return {"total": int(sum(c.n.values())), "attribute_reads": int(attrs),
            "top": {k: int(v) for k, v in c.n.most_common(12)}}


def profile_rows(fn, reps: int = 5, top: int = 15) -> list:
    """cProfile of ``reps`` calls: the ``top`` functions by own time, with their share of the total."""
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(reps):
        fn()
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    total = st.total_tt
    rows = sorted(((v[2], v[3], f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in st.stats.items()), reverse=True)
    return [{"function": name, "tottime_share": tt / total, "cumtime_share": ct / total} for tt, ct, name in rows[:top]]


# ----------------------------------------------------------------------------------------------- the floor
def _floor_local_conv(loc, wq, conv):
    """Channel-local factors (B, r, C, H, W) through a convolution: the faster (timed here, once) of one grouped
    convolution (groups = C) and one single-channel convolution per input channel (both bit-identical: no sum
    over channels). Returns (closure, name)."""
    b, r, c, h, w = loc.shape
    cout = wq.shape[0]
    wg = wq.transpose(0, 1).reshape(c * cout, 1, *wq.shape[2:]).contiguous()
    wt = [wq[:, ci:ci + 1].contiguous() for ci in range(c)]
    lflat = loc.reshape(b * r, c, h, w)

    def grouped():
        return conv(lflat, wg, groups=c)                                  # (B r, C Cout, Ho, Wo)

    lt = [loc[:, :, ci].reshape(b * r, 1, h, w).contiguous() for ci in range(c)]

    def loop():
        return [conv(t, wc) for t, wc in zip(lt, wt)]
    tg = min(cpu_time(grouped)[0] for _ in range(3))
    tl = min(cpu_time(loop)[0] for _ in range(3))
    return (grouped, "grouped") if tg <= tl else (loop, "per-channel")


def floor_program(layers, states, x, rank: int) -> tuple[list, dict]:
    """The minimal torch work of a low-rank moment propagation of this network with the shapes the predictor
    uses (``states``: :func:`bench_predict_scaling.predictor_states` of the same call; state ``i`` is layer
    ``i``'s input), as bare op sequences on those states' tensors, with every frozen operand (squared weights,
    a small map's dense matrix) prepared once. Per layer:

    * crossbar convolution: the mean (one convolution with the bias, or for the deterministic input one
      unfold and one product), the dense factors (one convolution of the (B K, C, H, W) factor tensor), the
      channel-local factors (one grouped convolution or C single-channel ones, whichever is faster), the
      variance (the residual through the squared weights, E[x^2] through the noise, the factors' sum of
      squares), and the new shared-noise factors (unfold the mean, the smaller patch Gram matrix, its top
      ``rank`` eigenvectors as the predictor finds them, the projection); a full covariance: its two products
      with the map's dense matrix plus the patch Gram of the shared noise on the channel-diagonal blocks;
    * linear: the mean (addmm), the covariance's two products with the weights, the noise on its diagonal;
    * softplus: softplus, sigmoid, the Taylor mean and variance (addcmul), the factors, local factors and
      residual scaled by the slope; a full covariance scaled by the slope's outer product, its diagonal set;
    * pooling: the strided-add block mean of the mean, the residual, the factors and the local factors, and
      the variance; a full covariance: two products with the pooling matrix;
    * the switch to a full covariance: F^T F, the local factors' diagonal blocks, the residual's diagonal;
    * the noise-free reference output (one forward pass), and for a standalone prediction the mapping's
      level rounding of every weight (``mapping``).

    Returns ([(group, closure), ...] in network order, info)."""
    from functools import partial

    import torch.nn.functional as F

    from memcim.analysis import moments as mo

    prog, info = [], {"local_conv": []}
    s2 = 1e-6                                             # the per-weight noise variance (its value costs nothing)

    def layer_prog(l, si, so, prog):       # one scope per layer: the closures bind this layer's operands
        if isinstance(l, mo.CrossbarLayer):
            wq = l.weight
            wsq = wq * wq
            if l.kind == "linear":
                mean, cov, b_ = si.mean, si.cov, l.bias
                prog.append(("mean", lambda m=mean, w=wq, b_=b_: torch.addmm(b_, m, w.t())))
                if cov is not None:
                    def lin_cov(c=cov, w=wq, m=mean, v=si.var):
                        c2 = torch.matmul(torch.matmul(w, c), w.t())
                        noise = torch.addcmul(v, m, m).sum(1, keepdim=True).mul_(s2)
                        torch.diagonal(c2, dim1=1, dim2=2).add_(noise)
                        return c2
                    prog.append(("covariance", lin_cov))
                elif si.factors is not None:
                    prog.append(("factors", lambda f=si.factors, w=wq: f @ w.t()))
                    prog.append(("variance", lambda v=si.var, m=si.mean, w2=wsq: (v @ w2.t()).add_(
                        torch.addcmul(v, m, m).sum(1, keepdim=True), alpha=s2)))
                return
            conv = partial(F.conv2d, stride=l.stride, padding=l.padding, dilation=l.dilation)
            cout, cin, kh, kw = wq.shape
            ones = torch.ones(1, cin, kh, kw, dtype=wq.dtype)
            unf = partial(mo._unfold, kernel=(kh, kw), dilation=l.dilation, padding=l.padding, stride=l.stride)
            ho, wo = so.mean.shape[2:]
            det = si.factors is None and si.local is None and si.cov is None and not bool(torch.any(si.var != 0))
            if si.cov is not None:                       # a full covariance: its products with the map's matrix
                d, dout = si.cov.shape[1], so.mean[0].numel()
                a = conv(torch.eye(d, dtype=wq.dtype).reshape(d, *si.mean.shape[1:]), wq).reshape(d, dout)
                bsz, p = si.mean.shape[0], ho * wo

                def conv_cov(c=si.cov, a=a, m=si.mean, v=si.var, bsz=bsz, d=d, dout=dout, p=p):
                    c2 = a.t() @ (c.reshape(bsz * d, d) @ a).reshape(bsz, d, dout)
                    u = unf(m)
                    nsp = u.transpose(1, 2) @ u
                    torch.diagonal(c2.view(bsz, cout, p, cout, p), dim1=1, dim2=3).add_(nsp.unsqueeze(-1), alpha=s2)
                    return torch.diagonal(c2, dim1=1, dim2=2), conv(torch.addcmul(v, m, m), ones)
                prog.append(("mean", lambda m=si.mean, w=wq, b_=l.bias: conv(m, w, b_)))
                prog.append(("covariance", conv_cov))
                return
            wf, b3 = wq.reshape(cout, -1), l.bias.reshape(-1, 1)
            r = so.local.shape[1] if so.local is not None else rank
            cell: dict = {}                              # the deterministic input's patches, shared
            if det:
                def patches(m=si.mean, cell=cell):
                    cell["u"] = unf(m)
                prog.append(("new_factors", patches))
                prog.append(("mean", lambda wf=wf, b3=b3, cell=cell: torch.matmul(wf, cell["u"]).add_(b3)))
                prog.append(("variance", lambda cell=cell: (cell["u"] * cell["u"]).sum(1).mul_(s2)))
            else:
                prog.append(("mean", lambda m=si.mean, w=wq, b_=l.bias: conv(m, w, b_)))
                b, k0 = si.mean.shape[0], 0 if si.factors is None else si.factors.shape[1]
                if si.factors is not None:
                    ff = si.factors.reshape(b * k0, *si.factors.shape[2:])
                    prog.append(("factors", lambda ff=ff, w=wq: conv(ff, w)))
                if si.local is not None:
                    fn, name = _floor_local_conv(si.local, wq, conv)
                    info["local_conv"].append({"layer": l.name, "implementation": name})
                    prog.append(("factors", fn))
                fo = torch.randn(b, k0 + (0 if si.local is None else si.local.shape[1] * si.shape[0]), cout, ho, wo,
                                 dtype=wq.dtype)
                res = si.resid if si.resid is not None else si.var

                def conv_var(res=res, w2=wsq, m=si.mean, v=si.var, fo=fo):
                    out = conv(res, w2).add_((fo * fo).sum(1))
                    return out.add_(conv(torch.addcmul(v, m, m), ones), alpha=s2)
                prog.append(("variance", conv_var))
            if so.local is not None or so.factors is not None:      # the new shared-noise factors
                sv = torch.full((1, 1, cout, 1, 1), s2 ** 0.5, dtype=wq.dtype)

                def new_factors(m=si.mean, r=r, sv=sv, ho=ho, wo=wo, cell=cell, det=det):
                    u = cell["u"] if det else unf(m)
                    b = u.shape[0]
                    if u.shape[2] <= u.shape[1]:
                        gram = u.transpose(1, 2) @ u
                        vec = mo._top_eig_spatial(gram, r)
                        lam = ((gram @ vec) * vec).sum(1).clamp_min_(0).sqrt_()
                        sp = (vec * lam.unsqueeze(1)).transpose(1, 2)
                    else:
                        vec = mo._top_eig_spatial(u @ u.transpose(1, 2), r)
                        sp = vec.transpose(1, 2) @ u
                    return sv * sp.reshape(b, r, 1, ho, wo)
                prog.append(("new_factors", new_factors))
        elif isinstance(l, mo.PoolLayer):
            kh, kw = l.kernel
            if si.cov is not None:
                d, dout = si.cov.shape[1], so.mean[0].numel()
                a = l.apply(torch.eye(d, dtype=si.mean.dtype).reshape(d, *si.mean.shape[1:])).reshape(d, dout)
                bsz = si.mean.shape[0]
                prog.append(("pool", lambda m=si.mean: mo._block_mean(m, kh, kw)))
                prog.append(("covariance", lambda c=si.cov, a=a, bsz=bsz, d=d, dout=dout:
                             a.t() @ (c.reshape(bsz * d, d) @ a).reshape(bsz, d, dout)))
            else:
                res = si.resid if si.resid is not None else si.var

                def pool(m=si.mean, res=res, f=si.factors, lo=si.local):
                    v = mo._block_mean(res, kh, kw).mul_(1.0 / (kh * kw))
                    out = [mo._block_mean(m, kh, kw)]
                    for t in (f, lo):
                        if t is not None:
                            q = mo._block_mean(t, kh, kw)
                            v = v.add_((q * q).sum(1))
                            out.append(q)
                    return out, v
                prog.append(("pool", pool))
        elif isinstance(l, mo.PadLayer):
            prog.append(("pad", lambda m=si.mean, p=l.pad: F.pad(m, p)))
        elif isinstance(l, mo.FlattenLayer):
            prog.append(("flatten", lambda m=si.mean, v=si.var: (m.reshape(m.shape[0], -1), v.reshape(v.shape[0], -1))))
        elif l.kind == "softplus" and l.beta == 1.0:
            def softplus(mu=si.mean, var=si.var, f=si.factors, lo=si.local, res=si.resid, cov=si.cov):
                fm, s = F.softplus(mu), torch.sigmoid(mu)
                d2 = torch.addcmul(s, s, s, value=-1.0)
                m = torch.addcmul(fm, var, d2, value=0.5)
                sl2 = s * s
                v = sl2 * var
                out = [m, v]
                if cov is not None:
                    sf = s.reshape(s.shape[0], -1)
                    c2 = cov * sf.unsqueeze(-1) * sf.unsqueeze(-2)
                    torch.diagonal(c2, dim1=1, dim2=2).copy_(v.reshape(v.shape[0], -1))
                    out.append(c2)
                for t in (f, lo):
                    if t is not None:
                        out.append(t * s.unsqueeze(1))
                if res is not None:
                    out.append(res * sl2)
                return out
            prog.append(("activation", softplus))
        else:
            prog.append(("activation", lambda l=l, mu=si.mean, var=si.var: mo.activation_moments(l.kind, mu, var,
                                                                                                 beta=l.beta)))
        if si.cov is None and so.cov is not None and not isinstance(l, mo.CrossbarLayer):
            # the switch to a full covariance after this layer: F^T F, the local blocks, the residual's diagonal
            b, d = so.mean.shape[0], so.mean[0].numel()
            k = 0 if si.factors is None else si.factors.shape[1]
            ff = torch.randn(b, k, d, dtype=so.mean.dtype) if k else None
            lf = None
            if si.local is not None:
                c, rl = so.mean.shape[1], si.local.shape[1]
                lf = torch.randn(b, c, rl, d // c, dtype=so.mean.dtype)

            def to_full(ff=ff, lf=lf, res=so.var.reshape(b, -1), b=b, d=d):
                low = ff.transpose(1, 2) @ ff if ff is not None else res.new_zeros(b, d, d)
                if lf is not None:
                    c, p = lf.shape[1], lf.shape[3]
                    blocks = lf.transpose(2, 3) @ lf
                    torch.diagonal(low.view(b, c, p, c, p), dim1=1, dim2=3).add_(blocks.permute(0, 2, 3, 1))
                torch.diagonal(low, dim1=1, dim2=2).add_(res)
                return low
            prog.append(("to_full", to_full))

    for i, l in enumerate(layers):
        layer_prog(l, states[i], states[i + 1], prog)
    prog.append(("reference", lambda: mo.reference_output(layers, x)))
    return prog, info


def mapping_floor(layers, levels: int, gmax: float) -> list:
    """The mapping's minimal work per crossbar layer: the layer's scale from max |w| and the level rounding of
    its weights (one conductance per weight; uniform programming noise needs no per-weight variance)."""
    from memcim.analysis import moments as mo

    out = []
    for l in mo.crossbar_layers(layers):
        def mp(w=l.weight):
            c = gmax / w.abs().max()
            return torch.round(w * (c * levels / gmax)).mul_(gmax / (levels * c))
        out.append(("mapping", mp))
    return out


def run_program(prog) -> None:
    for _, fn in prog:
        fn()


def program_groups(prog, reps: int = 5) -> dict:
    """Per group of a floor program: min over ``reps`` of its closures' CPU time [s], run group by group."""
    groups: dict = {}
    for g, fn in prog:
        groups.setdefault(g, []).append(fn)
    return {g: min(cpu_time(lambda fs=fs: [f() for f in fs])[0] for _ in range(reps)) for g, fs in groups.items()}


def call_cost(reps: int = 2000) -> dict:
    """Process CPU time of one trivial torch call (an add of two 1-element tensors; a reshape) [s]: the fixed
    cost every call of a prediction pays whatever its size."""
    a, b = torch.ones(1), torch.ones(1)

    def adds():
        for _ in range(reps):
            a + b

    def reshapes():
        for _ in range(reps):
            a.reshape(1, 1)
    return {"add_s": min(cpu_time(adds)[0] for _ in range(5)) / reps,
            "reshape_s": min(cpu_time(reshapes)[0] for _ in range(5)) / reps}


#: torch.profiler op names (without ``aten::`` and the leading/trailing underscores) -> the profile's groups
_OP_GROUPS = {
    "matmul": {"bmm", "mm", "addmm", "matmul", "baddbmm", "einsum", "linear", "addbmm", "dot", "mv", "addmv"},
    "elementwise": {"mul", "add", "sub", "rsub", "div", "softplus", "sigmoid", "erf", "erfc", "exp", "sqrt", "clamp",
                    "clamp_min", "clamp_max", "abs", "pow", "round", "neg", "reciprocal", "rsqrt", "where", "addcmul",
                    "addcdiv", "square", "log", "log1p", "tanh", "relu", "maximum", "minimum", "lerp", "fill",
                    "zero", "copysign", "special_ndtr", "sign", "floor", "ceil", "remainder", "floor_divide"},
    "copy/layout": {"copy", "clone", "contiguous", "cat", "stack", "to_copy", "to", "pad", "constant_pad_nd", "index",
                    "index_put", "gather", "scatter", "flip", "diag_embed", "masked_fill", "masked_select", "repeat",
                    "tril", "triu", "index_select", "nonzero"},
    "reduction": {"sum", "mean", "amax", "amin", "max", "min", "any", "all", "norm", "sort", "topk", "argmax",
                  "aminmax", "prod", "linalg_vector_norm"},
    "sync/compare": {"eq", "ne", "gt", "lt", "ge", "le", "isfinite", "isnan", "is_nonzero", "item",
                     "local_scalar_dense", "equal", "logical_and", "logical_or", "logical_not"},
}


def _op_group(name: str) -> str:
    """The profile group of a torch.profiler event name."""
    n = name.split("::")[-1].strip("_")
    if "conv" in n or n in ("im2col", "col2im"):
        return "convolution"
    if "linalg" in n and "norm" not in n or n in ("geqrf", "orgqr", "ormqr"):
        return "eigen/qr"
    for g, names in _OP_GROUPS.items():
        if n in names:
            return g
    return "view/alloc/other"     # views, reshapes, selects, empty/zeros, detach, resize: metadata and allocation


def op_profile(fn, reps: int = 5) -> dict:
    """torch.profiler over ``reps`` calls of ``fn``: events per call (every aten op, nested ones included, and the
    top-level ones: the calls torch dispatches), and the self CPU time by op group (share of all ops' self time;
    the profiler's own per-op cost inflates the small ops, so the shares, not the times, are the figure)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
    ev = prof.events()
    groups: dict = {}
    total = 0.0
    counts: dict = {}
    for e in prof.key_averages():
        g = _op_group(e.key)
        groups[g] = groups.get(g, 0.0) + e.self_cpu_time_total
        counts[g] = counts.get(g, 0) + e.count
        total += e.self_cpu_time_total
    return {"events_per_call": len(ev) / reps,
            "top_level_events_per_call": sum(1 for e in ev if e.cpu_parent is None) / reps,
            "self_cpu_share_by_group": {g: v / total for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "ops_per_call_by_group": {g: counts[g] / reps for g in sorted(counts, key=lambda g: -groups[g])}}


def main(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seed = 0
    sigma, levels, gmax = 0.01, 128, 3.0
    net = load_model("mnist-cnn-small").eval()
    ds = load_dataset("mnist", "test", limit=64)
    x, y = ds.x, ds.y
    res = {"config": {"model": "mnist-cnn-small", "batch": 64, "sigma": sigma, "gmax": gmax, "levels": levels,
                      "threads": 1}, "provenance": provenance(seed=seed)}
    # --- Monte Carlo: a pilot for the per-chip spread, then the T chips it asks for, interleaved with the closed form
    pilot = monte_carlo_simulator(net, x, sigma=sigma, gmax=gmax, levels=levels, trials=200 if quick else 500,
                                  seed=seed, labels=y, progress=False)
    cv = float(pilot.trial_mse.std(ddof=1) / pilot.trial_mse.mean())
    t_need = trials_needed(pilot.trial_mse, 0.02, 0.98)
    layers32, x32 = parse_model(net, torch.float32), x.to(torch.float32)
    kw = dict(sigma=sigma, gmax=gmax, levels=levels, power=False, dtype=torch.float32)
    p_def = predict_mse(layers32, x32, **kw)                      # warm-up; its plans serve the shared-mapping timing
    plans = p_def.plans
    # the floor: the bare op sequence of this propagation on the predictor's own state shapes
    states = predictor_states(layers32, x32, **kw)
    prog, floor_info = floor_program(layers32, states, x32, rank=DEFAULT_RANK)
    prog_alone = mapping_floor(layers32, levels, gmax) + prog
    run_program(prog_alone)
    old = load_revision(OLD_REVISION)
    with installed(old):
        layers_old = old["moments"].parse_model(net, torch.float32)
        p_old = old["moments"].predict_mse(layers_old, x32, **kw)

    def predict_old():
        with installed(old):
            return old["moments"].predict_mse(layers_old, x32, **kw)
    chunks = 4 if quick else 8
    per = math.ceil(t_need / chunks)
    mc_cpu, trial_mse, accs = 0.0, [], []
    t_alone, t_shared, t_old, t_floor, t_floor_core = [], [], [], [], []
    for c in range(chunks):
        dt_mc, mc = cpu_time(lambda: monte_carlo_simulator(net, x, sigma=sigma, gmax=gmax, levels=levels, trials=per,
                                                           seed=seed + 2 + 1000 * c, labels=y, progress=False))
        mc_cpu += dt_mc
        trial_mse.extend(mc.trial_mse.tolist())
        accs.extend(mc.accuracy.tolist())
        for _ in range(2):
            t_alone.append(cpu_time(lambda: predict_mse(layers32, x32, **kw))[0])
            t_shared.append(cpu_time(lambda: predict_mse(layers32, x32, **kw, plans=plans))[0])
            t_old.append(cpu_time(predict_old)[0])
            t_floor.append(cpu_time(lambda: run_program(prog_alone))[0])
            t_floor_core.append(cpu_time(lambda: run_program(prog))[0])
    tm = np.asarray(trial_mse)
    n_run = tm.size
    mc_s = mc_cpu * t_need / n_run                               # CPU time of exactly T chips
    mse_mc, se_mc = float(tm.mean()), float(tm.std(ddof=1) / math.sqrt(n_run))
    alone, shared, before = float(np.median(t_alone)), float(np.median(t_shared)), float(np.median(t_old))
    res["monte_carlo_simulator"] = {"pilot_chips": int(pilot.trial_mse.size), "per_chip_mse_cv": cv,
                                    "trials_needed_2pct_98pct": t_need, "chips_run": int(n_run),
                                    "cpu_s_per_chip": mc_cpu / n_run, "cpu_s_at_precision": mc_s,
                                    "mse_mean": mse_mc, "mse_mean_stderr": se_mc,
                                    "accuracy": float(np.mean(accs)),
                                    "clean_accuracy": float((net(x).argmax(1) == y).double().mean())}
    res["closed_form_vs_mc"] = {
        "predict_s_median_standalone": alone, "predict_s_median_shared_mapping": shared,
        "predict_s_min_standalone": float(min(t_alone)), "predict_s_min_shared_mapping": float(min(t_shared)),
        "speedup_standalone": mc_s / alone, "speedup_shared_mapping": mc_s / shared,
        "old_revision": OLD_REVISION, "predict_s_median_standalone_old": before, "speedup_standalone_old": mc_s / before,
        "mse_predicted_old": p_old.mse_mean,
        "predict_in_chips_standalone": alone / (mc_cpu / n_run),
        "mse_predicted": p_def.mse_mean, "rel_err_vs_mc": (p_def.mse_mean - mse_mc) / mse_mc,
        "z_vs_mc": (p_def.mse_mean - mse_mc) / se_mc,
        "includes": {"standalone": "closed form: mapping of every layer, moment propagation, reference output",
                     "shared_mapping": "closed form given the plans (plans=): propagation and reference output",
                     "mc": "T chips through the simulator (programming, reads), its reference output and one "
                           "mapping per chunk of %d chips" % per}}
    fl, flc = float(np.median(t_floor)), float(np.median(t_floor_core))
    cc = call_cost()
    calls_alone = torch_calls(lambda: predict_mse(layers32, x32, **kw))
    calls_floor = torch_calls(lambda: run_program(prog_alone))
    res["floor"] = {
        "definition": "the bare torch op sequence of this low-rank moment propagation on the predictor's own state "
                      "shapes (floor_program: mean pass, one convolution of the dense factor tensor per layer, the "
                      "channel-local factors' convolution, the crossbar variance products, the new shared-noise "
                      "factors' Gram matrix / top eigenvectors / projection, the activations' and pooling's "
                      "elementwise ops, the switch to a full covariance and its products, the reference forward "
                      "pass; 'standalone' adds the mapping's level rounding of every weight), frozen operands "
                      "prepared once, timed interleaved with the prediction in the same chunks",
        "covariance_columns_per_crossbar_layer": [covariance_columns(st) for l, st in zip(layers32, states)
                                                  if isinstance(l, CrossbarLayer)],
        "local_factor_convolution": floor_info["local_conv"],
        "floor_s_median_standalone": fl, "floor_s_min_standalone": float(min(t_floor)),
        "floor_s_median_shared_mapping": flc, "floor_s_min_shared_mapping": float(min(t_floor_core)),
        "predict_over_floor_standalone": alone / fl, "predict_over_floor_shared_mapping": shared / flc,
        "predict_over_floor_standalone_min": float(min(t_alone)) / float(min(t_floor)),
        "mc_at_precision_over_floor": mc_s / fl,
        "mc_at_precision_over_floor_min": mc_s / float(min(t_floor)),
        "floor_allows_1000x": bool(mc_s / fl >= 1000.0),
        "floor_s_by_group": program_groups(prog_alone),
        "torch_calls_floor": calls_floor["total"],
        "torch_calls_predict": calls_alone["total"],
        "call_cost_s": cc,
        "call_overhead_estimate_s": calls_alone["total"] * cc["add_s"],
        "call_overhead_share_of_predict": calls_alone["total"] * cc["add_s"] / alone,
        "profiler_predict_standalone": op_profile(lambda: predict_mse(layers32, x32, **kw)),
        "profiler_floor_standalone": op_profile(lambda: run_program(prog_alone))}
    res["profile_default_prediction"] = profile_rows(lambda: predict_mse(layers32, x32, **kw))
    res["torch_calls"] = {"standalone": calls_alone,
                          "shared_mapping": torch_calls(lambda: predict_mse(layers32, x32, **kw, plans=plans))}
    # --- every covariance mode against the same Monte Carlo
    rows = []
    modes = [("lowrank", torch.float32, {}), ("lowrank", torch.float64, {}), ("diagonal", torch.float32, {}),
             ("lowrank", torch.float32, {"rank": 1}), ("lowrank", torch.float32, {"rank": 2}),
             ("lowrank", torch.float32, {"rank": 8})]
    if not quick:
        modes.append(("exact", torch.float64, {}))
    mse_max_mc = None
    for mode, dt, extra in modes:
        layers = parse_model(net, dt)
        xd = x.to(dt)
        reps = 1 if mode == "exact" else 5
        t, p = best_time(lambda: predict_mse(layers, xd, sigma=sigma, gmax=gmax, levels=levels, cov=mode,
                                             power=False, dtype=dt, **extra), reps)
        mem = state_bytes(layers, xd, sigma=sigma, gmax=gmax, levels=levels, cov=mode, **extra) if mode != "exact" else None
        rows.append({"cov": mode, "dtype": str(dt).replace("torch.", ""), **extra, "cpu_s": t,
                     "speedup_vs_simulator_mc": mc_s / t,
                     "mse_mean": p.mse_mean, "mse_max": p.mse_max,
                     "rel_err_mean_vs_simulator_mc": (p.mse_mean - mse_mc) / mse_mc,
                     "z_vs_simulator_mc": (p.mse_mean - mse_mc) / se_mc, "state_peak_bytes": mem})
    res["prediction"] = rows
    # --- scaling with width and depth (random weights; time of the default prediction)
    scal = []
    xs = torch.rand(64, 1, 32, 32)
    for mult in ([1, 2] if quick else [1, 2, 4, 8]):
        ch = [2 * mult, 4 * mult, 8 * mult, 16 * mult, 16 * mult]
        layers_ = []
        prev = 1
        for c in ch:
            layers_ += [nn.Conv2d(prev, c, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2)]
            prev = c
        m = nn.Sequential(*layers_, nn.Flatten(), nn.Linear(prev, 10))
        L = parse_model(m, torch.float32)
        t, _ = best_time(lambda: predict_mse(L, xs, sigma=sigma, gmax=gmax, power=False, dtype=torch.float32), 3)
        tm, _ = best_time(lambda: monte_carlo_simulator(m, xs, sigma=sigma, gmax=gmax, trials=20, progress=False), 2)
        scal.append({"kind": "cnn width", "channel_multiplier": mult, "predict_s": t, "mc_s_per_trial": tm / 20,
                     "state_peak_bytes": state_bytes(L, xs, sigma=sigma, gmax=gmax)})
    xm = torch.rand(64, 256)
    for depth in ([1, 2, 4] if quick else [1, 2, 4, 8]):
        mods = []
        for _ in range(depth):
            mods += [nn.Linear(256, 256), nn.ReLU()]
        m = nn.Sequential(*mods, nn.Linear(256, 10))
        L = parse_model(m, torch.float32)
        t, _ = best_time(lambda: predict_mse(L, xm, sigma=sigma, gmax=gmax, power=False, dtype=torch.float32), 3)
        tm, _ = best_time(lambda: monte_carlo_simulator(m, xm, sigma=sigma, gmax=gmax, trials=20, progress=False), 2)
        scal.append({"kind": "mlp depth (width 256)", "hidden_layers": depth, "predict_s": t, "mc_s_per_trial": tm / 20,
                     "state_peak_bytes": state_bytes(L, xm, sigma=sigma, gmax=gmax)})
    res["scaling"] = scal
    out = Path(__file__).parent / "results" / "bench_memse.json"
    write_json(out, res)
    mc, cf = res["monte_carlo_simulator"], res["closed_form_vs_mc"]
    print(f"MC through the simulator: CV {cv:.3f} -> T = {t_need} chips for 2 %/98 %; {n_run} run, "
          f"{mc['cpu_s_per_chip'] * 1e3:.2f} ms/chip -> {mc_s:.2f} s at T; MSE {mse_mc:.4g} ± {se_mc:.2g}")
    print(f"closed form: standalone {alone * 1e3:.2f} ms -> {cf['speedup_standalone']:.0f}x; shared mapping "
          f"{shared * 1e3:.2f} ms -> {cf['speedup_shared_mapping']:.0f}x; MSE {p_def.mse_mean:.4g} "
          f"({100 * cf['rel_err_vs_mc']:+.2f} %, z = {cf['z_vs_mc']:+.2f}); before ({OLD_REVISION}) {before * 1e3:.2f} ms "
          f"-> {cf['speedup_standalone_old']:.0f}x")
    print(f"torch calls per prediction: standalone {res['torch_calls']['standalone']['total']}, shared mapping "
          f"{res['torch_calls']['shared_mapping']['total']}; profiler events "
          f"{res['floor']['profiler_predict_standalone']['events_per_call']:.0f} "
          f"({res['floor']['profiler_predict_standalone']['top_level_events_per_call']:.0f} top-level)")
    f_ = res["floor"]
    print(f"floor: standalone {fl * 1e3:.2f} ms (min {f_['floor_s_min_standalone'] * 1e3:.2f}), shared mapping "
          f"{flc * 1e3:.2f} ms; predict/floor {f_['predict_over_floor_standalone']:.2f} (standalone), "
          f"{f_['predict_over_floor_shared_mapping']:.2f} (shared); MC at precision / floor "
          f"{f_['mc_at_precision_over_floor']:.0f}x (the most this method could reach); {f_['torch_calls_floor']} "
          f"torch calls; call overhead ~{100 * f_['call_overhead_share_of_predict']:.0f} % of the prediction")
    print("  floor by group (ms): " + ", ".join(f"{g} {v * 1e3:.2f}" for g, v in f_["floor_s_by_group"].items()))
    print("  predict self CPU by op group: " + ", ".join(
        f"{g} {100 * v:.0f} %" for g, v in f_["profiler_predict_standalone"]["self_cpu_share_by_group"].items()))
    for r in res["profile_default_prediction"][:10]:
        print(f"  {100 * r['tottime_share']:5.1f} %  {r['function']}")
    print(f"{'cov':9s} {'dtype':8s} {'extra':10s} {'cpu ms':>9s} {'vs sim':>8s} {'err mean':>9s} {'state MB':>8s}")
    for r in rows:
        ex = ",".join(f"{k}={r[k]}" for k in ("rank",) if k in r)
        mb = "-" if r["state_peak_bytes"] is None else f"{r['state_peak_bytes'] / 1e6:.1f}"
        print(f"{r['cov']:9s} {r['dtype']:8s} {ex:10s} {r['cpu_s'] * 1e3:9.1f} {r['speedup_vs_simulator_mc']:8.1f} "
              f"{100 * r['rel_err_mean_vs_simulator_mc']:8.1f}% {mb:>8s}")
    for s in scal:
        print(s)
    return res


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
