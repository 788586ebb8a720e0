"""Issue 16: the accuracy-energy front of a network as G_max, the ADC bits and the weight slices vary.

Every point evaluates ``mnist-mlp-256-128`` on programmed chips (:func:`memcim.nn.evaluate.evaluate_analog`)
and takes its energy per inference, latency and area from the one energy model
(:func:`memcim.hardware.energy.layer_cost` through :func:`memcim.nn.evaluate.energy_report`).
The front is the set of points no other point beats in both accuracy and energy.
"""
from __future__ import annotations

import itertools
import time

from memcim.registry import register

__all__ = ["run", "plot", "pareto"]


def pareto(points: list[dict]) -> list[int]:
    """Indices of the points with no other point at least as accurate and cheaper (or equal and better)."""
    keep = []
    for i, p in enumerate(points):
        if not any((q["accuracy"] >= p["accuracy"] and q["energy_j"] < p["energy_j"]) or
                   (q["accuracy"] > p["accuracy"] and q["energy_j"] <= p["energy_j"]) for q in points):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i]["energy_j"])


def _summary(doc: dict) -> dict:
    f = [doc["points"][i] for i in doc["front"]]
    return {"points": len(doc["points"]), "front": len(f),
            "best_accuracy": max(p["accuracy"] for p in doc["points"]),
            "least_energy_j": min(p["energy_j"] for p in doc["points"])}


@register("016/front", title="accuracy-energy front as G_max, ADC bits and weight slices vary (one energy model)",
          plot=lambda d, png: plot(d, png), summary=_summary, quick={"n_test": 300, "chips": 1,
                                                                    "gmax": (2e-5, 1e-4), "adc_bits": (4, 8)},
          hardware="generic")
def run(*, chips: int = 3, seed: int = 0, n_test: int = 1000, gmax=(1e-5, 3e-5, 1e-4),
        adc_bits=(3, 4, 5, 6, 8), weight_slices=(None, (4, 4)), hw=None, log=None) -> dict:
    """Evaluate every (G_max [S], ADC bits, weight slicing) point.

    Parameters
    ----------
    chips : programmed chips per point. seed : chips' seed. n_test : MNIST test images.
    gmax : G_max values [S]. adc_bits : ADC resolutions.
    weight_slices : weight slicings: None (unsliced) or a list of bits per slice (``slicing.weight_bits_per_slice``).
    hw : hardware (preset name, file or config; default ``generic``).
    """
    from memcim import validate
    from memcim.config import resolve_config
    from memcim.data.datasets import load_dataset
    from memcim.nn.evaluate import evaluate_analog
    from memcim.nn.models import get_reference_model

    chips = validate.integer("chips", chips, lo=1, hi=10_000)
    n_test = validate.integer("n_test", n_test, lo=1)
    base = resolve_config(hw, default="generic")
    model = get_reference_model("mnist-mlp-256-128").eval()
    test = load_dataset("mnist", "test", limit=n_test)
    calib = load_dataset("mnist", "train", limit=512).x
    t0 = time.perf_counter()
    points = []
    for g, b, sl in itertools.product(gmax, adc_bits, weight_slices):
        g = validate.number("gmax", g, lo=base.device.g_min, lo_open=True)
        b = validate.integer("adc_bits", b, lo=2, hi=24)
        h = base.set({"device.g_max": g, "adc.bits": b})
        if sl is not None:
            h = h.set({"slicing.weight_bits_per_slice": list(sl)})
        if log:
            log(f"[016/front] G_max {g:g} S, ADC {b} bits, slices {sl}")
        r = evaluate_analog(model, test, h, chips=chips, seed=seed, calib_data=calib, progress=False)
        e = r["energy"]
        points.append({"gmax": g, "adc_bits": b, "weight_slices": None if sl is None else list(sl),
                       "accuracy": r["accuracy"]["mean"], "accuracy_std": r["accuracy"]["std"],
                       "energy_j": e["energy_per_inference_j"], "latency_s": e["latency_s"], "area_m2": e["area_m2"],
                       "energy_breakdown_j": e["energy_breakdown_j"]})
    return {"experiment": "energy-front", "points": points, "front": pareto(points), "chips": chips, "seed": seed,
            "n_test": len(test), "config": base.to_dict(), "seconds": time.perf_counter() - t0}


def plot(doc: dict, path) -> None:
    """Accuracy against energy per inference, every point and the front."""
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = doc["points"]
    for b in sorted({p["adc_bits"] for p in pts}):
        q = [p for p in pts if p["adc_bits"] == b]
        ax.scatter([p["energy_j"] * 1e9 for p in q], [100 * p["accuracy"] for p in q], label=f"ADC {b} b")
    f = [pts[i] for i in doc["front"]]
    ax.plot([p["energy_j"] * 1e9 for p in f], [100 * p["accuracy"] for p in f], "k--", label="front")
    ax.set(xscale="log", xlabel="energy per inference [nJ]", ylabel="test accuracy [%]",
           title="MNIST MLP: accuracy-energy front (G_max, ADC bits, slices)")
    ax.legend(fontsize=8)
    savefig(fig, path)
