"""``memcim map``: map a matrix onto crossbar conductances with any mapping method (paper 002).

Example
-------
    memcim map --matrix W.npy --preset irdrop --method representable --out PLAN.npz --json
"""
from __future__ import annotations

import time

import numpy as np

DESCRIPTION = """Map W (in x out) onto the arrays of a hardware config (default: the irdrop preset of
paper 002: 128x128 pairs of arrays, 2 kOhm-3 MOhm at 8 bits, 1 Ohm wires, 100 Ohm in/out). A matrix
larger than one array is tiled. Every array gets conductances g_pos, g_neg rounded to the device's
levels and a scale alpha [S per unit weight] so that W^r = (G_eff(g_pos) - G_eff(g_neg)) / alpha,
with G_eff the realized matrix of the array with its wires. Methods: linear (ignores the wires),
dpe (Hu et al. DAC 2016 calibration-vector tuning), representable (paper 002: alpha search,
adjoint gradient tuning, calibration correction). Reports the errors in the paper's terms."""

#: flag -> dotted config setting
FLAGS = {"method": "mapping.method", "bits": "device.bits", "g_min": "device.g_min", "g_max": "device.g_max",
         "r_wire": "wires.r_wire", "r_in": "wires.r_in", "r_out": "wires.r_out", "array_rows": "array.rows",
         "array_cols": "array.cols"}


def register(sub):
    from memcim.commands.vmm import add_hardware_args

    p = sub.add_parser("map", help="map a matrix to crossbar conductances, IR-drop-aware (paper 002)",
                       description=DESCRIPTION)
    p.add_argument("--matrix", required=True, metavar="W.npy", help="target matrix (in, out)")
    add_hardware_args(p, default="irdrop")
    p.add_argument("--method", default=None, help="linear | dpe | representable (default: the config's)")
    p.add_argument("--bits", type=int, default=None, help="programming precision in bits (device.bits)")
    p.add_argument("--g-min", type=float, default=None, help="minimum conductance [S] (device.g_min)")
    p.add_argument("--g-max", type=float, default=None, help="maximum conductance [S] (device.g_max)")
    p.add_argument("--r-wire", type=float, default=None, help="wire segment resistance [Ohm] (wires.r_wire)")
    p.add_argument("--r-in", type=float, default=None, help="input resistance [Ohm] (wires.r_in)")
    p.add_argument("--r-out", type=float, default=None, help="output resistance [Ohm] (wires.r_out)")
    p.add_argument("--array-rows", type=int, default=None, help="rows per array (array.rows)")
    p.add_argument("--array-cols", type=int, default=None, help="columns per array (array.cols)")
    p.add_argument("--inputs", metavar="X.npy", help="input vectors (batch, in) for the max output error")
    p.add_argument("--tune-inputs", action="store_true", help="representable: tune against the second moment "
                   "of --inputs instead of the Frobenius norm (beyond the paper)")
    p.add_argument("--out", metavar="PLAN.npz", help="write the plan: g_pos, g_neg, scale per array, the config")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def apply_flags(hw, args, flags: dict[str, str]):
    """``hw`` with every given flag's setting applied; an invalid value is reported under its flag."""
    for attr, key in flags.items():
        v = getattr(args, attr, None)
        if v is None:
            continue
        try:
            hw = hw.set(key, v)
        except ValueError as e:
            raise ValueError(f"--{attr.replace('_', '-')}: {e}") from None
    return hw


def run(args) -> int:
    from memcim.commands.vmm import hardware_from_args
    from memcim.io import dumps, load_array, provenance
    from memcim.mapping.crossbar import map_matrix
    from memcim.mapping.irdrop import error_report

    W = load_array(args.matrix, "--matrix", ndim=2)
    if not np.any(W != 0):
        raise ValueError("--matrix: all entries are zero; nothing to map")
    X = load_array(args.inputs, "--inputs", ndim=2) if args.inputs else None
    if X is not None and X.shape[1] != W.shape[0]:
        raise ValueError(f"--inputs: shape {X.shape} does not match the {W.shape[0]} rows of --matrix")
    if args.tune_inputs and X is None:
        raise ValueError("--tune-inputs: needs --inputs")
    hw = apply_flags(hardware_from_args(args, default="irdrop"), args, FLAGS)
    if args.tune_inputs and hw.mapping.method != "representable":
        raise ValueError(f"--tune-inputs: only the representable method tunes against the inputs "
                         f"(method is {hw.mapping.method!r})")
    M = X.T @ X / X.shape[0] if args.tune_inputs else None
    t0 = time.perf_counter()
    plan = map_matrix(W, hw, calib_inputs=X, second_moment=M, progress=not args.json)
    Wr = plan.realized().numpy()
    unq = map_matrix(W, hw.without("quantization"), calib_inputs=X, second_moment=M) \
        if hw.device.levels is not None else plan
    rep = {"method": hw.mapping.method, "reader": hw.reader, "tiles": list(plan.n_tiles),
           **error_report(W, Wr, unq.realized().numpy(), X, M)}
    sc = plan.scale.numpy()
    rep["alpha"] = float(sc.flat[0]) if np.allclose(sc, sc.flat[0]) else sc[:, ::plan.tile_cols].tolist()
    rep["time_s"] = time.perf_counter() - t0
    if args.out:
        np.savez(args.out, g_pos=plan.g_pos.numpy(), g_neg=plan.g_neg.numpy(), scale=plan.scale.numpy(),
                 realized=Wr, config=hw.to_json())
        rep["plan"] = args.out
    rep["config"] = hw.to_dict()
    rep["provenance"] = provenance()
    if args.json:
        print(dumps(rep, indent=None))
    else:
        a = rep["alpha"]
        print(f"{rep['method']} on {plan.n_row_tiles}x{plan.n_col_tiles} arrays ({hw.reader} reader): alpha = "
              f"{a if isinstance(a, list) else f'{a:.4g}'} S/unit, ||W - W^r||_F = {rep['frobenius_error']:.4g} "
              f"(relative {rep['relative_error']:.3g}), max output error {rep['max_output_error']:.3g}, "
              f"{rep['time_s']:.2f} s")
    return 0
