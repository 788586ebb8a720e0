"""The reference models of issue 15 on every preset: digital accuracy, accuracy over chips, Monte Carlo
against predicted output MSE, and the gain of hardware-aware fine-tuning on the noisiest preset.

Registry entry ``015/models`` (``memcim paper run 015/models [--quick] --out DIR``): the ResNet-style
CNN (``mnist-resnet-small``), the row-by-row LSTM (``mnist-lstm-row``) and the small vision
transformer (``mnist-vit-tiny``), with the 3-layer MLP (``mnist-mlp-256-128``) and the paper-001 CNN
(``mnist-cnn-small``) for comparison, on every shipped preset (:func:`model_presets`; the
``irdrop`` preset is left out by default, see :data:`SKIPPED`; ``taox`` runs with the settings of
:data:`memcim.experiments.overrides.NETWORK_OVERRIDES`, recorded in the result's ``overrides``).

Per (model, preset), over ``chips`` programmed chips (chip ``c``: ``layer_seed(seed, c)``, the
one Monte Carlo loop :func:`memcim.nn.evaluate.chip_outputs`):

* accuracy on the first ``n_images`` test images (mean, std, 95 % CI over chips);
* output MSE against the digital model on those images, and on the first ``n_predict`` of them
  beside the closed form :func:`memcim.analysis.predict.predict` on the same images, hardware and
  calibration. A model or preset the closed form refuses (ValueError) gets
  ``"not supported: <message>"``; a preset the crossbar mapping refuses gets the same entry for its
  whole row (``error``).

Hardware-aware fine-tuning: on the noisiest preset (``hwa_hw="noisiest"``: the evaluated preset
with the lowest accuracy averaged over the models), each model is converted
(:func:`memcim.nn.analog.convert_to_analog`, calibrated as the evaluation is) and trained in training
mode by :func:`memcim.nn.train.train`, as ``memcim train --init MODEL --hw PRESET`` trains it: every
mini-batch programs a fresh chip of the current weights and reads it differentiably (programming
noise, stuck devices, read noise, converters; BatchNorm statistics are updated on those reads).
The budget is fixed: ``hwa_epochs`` epochs over the first ``hwa_images`` training images at
``hwa_lr``. The fine-tuned digital weights are then evaluated on the same chips seeds and images as
before (accuracy over chips before and after, with error bars).

Examples
--------
>>> from memcim.experiments.layers_eval import model_presets
>>> "ideal" in model_presets() and "irdrop" not in model_presets()
True
"""
from __future__ import annotations

from memcim import validate
from memcim.registry import register

#: the three issue-15 models, then the MLP and the CNN they are compared with
MODELS = ("mnist-resnet-small", "mnist-lstm-row", "mnist-vit-tiny", "mnist-mlp-256-128", "mnist-cnn-small")
#: presets left out of the default list, and why
SKIPPED = {"irdrop": "its wires are solved as a circuit on every read (220 s for 2 chips x 200 images of "
                     "the MLP on 2 cores); give hw=irdrop to include it"}


def model_presets() -> list[str]:
    """The shipped presets the experiment evaluates by default: every preset but :data:`SKIPPED`, sorted
    with ``ideal`` first."""
    from memcim.config import preset_names

    names = [p for p in preset_names() if p not in SKIPPED]
    return sorted(names, key=lambda p: (p != "ideal", p))


def _hardware_list(hw) -> tuple[list, dict]:
    """The hardware of ``hw`` (default: :func:`model_presets`), overrides applied (experiments.overrides);
    a hardware named twice is refused."""
    from memcim.experiments.overrides import hardware_list

    out, applied = hardware_list(hw, model_presets, "hw: an empty list; give presets (memcim hw list) or leave "
                                                    "it out for every preset")
    names = [h.name for h in out]
    if len(set(names)) != len(names):
        raise ValueError(f"hw: {names} names a hardware twice; give each once")
    return out, applied


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def chip_stats(net, ds, hw, *, chips: int, seed: int, calib, batch_size: int, n_predict: int,
               progress: bool = False) -> dict:
    """Accuracy and output MSE of ``net`` on ``hw`` over ``chips`` chips (:func:`chip_outputs`), the MSE
    also on the first ``n_predict`` images, and the conversion report."""
    import torch

    from memcim.nn.analog import conversion_report
    from memcim.nn.evaluate import chip_outputs, summarize
    from memcim.nn.train import predict

    with torch.no_grad():
        ref = predict(net, ds.x, batch_size).float()
        accs, mses, mses_p = [], [], []
        analog = None
        for _, analog, out in chip_outputs(net, ds.x, hw, chips=chips, seed=seed, calib_data=calib,
                                           batch_size=batch_size, progress=progress):
            out = out.float()
            accs.append(float((out.argmax(1) == ds.y).float().mean()))
            err = (out - ref) ** 2
            mses.append(float(err.mean()))
            mses_p.append(float(err[:max(n_predict, 1)].mean()))
    report = conversion_report(analog).to_dict()
    return {"accuracy": summarize(accs), "mse": summarize(mses), "mse_predict_images": summarize(mses_p),
            "conversion": {"analog": [a["name"] for a in report["analog"]],
                           "arrays": sum(x["tiles"] for a in report["analog"] for x in a["arrays"]),
                           "digital": report["digital"], "digital_ops": report["digital_ops"]}}


def predicted_mse(net, x, hw, calib) -> dict:
    """The closed form's output MSE of ``net`` on ``hw`` for inputs ``x``, or why it is not supported."""
    import time

    from memcim.analysis.predict import predict

    t = time.perf_counter()
    try:
        p = predict(net, x, hw, calib_data=calib)
    except ValueError as e:
        return {"mse": None, "status": f"not supported: {_one_line(e)}", "seconds": time.perf_counter() - t}
    return {"mse": float(p.mse_mean), "status": "ok", "seconds": time.perf_counter() - t}


def hardware_aware_finetune(net, hw, train_ds, *, calib, epochs: int, lr: float, batch_size: int, seed: int):
    """A copy of ``net`` trained on ``hw``'s training read (:func:`memcim.nn.train.train` on its analog
    twin, as ``memcim train --init --hw`` does); returns (digital model, training history)."""
    import copy

    import torch

    from memcim.nn.analog import convert_to_analog, convert_to_digital
    from memcim.nn.train import train

    analog = convert_to_analog(copy.deepcopy(net), hw, calib_data=calib, seed=seed)
    hist = train(analog, train_ds, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=False,
                 threads=torch.get_num_threads())
    return convert_to_digital(analog).float().eval(), hist


@register("015/models",
          title="issue-15 reference models (ResNet-style CNN, LSTM, ViT; MLP and CNN beside) on every preset: "
                "accuracy over chips, Monte Carlo vs predicted output MSE, hardware-aware fine-tuning gain",
          plot=lambda result, path: plot(result, path),
          quick={"chips": 3, "n_images": 200, "n_predict": 5, "hwa_images": 1280},
          summary=lambda result: result["summary"], hardware="noisy")
def models_eval(*, models=MODELS, hw=None, chips: int = 10, dataset: str = "mnist", n_images: int = 500,
                n_predict: int = 10, seed: int = 0, calib_samples: int = 256, batch_size: int = 500,
                hwa_hw="noisiest", hwa_images: int = 5000, hwa_epochs: int = 1, hwa_lr: float = 1e-3,
                hwa_batch_size: int = 128, progress: bool = False, log=None) -> dict:
    """Evaluate each model on each hardware, then fine-tune it hardware-aware on the noisiest one.

    Parameters
    ----------
    models : reference model names (or ``nn.Module`` objects taking the dataset's images).
    hw : a preset name, file or config, or a list; default every preset of :func:`model_presets`.
    chips : chips programmed per (model, hardware); chip ``c`` uses ``layer_seed(seed, c)``.
    dataset, n_images : the first ``n_images`` test images of ``dataset``.
    n_predict : the first images of those (at most ``n_images``) on which the closed form and the Monte
        Carlo MSE are compared (the closed form of a ResNet or a ViT takes seconds per image); 0 skips it.
    calib_samples : training images that calibrate the ADC full scales (evaluation, closed form and
        fine-tuning alike).
    batch_size : inference batch size.
    hwa_hw : hardware of the fine-tuning: ``"noisiest"`` (the evaluated hardware with the lowest
        accuracy averaged over the models), a preset name, file or config, or None to skip it.
    hwa_images, hwa_epochs, hwa_lr, hwa_batch_size : the fine-tuning budget: epochs over the first
        ``hwa_images`` training images, Adam at ``hwa_lr``.
    progress : tqdm bars over chips. log : ``log(line)`` after each step.

    Returns
    -------
    dict: ``results`` (one per model and hardware: ``accuracy``/``mse`` summaries over chips, the
    closed form's ``predicted`` entry beside ``mse_predict_images``, ``conversion``, or ``error`` when
    the hardware cannot map the model), ``digital`` (accuracy per model), ``hardware_aware`` (one per
    model: ``before``/``after`` accuracy summaries, ``gain``, training ``loss`` and ``seconds``),
    ``summary``, ``configs`` and the settings.
    """
    import time as _time

    import numpy as np
    import torch

    from memcim.config import HardwareConfig, resolve_config
    from memcim.data.spec import load_data
    from memcim.nn.evaluate import summarize
    from memcim.nn.loading import fit_input
    from memcim.nn.models import get_reference_model
    from memcim.nn.train import evaluate_accuracy

    chips = validate.integer("chips", chips, lo=1, hi=100_000)
    n_images = validate.integer("n_images", n_images, lo=1, hi=1_000_000)
    n_predict = min(validate.integer("n_predict", n_predict, lo=0, hi=1_000_000), n_images)
    calib_samples = validate.integer("calib_samples", calib_samples, lo=1, hi=1_000_000)
    batch_size = validate.integer("batch_size", batch_size, lo=1, hi=10_000_000)
    hwa_images = validate.integer("hwa_images", hwa_images, lo=1, hi=10_000_000)
    hwa_epochs = validate.integer("hwa_epochs", hwa_epochs, lo=1, hi=1000)
    hwa_lr = validate.number("hwa_lr", hwa_lr, lo=0, lo_open=True)
    hwa_batch_size = validate.integer("hwa_batch_size", hwa_batch_size, lo=1, hi=10_000_000)
    seed = validate.seed(seed)
    models = [models] if isinstance(models, str) else list(models)
    if not models:
        raise ValueError("models: an empty list; give at least one model")
    hws, overrides = _hardware_list(hw)
    hwa_cfg = None
    if hwa_hw is not None and not (isinstance(hwa_hw, str) and hwa_hw == "noisiest"):
        try:
            hwa_cfg = hwa_hw if isinstance(hwa_hw, HardwareConfig) else resolve_config(hwa_hw)
        except ValueError as e:
            raise ValueError(f"hwa_hw: {str(e).split(': ', 1)[-1]}") from None
    spec = f"{dataset}:test:{n_images}"
    ds = load_data(spec)
    # one read of the training split: its first calib_samples calibrate (as calibration_data gives them),
    # its first hwa_images fine-tune
    train_all = load_data(f"{dataset}:train:{max(calib_samples, hwa_images if hwa_hw is not None else 0)}")
    calib = train_all.x[:calib_samples]
    start = _time.perf_counter()
    nets, labels, digital, results = {}, [], {}, []
    for name in models:
        net = get_reference_model(name) if isinstance(name, str) else name
        label = name if isinstance(name, str) else type(name).__name__
        nets[label] = fit_input(net, ds.input_shape).float().eval()
        labels.append(label)
        with torch.no_grad():
            digital[label] = evaluate_accuracy(nets[label], ds, batch_size)
        for h in hws:
            t = _time.perf_counter()
            row = {"model": label, "hardware": h.name, "chips": chips}
            try:
                row.update(chip_stats(nets[label], ds, h, chips=chips, seed=seed, calib=calib,
                                      batch_size=batch_size, n_predict=n_predict, progress=progress))
            except ValueError as e:    # the hardware cannot map this model (e.g. no conductance scale fits)
                row["error"] = f"not supported: {_one_line(e)}"
            row["seconds"] = _time.perf_counter() - t
            if "error" not in row and n_predict == 0:
                row["predicted"] = {"mse": None, "status": "skipped: n_predict = 0", "seconds": 0.0}
            elif "error" not in row:
                row["predicted"] = predicted_mse(nets[label], ds.x[:n_predict], h, calib)
                mc, pr = row["mse_predict_images"]["mean"], row["predicted"]["mse"]
                row["predicted"]["ratio_to_mc"] = (pr / mc) if (pr is not None and mc > 0) else None
            results.append(row)
            if log is not None:
                log(f"015/models {label} on {h.name}: " + (row["error"] if "error" in row else
                    f"{row['accuracy']['mean'] * 100:.2f} ± {row['accuracy']['std'] * 100:.2f} % "
                    f"(digital {digital[label] * 100:.2f} %), MSE MC {row['mse_predict_images']['mean']:.4g} "
                    f"predicted {row['predicted']['mse'] if row['predicted']['mse'] is not None else 'n/a'}"))
    # ---- hardware-aware fine-tuning on the noisiest hardware
    noisiest = None
    ok = [r for r in results if "error" not in r]
    means = {h.name: float(np.mean([r["accuracy"]["mean"] for r in ok if r["hardware"] == h.name]))
             for h in hws if any(r["hardware"] == h.name for r in ok)}
    if means:
        noisiest = min(means, key=means.get)
    hwa = []
    if hwa_hw is not None and (hwa_cfg is not None or noisiest is not None):
        target = hwa_cfg if hwa_cfg is not None else next(h for h in hws if h.name == noisiest)
        train_ds = train_all if len(train_all) == hwa_images else load_data(f"{dataset}:train:{hwa_images}")
        for label in labels:
            t = _time.perf_counter()
            before = next((r for r in ok if r["model"] == label and r["hardware"] == target.name), None)
            if before is None:
                try:
                    before = chip_stats(nets[label], ds, target, chips=chips, seed=seed, calib=calib,
                                        batch_size=batch_size, n_predict=n_predict, progress=progress)
                except ValueError as e:
                    hwa.append({"model": label, "hardware": target.name, "error": f"not supported: {_one_line(e)}"})
                    continue
            tuned, hist = hardware_aware_finetune(nets[label], target, train_ds, calib=calib, epochs=hwa_epochs,
                                                  lr=hwa_lr, batch_size=hwa_batch_size, seed=seed)
            after = chip_stats(tuned, ds, target, chips=chips, seed=seed, calib=calib, batch_size=batch_size,
                               n_predict=n_predict, progress=progress)
            with torch.no_grad():
                dig_after = evaluate_accuracy(tuned, ds, batch_size)
            b, a = before["accuracy"], after["accuracy"]
            diff = np.asarray(a["values"]) - np.asarray(b["values"])
            entry = {"model": label, "hardware": target.name, "before": b, "after": a,
                     "gain": summarize(diff.tolist()),
                     "digital_before": digital[label], "digital_after": dig_after,
                     "mse_before": before["mse"]["mean"], "mse_after": after["mse"]["mean"],
                     "loss": hist["loss"], "train_seconds": hist["seconds"], "seconds": _time.perf_counter() - t}
            hwa.append(entry)
            if log is not None:
                log(f"015/models hardware-aware {label} on {target.name}: {b['mean'] * 100:.2f} ± {b['std'] * 100:.2f}"
                    f" -> {a['mean'] * 100:.2f} ± {a['std'] * 100:.2f} % ({hist['seconds']:.0f} s training)")
    summary = {}
    for label in labels:
        summary[f"{label}/digital"] = digital[label]
        for r in results:
            if r["model"] == label and "error" not in r:
                summary[f"{label}/{r['hardware']}"] = r["accuracy"]["mean"]
    for e in hwa:
        if "error" not in e:
            summary[f"{e['model']}/{e['hardware']}/hardware-aware"] = e["after"]["mean"]
    return {"models": labels, "hardware": [h.name for h in hws], "skipped_presets": dict(SKIPPED) if hw is None else {},
            "chips": chips, "data": spec, "n_images": n_images, "n_predict": n_predict,
            "calib_samples": calib_samples, "seed": seed, "digital": digital, "results": results,
            "noisiest": noisiest, "mean_accuracy_per_hardware": means,
            "hardware_aware_settings": {"hardware": hwa[0]["hardware"] if hwa else None, "requested": (
                hwa_hw if isinstance(hwa_hw, str) or hwa_hw is None else getattr(hwa_hw, "name", str(hwa_hw))),
                "train_data": f"{dataset}:train:{hwa_images}", "epochs": hwa_epochs, "lr": hwa_lr,
                "batch_size": hwa_batch_size, "method": "memcim.nn.train.train on convert_to_analog (memcim train "
                "--init MODEL --hw PRESET): a fresh chip per mini-batch, differentiable read"},
            "hardware_aware": hwa, "summary": summary,
            "configs": {h.name: h.to_dict() for h in hws}, "overrides": overrides,
            "seconds": _time.perf_counter() - start}


# ------------------------------------------------------------------ plot
def plot(result: dict, path) -> None:
    """Top: accuracy over chips (mean ± std) per preset, one bar per model, digital accuracy as a
    tick. Bottom left: hardware-aware fine-tuning before/after. Bottom right: predicted against
    Monte Carlo output MSE where the closed form applies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from memcim.io import savefig

    models, hws = result["models"], result["hardware"]
    fig = plt.figure(figsize=(max(9.0, 1.25 * len(hws) + 3), 8.0))
    ax = fig.add_subplot(2, 1, 1)
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(hws))
    for i, m in enumerate(models):
        mean, std = [], []
        for h in hws:
            r = next((r for r in result["results"] if r["model"] == m and r["hardware"] == h), None)
            ok = r is not None and "error" not in r
            mean.append(r["accuracy"]["mean"] * 100 if ok else np.nan)
            std.append(r["accuracy"]["std"] * 100 if ok else 0.0)
        xs = x - 0.4 + width * (i + 0.5)
        ax.bar(xs, mean, width, yerr=std, capsize=2, color=f"C{i}", label=m, error_kw={"lw": 0.8})
        ax.plot(xs, [result["digital"][m] * 100] * len(xs), ls="none", marker="_", ms=max(4.0, 60 * width),
                color="k", mew=1.2, label="digital" if i == 0 else None)
        for j, v in enumerate(mean):
            if np.isnan(v):
                ax.text(xs[j], 2, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels(hws, fontsize=8)
    ax.set_ylabel("test accuracy [%]")
    ax.set_ylim(0, 102)
    ax.set_title(f"accuracy over {result['chips']} chips (mean ± std), {result['n_images']} images; black tick: digital",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=min(6, len(models) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(axis="y", alpha=0.3)

    ax2 = fig.add_subplot(2, 2, 3)
    hwa = [e for e in result.get("hardware_aware", []) if "error" not in e]
    if hwa:
        xs = np.arange(len(hwa))
        for k, (key, lab) in enumerate((("before", "before"), ("after", "after fine-tuning"))):
            ax2.bar(xs - 0.2 + 0.4 * k, [e[key]["mean"] * 100 for e in hwa], 0.4,
                    yerr=[e[key]["std"] * 100 for e in hwa], capsize=3, color=("tab:red", "tab:green")[k], label=lab)
        ax2.set_xticks(xs)
        ax2.set_xticklabels([e["model"].replace("mnist-", "") for e in hwa], fontsize=7, rotation=20)
        s = result["hardware_aware_settings"]
        ax2.set_title(f"hardware-aware fine-tuning on {hwa[0]['hardware']} ({s['epochs']} epoch, "
                      f"{s['train_data'].rsplit(':', 1)[-1]} images)", fontsize=9)
        ax2.set_ylabel("test accuracy [%]")
        ax2.set_ylim(0, 102)
        ax2.legend(fontsize=7)
        ax2.grid(axis="y", alpha=0.3)
    else:
        ax2.set_visible(False)

    ax3 = fig.add_subplot(2, 2, 4)
    pts = [r for r in result["results"] if "error" not in r and r["predicted"]["mse"] is not None
           and r["mse_predict_images"]["mean"] > 1e-9]
    for i, m in enumerate(models):
        p = [r for r in pts if r["model"] == m]
        if p:
            mc = np.array([r["mse_predict_images"]["mean"] for r in p])
            sd = np.array([r["mse_predict_images"]["std"] for r in p]) / np.sqrt(result["chips"])
            ax3.errorbar(mc, [r["predicted"]["mse"] for r in p], xerr=sd, fmt="o", ms=4, color=f"C{i}", label=m)
    if pts:
        lo = min(min(r["mse_predict_images"]["mean"], r["predicted"]["mse"]) for r in pts)
        hi = max(max(r["mse_predict_images"]["mean"], r["predicted"]["mse"]) for r in pts)
        ax3.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax3.set_xscale("log")
        ax3.set_yscale("log")
        ax3.legend(fontsize=7)
    n_ns = sum(1 for r in result["results"] if "error" not in r and r["predicted"]["mse"] is None)
    ax3.set_xlabel(f"Monte Carlo output MSE (± s.e., first {result['n_predict']} images)")
    ax3.set_ylabel("predicted output MSE")
    ax3.set_title(f"closed form vs Monte Carlo ({n_ns} model/preset pairs not supported)", fontsize=9)
    ax3.grid(alpha=0.3)
    fig.tight_layout()
    savefig(fig, path)
    plt.close(fig)
