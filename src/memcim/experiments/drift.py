"""Accuracy over time after programming: the field's standard figure (1 s, 1 hour, 1 day, 1 year).

Registry entry ``time/accuracy`` (``memcim paper run time/accuracy [--quick] --out DIR``): the
reference MLP (``mnist-mlp-256-128``) and CNN (``mnist-cnn-small``) on every preset fitted to
published measurements and every preset whose device drifts (:func:`time_presets`), each chip
programmed once and read at ``t0`` (``device.drift_t0``, the first read) and at every later time,
once per drift-compensation mode (``none``, ``global``, ``column``) on the same chips. The PNG has
one panel per (hardware, model) and one band (mean ± std over chips) per compensation mode against
log time. A preset without drift, 1/f or telegraph noise reads the same conductances at every time:
its bands are flat by construction (its panel says so). :func:`table` prints the numbers as the
Markdown table of docs/time.md.

:func:`plot_evaluate` draws the same bands for ``memcim evaluate --time ... --out DIR``.

Examples
--------
>>> from memcim.experiments.drift import drift_presets, time_presets
>>> "pcm" in drift_presets()
True
>>> time_presets()
['pcm', 'wan2022', 'hfo2', 'taox']
"""
from __future__ import annotations

from memcim import validate
from memcim.registry import register

MODELS = ("mnist-mlp-256-128", "mnist-cnn-small")
#: one hour, one day, one year [s]; the first read t0 (device.drift_t0) is always added
TIMES = (3600.0, 86400.0, 3.15e7)
MODES = ("none", "global", "column")
#: The presets fitted to published measurements (docs/devices.md), in the order of the figure.
FITTED = ("pcm", "wan2022", "hfo2", "taox")
#: Fitted presets the default run leaves out, and why (docs/time.md); none at present. A preset that runs
#: only with changed settings is in :data:`memcim.experiments.overrides.NETWORK_OVERRIDES` instead
#: (``taox``: 32 x 32 tiles, linearized read).
SKIPPED: dict[str, str] = {}
_COLORS = {"none": "tab:red", "global": "tab:blue", "column": "tab:green"}


def drift_presets() -> list[str]:
    """Names of the shipped presets whose device drifts (``device.has_drift``), sorted."""
    from memcim.config import preset, preset_names

    return [p for p in preset_names() if preset(p).device.has_drift]


def time_presets() -> list[str]:
    """The presets the default ``time/accuracy`` run evaluates: the fitted ones (:data:`FITTED`, less
    :data:`SKIPPED`) and then every other preset with drift (:func:`drift_presets`)."""
    from memcim.config import preset_names

    names = preset_names()
    fitted = [p for p in FITTED if p in names and p not in SKIPPED]
    return fitted + [p for p in drift_presets() if p not in fitted and p not in SKIPPED]


def _drifts(config: dict) -> bool:
    """Whether a hardware's ``to_dict()`` reads differently over time (drift, 1/f or telegraph noise)."""
    from memcim.config import HardwareConfig

    d = HardwareConfig.from_dict(config).device
    return d.has_drift or d.has_read_1f or d.has_rtn


def _hardware_list(hw) -> tuple[list, dict]:
    """The hardware of ``hw`` (default: :func:`time_presets`), overrides applied (experiments.overrides)."""
    from memcim.experiments.overrides import hardware_list

    return hardware_list(hw, time_presets, "hw: no preset has drift (device.drift_*); give a hardware with drift")


@register("time/accuracy",
          title="accuracy over time after programming (t0 to 1 year) of the reference MLP and CNN on every preset "
                "fitted to published measurements, one band per drift-compensation mode",
          plot=lambda result, path: plot(result, path),
          quick={"chips": 5, "n_images": 500},
          summary=lambda result: result["summary"], hardware="pcm")
def accuracy_over_time(*, models=MODELS, hw=None, times=TIMES, compensation=MODES, chips: int = 20,
                       dataset: str = "mnist", n_images: int = 10000, seed: int = 0, calib_samples: int = 256,
                       batch_size: int = 1000, progress: bool = False, log=None) -> dict:
    """Accuracy of each model on each hardware at each read time, per compensation mode.

    Parameters
    ----------
    models : reference model names (or ``nn.Module`` objects).
    hw : a preset name, file or config, or a list; default the fitted presets and every preset with drift
        (:func:`time_presets`).
    times : read times [s] after programming; ``t0`` (``device.drift_t0``) is always added first.
    compensation : drift-compensation modes (``compensation.drift``), each evaluated on the same chips.
    chips : chips programmed per (model, hardware); chip ``c`` uses ``layer_seed(seed, c)`` in every mode.
    dataset, n_images : the first ``n_images`` test images of ``dataset``.
    calib_samples : training images that calibrate the ADC full scales and are the drift
        compensation's reference inputs.
    progress : tqdm bar over chips. log : ``log(line)`` after each (model, hardware, mode).

    Returns
    -------
    dict: ``results`` (one per model, hardware and mode: ``digital_accuracy``, ``times``, ``t0`` and
    ``over_time``, as :func:`memcim.nn.evaluate.evaluate_analog` returns it), ``summary`` (mean
    accuracy at ``t0`` and at the last time of each), ``models``, ``hardware``, ``compensation``.
    """
    import time as _time

    import torch

    from memcim.config import DRIFT_COMPENSATION
    from memcim.data.spec import calibration_data, load_data
    from memcim.nn.evaluate import evaluate_analog, read_times
    from memcim.nn.loading import fit_input
    from memcim.nn.models import get_reference_model

    chips = validate.integer("chips", chips, lo=1, hi=100_000)
    n_images = validate.integer("n_images", n_images, lo=1, hi=1_000_000)
    seed = validate.seed(seed)
    modes = [compensation] if isinstance(compensation, str) else list(compensation)
    if not modes:
        raise ValueError("compensation: an empty list; give modes among none, global, column")
    for m in modes:
        validate.choice("compensation", m, DRIFT_COMPENSATION)
    models = [models] if isinstance(models, str) else list(models)
    if not models:
        raise ValueError("models: an empty list; give at least one model")
    hws, overrides = _hardware_list(hw)
    for h in hws:
        read_times(times, h)          # every time checked before any work
    spec = f"{dataset}:test:{n_images}"
    ds = load_data(spec)
    calib = calibration_data(spec, calib_samples)
    results = []
    start = _time.perf_counter()
    for name in models:
        net = get_reference_model(name) if isinstance(name, str) else name
        net = fit_input(net, ds.input_shape).float().eval()
        label = name if isinstance(name, str) else type(name).__name__
        for h in hws:
            for mode in modes:
                hm = h.replace(compensation={"drift": mode})
                with torch.no_grad():
                    r = evaluate_analog(net, ds, hm, chips=chips, seed=seed, calib_data=calib,
                                        batch_size=batch_size, progress=progress, times=times)
                results.append({"model": label, "hardware": h.name, "compensation": mode,
                                "digital_accuracy": r["digital"]["accuracy"], "t0": r["t0"], "times": r["times"],
                                "over_time": r["over_time"], "chips": chips, "seconds": r["seconds"]})
                if log is not None:
                    a = r["over_time"]
                    log(f"time/accuracy {label} on {h.name} [{mode}]: "
                        + ", ".join(f"{o['t']:g} s {o['accuracy']['mean'] * 100:.2f} %" for o in a))
    summary = {}
    for r in results:
        key = f"{r['model']}/{r['hardware']}/{r['compensation']}"
        summary[f"{key}@t0"] = r["over_time"][0]["accuracy"]["mean"]
        summary[f"{key}@{r['times'][-1]:g}s"] = r["over_time"][-1]["accuracy"]["mean"]
    return {"models": list(dict.fromkeys(x["model"] for x in results)),
            "hardware": [h.name for h in hws], "compensation": modes, "chips": chips,
            "data": spec, "seed": seed, "results": results, "summary": summary,
            "configs": {h.name: h.to_dict() for h in hws}, "overrides": overrides,
            "seconds": _time.perf_counter() - start}


# ------------------------------------------------------------------ plots
def _time_label(t: float) -> str:
    for unit, s in (("y", 3.15e7), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= s:
            v = t / s
            return f"{v:.3g} {unit}"
    return f"{t:.3g} s"


def draw_bands(ax, entries: list[dict], *, label_of=lambda r: r.get("compensation") or "", metric: str = "accuracy",
               digital: float | None = None) -> None:
    """One band (mean ± std over chips) per entry against log time on ``ax``; ``entries`` have
    ``over_time`` (:func:`memcim.nn.evaluate.evaluate_analog` with ``times``)."""
    import numpy as np

    pct = 100.0 if metric == "accuracy" else 1.0
    ticks = set()
    for i, r in enumerate(entries):
        ts = np.array([o["t"] for o in r["over_time"]])
        mean = np.array([o[metric]["mean"] for o in r["over_time"]]) * pct
        std = np.array([o[metric]["std"] for o in r["over_time"]]) * pct
        color = _COLORS.get(r.get("compensation"), f"C{i}")
        ax.plot(ts, mean, "o-", color=color, label=label_of(r), ms=3.5)
        ax.fill_between(ts, mean - std, mean + std, color=color, alpha=0.25, lw=0)
        ticks.update(ts.tolist())
    if digital is not None and metric == "accuracy":
        ax.axhline(digital * 100.0, color="0.4", ls="--", lw=1, label="digital")
    ax.set_xscale("log")
    ts = sorted(ticks)
    ax.set_xticks(ts)
    ax.set_xticklabels([_time_label(t) for t in ts], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("time after programming")
    ax.set_ylabel("test accuracy [%]" if metric == "accuracy" else "output MSE")
    ax.grid(alpha=0.3)


def plot(result: dict, path) -> None:
    """``time/accuracy``: one panel per (hardware, model), one band per compensation mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    hws, models = result["hardware"], result["models"]
    configs = result.get("configs", {})
    fig, axes = plt.subplots(len(hws), len(models), figsize=(4.4 * len(models), 2.9 * len(hws)), squeeze=False)
    for i, h in enumerate(hws):
        flat = h in configs and not _drifts(configs[h])
        for j, m in enumerate(models):
            ax = axes[i][j]
            entries = [r for r in result["results"] if r["hardware"] == h and r["model"] == m]
            if not entries:
                ax.set_visible(False)
                continue
            draw_bands(ax, entries, digital=entries[0]["digital_accuracy"])
            ax.set_title(f"{m} on {h} ({result['chips']} chips)" + ("\nno drift or 1/f noise: flat by construction"
                                                                   if flat else ""), fontsize=8)
            ax.legend(fontsize=6, title="drift compensation", title_fontsize=6)
    fig.tight_layout()
    _shrink(savefig(fig, path))
    plt.close(fig)


def _shrink(path) -> None:
    """Rewrite a PNG with a 64-colour palette (a quarter of the bytes; the bands and lines look the same)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def table(result: dict) -> str:
    """The accuracies of a ``time/accuracy`` result as a Markdown table: one row per (hardware, model,
    compensation mode), one column per read time, mean ± std over chips in %."""
    times = result["results"][0]["times"]
    head = ["preset", "model", "compensation"] + [("t0 = " + _time_label(t)) if k == 0 else _time_label(t)
                                                  for k, t in enumerate(times)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    last = (None, None)
    for r in sorted(result["results"], key=lambda r: (result["hardware"].index(r["hardware"]),
                                                      result["models"].index(r["model"]))):
        if r["times"] != times:
            raise ValueError("result: its entries have different read times; tabulate them separately")
        key = (r["hardware"], r["model"])
        cells = ([r["hardware"], f"{r['model']} (digital {r['digital_accuracy'] * 100:.2f} %)"] if key != last
                 else ["", ""])
        last = key
        cells += [r["compensation"]] + [f"{o['accuracy']['mean'] * 100:.2f} ± {o['accuracy']['std'] * 100:.2f}"
                                        for o in r["over_time"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_evaluate(doc: dict, path) -> None:
    """``memcim evaluate --time ... --out DIR``: accuracy (or output MSE without labels) against log
    time, one band per hardware and compensation mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    metric = "accuracy" if doc.get("labelled", True) else "mse"
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    entries = [r for r in doc["results"] if "over_time" in r]
    several_hw = len({r["hardware"] for r in entries}) > 1

    def label(r: dict) -> str:
        comp = r.get("compensation") or r.get("config", {}).get("compensation", {}).get("drift", "")
        return f"{r['hardware']}, {comp}" if several_hw or not r.get("compensation") else comp

    draw_bands(ax, entries, label_of=label, metric=metric, digital=doc.get("digital_accuracy"))
    ax.set_title(f"{doc['model']} on {doc['dataset']}/{doc['split']} ({doc['n_samples']} samples, "
                 f"{doc['chips']} chips)", fontsize=9)
    ax.legend(fontsize=8, title="drift compensation", title_fontsize=8)
    fig.tight_layout()
    savefig(fig, path)
    plt.close(fig)
