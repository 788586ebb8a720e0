"""``memcim demo``: the showcase that ``make demo`` runs (about a minute on 2 cores).

The library part is :func:`memcim.experiments.demo.run_demo`; this command prints its table,
shows one progress line per section on stderr, and writes ``<out>/index.html`` (one page with
every table and plot), the PNGs beside it and ``<out>/demo.json`` (config, seed, provenance and
every number).
"""
from __future__ import annotations

import html
import sys
import time
from pathlib import Path


def register(sub) -> None:
    from memcim.commands._shared import add_hw, add_seed

    p = sub.add_parser(
        "demo", help="the showcase (about a minute): error budget, accuracy over chips, closed form vs Monte "
                     "Carlo, one IR-drop tile, the design optimizer; writes one HTML page",
        description="Show what memcim does on the shipped reference MLP (mnist-mlp-256-128) and CNN "
                    "(mnist-cnn-small): the error budget per non-ideality, accuracy over chips on the ideal, "
                    "--hw and noisy hardware, the closed-form output MSE next to the Monte Carlo, one crossbar "
                    "tile with IR drop solved as a circuit (irdrop preset), and the convex design optimizer's "
                    "gain (convex_cim preset). Prints a short table and writes OUT/index.html, its PNGs and "
                    "OUT/demo.json. The full reproduction of the papers is `memcim paper reproduce`.")
    add_hw(p, default="generic", extra="; used by the budget, accuracy and closed-form sections")
    p.add_argument("--chips", type=int, default=None, metavar="N",
                   help="programmed chips per accuracy point, error budget and optimizer row (default 5, --quick 3); "
                        "the closed-form check uses 4N, at least 12 (default 20)")
    add_seed(p)
    p.add_argument("--out", default="results/demo", metavar="DIR",
                   help="directory for index.html, the PNGs and demo.json (default results/demo)")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    p.add_argument("--quick", action="store_true", help="tiny sizes (300 images, 3 chips, a 32x32 tile): seconds")
    p.set_defaults(func=run, _out_is_dir=True)


def run(args) -> int:
    import torch

    from memcim.commands._shared import hardware

    hw = hardware(args, default="generic")
    out = Path(args.out)

    threads = torch.get_num_threads()
    if getattr(args, "threads", None) is None:
        # the demo's tensors are small: one torch thread is as fast on an idle machine and several
        # times faster on a busy one (OpenMP threads spin against each other); --threads N overrides
        torch.set_num_threads(1)
    try:
        return _run(args, hw, out)
    finally:
        torch.set_num_threads(threads)


def _run(args, hw, out: Path) -> int:
    from memcim.experiments.demo import format_table, label, run_demo
    from memcim.io import dumps, write_json

    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[demo {time.perf_counter() - t0:5.1f} s] {msg}", file=sys.stderr, flush=True)

    chips = args.chips
    mc = None if chips is None else max(12, 4 * chips)
    log(f"hardware '{label(hw)}', seed {args.seed}{', quick' if args.quick else ''}; writing {out}/")
    res = run_demo(hw=hw, chips=chips, mc_chips=mc, seed=args.seed, quick=args.quick, log=log)
    doc = res.to_dict()
    doc["cli"] = {"hw": args.hw, "set": list(args.settings), "chips": args.chips, "seed": args.seed,
                  "quick": args.quick, "out": str(out)}
    pngs = plot_all(res, out)
    page = write_page(res, out, pngs)
    js = write_json(out / "demo.json", doc)
    log(f"done in {time.perf_counter() - t0:.1f} s")
    if args.json:
        print(dumps(doc))
    else:
        print(format_table(res))
        print(f"wrote {page}, {js} and {len(pngs)} PNGs")
    return 0


# ------------------------------------------------------------------------------------------------ plots
def plot_all(res, out: Path) -> dict[str, Path]:
    """One PNG per section, in ``out``; returns section -> path."""
    import matplotlib

    matplotlib.use("Agg")
    fns = {"budget": _plot_budget, "accuracy": _plot_accuracy, "closed_form": _plot_closed_form,
           "tile": _plot_tile, "optimizer": _plot_optimizer}
    return {k: fns[k](res.sections[k], out / f"{k}.png") for k in fns if k in res.sections}


def _save(fig, path: Path) -> Path:
    from memcim.io import savefig

    fig.tight_layout()
    return savefig(fig, path)


def _plot_budget(b: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    items = sorted(b["contributions"].items(), key=lambda kv: kv[1]["mse"])
    names = [k for k, _ in items] + ["all together"]
    vals = [100 * v["relative_error"] for _, v in items] + [100 * b["total"]["relative_error"]]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.4))
    ax.barh(names, vals, color=["C0"] * (len(names) - 1) + ["C3"])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f} %", va="center", fontsize=8)
    ax.set_xlabel("relative RMS error of x·W [%] (each non-ideality alone)")
    ax.set_title(f"Error budget: MLP layer 256×128 on '{b['hardware']}' ({b['chips']} chips)", fontsize=10)
    ax.set_xlim(0, max(vals + [1e-9]) * 1.25)
    return _save(fig, path)


def _plot_accuracy(a: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    models, presets = list(a["models"]), a["presets"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    w = 0.8 / (len(presets) + 1)
    x = np.arange(len(models))
    for j, p in enumerate(["digital", *presets]):
        if p == "digital":
            mean = [100 * a["models"][m]["digital"] for m in models]
            err = None
        else:
            mean = [100 * a["models"][m]["presets"][p]["accuracy"]["mean"] for m in models]
            err = [100 * a["models"][m]["presets"][p]["accuracy"]["std"] for m in models]
        pos = x + (j - len(presets) / 2) * w
        ax.bar(pos, mean, w, yerr=err, capsize=3, label=p, color=f"C{j}", alpha=0.85)
        if p != "digital":
            for i, m in enumerate(models):
                v = a["models"][m]["presets"][p]["accuracy"]["values"]
                ax.plot([pos[i]] * len(v), [100 * q for q in v], "k.", ms=3)
    ax.set_xticks(x, models)
    ax.set_ylabel("test accuracy [%]")
    ax.set_ylim(0, 105)
    ax.set_title(f"Accuracy over {a['chips']} chips ({a['images']} test images; ± std, dots: chips)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(presets) + 1, frameon=False)
    return _save(fig, path)


def _plot_closed_form(cf: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(cf["presets"])
    x = np.arange(len(names))
    pred = [cf["presets"][p]["predicted_mse"] for p in names]
    mc = [cf["presets"][p]["mc_mse"] for p in names]
    se = [1.96 * cf["presets"][p]["mc_stderr"] for p in names]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.bar(x - 0.18, pred, 0.36, label="closed form (no sampling)")
    ax.bar(x + 0.18, mc, 0.36, yerr=se, capsize=4, label=f"Monte Carlo, {cf['chips']} chips (95 % CI)")
    for i, p in enumerate(names):
        ax.text(x[i], max(pred[i], mc[i] + se[i]) * 1.15, f"ratio {cf['presets'][p]['ratio']:.2f}", ha="center",
                fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=max(max(pred), max(m + e for m, e in zip(mc, se))) * 4)
    ax.set_xticks(x, names)
    ax.set_ylabel("output MSE of the logits")
    ax.set_title(f"Closed form vs Monte Carlo: MLP, {cf['images']} images", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_tile(t: dict, path: Path) -> Path:
    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(t["methods"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for dx, q, lab in ((-0.18, "relative_error", "realised matrix"),
                       (0.18, "output_relative_error", "outputs on the layer's inputs")):
        v = [100 * t["methods"][k][q] for k in names]
        ax.bar(x + dx, v, 0.36, label=lab)
        for i, val in enumerate(v):
            ax.text(x[i] + dx, val * 1.08, f"{val:.2g} %", ha="center", fontsize=8)
    ax.set_yscale("log")
    top = max(100 * r[q] for r in t["methods"].values() for q in ("relative_error", "output_relative_error"))
    ax.set_ylim(top=top * 3)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(x, names)
    ax.set_ylabel("relative error [%]")
    ax.set_title(f"One {t['shape'][0]}×{t['shape'][1]} tile with IR drop ('irdrop', exact circuit)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_optimizer(o: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    layers = list(o["naive"]["layers"])
    x = np.arange(len(layers))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8.5, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    w = 0.2
    for j, (kind, q, hatch) in enumerate((("naive", "predicted_mse", "//"), ("naive", "simulated_mse", ""),
                                           ("convex", "predicted_mse", "//"), ("convex", "simulated_mse", ""))):
        ax.bar(x + (j - 1.5) * w, [o[kind]["layers"][n][q] for n in layers], w, hatch=hatch,
               color="C1" if kind == "naive" else "C2", edgecolor="k", linewidth=0.4,
               label=f"{kind}, {q.split('_')[0]}")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"Linear {n}" for n in layers])
    ax.set_ylabel("layer output MSE")
    ax.set_title("Per layer: closed form and simulation", fontsize=10)
    ax.legend(fontsize=7)
    kinds = ["naive", "convex"]
    ax2.bar(kinds, [100 * o[k]["accuracy"]["mean"] for k in kinds], yerr=[100 * o[k]["accuracy"]["std"] for k in kinds],
            capsize=4, color=["C1", "C2"])
    ax2.axhline(100 * o["digital"], color="k", ls="--", lw=1, label="digital")
    lo = min(100 * o[k]["accuracy"]["mean"] - 100 * o[k]["accuracy"]["std"] for k in kinds)
    ax2.set_ylim(max(0, lo - 5), 100)
    ax2.set_ylabel("accuracy [%] (± std over chips)")
    ax2.set_title(f"Network, {o['chips']} chips", fontsize=10)
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle("Design optimizer on 'convex_cim': naive vs convex window and ADC full scale", fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ page
_TEXT = {
    "budget": ("1. Error budget per non-ideality",
               ("Which non-ideality costs what: the MLP's second layer (256×128) fed its own digital activations, "
                "simulated with everything on and with each non-ideality switched on alone "
                "(<code>memcim.metrics.error_budget</code>).")),
    "accuracy": ("2. Accuracy over chips",
                 ("Every chip is programmed anew (programming noise, stuck devices); bars show the spread over chips "
                  "(<code>memcim.nn.evaluate.evaluate_analog</code>). The ideal preset reproduces the digital model.")),
    "closed_form": ("3. Closed form next to Monte Carlo",
                    ("The closed form (<code>memcim.analysis.predict.predict</code>) propagates means and variances "
                     "through the network without sampling; the Monte Carlo programs and reads simulated chips.")),
    "tile": ("4. One circuit-level tile",
             ("A block of the trained MLP on the <code>irdrop</code> preset, where every read solves the array's "
              "resistive network. Ignoring the wires (linear) against compensating them (dpe, Hu et al. 2016) and "
              "paper 002's representable mapping.")),
    "optimizer": ("5. The design optimizer's gain",
                  ("Paper 003's convex design of the conductance window and ADC full scale per layer "
                   "(<code>memcim.optimize.convex_range</code>) against the naive design of the "
                   "<code>convex_cim</code> preset: predicted (closed form, hatched) and simulated layer MSE, and the "
                   "network's accuracy over chips.")),
}


def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


def _pm(s: dict) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} %"


def _section_table(key: str, s: dict) -> str:
    if key == "budget":
        rows = [[k, f"{100 * v['relative_error']:.3f} %", f"{v['snr_db']:.1f}", f"{100 * v['share']:.1f} %"]
                for k, v in sorted(s["contributions"].items(), key=lambda kv: -kv[1]["mse"])]
        rows.append(["all together", f"{100 * s['total']['relative_error']:.3f} %", f"{s['total']['snr_db']:.1f}", ""])
        return _table(["non-ideality (alone)", "relative RMS error", "SNR [dB]", "share of total MSE"], rows)
    if key == "accuracy":
        rows = [[m, f"{100 * per['digital']:.2f} %", *[_pm(per["presets"][p]["accuracy"]) for p in s["presets"]]]
                for m, per in s["models"].items()]
        return _table(["model", "digital", *s["presets"]], rows)
    if key == "closed_form":
        rows = [[p, f"{r['predicted_mse']:.4g}", f"{r['mc_mse']:.4g} ± {r['mc_stderr']:.2g}", f"{r['ratio']:.3f}",
                 f"{r['z']:+.2f}", f"{r['predict_seconds']:.1f} s / {r['mc_seconds']:.1f} s"]
                for p, r in s["presets"].items()]
        return _table(["hardware", "closed-form MSE", f"Monte Carlo MSE ({s['chips']} chips, ± s.e.)",
                       "ratio", "z", "time: closed form / Monte Carlo"], rows)
    if key == "tile":
        rows = [[k, f"{100 * r['relative_error']:.3f} %", f"{100 * r['output_relative_error']:.3f} %",
                 f"{100 * r['max_output_error']:.3f} %", f"{r['seconds']:.1f} s"] for k, r in s["methods"].items()]
        return _table(["mapping", "realised matrix error", "output error (RMS)", "max output error", "time"], rows)
    if key == "optimizer":
        rows = []
        for k in ("naive", "convex"):
            r = s[k]
            rows.append([k, f"{s['total'][k]['predicted_mse']:.4g}", f"{s['total'][k]['simulated_mse']:.4g}",
                         _pm(r["accuracy"]), f"{r['mse']['mean']:.4g}"])
        rows.append(["reduction", f"{100 * s['predicted_mse_reduction']:.1f} %",
                     f"{100 * s['simulated_mse_reduction']:.1f} %", f"digital {100 * s['digital']:.2f} %", ""])
        return _table(["design", "layer MSE, closed form (sum)", "layer MSE, simulated (sum)",
                       f"accuracy ({s['chips']} chips)", "logit MSE"], rows)
    return ""


def _headline(key: str, s: dict) -> str:
    """One sentence: what the section shows, in its own numbers."""
    if key == "budget" and s.get("largest"):
        c = s["contributions"][s["largest"]]
        return (f"The largest single cost is <b>{s['largest']}</b> ({100 * c['relative_error']:.2f} % alone, "
                f"{100 * c['share']:.0f} % of the total MSE); all together {100 * s['total']['relative_error']:.2f} %.")
    if key == "closed_form" and s["presets"]:
        worst = max(abs(1 - r["ratio"]) for r in s["presets"].values())
        tp = max(r["predict_seconds"] for r in s["presets"].values())
        return (f"The closed form is within <b>{100 * worst:.0f} %</b> of the Monte Carlo of {s['chips']} chips, "
                f"in at most {tp:.1f} s per hardware and without sampling.")
    if key == "tile":
        return (f"Mapping with the wires in the loop (representable) leaves "
                f"<b>{s['gain_representable_vs_linear']:.0f}x</b> less matrix error than ignoring them (linear).")
    if key == "optimizer":
        return (f"Accuracy <b>{100 * s['naive']['accuracy']['mean']:.2f} % -> {100 * s['convex']['accuracy']['mean']:.2f} %"
                f"</b> (digital {100 * s['digital']:.2f} %); layer MSE reduced by "
                f"{100 * s['predicted_mse_reduction']:.0f} % as predicted, {100 * s['simulated_mse_reduction']:.0f} % "
                "as simulated.")
    return ""


def write_page(res, out: Path, pngs: dict[str, Path]) -> Path:
    """``out/index.html``: every section's text, table and plot on one page."""
    cfg = res.config
    prov = res.provenance
    parts = [
        ("<!doctype html><html><head><meta charset='utf-8'><title>memcim demo</title><style>"
         "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f4f4f4}</style></head><body>"),
        "<h1>memcim demo</h1>",
        (f"<p>Reference models <code>{html.escape(', '.join(cfg['models']))}</code> (shipped weights), "
         f"{html.escape(cfg['data'])}, hardware <code>{html.escape(str(prov.get('hardware', cfg['hardware']['name'])))}</code>, seed {cfg['seed']}, "
         f"{cfg['chips']} chips{' (quick sizes)' if cfg['quick'] else ''}. Made in {res.seconds.get('total', 0):.0f} s "
         f"by memcim {html.escape(str(prov.get('memcim_version')))} (commit {html.escape(str(prov.get('git_commit')))}), "
         f"{html.escape(str(prov.get('created')))}. Every number is in <a href='demo.json'>demo.json</a>.</p>"),
    ]
    for key, (title, text) in _TEXT.items():
        if key not in res.sections:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2><p>{text}</p>")
        head = _headline(key, res.sections[key])
        if head:
            parts.append(f"<p>{head}</p>")
        parts.append(_section_table(key, res.sections[key]))
        if key in pngs:
            parts.append(f"<p><img src='{html.escape(pngs[key].name)}' alt='{html.escape(title)}'></p>")
    parts.append("<p>The full reproduction of the papers' figures is <code>memcim paper reproduce</code>.</p>"
                 "</body></html>")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
