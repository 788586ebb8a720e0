"""``memcim circuit``: realized matrix and output currents of a crossbar with wire resistance.

Example
-------
    memcim circuit --conductances G.npy --r-wire 1 --r-in 100 --r-out 100 --inputs V.npy --json
"""
from __future__ import annotations

import time

import numpy as np

DESCRIPTION = """Nodal analysis of a crossbar (paper 002): rows driven at column 0 through r_in, columns
sensed at the last row through r_out into a virtual ground, r_wire between neighbouring cells.
Prints the realized matrix G_eff (in x out, I_out = v @ G_eff) [S], the output currents [A] for
the input voltages [V], and the solve time."""


def register(sub):
    p = sub.add_parser("circuit", help="realized matrix / currents of a crossbar with IR drop (paper 002)",
                       description=DESCRIPTION)
    p.add_argument("--conductances", required=True, metavar="G.npy", help="cell conductances (rows, cols) [S]")
    p.add_argument("--r-wire", type=float, default=1.0, help="wire segment resistance [Ohm] (default 1)")
    p.add_argument("--r-wire-col", type=float, default=None, help="bit-line segment resistance [Ohm] "
                   "(default: --r-wire)")
    p.add_argument("--r-in", type=float, default=100.0, help="input (driver) resistance [Ohm] (default 100)")
    p.add_argument("--r-out", type=float, default=100.0, help="output (sense) resistance [Ohm] (default 100)")
    p.add_argument("--drive", choices=["one", "both"], default="one", help="drive word lines at one or both ends")
    p.add_argument("--inputs", metavar="V.npy", help="input voltages (batch, rows) or (rows,) [V]")
    p.add_argument("--spice", metavar="FILE.cir", help="also write the SPICE netlist (with the first input)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.config import WiresConfig
    from memcim.hardware.circuit import Crossbar, as_wires, to_spice
    from memcim.io import dumps, load_array, provenance

    g = load_array(args.conductances, "--conductances", ndim=2)
    if np.any(g <= 0):
        raise ValueError(f"--conductances: minimum {g.min():.3g} S is not allowed; conductances must be > 0 S")
    try:
        wires = as_wires(WiresConfig(r_wire=args.r_wire, r_in=args.r_in, r_out=args.r_out, r_wire_col=args.r_wire_col,
                                     drive=args.drive))
    except ValueError as e:  # name the flag: "wires.r_out: ..." -> "--r-out: wires.r_out: ..."
        key = str(e).split(":", 1)[0].rpartition(".")[2]
        raise ValueError(f"--{key.replace('_', '-')}: {e}") from None
    v = None
    if args.inputs:
        v = load_array(args.inputs, "--inputs", ndim=(1, 2))
        if v.shape[-1] != g.shape[0]:
            raise ValueError(f"--inputs: shape {v.shape} does not match the {g.shape[0]} rows of --conductances")
    t0 = time.perf_counter()
    cb = Crossbar(g, wires)
    G = cb.realized()
    cur = cb.currents(v) if v is not None else None
    dt = time.perf_counter() - t0
    if args.spice:
        with open(args.spice, "w") as f:
            f.write(to_spice(g, None if v is None else np.atleast_2d(v)[0], wires))
    out = {"realized": G, "currents": cur, "time_s": dt, "shape": list(g.shape),
           "wires": {"r_wire": wires.r_wire, "r_wire_col": wires.rc, "r_in": wires.r_in, "r_out": wires.r_out,
                     "drive": wires.drive}, "provenance": provenance()}
    if args.json:
        print(dumps(out, indent=None))
    else:
        rel = np.abs(G - g).max() / np.abs(g).max()
        print(f"crossbar {g.shape[0]}x{g.shape[1]}: solved in {dt * 1e3:.1f} ms; max |G_eff - g| / max g = {rel:.3g}")
        if cur is not None:
            print("currents [A]:", np.array2string(np.asarray(cur), precision=4))
    return 0
