"""``memcim map``: IR-drop-aware mapping of a matrix onto a differential pair of crossbars (paper 002).

Example
-------
    memcim map --matrix W.npy --method representable --bits 8 --out PLAN.npz --json
"""
from __future__ import annotations

import numpy as np

DESCRIPTION = """Map W (in x out) to conductances g_pos, g_neg in [g_min, g_max] (quantized to 2**bits levels)
and a scale alpha [S per unit weight] so that W^r = (G_eff(g_pos) - G_eff(g_neg)) / alpha, with
G_eff the realized matrix of the crossbar with wire, input and output resistance. Methods:
linear (ignores the wires), dpe (Hu et al. DAC 2016 calibration-vector tuning), representable
(paper 002: alpha search, adjoint gradient tuning, calibration correction)."""


def register(sub):
    p = sub.add_parser("map", help="map a matrix to crossbar conductances under IR drop (paper 002)",
                       description=DESCRIPTION)
    p.add_argument("--matrix", required=True, metavar="W.npy", help="target matrix (in, out)")
    p.add_argument("--method", default="representable", help="linear | dpe | representable (default)")
    p.add_argument("--bits", type=int, default=8, help="programming precision in bits (default 8)")
    p.add_argument("--g-min", type=float, default=None, help="minimum conductance [S] (default 1/3 MOhm)")
    p.add_argument("--g-max", type=float, default=None, help="maximum conductance [S] (default 1/2 kOhm)")
    p.add_argument("--r-wire", type=float, default=1.0, help="wire segment resistance [Ohm] (default 1)")
    p.add_argument("--r-in", type=float, default=100.0, help="input resistance [Ohm] (default 100)")
    p.add_argument("--r-out", type=float, default=100.0, help="output resistance [Ohm] (default 100)")
    p.add_argument("--array-rows", type=int, default=256, help="rows of the configured array (default 256)")
    p.add_argument("--array-cols", type=int, default=256, help="columns of the configured array (default 256)")
    p.add_argument("--inputs", metavar="X.npy", help="input vectors (batch, in) for the max output error")
    p.add_argument("--tune-inputs", action="store_true", help="representable: tune against the second moment "
                   "of --inputs instead of the Frobenius norm (beyond the paper)")
    p.add_argument("--out", metavar="PLAN.npz", help="write g_pos, g_neg, alpha (and the wire values)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.hardware.circuit import G_MAX, G_MIN, Wires
    from memcim.io import dumps, load_array, provenance
    from memcim.mapping.irdrop import map_matrix_irdrop

    W = load_array(args.matrix, "--matrix", ndim=2)
    X = load_array(args.inputs, "--inputs", ndim=2) if args.inputs else None
    if X is not None and X.shape[1] != W.shape[0]:
        raise ValueError(f"--inputs: shape {X.shape} does not match the {W.shape[0]} rows of --matrix")
    if args.tune_inputs and X is None:
        raise ValueError("--tune-inputs: needs --inputs")
    for name in ("array_rows", "array_cols"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: {getattr(args, name)} is not allowed; must be >= 1")
    wires = Wires(r_wire=args.r_wire, r_in=args.r_in, r_out=args.r_out)
    M = X.T @ X / X.shape[0] if args.tune_inputs else None
    plan, rep = map_matrix_irdrop(W, args.method, wires=wires, g_min=G_MIN if args.g_min is None else args.g_min,
                                  g_max=G_MAX if args.g_max is None else args.g_max, bits=args.bits, inputs=X,
                                  second_moment=M, max_rows=args.array_rows, max_cols=args.array_cols)
    if args.out:
        plan.save(args.out)
        rep["plan"] = args.out
    rep["provenance"] = provenance(config={"r_wire": args.r_wire, "r_in": args.r_in, "r_out": args.r_out,
                                           "g_min": plan.g_min, "g_max": plan.g_max, "bits": args.bits})
    if args.json:
        print(dumps(rep, indent=None))
    else:
        print(f"{rep['method']}: alpha = {rep['alpha']:.4g} S/unit, ||W - W^r||_F = {rep['frobenius_error']:.4g} "
              f"(relative {rep['relative_error']:.3g}), max output error {rep['max_output_error']:.3g}, "
              f"{rep['time_s']:.2f} s")
    return 0
