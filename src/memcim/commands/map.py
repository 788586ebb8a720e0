"""``memcim map``: map a matrix onto crossbar conductances with any mapping method (paper 002).

Example
-------
    memcim map --matrix W.npy --hw irdrop --method representable --set device.bits=6 --out plan/ --json
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DESCRIPTION = """Map W (in x out) onto the arrays of a hardware config (default: the irdrop preset of
paper 002: a pair of 128x128 arrays per tile, 2 kOhm-3 MOhm at 8 bits, 1 Ohm wires, 100 Ohm in/out).
Any matrix is tiled over as many arrays as it needs (array.rows x array.cols each). Every array gets
conductances g_pos, g_neg rounded to the device's levels and a scale alpha [S per unit weight] so
that W^r = (G_eff(g_pos) - G_eff(g_neg)) / alpha, with G_eff the realized matrix of the array with
its wires. Methods: linear (ignores the wires), dpe (Hu et al. DAC 2016 calibration-vector tuning),
representable (paper 002: alpha search, adjoint gradient tuning, calibration correction). Reports
the errors in the paper's terms. The physics is set with --set: --set device.bits=6,
--set device.g_min=1e-6 --set device.g_max=1e-4, --set wires.r_wire=2 --set wires.r_in=50
--set wires.r_out=50, --set array.rows=64 --set array.cols=64 (memcim hw show irdrop lists every key).
--out DIR writes map.json (this report), map.npz (g_pos, g_neg, scale per array, the realized
matrix and the config) and map.png (realized against target weights)."""

#: the physics flags of the old ``map`` -> the --set key that replaces each
GONE = {"--bits": "device.bits", "--g-min": "device.g_min", "--g-max": "device.g_max", "--r-wire": "wires.r_wire",
        "--r-in": "wires.r_in", "--r-out": "wires.r_out", "--array-rows": "array.rows",
        "--array-cols": "array.cols", "--preset": None, "--config": None}


def register(sub):
    from memcim.commands._shared import add_hw, add_inputs, add_out
    from memcim.commands.simulate import add_gone

    p = sub.add_parser("map", help="map a matrix to crossbar conductances, IR-drop-aware (paper 002)",
                       description=DESCRIPTION)
    p.add_argument("--matrix", required=True, metavar="W.npy", help="target matrix (in, out): .npy, .npz or .csv")
    add_hw(p, default="irdrop")
    p.add_argument("--method", default=None, metavar="METHOD",
                   help="linear | dpe | representable (default: the config's mapping.method; same as "
                        "--set mapping.method=METHOD)")
    add_inputs(p, "input vectors (batch, in): the max output error is taken over them, and they calibrate "
                  "the ADC and the dpe/representable mapping (default: 200 uniform [0, 1] vectors, seed 0, "
                  "for the max output error)")
    p.add_argument("--tune-inputs", action="store_true",
                   help="representable only: tune against the second moment of --inputs instead of the "
                        "Frobenius norm (beyond the paper); an error with the other methods or without --inputs")
    add_out(p)
    add_gone(p, GONE)
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim import validate
    from memcim.commands._shared import emit, hardware
    from memcim.config import MAPPING_METHODS
    from memcim.io import load_array, provenance
    from memcim.mapping.crossbar import map_matrix
    from memcim.mapping.irdrop import error_report

    extra = {}
    if args.method is not None:
        extra["mapping.method"] = validate.choice("method", args.method, MAPPING_METHODS)
    W = load_array(args.matrix, "matrix", ndim=2)
    if not np.any(W != 0):
        raise ValueError("matrix: all entries are zero; nothing to map")
    X = load_array(args.inputs, "inputs", ndim=2) if args.inputs else None
    if X is not None and X.shape[1] != W.shape[0]:
        raise ValueError(f"inputs: shape {X.shape} does not match the {W.shape[0]} rows of the matrix "
                         f"(x is (batch, in), W is (in, out))")
    if args.tune_inputs and X is None:
        raise ValueError("tune_inputs: needs --inputs (their second moment is what it tunes against)")
    hw = hardware(args, default="irdrop", extra_settings=extra)
    if args.tune_inputs and hw.mapping.method != "representable":
        raise ValueError(f"tune_inputs: only the representable method tunes against the inputs "
                         f"(method is {hw.mapping.method!r}); add --method representable or drop --tune-inputs")
    M = X.T @ X / X.shape[0] if args.tune_inputs else None
    t0 = time.perf_counter()
    plan = map_matrix(W, hw, calib_inputs=X, second_moment=M, progress=not args.json)
    Wr = plan.realized().numpy()
    unq = map_matrix(W, hw.without("quantization"), calib_inputs=X, second_moment=M) \
        if hw.device.levels is not None else plan
    rep = {"command": "map", "matrix": {"path": str(args.matrix), "shape": list(W.shape)},
           "inputs": {"path": str(args.inputs), "shape": list(X.shape)} if X is not None else None,
           "tune_inputs": bool(args.tune_inputs), "method": hw.mapping.method, "reader": hw.reader,
           "tiles": list(plan.n_tiles), "tile_weights": [plan.tile_rows, plan.tile_cols],
           "array": [hw.array.rows, hw.array.cols],
           **error_report(W, Wr, unq.realized().numpy(), X, M)}
    sc = plan.scale.numpy()
    rep["alpha"] = float(sc.flat[0]) if np.allclose(sc, sc.flat[0]) else sc[:, ::plan.tile_cols].tolist()
    rep["time_s"] = time.perf_counter() - t0
    if args.out:
        npz = Path(args.out) / "map.npz"
        np.savez(npz, g_pos=plan.g_pos.numpy(), g_neg=plan.g_neg.numpy(), scale=sc, realized=Wr,
                 config=hw.to_json())
        rep["plan"] = str(npz)
    rep["config"] = hw.to_dict()
    rep["provenance"] = provenance()

    def text(r) -> str:
        a = r["alpha"]
        return (f"{r['method']} on {r['tiles'][0]}x{r['tiles'][1]} arrays of {r['array'][0]}x{r['array'][1]} "
                f"({r['reader']} reader): alpha = {a if isinstance(a, list) else f'{a:.4g}'} S/unit, "
                f"||W - W^r||_F = {r['frobenius_error']:.4g} (relative {r['relative_error']:.3g}), "
                f"max output error {r['max_output_error']:.3g}, {r['time_s']:.2f} s"
                + (f"\nplan (g_pos, g_neg, scale, realized, config) in {r['plan']}" if "plan" in r else ""))

    return emit(args, "map", rep, plot=lambda r, path: _plot(W, Wr, r, path), text=text)


def _plot(W, Wr, rep, path) -> None:
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    fig, ax = plt.subplots(figsize=(4.2, 4))
    w, wr = W.ravel(), Wr.ravel()
    if w.size > 20000:
        idx = np.random.default_rng(0).choice(w.size, 20000, replace=False)
        w, wr = w[idx], wr[idx]
    lim = float(max(np.abs(W).max(), np.abs(Wr).max()))
    ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=1, zorder=0)
    ax.scatter(w, wr, s=3, alpha=0.5)
    ax.set_xlabel("target weight W")
    ax.set_ylabel("realized weight W^r")
    ax.set_title(f"{rep['method']}: relative error {rep['relative_error']:.3g}", fontsize=10)
    savefig(fig, path)
