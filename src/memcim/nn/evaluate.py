"""Monte Carlo evaluation of a model on simulated crossbars: accuracy and output MSE over chips.

For each of ``chips`` programmed chips (independent programming noise and stuck devices) the whole
dataset is run once (fresh read noise on every read) and two numbers are recorded: top-1
accuracy and the output mean squared error against the digital model,
``mean over samples and outputs of (y_analog - y_digital)^2``. The summary gives the mean, the
sample standard deviation over chips, a 95 % confidence interval of the mean (Student t) and the
2.5-97.5 % range of the chips themselves (one chip has no interval: ``ci95_mean`` is None).

Data without labels (a user's ``X.npy`` alone) gives the output MSE but no accuracy: the
accuracy entries are then None.

**Over time.** ``evaluate_analog(..., times=[3600, 86400, 3.15e7])`` programs each chip once and
reads the same chip at every time (seconds after programming; :func:`memcim.nn.analog.set_read_time`),
the first read ``device.drift_t0`` always included and always read first, so the ``t0`` numbers
equal those of an evaluation without ``times``. Each time gets its own accuracy and MSE summary;
the per-chip ``values`` line up across times (chip ``c`` is entry ``c`` everywhere).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from memcim.config import HardwareConfig
from memcim.hardware.device import check_time
from memcim.nn.analog import (
    AnalogConv2d,
    AnalogLinear,
    analog_layers,
    conversion_report,
    convert_to_analog,
    digital_mode,
    layer_seed,
    program,
    read_time,
    release_workspace,
)
from memcim.nn.train import predict
from memcim.simulate import ProgrammedChip


@torch.no_grad()
def chip_outputs(model: nn.Module, x: torch.Tensor, hardware: HardwareConfig, *, chips: int, seed: int = 0,
                 overrides: dict | None = None, calib_data: torch.Tensor | None = None, batch_size: int = 1000,
                 dtype: torch.dtype = torch.float32, progress: bool | None = None, desc: str = "chips",
                 on_program=None, chips_per_pass=1, reads: str = "exact"):
    """The one Monte Carlo loop over programmed chips of a model.

    Converts ``model`` once (:func:`memcim.nn.analog.convert_to_analog`), then for each chip ``c``
    programs every analog layer with ``layer_seed(seed, c)`` and yields its outputs on ``x``
    (fresh read noise on every read). :func:`evaluate_analog`, the MemSE Monte Carlo
    (:func:`memcim.analysis.memse_sim.monte_carlo_simulator`), ``memcim mse --preset`` and the
    convex-cim experiment all run this loop.

    Parameters
    ----------
    model : a digital model (it is copied, not changed).
    x : (B, ...) inputs.
    hardware : the crossbar design; ``overrides`` per layer, as in :func:`convert_to_analog`.
    chips : number of chips (>= 1). seed : chip ``c`` is programmed with ``layer_seed(seed, c)``.
    calib_data : model inputs that calibrate the ADC full scales.
    batch_size : inference batch size. dtype : simulation precision of the chips.
    progress : tqdm bar over chips on stderr (default: when stderr is a terminal). desc : its label.
    on_program : optional ``f(c, analog)`` called after chip ``c`` is programmed, before it is read
        (to install hooks, or to apply a designed ADC full scale to the programmed chips).
    chips_per_pass : chips batched through the network in one forward pass (default 1: one chip
        at a time); ``"auto"``: as many as :func:`chips_per_pass_auto` finds room for in
        :func:`memcim.validate.memory_limit`. See *Chips batched* below.
    reads : how a batched pass reads its chips (``chips_per_pass > 1`` only):
        ``"exact"`` (default): each chip keeps its own programmed state and read-noise generator and
        reads its own rows, so chip ``c`` gives exactly the outputs of the one-at-a-time loop;
        ``"stacked"``: the K chips' conductances (exactly those of the loop) are stacked into one
        ``ProgrammedChip`` of ``trials=K`` read by one ``mvm`` call, so its read noise comes from one
        generator shared by the K chips: chip ``c`` equals chip ``c`` of the loop *in distribution*
        (same conductances, independent read noise of the same law), not value by value.

    *Chips batched.* With ``chips_per_pass=K > 1`` chips ``c0 .. c0+K-1`` are programmed exactly as
    the loop programs them (``layer_seed(seed, c)`` per chip) and each input batch runs once with
    the chips as the leading dimension, flattened into the batch: ``(K*B, ...)`` chip-major, so the
    digital modules between analog layers see an ordinary batch and every analog layer reads
    chip ``c``'s rows on chip ``c``. This needs a model whose modules treat the batch rows
    independently and whose analog layers are all :class:`AnalogLinear` / :class:`AnalogConv2d`
    (sequential MLPs and CNNs such as the reference models); any other analog layer (grouped convs,
    LSTM/GRU, attention: their digital math may mix the leading dimension) and ``on_program`` fall
    back to one chip at a time. In a batched pass ``analog`` holds the group's chips.

    *What the chips share.* In a flat ``nn.Sequential`` (each child an analog layer or free of them,
    as the reference models) the input of the first analog layer is the same for every chip: the
    modules before it run once on the batch, and its chips all read the same rows, unfolded once
    (a convolution's patches) and, with ``reads="exact"``, converted by the DAC once
    (:meth:`ProgrammedChip.mvm_drives` per chip: the same values as ``mvm``). On CPU the layers after
    it then run chip by chip on each chip's rows (one chip's working set stays in cache; measured
    faster than one chip-major pass of K times the rows, ``bench/bench_chips_batched.py``), so each
    chip's digital modules see exactly the batch they see in the loop; elsewhere (CUDA, stacked
    reads) they run once on the chip-major rows. Other models repeat the input for each chip.

    Yields
    ------
    (c, analog, out): the chip index, the analog model (programmed as chip ``c``) and its outputs
    on ``x`` (B, ...), in the model's output dtype.
    """
    if isinstance(chips, bool) or not isinstance(chips, (int, np.integer)) or chips < 1:
        raise ValueError(f"chips: {chips!r} is not allowed; must be an integer >= 1")
    layer_seed(seed, 0)
    if reads not in ("exact", "stacked"):
        raise ValueError(f"reads: {reads!r} is not allowed; choose 'exact' or 'stacked'")
    analog = convert_to_analog(model, hardware, overrides=overrides, calib_data=calib_data).eval()
    k = _chips_per_pass(chips_per_pass, analog, x, chips, batch_size, dtype)
    if k > 1 and (on_program is not None or not batchable(analog)):
        k = 1
    try:
        yield from _chip_loop(analog, x, chips, seed, batch_size, dtype, progress, desc, on_program, k, reads)
    finally:
        release_workspace()     # the analog layers' kept buffers (patches, shared drives)


def _chip_loop(analog, x, chips, seed, batch_size, dtype, progress, desc, on_program, k, reads):
    """The loop of :func:`chip_outputs` over its converted model ``analog``, ``k`` chips per pass."""
    if k == 1:
        for c in tqdm(range(int(chips)), desc=desc, disable=None if progress is None else not progress):
            program(analog, layer_seed(seed, c), dtype=dtype)
            if on_program is not None:
                on_program(c, analog)
            out = torch.cat([analog(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
            yield c, analog, out
        return
    layers = [m for _, m in analog_layers(analog)]
    first = _shared_first_layer(analog)
    # on CPU the layers after the shared one run chip by chip (the working set of one chip stays in cache;
    # measured faster than one chip-major pass, bench/bench_chips_batched.py); a stacked read is one call
    per_chip_tail = reads == "exact" and x.device.type == "cpu"
    bar = tqdm(total=int(chips), desc=desc, disable=None if progress is None else not progress)
    for c0 in range(0, int(chips), k):
        group = range(c0, min(c0 + k, int(chips)))
        per_layer = [[] for _ in layers]
        for c in group:   # each chip programmed exactly as the one-at-a-time loop programs it
            program(analog, layer_seed(seed, c), dtype=dtype)
            for i, m in enumerate(layers):
                per_layer[i].append(m.chip)
        n = len(group)
        if n > 1:   # (a last group of one chip is read as the loop reads it)
            for m, chs in zip(layers, per_layer):
                m.chip = _stack(chs) if reads == "stacked" else _ChipBatch(chs)
        outs = [[] for _ in group]
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            if n > 1 and first is not None:
                ys = _shared_pass(analog, first, xb, layers, per_layer, reads, per_chip_tail)
            else:
                y = analog(xb.unsqueeze(0).expand(n, *xb.shape).reshape(n * xb.shape[0], *xb.shape[1:]))
                ys = y.reshape(n, xb.shape[0], *y.shape[1:]).unbind(0)
            for o, y in zip(outs, ys):
                o.append(y)
        for o, c in zip(outs, group):
            yield c, analog, o[0] if len(o) == 1 else torch.cat(o)
            bar.update(1)
    bar.close()


class _ChipBatch:
    """K one-chip :class:`ProgrammedChip` s read as one chip of ``trials=K``: ``mvm(x)`` with x
    (K, rows, in) reads chip ``c`` on ``x[c]`` with its own state and read-noise generator, so each
    chip reads exactly as it does alone."""

    def __init__(self, chips):
        self.chips = list(chips)

    @property
    def trials(self) -> int:
        return len(self.chips)

    def mvm(self, x, t=None):
        return torch.cat([ch.mvm(x[c], t=t) for c, ch in enumerate(self.chips)])


def _shared_pass(analog: nn.Sequential, first: nn.Module, xb: torch.Tensor, layers: list, per_layer: list,
                 reads: str, per_chip_tail: bool):
    """One batch ``xb`` (B, ...) through the batched chips of a flat sequential ``analog`` whose first
    analog layer is ``first``: the modules before it run once, and its chips read the same rows, unfolded
    and converted by the DAC once (:meth:`~memcim.nn.analog._AnalogMixin.forward_chips`); with
    ``per_chip_tail`` the rest runs chip by chip on each chip's outputs (each layer's chip set to that
    chip's, ``per_layer``), else once on the chip-major outputs. Returns each chip's outputs (B, ...)."""
    mods = list(analog)
    idx = next(i for i, m in enumerate(mods) if m is first)
    h = xb
    for m in mods[:idx]:
        h = m(h)
    b = xb.shape[0]

    def tail(h):
        for m in mods[idx + 1:]:
            h = m(h)
        return h

    chips = per_layer[layers.index(first)] if reads == "exact" else [first.chip]
    if not per_chip_tail:
        h = torch.cat(list(first.forward_chips(h, chips)))
        y = tail(h)
        n = len(per_layer[0])
        if y.shape[0] != n * b:
            raise RuntimeError(f"model: its output has {y.shape[0]} rows for {n} batched chips of {b} inputs; "
                               "it must hold every chip's outputs, chip-major")
        return y.reshape(n, b, *y.shape[1:]).unbind(0)
    batch = [m.chip for m in layers]
    try:
        ys = []
        for j, hj in enumerate(first.forward_chips(h, chips)):
            for m, chs in zip(layers, per_layer):
                m.chip = chs[j]
            ys.append(tail(hj))
    finally:
        for m, ch in zip(layers, batch):
            m.chip = ch
    return ys


def _shared_first_layer(analog: nn.Module):
    """The first analog layer of a flat ``nn.Sequential`` (its own ``forward``; each child an analog
    layer or free of them),
    whose input is the same for every batched chip (see :func:`chip_outputs`); None for other models
    (their input is repeated for each chip)."""
    if not isinstance(analog, nn.Sequential) or type(analog).forward is not nn.Sequential.forward:
        return None
    first = None
    for m in analog:
        if type(m) in (AnalogLinear, AnalogConv2d):
            first = m if first is None else first
        elif analog_layers(m):
            return None
    return first


def _stack(chips) -> ProgrammedChip:
    """One :class:`ProgrammedChip` of ``trials=K`` holding the conductances of K one-chip chips of
    one plan (its read-noise generator: a copy of the first chip's)."""
    c0 = chips[0]
    gen = torch.Generator(device=c0.device)
    gen.set_state(c0.generator.get_state())
    cat = (lambda name: None if getattr(c0, name) is None else torch.cat([getattr(c, name) for c in chips]))
    return ProgrammedChip(mapped=c0.mapped, g_pos=cat("g_pos"), g_neg=cat("g_neg"), generator=gen,
                          nu_pos=cat("nu_pos"), nu_neg=cat("nu_neg"), reference_inputs=c0.reference_inputs)


def batchable(analog: nn.Module) -> bool:
    """Whether chips can be batched through ``analog`` (see :func:`chip_outputs`): it has analog
    layers and every one is an :class:`AnalogLinear` or :class:`AnalogConv2d` (the multi-matrix
    layers, whose digital math may mix the leading dimension, run one chip at a time)."""
    layers = analog_layers(analog)
    return bool(layers) and all(type(m) in (AnalogLinear, AnalogConv2d) for _, m in layers)


def chips_per_pass_auto(analog: nn.Module, x: torch.Tensor, chips: int, batch_size: int,
                        dtype: torch.dtype = torch.float32) -> int:
    """Chips per forward pass that fit :func:`memcim.validate.memory_limit`: half the limit over an
    estimate of one chip's working set, as :meth:`memcim.simulate.ProgrammedChip.mvm` reads: its
    conductances twice (the programmed pairs, the read's kept difference, noise-carrying sum and
    their copies in ADC steps), and per batch the read's buffers, each the largest over the analog
    layers: the DAC's drives (rows x row tiles x tile rows, kept), the outputs summed over the row
    tiles (rows x padded columns, kept), the read noise when it is drawn at once (rows x row tiles x
    padded columns: offset mapping, or a read whose noise is not a multiple of 16 values; kept), one
    block's buffers (kept) and the layer's outputs; at most ``chips`` and 64; 1 when the model cannot
    be batched."""
    from memcim.mapping.crossbar import tile_geometry
    from memcim.simulate import ProgrammedChip
    from memcim.validate import memory_limit

    if not batchable(analog):
        return 1
    rows = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: rows.__setitem__(
        name, mod.calib_rows(args[0]).shape[0])) for name, m in analog_layers(analog)]
    try:
        with digital_mode(analog):
            analog(x[:1])
    finally:
        for h in hooks:
            h.remove()
    item = torch.empty((), dtype=dtype).element_size()
    b = min(int(batch_size), int(x.shape[0]))
    cond = 0
    drives = sums = noise = block = outs = 0
    for name, m in analog_layers(analog):
        n_in, n_out = m.crossbar_weight().shape
        hw = m.hardware
        R, Cw, nrt, nct = tile_geometry(int(n_in), int(n_out), hw)
        op = nct * Cw
        cond += 2 * 2 * nrt * R * op * item
        r = rows.get(name, 1) * b
        drives = max(drives, r * nrt * R * item)
        sums = max(sums, r * op * item if op != n_out else 0)
        if (hw.device.thermal_noise or hw.device.shot_noise) and (
                hw.mapping.scheme == "offset" or (r * nrt * op) % 16):
            noise = max(noise, r * nrt * op * item)
        outs = max(outs, r * n_out * item)
        nb = min(r, max(16, (ProgrammedChip._BLOCK_ELEMS // op) // 16 * 16))
        block = max(block, nb * (2 * op + nrt * R + nrt * op) * item)
    per_chip = 2 * cond + drives + sums + noise + block + outs
    limit, _ = memory_limit()
    return int(max(1, min(int(chips), 64, (limit // 2) // max(per_chip, 1))))


def _chips_per_pass(value, analog, x, chips, batch_size, dtype) -> int:
    if isinstance(value, str) and value == "auto":
        return chips_per_pass_auto(analog, x, chips, batch_size, dtype)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"chips_per_pass: {value!r} is not allowed; give an integer >= 1 or 'auto'")
    return int(min(int(value), int(chips)))


def summarize(values) -> dict:
    """Mean, std (ddof=1), 95 % CI of the mean (Student t; None for one value) and 2.5-97.5 % range.

    >>> summarize([0.5])["ci95_mean"] is None
    True
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    ci = None
    if n > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"mean": mean, "std": std, "ci95_mean": ci,
            "range95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))], "n": n,
            "values": v.tolist()}


def read_times(times, hardware: HardwareConfig, overrides: dict | None = None, *, name: str = "times") -> list[float]:
    """The read times [s] of an evaluation over time: ``times`` checked (finite, not before
    ``device.drift_t0`` of ``hardware`` or of any hardware in ``overrides``), sorted, duplicates
    dropped, with the first read ``t0`` (the latest ``drift_t0`` of those hardwares) always first.

    >>> from memcim.config import preset
    >>> read_times([3600, 86400], preset("pcm"))
    [20.0, 3600.0, 86400.0]
    """
    if isinstance(times, (int, float, np.integer, np.floating)) and not isinstance(times, bool):
        times = [times]
    if isinstance(times, (str, bytes)) or not hasattr(times, "__iter__"):
        raise ValueError(f"{name}: {times!r} is not allowed; give a list of read times in seconds after programming")
    hws = [hardware] + [h for h in (overrides or {}).values() if h is not None]
    t0 = max(h.device.drift_t0 for h in hws)
    out = {t0}
    for t in times:
        for h in hws:
            check_time(t, h.device, name)
        out.add(float(t))
    return sorted(out)


def evaluate_analog(model: nn.Module, dataset, hardware: HardwareConfig, *, chips: int = 10,
                    seed: int = 0, calib_data: torch.Tensor | None = None, overrides: dict | None = None,
                    batch_size: int = 1000, progress: bool | None = None,
                    dtype: torch.dtype = torch.float32, times=None, chips_per_pass=1,
                    reads: str = "exact") -> dict:
    """Accuracy and output MSE of ``model`` on ``hardware``, over ``chips`` programmed chips.

    Parameters
    ----------
    model : a digital model (it is copied, not changed).
    dataset : :class:`memcim.data.base.Dataset`.
    hardware : the crossbar design.
    chips : number of chips to program (Monte Carlo over programming noise).
    seed : chip ``c`` is programmed with seed ``layer_seed(seed, c)``.
    calib_data : model inputs used to calibrate ADC full scales (use training data, not the test set).
    overrides : per-layer hardware, as in :func:`convert_to_analog`.
    batch_size : inference batch size.
    progress : tqdm bar over chips on stderr (default: when stderr is a terminal).
    times : read times [s] after programming (see :func:`read_times`); each chip is programmed once
        and read at every time, ``t0`` first. None (default): one read at ``t0``.
    chips_per_pass, reads : chips batched through the network in one forward pass, and how they
        read (see :func:`chip_outputs`; default 1, one chip at a time). With ``reads="exact"`` the
        result equals that of one chip at a time. Evaluations over ``times`` run one chip at a time.

    Returns
    -------
    dict with ``digital`` (accuracy), ``accuracy`` and ``mse`` summaries (see :func:`summarize`),
    ``conversion`` (the report), ``chips``, ``seed``, ``n_samples``, ``labelled``, ``seconds``.
    Without labels (``dataset.meta["labelled"]`` False) both accuracies are None.
    With ``times``, also ``times`` (the read times, ``t0`` first), ``t0``, ``compensation`` (the
    hardware's ``compensation.drift``) and ``over_time``: one ``{"t", "accuracy", "mse"}`` per read
    time; ``accuracy`` and ``mse`` are then those of the first read, ``t0``.
    """
    if isinstance(chips, bool) or not isinstance(chips, (int, np.integer)) or chips < 1:
        raise ValueError(f"chips: {chips!r} is not allowed; must be an integer >= 1")
    labelled = bool(getattr(dataset, "meta", {}).get("labelled", True))
    layer_seed(seed, 0)
    if times is not None:
        return _evaluate_over_time(model, dataset, hardware, chips=chips, seed=seed, calib_data=calib_data,
                                   overrides=overrides, batch_size=batch_size, progress=progress, dtype=dtype,
                                   times=read_times(times, hardware, overrides), labelled=labelled)
    t0 = time.perf_counter()
    model = model.eval()
    y = dataset.y
    ref = predict(model, dataset.x, batch_size)
    digital_acc = float((ref.argmax(1) == y).float().mean()) if labelled else None
    accs, mses = [], []
    analog = None
    for _, analog, out in chip_outputs(model, dataset.x, hardware, chips=chips, seed=seed, overrides=overrides,
                                       calib_data=calib_data, batch_size=batch_size, dtype=dtype, progress=progress,
                                       chips_per_pass=chips_per_pass, reads=reads):
        out = out.float()
        if labelled:
            accs.append(float((out.argmax(1) == y).float().mean()))
        mses.append(float(((out - ref) ** 2).mean()))
    return {"digital": {"accuracy": digital_acc}, "accuracy": summarize(accs) if labelled else None,
            "mse": summarize(mses), "conversion": conversion_report(analog).to_dict(), "chips": int(chips),
            "seed": int(seed), "n_samples": len(dataset), "labelled": labelled,
            "energy": energy_report(analog, dataset.x[:1]), "seconds": time.perf_counter() - t0}


@torch.no_grad()
def energy_report(analog: nn.Module, x_one: torch.Tensor, *, max_rows: int = 256) -> dict:
    """Energy per inference [J], latency [s] and area [m^2] of a converted model: the one energy model
    (:func:`memcim.hardware.energy.layer_cost`) on every analog layer's plan, with the drive statistics of
    its calibration inputs (at most ``max_rows`` of them; uniform drives before calibration) and as many
    array reads per inference as the layer produces outputs per input (a convolution: its positions; a
    recurrent layer: its steps), counted on one input ``x_one`` (1, ...) run digitally."""
    from memcim.hardware.energy import layer_cost, network_cost

    layers = analog_layers(analog)
    counts: dict = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: counts.__setitem__(n, counts.get(n, 0) + o.numel()))
             for n, m in layers]
    try:
        with digital_mode(analog):
            analog(x_one[:1])
    finally:
        for h in hooks:
            h.remove()
    costs = []
    for n, m in layers:
        plan = m.plan()
        cal = m.calibration_inputs
        x = None if cal is None else cal[:max_rows].detach().to(torch.float64).cpu()
        reads = max(1, counts.get(n, plan.out_features) // plan.out_features)
        costs.append(layer_cost(plan, x=x, reads=reads, name=n))
    net = network_cost(costs)
    return {**net.summary(), "energy_breakdown_j": net.energy, "area_breakdown_m2": net.area,
            "per_layer": [{"name": c.name, "energy_j": c.energy["total"], "latency_s": c.latency,
                           "area_m2": c.area["total"], "reads": c.counts["reads"], "arrays": c.counts["arrays"],
                           "adc_conversions": c.counts["conversions"]} for c in costs]}


@torch.no_grad()
def _evaluate_over_time(model, dataset, hardware, *, chips, seed, calib_data, overrides, batch_size, progress,
                        dtype, times, labelled) -> dict:
    """:func:`evaluate_analog` with ``times``: the loop of :func:`chip_outputs`, each programmed chip
    read at every time (``t0`` first, so its reads equal those of an evaluation without times)."""
    start = time.perf_counter()
    model = model.eval()
    x, y = dataset.x, dataset.y
    ref = predict(model, x, batch_size)
    digital_acc = float((ref.argmax(1) == y).float().mean()) if labelled else None
    accs = {t: [] for t in times}
    mses = {t: [] for t in times}
    analog = convert_to_analog(model, hardware, overrides=overrides, calib_data=calib_data).eval()
    if not analog_layers(analog):
        raise ValueError("model: has no Linear or Conv2d layer to run on the crossbars")
    for c in tqdm(range(int(chips)), desc="chips", disable=None if progress is None else not progress):
        program(analog, layer_seed(seed, c), dtype=dtype)
        for t in times:
            with read_time(analog, t):
                out = torch.cat([analog(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]).float()
            if labelled:
                accs[t].append(float((out.argmax(1) == y).float().mean()))
            mses[t].append(float(((out - ref) ** 2).mean()))
    over = [{"t": t, "accuracy": summarize(accs[t]) if labelled else None, "mse": summarize(mses[t])}
            for t in times]
    return {"digital": {"accuracy": digital_acc}, "accuracy": over[0]["accuracy"], "mse": over[0]["mse"],
            "times": list(times), "t0": times[0], "compensation": hardware.compensation.drift,
            "over_time": over, "conversion": conversion_report(analog).to_dict(), "chips": int(chips),
            "seed": int(seed), "n_samples": len(dataset), "labelled": labelled,
            "energy": energy_report(analog, x[:1]),
            "seconds": time.perf_counter() - start}
