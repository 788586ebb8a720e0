"""``memcim predict mse|column|lowrank``: closed-form errors, each beside its Monte Carlo.

* ``predict mse``: output MSE and read power of a model on crossbars by moment propagation
  (paper 001 generalised, :func:`memcim.analysis.predict.predict`), checked over ``--chips``
  programmed chips of the simulator.
* ``predict column``: per-column error of one matrix, term by term (paper 003's column model,
  :class:`memcim.analysis.column_error.LayerErrorModel`), checked by :mod:`memcim.simulate`.
* ``predict lowrank``: the low-rank two-step scheme of paper 000 (closed form and Monte Carlo).

Hardware is always ``--hw PRESET|FILE`` plus ``--set KEY=VALUE``; ``--chips N`` is the Monte
Carlo (0 = none); ``--out DIR`` receives ``<name>.json`` and ``<name>.png``.
"""
from __future__ import annotations

import math
import time

from memcim import validate
from memcim.commands import _shared as sh

#: activations whose moments depend on --act-method / --taylor-order (ReLU is exact)
SMOOTH = ("softplus", "sigmoid", "tanh")
#: a conductance above this [S] (below 100 Ohm) belongs to no memristive device: the config is in
#: normalised units (the memse preset's G_max = 3 S, r_tia = 1 Ohm, v_read = 1 V)
PHYSICAL_G_MAX = 1e-2


def register(sub) -> None:
    p = sub.add_parser("predict", help="closed-form error of a model or a matrix on crossbars, beside its "
                                       "Monte Carlo (mse, column, lowrank)",
                       description="Closed-form predictions: predict mse (a model), predict column (a matrix, "
                                   "term by term), predict lowrank (paper 000's two-step scheme).")
    ps = p.add_subparsers(dest="what", metavar="WHAT", parser_class=type(p))
    _register_mse(ps)
    _register_column(ps)
    _register_lowrank(ps, optimize=False)


# ============================================================================ predict mse
def _register_mse(ps) -> None:
    p = ps.add_parser("mse", help="output MSE and read power of a model by moment propagation (MemSE, paper 001)",
                      description="Predict, without sampling, the output MSE of --model whose Linear/Conv2d layers "
                                  "run on the crossbars of --hw (levels, programming noise, faults, read noise, "
                                  "DAC/ADC: memcim.analysis.predict), and the expected read power of the devices "
                                  "and TIAs. --chips N checks both on N chips programmed and read by the simulator. "
                                  "The default hardware is the memse preset (paper 001's normalised units: "
                                  "G in S with G_max = 3 S, v_read = 1 V, r_tia = 1 Ohm); its power is then "
                                  "printed in normalised units with the factor to watts.")
    sh.add_model(p)
    sh.add_data(p, default="mnist:test:64", calib=False)
    p.add_argument("--calib-samples", type=int, default=None, metavar="N",
                   help="training samples that calibrate the ADC full scales (only for a config with "
                        "adc.fs_mode = calibrated; default 256 there)")
    sh.add_hw(p, default="memse")
    p.add_argument("--gmax-per-layer", default=None, metavar="G1,G2,...",
                   help="MemSE's G_max per crossbar layer [S, in the config's units]: the window width, "
                        "layer i gets device.g_max = device.g_min + Gi (one value per Linear/Conv2d)")
    p.add_argument("--chips", type=int, default=0, dest="mc_chips", metavar="N",
                   help="also program and read N >= 2 chips in the simulator (output MSE, accuracy, power "
                        "measured on every chip); 0 = no Monte Carlo (default 0)")
    sh.add_seed(p)
    p.add_argument("--cov", default="lowrank", choices=("lowrank", "exact", "diagonal"),
                   help="covariance kept through the network: lowrank (default), exact or diagonal")
    p.add_argument("--act-method", default=None, choices=("taylor", "gh"),
                   help="moments of smooth activations (softplus, sigmoid, tanh): taylor (default) or gh "
                        "(Gauss-Hermite); an error on a model without them (ReLU is exact)")
    p.add_argument("--taylor-order", type=int, default=None, choices=(2, 4),
                   help="order of the Taylor expansion, 2 (default, the paper's) or 4; only with "
                        "--act-method taylor on a model with smooth activations")
    sh.add_out(p)
    p.set_defaults(func=run_mse)


def _check_activations(layers, args) -> tuple[str, int]:
    from memcim.analysis.moments import ElementwiseLayer

    smooth = sorted({l.kind for l in layers if isinstance(l, ElementwiseLayer) and l.kind in SMOOTH})
    if not smooth:
        for flag, v in (("--act-method", args.act_method), ("--taylor-order", args.taylor_order)):
            if v is not None:
                raise ValueError(f"{flag}: does not apply: the model has no softplus, sigmoid or tanh "
                                 "activation (ReLU moments are exact); drop it")
    method = args.act_method or "taylor"
    if args.taylor_order is not None and method != "taylor":
        raise ValueError(f"--taylor-order: does not apply with --act-method {method} (Gauss-Hermite has no order)")
    return method, 2 if args.taylor_order is None else int(args.taylor_order)


def _layer_hardware(hw, names: list[str], gmax_text):
    """One config, or one per crossbar layer from --gmax-per-layer."""
    if gmax_text is None:
        return hw, None
    vals = validate.floats("gmax_per_layer", gmax_text)
    if len(vals) != len(names):
        raise ValueError(f"gmax_per_layer: {len(vals)} value(s) given; the model has {len(names)} crossbar "
                         f"layer(s) ({', '.join(names)})")
    out = []
    for v in vals:
        validate.number("gmax_per_layer", v, lo=0, lo_open=True)
        out.append(hw.set({"device.g_max": hw.device.g_min + v}))
    return out, vals


def power_units(hw) -> dict:
    """What the printed power means for ``hw``: watts, or normalised units with their factor to watts.

    A power in normalised units (conductances of order 1 S, ``r_tia`` of order 1 Ohm) becomes
    watts on a physical chip with the same relative window: scaling every conductance (and the
    programming noise) by ``k = g_ref / g_max`` and ``r_tia`` by ``1/k`` leaves the weights and
    the MSE unchanged, and scaling the read voltage to ``v_ref`` multiplies every power by
    ``k (v_ref / v_read)^2``. The reference is the ``generic`` preset's device (g_max, v_read).
    """
    from memcim.config import preset

    if hw.device.g_max < PHYSICAL_G_MAX:
        return {"units": "W", "normalised": False,
                "note": f"watts for this config (G in S, v_read = {hw.array.v_read:g} V, "
                        f"r_tia = {hw.array.r_tia:g} Ohm), each read lasting one time unit"}
    ref = preset("generic")
    k = ref.device.g_max / hw.device.g_max
    factor = k * (ref.array.v_read / hw.array.v_read) ** 2
    return {"units": "normalised", "normalised": True, "to_watts": factor,
            "reference": {"g_max_S": ref.device.g_max, "v_read_V": ref.array.v_read, "preset": "generic"},
            "note": f"normalised units (G_max = {hw.device.g_max:g} 'S', v_read = {hw.array.v_read:g}, "
                    f"r_tia = {hw.array.r_tia:g}): not watts of a real chip. Scaled to the generic "
                    f"device (G_max = {ref.device.g_max:g} S at v_read = {ref.array.v_read:g} V, r_tia scaled "
                    f"alike, same MSE), multiply by {factor:.4g} to get W"}


def _fmt_power(p: float, pu: dict) -> str:
    if pu["normalised"]:
        return f"{p:.4g} (normalised) = {p * pu['to_watts']:.4g} W scaled"
    return f"{p:.4g} W"


def crossbar_names(model) -> list[str]:
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _model(args, sample_shape):
    return sh.model(args, sample_shape)


def _monte_carlo(model, x, hw, names, chips: int, seed: int, calib, labels) -> dict:
    """Per-chip output MSE, accuracy and read power through the simulator's chips loop."""
    import numpy as np
    import torch

    from memcim.analysis.memse_sim import ReadPowerProbe
    from memcim.nn.evaluate import chip_outputs

    hws = hw if isinstance(hw, list) else [hw] * len(names)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = model(x)
        probe = ReadPowerProbe(x.shape[0])
        mses, accs, pw = [], [], []
        for _, analog, y in chip_outputs(model, x, hws[0], overrides=dict(zip(names, hws)), chips=chips, seed=seed,
                                         calib_data=calib, batch_size=x.shape[0], dtype=torch.float64,
                                         progress=False, on_program=probe):
            mses.append(float(((y - ref) ** 2).mean()))
            pw.append(probe.measure(analog).sum(0))
            if labels is not None:
                accs.append(float((y.argmax(1) == labels).double().mean()))
    m, p = np.asarray(mses), np.asarray(pw)
    tot = p.sum(1)
    out = {"engine": "simulator", "chips": chips, "mse_mean": float(m.mean()),
           "mse_mean_stderr": float(m.std(ddof=1) / math.sqrt(chips)),
           "power": {"total_W": float(tot.mean()), "total_W_stderr": float(tot.std(ddof=1) / math.sqrt(chips)),
                     "device_W": float(p[:, 0].mean()), "tia_W": float(p[:, 1].mean())},
           "wall_s": time.perf_counter() - t0}
    if accs:
        out["accuracy"] = float(np.mean(accs))
        out["accuracy_stderr"] = float(np.std(accs, ddof=1) / math.sqrt(chips))
        out["digital_accuracy"] = float((ref.argmax(1) == labels).double().mean())
    return out


def _check_moment_memory(cov: str, width: int, batch: int) -> None:
    """Moment propagation holds, per sample, a covariance of the widest activation: ``width^2``
    entries (exact; chunks of 8 samples), 64 factors of ``width`` (lowrank) or ``width`` (diagonal)."""
    per = {"exact": width * width, "lowrank": 65 * width, "diagonal": 2 * width}[cov]
    n = min(batch, 8) if cov == "exact" else batch
    need = 8 * 4 * n * per
    validate.memory("cov" if cov == "exact" else "data", need,
                    f"the moments ({cov} covariance of {width} activations, {n} sample(s) at once)")


def compute_mse(args) -> dict:
    """Everything ``memcim predict mse`` reports, as one JSON-ready dict."""
    import torch

    from memcim.analysis.moments import parse_model
    from memcim.analysis.predict import predict
    from memcim.io import provenance

    chips = validate.integer("chips", args.mc_chips, lo=0, hi=100_000)
    if chips == 1:
        raise ValueError("chips: 1 is not allowed; use 0 (no Monte Carlo) or >= 2 chips (the spread needs two)")
    hw = sh.hardware(args, default="memse")
    ds = sh.data(args)
    x = ds.x.double()
    labels = ds.y if ds.y is not None and bool((ds.y >= 0).all()) else None     # X.npy alone: no labels
    model = _model(args, tuple(x.shape[1:])).double().eval()
    layers = parse_model(model)                     # unsupported layers: one line naming the layer
    widths = [int(x[0].numel())]
    hooks = [mod.register_forward_hook(lambda _m, _i, o: widths.append(int(o.numel())) if torch.is_tensor(o) else None)
             for mod in model.modules() if not list(mod.children())]
    with torch.no_grad():
        try:
            model(x[:1])
        except RuntimeError as e:
            raise ValueError(f"data: samples of shape {tuple(x.shape[1:])} do not fit the model "
                             f"({str(e).splitlines()[0][:160]})") from None
        finally:
            for h in hooks:
                h.remove()
    _check_moment_memory(args.cov, max(widths), int(x.shape[0]))
    method, order = _check_activations(layers, args)
    names = crossbar_names(model)
    hws, gvals = _layer_hardware(hw, names, args.gmax_per_layer)
    all_hw = hws if isinstance(hws, list) else [hws]
    needs_calib = any(h.adc.enabled and h.adc.fs_mode == "calibrated" for h in all_hw)
    calib = None
    if needs_calib:
        args.calib_samples = 256 if args.calib_samples is None else args.calib_samples
        calib = sh.calibration(args).double()
    elif args.calib_samples is not None:
        raise ValueError("calib_samples: does not apply: this config's ADC is not calibrated "
                         "(adc.fs_mode is not 'calibrated' or the ADC is off)")
    t0 = time.perf_counter()
    pred = predict(model, x, hws, calib_data=calib, cov=args.cov, act_method=method, taylor_order=order, power=True)
    pd = pred.to_dict()
    pd["wall_s"] = time.perf_counter() - t0
    sh.check_finite_result("data", {k: pd[k] for k in ("mse_mean", "mse_max", "power") if k in pd},
                           "the predicted output MSE or power")
    pu = power_units(hw)              # one factor for every layer: the base config's window
    pd["power"]["units"] = pu["note"]
    out = {"command": "predict mse", "predicted": pd, "power_units": pu}
    if labels is not None:
        out["predicted"]["digital_accuracy"] = float((pred.reference.argmax(1) == labels).double().mean())
    if chips:
        out["monte_carlo"] = _monte_carlo(model, x, hws, names, chips, args.seed, calib, labels)
        sh.check_finite_result("data", out["monte_carlo"], "the Monte Carlo")
    out["config"] = {"model": str(args.model), "data": args.data, "normalize": args.normalize,
                     "batch": int(x.shape[0]), "hw": hw.to_dict(), "gmax_per_layer": gvals,
                     "crossbar_layers": names, "cov": args.cov, "act_method": method, "taylor_order": order,
                     "chips": chips, "calib_samples": args.calib_samples}
    out["provenance"] = provenance(seed=args.seed)
    return out


def _text_mse(out: dict) -> str:
    pd, pu = out["predicted"], out["power_units"]
    hw = out["config"]["hw"].get("name", "hw")
    lines = [(f"predicted ({hw}): mse_mean={pd['mse_mean']:.6g} mse_max={pd['mse_max']:.6g} "
             f"power={_fmt_power(pd['power']['total_W'], pu)} ({pd['wall_s'] * 1e3:.1f} ms)")]
    if "monte_carlo" in out:
        m = out["monte_carlo"]
        acc = (f" accuracy={m['accuracy']:.4f} ± {m['accuracy_stderr']:.2g} (digital {m['digital_accuracy']:.4f})"
               if "accuracy" in m else "")
        lines.append(f"monte carlo ({m['chips']} chips): mse_mean={m['mse_mean']:.6g} ± {m['mse_mean_stderr']:.2g} "
                     f"power={_fmt_power(m['power']['total_W'], pu)}{acc} ({m['wall_s']:.2f} s)")
    lines.append("power: " + pu["note"])
    return "\n".join(lines)


def _plot_mse(out: dict, path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from memcim.io import savefig

    per = np.asarray(out["predicted"]["per_output"], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(np.arange(per.size), per, color="C0", label="predicted (closed form)")
    if "monte_carlo" in out:
        m = out["monte_carlo"]
        ax.axhline(m["mse_mean"], color="r", label=f"Monte Carlo mean over outputs ({m['chips']} chips)")
        ax.axhspan(m["mse_mean"] - 2 * m["mse_mean_stderr"], m["mse_mean"] + 2 * m["mse_mean_stderr"], color="r",
                   alpha=0.2)
    ax.axhline(out["predicted"]["mse_mean"], color="C0", ls="--", label="predicted mean")
    ax.set_xlabel("output")
    ax.set_ylabel("MSE vs digital output")
    ax.set_title(f"{out['config']['model']} on {out['config']['hw'].get('name', 'hw')}", fontsize=9)
    ax.legend(fontsize=7)
    savefig(fig, path)


def run_mse(args) -> int:
    out = compute_mse(args)
    return sh.emit(args, "mse", out, plot=_plot_mse, text=_text_mse)


# ============================================================================ predict column
def _register_column(ps) -> None:
    p = ps.add_parser("column", help="per-column closed-form error of a matrix on a design, term by term, "
                                     "beside the simulator's Monte Carlo",
                      description="Map --matrix W (in x out, the crossbar computes x W) on --hw as the simulator "
                                  "does (window, levels, ADC full scale of the plan), then give every column's "
                                  "expected squared output error (weight units, per input vector) by term: "
                                  "programming noise, read noise, level and DAC rounding, stuck devices, ADC "
                                  "quantization and saturation (paper 003's column model). --chips N programs N "
                                  "chips and measures the same error.")
    p.add_argument("--matrix", required=True, metavar="W.npy",
                   help="the matrix W (in, out), .npy/.npz/.csv (the crossbar computes x W)")
    sh.add_inputs(p, "input rows X (batch, in), .npy/.npz/.csv (default: 256 standard normal rows, seeded "
                     "by --seed); they also calibrate the ADC when adc.fs_mode = calibrated")
    sh.add_hw(p, default="convex_cim")
    p.add_argument("--chips", type=int, default=0, dest="mc_chips", metavar="N",
                   help="Monte Carlo: N >= 2 chips programmed and read by memcim.simulate; 0 = none (default 0)")
    sh.add_seed(p)
    p.add_argument("--saturation", default="gaussian", choices=("gaussian", "empirical"),
                   help="output model of the ADC saturation term (default gaussian)")
    sh.add_out(p)
    p.set_defaults(func=run_column)


def compute_column(args) -> dict:
    """Everything ``memcim predict column`` reports, as one JSON-ready dict."""
    import numpy as np
    import torch

    from memcim.analysis.column_error import (
        CONSTANT_TERMS,
        TERMS,
        Design,
        InputStats,
        LayerErrorModel,
    )
    from memcim.io import load_array, provenance
    from memcim.mapping.crossbar import map_matrix

    chips = validate.integer("chips", args.mc_chips, lo=0, hi=100_000)
    if chips == 1:
        raise ValueError("chips: 1 is not allowed; use 0 (no Monte Carlo) or >= 2 chips")
    hw = sh.hardware(args, default="convex_cim")
    W = load_array(args.matrix, "matrix", ndim=2)
    n, m = W.shape
    if args.inputs is not None:
        X = load_array(args.inputs, "inputs", ndim=2)
        if X.shape[1] != n:
            raise ValueError(f"inputs: {X.shape[1]} columns do not match the matrix's {n} rows")
        src = str(args.inputs)
    else:
        X = np.random.default_rng(args.seed).standard_normal((256, n))
        src = "256 standard normal rows"
    if X.shape[0] < 2:
        raise ValueError(f"inputs: {X.shape[0]} row(s); need >= 2")
    lm = LayerErrorModel(W, hw, InputStats.from_samples(X, hw, name="inputs"), saturation=args.saturation)
    mp = map_matrix(W, hw, calib_inputs=X)
    if chips:
        sh.check_chips_memory(mp, chips, X.shape[0], batch_name="inputs")
    c = lm.scale(Design(hw.device.g_min, hw.device.g_max, 1.0))
    fs = mp.full_scale[:, :m].cpu().numpy() / (c * hw.array.r_tia * hw.array.v_read)
    design = Design(hw.device.g_min, hw.device.g_max, fs)
    t0 = time.perf_counter()
    terms = lm.terms(design, per="column")
    wall = time.perf_counter() - t0
    names = [k for k in (*TERMS, *CONSTANT_TERMS) if k in terms]
    out = {"command": "predict column", "shape": [n, m],
           "units": "expected squared output error per input vector and column, in the units of x W",
           "predicted": {"total": terms["total"], "terms": {k: terms[k] for k in names},
                         "layer_mean": float(np.mean(terms["total"])), "wall_s": wall},
           "signal_power": lm.signal_power(), "design": {"g_min": hw.device.g_min, "g_max": hw.device.g_max,
                                                         "fs_volts": mp.full_scale[:, :m].cpu().numpy()}}
    if chips:
        from memcim.simulate import program

        t0 = time.perf_counter()
        chip = program(mp, seed=args.seed, trials=chips, dtype=torch.float64)
        y = chip.mvm(torch.from_numpy(X))
        e = ((y - torch.from_numpy(X @ W)) ** 2).numpy()          # (chips, batch, out)
        per_chip = e.mean(1)                                        # chips are the independent draws
        out["monte_carlo"] = {"chips": chips, "per_column": per_chip.mean(0),
                              "per_column_stderr": per_chip.std(0, ddof=1) / math.sqrt(chips),
                              "layer_mean": float(per_chip.mean()),
                              "layer_mean_stderr": float(per_chip.mean(1).std(ddof=1) / math.sqrt(chips)),
                              "wall_s": time.perf_counter() - t0}
    out["config"] = {"matrix": str(args.matrix), "inputs": src, "batch": int(X.shape[0]), "hw": hw.to_dict(),
                     "chips": chips, "saturation": args.saturation}
    out["provenance"] = provenance(seed=args.seed)
    return out


def _text_column(out: dict) -> str:
    import numpy as np

    p = out["predicted"]
    tot = np.asarray(p["total"])
    lines = [(f"W {out['shape'][0]}x{out['shape'][1]} on {out['config']['hw'].get('name', 'hw')}: "
             f"predicted MSE per column mean {p['layer_mean']:.6g} (min {tot.min():.4g}, max {tot.max():.4g})")]
    nz = {k: float(np.mean(v)) for k, v in p["terms"].items() if float(np.mean(v)) > 0}
    lines.append("  by term (mean over columns): " + ", ".join(f"{k} {v:.4g}" for k, v in nz.items()))
    if "monte_carlo" in out:
        mc = out["monte_carlo"]
        lines.append(f"  Monte Carlo ({mc['chips']} chips): {mc['layer_mean']:.6g} ± {mc['layer_mean_stderr']:.2g}")
    lines.append("  " + out["units"])
    return "\n".join(lines)


def _plot_column(out: dict, path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from memcim.io import savefig

    terms = {k: np.asarray(v, dtype=float) for k, v in out["predicted"]["terms"].items()}
    terms = {k: v for k, v in terms.items() if v.max() > 0}
    m = out["shape"][1]
    idx = np.arange(m)
    fig, ax = plt.subplots(figsize=(max(5.0, min(14.0, 0.25 * m + 3)), 3.5))
    bottom = np.zeros(m)
    for k, v in terms.items():
        ax.bar(idx, v, bottom=bottom, label=k, width=0.8)
        bottom += v
    if "monte_carlo" in out:
        mc = out["monte_carlo"]
        ax.errorbar(idx, mc["per_column"], yerr=2 * np.asarray(mc["per_column_stderr"]), fmt="o", ms=3, color="k",
                    label=f"Monte Carlo ± 2 s.e. ({mc['chips']} chips)")
    ax.set_xlabel("column")
    ax.set_ylabel("MSE per input (units of x W)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    savefig(fig, path)


def run_column(args) -> int:
    out = compute_column(args)
    return sh.emit(args, "column", out, plot=_plot_column, text=_text_column)


# ============================================================================ predict lowrank
LOWRANK_DESCRIPTION = """Compute y = x W as x A B with A B the truncated SVD of W, each factor programmed r1 / r2
times and the outputs averaged (paper 000). Gives the closed-form expected squared output error
E||y_hat - y||^2 per input vector of this scheme and of the baseline (W programmed once), each
beside a Monte Carlo over --chips, and the devices each uses. The noise model is additive
N(0, sigma^2) on every programmed entry, with sigma in WEIGHT UNITS (the units of W's entries, not
siemens): a device noise of s siemens on a differential pair mapping max|W| to a window of
D siemens is sigma = sqrt(2) s max|W| / D."""

SIGMA_HELP = ("noise std per programmed entry in WEIGHT UNITS (units of W's entries, not siemens; from a "
              "device noise s [S]: sigma = sqrt(2) s max|W| / (g_max - g_min)); baseline and both steps unless "
              "--sigma1/--sigma2")


def _register_lowrank(ps, *, optimize: bool) -> None:
    verb = "optimize" if optimize else "predict"
    p = ps.add_parser("lowrank", help=("choose rank, repetitions and split of the low-rank two-step VMM under a "
                                       "device budget (paper 000)") if optimize else
                      "closed form + Monte Carlo of the low-rank two-step VMM with repetition averaging (paper 000)",
                      description=LOWRANK_DESCRIPTION + (" The optimizer searches k, r1, r2 and the split exactly "
                                                         "under --budget." if optimize else ""))
    src = p.add_argument_group("matrix (one of)")
    src.add_argument("--matrix", metavar="W.npy", help="target matrix W (n inputs x m outputs), .npy/.npz/.csv")
    src.add_argument("--profile", choices=["harmonic"], help="generate W with singular values alpha/i")
    src.add_argument("--size", type=int, metavar="N", help="n = m of the generated matrix")
    src.add_argument("--matrix-rank", type=int, metavar="K", help="rank of the generated matrix (default: --size)")
    src.add_argument("--alpha", type=float, help="scale alpha of s_i = alpha/i (default: --size)")
    src.add_argument("--matrix-seed", type=int, default=0, metavar="S",
                     help="seed of the generated matrix (default 0)")
    inp = p.add_argument_group("inputs (default: white, R = I)")
    sh.add_inputs(inp, "input rows X (N, n), .npy/.npz/.csv: R = X^T X / N; the Monte Carlo draws --batch rows "
                       "per chip")
    inp.add_argument("--second-moment", metavar="R.npy", help="input second moment R = E[x^T x] (n, n)")
    p.add_argument("--sigma", type=float, help=SIGMA_HELP)
    p.add_argument("--sigma1", type=float, help="noise std on the A (first-step) arrays, weight units")
    p.add_argument("--sigma2", type=float, help="noise std on the B (second-step) arrays, weight units")
    if not optimize:
        p.add_argument("--rank", type=int, required=True, metavar="K", help="rank k of the approximation")
        p.add_argument("--reps", type=int, nargs=2, required=True, metavar=("R1", "R2"),
                       help="repetitions of the two steps")
    p.add_argument("--split", default=None, choices=["balanced", "left", "right"],
                   help="singular values: sqrt on each side (balanced), in A (left) or in B (right); "
                        + ("default: all three are searched" if optimize else "default balanced"))
    p.add_argument("--budget", type=int, metavar="B",
                   help="device budget r1 n k + r2 k m <= B (default n m, the baseline's)" if optimize else
                   "device budget the chosen scheme must fit (default: none)")
    p.add_argument("--chips", type=int, default=500, dest="mc_chips", metavar="N",
                   help="Monte Carlo chips (independent programmings) for both schemes; 0 skips (default 500)")
    p.add_argument("--batch", type=int, default=32, metavar="N",
                   help="input vectors per Monte Carlo chip (default 32)")
    sh.add_seed(p)
    sh.add_out(p)
    p.set_defaults(func=run_lowrank, _optimize=optimize, _verb=verb)


def _finite(v, name, positive=False):
    if v is None:
        return None
    return validate.number(name, v, lo=0, lo_open=positive)


def _lowrank_matrix(args):
    from memcim.analysis.lowrank import harmonic_matrix
    from memcim.io import load_array

    if (args.matrix is None) == (args.profile is None):
        raise ValueError("matrix: give exactly one of --matrix W.npy or --profile harmonic")
    if args.matrix is not None:
        for opt in ("size", "matrix_rank", "alpha"):
            if getattr(args, opt) is not None:
                raise ValueError(f"{opt}: only applies to --profile harmonic")
        return load_array(args.matrix, "matrix", ndim=2), {"matrix": str(args.matrix)}
    if args.size is None:
        raise ValueError("size: --profile harmonic needs --size N >= 2")
    validate.integer("size", args.size, lo=2, hi=8192)
    r = args.size if args.matrix_rank is None else args.matrix_rank
    validate.integer("matrix_rank", r, lo=1, hi=args.size)
    alpha = _finite(args.alpha, "alpha", positive=True)
    W = harmonic_matrix(args.size, args.size, rank=r, alpha=alpha, seed=validate.seed(args.matrix_seed, "matrix_seed"))
    return W, {"profile": "harmonic", "size": args.size, "matrix_rank": r,
               "alpha": float(args.size) if alpha is None else alpha, "matrix_seed": args.matrix_seed}


#: elements of noise one Monte Carlo chunk draws (as memcim.analysis.lowrank_montecarlo chunks chips)
MC_CHUNK_ELEMS = 4_000_000


def _check_lowrank_memory(n: int, m: int, k: int, r1: int, r2: int, chips: int, rows: int) -> None:
    """The Monte Carlo draws its chips in chunks of about :data:`MC_CHUNK_ELEMS` noise entries (at
    least one chip), each read with ``rows`` input vectors: refuse a chunk that would not fit."""
    worst: tuple[float, str] = (0.0, "batch")
    # (noise entries per chip, per input vector: values that grow with the reps, the others)
    for per_chip, by_reps, plain in ((n * m, 0, n + 2 * m), (r1 * n * k + r2 * k * m, 2 * r1 * k + 2 * r2 * m, n + m)):
        c = min(chips, max(1, MC_CHUNK_ELEMS // max(per_chip, 1)))
        reps_part, batch_part = 8 * c * (2 * per_chip + rows * by_reps), 8 * c * rows * plain
        if reps_part + batch_part > worst[0]:
            worst = (reps_part + batch_part, "reps" if reps_part > batch_part and max(r1, r2) > 1 else "batch")
    validate.memory(worst[1], worst[0], f"the Monte Carlo (chips of rank {k}, reps {r1} {r2}, "
                                        f"{rows} input vector(s) each)")


def compute_lowrank(args) -> dict:
    """Everything ``memcim predict lowrank`` / ``optimize lowrank`` report, as one JSON-ready dict."""
    from memcim.analysis.lowrank import (
        baseline_error,
        check_second_moment,
        devices_used,
        factorize,
        lowrank_terms,
        second_moment,
        svd_stats,
    )
    from memcim.analysis.lowrank_montecarlo import mc_baseline, mc_lowrank
    from memcim.io import load_array, provenance
    from memcim.optimize.lowrank import optimize_lowrank

    optimize = bool(args._optimize)
    W, wsrc = _lowrank_matrix(args)
    n, m = W.shape
    p = min(n, m)
    sigma = _finite(args.sigma, "sigma")
    s1 = _finite(args.sigma1, "sigma1")
    s2 = _finite(args.sigma2, "sigma2")
    if sigma is None and (s1 is None or s2 is None):
        raise ValueError("sigma: required (weight units) unless both --sigma1 and --sigma2 are given")
    s1 = sigma if s1 is None else s1
    s2 = sigma if s2 is None else s2
    s_base = sigma if sigma is not None else s1
    chips = validate.integer("chips", args.mc_chips, lo=0, hi=10_000_000)
    if chips == 1:
        raise ValueError("chips: 1 is not allowed; use 0 (no Monte Carlo) or >= 2 chips")
    validate.integer("batch", args.batch, lo=1, hi=1_000_000)
    X = R = None
    if args.inputs is not None and args.second_moment is not None:
        raise ValueError("inputs: give at most one of --inputs and --second-moment")
    if args.inputs is not None:
        X = load_array(args.inputs, "inputs", ndim=2)
        if X.shape[1] != n:
            raise ValueError(f"inputs: {X.shape[1]} columns do not match the matrix's {n} rows (inputs)")
        R = second_moment(X)
    elif args.second_moment is not None:
        R = check_second_moment(load_array(args.second_moment, "second_moment", ndim=2), n, "second_moment")
    st = svd_stats(W, R)
    if optimize:
        if args.budget is not None and args.budget < n + m:
            raise ValueError(f"budget: {args.budget} fits no scheme; the smallest (k = r1 = r2 = 1) needs "
                             f"n + m = {n + m} devices")
        splits = (args.split,) if args.split else ("balanced", "left", "right")
        choice = optimize_lowrank(st, s1, s2, budget=args.budget, splits=splits)
        k, r1, r2, split, budget = choice.k, choice.r1, choice.r2, choice.split, choice.budget
    else:
        validate.integer("rank", args.rank, lo=1, hi=p)
        r1, r2 = args.reps
        if r1 < 1 or r2 < 1:
            raise ValueError(f"reps: {r1} {r2} is not allowed; both repetitions must be >= 1")
        k, split, budget = args.rank, args.split or "balanced", args.budget
        if budget is not None and devices_used(n, m, k, r1, r2) > budget:
            raise ValueError(f"budget: {budget} is exceeded: rank {k}, reps {r1} {r2} use "
                             f"{devices_used(n, m, k, r1, r2)} devices")
    terms = lowrank_terms(st, k, r1, r2, s1, s2, split)
    base = baseline_error(n, m, s_base, trR=st.trR)
    out = {"command": f"{args._verb} lowrank", "shape": [n, m], "k": k, "r1": r1, "r2": r2, "split": split,
           "sigma": s_base, "sigma1": s1, "sigma2": s2, "sigma_units": "weight units (units of W's entries)",
           "devices": {"lowrank": devices_used(n, m, k, r1, r2), "baseline": n * m, "budget": budget},
           "baseline": {"predicted": base, "monte_carlo": None},
           "lowrank": {"predicted": terms.total, "monte_carlo": None, "terms": terms.to_dict()},
           "improvement_predicted": base / terms.total if terms.total > 0 else None,
           "inputs": "data" if X is not None else ("second_moment" if R is not None else "white (R = I)")}
    if optimize:
        out["optimizer"] = {"candidates": choice.candidates}
    if chips > 0:
        _check_lowrank_memory(n, m, k, r1, r2, chips, args.batch if X is None else min(args.batch, X.shape[0]))
        A, B = factorize(st, k, split)
        kw = {"trials": chips, "X": X, "R": R if X is None else None, "batch": args.batch}
        out["baseline"]["monte_carlo"] = mc_baseline(W, s_base, seed=args.seed, **kw).to_dict()
        out["lowrank"]["monte_carlo"] = mc_lowrank(W, A, B, r1, r2, s1, s2, seed=args.seed + 1, **kw).to_dict()
    out["config"] = {**wsrc, "inputs": None if args.inputs is None else str(args.inputs),
                     "second_moment": None if args.second_moment is None else str(args.second_moment),
                     "chips": chips, "batch": args.batch, "optimize": optimize}
    out["provenance"] = provenance(seed=args.seed)
    return out


def _plot_lowrank(out, path):
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    t = out["lowrank"]["terms"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = 0.0
    for nm in ("truncation", "first_step", "second_step", "product"):
        ax.bar(["low-rank"], [t[nm]], bottom=bottom, label=nm)
        bottom += t[nm]
    ax.bar(["baseline"], [out["baseline"]["predicted"]], color="k", label="baseline")
    for i, key in enumerate(["lowrank", "baseline"]):
        mc = out[key]["monte_carlo"]
        if mc:
            ax.errorbar([1 - i], [mc["mean"]], yerr=[2 * mc["stderr"]], fmt="o", color="r",
                        label="Monte Carlo ± 2 s.e." if i == 0 else None)
    ax.set_ylabel("E||y_hat - y||^2 per input")
    ax.set_title(f"k={out['k']}, r1={out['r1']}, r2={out['r2']}, {out['split']}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    savefig(fig, path)


def _text_lowrank(out) -> str:
    b, lr = out["baseline"], out["lowrank"]
    lines = [(f"W {out['shape'][0]}x{out['shape'][1]}  k={out['k']} r1={out['r1']} r2={out['r2']} "
             f"split={out['split']}  devices {out['devices']['lowrank']} (baseline {out['devices']['baseline']})")]
    for name, d in (("baseline", b), ("low-rank", lr)):
        mc = d["monte_carlo"]
        mcs = f"  Monte Carlo {mc['mean']:.6g} ± {mc['stderr']:.2g}" if mc else ""
        lines.append(f"  {name:9s} predicted {d['predicted']:.6g}{mcs}")
    lines.append("  terms: " + ", ".join(f"{k}={v:.4g}" for k, v in lr["terms"].items()))
    if out["improvement_predicted"]:
        lines.append(f"  baseline / low-rank = {out['improvement_predicted']:.3f}")
    lines.append(f"  errors: E||y_hat - y||^2 per input vector; sigma = {out['sigma']:g} in weight units")
    return "\n".join(lines)


def run_lowrank(args) -> int:
    out = compute_lowrank(args)
    return sh.emit(args, "lowrank", out, plot=_plot_lowrank, text=_text_lowrank)
