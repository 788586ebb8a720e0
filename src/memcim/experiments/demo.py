"""The showcase behind ``memcim demo`` / ``make demo``: memcim's core value in about a minute.

On the shipped reference MLP (``mnist-mlp-256-128``) and CNN (``mnist-cnn-small``), with MNIST
test images, :func:`run_demo` computes five sections and returns them as one
:class:`DemoResult` (it never prints and never writes files; ``memcim demo`` saves the page):

``budget``
    The error budget per non-ideality (:func:`memcim.metrics.error_budget`): the relative RMS
    error of the MLP's second layer (256 x 128, fed its own digital activations) on the
    hardware ``hw``, with everything on and with each non-ideality switched on alone.
``accuracy``
    Test accuracy over ``chips`` programmed chips (mean, std, 95 % CI;
    :func:`memcim.nn.evaluate.evaluate_analog`) of both models on the ``ideal`` preset, on ``hw``
    and on the ``noisy`` preset, next to the digital accuracy.
``closed_form``
    The closed-form output MSE of the MLP (:func:`memcim.analysis.predict.predict`, no sampling)
    next to the Monte Carlo output MSE of ``mc_chips`` simulated chips on the same images and
    hardware (``hw`` and ``noisy``), with the Monte Carlo's standard error and their z-score.
``tile``
    One circuit-level tile: the first ``tile`` x ``tile`` block of the MLP's second layer on the
    ``irdrop`` preset (1 Ohm wire segments, exact nodal solve of the array), mapped three ways:
    ``linear`` (ignores the wires), ``dpe`` (Hu et al. 2016) and ``representable`` (paper 002).
    For each: the relative error of the matrix the circuit realises and of its outputs.
``optimizer``
    The design optimizer's gain (paper 003): per layer of the MLP, the closed-form and the
    simulated layer MSE of the naive design of the ``convex_cim`` preset (full window, ADC full
    scale at the largest possible output) and of the convex design
    (:func:`memcim.optimize.convex_range.optimize_layer`), and the network's accuracy over chips
    with each.

``quick=True`` shrinks every size (:data:`QUICK`) for tests: seconds, not a minute.

Examples
--------
>>> from memcim.experiments.demo import QUICK, DEFAULTS
>>> sorted(QUICK) == sorted(DEFAULTS)
True
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CNN", "DEFAULTS", "MLP", "QUICK", "SECTIONS", "DemoResult", "format_table", "run_demo"]

MLP = "mnist-mlp-256-128"
CNN = "mnist-cnn-small"
#: section keys, in the order they run and print.
SECTIONS = ("budget", "accuracy", "closed_form", "tile", "optimizer")

#: sizes of the full demo (about a minute on 2 cores).
DEFAULTS = {"chips": 5, "mc_chips": 20, "n_test": 2000, "n_closed": 100, "n_budget": 500, "n_calib": 1000,
            "tile": 128, "tile_mapping": {"alpha_evals": 2, "final_iters": 2}}
#: sizes of ``quick=True`` (tests: a few seconds per section).
QUICK = {"chips": 3, "mc_chips": 12, "n_test": 300, "n_closed": 24, "n_budget": 128, "n_calib": 200,
         "tile": 32, "tile_mapping": {"alpha_evals": 1, "final_iters": 1, "calib_rounds": 0}}


@dataclass
class DemoResult:
    """What :func:`run_demo` found. ``sections`` maps each of :data:`SECTIONS` to a JSON-ready dict."""

    config: dict
    sections: dict
    seconds: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def summary(self) -> dict:
        """Headline numbers of every section, flat."""
        s = self.sections
        out: dict[str, Any] = {}
        if "budget" in s:
            b = s["budget"]
            out["budget_total_relative_error"] = b["total"]["relative_error"]
            out["budget_largest"] = b["largest"]
        if "accuracy" in s:
            for m, per in s["accuracy"]["models"].items():
                for p, r in per["presets"].items():
                    out[f"accuracy.{m}.{p}"] = r["accuracy"]["mean"]
        if "closed_form" in s:
            for p, r in s["closed_form"]["presets"].items():
                out[f"closed_form.{p}.predicted_over_mc"] = r["ratio"]
        if "tile" in s:
            for k, r in s["tile"]["methods"].items():
                out[f"tile.{k}.relative_error"] = r["relative_error"]
        if "optimizer" in s:
            o = s["optimizer"]
            out["optimizer.naive_accuracy"] = o["naive"]["accuracy"]["mean"]
            out["optimizer.convex_accuracy"] = o["convex"]["accuracy"]["mean"]
            out["optimizer.predicted_mse_reduction"] = o["predicted_mse_reduction"]
            out["optimizer.simulated_mse_reduction"] = o["simulated_mse_reduction"]
        return out

    def to_dict(self) -> dict:
        return {"config": self.config, "summary": self.summary, "sections": self.sections,
                "seconds": self.seconds, "provenance": self.provenance}


# ------------------------------------------------------------------------------------------------ helpers
def _rel_rms(err: np.ndarray, ref: np.ndarray) -> float:
    p = float(np.mean(ref ** 2))
    return math.sqrt(float(np.mean(err ** 2)) / p) if p > 0 else math.inf


@torch.no_grad()
def _layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    from memcim.experiments.convex_cim import linear_inputs

    return linear_inputs(model, x)


def _acc_summary(r: dict) -> dict:
    keep = ("mean", "std", "ci95_mean", "n", "values")
    return {"digital": r["digital"]["accuracy"], "accuracy": {k: r["accuracy"][k] for k in keep},
            "mse": {k: r["mse"][k] for k in ("mean", "std")}, "seconds": r["seconds"],
            **({"energy": {k: r["energy"][k] for k in ("energy_per_inference_j", "latency_s", "area_m2")}}
               if r.get("energy") else {})}


def label(hw) -> str:
    """A config's name, or ``"<name> (custom)"`` when it differs from the preset of that name."""
    from memcim.config import preset

    try:
        return hw.name if preset(hw.name) == hw else f"{hw.name} (custom)"
    except ValueError:  # not a preset's name: a user's file
        return hw.name


def _presets(hw, with_ideal: bool = True) -> list[tuple[str, object]]:
    """(label, config) of ideal, the user's hardware and noisy, without repeats."""
    from memcim.config import preset

    out: list[tuple[str, object]] = []
    for h in ((preset("ideal"),) if with_ideal else ()) + (hw, preset("noisy")):
        if not any(h == o for _, o in out):
            out.append((label(h), h))
    return out


# ------------------------------------------------------------------------------------------------ sections
def budget_section(mlp: nn.Module, x_layer: np.ndarray, hw, *, chips: int, seed: int) -> dict:
    """Error budget per non-ideality of the MLP's second layer on its own activations."""
    from memcim.metrics import error_budget

    W = mlp[3].weight.detach().double().T.contiguous()
    b = error_budget(W, x_layer, hw, chips, seed, dtype=torch.float64)
    contrib = b["contributions"]
    largest = max(contrib, key=lambda k: contrib[k]["mse"]) if contrib else None
    return {"layer": "3 (256 x 128, the MLP's second Linear)", "inputs": int(x_layer.shape[0]), "chips": chips,
            "hardware": label(hw), "total": b["total"], "contributions": contrib,
            "interaction_mse": b["interaction_mse"], "nonidealities_off": b["nonidealities_off"], "largest": largest}


def accuracy_section(models: dict, test, calib: torch.Tensor, hw, *, chips: int, seed: int) -> dict:
    """Accuracy over chips of each model on ideal / ``hw`` / noisy."""
    from memcim.nn.evaluate import evaluate_analog

    out = {}
    hws = _presets(hw)
    for name, m in models.items():
        per = {}
        for lab, h in hws:
            r = evaluate_analog(m, test, h, chips=chips, seed=seed, calib_data=calib, progress=False)
            per[lab] = _acc_summary(r)
        out[name] = {"digital": next(iter(per.values()))["digital"], "presets": per}
    return {"images": len(test), "chips": chips, "presets": [lab for lab, _ in hws], "models": out}


@torch.no_grad()
def closed_form_section(mlp: nn.Module, x: torch.Tensor, calib: torch.Tensor, hw, *, chips: int, seed: int) -> dict:
    """Closed-form output MSE of the MLP against the Monte Carlo of ``chips`` chips, same inputs."""
    from memcim.analysis.predict import predict
    from memcim.nn.evaluate import chip_outputs

    model = _double(mlp)
    x = x.double()
    cal = calib.double()
    ref = model(x)
    out = {}
    # a config without non-idealities computes x W exactly: nothing to predict there
    hws = [(lab, h) for lab, h in _presets(hw, with_ideal=False) if h.active_nonidealities()]
    for lab, h in hws:
        t0 = time.perf_counter()
        pred = predict(model, x, h, calib_data=cal)
        tp = time.perf_counter() - t0
        t0 = time.perf_counter()
        mses = []
        for _, _, y in chip_outputs(model, x, h, chips=chips, seed=seed, calib_data=cal, batch_size=x.shape[0],
                                    dtype=torch.float64, progress=False):
            mses.append(float(((y - ref) ** 2).mean()))
        tm = time.perf_counter() - t0
        m = np.asarray(mses)
        mc = float(m.mean())
        se = float(m.std(ddof=1) / math.sqrt(len(m))) if len(m) > 1 else math.nan
        p = float(pred.mse_mean)
        out[lab] = {"predicted_mse": p, "mc_mse": mc, "mc_stderr": se, "mc_values": m.tolist(),
                       "ratio": p / mc if mc > 0 else (1.0 if p == 0 else math.inf),
                       "z": (p - mc) / se if se and se > 0 else (0.0 if p == mc else math.inf),
                       "predict_seconds": tp, "mc_seconds": tm}
    return {"model": MLP, "images": int(x.shape[0]), "chips": chips, "presets": out}


def tile_section(W: np.ndarray, x: np.ndarray, *, mapping: dict) -> dict:
    """One ``irdrop`` tile mapped linear / dpe / representable: realised-matrix and output errors."""
    from memcim.config import preset
    from memcim.mapping.crossbar import map_matrix

    hw = preset("irdrop")
    W = np.ascontiguousarray(W, dtype=np.float64)
    ref = x @ W
    out = {}
    for method in ("linear", "dpe", "representable"):
        t0 = time.perf_counter()
        h = hw.replace(mapping={"method": method, **(mapping if method == "representable" else {})})
        mp = map_matrix(torch.from_numpy(W), h, calib_inputs=torch.from_numpy(x))
        Wr = mp.realized().numpy()
        E = Wr - W
        out[method] = {"relative_error": float(np.linalg.norm(E) / np.linalg.norm(W)),
                       "output_relative_error": _rel_rms(x @ E, ref),
                       "max_output_error": float(np.max(np.abs(x @ E)) / np.max(np.abs(ref))),
                       "seconds": time.perf_counter() - t0}
    wires = hw.wires
    return {"hardware": "irdrop", "shape": list(W.shape), "inputs": int(x.shape[0]),
            "wires": {"r_wire_ohm": wires.r_wire, "r_in_ohm": wires.r_in, "r_out_ohm": wires.r_out},
            "g_range_S": [hw.device.g_min, hw.device.g_max], "representable_settings": dict(mapping),
            "methods": out,
            "gain_representable_vs_linear": out["linear"]["relative_error"] / out["representable"]["relative_error"]}


def optimizer_section(mlp: nn.Module, test, calib: torch.Tensor, acts: dict, *, chips: int, seed: int) -> dict:
    """Naive against convex design (window and ADC full scale) of every MLP layer on ``convex_cim``."""
    from memcim.config import preset
    from memcim.experiments.convex_cim import design_network
    from memcim.metrics import simulate_error
    from memcim.nn.evaluate import evaluate_analog

    hw = preset("convex_cim")
    cal_acts = _layer_inputs(mlp, calib)
    res: dict[str, Any] = {"hardware": hw.name, "chips": chips, "images": len(test), "layers": {}}
    for kind, naive in (("naive", True), ("convex", False)):
        t0 = time.perf_counter()
        d = design_network(mlp, hw, calib, naive=naive, method="fast")
        layers = {}
        for name, e in d.items():
            pred = float(e["model"].terms(e["design"], per="layer")["total"])
            sim = simulate_error(e["model"].W, acts[name], e["hw"], chips, seed,
                                 calib_inputs=torch.from_numpy(cal_acts[name]), dtype=torch.float64)
            layers[name] = {"predicted_mse": pred, "simulated_mse": sim["mse"],
                            "g_min_S": float(e["design"].g_min), "g_max_S": float(e["design"].g_max),
                            "full_scale": (float(np.max(e["design"].fs)) if e["design"].fs is not None else None)}
        r = evaluate_analog(mlp, test, hw, chips=chips, seed=seed, calib_data=calib,
                            overrides=None if naive else {n: e["hw"] for n, e in d.items()}, progress=False)
        res[kind] = {"layers": layers, **_acc_summary(r), "seconds": time.perf_counter() - t0}
    tot = {k: {q: sum(v[q] for v in res[k]["layers"].values()) for q in ("predicted_mse", "simulated_mse")}
           for k in ("naive", "convex")}
    res["total"] = tot
    res["predicted_mse_reduction"] = 1 - tot["convex"]["predicted_mse"] / tot["naive"]["predicted_mse"]
    res["simulated_mse_reduction"] = 1 - tot["convex"]["simulated_mse"] / tot["naive"]["simulated_mse"]
    res["digital"] = res["naive"]["digital"]
    return res


def _double(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m).double().eval()


# ------------------------------------------------------------------------------------------------ entry point
def run_demo(*, hw=None, chips: int | None = None, seed: int = 0, quick: bool = False,
             mc_chips: int | None = None, n_test: int | None = None, sections=SECTIONS,
             log: Callable[[str], None] | None = None) -> DemoResult:
    """Run the showcase and return its :class:`DemoResult` (no printing, no files).

    Parameters
    ----------
    hw : the hardware of the budget, accuracy and closed-form sections: a preset name, a file or a
        :class:`~memcim.config.HardwareConfig` (default ``generic``). The tile always uses
        ``irdrop`` and the optimizer ``convex_cim``, the presets their papers define.
    chips : programmed chips per accuracy point, error budget and optimizer row (default 5; quick 3).
    seed : seed of every chip.
    quick : the tiny sizes of :data:`QUICK` (tests).
    mc_chips : chips of the Monte Carlo the closed form is checked against (default 20; quick 12).
    n_test : MNIST test images of the accuracy and optimizer sections (default 1000; quick 300).
    sections : which of :data:`SECTIONS` to run.
    log : called with one line as each section ends (the CLI prints it on stderr); None: silent.
    """
    from memcim import validate
    from memcim.config import resolve_config
    from memcim.data.spec import calibration_data, load_data
    from memcim.io import provenance
    from memcim.nn.models import get_reference_model

    size = dict(QUICK if quick else DEFAULTS)
    if chips is not None:
        size["chips"] = validate.integer("chips", chips, lo=1, hi=10_000)
    if mc_chips is not None:
        size["mc_chips"] = validate.integer("mc_chips", mc_chips, lo=2, hi=100_000)
    if n_test is not None:
        size["n_test"] = validate.integer("n_test", n_test, lo=10, hi=10_000)
    seed = validate.seed(seed)
    sections = tuple(sections)
    for s in sections:
        validate.choice("sections", s, SECTIONS)
    hw = resolve_config(hw, default="generic")
    c, t_all = size["chips"], time.perf_counter()
    say = log or (lambda _msg: None)

    t0 = time.perf_counter()
    mlp = get_reference_model(MLP).eval()
    cnn = get_reference_model(CNN).eval()
    test = load_data(f"mnist:test:{size['n_test']}")
    calib = calibration_data("mnist:test", size["n_calib"])
    acts = _layer_inputs(mlp, test.x[: size["n_budget"]])
    seconds = {"load": time.perf_counter() - t0}
    say(f"loaded {MLP}, {CNN} and {len(test)} MNIST test images")
    result = DemoResult(config={"hardware": hw.to_dict(), "seed": seed, "quick": bool(quick), **size,
                                "models": [MLP, CNN], "data": f"mnist:test:{size['n_test']}",
                                "calibration": f"mnist:train:{size['n_calib']}", "sections": list(sections)},
                        sections={}, seconds=seconds)
    jobs = {
        "budget": lambda: budget_section(mlp, acts["3"], hw, chips=c, seed=seed),
        "accuracy": lambda: accuracy_section({MLP: mlp, CNN: cnn}, test, calib, hw, chips=c, seed=seed),
        "closed_form": lambda: closed_form_section(mlp, test.x[: size["n_closed"]], calib, hw,
                                                   chips=size["mc_chips"], seed=seed),
        "tile": lambda: tile_section(mlp[3].weight.detach().double().T.numpy()[: size["tile"], : size["tile"]],
                                     acts["3"][:, : size["tile"]], mapping=size["tile_mapping"]),
        "optimizer": lambda: optimizer_section(mlp, test, calib, acts, chips=c, seed=seed),
    }
    for name in SECTIONS:
        if name not in sections:
            continue
        t0 = time.perf_counter()
        result.sections[name] = jobs[name]()
        seconds[name] = time.perf_counter() - t0
        say(f"{name}: {seconds[name]:.1f} s")
    seconds["total"] = time.perf_counter() - t_all
    result.provenance = provenance(seed=seed, hardware=label(hw))
    return result


# ------------------------------------------------------------------------------------------------ text
def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def format_table(result: DemoResult) -> str:
    """The short text table ``memcim demo`` prints."""
    s = result.sections
    lines: list[str] = []
    if "budget" in s:
        b = s["budget"]
        lines.append(f"1. error budget: MLP layer 256x128 on '{b['hardware']}', {b['chips']} chips "
                     "(relative RMS error of x W, share of the total MSE)")
        for k, v in sorted(b["contributions"].items(), key=lambda kv: -kv[1]["mse"]):
            lines.append(f"   {k:14s} alone {_pct(v['relative_error']):>9s}   share {_pct(v['share']):>9s}")
        lines.append(f"   {'all together':14s}       {_pct(b['total']['relative_error']):>9s}")
    if "accuracy" in s:
        a = s["accuracy"]
        lines.append(f"2. accuracy over {a['chips']} chips, {a['images']} MNIST test images (mean ± std over chips)")
        lines.append("   " + f"{'model':20s}{'digital':>10s}" + "".join(f"{p:>18s}" for p in a["presets"]))
        for m, per in a["models"].items():
            row = f"   {m:20s}{_pct(per['digital']):>10s}"
            for p in a["presets"]:
                r = per["presets"][p]["accuracy"]
                row += f"{100 * r['mean']:>11.2f} ± {100 * r['std']:4.2f}"
            lines.append(row)
            en = [(p, per["presets"][p]["energy"]) for p in a["presets"] if per["presets"][p].get("energy")]
            if en:
                lines.append("   " + " " * 30 + "  ".join(
                    f"{p}: {e['energy_per_inference_j'] * 1e9:.3g} nJ/inf, {e['latency_s'] * 1e6:.3g} us, "
                    f"{e['area_m2'] * 1e6:.3g} mm^2" for p, e in en))
    if "closed_form" in s:
        cf = s["closed_form"]
        lines.append(f"3. closed form vs Monte Carlo: output MSE of the MLP on {cf['images']} images, "
                     f"{cf['chips']} chips")
        for p, r in cf["presets"].items():
            lines.append(f"   {p:14s} predicted {r['predicted_mse']:.4g} ({r['predict_seconds']:.1f} s)   "
                         f"Monte Carlo {r['mc_mse']:.4g} ± {r['mc_stderr']:.2g}   ratio {r['ratio']:.3f}")
    if "tile" in s:
        t = s["tile"]
        lines.append(f"4. one {t['shape'][0]}x{t['shape'][1]} tile on 'irdrop' ({t['wires']['r_wire_ohm']:g} Ohm wire "
                     "segments, exact circuit): error of the realised matrix / of its outputs")
        for k, r in t["methods"].items():
            lines.append(f"   {k:14s} {_pct(r['relative_error']):>9s} / {_pct(r['output_relative_error']):>9s}"
                         f"   ({r['seconds']:.1f} s)")
    if "optimizer" in s:
        o = s["optimizer"]
        lines.append(f"5. design optimizer on 'convex_cim' (window + ADC full scale per layer), {o['chips']} chips")
        for k in ("naive", "convex"):
            r = o[k]
            lines.append(f"   {k:7s} layer MSE predicted {o['total'][k]['predicted_mse']:.4g}, simulated "
                         f"{o['total'][k]['simulated_mse']:.4g}; accuracy {100 * r['accuracy']['mean']:.2f} ± "
                         f"{100 * r['accuracy']['std']:.2f} % (digital {_pct(o['digital'])})")
        lines.append(f"   MSE reduction: predicted {_pct(o['predicted_mse_reduction'])}, simulated "
                     f"{_pct(o['simulated_mse_reduction'])}")
    return "\n".join(lines)
