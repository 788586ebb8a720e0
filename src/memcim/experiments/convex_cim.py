"""Paper 003's experiment: convex window/FS design and noise-aware fine-tuning on the MNIST MLP.

The reference 784-256-128-10 ReLU MLP (``mnist-mlp-256-128``) runs on 128x128 crossbars with the
``convex_cim`` preset (``src/memcim/presets/convex_cim.toml``). Rows of the table:

* **digital**: the float model;
* **naive**: the paper's naive mapping: the device's full window and an ADC full scale covering
  the largest possible output of every array (``adc.fs_mode = "max"``);
* **convex only**: per layer, the window and FS from :func:`memcim.optimize.convex_range.optimize_layer`
  (inputs: the layer's digital activations on training images);
* **noise-aware only**: the naive hardware, with the model fine-tuned by
  :func:`memcim.nn.noise_aware.finetune_noise_aware` on the naive design's hardware (the simulator's
  training read, a new chip every mini-batch, and the noise-aware activation);
* **both**: fine-tuned under the convex design's noise, then the design re-optimised on the
  fine-tuned weights.

Columns: test accuracy (mean and std over chips), output MSE of the logits against the same
model run digitally, the closed form's predicted layer MSE, and the energy per inference
(:mod:`memcim.hardware.energy`). An ADC-bits sweep (2..8) compares naive and both.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from memcim.analysis.column_error import InputStats, LayerErrorModel
from memcim.config import HardwareConfig
from memcim.hardware.energy import (
    EnergyConfig,
    digital_energy,
    matrix_cost,
    network_cost,
)
from memcim.optimize.convex_range import DesignLimits, optimize_layer
from memcim.registry import register

__all__ = ["PAPER", "design_network", "linear_inputs", "run"]

#: The paper's reported figures (abstract of paper 003).
PAPER = {"naive_loss_points": 6.74, "optimized_accuracy": 97.32, "gap_to_digital_points": 0.89,
         "mse_reduction": 0.86, "energy_gain_vs_naive": 0.11, "adc3_accuracy": 93.8}


def _log(msg: str, log: Callable[[str], None] | None) -> None:
    if log is not None:
        log(msg)


@torch.no_grad()
def linear_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The inputs of every ``nn.Linear`` of ``model`` on ``x`` (digital forward), by module name."""
    acts, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: acts.__setitem__(name, a[0].reshape(-1, m.in_features).double().numpy())))
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return acts


def design_network(model: nn.Module, hw: HardwareConfig, calib_x: torch.Tensor, *, limits: DesignLimits | None = None,
                   method: str = "cvxpy", naive: bool = False, per_column: bool = False) -> dict:
    """Per-layer error models and designs (optimal, or the naive one) for every Linear of ``model``.

    Returns
    -------
    dict name -> {"model": LayerErrorModel, "design": Design, "hw": HardwareConfig, "result": LayerDesign|None,
    "index": position in the Sequential}.
    """
    acts = linear_inputs(model, calib_x)
    out = {}
    index = {name: i for i, (name, _) in enumerate(model.named_children())}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        W = mod.weight.detach().double().numpy().T
        lm = LayerErrorModel(W, hw, InputStats.from_samples(acts[name], hw, name=f"inputs of {name}"))
        if naive:
            d = lm.naive_design()
            res = None
            lhw = hw
        else:
            res = optimize_layer(lm, limits, method=method, per_column=per_column)
            d = res.design
            lhw = lm.hardware_for(d) if not per_column else hw.replace(
                device={"g_min": float(d.g_min), "g_max": float(d.g_max)},
                adc={"fs_mode": "fixed", "full_scale": float(np.max(lm.fs_volts(d)))})
        out[name] = {"model": lm, "design": d, "hw": lhw, "result": res, "index": index.get(name)}
    return out


def _energy(designs: dict, ecfg: EnergyConfig) -> dict:
    """The network's energy per inference [J] by component, with its latency [s]."""
    net = network_cost([matrix_cost(d["model"].W, d["model"].hw, g_min=d["design"].g_min, g_max=d["design"].g_max,
                                     u2=d["model"].stats.m2_plain, energy=ecfg, name=name)
                        for name, d in designs.items()])
    return dict(net.energy, latency_s=net.latency)


def _evaluate(model, test, hw, designs, chips, seed, calib, log=None):
    """Accuracy and output MSE over chips; per-column FS designs are written into each chip."""
    from memcim.nn.evaluate import chip_outputs, summarize
    from memcim.nn.train import predict

    model = model.eval()
    ref = predict(model, test.x)
    y = test.y
    overrides = {n: d["hw"] for n, d in designs.items()} if designs else None

    def apply_designs(c, analog):
        mods = dict(analog.named_modules())
        for name, d in (designs or {}).items():
            if np.ndim(d["design"].fs) > 0:          # per-column FS: write it into the programmed chip
                chip = mods[name].chip
                mods[name].chip = chip.with_plan(d["model"].apply_design(chip.mapped, d["design"]))

    accs, mses = [], []
    for _, _, out in chip_outputs(model, test.x, hw, chips=chips, seed=seed, overrides=overrides, calib_data=calib,
                                  progress=False, on_program=apply_designs):
        out = out.float()
        accs.append(float((out.argmax(1) == y).float().mean()))
        mses.append(float(((out - ref) ** 2).mean()))
    return {"digital": {"accuracy": float((ref.argmax(1) == y).float().mean())}, "accuracy": summarize(accs),
            "mse": summarize(mses)}


def _predicted(designs):
    return float(sum(d["model"].terms(d["design"], per="layer")["total"] for d in designs.values()))


def _finetune(model, hw, designs, train, epochs, seed, calib):
    """Noise-aware fine-tuning of a copy of ``model`` on each layer's designed hardware."""
    from memcim.nn.noise_aware import finetune_noise_aware

    ft = copy.deepcopy(model)
    hist = finetune_noise_aware(ft, hw, train, overrides={n: d["hw"] for n, d in designs.items()},
                                calib_data=calib, epochs=epochs, seed=seed)
    return ft.eval(), hist


def _summary(doc: dict) -> dict:
    keys = ("digital_accuracy", "naive_loss_points", "both_gap_points", "convex_gap_points",
            "mse_reduction_both_vs_naive", "energy_gain_both_vs_naive", "adc3_both_accuracy")
    return {k: doc["summary"][k] for k in keys if k in doc["summary"]}


#: the paper's values of the summary numbers (abstract of paper 003).
REFERENCE = {"naive_loss_points": "6.74", "both_gap_points": "0.89", "mse_reduction_both_vs_naive": "0.86",
             "energy_gain_both_vs_naive": "0.11", "adc3_both_accuracy": "0.938"}


@register("003/convex-cim", title="convex window/FS design and noise-aware fine-tuning on the MNIST MLP, "
          "with an ADC-bits sweep", plot=lambda d, png: plot(d, png), summary=_summary, reference=REFERENCE,
          quick={"chips": 3, "epochs": 1, "n_test": 2000}, hardware="convex_cim")
def run(*, chips: int = 10, seed: int = 0, epochs: int = 3, sweep_bits=(2, 3, 4, 5, 6, 7, 8),
        hw: str | HardwareConfig | None = None, method: str = "cvxpy", sweep_chips: int | None = None,
        n_test: int | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run the experiment and return the result document (JSON-ready apart from numpy scalars).

    Parameters
    ----------
    chips : chips per row (quick: 3).
    seed : seed of the chips and of the fine-tuning.
    epochs : fine-tuning epochs (quick: 1).
    sweep_bits : ADC resolutions of the sweep (empty: no sweep).
    sweep_chips : chips per point of the sweep (default: ``chips``).
    n_test : test images used (default all 10,000; quick 2,000).
    hw : hardware (preset name, file or config; default the ``convex_cim`` preset).
    method : convex solver, "cvxpy" or "fast".
    log : called with one line at each stage (the CLI prints it on stderr); None: silent.
    """
    from memcim import validate
    from memcim.config import resolve_config
    from memcim.data.datasets import load_dataset
    from memcim.nn.models import get_reference_model, reference_info
    from memcim.nn.train import evaluate_accuracy

    chips = validate.integer("chips", chips, lo=1, hi=100_000)
    epochs = validate.integer("epochs", epochs, lo=1, hi=1000)
    if sweep_chips is not None:
        sweep_chips = validate.integer("sweep_chips", sweep_chips, lo=1, hi=100_000)
    if n_test is not None:
        n_test = validate.integer("n_test", n_test, lo=1)
    method = validate.choice("method", method, ("cvxpy", "fast"))
    sweep_bits = tuple(validate.integer("sweep_bits", b, lo=2, hi=24) for b in (sweep_bits or ()))
    hw = resolve_config(hw, default="convex_cim")
    t0 = time.perf_counter()
    model = get_reference_model("mnist-mlp-256-128").eval()
    train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test", limit=n_test)
    sweep_chips = sweep_chips or chips
    calib = train.x[:2000]
    ecfg = hw.energy
    limits = DesignLimits()
    digital_acc = evaluate_accuracy(model, test)
    dig_e = {"total": sum(digital_energy(m.in_features, m.out_features, ecfg)["total"]
                          for m in model.modules() if isinstance(m, nn.Linear))}
    rows = {"digital": {"accuracy": {"mean": digital_acc, "std": 0.0}, "mse": {"mean": 0.0, "std": 0.0},
                        "energy_j": dig_e["total"]}}

    def row(name, mdl, hwr, designs, optimised, extra=None):
        _log(f"[convex-cim] {name}: evaluating on {chips} chips", log)
        r = _evaluate(mdl, test, hwr, designs if optimised else None, chips, seed, calib, log)
        e = _energy(designs, ecfg)
        rows[name] = {"accuracy": {k: r["accuracy"][k] for k in ("mean", "std", "ci95_mean", "values")},
                      "mse": {k: r["mse"][k] for k in ("mean", "std")}, "model_digital_accuracy": r["digital"]["accuracy"],
                      "predicted_layer_mse": _predicted(designs), "energy_j": e["total"], "energy_breakdown_j": e,
                      "designs": {n: _design_summary(d) for n, d in designs.items()}, **(extra or {})}

    naive_d = design_network(model, hw, calib, naive=True)
    row("naive", model, hw, naive_d, False)
    _log("[convex-cim] convex design", log)
    conv_d = design_network(model, hw, calib, limits=limits, method=method)
    row("convex only", model, hw, conv_d, True,
        {"solve_seconds": {n: d["result"].solve_seconds for n, d in conv_d.items()}})
    _log(f"[convex-cim] noise-aware fine-tuning ({epochs} epochs) under the naive design", log)
    na_model, h1 = _finetune(model, hw, naive_d, train, epochs, seed, calib)
    na_d = design_network(na_model, hw, calib, naive=True)
    row("noise-aware only", na_model, hw, na_d, False, {"finetune": h1})
    _log("[convex-cim] noise-aware fine-tuning under the convex design", log)
    both_model, h2 = _finetune(model, hw, conv_d, train, epochs, seed, calib)
    both_d = design_network(both_model, hw, calib, limits=limits, method=method)
    row("both", both_model, hw, both_d, True, {"finetune": h2})

    sweep = []
    for b in sweep_bits:
        hb = hw.replace(adc={"bits": int(b)})
        _log(f"[convex-cim] ADC sweep: {b} bits", log)
        from memcim.nn.evaluate import evaluate_analog

        rn = evaluate_analog(model, test, hb, chips=sweep_chips, seed=seed, calib_data=calib, progress=False)
        cd = design_network(model, hb, calib, limits=limits, method="fast")
        fm, _ = _finetune(model, hb, cd, train, epochs, seed, calib)
        bd = design_network(fm, hb, calib, limits=limits, method="fast")
        rb = _evaluate(fm, test, hb, bd, sweep_chips, seed, calib, log)
        sweep.append({"bits": int(b), "naive": {"mean": rn["accuracy"]["mean"], "std": rn["accuracy"]["std"],
                                                 "mse": rn["mse"]["mean"]},
                      "both": {"mean": rb["accuracy"]["mean"], "std": rb["accuracy"]["std"], "mse": rb["mse"]["mean"]}})
    info = reference_info("mnist-mlp-256-128")
    naive_mse = rows["naive"]["mse"]["mean"]
    summary = {
        "digital_accuracy": digital_acc,
        "naive_loss_points": 100 * (digital_acc - rows["naive"]["accuracy"]["mean"]),
        "both_gap_points": 100 * (digital_acc - rows["both"]["accuracy"]["mean"]),
        "convex_gap_points": 100 * (digital_acc - rows["convex only"]["accuracy"]["mean"]),
        "mse_reduction_convex_vs_naive": 1 - rows["convex only"]["mse"]["mean"] / naive_mse,
        "mse_reduction_both_vs_naive": 1 - rows["both"]["mse"]["mean"] / naive_mse,
        "energy_gain_both_vs_naive": rows["naive"]["energy_j"] / rows["both"]["energy_j"] - 1,
        "energy_gain_vs_digital": dig_e["total"] / rows["both"]["energy_j"],
        "crossbar_read_energy_reduction_both_vs_naive":
            1 - rows["both"]["energy_breakdown_j"]["crossbar"] / rows["naive"]["energy_breakdown_j"]["crossbar"],
        "adc3_both_accuracy": next((s["both"]["mean"] for s in sweep if s["bits"] == 3), None),
    }
    return {"experiment": "convex-cim", "paper": PAPER, "summary": summary, "rows": rows, "adc_sweep": sweep,
            "config": hw.to_dict(), "energy_config": ecfg.to_dict(), "limits": limits.__dict__,
            "model": {"name": "mnist-mlp-256-128", "test_accuracy_reference": info.get("test_accuracy")},
            "n_test": len(test), "chips": chips, "sweep_chips": sweep_chips, "epochs": epochs, "method": method,
            "seconds": time.perf_counter() - t0}


def _design_summary(d) -> dict:
    lm, de = d["model"], d["design"]
    fs = np.asarray(de.fs)
    t = lm.terms(de, per="layer")
    return {"g_min": de.g_min, "g_max": de.g_max, "fs_weight_units": float(fs.max()) if fs.ndim else float(fs),
            "fs_volts": float(np.max(lm.fs_volts(de))), "predicted_mse_by_term": t,
            "signal_power": lm.signal_power(per="layer")}


def format_table(doc: dict) -> str:
    """The result table as text."""
    lines = [f"{'row':18s} {'accuracy %':>18s} {'output MSE':>12s} {'pred. layer MSE':>16s} {'energy/inf':>12s}"]
    for name, r in doc["rows"].items():
        a = r["accuracy"]
        pm = r.get("predicted_layer_mse")
        lines.append(f"{name:18s} {100 * a['mean']:9.2f} ± {100 * a['std']:5.2f} {r['mse']['mean']:12.4g} "
                     f"{'' if pm is None else f'{pm:.4g}':>16s} {r['energy_j'] * 1e9:9.3f} nJ")
    if doc["adc_sweep"]:
        lines.append("")
        lines.append("ADC bits   naive accuracy %      both accuracy %")
        for s in doc["adc_sweep"]:
            lines.append(f"{s['bits']:8d}   {100 * s['naive']['mean']:6.2f} ± {100 * s['naive']['std']:4.2f}"
                         f"      {100 * s['both']['mean']:6.2f} ± {100 * s['both']['std']:4.2f}")
    s = doc["summary"]
    lines.append("")
    lines.append(f"naive loss {s['naive_loss_points']:.2f} points (paper 6.74); both within "
                 f"{s['both_gap_points']:.2f} of digital (paper 0.89); output MSE -{100 * s['mse_reduction_convex_vs_naive']:.1f} % "
                 f"convex, -{100 * s['mse_reduction_both_vs_naive']:.1f} % both (paper -86 %); energy "
                 f"{100 * s['energy_gain_both_vs_naive']:+.1f} % vs naive (paper +11 %), "
                 f"{s['energy_gain_vs_digital']:.1f}x vs digital (paper 14x); crossbar read energy "
                 f"-{100 * s['crossbar_read_energy_reduction_both_vs_naive']:.1f} %")
    if s.get("adc3_both_accuracy") is not None:
        lines.append(f"3-bit ADC, both: {100 * s['adc3_both_accuracy']:.2f} % (paper 93.8 %)")
    return "\n".join(lines)


def plot(doc: dict, path) -> None:
    """Accuracy per row and the ADC sweep, as one PNG."""
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    names = list(doc["rows"])
    means = [100 * doc["rows"][n]["accuracy"]["mean"] for n in names]
    stds = [100 * doc["rows"][n]["accuracy"]["std"] for n in names]
    ax[0].bar(range(len(names)), means, yerr=stds, color="tab:blue", capsize=4)
    ax[0].set_xticks(range(len(names)), names, rotation=20)
    ax[0].set_ylabel("test accuracy [%]")
    ax[0].set_ylim(max(0, min(means) - 5), 100)
    ax[0].set_title("MNIST MLP 784-256-128-10, 128x128 crossbars")
    if doc["adc_sweep"]:
        b = [s["bits"] for s in doc["adc_sweep"]]
        for key, col in (("naive", "tab:red"), ("both", "tab:green")):
            ax[1].errorbar(b, [100 * s[key]["mean"] for s in doc["adc_sweep"]],
                           yerr=[100 * s[key]["std"] for s in doc["adc_sweep"]], marker="o", color=col, label=key)
        ax[1].axhline(100 * doc["summary"]["digital_accuracy"], color="k", ls="--", label="digital")
        ax[1].set_xlabel("ADC bits")
        ax[1].set_ylabel("test accuracy [%]")
        ax[1].legend()
        ax[1].set_title("ADC resolution sweep")
    savefig(fig, path)
