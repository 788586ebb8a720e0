"""Choose the weight slices and their bits per layer: the smallest predicted error under a budget.

For every crossbar layer ``l`` and every candidate slicing ``d`` (a tuple of bits per slice, least
significant first; by default every composition of the weight precision into slices a device can
hold), the closed form (:func:`memcim.analysis.predict.predict`, whose sliced step is
:mod:`memcim.analysis.slicing`) predicts the network's output MSE with layer ``l`` sliced as ``d`` and
every other layer at the reference design (the first candidate), and ``cost(plan)`` prices its plan.
With the error additive over layers to first order,

    MSE(d_1, ..., d_L) ~ MSE_ref + sum_l (MSE_l(d_l) - MSE_ref),

the choice minimising it under ``sum_l cost_l(d_l) <= budget`` is a multiple-choice knapsack, solved
exactly by dynamic programming over the layers' Pareto fronts (cost, error). Since the layers'
errors interact (a layer's error is amplified or damped by the next layers' noise), the knapsack's
choice is then refined on the whole network's closed form: the best single-layer change within the
budget, repeated while one lowers the predicted MSE (``predicted_mse`` is the whole design's). :func:`brute_force_slicing` predicts every combination
of the whole network instead (the check of the optimizer; ``prod_l |candidates_l|`` predictions).

Cost proxies (any callable ``cost(plan) -> float`` of a :class:`memcim.mapping.slicing.SlicedPlan`
plugs in):

* :func:`conversion_cost` (default): arrays x input cycles, the array reads (each converting all of
  its columns once) per input vector: the ADC conversions that dominate a sliced tile's energy
  (ISAAC, Shafiee et al. ISCA 2016: the ADCs take 58 % of a tile's power);
* :func:`area_cost`: arrays (area);
* :func:`energy_cost` / :func:`chip_area_cost`: joules per input vector / square metres from the one
  energy model, :func:`memcim.hardware.energy.layer_cost` of the sliced plan.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from memcim import validate as _validate
from memcim.config import HardwareConfig, resolve_config

__all__ = ["SlicingChoice", "choose_slicing", "brute_force_slicing", "slice_candidates", "conversion_cost",
           "area_cost", "energy_cost", "chip_area_cost"]


def conversion_cost(plan) -> float:
    """Array reads per input vector: arrays x input cycles (each read converts every column once)."""
    return float(plan.n_arrays * plan.n_cycles)


def area_cost(plan) -> float:
    """Arrays of the plan (a pair of arrays counts two)."""
    return float(plan.n_arrays)


def energy_cost(plan) -> float:
    """Energy [J] per input vector: the one energy model's :func:`memcim.hardware.energy.layer_cost` of
    the sliced plan (its slices' arrays, ADC conversions per slice and cycle, shift-and-add, digital
    offset; uniform drives)."""
    from memcim.hardware.energy import layer_cost

    return float(layer_cost(plan).energy["total"])


def chip_area_cost(plan) -> float:
    """Area [m^2] of the layer: :func:`memcim.hardware.energy.layer_cost`'s total (cells, converters,
    shift-and-add, buffers)."""
    from memcim.hardware.energy import layer_cost

    return float(layer_cost(plan).area["total"])


def slice_candidates(weight_bits: int, max_bits: int, max_slices: int | None = None) -> list[tuple[int, ...]]:
    """Every composition of ``weight_bits`` into slices of 1..``max_bits`` bits (least significant
    first), at most ``max_slices`` slices; fewest slices first."""
    weight_bits = _validate.integer("weight_bits", weight_bits, lo=1, hi=32)
    max_bits = _validate.integer("max_bits", max_bits, lo=1, hi=16)
    max_slices = weight_bits if max_slices is None else _validate.integer("max_slices", max_slices, lo=1)
    out = []
    for n in range(1, min(weight_bits, max_slices) + 1):
        for comp in itertools.product(range(1, max_bits + 1), repeat=n):
            if sum(comp) == weight_bits:
                out.append(tuple(comp))
    if not out:
        raise ValueError(f"max_bits: {max_bits} bits per slice in at most {max_slices} slices cannot hold "
                         f"{weight_bits} weight bits")
    return out


@dataclass
class SlicingChoice:
    """The result of :func:`choose_slicing` / :func:`brute_force_slicing`.

    Attributes
    ----------
    designs : the chosen bits per slice of every crossbar layer.
    predicted_mse : the closed form's output MSE of the whole chosen design.
    cost : its total cost; budget : the budget.
    table : per layer, every candidate's ``{"bits", "mse", "cost"}`` (the optimizer's inputs).
    evaluations : closed-form predictions made.
    """

    designs: list
    predicted_mse: float
    cost: float
    budget: float
    table: list = field(default_factory=list)
    evaluations: int = 0

    def hardware(self, hw: HardwareConfig) -> list[HardwareConfig]:
        """One config per crossbar layer with its chosen slices."""
        return [_sliced(hw, d) for d in self.designs]

    def to_dict(self) -> dict:
        return {"designs": [list(d) for d in self.designs], "predicted_mse": self.predicted_mse, "cost": self.cost,
                "budget": self.budget, "evaluations": self.evaluations,
                "table": [[{"bits": list(e["bits"]), "mse": e["mse"], "cost": e["cost"]} for e in t]
                          for t in self.table]}


def _budget(budget) -> float:
    """A budget >= 0; ``None`` or ``math.inf``: no limit."""
    if budget is None or (isinstance(budget, float) and budget == float("inf")):
        return float("inf")
    return _validate.number("budget", budget, lo=0.0)


def _sliced(hw: HardwareConfig, bits) -> HardwareConfig:
    return hw.replace(slicing={"weight_bits_per_slice": list(bits), "weight_slices": None, "weight_bits": None})


def _crossbar_weights(model) -> list[torch.Tensor]:
    """(in, out) float64 matrices of the model's crossbar layers (a matrix: itself)."""
    import torch.nn as nn

    from memcim.analysis import moments as mo

    if not isinstance(model, (nn.Module, list)):
        from memcim.mapping.crossbar import as_matrix

        return [as_matrix(model, "model")]
    layers = mo.parse_model(model, torch.float64) if isinstance(model, nn.Module) else model
    return [layer.weight.reshape(layer.weight.shape[0], -1).t().to(torch.float64) for layer in
            mo.crossbar_layers(layers)]


def _calibrations(model, calib_data, n_layers, hw):
    if calib_data is None:
        return [None] * n_layers
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        return [calib_data]
    from memcim.analysis.predict import _calibration_rows

    import dataclasses

    from memcim.config import SlicingConfig

    base = dataclasses.replace(hw, slicing=SlicingConfig())
    return _calibration_rows(model, torch.as_tensor(np.asarray(calib_data)), None, base)


def _setup(model, hw, candidates, cost, calib_data):
    import warnings

    hw = resolve_config(hw)
    if not callable(cost):
        raise TypeError(f"cost: expected a callable cost(plan) -> float, got {type(cost).__name__}")
    weights = _crossbar_weights(model)
    L = len(weights)
    if candidates is None:
        if not hw.slicing.weights_sliced:
            raise ValueError("hw: slicing.weight_bits_per_slice is not set; give the weight precision with it (or "
                             "slicing.weight_bits) or pass candidates")
        max_bits = int(np.log2(hw.device.levels)) if hw.device.levels is not None else hw.slicing.weight_bits
        cands = slice_candidates(hw.slicing.weight_bits, max_bits)
        candidates = [cands] * L
    elif len(candidates) and isinstance(candidates[0], (int, np.integer)):
        raise TypeError("candidates: give a list of bit tuples per layer (or one list for every layer)")
    else:
        candidates = list(candidates)
        if candidates and isinstance(candidates[0][0], (int, np.integer)):   # one list for every layer
            candidates = [candidates] * L
        if len(candidates) != L:
            raise ValueError(f"candidates: {len(candidates)} lists given; the model has {L} crossbar layer(s)")
    cands = [[tuple(int(b) for b in d) for d in c] for c in candidates]
    cal = _calibrations(model, calib_data, L, hw)
    costs = []
    from memcim.mapping.crossbar import map_matrix

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for W, cs, c in zip(weights, cands, cal):
            costs.append([float(cost(map_matrix(W, _sliced(hw, d), calib_inputs=c))) for d in cs])
    for l, row in enumerate(costs):
        for d, v in zip(cands[l], row):
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"cost: {v!r} for layer {l} slices {list(d)} is not allowed; a cost is finite and >= 0")
    return hw, cands, costs


def _predict(model, x, hws, calib_data, **kw) -> float:
    import warnings

    from memcim.analysis.predict import predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if not isinstance(model, (torch.nn.Module, list)):
            return float(predict(model, x, hws[0], calib_inputs=calib_data, **kw).mse_mean)
        return float(predict(model, x, hws, calib_data=calib_data, **kw).mse_mean)


def choose_slicing(model, x, hw, budget: float, *, cost: Callable = conversion_cost,
                   candidates: Sequence | None = None, calib_data=None, refine: bool = True,
                   **predict_kw) -> SlicingChoice:
    """The slices and bits per crossbar layer with the smallest predicted output MSE whose total cost
    is within ``budget`` (see the module docstring).

    Parameters
    ----------
    model : a matrix W (in, out) or a network (as :func:`memcim.analysis.predict.predict` takes).
    x : inputs. hw : the hardware; its ``slicing`` section gives the weight precision (and the encoding
        and input mode every candidate keeps).
    budget : the largest total cost allowed (the cost's units; None or ``math.inf``: no limit).
    cost : ``cost(plan) -> float`` per layer (:func:`conversion_cost`, :func:`area_cost`,
        :func:`energy_cost`, or your own).
    candidates : per layer a list of bit tuples (or one list for every layer); default every
        composition of ``slicing.weight_bits`` into slices of at most ``log2(device.levels)`` bits.
    calib_data : calibration inputs (a network's, or a matrix's ``calib_inputs``).
    refine : after the knapsack, change one layer at a time on the whole network's closed form while
        that lowers the predicted MSE within the budget (default True; False: the additive optimum).
    predict_kw : passed on to ``predict``.

    Returns
    -------
    :class:`SlicingChoice`. Raises ``ValueError`` naming ``budget`` when no design fits.
    """
    budget = _budget(budget)
    hw, cands, costs = _setup(model, hw, candidates, cost, calib_data)
    L = len(cands)
    ref = [_sliced(hw, c[0]) for c in cands]
    mse_ref = _predict(model, x, ref, calib_data, **predict_kw)
    n_eval = 1
    table = []
    for l in range(L):
        row = []
        for j, d in enumerate(cands[l]):
            if j == 0:
                e = mse_ref
            else:
                hws = list(ref)
                hws[l] = _sliced(hw, d)
                e = _predict(model, x, hws, calib_data, **predict_kw)
                n_eval += 1
            row.append({"bits": d, "mse": e, "cost": costs[l][j]})
        table.append(row)
    # multiple-choice knapsack over the layers' (cost, error increment) by Pareto fronts: exact
    front = [(0.0, 0.0, ())]                                     # (cost, error, choice indices)
    for l in range(L):
        nxt = [(c + e["cost"], err + e["mse"] - mse_ref, ch + (j,))
               for c, err, ch in front for j, e in enumerate(table[l]) if c + e["cost"] <= budget * (1 + 1e-12)]
        nxt.sort(key=lambda t: (t[0], t[1]))
        front, best = [], np.inf
        for t in nxt:                                           # keep the non-dominated ones
            if not front or t[1] < best - 1e-15 * max(1.0, abs(best)):
                front.append(t)
                best = t[1]
        if not front:
            cheapest = sum(min(r["cost"] for r in t) for t in table)
            raise ValueError(f"budget: {budget:g} is not allowed; the cheapest design costs {cheapest:g}")
    c, _, ch = min(front, key=lambda t: (t[1], t[0]))
    ch = list(ch)
    pred = _predict(model, x, [_sliced(hw, cands[l][j]) for l, j in enumerate(ch)], calib_data, **predict_kw)
    n_eval += 1
    # refine on the whole network's closed form (the layers' errors are additive only to first order):
    # single-layer changes within the budget, the best improvement first, until none lowers it
    seen = {tuple(ch): pred}
    while refine:
        best = None
        for l in range(L):
            for j in range(len(cands[l])):
                if j == ch[l]:
                    continue
                trial = ch[:l] + [j] + ch[l + 1:]
                tc = sum(costs[i][k] for i, k in enumerate(trial))
                if tc > budget * (1 + 1e-12):
                    continue
                if tuple(trial) not in seen:
                    seen[tuple(trial)] = _predict(model, x, [_sliced(hw, cands[i][k]) for i, k in enumerate(trial)],
                                                  calib_data, **predict_kw)
                    n_eval += 1
                e = seen[tuple(trial)]
                if e < pred and (best is None or (e, tc) < best[:2]):
                    best = (e, tc, trial)
        if best is None:
            break
        pred, c, ch = best
    designs = [cands[l][j] for l, j in enumerate(ch)]
    c = sum(costs[l][j] for l, j in enumerate(ch))
    return SlicingChoice(designs, pred, c, budget, table, n_eval)


def brute_force_slicing(model, x, hw, budget: float, *, cost: Callable = conversion_cost,
                        candidates: Sequence | None = None, calib_data=None, **predict_kw) -> SlicingChoice:
    """Predict every combination of the layers' candidates and keep the best within ``budget``
    (the reference of :func:`choose_slicing`; same parameters)."""
    budget = _budget(budget)
    hw, cands, costs = _setup(model, hw, candidates, cost, calib_data)
    best, n_eval, table = None, 0, []
    for combo in itertools.product(*[range(len(c)) for c in cands]):
        total = sum(costs[l][j] for l, j in enumerate(combo))
        if total > budget * (1 + 1e-12):
            continue
        designs = [cands[l][j] for l, j in enumerate(combo)]
        e = _predict(model, x, [_sliced(hw, d) for d in designs], calib_data, **predict_kw)
        n_eval += 1
        table.append({"designs": designs, "mse": e, "cost": total})
        if best is None or (e, total) < (best[0], best[1]):
            best = (e, total, designs)
    if best is None:
        cheapest = sum(min(r) for r in costs)
        raise ValueError(f"budget: {budget:g} is not allowed; the cheapest design costs {cheapest:g}")
    return SlicingChoice(best[2], best[0], best[1], budget, [table], n_eval)
