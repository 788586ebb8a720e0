"""``memcim simulate``: what a crossbar computes, and how wrong it is (formerly ``vmm`` and ``circuit``).

One command, two inputs:

* ``--matrix W.npy``: map W onto the arrays of ``--hw``, program ``--chips`` chips, read them with
  the inputs and report the error of y = x W against the exact product, with the error budget
  per non-ideality (formerly ``memcim vmm``);
* ``--conductances G.npy``: the nodal solve of one crossbar of raw conductances with the wires
  of ``--hw`` (default: the irdrop preset's): its realized matrix and output currents (formerly
  ``memcim circuit``).

Examples
--------
    memcim simulate --matrix W.npy --hw generic --chips 10 --out run/ --json
    memcim simulate --conductances G.npy --inputs V.npy --set wires.r_wire=2 --spice tile.cir
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DESCRIPTION = """Simulate a crossbar. With --matrix W.npy: map W (in x out) onto crossbars, program
--chips chips, read them with the inputs x (--inputs, or --batch vectors x ~ N(0, I)) and report the
error of y = x @ W against the exact product (MSE, relative error, SNR) and the contribution of each
non-ideality switched on alone (the error budget; --no-budget skips it). With --conductances G.npy:
nodal analysis of one crossbar of those conductances [S] with the wires of --hw (default irdrop: 1 Ohm
segments, 100 Ohm in/out; change them with --set wires.r_wire=2 --set wires.r_in=10 ...): rows driven at
column 0 through r_in, columns sensed at the last row through r_out into a virtual ground. It reports the
realized matrix G_eff (I_out = v @ G_eff) and the currents [A] for the input voltages --inputs [V].
--out DIR writes simulate.json, simulate.png and hw.toml."""

#: flags of the old ``vmm`` and ``circuit`` -> their replacement
GONE = {"--trials": "--chips", "--preset": "--hw", "--config": "--hw", "--r-wire": "wires.r_wire",
        "--r-wire-col": "wires.r_wire_col", "--r-in": "wires.r_in", "--r-out": "wires.r_out",
        "--drive": "wires.drive"}

DEFAULT_CHIPS = 10
DEFAULT_BATCH = 1000


class _Gone(argparse.Action):
    """A flag that no longer exists: one error line naming what replaces it."""

    def __init__(self, option_strings, dest, new=None, **kw):
        self.new = new
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        new = self.new
        if new is None:
            new = "--hw PRESET|FILE"
        elif "." in new:
            new = f"--set {new}=VALUE"
        parser.error(f"{option_string} is gone; use {new}")


def add_gone(p: argparse.ArgumentParser, gone: dict[str, str | None]) -> None:
    """Hidden flags of an older form that answer with the new form (one line, exit 2)."""
    for flag, new in gone.items():
        p.add_argument(flag, action=_Gone, new=new, dest=f"_gone_{flag.lstrip('-').replace('-', '_')}",
                       default=argparse.SUPPRESS)


def register(sub) -> None:
    from memcim.commands._shared import add_chips, add_hw, add_inputs, add_out, add_seed

    p = sub.add_parser("simulate", help="simulate y = x @ W (--matrix) or one crossbar circuit (--conductances)",
                       description=DESCRIPTION)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--matrix", metavar="W.npy", help="weight matrix (in, out): .npy, .npz or .csv")
    what.add_argument("--conductances", metavar="G.npy",
                      help="cell conductances (rows, cols) [S] of one crossbar: a circuit solve")
    add_inputs(p, "inputs (batch, in) or (in,): with --matrix the vectors x (default: --batch draws of "
                  "N(0, I)); with --conductances the input voltages [V] (default: none, G_eff only)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help=f"--matrix: number of inputs x ~ N(0, I) drawn when --inputs is absent "
                        f"(default {DEFAULT_BATCH})")
    add_hw(p, default="generic", extra="; with --conductances the wires of irdrop")
    add_chips(p, DEFAULT_CHIPS, what="--matrix: programmed chips (Monte Carlo over chips)")
    p.set_defaults(chips=None)  # None = not given: the default applies to --matrix, --conductances refuses it
    add_seed(p)
    p.add_argument("--no-budget", action="store_true",
                   help="--matrix: skip the error budget per non-ideality (one simulation instead of one per "
                        "non-ideality)")
    p.add_argument("--spice", metavar="FILE.cir",
                   help="--conductances: also write the SPICE netlist (with the first input vector)")
    add_out(p)
    add_gone(p, GONE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.conductances is not None:
        return _circuit(args)
    return _matrix(args)


# ------------------------------------------------------------------ --matrix
def _matrix(args) -> int:
    import torch

    from memcim import validate
    from memcim.commands._shared import emit, hardware
    from memcim.io import load_array, provenance
    from memcim.mapping.crossbar import map_matrix
    from memcim.metrics import check_reference, error_budget, simulate_error

    if args.spice:
        raise ValueError("spice: writes the netlist of a --conductances crossbar; it has no meaning with --matrix")
    chips = DEFAULT_CHIPS if args.chips is None else args.chips
    if args.inputs and args.batch is not None:
        raise ValueError("batch: give --inputs or --batch, not both (--batch draws inputs when there is no file)")
    batch = validate.integer("batch", DEFAULT_BATCH if args.batch is None else args.batch, lo=1, hi=10_000_000)
    W = load_array(args.matrix, "matrix", ndim=2)
    if not np.any(W != 0):
        raise ValueError("matrix: all entries are zero; x @ W = 0, so there is no error to measure")
    hw = hardware(args, default="generic")
    if args.inputs:
        x = load_array(args.inputs, "inputs", ndim=(1, 2))
        x = x[None, :] if x.ndim == 1 else x
        if x.shape[1] != W.shape[0]:
            raise ValueError(f"inputs: shape {x.shape} does not match the matrix {W.shape}; inputs need "
                             f"{W.shape[0]} columns (x is (batch, in), W is (in, out))")
        inputs = {"source": str(args.inputs), "shape": list(x.shape)}
    else:
        validate.memory("batch", 8 * 4 * batch * (W.shape[0] + W.shape[1]), f"{batch} drawn input vectors")
        x = np.random.default_rng(args.seed).standard_normal((batch, W.shape[0]))
        inputs = {"source": "drawn: x ~ N(0, I)", "shape": list(x.shape), "seed": args.seed}
    check_reference(W, x)
    mapped = map_matrix(W, hw, calib_inputs=x)
    from memcim.commands._shared import check_chips_memory

    check_chips_memory(mapped, chips, x.shape[0], batch_name="inputs" if args.inputs else "batch")
    realized = mapped.realized().numpy()
    result = {
        "command": "simulate", "matrix": {"path": str(args.matrix), "shape": list(W.shape)}, "inputs": inputs,
        "chips": chips, "seed": args.seed, "mapping": mapped.summary(),
        "realized_matrix": {"max_abs_error": float(np.abs(realized - W).max()),
                            "relative_frobenius_error": float(np.linalg.norm(realized - W) / np.linalg.norm(W))},
        "nonidealities": list(hw.active_nonidealities()),
    }
    if args.no_budget:
        result["error"] = simulate_error(W, x, hw, chips, args.seed, dtype=torch.float64)
    else:
        budget = error_budget(W, x, hw, chips, args.seed, dtype=torch.float64)
        result["error"] = budget["total"]
        result["contributions"] = budget["contributions"]
        result["interaction_mse"] = budget["interaction_mse"]
    result["config"] = hw.to_dict()
    result["provenance"] = provenance(seed=args.seed)
    if args.out:
        hw.save(Path(args.out) / "hw.toml")

    def text(r) -> str:
        e = r["error"]
        lines = [(f"W {W.shape[0]}x{W.shape[1]} on {hw.name}: tiles {mapped.n_row_tiles}x{mapped.n_col_tiles}, "
                  f"{chips} chip(s), inputs {inputs['source']}"),
                 f"  MSE {e['mse']:.4g}   relative error {e['relative_error']:.4g}   SNR {e['snr_db']:.2f} dB"]
        for name, c in r.get("contributions", {}).items():
            lines.append(f"  {name:13s} alone: MSE {c['mse']:.4g}  ({100 * c['share']:.1f} % of total)")
        return "\n".join(lines)

    plot = _plot_budget if result.get("contributions") else None
    return emit(args, "simulate", result, plot=plot, text=text)


def _plot_budget(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    names = list(result["contributions"])
    mses = [result["contributions"][n]["mse"] for n in names] + [result["error"]["mse"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names + ["all"], mses, color=["C0"] * len(names) + ["C3"])
    ax.set_yscale("log")
    ax.set_ylabel("output MSE")
    ax.set_title(f"error budget: {result['config']['name']}, W {result['matrix']['shape']}, "
                 f"{result['chips']} chip(s)", fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    savefig(fig, path)


# ------------------------------------------------------------------ --conductances
def _circuit(args) -> int:
    from memcim.commands._shared import emit, hardware
    from memcim.hardware.circuit import Crossbar, to_spice
    from memcim.io import load_array, provenance

    for flag, given in (("--chips", args.chips is not None), ("--batch", args.batch is not None),
                        ("--no-budget", args.no_budget)):
        if given:
            raise ValueError(f"{flag.lstrip('-').replace('-', '_')}: applies to --matrix only; a --conductances "
                             f"circuit solve has no chips, drawn inputs or error budget")
    g = load_array(args.conductances, "conductances", ndim=2)
    if np.any(g <= 0):
        raise ValueError(f"conductances: minimum {g.min():.3g} S is not allowed; conductances must be > 0 S")
    hw = hardware(args, default="irdrop")
    if not hw.wires.enabled:
        raise ValueError(f"hw: {hw.name!r} has ideal wires (G_eff = G, nothing to solve); --conductances needs "
                         "wires: --hw irdrop, or --set wires.r_wire=1 --set wires.r_in=100 --set wires.r_out=100")
    if not hw.cell.linear:
        raise ValueError(f"hw: cell.model = {hw.cell.model!r}; --conductances solves linear cells only "
                         "(--set cell.model=linear)")
    wires = hw.wires
    v = None
    if args.inputs:
        v = load_array(args.inputs, "inputs", ndim=(1, 2))
        if v.shape[-1] != g.shape[0]:
            raise ValueError(f"inputs: shape {v.shape} does not match the {g.shape[0]} rows of the conductances")
    t0 = time.perf_counter()
    cb = Crossbar(g, wires)
    G = cb.realized()
    cur = cb.currents(v) if v is not None else None
    dt = time.perf_counter() - t0
    if args.spice:
        spice = Path(args.spice)
        if spice.is_dir():
            raise ValueError(f"spice: {spice} is a directory; give a .cir file")
        try:
            spice.write_text(to_spice(g, None if v is None else np.atleast_2d(v)[0], wires))
        except OSError as e:
            raise ValueError(f"spice: cannot write {spice} ({e.strerror or e})") from None
    result = {"command": "simulate", "conductances": {"path": str(args.conductances), "shape": list(g.shape)},
              "inputs": {"path": str(args.inputs), "shape": list(v.shape)} if v is not None else None,
              "realized": G, "currents": cur, "time_s": dt, "shape": list(g.shape),
              "max_relative_ir_drop": float(np.abs(G - g).max() / np.abs(g).max()),
              "wires": {"r_wire": wires.r_wire, "r_wire_col": wires.rc, "r_in": wires.r_in, "r_out": wires.r_out,
                        "drive": wires.drive},
              "spice": str(args.spice) if args.spice else None,
              "config": hw.to_dict(), "seed": args.seed, "provenance": provenance(seed=args.seed)}
    if args.out:
        hw.save(Path(args.out) / "hw.toml")

    def text(r) -> str:
        lines = [(f"crossbar {g.shape[0]}x{g.shape[1]} with the wires of {hw.name} (r_wire {wires.r_wire:g}, "
                  f"r_in {wires.r_in:g}, r_out {wires.r_out:g} Ohm): solved in {dt * 1e3:.1f} ms; "
                  f"max |G_eff - g| / max g = {r['max_relative_ir_drop']:.3g}")]
        if cur is not None:
            lines.append("currents [A]: " + np.array2string(np.asarray(cur), precision=4))
        if args.spice:
            lines.append(f"wrote {args.spice}")
        return "\n".join(lines)

    return emit(args, "simulate", result, plot=lambda r, path: _plot_circuit(g, G, path), text=text)


def _plot_circuit(g, G, path: Path) -> None:
    import matplotlib.pyplot as plt

    from memcim.io import savefig

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    im = ax.imshow(G / g, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="G_eff / g")
    ax.set_xlabel("column (output)")
    ax.set_ylabel("row (input)")
    ax.set_title("realized over programmed conductance", fontsize=10)
    savefig(fig, path)
